//! Write pacing: guest writes slow down smoothly as the write buffer fills, instead of
//! running at full speed into the limit and then stopping dead until a whole SCO upload
//! completes (stop-and-go stalls of seconds under sustained sequential writes).
//!
//! The pacer owns two things: an estimate of the rate at which uploads drain the write
//! buffer (bytes of SCOs confirmed in the object store per second, smoothed), and a token
//! clock shared by every queue of the volume. Below [`SOFT_FRACTION`] of the limit writes
//! pass untouched. Above it a write of `n` bytes advances the clock by `n / allowed`, where
//! the allowed rate falls linearly with the fill: `EQUILIBRIUM_FILL` of the way from the
//! soft mark to the limit it equals the drain rate, so a guest that writes faster than the
//! store takes settles there, with room left for the bursts of an upload that completes
//! 32 MiB at a time. The hard limit (the engine's throttle) still holds everything back
//! if the store stops taking data altogether.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Pacing starts when un-uploaded data reaches this fraction of the write-buffer limit.
pub const SOFT_FRACTION: f64 = 0.5;
/// Where (0 = soft mark, 1 = limit) the allowed rate equals the drain rate.
const EQUILIBRIUM_FILL: f64 = 0.75;
/// Allowed rate at the limit, as a multiple of the drain rate (below 1: the buffer drains).
const RATE_AT_LIMIT: f64 = 0.5;
/// Drain rate assumed before any upload completed, and the floor of the estimate: low
/// enough that an unknown store is not overrun, high enough that one write never sleeps
/// long (1 MiB at 16 MiB/s: 62 ms).
const MIN_DRAIN_RATE: f64 = (16 << 20) as f64;
/// Weight of a new drain sample in the smoothed rate.
const DRAIN_ALPHA: f64 = 0.25;
/// A gap between drain samples this long is idleness, not a slow store: no sample.
const IDLE_GAP: Duration = Duration::from_secs(5);
/// Drain samples are taken over at least this long.
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// Longest single pause (the clock keeps the debt; the next write pays the rest).
const MAX_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Clock {
    /// Smoothed drain rate, bytes per second.
    drain_rate: f64,
    /// When the current sample period started.
    last_drain: Option<Instant>,
    /// Bytes drained since then.
    drained_since: u64,
    /// The earliest time the next paced write may start.
    next: Instant,
}

/// The pacer of one volume.
#[derive(Debug)]
pub struct WritePacer {
    clock: Mutex<Clock>,
    /// The write buffer was at its limit when last counted (see [`WritePacer::note_level`]).
    full: AtomicBool,
}

impl Default for WritePacer {
    fn default() -> Self {
        Self::new()
    }
}

impl WritePacer {
    pub fn new() -> Self {
        WritePacer {
            full: AtomicBool::new(false),
            clock: Mutex::new(Clock {
                drain_rate: MIN_DRAIN_RATE,
                last_drain: None,
                drained_since: 0,
                next: Instant::now(),
            }),
        }
    }

    /// The write buffer holds `pending` bytes against `limit`: remembered for
    /// [`WritePacer::is_full`] (the caller holds the volume lock, where both change).
    pub fn note_level(&self, pending: u64, limit: u64) {
        self.full.store(pending >= limit, Ordering::Relaxed);
    }

    /// Whether the write buffer was full when last counted: a guest write would wait in
    /// the throttle (one atomic load).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Uploads confirmed `bytes` of the write buffer in the object store. Completions
    /// come in bursts (several SCO uploads finish together), so bytes are summed and a
    /// rate sample is taken once per [`SAMPLE_PERIOD`].
    pub fn drained(&self, bytes: u64) {
        let now = Instant::now();
        let mut c = self.clock.lock();
        match c.last_drain {
            Some(last) if now.duration_since(last) < IDLE_GAP => {
                c.drained_since += bytes;
                let secs = now.duration_since(last).as_secs_f64();
                if secs >= SAMPLE_PERIOD.as_secs_f64() {
                    let sample = c.drained_since as f64 / secs;
                    c.drain_rate = (c.drain_rate * (1.0 - DRAIN_ALPHA) + sample * DRAIN_ALPHA).max(MIN_DRAIN_RATE);
                    c.drained_since = 0;
                    c.last_drain = Some(now);
                }
            }
            // First completion, or the first after idleness: the period starts here.
            _ => {
                c.drained_since = 0;
                c.last_drain = Some(now);
            }
        }
    }

