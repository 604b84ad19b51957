//! The upload pipeline's runner: takes the next job of the volume's upload queue
//! (`super::upload_queue`), runs it (an SCO by hard link into a local directory store or
//! as an encoded copy, a TLog, a metadata checkpoint), and records the outcome (local
//! copies become evictable, failures retry with backoff). The daemon's uploader threads
//! drive it through [`UploadSource`].

use std::sync::atomic::Ordering;

use super::checkpoint::{self, CheckpointData};
use super::cluster_crc;
use super::engine::Volume;
use super::sco_file::ScoFile;
use super::tlog;
use super::upload_queue::{Job, Pick};
use crate::backend::keys;
use crate::backend::sco_object;
use crate::backend::upload_buffers;
use crate::backend::uploader::UploadSource;
use crate::error::{Error, IoContext, Result};

impl Volume {
    fn take_job(&self) -> Option<Job> {
        if self.uploads_paused() {
            return None;
        }
        let mut st = self.state.lock();
        if st.fenced {
            return None;
        }
        let s = &mut *st;
        // Waiting for space to upload: look whether it returned.
        let grown = if s.uploads.no_space_at.is_some() { self.env.disk.grown_now() } else { self.env.disk.grown() };
        match s.uploads.next_job(&s.scos, grown) {
            Pick::Job(job) => Some(job),
            Pick::Again => {
                drop(st);
                self.take_job()
            }
            Pick::Nothing => None,
        }
    }

