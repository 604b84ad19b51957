//! IO plans: the file ranges a read or write touches, for callers that perform the IO
//! themselves (the frontend's io_uring). A write plan reserves space in the open SCO and
//! must be finished with [`crate::volume::Volume::finish_write`]; a plan keeps its files
//! open until cleared. Its capacity is reserved once: planning allocates nothing.

use std::os::unix::io::RawFd;
use std::sync::Arc;

use super::cluster_crc;
use super::iov::iovec;
use super::sco_file::ScoFile;

/// Most segments in one plan (a write crossing SCO boundaries, a read of several runs):
/// a 1 MiB read of 4 KiB clusters scattered by random writes has 256 runs.
pub const MAX_SEGS: usize = 256;

/// One contiguous piece of a planned IO.
#[derive(Debug, Clone, Copy)]
pub struct Seg {
    /// O_DIRECT fd (or -1): usable when the buffers and offset are 512-byte aligned.
    pub fd_direct: RawFd,
    /// Page-cache fd; -1 means "fill with zeroes" (reads only).
    pub fd_buffered: RawFd,
    pub file_offset: u64,
    pub len: u64,
    pub(crate) sco: u64,
    pub(crate) cluster: u64,
    pub(crate) index: u32,
}

impl Seg {
    const EMPTY: Seg = Seg { fd_direct: -1, fd_buffered: -1, file_offset: 0, len: 0, sco: 0, cluster: 0, index: 0 };

    /// True for a segment that reads as zeroes (no file IO).
    pub fn is_zero(&self) -> bool {
        self.fd_buffered < 0
    }
}

pub struct IoPlan {
    segs: Vec<Seg>,
    /// The files of `segs`, kept open while the IO runs (`None` for zero runs).
    keep: Vec<Option<Arc<ScoFile>>>,
    /// A write plan's cluster size (0 for reads): its clusters get checksums.
    crc_unit: usize,
    /// Per cluster of a write, in order: its checksum (see [`cluster_crc`]).
    crcs: Vec<u64>,
    /// A read plan's cluster size: its local segments are whole clusters, checked
    /// against their checksums once read ([`IoPlan::verify_read`]).
    check_unit: usize,
}

impl Default for IoPlan {
    fn default() -> Self {
        IoPlan {
            segs: Vec::with_capacity(MAX_SEGS),
            keep: Vec::with_capacity(MAX_SEGS),
            crc_unit: 0,
            crcs: Vec::with_capacity(MAX_SEGS),
            check_unit: 0,
        }
    }
}

impl IoPlan {
    pub fn segs(&self) -> &[Seg] {
        &self.segs
    }

    /// Segments that read or write a file (not zero runs).
    pub fn file_segs(&self) -> usize {
        self.keep.iter().filter(|f| f.is_some()).count()
    }

    pub fn is_full(&self) -> bool {
        self.segs.len() >= MAX_SEGS
    }

    /// Drop every segment (and the files they kept open).
    pub fn clear(&mut self) {
        self.segs.clear();
        self.keep.clear();
        self.crc_unit = 0;
        self.crcs.clear();
        self.check_unit = 0;
    }

    /// Checksum each cluster of a planned write from `iovs`, the buffers it writes (all
    /// segments in order), before the IO starts. Does nothing for a read plan.
    ///
    /// # Safety
    /// Every iovec must point to readable memory of its length for the whole call.
    pub unsafe fn checksum_before(&mut self, iovs: &[iovec]) {
        self.crcs.clear();
        if self.crc_unit > 0 {
            // SAFETY: forwarded contract.
            unsafe { cluster_crc::compute(iovs, self.crc_unit, &mut self.crcs) };
        }
    }

    /// Checksum the same buffers again once the IO is done: clusters whose buffers
    /// changed meanwhile lose their checksum.
    ///
    /// # Safety
    /// As for [`IoPlan::checksum_before`].
    pub unsafe fn checksum_after(&mut self, iovs: &[iovec]) {
        if self.crc_unit > 0 && !self.crcs.is_empty() {
            // SAFETY: forwarded contract.
            unsafe { cluster_crc::recheck(iovs, self.crc_unit, &mut self.crcs) };
        }
    }

    /// The file of SCO `sco` among the plan's segments.
    pub fn file_of(&self, sco: u64) -> Option<&ScoFile> {
        self.keep.iter().flatten().find(|f| f.number == sco).map(|f| &**f)
    }

    pub(crate) fn set_check_unit(&mut self, cluster_size: usize) {
        self.check_unit = cluster_size;
    }

    /// Check a read plan's local data against the clusters' checksums once the IO is
    /// done: `iovs` holds the buffers of every segment, `ranges[i]` segment i's part of
    /// them. `Err((sco, index))`: the first cluster read whose bytes do not match. Hashes
    /// the data once (hardware crc32c), allocates nothing.
    ///
    /// # Safety
    /// Every iovec must point to readable memory of its length for the whole call.
    pub unsafe fn verify_read(&self, iovs: &[iovec], ranges: &[(usize, usize)]) -> Result<(), (u64, u32)> {
        if self.check_unit == 0 {
            return Ok(());
        }
        for ((seg, file), &(a, b)) in self.segs.iter().zip(&self.keep).zip(ranges) {
            let Some(file) = file else { continue };
            let first = (seg.file_offset / self.check_unit as u64) as u32;
            // SAFETY: forwarded contract.
            unsafe { file.crcs.verify(first, &iovs[a..b], self.check_unit) }.map_err(|i| (file.number, i))?;
        }
        Ok(())
    }

    pub(crate) fn set_crc_unit(&mut self, cluster_size: usize) {
        self.crc_unit = cluster_size;
    }

    /// The checksums of a write plan's clusters (empty if none were computed).
    pub(crate) fn crcs(&self) -> &[u64] {
        &self.crcs
    }

    pub(crate) fn push_file(&mut self, file: &Arc<ScoFile>, file_offset: u64, len: u64, cluster: u64, index: u32) {
        self.segs.push(Seg {
            fd_direct: file.direct_fd().unwrap_or(-1),
            fd_buffered: file.buffered_fd(),
            file_offset,
            len,
            sco: file.number,
            cluster,
            index,
        });
        self.keep.push(Some(file.clone()));
    }

    pub(crate) fn push_zero(&mut self, len: u64) {
        self.segs.push(Seg { len, ..Seg::EMPTY });
        self.keep.push(None);
    }
}
