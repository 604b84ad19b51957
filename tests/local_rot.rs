//! Bytes that rot in a local SCO file are never returned to a reader.
//!
//! A real volume is served over vhost-user (the test plays the hypervisor, reads go
//! through the io_uring zero-copy path); one byte of a cluster is flipped in the SCO file
//! on disk, behind the daemon's back. Then: in the write buffer (no other copy) the read
//! fails with IOERR and the guest buffer holds none of the bad bytes; once uploaded to a
//! store holding its own copy, the read returns the written data from the object store;
//! uploaded by hard link (the object is the same inode) the read fails. Partial-cluster
//! reads and the engine's own read path (NBD, CLI) are checked the same way. A read-cache
//! block that rots is a miss: the data comes from the object store again.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::vhost::{Vm, QSIZE};
use logdisk::backend::local::LocalStore;
use logdisk::backend::ObjectStore;
use logdisk::frontend::volume_target::VolumeTarget;
use logdisk::frontend::{spawn_device, DeviceHandle, ServeOptions};
use logdisk::volume::{EngineOptions, Volume, VolumeEnv};

const OK: u8 = 0;
const IOERR: u8 = 1;
const CS: usize = 4096;

struct Served {
    _dir: tempfile::TempDir,
    wb: PathBuf,
    env: Arc<VolumeEnv>,
    vol: Arc<Volume>,
    handle: Option<DeviceHandle>,
    vm: Vm,
}

impl Served {
    fn new(link_local: bool) -> Served {
        // A real disk (O_DIRECT, hard links) where there is one.
        let dir = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(&dir.path().join("objects")).unwrap());
        let opts = EngineOptions { seal_after: None, link_local, ..EngineOptions::default() };
        let (env, vol) = common::small_volume(store, dir.path(), opts);
        let socket = dir.path().join("v.sock");
        let target = Arc::new(VolumeTarget::new(vol.clone(), false));
        let sopts = ServeOptions { num_queues: 1, queue_size: QSIZE, ..ServeOptions::default() };
        let handle = spawn_device(&socket, target, &sopts).unwrap();
        let vm = Vm::connect(&socket, 1, true);
        Served { wb: dir.path().join("wb"), _dir: dir, env, vol, handle: Some(handle), vm }
    }

    fn write(&mut self, cluster: u64, data: &[u8]) {
        assert_eq!(self.vm.write(0, cluster * 8, data).0, OK);
        self.vm.reset_bufs();
    }

    /// Write `clusters` of `img` (cluster c at cluster c), then wait for their upload.
    fn write_uploaded(&mut self, img: &[u8], clusters: impl IntoIterator<Item = usize>) {
        for c in clusters {
            self.write(c as u64, cl(img, c));
        }
        self.wait_uploaded();
    }

    fn read(&mut self, byte_off: u64, len: usize) -> (u8, Vec<u8>) {
        assert_eq!(byte_off % 512, 0);
        let (st, _, data) = self.vm.read(0, byte_off / 512, len);
        self.vm.reset_bufs();
        (st, data)
    }

    fn wait_uploaded(&self) {
        self.vol.seal().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.vol.stats().pending_epochs > 0 {
            assert!(Instant::now() < deadline, "uploads did not finish: {:?}", self.vol.stats().upload_error);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rotten_reads(&self) -> u64 {
        self.vol.counters.rotten_reads.load(Ordering::Relaxed)
    }

    fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().unwrap();
        }
        self.vol.close().unwrap();
        self.env.uploader.stop();
    }
}

/// Distinct content per cluster (so a cluster can be found in the SCO files).
fn image(clusters: usize, seed: u32) -> Vec<u8> {
    (0..clusters * CS).map(|i| ((i as u32 ^ seed).wrapping_mul(2654435761) >> 13) as u8).collect()
}

/// The SCO file and offset holding `cluster`'s bytes.
fn locate(wb: &Path, cluster: &[u8]) -> (PathBuf, u64) {
    for e in std::fs::read_dir(wb.join("sco")).unwrap() {
        let path = e.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Some(i) = bytes.chunks(CS).position(|c| c == cluster) {
            return (path, (i * CS) as u64);
        }
    }
    panic!("cluster not found in any SCO file under {}", wb.display());
}

/// Flip one byte of `cluster`'s copy on disk, behind the daemon's back.
fn rot(wb: &Path, cluster: &[u8], at: usize) {
    let (path, off) = locate(wb, cluster);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, off + at as u64).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], off + at as u64).unwrap();
    f.sync_data().unwrap();
}

fn cl(img: &[u8], c: usize) -> &[u8] {
    &img[c * CS..(c + 1) * CS]
}

