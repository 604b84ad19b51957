//! The data dir: local state of one daemon (write buffers, read cache, recorded backend
//! URL), locked by one process at a time, and the volume registry on top of the
//! object store (create, list, open, delete).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::backend::sco_object::Codec;
use crate::backend::uploader::Uploader;
use crate::backend::url::BackendUrl;
use crate::backend::{keys, ObjectStore};
use crate::config::Config;
use crate::crypto::store::CryptoStore;
use crate::crypto::{EncryptionInfo, KeyId, KeyRing, KeySource};
use crate::error::{Error, IoContext, Result};
use crate::local_settings::LocalSettings;
use crate::units::validate_name;
use crate::volume::dtl_link::{DtlLink, DtlSettings};
use crate::volume::read_cache::ReadCache;
use crate::volume::snapshots::SnapshotInfo;
use crate::volume::{EngineOptions, ParentRef, Volume, VolumeEnv, VolumeMeta};

pub struct DataDir {
    root: PathBuf,
    _lock: File,
    backend: BackendUrl,
    config: Config,
    /// The backend seen through the volumes' encryption (`CryptoStore`).
    store: Arc<dyn ObjectStore>,
    keys: Arc<KeyRing>,
    env: Option<Arc<VolumeEnv>>,
}

/// Lock `root/lock` for this process, or say which pid holds it.
fn lock_data_dir(root: &Path) -> Result<File> {
    let path = root.join("lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a valid fd.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        let pid = pid.trim().to_string();
        return Err(Error::DataDirInUse {
            path: root.to_path_buf(),
            pid: if pid.is_empty() { "?".into() } else { pid },
        });
    }
    f.set_len(0).ctx(|| format!("cannot write {}", path.display()))?;
    f.seek(SeekFrom::Start(0)).ctx(|| format!("cannot write {}", path.display()))?;
    write!(f, "{}", std::process::id()).ctx(|| format!("cannot write {}", path.display()))?;
    Ok(f)
}

/// Summary of a volume for `volume list` / `volume info`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub size: u64,
    pub cluster_size: u32,
    pub sco_size: u64,
    pub created: u64,
    pub generation: u32,
    pub read_only: bool,
    pub backend: String,
    /// Bytes of clusters that hold data.
    pub written_bytes: u64,
    /// Bytes of this volume's objects in the object store.
    pub stored_bytes: u64,
    pub objects: u64,
    /// Local bytes not yet uploaded.
    pub pending_upload_bytes: u64,
    /// Raw bytes of the SCO objects / their stored bytes (1.0 when there are none).
    pub compression_ratio: f64,
    pub map_memory_bytes: u64,
    /// Raw bytes of uploaded SCOs that no map references any more (scrub reclaims them).
    #[serde(default)]
    pub garbage_bytes: u64,
    #[serde(default)]
    pub template: bool,
    /// `VOL@SNAP` (or a template's name) this clone reads through to.
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotInfo>,
    /// This host's DTL peer of the volume and how well it covers the writes.
    #[serde(default)]
    pub dtl: Option<DtlInfo>,
    #[serde(default)]
    pub uploads_paused: bool,
    /// Bytes some map (current or snapshot) references.
    #[serde(default)]
    pub live_bytes: u64,
    /// Object-store bytes per live byte.
    #[serde(default)]
    pub space_amplification: f64,
    /// Bytes put to the object store per byte the guests wrote, since the daemon started.
    #[serde(default)]
    pub write_amplification: f64,
    /// The scrubber's view: state (ok, scrubbing, throttled, full), why, budget, passes.
    #[serde(default)]
    pub space: Option<crate::volume::space::SpaceFigures>,
    /// Encrypted volumes: the id of the key new objects are sealed with (never the key).
    #[serde(default)]
    pub key_id: Option<String>,
}

/// DTL part of `volume info`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DtlInfo {
    pub addr: String,
    /// sync, async or none.
    pub mode: String,
    /// in_sync, catching_up, degraded, needs_resync, fenced, closed; `idle` when the
    /// volume is not served; `off` without a DTL.
    pub state: String,
    #[serde(default)]
    pub detail: String,
}

