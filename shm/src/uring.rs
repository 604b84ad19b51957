//! A small io_uring wrapper: one ring per queue worker, completions signalled on an eventfd.
//!
//! The eventfd is registered with the ring, so the worker's epoll loop (vhost-user-backend's
//! `register_listener`) wakes up when a completion arrives; the worker then calls
//! [`Uring::reap_into`]. Submissions and completions happen on the one worker thread, so the ring
//! needs no lock. Buffers are raw iovecs into guest memory: the caller keeps them (and the
//! guest memory mapping) alive until the matching completion is reaped, which is why the
//! submission methods are `unsafe`.
//!
//! Guest memory can be registered with the ring as fixed buffers
//! ([`Uring::register_memory`]): a read or write whose iovecs all lie in one registered
//! buffer then goes as `READV_FIXED` / `WRITEV_FIXED` (Linux 6.15), and the kernel does not
//! pin the guest's pages again for every request (`get_user_pages`: 13 % of the daemon's
//! samples under 1 MiB writes, 2026-12-07). Anything else goes as a plain readv/writev.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// One finished operation: the caller's tag and the kernel's result (bytes, or `-errno`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The `user_data` given at submission.
    pub user_data: u64,
    /// Bytes transferred, or a negative errno.
    pub result: i32,
}

impl Completion {
    /// The result as an `io::Result` of the byte count.
    pub fn io_result(&self) -> io::Result<usize> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as usize)
        }
    }
}

/// Completion-queue entries per submission-queue entry: room for the completions of
/// many submitted batches before the kernel has to buffer them (see [`Uring::reap_into`]).
const CQ_PER_SQ: u32 = 8;

/// The kernel's largest completion queue.
const MAX_CQ: u32 = 65536;

/// The kernel's largest registered buffer (`io_buffer_validate`: 1 GiB); larger guest
/// memory regions are registered in pieces of this size.
const MAX_FIXED_BUF: usize = 1 << 30;

/// The kernel's most registered buffers (`IORING_MAX_REG_BUFFERS`).
const MAX_FIXED_BUFS: usize = 1 << 14;

