//! The DTL server: a TCP listener, one thread per connection, one locked
//! [`VolumeLog`] per volume shared by every connection of that volume.
//!
//! A connection must start with a HELLO (token, version, volume, owner generation) within
//! [`ServerOptions::hello_timeout`]; until then frames above [`MAX_HELLO_FRAME`] are
//! refused, so an unauthenticated peer can make the server hold at most a few KiB. After
//! an ERROR reply the connection is closed. A connection idle (or stalled inside a frame)
//! for [`ServerOptions::idle_timeout`] is closed. Nothing a peer sends can affect another
//! connection: every failure ends in that connection's thread.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use super::log::VolumeLog;
use super::protocol::{
    error_frame, has_complete_frame, read_frame, token_eq, valid_name, ErrorCode, FrameBuf, ProtoError, Request,
    MAX_FRAME, MAX_HELLO_FRAME, T_APPENDED, T_DONE, T_ENTRIES, T_SYNCED, T_TRIMMED, T_WELCOME, VERSION,
};
use super::tls::{starts_with_tls, Conn, ServerTls};
use crate::error::{Error, IoContext, Result};

/// Tunables of a DTL server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Time a new connection has to send its HELLO.
    pub hello_timeout: Duration,
    /// A connection that sends nothing for this long is closed (clients send a SYNC as
    /// a heartbeat well within it).
    pub idle_timeout: Duration,
    /// Connections above this many are refused with `busy`.
    pub max_connections: usize,
    /// Serve TLS with this certificate; `None`: plain text (the CLI needs `--insecure`).
    pub tls: Option<ServerTls>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 256,
            tls: None,
        }
    }
}

/// Query replies are cut into ENTRIES frames of about this size.
const QUERY_CHUNK: usize = 4 << 20;

struct Shared {
    dir: PathBuf,
    token: Option<Vec<u8>>,
    opts: ServerOptions,
    volumes: Mutex<HashMap<String, Arc<Mutex<VolumeLog>>>>,
    /// Live connections: a handle to shut the socket down, and the thread.
    conns: Mutex<HashMap<u64, (TcpStream, JoinHandle<()>)>>,
    stopping: AtomicBool,
}

/// A running DTL server; [`DtlServer::stop`] (or drop) closes every connection and
/// waits for their threads.
pub struct DtlServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    /// A second handle of the listening socket, shut down to wake the accept loop.
    listener: TcpListener,
    _lock: File,
}

fn lock_dir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
    let path = dir.join(".lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(|| format!("open {}", path.display()))?;
    // SAFETY: flock on a valid, owned fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::Dtl(format!("{} is in use by another DTL server", dir.display())));
    }
    Ok(f)
}

impl DtlServer {
    /// Listen on `listen` and keep volumes under `dir`. With `token` `None` any client is
    /// accepted (the CLI only allows that with `--insecure`).
    pub fn start(listen: impl ToSocketAddrs, dir: &Path, token: Option<Vec<u8>>) -> Result<DtlServer> {
        Self::start_with(listen, dir, token, ServerOptions::default())
    }

    pub fn start_with(
        listen: impl ToSocketAddrs,
        dir: &Path,
        token: Option<Vec<u8>>,
        opts: ServerOptions,
    ) -> Result<DtlServer> {
        if token.as_ref().is_some_and(|t| t.is_empty() || t.len() > super::protocol::MAX_TOKEN) {
            return Err(Error::InvalidArgument(format!(
                "the DTL token must be 1..={} bytes",
                super::protocol::MAX_TOKEN
            )));
        }
        let lock = lock_dir(dir)?;
        let listener = TcpListener::bind(listen).ctx(|| "bind the DTL listener".to_string())?;
        let local_addr = listener.local_addr().ctx(|| "DTL listener address".to_string())?;
        let wake = listener.try_clone().ctx(|| "clone the DTL listener".to_string())?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            token,
            opts,
            volumes: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("dtl-accept".into())
            .spawn(move || accept_loop(listener, s))
            .ctx(|| "spawn the DTL accept thread".to_string())?;
        tracing::info!(%local_addr, dir = %dir.display(), "DTL server listening");
        Ok(DtlServer { local_addr, shared, accept: Some(accept), listener: wake, _lock: lock })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, close every connection, wait for their threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else { return };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop: shutting the listening socket down makes a blocked
        // accept(2) fail at once. (A connect to our own address, the old way, fails where
        // the address is not reachable, e.g. loopback down, and then stop waited forever.)
        // SAFETY: shutdown(2) on the fd of a listener this server owns, still open.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = accept.join();
        let conns: Vec<_> = self.shared.conns.lock().drain().collect();
        for (_, (s, _)) in &conns {
            let _ = s.shutdown(Shutdown::Both);
        }
        for (_, (_, t)) in conns {
            let _ = t.join();
        }
        // Data written but not yet synced reaches the disk before the server is gone.
        for (name, v) in self.shared.volumes.lock().drain() {
            let mut v = v.lock();
            let g = v.generation();
            if let Err(e) = v.sync(g) {
                tracing::warn!(volume = %name, "sync at shutdown: {e}");
            }
        }
        tracing::info!(addr = %self.local_addr, "DTL server stopped");
    }
}

