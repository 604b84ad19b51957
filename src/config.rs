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
    pub scrub: ScrubConfig,
    /// S3 connection settings, used when the backend is `s3://BUCKET/PREFIX`.
    pub s3: S3Config,
    /// How volumes reach their DTL peers.
    pub dtl: DtlClientConfig,
    /// Where keys of encrypted volumes come from (besides those recorded per volume).
    pub encryption: EncryptionConfig,
}

/// Key sources every command of this data dir may read keys from (files of 32 bytes or
/// 64 hex digits; commands that print one). Keys are found by their id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    pub key_files: Vec<PathBuf>,
    pub key_commands: Vec<String>,
    /// Every volume of this data dir must be encrypted: creating a plain one is refused,
    /// and so is a plain record or object found in the store (someone with write access
    /// to the bucket cannot swap in a plain volume before this host first opens it).
    pub require: bool,
}

/// The DTL client side (each volume's peer and mode are set per volume).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DtlClientConfig {
    /// The shared token: the same file as the server's `--token-file`. Without it the
    /// client sends an empty token (only an `--insecure` server accepts that).
    pub token_file: Option<PathBuf>,
    /// PEM bundle of the CA(s) that signed the DTL servers' certificates: the client
    /// speaks TLS and checks the certificate against the host part of the peer address
    /// (only these CAs are trusted, not the system's).
    pub ca_file: Option<PathBuf>,
    /// Speak plain text to the DTL server (it must run with `--insecure`).
    pub insecure: bool,
}

impl DtlClientConfig {
    /// The TLS settings: `Some` with `ca_file`, `None` (plain text) only with `insecure`.
    pub fn tls(&self) -> crate::error::Result<Option<crate::dtl::tls::ClientTls>> {
        match (&self.ca_file, self.insecure) {
            (Some(_), true) => Err(crate::error::Error::Config(
                "dtl: give either ca_file (TLS) or insecure = true (plain text), not both".into(),
            )),
            (Some(f), false) => crate::dtl::tls::client_config(f).map(Some),
            (None, true) => Ok(None),
            (None, false) => Err(crate::error::Error::Config(
                "dtl: give ca_file = \"CA.pem\" (TLS to the DTL server) or insecure = true (plain text) in [dtl]"
                    .into(),
            )),
        }
    }

    /// The token (the file's content without surrounding whitespace).
    pub fn token(&self) -> crate::error::Result<Vec<u8>> {
        match &self.token_file {
            None => Ok(Vec::new()),
            Some(p) => std::fs::read(p)
                .map(|s| s.trim_ascii().to_vec())
                .map_err(|e| crate::error::Error::Config(format!("dtl.token_file {}: {e}", p.display()))),
        }
    }
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
    /// Slow guest writes smoothly to the upload rate once the buffer is half full,
    /// instead of stopping them at the limit (see src/volume/write_pacer.rs).
    pub pace: bool,
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
    /// With a local directory store (`file://`) on the same filesystem as the data dir,
    /// an SCO is uploaded by hard-linking its file into the store (frames stored
    /// uncompressed, nothing copied), and so is its TLog; after a restart, objects of
    /// that store holding raw frames are read in place (`volume::in_place`). `false`:
    /// write a compressed copy, and read objects through the read cache.
    pub link_local: bool,
}

