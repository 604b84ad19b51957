//! NBD server: exports volumes and snapshots to `qemu-img`, `nbdcopy`, `nbdinfo`, fio's
//! nbd engine and backup tools, beside the vhost-user frontend and over the same volume
//! engine (which knows nothing of NBD).
//!
//! - [`protocol`]: wire format, pure decoders/encoders (unit-tested and fuzzed).
//! - [`handshake`]: fixed newstyle option haggling (GO/INFO/LIST/ABORT, structured
//!   replies, metadata contexts, the export token).
//! - [`transmission`]: the command loop of one connection.
//! - [`server`]: unix/TCP listeners, a thread per connection, shutdown.
//! - [`volume_export`]: a volume (or snapshot view) as an [`ExportTarget`].
//! - `fuzzing`: the handshake + request decoder fuzz body (seeded test).

#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod protocol;
pub mod server;
pub mod transmission;
pub mod volume_export;

use std::io;
use std::sync::Arc;

pub use server::{ListenAddr, NbdOptions, NbdServer};

use crate::volume::extents::ChangedExtent;

/// Errors of the NBD server.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The client broke the protocol (the connection is closed).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// Listener set-up failed.
    #[error("{what}: {source}")]
    Listen {
        what: String,
        #[source]
        source: io::Error,
    },
    /// Unusable server options.
    #[error("{0}")]
    Options(String),
}

/// What an NBD export serves. Implementations are called from several connection
/// threads at once.
pub trait ExportTarget: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Writes, trims and zeroing are refused.
    fn read_only(&self) -> bool;
    /// Preferred IO unit.
    fn block_size(&self) -> u32;
    /// One line for `NBD_INFO_DESCRIPTION`.
    fn description(&self) -> String {
        String::new()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Wait until writes may start (the space gate); an error when they cannot.
    fn wait_writable(&self) -> io::Result<()>;
    /// Write (after [`ExportTarget::wait_writable`]).
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Make a range read as zeroes (whole clusters become holes).
    fn zero(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Visit the allocation runs of `[offset, offset+len)`: `f(len, data)` until it
    /// returns false.
    fn allocation(&self, offset: u64, len: u64, f: &mut dyn FnMut(u64, bool) -> bool) -> io::Result<()>;
    /// Extents changed since snapshot `snapshot` (`logdisk:changed-since:SNAP`), sorted;
    /// `None` when this export cannot tell (not a snapshot export).
    fn changed_since(&self, _snapshot: &str) -> Option<io::Result<Vec<ChangedExtent>>> {
        None
    }
}

/// The exports a listener offers, by name.
pub trait ExportSet: Send + Sync {
    /// Names `NBD_OPT_LIST` shows (the first is the default export, for an empty name).
    fn names(&self) -> Vec<String>;
    /// The export named `name`; the error is shown to the client.
    fn open(&self, name: &str) -> Result<Arc<dyn ExportTarget>, String>;
}

/// The errno an NBD client sees for an IO error.
pub fn errno_of(e: &io::Error) -> u32 {
    use io::ErrorKind::*;
    match e.kind() {
        PermissionDenied | ReadOnlyFilesystem => protocol::EPERM,
        InvalidInput => protocol::EINVAL,
        StorageFull => protocol::ENOSPC,
        Unsupported => protocol::ENOTSUP,
        OutOfMemory => protocol::ENOMEM,
        _ => protocol::EIO,
    }
}
