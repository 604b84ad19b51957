//! logdisk-loadgen: a native vhost-user-blk load generator.
//!
//! It plays the hypervisor against any vhost-user-blk socket (logdisk, qemu-storage-daemon,
//! SPDK...): connects with the vhost crate's `Frontend`, shares memfd "guest memory",
//! lays out split virtqueues there and fills them itself, one thread per queue, with
//! kick/call eventfds and EVENT_IDX when offered. It reports IOPS, MB/s and latency
//! percentiles, and fails (exit status 2) on any non-OK status byte or verify mismatch.

#[allow(dead_code)] // classify() is the checker's half
mod crashpattern;
mod device;
mod hist;
mod mem;
mod powerloss;
mod vq;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

use crate::device::{Device, DeviceInfo};
use crate::hist::Histogram;
use crate::mem::GuestMem;
use crate::vq::{RingLayout, SlotAddrs, Vq};
use crate::worker::{QueueCtx, Rw, Spec};

/// Drive a vhost-user-blk backend directly, as a hypervisor would, and measure it.
///
/// Examples:
///   logdisk-loadgen --socket /tmp/vm.sock --rw randwrite --bs 4k --iodepth 32 --time 10
///   logdisk-loadgen --socket /tmp/vm.sock --rw write --bs 4k --iodepth 1 --fsync-every 1
///   logdisk-loadgen --socket /tmp/vm.sock --size 1G --prefill --verify --rw randrw --time 5
#[derive(Parser, Debug)]
#[command(name = "logdisk-loadgen", version, verbatim_doc_comment)]
struct Args {
    /// vhost-user-blk unix socket
    #[arg(long)]
    socket: PathBuf,
    /// IO pattern
    #[arg(long, value_enum, default_value = "randread")]
    rw: Rw,
    /// Block size (512-byte multiple; binary units: 4k, 1M)
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    bs: u64,
    /// Random patterns: sizes vary from --bs to this (in --bs steps), fio's bsrange
    #[arg(long, value_parser = parse_size)]
    bs_max: Option<u64>,
    /// Requests in flight in total, spread over the queues (queues used = min(queues, iodepth))
    #[arg(long, default_value_t = 32)]
    iodepth: usize,
    /// Virtqueues, one thread each
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Descriptors per virtqueue (3 per request in flight)
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Seconds to run (after --ramp); default 10 unless --ops is given
    #[arg(long)]
    time: Option<f64>,
    /// Stop after this many requests (reads + writes; flushes not counted)
    #[arg(long)]
    ops: Option<u64>,
    /// Sequential patterns: cover the region exactly once, then stop (each queue its share)
    #[arg(long)]
    once: bool,
    /// Seconds at the start that are not measured
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// Start of the region, bytes
    #[arg(long, default_value = "0", value_parser = parse_size)]
    offset: u64,
    /// Size of the region [default: the rest of the disk]
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Percentage of reads in randrw
    #[arg(long, default_value_t = 70)]
    rwmixread: u32,
    /// Send a FLUSH after every Nth write of a queue and wait for it; the write's latency
    /// includes its flush (1 = the write+flush QD1 job)
    #[arg(long, default_value_t = 0)]
    fsync_every: u32,
    /// Write the whole region sequentially first (not measured)
    #[arg(long)]
    prefill: bool,
    /// Block size of --prefill
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    prefill_bs: u64,
    /// Requests in flight per queue during --prefill
    #[arg(long, default_value_t = 8)]
    prefill_depth: usize,
    /// Writes carry a pattern of (seed, sector) and every read is checked against it;
    /// the region must hold that pattern (--prefill --verify, or an earlier --verify write)
    #[arg(long)]
    verify: bool,
    /// Seed of random offsets and of the verify pattern
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Busy-poll the used ring this many microseconds before sleeping on the call eventfd
    #[arg(long, default_value_t = 0)]
    poll_us: u64,
    /// Do not negotiate VIRTIO_RING_F_EVENT_IDX even if offered
    #[arg(long)]
    no_event_idx: bool,
    /// Fail when no request completes for this many seconds
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Retry connecting for up to this many seconds (the socket may not exist yet)
    #[arg(long, default_value_t = 0.0)]
    wait: f64,
    /// Print the report as one JSON object
    #[arg(long)]
    json: bool,
    /// A label copied into the report
    #[arg(long)]
    label: Option<String>,
    /// Less output: no progress lines on stderr
    #[arg(long, short)]
    quiet: bool,
    /// Power-loss workload: random pattern writes of --bs to --bs-max, a FLUSH after every
    /// --fsync-every writes of a queue, every event journaled to FILE (see crashpattern.rs)
    #[arg(long)]
    journal: Option<PathBuf>,
    /// With --journal: after each completed FLUSH, mark this dm-log-writes device's log
    #[arg(long)]
    dm_mark: Option<String>,
    /// With --journal: stop after this many completed flushes (or --time)
    #[arg(long, default_value_t = 2000)]
    flushes: u64,
    /// With --journal: failed requests are journaled and the run goes on
    #[arg(long)]
    allow_errors: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_lowercase();
            let m = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1u64 << 40,
                _ => return Err(format!("unknown unit in '{s}'")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("bad size '{s}'"))?;
    n.checked_mul(mult).ok_or_else(|| format!("size '{s}' too large"))
}

