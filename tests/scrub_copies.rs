//! Scrub copies the live clusters of fragmented SCOs right: each 512 KiB window holds many
//! short live runs, written together from where they were read (no packing copy) over
//! reservations that cross SCO boundaries. Every byte reads back as last written after
//! the pass, and again after a restart from the data dir and from the object store alone
//! (the relocations and their checksums were logged, uploaded and replayed).

mod common;

use std::sync::atomic::Ordering::Relaxed;

use common::{open_dd, small_config};

const CS: usize = 4096;
/// 4 MiB: 1 024 clusters, 16 SCOs of 64 clusters (256 KiB).
const CLUSTERS: usize = 1024;

fn stamp(buf: &mut [u8], cluster: usize, round: u64) {
    common::fill_pattern(buf, round, (cluster * CS / 512) as u64);
}

#[test]
fn fragmented_victims_move_whole_and_survive_restarts() {
    let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
    let backend = t.path().join("objects");
    let mut want = vec![0u8; CLUSTERS * CS];
    let mut cfg = small_config();
    cfg.scrub.interval_secs = 0;
    {
        let mut dd = open_dd(&t.path().join("a"), &backend, cfg.clone());
        dd.create_volume("v", (CLUSTERS * CS) as u64, None, None).unwrap();
        let v = dd.open_volume("v", false).unwrap();
        for c in 0..CLUSTERS {
            stamp(&mut want[c * CS..(c + 1) * CS], c, 1);
        }
        v.write_at(0, &want).unwrap();
        // Overwrite clusters in a pattern that leaves live runs of 1 to 3 clusters in
        // every SCO written above.
        for c in (0..CLUSTERS).filter(|c| c % 4 == 1 || c % 7 == 0) {
            stamp(&mut want[c * CS..(c + 1) * CS], c, 2);
            v.write_at((c * CS) as u64, &want[c * CS..(c + 1) * CS]).unwrap();
        }
        // A read of the whole fragmented image takes a device read per run of clusters.
        let mut got = vec![0u8; CLUSTERS * CS];
        v.read_at(0, &mut got).unwrap();
        assert!(got == want, "data before the pass");
        let local_reads = v.counters.local_reads.load(Relaxed);
        assert!(local_reads >= 200, "device reads counted for the fragmented read: {local_reads}");
        let rep = v.scrub(0.99).unwrap();
        assert!(rep.scos_rewritten >= 16, "{rep:?}");
        assert!(rep.moved_bytes >= (CLUSTERS as u64 / 2) * CS as u64, "{rep:?}");
        let scrub_read = v.counters.scrub_read_bytes.load(Relaxed);
        assert!(scrub_read >= rep.moved_bytes, "scrub read {scrub_read} bytes to move {}", rep.moved_bytes);
        let mut got = vec![0u8; CLUSTERS * CS];
        v.read_at(0, &mut got).unwrap();
        assert!(got == want, "data after the pass");
        v.close().unwrap();
    }
    // Restart from the same data dir (the write buffer's copies, checked by the logged
    // checksums), then from the object store alone.
    for dir in ["a", "fresh"] {
        let mut dd = open_dd(&t.path().join(dir), &backend, cfg.clone());
        let v = dd.open_volume("v", false).unwrap();
        let mut got = vec![0u8; CLUSTERS * CS];
        v.read_at(0, &mut got).unwrap();
        for c in 0..CLUSTERS {
            assert!(got[c * CS..(c + 1) * CS] == want[c * CS..(c + 1) * CS], "cluster {c} after a restart ({dir})");
        }
        assert_eq!(v.counters.rotten_reads.load(Relaxed), 0);
        v.close().unwrap();
    }
}
