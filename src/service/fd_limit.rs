//! The daemon's open-file limit, raised at start from the soft limit to the hard one.
//!
//! A volume keeps up to `LINKED_MAX` (512) SCO object files open for reads (evicted after
//! their upload by hard link, or opened in place after a restart), two descriptors each,
//! beside its write buffer's files, sockets and io_uring rings. The usual soft limit
//! (1024) is below what one such volume needs; the hard limit (systemd's default: 524288)
//! is not. Without the raise, a full descriptor table would make the next SCO file or
//! client socket fail to open.

/// Raise the soft `RLIMIT_NOFILE` to the hard limit. Returns (before, after).
pub fn raise() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; only the soft limit changes, up to the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

#[cfg(test)]
mod tests {
    fn limits() -> libc::rlimit {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `lim` is a valid rlimit for the kernel to fill.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        lim
    }

    /// In a child process (the limit is the whole process's, and other tests run beside
    /// this one): a soft limit lowered below the hard one is raised back to it.
    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let hard = limits().rlim_max;
        let low = hard.min(64);
        // SAFETY: the child makes only syscalls (no allocation on the success path, no
        // lock), then leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = (|| {
                let lowered = libc::rlimit { rlim_cur: low, rlim_max: hard };
                // SAFETY: a valid rlimit, soft below hard.
                if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) } != 0 {
                    return false;
                }
                matches!(super::raise(), Ok((b, a)) if b == low && a == hard) && limits().rlim_cur == hard
            })();
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the soft limit was not raised ({status})");
    }
}