impl Drop for DtlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let next_id = AtomicU64::new(0);
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("DTL accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut conns = shared.conns.lock();
        // Forget connections that ended.
        conns.retain(|_, (_, t)| !t.is_finished());
        if conns.len() >= shared.opts.max_connections {
            drop(conns);
            tracing::warn!(%peer, "DTL: too many connections");
            let mut s = stream;
            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = s.write_all(&error_frame(0, ErrorCode::Busy, "too many connections"));
            continue;
        }
        let Ok(clone) = stream.try_clone() else { continue };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let s = shared.clone();
        let t = std::thread::Builder::new().name("dtl-conn".into()).spawn(move || {
            let peer2 = peer.clone();
            if let Err(e) = serve_conn(stream, &s) {
                tracing::debug!(peer = %peer2, "DTL connection ended: {e}");
            }
            s.conns.lock().remove(&id);
        });
        match t {
            Ok(t) => {
                conns.insert(id, (clone, t));
            }
            Err(e) => tracing::warn!("DTL: cannot spawn a connection thread: {e}"),
        }
    }
}

/// What ended a connection (for the debug log).
#[derive(Debug)]
enum ConnEnd {
    Closed,
    Refused(ErrorCode, String),
    Io(std::io::Error),
}

impl std::fmt::Display for ConnEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnEnd::Closed => write!(f, "closed by peer"),
            ConnEnd::Refused(c, m) => write!(f, "refused ({c}): {m}"),
            ConnEnd::Io(e) => write!(f, "{e}"),
        }
    }
}

fn proto_refusal(e: ProtoError) -> ConnEnd {
    match e {
        ProtoError::Io(e) => ConnEnd::Io(e),
        ProtoError::TooLarge(n) => {
            ConnEnd::Refused(ErrorCode::TooLarge, format!("frame of {n} bytes is above the limit"))
        }
        e => ConnEnd::Refused(ErrorCode::Malformed, e.to_string()),
    }
}

fn error_code(e: &Error) -> ErrorCode {
    match e {
        Error::DtlRefused { code, .. } => *code,
        _ => ErrorCode::Storage,
    }
}

fn error_message(e: &Error) -> String {
    match e {
        Error::DtlRefused { message, .. } => message.clone(),
        e => e.to_string(),
    }
}

/// Wrap the socket in TLS when the server has a certificate. A client that does not
/// start a TLS handshake gets a plain error frame saying so.
fn secure(tcp: TcpStream, shared: &Shared) -> std::result::Result<Conn, ConnEnd> {
    let Some(cfg) = &shared.opts.tls else { return Ok(Conn::plain(tcp)) };
    if !starts_with_tls(&tcp, shared.opts.hello_timeout).map_err(ConnEnd::Io)? {
        let msg = "this DTL server requires TLS: give the client the server's CA (dtl.ca_file)";
        tracing::info!(peer = ?tcp.peer_addr().ok(), "DTL: a client without TLS refused");
        let _ = (&tcp).write_all(&error_frame(0, ErrorCode::Malformed, msg));
        let _ = tcp.shutdown(Shutdown::Write);
        return Err(ConnEnd::Refused(ErrorCode::Malformed, msg.into()));
    }
    Conn::server(tcp, cfg).map_err(|e| ConnEnd::Io(std::io::Error::other(format!("TLS handshake: {e}"))))
}

