//! Adapter: a volume served as a [`BlockTarget`]. The guest's buffers (iovecs into
//! shared guest memory) go straight to the volume's IO path.

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::Arc;

use super::target::{BlockTarget, IoPlan};
use crate::volume::iov;
use crate::volume::Volume;

pub struct VolumeTarget {
    vol: Arc<Volume>,
    read_only: bool,
}

impl VolumeTarget {
    pub fn new(vol: Arc<Volume>, read_only: bool) -> VolumeTarget {
        VolumeTarget { read_only: read_only || vol.read_only(), vol }
    }
}

impl BlockTarget for VolumeTarget {
    fn size(&self) -> u64 {
        self.vol.size()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn serial(&self) -> String {
        self.vol.name().to_string()
    }

    fn read_vectored(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> io::Result<()> {
        self.vol.read_iovecs(offset, iov::from_slices_mut(bufs)).map_err(io::Error::from)
    }

    fn write_vectored(&self, offset: u64, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only volume"));
        }
        self.vol.write_iovecs(offset, iov::from_slices(bufs)).map_err(io::Error::from)
    }

    fn write_admitted(&self) -> bool {
        self.vol.space_admits()
    }

    fn wait_writable(&self) -> io::Result<()> {
        self.vol.wait_for_space().map_err(io::Error::from)
    }

    fn flush(&self) -> io::Result<()> {
        self.vol.flush().map_err(io::Error::from)
    }

    fn log_completed(&self) -> io::Result<()> {
        self.vol.log_completed().map_err(io::Error::from)
    }

    fn completions_signalled(&self) {
        self.vol.start_log_write_back();
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.vol.write_zeroes(offset, len).map_err(io::Error::from)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        // Zeroed clusters are always unmapped: they read as zeroes and cost no space.
        self.vol.write_zeroes(offset, len).map_err(io::Error::from)
    }

    fn plan_read(&self, offset: u64, len: u64, plan: &mut IoPlan) -> io::Result<bool> {
        self.vol.plan_read(offset, len, plan).map_err(io::Error::from)
    }

    fn plan_write(&self, offset: u64, len: u64, plan: &mut IoPlan) -> io::Result<bool> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only volume"));
        }
        self.vol.plan_write(offset, len, plan).map_err(io::Error::from)
    }

    unsafe fn verify_read(&self, plan: &IoPlan, iovs: &[libc::iovec], ranges: &[(usize, usize)]) -> io::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.vol.verify_read(plan, iovs, ranges) }.map_err(io::Error::from)
    }

    fn finish_write(&self, plan: &mut IoPlan, ok: bool) -> io::Result<()> {
        self.vol.finish_write(plan, ok).map_err(io::Error::from)
    }
}
