//! The volume registry of a [`DataDir`]: create volumes and clones (their first record
//! in the object store, sealed with their key), read and update records, list them,
//! open a volume or a snapshot view for IO with this host's settings, find the clones
//! that depend on a volume, and delete a volume.

use std::fs;
use std::sync::Arc;

use super::DataDir;
use crate::backend::keys;
use crate::crypto::{EncryptionInfo, KeyId, KeySource};
use crate::error::{Error, IoContext, Result};
use crate::local_settings::LocalSettings;
use crate::units::validate_name;
use crate::volume::dtl_link::{DtlLink, DtlSettings};
use crate::volume::{ParentRef, Volume, VolumeMeta};

impl DataDir {
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
