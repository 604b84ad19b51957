//! The transmission phase of one connection: a reader takes requests (and write
//! payloads) off the wire and hands them to a few worker threads that execute them
//! against the export and reply, out of order as the protocol allows. Several
//! connections share the volume too (`NBD_FLAG_CAN_MULTI_CONN`: a flush covers every
//! completed write, whichever connection made it).
//!
//! READ, WRITE, FLUSH, TRIM, WRITE_ZEROES (FUA, NO_HOLE, FAST_ZERO), BLOCK_STATUS, DISC.
//! Requests outside the export or with a payload over [`MAX_PAYLOAD`] get `EINVAL`
//! (`EOVERFLOW` for reads with DF); an oversized write closes the connection (its payload
//! cannot be skipped safely); a bad magic closes it too. Buffers are pooled per
//! connection: the IO path allocates nothing once warm.

use std::io::{self, IoSlice, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::handshake::{MetaContext, Session, MAX_PAYLOAD};
use super::protocol::*;
use super::{errno_of, NbdError};
use crate::volume::iov::AlignedBuf;

/// Most block-status descriptors in one reply chunk (the client asks again for more).
const MAX_DESCRIPTORS: usize = 8192;

/// Data buffers of a connection, reused by every request (grown on demand, never
/// shrunk); one per request in flight.
#[derive(Default)]
pub struct Buffers {
    free: Mutex<Vec<AlignedBuf>>,
}

impl Buffers {
    fn take(&self, len: usize) -> AlignedBuf {
        let mut free = self.free.lock();
        match free.iter().position(|b| b.len() >= len) {
            Some(i) => free.swap_remove(i),
            None => {
                free.pop();
                AlignedBuf::zeroed(len.max(1 << 20).next_power_of_two())
            }
        }
    }
    fn put(&self, b: AlignedBuf) {
        self.free.lock().push(b);
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

/// A request read off the wire, with its buffer (write payload, or room for read data).
struct Job {
    req: Request,
    buf: AlignedBuf,
}

/// How a request ended.
enum Done {
    Ok,
    /// `len` bytes of data in the job's buffer.
    Read(usize),
    /// Block-status chunks `(context id, start, end)` in the scratch buffer.
    Status(Vec<(u32, usize, usize)>),
}

fn io_err(kind: io::ErrorKind, msg: &str) -> io::Error {
    io::Error::new(kind, msg.to_string())
}

/// Execute one request against the export (no IO on the connection).
fn execute(s: &Session, job: &mut Job, scratch: &mut Vec<u8>, dirty: &AtomicBool) -> io::Result<Done> {
    let export = &s.export;
    let req = job.req;
    let (off, len) = (req.offset, req.len as u64);
    let in_range = off.checked_add(len).is_some_and(|end| end <= export.size());
    let fua = |r: io::Result<()>| {
        r.and_then(|()| {
            dirty.store(true, Ordering::Relaxed);
            if req.flags & CMD_FLAG_FUA != 0 {
                export.flush()
            } else {
                Ok(())
            }
        })
    };
    match req.kind {
        CMD_READ => {
            if req.len > MAX_PAYLOAD {
                let kind = if req.flags & CMD_FLAG_DF != 0 {
                    io::ErrorKind::FileTooLarge
                } else {
                    io::ErrorKind::InvalidInput
                };
                return Err(io_err(kind, &format!("read of {len} bytes is over the {MAX_PAYLOAD} limit")));
            }
            if !in_range {
                return Err(io_err(io::ErrorKind::InvalidInput, "read beyond the end of the export"));
            }
            export.read(off, &mut job.buf[..req.len as usize])?;
            Ok(Done::Read(req.len as usize))
        }
        CMD_WRITE => {
            if export.read_only() {
                return Err(io_err(io::ErrorKind::PermissionDenied, "the export is read-only"));
            }
            if !in_range {
                return Err(io_err(io::ErrorKind::StorageFull, "write beyond the end of the export"));
            }
            export.wait_writable()?;
            fua(export.write(off, &job.buf[..req.len as usize]))?;
            Ok(Done::Ok)
        }
        CMD_FLUSH => {
            export.flush()?;
            Ok(Done::Ok)
        }
        CMD_TRIM | CMD_WRITE_ZEROES => {
            // NO_HOLE is accepted: a logdisk hole costs nothing to fill later, so zeroed
            // clusters always become holes; zeroing is always fast (a map update), so
            // FAST_ZERO never fails.
            if export.read_only() {
                return Err(io_err(io::ErrorKind::PermissionDenied, "the export is read-only"));
            }
            if !in_range {
                return Err(io_err(io::ErrorKind::InvalidInput, "range beyond the end of the export"));
            }
            export.wait_writable()?;
            fua(export.zero(off, len))?;
            Ok(Done::Ok)
        }
        CMD_BLOCK_STATUS => {
            if !s.structured || s.contexts.is_empty() {
                return Err(io_err(io::ErrorKind::InvalidInput, "no metadata context was negotiated"));
            }
            if len == 0 || !in_range {
                return Err(io_err(io::ErrorKind::InvalidInput, "block status beyond the end of the export"));
            }
            let one = req.flags & CMD_FLAG_REQ_ONE != 0;
            Ok(Done::Status(block_status(s, scratch, off, len, one)?))
        }
        other => Err(io_err(io::ErrorKind::InvalidInput, &format!("unknown command {other}"))),
    }
}

/// Send the reply of an executed request.
fn reply(w: &mut impl Write, s: &Session, job: &Job, res: &io::Result<Done>, scratch: &[u8]) -> io::Result<()> {
    let cookie = job.req.cookie;
    match res {
        Ok(Done::Ok) if s.structured => w.write_all(&chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0)),
        Ok(Done::Ok) => w.write_all(&simple_reply(0, cookie)),
        Ok(Done::Read(n)) if s.structured => {
            let h = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, 8 + *n as u32);
            write_all_vectored(w, &[&h, &job.req.offset.to_be_bytes(), &job.buf[..*n]])
        }
        Ok(Done::Read(n)) => write_all_vectored(w, &[&simple_reply(0, cookie), &job.buf[..*n]]),
        Ok(Done::Status(chunks)) => {
            for (i, (id, a, b)) in chunks.iter().enumerate() {
                let flags = if i + 1 == chunks.len() { REPLY_FLAG_DONE } else { 0 };
                let h = chunk_header(flags, REPLY_TYPE_BLOCK_STATUS, cookie, 4 + (b - a) as u32);
                write_all_vectored(w, &[&h, &id.to_be_bytes(), &scratch[*a..*b]])?;
            }
            Ok(())
        }
        Err(e) => {
            let errno = if e.kind() == io::ErrorKind::FileTooLarge { EOVERFLOW } else { errno_of(e) };
            error_reply(w, s, cookie, errno, &e.to_string())
        }
    }
}

fn error_reply(w: &mut impl Write, s: &Session, cookie: u64, errno: u32, msg: &str) -> io::Result<()> {
    tracing::debug!(export = %s.name, errno, "request failed: {msg}");
    if s.structured {
        let m = &msg.as_bytes()[..msg.len().min(1024)];
        let mut p = Vec::with_capacity(6 + m.len());
        p.extend_from_slice(&errno.to_be_bytes());
        p.extend_from_slice(&(m.len() as u16).to_be_bytes());
        p.extend_from_slice(m);
        let h = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, p.len() as u32);
        write_all_vectored(w, &[&h, &p])
    } else {
        w.write_all(&simple_reply(errno, cookie))
    }
}

