//! NBD listeners: a unix socket (mode and group as the vhost-user sockets) or TCP (a
//! token, or an explicit `insecure`), an accept thread, and a thread per connection.
//!
//! Stopping shuts the read side of every connection: each finishes (and answers) the
//! request it is executing, sees end of input and exits; the threads are joined before
//! [`NbdServer::stop`] returns, so the volumes can be closed after it.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use super::handshake::{negotiate, Auth, Negotiation};
use super::transmission::{transmit, Buffers};
use super::{ExportSet, NbdError};

/// Longest wait for a client to take a reply off the socket.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a server listens: `unix:PATH` or `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl std::str::FromStr for ListenAddr {
    type Err = NbdError;
    fn from_str(s: &str) -> Result<Self, NbdError> {
        match s.split_once(':') {
            Some(("unix", p)) if !p.is_empty() => Ok(ListenAddr::Unix(PathBuf::from(p))),
            Some(("tcp", a)) if a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) => {
                Ok(ListenAddr::Tcp(a.to_string()))
            }
            _ => Err(NbdError::Options(format!("bad NBD address {s:?}: use unix:PATH or tcp:HOST:PORT"))),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// How a listener serves.
#[derive(Debug, Clone)]
pub struct NbdOptions {
    /// Unix socket file mode.
    pub socket_mode: u32,
    /// Unix socket group.
    pub socket_group: Option<u32>,
    /// TCP clients must name exports `TOKEN/NAME`.
    pub token: Option<String>,
    /// Allow TCP without a token.
    pub insecure: bool,
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Time a client has to finish the handshake.
    pub handshake_timeout: Duration,
    /// Requests one connection executes at once.
    pub workers: usize,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            socket_mode: 0o600,
            socket_group: None,
            token: None,
            insecure: false,
            max_connections: 64,
            handshake_timeout: Duration::from_secs(30),
            workers: 4,
        }
    }
}

/// A connected socket of either family.
enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Unix(s) => Sock::Unix(s.try_clone()?),
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
        })
    }
    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Sock::Unix(s) => s.shutdown(how),
            Sock::Tcp(s) => s.shutdown(how),
        };
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Sock::Unix(s) => s.set_read_timeout(t),
            Sock::Tcp(s) => s.set_read_timeout(t),
        }
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Sock::Unix(s) => s.set_write_timeout(t),
            Sock::Tcp(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for Sock {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(b),
            Sock::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(b),
            Sock::Tcp(s) => s.write(b),
        }
    }
    fn write_vectored(&mut self, b: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write_vectored(b),
            Sock::Tcp(s) => s.write_vectored(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
    fn accept(&self) -> io::Result<(Sock, String)> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| (Sock::Unix(s), "unix".to_string())),
            Listener::Tcp(l) => l.accept().map(|(s, a)| {
                let _ = s.set_nodelay(true);
                (Sock::Tcp(s), a.to_string())
            }),
        }
    }
}

/// State shared by the accept thread, the connections and the handle.
struct Shared {
    stopping: AtomicBool,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Sock>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A running NBD listener; [`NbdServer::stop`] (or drop) ends it.
pub struct NbdServer {
    addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    unix: Option<(PathBuf, (u64, u64))>,
}

impl NbdServer {
    /// Where it listens (`unix:PATH`, or `tcp:IP:PORT` with the bound port).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.live.lock().len()
    }

