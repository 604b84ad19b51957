//! Cluster checksums survive a restart: they are logged in the TLog with the records that
//! map the data, so bytes that rot in a local SCO file while (or after) the daemon was
//! down are detected on read, never returned. Real files: a volume is written with its
//! uploads paused (the write buffer is the only copy), closed cleanly or abandoned as a
//! crash leaves it (no close, an unsealed TLog), reopened on the same directory, and one
//! byte of a cluster is flipped in the SCO file on disk.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use logdisk::backend::local::LocalStore;
use logdisk::backend::uploader::Uploader;
use logdisk::backend::ObjectStore;
use logdisk::volume::read_cache::ReadCache;
use logdisk::volume::{EngineOptions, Volume, VolumeEnv, VolumeMeta};

const CS: usize = 4096;

/// Distinct content per cluster (so a cluster can be found in the SCO files).
fn image(clusters: usize, seed: u32) -> Vec<u8> {
    (0..clusters * CS).map(|i| ((i as u32 ^ seed).wrapping_mul(2654435761) >> 13) as u8).collect()
}

fn cl(img: &[u8], c: usize) -> &[u8] {
    &img[c * CS..(c + 1) * CS]
}

/// Flip one byte of every copy of `cluster` in the SCO files under `wb`, behind the
/// engine's back.
fn rot(wb: &Path, cluster: &[u8], at: u64) {
    let mut found = false;
    for e in std::fs::read_dir(wb.join("sco")).unwrap() {
        let path = e.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Some(i) = bytes.chunks(CS).position(|c| c == cluster) {
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
            let off = (i * CS) as u64 + at;
            let mut b = [0u8];
            f.read_exact_at(&mut b, off).unwrap();
            f.write_all_at(&[b[0] ^ 0x10], off).unwrap();
            f.sync_data().unwrap();
            found = true;
        }
    }
    assert!(found, "cluster not found in any SCO file under {}", wb.display());
}

struct Host {
    _dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
    wb: PathBuf,
    cache: PathBuf,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(&dir.path().join("objects")).unwrap());
        let mut meta = VolumeMeta::new("v", 8 << 20, CS as u32, 128 << 10);
        meta.store_new_version(store.as_ref(), true).unwrap();
        Host { wb: dir.path().join("wb"), cache: dir.path().join("cache"), store, _dir: dir }
    }

    /// Open the volume with no upload thread at all: nothing reads the SCOs back (which
    /// would take checksums of whatever is on the disk), the write buffer is the only copy.
    fn open(&self) -> (Arc<VolumeEnv>, Arc<Volume>) {
        let (env, vol) = self.open_with(0);
        vol.set_uploads_paused(true);
        (env, vol)
    }

    /// Open the volume with `uploaders` upload threads, uploads running.
    fn open_with(&self, uploaders: usize) -> (Arc<VolumeEnv>, Arc<Volume>) {
        let _ = std::fs::remove_dir_all(&self.cache);
        let env = Arc::new(VolumeEnv::new(
            self.store.clone(),
            Arc::new(ReadCache::create(&self.cache, 1 << 20, true).unwrap()),
            Uploader::start(uploaders),
            EngineOptions { seal_after: None, ..EngineOptions::default() },
        ));
        let meta = VolumeMeta::load(self.store.as_ref(), "v").unwrap();
        let vol = Volume::open(env.clone(), meta, self.wb.clone(), false).unwrap();
        (env, vol)
    }
}

/// 20 clusters written one by one, then one 40-cluster write (three checksum records; it
/// spans two SCOs of 32 clusters) at cluster 64. Returns the image of clusters 0..104.
fn write_all(vol: &Volume) -> Vec<u8> {
    let img = image(104, 7);
    for c in 0..20 {
        vol.write_at((c * CS) as u64, cl(&img, c)).unwrap();
    }
    vol.write_at((64 * CS) as u64, &img[64 * CS..104 * CS]).unwrap();
    vol.flush().unwrap();
    img
}

