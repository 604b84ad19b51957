//! TOML configuration. Every key has a working default, so no file is needed at all.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::units::parse_size;

/// A size in the config: either a number of bytes or a string such as "32M".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
pub struct Config {
    /// Local state: write buffer, read cache, metadata. CLI `--data-dir` wins.
    pub data_dir: Option<PathBuf>,
    /// Object store URL (`file:///path`, `s3://bucket/prefix`). CLI `--backend` wins.
    pub backend: Option<String>,
    pub volume: VolumeDefaults,
    pub write_buffer: WriteBufferConfig,
    pub read_cache: ReadCacheConfig,
    pub upload: UploadConfig,
    pub io: IoConfig,
}

/// Defaults for new volumes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeDefaults {
    pub cluster_size: ByteSize,
    pub sco_size: ByteSize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriteBufferConfig {
    /// Writes throttle when un-uploaded data in the write buffer reaches this.
    pub limit: ByteSize,
    /// Seal the open SCO after this many seconds without sealing (0 = only when full).
    pub seal_after_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadCacheConfig {
    /// On-disk size of the read cache shared by all volumes.
    pub size: ByteSize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// Uploads in flight at once across all volumes.
    pub concurrency: usize,
    /// On shutdown, wait this long for uploads to drain.
    pub drain_timeout_secs: u64,
    /// Write a metadata checkpoint after this many uploaded TLogs.
    pub checkpoint_every: u64,
    /// Raw bytes per compressed frame of an SCO object.
    pub frame_size: ByteSize,
    /// Compression of SCO frames: "lz4" or "none".
    pub compression: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IoConfig {
    /// Bypass the host page cache (O_DIRECT) for SCO and cache files.
    pub direct: bool,
    /// A read that must wait for the object store fails after this many seconds.
    pub backend_read_timeout_secs: u64,
}

impl Default for VolumeDefaults {
    fn default() -> Self {
        VolumeDefaults { cluster_size: ByteSize(4096), sco_size: ByteSize(32 << 20) }
    }
}

impl Default for WriteBufferConfig {
    fn default() -> Self {
        WriteBufferConfig { limit: ByteSize(4 << 30), seal_after_secs: 60 }
    }
}

impl Default for ReadCacheConfig {
    fn default() -> Self {
        ReadCacheConfig { size: ByteSize(1 << 30) }
    }
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            concurrency: 4,
            drain_timeout_secs: 120,
            checkpoint_every: 16,
            frame_size: ByteSize(64 << 10),
            compression: "lz4".into(),
        }
    }
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig { direct: true, backend_read_timeout_secs: 30 }
    }
}

impl Config {
    /// Load a TOML file; a missing `path` gives the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let cfg = match path {
            None => Config::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::Config(format!("cannot read {}: {e}", p.display())))?;
                toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))?
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reject settings that cannot work.
    pub fn validate(&self) -> Result<()> {
        let cs = self.volume.cluster_size.0;
        if !cs.is_power_of_two() || !(4096..=1 << 20).contains(&cs) {
            return Err(Error::Config(format!("volume.cluster_size {cs} must be a power of two from 4096 to 1M")));
        }
        let sco = self.volume.sco_size.0;
        if sco < cs || !sco.is_multiple_of(cs) || sco / cs > crate::volume::location::MAX_CLUSTERS_PER_SCO {
            return Err(Error::Config(format!(
                "volume.sco_size {sco} must be a multiple of the cluster size and at most {} clusters",
                crate::volume::location::MAX_CLUSTERS_PER_SCO
            )));
        }
        if self.upload.concurrency == 0 || self.upload.concurrency > 256 {
            return Err(Error::Config("upload.concurrency must be 1..=256".into()));
        }
        let fs = self.upload.frame_size.0;
        if fs < 4096 || !fs.is_multiple_of(4096) || fs > 4 << 20 {
            return Err(Error::Config("upload.frame_size must be a multiple of 4K from 4K to 4M".into()));
        }
        crate::backend::sco_object::Codec::parse(&self.upload.compression)?;
        if self.write_buffer.limit.0 < 2 * sco {
            return Err(Error::Config("write_buffer.limit must hold at least two SCOs".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_partial_file() {
        let c: Config = toml::from_str("[volume]\nsco_size = \"8M\"\n[read_cache]\nsize = 1048576\n").unwrap();
        assert_eq!(c.volume.sco_size.0, 8 << 20);
        assert_eq!(c.read_cache.size.0, 1 << 20);
        assert_eq!(c.volume.cluster_size.0, 4096);
        c.validate().unwrap();
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }
}
