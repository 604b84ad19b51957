//! Key management of encrypted volumes on real files and the embedded directory store
//! (the object checks read the raw objects, as someone reading the bucket would):
//! - a rotation while the volume is open and written completes in the background: the
//!   scrubber rewrites SCOs, TLogs, checkpoints and DTL marks under the new key, the
//!   record stops naming the old key, and a host with only the new key reads it all;
//! - a clone with its own key writes under it and reads its parent with the parent's;
//! - a key command (`--key-command`) gives the key as a key file does;
//! - `[encryption] require = true` refuses plain volumes, also one swapped into the store.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logdisk::backend::local::LocalStore;
use logdisk::backend::{sco_object, ObjectStore};
use logdisk::config::Config;
use logdisk::crypto::{KeyId, KeySource, VolumeKey};
use logdisk::datadir::DataDir;
use logdisk::volume::dtl_link::{store_mark, CoverageMark};
use logdisk::volume::scrubber::Scrubber;
use logdisk::volume::Volume;
use logdisk::Error;

const SIZE: u64 = 8 << 20;

fn config() -> Config {
    let mut c = common::small_config();
    c.scrub.check_interval_ms = 50;
    c
}

fn key_file(path: &Path, byte: u8) -> (KeySource, KeyId) {
    std::fs::write(path, [byte; 32]).unwrap();
    (KeySource::File(path.to_path_buf()), VolumeKey::from_bytes([byte; 32]).id())
}

/// The key id each raw object under `prefix` is sealed with (None: plain).
fn sealed_with(raw: &LocalStore, prefix: &str) -> Vec<(String, Option<KeyId>)> {
    raw.list(prefix)
        .unwrap()
        .into_iter()
        .filter_map(|o| {
            // Checkpoint pruning may delete what was just listed.
            let b = match raw.get(&o.key) {
                Err(Error::ObjectNotFound(_)) => return None,
                r => r.unwrap(),
            };
            let id = if o.key.contains("/sco/") {
                sco_object::parse_footer(&o.key, &b, b.len() as u64).ok().and_then(|f| f.sealed).map(|s| s.key_id)
            } else {
                logdisk::volume::rekey::blob_header_key_id(&b)
            };
            Some((o.key, id))
        })
        .collect()
}

fn write_chunks(vol: &Volume, image: &mut [u8], tag: u64, from: u64, to: u64) {
    let mut at = from;
    while at < to {
        let mut b = vec![0u8; 64 << 10];
        common::fill_pattern(&mut b, tag, at / 512);
        vol.write_at(at, &b).unwrap();
        image[at as usize..at as usize + b.len()].copy_from_slice(&b);
        at += b.len() as u64;
    }
    vol.flush().unwrap();
}

fn assert_image(vol: &Volume, image: &[u8], what: &str) {
    let mut buf = vec![0u8; image.len()];
    vol.read_at(0, &mut buf).unwrap();
    for (i, (a, b)) in buf.chunks(4096).zip(image.chunks(4096)).enumerate() {
        assert!(a == b, "{what}: cluster {i} differs");
    }
}

fn scrubber(dd: &mut DataDir, vols: Vec<Arc<Volume>>) -> Scrubber {
    let cfg = dd.config().scrub.clone();
    Scrubber::start(dd.env().unwrap(), Box::new(move || vols.clone()), cfg, dd.root().to_path_buf()).unwrap()
}

