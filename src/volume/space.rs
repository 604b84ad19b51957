//! Space control of one volume. The scrubber's accounting sets the limits; guest writes
//! pass the gate in `reserve` with a few atomic loads: admitted, wait for scrub to free
//! space, or fail with "no space". Garbage between two accountings is estimated from
//! the log's size and the current map's mapped clusters (an overwrite adds one cluster
//! of log and none of mapped data), corrected by what the last accounting found the
//! other maps (snapshots) hold. Also the figures `volume info` and the metrics show.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use super::disk_room::DiskRoom;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// "No limit" for the atomic limits.
const NONE: u64 = u64::MAX;
/// A write held by the low-disk bound waits at most this long without scrub freeing
/// anything; then that bound is lifted until scrub frees something (the scrubber may be
/// inside a pass that waits for uploads failing on the full disk: writes then go ahead,
/// and fail with "no space" if the disk is full, as they would without the bound).
pub(crate) const LOW_DISK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the gate says of a guest write.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Yes,
    /// Space is short but scrub can free some: wait.
    Wait,
    /// The write buffer's disk runs low and garbage is past where a pass is due: wait
    /// while scrub frees space, at most `LOW_DISK_WAIT` without progress.
    Slow,
    /// Nothing can be freed: fail with this reason.
    Fail(String),
}

/// Space figures of a volume, as of the scrubber's last look.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpaceFigures {
    /// Bytes some map (current, snapshot) references, local or uploaded.
    pub live_bytes: u64,
    /// Bytes of the volume's log nothing references any more.
    pub garbage_bytes: u64,
    /// Every byte of the volume's log (live + garbage), before compression.
    pub log_bytes: u64,
    /// The volume's space budget in bytes (0: none).
    pub budget_bytes: u64,
    /// "ok", "scrubbing", "throttled" (writes wait for scrub) or "full" (writes fail).
    pub state: String,
    /// Why writes wait or fail, when they do.
    pub reason: Option<String>,
    /// Scrub passes run since the daemon started.
    pub scrub_passes: u64,
    /// Live bytes scrub copied since the daemon started.
    pub scrub_moved_bytes: u64,
    /// Object-store bytes scrub freed since the daemon started.
    pub scrub_freed_bytes: u64,
    /// Freed bytes per second of the last pass.
    pub scrub_rate: u64,
    /// Guest writes that had to wait for scrub.
    pub throttled_writes: u64,
    /// Microseconds writers spent waiting for scrub (summed over writers).
    #[serde(default)]
    pub throttled_us: u64,
    /// The scrubber's looks at this volume (each sets its limits) since it was opened:
    /// 0 means no budget applies yet.
    #[serde(default)]
    pub looks: u64,
    /// SCOs scrub keeps because live clusters of theirs are rotten with no good copy
    /// (reads of those clusters fail; rewriting them frees the SCO).
    #[serde(default)]
    pub rotten_scos: u64,
}

impl SpaceFigures {
    /// Stored (raw) bytes per live byte: 1.0 when there is no garbage.
    pub fn space_amplification(&self) -> f64 {
        if self.live_bytes == 0 {
            1.0
        } else {
            self.log_bytes as f64 / self.live_bytes as f64
        }
    }
}

