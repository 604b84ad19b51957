//! Volume-level benchmark (no vhost, no VM): 4 KiB random write and read IOPS,
//! 1 MiB sequential write and read MB/s, flush latency, and map memory per written
//! GiB, scrub time and read latency during a scrub, on a data dir on the local disk with the embedded file object store and
//! uploads running. Run: `cargo bench --bench volume` (env LOGDISK_BENCH_DIR picks the
//! directory, LOGDISK_BENCH_SIZE the volume size, default 1G).

use std::sync::Arc;
use std::time::{Duration, Instant};

use logdisk::config::Config;
use logdisk::datadir::DataDir;
use logdisk::units::{format_size, parse_size};
use logdisk::volume::iov::AlignedBuf;
use logdisk::volume::Volume;
use rand::{rngs::SmallRng, Rng, SeedableRng};

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 4096
}

fn run_threads(
    vol: &Arc<Volume>,
    threads: usize,
    dur: Duration,
    f: fn(&Volume, &mut SmallRng, &mut AlignedBuf, u64),
) -> (u64, f64) {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let vol = vol.clone();
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t as u64 + 1);
                let mut buf = AlignedBuf::zeroed(1 << 20);
                rng.fill(&mut buf[..]);
                let mut n = 0u64;
                while start.elapsed() < dur {
                    f(&vol, &mut rng, &mut buf, n);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let ops: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    (ops, start.elapsed().as_secs_f64())
}

