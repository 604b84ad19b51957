//! Snapshots, rollback, clones (of clones), templates, flatten and scrub through the
//! management operations the CLI and the daemon use, on a real data dir with a
//! file:// object store: every view reads back exactly the image it must hold, across
//! reopen and a restart from the object store alone.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use common::{fill_pattern, open_dd, small_config};
use logdisk::control::ops;
use logdisk::control::protocol::Request;
use logdisk::datadir::DataDir;
use logdisk::volume::scrub_policy::{Goal, UploadFirst};
use logdisk::volume::Volume;

const MB: u64 = 1 << 20;
const SIZE: u64 = 4 * MB;

fn must(dd: &mut DataDir, served: &ops::Served, req: Request) -> serde_json::Value {
    let what = format!("{req:?}");
    ops::run(dd, served, req).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn refused(dd: &mut DataDir, served: &ops::Served, req: Request, needle: &str) {
    let what = format!("{req:?}");
    match ops::run(dd, served, req) {
        Ok(v) => panic!("{what} should fail, got {v}"),
        Err(e) => assert!(e.to_string().contains(needle), "{what}: {e} lacks {needle:?}"),
    }
}

/// Write pattern `tag` at `[off, off+len)` of both the volume and the model image.
fn write(vol: &Volume, img: &mut [u8], off: u64, len: u64, tag: u64) {
    let r = off as usize..(off + len) as usize;
    fill_pattern(&mut img[r.clone()], tag, off / 512);
    vol.write_at(off, &img[r]).unwrap();
}

fn discard(vol: &Volume, img: &mut [u8], off: u64, len: u64) {
    img[off as usize..(off + len) as usize].fill(0);
    vol.write_zeroes(off, len).unwrap();
}

fn check(vol: &Volume, img: &[u8], what: &str) {
    let mut got = vec![0u8; img.len()];
    vol.read_at(0, &mut got).unwrap();
    if got != img {
        let first = got.iter().zip(img).position(|(a, b)| a != b).unwrap();
        panic!("{what}: differs first at byte {first}");
    }
}

fn create(dd: &mut DataDir, name: &str) {
    must(
        dd,
        &HashMap::new(),
        Request::Create { volume: name.into(), size: SIZE, cluster_size: None, sco_size: None, dtl: None, key: None },
    );
}

fn snap(dd: &mut DataDir, served: &ops::Served, vol: &str, s: &str) {
    must(dd, served, Request::SnapshotCreate { volume: vol.into(), snapshot: s.into() });
}

fn view(dd: &mut DataDir, served: &ops::Served, vol: &str, s: &str) -> Arc<Volume> {
    dd.open_snapshot_view(vol, s, served.get(vol)).unwrap()
}

fn stored_bytes(backend: &Path, vol: &str) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(
                        |e| {
                            if e.path().is_dir() {
                                walk(&e.path())
                            } else {
                                e.metadata().map(|m| m.len()).unwrap_or(0)
                            }
                        },
                    )
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&backend.join(vol))
}

/// A data dir with a file:// store and volume "v", open as if a daemon served it.
fn setup() -> (tempfile::TempDir, std::path::PathBuf, DataDir, Arc<Volume>, ops::Served) {
    let t = tempfile::tempdir().unwrap();
    let backend = t.path().join("objects");
    let mut dd = open_dd(&t.path().join("dd"), &backend, small_config());
    create(&mut dd, "v");
    let v = dd.open_volume("v", false).unwrap();
    let served: ops::Served = HashMap::from([("v".to_string(), v.clone())]);
    (t, backend, dd, v, served)
}

