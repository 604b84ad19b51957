//! Library error type: every failure the volume engine, backends and data dir report.

use std::io;
use std::path::PathBuf;

/// Errors of the logdisk library. The binary turns them into one clear line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A management request that cannot be done in the current state (the message says
    /// why: already attached, socket in use, a hypervisor is connected, ...).
    #[error("{0}")]
    Refused(String),
    #[error("volume {0} not found")]
    VolumeNotFound(String),
    #[error("volume {0} already exists")]
    VolumeExists(String),
    #[error("data dir {path} is in use by pid {pid}")]
    DataDirInUse { path: PathBuf, pid: String },
    #[error("IO {op} at offset {offset} length {len} is outside the volume (size {size})")]
    OutOfRange { op: &'static str, offset: u64, len: u64, size: u64 },
    #[error("volume {0} is read-only")]
    ReadOnly(String),
    #[error("object {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("object {0} not found in the object store")]
    ObjectNotFound(String),
    #[error("object {0} already exists in the object store")]
    ObjectExists(String),
    #[error("object store: {0}")]
    Store(String),
    #[error("timed out after {secs} s waiting for the object store: {what}")]
    StoreTimeout { what: String, secs: u64 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("volume {volume}: no space: {detail}")]
    NoSpace { volume: String, detail: String },
    #[error("volume is shut down")]
    ShutDown,
    #[error("DTL server refused ({code}): {message}")]
    DtlRefused { code: crate::dtl::ErrorCode, message: String },
    #[error("DTL: {0}")]
    Dtl(String),
    /// The TLS handshake with a DTL server failed (untrusted certificate, wrong name, a
    /// server without TLS).
    #[error("{0}")]
    DtlTls(String),
    /// A key source that cannot be read or holds no valid key (never the key itself).
    #[error("encryption key: {0}")]
    Key(String),
    #[error("volume {volume} is encrypted with key id {key_id}: {detail}")]
    KeyMissing { volume: String, key_id: String, detail: String },
    #[error("volume {0} was crypto-erased: it can no longer be opened")]
    CryptoErased(String),
    #[error("volume {volume} was taken over by a newer owner{}: this host's copy (generation {generation}) is fenced", if *by > 0 { format!(" (generation {by})") } else { String::new() })]
    Fenced { volume: String, generation: u32, by: u32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wrap an io::Error with a short description of what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// The errno a block frontend should see for this error.
    pub fn to_io_error(&self) -> io::Error {
        match self {
            Error::Io { source, .. } => io::Error::new(source.kind(), self.to_string()),
            Error::OutOfRange { .. } | Error::InvalidArgument(_) => {
                io::Error::new(io::ErrorKind::InvalidInput, self.to_string())
            }
            Error::ReadOnly(_) => io::Error::new(io::ErrorKind::PermissionDenied, self.to_string()),
            Error::NoSpace { .. } => io::Error::new(io::ErrorKind::StorageFull, self.to_string()),
            _ => io::Error::other(self.to_string()),
        }
    }

    /// A local file system out of space (ENOSPC, EDQUOT) or the space gate's refusal:
    /// a condition that ends when space is freed, not with time.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::NoSpace { .. } => true,
            Error::Io { source, .. } => {
                source.kind() == io::ErrorKind::StorageFull
                    || matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
            }
            _ => false,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        e.to_io_error()
    }
}

/// Shorthand to attach context to io results.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
