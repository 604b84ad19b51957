//! Management socket of a running daemon (`<data-dir>/control.sock`): the CLI sends
//! one JSON request per line and reads one JSON response per line.

pub mod client;
pub mod metrics;
pub mod ops;
pub mod protocol;
pub mod server;

/// File name of the control socket inside the data dir.
pub const SOCKET_NAME: &str = "control.sock";
