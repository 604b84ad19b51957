//! IO plans: the file ranges a read or write touches, for callers that perform the IO
//! themselves (the frontend's io_uring). A write plan reserves space in the open SCO and
//! must be finished with [`crate::volume::Volume::finish_write`]; a plan keeps its files
//! open until cleared. Fixed size: planning allocates nothing.

use std::os::unix::io::RawFd;
use std::sync::Arc;

use super::sco_file::ScoFile;

/// Most segments in one plan (a write crossing SCO boundaries, a read of several runs).
pub const MAX_SEGS: usize = 4;

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
    segs: [Seg; MAX_SEGS],
    keep: [Option<Arc<ScoFile>>; MAX_SEGS],
    n: usize,
}

impl Default for IoPlan {
    fn default() -> Self {
        IoPlan { segs: [Seg::EMPTY; MAX_SEGS], keep: Default::default(), n: 0 }
    }
}

impl IoPlan {
    pub fn segs(&self) -> &[Seg] {
        &self.segs[..self.n]
    }

    pub fn is_full(&self) -> bool {
        self.n == MAX_SEGS
    }

    /// Drop every segment (and the files they kept open).
    pub fn clear(&mut self) {
        for k in &mut self.keep[..self.n] {
            *k = None;
        }
        self.n = 0;
    }

    pub(crate) fn push_file(&mut self, file: &Arc<ScoFile>, file_offset: u64, len: u64, cluster: u64, index: u32) {
        self.segs[self.n] = Seg {
            fd_direct: file.direct_fd().unwrap_or(-1),
            fd_buffered: file.buffered_fd(),
            file_offset,
            len,
            sco: file.number,
            cluster,
            index,
        };
        self.keep[self.n] = Some(file.clone());
        self.n += 1;
    }

    pub(crate) fn push_zero(&mut self, len: u64) {
        self.segs[self.n] = Seg { len, ..Seg::EMPTY };
        self.n += 1;
    }
}