/// Reads of the rotten clusters fail with a checksum error; every other written cluster
/// reads back as written.
fn check(vol: &Volume, img: &[u8], rotten: &[usize]) {
    let mut buf = vec![0u8; CS];
    for c in (0..20).chain(64..104) {
        let r = vol.read_at((c * CS) as u64, &mut buf);
        if rotten.contains(&c) {
            let e = r.expect_err(&format!("cluster {c}: rotten bytes were returned")).to_string();
            assert!(e.contains("fails its checksum"), "cluster {c}: {e}");
        } else {
            r.unwrap();
            assert!(buf == cl(img, c), "cluster {c} differs");
        }
    }
    // A read spanning a rotten cluster fails as a whole; a partial read of it too.
    let mut big = vec![0u8; 40 * CS];
    assert!(vol.read_at((64 * CS) as u64, &mut big).is_err());
    assert!(vol.read_at((rotten[0] * CS + 512) as u64, &mut buf[..512]).is_err());
    assert!(vol.counters.rotten_reads.load(Ordering::Relaxed) >= rotten.len() as u64);
}

#[test]
fn rot_after_a_clean_restart_is_detected() {
    let h = Host::new();
    let img = {
        let (env, vol) = h.open();
        let img = write_all(&vol);
        let r = vol.close().unwrap();
        assert!(!r.drained, "uploads are paused: the write buffer is the only copy");
        env.uploader.stop();
        img
    };
    // Rot while the daemon is down: one 4 KiB write's cluster, clusters of the large
    // write in each SCO it spans, at the first and the last byte of a cluster.
    rot(&h.wb, cl(&img, 5), 100);
    rot(&h.wb, cl(&img, 70), 0);
    rot(&h.wb, cl(&img, 101), 4095);
    let (env, vol) = h.open();
    check(&vol, &img, &[5, 70, 101]);
    vol.close().unwrap();
    env.uploader.stop();
}

#[test]
fn rot_after_a_crash_is_detected() {
    let h = Host::new();
    let (env, vol) = h.open();
    let img = write_all(&vol);
    // A crash: no close, no seal; the files are as the last flush left them.
    std::mem::forget(vol);
    std::mem::forget(env);
    let (env, vol) = h.open();
    // Rot after the restart this time, while the volume is open.
    rot(&h.wb, cl(&img, 19), 2048);
    rot(&h.wb, cl(&img, 88), 1);
    check(&vol, &img, &[19, 88]);
    // Rewriting a rotten cluster makes it readable again.
    vol.write_at((19 * CS) as u64, cl(&img, 3)).unwrap();
    let mut buf = vec![0u8; CS];
    vol.read_at((19 * CS) as u64, &mut buf).unwrap();
    assert!(buf == cl(&img, 3));
    vol.close().unwrap();
    env.uploader.stop();
}

/// Scrub copies the live clusters of a mostly dead SCO into the open one: the copies get
/// checksums as they are written, logged too, so rot in them is caught after a restart.
/// Scrub uploads that epoch and a checkpoint covers it: the SCO is kept in the write
/// buffer, its TLog only in the object store, where the restart reads its checksums from.
#[test]
fn rot_in_clusters_scrub_moved_is_detected_after_a_restart() {
    let h = Host::new();
    let img = image(32, 11);
    let (env, vol) = h.open_with(2);
    // SCO 1: clusters 0..32; then 0..28 are overwritten, SCO 1 keeps 4 live clusters.
    for c in 0..32 {
        vol.write_at((c * CS) as u64, cl(&img, c)).unwrap();
    }
    let new = image(28, 12);
    vol.write_at(0, &new).unwrap();
    let rep = vol.scrub(0.5).unwrap();
    assert!(rep.scos_rewritten >= 1 && rep.moved_bytes >= 4 * CS as u64, "{rep:?}");
    vol.set_uploads_paused(true);
    vol.flush().unwrap();
    vol.close().unwrap();
    env.uploader.stop();
    drop((vol, env));

    let (env, vol) = h.open();
    rot(&h.wb, cl(&img, 30), 9);
    let mut buf = vec![0u8; CS];
    // Hard-linked upload: the object is the same rotten inode, its frame check fails too
    // (and once the SCO is known rotten, reads of its neighbours go to that frame).
    let e = vol.read_at((30 * CS) as u64, &mut buf).expect_err("the rotten moved cluster was returned");
    assert!(e.to_string().contains("checksum"), "{e}");
    for c in 28..32 {
        match vol.read_at((c * CS) as u64, &mut buf) {
            Ok(()) => assert!(buf == cl(&img, c), "cluster {c}: wrong bytes returned"),
            Err(e) => assert!(e.to_string().contains("checksum"), "cluster {c}: {e}"),
        }
    }
    assert!(vol.counters.rotten_reads.load(Ordering::Relaxed) >= 1, "the rotten moved cluster was not detected");
    vol.close().unwrap();
    env.uploader.stop();
}
