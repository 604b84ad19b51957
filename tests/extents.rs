//! The engine queries behind NBD block status and incremental backups, on a real data
//! dir: `Volume::extents` reports data exactly where clusters hold data (a clone's
//! inherited clusters included, discarded ones not), and `Volume::snapshot_diff` lists
//! exactly the clusters written or zeroed between two snapshots — a clone's discard over
//! parent data counts, a discard of what already read as zeroes does not.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{open_dd, small_config};
use logdisk::control::ops;
use logdisk::control::protocol::Request;
use logdisk::volume::extents::{ChangedExtent, Extent};
use logdisk::volume::Volume;

const CS: u64 = 4096;
const SIZE: u64 = 4 << 20;

fn runs(vol: &Volume, off: u64, len: u64) -> Vec<Extent> {
    let mut v = Vec::new();
    vol.extents(off, len, |e| {
        v.push(e);
        true
    })
    .unwrap();
    v
}

/// The runs a per-cluster model says a range has.
fn model_runs(model: &[bool], off: u64, len: u64) -> Vec<Extent> {
    let mut v: Vec<Extent> = Vec::new();
    let end = off + len;
    let mut pos = off;
    while pos < end {
        let c = pos / CS;
        let stop = ((c + 1) * CS).min(end);
        let data = model[c as usize];
        match v.last_mut() {
            Some(e) if e.data == data => e.len += stop - pos,
            _ => v.push(Extent { offset: pos, len: stop - pos, data }),
        }
        pos = stop;
    }
    v
}

fn write(vol: &Volume, model: &mut [bool], first: u64, n: u64) {
    vol.write_at(first * CS, &vec![0xa5; (n * CS) as usize]).unwrap();
    model[first as usize..(first + n) as usize].fill(true);
}

fn zero(vol: &Volume, model: &mut [bool], first: u64, n: u64) {
    vol.write_zeroes(first * CS, n * CS).unwrap();
    model[first as usize..(first + n) as usize].fill(false);
}

fn ext(c: u64, n: u64, data: bool) -> ChangedExtent {
    ChangedExtent { offset: c * CS, length: n * CS, data }
}

fn run(dd: &mut logdisk::datadir::DataDir, served: &ops::Served, req: Request) -> serde_json::Value {
    ops::run(dd, served, req).unwrap()
}

#[test]
fn extents_and_snapshot_diffs_follow_the_maps() {
    let t = tempfile::tempdir().unwrap();
    let mut dd = open_dd(&t.path().join("dd"), &t.path().join("objects"), small_config());
    let none = HashMap::new();
    run(
        &mut dd,
        &none,
        Request::Create { volume: "v".into(), size: SIZE, cluster_size: None, sco_size: None, dtl: None, key: None },
    );
    let v = dd.open_volume("v", false).unwrap();
    let served: ops::Served = HashMap::from([("v".to_string(), v.clone())]);
    let mut model = vec![false; (SIZE / CS) as usize];

    assert_eq!(runs(&v, 0, SIZE), vec![Extent { offset: 0, len: SIZE, data: false }]);
    write(&v, &mut model, 10, 10);
    zero(&v, &mut model, 15, 1);
    // A partial-cluster write holds data in that cluster.
    v.write_at(500 * CS + 100, &[1u8; 10]).unwrap();
    model[500] = true;
    assert_eq!(runs(&v, 0, SIZE), model_runs(&model, 0, SIZE));
    // Unaligned ranges are clipped to what was asked.
    assert_eq!(runs(&v, 10 * CS + 100, 5000), vec![Extent { offset: 10 * CS + 100, len: 5000, data: true }]);
    assert_eq!(runs(&v, 14 * CS + 7, 2 * CS), model_runs(&model, 14 * CS + 7, 2 * CS));
    assert!(v.extents(SIZE - CS, 2 * CS, |_| true).is_err(), "a range beyond the end is refused");
    // The visitor can stop early.
    let mut n = 0;
    v.extents(0, SIZE, |_| {
        n += 1;
        n < 2
    })
    .unwrap();
    assert_eq!(n, 2);

    run(&mut dd, &served, Request::SnapshotCreate { volume: "v".into(), snapshot: "a".into() });
    write(&v, &mut model, 12, 1);
    zero(&v, &mut model, 18, 2);
    write(&v, &mut model, 100, 1);
    zero(&v, &mut model, 700, 5); // already zero: no change
    run(&mut dd, &served, Request::SnapshotCreate { volume: "v".into(), snapshot: "b".into() });
    assert_eq!(v.snapshot_diff("a", "b").unwrap(), vec![ext(12, 1, true), ext(18, 2, false), ext(100, 1, true)]);
    assert_eq!(v.snapshot_diff("b", "b").unwrap(), vec![]);
    assert!(v.snapshot_diff("a", "nope").is_err());
    let d = run(&mut dd, &served, Request::SnapshotDiff { volume: "v".into(), from: "a".into(), to: "b".into() });
    assert_eq!(d["data_bytes"], 2 * CS);
    assert_eq!(d["zeroed_bytes"], 2 * CS);

    // A clone of v@b: inherited clusters are data; its own discards over them are holes.
    run(
        &mut dd,
        &served,
        Request::Clone { source: "v".into(), snapshot: Some("b".into()), target: "c".into(), key: None },
    );
    let c: Arc<Volume> = dd.open_volume("c", false).unwrap();
    let cserved: ops::Served = HashMap::from([("c".to_string(), c.clone())]);
    let mut cmodel = model.clone();
    assert_eq!(runs(&c, 0, SIZE), model_runs(&cmodel, 0, SIZE));
    run(&mut dd, &cserved, Request::SnapshotCreate { volume: "c".into(), snapshot: "x".into() });
    zero(&c, &mut cmodel, 10, 1); // over parent data: changed, now zero
    zero(&c, &mut cmodel, 300, 2); // over nothing: reads zero before and after
    write(&c, &mut cmodel, 200, 1);
    run(&mut dd, &cserved, Request::SnapshotCreate { volume: "c".into(), snapshot: "y".into() });
    assert_eq!(runs(&c, 0, SIZE), model_runs(&cmodel, 0, SIZE));
    assert_eq!(c.snapshot_diff("x", "y").unwrap(), vec![ext(10, 1, false), ext(200, 1, true)]);
    c.close().unwrap();
    v.close().unwrap();
}
