//! NBD wire format: magics, option/command/reply numbers, and pure decoders and encoders
//! for handshake options, requests and replies (no IO; unit-tested and fuzzed).
//!
//! Everything on the wire is big-endian. Written from the protocol description
//! (NetworkBlockDevice/nbd `doc/proto.md`): fixed newstyle negotiation, `NBD_OPT_GO`/
//! `INFO`, structured replies and metadata contexts.

use super::NbdError;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// NBD_REP_INFO items.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TF_HAS_FLAGS: u16 = 1 << 0;
pub const TF_READ_ONLY: u16 = 1 << 1;
pub const TF_SEND_FLUSH: u16 = 1 << 2;
pub const TF_SEND_FUA: u16 = 1 << 3;
pub const TF_SEND_TRIM: u16 = 1 << 5;
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TF_SEND_DF: u16 = 1 << 7;
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TF_SEND_FAST_ZERO: u16 = 1 << 11;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// Structured reply chunks.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

// base:allocation flags.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

// Errors in replies (Linux errno values, as the protocol fixes them).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Longest string (export name, query) a client may send.
pub const MAX_STRING: usize = 4096;
/// Largest option payload accepted (bigger ones close the connection).
pub const MAX_OPTION_LEN: u32 = 64 * 1024;

/// An option header: `IHAVEOPT`, option, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

pub fn parse_option_header(b: &[u8; 16]) -> Result<OptionHeader, NbdError> {
    let magic = u64::from_be_bytes(b[0..8].try_into().expect("8 bytes"));
    if magic != IHAVEOPT {
        return Err(NbdError::Protocol(format!("bad option magic {magic:#x}")));
    }
    Ok(OptionHeader {
        option: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
        len: u32::from_be_bytes(b[12..16].try_into().expect("4 bytes")),
    })
}

/// A transmission-phase request header (28 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

pub const REQUEST_LEN: usize = 28;

pub fn parse_request(b: &[u8; REQUEST_LEN]) -> Result<Request, NbdError> {
    let magic = u32::from_be_bytes(b[0..4].try_into().expect("4 bytes"));
    if magic != REQUEST_MAGIC {
        return Err(NbdError::Protocol(format!("bad request magic {magic:#x}")));
    }
    Ok(Request {
        flags: u16::from_be_bytes([b[4], b[5]]),
        kind: u16::from_be_bytes([b[6], b[7]]),
        cookie: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
        offset: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
        len: u32::from_be_bytes(b[24..28].try_into().expect("4 bytes")),
    })
}

/// Reads big-endian fields from an option payload; every short read is an error.
struct Fields<'a> {
    b: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], NbdError> {
        if self.b.len() < n {
            return Err(NbdError::Protocol("option data is shorter than its fields".into()));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u16(&mut self) -> Result<u16, NbdError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, NbdError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn string(&mut self) -> Result<&'a str, NbdError> {
        let n = self.u32()? as usize;
        if n > MAX_STRING {
            return Err(NbdError::Protocol(format!("string of {n} bytes is longer than {MAX_STRING}")));
        }
        utf8(self.take(n)?)
    }
    fn done(&self) -> Result<(), NbdError> {
        if !self.b.is_empty() {
            return Err(NbdError::Protocol(format!("{} bytes of trailing option data", self.b.len())));
        }
        Ok(())
    }
}

/// A protocol string: UTF-8 without NUL.
pub fn utf8(b: &[u8]) -> Result<&str, NbdError> {
    let s = std::str::from_utf8(b).map_err(|_| NbdError::Protocol("string is not UTF-8".into()))?;
    if s.contains('\0') {
        return Err(NbdError::Protocol("string contains NUL".into()));
    }
    Ok(s)
}

/// `NBD_OPT_INFO` / `NBD_OPT_GO` data: export name and the info items asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct GoRequest<'a> {
    pub name: &'a str,
    pub infos: Vec<u16>,
}

pub fn parse_go(data: &[u8]) -> Result<GoRequest<'_>, NbdError> {
    let mut f = Fields { b: data };
    let name = f.string()?;
    let n = f.u16()?;
    let mut infos = Vec::with_capacity(n.min(16) as usize);
    for _ in 0..n {
        infos.push(f.u16()?);
    }
    f.done()?;
    Ok(GoRequest { name, infos })
}

/// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT` data.
#[derive(Debug, PartialEq, Eq)]
pub struct MetaRequest<'a> {
    pub name: &'a str,
    pub queries: Vec<&'a str>,
}

/// Most queries one meta-context option may carry.
pub const MAX_QUERIES: u32 = 64;

