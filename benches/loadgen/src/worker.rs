//! One thread per virtqueue: keep `depth` requests in flight, reap completions, check
//! status bytes, record latencies. Nothing is allocated per request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use vmm_sys_util::eventfd::EventFd;

use crate::hist::Histogram;
use crate::mem::GuestMem;
use crate::vq::{SlotAddrs, Vq};

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    /// Sequential reads
    Read,
    /// Sequential writes
    Write,
    /// Random reads
    Randread,
    /// Random writes
    Randwrite,
    /// Random mix of reads and writes (--rwmixread)
    Randrw,
}

impl Rw {
    pub fn random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite | Rw::Randrw)
    }
    pub fn name(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::Randread => "randread",
            Rw::Randwrite => "randwrite",
            Rw::Randrw => "randrw",
        }
    }
}

/// What one phase (prefill or the job) does; shared by every queue thread.
#[derive(Clone, Debug)]
pub struct Spec {
    pub rw: Rw,
    pub bs: u64,
    /// Random patterns: each request is 1 to `bs_max / bs` blocks.
    pub bs_max: u64,
    /// Region (bytes) the IO covers.
    pub offset: u64,
    pub len: u64,
    pub rwmixread: u32,
    /// Send a FLUSH (and wait for it) after every Nth write of a queue; 0 = never.
    pub fsync_every: u32,
    pub verify: bool,
    pub seed: u64,
    /// Stop submitting after this long (after the ramp).
    pub time: Option<Duration>,
    /// Not measured: the first part of the run.
    pub ramp: Duration,
    /// Total requests (reads + writes) over all queues.
    pub ops: Option<u64>,
    /// Sequential: each queue covers its share of the region once, then stops.
    pub once: bool,
    /// Spin this long on the used ring before sleeping on the call eventfd.
    pub poll: Duration,
    /// Fail when no completion arrives for this long.
    pub timeout: Duration,
}

/// What one queue did.
pub struct QueueStats {
    pub hist: Histogram,
    /// The same, reads only and writes only (a write with its flush is a write).
    pub read_hist: Histogram,
    pub write_hist: Histogram,
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub bytes: u64,
    /// Window of measured completions.
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    pub kicks: u64,
    pub sleeps: u64,
}

/// One queue's resources, owned by its thread.
pub struct QueueCtx<'m> {
    pub q: usize,
    pub nq: usize,
    pub vq: Vq<'m>,
    pub mem: &'m GuestMem,
    pub slots: Vec<SlotAddrs>,
    pub kick: EventFd,
    pub call: EventFd,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Idle,
    Read,
    Write,
    /// A flush sent after a write, completing that write's operation.
    FlushAfterWrite,
}

#[derive(Clone, Copy)]
struct SlotState {
    kind: Kind,
    sector: u64,
    len: u32,
    started: Instant,
}

/// Small, fast PRNG (wyrand).
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    #[inline]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    }
    /// Uniform in 0..n (n > 0), without modulo bias worth speaking of for n << 2^64.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// The verify pattern: every 8-byte word of sector `s` is a function of (seed, s, word).
#[inline]
fn pattern_word(seed: u64, sector: u64, word: u64) -> u64 {
    let mut z = seed ^ sector.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ word.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn stamp(buf: &mut [u8], seed: u64, first_sector: u64) {
    for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
        let i = i as u64;
        chunk.copy_from_slice(&pattern_word(seed, first_sector + i / 64, i % 64).to_le_bytes());
    }
}

/// First mismatching byte offset, if any.
pub fn check(buf: &[u8], seed: u64, first_sector: u64) -> Option<usize> {
    for (i, chunk) in buf.chunks_exact(8).enumerate() {
        let i64_ = i as u64;
        let want = pattern_word(seed, first_sector + i64_ / 64, i64_ % 64).to_le_bytes();
        if chunk != want {
            return Some(i * 8);
        }
    }
    None
}

fn status_name(s: u8) -> &'static str {
    match s {
        0 => "OK",
        1 => "IOERR",
        2 => "UNSUPP",
        0xff => "never written by the device",
        _ => "unknown",
    }
}

pub fn wait_call(call: &EventFd, timeout: Duration) {
    let mut pfd = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(call), events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().clamp(1, 1000) as i32;
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) };
    let _ = call.read();
}

