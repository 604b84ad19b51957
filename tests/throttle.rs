//! Object store outage: while every put fails, writes fill the write buffer and are then
//! throttled (they block, never fail); when the store returns, uploads drain, the
//! writer finishes, and a fresh host reads every byte from the object store.
//! The failing store wraps the real local store (fault injection only); SCOs go to it by
//! hard link, as by default, and the outage refuses those too.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hooked_store::HookedStore;
use logdisk::backend::uploader::Uploader;
use logdisk::backend::ObjectStore;
use logdisk::volume::read_cache::ReadCache;
use logdisk::volume::{EngineOptions, Volume, VolumeEnv, VolumeMeta};

/// The real local store under `dir`, refusing every write until told otherwise.
fn store_down(dir: &std::path::Path) -> (Arc<HookedStore>, Arc<dyn ObjectStore>) {
    let store = Arc::new(HookedStore::open(&dir.join("objects")));
    store.refuse_writes.store(true, Ordering::SeqCst);
    let dyn_store: Arc<dyn ObjectStore> = store.clone();
    (store, dyn_store)
}

#[test]
fn outage_throttles_writes_and_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (store, dyn_store) = store_down(t.path());
    let opts = EngineOptions {
        wb_limit: 1 << 20,
        frame_size: 16 << 10,
        checkpoint_every: 2,
        seal_after: None,
        drain_timeout: Duration::from_secs(30),
        ..EngineOptions::default()
    };
    let (env, vol) = common::small_volume(dyn_store.clone(), t.path(), opts);

    let image: Vec<u8> = (0..(6u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let (writer, written) = common::spawn_writer(&vol, &image, Duration::ZERO);
    // The writer stalls at about the write-buffer limit while the store is down.
    std::thread::sleep(Duration::from_secs(2));
    let stalled_at = written.load(Ordering::SeqCst);
    assert!(stalled_at < 3 << 20, "writes must be throttled at the limit, got {stalled_at}");
    assert!(stalled_at >= 512 << 10, "writes below the limit must go on, got {stalled_at}");
    assert!(store.refused.load(Ordering::SeqCst) > 0, "uploads were attempted and refused");
    assert!(vol.stats().upload_error.is_some());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(written.load(Ordering::SeqCst), stalled_at, "still throttled");
    // The store comes back: uploads resume, the writer finishes.
    store.refuse_writes.store(false, Ordering::SeqCst);
    let t0 = Instant::now();
    writer.join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(60));
    let report = vol.close().unwrap();
    assert!(report.drained);
    env.uploader.stop();

    // A fresh host reads everything from the object store.
    let env2 = Arc::new(VolumeEnv::new(
        dyn_store.clone(),
        Arc::new(ReadCache::create(&t.path().join("cache2"), 1 << 20, true).unwrap()),
        Uploader::start(1),
        EngineOptions::default(),
    ));
    let meta = VolumeMeta::load(dyn_store.as_ref(), "v").unwrap();
    let vol2 = Volume::open(env2, meta, t.path().join("wb2"), true).unwrap();
    let mut got = vec![0u8; image.len()];
    vol2.read_at(0, &mut got).unwrap();
    assert!(got == image);
}

/// A planned write (io_uring path) reserves all its pieces before any is written; one
/// crossing into a new SCO must not wait for room in the write buffer on its later pieces:
/// that room comes from uploads, and an SCO is uploaded only once every reservation in it
/// (the earlier pieces) has finished. It hung so: 1 MiB writes at QD8 into an 8 MiB buffer
/// of 1 MiB SCOs. Here the store is down, the buffer one cluster short of its limit, and a
/// write crosses from the open SCO into the next.
#[test]
fn a_planned_write_into_a_new_sco_does_not_wait_for_itself() {
    use logdisk::volume::plan::IoPlan;
    use std::os::unix::fs::FileExt;

    let t = tempfile::tempdir().unwrap();
    let (store, dyn_store) = store_down(t.path());
    // 128 KiB SCOs (small_volume), a buffer of two.
    let opts = EngineOptions { wb_limit: 256 << 10, seal_after: None, ..EngineOptions::default() };
    let (env, vol) = common::small_volume(dyn_store, t.path(), opts);
    let first: Vec<u8> = (0..(252u32 << 10)).map(|i| (i % 251) as u8).collect();
    vol.write_at(0, &first).unwrap();

    // 8 KiB: the last cluster of the second SCO (the buffer then holds its limit), then a
    // cluster of a third.
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 241) as u8 ^ 0x5a).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let v = vol.clone();
    let planner = std::thread::spawn(move || {
        let mut plan = IoPlan::default();
        let r = v.plan_write(1 << 20, 8192, &mut plan);
        tx.send(()).unwrap();
        (r.map_err(|e| e.to_string()), plan)
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("planning the write waited for its own first piece");
    let (r, mut plan) = planner.join().unwrap();
    assert!(r.unwrap(), "plannable");
    assert_eq!(plan.segs().len(), 2, "one piece in each SCO");
    let mut at = 0usize;
    for s in plan.segs() {
        // SAFETY: the plan's fd stays open until finish_write; not closed here.
        let f = std::mem::ManuallyDrop::new(unsafe {
            <std::fs::File as std::os::unix::io::FromRawFd>::from_raw_fd(s.fd_buffered)
        });
        f.write_all_at(&data[at..at + s.len as usize], s.file_offset).unwrap();
        at += s.len as usize;
    }
    vol.finish_write(&mut plan, true).unwrap();

    // The store returns; everything drains and reads back.
    store.refuse_writes.store(false, Ordering::SeqCst);
    let mut got = vec![0u8; 8192];
    vol.read_at(1 << 20, &mut got).unwrap();
    assert!(got == data);
    let mut got = vec![0u8; first.len()];
    vol.read_at(0, &mut got).unwrap();
    assert!(got == first);
    assert!(vol.close().unwrap().drained);
    env.uploader.stop();
}
