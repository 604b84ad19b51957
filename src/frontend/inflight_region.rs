//! The vhost-user inflight I/O tracking region (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`).
//!
//! The back-end allocates a shared region (`GET_INFLIGHT_FD`, a memfd), the hypervisor
//! keeps it and hands it to every back-end process it connects to (`SET_INFLIGHT_FD`). Per
//! queue, split-ring layout version 1 of the vhost-user specification ("Inflight I/O
//! tracking"), every field little-endian:
//!
//! ```text
//! queue region (size: 16 + 16 * queue_size, rounded up to 64 bytes)
//!   u64 features | u16 version | u16 desc_num | u16 last_batch_head | u16 used_idx
//!   desc[desc_num]: u8 inflight | u8 padding[5] | u16 next | u64 counter
//! ```
//!
//! A request is marked (`inflight = 1`, `counter` = a per-queue sequence number) when its
//! head is taken from the available ring. Publishing its used element is bracketed:
//! `last_batch_head = head`, the used element and used index are written, then the mark is
//! cleared and `used_idx` updated. A back-end that died between the two halves is detected
//! at the next start by `used_idx` differing from the ring's used index: the request
//! `last_batch_head` names was published and its mark is stale. Everything else still
//! marked was taken and never completed: it is resubmitted, oldest counter first, and the
//! ring's next available index is `used index + number of requests still marked`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{fence, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserInflight;

/// The split-ring layout version this back-end writes.
pub const INFLIGHT_VERSION: u16 = 1;
const HEADER: usize = 16;
const DESC_STATE: usize = 16;
const ALIGN: usize = 64;

/// Bytes of one queue's region for `queue_size` descriptors.
pub fn queue_region_size(queue_size: u16) -> usize {
    (HEADER + DESC_STATE * usize::from(queue_size)).div_ceil(ALIGN) * ALIGN
}

/// A mapped inflight region shared with the hypervisor.
pub struct InflightRegion {
    base: *mut u8,
    len: usize,
    num_queues: u16,
    queue_size: u16,
}

// SAFETY: the mapping is plain shared memory; every access goes through atomics at
// bounds-checked offsets, and each queue's part is written by one worker at a time.
unsafe impl Send for InflightRegion {}
// SAFETY: as above.
unsafe impl Sync for InflightRegion {}

impl Drop for InflightRegion {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `map`, unmapped once here.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Check a request's queue count and size.
fn check_geometry(num_queues: u16, queue_size: u16) -> io::Result<usize> {
    if num_queues == 0 || queue_size == 0 || queue_size > 32768 {
        return Err(invalid(format!("inflight region for {num_queues} queues of {queue_size} is unusable")));
    }
    Ok(queue_region_size(queue_size) * usize::from(num_queues))
}

/// `GET_INFLIGHT_FD`: a zeroed memfd sized for the queues `request` describes, and the
/// reply describing it.
pub fn allocate(request: &VhostUserInflight) -> io::Result<(VhostUserInflight, File)> {
    let size = check_geometry(request.num_queues, request.queue_size)?;
    // SAFETY: memfd_create with a static NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"logdisk-inflight".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64)?;
    // Neither side may shrink it under the other's mapping (a SIGBUS otherwise).
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let reply = VhostUserInflight::new(size as u64, 0, request.num_queues, request.queue_size);
    Ok((reply, file))
}

impl InflightRegion {
    /// `SET_INFLIGHT_FD`: map the region `inflight` describes in `file`.
    pub fn map(inflight: &VhostUserInflight, file: &File) -> io::Result<Arc<InflightRegion>> {
        let need = check_geometry(inflight.num_queues, inflight.queue_size)?;
        let len = usize::try_from(inflight.mmap_size).map_err(|_| invalid("inflight mmap_size too large".into()))?;
        if len < need {
            return Err(invalid(format!(
                "inflight region of {len} bytes, {} queues of {} need {need}",
                inflight.num_queues, inflight.queue_size
            )));
        }
        let file_len = file.metadata()?.len();
        if inflight.mmap_offset.checked_add(inflight.mmap_size).is_none_or(|end| end > file_len) {
            return Err(invalid(format!(
                "inflight region {}+{} beyond its file ({file_len} bytes)",
                inflight.mmap_offset, inflight.mmap_size
            )));
        }
        let offset = libc::off_t::try_from(inflight.mmap_offset).map_err(|_| invalid("inflight offset".into()))?;
        // SAFETY: a fresh shared mapping of a range checked to lie inside the file; the
        // result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let region = Arc::new(InflightRegion {
            base: base.cast(),
            len,
            num_queues: inflight.num_queues,
            queue_size: inflight.queue_size,
        });
        for q in 0..inflight.num_queues {
            // desc_num is the region's own queue size (the spec leaves it to the back-end).
            region.header_u16(q, 10).store(inflight.queue_size.to_le(), Ordering::Relaxed);
        }
        Ok(region)
    }

    /// Queues the region has room for.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn queue_base(&self, q: u16) -> *mut u8 {
        debug_assert!(q < self.num_queues);
        // SAFETY: q < num_queues, so the queue's region lies inside the mapping (checked
        // against the geometry in `map`).
        unsafe { self.base.add(usize::from(q) * queue_region_size(self.queue_size)) }
    }

    /// `off` is 8 (version), 10 (desc_num), 12 (last_batch_head) or 14 (used_idx).
    fn header_u16(&self, q: u16, off: usize) -> &AtomicU16 {
        // SAFETY: inside the queue's header, 2-byte aligned (the mapping is page aligned
        // and queue regions are 64-byte multiples); the region outlives the reference.
        unsafe { &*(self.queue_base(q).add(off) as *const AtomicU16) }
    }

    /// The tracker of queue `q`, or `None` if the region has no room for it.
    pub fn queue(self: &Arc<Self>, q: u16) -> Option<QueueTrack> {
        if q >= self.num_queues {
            return None;
        }
        Some(QueueTrack { region: self.clone(), q, counter: 0 })
    }
}

