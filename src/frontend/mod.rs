//! vhost-user-blk frontend: serves a [`target::BlockTarget`] to a hypervisor.
//!
//! - [`target`]: the contract with the volume engine (fixed).
//! - [`config`]: virtio features, protocol features, config space and request limits.
//! - [`request`]: pure request parser and executor (unit-tested and fuzzed).
//! - [`device`]: the `VhostUserBackend` implementation, one worker thread per queue.
//! - [`inflight_region`]: the inflight I/O tracking region (restart under a running guest);
//!   `device_inflight` uses it on the device.
//! - [`server`]: socket, accept loop, reconnects and shutdown ([`spawn_device`]).
//! - `fuzzing`: the request-parser fuzz body (used by `fuzz/` and a seeded test).

pub mod config;
pub mod device;
mod device_inflight;
#[doc(hidden)]
pub mod fuzzing;
pub mod inflight;
pub mod inflight_region;
pub mod request;
pub mod server;
pub mod target;
pub mod volume_target;

use std::path::PathBuf;

pub use server::{spawn_device, DeviceHandle, ServeOptions};

/// Errors of the frontend's public API.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The [`ServeOptions`] are unusable.
    #[error("invalid serve options: {0}")]
    InvalidOptions(String),
    /// Creating, binding or configuring the socket failed.
    #[error("socket {}: {source}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another server answers on the socket.
    #[error("socket {} is in use by a running server", .0.display())]
    SocketInUse(PathBuf),
    /// Something other than a socket exists at the path.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// The server thread could not be started.
    #[error("starting the server thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The server thread panicked.
    #[error("the server thread for {} panicked", .0.display())]
    Panicked(PathBuf),
}
