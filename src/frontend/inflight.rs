//! Requests in flight on one queue: a per-worker io_uring and a fixed table of slots.
//!
//! A read or write the target can plan ([`BlockTarget::plan_read`] / `plan_write`) is
//! submitted as readv/writev SQEs whose iovecs point straight into guest memory; the
//! worker goes on popping descriptors, so a deep queue keeps many IOs in flight. The
//! ring's completion eventfd is registered in the worker's epoll loop; completions are
//! reaped there, the status byte written and the chain put on the used ring. Slots and
//! their iovec arrays are allocated once per connection: the hot path allocates nothing.
//!
//! Segments are staged, not pushed, as requests are started; [`Inflight::submit`] (called
//! once per batch of popped descriptors) merges runs of segments that are contiguous in
//! the same file into one readv/writev. A log-structured volume places the writes of one
//! batch one after another in the open SCO, so 32 random 4 KiB guest writes become one
//! 128 KiB sequential write: one SQE, one block IO, one extent update.

use std::io;
use std::os::unix::io::RawFd;

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryLoadGuard, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use logdisk_shm::{Completion, GuestIoVecs, Uring};

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
    /// The request's byte offset (a read that fails its check is read again from here).
    offset: u64,
    status_addr: GuestAddress,
    used_len: u32,
    write: bool,
    pending: u32,
    failed: bool,
    plan: IoPlan,
    iovs: Vec<libc::iovec>,
    /// Per plan segment, its range in `iovs`.
    ranges: Vec<(usize, usize)>,
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

/// A segment started but not yet handed to the ring.
#[derive(Clone, Copy)]
struct Staged {
    slot: u32,
    seg: u8,
    fd: RawFd,
    offset: u64,
    len: u64,
    write: bool,
}

/// Several staged segments submitted as one SQE; its iovecs are copied from the slots'.
struct Group {
    members: Vec<(u32, u8)>,
    iovs: Vec<libc::iovec>,
    len: u64,
}

/// Most iovecs in one merged SQE (the kernel's UIO_MAXIOV).
const MAX_GROUP_IOVS: usize = 1024;
/// Most bytes in one merged SQE.
const MAX_GROUP_BYTES: u64 = 1 << 20;
/// `user_data` bit marking a group (the rest is the group index).
const GROUP_TAG: u64 = 1 << 63;

pub struct Inflight {
    uring: Uring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    staged: Vec<Staged>,
    groups: Vec<Group>,
    free_groups: Vec<u32>,
    /// Submissions the ring refused: reported as failed completions by `complete`.
    refused: Vec<u64>,
    warnings: u64,
    /// Register guest memory with the ring (see [`Inflight::follow_memory`]).
    register_memory: bool,
    /// The memory table (`BlkDevice`'s count of them) whose regions the ring registered.
    mem_gen: Option<u64>,
}

// SAFETY: the raw iovec pointers in the slots point into guest memory kept mapped by the
// slot's memory guard; the table is only used under the worker's mutex.
unsafe impl Send for Inflight {}

impl Inflight {
    /// A table for `slots` requests, each with up to `iov_cap` guest buffers; with
    /// `register_memory`, guest memory is registered with the ring as it is first seen.
    pub fn new(slots: u16, iov_cap: usize, register_memory: bool) -> io::Result<Inflight> {
        let uring = Uring::new(u32::from(slots).max(8) * 2)?;
        let slots: Vec<Slot> = (0..slots)
            .map(|_| Slot {
                head: 0,
                offset: 0,
                status_addr: GuestAddress(0),
                used_len: 0,
                write: false,
                pending: 0,
                failed: false,
                plan: IoPlan::default(),
                iovs: Vec::with_capacity(iov_cap + MAX_SEGS),
                ranges: Vec::with_capacity(MAX_SEGS),
                mem: None,
            })
            .collect();
        let n = slots.len();
        let free = (0..n as u32).rev().collect();
        let groups = (0..n)
            .map(|_| Group {
                members: Vec::with_capacity(MAX_GROUP_IOVS),
                iovs: Vec::with_capacity(MAX_GROUP_IOVS),
                len: 0,
            })
            .collect();
        Ok(Inflight {
            uring,
            slots,
            free,
            // Grows (once) past this only for reads scattered over many runs.
            staged: Vec::with_capacity(n * 4),
            groups,
            free_groups: (0..n as u32).rev().collect(),
            refused: Vec::with_capacity(n * 4),
            warnings: 0,
            register_memory,
            mem_gen: None,
        })
    }

