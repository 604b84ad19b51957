//! Encryption at rest against a real S3 server (SeaweedFS on loopback), through the
//! `logdisk` binary: a volume created with `--encrypt --key-file` leaves no 32-byte block
//! of its data, nor of the data's LZ4 frames, in any object of the bucket (the same data
//! in a plain volume does: the scan can fail); export equals the input; a fresh data dir
//! with only the object store and the key reads it back; without the key or with a
//! wrong one every command fails with one clear line; keys never appear in output. A
//! flipped bit in a sealed SCO fails only reads of that frame. Key rotation with scrub
//! leaves every object under the new key; crypto-erase makes the volume unopenable.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use rand::{rngs::StdRng, Rng, SeedableRng};

use common::s3::{shared, Weed};
use logdisk::backend::s3::S3Store;
use logdisk::backend::{sco_object, ObjectStore};
use logdisk::crypto::cipher::ObjectCipher;
use logdisk::crypto::{KeySource, VolumeKey};

const SIZE: usize = 4 << 20;
const FRAME: usize = 16 << 10;

struct Env {
    t: tempfile::TempDir,
    url: String,
    bucket: String,
    config: PathBuf,
    raw: S3Store,
}

fn env(w: &Weed, hint: &str) -> Env {
    let t = tempfile::tempdir().unwrap();
    let bucket = w.new_bucket(hint);
    let mut c = common::small_config();
    c.s3 = w.config();
    let config = t.path().join("logdisk.toml");
    // The secret is never serialized: add it by hand.
    let text =
        toml::to_string(&c).unwrap().replace("[s3]\n", &format!("[s3]\nsecret_access_key = {:?}\n", w.secret_key));
    std::fs::write(&config, text).unwrap();
    let raw = S3Store::open(&bucket, "", &w.config()).unwrap();
    Env { url: format!("s3://{bucket}/pfx"), bucket, config, raw, t }
}

impl Env {
    /// `logdisk` on data dir `dd` of this bucket.
    fn run(&self, dd: &str, args: &[&str]) -> Output {
        let mut a: Vec<&str> = vec!["--backend", &self.url, "--config", self.config.to_str().unwrap()];
        a.extend_from_slice(args);
        common::cli::logdisk(&self.t.path().join(dd), &a)
    }

