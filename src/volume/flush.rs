//! The write log's durability: flush (group commit: SCO data synced, then the TLog
//! records that map it written and synced), logging completed writes without a sync, and
//! retrying TLog batches a full file system refused.

use std::sync::atomic::Ordering;

use super::dtl_link::DtlMode;
use super::engine::Volume;
use super::write_log::{out_of_space, FlushSide, FlushWork, PendingBatch};
use crate::error::{Error, Result};

impl Volume {
    // ----- flush -----

    /// Make every write completed before this call durable: fdatasync the SCO data, then
    /// write the TLog records that map it (group commit) and fdatasync them.
    pub fn flush(&self) -> Result<()> {
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        self.flush_inner(true)
    }

    /// Write the TLog records of every completed write to the TLog now, through the page
    /// cache and without any sync (`TlogWriter::write_batch_cached`): a write completed to
    /// a guest then survives a crash or `kill -9` of the daemon process (not a power loss:
    /// that still takes a flush). A restarted daemon serving a
    /// reconnected, still running guest must not lose a write the guest saw completed.
    /// Cheap when nothing is pending.
    pub fn log_completed(&self) -> Result<()> {
        let mut side = self.flush_side.lock();
        let (epoch, count, flush_soon) = {
            let mut st = self.state.lock();
            if !st.log.sealing.is_empty() || !st.log.new_tlogs.is_empty() {
                // An epoch rolled (rare): the general path, in order.
                drop(st);
                drop(side);
                return self.flush_inner(false);
            }
            // The hot path: the open epoch's records, copied into a reused buffer.
            let Some(taken) = st.log.take_open_pending(&mut side.logging, self.shift) else { return Ok(()) };
            taken
        };
        let FlushSide { tlogs, unsynced, logging, .. } = &mut *side;
        let w = tlogs.get_mut(&epoch).ok_or_else(|| {
            Error::io(format!("TLog {epoch} is not open"), std::io::Error::other("missing TLog writer"))
        })?;
        if let Err(e) = w.write_batch_cached(logging, count) {
            if out_of_space(&e) {
                // The next flush writes these records (it reports the failure if space
                // is still short); the completed writes are not lost. The open TLogs
                // give back the zeroes written ahead of their batches.
                for w in tlogs.values_mut() {
                    w.drop_zeroed_tail();
                }
                let batch = PendingBatch { epoch, payload: logging.clone(), count, seal: false };
                self.requeue(std::iter::once(batch), &e);
                return Err(self.log_space_error(&e));
            }
            tracing::error!(volume = %self.name, error = %e, "writing the TLog failed: the volume stops accepting writes");
            self.state.lock().failed = Some(e.to_string());
            return Err(e);
        }
        unsynced.insert(epoch);
        // A flush is likely to follow (each covers little data): the records go to the
        // disk once the completions are out (`start_log_write_back`).
        side.write_back_due |= flush_soon;
        Ok(())
    }

    /// The completions of the writes `log_completed` logged were shown to the guest:
    /// when a flush is likely to follow, start writing their records to the disk now, so
    /// that the flush's sync finds them there and waits for the device flush alone (a
    /// guest's write + fsync at QD1: the page write ran inside the fsync, in series with
    /// the device flush: guest fsync 0.80 of qsd; 0.92 with the write started before the
    /// completions went out, 0.99 after). Never waits: a busy flush side is a flush
    /// writing them anyway.
    pub fn start_log_write_back(&self) {
        let Some(mut side) = self.flush_side.try_lock() else { return };
        if !std::mem::take(&mut side.write_back_due) {
            return;
        }
        for e in &side.unsynced {
            if let Some(w) = side.tlogs.get(e) {
                w.start_write_back();
            }
        }
    }

    /// Put TLog batches a full file system refused back in front of the newer ones, for
    /// the next flush (the caller holds the flush side); log the failure now and then.
    fn requeue(&self, batches: impl Iterator<Item = PendingBatch>, e: &Error) {
        self.state.lock().log.requeue(batches);
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
        let FlushWork { dirty, batches, new_tlogs, flush_heavy, single } = {
            let mut st = self.state.lock();
            if let Some(f) = &st.failed {
                return Err(self.stopped_error(f));
            }
            let st = &mut *st;
            st.log.take_flush(&st.scos, sync, self.shift)
        };
        if flush_heavy {
            self.spare.prepare();
        }
        let (result, unwritten_from) = side.commit(&dirty, &batches, new_tlogs, sync, single);
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
        if result.is_ok() && side.last_single && sync {
            self.counters.single_flushes.fetch_add(1, Ordering::Relaxed);
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
