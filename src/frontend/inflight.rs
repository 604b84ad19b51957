//! Requests in flight on one queue: a per-worker io_uring and a fixed table of slots.
//!
//! A read or write the target can plan ([`BlockTarget::plan_read`] / `plan_write`) is
//! submitted as readv/writev SQEs whose iovecs point straight into guest memory; the
//! worker goes on popping descriptors, so a deep queue keeps many IOs in flight. The
//! ring's completion eventfd is registered in the worker's epoll loop; completions are
//! reaped there, the status byte written and the chain put on the used ring. Slots and
//! their iovec arrays are allocated once per connection: the hot path allocates nothing.

use std::io;
use std::os::unix::io::RawFd;

use vm_memory::{Bytes, GuestAddress, GuestMemoryLoadGuard, GuestMemoryMmap};

use logdisk_shm::{GuestIoVecs, Uring};

use super::request::{STATUS_IOERR, STATUS_OK};
use super::target::{BlockTarget, IoPlan, MAX_SEGS};
use crate::volume::iov;

type Mem = GuestMemoryLoadGuard<GuestMemoryMmap<()>>;

static RING_STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Requests this process has started on an io_uring (for tests and metrics).
pub fn ring_requests_started() -> u64 {
    RING_STARTED.load(std::sync::atomic::Ordering::Relaxed)
}

struct Slot {
    head: u16,
    status_addr: GuestAddress,
    used_len: u32,
    write: bool,
    pending: u32,
    failed: bool,
    plan: IoPlan,
    iovs: Vec<libc::iovec>,
    ranges: [(usize, usize); MAX_SEGS],
    mem: Option<Mem>,
}

/// Where a request's completion goes: its chain head and status byte.
#[derive(Debug, Clone, Copy)]
pub struct ChainRef {
    pub head: u16,
    pub status_addr: GuestAddress,
}

/// Outcome of trying to start a request asynchronously.
pub enum Start {
    /// Submitted: its completion is reported by `complete`.
    Started,
    /// Done without any IO (a read of unwritten data, or a failed submission): the status
    /// byte is written; put the chain on the used ring with this length.
    Finished(u32),
    /// The target cannot plan it: run it synchronously.
    NotPlanned,
    /// The target refused it (out of range, read-only, IO error): answer IOERR.
    Failed(io::Error),
}

pub struct Inflight {
    uring: Uring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    warnings: u64,
}

// SAFETY: the raw iovec pointers in the slots point into guest memory kept mapped by the
// slot's memory guard; the table is only used under the worker's mutex.
unsafe impl Send for Inflight {}

impl Inflight {
    /// A table for `slots` requests, each with up to `iov_cap` guest buffers.
    pub fn new(slots: u16, iov_cap: usize) -> io::Result<Inflight> {
        let uring = Uring::new(u32::from(slots).max(8) * 2)?;
        let slots: Vec<Slot> = (0..slots)
            .map(|_| Slot {
                head: 0,
                status_addr: GuestAddress(0),
                used_len: 0,
                write: false,
                pending: 0,
                failed: false,
                plan: IoPlan::default(),
                iovs: Vec::with_capacity(iov_cap + MAX_SEGS),
                ranges: [(0, 0); MAX_SEGS],
                mem: None,
            })
            .collect();
        let free = (0..slots.len() as u32).rev().collect();
        Ok(Inflight { uring, slots, free, warnings: 0 })
    }

    pub fn eventfd(&self) -> RawFd {
        self.uring.eventfd()
    }