#[test]
fn rot_in_the_write_buffer_fails_the_read_and_no_bad_byte_reaches_the_guest() {
    let mut s = Served::new(true);
    let img = image(16, 1);
    for c in 0..16 {
        s.write(c as u64, cl(&img, c));
    }
    rot(&s.wb, cl(&img, 5), 100);

    // The zero-copy path: the read fails, the guest buffer holds zeroes, not the bytes read.
    let (st, data) = s.read(5 * CS as u64, CS);
    assert_eq!(st, IOERR, "a rotten cluster must fail the read");
    assert!(data.iter().all(|&b| b == 0), "the failed read's buffer holds bytes read from disk");
    // Neighbours are fine, a read spanning the rotten cluster fails as a whole.
    assert_eq!(s.read(6 * CS as u64, CS), (OK, cl(&img, 6).to_vec()));
    assert_eq!(s.read(4 * CS as u64, CS), (OK, cl(&img, 4).to_vec()));
    assert_eq!(s.read(4 * CS as u64, 3 * CS).0, IOERR);
    // Parts of clusters: the whole cluster is checked.
    assert_eq!(s.read(5 * CS as u64 + 1024, 512).0, IOERR, "the rotten byte is outside this 512 B, the cluster is not");
    assert_eq!(s.read(6 * CS as u64 + 1024, 512), (OK, cl(&img, 6)[1024..1536].to_vec()));
    // The engine's own read path (NBD, export) refuses it too, with a clear error.
    let mut buf = vec![0u8; CS];
    let e = s.vol.read_at(5 * CS as u64, &mut buf).unwrap_err().to_string();
    assert!(e.contains("fails its checksum"), "{e}");
    s.vol.read_at(7 * CS as u64, &mut buf).unwrap();
    assert_eq!(buf, cl(&img, 7));
    assert!(s.rotten_reads() >= 4, "rotten reads counted: {}", s.rotten_reads());
    // A fresh write of the cluster replaces it: reads are good again.
    let new = image(1, 99);
    s.write(5, &new);
    assert_eq!(s.read(5 * CS as u64, CS), (OK, new));
    s.stop();
}

#[test]
fn rot_after_upload_reads_the_object_store_copy() {
    let mut s = Served::new(false);
    let img = image(64, 2);
    // SCO 1: 4 KiB writes. SCO 2: one 128 KiB write. Both checksummed as written.
    for c in 0..32 {
        s.write(c as u64, cl(&img, c));
    }
    s.write(32, &img[32 * CS..]);
    s.wait_uploaded();
    assert!(s.vol.stats().kept_bytes > 0, "the uploaded SCOs stay in the write buffer");
    rot(&s.wb, cl(&img, 3), 7);
    rot(&s.wb, cl(&img, 40), 4095);

    for c in 0..64 {
        let (st, d) = s.read((c * CS) as u64, CS);
        assert!(st == OK && d == cl(&img, c), "cluster {c}: status {st}, data as written: {}", d == cl(&img, c));
    }
    assert_eq!(s.read(40 * CS as u64 + 3584, 512), (OK, cl(&img, 40)[3584..].to_vec()));
    assert!(s.rotten_reads() >= 2, "both rotten clusters were detected: {}", s.rotten_reads());
    let mut buf = vec![0u8; 64 * CS];
    s.vol.read_at(0, &mut buf).unwrap();
    assert!(buf == img, "the engine's read path returns the object store's copy");
    s.stop();
}

#[test]
fn rot_in_a_hard_linked_sco_fails_the_read() {
    let mut s = Served::new(true);
    let img = image(32, 3);
    s.write_uploaded(&img, 0..32);
    // The object store's object is the same inode: no good copy anywhere.
    rot(&s.wb, cl(&img, 9), 0);
    let (st, data) = s.read(9 * CS as u64, CS);
    assert_eq!(st, IOERR);
    assert!(data.iter().all(|&b| b == 0));
    assert_eq!(s.read(10 * CS as u64, CS), (OK, cl(&img, 10).to_vec()));
    s.stop();
}

