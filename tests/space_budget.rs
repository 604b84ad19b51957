//! Space budgets and the background scrubber, on real files and the local directory
//! store: writes wait for scrub and then fail with "no space" when live data fills a
//! budget (the store's, or a volume's, which snapshots count against), resume once
//! space is freed (another volume deleted, a snapshot deleted), and lose nothing that
//! was acknowledged. The scrubber never reclaims what a snapshot or a clone reads.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use logdisk::config::{ByteSize, Config};
use logdisk::datadir::DataDir;
use logdisk::volume::scrubber::Scrubber;
use logdisk::volume::Volume;
use logdisk::Error;

const MB: u64 = 1 << 20;
const CHUNK: usize = 64 << 10;

fn config() -> Config {
    let mut c = common::small_config();
    c.scrub.check_interval_ms = 50;
    c.scrub.throttle_timeout_secs = 3;
    c.scrub.min_garbage = Some(ByteSize(512 << 10));
    c.write_buffer.limit = ByteSize(4 << 20);
    c
}

fn scrubber(dd: &mut DataDir, vols: Vec<Arc<Volume>>) -> Scrubber {
    let cfg = dd.config().scrub.clone();
    Scrubber::start(dd.env().unwrap(), Box::new(move || vols.clone()), cfg, dd.root().to_path_buf()).unwrap()
}

fn chunk(tag: u64, at: u64) -> Vec<u8> {
    let mut b = vec![0u8; CHUNK];
    common::fill_pattern(&mut b, tag, at / 512);
    b
}

/// Write chunks of `tag` from `from` on, keeping `image` in step with what was
/// acknowledged, until a write fails; returns that error (or None at `end`).
fn write_until_refused(vol: &Volume, image: &mut [u8], tag: u64, from: u64, end: u64) -> Option<Error> {
    let mut at = from;
    while at < end {
        let b = chunk(tag, at);
        match vol.write_at(at, &b) {
            Ok(()) => image[at as usize..at as usize + CHUNK].copy_from_slice(&b),
            Err(e) => return Some(e),
        }
        at += CHUNK as u64;
    }
    None
}

