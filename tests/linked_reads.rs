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

/// A 1 MiB write buffer, 16 KiB frames, uploads by hard link or not.
fn options(link_local: bool) -> EngineOptions {
    EngineOptions { wb_limit: 1 << 20, frame_size: 16 << 10, seal_after: None, link_local, ..EngineOptions::default() }
}

/// Write 4 MiB of distinct bytes in 64 KiB writes, seal, wait for every upload; returns
/// what was written.
fn write_image(vol: &logdisk::volume::Volume) -> Vec<u8> {
    let image: Vec<u8> = (0..(4u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    for (i, chunk) in image.chunks(64 << 10).enumerate() {
        vol.write_at((i as u64) * (64 << 10), chunk).unwrap();
    }
    vol.seal().unwrap();
    wait_uploads(vol);
    image
}

/// Write 4 MiB through a 1 MiB write buffer, wait for every upload, then read it all back;
/// returns the object-store reads of SCO data that the read-back needed.
fn sco_reads_after_eviction(link_local: bool) -> u64 {
    // A real disk (hard links, O_DIRECT) where there is one.
    let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
    let store = Arc::new(HookedStore::open(&t.path().join("objects")));
    let dyn_store: Arc<dyn ObjectStore> = store.clone();
    let (env, vol) = common::small_volume(dyn_store.clone(), t.path(), options(link_local));
    let image = write_image(&vol);
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

/// A volume written with 4 MiB through a 1 MiB write buffer, every upload done, closed,
/// and opened again (its hard-linked files closed).
struct Reopened {
    _dir: tempfile::TempDir,
    store: Arc<HookedStore>,
    env: Arc<logdisk::volume::VolumeEnv>,
    vol: Arc<logdisk::volume::Volume>,
    image: Vec<u8>,
}

impl Reopened {
    /// `before_open` acts on the objects directory while the volume is closed.
    fn new(link_local: bool, before_open: impl FnOnce(&std::path::Path)) -> Reopened {
        use logdisk::backend::uploader::Uploader;
        use logdisk::volume::read_cache::ReadCache;
        use logdisk::volume::{Volume, VolumeEnv, VolumeMeta};
        let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        let objects = t.path().join("objects");
        let store = Arc::new(HookedStore::open(&objects));
        let dyn_store: Arc<dyn ObjectStore> = store.clone();
        let opts = options(link_local);
        let image = {
            let (env, vol) = common::small_volume(dyn_store.clone(), t.path(), opts.clone());
            let image = write_image(&vol);
            vol.close().unwrap();
            env.uploader.stop();
            image
        };
        before_open(&objects);
        let cache = ReadCache::create(&t.path().join("cache2"), 1 << 20, true).unwrap();
        let env = Arc::new(VolumeEnv::new(dyn_store.clone(), Arc::new(cache), Uploader::start(2), opts));
        let meta = VolumeMeta::load(dyn_store.as_ref(), "v").unwrap();
        let vol = Volume::open(env.clone(), meta, t.path().join("wb"), false).unwrap();
        store.sco_data_reads.store(0, Ordering::SeqCst);
        Reopened { _dir: t, store, env, vol, image }
    }

    /// Read it all back in reads of `read_size` bytes: the offsets of the reads that
    /// failed as corrupt (any other failure, or a wrong byte, fails the test).
    fn read_back(&self, read_size: usize) -> Vec<u64> {
        let mut corrupt = Vec::new();
        let mut buf = vec![0u8; read_size];
        for (i, want) in self.image.chunks(read_size).enumerate() {
            let at = (i * read_size) as u64;
            match self.vol.read_at(at, &mut buf) {
                Ok(()) => assert!(buf == want, "read at {at} differs"),
                Err(logdisk::Error::Corrupt { .. }) => corrupt.push(at),
                Err(e) => panic!("read at {at}: {e}"),
            }
        }
        corrupt
    }

    /// Object-store reads of SCO data since the volume was opened.
    fn data_reads(&self) -> u64 {
        self.store.sco_data_reads.load(Ordering::SeqCst)
    }

    /// TLog objects in the store.
    fn tlog_objects(&self) -> usize {
        self.store.list("v/").unwrap().iter().filter(|o| o.key.contains("/tlog/")).count()
    }

    fn opened_in_place(&self) -> u64 {
        self.vol.counters.objects_read_in_place.load(Ordering::SeqCst)
    }

    fn close(self) {
        self.vol.close().unwrap();
        self.env.uploader.stop();
    }
}

fn wait_uploads(vol: &logdisk::volume::Volume) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while vol.stats().pending_epochs > 0 {
        assert!(Instant::now() < deadline, "uploads did not finish: {:?}", vol.stats().upload_error);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// After a restart the hard-linked files are closed: the same objects (raw frames at
/// their raw offsets, on the write buffer's filesystem) are opened again and read in
/// place, as they were before it, instead of through the object-store path.
#[test]
fn after_a_restart_adopted_objects_are_read_in_place() {
    // 4 KiB reads check each 16 KiB frame through a bounce buffer, then per cluster;
    // 64 KiB reads of whole frames are checked in the caller's buffer.
    for read_size in [4096, 64 << 10] {
        let r = Reopened::new(true, |_| {});
        // The TLogs were hard-linked into the store too, and the restart replayed them.
        assert!(r.tlog_objects() > 0);
        assert_eq!(r.store.tlog_puts.load(Ordering::SeqCst), 0, "TLogs are adopted, not copied");
        assert!(r.read_back(read_size).is_empty());
        assert!(r.opened_in_place() >= 16, "the evicted SCOs' objects are opened in place: {}", r.opened_in_place());
        assert_eq!(r.data_reads(), 0, "no SCO data is read through the object store");
        r.close();
    }
    let r = Reopened::new(false, |_| {});
    assert!(r.tlog_objects() > 0);
    assert!(r.store.tlog_puts.load(Ordering::SeqCst) > 0, "link_local off: TLogs are written as copies");
    assert!(r.read_back(4096).is_empty());
    assert_eq!(r.opened_in_place(), 0, "link_local off: nothing is read in place");
    assert!(r.data_reads() > 0, "link_local off: SCO data is read through the object store");
    r.close();
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
    let r = Reopened::new(true, rot);
    assert_eq!(r.read_back(4096), [4 * 4096, 5 * 4096, 6 * 4096, 7 * 4096], "exactly the rotten frame's reads fail");
    assert!(r.opened_in_place() > 0);
    r.close();
    let r = Reopened::new(true, rot);
    assert_eq!(r.read_back(16 << 10), [16 << 10], "exactly the rotten frame's read fails");
    r.close();
}

/// Scrub reads the live data of victims whose objects are files here (hard-linked and
/// open, or opened in place after a restart) from those files, checked, and never through
/// the object store; what it moved reads back as written.
#[test]
fn scrub_reads_objects_in_place() {
    let mut r = Reopened::new(true, |_| {});
    // Overwrite three clusters of every four: each old SCO keeps a quarter live.
    let fresh: Vec<u8> = (0..(3 * 4096u32)).map(|i| (i.wrapping_mul(40503) >> 7) as u8).collect();
    for c in (0..1024u64).filter(|c| c % 4 != 0) {
        let at = (c * 4096) as usize;
        let n = 4096 * ((c % 4) as usize);
        r.vol.write_at(at as u64, &fresh[n - 4096..n]).unwrap();
        r.image[at..at + 4096].copy_from_slice(&fresh[n - 4096..n]);
    }
    let rep = r.vol.scrub(0.5).unwrap();
    assert!(rep.moved_bytes >= 1 << 20, "scrub moved the live quarter: {rep:?}");
    assert_eq!(r.data_reads(), 0, "scrub read no SCO data through the object store");
    assert!(r.opened_in_place() > 0);
    wait_uploads(&r.vol);
    assert!(r.read_back(64 << 10).is_empty());
    r.close();
}