    /// Stop accepting, let every connection finish its current request, join them all.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let Some(accept) = self.accept.take() else { return };
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = accept.join();
        for s in self.shared.live.lock().values() {
            s.shutdown(Shutdown::Read);
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock());
        for t in threads {
            let _ = t.join();
        }
        if let Some((p, id)) = &self.unix {
            if std::fs::symlink_metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == *id) {
                let _ = std::fs::remove_file(p);
            }
        }
        tracing::info!(addr = %self.addr, "NBD server stopped");
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Listen on `addr` and serve `exports` until [`NbdServer::stop`].
pub fn start(addr: &ListenAddr, exports: Arc<dyn ExportSet>, opts: &NbdOptions) -> Result<NbdServer, NbdError> {
    let listen_err = |what: String| move |source| NbdError::Listen { what, source };
    let (listener, shown, unix, auth) = match addr {
        ListenAddr::Unix(p) => {
            let l = crate::frontend::server::bind_socket(p, opts.socket_mode, opts.socket_group).map_err(|e| {
                NbdError::Listen {
                    what: format!("NBD socket {}", p.display()),
                    source: io::Error::other(e.to_string()),
                }
            })?;
            let md = std::fs::symlink_metadata(p).map_err(listen_err(format!("NBD socket {}", p.display())))?;
            (Listener::Unix(l), addr.to_string(), Some((p.clone(), (md.dev(), md.ino()))), Auth::default())
        }
        ListenAddr::Tcp(a) => {
            if opts.token.is_none() && !opts.insecure {
                return Err(NbdError::Options(format!(
                    "NBD over TCP ({a}) needs a token (--nbd-token-file) or --insecure: plain NBD has no authentication"
                )));
            }
            let l = TcpListener::bind(a).map_err(listen_err(format!("NBD address {a}")))?;
            let local = l.local_addr().map_err(listen_err(format!("NBD address {a}")))?;
            (Listener::Tcp(l), format!("tcp:{local}"), None, Auth { token: opts.token.clone() })
        }
    };
    let shared = Arc::new(Shared {
        stopping: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
        live: Mutex::new(HashMap::new()),
        threads: Mutex::new(Vec::new()),
    });
    let sh = shared.clone();
    let o = opts.clone();
    let name = shown.clone();
    let accept = std::thread::Builder::new()
        .name("nbd-accept".into())
        .spawn(move || accept_loop(listener, sh, exports, auth, o, name))
        .map_err(listen_err("starting the NBD accept thread".into()))?;
    tracing::info!(addr = %shown, "NBD server listening");
    Ok(NbdServer { addr: shown, shared, accept: Some(accept), unix })
}

/// Wait up to 200 ms for a pending connection.
fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, 200) };
    n > 0 && p.revents != 0
}

fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    exports: Arc<dyn ExportSet>,
    auth: Auth,
    opts: NbdOptions,
    addr: String,
) {
    while !shared.stopping.load(Ordering::SeqCst) {
        if !readable(listener.fd()) {
            continue;
        }
        let (sock, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(addr = %addr, "NBD accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        shared.threads.lock().retain(|t| !t.is_finished());
        if shared.live.lock().len() >= opts.max_connections {
            tracing::warn!(addr = %addr, peer = %peer, "NBD connection refused: {} connections already", opts.max_connections);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let Ok(registered) = sock.try_clone() else { continue };
        shared.live.lock().insert(id, registered);
        let (sh, ex, au, o) = (shared.clone(), exports.clone(), auth.clone(), opts.clone());
        let spawned = std::thread::Builder::new().name(format!("nbd-conn-{id}")).spawn(move || {
            if let Err(e) = connection(sock, &sh, ex.as_ref(), &au, &o) {
                tracing::warn!(connection = id, peer = %peer, "NBD connection closed: {e}");
            }
            sh.live.lock().remove(&id);
        });
        match spawned {
            Ok(t) => shared.threads.lock().push(t),
            Err(e) => {
                tracing::warn!("cannot start an NBD connection thread: {e}");
                shared.live.lock().remove(&id);
            }
        }
    }
}

/// Serve one connection: handshake (bounded in time), then requests until it ends.
fn connection(
    sock: Sock,
    shared: &Shared,
    exports: &dyn ExportSet,
    auth: &Auth,
    o: &NbdOptions,
) -> Result<(), NbdError> {
    sock.set_read_timeout(Some(o.handshake_timeout))?;
    // A client that stops reading its replies cannot hold a connection thread (and the
    // daemon's shutdown) forever.
    sock.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut w = sock.try_clone()?;
    let mut r = BufReader::with_capacity(64 * 1024, sock);
    let session = match negotiate(&mut r, &mut w, exports, auth, &shared.stopping)? {
        Negotiation::Transmit(s) => s,
        Negotiation::Ended => return Ok(()),
    };
    r.get_ref().set_read_timeout(None)?;
    tracing::info!(export = %session.name, structured = session.structured, contexts = session.contexts.len(), "NBD client connected");
    let bufs = Buffers::default();
    let res = transmit(&mut r, &mut w, &session, &bufs, o.workers);
    if let Ok(st) = &res {
        tracing::info!(export = %session.name, requests = st.requests, read = st.read_bytes, written = st.written_bytes, errors = st.errors, "NBD client disconnected");
    }
    res.map(|_| ())
}
