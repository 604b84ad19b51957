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

use std::fmt;
use std::io::{self, Read, Write};

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

/// What an entry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryBody {
    /// Cluster data written by the guest: `index` is its slot inside the SCO, `cluster`
    /// the volume cluster number.
    Data { index: u32, cluster: u64, data: Vec<u8> },
    /// Opaque metadata (a TLog record such as a discard or a snapshot marker).
    Record(Vec<u8>),
}

/// One logged write or record, tagged with the SCO (epoch) it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sco: u64,
    pub body: EntryBody,
}

impl Entry {
    pub fn data(sco: u64, index: u32, cluster: u64, data: Vec<u8>) -> Entry {
        Entry { sco, body: EntryBody::Data { index, cluster, data } }
    }

    pub fn record(sco: u64, bytes: Vec<u8>) -> Entry {
        Entry { sco, body: EntryBody::Record(bytes) }
    }

    fn payload_len(&self) -> usize {
        match &self.body {
            EntryBody::Data { data, .. } => DATA_HEADER + data.len(),
            EntryBody::Record(r) => r.len(),
        }
    }

    /// Bytes of this entry on the wire and on disk.
    pub fn encoded_len(&self) -> usize {
        ENTRY_HEADER + self.payload_len()
    }

    /// Whether the entry respects the limits (checked before it is queued).
    pub fn validate(&self) -> Result<(), ProtoError> {
        match &self.body {
            EntryBody::Data { data, .. } => check_data_len(data.len()),
            EntryBody::Record(r) if r.len() > MAX_DATA => {
                Err(ProtoError::Malformed(format!("record of {} bytes (max {MAX_DATA})", r.len())))
            }
            EntryBody::Record(_) => Ok(()),
        }
    }

    /// Append the encoding of this entry with sequence number `seq` to `out`.
    pub fn encode(&self, seq: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&self.sco.to_le_bytes());
        match &self.body {
            EntryBody::Data { index, cluster, data } => {
                out.push(KIND_DATA);
                out.extend_from_slice(&(self.payload_len() as u32).to_le_bytes());
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&cluster.to_le_bytes());
                out.extend_from_slice(data);
            }
            EntryBody::Record(r) => {
                out.push(KIND_RECORD);
                out.extend_from_slice(&(r.len() as u32).to_le_bytes());
                out.extend_from_slice(r);
            }
        }
    }
}

fn check_data_len(n: usize) -> Result<(), ProtoError> {
    if n == 0 || !n.is_multiple_of(BLOCK) || n > MAX_DATA {
        return Err(ProtoError::Malformed(format!(
            "data of {n} bytes (must be a non-empty multiple of {BLOCK}, at most {MAX_DATA})"
        )));
    }
    Ok(())
}

/// The fixed part of an encoded entry, read without copying its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHead {
    pub seq: u64,
    pub sco: u64,
    /// Encoded length of the whole entry.
    pub len: usize,
}

/// Check the entry at the start of `buf`: structure and limits. Returns its header.
pub fn check_entry(buf: &[u8]) -> Result<EntryHead, ProtoError> {
    let mut c = Cursor::new(buf);
    let seq = c.u64()?;
    let sco = c.u64()?;
    let kind = c.u8()?;
    let plen = c.u32()? as usize;
    match kind {
        KIND_DATA => {
            if plen < DATA_HEADER {
                return Err(ProtoError::Malformed(format!("data entry payload of {plen} bytes")));
            }
            check_data_len(plen - DATA_HEADER)?;
        }
        KIND_RECORD => {
            if plen > MAX_DATA {
                return Err(ProtoError::Malformed(format!("record of {plen} bytes (max {MAX_DATA})")));
            }
        }
        k => return Err(ProtoError::Malformed(format!("unknown entry kind {k}"))),
    }
    c.bytes(plen)?;
    Ok(EntryHead { seq, sco, len: ENTRY_HEADER + plen })
}

/// Decode the entry at the start of `buf` (copies the payload).
pub fn decode_entry(buf: &[u8]) -> Result<(EntryHead, Entry), ProtoError> {
    let head = check_entry(buf)?;
    let payload = &buf[ENTRY_HEADER..head.len];
    let body = if buf[16] == KIND_DATA {
        let index = u32::from_le_bytes(payload[0..4].try_into().unwrap());
        let cluster = u64::from_le_bytes(payload[4..12].try_into().unwrap());
        EntryBody::Data { index, cluster, data: payload[DATA_HEADER..].to_vec() }
    } else {
        EntryBody::Record(payload.to_vec())
    };
    Ok((head, Entry { sco: head.sco, body }))
}

