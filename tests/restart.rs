//! Restart from the object store alone on an empty data dir, and corruption of
//! uploaded objects: damaged data fails with an IO error, never returns wrong bytes.

mod common;

use rand::{rngs::StdRng, Rng, SeedableRng};

use common::{damage_frame_and_check, open_dd, small_config, write_random};
use logdisk::Error;

const SIZE: u64 = 4 << 20;

#[test]
fn restart_from_object_store_alone() {
    let t = tempfile::tempdir().unwrap();
    let backend = t.path().join("objects");
    let image = {
        let mut dd = open_dd(&t.path().join("a"), &backend, small_config());
        dd.create_volume("v", SIZE, None, None).unwrap();
        let vol = dd.open_volume("v", false).unwrap();
        let image = write_random(&vol, SIZE, 1);
        let r = vol.close().unwrap();
        assert!(r.drained, "clean close uploads everything");
        image
    };
    // A host with an empty data dir sees the volume and every byte of it.
    let mut dd = open_dd(&t.path().join("b"), &backend, small_config());
    let names: Vec<_> = dd.list_volumes().unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, vec!["v"]);
    let vol = dd.open_volume("v", false).unwrap();
    let mut got = vec![0u8; SIZE as usize];
    vol.read_at(0, &mut got).unwrap();
    assert!(got == image, "restart from the object store differs");
    // Read again: now from the read cache (bounded at 512 KiB, so partly refetched).
    let mut again = vec![0u8; SIZE as usize];
    vol.read_at(0, &mut again).unwrap();
    assert!(again == image);
    // It keeps working: write more, close, and a third host sees that too.
    vol.write_at(4096, &[7u8; 8192]).unwrap();
    let mut image = image;
    image[4096..4096 + 8192].fill(7);
    vol.close().unwrap();
    drop(vol);
    drop(dd);
    let mut dd = open_dd(&t.path().join("c"), &backend, small_config());
    let vol = dd.open_volume("v", true).unwrap();
    let mut got = vec![0u8; SIZE as usize];
    vol.read_at(0, &mut got).unwrap();
    assert!(got == image);
    assert!(matches!(vol.write_at(0, &[0u8; 4096]), Err(Error::ReadOnly(_))));
}

/// An epoch that holds only records, all already in its TLog (a discard after a seal,
/// flushed), is still sealed and uploaded by a clean close: a host with an empty data dir
/// sees the discard. (Found by the power-loss harness's object-store-alone check: a clean
/// shutdown left such a TLog on the local disk only.)
#[test]
fn clean_close_uploads_an_epoch_of_flushed_records_only() {
    let t = tempfile::tempdir().unwrap();
    let backend = t.path().join("objects");
    {
        let mut dd = open_dd(&t.path().join("a"), &backend, small_config());
        dd.create_volume("v", SIZE, None, None).unwrap();
        let vol = dd.open_volume("v", false).unwrap();
        vol.write_at(0, &[9u8; 65536]).unwrap();
        // Uploaded and checkpointed: the next close has no new checkpoint to write.
        assert!(vol.close().unwrap().drained);
        drop(vol);
        let vol = dd.open_volume("v", false).unwrap();
        // A new epoch gets one record and no data; the flush writes it to the TLog.
        vol.write_zeroes(0, 65536).unwrap();
        vol.flush().unwrap();
        let r = vol.close().unwrap();
        assert!(r.drained, "clean close uploads everything");
    }
    let mut dd = open_dd(&t.path().join("b"), &backend, small_config());
    let vol = dd.open_volume("v", false).unwrap();
    let mut got = vec![1u8; 65536];
    vol.read_at(0, &mut got).unwrap();
    assert!(got.iter().all(|b| *b == 0), "the discard flushed before a clean close is lost on a fresh data dir");
    vol.close().unwrap();
}

#[test]
fn damaged_sco_frame_fails_only_its_range() {
    let t = tempfile::tempdir().unwrap();
    let backend = t.path().join("objects");
    let image = {
        let mut dd = open_dd(&t.path().join("a"), &backend, small_config());
        dd.create_volume("v", SIZE, None, None).unwrap();
        let vol = dd.open_volume("v", false).unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        let mut image = vec![0u8; SIZE as usize];
        rng.fill(&mut image[..]);
        vol.write_at(0, &image).unwrap();
        assert!(vol.close().unwrap().drained);
        image
    };
    // Damage the object, then read through a fresh data dir (no local copy serves it).
    let mut dd = open_dd(&t.path().join("b"), &backend, small_config());
    let vol = dd.open_volume("v", false).unwrap();
    damage_frame_and_check(dd.store().as_ref(), &vol, &image);
}

#[test]
fn damaged_tlog_is_refused_with_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let backend = t.path().join("objects");
    {
        let mut cfg = small_config();
        cfg.upload.checkpoint_every = 1000; // keep every TLog needed for replay
        let mut dd = open_dd(&t.path().join("a"), &backend, cfg);
        dd.create_volume("v", SIZE, None, None).unwrap();
        let vol = dd.open_volume("v", false).unwrap();
        write_random(&vol, SIZE, 2);
        vol.flush().unwrap();
        // Leave without close so no final checkpoint covers the TLogs.
        vol.seal().unwrap();
        assert!(vol.wait_uploaded(std::time::Duration::from_secs(30)));
    }
    let tlog = std::fs::read_dir(backend.join("v/g000001/tlog")).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    let mut bytes = std::fs::read(&tlog).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&tlog, &bytes).unwrap();
    let mut dd = open_dd(&t.path().join("b"), &backend, small_config());
    let err = dd.open_volume("v", false).err().expect("open must fail");
    let msg = err.to_string();
    assert!(msg.contains("corrupt") && msg.contains("tlog"), "{msg}");
}

#[test]
fn sequential_cold_reads_read_ahead() {
    let t = tempfile::tempdir().unwrap();
    let backend = t.path().join("objects");
    let mut cfg = small_config();
    cfg.volume.sco_size = logdisk::config::ByteSize(1 << 20);
    cfg.read_cache.size = logdisk::config::ByteSize(8 << 20);
    let image: Vec<u8> = (0..SIZE as u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    {
        let mut dd = open_dd(&t.path().join("a"), &backend, cfg.clone());
        dd.create_volume("v", SIZE, None, None).unwrap();
        let vol = dd.open_volume("v", false).unwrap();
        for off in (0..SIZE).step_by(1 << 20) {
            vol.write_at(off, &image[off as usize..(off + (1 << 20)) as usize]).unwrap();
        }
        assert!(vol.close().unwrap().drained);
    }
    let mut dd = open_dd(&t.path().join("b"), &backend, cfg);
    let vol = dd.open_volume("v", true).unwrap();
    let reader = dd.env().unwrap().reader.clone();
    let mut buf = vec![0u8; 64 << 10];
    for off in (0..SIZE).step_by(64 << 10) {
        vol.read_at(off, &mut buf).unwrap();
        assert!(buf[..] == image[off as usize..off as usize + buf.len()], "offset {off}");
    }
    // 64 reads of 64 KiB over 4 SCOs of 1 MiB: read-ahead makes it about one GET per SCO.
    let gets = reader.fetches();
    assert!(gets <= 8, "{gets} ranged GETs for 64 sequential reads");
}
