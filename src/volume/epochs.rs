//! Epochs of a volume: epoch `n` is SCO `n` plus TLog `n`. Rolling seals the open epoch
//! and opens the next; sealed epochs go to the object store in order (SCO first, then
//! the TLog that references it: `super::uploads`), after which local copies become
//! evictable and metadata checkpoints are written. Also the volume's clean close (seal +
//! drain).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::Volume;
use super::sco_file::ScoFile;
use super::sco_set::LocalSco;
use super::state::State;
use super::tlog::TlogWriter;
use crate::error::{Error, Result};

/// Result of closing a volume.
#[derive(Debug, Clone)]
pub struct CloseReport {
    /// Everything is in the object store.
    pub drained: bool,
    /// Bytes left only in the local write buffer.
    pub pending_bytes: u64,
}

impl Volume {
    pub(crate) fn sco_path(&self, epoch: u64) -> std::path::PathBuf {
        self.dir.join("sco").join(format!("{epoch:016x}"))
    }

    pub(crate) fn tlog_path(&self, epoch: u64) -> std::path::PathBuf {
        self.dir.join("tlog").join(format!("{epoch:016x}"))
    }

    /// Seal the open epoch (if any) and, when `open_next`, open a new one.
    pub(crate) fn roll(&self, st: &mut State, open_next: bool) -> Result<()> {
        if let Some((o, seal_record)) = st.log.seal_open() {
            if let Some(l) = &*self.dtl.read() {
                let r = l.send_record(o.epoch, seal_record);
                // Fenced: the seal still goes to the local TLog; writes stop.
                let _ = self.dtl_result_locked(st, r);
            }
            st.uploads.add(o.epoch, o.next_index);
            st.maps.sco_sizes.insert(o.epoch, o.next_index);
            if o.next_index < self.meta.sco_clusters {
                // Sealed early (scrub, snapshot, timer, shutdown, a flush-heavy volume's
                // roll into its spare): the preallocated tail is given back by an uploader
                // thread (`cut_tails`) or the upload job, whichever comes first, outside
                // this lock: freeing blocks can take long (on ext4 without a journal
                // mounted with `discard`, every freed extent is discarded before the call
                // returns: up to 590 ms measured here under 4 KiB random writes), and
                // every guest IO of the volume waits for this lock. Every reservation lies
                // below next_index: no IO in flight is cut.
                if let Some(l) = st.scos.local.get(&o.epoch) {
                    st.scos.tails.push((l.file.clone(), (o.next_index as u64) << self.shift));
                }
                self.env.uploader.notify();
            }
            let maps = &st.maps;
            st.uploads.checkpoint_if_due(o.epoch, self.env.opts.checkpoint_every, || maps.checkpoint_data(o.epoch));
        }
        if !open_next {
            return Ok(());
        }
        let epoch = st.log.next_epoch;
        let path = self.sco_path(epoch);
        let taken = self.spare.take(&path);
        let sco = Arc::new(ScoFile::open(&path, epoch, self.meta.sco_clusters, true, self.env.opts.direct)?);
        if taken.is_none() {
            sco.preallocate((self.meta.sco_clusters as u64) << self.shift);
            self.counters.sco_files_fresh.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.counters.sco_files_reused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // A crash here leaves an SCO file whose epoch has no TLog (recovery removes it).
        crate::fault::point("roll-before-tlog");
        let tlog = TlogWriter::create(&self.tlog_path(epoch), epoch, self.env.opts.direct)?;
        // The TLog's first sync commits the file system's journal with this rename and
        // every extent change of the file before it: later writes into a file whose
        // blocks are all written change no metadata, so its flushes need only a device
        // flush, which the TLog's sync gives (`FlushWork::single`).
        let written = taken == Some(true) && tlog.device() == Some(sco.dev());
        st.scos
            .local
            .insert(epoch, LocalSco { file: sco.clone(), clusters: 0, inflight: 0, uploaded: false, linked: false });
        st.log.open_next(sco, tlog, taken.is_some(), written);
        Ok(())
    }

    /// Seal the open epoch now (snapshot, shutdown, timer) and make the seal durable.
    pub fn seal(&self) -> Result<()> {
        {
            let mut st = self.state.lock();
            let has_data = st.log.has_content();
            if !has_data {
                // An empty open epoch stays open; nothing to seal.
                return Ok(());
            }
            self.roll(&mut st, false)?;
        }
        self.flush()
    }

    /// Close the volume: seal the open epoch, wait up to the drain timeout for every
    /// upload, then write a final checkpoint. What is not uploaded stays in the local
    /// write buffer and is uploaded on the next open.
    pub fn close(&self) -> Result<CloseReport> {
        self.flush()?;
        self.seal()?;
        let deadline = Instant::now() + self.env.opts.drain_timeout;
        self.env.uploader.notify();
        let mut st = self.state.lock();
        while !st.uploads.jobs.is_empty() && Instant::now() < deadline && st.failed.is_none() && !self.uploads_paused()
        {
            self.progress.wait_for(&mut st, Duration::from_millis(200));
        }
        let drained = st.uploads.jobs.is_empty();
        let pending_bytes = st.scos.wb_bytes;
        let final_cp = if drained && st.uploads.last_uploaded > st.uploads.last_checkpoint {
            st.uploads.checkpoint_due = None;
            Some(st.maps.checkpoint_data(st.uploads.last_uploaded))
        } else {
            None
        };
        st.closed = true;
        drop(st);
        if let Some(cp) = final_cp {
            self.write_checkpoint(&cp)?;
            self.state.lock().uploads.last_checkpoint = cp.epoch;
        }
        let flushes = self.counters.flushes.load(std::sync::atomic::Ordering::Relaxed);
        let single_flushes = self.counters.single_flushes.load(std::sync::atomic::Ordering::Relaxed);
        if drained {
            tracing::info!(volume = %self.name, flushes, single_flushes, "closed: every write is in the object store");
        } else {
            tracing::warn!(
                volume = %self.name,
                pending_bytes,
                flushes,
                single_flushes,
                "closed before uploads drained: un-uploaded data stays in the local write buffer and is uploaded on the next start"
            );
        }
        Ok(CloseReport { drained, pending_bytes })
    }

    /// Seal, then wait (up to the drain timeout) until everything written before the
    /// call is in the object store (writes going on meanwhile are not waited for: under
    /// sustained writes the upload queue is never empty); `why` completes the error
    /// message.
    pub fn upload_all(&self, why: &str) -> Result<()> {
        if self.upload_sealed_within(self.env.opts.drain_timeout)? {
            return Ok(());
        }
        Err(Error::StoreTimeout {
            what: format!("uploads of volume {} {why}", self.name),
            secs: self.env.opts.drain_timeout.as_secs(),
        })
    }

    /// Seal, then wait up to `timeout` until everything written before the call is in
    /// the object store: `Ok(false)` when the time ran out first.
    pub(crate) fn upload_sealed_within(&self, timeout: Duration) -> Result<bool> {
        // Every epoch up to this one is sealed once `seal` returns.
        let through = self.state.lock().log.next_epoch.saturating_sub(1);
        self.seal()?;
        let deadline = Instant::now() + timeout;
        self.env.uploader.notify();
        let mut st = self.state.lock();
        // A volume stopped after a local IO error can flush (and so upload) nothing more:
        // say so at once instead of after the whole timeout.
        while st.uploads.jobs.range(..=through).next().is_some() && Instant::now() < deadline && st.failed.is_none() {
            self.progress.wait_for(&mut st, Duration::from_millis(100));
        }
        if st.uploads.jobs.range(..=through).next().is_none() {
            return Ok(true);
        }
        if let Some(f) = &st.failed {
            return Err(self.stopped_error(f));
        }
        Ok(false)
    }

    /// Wait until every sealed epoch is uploaded (or `timeout`); true if drained.
    pub fn wait_uploaded(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.env.uploader.notify();
        let mut st = self.state.lock();
        while !st.uploads.jobs.is_empty() && Instant::now() < deadline {
            self.progress.wait_for(&mut st, Duration::from_millis(100));
        }
        st.uploads.jobs.is_empty()
    }
}
