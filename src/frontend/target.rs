//! The block-device contract between the vhost-user-blk frontend and what it serves.
//!
//! The frontend knows only this trait; the volume engine implements it in
//! `src/frontend/volume_target.rs` and knows nothing of virtio. Offsets and lengths are in
//! bytes. Buffers are iovecs that point straight into guest memory (zero copy).

use std::io::{self, IoSlice, IoSliceMut};

pub use crate::volume::plan::{IoPlan, Seg, MAX_SEGS};

/// A block device the frontend can serve. Implementations must be safe to call from
/// several queue worker threads at once.
pub trait BlockTarget: Send + Sync + 'static {
    /// Capacity in bytes (a multiple of 512).
    fn size(&self) -> u64;
    /// Preferred IO unit (the volume's cluster size, 4096 by default).
    fn block_size(&self) -> u32 {
        4096
    }
    /// True when writes, discards and write-zeroes must be refused.
    fn read_only(&self) -> bool;
    /// Serial string for VIRTIO_BLK_T_GET_ID (at most 20 bytes are used).
    fn serial(&self) -> String;
    /// Read `sum(bufs)` bytes at `offset` into the buffers.
    fn read_vectored(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> io::Result<()>;
    /// Write `sum(bufs)` bytes at `offset` from the buffers.
    fn write_vectored(&self, offset: u64, bufs: &[IoSlice<'_>]) -> io::Result<()>;
    /// Writes may start without waiting (space is not short). Cheap: asked per request.
    fn write_admitted(&self) -> bool {
        true
    }
    /// Wait until writes may start (scrub freed space); an error when they cannot. The
    /// caller holds no write in flight (their space could be what is waited for).
    fn wait_writable(&self) -> io::Result<()> {
        Ok(())
    }
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Make every completed write survive a crash of this process (not of the host):
    /// called before completions are shown to a hypervisor that can reconnect to a
    /// restarted daemon. Default: nothing (the target keeps nothing in process memory).
    fn log_completed(&self) -> io::Result<()> {
        Ok(())
    }
    /// Completions were just shown to the guest: background work that must not delay
    /// them may start now. Never blocks. Default: nothing.
    fn completions_signalled(&self) {}
    /// Unmap a range: it then reads as zeroes.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Zero a range; `unmap` allows deallocating it.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;

    /// Plan a read the frontend performs itself with io_uring. `Ok(false)` means "not
    /// plannable, call `read_vectored`" (the default).
    fn plan_read(&self, _offset: u64, _len: u64, _plan: &mut IoPlan) -> io::Result<bool> {
        Ok(false)
    }
    /// Plan (reserve) a write the frontend performs itself; `Ok(true)` obliges the
    /// frontend to call `finish_write` once the IO has completed or failed.
    fn plan_write(&self, _offset: u64, _len: u64, _plan: &mut IoPlan) -> io::Result<bool> {
        Ok(false)
    }
    /// Check a planned read's data once its IO is done, before the guest sees it
    /// (`iovs`: the buffers of every segment; `ranges[i]`: segment i's part). An error
    /// means "do not complete with this data": the frontend reads again with
    /// `read_vectored`.
    ///
    /// # Safety
    /// Every iovec must point to readable memory of its length for the whole call.
    unsafe fn verify_read(&self, _plan: &IoPlan, _iovs: &[libc::iovec], _ranges: &[(usize, usize)]) -> io::Result<()> {
        Ok(())
    }
    /// Report the outcome of a planned write (clears the plan).
    fn finish_write(&self, plan: &mut IoPlan, _ok: bool) -> io::Result<()> {
        plan.clear();
        Ok(())
    }
}
