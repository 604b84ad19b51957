//! Reads of local SCO data, checked against the per-cluster checksums of
//! [`super::sco_crcs`] so that bytes rotted on the local disk are never returned.
//!
//! - Synchronous reads ([`Volume::read_local`]): whole clusters are read straight into the
//!   caller's buffers and checked there; a read covering part of a cluster that has a
//!   checksum reads the whole clusters into a per-thread bounce buffer first.
//! - Planned reads (io_uring, the frontend): [`Volume::plan_read`] plans only whole
//!   clusters where checksums exist, and the frontend calls [`Volume::verify_read`] once
//!   the IO is done, before it completes the request.
//!
//! On a mismatch: an error is logged (volume, SCO, cluster, file), the SCO is marked
//! rotten and, when the object store holds its own copy (uploaded, not the same inode by
//! hard link), this and every later read of that SCO goes to the object store (whose
//! frames carry their own checksums); otherwise the read fails with a corruption error.

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use super::cluster_crc;
use super::engine::Volume;
use super::iov::{self, iovec, AlignedBuf};
use super::location::Location;
use super::plan::IoPlan;
use super::sco_file::ScoFile;
use crate::backend::sco_object::ScoIndex;
use crate::error::{Error, Result};

thread_local! {
    /// Whole clusters of a partial read (grows to the largest such read, then reused).
    static BOUNCE: RefCell<Option<AlignedBuf>> = const { RefCell::new(None) };
    /// Cluster checksums of frames being checked (see `Volume::check_frames`).
    static FRAME_CRCS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

impl Volume {
    /// Whether the object store holds a copy of SCO `sco` other than the local file.
    pub(crate) fn has_remote_copy(&self, sco: u64) -> bool {
        let st = self.state.lock();
        st.scos.local.get(&sco).is_some_and(|l| l.uploaded && !l.linked)
    }

    /// Record that cluster `index` of SCO `file` read back other bytes than were written.
    /// Returns whether another copy exists to read instead.
    pub(crate) fn found_rot(&self, file: &ScoFile, index: u32) -> bool {
        file.crcs.mark_rotten();
        self.counters.rotten_reads.fetch_add(1, Ordering::Relaxed);
        let remote = self.has_remote_copy(file.number);
        tracing::error!(
            volume = %self.name,
            sco = file.number,
            cluster_index = index,
            file = %file.path().display(),
            "local SCO data fails its checksum (rotted on disk): {}",
            if remote { "reading the object store's copy instead" } else { "no other copy: the read fails" }
        );
        remote
    }

    fn rot_error(&self, file: &ScoFile, index: u32) -> Error {
        Error::Corrupt {
            key: file.path().display().to_string(),
            detail: format!(
                "volume {}: cluster {index} of SCO {} fails its checksum and no other copy exists (not uploaded yet, or the object is this file)",
                self.name, file.number
            ),
        }
    }

    /// Read `len` bytes from `in_off` bytes into location `loc` of local SCO `file` into
    /// `iovs`, checking every cluster that has a checksum.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn read_local(
        &self,
        file: &ScoFile,
        loc: Location,
        in_off: u64,
        len: u64,
        iovs: &[iovec],
        pieces: &mut Vec<iovec>,
        sequential: bool,
    ) -> Result<()> {
        if file.crcs.is_rotten() && self.has_remote_copy(loc.sco) {
            return self.read_remote(None, loc, in_off, len, iovs, pieces, sequential);
        }
        let cs = self.cs as usize;
        let start = ((loc.index as u64) << self.shift) + in_off;
        let first = (start >> self.shift) as u32;
        let n = ((start + len).div_ceil(self.cs) - (start >> self.shift)) as u32;
        let whole = in_off == 0 && len.is_multiple_of(self.cs);
        let io_err = |e| Error::io(format!("volume {}: cannot read SCO {}", self.name, loc.sco), e);
        let checked = if let Some(ix) = file.frames.as_deref().filter(|_| !file.crcs.all_known(first, n)) {
            self.read_checked_frames(file, ix, start, len, iovs)?
        } else if whole || !file.crcs.any_known(first, n) {
            file.readv_at(iovs, start).map_err(io_err)?;
            // SAFETY: the caller's iovecs are valid buffers, just filled.
            if whole {
                unsafe { file.crcs.verify(first, iovs, cs) }
            } else {
                Ok(())
            }
        } else {
            BOUNCE.with(|b| -> Result<std::result::Result<(), u32>> {
                let mut b = b.borrow_mut();
                let want = n as usize * cs;
                if b.as_ref().is_none_or(|buf| buf.len() < want) {
                    *b = Some(AlignedBuf::zeroed(want));
                }
                let buf = b.as_mut().expect("set above");
                let whole_v = [iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: want }];
                file.readv_at(&whole_v, (first as u64) << self.shift).map_err(io_err)?;
                // SAFETY: `whole_v` points to the bounce buffer, just filled.
                let r = unsafe { file.crcs.verify(first, &whole_v, cs) };
                if r.is_ok() {
                    let at = (start - ((first as u64) << self.shift)) as usize;
                    // SAFETY: the caller's iovecs are valid writable buffers.
                    unsafe { iov::copy_in(iovs, &buf[at..at + len as usize]) };
                }
                Ok(r)
            })?
        };
        match checked {
            Ok(()) => Ok(()),
            Err(bad) if self.found_rot(file, bad) => self.read_remote(None, loc, in_off, len, iovs, pieces, sequential),
            Err(bad) => Err(self.rot_error(file, bad)),
        }
    }

    /// Read `len` bytes at `start` of an object file read in place (see
    /// [`super::in_place`]) whose clusters are not all checksummed yet: read the whole
    /// frames around them (straight into `iovs` when the read is just those frames, else
    /// through the bounce buffer), check them and copy out the bytes asked for.
    /// `Err(cluster)`: a frame failed its checksum (`cluster` is its first).
    fn read_checked_frames(
        &self,
        file: &ScoFile,
        ix: &ScoIndex,
        start: u64,
        len: u64,
        iovs: &[iovec],
    ) -> Result<std::result::Result<(), u32>> {
        let fs = ix.frame_size as u64;
        let (first, last) = ix.frames_for(start, len).ok_or_else(|| Error::Corrupt {
            key: file.path().display().to_string(),
            detail: format!("range {start}+{len} is beyond the SCO's {} bytes", ix.raw_len),
        })?;
        let off = first as u64 * fs;
        let want = ((last as u64 + 1) * fs).min(ix.raw_len) - off;
        let io_err = |e| Error::io(format!("volume {}: cannot read SCO {}", self.name, file.number), e);
        if start == off && len == want {
            file.readv_at(iovs, off).map_err(io_err)?;
            // SAFETY: the caller's iovecs are valid buffers, just filled.
            return Ok(unsafe { self.check_frames(file, ix, first, iovs) });
        }
        BOUNCE.with(|b| {
            let mut b = b.borrow_mut();
            if b.as_ref().is_none_or(|buf| buf.len() < want as usize) {
                *b = Some(AlignedBuf::zeroed(want as usize));
            }
            let buf = &mut b.as_mut().expect("set above")[..want as usize];
            let v = [iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() }];
            file.readv_at(&v, off).map_err(io_err)?;
            // SAFETY: `v` points to the bounce buffer, just filled.
            let r = unsafe { self.check_frames(file, ix, first, &v) };
            if r.is_ok() {
                let at = (start - off) as usize;
                // SAFETY: the caller's iovecs are valid writable buffers.
                unsafe { iov::copy_in(iovs, &buf[at..at + len as usize]) };
            }
            Ok(r)
        })
    }

    /// Check whole frames from frame `first` on, read into `iovs`, against the object's
    /// index in one pass: a checksum per cluster, combined per frame. On success the
    /// clusters keep their checksums (later reads of them check those alone).
    ///
    /// # Safety
    /// Every iovec must point to readable memory of its length for the whole call.
    unsafe fn check_frames(
        &self,
        file: &ScoFile,
        ix: &ScoIndex,
        first: usize,
        iovs: &[iovec],
    ) -> std::result::Result<(), u32> {
        let cs = self.cs as usize;
        let per_frame = ix.frame_size as usize / cs;
        let first_cluster = (first * per_frame) as u32;
        FRAME_CRCS.with_borrow_mut(|crcs| {
            crcs.clear();
            // SAFETY: forwarded contract.
            unsafe { cluster_crc::compute(iovs, cs, crcs) };
            let combine = cluster_crc::Combiner::for_len(cs);
            for (i, frame) in crcs.chunks(per_frame).enumerate() {
                if combine.all(frame) != Some(ix.frames[first + i].crc) {
                    return Err(first_cluster + (i * per_frame) as u32);
                }
            }
            file.crcs.store(first_cluster, crcs);
            Ok(())
        })
    }

    /// Check a planned read once its IO is done (see [`IoPlan::verify_read`]). On a
    /// mismatch the caller reads again with [`Volume::read_iovecs`], which goes to the
    /// object store's copy if there is one, else fails.
    ///
    /// # Safety
    /// As for [`IoPlan::verify_read`].
    pub unsafe fn verify_read(&self, plan: &IoPlan, iovs: &[iovec], ranges: &[(usize, usize)]) -> Result<()> {
        // SAFETY: forwarded contract.
        match unsafe { plan.verify_read(iovs, ranges) } {
            Ok(()) => Ok(()),
            Err((sco, index)) => {
                let file = plan.file_of(sco).expect("the plan holds the file it read");
                self.found_rot(file, index);
                Err(self.rot_error(file, index))
            }
        }
    }
}