fn serve_conn(tcp: TcpStream, shared: &Shared) -> std::result::Result<(), ConnEnd> {
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(shared.opts.hello_timeout)).map_err(ConnEnd::Io)?;
    tcp.set_write_timeout(Some(shared.opts.idle_timeout)).map_err(ConnEnd::Io)?;
    let stream = secure(tcp, shared)?;
    let mut r = BufReader::with_capacity(256 << 10, stream.try_clone().map_err(ConnEnd::Io)?);
    let mut w = BufWriter::with_capacity(256 << 10, stream.try_clone().map_err(ConnEnd::Io)?);
    let mut req_id = 0;
    let result = (|| {
        let mut body = Vec::new();
        if !read_frame(&mut r, MAX_HELLO_FRAME, &mut body).map_err(proto_refusal)? {
            return Err(ConnEnd::Closed);
        }
        let (vol, generation, welcome) = hello(&body, shared)?;
        w.write_all(&welcome).and_then(|_| w.flush()).map_err(ConnEnd::Io)?;
        stream.tcp().set_read_timeout(Some(shared.opts.idle_timeout)).map_err(ConnEnd::Io)?;
        loop {
            if !read_frame(&mut r, MAX_FRAME, &mut body).map_err(proto_refusal)? {
                return Err(ConnEnd::Closed);
            }
            let req = Request::decode(&body).map_err(proto_refusal)?;
            let fail = |req: u64, e: Error| (req, ConnEnd::Refused(error_code(&e), error_message(&e)));
            let res: std::result::Result<(), (u64, ConnEnd)> = match req {
                Request::Hello { .. } => Err((0, ConnEnd::Refused(ErrorCode::Malformed, "second HELLO".into()))),
                Request::Append { req, count, raw } => match vol.lock().append(generation, raw, count) {
                    Ok(last) => {
                        let mut f = FrameBuf::new(T_APPENDED);
                        f.u64(req).u64(last);
                        w.write_all(&f.finish()).map_err(|e| (req, ConnEnd::Io(e)))
                    }
                    Err(e) => Err(fail(req, e)),
                },
                Request::Sync { req } => match vol.lock().sync(generation) {
                    Ok(d) => {
                        let mut f = FrameBuf::new(T_SYNCED);
                        f.u64(req).u64(d);
                        w.write_all(&f.finish()).map_err(|e| (req, ConnEnd::Io(e)))
                    }
                    Err(e) => Err(fail(req, e)),
                },
                Request::Trim { req, upto_sco } => match vol.lock().trim(generation, upto_sco) {
                    Ok(t) => {
                        let mut f = FrameBuf::new(T_TRIMMED);
                        f.u64(req).u64(t);
                        w.write_all(&f.finish()).map_err(|e| (req, ConnEnd::Io(e)))
                    }
                    Err(e) => Err(fail(req, e)),
                },
                Request::Query { req, after_sco } => query(&vol, generation, req, after_sco, &mut w),
            };
            if let Err((id, end)) = res {
                req_id = id;
                return Err(end);
            }
            // Batch replies to pipelined requests: flush only when no complete request waits.
            if !has_complete_frame(r.buffer()) {
                w.flush().map_err(ConnEnd::Io)?;
            }
        }
    })();
    match result {
        Err(ConnEnd::Refused(code, msg)) => {
            tracing::info!(peer = ?stream.tcp().peer_addr().ok(), "DTL request refused ({code}): {msg}");
            let _ = w.write_all(&error_frame(req_id, code, &msg));
            let _ = w.flush();
            stream.close_write();
            Err(ConnEnd::Refused(code, msg))
        }
        Err(ConnEnd::Closed) => {
            let _ = w.flush();
            Ok(())
        }
        r => r,
    }
}

/// Check a HELLO and answer WELCOME; the connection is then bound to the volume.
/// A connection bound to a volume: its log, the owner generation, the WELCOME frame.
type Session = (Arc<Mutex<VolumeLog>>, u32, Vec<u8>);