fn main() {
    let dir = std::env::var("LOGDISK_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
    let size = std::env::var("LOGDISK_BENCH_SIZE").ok().map(|s| parse_size(&s).unwrap()).unwrap_or(1 << 30);
    let secs: u64 = std::env::var("LOGDISK_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let t = tempfile::tempdir_in(&dir).unwrap();
    let mut dd = DataDir::open(&t.path().join("data"), None, Config::default()).unwrap();
    dd.create_volume("bench", size, None, None).unwrap();
    let vol = dd.open_volume("bench", false).unwrap();
    let clusters = size / 4096;
    let dur = Duration::from_secs(secs);
    println!(
        "logdisk volume benchmark: volume {} on {}, {secs} s per job, O_DIRECT, uploads to the embedded file store",
        format_size(size),
        dir.display()
    );
    println!("{:<34} {:>12} {:>12}", "job", "result", "unit");

    // Fill sequentially with 1 MiB writes (also the sequential write figure).
    let start = Instant::now();
    let mut buf = AlignedBuf::zeroed(1 << 20);
    SmallRng::seed_from_u64(9).fill(&mut buf[..]);
    let rss0 = rss_bytes();
    let mut off = 0;
    while off < size {
        vol.write_at(off, &buf[..(1 << 20).min(size - off) as usize]).unwrap();
        off += 1 << 20;
    }
    vol.flush().unwrap();
    let s = start.elapsed().as_secs_f64();
    println!("{:<34} {:>12.1} {:>12}", "1M sequential write (fill)", size as f64 / s / 1e6, "MB/s");

    let start = Instant::now();
    let mut off = 0;
    while off < size {
        vol.read_at(off, &mut buf[..(1 << 20).min(size - off) as usize]).unwrap();
        off += 1 << 20;
    }
    let s = start.elapsed().as_secs_f64();
    println!("{:<34} {:>12.1} {:>12}", "1M sequential read", size as f64 / s / 1e6, "MB/s");

    for threads in [1, 2] {
        let (ops, s) = run_threads(&vol, threads, dur, |v, rng, b, _| {
            let c = rng.gen_range(0..v.size() / 4096);
            v.write_at(c * 4096, &b[..4096]).unwrap();
        });
        println!("{:<34} {:>12.0} {:>12}", format!("4k random write, {threads} thread(s)"), ops as f64 / s, "IOPS");
        let (ops, s) = run_threads(&vol, threads, dur, |v, rng, b, _| {
            let c = rng.gen_range(0..v.size() / 4096);
            v.read_at(c * 4096, &mut b[..4096]).unwrap();
        });
        println!("{:<34} {:>12.0} {:>12}", format!("4k random read, {threads} thread(s)"), ops as f64 / s, "IOPS");
    }

    // Flush latency: one 4k random write then a flush, repeatedly.
    let mut lat = Vec::new();
    let mut rng = SmallRng::seed_from_u64(5);
    let end = Instant::now() + dur;
    while Instant::now() < end {
        let c = rng.gen_range(0..clusters);
        vol.write_at(c * 4096, &buf[..4096]).unwrap();
        let t0 = Instant::now();
        vol.flush().unwrap();
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!("{:<34} {:>12.0} {:>12}", "4k write+flush rate", lat.len() as f64 / secs as f64, "ops/s");
    println!("{:<34} {:>12.0} {:>12}", "flush latency p50", pct(0.5), "us");
    println!("{:<34} {:>12.0} {:>12}", "flush latency p99", pct(0.99), "us");

    // Scrub: the random writes above left every SCO of the fill partly dead. Scrub at
    // the default threshold while one thread reads 4k at random: how long it takes, and
    // how long any read waited meanwhile (scrub must not stall guest IO).
    let scrubber = {
        let v = vol.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let r = v.scrub(0.5).unwrap();
            (r, t0.elapsed().as_secs_f64())
        })
    };
    let mut lat = Vec::new();
    let mut rng = SmallRng::seed_from_u64(6);
    let mut rbuf = AlignedBuf::zeroed(4096);
    while !scrubber.is_finished() {
        let c = rng.gen_range(0..clusters);
        let t0 = Instant::now();
        vol.read_at(c * 4096, &mut rbuf[..]).unwrap();
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    let (rep, scrub_secs) = scrubber.join().unwrap();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!("{:<34} {:>12.2} {:>12}", "scrub (threshold 0.5)", scrub_secs, "s");
    println!(
        "{:<34} {:>12} {:>12}",
        "scrub moved / SCOs deleted",
        format!("{} / {}", format_size(rep.moved_bytes), rep.scos_deleted),
        ""
    );
    println!("{:<34} {:>12.0} {:>12}", "4k read during scrub p50", pct(0.5), "us");
    println!("{:<34} {:>12.0} {:>12}", "4k read during scrub p99", pct(0.99), "us");
    println!("{:<34} {:>12.0} {:>12}", "4k read during scrub max", lat[lat.len() - 1], "us");

    // Memory: map bytes per written GiB after every cluster was written once in
    // random order (a fresh volume, so the sequential fill does not help).
    dd.create_volume("bench-mem", size, None, None).unwrap();
    let mvol = dd.open_volume("bench-mem", false).unwrap();
    let mut order: Vec<u64> = (0..clusters).collect();
    use rand::seq::SliceRandom;
    order.shuffle(&mut SmallRng::seed_from_u64(1));
    let rss1 = rss_bytes();
    for c in order {
        mvol.write_at(c * 4096, &buf[..4096]).unwrap();
    }
    let st = mvol.stats();
    let gib = (st.mapped_clusters * 4096) as f64 / (1u64 << 30) as f64;
    println!(
        "{:<34} {:>12.2} {:>12}",
        "map memory per written GiB",
        st.map_memory_bytes as f64 / gib / (1 << 20) as f64,
        "MiB"
    );
    println!(
        "{:<34} {:>12.1} {:>12}",
        "map bytes per written cluster",
        st.map_memory_bytes as f64 / st.mapped_clusters as f64,
        "bytes"
    );
    println!(
        "{:<34} {:>12.1} {:>12}",
        "process RSS growth (random fill)",
        (rss_bytes().saturating_sub(rss1)) as f64 / (1 << 20) as f64,
        "MiB"
    );
    println!("{:<34} {:>12.1} {:>12}", "process RSS (total)", rss_bytes() as f64 / (1 << 20) as f64, "MiB");
    let _ = rss0;
    let t0 = Instant::now();
    mvol.close().unwrap();
    vol.close().unwrap();
    println!("{:<34} {:>12.2} {:>12}", "close (seal + drain uploads)", t0.elapsed().as_secs_f64(), "s");
    let t0 = Instant::now();
    drop(mvol);
    let _v = dd.open_volume("bench-mem", false).unwrap();
    println!("{:<34} {:>12.3} {:>12}", "reopen (checkpoint + replay)", t0.elapsed().as_secs_f64(), "s");
}
