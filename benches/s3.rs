//! S3 benchmark against a real SeaweedFS started on loopback (as the tests do): raw PUT and
//! ranged-GET throughput of the server, then a volume import with the default engine
//! options (32 MiB SCOs, LZ4, 4 uploads at once) on a mixed dataset — upload throughput,
//! write requests per GiB, compression — and a cold sequential read through a fresh host,
//! compared with plain ranged GETs in the same run (target >= 0.8x).
//!
//! Run: `cargo bench --bench s3` (LOGDISK_MEASURE_MIB=256 sets the size,
//! LOGDISK_MEASURE_DATA=random makes the data incompressible).

#[path = "../tests/common/s3.rs"]
mod harness;
#[path = "s3/sustained.rs"]
mod sustained;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};

use harness::shared;

fn main() {
    // RUST_LOG=logdisk=debug shows the engine's throttle and upload events.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    use logdisk::backend::s3::S3Store;
    use logdisk::backend::uploader::Uploader;
    use logdisk::backend::ObjectStore;
    use logdisk::volume::read_cache::ReadCache;
    use logdisk::volume::{EngineOptions, Volume, VolumeEnv, VolumeMeta};

    let mib: u64 = std::env::var("LOGDISK_MEASURE_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    let w = shared();
    let bucket = w.new_bucket("measure");
    let s3 = Arc::new(S3Store::open(&bucket, "", &w.config()).unwrap());
    let store: Arc<dyn ObjectStore> = s3.clone();
    let rate = |bytes: u64, d: Duration| bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();

    // Raw server: 8 MiB objects, 4 at once; then 1 MiB ranged GETs, one at a time.
    let obj: Vec<u8> = {
        let mut rng = StdRng::seed_from_u64(9);
        let mut v = vec![0u8; 8 << 20];
        rng.fill(&mut v[..]);
        v
    };
    let n_raw = 16u64;
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        for t in 0..4 {
            let (s3, obj) = (s3.clone(), &obj);
            sc.spawn(move || {
                for i in (t..n_raw).step_by(4) {
                    s3.put(&format!("raw/{i}"), obj).unwrap();
                }
            });
        }
    });
    let raw_put = rate(n_raw * (8 << 20), t0.elapsed());
    let t0 = Instant::now();
    for i in 0..n_raw {
        for off in (0..8u64 << 20).step_by(1 << 20) {
            assert_eq!(s3.get_range(&format!("raw/{i}"), off, 1 << 20).unwrap().len(), 1 << 20);
        }
    }
    let raw_get = rate(n_raw * (8 << 20), t0.elapsed());
    eprintln!("raw PUT 8 MiB x4 parallel: {raw_put:.1} MiB/s; raw ranged GET 1 MiB sequential: {raw_get:.1} MiB/s");

    // Sustained writes into a small write buffer: the guest's rate must settle at the
    // upload rate without long stalls. Paced and unpaced alternate (same server, same run).
    let wb_mib: u64 = std::env::var("LOGDISK_MEASURE_WB_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(128);
    for pace in [true, false, true, false] {
        sustained::run(&store, wb_mib, pace, raw_put);
    }

    // Mixed dataset in 4 MiB chunks: random, zeros, text, text.
    let size = mib << 20;
    let mut image = vec![0u8; size as usize];
    let mut rng = StdRng::seed_from_u64(3);
    let all_random = std::env::var("LOGDISK_MEASURE_DATA").as_deref() == Ok("random");
    for (i, chunk) in image.chunks_mut(4 << 20).enumerate() {
        match if all_random { 0 } else { i % 4 } {
            0 => rng.fill(chunk),
            1 => {}
            _ => {
                let line = format!("2024-11-23T07:38:37Z host-{i:03} svc[1234]: request id={:08} status=200\n", i * 7);
                for (j, b) in chunk.iter_mut().enumerate() {
                    *b = line.as_bytes()[j % line.len()];
                }
            }
        }
    }
    let t = tempfile::tempdir().unwrap();
    // LOGDISK_MEASURE_CACHE_DIRECT=0: read cache through the page cache (for comparison).
    let cache_direct = std::env::var("LOGDISK_MEASURE_CACHE_DIRECT").as_deref() != Ok("0");
    let env = |name: &str| {
        Arc::new(VolumeEnv::new(
            store.clone(),
            Arc::new(ReadCache::create(&t.path().join(name), 1 << 30, cache_direct).unwrap()),
            Uploader::start(4),
            EngineOptions { wb_limit: 1 << 30, ..EngineOptions::default() },
        ))
    };
    let mut meta = VolumeMeta::new("m", size, 4096, 32 << 20);
    meta.store_new_version(store.as_ref(), true).unwrap();
    let before = s3.stats();
    let env1 = env("cache1");
    let vol = Volume::open(env1.clone(), meta, t.path().join("wb1"), false).unwrap();
    let t0 = Instant::now();
    for (i, chunk) in image.chunks(1 << 20).enumerate() {
        vol.write_at(i as u64 * (1 << 20), chunk).unwrap();
    }
    let written_in = t0.elapsed();
    let report = vol.close().unwrap();
    assert!(report.drained);
    let upload_time = t0.elapsed();
    env1.uploader.stop();
    let st = s3.stats();
    let puts = st.put_requests - before.put_requests;
    let parts = st.part_requests - before.part_requests;
    let mpu = st.multipart_uploads - before.multipart_uploads;
    let requests = puts + parts + 2 * mpu; // + create and complete of each multipart upload
    let stored: u64 = store.list("m/g").unwrap().iter().map(|o| o.size).sum();
    let gib = size as f64 / (1u64 << 30) as f64;
    eprintln!(
        "import {mib} MiB ({}): writes done in {written_in:.2?}, all in S3 after \
         {upload_time:.2?} = {:.1} MiB/s; stored {:.1} MiB in SCOs (ratio {:.2}); {puts} PUTs + {mpu} multipart \
         uploads ({parts} parts) = {requests} write requests = {:.0} per GiB written",
        if all_random { "random" } else { "1/4 random, 1/4 zeros, 1/2 text" },
        rate(size, upload_time),
        stored as f64 / (1 << 20) as f64,
        size as f64 / stored as f64,
        requests as f64 / gib,
    );

    // Cold sequential read through a fresh host.
    let env2 = env("cache2");
    let meta = VolumeMeta::load(store.as_ref(), "m").unwrap();
    let vol = Volume::open(env2.clone(), meta, t.path().join("wb2"), true).unwrap();
    let before = s3.stats();
    let mut buf = vec![0u8; 1 << 20];
    let t0 = Instant::now();
    for (i, chunk) in image.chunks(1 << 20).enumerate() {
        vol.read_at(i as u64 * (1 << 20), &mut buf).unwrap();
        assert!(buf[..] == chunk[..], "MiB {i}");
    }
    let cold = rate(size, t0.elapsed());
    let st = s3.stats();
    eprintln!(
        "cold sequential read 1 MiB at a time: {cold:.1} MiB/s ({:.2}x raw ranged GETs); {} GETs, {:.1} MiB fetched",
        cold / raw_get,
        st.get_requests - before.get_requests,
        (st.bytes_downloaded - before.bytes_downloaded) as f64 / (1 << 20) as f64
    );
    env2.uploader.stop();

    // The same objects read raw in 256 KiB ranges (about what one 1 MiB read fetches).
    let scos = store.list("m/g000001/sco/").unwrap();
    let t0 = Instant::now();
    let mut n = 0u64;
    for o in &scos {
        for off in (0..o.size).step_by(256 << 10) {
            n += s3.get_range(&o.key, off, 256 << 10).unwrap().len() as u64;
        }
    }
    let d = t0.elapsed();
    eprintln!(
        "raw 256 KiB ranged GETs of the SCO objects: {:.1} MiB/s, {:.1} ms per GET",
        rate(n, d),
        d.as_secs_f64() * 1000.0 / (n as f64 / (256 << 10) as f64)
    );
}