    fn ok(&self, dd: &str, args: &[&str]) -> String {
        let o = self.run(dd, args);
        assert!(o.status.success(), "logdisk {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    }

    /// Fails with exactly one line containing `needle`.
    fn fails(&self, dd: &str, args: &[&str], needle: &str) -> String {
        let o = self.run(dd, args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "logdisk {args:?} should fail");
        assert!(err.contains(needle), "logdisk {args:?}: {err:?} lacks {needle:?}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");
        err
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    /// Every object of the bucket under `prefix`, raw.
    fn objects(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.raw.list(prefix).unwrap().into_iter().map(|o| (o.key.clone(), self.raw.get(&o.key).unwrap())).collect()
    }
}

/// Half random, half text-like (LZ4 shrinks it), no all-zero blocks.
fn input() -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(21);
    let mut d = vec![0u8; SIZE];
    rng.fill(&mut d[..SIZE / 2]);
    let mut text = Vec::new();
    let mut i = 0u64;
    while text.len() < SIZE / 2 {
        let w = rng.gen_range(0..1000u32);
        text.extend_from_slice(format!("line {i}: account {w} paid {} to {}; ", w * 7, w ^ 0x55).as_bytes());
        i += 1;
    }
    d[SIZE / 2..].copy_from_slice(&text[..SIZE / 2]);
    d
}

/// 32-byte aligned blocks of `data` and of each frame's LZ4 compression: any 64-byte
/// window of either contains one of them.
fn needles(data: &[u8]) -> HashSet<[u8; 32]> {
    let mut set: HashSet<[u8; 32]> = data.chunks_exact(32).map(|c| c.try_into().unwrap()).collect();
    for frame in data.chunks(FRAME) {
        let z = lz4_flex::block::compress(frame);
        if z.len() < frame.len() {
            set.extend(z.chunks_exact(32).map(|c| <[u8; 32]>::try_from(c).unwrap()));
        }
    }
    set
}

/// Keys of objects holding one of `needles` anywhere.
fn leaking(objects: &[(String, Vec<u8>)], needles: &HashSet<[u8; 32]>) -> Vec<String> {
    objects
        .iter()
        .filter(|(_, b)| b.windows(32).any(|w| needles.contains(<&[u8; 32]>::try_from(w).unwrap())))
        .map(|(k, _)| k.clone())
        .collect()
}

fn write_key(path: &Path, seed: u64, hex: bool) -> [u8; 32] {
    let mut k = [0u8; 32];
    StdRng::seed_from_u64(seed).fill(&mut k);
    if hex {
        std::fs::write(path, k.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n").unwrap();
    } else {
        std::fs::write(path, k).unwrap();
    }
    k
}

fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn encrypted_volume_on_s3_leaks_nothing_and_needs_its_key() {
    let w = shared();
    let e = env(w, "crypto");
    let k1 = write_key(&e.path("k1"), 1, true);
    write_key(&e.path("wrong"), 2, false);
    let data = input();
    std::fs::write(e.path("in.img"), &data).unwrap();
    let (k1f, wrong, img) = (e.p("k1"), e.p("wrong"), e.p("in.img"));

    let mut out = e.ok("a", &["volume", "create", "enc", "--size", "4M", "--encrypt", "--key-file", &k1f]);
    out += &e.ok("a", &["volume", "import", "enc", &img]);
    // The same data in a plain volume: the scan below finds it there.
    out += &e.ok("a", &["volume", "create", "plain", "--size", "4M"]);
    out += &e.ok("a", &["volume", "import", "plain", &img]);
    let info = e.ok("a", &["volume", "info", "enc"]);
    assert!(info.contains("key id"), "{info}");
    out += &info;
    out += &e.ok("a", &["volume", "info", "enc", "--json"]);
    out += &e.ok("a", &["volume", "export", "enc", &e.p("out-a.img")]);
    assert!(std::fs::read(e.path("out-a.img")).unwrap() == data, "export differs");

    let set = needles(&data);
    let enc = e.objects("pfx/enc/");
    let kinds = ["/sco/", "/tlog/", "/meta/volume/", "/meta/checkpoint/"];
    for k in kinds {
        assert!(
            enc.iter().any(|(key, _)| key.contains(k)),
            "no {k} object: {:?}",
            enc.iter().map(|o| &o.0).collect::<Vec<_>>()
        );
    }
    assert_eq!(leaking(&enc, &set), Vec::<String>::new(), "plaintext in encrypted objects");
    assert!(!leaking(&e.objects("pfx/plain/"), &set).is_empty(), "the scan finds the plain volume's data");
    // Nothing readable: the volume record does not even name its size in clear.
    for (key, b) in &enc {
        assert!(!b.windows(11).any(|w| w == b"cluster_siz"), "{key} is plain JSON");
    }

    // A fresh host with only the object store and the key.
    out += &e.ok("b", &["volume", "export", "enc", &e.p("out-b.img"), "--key-file", &k1f]);
    assert!(std::fs::read(e.path("out-b.img")).unwrap() == data, "export from the object store alone differs");
    // Without the key, or with a wrong one: one clear line, nothing written.
    let missing = e.fails("c", &["volume", "export", "enc", &e.p("x.img")], "is encrypted with key id");
    assert!(missing.contains("no key given"), "{missing}");
    let bad =
        e.fails("c", &["volume", "export", "enc", &e.p("x.img"), "--key-file", &wrong], "is encrypted with key id");
    assert!(bad.contains("wrong key"), "{bad}");
    e.fails("c", &["volume", "info", "enc", "--key-file", &wrong], "is encrypted with key id");
    out += &missing;
    out += &bad;
    // The plain volume is still listed without a key; the encrypted one is not.
    let list = e.ok("c", &["volume", "list"]);
    assert!(list.contains("plain") && !list.lines().any(|l| l.starts_with("enc ")), "{list}");
    assert!(!out.contains(&hex(&k1)), "the key appeared in output");
    drop(e.bucket);
}

#[test]
fn flipped_bit_in_a_sealed_sco_fails_only_its_frame() {
    let w = shared();
    let e = env(w, "crypto-flip");
    let key = write_key(&e.path("k"), 5, false);
    let src = KeySource::File(e.path("k"));
    let mut cfg = common::small_config();
    cfg.s3 = w.config();
    let image = {
        let mut dd = logdisk::datadir::DataDir::open(&e.path("a"), Some(&e.url), cfg.clone()).unwrap();
        dd.create_volume_with("f", SIZE as u64, None, None, Some(&src)).unwrap();
        let vol = dd.open_volume("f", false).unwrap();
        // Written in order: the first SCO holds clusters 0..64, its frame 3 clusters 12..16.
        let mut image = vec![0u8; SIZE];
        StdRng::seed_from_u64(3).fill(&mut image[..]);
        for (i, c) in image.chunks(64 << 10).enumerate() {
            vol.write_at((i * c.len()) as u64, c).unwrap();
        }
        assert!(vol.close().unwrap().drained);
        image
    };
    // Flip a bit in frame 3 of the first SCO (raw store: create-only, so delete first).
    let vk = VolumeKey::from_bytes(key);
    let sco_key = e.raw.list("pfx/f/g000001/sco/").unwrap().into_iter().map(|o| o.key).min().unwrap();
    let mut obj = e.raw.get(&sco_key).unwrap();
    let footer = sco_object::parse_footer("k", &obj, obj.len() as u64).unwrap();
    let seal = footer.sealed.expect("a sealed SCO");
    let name = sco_key.strip_prefix("pfx/").unwrap();
    let cipher = std::sync::Arc::new(ObjectCipher::derive(&vk, seal.salt, name));
    let index = sco_object::parse_object_index_with(name, &obj, Some(cipher)).unwrap();
    assert_eq!(index.frame_size as usize, FRAME);
    obj[index.frames[3].offset as usize + 100] ^= 0x40;
    e.raw.delete(&sco_key).unwrap();
    e.raw.put(&sco_key, &obj).unwrap();

    cfg.encryption.key_files.push(e.path("k"));
    let mut dd = logdisk::datadir::DataDir::open(&e.path("b"), Some(&e.url), cfg).unwrap();
    let vol = dd.open_volume("f", true).unwrap();
    for (off, len) in [(12 * 4096, 4096), (13 * 4096 + 512, 512), (10 * 4096, 4 * 4096)] {
        let mut b = vec![0u8; len];
        let r = vol.read_at(off, &mut b);
        assert!(matches!(r, Err(logdisk::Error::Corrupt { .. })), "read {off}+{len} of a damaged frame: {r:?}");
    }
    let mut buf = vec![0u8; 4096];
    for c in (0..SIZE as u64 / 4096).filter(|c| !(12..16).contains(c)) {
        vol.read_at(c * 4096, &mut buf).unwrap();
        assert!(buf[..] == image[(c * 4096) as usize..((c + 1) * 4096) as usize], "cluster {c}");
    }
    let err: std::io::Error = vol.read_at(12 * 4096, &mut buf).unwrap_err().into();
    assert!(err.to_string().contains("fails authentication"), "{err}");
    vol.close().unwrap();
}

/// The key id every object under `prefix` is sealed with (SCO footers, blob headers).
fn object_key_ids(e: &Env, prefix: &str) -> Vec<(String, Option<logdisk::crypto::KeyId>)> {
    e.objects(prefix)
        .into_iter()
        .map(|(k, b)| {
            let id = if k.contains("/sco/") {
                sco_object::parse_footer(&k, &b, b.len() as u64).ok().and_then(|f| f.sealed).map(|s| s.key_id)
            } else {
                logdisk::volume::rekey::blob_header_key_id(&b)
            };
            (k, id)
        })
        .collect()
}

#[test]
fn rotation_scrub_and_crypto_erase() {
    let w = shared();
    let e = env(w, "crypto-rotate");
    let k1 = write_key(&e.path("k1"), 11, true);
    let k2 = write_key(&e.path("k2"), 12, false);
    let (id1, id2) = (VolumeKey::from_bytes(k1).id(), VolumeKey::from_bytes(k2).id());
    let data = input();
    std::fs::write(e.path("a.img"), &data[..SIZE / 2]).unwrap();
    std::fs::write(e.path("b.img"), &data[SIZE / 2..SIZE / 2 + SIZE / 4]).unwrap();
    let (k1f, k2f) = (e.p("k1"), e.p("k2"));

    e.ok("a", &["volume", "create", "enc", "--size", "4M", "--encrypt", "--key-file", &k1f]);
    e.ok("a", &["volume", "import", "enc", &e.p("a.img")]);
    let ids = object_key_ids(&e, "pfx/enc/");
    assert!(ids.iter().all(|(_, id)| *id == Some(id1)), "{ids:?}");
    // Rotate (the old key's source stays recorded on this host), write more.
    e.ok("a", &["volume", "set", "enc", "--key-file", &k2f]);
    let info = e.ok("a", &["volume", "info", "enc"]);
    assert!(info.contains(&id2.to_string()), "{info}");
    e.ok("a", &["volume", "import", "enc", &e.p("b.img"), "--offset", "2M"]);
    let ids = object_key_ids(&e, "pfx/enc/");
    assert!(ids.iter().any(|(_, id)| *id == Some(id1)) && ids.iter().any(|(_, id)| *id == Some(id2)), "{ids:?}");
    // Scrub rewrites everything under key 2.
    e.ok("a", &["scrub", "enc"]);
    let ids = object_key_ids(&e, "pfx/enc/");
    let stale: Vec<_> = ids.iter().filter(|(_, id)| *id != Some(id2)).collect();
    assert!(stale.is_empty(), "objects not under key 2 after scrub: {stale:?}");
    assert!(ids.iter().any(|(k, _)| k.contains("/sco/")) && ids.iter().any(|(k, _)| k.contains("/tlog/")));
    let mut want = data[..SIZE / 2 + SIZE / 4].to_vec();
    want.resize(SIZE, 0);
    e.ok("a", &["volume", "export", "enc", &e.p("out-a.img")]);
    assert!(std::fs::read(e.path("out-a.img")).unwrap() == want, "data changed by rotation + scrub");
    // A fresh host with key 2 alone reads everything.
    e.ok("b", &["volume", "export", "enc", &e.p("out-b.img"), "--key-file", &k2f]);
    assert!(std::fs::read(e.path("out-b.img")).unwrap() == want, "fresh host with key 2");
    assert!(!leaking(&e.objects("pfx/enc/"), &needles(&data[..SIZE / 2 + SIZE / 4])).iter().any(|_| true));

    // Crypto-erase: needs --yes; afterwards no host opens it, even with both keys.
    e.fails("a", &["volume", "crypto-erase", "enc"], "--yes");
    let out = e.ok("a", &["volume", "crypto-erase", "enc", "--yes"]);
    assert!(out.contains("crypto-erased"), "{out}");
    for dd in ["a", "b", "c"] {
        e.fails(
            dd,
            &["volume", "export", "enc", &e.p("x.img"), "--key-file", &k2f, "--key-file", &k1f],
            "crypto-erased",
        );
    }
    assert!(!e.path("a/volumes/enc").exists(), "local state of an erased volume stays");
    assert!(!e.ok("a", &["volume", "list"]).lines().any(|l| l.starts_with("enc ")));
    // Its data objects remain, sealed; no record version but the tombstone is left.
    let left = e.objects("pfx/enc/");
    let records: Vec<_> = left.iter().filter(|(k, _)| k.contains("/meta/volume/")).collect();
    assert_eq!(records.len(), 1, "{:?}", records.iter().map(|r| &r.0).collect::<Vec<_>>());
    assert!(records[0].1.starts_with(b"LDERASED"));
    assert!(left.iter().any(|(k, _)| k.contains("/sco/")));
}
