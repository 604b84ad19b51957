//! The scrubber: one background thread per daemon that owns when scrub runs. Every
//! `scrub.check_interval_ms` it accounts each open writable volume's live and garbage
//! data, sets the volume's space gate (how much garbage guest writes may leave behind,
//! the budget, "full"), and runs a bounded scrub pass when garbage passes
//! `scrub.garbage_ratio`, when a budget or the local disk is near, or when writers wait.
//! Passes copy at `scrub.rate` while guests do IO and at full speed when the guest is
//! idle or waiting for space. The clock (`scrub.interval_secs`) stays as a backstop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::engine::{Volume, VolumeEnv};
use super::scrub::Usage;
use super::scrub_policy::{Goal, UploadFirst};
use super::space::Limits;
use crate::config::ScrubConfig;
use crate::units::format_size;

/// Live data one pass copies at most: 1/32 of the volume's live data, between one and
/// four SCOs. A pass stays short, so limits are recomputed often and a stop request is
/// answered soon; and its copies, made before the old SCOs go, overshoot the space
/// bound by little.
const PASS_LIVE_FRACTION: u64 = 32;
const PASS_MAX_SCOS: u64 = 4;
/// The store is listed (to measure it against `scrub.store_budget`) at most this often.
const STORE_LIST_EVERY: Duration = Duration::from_secs(5);
/// Between looks the scrubber checks this often whether a volume's writes made a pass
/// due (one atomic per volume) ...
const POLL: Duration = Duration::from_millis(20);
/// ... and looks again no sooner than this after a look that freed nothing.
const MIN_GAP: Duration = Duration::from_millis(50);
/// A failed background rekey pass (an old key not given, the store unreachable) is
/// tried again after this long, not at every look.
const REKEY_RETRY: Duration = Duration::from_secs(60);
/// A failed pass lifts the garbage gate only once passes have failed this long: a
/// transient failure must not let the store grow past the bound (at 200 MiB/s of
/// overwrites, every second without the gate adds a fifth of a 1 GiB volume), while
/// writes do not wait for an object store that stays away.
const FAILING_LIFTS_GATE: Duration = Duration::from_secs(10);
/// A pass waits at most this long for the newest SCOs' uploads, then scrubs what is
/// uploaded: meanwhile no volume's limits are recomputed (a pass that waited 13 s for
/// uploads failing on a full disk kept stale limits after the space returned).
const UPLOAD_WAIT: Duration = Duration::from_secs(2);
/// Near a budget means above this fraction of it: scrub harder.
const NEAR: f64 = 0.9;

/// The running scrubber; [`Scrubber::stop`] (or drop) ends it after the current pass.
pub struct Scrubber {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the scrubber remembers of one volume.
struct Watch {
    next_backstop: Option<Instant>,
    io_bytes: u64,
    /// The guest's write rate, bytes per second, smoothed over looks, and when and at
    /// which write counter it was last sampled.
    write_rate: f64,
    write_sample: Option<(Instant, u64)>,
    /// Since when passes fail (object store unreachable, say): once that lasts
    /// `FAILING_LIFTS_GATE`, and until a pass succeeds, guest writes are not held back
    /// for garbage only scrub could reclaim.
    failing_since: Option<Instant>,
    /// A background rekey pass failed: the next try waits until then.
    rekey_after: Option<Instant>,
}

impl Watch {
    fn new(io_bytes: u64, next_backstop: Option<Instant>) -> Watch {
        Watch { next_backstop, io_bytes, write_rate: 0.0, write_sample: None, failing_since: None, rekey_after: None }
    }

    /// Take a write-rate sample from the volume's write counter (`written` bytes).
    fn sample_writes(&mut self, written: u64, now: Instant) {
        match self.write_sample {
            Some((t, b)) if now.duration_since(t) >= WRITE_SAMPLE => {
                let r = written.saturating_sub(b) as f64 / now.duration_since(t).as_secs_f64();
                self.write_rate = self.write_rate * (1.0 - WRITE_RATE_ALPHA) + r * WRITE_RATE_ALPHA;
                self.write_sample = Some((now, written));
            }
            Some(_) => {}
            None => self.write_sample = Some((now, written)),
        }
    }

