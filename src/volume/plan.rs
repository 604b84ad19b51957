//! IO plans: the file ranges a read or write touches, for callers that perform the IO
//! themselves (the frontend's io_uring). A write plan reserves space in the open SCO and
//! must be finished with [`crate::volume::Volume::finish_write`]; a plan keeps its files
//! open until cleared. Its capacity is reserved once: planning allocates nothing.

use std::os::unix::io::RawFd;
use std::sync::Arc;

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
}

impl Default for IoPlan {
    fn default() -> Self {
        IoPlan { segs: Vec::with_capacity(MAX_SEGS), keep: Vec::with_capacity(MAX_SEGS) }
    }
}

impl IoPlan {
    pub fn segs(&self) -> &[Seg] {
        &self.segs
    }

    pub fn is_full(&self) -> bool {
        self.segs.len() >= MAX_SEGS
    }

    /// Drop every segment (and the files they kept open).
    pub fn clear(&mut self) {
        self.segs.clear();
        self.keep.clear();
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
