//! The volume engine: one virtual disk. Writes append cluster data to the open SCO in
//! the local write buffer and log `(cluster, location)` records for the open TLog;
//! reads resolve clusters through the map to the write buffer, the read cache or the
//! object store; a flush makes every completed write durable (SCO data, then TLog).
//! Knows nothing of virtio: the frontend calls it with iovecs into guest memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

pub use super::counters::{Counters, VolumeStats};
use super::dtl_link::DtlLink;
use super::meta::VolumeMeta;
use super::read_cache::ReadCache;
use super::state::State;
use super::tlog::Record;
use super::write_log::FlushSide;
use crate::backend::sco_object::Codec;
use crate::backend::sco_reader::ScoReader;
use crate::backend::uploader::Uploader;
use crate::backend::ObjectStore;
use crate::error::{Error, Result};

/// Tuning that applies to every volume of a daemon.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub direct: bool,
    pub wb_limit: u64,
    /// Pace guest writes to the upload rate above half the limit ([`super::write_pacer`]).
    pub pace_writes: bool,
    pub frame_size: usize,
    pub codec: Codec,
    pub checkpoint_every: u64,
    pub seal_after: Option<Duration>,
    pub drain_timeout: Duration,
    /// Upload SCOs to a local directory store by hard link when it can take them.
    pub link_local: bool,
    /// A guest write waits at most this long for scrub to free space.
    pub space_wait: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            direct: true,
            wb_limit: 4 << 30,
            pace_writes: true,
            frame_size: 64 << 10,
            codec: Codec::Lz4,
            checkpoint_every: 16,
            seal_after: Some(Duration::from_secs(60)),
            drain_timeout: Duration::from_secs(120),
            link_local: true,
            space_wait: Duration::from_secs(30),
        }
    }
}

/// What every volume of a daemon shares.
pub struct VolumeEnv {
    pub store: Arc<dyn ObjectStore>,
    /// Keys of encrypted volumes (and which key each writes with).
    pub keys: Arc<crate::crypto::KeyRing>,
    pub reader: Arc<ScoReader>,
    pub cache: Arc<ReadCache>,
    pub uploader: Arc<Uploader>,
    pub opts: EngineOptions,
    /// Every open volume (clones' parent layers are kept in step with scrubs).
    pub open_volumes: Mutex<Vec<std::sync::Weak<Volume>>>,
    /// Free space on the write buffer's file system (measured by the scrubber).
    pub disk: Arc<super::disk_room::DiskRoom>,
}

impl VolumeEnv {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        cache: Arc<ReadCache>,
        uploader: Arc<Uploader>,
        opts: EngineOptions,
    ) -> VolumeEnv {
        VolumeEnv::with_keys(store, Arc::default(), cache, uploader, opts)
    }

    /// An environment whose volumes may be encrypted with keys of `keys` (`store` then
    /// is a `crypto::store::CryptoStore` over the same key ring).
    pub fn with_keys(
        store: Arc<dyn ObjectStore>,
        keys: Arc<crate::crypto::KeyRing>,
        cache: Arc<ReadCache>,
        uploader: Arc<Uploader>,
        opts: EngineOptions,
    ) -> VolumeEnv {
        VolumeEnv {
            reader: Arc::new(ScoReader::with_keys(store.clone(), keys.clone())),
            keys,
            store,
            cache,
            uploader,
            opts,
            open_volumes: Mutex::new(Vec::new()),
            disk: Arc::default(),
        }
    }

    /// Open volumes, dropping entries of closed ones.
    pub fn volumes(&self) -> Vec<Arc<Volume>> {
        let mut l = self.open_volumes.lock();
        l.retain(|w| w.strong_count() > 0);
        l.iter().filter_map(|w| w.upgrade()).collect()
    }
}

pub struct Volume {
    pub(crate) name: String,
    pub(crate) meta: VolumeMeta,
    /// Size in bytes (the current map's; changed by `resize`).
    pub(crate) size: AtomicU64,
    pub(crate) cs: u64,
    pub(crate) shift: u32,
    pub(crate) dir: PathBuf,
    pub(crate) env: Arc<VolumeEnv>,
    pub(crate) owner: u32,
    pub(crate) read_only: bool,
    pub(crate) state: Mutex<State>,
    pub(crate) progress: Condvar,
    pub(crate) flush_side: Mutex<FlushSide>,
    /// Zero-filled SCO file for flush-heavy volumes.
    pub(crate) spare: super::spare_sco::SpareSco,
    pub(crate) rmw: Mutex<()>,
    /// One scrub at a time per volume.
    pub(crate) scrub_lock: Mutex<()>,
    /// SCOs scrub keeps because a live cluster of theirs is rotten with no good copy.
    /// Taken before `state` when both are held (`usage`), never while `state` is held.
    pub(crate) rotten: Mutex<super::scrub_rot::RottenScos>,
    /// Space limits guest writes pass (set by the scrubber) and space figures.
    pub space: super::space::SpaceGate,
    /// Slows guest writes as the write buffer fills (see [`super::write_pacer`]).
    pub(crate) pacer: super::write_pacer::WritePacer,
    /// End of the previous read: a read starting there is sequential (read-ahead).
    pub(crate) last_read_end: AtomicU64,
    pub counters: Counters,
    /// The DTL peer that gets a copy of every write not yet uploaded (none when unset).
    pub(crate) dtl: RwLock<Option<Arc<DtlLink>>>,
    /// Uploads held back by the operator (`volume set --uploads paused`).
    pub(crate) uploads_paused: AtomicBool,
}