pub fn parse_meta(data: &[u8]) -> Result<MetaRequest<'_>, NbdError> {
    let mut f = Fields { b: data };
    let name = f.string()?;
    let n = f.u32()?;
    if n > MAX_QUERIES {
        return Err(NbdError::Protocol(format!("{n} meta-context queries (at most {MAX_QUERIES})")));
    }
    let mut queries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        queries.push(f.string()?);
    }
    f.done()?;
    Ok(MetaRequest { name, queries })
}

/// Append an option reply.
pub fn opt_reply(out: &mut Vec<u8>, option: u32, kind: u32, data: &[u8]) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Append an `NBD_REP_INFO` reply carrying `NBD_INFO_EXPORT`.
pub fn info_export(out: &mut Vec<u8>, option: u32, size: u64, flags: u16) {
    let mut d = Vec::with_capacity(12);
    d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    d.extend_from_slice(&size.to_be_bytes());
    d.extend_from_slice(&flags.to_be_bytes());
    opt_reply(out, option, REP_INFO, &d);
}

/// Append an `NBD_REP_INFO` reply carrying `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size(out: &mut Vec<u8>, option: u32, min: u32, preferred: u32, max: u32) {
    let mut d = Vec::with_capacity(14);
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for v in [min, preferred, max] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    opt_reply(out, option, REP_INFO, &d);
}

/// Append an `NBD_REP_INFO` reply carrying a name or a description.
pub fn info_string(out: &mut Vec<u8>, option: u32, item: u16, s: &str) {
    let mut d = Vec::with_capacity(2 + s.len());
    d.extend_from_slice(&item.to_be_bytes());
    d.extend_from_slice(s.as_bytes());
    opt_reply(out, option, REP_INFO, &d);
}

/// A simple reply header (16 bytes).
pub fn simple_reply(err: u32, cookie: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&err.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h
}

/// A structured reply chunk header (20 bytes) for a payload of `len` bytes.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, len: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&flags.to_be_bytes());
    h[6..8].copy_from_slice(&kind.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h[16..20].copy_from_slice(&len.to_be_bytes());
    h
}

/// The name of an option, for logs.
pub fn option_name(o: u32) -> &'static str {
    match o {
        OPT_EXPORT_NAME => "EXPORT_NAME",
        OPT_ABORT => "ABORT",
        OPT_LIST => "LIST",
        OPT_STARTTLS => "STARTTLS",
        OPT_INFO => "INFO",
        OPT_GO => "GO",
        OPT_STRUCTURED_REPLY => "STRUCTURED_REPLY",
        OPT_LIST_META_CONTEXT => "LIST_META_CONTEXT",
        OPT_SET_META_CONTEXT => "SET_META_CONTEXT",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(&(s.len() as u32).to_be_bytes());
        b.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn go_and_meta_round_trip() {
        let mut d = Vec::new();
        string(&mut d, "vol@s1");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        assert_eq!(parse_go(&d).unwrap(), GoRequest { name: "vol@s1", infos: vec![INFO_BLOCK_SIZE, INFO_NAME] });
        assert!(parse_go(&d[..d.len() - 1]).is_err());
        let mut extra = d.clone();
        extra.push(0);
        assert!(parse_go(&extra).is_err());

        let mut m = Vec::new();
        string(&mut m, "v");
        m.extend_from_slice(&2u32.to_be_bytes());
        string(&mut m, "base:allocation");
        string(&mut m, "logdisk:changed-since:a");
        let r = parse_meta(&m).unwrap();
        assert_eq!(r.queries, vec!["base:allocation", "logdisk:changed-since:a"]);
        // A count larger than the data, a NUL, an oversized string.
        let mut bad = Vec::new();
        string(&mut bad, "v");
        bad.extend_from_slice(&3u32.to_be_bytes());
        assert!(parse_meta(&bad).is_err());
        assert!(parse_go(b"\0\0\0\x01\0\0\0").is_err());
        let mut big = Vec::new();
        big.extend_from_slice(&(MAX_STRING as u32 + 1).to_be_bytes());
        big.resize(big.len() + MAX_STRING + 1, b'a');
        assert!(parse_go(&big).is_err());
    }

    #[test]
    fn request_header() {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        b[8..16].copy_from_slice(&7u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = parse_request(&b).unwrap();
        assert_eq!(r, Request { flags: CMD_FLAG_FUA, kind: CMD_WRITE, cookie: 7, offset: 4096, len: 512 });
        b[0] ^= 1;
        assert!(parse_request(&b).is_err());
    }
}
