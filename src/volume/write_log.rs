//! The write log: the open epoch (its SCO and the TLog records not yet written), epochs
//! sealed but not yet in their TLog, the SCOs written since the last flush, and what
//! flushes own (the open TLog writers, their sync ring). The flush itself (group commit)
//! is `super::flush`; rolling to a new epoch is `super::epochs`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::io::RawFd;
use std::sync::Arc;
use std::time::Instant;

use super::sco_file::ScoFile;
use super::sco_set::ScoSet;
use super::sync_set::SyncSet;
use super::tlog::{Record, TlogWriter};
use crate::error::{Error, Result};

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
    /// A record since the last synced flush maps data without a checksum for every
    /// cluster (a guest changed its buffer during the write): recovery could not check
    /// it, so the next flush syncs the data before the records (see [`FlushWork::single`]).
    pub unchecked: bool,
}

/// An epoch [`WriteLog::seal_open`] just sealed.
pub(crate) struct SealedEpoch {
    pub epoch: u64,
    /// Clusters written to its SCO.
    pub next_index: u32,
}

/// What one flush takes from the write log under the volume lock (see
/// [`WriteLog::take_flush`]).
pub(crate) struct FlushWork {
    pub dirty: Vec<Arc<ScoFile>>,
    pub batches: Vec<PendingBatch>,
    pub new_tlogs: Vec<TlogWriter>,
    /// The open epoch's flushes cover little data: prepare a zero-filled spare SCO.
    pub flush_heavy: bool,
    /// The flush can make data and records durable with one device flush, the open
    /// epoch's (this one): it is the only epoch with anything to write or sync, its SCO
    /// file's blocks were all written before (a change to the data changes no file
    /// metadata) on its TLog's file system, and every record maps data with checksums,
    /// so recovery can tell records whose data a power loss lost (`super::tail_check`).
    pub single: Option<u64>,
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
            unchecked: false,
        }
    }

    /// Seal the open epoch: a `Seal` record ends its pending records, which join the
    /// sealed batches for the next flush. Returns the epoch as it was sealed (its
    /// `next_index` is its size) and the seal record's bytes (for a DTL peer).
    pub fn seal_open(&mut self) -> Option<(SealedEpoch, &[u8])> {
        let mut o = self.open.take()?;
        let start = o.pending.len();
        Record::Seal { sco: o.epoch, clusters: o.next_index }.encode(&mut o.pending);
        self.sealing.push(PendingBatch { epoch: o.epoch, payload: o.pending, count: o.pending_count + 1, seal: true });
        let sealed = SealedEpoch { epoch: o.epoch, next_index: o.next_index };
        let b = self.sealing.last().expect("just pushed");
        Some((sealed, &b.payload[start..]))
    }

    /// Open epoch `next_epoch` on `sco` (zero-filled ahead or not; `written`: every block
    /// of it is written, on the file system of `tlog`) and `tlog`, whose writer the next
    /// flush hands to the flush side.
    pub fn open_next(&mut self, sco: Arc<ScoFile>, tlog: TlogWriter, zeroed: bool, written: bool) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.new_tlogs.push(tlog);
        self.open = Some(OpenEpoch {
            epoch,
            sco,
            next_index: 0,
            pending: Vec::with_capacity(4096),
            pending_count: 0,
            records: 0,
            opened_at: Instant::now(),
            zeroed,
            written,
            flushes: 0,
        });
    }

    /// A reservation must roll to a new epoch first: none is open, its SCO (of
    /// `sco_clusters`) is full, or a flush-heavy volume can move to the zero-filled spare
    /// (`spare_ready`) as soon as it is ready.
    pub fn needs_roll(&self, sco_clusters: u32, shift: u32, spare_ready: impl FnOnce() -> bool) -> bool {
        match &self.open {
            Some(o) => {
                o.next_index >= sco_clusters || (o.next_index > 0 && !o.zeroed && o.flush_heavy(shift) && spare_ready())
            }
            None => true,
        }
    }

    /// The open epoch holds data or records (see [`OpenEpoch::has_content`]).
    pub fn has_content(&self) -> bool {
        self.open.as_ref().is_some_and(|o| o.has_content())
    }

    /// Take what a flush writes: for a synced flush (`sync`) the files of the SCOs written
    /// since the last one (from `scos`), and every pending batch in order (sealed epochs
    /// first, then the open epoch's records), and the TLog writers opened since. A synced
    /// flush counts on the open epoch (flush-heavy volumes get zero-filled SCOs).
    pub fn take_flush(&mut self, scos: &ScoSet, sync: bool, shift: u32) -> FlushWork {
        let open = self.open.as_ref().filter(|o| o.written).map(|o| o.epoch);
        let single = open.filter(|e| {
            sync && !self.unchecked
                && self.sealing.is_empty()
                && self.new_tlogs.is_empty()
                && self.dirty.iter().all(|d| d == e)
        });
        if sync {
            self.unchecked = false;
        }
        let dirty: Vec<Arc<ScoFile>> = if sync {
            std::mem::take(&mut self.dirty)
                .into_iter()
                .filter_map(|n| scos.local.get(&n).map(|l| l.file.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let mut batches = std::mem::take(&mut self.sealing);
        if let Some(o) = self.open.as_mut() {
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
            && self.open.as_mut().is_some_and(|o| {
                o.flushes = o.flushes.saturating_add(1);
                o.flush_heavy(shift)
            });
        FlushWork { dirty, batches, new_tlogs: std::mem::take(&mut self.new_tlogs), flush_heavy, single }
    }

    /// Move the open epoch's pending records into `out` (cleared first, reused: no
    /// allocation); their epoch and count, and whether a flush is likely to follow soon
    /// (the epoch's flushes cover little data each); `None` when there are none.
    pub fn take_open_pending(&mut self, out: &mut Vec<u8>, shift: u32) -> Option<(u64, u32, bool)> {
        let o = self.open.as_mut().filter(|o| o.pending_count > 0)?;
        out.clear();
        out.extend_from_slice(&o.pending);
        o.pending.clear();
        Some((o.epoch, std::mem::take(&mut o.pending_count), o.flush_heavy(shift)))
    }

    /// Put TLog batches a full file system refused back in front of the newer ones, for
    /// the next flush, and note since when the TLog cannot be written.
    pub fn requeue(&mut self, batches: impl Iterator<Item = PendingBatch>) {
        self.log_full_since.get_or_insert_with(Instant::now);
        let mut front: Vec<PendingBatch> = batches.collect();
        front.append(&mut self.sealing);
        self.sealing = front;
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
    /// Every block of the SCO file is written (zero-filled or recycled, checked), on the
    /// TLog's file system: flushes can take one device flush (`FlushWork::single`).
    pub written: bool,
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
    /// The last [`FlushSide::commit`] took one device flush.
    pub(crate) last_single: bool,
    /// Records logged since the last write-back start, with a flush likely to follow.
    pub(crate) write_back_due: bool,
}

impl FlushSide {
    /// Group commit of `batches` (taken by [`WriteLog::take_flush`]): sync the `dirty`
    /// SCOs, write the batches to their TLogs (`new_tlogs` joins the open writers) and,
    /// for a synced flush, sync those TLogs and finish the sealed ones. Returns the epochs
    /// whose sealed TLog is complete and durable; when the file system ran out of space,
    /// also the index of the first batch not written (the caller requeues it and those
    /// after). Without `sync` the batches are written only (synced by the next flush).
    ///
    /// With `single` (see [`FlushWork::single`]) the flush takes one device flush: the
    /// SCO's pages still in the page cache are written back, the batches written ahead of
    /// the data's sync, and the TLog's fdatasync flushes the device cache under both.
    pub fn commit(
        &mut self,
        dirty: &[Arc<ScoFile>],
        batches: &[PendingBatch],
        new_tlogs: Vec<TlogWriter>,
        sync: bool,
        single: Option<u64>,
    ) -> (Result<Vec<u64>>, Option<usize>) {
        let FlushSide { tlogs, syncs, unsynced, unsynced_sealed, last_single, .. } = self;
        for t in new_tlogs {
            tlogs.insert(t.epoch(), t);
        }
        // `take_flush` checked the batches and dirty SCOs; what only the flush side knows:
        // records of another epoch logged unsynced (while an epoch rolled) take the
        // general path.
        let single = single.filter(|e| unsynced_sealed.is_empty() && unsynced.iter().all(|u| u == e));
        *last_single = single.is_some();
        // Set when the file system ran out of space writing batch `i` (and those after).
        let mut unwritten_from = None;
        let result = (|| -> Result<Vec<u64>> {
            if single.is_some() {
                for f in dirty {
                    f.write_back()?;
                }
            } else {
                // The SCO data first: a TLog record must never reach the disk before the
                // data it maps, unless recovery checks it against that data. (Writing the
                // records with O_DIRECT and letting the SCOs' fdatasync flush both let a
                // power loss between the two leave records pointing at data that never
                // got there: the cluster read zeroes instead of its older, flushed
                // content; found by tests/guest/powerloss-e2e.sh.)
                let sco_fds: Vec<RawFd> = dirty.iter().map(|f| f.buffered_fd()).collect();
                syncs
                    .sync_all(&sco_fds)
                    .map_err(|(i, e)| Error::io(format!("cannot sync {}", dirty[i].path().display()), e))?;
            }
            // Batches not preceded by a sync of their data are written as "ahead":
            // recovery checks them against it (`super::tail_check`).
            let ahead = single.is_some() || !sync;
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
                let written =
                    if ahead { w.write_batch_ahead(&b.payload, b.count) } else { w.write_batch(&b.payload, b.count) };
                if let Err(e) = written {
                    if out_of_space(&e) {
                        // Nothing is lost: the batches written so far are synced by the
                        // next flush, the others are written by it (see `requeue`). The
                        // open TLogs give back the zeroes written ahead of their batches.
                        for w in tlogs.values_mut() {
                            w.drop_zeroed_tail();
                        }
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
            for e in &sealed {
                if let Some(mut w) = tlogs.remove(e) {
                    w.finish();
                }
            }
            Ok(sealed)
        })();
        (result, unwritten_from)
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
