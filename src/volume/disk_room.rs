//! Free space on the write buffer's file system, as the scrubber last measured it minus
//! what writers reserved since: writes see the disk run low at once, not at the
//! scrubber's next look. Shared by every volume of a data dir (one file system).
//!
//! Why not just the scrubber's measure: on a small file system a guest refilled the
//! 41 MiB that came back in ~1.5 s, between two of the scrubber's looks (each look waits
//! for the pass before it); the low-disk bound never engaged, the disk was full again, and
//! scrub, which needs room for its copies and its TLog, could not run until the end.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The disk is low when less than this fraction of it is free, or `MIN_FREE`, whichever
/// is more, but never more than `MAX_FRACTION` of it.
const MIN_FRACTION: f64 = 0.05;
const MIN_FREE: u64 = 1 << 30;
const MAX_FRACTION: f64 = 0.2;
/// A writer that finds the disk low by its estimate measures it again, at most this often
/// (a statvfs): reservations overcount (a write into an SCO file allocated earlier takes
/// no new space) and space freed since the last measure is not counted.
const REMEASURE: Duration = Duration::from_millis(50);
/// A measure that finds this much more free space than the one before counts as space
/// returned: uploads that failed for want of space are retried at once.
const GREW: u64 = 1 << 20;

pub struct DiskRoom {
    /// Free bytes at the last measure minus bytes reserved since (may go negative).
    free: AtomicI64,
    /// Free bytes below which the disk is low (0: not measured, or not measurable).
    low_below: AtomicU64,
    /// Free bytes at the last measure.
    measured: AtomicU64,
    /// `now_ms()` at the last measure.
    measured_at: AtomicU64,
    /// Bumped by each measure that finds `GREW` more free space than the one before.
    grown: AtomicU64,
    /// The file system measured (set by the first `measure`).
    root: OnceLock<CString>,
}

impl Default for DiskRoom {
    fn default() -> Self {
        DiskRoom {
            free: AtomicI64::new(i64::MAX),
            low_below: AtomicU64::new(0),
            measured: AtomicU64::new(u64::MAX),
            measured_at: AtomicU64::new(0),
            grown: AtomicU64::new(0),
            root: OnceLock::new(),
        }
    }
}

impl DiskRoom {
    /// Measure the file system holding `root` (statvfs); `true` when it is low. A path
    /// that cannot be measured counts as not low.
    pub fn measure(&self, root: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        if self.root.get().is_none() {
            if let Ok(c) = CString::new(root.as_os_str().as_bytes()) {
                let _ = self.root.set(c);
            }
        }
        self.root.get().is_some_and(|c| self.measure_path(c))
    }

    /// Measure again if the last measure is `REMEASURE` old: `Some(low)`, or `None` when
    /// it is recent enough (or nothing was measured yet).
    fn measure_if_stale(&self) -> Option<bool> {
        let root = self.root.get()?;
        let age = now_ms().saturating_sub(self.measured_at.load(Ordering::Relaxed));
        (age >= REMEASURE.as_millis() as u64).then(|| self.measure_path(root))
    }

    fn measure_path(&self, root: &CStr) -> bool {
        self.measured_at.store(now_ms(), Ordering::Relaxed);
        let Some((free, total)) = statvfs(root) else {
            self.low_below.store(0, Ordering::Relaxed);
            return false;
        };
        let low_below = MIN_FREE.min((total as f64 * MAX_FRACTION) as u64).max((total as f64 * MIN_FRACTION) as u64);
        self.low_below.store(low_below, Ordering::Relaxed);
        self.free.store(free.min(i64::MAX as u64) as i64, Ordering::Relaxed);
        let before = self.measured.swap(free, Ordering::Relaxed);
        if before != u64::MAX && free >= before.saturating_add(GREW) {
            self.grown.fetch_add(1, Ordering::Relaxed);
        }
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
        DiskRoom { free: AtomicI64::new(0), low_below: AtomicU64::new(1), ..DiskRoom::default() }
    }

    /// Low as of the last measure and the reservations since; when that says low, measured
    /// again if the last measure is `REMEASURE` old.
    pub fn is_low(&self) -> bool {
        let low =
            || self.free.load(Ordering::Relaxed) < self.low_below.load(Ordering::Relaxed).min(i64::MAX as u64) as i64;
        low() && self.measure_if_stale().unwrap_or(true)
    }

    /// Changes each time a measure finds space returned (see `GREW`).
    pub fn grown(&self) -> u64 {
        self.grown.load(Ordering::Relaxed)
    }

    /// [`Self::grown`] after measuring again if the last measure is `REMEASURE` old: for
    /// the uploader while uploads wait for space, since the scrubber may not measure for a
    /// while (its pass can be waiting for those very uploads).
    pub fn grown_now(&self) -> u64 {
        self.measure_if_stale();
        self.grown()
    }
}

/// Milliseconds since the first call (a monotonic clock for the atomics).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// (available, total) bytes of the file system holding `root`.
fn statvfs(root: &CStr) -> Option<(u64, u64)> {
    // SAFETY: statvfs fills the zeroed struct from a valid NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(root.as_ptr(), &mut s) } != 0 {
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
            // (The clock set as of now: a test thread descheduled for REMEASURE would measure again.)
            d.measured_at.store(now_ms(), Ordering::Relaxed);
            assert!(d.is_low(), "one byte under it, measured again only after REMEASURE");
            std::thread::sleep(REMEASURE);
            assert!(!d.is_low(), "measured again: the reservations took no space");
        }
        d.consume(u64::MAX);
        d.consume(u64::MAX);
        assert_eq!(d.free.load(Ordering::Relaxed), i64::MIN, "no overflow");
        // Space returned: a measure that finds GREW more than the last bumps `grown`. (The
        // last measure is set by hand: other tests fill this disk meanwhile.)
        let g = d.grown();
        d.measured.store(0, Ordering::Relaxed);
        d.measure(t.path());
        assert!(d.grown() == g + 1 || free < GREW, "space returned");
        let g = d.grown();
        d.measured.store(u64::MAX - 1, Ordering::Relaxed);
        d.measure(t.path());
        assert_eq!(d.grown(), g, "nothing returned since");
    }

    #[test]
    fn a_disk_that_cannot_be_measured_is_not_low() {
        let d = DiskRoom::low();
        assert!(d.is_low());
        assert!(!d.measure(Path::new("/nonexistent/logdisk-disk-room")));
        assert!(!d.is_low());
    }
}