/// Walk `count` encoded entries that must fill `raw` exactly.
pub fn check_entries(raw: &[u8], count: u32) -> Result<Vec<EntryHead>, ProtoError> {
    let mut heads = Vec::with_capacity((count as usize).min(raw.len() / ENTRY_HEADER + 1));
    let mut off = 0;
    for _ in 0..count {
        let h = check_entry(&raw[off..])?;
        off += h.len;
        heads.push(h);
    }
    if off != raw.len() {
        return Err(ProtoError::Malformed(format!("{} bytes after {count} entries", raw.len() - off)));
    }
    Ok(heads)
}

/// Decode `count` entries that fill `raw` exactly.
pub fn decode_entries(raw: &[u8], count: u32) -> Result<Vec<(u64, Entry)>, ProtoError> {
    let mut out = Vec::new();
    let mut off = 0;
    for _ in 0..count {
        let (h, e) = decode_entry(&raw[off..])?;
        off += h.len;
        out.push((h.seq, e));
    }
    if off != raw.len() {
        return Err(ProtoError::Malformed(format!("{} bytes after {count} entries", raw.len() - off)));
    }
    Ok(out)
}

/// Why a frame or message was rejected.
#[derive(Debug)]
pub enum ProtoError {
    Io(io::Error),
    /// The peer closed the connection inside a frame.
    Truncated,
    /// A frame length above the limit (the body is not read).
    TooLarge(usize),
    /// The frame's checksum does not match its body.
    BadChecksum,
    /// A frame that does not decode.
    Malformed(String),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Io(e) => write!(f, "{e}"),
            ProtoError::Truncated => write!(f, "connection closed inside a frame"),
            ProtoError::TooLarge(n) => write!(f, "frame of {n} bytes is above the limit"),
            ProtoError::BadChecksum => write!(f, "frame checksum mismatch"),
            ProtoError::Malformed(m) => write!(f, "malformed frame: {m}"),
        }
    }
}

impl std::error::Error for ProtoError {}

impl From<io::Error> for ProtoError {
    fn from(e: io::Error) -> Self {
        ProtoError::Io(e)
    }
}

/// Error codes of ERROR replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The token does not match the server's.
    BadToken,
    /// The server does not speak this protocol version.
    BadVersion,
    /// The volume name is not 1–64 characters of `A-Za-z0-9._-` (not starting with `.`/`-`).
    BadName,
    /// A higher owner generation holds the volume.
    Fenced,
    /// A frame that does not decode, a bad checksum, or a request before HELLO.
    Malformed,
    /// A frame above the size limit.
    TooLarge,
    /// Entries whose sequence numbers leave a gap after what the server holds.
    SeqGap,
    /// The server could not read or write its disk.
    Storage,
    /// Too many connections, or the server is stopping.
    Busy,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::BadToken => 1,
            ErrorCode::BadVersion => 2,
            ErrorCode::BadName => 3,
            ErrorCode::Fenced => 4,
            ErrorCode::Malformed => 5,
            ErrorCode::TooLarge => 6,
            ErrorCode::SeqGap => 7,
            ErrorCode::Storage => 8,
            ErrorCode::Busy => 9,
            ErrorCode::Other(n) => n,
        }
    }

    pub fn from_u16(n: u16) -> ErrorCode {
        match n {
            1 => ErrorCode::BadToken,
            2 => ErrorCode::BadVersion,
            3 => ErrorCode::BadName,
            4 => ErrorCode::Fenced,
            5 => ErrorCode::Malformed,
            6 => ErrorCode::TooLarge,
            7 => ErrorCode::SeqGap,
            8 => ErrorCode::Storage,
            9 => ErrorCode::Busy,
            n => ErrorCode::Other(n),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorCode::BadToken => "bad-token",
            ErrorCode::BadVersion => "bad-version",
            ErrorCode::BadName => "bad-name",
            ErrorCode::Fenced => "fenced",
            ErrorCode::Malformed => "malformed",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::SeqGap => "seq-gap",
            ErrorCode::Storage => "storage",
            ErrorCode::Busy => "busy",
            ErrorCode::Other(n) => return write!(f, "code-{n}"),
        };
        f.write_str(s)
    }
}

/// Whether `name` is a valid volume name: 1–64 characters of `A-Za-z0-9._-`, not
/// starting with `.` or `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Compare two secrets in time that depends only on their lengths.
pub fn token_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    // Keep the compiler from turning the loop into an early exit.
    std::hint::black_box(diff) == 0 && a.len() == b.len()
}

/// A frame body under construction; `finish` fills in the header.
pub struct FrameBuf(Vec<u8>);