fn hello(body: &[u8], shared: &Shared) -> std::result::Result<Session, ConnEnd> {
    let Request::Hello { version, generation, volume, token } = Request::decode(body).map_err(proto_refusal)? else {
        return Err(ConnEnd::Refused(ErrorCode::Malformed, "the first request must be HELLO".into()));
    };
    if let Some(expected) = &shared.token {
        if !token_eq(expected, &token) {
            return Err(ConnEnd::Refused(ErrorCode::BadToken, "access token does not match".into()));
        }
    }
    if version != VERSION {
        return Err(ConnEnd::Refused(
            ErrorCode::BadVersion,
            format!("protocol version {version} is not supported (this server speaks {VERSION})"),
        ));
    }
    if !valid_name(&volume) {
        return Err(ConnEnd::Refused(ErrorCode::BadName, format!("bad volume name {volume:?}")));
    }
    let vol = {
        let mut vols = shared.volumes.lock();
        match vols.get(&volume) {
            Some(v) => v.clone(),
            None => {
                let v = VolumeLog::open(&shared.dir, &volume)
                    .map_err(|e| ConnEnd::Refused(ErrorCode::Storage, e.to_string()))?;
                let v = Arc::new(Mutex::new(v));
                vols.insert(volume.clone(), v.clone());
                v
            }
        }
    };
    let (last, trimmed, current) = {
        let mut v = vol.lock();
        let last = v.hello(generation).map_err(|e| ConnEnd::Refused(error_code(&e), error_message(&e)))?;
        (last, v.trimmed_upto(), v.generation())
    };
    tracing::debug!(volume, generation, last, "DTL hello");
    let mut f = FrameBuf::new(T_WELCOME);
    f.u16(VERSION).u32(current).u64(last).u64(trimmed);
    Ok((vol, generation, f.finish()))
}

/// Stream every entry with `sco > after_sco` from disk in ENTRIES frames, then DONE.
fn query(
    vol: &Mutex<VolumeLog>,
    generation: u32,
    req: u64,
    after_sco: u64,
    w: &mut impl Write,
) -> std::result::Result<(), (u64, ConnEnd)> {
    let refusal = |e: Error| (req, ConnEnd::Refused(error_code(&e), error_message(&e)));
    let (after, views) = vol.lock().query_views(generation, after_sco).map_err(refusal)?;
    let mut total = 0u64;
    let mut frame = FrameBuf::with_capacity(T_ENTRIES, QUERY_CHUNK + 1024);
    let mut count = 0u32;
    frame.u64(req).u32(0);
    let mut io_err = None;
    let send = |frame: &mut FrameBuf, count: &mut u32, w: &mut dyn Write| -> std::io::Result<()> {
        let mut full = std::mem::replace(frame, FrameBuf::with_capacity(T_ENTRIES, QUERY_CHUNK + 1024));
        full.buf_mut()[super::protocol::FRAME_HEADER + 9..super::protocol::FRAME_HEADER + 13]
            .copy_from_slice(&count.to_le_bytes());
        frame.u64(req).u32(0);
        *count = 0;
        w.write_all(&full.finish())
    };
    for v in views {
        v.for_each(after, |_, bytes| {
            if frame.body_len() + bytes.len() > QUERY_CHUNK && count > 0 {
                send(&mut frame, &mut count, w).map_err(|e| {
                    let msg = e.to_string();
                    io_err = Some(e);
                    Error::Dtl(msg)
                })?;
            }
            frame.bytes(bytes);
            count += 1;
            total += 1;
            Ok(())
        })
        .map_err(|e| match io_err.take() {
            Some(io) => (req, ConnEnd::Io(io)),
            None => refusal(e),
        })?;
    }
    if count > 0 {
        send(&mut frame, &mut count, w).map_err(|e| (req, ConnEnd::Io(e)))?;
    }
    let mut done = FrameBuf::new(T_DONE);
    done.u64(req).u64(total);
    w.write_all(&done.finish()).map_err(|e| (req, ConnEnd::Io(e)))?;
    Ok(())
}
