//! The volume engine: one virtual disk. Writes append cluster data to the open SCO in
//! the local write buffer and log `(cluster, location)` records for the open TLog;
//! reads resolve clusters through the map to the write buffer, the read cache or the
//! object store; a flush makes every completed write durable (SCO data, then TLog).
//! Knows nothing of virtio: the frontend calls it with iovecs into guest memory.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::io::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use super::checkpoint::CheckpointData;
use super::cluster_crc;
use super::dtl_link::{DtlLink, DtlMode};
use super::iov::{self, iovec, AlignedBuf};
use super::layers::Layer;
use super::location::{Location, UNMAPPED, ZERO};
use super::map::ClusterMap;
use super::meta::VolumeMeta;
use super::plan::{IoPlan, MAX_SEGS};
use super::read_cache::{BlockKey, Fill, ReadCache, BLOCK};
use super::sco_file::ScoFile;
use super::snapshots::Snapshots;
use super::space::Admit;
use super::sync_set::SyncSet;
use super::tlog::{Record, TlogWriter};
use crate::backend::sco_object::Codec;
use crate::backend::sco_reader::ScoReader;
use crate::backend::uploader::Uploader;
use crate::backend::{keys, ObjectStore};
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
        }
    }

    /// Open volumes, dropping entries of closed ones.
    pub fn volumes(&self) -> Vec<Arc<Volume>> {
        let mut l = self.open_volumes.lock();
        l.retain(|w| w.strong_count() > 0);
        l.iter().filter_map(|w| w.upgrade()).collect()
    }
}

/// State of one sealed epoch on its way to the object store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    Waiting,
    Running,
    Done,
    RetryAt(Instant),
}

#[derive(Debug)]
pub(crate) struct EpochUpload {
    pub sco_clusters: u32,
    /// The sealed TLog is written and synced locally.
    pub durable: bool,
    pub sco: JobState,
    pub tlog: JobState,
    pub attempts: u32,
}

pub(crate) struct OpenEpoch {
    pub epoch: u64,
    pub sco: Arc<ScoFile>,
    pub next_index: u32,
    pub pending: Vec<u8>,
    pub pending_count: u32,
    /// Records the epoch got in all (pending or already in its TLog).
    pub records: u64,
    pub opened_at: Instant,
    /// The SCO file was zero-filled ahead (flushes change no file metadata).
    pub zeroed: bool,
    /// Flushes since the epoch opened.
    pub flushes: u32,
}

/// A volume whose flushes each cover less than this much written data on average (over
/// at least [`FLUSHY_MIN`] flushes) writes into zero-filled SCO files.
const FLUSHY_BYTES: u64 = 256 << 10;
const FLUSHY_MIN: u32 = 32;
/// Once the TLog's file system has been full this long, a write throttled on a full write
/// buffer fails: the uploads that would make room need the TLog.
const LOG_FULL_WAIT: Duration = Duration::from_secs(2);

impl OpenEpoch {
    /// The epoch holds data or records, even if they are all in its TLog already (flushed,
    /// or logged as completed): sealing it and uploading its TLog is what puts them in the
    /// object store. (An epoch opened by a roll can hold only the records of writes that
    /// reserved space in the previous SCO, or of discards.)
    pub fn has_content(&self) -> bool {
        self.next_index > 0 || self.records > 0
    }

    /// This epoch's flushes each covered little data: later SCOs should be zero-filled.
    fn flush_heavy(&self, shift: u32) -> bool {
        self.flushes >= FLUSHY_MIN && ((self.next_index as u64) << shift) < self.flushes as u64 * FLUSHY_BYTES
    }
}

pub(crate) struct LocalSco {
    pub file: Arc<ScoFile>,
    pub clusters: u32,
    pub inflight: u32,
    pub uploaded: bool,
    /// Uploaded by hard-linking the file into the object store: the object is this
    /// inode, so after eviction the open file still reads the SCO's data.
    pub linked: bool,
}

/// Most evicted SCO files kept open because the object store holds the same inode
/// (two descriptors each); older ones are read through the object store.
pub(crate) const LINKED_MAX: usize = 512;

/// Encoded TLog records waiting to be written by the next flush.
pub(crate) struct PendingBatch {
    pub epoch: u64,
    pub payload: Vec<u8>,
    pub count: u32,
    pub seal: bool,
}

pub(crate) struct State {
    pub map: ClusterMap,
    pub open: Option<OpenEpoch>,
    pub next_epoch: u64,
    pub local: BTreeMap<u64, LocalSco>,
    /// Evicted SCOs whose object is their own (hard-linked) file, still open for reads.
    pub linked: BTreeMap<u64, Arc<ScoFile>>,
    pub dirty: BTreeSet<u64>,
    pub sealing: Vec<PendingBatch>,
    pub new_tlogs: Vec<TlogWriter>,
    pub uploads: BTreeMap<u64, EpochUpload>,
    /// Bytes of local SCO data not yet in the object store.
    pub wb_bytes: u64,
    /// Bytes of local SCO data already uploaded (evictable).
    pub kept_bytes: u64,
    pub last_checkpoint: u64,
    pub checkpoint_due: Option<CheckpointData>,
    /// Take a checkpoint when the open epoch is sealed, whatever `checkpoint_every` says
    /// (scrub deleted SCOs).
    pub checkpoint_at_seal: bool,
    /// Clusters of data in every sealed SCO (raw size), by SCO number.
    pub sco_sizes: BTreeMap<u64, u32>,
    /// Clusters of the volume's log: every SCO kept (sealed, open), live or garbage.
    /// Grows with each reservation; the scrubber recounts it.
    pub log_clusters: u64,
    pub checkpoint_running: bool,
    pub last_uploaded: u64,
    pub failed: Option<String>,
    /// Since when TLog writes find the write buffer's file system full (cleared by the
    /// next flush that gets its records written).
    pub log_full_since: Option<Instant>,
    pub closed: bool,
    pub upload_error: Option<String>,
    /// A newer owner generation holds the volume: no more writes or uploads here.
    pub fenced: bool,
    pub snaps: Snapshots,
    /// Parent layers of a clone (nearest first): unmapped clusters fall through to them.
    pub layers: Vec<Arc<Layer>>,
}