static FIXED_SUBMITTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Reads and writes this process submitted into registered memory (for tests and metrics).
pub fn fixed_submitted() -> u64 {
    FIXED_SUBMITTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// An io_uring with a registered completion eventfd.
pub struct Uring {
    ring: IoUring,
    eventfd: EventFd,
    in_flight: usize,
    /// The kernel has `READV_FIXED` / `WRITEV_FIXED`.
    vectored_fixed: bool,
    /// Registered buffers, by index: `(start, len)` host ranges.
    fixed: Vec<(usize, usize)>,
}

impl Uring {
    /// A ring with room for `entries` submissions (rounded up to a power of two by the kernel)
    /// and [`CQ_PER_SQ`] times as many completions. `COOP_TASKRUN`: a completion is posted
    /// when the worker next enters the kernel instead of interrupting it while it runs (an
    /// inter-processor interrupt, costly in a VM); a sleeping worker is still woken.
    pub fn new(entries: u32) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(entries.saturating_mul(CQ_PER_SQ).min(MAX_CQ))
            .setup_coop_taskrun()
            .build(entries)?;
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let mut probe = io_uring::Probe::new();
        let vectored_fixed = ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::ReadvFixed::CODE)
            && probe.is_supported(opcode::WritevFixed::CODE);
        Ok(Uring { ring, eventfd, in_flight: 0, vectored_fixed, fixed: Vec::new() })
    }

    /// Whether this kernel can take IO into registered memory ([`Uring::register_memory`]).
    pub fn can_register_memory(&self) -> bool {
        self.vectored_fixed
    }

    /// The `(start, len)` host ranges registered now, in pieces of at most 1 GiB.
    pub fn registered(&self) -> &[(usize, usize)] {
        &self.fixed
    }

    /// Register `regions` (`(host address, length)`, e.g. guest memory mappings) as the
    /// ring's fixed buffers, replacing any registered before; the kernel pins their pages
    /// (faulting in those not yet touched) until [`Uring::unregister_memory`] or the ring's
    /// end. IO in flight on buffers registered before keeps its own references to them
    /// (only kernels with the vectored fixed operations register anything here, and
    /// those count references per request). On an error nothing stays registered.
    ///
    /// # Safety
    /// Each region must map the memory that IO through its addresses is meant for, for as
    /// long as such IO is submitted (a fixed request reaches the pages pinned here, even
    /// if something else is mapped at those addresses by then).
    pub unsafe fn register_memory(&mut self, regions: &[(usize, usize)]) -> io::Result<()> {
        self.unregister_memory();
        if !self.vectored_fixed {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let mut pieces = Vec::new();
        for &(start, len) in regions {
            let mut at = 0;
            while at < len {
                let n = (len - at).min(MAX_FIXED_BUF);
                pieces.push(libc::iovec { iov_base: (start + at) as *mut _, iov_len: n });
                at += n;
            }
        }
        if pieces.is_empty() || pieces.len() > MAX_FIXED_BUFS {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: each region maps the memory IO through it is meant for, as long as
        // such IO is submitted (the caller's contract); the kernel pins the pages.
        unsafe { self.ring.submitter().register_buffers(&pieces)? };
        self.fixed = pieces.iter().map(|v| (v.iov_base as usize, v.iov_len)).collect();
        Ok(())
    }

    /// Drop the registered buffers (IO in flight on them keeps its own references).
    pub fn unregister_memory(&mut self) {
        if !self.fixed.is_empty() {
            self.fixed.clear();
            let _ = self.ring.submitter().unregister_buffers();
        }
    }

    /// The registered buffer holding every byte of `iovs`, if one does.
    fn fixed_index(&self, iovs: &[libc::iovec]) -> Option<u16> {
        let first = iovs.first()?.iov_base as usize;
        let i = self.fixed.iter().position(|&(s, n)| first >= s && first - s < n)?;
        let (s, n) = self.fixed[i];
        let inside = |v: &libc::iovec| {
            let a = v.iov_base as usize;
            a >= s && a - s <= n && v.iov_len <= n - (a - s)
        };
        iovs.iter().all(inside).then_some(i as u16)
    }

    /// The fd to watch for completions (readable when some have arrived).
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Operations submitted and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn push(&mut self, entry: io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: the entry's buffers are valid per the caller's contract (see the public
        // `unsafe fn`s); pushing itself only copies the entry into the ring.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // Queue full: hand what is queued to the kernel and try once more.
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }.map_err(|_| io::Error::from(io::ErrorKind::WouldBlock))?;
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Queue a vectored read of `iovs` from `fd` at `offset`.
    ///
    /// # Safety
    /// `iovs` and the memory it points to must stay valid and untouched by others until the
    /// completion with `user_data` has been reaped.
    pub unsafe fn readv(&mut self, fd: RawFd, iovs: &[libc::iovec], offset: u64, user_data: u64) -> io::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.vectored(false, fd, iovs, offset, user_data) }
    }

    /// Queue a vectored write of `iovs` to `fd` at `offset`.
    ///
    /// # Safety
    /// As for [`Uring::readv`].
    pub unsafe fn writev(&mut self, fd: RawFd, iovs: &[libc::iovec], offset: u64, user_data: u64) -> io::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.vectored(true, fd, iovs, offset, user_data) }
    }

    /// Queue a vectored write (`write`) or read of `iovs`: fixed when they all lie in one
    /// registered buffer.
    ///
    /// # Safety
    /// As for [`Uring::readv`].
    pub unsafe fn vectored(
        &mut self,
        write: bool,
        fd: RawFd,
        iovs: &[libc::iovec],
        offset: u64,
        user_data: u64,
    ) -> io::Result<()> {
        let (fd, v) = (types::Fd(fd), iovs.as_ptr());
        let len = u32::try_from(iovs.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let fixed = self.fixed_index(iovs);
        if fixed.is_some() {
            FIXED_SUBMITTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let e = match (write, fixed) {
            (false, Some(b)) => opcode::ReadvFixed::new(fd, v, len, b).offset(offset).build(),
            (false, None) => opcode::Readv::new(fd, v, len).offset(offset).build(),
            (true, Some(b)) => opcode::WritevFixed::new(fd, v, len, b).offset(offset).build(),
            (true, None) => opcode::Writev::new(fd, v, len).offset(offset).build(),
        };
        self.push(e.user_data(user_data))
    }

    /// Queue an `fdatasync` of `fd`.
    pub fn fdatasync(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let e = opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build().user_data(user_data);
        self.push(e)
    }

    /// Make the eventfd readable, so the worker's loop reaps soon (used to report
    /// a failure that never reached the kernel).
    pub fn wake(&self) {
        let _ = self.eventfd.write(1);
    }

    /// Hand queued operations to the kernel; returns how many were submitted.
    pub fn submit(&mut self) -> io::Result<usize> {
        self.ring.submit()
    }

    /// Submit and block until at least `want` completions are ready.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        self.ring.submit_and_wait(want)
    }

    /// Clear the eventfd and move up to `out.len()` arrived completions into `out`;
    /// returns how many. Call again while it fills `out`.
    ///
    /// More operations can be in flight than the completion queue holds (a read scattered
    /// over many runs is many operations). The kernel then keeps the extra completions in
    /// its overflow list and moves them into the queue only on an `io_uring_enter`; the
    /// eventfd was already signalled for them. So once the queue is drained, an overflow is
    /// flushed here and reaping goes on. Without that, a worker waiting on the eventfd
    /// would wait forever for completions that have already happened.
    pub fn reap_into(&mut self, out: &mut [Completion]) -> usize {
        let _ = self.eventfd.read();
        let mut n = 0;
        loop {
            for cqe in self.ring.completion().take(out.len() - n) {
                out[n] = Completion { user_data: cqe.user_data(), result: cqe.result() };
                n += 1;
            }
            if n == out.len() || !self.ring.submission().cq_overflow() {
                break;
            }
            // Enters the kernel with GETEVENTS (the crate adds it when the overflow flag
            // is set), which flushes the overflow list into the completion queue.
            if self.ring.submit().is_err() {
                break;
            }
        }
        self.in_flight = self.in_flight.saturating_sub(n);
        n
    }
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("eventfd", &self.eventfd.as_raw_fd())
            .field("in_flight", &self.in_flight)
            .field("fixed", &self.fixed.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn ring_or_skip() -> Option<Uring> {
        match Uring::new(8) {
            Ok(r) => Some(r),
            Err(e) => {
                // Some sandboxes forbid io_uring (seccomp, sysctl kernel.io_uring_disabled).
                eprintln!("io_uring unavailable here, skipping: {e}");
                None
            }
        }
    }

    fn reap_all(ring: &mut Uring, done: &mut Vec<Completion>) {
        let mut buf = [Completion { user_data: 0, result: 0 }; 8];
        let n = ring.reap_into(&mut buf);
        done.extend_from_slice(&buf[..n]);
    }

    fn wait_readable(fd: RawFd) {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, 5 s timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(n, 1, "no completion signalled on the eventfd");
    }

    #[test]
    fn writev_readv_fsync_complete_on_the_eventfd() {
        let Some(mut ring) = ring_or_skip() else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("logdisk-shm-uring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();

        let a = vec![0x11u8; 4096];
        let b = vec![0x22u8; 512];
        let iovs = [
            libc::iovec { iov_base: a.as_ptr() as *mut _, iov_len: a.len() },
            libc::iovec { iov_base: b.as_ptr() as *mut _, iov_len: b.len() },
        ];
        // SAFETY: `a`, `b` and `iovs` outlive the completion, which is reaped below.
        unsafe { ring.writev(file.as_raw_fd(), &iovs, 8192, 1).unwrap() };
        ring.submit().unwrap();
        wait_readable(ring.eventfd());
        let mut done = Vec::new();
        reap_all(&mut ring, &mut done);
        assert_eq!(done, vec![Completion { user_data: 1, result: 4608 }]);
        assert_eq!(ring.in_flight(), 0);

        ring.fdatasync(file.as_raw_fd(), 2).unwrap();
        ring.submit_and_wait(1).unwrap();
        let mut done = Vec::new();
        reap_all(&mut ring, &mut done);
        assert_eq!(done[0].user_data, 2);
        done[0].io_result().unwrap();

        let mut r1 = vec![0u8; 4096];
        let mut r2 = vec![0u8; 512];
        let riovs = [
            libc::iovec { iov_base: r1.as_mut_ptr().cast(), iov_len: r1.len() },
            libc::iovec { iov_base: r2.as_mut_ptr().cast(), iov_len: r2.len() },
        ];
        // SAFETY: `r1`, `r2` and `riovs` outlive the completion, reaped below.
        unsafe { ring.readv(file.as_raw_fd(), &riovs, 8192, 3).unwrap() };
        ring.submit().unwrap();
        wait_readable(ring.eventfd());
        let mut done = Vec::new();
        reap_all(&mut ring, &mut done);
        assert_eq!(done[0].io_result().unwrap(), 4608);
        assert_eq!(r1, a);
        assert_eq!(r2, b);

        let mut check = vec![0u8; 4608];
        file.read_exact_at(&mut check, 8192).unwrap();
        assert_eq!(&check[..4096], &a[..]);

        // A read of a bad fd completes with an error, it does not fail the ring.
        // SAFETY: as above.
        unsafe { ring.readv(-1, &riovs, 0, 4).unwrap() };
        ring.submit_and_wait(1).unwrap();
        let mut done = Vec::new();
        reap_all(&mut ring, &mut done);
        assert!(done[0].io_result().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn io_into_registered_memory_goes_fixed_and_round_trips() {
        let Some(mut ring) = ring_or_skip() else {
            return;
        };
        if !ring.can_register_memory() {
            eprintln!("no READV_FIXED/WRITEV_FIXED in this kernel, skipping");
            return;
        }
        let dir = std::env::temp_dir().join(format!("logdisk-shm-uring-fixed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("data"))
            .unwrap();
        // Two "regions" of guest memory, registered as two buffers.
        let mut a = vec![0u8; 64 << 10];
        let mut b = vec![0u8; 64 << 10];
        let (pa, pb) = (a.as_mut_ptr() as usize, b.as_mut_ptr() as usize);
        // SAFETY: `a` and `b` outlive the registration (unregistered below) and every IO.
        unsafe { ring.register_memory(&[(pa, a.len()), (pb, b.len())]).unwrap() };
        assert_eq!(ring.registered(), &[(pa, a.len()), (pb, b.len())]);
        for (i, x) in a.iter_mut().enumerate() {
            *x = (i * 7 % 251) as u8;
        }
        let fixed0 = fixed_submitted();
        // Inside the first buffer: fixed. Across both: plain. Both land.
        let inside = [
            libc::iovec { iov_base: pa as *mut _, iov_len: 4096 },
            libc::iovec { iov_base: (pa + 8192) as *mut _, iov_len: 4096 },
        ];
        let across = [
            libc::iovec { iov_base: (pa + 16384) as *mut _, iov_len: 4096 },
            libc::iovec { iov_base: pb as *mut _, iov_len: 4096 },
        ];
        // SAFETY: the iovecs point into `a` and `b`, alive until the completions are reaped.
        unsafe {
            ring.writev(file.as_raw_fd(), &inside, 0, 1).unwrap();
            ring.writev(file.as_raw_fd(), &across, 8192, 2).unwrap();
        }
        assert_eq!(fixed_submitted() - fixed0, 1, "only the write inside one buffer goes fixed");
        ring.submit_and_wait(2).unwrap();
        let mut done = Vec::new();
        reap_all(&mut ring, &mut done);
        assert!(done.iter().all(|c| c.result == 8192), "{done:?}");
        let mut on_disk = vec![0u8; 16384];
        file.read_exact_at(&mut on_disk, 0).unwrap();
        assert_eq!(&on_disk[..4096], &a[..4096]);
        assert_eq!(&on_disk[4096..8192], &a[8192..12288]);
        assert_eq!(&on_disk[8192..12288], &a[16384..20480]);
        assert!(on_disk[12288..].iter().all(|&x| x == 0));
        // A fixed read lands in the buffer too.
        let into = [libc::iovec { iov_base: (pb + 4096) as *mut _, iov_len: 8192 }];
        // SAFETY: as above.
        unsafe { ring.readv(file.as_raw_fd(), &into, 0, 3).unwrap() };
        assert_eq!(fixed_submitted() - fixed0, 2);
        ring.submit_and_wait(1).unwrap();
        let mut done = Vec::new();
        reap_all(&mut ring, &mut done);
        assert_eq!(done[0].result, 8192);
        assert_eq!(&b[4096..8192], &a[..4096]);
        assert_eq!(&b[8192..12288], &a[8192..12288]);
        // Unregistered: plain again.
        ring.unregister_memory();
        assert!(ring.registered().is_empty());
        // SAFETY: as above.
        unsafe { ring.writev(file.as_raw_fd(), &inside, 0, 4).unwrap() };
        ring.submit_and_wait(1).unwrap();
        reap_all(&mut ring, &mut Vec::new());
        assert_eq!(fixed_submitted() - fixed0, 2);
        drop(a);
        drop(b);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn completions_beyond_the_completion_queue_are_all_reaped() {
        let Some(mut ring) = ring_or_skip() else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("logdisk-shm-uring-ovf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data");
        std::fs::write(&path, vec![0x5au8; 4096]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // Far more reads in flight than the completion queue holds (8 x CQ_PER_SQ), none
        // reaped until all have completed: the kernel must buffer the rest.
        const N: usize = 8 * CQ_PER_SQ as usize * 4;
        let mut bufs = vec![[0u8; 512]; N];
        let iovs: Vec<libc::iovec> =
            bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut _, iov_len: 512 }).collect();
        for (i, v) in iovs.iter().enumerate() {
            // SAFETY: `bufs` and `iovs` outlive every completion, all reaped below.
            unsafe { ring.readv(file.as_raw_fd(), std::slice::from_ref(v), (i % 8) as u64 * 512, i as u64).unwrap() };
        }
        ring.submit().unwrap();
        wait_readable(ring.eventfd());
        let mut seen = vec![false; N];
        let mut buf = [Completion { user_data: 0, result: 0 }; 16];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut got = 0;
        // As the worker does: reap while the eventfd says so, each time until a short batch.
        while got < N && std::time::Instant::now() < deadline {
            let n = ring.reap_into(&mut buf);
            for c in &buf[..n] {
                assert_eq!(c.result, 512, "read {} failed", c.user_data);
                assert!(!std::mem::replace(&mut seen[c.user_data as usize], true), "completion reaped twice");
            }
            got += n;
            if n < buf.len() && got < N {
                // Nothing left in the queue: only a new eventfd signal would wake a worker.
                let mut pfd = libc::pollfd { fd: ring.eventfd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&mut pfd, 1, 1000) };
                assert_eq!(r, 1, "{got} of {N} completions reaped, then no eventfd signal: the rest are stuck");
            }
        }
        assert_eq!(got, N);
        assert_eq!(ring.in_flight(), 0);
        assert!(bufs.iter().all(|b| b.iter().all(|&x| x == 0x5a)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
