//! A crash while an epoch is opened, between creating its SCO file and its TLog (the
//! child aborts there, as kill -9 would), loses nothing and leaves no gap in the epoch
//! sequence: the restart removes the orphan SCO file and numbers the next epoch as if it
//! never existed, so the restart after that (a second crash, before any checkpoint covers
//! the epochs) replays every TLog. A CI run of the reconnect test refused that second
//! restart ("TLog missing from both the object store and the local write buffer").

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use logdisk::backend::local::LocalStore;
use logdisk::backend::uploader::Uploader;
use logdisk::backend::ObjectStore;
use logdisk::volume::read_cache::ReadCache;
use logdisk::volume::{EngineOptions, Volume, VolumeEnv, VolumeMeta};

const FAULT: &str = "roll-before-tlog";

/// Open volume "v" of `dir` with `uploaders` upload threads (none: the write buffer is
/// the only copy, and nothing runs on behind a simulated crash).
fn open(dir: &Path, uploaders: usize) -> (Arc<VolumeEnv>, Arc<Volume>) {
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(&dir.join("objects")).unwrap());
    if VolumeMeta::load(store.as_ref(), "v").is_err() {
        VolumeMeta::new("v", 8 << 20, 4096, 128 << 10).store_new_version(store.as_ref(), true).unwrap();
    }
    let cache = dir.join(format!("cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let env = Arc::new(VolumeEnv::new(
        store.clone(),
        Arc::new(ReadCache::create(&cache, 1 << 20, true).unwrap()),
        Uploader::start(uploaders),
        EngineOptions { seal_after: None, ..EngineOptions::default() },
    ));
    let meta = VolumeMeta::load(store.as_ref(), "v").unwrap();
    let vol = Volume::open(env.clone(), meta, dir.join("wb"), false).unwrap();
    vol.set_uploads_paused(uploaders == 0);
    (env, vol)
}

fn image(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| ((i ^ seed).wrapping_mul(2654435761) >> 13) as u8).collect()
}

/// The child: opens the volume and writes; the fault aborts it in the first epoch's roll.
#[test]
fn roll_crash_child() {
    let Ok(dir) = std::env::var("LOGDISK_ROLL_CRASH_CHILD") else { return };
    let (_env, vol) = open(Path::new(&dir), 0);
    vol.write_at(0, &image(64 << 10, 1)).unwrap();
    panic!("the fault point {FAULT} was not reached");
}

#[test]
fn a_crash_between_an_epochs_sco_file_and_its_tlog_leaves_no_gap() {
    let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
    let dir = t.path();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "roll_crash_child", "--nocapture"])
        .env("LOGDISK_ROLL_CRASH_CHILD", dir)
        .env("LOGDISK_FAULT", FAULT)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("aborting at {FAULT}")), "the child did not die at {FAULT}: {err}");
    let orphans: Vec<_> = std::fs::read_dir(dir.join("wb/sco")).unwrap().collect();
    let tlogs: Vec<_> = std::fs::read_dir(dir.join("wb/tlog")).unwrap().collect();
    assert_eq!((orphans.len(), tlogs.len()), (1, 0), "the crash left an SCO file without a TLog");

    // First restart: writes several epochs (SCOs of 128 KiB), flushed, then a crash (no
    // close: no checkpoint covers them).
    let img = image(1 << 20, 2);
    {
        let (env, vol) = open(dir, 0);
        for (i, c) in img.chunks(64 << 10).enumerate() {
            vol.write_at((i * (64 << 10)) as u64, c).unwrap();
        }
        vol.flush().unwrap();
        std::mem::forget(vol);
        std::mem::forget(env);
    }
    // Second restart: every epoch replays, every flushed byte is there.
    let (env, vol) = open(dir, 1);
    let mut got = vec![0u8; img.len()];
    vol.read_at(0, &mut got).unwrap();
    assert!(got == img, "data written after the first restart differs");
    assert!(vol.close().unwrap().drained, "every epoch uploads");
    env.uploader.stop();
}