/// Limits and figures of one volume's space, shared by its writers and the scrubber.
pub struct SpaceGate {
    /// Exact live clusters minus the current map's mapped clusters at the last
    /// accounting: what snapshots hold (positive), zero entries of a clone (negative).
    live_adjust: AtomicI64,
    /// Writes wait while estimated garbage clusters exceed this.
    max_garbage: AtomicU64,
    /// While the local disk is low: writes wait, as long as scrub makes progress, while
    /// estimated garbage clusters exceed this.
    low_disk_garbage: AtomicU64,
    /// The write buffer's file system: whether it is low, as writers fill it.
    disk: Arc<DiskRoom>,
    /// The freed mark + 1 at which a writer gave up waiting on `low_disk_garbage`
    /// (0: never): that bound is off until scrub frees something.
    low_disk_lifted: AtomicU64,
    /// Writes wait while the log (clusters) exceeds this: the budget.
    max_log: AtomicU64,
    /// Writes fail at once: nothing can be reclaimed.
    full: AtomicBool,
    /// Writes wait: the object store's budget is reached.
    store_short: AtomicBool,
    /// The last look (a reservation, the scrubber) found that writes must wait or fail.
    short: AtomicBool,
    /// A writer is waiting now (the scrubber then copies at full speed).
    waiting: AtomicU64,
    /// Estimated garbage clusters at which a scrub pass is due (NONE: scrub cannot run).
    scrub_at: AtomicU64,
    /// The last reservation found a pass due (garbage past `scrub_at`, or a writer
    /// waiting): the scrubber looks at once instead of at its next interval.
    due: AtomicBool,
    /// Times the scrubber set this volume's limits. Until the first, no budget applies,
    /// so a volume never looked at counts as due (the scrubber looks within ~50 ms
    /// instead of at its next interval).
    looks: AtomicU64,
    throttled: AtomicU64,
    /// Microseconds writers spent waiting for scrub, summed.
    throttled_us: AtomicU64,
    /// Bumped each time scrub frees space: a waiting writer gives up only after a
    /// whole timeout without progress.
    freed: AtomicU64,
    figures: Mutex<SpaceFigures>,
}

impl Default for SpaceGate {
    fn default() -> Self {
        SpaceGate::on_disk(Arc::default())
    }
}

impl SpaceGate {
    /// The gate of a volume whose write buffer is on `disk`.
    pub(crate) fn on_disk(disk: Arc<DiskRoom>) -> Self {
        SpaceGate {
            disk,
            live_adjust: AtomicI64::new(0),
            max_garbage: AtomicU64::new(NONE),
            low_disk_garbage: AtomicU64::new(NONE),
            low_disk_lifted: AtomicU64::new(0),
            max_log: AtomicU64::new(NONE),
            full: AtomicBool::new(false),
            store_short: AtomicBool::new(false),
            short: AtomicBool::new(false),
            waiting: AtomicU64::new(0),
            scrub_at: AtomicU64::new(NONE),
            due: AtomicBool::new(false),
            looks: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            throttled_us: AtomicU64::new(0),
            freed: AtomicU64::new(0),
            figures: Mutex::new(SpaceFigures { state: "ok".into(), ..SpaceFigures::default() }),
        }
    }
}

/// The limits the scrubber sets after an accounting (clusters).
#[derive(Debug, Clone, Default)]
pub(crate) struct Limits {
    pub live_adjust: i64,
    pub max_garbage: Option<u64>,
    /// Garbage past which writes wait while scrub makes progress (the local disk is low).
    pub low_disk_garbage: Option<u64>,
    pub max_log: Option<u64>,
    /// Garbage at which the scrubber wants to run (None: it cannot, uploads paused).
    pub scrub_at: Option<u64>,
    pub store_short: bool,
    /// Set when writes must fail: the reason.
    pub full: Option<String>,
}

impl SpaceGate {
    /// Estimated garbage clusters of a log of `log` clusters whose current map has
    /// `mapped` entries.
    pub(crate) fn estimated_garbage(&self, log: u64, mapped: u64) -> u64 {
        let live = (mapped as i64).saturating_add(self.live_adjust.load(Ordering::Relaxed)).max(0) as u64;
        log.saturating_sub(live)
    }

