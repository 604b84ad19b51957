//! The data dir: local state of one daemon (write buffers, read cache, recorded backend
//! URL), locked by one process at a time, and the volume registry on top of the
//! object store (create, list, open, delete).
//!
//! This file holds [`DataDir`] itself: opening it (the lock, the recorded backend URL,
//! the key ring), its paths and the shared engine environment. `volumes.rs` holds the
//! volume registry (create, clone, open, snapshot views, delete), `info.rs` the summary
//! `volume list` / `volume info` show ([`VolumeInfo`]).

mod info;
mod volumes;

pub use info::{DtlInfo, VolumeInfo};
pub use volumes::NEEDS_STORE;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::sco_object::Codec;
use crate::backend::uploader::Uploader;
use crate::backend::url::BackendUrl;
use crate::backend::ObjectStore;
use crate::config::Config;
use crate::crypto::store::CryptoStore;
use crate::crypto::KeyRing;
use crate::error::{Error, IoContext, Result};
use crate::local_settings::LocalSettings;
use crate::volume::read_cache::ReadCache;
use crate::volume::{EngineOptions, VolumeEnv};

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

    /// This host's settings of volume `name`.
    pub fn local_settings(&self, name: &str) -> Result<LocalSettings> {
        LocalSettings::load(&self.volume_dir(name))
    }

    pub fn save_local_settings(&self, name: &str, s: &LocalSettings) -> Result<()> {
        s.save(&self.volume_dir(name))
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
