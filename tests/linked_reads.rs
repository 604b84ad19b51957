//! Reads of SCOs evicted from the write buffer after an upload by hard link: the object
//! store's file is the SCO's own inode, so the volume keeps reading it locally (no object
//! store reads). With hard links off, the same reads go to the object store: the check
//! can tell the two apart.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hooked_store::HookedStore;
use logdisk::backend::ObjectStore;
use logdisk::volume::EngineOptions;

/// Write 4 MiB through a 1 MiB write buffer, wait for every upload, then read it all back;
/// returns the object-store reads of SCO data that the read-back needed.
fn sco_reads_after_eviction(link_local: bool) -> u64 {
    // A real disk (hard links, O_DIRECT) where there is one.
    let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
    let store = Arc::new(HookedStore::open(&t.path().join("objects")));
    let dyn_store: Arc<dyn ObjectStore> = store.clone();
    let opts = EngineOptions {
        wb_limit: 1 << 20,
        frame_size: 16 << 10,
        seal_after: None,
        link_local,
        ..EngineOptions::default()
    };
    let (env, vol) = common::small_volume(dyn_store.clone(), t.path(), opts);

    let image: Vec<u8> = (0..(4u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    for (i, chunk) in image.chunks(64 << 10).enumerate() {
        vol.write_at((i as u64) * (64 << 10), chunk).unwrap();
    }
    vol.seal().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while vol.stats().pending_epochs > 0 {
        assert!(Instant::now() < deadline, "uploads did not finish: {:?}", vol.stats().upload_error);
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = vol.stats();
    assert!(s.wb_bytes + s.kept_bytes <= 1 << 20, "most SCOs are evicted: {} kept", s.kept_bytes);

    store.sco_reads.store(0, Ordering::SeqCst);
    let mut got = vec![0u8; image.len()];
    vol.read_at(0, &mut got).unwrap();
    assert!(got == image, "read back differs (link_local {link_local})");
    let reads = store.sco_reads.load(Ordering::SeqCst);
    vol.close().unwrap();
    env.uploader.stop();
    reads
}

#[test]
fn evicted_hard_linked_scos_are_read_locally() {
    assert_eq!(sco_reads_after_eviction(true), 0, "linked SCOs must be read from their open files");
    assert!(sco_reads_after_eviction(false) > 0, "copied SCOs are read from the object store");
}
