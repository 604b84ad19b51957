//! Volumes on a real S3 server (SeaweedFS on loopback): round trip and restart from S3
//! alone on an empty data dir, a damaged SCO frame in the bucket failing only its
//! range, and an outage (server frozen with SIGSTOP during writes: writes throttle, then
//! drain when it resumes, and a fresh host reads every byte).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};

use common::s3::{shared, Weed};
use common::small_config;
use logdisk::backend::sco_object;
use logdisk::config::{ByteSize, Config};
use logdisk::datadir::DataDir;
use logdisk::Error;

const SIZE: u64 = 4 << 20;

fn s3_config(w: &Weed) -> Config {
    let mut c = small_config();
    c.s3 = w.config();
    c
}

fn open_dd(dir: &std::path::Path, url: &str, cfg: Config) -> DataDir {
    DataDir::open(dir, Some(url), cfg).expect("open data dir on S3")
}

fn write_random(vol: &logdisk::volume::Volume, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut image = vec![0u8; SIZE as usize];
    for _ in 0..300 {
        let off = rng.gen_range(0..SIZE / 512) * 512;
        let len = (rng.gen_range(1..=64u64) * 512).min(SIZE - off);
        rng.fill(&mut image[off as usize..(off + len) as usize]);
        vol.write_at(off, &image[off as usize..(off + len) as usize]).unwrap();
    }
    for _ in 0..10 {
        let off = rng.gen_range(0..SIZE / 4096) * 4096;
        let len = (rng.gen_range(1..=8u64) * 4096).min(SIZE - off);
        image[off as usize..(off + len) as usize].fill(0);
        vol.write_zeroes(off, len).unwrap();
    }
    image
}

#[test]
fn round_trip_through_s3_to_an_empty_data_dir() {
    let w = shared();
    let bucket = w.new_bucket("roundtrip");
    let url = format!("s3://{bucket}/cluster-a");
    let t = tempfile::tempdir().unwrap();
    let image = {
        let mut dd = open_dd(&t.path().join("a"), &url, s3_config(w));
        dd.create_volume("v", SIZE, None, None).unwrap();
        let vol = dd.open_volume("v", false).unwrap();
        let image = write_random(&vol, 1);
        let info = dd.volume_info(&vol).unwrap();
        assert_eq!(info.backend, url);
        let json = serde_json::to_string(&info).unwrap();
        assert!(!json.contains(&w.secret_key) && !json.contains(&w.access_key), "{json}");
        let r = vol.close().unwrap();
        assert!(r.drained, "clean close uploads everything");
        image
    };
    // Objects are under the prefix.
    let raw = logdisk::backend::s3::S3Store::open(&bucket, "", &w.config()).unwrap();
    let keys: Vec<String> = logdisk::backend::ObjectStore::list(&raw, "").unwrap().into_iter().map(|o| o.key).collect();
    assert!(!keys.is_empty() && keys.iter().all(|k| k.starts_with("cluster-a/v/")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("/sco/")) && keys.iter().any(|k| k.contains("/tlog/")));

    let mut dd = open_dd(&t.path().join("b"), &url, s3_config(w));
    let names: Vec<_> = dd.list_volumes().unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, vec!["v"]);
    let vol = dd.open_volume("v", false).unwrap();
    let mut got = vec![0u8; SIZE as usize];
    vol.read_at(0, &mut got).unwrap();
    assert!(got == image, "restart from S3 differs");
    vol.write_at(4096, &[7u8; 8192]).unwrap();
    let mut image = image;
    image[4096..4096 + 8192].fill(7);
    assert!(vol.close().unwrap().drained);
    drop(vol);
    drop(dd);
    let mut dd = open_dd(&t.path().join("c"), &url, s3_config(w));
    let vol = dd.open_volume("v", true).unwrap();
    let mut got = vec![0u8; SIZE as usize];
    vol.read_at(0, &mut got).unwrap();
    assert!(got == image, "third host differs");
    // Deleting the volume removes its objects from the bucket.
    vol.close().unwrap();
    drop(vol);
    dd.delete_volume("v").unwrap();
    assert!(dd.list_volumes().unwrap().is_empty());
    assert!(logdisk::backend::ObjectStore::list(&raw, "cluster-a/v/").unwrap().is_empty());
}

#[test]
fn damaged_frame_in_the_bucket_fails_only_its_range() {
    let w = shared();
    let bucket = w.new_bucket("corrupt");
    let url = format!("s3://{bucket}");
    let t = tempfile::tempdir().unwrap();
    let image = {
        let mut dd = open_dd(&t.path().join("a"), &url, s3_config(w));
        dd.create_volume("v", SIZE, None, None).unwrap();
        let vol = dd.open_volume("v", false).unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        let mut image = vec![0u8; SIZE as usize];
        rng.fill(&mut image[..]);
        vol.write_at(0, &image).unwrap();
        assert!(vol.close().unwrap().drained);
        image
    };
    // SCO 1 holds the first 256 KiB (64 clusters) in 16 KiB frames. Damage frame 3 in the
    // bucket: objects are create-only, so delete and put the damaged bytes.
    let mut dd = open_dd(&t.path().join("b"), &url, s3_config(w));
    let store = dd.store().clone();
    let sco_key = store.list("v/g000001/sco/").unwrap().into_iter().map(|o| o.key).min().unwrap();
    let mut obj = store.get(&sco_key).unwrap();
    let index = sco_object::parse_object_index("k", &obj).unwrap();
    let frame = index.frames[3];
    obj[frame.offset as usize + 100] ^= 0x40;
    store.delete(&sco_key).unwrap();
    store.put(&sco_key, &obj).unwrap();

    let vol = dd.open_volume("v", false).unwrap();
    let mut buf = vec![0u8; 4096];
    for (off, len) in [(12 * 4096, 4096), (13 * 4096 + 512, 512), (10 * 4096, 4 * 4096)] {
        let mut b = vec![0u8; len];
        let r = vol.read_at(off, &mut b);
        assert!(matches!(r, Err(Error::Corrupt { .. })), "read {off}+{len} of a damaged frame: {r:?}");
    }
    for c in (0..SIZE / 4096).filter(|c| !(12..16).contains(c)) {
        vol.read_at(c * 4096, &mut buf).unwrap();
        assert!(buf[..] == image[(c * 4096) as usize..((c + 1) * 4096) as usize], "cluster {c}");
    }
    let e: std::io::Error = vol.read_at(12 * 4096, &mut buf).unwrap_err().into();
    assert!(e.to_string().contains("corrupt"), "{e}");
}