impl FrameBuf {
    pub fn new(kind: u8) -> FrameBuf {
        Self::with_capacity(kind, 64)
    }

    pub fn with_capacity(kind: u8, cap: usize) -> FrameBuf {
        let mut v = Vec::with_capacity(FRAME_HEADER + 1 + cap);
        v.extend_from_slice(&[0; FRAME_HEADER]);
        v.push(kind);
        FrameBuf(v)
    }

    pub fn u8(&mut self, x: u8) -> &mut Self {
        self.0.push(x);
        self
    }

    pub fn u16(&mut self, x: u16) -> &mut Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }

    pub fn u32(&mut self, x: u32) -> &mut Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }

    pub fn u64(&mut self, x: u64) -> &mut Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    /// The body so far (without the header).
    pub fn body_len(&self) -> usize {
        self.0.len() - FRAME_HEADER
    }

    pub fn buf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    /// The complete frame: header + body.
    pub fn finish(mut self) -> Vec<u8> {
        let len = self.body_len() as u32;
        let crc = crate::crc::crc32c(&self.0[FRAME_HEADER..]);
        self.0[0..4].copy_from_slice(&len.to_le_bytes());
        self.0[4..8].copy_from_slice(&crc.to_le_bytes());
        self.0
    }
}

/// Read one frame body into `buf` (replacing its contents). `Ok(false)` on a clean end of
/// stream before the first byte of a frame.
pub fn read_frame(r: &mut impl Read, max: usize, buf: &mut Vec<u8>) -> Result<bool, ProtoError> {
    let mut head = [0u8; FRAME_HEADER];
    let mut got = 0;
    while got < FRAME_HEADER {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(ProtoError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtoError::Io(e)),
        }
    }
    let len = u32::from_le_bytes(head[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().unwrap());
    if len > max {
        return Err(ProtoError::TooLarge(len));
    }
    if len == 0 {
        return Err(ProtoError::Malformed("empty frame".into()));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ProtoError::Truncated,
        _ => ProtoError::Io(e),
    })?;
    if crate::crc::crc32c(buf) != crc {
        return Err(ProtoError::BadChecksum);
    }
    Ok(true)
}

/// Whether `buf` starts with a complete frame (used to batch replies to pipelined requests).
pub fn has_complete_frame(buf: &[u8]) -> bool {
    buf.len() >= FRAME_HEADER && buf.len() - FRAME_HEADER >= u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize
}

/// Little-endian reader over a frame body; every read is bounds-checked.
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() - self.pos < n {
            return Err(ProtoError::Malformed(format!("short by {} bytes", n - (self.buf.len() - self.pos))));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().unwrap()))
    }

    pub fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }

    pub fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().unwrap()))
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub fn end(&self) -> Result<(), ProtoError> {
        if self.pos != self.buf.len() {
            return Err(ProtoError::Malformed(format!("{} trailing bytes", self.buf.len() - self.pos)));
        }
        Ok(())
    }
}

/// A request as the server sees it (APPEND borrows its entries from the frame).
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Hello { version: u16, generation: u32, volume: String, token: Vec<u8> },
    Append { req: u64, count: u32, raw: &'a [u8] },
    Sync { req: u64 },
    Query { req: u64, after_sco: u64 },
    Trim { req: u64, upto_sco: u64 },
}

impl<'a> Request<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Request<'a>, ProtoError> {
        let mut c = Cursor::new(body);
        let r = match c.u8()? {
            T_HELLO => {
                if c.bytes(4)? != MAGIC {
                    return Err(ProtoError::Malformed("bad magic in HELLO".into()));
                }
                let version = c.u16()?;
                let generation = c.u32()?;
                let nlen = c.u8()? as usize;
                let volume = std::str::from_utf8(c.bytes(nlen)?)
                    .map_err(|_| ProtoError::Malformed("volume name is not UTF-8".into()))?
                    .to_string();
                let tlen = c.u16()? as usize;
                if tlen > MAX_TOKEN {
                    return Err(ProtoError::Malformed(format!("token of {tlen} bytes (max {MAX_TOKEN})")));
                }
                let token = c.bytes(tlen)?.to_vec();
                Request::Hello { version, generation, volume, token }
            }
            T_APPEND => {
                let req = c.u64()?;
                let count = c.u32()?;
                return Ok(Request::Append { req, count, raw: c.rest() });
            }
            T_SYNC => Request::Sync { req: c.u64()? },
            T_QUERY => Request::Query { req: c.u64()?, after_sco: c.u64()? },
            T_TRIM => Request::Trim { req: c.u64()?, upto_sco: c.u64()? },
            t => return Err(ProtoError::Malformed(format!("unknown request type {t:#x}"))),
        };
        c.end()?;
        Ok(r)
    }
}