/// Shared by the reader and the workers of one connection.
struct Shared<'a, W> {
    s: &'a Session,
    w: Mutex<&'a mut W>,
    bufs: &'a Buffers,
    dirty: AtomicBool,
    stats: Mutex<ConnStats>,
    /// The client went away while a reply was being sent.
    broken: AtomicBool,
}

impl<W: Write> Shared<'_, W> {
    /// Execute a job and reply; the buffer goes back to the pool.
    fn run(&self, mut job: Job, scratch: &mut Vec<u8>) {
        let res = execute(self.s, &mut job, scratch, &self.dirty);
        {
            let mut st = self.stats.lock();
            st.requests += 1;
            match (&res, job.req.kind) {
                (Err(_), _) => st.errors += 1,
                (Ok(_), CMD_READ) => st.read_bytes += job.req.len as u64,
                (Ok(_), CMD_WRITE) => st.written_bytes += job.req.len as u64,
                _ => {}
            }
        }
        if reply(&mut **self.w.lock(), self.s, &job, &res, scratch).is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
        self.bufs.put(job.buf);
    }
}

/// Requests queued to a connection's workers beyond the ones they execute.
const QUEUE: usize = 32;

/// Serve requests until the client disconnects (`Ok`) or breaks the protocol (`Err`).
/// `workers` threads execute requests at once (replies may go out of order, as the
/// protocol allows); 0 executes each in turn on this thread.
pub fn transmit<W: Write + Send>(
    r: &mut impl Read,
    w: &mut W,
    s: &Session,
    bufs: &Buffers,
    workers: usize,
) -> Result<ConnStats, NbdError> {
    let sh = Shared {
        s,
        w: Mutex::new(w),
        bufs,
        dirty: AtomicBool::new(false),
        stats: Mutex::new(ConnStats::default()),
        broken: AtomicBool::new(false),
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
    let rx = Mutex::new(rx);
    let res = std::thread::scope(|scope| {
        for i in 0..workers {
            let (sh, rx) = (&sh, &rx);
            std::thread::Builder::new()
                .name(format!("nbd-worker-{i}"))
                .spawn_scoped(scope, move || {
                    let mut scratch = Vec::new();
                    loop {
                        let job = rx.lock().recv();
                        match job {
                            Ok(j) => sh.run(j, &mut scratch),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(NbdError::Io)?;
        }
        let mut scratch = Vec::new();
        let res = read_requests(r, &sh, |job| {
            if workers == 0 {
                sh.run(job, &mut scratch);
            } else if tx.send(job).is_err() {
                return false;
            }
            !sh.broken.load(Ordering::Relaxed)
        });
        drop(tx);
        res
    });
    if sh.dirty.load(Ordering::Relaxed) {
        if let Err(e) = s.export.flush() {
            tracing::warn!(export = %s.name, "flush at disconnect: {e}");
        }
    }
    let stats = *sh.stats.lock();
    res.map(|()| stats)
}

/// Read requests (and write payloads) until the end; `dispatch` runs or queues each and
/// returns false to stop.
fn read_requests<W: Write>(
    r: &mut impl Read,
    sh: &Shared<'_, W>,
    mut dispatch: impl FnMut(Job) -> bool,
) -> Result<(), NbdError> {
    loop {
        let mut hb = [0u8; REQUEST_LEN];
        match r.read_exact(&mut hb) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let req = parse_request(&hb)?;
        match req.kind {
            CMD_DISC => return Ok(()),
            CMD_WRITE if req.len > MAX_PAYLOAD => {
                // The payload cannot be skipped safely: answer, then close.
                let msg = format!("write of {} bytes is over the {MAX_PAYLOAD} limit", req.len);
                let _ = error_reply(&mut **sh.w.lock(), sh.s, req.cookie, EOVERFLOW, &msg);
                return Err(NbdError::Protocol(msg));
            }
            _ => {}
        }
        let need = match req.kind {
            CMD_READ | CMD_WRITE if req.len <= MAX_PAYLOAD => req.len as usize,
            _ => 0,
        };
        let mut buf = sh.bufs.take(need);
        if req.kind == CMD_WRITE {
            if let Err(e) = r.read_exact(&mut buf[..need]) {
                sh.bufs.put(buf);
                return Err(e.into());
            }
        }
        if !dispatch(Job { req, buf }) {
            return Ok(());
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