/// The S3 server is frozen (SIGSTOP) while a guest writes: writes go on into the write
/// buffer, then block (throttled, never failed); the server resumes, uploads drain, a
/// clean close leaves everything in S3, and a fresh data dir reads every byte. A private
/// server, so freezing it does not disturb the other tests.
#[test]
fn frozen_server_throttles_writes_and_loses_nothing() {
    let w = Weed::start();
    let bucket = w.new_bucket("outage");
    let url = format!("s3://{bucket}/o");
    let t = tempfile::tempdir().unwrap();
    let mut cfg = s3_config(&w);
    cfg.write_buffer.limit = ByteSize(1 << 20);
    cfg.volume.sco_size = ByteSize(128 << 10);
    cfg.s3.write_attempt_timeout_secs = 2;
    cfg.s3.read_attempt_timeout_secs = 2;
    cfg.s3.read_timeout_secs = Some(4);
    cfg.s3.max_attempts = 2;
    let vsize = 8u64 << 20;
    let image: Vec<u8> = (0..(6u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    {
        let mut dd = open_dd(&t.path().join("a"), &url, cfg.clone());
        dd.create_volume("v", vsize, None, None).unwrap();
        let vol = dd.open_volume("v", false).unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let writer = {
            let (vol, image, written) = (vol.clone(), image.clone(), written.clone());
            std::thread::spawn(move || {
                for (i, chunk) in image.chunks(64 << 10).enumerate() {
                    vol.write_at(i as u64 * (64 << 10), chunk).expect("writes are throttled, never failed");
                    written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    // Pace the writer a little so the freeze lands mid-stream.
                    std::thread::sleep(Duration::from_millis(5));
                }
                vol.flush().unwrap();
            })
        };
        while written.load(Ordering::SeqCst) < 512 << 10 {
            std::thread::sleep(Duration::from_millis(5));
        }
        w.freeze();
        let frozen_at = Instant::now();
        // Writes continue into the buffer, then stall at about its limit.
        std::thread::sleep(Duration::from_secs(5));
        let stalled_at = written.load(Ordering::SeqCst);
        assert!(stalled_at < image.len() as u64, "writes must be throttled while S3 is frozen");
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(written.load(Ordering::SeqCst), stalled_at, "still throttled");
        let st = vol.stats();
        assert!(st.wb_bytes >= 512 << 10, "the write buffer holds the un-uploaded data: {}", st.wb_bytes);
        assert!(st.upload_error.is_some(), "uploads failed and are retried: {st:?}");
        let err = st.upload_error.unwrap();
        assert!(!err.contains(&w.secret_key) && !err.contains(&w.access_key), "{err}");
        eprintln!("frozen {:?}: writer stalled at {stalled_at} bytes; upload error: {err}", frozen_at.elapsed());
        w.thaw();
        let t0 = Instant::now();
        writer.join().unwrap();
        eprintln!("writer finished {:?} after the thaw", t0.elapsed());
        let r = vol.close().unwrap();
        assert!(r.drained, "close drains every upload once S3 is back");
        eprintln!("drained {:?} after the thaw", t0.elapsed());
    }
    // A fresh host, S3 alone.
    let mut dd = open_dd(&t.path().join("b"), &url, cfg);
    let vol = dd.open_volume("v", true).unwrap();
    let mut got = vec![0u8; image.len()];
    vol.read_at(0, &mut got).unwrap();
    assert!(got == image, "data lost across the outage");
}

/// Measurements, not a check: `cargo test --test s3_volume measure -- --ignored --nocapture`
/// (size with LOGDISK_MEASURE_MIB, default 256; LOGDISK_MEASURE_DATA=random for
/// incompressible data). Raw PUT and ranged-GET throughput of
/// the server, then a volume import with the default engine options (32 MiB SCOs, LZ4,
/// 4 uploads at once) on a mixed dataset: upload throughput, requests per GiB written,
/// compression, and a cold sequential read through a fresh host.
#[test]
#[ignore]
fn measure_upload_and_cold_read() {
    use logdisk::backend::s3::S3Store;
    use logdisk::backend::sco_reader::ScoReader;
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
        Arc::new(VolumeEnv {
            store: store.clone(),
            reader: Arc::new(ScoReader::new(store.clone())),
            cache: Arc::new(ReadCache::create(&t.path().join(name), 1 << 30, cache_direct).unwrap()),
            uploader: Uploader::start(4),
            opts: EngineOptions { wb_limit: 1 << 30, ..EngineOptions::default() },
        })
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