#[test]
fn snapshots_rollback_clones_templates() {
    let (t, backend, mut dd, v, mut served) = setup();

    // A, snapshot s1, B, snapshot s2, C.
    let mut img = vec![0u8; SIZE as usize];
    write(&v, &mut img, 0, SIZE, 1);
    let a = img.clone();
    snap(&mut dd, &served, "v", "s1");
    write(&v, &mut img, 0, 2 * MB, 2);
    let b = img.clone();
    snap(&mut dd, &served, "v", "s2");
    write(&v, &mut img, 3 * MB, MB, 3);
    discard(&v, &mut img, MB, MB / 2);
    let c = img.clone();
    check(&v, &c, "current (C)");
    check(&view(&mut dd, &served, "v", "s1"), &a, "v@s1");
    check(&view(&mut dd, &served, "v", "s2"), &b, "v@s2");
    refused(&mut dd, &served, Request::SnapshotCreate { volume: "v".into(), snapshot: "s1".into() }, "already exists");
    refused(
        &mut dd,
        &served,
        Request::SnapshotCreate { volume: "v".into(), snapshot: ".x".into() },
        "bad snapshot name",
    );

    // What each snapshot alone holds: A's first half only s1; B's discarded half MiB only s2.
    let list = must(&mut dd, &served, Request::SnapshotList { volume: "v".into() });
    let excl: HashMap<String, u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["exclusive_bytes"].as_u64().unwrap()))
        .collect();
    assert_eq!(excl, HashMap::from([("s1".to_string(), 2 * MB), ("s2".to_string(), MB / 2)]));

    // Rollback to s1 (the volume is "served": only with force), then writes go on.
    refused(
        &mut dd,
        &served,
        Request::SnapshotRollback { volume: "v".into(), snapshot: "s1".into(), force: false },
        "while this daemon serves it",
    );
    must(&mut dd, &served, Request::SnapshotRollback { volume: "v".into(), snapshot: "s1".into(), force: true });
    check(&v, &a, "after rollback to s1");
    let mut img = a.clone();
    write(&v, &mut img, 0, MB / 2, 4);
    let ad = img.clone();
    check(&v, &ad, "A+D");

    // Clone of s1, written with E and a discard: parent unchanged.
    must(
        &mut dd,
        &served,
        Request::Clone { source: "v".into(), snapshot: Some("s1".into()), target: "c1".into(), key: None },
    );
    let c1 = dd.open_volume("c1", false).unwrap();
    served.insert("c1".into(), c1.clone());
    let mut c1_img = a.clone();
    check(&c1, &c1_img, "fresh clone = s1");
    write(&c1, &mut c1_img, 2 * MB, MB / 2, 5);
    discard(&c1, &mut c1_img, 3 * MB + MB / 2, MB / 2);
    check(&c1, &c1_img, "c1 = A+E");
    check(&v, &ad, "parent unchanged by its clone");

    // A clone of the clone.
    snap(&mut dd, &served, "c1", "x");
    must(
        &mut dd,
        &served,
        Request::Clone { source: "c1".into(), snapshot: Some("x".into()), target: "c2".into(), key: None },
    );
    let c2 = dd.open_volume("c2", false).unwrap();
    served.insert("c2".into(), c2.clone());
    let mut c2_img = c1_img.clone();
    write(&c2, &mut c2_img, MB, MB, 6);
    check(&c2, &c2_img, "c2");
    check(&c1, &c1_img, "c1 unchanged by its clone");

    // Deletes that would break a clone are refused, naming it.
    refused(&mut dd, &served, Request::SnapshotDelete { volume: "v".into(), snapshot: "s1".into() }, "c1");
    refused(&mut dd, &served, Request::SnapshotDelete { volume: "c1".into(), snapshot: "x".into() }, "c2");
    refused(&mut dd, &HashMap::new(), Request::Delete { volume: "v".into() }, "clones depend on it: c1");
    refused(&mut dd, &HashMap::new(), Request::Delete { volume: "c1".into() }, "c2");
    // Deleting a snapshot nobody depends on works.
    must(&mut dd, &served, Request::SnapshotDelete { volume: "v".into(), snapshot: "s2".into() });

    // Everything survives a reopen (checkpoint + TLog replay, snapshot records).
    for (_, vol) in served.drain() {
        vol.close().unwrap();
    }
    drop((v, c1, c2));
    let v = dd.open_volume("v", false).unwrap();
    check(&v, &ad, "v after reopen");
    let names: Vec<String> = v.snapshots().into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["s1"]);
    v.close().unwrap();
    drop(v);
    check(&view(&mut dd, &HashMap::new(), "v", "s1"), &a, "v@s1 after reopen");
    let c2 = dd.open_volume("c2", false).unwrap();
    check(&c2, &c2_img, "c2 after reopen");
    c2.close().unwrap();
    drop(c2);

    // Flatten c2: it stands alone; then c1@x can go.
    must(&mut dd, &HashMap::new(), Request::Flatten { volume: "c2".into() });
    must(&mut dd, &HashMap::new(), Request::SnapshotDelete { volume: "c1".into(), snapshot: "x".into() });
    let c2 = dd.open_volume("c2", false).unwrap();
    assert!(c2.parent_volumes().is_empty());
    check(&c2, &c2_img, "c2 after flatten");
    c2.close().unwrap();
    drop(c2);

    // Templates: frozen, read-only, cloned without naming a snapshot.
    refused(
        &mut dd,
        &HashMap::new(),
        Request::Clone { source: "v".into(), snapshot: None, target: "t1".into(), key: None },
        "not a template",
    );
    must(&mut dd, &HashMap::new(), Request::SetTemplate { volume: "v".into() });
    must(
        &mut dd,
        &HashMap::new(),
        Request::Clone { source: "v".into(), snapshot: None, target: "t1".into(), key: None },
    );
    let t1 = dd.open_volume("t1", false).unwrap();
    check(&t1, &ad, "clone of the template");
    t1.close().unwrap();
    drop(t1);
    let v = dd.open_volume("v", false).unwrap();
    assert!(v.write_at(0, &[0u8; 4096]).is_err(), "a template is read-only");
    v.close().unwrap();
    drop(v);

    // A fresh host with only the object store sees the same.
    drop(dd);
    let mut dd2 = open_dd(&t.path().join("dd2"), &backend, small_config());
    let c1 = dd2.open_volume("c1", true).unwrap();
    check(&c1, &c1_img, "c1 from the object store");
    c1.close().unwrap();
    let t1 = dd2.open_volume("t1", true).unwrap();
    check(&t1, &ad, "t1 from the object store");
    t1.close().unwrap();
}