impl State {
    /// A volume with nothing written, whose next epoch is `next_epoch`.
    pub fn empty(clusters: u64, next_epoch: u64) -> State {
        State {
            map: ClusterMap::new(clusters),
            open: None,
            next_epoch,
            local: BTreeMap::new(),
            linked: BTreeMap::new(),
            dirty: BTreeSet::new(),
            sealing: Vec::new(),
            new_tlogs: Vec::new(),
            uploads: BTreeMap::new(),
            wb_bytes: 0,
            kept_bytes: 0,
            last_checkpoint: 0,
            checkpoint_due: None,
            checkpoint_at_seal: false,
            sco_sizes: BTreeMap::new(),
            log_clusters: 0,
            checkpoint_running: false,
            last_uploaded: 0,
            failed: None,
            log_full_since: None,
            closed: false,
            upload_error: None,
            fenced: false,
            snaps: Snapshots::default(),
            layers: Vec::new(),
        }
    }

    /// What a checkpoint as of the end of `epoch` holds (maps share pages).
    pub fn checkpoint_data(&self, epoch: u64) -> CheckpointData {
        CheckpointData { epoch, map: self.map.clone(), snaps: self.snaps.clone(), sco_sizes: self.sco_sizes.clone() }
    }

    /// Map entry of `cluster` and the layer it came from (0 = this volume, i = layer
    /// i-1); UNMAPPED entries fall through to the parent layers.
    #[inline]
    pub fn lookup(&self, cluster: u64) -> (usize, u64) {
        let e = self.map.get(cluster);
        if e != UNMAPPED || self.layers.is_empty() {
            return (0, e);
        }
        for (i, l) in self.layers.iter().enumerate() {
            let e = l.map.get(cluster);
            if e != UNMAPPED {
                return (i + 1, e);
            }
        }
        (0, UNMAPPED)
    }

    /// The entry a discard leaves: UNMAPPED, or ZERO when it would fall through to a parent.
    pub fn zero_entry(&self) -> u64 {
        if self.layers.is_empty() {
            UNMAPPED
        } else {
            ZERO
        }
    }
}

/// Counters exported by `info` and metrics.
#[derive(Default)]
pub struct Counters {
    /// Objects put to the store (SCOs, TLogs, checkpoints).
    pub store_puts: AtomicU64,
    /// Delete requests sent to the store (a batch of up to 1000 keys is one).
    pub store_delete_requests: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    pub throttled: AtomicU64,
    /// Guest writes the pacer slowed down, and the microseconds they waited in all.
    pub paced: AtomicU64,
    pub paced_us: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub uploaded_stored_bytes: AtomicU64,
    /// Frames read back at upload for their checksum (clusters written without one).
    pub upload_frames_read: AtomicU64,
    /// Reads that found local SCO data failing its checksum (rot on the local disk).
    pub rotten_reads: AtomicU64,
    /// TLog writes refused for lack of space (ENOSPC, EDQUOT): retried by the next flush.
    pub flush_no_space: AtomicU64,
}

/// What flushes own, one flush at a time: the open TLog writers and the ring their syncs go on.
#[derive(Default)]
pub(crate) struct FlushSide {
    pub(crate) tlogs: BTreeMap<u64, TlogWriter>,
    syncs: SyncSet,
    /// Epochs whose TLog got batches from [`Volume::log_completed`] since the last flush
    /// (synced by the next flush), and which of them were sealed.
    unsynced: BTreeSet<u64>,
    unsynced_sealed: Vec<u64>,
    /// The open epoch's records on their way to its TLog (reused: no allocation).
    logging: Vec<u8>,
}

pub struct Volume {
    pub(crate) name: String,
    pub(crate) meta: VolumeMeta,
    /// Size in bytes (the current map's; changed by `resize`).
    size: AtomicU64,
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
    rmw: Mutex<()>,
    /// One scrub at a time per volume.
    pub(crate) scrub_lock: Mutex<()>,
    /// Space limits guest writes pass (set by the scrubber) and space figures.
    pub space: super::space::SpaceGate,
    /// Slows guest writes as the write buffer fills (see [`super::write_pacer`]).
    pub(crate) pacer: super::write_pacer::WritePacer,
    /// End of the previous read: a read starting there is sequential (read-ahead).
    last_read_end: AtomicU64,
    pub counters: Counters,
    /// The DTL peer that gets a copy of every write not yet uploaded (none when unset).
    pub(crate) dtl: RwLock<Option<Arc<DtlLink>>>,
    /// Uploads held back by the operator (`volume set --uploads paused`).
    pub(crate) uploads_paused: AtomicBool,
}

/// On a sequential miss, fetch this much beyond the request from the object store.
const READ_AHEAD: u64 = 1 << 20;