    /// Record how a pass ended at `now`.
    fn pass_ended(&mut self, ok: bool, now: Instant) {
        self.failing_since = if ok { None } else { self.failing_since.or(Some(now)) };
    }

    /// Passes have failed long enough that writes are no longer held back for garbage.
    fn gate_lifted(&self, now: Instant) -> bool {
        self.failing_since.is_some_and(|t| now.duration_since(t) >= FAILING_LIFTS_GATE)
    }
}

/// The store's size against its budget: the last listing, plus what each volume's log
/// grew (or shrank) since.
#[derive(Default)]
struct StoreUse {
    used: u64,
    listed: Option<Instant>,
    /// Each volume's log bytes at the listing.
    logs: HashMap<String, u64>,
}

/// The volumes the scrubber looks after (the daemon's served ones).
pub type VolumeSource = Box<dyn Fn() -> Vec<Arc<Volume>> + Send>;

struct Run {
    env: Arc<VolumeEnv>,
    volumes: VolumeSource,
    cfg: ScrubConfig,
    root: PathBuf,
    stop: Arc<AtomicBool>,
    watch: HashMap<String, Watch>,
    store: StoreUse,
}

impl Scrubber {
    /// Start looking after the volumes `volumes` returns (read-only ones are skipped);
    /// `root` is the data dir (its disk is watched).
    pub fn start(
        env: Arc<VolumeEnv>,
        volumes: VolumeSource,
        cfg: ScrubConfig,
        root: PathBuf,
    ) -> std::io::Result<Scrubber> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut run =
            Run { env, volumes, cfg, root, stop: stop.clone(), watch: HashMap::new(), store: StoreUse::default() };
        let thread = std::thread::Builder::new().name("scrubber".into()).spawn(move || {
            // Normal CPU priority: when writes wait for scrub, a niced scrubber starves
            // behind the very guests it must make room for; pacing keeps it in check.
            lowest_io_priority();
            run.main();
        })?;
        Ok(Scrubber { stop, thread: Some(thread) })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scrubber {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Run {
    fn main(&mut self) {
        let every = Duration::from_millis(self.cfg.check_interval_ms);
        while !self.stop.load(Ordering::SeqCst) {
            let busy = self.tick();
            if busy {
                continue;
            }
            // Until the next interval, or earlier when a volume's writes made a pass due.
            let start = Instant::now();
            while start.elapsed() < every && !self.stop.load(Ordering::SeqCst) {
                std::thread::sleep(POLL.min(every));
                if start.elapsed() >= MIN_GAP
                    && (self.volumes)().iter().any(|v| v.space.scrub_due() && !v.is_stopped() && !v.read_only())
                {
                    break;
                }
            }
        }
    }

    /// One look at every volume; `true` when a pass freed space (look again at once).
    fn tick(&mut self) -> bool {
        // A stopped volume (local IO error, fenced) can be scrubbed no more: a pass would
        // fail at its first flush, again at every look (~10 warnings a second).
        let vols: Vec<Arc<Volume>> =
            (self.volumes)().into_iter().filter(|v| !v.read_only() && !v.is_stopped()).collect();
        self.watch.retain(|n, _| vols.iter().any(|v| v.name() == n));
        let usages: Vec<Usage> = vols.iter().map(|v| v.usage()).collect();
        let store = self.store_pressure(&vols, &usages);
        let disk_low = self.env.disk.measure(&self.root);
        let mut busy = false;
        for (v, u) in vols.iter().zip(usages) {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            match self.look(v, u, &store, disk_low) {
                Ok(freed) => busy |= freed,
                Err(e) => tracing::warn!(volume = %v.name(), error = %e, "scrub failed; retried at the next look"),
            }
        }
        busy
    }

    /// Measure the store against its budget (listing it at most every few seconds).
    fn store_pressure(&mut self, vols: &[Arc<Volume>], usages: &[Usage]) -> StorePressure {
        let budget = self.cfg.store_budget.0;
        if budget == 0 {
            return StorePressure::default();
        }
        let logs: HashMap<String, u64> =
            vols.iter().zip(usages).map(|(v, u)| (v.name().to_string(), u.log * v.cluster_size())).collect();
        if self.store.listed.is_none_or(|t| t.elapsed() >= STORE_LIST_EVERY) {
            match self.env.store.list("") {
                Ok(objs) => {
                    self.store.used = objs.iter().map(|o| o.size).sum();
                    self.store.listed = Some(Instant::now());
                    self.store.logs = logs.clone();
                }
                Err(e) => tracing::warn!(error = %e, "cannot list the object store to check its budget"),
            }
        }
        let grown: i64 =
            logs.iter().map(|(n, l)| *l as i64 - self.store.logs.get(n).copied().unwrap_or(*l) as i64).sum();
        let used = (self.store.used as i64 + grown).max(0) as u64;
        let reclaimable: u64 = vols.iter().zip(usages).map(|(v, u)| u.reclaimable * v.cluster_size()).sum();
        StorePressure {
            left: Some(budget.saturating_sub(used)),
            near: used as f64 >= NEAR * budget as f64,
            short: used >= budget,
            full: (used >= budget && used.saturating_sub(reclaimable) >= budget).then(|| {
                format!(
                    "the object store's budget of {} is reached ({} used) and scrub can free nothing more; delete volumes or snapshots, or raise scrub.store_budget",
                    format_size(budget),
                    format_size(used)
                )
            }),
        }
    }

    /// Set one volume's limits and scrub it if due; `Ok(true)` when space was freed.
    fn look(&mut self, v: &Arc<Volume>, u: Usage, store: &StorePressure, disk_low: bool) -> crate::error::Result<bool> {
        let cs = v.cluster_size();
        let sco = v.meta().sco_clusters as u64;
        let cfg = &self.cfg;
        let now = Instant::now();
        let io = v.counters.read_bytes.load(Ordering::Relaxed) + v.counters.write_bytes.load(Ordering::Relaxed);
        // interval_secs = 0: no backstop.
        let backstop = (cfg.interval_secs > 0).then(|| Duration::from_secs(cfg.interval_secs));
        let w = self.watch.entry(v.name().to_string()).or_insert_with(|| Watch::new(io, backstop.map(|b| now + b)));
        let guest_active = io != w.io_bytes;
        w.io_bytes = io;
        w.sample_writes(v.counters.write_bytes.load(Ordering::Relaxed), now);

        // Scrub works only on SCOs in the object store: while uploads are paused (or
        // passes have failed for a while) it can reclaim nothing, and nothing new reaches
        // the store either, so guest writes are not held back for garbage (the write
        // buffer's own limit still bounds the local disk).
        let can_scrub = !v.uploads_paused() && !w.gate_lifted(now);
        let min_garbage = cfg.min_garbage.map_or(4 * sco, |b| b.0 / cs).max(1);
        let pass_max = (u.live / PASS_LIVE_FRACTION).clamp(sco, PASS_MAX_SCOS * sco);
        let budget = (cfg.volume_budget_factor > 0.0).then(|| (cfg.volume_budget_factor * v.size() as f64) as u64 / cs);
        let mut limits = Limits {
            live_adjust: u.live_adjust,
            // Room for one pass's copies below the bound.
            max_garbage: (can_scrub && cfg.max_space_amp > 0.0).then(|| {
                (((cfg.max_space_amp - 1.0) * u.live as f64) as u64).saturating_sub(pass_max).max(2 * min_garbage)
            }),
            // The volume's budget, and what is left of the store's (each volume may
            // take all of it: the next look corrects).
            max_log: match (budget, store.left) {
                (Some(b), Some(l)) => Some(b.min(u.log + l / cs)),
                (b, l) => b.or(l.map(|l| u.log + l / cs)),
            },
            low_disk_garbage: None,
            scrub_at: None,
            store_short: store.short,
            full: store.full.clone(),
        };
        if let Some(b) = budget {
            if u.live + 2 * sco >= b {
                limits.full = Some(format!(
                    "live data ({}) fills the volume's space budget of {} (scrub.volume_budget_factor {} x its size); delete snapshots or raise the factor",
                    format_size(u.live * cs),
                    format_size(b * cs),
                    cfg.volume_budget_factor
                ));
            }
        }
        let near_budget = budget.is_some_and(|b| u.log as f64 >= NEAR * b as f64);
        let pressure = near_budget || store.near || disk_low;
        let waiting = v.space.writers_waiting();
        // Due at `garbage_ratio` of the log, and at the latest half-way to the garbage at
        // which writes wait (with a small volume the ratio alone comes after it).
        let ratio_at = (cfg.garbage_ratio * u.log as f64) as u64;
        let scrub_at = limits.max_garbage.map_or(ratio_at, |m| ratio_at.min(m / 2)).max(min_garbage);
        limits.scrub_at = (can_scrub && !v.uploads_paused()).then_some(scrub_at);
        // Once the local disk runs low (it may hold the store too; writers see it as they
        // fill it, see `DiskRoom`): writes wait for scrub once garbage passes where a pass
        // is due, rather than fill the disk with more garbage, as long as scrub can free
        // some, its passes succeed, and it frees something at least every `LOW_DISK_WAIT`
        // (see `SpaceGate`). A disk full of live data or of the write buffer is not held
        // back here: writes then fail with "no space".
        if can_scrub && w.failing_since.is_none() && u.reclaimable > 0 {
            limits.low_disk_garbage = Some(scrub_at);
        }
        let trigger = u.garbage > scrub_at;
        let state = match (&limits.full, waiting, trigger || pressure) {
            (Some(_), _, _) => "full",
            (None, true, _) => "throttled",
            (None, false, true) => "scrubbing",
            _ => "ok",
        };
        // Figures first: a writer refused by the new limits finds them up to date.
        v.space.update(|f| {
            f.live_bytes = u.live * cs;
            f.garbage_bytes = u.garbage * cs;
            f.log_bytes = u.log * cs;
            f.budget_bytes = budget.map_or(0, |b| b * cs);
            f.state = state.into();
            f.reason = limits.full.clone();
        });
        v.space.set_limits(&limits);
        v.refresh_space();

        if v.uploads_paused() {
            return Ok(false);
        }
        let scrub_now = match (trigger, pressure, waiting) {
            (_, _, true) => u.reclaimable > 0,
            (true, _, _) => true,
            // Under pressure alone, only when at least an SCO's worth can be freed.
            (false, true, false) => u.reclaimable >= sco,
            _ => false,
        };
        if !scrub_now && w.next_backstop.is_none_or(|t| now < t) {
            if v.env.keys.rekey_pending(v.name()) && w.rekey_after.is_none_or(|t| now >= t) {
                // After a key rotation: rewrite what is under older keys, a bounded,
                // paced pass per look, so a rotation completes without `logdisk scrub`.
                let rate = if guest_active { cfg.rate.0 } else { 0 };
                let mut pace = Pacer::new(rate, v.clone());
                if let Err(e) = v.rekey_pass(pass_max, &mut |b| pace.copied(b)) {
                    w.rekey_after = Some(now + REKEY_RETRY);
                    return Err(e);
                }
            }
            return Ok(false);
        }
        w.next_backstop = backstop.map(|b| now + b);
        let goal = if scrub_now {
            // Down to half of where a pass became due: a pass leaves room for writes
            // before the next (freeing less would make passes back to back, each with a
            // flush and a walk of every map, each copying mostly-live SCOs).
            let keep = if pressure || waiting { 0 } else { scrub_at / 2 };
            let free = u.garbage.saturating_sub(keep).max(1);
            Goal {
                max_live_fraction: if pressure || waiting { 0.98 } else { 0.9 },
                free_clusters: free,
                max_moved_clusters: pass_max,
                rekey: false,
                // What is uploaded already covers the goal: no wait for the rest. Nor
                // while the local disk is low: uploads may be failing for want of space
                // there, and the pass would hold the limits as they were meanwhile
                // (after space returned, writes then refilled the disk).
                upload_first: if u.reclaimable < free && !disk_low {
                    UploadFirst::Within(UPLOAD_WAIT)
                } else {
                    UploadFirst::No
                },
            }
        } else {
            Goal::all_below(cfg.threshold)
        };
        // Copies are paced only while that costs the guest nothing. Between where a pass
        // is due and the bound at which writes wait, the pace follows the guest's writes
        // (`pace_rate`), so that under sustained overwrites garbage settles high in that
        // band, where scrub copies least per byte freed, and a guest that writes little
        // is not met by a scrub copying at full speed.
        let band = limits.max_garbage.map(|m| (scrub_at, m));
        let rate = pace_rate(cfg.rate.0, w.write_rate as u64, u.garbage * cs, band.map(|(d, m)| (d * cs, m * cs)));
        let hurry = pressure || waiting || !guest_active;
        let mut pace = Pacer::new(if hurry { 0 } else { rate }, v.clone());
        let rep = v.scrub_pass(&goal, &mut |b| pace.copied(b));
        w.pass_ended(rep.is_ok(), now);
        let rep = rep?;
        if rep.scos_deleted > 0 {
            tracing::debug!(volume = %v.name(), ?rep, trigger, pressure, waiting, "scrub pass");
        }
        Ok(rep.scos_deleted > 0 && scrub_now)
    }
}

/// Past this fraction of the band from "pass due" to "writes wait", copies go unpaced.
const UNPACED_FROM: f64 = 0.9;
/// Where in that band scrub holds garbage under sustained overwrites: high, because the
/// closer garbage is to the bound, the emptier the SCOs scrub picks and the less it copies
/// per byte freed (a simulation of 4 KiB random overwrites: 1.0-1.1 bytes copied per byte
/// written at 0.8 of the band, 2-3 near its start).
const HOLD_AT: f64 = 0.75;
/// The pace doubles for every this much of the band garbage is above `HOLD_AT` (and
/// halves below it).
const DOUBLING: f64 = 0.1;
/// In that band the pace never falls under this share of `scrub.rate` (4 MiB/s by
/// default), so a pass still ends while a guest only reads. Not `scrub.rate` itself: a
/// guest writing less than it (4 KiB 70/30 random read/write at QD16 writes about 50 MB/s
/// here) had scrub copying 1.35 bytes per byte it wrote, holding garbage low in the band,
/// and the copies' reads and writes sat in front of the guest's reads.
const BAND_FLOOR_SHARE: u64 = 16;
/// The guest's write rate is sampled at most this often ...
const WRITE_SAMPLE: Duration = Duration::from_millis(200);
/// ... and a sample weighs this much in the smoothed rate.
const WRITE_RATE_ALPHA: f64 = 0.3;

/// The copy rate (bytes per second, 0 = unpaced) of a pass while the guest does IO.
/// Until garbage is due for scrub: `base`. In the band `(due, bound)` (bytes), the pace
/// follows the guest's write rate `writes`, the rate at which overwrites make garbage:
/// equal to it where garbage is `HOLD_AT` of the band, doubling every `DOUBLING` above,
/// halving below, never under `base / BAND_FLOOR_SHARE`; unpaced from `UNPACED_FROM` on. So garbage settles
/// high in the band whatever the guest's rate, and a guest that writes little after a
/// burst of overwrites is not met by a scrub copying at the burst's rate.
fn pace_rate(base: u64, writes: u64, garbage: u64, band: Option<(u64, u64)>) -> u64 {
    let Some((due, bound)) = band.filter(|(d, b)| b > d) else { return base };
    if base == 0 || garbage <= due {
        return base;
    }
    let x = (garbage - due) as f64 / (bound - due) as f64;
    if x >= UNPACED_FROM {
        return 0;
    }
    let follow = writes as f64 * 2f64.powf((x - HOLD_AT) / DOUBLING);
    (follow as u64).max(base / BAND_FLOOR_SHARE).max(1)
}

/// The store budget's state for every volume.
#[derive(Default)]
struct StorePressure {
    /// Bytes left below the budget (None: no budget).
    left: Option<u64>,
    near: bool,
    short: bool,
    full: Option<String>,
}

/// Keeps a pass's copying at `rate` bytes per second (0: no limit), unless writers of
/// the volume start waiting for space.
struct Pacer {
    rate: u64,
    start: Instant,
    copied: u64,
    vol: Arc<Volume>,
}

impl Pacer {
    fn new(rate: u64, vol: Arc<Volume>) -> Pacer {
        Pacer { rate, start: Instant::now(), copied: 0, vol }
    }

    fn copied(&mut self, bytes: u64) {
        self.copied += bytes;
        if self.rate == 0 || self.vol.space.writers_waiting() {
            return;
        }
        let due = Duration::from_secs_f64(self.copied as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(wait.min(Duration::from_millis(250)));
        }
    }
}

/// The scrubber's own reads and writes go at the lowest best-effort IO priority (not the
/// idle class: writers waiting for space must not starve behind busy guests). Only IO
/// schedulers that honour priorities (bfq, mq-deadline) see it.
fn lowest_io_priority() {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_BE: libc::c_long = 2;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    const LOWEST_LEVEL: libc::c_long = 7;
    // SAFETY: plain syscalls on the calling thread.
    let r = unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            tid,
            (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | LOWEST_LEVEL,
        )
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the scrubber's IO priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_follows_the_guest_writes_and_ends_before_the_bound() {
        let band = Some((100, 200));
        let mb = 1 << 20;
        assert_eq!(pace_rate(64, 300 * mb, 50, band), 64, "below where a pass is due: the base pace");
        let near = |a: u64, b: u64| (a as f64 / b as f64 - 1.0).abs() < 1e-6;
        assert!(near(pace_rate(64, 300 * mb, 175, band), 300 * mb), "at the holding point: the guest's write rate");
        assert!(near(pace_rate(64, 300 * mb, 185, band), 600 * mb), "above it: faster");
        assert!(near(pace_rate(64, 300 * mb, 165, band), 150 * mb), "below it: slower");
        assert_eq!(pace_rate(64, 0, 150, band), 4, "never under a share of the base pace");
        assert_eq!(pace_rate(8, 0, 150, band), 1, "never unpaced for want of writes");
        assert_eq!(pace_rate(64, 300 * mb, 190, band), 0, "near the bound: unpaced");
        assert_eq!(pace_rate(64, 300 * mb, 250, band), 0);
        assert_eq!(pace_rate(64, 300 * mb, 150, None), 64, "no bound: the base pace");
        assert_eq!(pace_rate(0, 300 * mb, 150, band), 0, "no pace configured");
    }

    #[test]
    fn the_write_rate_is_sampled_and_smoothed() {
        let t0 = Instant::now();
        let mut w = Watch::new(0, None);
        w.sample_writes(0, t0);
        w.sample_writes(1 << 30, t0 + Duration::from_millis(100));
        assert_eq!(w.write_rate, 0.0, "samples are at least WRITE_SAMPLE apart");
        w.sample_writes(100 << 20, t0 + Duration::from_secs(1));
        assert!((w.write_rate - WRITE_RATE_ALPHA * (100 << 20) as f64).abs() < 1.0, "{}", w.write_rate);
    }

    #[test]
    fn only_failures_lasting_long_enough_lift_the_gate() {
        let t0 = Instant::now();
        let mut w = Watch::new(0, None);
        assert!(!w.gate_lifted(t0));
        w.pass_ended(false, t0);
        assert!(!w.gate_lifted(t0 + Duration::from_secs(1)), "one failed pass keeps the bound");
        w.pass_ended(false, t0 + Duration::from_secs(5));
        assert!(!w.gate_lifted(t0 + Duration::from_secs(9)), "counted from the first failure");
        assert!(w.gate_lifted(t0 + FAILING_LIFTS_GATE), "failing for the whole time lifts it");
        w.pass_ended(true, t0 + Duration::from_secs(11));
        assert!(!w.gate_lifted(t0 + Duration::from_secs(30)), "a pass that succeeds restores it");
    }
}
