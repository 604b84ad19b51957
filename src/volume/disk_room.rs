//! Free space on the write buffer's file system, as the scrubber last measured it minus
//! what writers reserved since: writes see the disk run low at once, not at the
//! scrubber's next look. Shared by every volume of a data dir (one file system).
//!
//! Why not just the scrubber's measure: on a small file system a guest refilled the
//! 41 MiB that came back in ~1.5 s, between two of the scrubber's looks (each look waits
//! for the pass before it); the low-disk bound never engaged, the disk was full again, and
//! scrub, which needs room for its copies and its TLog, could not run until the end.

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The disk is low when less than this fraction of it is free, or `MIN_FREE`, whichever
/// is more, but never more than `MAX_FRACTION` of it.
const MIN_FRACTION: f64 = 0.05;
const MIN_FREE: u64 = 1 << 30;
const MAX_FRACTION: f64 = 0.2;

pub struct DiskRoom {
    /// Free bytes at the last measure minus bytes reserved since (may go negative).
    free: AtomicI64,
    /// Free bytes below which the disk is low (0: not measured yet).
    low_below: AtomicU64,
}

impl Default for DiskRoom {
    fn default() -> Self {
        DiskRoom { free: AtomicI64::new(i64::MAX), low_below: AtomicU64::new(0) }
    }
}

impl DiskRoom {
    /// Measure the file system holding `root` (statvfs); `true` when it is low. A path
    /// that cannot be measured counts as not low.
    pub fn measure(&self, root: &Path) -> bool {
        let Some((free, total)) = statvfs(root) else { return false };
        let low_below = MIN_FREE.min((total as f64 * MAX_FRACTION) as u64).max((total as f64 * MIN_FRACTION) as u64);
        self.low_below.store(low_below, Ordering::Relaxed);
        self.free.store(free.min(i64::MAX as u64) as i64, Ordering::Relaxed);
        free < low_below
    }

    /// A writer reserved `bytes` of new log.
    pub fn consume(&self, bytes: u64) {
        let b = bytes.min(i64::MAX as u64) as i64;
        let _ = self.free.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| Some(f.saturating_sub(b)));
    }

    /// A disk that is low (tests).
    #[cfg(test)]
    pub fn low() -> DiskRoom {
        DiskRoom { free: AtomicI64::new(0), low_below: AtomicU64::new(1) }
    }

    /// Low as of the last measure and the reservations since.
    pub fn is_low(&self) -> bool {
        self.free.load(Ordering::Relaxed) < self.low_below.load(Ordering::Relaxed).min(i64::MAX as u64) as i64
    }
}

/// (available, total) bytes of the file system holding `root`.
fn statvfs(root: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(root.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct from a valid NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((s.f_bavail as u64 * s.f_frsize as u64, s.f_blocks as u64 * s.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_make_the_disk_low_before_the_next_measure() {
        let d = DiskRoom::default();
        assert!(!d.is_low(), "not measured: not low");
        let t = tempfile::tempdir().unwrap();
        let low = d.measure(t.path());
        assert_eq!(d.is_low(), low);
        let free = d.free.load(Ordering::Relaxed) as u64;
        let below = d.low_below.load(Ordering::Relaxed);
        assert!(below > 0);
        if free >= below {
            d.consume(free - below);
            assert!(!d.is_low(), "exactly at the threshold: not low");
            d.consume(1);
            assert!(d.is_low(), "one byte under it");
            d.measure(t.path());
            assert!(!d.is_low(), "a new measure forgets the reservations");
        }
        d.consume(u64::MAX);
        d.consume(u64::MAX);
        assert!(d.is_low(), "no overflow");
    }
}