#[test]
fn scrub_reclaims_space_and_keeps_every_view() {
    let (t, backend, mut dd, v, mut served) = setup();
    let mut img = vec![0u8; SIZE as usize];
    write(&v, &mut img, 0, SIZE, 1);
    snap(&mut dd, &served, "v", "a");
    write(&v, &mut img, 0, SIZE, 2);
    let b = img.clone();
    snap(&mut dd, &served, "v", "b");
    write(&v, &mut img, 0, SIZE, 3);
    for i in 0..8 {
        // Scattered overwrites leave every SCO partly dead.
        write(&v, &mut img, i * (SIZE / 8), 192 << 10, 10 + i);
    }
    must(&mut dd, &served, Request::SnapshotDelete { volume: "v".into(), snapshot: "a".into() });
    // A clone of b, open while b's data moves.
    must(
        &mut dd,
        &served,
        Request::Clone { source: "v".into(), snapshot: Some("b".into()), target: "c".into(), key: None },
    );
    let c = dd.open_volume("c", false).unwrap();
    served.insert("c".into(), c.clone());
    let bview = view(&mut dd, &served, "v", "b");
    v.close().unwrap(); // everything uploaded; reopen to serve again
    drop(v);
    let v = dd.open_volume("v", false).unwrap();
    served.insert("v".into(), v.clone());

    let before = stored_bytes(&backend, "v");
    let info = dd.volume_info(&v).unwrap();
    assert!(info.garbage_bytes >= 4 * MB, "snapshot a's data is garbage: {}", info.garbage_bytes);
    let r = must(&mut dd, &served, Request::Scrub { volume: "v".into(), threshold: 0.5 });
    assert!(r["scos_deleted"].as_u64().unwrap() >= 16, "{r}");
    assert!(r["scos_rewritten"].as_u64().unwrap() > 0, "{r}");
    check(&v, &img, "current after scrub");
    check(&bview, &b, "served snapshot view after scrub");
    check(&c, &b, "open clone of b after scrub");
    // Every uploaded SCO that is mostly garbage is gone; live data is current + b.
    let r = must(&mut dd, &served, Request::Scrub { volume: "v".into(), threshold: 1.0 });
    assert_eq!(dd.volume_info(&v).unwrap().garbage_bytes, 0, "{r}");
    let after = stored_bytes(&backend, "v");
    assert!(after < before, "{after} < {before}");
    assert!(after <= 8 * MB + 2 * MB, "object store holds {after} bytes for 8 MiB of live data (was {before})");
    check(&v, &img, "current after full scrub");
    check(&c, &b, "clone after full scrub");
    c.close().unwrap();
    v.close().unwrap();
    drop((v, c, bview, served));
    drop(dd);
    // Restart from the object store alone.
    let mut dd2 = open_dd(&t.path().join("dd2"), &backend, small_config());
    let v = dd2.open_volume("v", true).unwrap();
    check(&v, &img, "current from the object store after scrub");
    v.close().unwrap();
    drop(v);
    check(&view(&mut dd2, &HashMap::new(), "v", "b"), &b, "v@b from the object store after scrub");
    let c = dd2.open_volume("c", true).unwrap();
    check(&c, &b, "clone from the object store after scrub");
}

