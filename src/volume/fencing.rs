//! Owner fencing: after a takeover on another host (a newer owner generation in the
//! volume record, and on the DTL server), this host stops serving writes and uploads
//! for the volume, with one clear log line. Also how the engine waits for its DTL peer.

use std::sync::atomic::Ordering;

use super::dtl_link::{DtlLink, DtlMode};
use super::engine::Volume;
use super::meta::VolumeMeta;
use super::state::State;
use crate::dtl::ErrorCode;
use crate::error::{Error, Result};

impl Volume {
    /// Stop serving writes and uploads: a newer owner holds the volume.
    pub(crate) fn fence_locked(&self, st: &mut State, why: &str) {
        if !st.fenced {
            tracing::error!(volume = %self.name, generation = self.meta.generation,
                "fenced: {why}; this host no longer serves writes or uploads for this volume");
            st.fenced = true;
            st.failed = Some(format!("fenced: {why}"));
        }
        self.progress.notify_all();
    }

    pub(crate) fn fence(&self, why: &str) {
        let mut st = self.state.lock();
        self.fence_locked(&mut st, why);
    }

    /// True once a newer owner took the volume over.
    pub fn is_fenced(&self) -> bool {
        self.state.lock().fenced
    }

    /// True once the volume stopped serving writes: after a local IO error, or fenced.
    /// Nothing can be flushed, uploaded or scrubbed any more until it is opened again.
    pub fn is_stopped(&self) -> bool {
        self.state.lock().failed.is_some()
    }

    /// Read the volume record in the object store: fenced (an error) when a newer owner
    /// generation has taken the volume over. Checked before anything this owner puts in
    /// the object store could be read by the new owner (TLogs, checkpoints) or deletes.
    pub(crate) fn check_owner(&self) -> Result<()> {
        if self.state.lock().fenced {
            return Err(self.fenced_error(0));
        }
        let m = VolumeMeta::load(self.env.store.as_ref(), &self.name)?;
        if m.generation > self.meta.generation {
            let e = self.fenced_error(m.generation);
            self.fence(&e.to_string());
            return Err(e);
        }
        Ok(())
    }

    fn fenced_error(&self, by: u32) -> Error {
        Error::Fenced { volume: self.name.clone(), generation: self.meta.generation, by }
    }

    /// Turn a DTL refusal for a fenced generation into fencing; other results pass.
    pub(crate) fn dtl_result(&self, r: Result<()>) -> Result<()> {
        match r {
            Err(e @ Error::DtlRefused { code: ErrorCode::Fenced, .. }) => {
                self.dtl_result_locked(&mut self.state.lock(), Err(e))
            }
            r => r,
        }
    }

    /// [`Volume::dtl_result`] with the volume lock held.
    pub(crate) fn dtl_result_locked(&self, st: &mut State, r: Result<()>) -> Result<()> {
        match r {
            Err(Error::DtlRefused { code: ErrorCode::Fenced, message }) => {
                self.fence_locked(st, &format!("the DTL server says: {message}"));
                Err(self.fenced_error(0))
            }
            r => r,
        }
    }

    /// Wait for the DTL peer to hold every write so far, when `link`'s mode asks for it
    /// at this point (`Sync`: after each write; `Async`: at a flush, in both modes).
    pub(crate) fn dtl_wait(&self, link: Option<&DtlLink>, at: DtlMode) -> Result<()> {
        let Some(l) = link else { return Ok(()) };
        if at == DtlMode::Sync && l.mode() != DtlMode::Sync {
            return Ok(());
        }
        let since = self.state.lock().uploads.last_uploaded + 1;
        let r = l.wait_covered(self.env.store.as_ref(), since);
        self.dtl_result(r)
    }

    /// Attach (or with `None` detach) the DTL peer. A volume with data not yet uploaded
    /// is not covered until that data is in the object store (a mark says so).
    pub fn set_dtl(&self, link: Option<DtlLink>) {
        let link = link.map(std::sync::Arc::new);
        if let Some(l) = &link {
            let st = self.state.lock();
            let pending = !st.uploads.jobs.is_empty() || st.log.has_content();
            let (since, until) = (st.uploads.last_uploaded + 1, st.log.next_epoch.saturating_sub(1));
            drop(st);
            if pending {
                let _ = l.mark_uncovered(
                    self.env.store.as_ref(),
                    since,
                    until,
                    "DTL attached with writes not yet uploaded",
                );
            }
        }
        *self.dtl.write() = link;
    }

    /// The DTL settings and state: `(settings, state, detail)`.
    pub fn dtl_status(&self) -> Option<(super::dtl_link::DtlSettings, &'static str, String)> {
        let l = self.dtl.read().clone()?;
        let (state, detail) = l.state();
        Some((l.settings.clone(), state, detail))
    }

    /// Hold back (or resume) uploads to the object store.
    pub fn set_uploads_paused(&self, paused: bool) {
        self.uploads_paused.store(paused, Ordering::SeqCst);
        if !paused {
            self.env.uploader.notify();
        }
    }

    pub fn uploads_paused(&self) -> bool {
        self.uploads_paused.load(Ordering::SeqCst)
    }
}
