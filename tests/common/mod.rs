//! Shared helpers for integration tests: data dirs with small SCOs, deterministic
//! data patterns.
#![allow(dead_code)]

pub mod s3;

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
