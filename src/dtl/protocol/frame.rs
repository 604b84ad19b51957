//! The DTL frame layer: [`FrameBuf`] builds a frame (`len | crc32c | body`),
//! [`read_frame`] reads and checks one, and [`Cursor`] reads a frame body's fields with
//! every read bounds-checked.

use std::io::{self, Read, Write};

use super::{ProtoError, FRAME_HEADER};

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

/// Write a complete frame (as built by [`FrameBuf::finish`]).
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)
}
