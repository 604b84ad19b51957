//! An SCO sealed early (a scrub pass, a snapshot, the seal timer, a shutdown) gives back
//! its preallocated tail from an uploader thread, not in the seal: the seal runs under the
//! volume lock that every guest IO takes, and freeing blocks there (on ext4 without a
//! journal mounted with `discard`, every freed extent is discarded before the truncate
//! returns) once held guest IO up for 590 ms. The tail goes while uploads are paused too;
//! once uploaded, the SCO file holds its data (plus, adopted by a local directory store,
//! the object's index and footer) and no tail, and the data reads back, also after a
//! restart that found the tail still there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logdisk::backend::local::LocalStore;
use logdisk::backend::uploader::Uploader;
use logdisk::backend::ObjectStore;
use logdisk::volume::read_cache::ReadCache;
use logdisk::volume::{EngineOptions, Volume, VolumeEnv, VolumeMeta};

/// 128 KiB SCOs (32 clusters of 4 KiB).
const SCO_BYTES: u64 = 128 << 10;
/// What the test writes before sealing: 3 clusters.
const DATA: usize = 12 << 10;

/// Volume "v" of `dir`, with `uploaders` upload threads (none: nothing cuts a tail).
fn open(dir: &Path, link_local: bool, paused: bool, uploaders: usize) -> (Arc<VolumeEnv>, Arc<Volume>) {
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(&dir.join("objects")).unwrap());
    if VolumeMeta::load(store.as_ref(), "v").is_err() {
        VolumeMeta::new("v", 8 << 20, 4096, SCO_BYTES).store_new_version(store.as_ref(), true).unwrap();
    }
    let cache = dir.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let env = Arc::new(VolumeEnv::new(
        store.clone(),
        Arc::new(ReadCache::create(&cache, 1 << 20, true).unwrap()),
        Uploader::start(uploaders),
        EngineOptions { seal_after: None, link_local, ..EngineOptions::default() },
    ));
    let meta = VolumeMeta::load(store.as_ref(), "v").unwrap();
    let vol = Volume::open(env.clone(), meta, dir.join("wb"), false).unwrap();
    vol.set_uploads_paused(paused);
    (env, vol)
}

fn image() -> Vec<u8> {
    (0..DATA as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()
}

/// The local SCO files of the volume (there is one here).
fn sco_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("wb").join("sco"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn wait_uploads(vol: &Volume) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while vol.stats().pending_epochs > 0 {
        assert!(Instant::now() < deadline, "uploads did not finish: {:?}", vol.stats().upload_error);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Write 3 clusters and seal early with uploads paused. Returns the sealed SCO's file.
fn write_and_seal(dir: &Path, vol: &Volume) -> PathBuf {
    vol.write_at(0, &image()).unwrap();
    vol.seal().unwrap();
    sco_files(dir).first().expect("an SCO file").clone()
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn read_back(vol: &Volume) {
    let mut got = vec![0u8; DATA];
    vol.read_at(0, &mut got).unwrap();
    assert!(got == image(), "read back differs");
}

/// The sealed SCO after its upload: no tail left. Adopted by the local directory store,
/// the file is the object (data, index, footer); uploaded as a copy, it is the data alone.
fn assert_cut(sealed: &Path, link_local: bool) {
    let len = len(sealed);
    if link_local {
        assert!(len > DATA as u64 && len < DATA as u64 + 4096, "adopted SCO file: {len} bytes");
    } else {
        assert_eq!(len, DATA as u64, "SCO file uploaded as a copy");
    }
}

/// Let `vol` upload everything, check that the tail is cut and the data reads back, close.
fn upload_and_check(env: Arc<VolumeEnv>, vol: Arc<Volume>, sealed: &Path, link_local: bool) {
    vol.set_uploads_paused(false);
    env.uploader.notify();
    wait_uploads(&vol);
    assert_cut(sealed, link_local);
    read_back(&vol);
    vol.close().unwrap();
    env.uploader.stop();
}

#[test]
fn an_early_sealed_scos_tail_is_cut_while_uploads_are_paused() {
    for link_local in [true, false] {
        let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        let (env, vol) = open(t.path(), link_local, true, 2);
        let sealed = write_and_seal(t.path(), &vol);
        let deadline = Instant::now() + Duration::from_secs(10);
        while len(&sealed) != DATA as u64 {
            assert!(Instant::now() < deadline, "the tail was not cut: {} bytes", len(&sealed));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(vol.stats().pending_epochs > 0, "uploads are paused");
        read_back(&vol);
        upload_and_check(env, vol, &sealed, link_local);
    }
}

#[test]
fn a_restart_uploads_and_cuts_an_early_sealed_sco_left_with_its_tail() {
    for link_local in [true, false] {
        let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        // No upload thread: nothing cuts the tail, and the seal itself does not.
        let (env, vol) = open(t.path(), link_local, true, 0);
        let sealed = write_and_seal(t.path(), &vol);
        assert_eq!(len(&sealed), SCO_BYTES, "the seal left the preallocated tail in place");
        vol.close().unwrap();
        env.uploader.stop();
        drop(vol);
        assert_eq!(len(&sealed), SCO_BYTES);
        let (env, vol) = open(t.path(), link_local, false, 2);
        read_back(&vol);
        upload_and_check(env, vol, &sealed, link_local);
    }
}
