//! DTL wire format: length-prefixed, crc32c-checked frames over TCP.
//!
//! Frame: `len: u32 LE | crc32c(body): u32 LE | body`, `len` = body length, at most
//! [`MAX_FRAME`] ([`MAX_HELLO_FRAME`] before a connection is authenticated). The first
//! byte of a body is its message type; integers are little-endian.
//!
//! Client → server:
//! - `HELLO    0x01 | magic "LDTL" | version u16 | generation u32 | name_len u8 | name | token_len u16 | token`
//! - `APPEND   0x02 | req u64 | count u32 | count × entry`
//! - `SYNC     0x03 | req u64`
//! - `QUERY    0x04 | req u64 | after_sco u64`
//! - `TRIM     0x05 | req u64 | upto_sco u64`
//!
//! Server → client (one reply per request, in order; a QUERY gets any number of
//! ENTRIES then one DONE):
//! - `WELCOME  0x81 | version u16 | generation u32 | last_seq u64 | trimmed_upto u64`
//! - `APPENDED 0x82 | req u64 | last_seq u64` (written, not yet durable)
//! - `SYNCED   0x83 | req u64 | durable_seq u64`
//! - `ENTRIES  0x84 | req u64 | count u32 | count × entry`
//! - `DONE     0x85 | req u64 | count u64`
//! - `TRIMMED  0x86 | req u64 | trimmed_upto u64`
//! - `ERROR    0xEE | req u64 | code u16 | msg_len u16 | msg` — the server closes the
//!   connection after it.
//!
//! Entry (also the on-disk record body): `seq u64 | sco u64 | kind u8 | payload_len u32 |
//! payload`; kind 1 = data (`index u32 | cluster u64 | data`, data a non-empty multiple
//! of 4 KiB, at most [`MAX_DATA`]), kind 2 = record (opaque bytes, at most [`MAX_DATA`]).
//! `seq` is the per-volume sequence number the client assigns when it sends an entry.
//!
//! - `frame.rs`: the frame layer — building, reading and writing frames, and [`Cursor`],
//!   the bounds-checked reader of a frame body.
//! - `entry.rs`: [`Entry`], its encoding and the checks and decoders of encoded entries.
//! - `message.rs`: requests and replies — their encoders and decoders, and the checks of
//!   a HELLO's volume name and token.
//! - `error.rs`: [`ProtoError`] (why a frame was rejected) and [`ErrorCode`] (ERROR replies).

mod entry;
mod error;
mod frame;
mod message;
#[cfg(test)]
mod tests;

pub use entry::{check_entries, check_entry, decode_entries, decode_entry, Entry, EntryBody, EntryHead};
pub use error::{ErrorCode, ProtoError};
pub use frame::{has_complete_frame, read_frame, write_frame, Cursor, FrameBuf};
pub use message::{append_frame, error_frame, hello_frame, simple_frame, token_eq, valid_name, Reply, Request};

/// Protocol version spoken by this build.
pub const VERSION: u16 = 1;
/// Largest frame body.
pub const MAX_FRAME: usize = 8 << 20;
/// Largest frame body accepted before HELLO succeeded (a HELLO is small).
pub const MAX_HELLO_FRAME: usize = 4096;
/// Largest data or record payload of one entry.
pub const MAX_DATA: usize = 1 << 20;
/// Data payloads are multiples of this.
pub const BLOCK: usize = 4096;
/// Largest access token.
pub const MAX_TOKEN: usize = 1024;
/// Bytes of an entry before its payload.
pub const ENTRY_HEADER: usize = 8 + 8 + 1 + 4;
/// Bytes of a data payload before the data.
pub const DATA_HEADER: usize = 4 + 8;
/// Largest encoded entry.
pub const MAX_ENTRY: usize = ENTRY_HEADER + DATA_HEADER + MAX_DATA;
/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 8;

const MAGIC: &[u8; 4] = b"LDTL";

pub const T_HELLO: u8 = 0x01;
pub const T_APPEND: u8 = 0x02;
pub const T_SYNC: u8 = 0x03;
pub const T_QUERY: u8 = 0x04;
pub const T_TRIM: u8 = 0x05;
pub const T_WELCOME: u8 = 0x81;
pub const T_APPENDED: u8 = 0x82;
pub const T_SYNCED: u8 = 0x83;
pub const T_ENTRIES: u8 = 0x84;
pub const T_DONE: u8 = 0x85;
pub const T_TRIMMED: u8 = 0x86;
pub const T_ERROR: u8 = 0xEE;

const KIND_DATA: u8 = 1;
const KIND_RECORD: u8 = 2;
