//! Shared helpers for integration tests: data dirs with small SCOs, deterministic
//! data patterns.
#![allow(dead_code)]

pub mod cli;
pub mod hooked_store;
pub mod s3;
pub mod vhost;

use std::path::Path;

use logdisk::config::{ByteSize, Config};
use logdisk::datadir::DataDir;

/// A config with small SCOs and buffers so tests roll epochs and upload often.
pub fn small_config() -> Config {
    let mut c = Config::default();
    c.volume.sco_size = ByteSize(256 << 10);
    c.write_buffer.limit = ByteSize(2 << 20);
    c.write_buffer.seal_after_secs = 0;
    c.read_cache.size = ByteSize(512 << 10);
    c.upload.checkpoint_every = 3;
    c.upload.frame_size = ByteSize(16 << 10);
    c.upload.concurrency = 2;
    c.upload.drain_timeout_secs = 30;
    c
}

pub fn open_dd(dir: &Path, backend: &Path, cfg: Config) -> DataDir {
    DataDir::open(dir, Some(&format!("file://{}", backend.display())), cfg).expect("open data dir")
}

/// Deterministic content for (tag, sector): every 512-byte sector carries its own
/// stamp, so a misplaced or torn sector is detected.
pub fn fill_pattern(buf: &mut [u8], tag: u64, first_sector: u64) {
    for (i, s) in buf.chunks_mut(512).enumerate() {
        let sector = first_sector + i as u64;
        let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ sector.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        for w in s.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            w.copy_from_slice(&b[..w.len()]);
        }
        s[..8].copy_from_slice(&tag.to_le_bytes());
        s[8..16].copy_from_slice(&sector.to_le_bytes());
    }
}

/// Random sector-aligned writes and some cluster discards over the first `size` bytes of
/// `vol`; returns the image the volume must now hold.
pub fn write_random(vol: &logdisk::volume::Volume, size: u64, seed: u64) -> Vec<u8> {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut image = vec![0u8; size as usize];
    for _ in 0..300 {
        let off = rng.gen_range(0..size / 512) * 512;
        let len = (rng.gen_range(1..=64u64) * 512).min(size - off);
        rng.fill(&mut image[off as usize..(off + len) as usize]);
        vol.write_at(off, &image[off as usize..(off + len) as usize]).unwrap();
    }
    for _ in 0..10 {
        let off = rng.gen_range(0..size / 4096) * 4096;
        let len = (rng.gen_range(1..=8u64) * 4096).min(size - off);
        image[off as usize..(off + len) as usize].fill(0);
        vol.write_zeroes(off, len).unwrap();
    }
    image
}

/// Write `image` from offset 0 in 64 KiB chunks on a thread (pausing `pace` after each),
/// then flush. Returns the thread and the count of bytes written so far. Writes may be
/// throttled but must never fail.
pub fn spawn_writer(
    vol: &std::sync::Arc<logdisk::volume::Volume>,
    image: &[u8],
    pace: std::time::Duration,
) -> (std::thread::JoinHandle<()>, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let written = std::sync::Arc::new(AtomicU64::new(0));
    let (vol, image, w) = (vol.clone(), image.to_vec(), written.clone());
    let handle = std::thread::spawn(move || {
        for (i, chunk) in image.chunks(64 << 10).enumerate() {
            vol.write_at(i as u64 * (64 << 10), chunk).expect("writes are throttled, never failed");
            w.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            std::thread::sleep(pace);
        }
        vol.flush().unwrap();
    });
    (handle, written)
}

/// Damage frame 3 of the volume's first SCO object in `store` (delete and put again:
/// objects are create-only), then check from `vol` (opened on a fresh data dir) that reads
/// touching that frame — clusters 12..16 with 16 KiB frames — fail as corrupt, whatever
/// their size or alignment, and every other cluster reads back as `image`.
pub fn damage_frame_and_check(store: &dyn logdisk::backend::ObjectStore, vol: &logdisk::volume::Volume, image: &[u8]) {
    use logdisk::backend::sco_object;
    use logdisk::Error;
    let name = vol.name();
    let sco_key = store.list(&format!("{name}/g000001/sco/")).unwrap().into_iter().map(|o| o.key).min().unwrap();
    let mut obj = store.get(&sco_key).unwrap();
    let index = sco_object::parse_object_index("k", &obj).unwrap();
    assert_eq!(index.frame_size, 16 << 10, "the checks below assume 16 KiB frames");
    obj[index.frames[3].offset as usize + 100] ^= 0x40;
    store.delete(&sco_key).unwrap();
    store.put(&sco_key, &obj).unwrap();

    for (off, len) in [(12 * 4096, 4096), (13 * 4096 + 512, 512), (10 * 4096, 4 * 4096)] {
        let mut b = vec![0u8; len];
        let r = vol.read_at(off, &mut b);
        assert!(matches!(r, Err(Error::Corrupt { .. })), "read {off}+{len} of a damaged frame: {r:?}");
    }
    let mut buf = vec![0u8; 4096];
    for c in (0..image.len() as u64 / 4096).filter(|c| !(12..16).contains(c)) {
        vol.read_at(c * 4096, &mut buf).unwrap();
        assert!(buf[..] == image[(c * 4096) as usize..((c + 1) * 4096) as usize], "cluster {c}");
    }
    // The error reaches a block frontend as an EIO-class io::Error.
    let e: std::io::Error = vol.read_at(12 * 4096, &mut buf).unwrap_err().into();
    assert!(e.to_string().contains("corrupt"), "{e}");
}

/// A volume `v` of 8 MiB (4 KiB clusters, 128 KiB SCOs) on `store`, with its write buffer
/// and a 1 MiB read cache under `dir` and two upload threads.
pub fn small_volume(
    store: std::sync::Arc<dyn logdisk::backend::ObjectStore>,
    dir: &Path,
    opts: logdisk::volume::EngineOptions,
) -> (std::sync::Arc<logdisk::volume::VolumeEnv>, std::sync::Arc<logdisk::volume::Volume>) {
    use logdisk::volume::{read_cache::ReadCache, Volume, VolumeEnv, VolumeMeta};
    let env = std::sync::Arc::new(VolumeEnv::new(
        store.clone(),
        std::sync::Arc::new(ReadCache::create(&dir.join("cache"), 1 << 20, true).unwrap()),
        logdisk::backend::uploader::Uploader::start(2),
        opts,
    ));
    let mut meta = VolumeMeta::new("v", 8 << 20, 4096, 128 << 10);
    meta.store_new_version(store.as_ref(), true).unwrap();
    let vol = Volume::open(env.clone(), meta, dir.join("wb"), false).unwrap();
    (env, vol)
}
