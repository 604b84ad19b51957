//! Distributed Transaction Log (DTL): a peer host keeps a copy of every write a volume
//! has not yet made safe in the object store, so the volume can be restarted on another
//! host without losing acknowledged writes.
//!
//! - [`protocol`]: the binary wire format (crc32c-checked frames, token HELLO, entries).
//! - [`log`]: the server's per-volume store (append-only checksummed segments on disk,
//!   owner-generation fencing, trim by SCO).
//! - [`server`]: `logdisk dtl serve` — TCP listener, a thread per connection.
//! - [`fuzzing`]: the protocol decoder fuzz body (cargo-fuzz target `dtl`).
//! - [`tls`]: plain or rustls connections shared by a reader and a writer thread.
//! - [`client`]: what a volume uses — batching, pipelining, reconnect with backoff.
//!
//! Ownership: each owner of a volume says hello with a generation; a higher generation
//! fences every lower one on that server. Entries carry the SCO (epoch) they belong to;
//! once an SCO is in the object store the owner trims the DTL up to it.

pub mod client;
pub mod fuzzing;
pub mod log;
pub mod protocol;
pub mod server;
pub mod tls;

pub use client::{DtlClient, DtlConfig, DtlState};
pub use protocol::{Entry, EntryBody, ErrorCode};
pub use server::{DtlServer, ServerOptions};