fn assert_reads(vol: &Volume, image: &[u8], what: &str) {
    let mut buf = vec![0u8; image.len()];
    vol.read_at(0, &mut buf).unwrap();
    for (i, (a, b)) in buf.chunks(4096).zip(image.chunks(4096)).enumerate() {
        assert!(a == b, "{what}: cluster {i} differs");
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn store_budget_refuses_writes_when_full_and_a_delete_frees_it() {
    let t = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.scrub.store_budget = ByteSize(12 * MB);
    cfg.scrub.volume_budget_factor = 0.0;
    let mut dd = common::open_dd(&t.path().join("dd"), &t.path().join("objects"), cfg);
    dd.create_volume("a", 8 * MB, None, None).unwrap();
    dd.create_volume("b", 16 * MB, None, None).unwrap();
    let a = dd.open_volume("a", false).unwrap();
    let mut img_a = vec![0u8; 8 * MB as usize];
    assert!(write_until_refused(&a, &mut img_a, 1, 0, 6 * MB).is_none());
    assert!(a.close().unwrap().drained);
    drop(a);

    let b = dd.open_volume("b", false).unwrap();
    let mut s = scrubber(&mut dd, vec![b.clone()]);
    // Until its first look the scrubber has set no limit on b (under CPU load the writes
    // below went 2 MiB past where the budget stops them before it looked).
    wait_for("the scrubber's first look", 20, || b.space.figures().looks > 0);
    let mut img_b = vec![0u8; 16 * MB as usize];
    // b's fresh data and a's 6 MiB fill the 12 MiB budget: nothing is garbage, so writes
    // wait, then fail with a clear error.
    let t0 = Instant::now();
    let e = write_until_refused(&b, &mut img_b, 2, 0, 16 * MB).expect("the budget stops writes");
    let msg = e.to_string();
    assert!(matches!(e, Error::NoSpace { .. }), "{msg}");
    assert!(msg.contains("budget"), "the error says why: {msg}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    let refused_at = img_b.chunks(CHUNK).position(|c| c.iter().all(|&x| x == 0)).unwrap() as u64 * CHUNK as u64;
    assert!((4 * MB..8 * MB).contains(&refused_at), "refused at {refused_at}");
    let f = b.space.figures();
    assert_eq!(f.state, "full", "{f:?}");
    assert!(f.reason.as_deref().unwrap_or("").contains("object store"), "{f:?}");
    b.flush().unwrap();
    assert_reads(&b, &img_b, "b after refusal");

    // Another volume goes: the next look at the store lets writes go on.
    dd.delete_volume("a").unwrap();
    wait_for("writes to resume", 20, || b.space_admits() && b.space.figures().state != "full");
    assert!(write_until_refused(&b, &mut img_b, 3, refused_at, refused_at + 2 * MB).is_none());
    b.flush().unwrap();
    assert_reads(&b, &img_b, "b after the delete");
    s.stop();
    assert!(b.close().unwrap().drained);
}

#[test]
fn volume_budget_counts_snapshots_and_garbage_is_scrubbed_first() {
    let t = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.scrub.volume_budget_factor = 1.5;
    let mut dd = common::open_dd(&t.path().join("dd"), &t.path().join("objects"), cfg);
    dd.create_volume("v", 8 * MB, None, None).unwrap();
    let v = dd.open_volume("v", false).unwrap();
    let mut s = scrubber(&mut dd, vec![v.clone()]);
    let mut img = vec![0u8; 8 * MB as usize];
    // Overwriting the whole volume three times is fine: scrub keeps the garbage down.
    for tag in 1..=3 {
        assert!(write_until_refused(&v, &mut img, tag, 0, 8 * MB).is_none(), "overwrite {tag}");
        v.flush().unwrap();
    }
    wait_for("a scrub pass", 20, || v.space.figures().scrub_freed_bytes > 0);
    let snap_img = img.clone();
    v.create_snapshot("s1").unwrap();
    // The snapshot keeps 8 MiB live: overwriting more than 3.5 MiB of it passes the
    // 12 MiB budget with live data alone.
    let e = write_until_refused(&v, &mut img, 4, 0, 8 * MB).expect("the budget stops writes");
    assert!(matches!(e, Error::NoSpace { .. }) && e.to_string().contains("budget"), "{e}");
    let f = v.space.figures();
    assert_eq!(f.state, "full", "{f:?}");
    v.flush().unwrap();
    assert_reads(&v, &img, "v after refusal");
    let view = dd.open_snapshot_view("v", "s1", Some(&v)).unwrap();
    assert_reads(&view, &snap_img, "snapshot s1");
    drop(view);

    v.delete_snapshot("s1").unwrap();
    wait_for("writes to resume", 20, || v.space.figures().state != "full" && v.space_admits());
    assert!(write_until_refused(&v, &mut img, 5, 0, 8 * MB).is_none());
    v.flush().unwrap();
    assert_reads(&v, &img, "v after the snapshot was deleted");
    s.stop();
    assert!(v.close().unwrap().drained);
}

#[test]
fn scrubber_keeps_what_snapshots_and_clones_read() {
    let t = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.scrub.garbage_ratio = 0.1;
    let mut dd = common::open_dd(&t.path().join("dd"), &t.path().join("objects"), cfg);
    dd.create_volume("v", 8 * MB, None, None).unwrap();
    let v = dd.open_volume("v", false).unwrap();
    let mut img = vec![0u8; 8 * MB as usize];
    assert!(write_until_refused(&v, &mut img, 1, 0, 8 * MB).is_none());
    v.create_snapshot("s1").unwrap();
    let base = img.clone();
    v.upload_all("test").unwrap();
    let meta = dd.volume_meta("v").unwrap();
    dd.create_clone("c", &meta, Some("s1")).unwrap();
    let c = dd.open_volume("c", false).unwrap();
    let mut img_c = base.clone();
    let mut s = scrubber(&mut dd, vec![v.clone(), c.clone()]);

    // Overwrite v (and a part of c) again and again in scattered chunks.
    for round in 0..6u64 {
        for i in 0..64u64 {
            let at = ((i * 37 + round * 11) % 128) * CHUNK as u64;
            let b = chunk(10 + round, at);
            v.write_at(at, &b).unwrap();
            img[at as usize..at as usize + CHUNK].copy_from_slice(&b);
        }
        let at = round * CHUNK as u64;
        let b = chunk(100 + round, at);
        c.write_at(at, &b).unwrap();
        img_c[at as usize..at as usize + CHUNK].copy_from_slice(&b);
        v.flush().unwrap();
    }
    wait_for("scrub passes on v", 30, || v.space.figures().scrub_freed_bytes > 0);
    // Let it settle (no pass running), then check every reader.
    s.stop();
    let f = v.space.figures();
    assert!(f.scrub_passes > 0 && f.scrub_freed_bytes > 0, "scrub reclaimed space: {f:?}");
    assert_reads(&v, &img, "v");
    assert_reads(&c, &img_c, "clone c");
    let view = dd.open_snapshot_view("v", "s1", Some(&v)).unwrap();
    assert_reads(&view, &base, "snapshot s1");
    drop(view);
    assert!(c.close().unwrap().drained);
    assert!(v.close().unwrap().drained);
}