thread_local! {
    /// Per-thread iovec scratch for reads: the run being read, and its per-block pieces.
    static SCRATCH: std::cell::RefCell<(Vec<iovec>, Vec<iovec>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Where a run of clusters is read from.
enum Source {
    Zero,
    Local(Arc<ScoFile>, Location),
    Remote(Option<Arc<Layer>>, Location),
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
        Volume {
            size: AtomicU64::new(state.map.clusters() << cs.trailing_zeros()),
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
            space: super::space::SpaceGate::default(),
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
            st.map.resize(clusters);
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

    fn check_range(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        let size = self.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange { op, offset, len, size });
        }
        Ok(())
    }

    pub(crate) fn check_writable(&self, st: &State) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(self.name.clone()));
        }
        if let Some(f) = &st.failed {
            return Err(Error::io(
                format!("volume {} stopped after a local IO error", self.name),
                std::io::Error::other(f.clone()),
            ));
        }
        if st.closed {
            return Err(Error::ShutDown);
        }
        Ok(())
    }

    // ----- write path -----

    /// Write `iovs` at byte `offset`. Unaligned edges are read-modify-written.
    pub fn write_iovecs(&self, offset: u64, iovs: &[iovec]) -> Result<()> {
        let len = iov::total(iovs);
        self.check_range("write", offset, len)?;
        if self.read_only {
            return Err(Error::ReadOnly(self.name.clone()));
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters.write_bytes.fetch_add(len, Ordering::Relaxed);
        if len == 0 {
            return Ok(());
        }
        let mask = self.cs - 1;
        if offset & mask == 0 && len & mask == 0 {
            return self.write_clusters(offset >> self.shift, iovs);
        }
        let _g = self.rmw.lock();
        let end = offset + len;
        let mut pos = offset;
        let mut sub = Vec::new();
        while pos < end {
            let cstart = pos & !mask;
            let in_off = pos - cstart;
            if in_off == 0 && end - pos >= self.cs {
                // Aligned middle part, straight from the caller's buffers.
                let n = (end - pos) & !mask;
                iov::sub_range(iovs, pos - offset, n, &mut sub);
                self.write_clusters(pos >> self.shift, &sub)?;
                pos += n;
                continue;
            }
            let take = (self.cs - in_off).min(end - pos);
            let mut buf = AlignedBuf::zeroed(self.cs as usize);
            self.read_iovecs(cstart, &[buf.as_iovec()])?;
            iov::sub_range(iovs, pos - offset, take, &mut sub);
            // SAFETY: `sub` points into the caller's buffers, valid for this call.
            unsafe { iov::copy_out(&sub, &mut buf[in_off as usize..(in_off + take) as usize]) };
            self.write_clusters(cstart >> self.shift, &[buf.as_iovec()])?;
            pos += take;
        }
        Ok(())
    }

    /// Write whole clusters from `cluster`; `iovs` holds a multiple of the cluster size.
    ///
    /// Every write takes cluster checksums as it is written (two crc32c passes over its
    /// buffers on the IO path: before the IO, and after it to catch buffers the guest
    /// changed in flight): reads of local SCO data check them (`super::sco_crcs`), and an
    /// upload by hard link combines them into frame checksums (`Volume::adopt_sco`);
    /// clusters without one (written before a restart) get theirs when the uploader reads
    /// the SCO back. Checksumming only writes up to 64 KiB and reading larger ones back at
    /// upload cost more (a second disk read of the data, uploader CPU on cold memory):
    /// measured 2026-12-04, 1 MiB QD8 overwrites of a 1 GiB volume (native loadgen, 2
    /// queues, 3 alternating runs, busy 2-core host): 578-583 MB/s and 544-610 us CPU per
    /// IO checksumming every write, against 351-403 MB/s and 679-750 us.
    fn write_clusters(&self, cluster: u64, iovs: &[iovec]) -> Result<()> {
        let n = iov::total(iovs) >> self.shift;
        let dtl = self.dtl.read().clone();
        let mut done = 0u64;
        let mut sub = Vec::new();
        while done < n {
            let (file, index, take) = self.reserve(n - done, true)?;
            let bytes = (take as u64) << self.shift;
            let piece: &[iovec] = if done == 0 && take as u64 == n {
                iovs
            } else {
                iov::sub_range(iovs, done << self.shift, bytes, &mut sub);
                &sub
            };
            let mut crcs = Vec::new();
            // SAFETY: `piece` points into the caller's buffers, valid for this call.
            unsafe { cluster_crc::compute(piece, self.cs as usize, &mut crcs) };
            let io = file.writev_at(piece, (index as u64) << self.shift);
            // SAFETY: as above.
            unsafe { cluster_crc::recheck(piece, self.cs as usize, &mut crcs) };
            let ok = io.is_ok();
            if let (Some(l), true) = (&dtl, ok) {
                // The data goes to the peer before the record that maps it.
                let r = l.send_data(file.number, index, cluster + done, self.cs, piece);
                self.dtl_result(r)?;
            }
            self.commit(&mut self.state.lock(), file.number, index, cluster + done, take, ok, &crcs)?;
            if let Err(e) = io {
                return Err(Error::io(format!("volume {}: cannot write SCO {}", self.name, file.number), e));
            }
            done += take as u64;
        }
        self.dtl_wait(dtl.as_deref(), DtlMode::Sync)
    }

    /// Finish a reserved write of `take` clusters at `(sco, index)` for `cluster`: map
    /// them, keep their checksums (`crcs`, one per cluster, or empty) and log the record
    /// if the data landed; release the reservation either way.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        st: &mut State,
        sco: u64,
        index: u32,
        cluster: u64,
        take: u32,
        ok: bool,
        crcs: &[u64],
    ) -> Result<()> {
        if let Some(l) = st.local.get_mut(&sco) {
            l.inflight -= 1;
            if ok && crcs.len() == take as usize {
                l.file.crcs.store(index, crcs);
            } else {
                (index..index + take).for_each(|i| l.file.crcs.clear(i));
            }
        }
        if !ok {
            self.env.uploader.notify();
            return Ok(());
        }
        let loc = Location::new(sco, index);
        for i in 0..take as u64 {
            st.map.set(cluster + i, loc.advance(i as u32).pack());
        }
        st.dirty.insert(sco);
        self.append_record(st, &Record::Write { cluster, count: take, loc })
    }

    /// Plan a write the caller performs itself (io_uring): reserves space for whole,
    /// aligned clusters. `Ok(false)`: not plannable (unaligned, too many segments) — use
    /// `write_iovecs`. A planned write must be finished with [`Volume::finish_write`].
    pub fn plan_write(&self, offset: u64, len: u64, plan: &mut IoPlan) -> Result<bool> {
        plan.clear();
        self.check_range("write", offset, len)?;
        if self.read_only {
            return Err(Error::ReadOnly(self.name.clone()));
        }
        let mask = self.cs - 1;
        let n = len >> self.shift;
        let sco_clusters = self.meta.sco_clusters as u64;
        if offset & mask != 0 || len & mask != 0 || len == 0 || n.div_ceil(sco_clusters) + 1 > MAX_SEGS as u64 {
            return Ok(false);
        }
        if self.dtl.read().is_some() {
            // Writes to a DTL copy their data from the request: the synchronous path.
            return Ok(false);
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters.write_bytes.fetch_add(len, Ordering::Relaxed);
        // Checksummed as written (see `write_clusters`).
        plan.set_crc_unit(self.cs as usize);
        let cluster = offset >> self.shift;
        let mut done = 0u64;
        while done < n {
            let (file, index, take) = match self.reserve(n - done, true) {
                Ok(r) => r,
                Err(e) => {
                    let _ = self.finish_write(plan, false);
                    return Err(e);
                }
            };
            plan.push_file(&file, (index as u64) << self.shift, (take as u64) << self.shift, cluster + done, index);
            done += take as u64;
        }
        Ok(true)
    }

    /// Report the outcome of a planned write; clears the plan.
    pub fn finish_write(&self, plan: &mut IoPlan, ok: bool) -> Result<()> {
        let mut st = self.state.lock();
        let mut res = Ok(());
        let mut at = 0usize;
        for s in plan.segs() {
            let take = (s.len >> self.shift) as u32;
            // The plan's checksums run over its segments in order (none if not taken).
            let crcs = plan.crcs().get(at..at + take as usize).unwrap_or(&[]);
            at += take as usize;
            let r = self.commit(&mut st, s.sco, s.index, s.cluster, take, ok, crcs);
            if res.is_ok() {
                res = r;
            }
        }
        drop(st);
        plan.clear();
        res
    }

    /// Plan a read the caller performs itself: local file ranges and zero runs.
    /// `Ok(false)`: some data is only in the object store (or too many runs) — use
    /// `read_iovecs`.
    pub fn plan_read(&self, offset: u64, len: u64, plan: &mut IoPlan) -> Result<bool> {
        plan.clear();
        self.check_range("read", offset, len)?;
        if len == 0 {
            return Ok(false);
        }
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            if plan.is_full() {
                plan.clear();
                return Ok(false);
            }
            let cluster = pos >> self.shift;
            let in_off = pos & (self.cs - 1);
            let (src, run) = self.resolve_run(cluster, (end - 1) >> self.shift);
            let run_bytes = ((run << self.shift) - in_off).min(end - pos);
            match src {
                Source::Zero => plan.push_zero(run_bytes),
                Source::Local(file, loc) => {
                    // Rotten SCOs, and parts of clusters with checksums (checked only
                    // whole), are read by `read_iovecs`.
                    let whole = in_off == 0 && run_bytes.is_multiple_of(self.cs);
                    if file.crcs.is_rotten() || (!whole && file.crcs.any_known(loc.index, run as u32)) {
                        plan.clear();
                        return Ok(false);
                    }
                    plan.push_file(&file, ((loc.index as u64) << self.shift) + in_off, run_bytes, 0, 0)
                }
                Source::Remote(..) => {
                    plan.clear();
                    return Ok(false);
                }
            }
            pos += run_bytes;
        }
        plan.set_check_unit(self.cs as usize);
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters.read_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(true)
    }

    /// Reserve up to `want` clusters at the tail of the open SCO, throttling while the
    /// write buffer is full (and, for `guest` writes, while space is short: see
    /// [`super::space`]) and rolling to a new epoch when the SCO is full. Scrub and
    /// flatten copies pass the space gate: they are how space comes back.
    pub(crate) fn reserve(&self, want: u64, guest: bool) -> Result<(Arc<ScoFile>, u32, u32)> {
        let mut st = self.state.lock();
        self.check_writable(&st)?;
        if guest {
            // Waiting for space is the caller's (`wait_for_space`, before it holds any
            // reservation: an upload, and so scrub, waits for every reservation of an
            // SCO to finish); here a write only fails when nothing can be freed.
            if let Admit::Fail(why) = self.space.admit(st.log_clusters, st.map.mapped()) {
                return Err(Error::NoSpace { volume: self.name.clone(), detail: why });
            }
        }
        if guest && self.env.opts.pace_writes {
            let pause = self.pacer.pause(want << self.shift, st.wb_bytes, self.env.opts.wb_limit);
            if !pause.is_zero() {
                self.counters.paced.fetch_add(1, Ordering::Relaxed);
                self.counters.paced_us.fetch_add(pause.as_micros() as u64, Ordering::Relaxed);
                parking_lot::MutexGuard::unlocked(&mut st, || std::thread::sleep(pause));
                self.check_writable(&st)?;
            }
        }
        let mut throttled = None;
        while st.wb_bytes >= self.env.opts.wb_limit {
            if throttled.is_none() {
                throttled = Some(Instant::now());
                self.counters.throttled.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(volume = %self.name, "write buffer full: throttling writes until uploads catch up");
            }
            self.env.uploader.notify();
            self.progress.wait_for(&mut st, Duration::from_millis(100));
            self.check_writable(&st)?;
            if st.log_full_since.is_some_and(|t| t.elapsed() >= LOG_FULL_WAIT) {
                // Uploads that would make room cannot finish while the TLog cannot be
                // written: fail the write rather than hold the guest's request (at most
                // LOG_FULL_WAIT, counted from the first TLog write refused).
                return Err(self.log_space_error(&Error::io(
                    "the write buffer is full and its TLog cannot be written",
                    std::io::Error::from_raw_os_error(libc::ENOSPC),
                )));
            }
        }
        if let Some(t) = throttled {
            tracing::debug!(volume = %self.name, waited_ms = t.elapsed().as_millis() as u64, "write buffer throttle released");
        }
        let sco_clusters = self.meta.sco_clusters;
        let full = match &st.open {
            // A flush-heavy volume moves to the zero-filled spare as soon as it is ready.
            Some(o) => {
                o.next_index >= sco_clusters
                    || (o.next_index > 0 && !o.zeroed && o.flush_heavy(self.shift) && self.spare.is_ready())
            }
            None => true,
        };
        if full {
            if st.open.is_some() {
                // The uploader makes the seal durable (a flush) in the background.
                self.env.uploader.notify();
            }
            self.roll(&mut st, true)?;
        }
        let o = st.open.as_mut().expect("open epoch");
        let take = (sco_clusters - o.next_index).min(want.min(u32::MAX as u64) as u32);
        let index = o.next_index;
        o.next_index += take;
        let file = o.sco.clone();
        let epoch = o.epoch;
        let l = st.local.get_mut(&epoch).expect("local SCO of open epoch");
        l.inflight += 1;
        l.clusters = index + take;
        st.wb_bytes += (take as u64) << self.shift;
        st.log_clusters += take as u64;
        self.space.refresh(st.log_clusters, st.map.mapped());
        Ok((file, index, take))
    }

    /// Recompute whether writes must wait (after the limits changed) and wake waiters.
    pub(crate) fn refresh_space(&self) {
        let st = self.state.lock();
        self.space.refresh(st.log_clusters, st.map.mapped());
        drop(st);
        self.progress.notify_all();
    }

    /// Writes may go on without waiting for scrub (one atomic load).
    pub fn space_admits(&self) -> bool {
        self.space.admits()
    }

    /// Wait while space is short, until scrub frees some; [`Error::NoSpace`] when nothing
    /// can be freed or the wait times out. Call it before a write, holding no
    /// reservation (a frontend first completes the requests it has in flight).
    pub fn wait_for_space(&self) -> Result<()> {
        if self.space.admits() {
            return Ok(());
        }
        let mut st = self.state.lock();
        self.wait_for_space_locked(&mut st)
    }

    fn wait_for_space_locked(&self, st: &mut parking_lot::MutexGuard<'_, State>) -> Result<()> {
        // The timeout runs from the last time scrub freed space: writes slowed to what
        // scrub reclaims go on; they fail only when scrub makes no progress at all.
        let mut start = Instant::now();
        let mut mark = self.space.freed_mark();
        let timeout = self.env.opts.space_wait;
        self.space.set_waiting(true);
        let res = loop {
            let admit = self.space.admit(st.log_clusters, st.map.mapped());
            self.space.refresh(st.log_clusters, st.map.mapped());
            match admit {
                Admit::Yes => break Ok(()),
                Admit::Fail(why) => break Err(Error::NoSpace { volume: self.name.clone(), detail: why }),
                Admit::Wait if self.space.freed_mark() != mark => {
                    mark = self.space.freed_mark();
                    start = Instant::now();
                }
                Admit::Wait if start.elapsed() >= timeout => {
                    break Err(Error::NoSpace {
                        volume: self.name.clone(),
                        detail: format!("scrub freed nothing for {} s", timeout.as_secs()),
                    })
                }
                Admit::Wait => {
                    self.progress.wait_for(st, Duration::from_millis(50));
                    if let Err(e) = self.check_writable(st) {
                        break Err(e);
                    }
                }
            }
        };
        self.space.set_waiting(false);
        if let Err(e) = &res {
            tracing::warn!(volume = %self.name, error = %e, "write refused");
        }
        res
    }

    /// Append a record to the open epoch's pending batch (opening one if needed).
    pub(crate) fn append_record(&self, st: &mut State, rec: &Record) -> Result<()> {
        if st.open.is_none() {
            self.roll(st, true)?;
        }
        let o = st.open.as_mut().expect("open epoch");
        let start = o.pending.len();
        rec.encode(&mut o.pending);
        o.pending_count += 1;
        o.records += 1;
        if let Some(l) = &*self.dtl.read() {
            let r = l.send_record(o.epoch, &o.pending[start..]);
            self.dtl_result_locked(st, r)?;
        }
        Ok(())
    }

    /// Append whole clusters of `data` to the open SCO (over as many reservations as it
    /// takes) for maintenance copies (scrub, flatten). Once each piece has landed,
    /// `landed(state, location, first cluster of data, clusters)` maps and logs it under
    /// the volume lock.
    pub(crate) fn append_data(
        &self,
        data: &[u8],
        mut landed: impl FnMut(&mut State, Location, u32, u32) -> Result<()>,
    ) -> Result<()> {
        let n = (data.len() as u64 >> self.shift) as u32;
        let mut done = 0u32;
        while done < n {
            let (file, index, take) = self.reserve((n - done) as u64, false)?;
            let piece = &data[((done as u64) << self.shift) as usize..(((done + take) as u64) << self.shift) as usize];
            let v = [iovec { iov_base: piece.as_ptr() as *mut libc::c_void, iov_len: piece.len() }];
            let io = file.writev_at(&v, (index as u64) << self.shift);
            let mut st = self.state.lock();
            if let Some(l) = st.local.get_mut(&file.number) {
                l.inflight -= 1;
            }
            if let Err(e) = io {
                drop(st);
                self.env.uploader.notify();
                return Err(Error::io(format!("volume {}: cannot write SCO {}", self.name, file.number), e));
            }
            if let Some(l) = &*self.dtl.read() {
                let r = l.send_data(file.number, index, 0, self.cs, &v);
                self.dtl_result_locked(&mut st, r)?;
            }
            st.dirty.insert(file.number);
            landed(&mut st, Location::new(file.number, index), done, take)?;
            done += take;
        }
        Ok(())
    }

    // ----- discard / write zeroes -----

    /// Make `[offset, offset+len)` read as zeroes. Whole clusters are unmapped (a TLog
    /// record, no data written); partial clusters at the edges are zero-written.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range("write-zeroes", offset, len)?;
        if self.read_only {
            return Err(Error::ReadOnly(self.name.clone()));
        }
        let mask = self.cs - 1;
        let end = offset + len;
        let first_full = (offset + mask) & !mask;
        let last_full = end & !mask;
        if first_full >= last_full {
            return self.zero_bytes(offset, len);
        }
        if offset < first_full {
            self.zero_bytes(offset, first_full - offset)?;
        }
        // Unmap whole clusters, in chunks so guest IO is never blocked for long.
        let mut c = first_full >> self.shift;
        let c_end = last_full >> self.shift;
        const CHUNK: u64 = 1 << 16;
        while c < c_end {
            let n = (c_end - c).min(CHUNK);
            let mut st = self.state.lock();
            self.check_writable(&st)?;
            // Unmapped clusters read as zeroes (a clone records ZERO: no fall-through).
            let entry = st.zero_entry();
            st.map.fill(c, n, entry);
            self.append_record(&mut st, &Record::Fill { cluster: c, count: n, entry })?;
            drop(st);
            c += n;
        }
        if last_full < end {
            self.zero_bytes(last_full, end - last_full)?;
        }
        self.dtl_wait(self.dtl.read().clone().as_deref(), DtlMode::Sync)
    }

    fn zero_bytes(&self, offset: u64, len: u64) -> Result<()> {
        let mut z = vec![0u8; len as usize];
        let v = [iovec { iov_base: z.as_mut_ptr() as *mut libc::c_void, iov_len: z.len() }];
        self.write_iovecs(offset, &v)
    }

    // ----- flush -----

    /// Make every write completed before this call durable: fdatasync the SCO data, then
    /// write the TLog records that map it (group commit) and fdatasync them.
    pub fn flush(&self) -> Result<()> {
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        self.flush_inner(true)
    }

    /// Write the TLog records of every completed write to the TLog now, without any sync:
    /// a write completed to a guest then survives a crash or `kill -9` of the daemon
    /// process (not a power loss: that still takes a flush). A restarted daemon serving a
    /// reconnected, still running guest must not lose a write the guest saw completed.
    /// Cheap when nothing is pending.
    pub fn log_completed(&self) -> Result<()> {
        let mut side = self.flush_side.lock();
        let (epoch, count) = {
            let mut st = self.state.lock();
            if !st.sealing.is_empty() || !st.new_tlogs.is_empty() {
                // An epoch rolled (rare): the general path, in order.
                drop(st);
                drop(side);
                return self.flush_inner(false);
            }
            let Some(o) = st.open.as_mut().filter(|o| o.pending_count > 0) else { return Ok(()) };
            // The hot path: the open epoch's records, copied into a reused buffer.
            side.logging.clear();
            side.logging.extend_from_slice(&o.pending);
            o.pending.clear();
            (o.epoch, std::mem::take(&mut o.pending_count))
        };
        let FlushSide { tlogs, unsynced, logging, .. } = &mut *side;
        let w = tlogs.get_mut(&epoch).ok_or_else(|| {
            Error::io(format!("TLog {epoch} is not open"), std::io::Error::other("missing TLog writer"))
        })?;
        if let Err(e) = w.write_batch(logging, count) {
            if out_of_space(&e) {
                // The next flush writes these records (it reports the failure if space
                // is still short); the completed writes are not lost.
                let batch = PendingBatch { epoch, payload: logging.clone(), count, seal: false };
                self.requeue(std::iter::once(batch), &e);
                return Err(self.log_space_error(&e));
            }
            tracing::error!(volume = %self.name, error = %e, "writing the TLog failed: the volume stops accepting writes");
            self.state.lock().failed = Some(e.to_string());
            return Err(e);
        }
        unsynced.insert(epoch);
        Ok(())
    }

    /// Put TLog batches a full file system refused back in front of the newer ones, for
    /// the next flush (the caller holds the flush side); log the failure now and then.
    fn requeue(&self, batches: impl Iterator<Item = PendingBatch>, e: &Error) {
        let mut st = self.state.lock();
        st.log_full_since.get_or_insert_with(Instant::now);
        let mut front: Vec<PendingBatch> = batches.collect();
        front.append(&mut st.sealing);
        st.sealing = front;
        drop(st);
        let n = self.counters.flush_no_space.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::error!(volume = %self.name, failures = n, error = %e, "no space left for the TLog on the write buffer's file system: flushes fail until space is freed (nothing acknowledged is lost)");
        }
    }

    fn log_space_error(&self, e: &Error) -> Error {
        Error::NoSpace { volume: self.name.clone(), detail: format!("the write buffer's file system is full: {e}") }
    }

    fn flush_inner(&self, sync: bool) -> Result<()> {
        let mut side = self.flush_side.lock();
        let (dirty, batches, new_tlogs, flush_heavy) = {
            let mut st = self.state.lock();
            if let Some(f) = &st.failed {
                return Err(Error::io(
                    format!("volume {} stopped after a local IO error", self.name),
                    std::io::Error::other(f.clone()),
                ));
            }
            let dirty: Vec<Arc<ScoFile>> = if sync {
                std::mem::take(&mut st.dirty)
                    .into_iter()
                    .filter_map(|n| st.local.get(&n).map(|l| l.file.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            let mut batches = std::mem::take(&mut st.sealing);
            if let Some(o) = st.open.as_mut() {
                if o.pending_count > 0 {
                    batches.push(PendingBatch {
                        epoch: o.epoch,
                        payload: std::mem::replace(&mut o.pending, Vec::with_capacity(4096)),
                        count: std::mem::take(&mut o.pending_count),
                        seal: false,
                    });
                }
            }
            let flush_heavy = sync
                && st.open.as_mut().is_some_and(|o| {
                    o.flushes = o.flushes.saturating_add(1);
                    o.flush_heavy(self.shift)
                });
            (dirty, batches, std::mem::take(&mut st.new_tlogs), flush_heavy)
        };
        if flush_heavy {
            self.spare.prepare();
        }
        let FlushSide { tlogs, syncs, unsynced, unsynced_sealed, .. } = &mut *side;
        for t in new_tlogs {
            tlogs.insert(t.epoch(), t);
        }
        // Set when the file system ran out of space writing batch `i` (and those after).
        let mut unwritten_from = None;
        let result = (|| -> Result<Vec<u64>> {
            // The SCO data first: a TLog record must never reach the disk before the data
            // it maps. (Writing the records with O_DIRECT and letting the SCOs' fdatasync
            // flush both let a power loss between the two leave records pointing at data
            // that never got there: the cluster read zeroes instead of its older, flushed
            // content; found by tests/guest/powerloss-e2e.sh.)
            let sco_fds: Vec<RawFd> = dirty.iter().map(|f| f.buffered_fd()).collect();
            syncs
                .sync_all(&sco_fds)
                .map_err(|(i, e)| Error::io(format!("cannot sync {}", dirty[i].path().display()), e))?;
            let mut touched = BTreeSet::new();
            let mut sealed = Vec::new();
            if sync {
                touched.append(unsynced);
                sealed.append(unsynced_sealed);
            }
            for (i, b) in batches.iter().enumerate() {
                let w = tlogs.get_mut(&b.epoch).ok_or_else(|| {
                    Error::io(format!("TLog {} is not open", b.epoch), std::io::Error::other("missing TLog writer"))
                })?;
                if let Err(e) = w.write_batch(&b.payload, b.count) {
                    if out_of_space(&e) {
                        // Nothing is lost: the batches written so far are synced by the
                        // next flush, the others are written by it (see `requeue`).
                        unsynced.append(&mut touched);
                        unsynced_sealed.append(&mut sealed);
                        unwritten_from = Some(i);
                    }
                    return Err(e);
                }
                touched.insert(b.epoch);
                if b.seal {
                    sealed.push(b.epoch);
                }
            }
            if !sync {
                // Records of completed writes logged for a restart (no sync): their data
                // went before them (the writes completed); the next flush syncs both.
                unsynced.append(&mut touched);
                unsynced_sealed.append(&mut sealed);
                return Ok(Vec::new());
            }
            // Then the records, made durable by their own fdatasync (a device flush even
            // when they went with O_DIRECT).
            let fds: Vec<RawFd> = touched.iter().map(|e| tlogs[e].raw_fd()).collect();
            syncs
                .sync_all(&fds)
                .map_err(|(_, e)| Error::io(format!("cannot sync the TLog of epoch(s) {touched:?}"), e))?;
            for e in &touched {
                if let Some(w) = tlogs.get_mut(e) {
                    w.synced();
                }
            }
            for e in &sealed {
                if let Some(mut w) = tlogs.remove(e) {
                    w.finish();
                }
            }
            Ok(sealed)
        })();
        if let (Some(i), Err(e)) = (unwritten_from, &result) {
            // Out of space: a retryable failure (the SCO data is synced, the records are
            // in memory). Still under the flush side, so no later flush writes newer
            // records first.
            self.requeue(batches.into_iter().skip(i), e);
            drop(side);
            return Err(self.log_space_error(e));
        }
        if let Err(e) = &result {
            // Marked failed before another flush can take the flush side: that flush
            // would find the dirty SCOs already taken (and their fdatasync error already
            // reported, to this flush only) and complete OK over writes that are not on
            // disk. Found by tests/guest/flakey-e2e.sh (acknowledged writes read zeroes).
            tracing::error!(volume = %self.name, error = %e, "flush failed: the volume stops accepting writes");
            self.state.lock().failed = Some(e.to_string());
        }
        drop(side);
        let sealed = result?;
        if sync || !sealed.is_empty() {
            let mut st = self.state.lock();
            if sync {
                // The TLog took every record: its file system has room again.
                st.log_full_since = None;
            }
            for e in &sealed {
                if let Some(u) = st.uploads.get_mut(e) {
                    u.durable = true;
                }
            }
        }
        if !sealed.is_empty() {
            self.env.uploader.notify();
        }
        if !sync {
            return Ok(());
        }
        // Flushed data is on two hosts: the DTL holds every write before this flush.
        self.dtl_wait(self.dtl.read().clone().as_deref(), DtlMode::Async)
    }

    // ----- read path -----

    /// Read into `iovs` from byte `offset`.
    pub fn read_iovecs(&self, offset: u64, iovs: &[iovec]) -> Result<()> {
        let len = iov::total(iovs);
        self.check_range("read", offset, len)?;
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters.read_bytes.fetch_add(len, Ordering::Relaxed);
        let sequential = self.last_read_end.swap(offset + len, Ordering::Relaxed) == offset;
        SCRATCH.with(|s| {
            let (sub, pieces) = &mut *s.borrow_mut();
            let end = offset + len;
            let mut pos = offset;
            while pos < end {
                let cluster = pos >> self.shift;
                let in_off = pos & (self.cs - 1);
                let last_cluster = (end - 1) >> self.shift;
                let (src, run) = self.resolve_run(cluster, last_cluster);
                let run_bytes = ((run << self.shift) - in_off).min(end - pos);
                iov::sub_range(iovs, pos - offset, run_bytes, sub);
                match src {
                    // SAFETY: the caller's iovecs are valid writable buffers.
                    Source::Zero => unsafe { iov::zero(sub) },
                    Source::Local(file, loc) => {
                        self.read_local(&file, loc, in_off, run_bytes, sub, pieces, sequential)?
                    }
                    Source::Remote(layer, loc) => {
                        self.read_remote(layer.as_deref(), loc, in_off, run_bytes, sub, pieces, sequential)?
                    }
                }
                pos += run_bytes;
            }
            Ok(())
        })
    }

    /// Resolve clusters from `first` (up to `last`) to one source run.
    fn resolve_run(&self, first: u64, last: u64) -> (Source, u64) {
        let st = self.state.lock();
        let (layer, e0) = st.lookup(first);
        let mut run = 1u64;
        match Location::unpack(e0) {
            None => {
                while first + run <= last && Location::unpack(st.lookup(first + run).1).is_none() {
                    run += 1;
                }
                (Source::Zero, run)
            }
            Some(loc) => {
                while first + run <= last
                    && run < 1 << 20
                    && st.lookup(first + run) == (layer, loc.advance(run as u32).pack())
                {
                    run += 1;
                }
                if layer > 0 {
                    return (Source::Remote(Some(st.layers[layer - 1].clone()), loc), run);
                }
                match st.local.get(&loc.sco).map(|l| &l.file).or_else(|| st.linked.get(&loc.sco)) {
                    Some(f) => (Source::Local(f.clone(), loc), run),
                    None => (Source::Remote(None, loc), run),
                }
            }
        }
    }

    /// Read bytes `[in_off, in_off+len)` counted from location `loc` of an SCO that is
    /// only in the object store: read cache first, else fetch frames and fill the cache.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn read_remote(
        &self,
        layer: Option<&Layer>,
        loc: Location,
        in_off: u64,
        len: u64,
        iovs: &[iovec],
        sub: &mut Vec<iovec>,
        sequential: bool,
    ) -> Result<()> {
        let start = ((loc.index as u64) << self.shift) + in_off;
        let end = start + len;
        let mut pos = start;

        while pos < end {
            let block = pos / BLOCK as u64;
            let boff = (pos % BLOCK as u64) as usize;
            let take = (BLOCK as u64 - boff as u64).min(end - pos);
            iov::sub_range(iovs, pos - start, take, sub);
            let (owner, name, meta) = match layer {
                Some(l) => (l.owner, l.volume.as_str(), &l.meta),
                None => (self.owner, self.name.as_str(), &self.meta),
            };
            let key = BlockKey { owner, sco: loc.sco, block: block as u32 };
            if self.env.cache.read(key, boff, sub) {
                pos += take;
                continue;
            }
            // Miss: fetch the frames covering the rest of the range (and, for sequential
            // reads, up to READ_AHEAD more of the same SCO into the cache).
            let okey = keys::sco(name, meta.gen_of_epoch(loc.sco), loc.sco);
            let mut fetch_end = end;
            if sequential {
                if let Ok(ix) = self.env.reader.index(&okey) {
                    fetch_end = (end + READ_AHEAD).min(ix.raw_len).max(end);
                }
            }
            let mut fetched = self.env.reader.read_frames(&okey, pos, fetch_end - pos);
            if fetched.is_err() && fetch_end > end {
                // The read-ahead part may be what failed: retry just the request.
                fetched = self.env.reader.read_frames(&okey, pos, end - pos);
            }
            let (raw_start, data) = fetched.map_err(|e| {
                tracing::error!(volume = %self.name, object = %okey, error = %e, "read from the object store failed");
                e
            })?;
            // Fill the cache with every whole block fetched, in the background.
            let first_block = raw_start.div_ceil(BLOCK as u64);
            let last_block = (raw_start + data.len() as u64) / BLOCK as u64;
            if last_block > first_block {
                self.env.cache.insert_blocks_async(Fill {
                    owner,
                    sco: loc.sco,
                    first_block,
                    data: data.clone(),
                    start: (first_block * BLOCK as u64 - raw_start) as usize,
                    blocks: (last_block - first_block) as usize,
                });
            }
            iov::sub_range(iovs, pos - start, end - pos, sub);
            let at = (pos - raw_start) as usize;
            // SAFETY: the caller's iovecs are valid writable buffers.
            unsafe { iov::copy_in(sub, &data[at..at + (end - pos) as usize]) };
            return Ok(());
        }
        Ok(())
    }

    // ----- convenience for slices -----

    /// Write `data` at `offset`, first waiting while space is short.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.wait_for_space()?;
        let v = [iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() }];
        self.write_iovecs(offset, &v)
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let v = [iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() }];
        self.read_iovecs(offset, &v)
    }

    /// True when no cluster of `[offset, offset+len)` holds data (reads as zeroes).
    pub fn is_unmapped(&self, offset: u64, len: u64) -> bool {
        let st = self.state.lock();
        let first = offset >> self.shift;
        let last = (offset + len - 1) >> self.shift;
        (first..=last).all(|c| Location::unpack(st.lookup(c).1).is_none())
    }
}

