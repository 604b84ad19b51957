//! The write log: the open epoch (its SCO and the TLog records not yet written), epochs
//! sealed but not yet in their TLog, the SCOs written since the last flush, and what
//! flushes own (the open TLog writers, their sync ring). The flush itself (group commit)
//! is `super::flush`; rolling to a new epoch is `super::epochs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use super::sco_file::ScoFile;
use super::sync_set::SyncSet;
use super::tlog::{Record, TlogWriter};

/// The write log's part of the volume state (under the volume lock).
pub(crate) struct WriteLog {
    pub open: Option<OpenEpoch>,
    pub next_epoch: u64,
    /// SCOs written since the last flush (synced by it before their records).
    pub dirty: BTreeSet<u64>,
    /// Records of sealed epochs, in order, for the next flush.
    pub sealing: Vec<PendingBatch>,
    /// TLog writers of epochs opened since the last flush (handed to the flush side).
    pub new_tlogs: Vec<TlogWriter>,
    /// Since when TLog writes find the write buffer's file system full (cleared by the
    /// next flush that gets its records written).
    pub log_full_since: Option<Instant>,
}

impl WriteLog {
    pub fn new(next_epoch: u64) -> WriteLog {
        WriteLog {
            open: None,
            next_epoch,
            dirty: BTreeSet::new(),
            sealing: Vec::new(),
            new_tlogs: Vec::new(),
            log_full_since: None,
        }
    }

    /// The open epoch holds data or records (see [`OpenEpoch::has_content`]).
    pub fn has_content(&self) -> bool {
        self.open.as_ref().is_some_and(|o| o.has_content())
    }

    /// Encode `rec` into the open epoch's pending batch; returns the epoch and the
    /// encoded bytes (for a DTL peer). The caller has opened an epoch.
    pub fn append(&mut self, rec: &Record) -> (u64, &[u8]) {
        let o = self.open.as_mut().expect("open epoch");
        let start = o.pending.len();
        rec.encode(&mut o.pending);
        o.pending_count += 1;
        o.records += 1;
        (o.epoch, &o.pending[start..])
    }
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

/// Encoded TLog records waiting to be written by the next flush.
pub(crate) struct PendingBatch {
    pub epoch: u64,
    pub payload: Vec<u8>,
    pub count: u32,
    pub seal: bool,
}

/// What flushes own, one flush at a time: the open TLog writers and the ring their syncs go on.
#[derive(Default)]
pub(crate) struct FlushSide {
    pub(crate) tlogs: BTreeMap<u64, TlogWriter>,
    pub(crate) syncs: SyncSet,
    /// Epochs whose TLog got batches from `Volume::log_completed` since the last flush
    /// (synced by the next flush), and which of them were sealed.
    pub(crate) unsynced: BTreeSet<u64>,
    pub(crate) unsynced_sealed: Vec<u64>,
    /// The open epoch's records on their way to its TLog (reused: no allocation).
    pub(crate) logging: Vec<u8>,
}