/// Views of a snapshot opened on demand while the volume is served, overwritten and
/// scrubbed read exactly the snapshot, when opened and again after a pass moved its
/// clusters (a registered view is relocated with the volume's maps). This exercises the
/// path of a bug found by the NBD stage of a CI rehearsal (a pass between the view's map
/// copy and its registration deleted SCOs the copy pointed to, fixed by
/// `Volume::without_scrub`), but does not reproduce that interleaving reliably: with the
/// fix reverted it passed 10 runs of 10 here.
#[test]
fn views_opened_while_scrub_moves_the_snapshot_read_it_exactly() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_t, _backend, mut dd, v, served) = setup();
    let mut img = vec![0u8; SIZE as usize];
    write(&v, &mut img, 0, SIZE, 1);
    // Every other 128 KiB written again before the snapshot: the SCOs that hold b are
    // half dead from the start, so passes rewrite them and b's clusters move.
    for k in (0..SIZE / (128 << 10)).step_by(2) {
        write(&v, &mut img, k * (128 << 10), 128 << 10, 2 + k);
    }
    snap(&mut dd, &served, "v", "b");
    let b = img.clone();
    let placed = |v: &Volume| -> Vec<u64> {
        let m = v.snapshot_map("b").unwrap();
        (0..SIZE / 4096).map(|c| m.get(c)).collect()
    };
    let before = placed(&v);
    let stop = AtomicBool::new(false);
    let (mut failure, mut rounds) = (None, 0);
    std::thread::scope(|s| {
        let (v, stop) = (&v, &stop);
        let churn = s.spawn(move || {
            // Scattered overwrites leave the SCOs that hold b partly dead, and passes that
            // do not wait for uploads rewrite them at once: b's clusters keep moving.
            let mut goal = Goal::all_below(1.0);
            goal.upload_first = UploadFirst::No;
            let mut buf = vec![0u8; 64 << 10];
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let off = (i * 7 % (SIZE / (128 << 10))) * (128 << 10);
                fill_pattern(&mut buf, 100 + i, off / 512);
                v.write_at(off, &buf).unwrap();
                v.scrub_pass(&goal, &mut |_| {}).unwrap();
                i += 1;
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while rounds < 30 && std::time::Instant::now() < deadline {
            rounds += 1;
            // Data to upload first: the view's opening waits for it, as it did between
            // copying the map and registering the view.
            let mut fresh = vec![0u8; MB as usize];
            fill_pattern(&mut fresh, 1000 + rounds, MB / 512);
            v.write_at(MB, &fresh).unwrap();
            // No panic while the churn runs (the scope would wait for it forever).
            let view = match dd.open_snapshot_view("v", "b", served.get("v")) {
                Ok(view) => view,
                Err(e) => {
                    failure = Some(format!("round {rounds}: opening v@b: {e}"));
                    break;
                }
            };
            let mut got = vec![0u8; SIZE as usize];
            // Read it, and again after one more pass (registered views are relocated).
            for when in ["opened", "after a pass"] {
                let r = if when == "opened" { Ok(()) } else { v.scrub(1.0).map(|_| ()) };
                match r.and_then(|_| view.read_at(0, &mut got)) {
                    Ok(_) if got == b => {}
                    Ok(_) => failure = Some(format!("round {rounds}, {when}: v@b reads other data")),
                    Err(e) => failure = Some(format!("round {rounds}, {when}: {e}")),
                }
            }
            if failure.is_some() {
                break;
            }
        }
        stop.store(true, Ordering::SeqCst);
        churn.join().unwrap();
    });
    assert_eq!(failure, None, "after {rounds} views");
    // The test is about data that moved: b's half in the half-dead SCOs (its tag-1
    // clusters) must be elsewhere now (its tag-2 half sits in fully live SCOs).
    let after = placed(&v);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert!(moved * 2 >= before.len(), "only {moved} of b's {} clusters moved", before.len());
}