/// One queue's part of the region, used by that queue's worker.
pub struct QueueTrack {
    region: Arc<InflightRegion>,
    q: u16,
    counter: u64,
}

/// What a queue's region said at ring start.
#[derive(Debug, Default)]
pub struct Restored {
    /// Heads still marked, oldest counter first: to resubmit before new requests.
    pub resubmit: Vec<u16>,
    /// The ring's next available index: used index + requests still marked.
    pub next_avail: Option<u16>,
    /// The region was fresh (first start with it): nothing to restore.
    pub fresh: bool,
}

impl QueueTrack {
    fn desc_inflight(&self, head: u16) -> &AtomicU8 {
        // SAFETY: callers check head < queue_size; the state entry lies inside the queue
        // region; the region outlives the reference.
        unsafe { &*(self.region.queue_base(self.q).add(HEADER + DESC_STATE * usize::from(head)) as *const AtomicU8) }
    }

    fn desc_counter(&self, head: u16) -> &AtomicU64 {
        // SAFETY: as `desc_inflight`; the counter is at offset 8 of the 16-byte entry, so
        // 8-byte aligned.
        unsafe {
            &*(self.region.queue_base(self.q).add(HEADER + DESC_STATE * usize::from(head) + 8) as *const AtomicU64)
        }
    }

    fn in_range(&self, head: u16) -> bool {
        head < self.region.queue_size
    }

    /// The chain `head` was taken from the available ring.
    pub fn mark(&mut self, head: u16) {
        if !self.in_range(head) {
            return;
        }
        self.desc_counter(head).store(self.counter.to_le(), Ordering::Relaxed);
        self.counter += 1;
        self.desc_inflight(head).store(1, Ordering::Release);
    }

    /// About to publish the used element of `head`.
    pub fn before_publish(&self, head: u16) {
        if self.in_range(head) {
            self.region.header_u16(self.q, 12).store(head.to_le(), Ordering::Release);
            fence(Ordering::SeqCst);
        }
    }

    /// The used element of `head` is published and the ring's used index is `used_idx`.
    pub fn after_publish(&self, head: u16, used_idx: u16) {
        fence(Ordering::SeqCst);
        if self.in_range(head) {
            self.desc_inflight(head).store(0, Ordering::Release);
        }
        fence(Ordering::SeqCst);
        self.region.header_u16(self.q, 14).store(used_idx.to_le(), Ordering::Release);
    }

