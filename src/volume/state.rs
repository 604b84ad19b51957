//! The state a volume's lock guards: the maps, the open epoch and its pending TLog
//! records, the local SCOs and the upload jobs of sealed epochs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use super::checkpoint::CheckpointData;
use super::layers::Layer;
use super::location::{UNMAPPED, ZERO};
use super::map::ClusterMap;
use super::sco_file::ScoFile;
use super::snap_set::Snapshots;
use super::tlog::TlogWriter;

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

impl OpenEpoch {
    /// The epoch holds data or records, even if they are all in its TLog already (flushed,
    /// or logged as completed): sealing it and uploading its TLog is what puts them in the
    /// object store. (An epoch opened by a roll can hold only the records of writes that
    /// reserved space in the previous SCO, or of discards.)
    pub fn has_content(&self) -> bool {
        self.next_index > 0 || self.records > 0
    }

    /// This epoch's flushes each covered little data: later SCOs should be zero-filled.
    pub(crate) fn flush_heavy(&self, shift: u32) -> bool {
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