impl Volume {
    pub(crate) fn new_internal(
        meta: VolumeMeta,
        dir: PathBuf,
        env: Arc<VolumeEnv>,
        read_only: bool,
        state: State,
    ) -> Volume {
        let cs = meta.cluster_size as u64;
        let spare = super::spare_sco::SpareSco::new(&dir, (meta.sco_clusters as u64) << cs.trailing_zeros());
        let space = super::space::SpaceGate::on_disk(env.disk.clone());
        Volume {
            size: AtomicU64::new(state.maps.map.clusters() << cs.trailing_zeros()),
            name: meta.name.clone(),
            owner: env.cache.owner_id(&meta.name),
            cs,
            shift: cs.trailing_zeros(),
            dir,
            read_only: read_only || meta.read_only,
            meta,
            env,
            state: Mutex::new(state),
            progress: Condvar::new(),
            flush_side: Mutex::new(FlushSide::default()),
            spare,
            rmw: Mutex::new(()),
            scrub_lock: Mutex::new(()),
            rotten: Mutex::default(),
            space,
            pacer: super::write_pacer::WritePacer::new(),
            last_read_end: AtomicU64::new(u64::MAX),
            counters: Counters::default(),
            dtl: RwLock::new(None),
            uploads_paused: AtomicBool::new(false),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Grow (or shrink: the data past the new end is dropped) to `size` bytes, a
    /// positive multiple of the cluster size. The change is a TLog record, made durable
    /// before this returns; snapshots keep their size. Reads and writes may run
    /// meanwhile: they see the old or the new size.
    pub fn resize(&self, size: u64) -> Result<()> {
        if size == 0 || !size.is_multiple_of(self.cs) || size / self.cs >= 1 << 40 {
            return Err(Error::InvalidArgument(format!(
                "size {size} must be a positive multiple of the cluster size {}",
                self.cs
            )));
        }
        {
            let mut st = self.state.lock();
            self.check_writable(&st)?;
            let clusters = size >> self.shift;
            self.append_record(&mut st, &Record::Resize { clusters })?;
            st.maps.map.resize(clusters);
            self.size.store(size, Ordering::Release);
        }
        self.flush()?;
        tracing::info!(volume = %self.name, size, "resized");
        Ok(())
    }

    pub fn cluster_size(&self) -> u64 {
        self.cs
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn meta(&self) -> &VolumeMeta {
        &self.meta
    }

    pub(crate) fn check_range(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        let size = self.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange { op, offset, len, size });
        }
        Ok(())
    }

    /// The error of every write, flush and upload wait once the volume has stopped
    /// after a local IO error (`State::failed` holds what failed).
    pub(crate) fn stopped_error(&self, failed: &str) -> Error {
        Error::io(
            format!("volume {} stopped after a local IO error", self.name),
            std::io::Error::other(failed.to_string()),
        )
    }

    pub(crate) fn check_writable(&self, st: &State) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(self.name.clone()));
        }
        if let Some(f) = &st.failed {
            return Err(self.stopped_error(f));
        }
        if st.closed {
            return Err(Error::ShutDown);
        }
        Ok(())
    }
}

impl Volume {
    /// Read-cache (hits, misses) of the daemon's shared cache.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.env.cache.stats()
    }

    /// Raw bytes of every sealed SCO, by SCO number.
    pub fn sealed_sco_bytes(&self) -> BTreeMap<u64, u64> {
        self.state.lock().maps.sco_sizes.iter().map(|(k, v)| (*k, (*v as u64) << self.shift)).collect()
    }

    pub fn stats(&self) -> VolumeStats {
        let st = self.state.lock();
        VolumeStats {
            mapped_clusters: st.maps.map.mapped(),
            wb_bytes: st.scos.wb_bytes,
            kept_bytes: st.scos.kept_bytes,
            pending_epochs: st.uploads.jobs.len() as u64,
            uploaded_bytes: self.counters.uploaded_bytes.load(Ordering::Relaxed),
            uploaded_stored_bytes: self.counters.uploaded_stored_bytes.load(Ordering::Relaxed),
            upload_frames_read: self.counters.upload_frames_read.load(Ordering::Relaxed),
            map_memory_bytes: st.maps.map.memory_bytes(),
            upload_error: st.uploads.upload_error.clone(),
            last_uploaded: st.uploads.last_uploaded,
        }
    }
}