/// Encode a HELLO frame.
pub fn hello_frame(generation: u32, volume: &str, token: &[u8]) -> Vec<u8> {
    let mut f = FrameBuf::new(T_HELLO);
    f.bytes(MAGIC).u16(VERSION).u32(generation);
    f.u8(volume.len().min(255) as u8).bytes(&volume.as_bytes()[..volume.len().min(255)]);
    f.u16(token.len().min(u16::MAX as usize) as u16).bytes(&token[..token.len().min(u16::MAX as usize)]);
    f.finish()
}

/// Encode an APPEND frame of `(seq, entry)` pairs.
pub fn append_frame<'e>(req: u64, entries: impl ExactSizeIterator<Item = (u64, &'e Entry)>) -> Vec<u8> {
    let mut f = FrameBuf::with_capacity(T_APPEND, 16);
    f.u64(req).u32(entries.len() as u32);
    for (seq, e) in entries {
        e.encode(seq, f.buf_mut());
    }
    f.finish()
}

/// Encode a SYNC, QUERY or TRIM frame (`arg` is ignored for SYNC).
pub fn simple_frame(kind: u8, req: u64, arg: u64) -> Vec<u8> {
    let mut f = FrameBuf::new(kind);
    f.u64(req);
    if kind != T_SYNC {
        f.u64(arg);
    }
    f.finish()
}

/// An ERROR frame.
pub fn error_frame(req: u64, code: ErrorCode, msg: &str) -> Vec<u8> {
    let mut cut = msg.len().min(1024);
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut f = FrameBuf::new(T_ERROR);
    f.u64(req).u16(code.to_u16()).u16(cut as u16).bytes(&msg.as_bytes()[..cut]);
    f.finish()
}

/// A reply as the client sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Welcome { version: u16, generation: u32, last_seq: u64, trimmed_upto: u64 },
    Appended { req: u64, last_seq: u64 },
    Synced { req: u64, durable_seq: u64 },
    Entries { req: u64, entries: Vec<(u64, Entry)> },
    Done { req: u64, count: u64 },
    Trimmed { req: u64, trimmed_upto: u64 },
    Error { req: u64, code: ErrorCode, message: String },
}

impl Reply {
    pub fn decode(body: &[u8]) -> Result<Reply, ProtoError> {
        let mut c = Cursor::new(body);
        let r = match c.u8()? {
            T_WELCOME => {
                Reply::Welcome { version: c.u16()?, generation: c.u32()?, last_seq: c.u64()?, trimmed_upto: c.u64()? }
            }
            T_APPENDED => Reply::Appended { req: c.u64()?, last_seq: c.u64()? },
            T_SYNCED => Reply::Synced { req: c.u64()?, durable_seq: c.u64()? },
            T_ENTRIES => {
                let req = c.u64()?;
                let count = c.u32()?;
                Reply::Entries { req, entries: decode_entries(c.rest(), count)? }
            }
            T_DONE => Reply::Done { req: c.u64()?, count: c.u64()? },
            T_TRIMMED => Reply::Trimmed { req: c.u64()?, trimmed_upto: c.u64()? },
            T_ERROR => {
                let req = c.u64()?;
                let code = ErrorCode::from_u16(c.u16()?);
                let n = c.u16()? as usize;
                let message = String::from_utf8_lossy(c.bytes(n)?).into_owned();
                Reply::Error { req, code, message }
            }
            t => return Err(ProtoError::Malformed(format!("unknown reply type {t:#x}"))),
        };
        c.end()?;
        Ok(r)
    }
}

