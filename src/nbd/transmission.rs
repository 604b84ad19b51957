//! The transmission phase of one connection: read a request, execute it against the
//! export, reply; in order, synchronously (parallelism comes from several connections,
//! which `NBD_FLAG_CAN_MULTI_CONN` allows: every connection shares the volume and a flush
//! covers every completed write).
//!
//! READ, WRITE, FLUSH, TRIM, WRITE_ZEROES (FUA, NO_HOLE, FAST_ZERO), BLOCK_STATUS, DISC.
//! Requests outside the export or with a payload over [`MAX_PAYLOAD`] get `EINVAL`
//! (`EOVERFLOW` for reads with DF); an oversized write closes the connection (its payload
//! cannot be skipped safely); a bad magic closes it too.

use std::io::{self, IoSlice, Read, Write};

use super::handshake::{MetaContext, Session, MAX_PAYLOAD};
use super::protocol::*;
use super::{errno_of, NbdError};
use crate::volume::iov::AlignedBuf;

/// Most block-status descriptors in one reply chunk (the client asks again for more).
const MAX_DESCRIPTORS: usize = 8192;

/// Per-connection buffers, reused by every request (grown on demand, never shrunk).
pub struct Buffers {
    data: AlignedBuf,
    scratch: Vec<u8>,
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers { data: AlignedBuf::zeroed(1 << 20), scratch: Vec::with_capacity(4096) }
    }
}

impl Buffers {
    fn data(&mut self, len: usize) -> &mut [u8] {
        if self.data.len() < len {
            self.data = AlignedBuf::zeroed(len.next_power_of_two());
        }
        &mut self.data[..len]
    }
}

/// What a connection did, for its log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnStats {
    pub requests: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub errors: u64,
}

/// Write every buffer, in order, with as few syscalls as the stream allows.
fn write_all_vectored(w: &mut impl Write, parts: &[&[u8]]) -> io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        let mut slices: [IoSlice<'_>; 4] = [IoSlice::new(&[]), IoSlice::new(&[]), IoSlice::new(&[]), IoSlice::new(&[])];
        let mut n = 0;
        for (k, p) in parts[idx..].iter().enumerate().take(4) {
            slices[n] = IoSlice::new(if k == 0 { &p[off..] } else { p });
            n += 1;
        }
        let mut wrote = w.write_vectored(&slices[..n])?;
        if wrote == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while idx < parts.len() && wrote >= parts[idx].len() - off {
            wrote -= parts[idx].len() - off;
            idx += 1;
            off = 0;
        }
        off += wrote;
    }
    Ok(())
}

struct Conn<'a, W: Write> {
    w: &'a mut W,
    s: &'a Session,
    stats: ConnStats,
    dirty: bool,
}

impl<W: Write> Conn<'_, W> {
    fn ok(&mut self, cookie: u64) -> io::Result<()> {
        if self.s.structured {
            self.w.write_all(&chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0))
        } else {
            self.w.write_all(&simple_reply(0, cookie))
        }
    }

    fn fail(&mut self, cookie: u64, errno: u32, msg: &str) -> io::Result<()> {
        self.stats.errors += 1;
        tracing::debug!(export = %self.s.name, errno, "request failed: {msg}");
        if self.s.structured {
            let m = &msg.as_bytes()[..msg.len().min(1024)];
            let mut p = Vec::with_capacity(6 + m.len());
            p.extend_from_slice(&errno.to_be_bytes());
            p.extend_from_slice(&(m.len() as u16).to_be_bytes());
            p.extend_from_slice(m);
            let h = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, p.len() as u32);
            write_all_vectored(self.w, &[&h, &p])
        } else {
            self.w.write_all(&simple_reply(errno, cookie))
        }
    }

    fn done(&mut self, cookie: u64, r: io::Result<()>) -> io::Result<()> {
        match r {
            Ok(()) => self.ok(cookie),
            Err(e) => self.fail(cookie, errno_of(&e), &e.to_string()),
        }
    }

    fn in_range(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.s.export.size())
    }
}