#[test]
fn rotation_while_open_completes_in_the_background() {
    let t = tempfile::tempdir().unwrap();
    let backend = t.path().join("store");
    let (k1, id1) = key_file(&t.path().join("k1"), 1);
    let (k2, id2) = key_file(&t.path().join("k2"), 2);
    let raw = LocalStore::open(&backend).unwrap();

    let mut dd = common::open_dd(&t.path().join("a"), &backend, config());
    dd.create_volume_with("enc", SIZE, None, None, Some(&k1)).unwrap();
    let vol = dd.open_volume("enc", false).unwrap();
    let mut image = vec![0u8; SIZE as usize];
    write_chunks(&vol, &mut image, 1, 0, SIZE / 2);
    vol.upload_all("test").unwrap();
    // A DTL coverage mark stored under key 1 (as a degraded DTL link would).
    let mark = CoverageMark { generation: 1, covered: false, since_epoch: 3, time: 0, reason: "test".into() };
    store_mark(dd.store().as_ref(), "enc", &AtomicU64::new(1), &mark).unwrap();
    assert!(sealed_with(&raw, "enc/").iter().all(|(_, id)| *id == Some(id1)));

    // Rotate while the volume is open; the scrubber runs and the guest keeps writing.
    let enc = logdisk::crypto::ops::rotate(&dd, "enc", &k2).unwrap();
    assert_eq!(enc.old_key_ids, vec![id1.to_string()]);
    assert!(dd.keys().rekey_pending("enc"));
    let _s = scrubber(&mut dd, vec![vol.clone()]);
    write_chunks(&vol, &mut image, 2, SIZE / 4, SIZE * 3 / 4);
    let t0 = Instant::now();
    while dd.keys().rekey_pending("enc") {
        assert!(t0.elapsed() < Duration::from_secs(90), "background rekey did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(_s);
    vol.upload_all("test").unwrap();
    let ids = sealed_with(&raw, "enc/");
    let stale: Vec<_> = ids.iter().filter(|(_, id)| *id != Some(id2)).collect();
    assert!(stale.is_empty(), "objects not under key 2 after the background rekey: {stale:?}");
    for kind in ["/sco/", "/tlog/", "/meta/checkpoint/", "/meta/dtl/", "/meta/volume/"] {
        assert!(ids.iter().any(|(k, _)| k.contains(kind)), "no {kind} object left: {ids:?}");
    }
    let m = dd.volume_meta("enc").unwrap();
    assert!(m.encryption.unwrap().old_key_ids.is_empty(), "the record still names the old key");
    let (newest, _) = logdisk::volume::dtl_link::newest_mark(dd.store().as_ref(), "enc").unwrap();
    assert_eq!(newest.map(|m| (m.covered, m.since_epoch)), Some((false, 3)), "the newest mark changed");
    assert_image(&vol, &image, "after the background rekey");
    vol.close().unwrap();
    drop(vol);
    drop(dd);

    // A host with key 2 only reads everything.
    let mut c = config();
    c.encryption.key_files = vec![t.path().join("k2")];
    let mut b = common::open_dd(&t.path().join("b"), &backend, c);
    let v = b.open_volume("enc", true).unwrap();
    assert_image(&v, &image, "fresh host with key 2 only");
}

#[test]
fn clone_with_its_own_key_and_a_key_command() {
    let t = tempfile::tempdir().unwrap();
    let backend = t.path().join("store");
    let (k1, id1) = key_file(&t.path().join("k1"), 1);
    std::fs::write(t.path().join("k2.hex"), "02".repeat(32) + "\n").unwrap();
    let k2 = KeySource::Command(format!("cat {}", t.path().join("k2.hex").display()));
    let id2 = VolumeKey::from_bytes([2; 32]).id();
    let raw = LocalStore::open(&backend).unwrap();

    let mut dd = common::open_dd(&t.path().join("a"), &backend, config());
    dd.create_volume_with("base", SIZE, None, None, Some(&k1)).unwrap();
    let base = dd.open_volume("base", false).unwrap();
    let mut image = vec![0u8; SIZE as usize];
    write_chunks(&base, &mut image, 1, 0, SIZE);
    base.create_snapshot("s").unwrap();
    base.upload_all("test").unwrap();
    let meta = dd.volume_meta("base").unwrap();
    let m = dd.create_clone_with("child", &meta, Some("s"), Some(&k2)).unwrap();
    assert_eq!(m.encryption.as_ref().map(|e| e.key_id.clone()), Some(id2.to_string()));
    let child = dd.open_volume("child", false).unwrap();
    write_chunks(&child, &mut image, 2, SIZE / 4, SIZE / 2);
    assert_image(&child, &image, "clone");
    child.close().unwrap();
    base.close().unwrap();
    drop((child, base, dd));
    let parent_ids = sealed_with(&raw, "base/");
    assert!(parent_ids.iter().all(|(_, id)| *id == Some(id1)), "{parent_ids:?}");
    let child_ids = sealed_with(&raw, "child/");
    assert!(child_ids.iter().any(|(k, _)| k.contains("/sco/")), "{child_ids:?}");
    assert!(child_ids.iter().all(|(_, id)| *id == Some(id2)), "{child_ids:?}");

    // A fresh host needs both keys: the clone's (from the command) and its parent's.
    let mut c = config();
    c.encryption.key_commands = vec![format!("cat {}", t.path().join("k2.hex").display())];
    let mut only2 = common::open_dd(&t.path().join("b"), &backend, c.clone());
    let r = only2.open_volume("child", true).and_then(|v| {
        let mut buf = vec![0u8; SIZE as usize];
        v.read_at(0, &mut buf)
    });
    assert!(matches!(r, Err(Error::KeyMissing { .. })), "the parent's data without the parent's key: {r:?}");
    drop(only2);
    c.encryption.key_files = vec![t.path().join("k1")];
    let mut both = common::open_dd(&t.path().join("c"), &backend, c);
    let v = both.open_volume("child", true).unwrap();
    assert_image(&v, &image, "fresh host with both keys");
}

#[test]
fn require_refuses_plain_volumes() {
    let t = tempfile::tempdir().unwrap();
    let backend = t.path().join("store");
    let (k1, _) = key_file(&t.path().join("k1"), 1);
    // Another data dir (or someone with write access to the bucket) puts a plain volume
    // under a name this host expects encrypted.
    let mut other = common::open_dd(&t.path().join("other"), &backend, config());
    other.create_volume_with("vm", SIZE, None, None, None).unwrap();
    let v = other.open_volume("vm", false).unwrap();
    v.write_at(0, &[7u8; 4096]).unwrap();
    v.close().unwrap();
    drop((v, other));

    let mut c = config();
    c.encryption.require = true;
    c.encryption.key_files = vec![t.path().join("k1")];
    let mut dd = common::open_dd(&t.path().join("a"), &backend, c);
    let e = dd.create_volume_with("plain", SIZE, None, None, None).unwrap_err().to_string();
    assert!(e.contains("requires encryption"), "{e}");
    let e = dd.open_volume("vm", false).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("requires encryption"), "{e}");
    dd.create_volume_with("enc", SIZE, None, None, Some(&k1)).unwrap();
    let v = dd.open_volume("enc", false).unwrap();
    v.write_at(0, &[9u8; 4096]).unwrap();
    v.close().unwrap();
}
