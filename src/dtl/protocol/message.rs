//! DTL requests and replies: [`Request`] as the server decodes it and [`Reply`] as the
//! client decodes it, the frame encoders (`hello_frame`, `append_frame`, `simple_frame`,
//! `error_frame`), and the checks a HELLO's volume name and token get.

use super::{
    decode_entries, Cursor, Entry, ErrorCode, FrameBuf, ProtoError, MAGIC, MAX_TOKEN, T_APPEND, T_APPENDED, T_DONE,
    T_ENTRIES, T_ERROR, T_HELLO, T_QUERY, T_SYNC, T_SYNCED, T_TRIM, T_TRIMMED, T_WELCOME, VERSION,
};

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