/// Run one phase on one queue with `depth` requests in flight.
pub fn run_queue(
    ctx: &mut QueueCtx<'_>,
    spec: &Spec,
    depth: usize,
    start: Instant,
    stop: &AtomicBool,
) -> Result<QueueStats> {
    let bs = spec.bs;
    let sectors_per_block = bs / 512;
    let blocks_total = spec.len / bs;
    // Sequential: this queue's share of the region (the last queue also takes the rest).
    let base_share = blocks_total / ctx.nq as u64;
    let share = if ctx.q + 1 == ctx.nq { blocks_total - base_share * (ctx.nq as u64 - 1) } else { base_share };
    let seq_first = spec.offset / 512 + ctx.q as u64 * base_share * sectors_per_block;
    let mut seq_next = 0u64;
    let ops_quota = spec.ops.map(|n| n / ctx.nq as u64 + u64::from((ctx.q as u64) < n % ctx.nq as u64));
    let ramp_end = start + spec.ramp;
    let deadline = spec.time.map(|t| ramp_end + t);
    let mut rng = Rng::new(spec.seed.wrapping_add(ctx.q as u64 * 0x1000_0001));
    let mut st = QueueStats {
        hist: Histogram::new(),
        read_hist: Histogram::new(),
        write_hist: Histogram::new(),
        ops: 0,
        reads: 0,
        writes: 0,
        flushes: 0,
        bytes: 0,
        first: None,
        last: None,
        kicks: 0,
        sleeps: 0,
    };
    let mut state = vec![SlotState { kind: Kind::Idle, sector: 0, len: bs as u32, started: start }; depth];
    let mut submitted = 0u64;
    let mut writes_since_flush = 0u32;
    let mut inflight = 0usize;
    let mut error: Option<String> = None;
    if blocks_total == 0 || (!spec.rw.random() && share == 0) {
        bail!("region of {} bytes holds no {}-byte block per queue", spec.len, bs);
    }

    // Pick and queue the next operation on `slot`; false when the phase is over.
    let mut next_op = |ctx: &mut QueueCtx<'_>,
                       s: &mut SlotState,
                       slot: usize,
                       now: Instant,
                       submitted: &mut u64,
                       stopping: bool|
     -> bool {
        if stopping || stop.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(q) = ops_quota {
            if *submitted >= q {
                return false;
            }
        }
        if let Some(d) = deadline {
            if now >= d {
                return false;
            }
        }
        let blocks =
            if spec.rw.random() && spec.bs_max > bs { (1 + rng.below(spec.bs_max / bs)).min(blocks_total) } else { 1 };
        let len = blocks * bs;
        let block = if spec.rw.random() {
            rng.below(blocks_total - blocks + 1)
        } else {
            if spec.once && seq_next >= share {
                return false;
            }
            let b = seq_next % share;
            seq_next += 1;
            b
        };
        let sector = if spec.rw.random() {
            spec.offset / 512 + block * sectors_per_block
        } else {
            seq_first + block * sectors_per_block
        };
        let read = match spec.rw {
            Rw::Read | Rw::Randread => true,
            Rw::Write | Rw::Randwrite => false,
            Rw::Randrw => (rng.below(100) as u32) < spec.rwmixread,
        };
        let a = ctx.slots[slot];
        if !read && spec.verify {
            stamp(ctx.mem.slice_mut(a.data, len as usize), spec.seed, sector);
        }
        let (t, kind) = if read { (VIRTIO_BLK_T_IN, Kind::Read) } else { (VIRTIO_BLK_T_OUT, Kind::Write) };
        ctx.vq.push(slot as u16, &a, t, sector, Some((len as u32, read)));
        *s = SlotState { kind, sector, len: len as u32, started: now };
        *submitted += 1;
        true
    };

    let now = Instant::now();
    for (slot, s) in state.iter_mut().enumerate() {
        if next_op(ctx, s, slot, now, &mut submitted, false) {
            inflight += 1;
        }
    }
    if ctx.vq.publish() {
        ctx.kick.write(1)?;
        st.kicks += 1;
    }
    let mut last_progress = Instant::now();

    while inflight > 0 {
        let used = ctx.vq.used_idx();
        let mut reaped = 0;
        while let Some((slot, _len)) = ctx.vq.pop_used(used) {
            reaped += 1;
            let slot = slot as usize;
            let now = Instant::now();
            let a = ctx.slots[slot];
            let s = &mut state[slot];
            let status = ctx.vq.status(&a);
            let what = match s.kind {
                Kind::Read => "read",
                Kind::Write => "write",
                Kind::FlushAfterWrite => "flush",
                Kind::Idle => "idle slot",
            };
            if s.kind == Kind::Idle {
                error.get_or_insert_with(|| format!("queue {}: completion for idle slot {slot}", ctx.q));
                stop.store(true, Ordering::Relaxed);
                continue;
            }
            if status != 0 {
                error.get_or_insert_with(|| {
                    format!(
                        "queue {}: {what} of {} bytes at byte offset {} failed: status {status} ({})",
                        ctx.q,
                        s.len,
                        s.sector * 512,
                        status_name(status)
                    )
                });
                stop.store(true, Ordering::Relaxed);
                s.kind = Kind::Idle;
                inflight -= 1;
                continue;
            }
            let mut op_done = true;
            match s.kind {
                Kind::Read => {
                    st.reads += 1;
                    if spec.verify {
                        if let Some(off) = check(ctx.mem.slice(a.data, s.len as usize), spec.seed, s.sector) {
                            error.get_or_insert_with(|| {
                                format!(
                                    "queue {}: verify failed: read at byte offset {} differs at byte {off} \
                                     (offset {}): was the region written with --verify/--prefill and seed {}?",
                                    ctx.q,
                                    s.sector * 512,
                                    s.sector * 512 + off as u64,
                                    spec.seed
                                )
                            });
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
                Kind::Write => {
                    st.writes += 1;
                    if spec.fsync_every > 0 {
                        writes_since_flush += 1;
                        if writes_since_flush >= spec.fsync_every {
                            writes_since_flush = 0;
                            ctx.vq.push(slot as u16, &a, VIRTIO_BLK_T_FLUSH, 0, None);
                            s.kind = Kind::FlushAfterWrite;
                            op_done = false;
                        }
                    }
                }
                Kind::FlushAfterWrite => st.flushes += 1,
                Kind::Idle => unreachable!(),
            }
            if !op_done {
                continue;
            }
            if s.started >= ramp_end && deadline.is_none_or(|d| now <= d) {
                let ns = (now - s.started).as_nanos() as u64;
                st.hist.record(ns);
                match s.kind {
                    Kind::Read => st.read_hist.record(ns),
                    _ => st.write_hist.record(ns),
                }
                st.ops += 1;
                st.bytes += u64::from(s.len);
                st.first.get_or_insert(s.started);
                st.last = Some(now);
            }
            let stopping = error.is_some();
            if !next_op(ctx, s, slot, now, &mut submitted, stopping) {
                s.kind = Kind::Idle;
                inflight -= 1;
            }
        }
        if reaped > 0 {
            last_progress = Instant::now();
            if ctx.vq.publish() {
                ctx.kick.write(1)?;
                st.kicks += 1;
            }
            continue;
        }
        // Nothing to reap: spin a little, then sleep on the call eventfd.
        if !spec.poll.is_zero() {
            let spin_end = Instant::now() + spec.poll;
            while ctx.vq.used_idx() == used && Instant::now() < spin_end {
                std::hint::spin_loop();
            }
            if ctx.vq.used_idx() != used {
                continue;
            }
        }
        if ctx.vq.arm() {
            continue;
        }
        let waited = last_progress.elapsed();
        if waited >= spec.timeout {
            bail!(
                "queue {}: no completion for {:.1} s with {inflight} request(s) in flight: the backend hangs{}",
                ctx.q,
                waited.as_secs_f64(),
                error.map(|e| format!(" (after: {e})")).unwrap_or_default()
            );
        }
        st.sleeps += 1;
        wait_call(&ctx.call, spec.timeout - waited);
    }
    if let Some(e) = error {
        bail!(e);
    }
    if st.first.is_none() {
        st.first = Some(ramp_end);
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_roundtrip() {
        let mut b = vec![0u8; 8192];
        stamp(&mut b, 7, 100);
        assert_eq!(check(&b, 7, 100), None);
        // Sector-granular: the second half is sector 108's pattern.
        assert_eq!(check(&b[4096..], 7, 108), None);
        assert_eq!(check(&b, 8, 100), Some(0));
        b[5000] ^= 1;
        assert_eq!(check(&b, 7, 100), Some(5000 & !7));
    }

    #[test]
    fn rng_below_in_range() {
        let mut r = Rng::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