#[derive(Serialize)]
struct Latency {
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p99_9: f64,
    max: f64,
}

impl Latency {
    fn of(h: &Histogram) -> Latency {
        Latency {
            mean: h.mean() / 1000.0,
            p50: us(h.quantile(0.5)),
            p90: us(h.quantile(0.9)),
            p99: us(h.quantile(0.99)),
            p99_9: us(h.quantile(0.999)),
            max: us(h.max()),
        }
    }
}

#[derive(Serialize)]
struct Report {
    label: Option<String>,
    socket: String,
    rw: &'static str,
    bs: u64,
    iodepth: usize,
    queues: usize,
    offset: u64,
    size: u64,
    fsync_every: u32,
    verify: bool,
    prefill_seconds: Option<f64>,
    seconds: f64,
    ops: u64,
    reads: u64,
    writes: u64,
    flushes: u64,
    bytes: u64,
    iops: f64,
    /// 10^6 bytes per second
    mb_s: f64,
    mib_s: f64,
    /// Microseconds, per operation (a write with its flush counts as one operation).
    lat_us: Latency,
    /// The same for reads alone and writes alone (a mixed job's tail, told apart).
    read_lat_us: Option<Latency>,
    write_lat_us: Option<Latency>,
    kicks: u64,
    sleeps: u64,
    loadgen_cpu_seconds: f64,
    device: DeviceInfo,
}