    /// May a guest write add to a log of `log` clusters (current map: `mapped`)?
    pub(crate) fn admit(&self, log: u64, mapped: u64) -> Admit {
        if self.full.load(Ordering::Relaxed) {
            let why = self.figures.lock().reason.clone().unwrap_or_else(|| "no space".into());
            return Admit::Fail(why);
        }
        let garbage = self.estimated_garbage(log, mapped);
        let over_garbage = garbage > self.max_garbage.load(Ordering::Relaxed);
        if over_garbage || log > self.max_log.load(Ordering::Relaxed) || self.store_short.load(Ordering::Relaxed) {
            return Admit::Wait;
        }
        let lifted = self.low_disk_lifted.load(Ordering::Relaxed) == self.freed_mark().wrapping_add(1);
        if garbage > self.low_disk_garbage.load(Ordering::Relaxed) && !lifted && self.disk.is_low() {
            return Admit::Slow;
        }
        Admit::Yes
    }

    /// Record whether a log of `log` clusters (current map: `mapped`) admits writes.
    pub(crate) fn refresh(&self, log: u64, mapped: u64) {
        let short = self.admit(log, mapped) != Admit::Yes;
        if short != self.short.load(Ordering::Relaxed) {
            self.short.store(short, Ordering::Relaxed);
        }
        let at = self.scrub_at.load(Ordering::Relaxed);
        let due = at != NONE && (self.estimated_garbage(log, mapped) > at || self.writers_waiting());
        if due != self.due.load(Ordering::Relaxed) {
            self.due.store(due, Ordering::Relaxed);
        }
    }

    /// A scrub pass is due now (as of the last reservation): the scrubber need not wait
    /// for its interval. Garbage grows at the guest's write rate, so the bound at which
    /// writes wait can be reached well within one interval (at 1.5 GB/s, a 1 GiB
    /// volume's allowance of garbage lasts ~0.3 s).
    pub fn scrub_due(&self) -> bool {
        self.due.load(Ordering::Relaxed) || self.looks.load(Ordering::Relaxed) == 0
    }

    /// Writes go on without waiting, as of the last look.
    pub(crate) fn admits(&self) -> bool {
        !self.short.load(Ordering::Relaxed)
    }

    /// A writer stopped waiting after `waited`.
    pub(crate) fn note_waited(&self, waited: std::time::Duration) {
        self.throttled_us.fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }

