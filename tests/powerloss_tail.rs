//! Flushes with one device flush, and what a power loss can leave of them.
//!
//! A volume that flushes often writes into zero-filled SCO files; its flushes then write
//! the TLog records ahead of the data's sync and make both durable with the TLog's one
//! fdatasync. A power loss before that sync completes can keep the records and lose the
//! data under them (a device writes its cache back in any order). Recovery must then cut
//! those records, so the clusters keep their older, flushed content instead of reading
//! zeroes or stale bytes. `dm-log-writes` in the guest test cannot produce that state (it
//! replays writes in the order they completed), so it is made here: the crash is a volume
//! dropped without closing, and the lost data is the SCO bytes overwritten afterwards.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use logdisk::backend::local::LocalStore;
use logdisk::backend::uploader::Uploader;
use logdisk::backend::ObjectStore;
use logdisk::volume::read_cache::ReadCache;
use logdisk::volume::{EngineOptions, Volume, VolumeEnv, VolumeMeta};

const CS: usize = 4096;
/// Clusters of the 8 MiB volume.
const CLUSTERS: u64 = 2048;

/// Open volume "v" of `dir` (1 MiB SCOs), uploads paused: the write buffer is the only
/// copy, so a restart replays the local TLogs.
fn open(dir: &Path) -> (Arc<VolumeEnv>, Arc<Volume>) {
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(&dir.join("objects")).unwrap());
    if VolumeMeta::load(store.as_ref(), "v").is_err() {
        VolumeMeta::new("v", CLUSTERS * CS as u64, CS as u32, 1 << 20).store_new_version(store.as_ref(), true).unwrap();
    }
    let cache = dir.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let env = Arc::new(VolumeEnv::new(
        store.clone(),
        Arc::new(ReadCache::create(&cache, 1 << 20, true).unwrap()),
        Uploader::start(0),
        EngineOptions { seal_after: None, ..EngineOptions::default() },
    ));
    let meta = VolumeMeta::load(store.as_ref(), "v").unwrap();
    let vol = Volume::open(env.clone(), meta, dir.join("wb"), false).unwrap();
    vol.set_uploads_paused(true);
    (env, vol)
}

/// A cluster of data no other seed gives (the seed leads it).
fn cluster_data(seed: u64) -> Vec<u8> {
    let mut d: Vec<u8> = (0..CS as u64).map(|i| ((i ^ seed).wrapping_mul(2654435761) >> 13) as u8).collect();
    d[..8].copy_from_slice(&seed.to_le_bytes());
    d
}

/// 4 KiB writes each followed by a flush, until flushes take one device flush (the
/// volume moved to a zero-filled SCO) and 100 more did; returns the volume's content.
fn write_and_flush(vol: &Volume) -> Vec<u8> {
    let mut image = vec![0u8; CLUSTERS as usize * CS];
    let mut i = 0u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while vol.counters.single_flushes.load(Ordering::Relaxed) < 100 {
        assert!(std::time::Instant::now() < deadline, "flushes never took one device flush");
        let c = (i * 37) % CLUSTERS;
        let d = cluster_data(i);
        vol.write_at(c * CS as u64, &d).unwrap();
        vol.flush().unwrap();
        image[c as usize * CS..(c as usize + 1) * CS].copy_from_slice(&d);
        i += 1;
    }
    image
}

fn crash(env: Arc<VolumeEnv>, vol: Arc<Volume>) {
    // No close, no seal, no upload: what a kill -9 leaves (the page cache survives).
    std::mem::forget(vol);
    std::mem::forget(env);
}

fn read_all(vol: &Volume) -> Vec<u8> {
    let mut got = vec![0u8; CLUSTERS as usize * CS];
    vol.read_at(0, &mut got).unwrap();
    got
}

fn assert_image(got: &[u8], want: &[u8], what: &str) {
    if let Some(c) = (0..CLUSTERS as usize).find(|&c| got[c * CS..(c + 1) * CS] != want[c * CS..(c + 1) * CS]) {
        panic!("{what}: cluster {c} differs");
    }
}

/// The local SCO file holding `data`, and where.
fn find_in_scos(dir: &Path, data: &[u8]) -> (std::path::PathBuf, u64) {
    for e in std::fs::read_dir(dir.join("wb/sco")).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        if let Some(at) = bytes.chunks(CS).position(|c| c == data) {
            return (p, (at * CS) as u64);
        }
    }
    panic!("data not found in any SCO file");
}

#[test]
fn flushes_take_one_device_flush_and_a_crash_keeps_every_flushed_write() {
    let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
    let (env, vol) = open(t.path());
    let image = write_and_flush(&vol);
    let flushes = vol.counters.flushes.load(Ordering::Relaxed);
    let singles = vol.counters.single_flushes.load(Ordering::Relaxed);
    eprintln!("{singles} of {flushes} flushes took one device flush");
    crash(env, vol);
    let (_env, vol) = open(t.path());
    assert_image(&read_all(&vol), &image, "after the crash");
    vol.close().unwrap();
}

#[test]
fn records_whose_data_a_power_loss_lost_are_cut() {
    for lost in [None, Some(0u8), Some(0x5a)] {
        let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        let (env, vol) = open(t.path());
        let mut image = write_and_flush(&vol);
        // Two writes completed after the last flush, their records logged (ahead of the
        // data's sync, as a flush that never completed would have written them).
        let (a, b) = (5u64, 6u64);
        let (da, db) = (cluster_data(1 << 40), cluster_data(1 << 41));
        vol.write_at(a * CS as u64, &da).unwrap();
        vol.write_at(b * CS as u64, &db).unwrap();
        vol.log_completed().unwrap();
        crash(env, vol);
        match lost {
            // The power loss kept everything: both writes are there.
            None => {
                for (c, d) in [(a, &da), (b, &db)] {
                    image[c as usize * CS..(c as usize + 1) * CS].copy_from_slice(d);
                }
            }
            // It kept the records, but not the first write's data: zeroes (a zero-filled
            // SCO) or stale bytes (a recycled one) where it went. Both writes are cut (same
            // batch), and the clusters read what the last flush left.
            Some(byte) => {
                let (path, at) = find_in_scos(t.path(), &da);
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                std::os::unix::fs::FileExt::write_all_at(&f, &[byte; CS], at).unwrap();
                f.sync_all().unwrap();
            }
        }
        let (_env, vol) = open(t.path());
        assert_image(&read_all(&vol), &image, &format!("lost data {lost:?}"));
        // The volume goes on: new writes and another restart.
        let d = cluster_data(1 << 42);
        vol.write_at(a * CS as u64, &d).unwrap();
        vol.flush().unwrap();
        image[a as usize * CS..(a as usize + 1) * CS].copy_from_slice(&d);
        vol.close().unwrap();
        let (_env, vol) = open(t.path());
        assert_image(&read_all(&vol), &image, &format!("lost data {lost:?}, restarted again"));
        vol.close().unwrap();
    }
}
