//! Sustained 1 MiB sequential writes into a small write buffer on an S3 home: what the
//! guest sees once the buffer is full (its settled rate, p99.9 and max latency) and what
//! reaches S3 (upload rate against plain PUTs of the same server, CPU per MiB uploaded),
//! with write pacing on or off (`write_buffer.pace`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logdisk::backend::uploader::Uploader;
use logdisk::backend::ObjectStore;
use logdisk::volume::read_cache::ReadCache;
use logdisk::volume::{EngineOptions, Volume, VolumeEnv, VolumeMeta};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Writer threads (two queues).
const WRITERS: u64 = 2;
/// Write size.
const CHUNK: u64 = 1 << 20;
/// Data written: this many times the write buffer, so it fills and then drains twice.
const FILLS: u64 = 4;

/// CPU time of this process (user + system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(store: &Arc<dyn ObjectStore>, wb_mib: u64, pace: bool, raw_put: f64) {
    let wb = wb_mib << 20;
    let size = wb * FILLS;
    let t = tempfile::tempdir().unwrap();
    let env = Arc::new(VolumeEnv::new(
        store.clone(),
        Arc::new(ReadCache::create(&t.path().join("cache"), 64 << 20, true).unwrap()),
        Uploader::start(4),
        EngineOptions { wb_limit: wb, pace_writes: pace, ..EngineOptions::default() },
    ));
    static RUN: AtomicU32 = AtomicU32::new(0);
    let name = format!("sust{}", RUN.fetch_add(1, Ordering::Relaxed));
    let mut meta = VolumeMeta::new(&name, size, 4096, 32 << 20);
    meta.store_new_version(store.as_ref(), true).unwrap();
    let vol = Volume::open(env.clone(), meta, t.path().join("wb"), false).unwrap();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    // Each writer covers its half sequentially; latency of every write in microseconds,
    // with the time it completed (to split filling from the settled part).
    let per_writer = size / WRITERS / CHUNK;
    let results: Vec<Vec<(Duration, u32)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let vol = &vol;
                sc.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(w);
                    let mut buf = vec![0u8; CHUNK as usize];
                    rng.fill(&mut buf[..]);
                    let mut lat = Vec::with_capacity(per_writer as usize);
                    for i in 0..per_writer {
                        buf[..8].copy_from_slice(&i.to_le_bytes());
                        let s = Instant::now();
                        vol.write_at((w * per_writer + i) * CHUNK, &buf).unwrap();
                        lat.push((t0.elapsed(), s.elapsed().as_micros() as u32));
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let written_in = t0.elapsed();
    let report = vol.close().unwrap();
    assert!(report.drained, "uploads drained");
    let in_s3 = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    env.uploader.stop();
    // Settled: writes that completed after the buffer could first have been full.
    let mut all: Vec<(Duration, u32)> = results.into_iter().flatten().collect();
    all.sort_by_key(|x| x.0);
    let fill_point = all.len() / FILLS as usize;
    let settled = &all[fill_point..];
    let settled_secs = (settled.last().unwrap().0 - settled[0].0).as_secs_f64();
    let settled_rate = (settled.len() as u64 * CHUNK) as f64 / (1 << 20) as f64 / settled_secs;
    let worst = settled.iter().max_by_key(|x| x.1).unwrap();
    eprintln!("  longest write: {:.1} ms, completed {:.2?} after the start", worst.1 as f64 / 1000.0, worst.0);
    let mut lats: Vec<u32> = settled.iter().map(|x| x.1).collect();
    lats.sort_unstable();
    let mib = (size >> 20) as f64;
    let upload_rate = mib / in_s3.as_secs_f64();
    eprintln!(
        "sustained 1 MiB writes, {} MiB into a {wb_mib} MiB write buffer, pacing {}: guest settled at \
         {settled_rate:.1} MiB/s (p99.9 {:.1} ms, max {:.1} ms), writes done in {written_in:.2?}, all in S3 after \
         {in_s3:.2?} = {upload_rate:.1} MiB/s = {:.2}x raw PUT; CPU {:.2} ms per MiB",
        size >> 20,
        if pace { "on" } else { "off" },
        percentile(&lats, 0.999) as f64 / 1000.0,
        *lats.last().unwrap() as f64 / 1000.0,
        upload_rate / raw_put,
        cpu.as_secs_f64() * 1000.0 / mib,
    );
}