/// Serve requests until the client disconnects (`Ok`) or breaks the protocol (`Err`).
pub fn transmit(r: &mut impl Read, w: &mut impl Write, s: &Session, bufs: &mut Buffers) -> Result<ConnStats, NbdError> {
    let mut c = Conn { w, s, stats: ConnStats::default(), dirty: false };
    let export = s.export.clone();
    loop {
        let mut hb = [0u8; REQUEST_LEN];
        match r.read_exact(&mut hb) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(c.stats),
            Err(e) => return Err(e.into()),
        }
        let req = parse_request(&hb)?;
        c.stats.requests += 1;
        let (off, len, cookie) = (req.offset, req.len as u64, req.cookie);
        match req.kind {
            CMD_READ => {
                if req.len > MAX_PAYLOAD {
                    let errno = if req.flags & CMD_FLAG_DF != 0 { EOVERFLOW } else { EINVAL };
                    c.fail(cookie, errno, &format!("read of {len} bytes is over the {MAX_PAYLOAD} limit"))?;
                    continue;
                }
                if !c.in_range(off, len) {
                    c.fail(cookie, EINVAL, "read beyond the end of the export")?;
                    continue;
                }
                let buf = bufs.data(req.len as usize);
                if let Err(e) = export.read(off, buf) {
                    c.fail(cookie, errno_of(&e), &e.to_string())?;
                    continue;
                }
                c.stats.read_bytes += len;
                if s.structured {
                    let h = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, 8 + req.len);
                    write_all_vectored(c.w, &[&h, &off.to_be_bytes(), buf])?;
                } else {
                    write_all_vectored(c.w, &[&simple_reply(0, cookie), buf])?;
                }
            }
            CMD_WRITE => {
                if req.len > MAX_PAYLOAD {
                    c.fail(cookie, EOVERFLOW, &format!("write of {len} bytes is over the {MAX_PAYLOAD} limit"))?;
                    return Err(NbdError::Protocol(format!("write of {len} bytes (at most {MAX_PAYLOAD})")));
                }
                let buf = bufs.data(req.len as usize);
                r.read_exact(buf)?;
                let res = if export.read_only() {
                    Err(io::Error::new(io::ErrorKind::PermissionDenied, "the export is read-only"))
                } else if !c.in_range(off, len) {
                    Err(io::Error::new(io::ErrorKind::StorageFull, "write beyond the end of the export"))
                } else {
                    export.wait_writable().and_then(|()| export.write(off, buf)).and_then(|()| {
                        c.dirty = true;
                        c.stats.written_bytes += len;
                        if req.flags & CMD_FLAG_FUA != 0 {
                            export.flush()
                        } else {
                            Ok(())
                        }
                    })
                };
                c.done(cookie, res)?;
            }
            CMD_FLUSH => {
                let res = export.flush();
                if res.is_ok() {
                    c.dirty = false;
                }
                c.done(cookie, res)?;
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                // NO_HOLE is accepted: a logdisk hole costs nothing to fill later, so
                // zeroed clusters always become holes; zeroing is always fast (a map
                // update), so FAST_ZERO never fails.
                let res = if export.read_only() {
                    Err(io::Error::new(io::ErrorKind::PermissionDenied, "the export is read-only"))
                } else if !c.in_range(off, len) {
                    Err(io::Error::new(io::ErrorKind::InvalidInput, "range beyond the end of the export"))
                } else {
                    export.wait_writable().and_then(|()| export.zero(off, len)).and_then(|()| {
                        c.dirty = true;
                        if req.flags & CMD_FLAG_FUA != 0 {
                            export.flush()
                        } else {
                            Ok(())
                        }
                    })
                };
                c.done(cookie, res)?;
            }
            CMD_BLOCK_STATUS => {
                if !s.structured || s.contexts.is_empty() {
                    c.fail(cookie, EINVAL, "no metadata context was negotiated")?;
                    continue;
                }
                if len == 0 || !c.in_range(off, len) {
                    c.fail(cookie, EINVAL, "block status beyond the end of the export")?;
                    continue;
                }
                let one = req.flags & CMD_FLAG_REQ_ONE != 0;
                match block_status(s, &mut bufs.scratch, off, len, one) {
                    Ok(chunks) => {
                        for (i, (id, a, b)) in chunks.iter().enumerate() {
                            let flags = if i + 1 == chunks.len() { REPLY_FLAG_DONE } else { 0 };
                            let h = chunk_header(flags, REPLY_TYPE_BLOCK_STATUS, cookie, 4 + (b - a) as u32);
                            write_all_vectored(c.w, &[&h, &id.to_be_bytes(), &bufs.scratch[*a..*b]])?;
                        }
                    }
                    Err(e) => c.fail(cookie, errno_of(&e), &e.to_string())?,
                }
            }
            CMD_DISC => {
                if c.dirty {
                    if let Err(e) = export.flush() {
                        tracing::warn!(export = %s.name, "flush at disconnect: {e}");
                    }
                }
                return Ok(c.stats);
            }
            other => c.fail(cookie, EINVAL, &format!("unknown command {other}"))?,
        }
    }
}