    /// Upload SCO `epoch` by making its local file the object, when the store is a local
    /// directory on the same filesystem: the frames stay raw, the index and footer are
    /// appended to the file, and the store hard-links it. Frame checksums come from the
    /// cluster checksums taken as the data was written; only frames with a cluster
    /// without one (written before a restart, or whose buffer changed during its write)
    /// are read back (O_DIRECT, in chunks). Nothing is copied. `None`: not possible here.
    fn adopt_sco(&self, key: &str, epoch: u64, file: &ScoFile, len: u64) -> Result<Option<usize>> {
        let store = &self.env.store;
        // An encrypted volume's SCOs are sealed copies, never the local file itself.
        if !self.env.opts.link_local
            || !store.adopts_files()
            || len == 0
            || self.env.keys.writer_id(&self.name).is_some()
        {
            return Ok(None);
        }
        let frame = self.env.opts.frame_size;
        let cs = 1usize << self.shift;
        let n_frames = (len as usize).div_ceil(frame);
        let written = file.crcs.values((len >> self.shift) as usize);
        let mut crcs: Vec<Option<u32>> = if frame.is_multiple_of(cs) && written.len() as u64 >= len >> self.shift {
            let per_frame = frame / cs;
            let combine = cluster_crc::Combiner::for_len(cs);
            let clusters = &written[..(len >> self.shift) as usize];
            clusters.chunks(per_frame).map(|c| combine.all(c)).collect()
        } else {
            vec![None; n_frames]
        };
        let unknown = crcs.iter().filter(|c| c.is_none()).count();
        if unknown > 0 {
            self.counters.upload_frames_read.fetch_add(unknown as u64, Ordering::Relaxed);
            let chunk = ((8usize << 20) / frame).max(1) * frame;
            upload_buffers::with(chunk, 0, |buf, _| -> Result<()> {
                let mut f = 0;
                while f < n_frames {
                    if crcs[f].is_some() {
                        f += 1;
                        continue;
                    }
                    // A run of frames without checksums, read at once.
                    let mut end = f + 1;
                    while end < n_frames && crcs[end].is_none() && (end + 1 - f) * frame <= chunk {
                        end += 1;
                    }
                    let off = (f * frame) as u64;
                    let n = ((end * frame) as u64).min(len) - off;
                    let v = [libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: n as usize }];
                    file.readv_at(&v, off).ctx(|| format!("cannot read SCO {epoch} for upload"))?;
                    for (i, data) in buf[..n as usize].chunks(frame).enumerate() {
                        crcs[f + i] = Some(crate::crc::crc32c(data));
                    }
                    // Clusters written without checksums get them now (reads check them).
                    file.crcs.fill_unknown((off >> self.shift) as u32, &buf[..n as usize], cs);
                    f = end;
                }
                Ok(())
            })?;
        }
        let crcs: Vec<u32> = crcs.into_iter().map(|c| c.expect("every frame checksummed")).collect();
        let tail = sco_object::raw_tail(len, frame, &crcs);
        // The footer must end the file (a preallocated file may be longer).
        let appended = file.set_len(len + tail.len() as u64).and_then(|()| file.write_durably_at(&tail, len));
        if let Err(e) = appended {
            if !super::write_log::out_of_space(&e) {
                return Err(e);
            }
            // No room for the footer on a full write-buffer disk: upload a copy instead
            // (it takes no local space), which lets this SCO's space be freed.
            tracing::debug!(volume = %self.name, epoch, error = %e, "no room to adopt the SCO file: uploading a copy");
            let _ = file.set_len(len);
            return Ok(None);
        }
        // The name is made durable with the epoch's TLog (`upload_tlogs`), before it.
        match store.adopt_file(key, file.path()) {
            Ok(true) | Err(Error::ObjectExists(_)) => Ok(Some(len as usize + tail.len())),
            Ok(false) => {
                file.set_len(len)?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Upload SCO `epoch` as an encoded (compressed) copy; returns the object's size.
    fn encode_and_put_sco(&self, key: &str, epoch: u64, file: &ScoFile, len: u64) -> Result<usize> {
        let store = &self.env.store;
        let frame = self.env.opts.frame_size;
        // Encrypted volume: a fresh salt per upload attempt (see crypto::cipher).
        let seal = self
            .env
            .keys
            .writer(&self.name)?
            .map(|k| crate::crypto::cipher::ObjectCipher::derive(&k, crate::crypto::cipher::random_salt(), key));
        upload_buffers::with(len as usize, sco_object::max_encoded_len(len as usize, frame), |raw, out| {
            // Page-aligned: straight from the disk (O_DIRECT), no page-cache copy.
            let v = [libc::iovec { iov_base: raw.as_mut_ptr() as *mut libc::c_void, iov_len: raw.len() }];
            file.readv_at(&v, 0).ctx(|| format!("cannot read SCO {epoch} for upload"))?;
            // Clusters written without checksums get them now (reads check them).
            file.crcs.fill_unknown(0, raw, 1 << self.shift);
            let n = sco_object::encode_into(raw, frame, self.env.opts.codec, seal.as_ref(), out);
            match store.put(key, &out[..n]) {
                Ok(()) | Err(Error::ObjectExists(_)) => Ok(n),
                Err(e) => Err(e),
            }
        })
    }

    fn run_job(&self, job: &Job) -> Result<()> {
        let gen = self.meta.generation;
        match job {
            Job::Sco { epoch, file, clusters } => {
                let len = (*clusters as u64) << self.shift;
                // An SCO sealed early may still have its preallocated tail (`Volume::roll`).
                file.cut_tail(len)?;
                // Slots at the end whose writes failed (ENOSPC, EIO) were never written:
                // no map entry points at them; they go up as zeroes.
                if file.file_len()? < len {
                    file.set_len(len)?;
                }
                let key = keys::sco(&self.name, gen, *epoch);
                let obj_len = match self.adopt_sco(&key, *epoch, file, len)? {
                    Some(n) => {
                        if let Some(l) = self.state.lock().scos.local.get_mut(epoch) {
                            l.linked = true;
                        }
                        n
                    }
                    None => self.encode_and_put_sco(&key, *epoch, file, len)?,
                };
                self.counters.uploaded_bytes.fetch_add(len, Ordering::Relaxed);
                self.counters.store_puts.fetch_add(1, Ordering::Relaxed);
                self.counters.uploaded_stored_bytes.fetch_add(obj_len as u64, Ordering::Relaxed);
                Ok(())
            }
            Job::Tlog { epoch, last } => self.upload_tlogs(*epoch, *last),
            Job::Checkpoint(cp) => self.write_checkpoint(cp),
        }
    }

    /// Upload the sealed TLogs `first..=last` in order, after making the names of their
    /// SCOs adopted by a local directory store durable. A local directory store on this
    /// filesystem takes the files themselves (durable since their epoch's flush; unlinked
    /// here right after and never written again): no copy written and synced, and one
    /// sync of the store's directory for all of them. Should one fail, the job fails as a
    /// whole and is retried (what was linked is found there and synced then): a restart
    /// reads uploaded TLogs only up to the first gap, and the local files stay until the
    /// job succeeds.
    fn upload_tlogs(&self, first: u64, last: u64) -> Result<()> {
        // The TLogs make their epochs visible to a restart: never after a takeover.
        self.check_owner()?;
        let store = &self.env.store;
        // First the names of the SCOs the store took by hard link (`adopt_sco`; their
        // data and footer were durable before): one sync for the batch, before any of
        // its TLogs can be found.
        let scos: Vec<String> = {
            let st = self.state.lock();
            (first..=last)
                .filter(|e| st.scos.local.get(e).is_some_and(|l| l.linked))
                .map(|e| keys::sco(&self.name, self.meta.generation, e))
                .collect()
        };
        store.sync_adopted(&scos)?;
        let mut linked = Vec::new();
        for epoch in first..=last {
            let path = self.tlog_path(epoch);
            let bytes = std::fs::read(&path).ctx(|| format!("cannot read {}", path.display()))?;
            let key = keys::tlog(&self.name, self.meta.generation, epoch);
            tlog::parse_sealed(&key, &bytes, epoch)?;
            let adopted = self.env.opts.link_local
                && store.adopts_files()
                && match store.adopt_file(&key, &path) {
                    Ok(l) => l,
                    Err(Error::ObjectExists(_)) => true,
                    Err(e) => return Err(e),
                };
            if adopted {
                linked.push(key);
            } else {
                match store.put(&key, &bytes) {
                    Ok(()) | Err(Error::ObjectExists(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            self.counters.store_puts.fetch_add(1, Ordering::Relaxed);
        }
        store.sync_adopted(&linked)
    }

    /// Delete objects in batches, counting the requests (S3 takes 1000 keys in one).
    pub(crate) fn delete_objects(&self, keys: &[String]) -> Result<()> {
        self.env.store.delete_many(keys)?;
        self.counters.store_delete_requests.fetch_add(keys.len().div_ceil(1000) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Store a checkpoint, keep the two newest, and delete TLog objects that neither
    /// kept checkpoint needs any more (a restart replays only TLogs after one).
    pub(crate) fn write_checkpoint(&self, cp: &CheckpointData) -> Result<()> {
        let store = &self.env.store;
        self.check_owner()?;
        let key = keys::checkpoint(&self.name, self.meta.generation, cp.epoch);
        match store.put(&key, &checkpoint::encode(cp)) {
            Ok(()) | Err(Error::ObjectExists(_)) => {
                self.counters.store_puts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
        let cps = super::replay::valid_checkpoints(store.as_ref(), &self.meta)?;
        if cps.len() > 2 {
            let old: Vec<String> = cps[..cps.len() - 2].iter().map(|(_, k)| k.clone()).collect();
            self.delete_objects(&old)?;
        }
        if cps.len() >= 2 {
            let oldest_kept = cps[cps.len() - 2].0;
            let mut old = Vec::new();
            for o in store.list(&keys::volume_prefix(&self.name))? {
                if let Some((_, "tlog", n)) = keys::parse_data_key(&self.name, &o.key) {
                    if n <= oldest_kept {
                        old.push(o.key);
                    }
                }
            }
            self.delete_objects(&old)?;
        }
        tracing::debug!(volume = %self.name, epoch = cp.epoch, "metadata checkpoint written");
        Ok(())
    }

    fn finish_job(&self, job: Job, res: Result<()>) {
        // Files to delete once the lock is released (unlinking a large file is slow).
        let mut unlink = Vec::new();
        let mut st = self.state.lock();
        match (&job, res) {
            (Job::Sco { epoch, .. }, Ok(())) => st.uploads.sco_done(*epoch),
            (Job::Tlog { epoch, last }, Ok(())) => {
                for epoch in *epoch..=*last {
                    let bytes = (st.uploads.tlog_done(epoch) as u64) << self.shift;
                    if st.scos.uploaded(epoch, bytes) {
                        self.pacer.drained(bytes);
                        self.pacer.note_level(st.scos.wb_bytes, self.env.opts.wb_limit);
                    }
                    unlink.push(self.tlog_path(epoch));
                }
                unlink.extend(st.scos.evict_uploaded(self.env.opts.wb_limit / 4 * 3, self.shift));
            }
            (Job::Checkpoint(cp), Ok(())) => st.uploads.checkpoint_done(cp.epoch),
            (_, Err(e)) => {
                let (epoch, what) = match &job {
                    Job::Sco { epoch, .. } => (*epoch, "SCO"),
                    Job::Tlog { epoch, .. } => (*epoch, "TLog"),
                    Job::Checkpoint(cp) => (cp.epoch, "checkpoint"),
                };
                tracing::warn!(volume = %self.name, epoch, error = %e, "upload of {what} failed; will retry");
                st.uploads.failed(job, &e, self.env.disk.grown());
            }
        }
        drop(st);
        for p in unlink {
            if let Err(err) = std::fs::remove_file(&p) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(volume = %self.name, file = %p.display(), error = %err, "cannot remove an uploaded local file");
                }
            }
        }
        self.progress.notify_all();
    }
}

impl Volume {
    /// Cut the preallocated tails of SCOs sealed early (see `Volume::roll`), outside the
    /// volume lock; true when there were any. Runs whether uploads are paused or not, so
    /// the tails of SCOs waiting for their upload take no disk space meanwhile.
    fn cut_tails(&self) -> bool {
        let tails = std::mem::take(&mut self.state.lock().scos.tails);
        for (file, len) in &tails {
            if let Err(e) = file.cut_tail(*len) {
                tracing::warn!(volume = %self.name, sco = file.number, error = %e, "cannot cut a sealed SCO file's tail");
            }
        }
        !tails.is_empty()
    }
}

impl UploadSource for Volume {
    fn run_one_job(&self) -> bool {
        if self.cut_tails() {
            return true;
        }
        // Seals waiting to be made durable (rolled by writers) come first. A volume
        // stopped after a local IO error never makes them durable: retrying the flush
        // would spin (and flood the log) until the restart; uploads of epochs already
        // durable go on.
        let sealing = {
            let st = self.state.lock();
            !st.log.sealing.is_empty() && st.failed.is_none()
        };
        if sealing {
            match self.flush() {
                Ok(()) => return true,
                // Logged by the flush (now and then); uploads of durable epochs go on
                // meanwhile: they are what frees space on the write buffer's disk.
                Err(e) if super::write_log::out_of_space(&e) => {}
                Err(e) => {
                    tracing::warn!(volume = %self.name, error = %e, "flushing a sealed epoch failed");
                    return true;
                }
            }
        }
        let Some(job) = self.take_job() else { return false };
        let res = self.run_job(&job);
        let trim = match (&job, &res) {
            (Job::Tlog { last, .. }, Ok(())) => Some(*last),
            _ => None,
        };
        self.finish_job(job, res);
        if let (Some(epoch), Some(l)) = (trim, self.dtl.read().clone()) {
            // The epoch is in the object store: the DTL peer may drop it.
            l.trim(epoch);
        }
        true
    }

    fn tick(&self) {
        if let Some(l) = self.dtl.read().clone() {
            let last_uploaded = self.state.lock().uploads.last_uploaded;
            l.tick(self.env.store.as_ref(), last_uploaded);
        }
        let Some(after) = self.env.opts.seal_after else { return };
        let due = {
            let st = self.state.lock();
            !st.closed
                && st.failed.is_none()
                && st.log.open.as_ref().is_some_and(|o| o.has_content() && o.opened_at.elapsed() >= after)
        };
        if due {
            if let Err(e) = self.seal() {
                tracing::warn!(volume = %self.name, error = %e, "timed seal failed");
            }
        }
    }
}