impl DataDir {
    /// Open and lock the data dir. `backend` overrides (and on first use records) the
    /// object store URL.
    pub fn open(root: &Path, backend: Option<&str>, config: Config) -> Result<DataDir> {
        fs::create_dir_all(root).ctx(|| format!("cannot create data dir {}", root.display()))?;
        let root = root.canonicalize().ctx(|| format!("cannot resolve {}", root.display()))?;
        let lock = lock_data_dir(&root)?;
        let recorded_path = root.join("backend");
        let recorded = match fs::read_to_string(&recorded_path) {
            Ok(s) => Some(BackendUrl::parse(s.trim())?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("cannot read {}", recorded_path.display()), e)),
        };
        let wanted = match backend.or(config.backend.as_deref()) {
            Some(b) => Some(BackendUrl::parse(b)?),
            None => None,
        };
        let backend = match (recorded, wanted) {
            (Some(r), Some(w)) if r != w => {
                return Err(Error::InvalidArgument(format!(
                    "data dir {} belongs to backend {}; refusing to use it with {} (use another --data-dir)",
                    root.display(),
                    r.to_url(),
                    w.to_url()
                )))
            }
            (Some(r), _) => r,
            (None, w) => {
                let b = w.unwrap_or_else(|| BackendUrl::File(root.join("objects")));
                // Durably (tmp, fsync, rename, fsync dir): after a crash or a device error
                // soon after first use, an empty file here made every later start fail with
                // `bad backend URL ""` (found by tests/guest/flakey-e2e.sh).
                let tmp = root.join("backend.tmp");
                let write = || -> std::io::Result<()> {
                    let mut f = File::create(&tmp)?;
                    f.write_all((b.to_url() + "\n").as_bytes())?;
                    f.sync_all()?;
                    fs::rename(&tmp, &recorded_path)?;
                    File::open(&root)?.sync_all()
                };
                write().ctx(|| format!("cannot write {}", recorded_path.display()))?;
                b
            }
        };
        let keys = Arc::new(KeyRing::default());
        keys.set_require(config.encryption.require);
        for s in crate::crypto::store::sources(&config.encryption.key_files, &config.encryption.key_commands) {
            keys.add_source(s);
        }
        // Key sources recorded for volumes created or rotated here.
        if let Ok(dirs) = fs::read_dir(root.join("volumes")) {
            for d in dirs.flatten() {
                if let Ok(s) = LocalSettings::load(&d.path()) {
                    s.key_sources.into_iter().for_each(|k| keys.add_source(k));
                }
            }
        }
        let store: Arc<dyn ObjectStore> = Arc::new(CryptoStore::new(backend.open_with(&config)?, keys.clone()));
        Ok(DataDir { root, _lock: lock, backend, config, store, keys, env: None })
    }

    /// The keys this data dir reads and writes encrypted volumes with.
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn backend_url(&self) -> String {
        self.backend.to_url()
    }

    /// The shared engine environment (read cache, uploader), created on first use.
    pub fn env(&mut self) -> Result<Arc<VolumeEnv>> {
        if let Some(e) = &self.env {
            return Ok(e.clone());
        }
        let c = &self.config;
        let cache_dir = self.root.join("cache");
        fs::create_dir_all(&cache_dir).ctx(|| format!("cannot create {}", cache_dir.display()))?;
        let cache = Arc::new(ReadCache::create(&cache_dir.join("blocks"), c.read_cache.size.0, c.io.direct)?);
        let opts = EngineOptions {
            direct: c.io.direct,
            wb_limit: c.write_buffer.limit.0,
            pace_writes: c.write_buffer.pace,
            frame_size: c.upload.frame_size.0 as usize,
            codec: Codec::parse(&c.upload.compression)?,
            checkpoint_every: c.upload.checkpoint_every.max(1),
            seal_after: (c.write_buffer.seal_after_secs > 0)
                .then(|| Duration::from_secs(c.write_buffer.seal_after_secs)),
            drain_timeout: Duration::from_secs(c.upload.drain_timeout_secs),
            link_local: c.upload.link_local,
            space_wait: Duration::from_secs(c.scrub.throttle_timeout_secs),
        };
        let env = Arc::new(VolumeEnv::with_keys(
            self.store.clone(),
            self.keys.clone(),
            cache,
            Uploader::start(c.upload.concurrency),
            opts,
        ));
        self.env = Some(env.clone());
        Ok(env)
    }

    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.root.join("volumes").join(name)
    }

    /// Create a volume. `size` must be a positive multiple of the cluster size.
    pub fn create_volume(
        &self,
        name: &str,
        size: u64,
        cluster_size: Option<u64>,
        sco_size: Option<u64>,
    ) -> Result<VolumeMeta> {
        self.create_volume_with(name, size, cluster_size, sco_size, None)
    }

    /// Create a volume, encrypted with the key from `key` when given.
    pub fn create_volume_with(
        &self,
        name: &str,
        size: u64,
        cluster_size: Option<u64>,
        sco_size: Option<u64>,
        key: Option<&KeySource>,
    ) -> Result<VolumeMeta> {
        validate_name("volume", name)?;
        let cs = cluster_size.unwrap_or(self.config.volume.cluster_size.0);
        if !cs.is_power_of_two() || !(4096..=1 << 20).contains(&cs) {
            return Err(Error::InvalidArgument(format!("cluster size {cs} must be a power of two from 4K to 1M")));
        }
        if size == 0 || !size.is_multiple_of(cs) {
            return Err(Error::InvalidArgument(format!(
                "size {size} must be a positive multiple of the cluster size {cs}"
            )));
        }
        let sco = sco_size.unwrap_or(self.config.volume.sco_size.0).max(cs);
        if !sco.is_multiple_of(cs) || sco / cs > crate::volume::location::MAX_CLUSTERS_PER_SCO {
            return Err(Error::InvalidArgument(format!("SCO size {sco} must be a multiple of the cluster size")));
        }
        if size / cs >= 1 << 40 {
            return Err(Error::InvalidArgument("volume too large".into()));
        }
        let mut meta = VolumeMeta::new(name, size, cs as u32, sco);
        self.store_first_record(&mut meta, key, None)
    }

    /// Store the first record of a new volume (sealed with `key`, or with `inherit`'s
    /// key when that is a clone parent's encryption), replacing a stale local dir.
    fn store_first_record(
        &self,
        meta: &mut VolumeMeta,
        key: Option<&KeySource>,
        inherit: Option<(&EncryptionInfo, Vec<KeySource>)>,
    ) -> Result<VolumeMeta> {
        let name = meta.name.clone();
        let mut sources = Vec::new();
        if let Some(src) = key {
            let k = self.keys.load_source(src)?;
            meta.encryption = Some(EncryptionInfo::of(&k));
            self.keys.set_writer(&name, k.id());
            sources.push(src.clone());
        } else if let Some((enc, parent_sources)) = inherit {
            let id = KeyId::parse(&enc.key_id).ok_or_else(|| Error::Corrupt {
                key: name.clone(),
                detail: "bad key id in the parent's record".into(),
            })?;
            meta.encryption = Some(EncryptionInfo { old_key_ids: Vec::new(), ..enc.clone() });
            self.keys.set_writer(&name, id);
            sources = parent_sources;
        } else if self.keys.requires_encryption() {
            return Err(Error::Refused(format!(
                "volume {name}: this data dir requires encryption ([encryption] require = true): give --encrypt --key-file or --key-command"
            )));
        } else {
            self.keys.forget_volume(&name);
        }
        if let Err(e) = meta.store_new_version(self.store.as_ref(), true) {
            if !matches!(e, Error::VolumeExists(_)) {
                self.keys.forget_volume(&name);
            }
            return Err(e);
        }
        // A leftover local dir of an older volume with this name is stale.
        let dir = self.volume_dir(&name);
        if dir.exists() {
            fs::remove_dir_all(&dir).ctx(|| format!("cannot remove stale {}", dir.display()))?;
        }
        if !sources.is_empty() {
            LocalSettings { key_sources: sources, ..Default::default() }.save(&dir)?;
        }
        Ok(meta.clone())
    }

    /// A volume's newest record; an encrypted volume's key becomes its write key here
    /// (the record says which; its key check must match).
    pub fn volume_meta(&self, name: &str) -> Result<VolumeMeta> {
        validate_name("volume", name)?;
        let m = VolumeMeta::load(self.store.as_ref(), name)?;
        if let Some(enc) = &m.encryption {
            crate::crypto::ops::register(&self.keys, name, enc)?;
        }
        Ok(m)
    }

    /// Every volume in the object store.
    pub fn list_volumes(&self) -> Result<Vec<VolumeMeta>> {
        let mut out = Vec::new();
        for name in self.store.list_children("")? {
            if validate_name("volume", &name).is_err() {
                continue;
            }
            match VolumeMeta::load(self.store.as_ref(), &name) {
                Ok(m) => out.push(m),
                Err(Error::VolumeNotFound(_) | Error::CryptoErased(_)) => {}
                Err(e @ Error::KeyMissing { .. }) => tracing::warn!("not listed: {e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Open a volume for IO, with this host's settings (DTL peer, paused uploads).
    /// Refused when this host's copy is fenced (a newer owner took the volume over).
    pub fn open_volume(&mut self, name: &str, read_only: bool) -> Result<Arc<Volume>> {
        let meta = self.volume_meta(name)?;
        let dir = self.volume_dir(name);
        let mut settings = LocalSettings::load(&dir)?;
        if settings.owner_generation > 0 && settings.owner_generation < meta.generation {
            tracing::error!(volume = name, local = settings.owner_generation, owner = meta.generation,
                dir = %dir.display(),
                "fenced: the volume was taken over by a newer owner; not opening this host's stale copy (remove that dir to serve it from the object store)");
            return Err(Error::Fenced {
                volume: name.into(),
                generation: settings.owner_generation,
                by: meta.generation,
            });
        }
        if settings.owner_generation != meta.generation {
            settings.owner_generation = meta.generation;
            settings.save(&dir)?;
        }
        let env = self.env()?;
        let vol = Volume::open(env, meta, dir, read_only)?;
        if vol.size() != vol.meta().size && !read_only {
            // A resize's TLog record is durable before its volume record: finish it.
            tracing::warn!(volume = name, size = vol.size(), "recording the size of an interrupted resize");
            let size = vol.size();
            self.update_meta(name, |m| {
                m.initial_size.get_or_insert(m.size);
                m.size = size;
            })?;
        }
        vol.set_uploads_paused(settings.uploads_paused);
        if let (Some(d), false) = (settings.dtl, read_only) {
            vol.set_dtl(Some(self.dtl_link(&vol, d)?));
        }
        Ok(vol)
    }

    /// Connect volume `vol` to DTL peer `d` with the configured token.
    pub fn dtl_link(&self, vol: &Volume, d: DtlSettings) -> Result<DtlLink> {
        let token = self.config.dtl.token()?;
        let tls = self.config.dtl.tls()?;
        DtlLink::start(d, &token, tls, vol.name(), vol.meta().generation, self.store.as_ref())
    }

    /// This host's settings of volume `name`.
    pub fn local_settings(&self, name: &str) -> Result<LocalSettings> {
        LocalSettings::load(&self.volume_dir(name))
    }

    pub fn save_local_settings(&self, name: &str, s: &LocalSettings) -> Result<()> {
        s.save(&self.volume_dir(name))
    }

    /// Volumes that read through to `volume` (to its snapshot `snapshot` when given).
    pub fn dependents(&self, volume: &str, snapshot: Option<&str>) -> Result<Vec<String>> {
        Ok(self
            .list_volumes()?
            .into_iter()
            .filter(|m| {
                m.parent
                    .as_ref()
                    .is_some_and(|p| p.volume == volume && (snapshot.is_none() || p.snapshot.as_deref() == snapshot))
            })
            .map(|m| m.name)
            .collect())
    }

    /// Refuse when clones depend on `volume` (or on its snapshot `snapshot`).
    pub fn check_no_dependents(&self, volume: &str, snapshot: Option<&str>, what: &str) -> Result<()> {
        let deps = self.dependents(volume, snapshot)?;
        if deps.is_empty() {
            return Ok(());
        }
        let target = match snapshot {
            Some(s) => format!("snapshot {volume}@{s}"),
            None => format!("volume {volume}"),
        };
        Err(Error::InvalidArgument(format!(
            "cannot {what} {target}: clones depend on it: {} (delete or flatten them first)",
            deps.join(", ")
        )))
    }

    /// Create clone `target` of `source` (at its snapshot `snapshot`, or a template's
    /// content). The caller makes sure the parent's data is in the object store.
    pub fn create_clone(&self, target: &str, source: &VolumeMeta, snapshot: Option<&str>) -> Result<VolumeMeta> {
        self.create_clone_with(target, source, snapshot, None)
    }

    /// Create a clone; it writes with the key from `key`, or else with its parent's key
    /// when the parent is encrypted (it reads the parent's objects with the parent's key).
    pub fn create_clone_with(
        &self,
        target: &str,
        source: &VolumeMeta,
        snapshot: Option<&str>,
        key: Option<&KeySource>,
    ) -> Result<VolumeMeta> {
        validate_name("volume", target)?;
        let sco = self.config.volume.sco_size.0.max(source.cluster_size as u64);
        let mut meta = VolumeMeta::new(target, source.size, source.cluster_size, sco);
        meta.parent = Some(ParentRef { volume: source.name.clone(), snapshot: snapshot.map(str::to_string) });
        let parent_sources = self.local_settings(&source.name).map(|s| s.key_sources).unwrap_or_default();
        self.store_first_record(&mut meta, key, source.encryption.as_ref().map(|e| (e, parent_sources)))
    }

    /// Store a new version of `name`'s record changed by `f`.
    pub fn update_meta(&self, name: &str, f: impl FnOnce(&mut VolumeMeta)) -> Result<VolumeMeta> {
        let mut m = self.volume_meta(name)?;
        f(&mut m);
        m.store_new_version(self.store.as_ref(), false)?;
        Ok(m)
    }

    /// A read-only view of snapshot `snapshot` of `volume` (`volume@snapshot`). `live` is
    /// the volume when this process already has it open.
    pub fn open_snapshot_view(
        &mut self,
        volume: &str,
        snapshot: &str,
        live: Option<&Arc<Volume>>,
    ) -> Result<Arc<Volume>> {
        let env = self.env()?;
        let name = format!("{volume}@{snapshot}");
        let map = match live {
            // The map is copied and the view registered with no scrub pass in between
            // (see `Volume::without_scrub`): once registered, passes relocate it too.
            Some(v) => {
                let meta = self.volume_meta(volume)?;
                return v.without_scrub(|| {
                    let map = v.snapshot_map(snapshot)?;
                    v.upload_all(NEEDS_STORE)?;
                    Volume::open_view(env, meta, &name, map)
                });
            }
            None => {
                let v = self.open_volume(volume, true)?;
                let map = v.snapshot_map(snapshot);
                let closed = v.close()?;
                let map = map?;
                if !closed.drained {
                    return Err(not_uploaded(volume));
                }
                map
            }
        };
        Volume::open_view(env, self.volume_meta(volume)?, &name, map)
    }

    /// Delete a volume: its record first (so it disappears), then its objects and
    /// local state.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        match self.volume_meta(name) {
            // Without the key (or after a crypto-erase) its objects can still be removed.
            Ok(_) | Err(Error::CryptoErased(_) | Error::KeyMissing { .. }) => {}
            Err(e) => return Err(e),
        }
        self.check_no_dependents(name, None, "delete")?;
        let store = &self.store;
        for o in store.list(&keys::volume_meta_prefix(name))? {
            store.delete(&o.key)?;
        }
        for o in store.list(&keys::volume_prefix(name))? {
            store.delete(&o.key)?;
        }
        let dir = self.volume_dir(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).ctx(|| format!("cannot remove {}", dir.display()))?;
        }
        self.keys.forget_volume(name);
        Ok(())
    }

    /// Facts about an open volume.
    pub fn volume_info(&self, vol: &Volume) -> Result<VolumeInfo> {
        let m = vol.meta();
        let objs = self.store.list(&keys::volume_prefix(&m.name))?;
        let s = vol.stats();
        // Compression: raw bytes of the SCOs in the store / their stored bytes.
        let raw_sizes = vol.sealed_sco_bytes();
        let (mut raw, mut stored) = (0u64, 0u64);
        for o in &objs {
            if let Some((_, "sco", n)) = keys::parse_data_key(&m.name, &o.key) {
                if let Some(r) = raw_sizes.get(&n) {
                    raw += r;
                    stored += o.size;
                }
            }
        }
        let space = vol.space()?;
        let usage = vol.usage();
        let live_bytes = usage.live * vol.cluster_size();
        let stored_bytes: u64 = objs.iter().map(|o| o.size).sum();
        let mut figures = vol.space.figures();
        figures.live_bytes = live_bytes;
        figures.garbage_bytes = usage.garbage * vol.cluster_size();
        figures.log_bytes = usage.log * vol.cluster_size();
        let guest_bytes = vol.counters.write_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let settings = self.local_settings(&m.name)?;
        let dtl = match (vol.dtl_status(), settings.dtl) {
            (Some((d, state, detail)), _) => {
                DtlInfo { addr: d.addr, mode: d.mode.to_string(), state: state.into(), detail }
            }
            (None, Some(d)) => {
                DtlInfo { addr: d.addr, mode: d.mode.to_string(), state: "idle".into(), detail: String::new() }
            }
            (None, None) => {
                DtlInfo { addr: String::new(), mode: "none".into(), state: "off".into(), detail: String::new() }
            }
        };
        Ok(VolumeInfo {
            dtl: Some(dtl),
            uploads_paused: vol.uploads_paused() || settings.uploads_paused,
            garbage_bytes: space.garbage_bytes,
            template: m.template,
            parent: m.parent.as_ref().map(|p| p.to_string()),
            snapshots: space.snapshots,
            name: m.name.clone(),
            size: vol.size(),
            cluster_size: m.cluster_size,
            sco_size: m.sco_clusters as u64 * m.cluster_size as u64,
            created: m.created,
            generation: m.generation,
            read_only: m.read_only,
            backend: self.backend_url(),
            written_bytes: s.mapped_clusters * m.cluster_size as u64,
            stored_bytes,
            live_bytes,
            space_amplification: if live_bytes == 0 { 1.0 } else { stored_bytes as f64 / live_bytes as f64 },
            write_amplification: if guest_bytes == 0 {
                0.0
            } else {
                s.uploaded_stored_bytes as f64 / guest_bytes as f64
            },
            space: Some(figures),
            objects: objs.len() as u64,
            pending_upload_bytes: s.wb_bytes,
            key_id: m.encryption.as_ref().map(|e| e.key_id.clone()),
            compression_ratio: if stored == 0 { 1.0 } else { raw as f64 / stored as f64 },
            map_memory_bytes: s.map_memory_bytes,
        })
    }
}

/// Why a snapshot view or a clone waits for uploads: they read their parent from the
/// object store.
pub const NEEDS_STORE: &str = "(its data must be in the object store first)";

fn not_uploaded(volume: &str) -> Error {
    Error::StoreTimeout {
        what: format!("uploads of volume {volume}: its data must be in the object store first"),
        secs: 0,
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        // Stop background uploads before the lock is released.
        if let Some(env) = &self.env {
            env.uploader.stop();
        }
    }
}
