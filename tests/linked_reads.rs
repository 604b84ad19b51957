//! Reads of SCOs evicted from the write buffer after an upload by hard link: the object
//! store's file is the SCO's own inode, so the volume keeps reading it locally (no object
//! store reads). With hard links off, the same reads go to the object store: the check
//! can tell the two apart.

mod common;

use std::os::unix::fs::FileExt;
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

/// Write 4 MiB through a 1 MiB write buffer, wait for every upload, close; then open the
/// volume again (its hard-linked files closed), let `before_reading` act on the objects
/// directory, and read it all back in reads of `read_size` bytes. Returns the
/// object-store reads of SCO data, the objects opened in place, and the offsets of the
/// reads that failed as corrupt (any other failure, or a wrong byte, fails the test).
fn read_back_after_restart(
    link_local: bool,
    read_size: usize,
    before_reading: impl FnOnce(&std::path::Path),
) -> (u64, u64, Vec<u64>) {
    use logdisk::backend::uploader::Uploader;
    use logdisk::volume::read_cache::ReadCache;
    use logdisk::volume::{Volume, VolumeEnv, VolumeMeta};
    let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
    let objects = t.path().join("objects");
    let store = Arc::new(HookedStore::open(&objects));
    let dyn_store: Arc<dyn ObjectStore> = store.clone();
    let opts = EngineOptions {
        wb_limit: 1 << 20,
        frame_size: 16 << 10,
        seal_after: None,
        link_local,
        ..EngineOptions::default()
    };
    let image: Vec<u8> = (0..(4u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    {
        let (env, vol) = common::small_volume(dyn_store.clone(), t.path(), opts.clone());
        for (i, chunk) in image.chunks(64 << 10).enumerate() {
            vol.write_at((i as u64) * (64 << 10), chunk).unwrap();
        }
        vol.seal().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while vol.stats().pending_epochs > 0 {
            assert!(Instant::now() < deadline, "uploads did not finish: {:?}", vol.stats().upload_error);
            std::thread::sleep(Duration::from_millis(20));
        }
        vol.close().unwrap();
        env.uploader.stop();
    }
    before_reading(&objects);
    let cache = ReadCache::create(&t.path().join("cache2"), 1 << 20, true).unwrap();
    let env = Arc::new(VolumeEnv::new(dyn_store.clone(), Arc::new(cache), Uploader::start(2), opts));
    let meta = VolumeMeta::load(dyn_store.as_ref(), "v").unwrap();
    let vol = Volume::open(env.clone(), meta, t.path().join("wb"), false).unwrap();
    store.sco_data_reads.store(0, Ordering::SeqCst);
    let mut corrupt = Vec::new();
    let mut buf = vec![0u8; read_size];
    for (i, want) in image.chunks(read_size).enumerate() {
        let at = (i * read_size) as u64;
        match vol.read_at(at, &mut buf) {
            Ok(()) => assert!(buf == want, "read at {at} differs (link_local {link_local})"),
            Err(logdisk::Error::Corrupt { .. }) => corrupt.push(at),
            Err(e) => panic!("read at {at}: {e}"),
        }
    }
    let reads = store.sco_data_reads.load(Ordering::SeqCst);
    let opened = vol.counters.objects_read_in_place.load(Ordering::SeqCst);
    vol.close().unwrap();
    env.uploader.stop();
    (reads, opened, corrupt)
}

/// After a restart the hard-linked files are closed: the same objects (raw frames at
/// their raw offsets, on the write buffer's filesystem) are opened again and read in
/// place, as they were before it, instead of through the object-store path.
#[test]
fn after_a_restart_adopted_objects_are_read_in_place() {
    // 4 KiB reads check each 16 KiB frame through a bounce buffer, then per cluster;
    // 64 KiB reads of whole frames are checked in the caller's buffer.
    for read_size in [4096, 64 << 10] {
        let (reads, opened, corrupt) = read_back_after_restart(true, read_size, |_| {});
        assert!(corrupt.is_empty(), "{corrupt:?}");
        assert!(opened >= 16, "the evicted SCOs' objects are opened in place: {opened}");
        assert_eq!(reads, 0, "no SCO data is read through the object store");
    }
    let (reads, opened, _) = read_back_after_restart(false, 4096, |_| {});
    assert_eq!(opened, 0, "link_local off: nothing is read in place");
    assert!(reads > 0, "link_local off: SCO data is read through the object store");
}

/// An object read in place is checked against its frames' checksums: a byte that rotted
/// in it fails the reads of its frame only (as through the object-store path), and no
/// wrong byte is returned.
#[test]
fn rot_in_an_object_read_in_place_fails_only_its_frame() {
    let rot = |objects: &std::path::Path| {
        let dir = objects.join("v/g000001/sco");
        let oldest = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).min().unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&oldest).unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, 5 * 4096 + 7).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], 5 * 4096 + 7).unwrap();
        f.sync_all().unwrap();
    };
    // The first SCO holds the volume's first clusters in order; a frame is 4 clusters.
    let (_, opened, corrupt) = read_back_after_restart(true, 4096, rot);
    assert!(opened > 0);
    assert_eq!(corrupt, [4 * 4096, 5 * 4096, 6 * 4096, 7 * 4096], "exactly the rotten frame's reads fail");
    let (_, _, corrupt) = read_back_after_restart(true, 16 << 10, rot);
    assert_eq!(corrupt, [16 << 10], "exactly the rotten frame's read fails");
}
