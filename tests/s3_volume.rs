//! Volumes on a real S3 server (SeaweedFS on loopback): round trip and restart from S3
//! alone on an empty data dir, a damaged SCO frame in the bucket failing only its
//! range, and an outage (server frozen with SIGSTOP during writes: writes throttle, then
//! drain when it resumes, and a fresh host reads every byte).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};

use common::s3::{shared, Weed};
use common::{damage_frame_and_check, small_config, spawn_writer, write_random};
use logdisk::config::{ByteSize, Config};
use logdisk::datadir::DataDir;

const SIZE: u64 = 4 << 20;

fn s3_config(w: &Weed) -> Config {
    let mut c = small_config();
    c.s3 = w.config();
    c
}

fn open_dd(dir: &std::path::Path, url: &str, cfg: Config) -> DataDir {
    DataDir::open(dir, Some(url), cfg).expect("open data dir on S3")
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
        let image = write_random(&vol, SIZE, 1);
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
    let mut dd = open_dd(&t.path().join("b"), &url, s3_config(w));
    let vol = dd.open_volume("v", false).unwrap();
    damage_frame_and_check(dd.store().as_ref(), &vol, &image);
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
        // Pace the writer a little so the freeze lands mid-stream.
        let (writer, written) = spawn_writer(&vol, &image, Duration::from_millis(5));
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