/// When the daemon scrubs, and the space each volume and the embedded store may use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScrubConfig {
    /// Backstop: the daemon also scrubs every served volume this often, whatever its
    /// garbage (0 = never; `logdisk scrub` runs one by hand).
    pub interval_secs: u64,
    /// Live fraction below which `logdisk scrub` (and the backstop) rewrites an SCO.
    pub threshold: f64,
    /// Scrub a volume when garbage passes this fraction of the data it keeps (and
    /// `min_garbage`); a pass goes on until garbage is below half of it.
    pub garbage_ratio: f64,
    /// ... and only when garbage is at least this much (default: 4 SCOs' worth).
    pub min_garbage: Option<ByteSize>,
    /// Guest writes wait for scrub when a volume's data (live + garbage) passes this
    /// multiple of its live data: the bound on space amplification, whatever the
    /// guest's write rate (0 = never throttle for garbage).
    pub max_space_amp: f64,
    /// How often the daemon looks at each volume's garbage, milliseconds.
    pub check_interval_ms: u64,
    /// Live data a scrub copies per second while guests do IO and space is not short
    /// (0 = no limit). Once garbage is due for scrub, the pace follows the guest's write
    /// rate (at least a sixteenth of this), and near the bound or when idle, or when
    /// writes wait for scrub, it copies at full speed.
    pub rate: ByteSize,
    /// Each volume's space budget as a multiple of its size (0 = none): near it scrub
    /// runs harder, at it writes wait for scrub, and when live data alone fills it
    /// writes fail with "no space".
    pub volume_budget_factor: f64,
    /// Space budget of the whole object store in bytes, checked by listing it (0 = none).
    pub store_budget: ByteSize,
    /// A write waiting for space fails with "no space" once scrub has freed nothing for
    /// this long.
    pub throttle_timeout_secs: u64,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            interval_secs: 3600,
            threshold: 0.5,
            garbage_ratio: 0.25,
            min_garbage: None,
            max_space_amp: 1.45,
            check_interval_ms: 500,
            rate: ByteSize(64 << 20),
            volume_budget_factor: 4.0,
            store_budget: ByteSize(0),
            throttle_timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IoConfig {
    /// Bypass the host page cache (O_DIRECT) for SCO and cache files.
    pub direct: bool,
    /// A read that must wait for the object store fails after this many seconds.
    pub backend_read_timeout_secs: u64,
}

/// S3 settings. Anything left unset comes from the standard AWS sources
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
/// `AWS_PROFILE`, profile files).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL of an S3-compatible server, e.g. `http://127.0.0.1:8333`.
    pub endpoint: Option<String>,
    /// Region; default from the environment/profile, else `us-east-1`.
    pub region: Option<String>,
    /// Named profile of the AWS config/credentials files.
    pub profile: Option<String>,
    /// Static credentials (both or neither). Never logged or printed.
    pub access_key_id: Option<String>,
    #[serde(skip_serializing)]
    pub secret_access_key: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); default: on whenever a custom
    /// endpoint is set.
    pub path_style: Option<bool>,
    /// TCP/TLS connect timeout.
    pub connect_timeout_secs: u64,
    /// A read (GET, HEAD, LIST) fails with a timeout after this long, retries included;
    /// default: `io.backend_read_timeout_secs` (30).
    pub read_timeout_secs: Option<u64>,
    /// One attempt of a read; a stuck attempt is abandoned and retried after this long.
    pub read_attempt_timeout_secs: u64,
    /// One attempt of a write (PUT, multipart part); the uploader retries after it.
    pub write_attempt_timeout_secs: u64,
    /// Attempts per request in the SDK's standard retry (1 = no SDK retries).
    pub max_attempts: u32,
    /// Objects larger than this are uploaded in parts.
    pub multipart_threshold: ByteSize,
    /// Size of one part of a multipart upload (at least 5M; a remainder under half a part
    /// joins the last part).
    pub part_size: ByteSize,
    /// Parts of one object uploaded at once.
    pub multipart_concurrency: usize,
    /// Keys per ListObjectsV2 page (1..=1000).
    pub list_page_size: u32,
    /// Request checksums: "when_supported" (SDK default, CRC32 on every upload) or
    /// "when_required" (for servers that reject the SDK's checksum trailers).
    pub request_checksums: String,
    /// PEM bundle of extra CA certificates trusted for https endpoints (a self-hosted
    /// store with a private CA), in addition to the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("access_key_id", &self.access_key_id.as_ref().map(|_| "<redacted>"))
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("path_style", &self.path_style)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("read_timeout_secs", &self.read_timeout_secs)
            .field("read_attempt_timeout_secs", &self.read_attempt_timeout_secs)
            .field("write_attempt_timeout_secs", &self.write_attempt_timeout_secs)
            .field("max_attempts", &self.max_attempts)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field("multipart_concurrency", &self.multipart_concurrency)
            .field("list_page_size", &self.list_page_size)
            .field("request_checksums", &self.request_checksums)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: None,
            profile: None,
            access_key_id: None,
            secret_access_key: None,
            path_style: None,
            connect_timeout_secs: 5,
            read_timeout_secs: None,
            read_attempt_timeout_secs: 10,
            write_attempt_timeout_secs: 60,
            max_attempts: 3,
            multipart_threshold: ByteSize(16 << 20),
            part_size: ByteSize(8 << 20),
            multipart_concurrency: 4,
            list_page_size: 1000,
            request_checksums: "when_supported".into(),
            ca_file: None,
        }
    }
}