    /// Requests started and not yet completed.
    pub fn busy(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Try to run a read (`write == false`) or write of `bufs` at `offset` through the ring.
    pub fn start(
        &mut self,
        target: &dyn BlockTarget,
        mem: &Mem,
        chain: ChainRef,
        offset: u64,
        bufs: &mut GuestIoVecs<'_>,
        write: bool,
    ) -> Start {
        let Some(&idx) = self.free.last() else { return Start::NotPlanned };
        if !write && bufs.has_overlap() {
            return Start::Failed(io::Error::new(io::ErrorKind::InvalidInput, "overlapping guest buffers"));
        }
        let slot = &mut self.slots[idx as usize];
        let len = bufs.bytes();
        let planned = if write {
            target.plan_write(offset, len, &mut slot.plan)
        } else {
            target.plan_read(offset, len, &mut slot.plan)
        };
        match planned {
            Ok(true) => {}
            Ok(false) => return Start::NotPlanned,
            Err(e) => return Start::Failed(e),
        }
        self.free.pop();
        RING_STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        slot.head = chain.head;
        slot.status_addr = chain.status_addr;
        slot.used_len = if write { 1 } else { u32::try_from(len).unwrap_or(u32::MAX - 1) + 1 };
        slot.write = write;
        slot.failed = false;
        slot.pending = 0;
        slot.mem = Some(mem.clone());
        slot.iovs.clear();
        let src = bufs.iovecs();
        let mut at = 0u64;
        for (i, seg) in slot.plan.segs().iter().enumerate() {
            let start = slot.iovs.len();
            iov::append_sub_range(src, at, seg.len, &mut slot.iovs);
            slot.ranges[i] = (start, slot.iovs.len());
            at += seg.len;
        }
        for (i, seg) in slot.plan.segs().iter().enumerate() {
            let v = &slot.iovs[slot.ranges[i].0..slot.ranges[i].1];
            if seg.is_zero() {
                // SAFETY: the iovecs point into mapped guest memory checked by the parser.
                unsafe { iov::zero(v) };
                continue;
            }
            let direct = seg.fd_direct >= 0 && seg.file_offset.is_multiple_of(512) && iov::aligned(v, 512);
            let fd = if direct { seg.fd_direct } else { seg.fd_buffered };
            let user_data = (u64::from(idx) << 8) | i as u64;
            // SAFETY: `v` lives in the slot (not reallocated: capacity reserved) and points
            // into guest memory kept mapped by `slot.mem` until the completion is reaped.
            let r = unsafe {
                if write {
                    self.uring.writev(fd, v, seg.file_offset, user_data)
                } else {
                    self.uring.readv(fd, v, seg.file_offset, user_data)
                }
            };
            match r {
                Ok(()) => slot.pending += 1,
                Err(e) => {
                    slot.failed = true;
                    if self.warnings < 20 {
                        self.warnings += 1;
                        tracing::warn!("io_uring submission failed: {e}");
                    }
                }
            }
        }
        if slot.pending == 0 {
            // Nothing went to the ring. `writeback` only matters for a successful write,
            // and a successful write always has IO in flight.
            let mut used = 0;
            finish(slot, target, true, &mut |_, u| used = u);
            self.free.push(idx);
            return Start::Finished(used);
        }
        Start::Started
    }

    /// Hand queued submissions to the kernel.
    pub fn submit(&mut self) {
        if let Err(e) = self.uring.submit() {
            if self.warnings < 20 {
                self.warnings += 1;
                tracing::warn!("io_uring submit: {e}");
            }
        }
    }

    /// Reap completions; `done(head, used_len)` is called for each finished request
    /// after its status byte is written. Returns how many finished.
    pub fn complete(&mut self, target: &dyn BlockTarget, writeback: bool, mut done: impl FnMut(u16, u32)) -> usize {
        let Inflight { uring, slots, free, .. } = self;
        let mut finished = 0;
        uring.reap(|c| {
            let idx = (c.user_data >> 8) as usize;
            let seg = (c.user_data & 0xff) as usize;
            let Some(slot) = slots.get_mut(idx) else { return };
            let want = slot.plan.segs().get(seg).map(|s| s.len).unwrap_or(0);
            if c.result < 0 || c.result as u64 != want {
                if !slot.failed {
                    tracing::warn!(result = c.result, want, write = slot.write, "io_uring IO failed or was short");
                }
                slot.failed = true;
            }
            slot.pending -= 1;
            if slot.pending == 0 {
                finish(slot, target, writeback, &mut done);
                free.push(idx as u32);
                finished += 1;
            }
        });
        finished
    }

    /// Wait for every request in flight and complete it.
    pub fn drain(&mut self, target: &dyn BlockTarget, writeback: bool, mut done: impl FnMut(u16, u32)) {
        while self.busy() > 0 {
            if let Err(e) = self.uring.submit_and_wait(1) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("io_uring wait while draining: {e}");
                    return;
                }
            }
            self.complete(target, writeback, &mut done);
        }
    }
}

fn finish(slot: &mut Slot, target: &dyn BlockTarget, writeback: bool, done: &mut impl FnMut(u16, u32)) {
    let mut ok = !slot.failed;
    if slot.write {
        if let Err(e) = target.finish_write(&mut slot.plan, ok) {
            tracing::warn!("finishing a write: {e}");
            ok = false;
        }
        if ok && !writeback {
            if let Err(e) = target.flush() {
                tracing::warn!("write-through flush: {e}");
                ok = false;
            }
        }
    } else {
        slot.plan.clear();
    }
    let status = if ok { STATUS_OK } else { STATUS_IOERR };
    if let Some(mem) = slot.mem.take() {
        if let Err(e) = mem.write_obj(status, slot.status_addr) {
            tracing::warn!("writing the status byte: {e}");
        }
    }
    done(slot.head, if ok { slot.used_len } else { 1 });
}