    /// Keep the ring's registered buffers on guest memory. `gen` counts the memory tables
    /// the device was given, read after loading `mem`. The mapping is registered the first
    /// time requests are served after the count changed, so requests into it skip the
    /// per-IO page pinning. Registering pins the whole of guest memory, faulting in pages
    /// the guest never touched, on this worker (so only with `serve --register-memory`;
    /// see `DeviceLimits::register_memory`). Old buffers are dropped here too: IO in
    /// flight on them holds its own references in the kernel.
    ///
    /// Why a request never reaches stale pages: an SQE goes as fixed only when all its
    /// iovecs lie in a registered range (`Uring`). The vhost-user handler swaps in a new
    /// table and then counts it, one message at a time, so while the count is unchanged
    /// the mapping served is the registered one or the one after it. That one was mapped
    /// (set, add) while the registered one still was, so at other addresses, or only
    /// dropped a region (remove), mapping nothing new where it was.
    pub fn follow_memory(&mut self, mem: &Mem, gen: u64) {
        if !self.register_memory || self.mem_gen == Some(gen) {
            return;
        }
        self.mem_gen = Some(gen);
        // `(host address, length)` of each region; none if one is not mapped here.
        let regions: Option<Vec<(usize, usize)>> =
            mem.iter().map(|r| host_start(r).map(|a| (a, r.len() as usize))).collect();
        let Some(regions) = regions.filter(|r| !r.is_empty()) else {
            self.uring.unregister_memory();
            return;
        };
        let t = std::time::Instant::now();
        // SAFETY: the regions are the current mapping of guest memory, which requests of
        // this table point into; a later table's requests either point elsewhere (see
        // above) or find it registered again here first.
        match unsafe { self.uring.register_memory(&regions) } {
            Ok(()) => {
                let mib = regions.iter().map(|r| r.1).sum::<usize>() >> 20;
                tracing::info!(
                    mib,
                    ms = t.elapsed().as_millis() as u64,
                    "guest memory registered with the queue's io_uring"
                );
            }
            Err(e) => {
                if self.uring.can_register_memory() {
                    self.warn(format_args!("guest memory not registered with io_uring ({e}): every IO pins its pages"));
                }
            }
        }
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
        slot.offset = offset;
        slot.status_addr = chain.status_addr;
        slot.used_len = if write { 1 } else { u32::try_from(len).unwrap_or(u32::MAX - 1) + 1 };
        slot.write = write;
        slot.failed = false;
        slot.pending = 0;
        slot.mem = Some(mem.clone());
        slot.iovs.clear();
        slot.ranges.clear();
        let src = bufs.iovecs();
        let mut at = 0u64;
        for seg in slot.plan.segs() {
            let start = slot.iovs.len();
            iov::append_sub_range(src, at, seg.len, &mut slot.iovs);
            slot.ranges.push((start, slot.iovs.len()));
            at += seg.len;
        }
        if write {
            // SAFETY: the iovecs point into mapped guest memory checked by the parser.
            unsafe { slot.plan.checksum_before(&slot.iovs) };
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
            // `staged` grows only past its largest batch so far: steady state allocates nothing.
            self.staged.push(Staged { slot: idx, seg: i as u8, fd, offset: seg.file_offset, len: seg.len, write });
            slot.pending += 1;
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

    /// Hand staged segments to the kernel, merging runs contiguous in one file.
    pub fn submit(&mut self) {
        self.push_staged();
        if let Err(e) = self.uring.submit() {
            self.warn(format_args!("io_uring submit: {e}"));
        }
    }

    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        if self.warnings < 20 {
            self.warnings += 1;
            tracing::warn!("{msg}");
        }
    }

    /// Iovecs of a staged segment (inside its slot).
    fn seg_iovs(&self, s: &Staged) -> &[libc::iovec] {
        let slot = &self.slots[s.slot as usize];
        let (a, b) = slot.ranges[s.seg as usize];
        &slot.iovs[a..b]
    }

    fn push_staged(&mut self) {
        let mut i = 0;
        while i < self.staged.len() {
            let first = self.staged[i];
            let mut end = first.offset + first.len;
            let mut iovs = self.seg_iovs(&first).len();
            let mut j = i + 1;
            while j < self.staged.len() {
                let s = self.staged[j];
                let n = self.seg_iovs(&s).len();
                if s.fd != first.fd
                    || s.write != first.write
                    || s.offset != end
                    || iovs + n > MAX_GROUP_IOVS
                    || end + s.len - first.offset > MAX_GROUP_BYTES
                {
                    break;
                }
                end += s.len;
                iovs += n;
                j += 1;
            }
            match self.free_groups.pop() {
                Some(g) if j - i > 1 => self.push_group(g, i, j),
                g => {
                    if let Some(g) = g {
                        self.free_groups.push(g);
                    }
                    for k in i..j {
                        let s = self.staged[k];
                        let user_data = (u64::from(s.slot) << 8) | u64::from(s.seg);
                        let v = self.seg_iovs(&s);
                        let (ptr, n) = (v.as_ptr(), v.len());
                        // SAFETY: the iovecs live in the slot (capacity reserved, not
                        // reallocated) and point into guest memory kept mapped by the
                        // slot's memory guard until the completion is reaped.
                        let r = unsafe {
                            self.uring.vectored(s.write, s.fd, std::slice::from_raw_parts(ptr, n), s.offset, user_data)
                        };
                        if let Err(e) = r {
                            self.refuse(user_data, e);
                        }
                    }
                }
            }
            i = j;
        }
        self.staged.clear();
    }

    /// Submit staged segments `i..j` (contiguous in one file) as group `g`.
    fn push_group(&mut self, g: u32, i: usize, j: usize) {
        let first = self.staged[i];
        let Inflight { slots, groups, staged, .. } = self;
        let group = &mut groups[g as usize];
        group.members.clear();
        group.iovs.clear();
        group.len = 0;
        for s in &staged[i..j] {
            let slot = &slots[s.slot as usize];
            let (a, b) = slot.ranges[s.seg as usize];
            group.iovs.extend_from_slice(&slot.iovs[a..b]);
            group.members.push((s.slot, s.seg));
            group.len += s.len;
        }
        let (ptr, n) = (group.iovs.as_ptr(), group.iovs.len());
        let user_data = GROUP_TAG | u64::from(g);
        // SAFETY: the group's iovecs stay untouched until its completion is reaped (the
        // group is not reused before), and point into guest memory kept mapped by each
        // member slot's memory guard.
        let r = unsafe {
            self.uring.vectored(first.write, first.fd, std::slice::from_raw_parts(ptr, n), first.offset, user_data)
        };
        if let Err(e) = r {
            self.refuse(user_data, e);
        }
    }

    fn refuse(&mut self, user_data: u64, e: io::Error) {
        self.warn(format_args!("io_uring submission failed: {e}"));
        self.refused.push(user_data);
        self.uring.wake();
    }

    /// Reap completions; `done(head, used_len)` is called for each finished request
    /// after its status byte is written. Returns how many finished.
    pub fn complete(&mut self, target: &dyn BlockTarget, writeback: bool, mut done: impl FnMut(u16, u32)) -> usize {
        let mut finished = 0;
        let mut refused = std::mem::take(&mut self.refused);
        for &user_data in &refused {
            finished += self.completed(user_data, -libc::EIO, target, writeback, &mut done);
        }
        refused.clear();
        self.refused = refused;
        // Completions are copied out first: handling one needs `self` whole.
        let mut batch = [Completion { user_data: 0, result: 0 }; 64];
        loop {
            let n = self.uring.reap_into(&mut batch);
            for c in &batch[..n] {
                finished += self.completed(c.user_data, c.result, target, writeback, &mut done);
            }
            if n < batch.len() {
                break;
            }
        }
        finished
    }

    /// One SQE finished: a single segment or a group of them.
    fn completed(
        &mut self,
        user_data: u64,
        result: i32,
        target: &dyn BlockTarget,
        writeback: bool,
        done: &mut impl FnMut(u16, u32),
    ) -> usize {
        if user_data & GROUP_TAG != 0 {
            let g = (user_data & !GROUP_TAG) as usize;
            let Some(group) = self.groups.get_mut(g) else { return 0 };
            let want = group.len;
            let ok = result >= 0 && result as u64 == want;
            if !ok {
                self.warn(format_args!("io_uring IO failed or was short: result {result}, wanted {want}"));
            }
            let mut members = std::mem::take(&mut self.groups[g].members);
            let mut finished = 0;
            for &(slot, _) in &members {
                finished += self.seg_done(slot as usize, ok, target, writeback, done);
            }
            members.clear();
            self.groups[g].members = members;
            self.free_groups.push(g as u32);
            return finished;
        }
        let idx = (user_data >> 8) as usize;
        let seg = (user_data & 0xff) as usize;
        let Some(slot) = self.slots.get(idx) else { return 0 };
        let want = slot.plan.segs().get(seg).map(|s| s.len).unwrap_or(0);
        let ok = result >= 0 && result as u64 == want;
        if !ok && !slot.failed {
            let write = slot.write;
            self.warn(format_args!("io_uring IO failed or was short: result {result}, wanted {want}, write {write}"));
        }
        self.seg_done(idx, ok, target, writeback, done)
    }

    fn seg_done(
        &mut self,
        idx: usize,
        ok: bool,
        target: &dyn BlockTarget,
        writeback: bool,
        done: &mut impl FnMut(u16, u32),
    ) -> usize {
        let slot = &mut self.slots[idx];
        if !ok {
            slot.failed = true;
        }
        slot.pending -= 1;
        if slot.pending > 0 {
            return 0;
        }
        finish(slot, target, writeback, done);
        self.free.push(idx as u32);
        1
    }

    /// Wait for every request in flight and complete it.
    pub fn drain(&mut self, target: &dyn BlockTarget, writeback: bool, mut done: impl FnMut(u16, u32)) {
        self.push_staged();
        while self.busy() > 0 {
            if !self.refused.is_empty() {
                self.complete(target, writeback, &mut done);
                continue;
            }
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

/// Where region `r` is mapped in this process, if it is.
fn host_start(r: &impl GuestMemoryRegion) -> Option<usize> {
    r.get_host_address(MemoryRegionAddress(0)).ok().map(|p| p as usize)
}

/// Read a slot's whole request again with `read_vectored` (the rare path after a failed
/// check: allocates).
fn reread(slot: &Slot, target: &dyn BlockTarget) -> io::Result<()> {
    let mut bufs: Vec<io::IoSliceMut<'_>> = slot
        .iovs
        .iter()
        // SAFETY: each iovec points into guest memory kept mapped by `slot.mem`, and no
        // other reference to it is live while the request is outstanding.
        .map(|v| io::IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(v.iov_base as *mut u8, v.iov_len) }))
        .collect();
    target.read_vectored(slot.offset, &mut bufs)
}

fn finish(slot: &mut Slot, target: &dyn BlockTarget, writeback: bool, done: &mut impl FnMut(u16, u32)) {
    let mut ok = !slot.failed;
    if slot.write {
        if ok {
            // SAFETY: the iovecs point into guest memory kept mapped by `slot.mem`.
            unsafe { slot.plan.checksum_after(&slot.iovs) };
        }
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
        if ok {
            // SAFETY: the iovecs point into guest memory kept mapped by `slot.mem`.
            if let Err(e) = unsafe { target.verify_read(&slot.plan, &slot.iovs, &slot.ranges) } {
                // Data that fails its checksum never reaches the guest: read the request
                // again on the target's own path (another copy, or an error).
                ok = reread(slot, target)
                    .map_err(|e2| tracing::error!("read at {} failed its check ({e}): {e2}", slot.offset))
                    .is_ok();
                if !ok {
                    // Not even the failed request's buffers keep the bad bytes.
                    // SAFETY: as above (writable guest buffers of this read).
                    unsafe { iov::zero(&slot.iovs) };
                }
            }
        }
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