    /// Read the region at ring start, given the ring's used index (in guest memory) and
    /// size; repair the window between publishing and clearing; list what to resubmit.
    pub fn restore(&mut self, ring_used_idx: u16, ring_size: u16) -> io::Result<Restored> {
        let version = u16::from_le(self.region.header_u16(self.q, 8).load(Ordering::Acquire));
        if version == 0 {
            // A fresh region: nothing was ever tracked in it.
            self.region.header_u16(self.q, 14).store(ring_used_idx.to_le(), Ordering::Release);
            self.region.header_u16(self.q, 8).store(INFLIGHT_VERSION.to_le(), Ordering::Release);
            self.counter = 0;
            return Ok(Restored { fresh: true, ..Restored::default() });
        }
        if version != INFLIGHT_VERSION {
            return Err(invalid(format!("inflight region version {version}, this back-end knows {INFLIGHT_VERSION}")));
        }
        if ring_size > self.region.queue_size {
            return Err(invalid(format!(
                "queue {} has {ring_size} descriptors, its inflight region {}",
                self.q, self.region.queue_size
            )));
        }
        let region_used = u16::from_le(self.region.header_u16(self.q, 14).load(Ordering::Acquire));
        if region_used != ring_used_idx {
            // The previous back-end published `last_batch_head` and died before clearing.
            let last = u16::from_le(self.region.header_u16(self.q, 12).load(Ordering::Acquire));
            if self.in_range(last) {
                self.desc_inflight(last).store(0, Ordering::Release);
            }
            self.region.header_u16(self.q, 14).store(ring_used_idx.to_le(), Ordering::Release);
        }
        let mut marked: Vec<(u64, u16)> = (0..self.region.queue_size)
            .filter(|&h| self.desc_inflight(h).load(Ordering::Acquire) == 1)
            .map(|h| (u64::from_le(self.desc_counter(h).load(Ordering::Acquire)), h))
            .collect();
        if let Some(h) = marked.iter().find(|(_, h)| *h >= ring_size) {
            return Err(invalid(format!("inflight head {} beyond the queue size {ring_size}", h.1)));
        }
        marked.sort_unstable();
        self.counter = marked.last().map_or(0, |(c, _)| c + 1);
        let inuse = marked.len() as u16;
        Ok(Restored {
            next_avail: Some(ring_used_idx.wrapping_add(inuse)),
            resubmit: marked.into_iter().map(|(_, h)| h).collect(),
            fresh: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(queues: u16, size: u16) -> Arc<InflightRegion> {
        let (reply, file) = allocate(&VhostUserInflight::new(0, 0, queues, size)).unwrap();
        assert_eq!(reply.mmap_size as usize, queue_region_size(size) * usize::from(queues));
        InflightRegion::map(&reply, &file).unwrap()
    }

    #[test]
    fn layout_sizes_match_the_spec() {
        assert_eq!(queue_region_size(256), 4160);
        assert_eq!(queue_region_size(128), 2112);
        assert_eq!(queue_region_size(3), 64);
    }

    #[test]
    fn marks_survive_a_remap_and_come_back_in_counter_order() {
        let (reply, file) = allocate(&VhostUserInflight::new(0, 0, 2, 8)).unwrap();
        {
            let r = InflightRegion::map(&reply, &file).unwrap();
            let mut t = r.queue(1).unwrap();
            assert!(t.restore(0, 8).unwrap().fresh);
            for h in [5, 2, 7, 0] {
                t.mark(h);
            }
            // 2 completes normally (used idx 1); 7 is published but the process dies
            // before clearing its mark.
            t.before_publish(2);
            t.after_publish(2, 1);
            t.before_publish(7);
        }
        let r = InflightRegion::map(&reply, &file).unwrap();
        let mut t = r.queue(1).unwrap();
        let got = t.restore(2, 8).unwrap();
        assert_eq!(got.resubmit, vec![5, 0]);
        assert_eq!(got.next_avail, Some(4));
        assert!(r.queue(0).unwrap().restore(0, 8).unwrap().fresh, "queue 0 untouched");
        assert!(r.queue(2).is_none());
        // New marks continue the counter after the resubmitted ones.
        t.mark(3);
        let mut again = r.queue(1).unwrap();
        assert_eq!(again.restore(2, 8).unwrap().resubmit, vec![5, 0, 3]);
    }

    #[test]
    fn bad_regions_are_refused() {
        let (mut reply, file) = allocate(&VhostUserInflight::new(0, 0, 1, 16)).unwrap();
        reply.mmap_size = 64;
        assert!(InflightRegion::map(&reply, &file).is_err());
        assert!(allocate(&VhostUserInflight::new(0, 0, 0, 16)).is_err());
        let r = region(1, 16);
        let mut t = r.queue(0).unwrap();
        t.restore(0, 16).unwrap();
        t.mark(12);
        assert!(t.restore(0, 8).is_err(), "a marked head beyond a smaller ring");
        assert!(t.restore(0, 32).is_err(), "a ring larger than the region");
    }
}
