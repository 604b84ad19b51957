//! A read that looked up where its data is, then found the object gone because a scrub
//! pass moved the data and deleted the old SCO in between, reads it again from its new
//! place: of the volume itself and of a snapshot view. A CI run of the NBD stage lost a
//! read of a snapshot export this way (`nbdcopy` saw EIO while passes ran back to back).
//! The hooked store makes the interleaving exact: the pass runs just before the read's
//! first object-store request.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hooked_store::HookedStore;
use logdisk::backend::ObjectStore;
use logdisk::volume::{EngineOptions, Volume};

const MB: u64 = 1 << 20;

fn pattern(len: u64, tag: u64) -> Vec<u8> {
    (0..len).map(|i| ((i.wrapping_add(tag * 7919)).wrapping_mul(2654435761) >> 13) as u8).collect()
}

fn wait_uploads(vol: &Volume) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while vol.stats().pending_epochs > 0 {
        assert!(Instant::now() < deadline, "uploads did not finish: {:?}", vol.stats().upload_error);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Read `[64 KiB, 128 KiB)` of `reader` while a scrub pass of `vol` moves it; returns
/// what was read.
fn read_while_scrub_moves_it(store: &HookedStore, vol: &Arc<Volume>, reader: &Volume) -> Vec<u8> {
    let deleted = Arc::new(Mutex::new(None));
    let (v, d) = (vol.clone(), deleted.clone());
    *store.before_sco_read.lock().unwrap() = Some(Box::new(move || {
        *d.lock().unwrap() = Some(v.scrub(1.0).map(|r| r.scos_deleted));
    }));
    let mut got = vec![0u8; 64 << 10];
    let r = reader.read_at(64 << 10, &mut got);
    let scrubbed = deleted.lock().unwrap().take();
    assert!(store.before_sco_read.lock().unwrap().is_none(), "the read never reached the object store");
    match scrubbed {
        Some(Ok(n)) => assert!(n >= 1, "the pass deleted no SCO: the read did not race anything"),
        other => panic!("the scrub pass failed: {other:?}"),
    }
    r.expect("a read racing a scrub pass");
    got
}

#[test]
fn reads_racing_a_scrub_pass_find_the_moved_data() {
    for view in [false, true] {
        let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        let store = Arc::new(HookedStore::open(&t.path().join("objects")));
        let dyn_store: Arc<dyn ObjectStore> = store.clone();
        // Copied uploads (not hard links) and a 1 MiB write buffer: the first SCO is
        // evicted and read from the object store.
        let opts = EngineOptions {
            wb_limit: MB,
            frame_size: 16 << 10,
            seal_after: None,
            link_local: false,
            ..EngineOptions::default()
        };
        let (env, vol) = common::small_volume(dyn_store, t.path(), opts);
        let image = pattern(4 * MB, 1);
        for (i, chunk) in image.chunks(64 << 10).enumerate() {
            vol.write_at(i as u64 * (64 << 10), chunk).unwrap();
        }
        // Half of the first SCO (128 KiB) overwritten: it is the only SCO with garbage,
        // so the pass moves its other half, which the read asks for.
        vol.write_at(0, &pattern(64 << 10, 2)).unwrap();
        let snap = view.then(|| vol.create_snapshot("s").unwrap());
        vol.seal().unwrap();
        wait_uploads(&vol);
        let want = image[64 << 10..128 << 10].to_vec();
        let got = if snap.is_some() {
            let meta = vol.meta().clone();
            let v = Volume::open_view(env.clone(), meta, "v@s", vol.snapshot_map("s").unwrap()).unwrap();
            read_while_scrub_moves_it(&store, &vol, &v)
        } else {
            read_while_scrub_moves_it(&store, &vol, &vol)
        };
        assert!(got == want, "the read returned other data (view: {view})");
        // Afterwards too, from the new place.
        let mut again = vec![0u8; 64 << 10];
        vol.read_at(64 << 10, &mut again).unwrap();
        assert!(again == want, "the volume reads other data after the pass");
        vol.close().unwrap();
        env.uploader.stop();
    }
}
