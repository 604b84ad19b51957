//! Encryption's cost against a real SeaweedFS on loopback (as the tests start it): for a
//! plain and an encrypted volume (AES-256-GCM, `--encrypt --key-file`), alternating, the
//! upload of an import (throughput, and this process's CPU per MiB from the first write to
//! everything in S3), then a cold sequential read, 1 MiB at a time, from a fresh data dir.
//! Data: half random, half text-like, in 4 MiB chunks (LZ4 compresses before encryption).
//!
//! Run: `cargo bench --bench s3_encrypt` (LOGDISK_MEASURE_MIB=128 sets the size,
//! LOGDISK_MEASURE_ROUNDS=2 the plain/encrypted pairs).

#[path = "../tests/common/s3.rs"]
mod harness;

use std::time::{Duration, Instant};

use logdisk::config::{ByteSize, Config};
use logdisk::crypto::KeySource;
use logdisk::datadir::DataDir;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// User + system CPU time of this process.
fn cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A named column of the summary.
type Metric = (&'static str, fn(&Run) -> f64);

struct Run {
    upload_mib_s: f64,
    cpu_ms_per_mib: f64,
    read_mib_s: f64,
}

fn main() {
    let mib: u64 = std::env::var("LOGDISK_MEASURE_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(128);
    let rounds: usize = std::env::var("LOGDISK_MEASURE_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let w = harness::shared();
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("key");
    let mut rng = StdRng::seed_from_u64(7);
    let hex: String = (0..32).map(|_| format!("{:02x}", rng.gen::<u8>())).collect();
    std::fs::write(&key, hex).unwrap();
    let size = mib << 20;
    let mut image = vec![0u8; size as usize];
    for (i, chunk) in image.chunks_mut(4 << 20).enumerate() {
        if i % 2 == 0 {
            rng.fill(chunk);
        } else {
            let line = format!("2024-11-23T07:38:37Z host-{i:03} svc[1234]: request id={:08} status=200\n", i * 7);
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = line.as_bytes()[j % line.len()];
            }
        }
    }
    let mut cfg = Config { s3: w.config(), ..Config::default() };
    cfg.write_buffer.limit = ByteSize(1 << 30);
    cfg.read_cache.size = ByteSize(1 << 30);
    cfg.encryption.key_files = vec![key.clone()];
    let rate = |bytes: u64, d: Duration| bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();

    let mut results: Vec<(bool, Run)> = Vec::new();
    for round in 0..rounds * 2 {
        let encrypted = round % 2 == 1;
        let bucket = w.new_bucket(if encrypted { "enc" } else { "plain" });
        let url = format!("s3://{bucket}/b");
        let dd = DataDir::open(&t.path().join(format!("a{round}")), Some(&url), cfg.clone()).unwrap();
        let src = KeySource::File(key.clone());
        dd.create_volume_with("m", size, None, None, encrypted.then_some(&src)).unwrap();
        let mut dd = dd;
        let vol = dd.open_volume("m", false).unwrap();
        let (t0, c0) = (Instant::now(), cpu());
        for (i, chunk) in image.chunks(1 << 20).enumerate() {
            vol.write_at(i as u64 * (1 << 20), chunk).unwrap();
        }
        assert!(vol.close().unwrap().drained);
        let (upload, upload_cpu) = (t0.elapsed(), cpu() - c0);
        drop(vol);
        drop(dd);

        let mut dd = DataDir::open(&t.path().join(format!("b{round}")), Some(&url), cfg.clone()).unwrap();
        let vol = dd.open_volume("m", true).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let t0 = Instant::now();
        for (i, chunk) in image.chunks(1 << 20).enumerate() {
            vol.read_at(i as u64 * (1 << 20), &mut buf).unwrap();
            assert!(buf[..] == chunk[..], "MiB {i} differs");
        }
        let read = t0.elapsed();
        vol.close().unwrap();
        let r = Run {
            upload_mib_s: rate(size, upload),
            cpu_ms_per_mib: upload_cpu.as_secs_f64() * 1000.0 / mib as f64,
            read_mib_s: rate(size, read),
        };
        eprintln!(
            "{:9}: upload {:.1} MiB/s, {:.2} ms CPU per MiB; cold read 1 MiB sequential {:.1} MiB/s",
            if encrypted { "encrypted" } else { "plain" },
            r.upload_mib_s,
            r.cpu_ms_per_mib,
            r.read_mib_s
        );
        results.push((encrypted, r));
    }
    let median = |enc: bool, f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = results.iter().filter(|(e, _)| *e == enc).map(|(_, r)| f(r)).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!("\n{mib} MiB, half random / half text, {rounds} round(s) each (median):");
    println!("{:<32} {:>10} {:>10} {:>8}", "", "plain", "encrypted", "ratio");
    let rows: [Metric; 3] = [
        ("upload MiB/s", |r| r.upload_mib_s),
        ("upload CPU ms per MiB", |r| r.cpu_ms_per_mib),
        ("cold 1 MiB sequential read MiB/s", |r| r.read_mib_s),
    ];
    for (name, f) in rows {
        let (p, e) = (median(false, f), median(true, f));
        println!("{name:<32} {p:>10.2} {e:>10.2} {:>7.2}x", e / p);
    }
}