/// The descriptors of a block-status request, per selected context, in `scratch`:
/// `(context id, start, end)`. Computed before anything is sent, so an error gets an
/// error reply.
fn block_status(
    s: &Session,
    scratch: &mut Vec<u8>,
    off: u64,
    len: u64,
    one: bool,
) -> io::Result<Vec<(u32, usize, usize)>> {
    let max = if one { 1 } else { MAX_DESCRIPTORS };
    let mut chunks = Vec::with_capacity(s.contexts.len());
    scratch.clear();
    for (id, ctx) in &s.contexts {
        let start = scratch.len();
        let mut n = 0usize;
        let mut push = |l: u64, flags: u32| {
            scratch.extend_from_slice(&(l as u32).to_be_bytes());
            scratch.extend_from_slice(&flags.to_be_bytes());
            n += 1;
            n < max
        };
        match ctx {
            MetaContext::Allocation => {
                s.export.allocation(off, len, &mut |l, data| push(l, if data { 0 } else { STATE_HOLE | STATE_ZERO }))?
            }
            MetaContext::ChangedSince(ext) => changed_runs(ext, off, len, &mut push),
        }
        chunks.push((*id, start, scratch.len()));
    }
    Ok(chunks)
}

/// Runs of `[off, off+len)` with flag 1 where an extent of `ext` (sorted) covers them.
fn changed_runs(
    ext: &[crate::volume::extents::ChangedExtent],
    off: u64,
    len: u64,
    push: &mut impl FnMut(u64, u32) -> bool,
) {
    let end = off + len;
    let mut pos = off;
    let mut i = ext.partition_point(|e| e.offset + e.length <= off);
    while pos < end {
        let (mut next, flag) = match ext.get(i) {
            Some(e) if e.offset <= pos => (e.offset + e.length, 1),
            Some(e) => (e.offset, 0),
            None => (end, 0),
        };
        if flag == 1 {
            i += 1;
            // Adjacent changed extents (data, then zeroed) are one changed run.
            while let Some(e) = ext.get(i).filter(|e| e.offset == next) {
                next = e.offset + e.length;
                i += 1;
            }
        }
        let next = next.min(end);
        if !push(next - pos, flag) {
            return;
        }
        pos = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::extents::ChangedExtent;

    #[test]
    fn vectored_writes_survive_short_writes() {
        struct Dribble(Vec<u8>);
        impl Write for Dribble {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let n = b.len().min(3);
                self.0.extend_from_slice(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut d = Dribble(Vec::new());
        write_all_vectored(&mut d, &[b"abcde", b"", b"fg", b"hijklmn"]).unwrap();
        assert_eq!(d.0, b"abcdefghijklmn");
    }

    #[test]
    fn changed_runs_cover_the_range() {
        let ext = [
            ChangedExtent { offset: 4096, length: 4096, data: true },
            ChangedExtent { offset: 8192, length: 4096, data: false },
            ChangedExtent { offset: 20480, length: 4096, data: true },
        ];
        let mut runs = vec![];
        changed_runs(&ext, 0, 32768, &mut |l, f| {
            runs.push((l, f));
            true
        });
        assert_eq!(runs, vec![(4096, 0), (8192, 1), (8192, 0), (4096, 1), (8192, 0)]);
        runs.clear();
        changed_runs(&ext, 6000, 1000, &mut |l, f| {
            runs.push((l, f));
            true
        });
        assert_eq!(runs, vec![(1000, 1)]);
    }
}