struct Totals {
    hist: Histogram,
    read_hist: Histogram,
    write_hist: Histogram,
    ops: u64,
    reads: u64,
    writes: u64,
    flushes: u64,
    bytes: u64,
    seconds: f64,
    kicks: u64,
    sleeps: u64,
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Run one phase on every queue at once; merge the results.
fn run_phase(ctxs: &mut [QueueCtx<'_>], spec: &Spec, depths: &[usize]) -> Result<Totals> {
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(ctxs.len() + 1);
    let start_cell = std::sync::OnceLock::new();
    let results: Vec<Result<worker::QueueStats>> = std::thread::scope(|s| {
        let handles: Vec<_> = ctxs
            .iter_mut()
            .zip(depths)
            .map(|(ctx, &depth)| {
                let (stop, barrier, start_cell) = (&stop, &barrier, &start_cell);
                s.spawn(move || {
                    barrier.wait();
                    let start = *start_cell.get().expect("start time set before the barrier");
                    worker::run_queue(ctx, spec, depth, start, stop)
                })
            })
            .collect();
        start_cell.set(Instant::now() + Duration::from_millis(1)).unwrap();
        barrier.wait();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("queue thread panicked"))))
            .collect()
    });
    let mut t = Totals {
        hist: Histogram::new(),
        read_hist: Histogram::new(),
        write_hist: Histogram::new(),
        ops: 0,
        reads: 0,
        writes: 0,
        flushes: 0,
        bytes: 0,
        seconds: 0.0,
        kicks: 0,
        sleeps: 0,
    };
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(q) => {
                t.hist.merge(&q.hist);
                t.read_hist.merge(&q.read_hist);
                t.write_hist.merge(&q.write_hist);
                t.ops += q.ops;
                t.reads += q.reads;
                t.writes += q.writes;
                t.flushes += q.flushes;
                t.bytes += q.bytes;
                t.kicks += q.kicks;
                t.sleeps += q.sleeps;
                first = match (first, q.first) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                last = match (last, q.last) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    t.seconds = match (spec.time, first, last) {
        (Some(d), _, _) => d.as_secs_f64(),
        (None, Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    Ok(t)
}

fn spread(total: usize, n: usize) -> Vec<usize> {
    (0..n).map(|i| total / n + usize::from(i < total % n)).collect()
}

fn main() {
    match run() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("logdisk-loadgen: error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<()> {
    let a = Args::parse();
    if a.bs == 0 || a.bs % 512 != 0 || a.prefill_bs == 0 || a.prefill_bs % 512 != 0 {
        bail!("--bs and --prefill-bs must be non-zero multiples of 512");
    }
    let bs_max = a.bs_max.unwrap_or(a.bs);
    if bs_max < a.bs || bs_max % a.bs != 0 {
        bail!("--bs-max must be a multiple of --bs");
    }
    if a.offset % 512 != 0 {
        bail!("--offset must be a multiple of 512");
    }
    if a.iodepth == 0 || a.queues == 0 {
        bail!("--iodepth and --queues must be at least 1");
    }
    if a.rwmixread > 100 {
        bail!("--rwmixread is a percentage");
    }
    let nq = a.queues.min(a.iodepth);
    let depths = spread(a.iodepth, nq);
    let prefill_depths = vec![a.prefill_depth.max(1); nq];
    let slots = depths[0].max(if a.prefill { a.prefill_depth.max(1) } else { 0 });
    if 3 * slots > usize::from(a.queue_size) {
        bail!(
            "{} requests per queue need {} descriptors; --queue-size is {} (raise it or use more queues)",
            slots,
            3 * slots,
            a.queue_size
        );
    }
    if !a.queue_size.is_power_of_two() {
        bail!("--queue-size must be a power of two");
    }

    let mut dev = Device::connect(&a.socket, nq, !a.no_event_idx, Duration::from_secs_f64(a.wait))?;
    let info = dev.info.clone();
    let max_seg = if info.size_max > 0 { u64::from(info.size_max) } else { u64::MAX };
    if bs_max > max_seg || (a.prefill && a.prefill_bs > max_seg) {
        bail!("block size above the device's size_max ({max_seg} bytes): one data descriptor per request");
    }
    if a.fsync_every > 0 && !info.flush {
        bail!("--fsync-every: the device does not offer VIRTIO_BLK_F_FLUSH");
    }
    if info.read_only && a.rw != Rw::Read && a.rw != Rw::Randread {
        bail!("the device is read-only");
    }
    let size = match a.size {
        Some(s) => s,
        None if info.capacity > a.offset => info.capacity - a.offset,
        None => bail!("--size is needed: the device reported no capacity beyond --offset"),
    };
    if info.capacity > 0 && a.offset + size > info.capacity {
        bail!("region {}+{} is beyond the disk's {} bytes", a.offset, size, info.capacity);
    }
    if size < a.bs * nq as u64 {
        bail!("region of {size} bytes is smaller than one block per queue");
    }

    // Guest memory: rings (64 KiB per queue), headers+status (32 bytes per slot), data.
    let buf = bs_max.max(if a.prefill { a.prefill_bs } else { 0 }).next_multiple_of(4096);
    let meta_base = nq as u64 * (64 << 10);
    let data_base = (meta_base + (nq * slots * 32) as u64).next_multiple_of(1 << 20);
    let mem_size = (data_base + (nq * slots) as u64 * buf).next_multiple_of(2 << 20);
    let mem = GuestMem::new(mem_size as usize)?;
    let layouts: Vec<_> = (0..nq).map(|q| RingLayout::new(q as u64 * (64 << 10), a.queue_size)).collect();
    let fds = dev.start(&mem, &layouts)?;

    // Incompressible, non-zero write data.
    let mut rng = worker::Rng::new(a.seed ^ 0x5eed);
    for chunk in mem.slice_mut(data_base, nq * slots * buf as usize).chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes());
    }

    let mut ctxs: Vec<QueueCtx<'_>> = fds
        .into_iter()
        .enumerate()
        .map(|(q, f)| {
            let vq = Vq::new(&mem, layouts[q], info.event_idx);
            let addrs: Vec<SlotAddrs> = (0..slots)
                .map(|i| {
                    let n = (q * slots + i) as u64;
                    SlotAddrs { hdr: meta_base + 32 * n, status: meta_base + 32 * n + 16, data: data_base + n * buf }
                })
                .collect();
            for (i, s) in addrs.iter().enumerate() {
                vq.init_slot(i as u16, s, a.bs as u32);
            }
            QueueCtx { q, nq, vq, mem: &mem, slots: addrs, kick: f.kick, call: f.call }
        })
        .collect();

    if let Some(j) = &a.journal {
        let spec = powerloss::PlSpec {
            seed: a.seed,
            offset: a.offset,
            len: size,
            bs: a.bs,
            max_blocks: bs_max / a.bs,
            flush_every: a.fsync_every.max(1),
            flushes: a.flushes,
            time: a.time.map(Duration::from_secs_f64),
            timeout: Duration::from_secs_f64(a.timeout),
            allow_errors: a.allow_errors,
        };
        let mark = a.dm_mark.as_deref().map(powerloss::DmMark::open).transpose()?;
        let file = std::fs::File::create(j).with_context(|| format!("create {}", j.display()))?;
        let sh = powerloss::Shared::new(file, mark);
        let t0 = Instant::now();
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let hs: Vec<_> = ctxs
                .iter_mut()
                .zip(&depths)
                .map(|(ctx, &d)| {
                    let (spec, sh) = (&spec, &sh);
                    s.spawn(move || powerloss::run_queue(ctx, spec, d, sh))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("queue thread panicked")))).collect()
        });
        sh.finish()?;
        drop(ctxs);
        dev.stop()?;
        use std::sync::atomic::Ordering::Relaxed;
        println!(
            "powerloss: {} writes and {} flushes acknowledged, {} failed requests, {:.1} s",
            sh.writes_done.load(Relaxed),
            sh.flushes_done.load(Relaxed),
            sh.errors.load(Relaxed),
            t0.elapsed().as_secs_f64()
        );
        return results.into_iter().collect();
    }

    let base = Spec {
        rw: a.rw,
        bs: a.bs,
        bs_max,
        offset: a.offset,
        len: size,
        rwmixread: a.rwmixread,
        fsync_every: a.fsync_every,
        verify: a.verify,
        seed: a.seed,
        time: None,
        ramp: Duration::ZERO,
        ops: None,
        once: false,
        poll: Duration::from_micros(a.poll_us),
        timeout: Duration::from_secs_f64(a.timeout),
    };

    let mut prefill_seconds = None;
    if a.prefill {
        if !a.quiet {
            eprintln!("logdisk-loadgen: prefilling {} bytes at {} with {}-byte writes", size, a.offset, a.prefill_bs);
        }
        let spec = Spec { rw: Rw::Write, bs: a.prefill_bs, fsync_every: 0, once: true, ..base.clone() };
        let t0 = Instant::now();
        run_phase(&mut ctxs, &spec, &prefill_depths).context("prefill")?;
        prefill_seconds = Some(t0.elapsed().as_secs_f64());
    }

    if a.once && a.rw.random() {
        bail!("--once is for sequential patterns (read, write)");
    }
    let time = match (a.time, a.ops, a.once) {
        (Some(t), _, _) => Some(Duration::from_secs_f64(t)),
        (None, None, false) => Some(Duration::from_secs(10)),
        (None, _, _) => None,
    };
    let spec = Spec { time, ops: a.ops, once: a.once, ramp: Duration::from_secs_f64(a.ramp), ..base };
    let cpu0 = cpu_seconds();
    let t = run_phase(&mut ctxs, &spec, &depths)?;
    let cpu = cpu_seconds() - cpu0;
    drop(ctxs);
    dev.stop()?;

    let secs = if t.seconds > 0.0 { t.seconds } else { f64::NAN };
    let r = Report {
        label: a.label.clone(),
        socket: a.socket.display().to_string(),
        rw: a.rw.name(),
        bs: a.bs,
        iodepth: a.iodepth,
        queues: nq,
        offset: a.offset,
        size,
        fsync_every: a.fsync_every,
        verify: a.verify,
        prefill_seconds,
        seconds: t.seconds,
        ops: t.ops,
        reads: t.reads,
        writes: t.writes,
        flushes: t.flushes,
        bytes: t.bytes,
        iops: t.ops as f64 / secs,
        mb_s: t.bytes as f64 / secs / 1e6,
        mib_s: t.bytes as f64 / secs / (1 << 20) as f64,
        lat_us: Latency::of(&t.hist),
        read_lat_us: (t.read_hist.count() > 0).then(|| Latency::of(&t.read_hist)),
        write_lat_us: (t.write_hist.count() > 0).then(|| Latency::of(&t.write_hist)),
        kicks: t.kicks,
        sleeps: t.sleeps,
        loadgen_cpu_seconds: cpu,
        device: info,
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_human(&r);
    }
    Ok(())
}

fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if v.fract() == 0.0 {
        format!("{v}{}", U[i])
    } else {
        format!("{v:.2}{}", U[i])
    }
}

fn print_human(r: &Report) {
    println!(
        "{} bs={} iodepth={} queues={} region={}@{}{}{} event_idx={}",
        r.rw,
        human_bytes(r.bs),
        r.iodepth,
        r.queues,
        human_bytes(r.size),
        r.offset,
        if r.fsync_every > 0 { format!(" fsync_every={}", r.fsync_every) } else { String::new() },
        if r.verify { " verify" } else { "" },
        if r.device.event_idx { "yes" } else { "no" },
    );
    if let Some(p) = r.prefill_seconds {
        println!("  prefill      {p:.1} s");
    }
    println!(
        "  ops          {} in {:.2} s (reads {}, writes {}, flushes {})",
        r.ops, r.seconds, r.reads, r.writes, r.flushes
    );
    println!("  IOPS         {:.0}", r.iops);
    println!("  MB/s         {:.1}  ({:.1} MiB/s)", r.mb_s, r.mib_s);
    let lat = |what: &str, l: &Latency| {
        println!(
            "  {what:<12} mean {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            l.mean, l.p50, l.p90, l.p99, l.p99_9, l.max
        )
    };
    lat("latency us", &r.lat_us);
    if let (Some(rl), Some(wl)) = (&r.read_lat_us, &r.write_lat_us) {
        lat("  reads", rl);
        lat("  writes", wl);
    }
    println!(
        "  loadgen      cpu {:.2} s ({:.0}% of a core), kicks {}, sleeps {}",
        r.loadgen_cpu_seconds,
        100.0 * r.loadgen_cpu_seconds / r.seconds.max(1e-9),
        r.kicks,
        r.sleeps
    );
}

/// Nanoseconds to microseconds.
fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("3x").is_err());
    }

    #[test]
    fn spread_depth() {
        assert_eq!(spread(32, 2), vec![16, 16]);
        assert_eq!(spread(5, 2), vec![3, 2]);
        assert_eq!(spread(1, 1), vec![1]);
    }
}
