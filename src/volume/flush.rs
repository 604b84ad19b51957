//! The write log's durability: flush (group commit: SCO data synced, then the TLog
//! records that map it written and synced), logging completed writes without a sync, and
//! retrying TLog batches a full file system refused.

use std::collections::BTreeSet;
use std::os::unix::io::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::dtl_link::DtlMode;
use super::engine::Volume;
use super::sco_file::ScoFile;
use super::write_log::{FlushSide, PendingBatch};
use crate::error::{Error, Result};

impl Volume {
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
            if !st.log.sealing.is_empty() || !st.log.new_tlogs.is_empty() {
                // An epoch rolled (rare): the general path, in order.
                drop(st);
                drop(side);
                return self.flush_inner(false);
            }
            let Some(o) = st.log.open.as_mut().filter(|o| o.pending_count > 0) else { return Ok(()) };
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
        st.log.log_full_since.get_or_insert_with(Instant::now);
        let mut front: Vec<PendingBatch> = batches.collect();
        front.append(&mut st.log.sealing);
        st.log.sealing = front;
        drop(st);
        let n = self.counters.flush_no_space.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::error!(volume = %self.name, failures = n, error = %e, "no space left for the TLog on the write buffer's file system: flushes fail until space is freed (nothing acknowledged is lost)");
        }
    }

    pub(crate) fn log_space_error(&self, e: &Error) -> Error {
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
                std::mem::take(&mut st.log.dirty)
                    .into_iter()
                    .filter_map(|n| st.scos.local.get(&n).map(|l| l.file.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            let mut batches = std::mem::take(&mut st.log.sealing);
            if let Some(o) = st.log.open.as_mut() {
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
                && st.log.open.as_mut().is_some_and(|o| {
                    o.flushes = o.flushes.saturating_add(1);
                    o.flush_heavy(self.shift)
                });
            (dirty, batches, std::mem::take(&mut st.log.new_tlogs), flush_heavy)
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
                st.log.log_full_since = None;
            }
            for e in &sealed {
                if let Some(u) = st.uploads.jobs.get_mut(e) {
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