    /// A writer starts (`true`) or stops waiting.
    pub(crate) fn set_waiting(&self, on: bool) {
        if on {
            self.waiting.fetch_add(1, Ordering::Relaxed);
            self.throttled.fetch_add(1, Ordering::Relaxed);
            if self.scrub_at.load(Ordering::Relaxed) != NONE {
                self.due.store(true, Ordering::Relaxed);
            }
        } else {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Scrub freed space (deleted SCOs).
    pub(crate) fn note_freed(&self) {
        self.freed.fetch_add(1, Ordering::Relaxed);
    }

    /// A writer waited `LOW_DISK_WAIT` on the low-disk bound while the freed mark stayed
    /// at `mark`: lift that bound until scrub frees something.
    pub(crate) fn lift_low_disk(&self, mark: u64) {
        self.low_disk_lifted.store(mark.wrapping_add(1), Ordering::Relaxed);
    }

    /// Changes whenever scrub frees space.
    pub(crate) fn freed_mark(&self) -> u64 {
        self.freed.load(Ordering::Relaxed)
    }

    /// Writers are waiting for scrub now.
    pub fn writers_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn set_limits(&self, l: &Limits) {
        self.looks.fetch_add(1, Ordering::Relaxed);
        self.live_adjust.store(l.live_adjust, Ordering::Relaxed);
        self.max_garbage.store(l.max_garbage.unwrap_or(NONE), Ordering::Relaxed);
        self.low_disk_garbage.store(l.low_disk_garbage.unwrap_or(NONE), Ordering::Relaxed);
        self.max_log.store(l.max_log.unwrap_or(NONE), Ordering::Relaxed);
        self.scrub_at.store(l.scrub_at.unwrap_or(NONE), Ordering::Relaxed);
        self.store_short.store(l.store_short, Ordering::Relaxed);
        let mut f = self.figures.lock();
        f.reason = l.full.clone();
        self.full.store(l.full.is_some(), Ordering::Relaxed);
    }

    /// The figures, with the throttle count.
    pub fn figures(&self) -> SpaceFigures {
        let mut f = self.figures.lock().clone();
        f.throttled_writes = self.throttled.load(Ordering::Relaxed);
        f.throttled_us = self.throttled_us.load(Ordering::Relaxed);
        f.looks = self.looks.load(Ordering::Relaxed);
        f
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut SpaceFigures)) {
        f(&mut self.figures.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_waits_on_garbage_and_budget_and_fails_when_full() {
        let g = SpaceGate::default();
        assert_eq!(g.admit(1000, 10), Admit::Yes, "no limits: always admitted");
        // 100 live (90 mapped + 10 held by snapshots), at most 50 garbage.
        g.set_limits(&Limits { live_adjust: 10, max_garbage: Some(50), ..Limits::default() });
        assert_eq!(g.estimated_garbage(140, 90), 40);
        assert_eq!(g.admit(150, 90), Admit::Yes);
        assert_eq!(g.admit(151, 90), Admit::Wait);
        // Fresh data (mapped grows with the log) is never held back by garbage.
        assert_eq!(g.admit(1000, 940), Admit::Yes);
        g.set_limits(&Limits { max_log: Some(500), ..Limits::default() });
        assert_eq!(g.admit(501, 501), Admit::Wait);
        g.set_limits(&Limits { full: Some("budget reached".into()), ..Limits::default() });
        assert_eq!(g.admit(1, 1), Admit::Fail("budget reached".into()));
        g.set_limits(&Limits::default());
        assert_eq!(g.admit(1, 1), Admit::Yes);
    }

    #[test]
    fn the_low_disk_bound_holds_until_lifted_and_returns_once_scrub_frees() {
        let roomy = SpaceGate::default();
        roomy.set_limits(&Limits { low_disk_garbage: Some(50), ..Limits::default() });
        assert_eq!(roomy.admit(151, 100), Admit::Yes, "only while the disk is low");
        let g = SpaceGate::on_disk(Arc::new(DiskRoom::low()));
        g.set_limits(&Limits { low_disk_garbage: Some(50), ..Limits::default() });
        assert_eq!(g.admit(150, 100), Admit::Yes);
        assert_eq!(g.admit(151, 100), Admit::Slow);
        // The hard bound still wins over the soft one.
        g.set_limits(&Limits { low_disk_garbage: Some(50), max_garbage: Some(60), ..Limits::default() });
        assert_eq!(g.admit(161, 100), Admit::Wait);
        g.lift_low_disk(g.freed_mark());
        assert_eq!(g.admit(151, 100), Admit::Yes, "lifted: no progress from scrub");
        assert_eq!(g.admit(161, 100), Admit::Wait, "the hard bound is never lifted");
        g.note_freed();
        assert_eq!(g.admit(151, 100), Admit::Slow, "scrub freed space: the bound holds again");
        g.set_limits(&Limits::default());
        assert_eq!(g.admit(151, 100), Admit::Yes);
    }

    #[test]
    fn a_pass_is_due_past_scrub_at_or_with_writers_waiting() {
        let g = SpaceGate::default();
        assert!(g.scrub_due(), "never looked at: due for a first look");
        g.set_limits(&Limits::default());
        g.refresh(1000, 10);
        assert!(!g.scrub_due(), "no scrub_at: never due (uploads paused)");
        g.set_waiting(true);
        assert!(!g.scrub_due());
        g.set_waiting(false);
        g.set_limits(&Limits { scrub_at: Some(100), ..Limits::default() });
        g.refresh(150, 50);
        assert!(!g.scrub_due(), "100 garbage: not past scrub_at");
        g.refresh(151, 50);
        assert!(g.scrub_due());
        g.refresh(120, 50);
        assert!(!g.scrub_due(), "a pass freed space");
        g.set_waiting(true);
        assert!(g.scrub_due(), "a writer waiting");
        g.set_waiting(false);
        g.refresh(120, 50);
        assert!(!g.scrub_due());
    }
}