/// Write a complete frame (as built by [`FrameBuf::finish`]).
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> Vec<u8> {
        let mut r = frame;
        let mut b = Vec::new();
        assert!(read_frame(&mut r, MAX_FRAME, &mut b).unwrap());
        assert!(r.is_empty());
        b
    }

    #[test]
    fn hello_round_trip() {
        let f = hello_frame(7, "vol-1", b"secret");
        match Request::decode(&body(&f)).unwrap() {
            Request::Hello { version, generation, volume, token } => {
                assert_eq!(
                    (version, generation, volume.as_str(), token.as_slice()),
                    (VERSION, 7, "vol-1", &b"secret"[..])
                );
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn append_and_entries_round_trip() {
        let es = [Entry::data(3, 1, 99, vec![7; 8192]), Entry::record(3, b"discard 5..9".to_vec())];
        let f = append_frame(42, es.iter().enumerate().map(|(i, e)| (10 + i as u64, e)));
        let b = body(&f);
        let Request::Append { req, count, raw } = Request::decode(&b).unwrap() else { panic!() };
        assert_eq!((req, count), (42, 2));
        let heads = check_entries(raw, count).unwrap();
        assert_eq!(heads.iter().map(|h| (h.seq, h.sco)).collect::<Vec<_>>(), [(10, 3), (11, 3)]);
        let decoded = decode_entries(raw, count).unwrap();
        assert_eq!(decoded, vec![(10, es[0].clone()), (11, es[1].clone())]);
        // The same entries as a query reply.
        let mut f = FrameBuf::new(T_ENTRIES);
        f.u64(5).u32(2).bytes(raw);
        assert_eq!(Reply::decode(&body(&f.finish())).unwrap(), Reply::Entries { req: 5, entries: decoded });
    }

    #[test]
    fn bad_frames_are_rejected() {
        let f = simple_frame(T_SYNC, 1, 0);
        // Truncated anywhere.
        for cut in 1..f.len() {
            let mut r = &f[..cut];
            assert!(matches!(read_frame(&mut r, MAX_FRAME, &mut Vec::new()), Err(ProtoError::Truncated)), "cut {cut}");
        }
        // Empty stream is a clean end.
        assert!(!read_frame(&mut &[][..], MAX_FRAME, &mut Vec::new()).unwrap());
        // Flipped bit.
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(read_frame(&mut &bad[..], MAX_FRAME, &mut Vec::new()), Err(ProtoError::BadChecksum)));
        // Oversized length: refused before reading a body.
        let mut big = (MAX_FRAME as u32 + 1).to_le_bytes().to_vec();
        big.extend_from_slice(&[0; 4]);
        assert!(matches!(read_frame(&mut &big[..], MAX_FRAME, &mut Vec::new()), Err(ProtoError::TooLarge(_))));
        assert!(matches!(read_frame(&mut &f[..], 4, &mut Vec::new()), Err(ProtoError::TooLarge(_))));
        // Trailing bytes, unknown type, short bodies.
        let mut fb = FrameBuf::new(T_SYNC);
        fb.u64(1).u8(0);
        assert!(Request::decode(&body(&fb.finish())).is_err());
        assert!(Request::decode(&[0x77]).is_err());
        assert!(Request::decode(&[T_QUERY, 1, 2]).is_err());
        assert!(Reply::decode(&[T_WELCOME, 1]).is_err());
    }

    #[test]
    fn entry_limits() {
        assert!(Entry::data(0, 0, 0, vec![0; 100]).validate().is_err());
        assert!(Entry::data(0, 0, 0, vec![]).validate().is_err());
        assert!(Entry::data(0, 0, 0, vec![0; MAX_DATA + BLOCK]).validate().is_err());
        assert!(Entry::data(0, 0, 0, vec![0; MAX_DATA]).validate().is_ok());
        assert!(Entry::record(0, vec![0; MAX_DATA + 1]).validate().is_err());
        // A count that claims more entries than the bytes hold, or fewer.
        let mut raw = Vec::new();
        Entry::record(1, vec![1, 2, 3]).encode(1, &mut raw);
        assert!(check_entries(&raw, 2).is_err());
        assert!(check_entries(&raw, 0).is_err());
        assert!(check_entries(&raw, 1).is_ok());
        // Unknown kind, huge payload length.
        let mut k = raw.clone();
        k[16] = 9;
        assert!(check_entry(&k).is_err());
        let mut l = raw.clone();
        l[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(check_entry(&l).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..20000 {
            let n = rng.gen_range(0..64);
            let mut b: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            if !b.is_empty() && rng.gen_bool(0.7) {
                b[0] = [T_HELLO, T_APPEND, T_SYNC, T_QUERY, T_TRIM, T_WELCOME, T_ENTRIES, T_ERROR][rng.gen_range(0..8)];
            }
            let _ = Request::decode(&b);
            let _ = Reply::decode(&b);
            let _ = check_entry(&b);
            let _ = read_frame(&mut &b[..], MAX_FRAME, &mut Vec::new());
        }
    }

    #[test]
    fn names_and_tokens() {
        assert!(valid_name("vm1") && valid_name("a.b_c-d") && valid_name(&"x".repeat(64)));
        assert!(
            !valid_name("")
                && !valid_name(".x")
                && !valid_name("-x")
                && !valid_name("a/b")
                && !valid_name(&"x".repeat(65))
        );
        assert!(token_eq(b"abc", b"abc"));
        assert!(!token_eq(b"abc", b"abd") && !token_eq(b"abc", b"ab") && !token_eq(b"", b"a"));
    }
}