impl S3Config {
    /// The read deadline in seconds (default 30).
    pub fn read_timeout(&self) -> u64 {
        self.read_timeout_secs.unwrap_or(30)
    }

    /// Reject settings that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(Error::Config("s3.access_key_id and s3.secret_access_key must be set together".into()));
        }
        if self.connect_timeout_secs == 0
            || self.read_timeout_secs == Some(0)
            || self.read_attempt_timeout_secs == 0
            || self.write_attempt_timeout_secs == 0
        {
            return Err(Error::Config("s3 timeouts must be at least 1 second".into()));
        }
        if !(1..=10).contains(&self.max_attempts) {
            return Err(Error::Config("s3.max_attempts must be 1..=10".into()));
        }
        if self.part_size.0 < 5 << 20 || self.part_size.0 > 5 << 30 {
            return Err(Error::Config("s3.part_size must be from 5M to 5G".into()));
        }
        if self.multipart_threshold.0 < self.part_size.0 {
            return Err(Error::Config("s3.multipart_threshold must be at least s3.part_size".into()));
        }
        if !(1..=64).contains(&self.multipart_concurrency) {
            return Err(Error::Config("s3.multipart_concurrency must be 1..=64".into()));
        }
        if !(1..=1000).contains(&self.list_page_size) {
            return Err(Error::Config("s3.list_page_size must be 1..=1000".into()));
        }
        if !matches!(self.request_checksums.as_str(), "when_supported" | "when_required") {
            return Err(Error::Config("s3.request_checksums must be \"when_supported\" or \"when_required\"".into()));
        }
        Ok(())
    }
}

impl Default for VolumeDefaults {
    fn default() -> Self {
        VolumeDefaults { cluster_size: ByteSize(4096), sco_size: ByteSize(32 << 20) }
    }
}

impl Default for WriteBufferConfig {
    fn default() -> Self {
        WriteBufferConfig { limit: ByteSize(4 << 30), pace: true, seal_after_secs: 60 }
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
            link_local: true,
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
        if fs < 4096 || !fs.is_multiple_of(4096) || fs > u64::from(crate::backend::sco_object::MAX_FRAME_SIZE) {
            return Err(Error::Config("upload.frame_size must be a multiple of 4K from 4K to 4M".into()));
        }
        crate::backend::sco_object::Codec::parse(&self.upload.compression)?;
        if self.write_buffer.limit.0 < 2 * sco {
            return Err(Error::Config("write_buffer.limit must hold at least two SCOs".into()));
        }
        if !(0.0..=1.0).contains(&self.scrub.threshold) {
            return Err(Error::Config("scrub.threshold must be between 0 and 1".into()));
        }
        let sc = &self.scrub;
        if !(0.0..1.0).contains(&sc.garbage_ratio) || sc.garbage_ratio == 0.0 {
            return Err(Error::Config("scrub.garbage_ratio must be above 0 and below 1".into()));
        }
        if sc.max_space_amp != 0.0 && sc.max_space_amp <= 1.0 / (1.0 - sc.garbage_ratio) {
            return Err(Error::Config(format!(
                "scrub.max_space_amp {} must be 0 (off) or above 1/(1-garbage_ratio) = {:.2}: writes would wait before scrub starts",
                sc.max_space_amp,
                1.0 / (1.0 - sc.garbage_ratio)
            )));
        }
        if sc.volume_budget_factor != 0.0 && sc.volume_budget_factor < 1.5 {
            return Err(Error::Config("scrub.volume_budget_factor must be 0 (off) or at least 1.5".into()));
        }
        if sc.check_interval_ms == 0 || sc.check_interval_ms > 60_000 {
            return Err(Error::Config("scrub.check_interval_ms must be 1..=60000".into()));
        }
        self.s3.validate()?;
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

    #[test]
    fn s3_section_hides_the_secret() {
        let c: Config = toml::from_str(
            "[s3]\nendpoint = \"http://127.0.0.1:8333\"\naccess_key_id = \"AKID42\"\nsecret_access_key = \"s3cr3t\"\npart_size = \"8M\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.s3.part_size.0, 8 << 20);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t") && !dbg.contains("AKID42"), "{dbg}");
        let ser = toml::to_string(&c).unwrap();
        assert!(!ser.contains("s3cr3t"), "{ser}");
        let bad: Config = toml::from_str("[s3]\naccess_key_id = \"x\"\n").unwrap();
        assert!(bad.validate().is_err());
    }
}