/// A read-cache block that rotted on the disk is never returned: the read goes to the
/// object store (whose frames carry their own checksums) and the block leaves the cache.
#[test]
fn rot_in_the_read_cache_reads_the_object_store_copy() {
    let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
    let backend = t.path().join("objects");
    let img = image(64, 4);
    {
        let mut a = common::open_dd(&t.path().join("a"), &backend, common::small_config());
        a.create_volume("v", 1 << 20, None, None).unwrap();
        let v = a.open_volume("v", false).unwrap();
        v.write_at(0, &img).unwrap();
        v.close().unwrap();
    }
    // A fresh data dir: every read comes from the object store and fills the cache
    // (with link_local on, objects on this filesystem would be read in place instead).
    let mut cfg = common::small_config();
    cfg.upload.link_local = false;
    let mut b = common::open_dd(&t.path().join("b"), &backend, cfg);
    let v = b.open_volume("v", true).unwrap();
    let cache = b.env().unwrap().cache.clone();
    let mut buf = vec![0u8; img.len()];
    let t0 = Instant::now();
    loop {
        v.read_at(0, &mut buf).unwrap();
        assert!(buf == img);
        let (hits, _) = cache.stats();
        if hits >= 64 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the read cache never filled (hits {hits})");
        std::thread::sleep(Duration::from_millis(20));
    }
    // One bit flips in every block of the cache file.
    let path = t.path().join("b/cache/blocks");
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut byte = [0u8];
    for at in (0..len).step_by(CS).map(|o| o + 77) {
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 0x08], at).unwrap();
    }
    f.sync_data().unwrap();
    let mut again = vec![0u8; img.len()];
    v.read_at(0, &mut again).unwrap();
    assert!(again == img, "bytes from a rotten read-cache block were returned");
    assert!(cache.rotten() >= 1, "the rotten blocks were not detected");
}

/// Scrub reads its victims' live clusters checked as guest reads are: a cluster that
/// rotted in the write buffer is moved from the object store's copy, never copied on with
/// a fresh checksum (which would make the rot undetectable).
#[test]
fn scrub_moves_the_object_store_copy_of_a_rotten_cluster() {
    let mut s = Served::new(false);
    let img = image(64, 8);
    s.write_uploaded(&img, 0..64);
    // SCO 1 (clusters 0..32) keeps 4 live clusters: a scrub victim.
    let new = image(28, 9);
    s.write_uploaded(&new, 0..28);
    rot(&s.wb, cl(&img, 30), 100);
    let rep = s.vol.scrub(0.5).unwrap();
    assert!(rep.moved_bytes >= 4 * CS as u64, "{rep:?}");
    assert!(s.rotten_reads() >= 1, "scrub found the rotten cluster");
    for c in 0..64 {
        let want = if c < 28 { cl(&new, c) } else { cl(&img, c) };
        assert_eq!(s.read((c * CS) as u64, CS), (OK, want.to_vec()), "cluster {c} after scrub");
    }
    s.stop();
}

/// A victim whose live cluster is rotten with no good copy (the object is the same inode)
/// does not fail the pass: the rest of its live data is moved, it is kept with the rotten
/// cluster mapped there (reads of that cluster fail, every other byte reads right), later
/// passes leave it alone, and once the guest rewrites the cluster scrub deletes it.
#[test]
fn scrub_keeps_an_sco_whose_rotten_cluster_has_no_good_copy() {
    let mut s = Served::new(true);
    let img = image(64, 10);
    s.write_uploaded(&img, 0..64);
    // SCOs 1 (clusters 0..32) and 2 (32..64) keep 4 live clusters each: both victims.
    let new = image(64, 11);
    s.write_uploaded(&new, (0..28).chain(32..60));
    rot(&s.wb, cl(&img, 30), 100);
    let want = |c: usize| if c % 32 < 28 { cl(&new, c).to_vec() } else { cl(&img, c).to_vec() };

    let rep = s.vol.scrub(0.5).expect("one rotten cluster must not fail the pass");
    assert_eq!((rep.scos_kept_rotten, rep.rotten_clusters), (1, 1), "{rep:?}");
    assert_eq!(rep.moved_bytes, 7 * CS as u64, "the other 3 + 4 live clusters moved: {rep:?}");
    assert!(rep.scos_deleted >= 1, "SCO 2 was freed: {rep:?}");
    for c in 0..64 {
        if c == 30 {
            assert_eq!(s.read((c * CS) as u64, CS).0, IOERR, "the rotten cluster still fails");
        } else {
            assert_eq!(s.read((c * CS) as u64, CS), (OK, want(c)), "cluster {c} after scrub");
        }
    }
    s.vol.usage();
    assert_eq!(s.vol.space.figures().rotten_scos, 1);

    // The next pass passes it over: the rotten cluster is not read again.
    let before = s.rotten_reads();
    let rep = s.vol.scrub(0.5).unwrap();
    assert_eq!(rep.scos_kept_rotten, 0, "{rep:?}");
    assert_eq!(s.rotten_reads(), before, "the kept SCO was read again");

    // The guest rewrites the cluster: the SCO is dead and goes.
    s.write_uploaded(&new, [30]);
    let rep = s.vol.scrub(0.5).unwrap();
    assert!(rep.scos_deleted >= 1, "{rep:?}");
    s.vol.usage();
    assert_eq!(s.vol.space.figures().rotten_scos, 0);
    for c in 0..64 {
        let w = if c == 30 { cl(&new, 30).to_vec() } else { want(c) };
        assert_eq!(s.read((c * CS) as u64, CS), (OK, w), "cluster {c} after the rewrite");
    }
    s.stop();
}