    /// The smoothed drain rate in bytes per second.
    pub fn drain_rate(&self) -> u64 {
        self.clock.lock().drain_rate as u64
    }

    /// How long a guest write of `bytes` waits before it reserves space, given the
    /// write buffer's fill (`pending` of `limit` bytes). Zero below the soft mark.
    pub fn pause(&self, bytes: u64, pending: u64, limit: u64) -> Duration {
        let soft = limit as f64 * SOFT_FRACTION;
        let now = Instant::now();
        let mut c = self.clock.lock();
        if (pending as f64) < soft || limit == 0 {
            c.next = now;
            return Duration::ZERO;
        }
        let fill = ((pending as f64 - soft) / (limit as f64 - soft)).clamp(0.0, 1.0);
        let allowed = c.drain_rate * allowed_multiple(fill);
        let start = c.next.max(now);
        c.next = start + Duration::from_secs_f64(bytes as f64 / allowed);
        start.duration_since(now).min(MAX_PAUSE)
    }
}

/// Allowed write rate as a multiple of the drain rate at `fill` (0 = soft mark, 1 = limit):
/// linear through 1.0 at [`EQUILIBRIUM_FILL`] and [`RATE_AT_LIMIT`] at the limit.
fn allowed_multiple(fill: f64) -> f64 {
    let slope = (1.0 - RATE_AT_LIMIT) / (1.0 - EQUILIBRIUM_FILL);
    1.0 + (EQUILIBRIUM_FILL - fill) * slope
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_rate_crosses_the_drain_rate_at_equilibrium() {
        assert!((allowed_multiple(EQUILIBRIUM_FILL) - 1.0).abs() < 1e-9);
        assert!((allowed_multiple(1.0) - RATE_AT_LIMIT).abs() < 1e-9);
        assert!(allowed_multiple(0.0) > 2.0);
    }

    #[test]
    fn below_the_soft_mark_writes_never_wait() {
        let p = WritePacer::new();
        for _ in 0..1000 {
            assert_eq!(p.pause(1 << 20, 100 << 20, 1 << 30), Duration::ZERO);
        }
    }

    #[test]
    fn above_the_soft_mark_writes_are_spread_at_the_allowed_rate() {
        let p = WritePacer::new();
        // At the limit the allowed rate is half the (initial) drain rate: 8 MiB/s, so
        // 8 writes of 1 MiB owe about one second, each pause capped.
        let mut owed = Duration::ZERO;
        for _ in 0..8 {
            let d = p.pause(1 << 20, 1 << 30, 1 << 30);
            assert!(d <= MAX_PAUSE);
            owed = p.clock.lock().next.saturating_duration_since(Instant::now());
        }
        assert!(owed > Duration::from_millis(800) && owed < Duration::from_millis(1100), "{owed:?}");
    }

    #[test]
    fn a_burst_of_completions_is_one_sample_over_its_period() {
        let p = WritePacer::new();
        p.drained(32 << 20); // starts the period
        for _ in 0..4 {
            p.drained(32 << 20); // a burst: no sample yet
        }
        assert_eq!(p.drain_rate(), MIN_DRAIN_RATE as u64);
        std::thread::sleep(SAMPLE_PERIOD);
        p.drained(0);
        // 128 MiB over about a second, weighted in: well above the floor, far below the
        // burst's instantaneous rate.
        let r = p.drain_rate();
        assert!(r > MIN_DRAIN_RATE as u64 && r < (64 << 20), "{r}");
    }
}
