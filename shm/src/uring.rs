//! A small io_uring wrapper: one ring per queue worker, completions signalled on an eventfd.
//!
//! The eventfd is registered with the ring, so the worker's epoll loop (vhost-user-backend's
//! `register_listener`) wakes up when a completion arrives; the worker then calls
//! [`Uring::reap_into`]. Submissions and completions happen on the one worker thread, so the ring
//! needs no lock. Buffers are raw iovecs into guest memory: the caller keeps them (and the
//! guest memory mapping) alive until the matching completion is reaped, which is why the
//! submission methods are `unsafe`.

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

/// An io_uring with a registered completion eventfd.
pub struct Uring {
    ring: IoUring,
    eventfd: EventFd,
    in_flight: usize,
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
        Ok(Uring { ring, eventfd, in_flight: 0 })
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
        let len = u32::try_from(iovs.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let e = opcode::Readv::new(types::Fd(fd), iovs.as_ptr(), len).offset(offset).build().user_data(user_data);
        self.push(e)
    }

    /// Queue a vectored write of `iovs` to `fd` at `offset`.
    ///
    /// # Safety
    /// As for [`Uring::readv`].
    pub unsafe fn writev(&mut self, fd: RawFd, iovs: &[libc::iovec], offset: u64, user_data: u64) -> io::Result<()> {
        let len = u32::try_from(iovs.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let e = opcode::Writev::new(types::Fd(fd), iovs.as_ptr(), len).offset(offset).build().user_data(user_data);
        self.push(e)
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
        f.debug_struct("Uring").field("eventfd", &self.eventfd.as_raw_fd()).field("in_flight", &self.in_flight).finish()
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