/// A point-in-time view of a volume's counters and state.
#[derive(Debug, Clone, Default)]
pub struct VolumeStats {
    pub mapped_clusters: u64,
    pub wb_bytes: u64,
    pub kept_bytes: u64,
    pub pending_epochs: u64,
    pub uploaded_bytes: u64,
    pub uploaded_stored_bytes: u64,
    /// Frames read back at upload for their checksum.
    pub upload_frames_read: u64,
    pub map_memory_bytes: u64,
    pub upload_error: Option<String>,
    /// Every epoch up to this one is in the object store.
    pub last_uploaded: u64,
}

impl Volume {
    /// Read-cache (hits, misses) of the daemon's shared cache.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.env.cache.stats()
    }

    /// Raw bytes of every sealed SCO, by SCO number.
    pub fn sealed_sco_bytes(&self) -> BTreeMap<u64, u64> {
        self.state.lock().sco_sizes.iter().map(|(k, v)| (*k, (*v as u64) << self.shift)).collect()
    }

    pub fn stats(&self) -> VolumeStats {
        let st = self.state.lock();
        VolumeStats {
            mapped_clusters: st.map.mapped(),
            wb_bytes: st.wb_bytes,
            kept_bytes: st.kept_bytes,
            pending_epochs: st.uploads.len() as u64,
            uploaded_bytes: self.counters.uploaded_bytes.load(Ordering::Relaxed),
            uploaded_stored_bytes: self.counters.uploaded_stored_bytes.load(Ordering::Relaxed),
            upload_frames_read: self.counters.upload_frames_read.load(Ordering::Relaxed),
            map_memory_bytes: st.map.memory_bytes(),
            upload_error: st.upload_error.clone(),
            last_uploaded: st.last_uploaded,
        }
    }
}

/// Whether `e` is the file system running out of space (or quota) while writing: the
/// write had no effect worth keeping and can be retried once space is freed.
pub(crate) fn out_of_space(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)),
        Error::NoSpace { .. } => true,
        _ => false,
    }
}
