//! The DTL client a volume uses: a bounded queue drained by a background sender that
//! batches entries into APPEND frames and pipelines them (it never waits for a reply
//! before sending more), a reader thread that takes the replies, and reconnects with
//! exponential backoff.
//!
//! Sequence numbers: the sender numbers entries as it sends them, continuing from the
//! `last_seq` the server reports in its WELCOME. An entry stays in memory until a SYNC
//! reply says the server holds it durably. After a reconnect the server again reports
//! what it holds; everything after that is sent again (renumbered from there), so
//! nothing is lost and nothing is stored twice.
//!
//! SYNC: the sender keeps at most one SYNC in flight and sends the next one as soon as
//! there is something new to cover (group commit), when [`DtlClient::sync`] asks, and
//! every [`DtlConfig::heartbeat`] as a keepalive.
//!
//! Full queue: memory is bounded by [`DtlConfig::queue_limit`] (bytes of entries queued
//! or sent but not yet durable). An append that does not fit does not block the
//! volume's IO path: the client drops every entry that is not yet durable on the server
//! (and the new ones), and reports [`DtlState::NeedsResync`] from the lowest SCO it
//! dropped. New appends are then queued and sent normally. The gap closes when the owner
//! trims past the highest dropped SCO (those SCOs are then safe in the object store), or
//! when it has re-appended the dropped SCOs from its write buffer and calls
//! [`DtlClient::resynced`]. Until then [`DtlClient::sync`] fails, so the owner knows the
//! DTL does not cover its writes.
//!
//! One client per (volume, generation): two clients of one generation would confuse
//! each other's sequence numbers.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};

use super::tls::{host_of, ClientTls, Conn};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::protocol::{
    append_frame, hello_frame, read_frame, simple_frame, valid_name, Entry, ErrorCode, ProtoError, Reply, MAX_FRAME,
    T_QUERY, T_SYNC, T_TRIM,
};
use crate::error::{Error, Result};

/// Settings of a [`DtlClient`]; [`DtlConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct DtlConfig {
    /// Server address, `host:port`.
    pub addr: String,
    pub token: Vec<u8>,
    pub volume: String,
    /// Owner generation: a higher one fences every lower one on the server.
    pub generation: u32,
    /// Bytes of entries held in memory (queued, or sent but not yet durable).
    pub queue_limit: usize,
    /// Largest APPEND batch (at most 4 MiB).
    pub batch_bytes: usize,
    pub connect_timeout: Duration,
    /// A server that does not answer within this (plus the heartbeat) counts as lost.
    pub io_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// An idle connection sends a SYNC this often.
    pub heartbeat: Duration,
    /// Speak TLS and verify the server's certificate against this; `None`: plain text.
    pub tls: Option<ClientTls>,
}

impl DtlConfig {
    pub fn new(addr: impl Into<String>, token: impl Into<Vec<u8>>, volume: impl Into<String>, generation: u32) -> Self {
        DtlConfig {
            addr: addr.into(),
            token: token.into(),
            volume: volume.into(),
            generation,
            queue_limit: 64 << 20,
            batch_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            heartbeat: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// How well the DTL covers the volume's writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtlState {
    /// Connected; everything appended is sent or about to be.
    InSync,
    /// Connected again after a loss; re-sending what the server did not hold.
    CatchingUp,
    /// Not connected (the reason); appends are queued and sent after the reconnect.
    Degraded(String),
    /// Entries of SCOs from `from_sco` on were dropped (queue overflow, or the server lost
    /// data): the DTL does not cover them until the owner trims past them or re-appends
    /// them and calls [`DtlClient::resynced`].
    NeedsResync { from_sco: u64 },
    /// A newer owner generation holds the volume; this client no longer sends.
    Fenced(String),
    /// [`DtlClient::close`] was called.
    Closed,
}

struct Item {
    aid: u64,
    seq: u64,
    size: usize,
    entry: Arc<Entry>,
}

const ITEM_OVERHEAD: usize = 64;

#[derive(Default)]
struct Inner {
    /// Appended, not yet sent on the current connection (oldest first).
    pending: VecDeque<Item>,
    /// Sent on the current connection, not yet durable (oldest first).
    unacked: VecDeque<Item>,
    bytes: usize,
    next_aid: u64,
    next_seq: u64,
    /// Connection epoch; 0 while not connected.
    conn: u64,
    epochs: u64,
    stream: Option<Conn>,
    last_sent_seq: u64,
    last_sync_sent_seq: u64,
    sync_in_flight: bool,
    sync_wanted: bool,
    last_send: Option<Instant>,
    durable_seq: u64,
    last_error: Option<String>,
    fenced: Option<String>,
    gap: Option<(u64, u64)>,
    catchup_until: Option<u64>,
    trimmed_upto: u64,
    max_sco: u64,
    closing: bool,
}

impl Inner {
    fn oldest_outstanding(&self) -> u64 {
        self.unacked.front().or(self.pending.front()).map_or(self.next_aid, |i| i.aid)
    }

    fn check_catchup(&mut self) {
        if self.catchup_until.is_some_and(|a| self.oldest_outstanding() > a) {
            self.catchup_until = None;
            tracing::info!("DTL caught up");
        }
    }

    fn add_gap(&mut self, lo: u64, hi: u64) {
        self.gap = Some(match self.gap {
            Some((a, b)) => (a.min(lo), b.max(hi)),
            None => (lo, hi),
        });
    }

    /// The connection `epoch` is gone.
    fn broken(&mut self, epoch: u64, why: String) {
        if self.conn == epoch && epoch != 0 {
            if !self.closing {
                tracing::warn!("DTL connection lost: {why}");
            }
            self.conn = 0;
            self.last_error = Some(why);
            if let Some(s) = self.stream.take() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    fn state(&self) -> DtlState {
        if self.closing {
            DtlState::Closed
        } else if let Some(f) = &self.fenced {
            DtlState::Fenced(f.clone())
        } else if let Some((lo, _)) = self.gap {
            DtlState::NeedsResync { from_sco: lo }
        } else if self.conn == 0 {
            DtlState::Degraded(self.last_error.clone().unwrap_or_else(|| "connecting".into()))
        } else if self.catchup_until.is_some() {
            DtlState::CatchingUp
        } else {
            DtlState::InSync
        }
    }
}

struct Shared {
    cfg: DtlConfig,
    m: Mutex<Inner>,
    cv: Condvar,
}

/// A volume's connection to its DTL server. Every method may be called from any thread.
pub struct DtlClient {
    shared: Arc<Shared>,
    sender: Option<JoinHandle<()>>,
}

fn refused(code: ErrorCode, message: String) -> Error {
    Error::DtlRefused { code, message }
}

fn proto(e: ProtoError) -> Error {
    Error::Dtl(e.to_string())
}

/// Connect and say hello; returns the stream and the server's (last_seq, trimmed_upto).
fn handshake(cfg: &DtlConfig) -> Result<(Conn, u64, u64)> {
    let addrs: Vec<_> = cfg
        .addr
        .to_socket_addrs()
        .map_err(|e| Error::Dtl(format!("cannot resolve DTL address {}: {e}", cfg.addr)))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, cfg.connect_timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(tcp) = stream else {
        return Err(Error::Dtl(format!(
            "cannot connect to DTL server {}: {}",
            cfg.addr,
            last.map_or("no address".to_string(), |e| e.to_string())
        )));
    };
    let io = |e: std::io::Error| Error::Dtl(format!("DTL server {}: {e}", cfg.addr));
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(cfg.io_timeout + cfg.heartbeat)).map_err(io)?;
    tcp.set_write_timeout(Some(cfg.io_timeout)).map_err(io)?;
    let stream = match &cfg.tls {
        None => Conn::plain(tcp),
        Some(tls) => Conn::client(tcp, tls, host_of(&cfg.addr))
            .map_err(|e| Error::DtlTls(format!("DTL server {}: TLS handshake failed: {e}", cfg.addr)))?,
    };
    (&stream).write_all(&hello_frame(cfg.generation, &cfg.volume, &cfg.token)).map_err(io)?;
    let mut body = Vec::new();
    if !read_frame(&mut &stream, MAX_FRAME, &mut body).map_err(proto)? {
        return Err(Error::Dtl(format!("DTL server {} closed the connection", cfg.addr)));
    }
    match Reply::decode(&body).map_err(proto)? {
        Reply::Welcome { last_seq, trimmed_upto, .. } => Ok((stream, last_seq, trimmed_upto)),
        Reply::Error { code, message, .. } => Err(refused(code, message)),
        r => Err(Error::Dtl(format!("unexpected reply to HELLO: {r:?}"))),
    }
}

/// A refusal that retrying cannot cure.
fn permanent(e: &Error) -> bool {
    matches!(e, Error::DtlRefused { code: ErrorCode::Fenced | ErrorCode::BadName | ErrorCode::BadVersion, .. })
}

impl DtlClient {
    /// Connect with default settings. See [`DtlClient::connect_with`].
    pub fn connect(addr: &str, token: &[u8], volume: &str, generation: u32) -> Result<DtlClient> {
        Self::connect_with(DtlConfig::new(addr, token, volume, generation))
    }

    /// Start a client. A refusal by the server (wrong token, fenced generation, bad name,
    /// version) is returned as an error; an unreachable server is not: the client starts
    /// [`DtlState::Degraded`] and keeps trying with backoff.
    pub fn connect_with(mut cfg: DtlConfig) -> Result<DtlClient> {
        if !valid_name(&cfg.volume) {
            return Err(Error::InvalidArgument(format!("bad volume name {:?}", cfg.volume)));
        }
        cfg.batch_bytes = cfg.batch_bytes.clamp(1, 4 << 20);
        let first = match handshake(&cfg) {
            Ok(c) => Some(c),
            Err(e @ (Error::DtlRefused { .. } | Error::DtlTls(_))) => return Err(e),
            Err(e) => {
                tracing::warn!(volume = %cfg.volume, "DTL not reachable, will retry: {e}");
                None
            }
        };
        let shared =
            Arc::new(Shared { cfg, m: Mutex::new(Inner { next_aid: 1, ..Inner::default() }), cv: Condvar::new() });
        // Register the first connection before returning, so the state is InSync at once.
        let first = first.map(|(stream, last_seq, _)| {
            let epoch = connected(&shared, &stream, last_seq);
            (stream, epoch)
        });
        let s = shared.clone();
        let sender = std::thread::Builder::new()
            .name("dtl-send".into())
            .spawn(move || sender_loop(&s, first))
            .map_err(|e| Error::io("spawn the DTL sender", e))?;
        Ok(DtlClient { shared, sender: Some(sender) })
    }

    /// Queue entries for the server. Returns at once (no network wait). Errors: an entry
    /// above the limits, a fenced or closed client. A full queue is not an error: see the
    /// module documentation ([`DtlState::NeedsResync`]).
    pub fn append(&self, entries: Vec<Entry>) -> Result<()> {
        for e in &entries {
            e.validate().map_err(|e| Error::InvalidArgument(e.to_string()))?;
        }
        let mut g = self.shared.m.lock();
        if g.closing {
            return Err(Error::ShutDown);
        }
        if let Some(f) = &g.fenced {
            return Err(refused(ErrorCode::Fenced, f.clone()));
        }
        let size: usize = entries.iter().map(|e| e.encoded_len() + ITEM_OVERHEAD).sum();
        if g.bytes + size > self.shared.cfg.queue_limit {
            let scos =
                g.pending.iter().chain(g.unacked.iter()).map(|i| i.entry.sco).chain(entries.iter().map(|e| e.sco));
            let (lo, hi) = scos.fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
            let dropped = g.pending.len() + g.unacked.len() + entries.len();
            g.pending.clear();
            g.unacked.clear();
            g.bytes = 0;
            g.catchup_until = None;
            if dropped > 0 && lo != u64::MAX {
                g.add_gap(lo, hi);
            }
            tracing::warn!(volume = %self.shared.cfg.volume, dropped, from_sco = lo, "DTL queue full: dropped entries not yet durable; needs resync");
            self.shared.cv.notify_all();
            return Ok(());
        }
        for e in entries {
            let aid = g.next_aid;
            g.next_aid += 1;
            g.max_sco = g.max_sco.max(e.sco);
            let size = e.encoded_len() + ITEM_OVERHEAD;
            g.bytes += size;
            g.pending.push_back(Item { aid, seq: 0, size, entry: Arc::new(e) });
        }
        drop(g);
        self.shared.cv.notify_all();
        Ok(())
    }

    /// Wait until everything appended before this call is durable on the server. Fails
    /// at once while the client is not connected (Degraded), needs a resync, is fenced or
    /// closed; fails if the connection is lost while waiting.
    pub fn sync(&self) -> Result<()> {
        let mut g = self.shared.m.lock();
        let target = g.next_aid - 1;
        loop {
            if g.oldest_outstanding() > target && g.gap.is_none() && g.fenced.is_none() {
                return Ok(());
            }
            match g.state() {
                DtlState::InSync | DtlState::CatchingUp => {}
                DtlState::Fenced(f) => return Err(refused(ErrorCode::Fenced, f)),
                DtlState::Closed => return Err(Error::ShutDown),
                s => return Err(Error::Dtl(format!("not in sync: {s:?}"))),
            }
            g.sync_wanted = true;
            self.shared.cv.notify_all();
            self.shared.cv.wait_for(&mut g, Duration::from_millis(200));
        }
    }

    /// How well the DTL covers the volume right now.
    pub fn state(&self) -> DtlState {
        self.shared.m.lock().state()
    }

    /// Bytes held in memory for the server (queued or not yet durable).
    pub fn queued_bytes(&self) -> usize {
        self.shared.m.lock().bytes
    }

    /// Every entry the server holds with `sco > after_sco`, in the order they were
    /// appended. Uses its own connection; call [`DtlClient::sync`] first to include what
    /// this client still has queued.
    pub fn query(&self, after_sco: u64) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.query_each(after_sco, |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// Like [`DtlClient::query`], handing each entry to `f` as it arrives (memory stays
    /// at one reply frame). Returns the number of entries.
    pub fn query_each(&self, after_sco: u64, mut f: impl FnMut(Entry) -> Result<()>) -> Result<u64> {
        self.check_usable()?;
        let cfg = &self.shared.cfg;
        let (stream, _, _) = handshake(cfg)?;
        (&stream).write_all(&simple_frame(T_QUERY, 1, after_sco)).map_err(|e| Error::Dtl(format!("DTL query: {e}")))?;
        let mut body = Vec::new();
        let mut n = 0u64;
        loop {
            if !read_frame(&mut &stream, MAX_FRAME, &mut body).map_err(proto)? {
                return Err(Error::Dtl("DTL server closed the connection during a query".into()));
            }
            match Reply::decode(&body).map_err(proto)? {
                Reply::Entries { entries, .. } => {
                    for (_, e) in entries {
                        n += 1;
                        f(e)?;
                    }
                }
                Reply::Done { count, .. } if count == n => return Ok(n),
                Reply::Done { count, .. } => {
                    return Err(Error::Dtl(format!("DTL query: server sent {n} entries but counted {count}")))
                }
                Reply::Error { code, message, .. } => return Err(refused(code, message)),
                r => return Err(Error::Dtl(format!("unexpected reply to QUERY: {r:?}"))),
            }
        }
    }

    /// Tell the server that every SCO up to `upto_sco` is safe in the object store: it
    /// drops their entries. Queued entries of those SCOs are no longer sent, and a resync
    /// gap that lies entirely at or below `upto_sco` is closed.
    pub fn trim(&self, upto_sco: u64) -> Result<()> {
        self.check_usable()?;
        let (stream, _, _) = handshake(&self.shared.cfg)?;
        (&stream).write_all(&simple_frame(T_TRIM, 1, upto_sco)).map_err(|e| Error::Dtl(format!("DTL trim: {e}")))?;
        let mut body = Vec::new();
        if !read_frame(&mut &stream, MAX_FRAME, &mut body).map_err(proto)? {
            return Err(Error::Dtl("DTL server closed the connection during a trim".into()));
        }
        match Reply::decode(&body).map_err(proto)? {
            Reply::Trimmed { .. } => {}
            Reply::Error { code, message, .. } => return Err(refused(code, message)),
            r => return Err(Error::Dtl(format!("unexpected reply to TRIM: {r:?}"))),
        }
        let mut g = self.shared.m.lock();
        g.trimmed_upto = g.trimmed_upto.max(upto_sco);
        let mut freed = 0;
        g.pending.retain(|i| {
            let keep = i.entry.sco > upto_sco;
            if !keep {
                freed += i.size;
            }
            keep
        });
        g.bytes -= freed;
        if g.gap.is_some_and(|(_, hi)| hi <= upto_sco) {
            tracing::info!(volume = %self.shared.cfg.volume, upto_sco, "DTL resync gap trimmed away");
            g.gap = None;
        }
        g.check_catchup();
        drop(g);
        self.shared.cv.notify_all();
        Ok(())
    }

    /// Up to which SCO the server has dropped entries (its trim watermark), on a fresh
    /// connection.
    pub fn server_trimmed_upto(&self) -> Result<u64> {
        self.check_usable()?;
        let (_, _, trimmed) = handshake(&self.shared.cfg)?;
        Ok(trimmed)
    }

    /// The owner has re-appended every entry the DTL was missing ([`DtlState::NeedsResync`]):
    /// clear the gap.
    pub fn resynced(&self) {
        self.shared.m.lock().gap = None;
    }

    fn check_usable(&self) -> Result<()> {
        let g = self.shared.m.lock();
        if g.closing {
            return Err(Error::ShutDown);
        }
        if let Some(f) = &g.fenced {
            return Err(refused(ErrorCode::Fenced, f.clone()));
        }
        Ok(())
    }

    /// Stop the background threads (entries not yet durable are abandoned; call
    /// [`DtlClient::sync`] first to keep them).
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        {
            let mut g = self.shared.m.lock();
            g.closing = true;
            if let Some(s) = g.stream.take() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        self.shared.cv.notify_all();
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for DtlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlClient")
            .field("addr", &self.shared.cfg.addr)
            .field("volume", &self.shared.cfg.volume)
            .field("generation", &self.shared.cfg.generation)
            .field("state", &self.state())
            .finish()
    }
}

impl Drop for DtlClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The sender: (re)connect with backoff, then feed the connection until it breaks.
fn sender_loop(sh: &Arc<Shared>, mut first: Option<(Conn, u64)>) {
    let cfg = &sh.cfg;
    let mut backoff = cfg.backoff_min;
    loop {
        if sh.m.lock().closing {
            return;
        }
        let conn = match first.take() {
            Some(c) => Ok(c),
            None => handshake(cfg).map(|(stream, last_seq, _)| {
                let epoch = connected(sh, &stream, last_seq);
                (stream, epoch)
            }),
        };
        match conn {
            Ok((stream, epoch)) => {
                backoff = cfg.backoff_min;
                let Ok(rd) = stream.try_clone() else {
                    sh.m.lock().broken(epoch, "cannot clone the socket".into());
                    continue;
                };
                let s2 = sh.clone();
                let reader =
                    std::thread::Builder::new().name("dtl-recv".into()).spawn(move || reader_loop(&s2, rd, epoch));
                match reader {
                    Ok(reader) => {
                        feed(sh, &stream, epoch);
                        sh.m.lock().broken(epoch, "closed".into());
                        let _ = stream.shutdown(Shutdown::Both);
                        let _ = reader.join();
                    }
                    Err(e) => sh.m.lock().broken(epoch, format!("cannot spawn the DTL reader: {e}")),
                }
            }
            Err(e) => {
                let mut g = sh.m.lock();
                if permanent(&e) {
                    tracing::error!(volume = %cfg.volume, "DTL refused for good: {e}");
                    g.fenced = Some(e.to_string());
                    sh.cv.notify_all();
                    return;
                }
                tracing::debug!(volume = %cfg.volume, "DTL reconnect failed: {e}");
                g.last_error = Some(e.to_string());
                sh.cv.notify_all();
            }
        }
        let until = Instant::now() + backoff;
        let mut g = sh.m.lock();
        while !g.closing && g.fenced.is_none() && Instant::now() < until {
            sh.cv.wait_until(&mut g, until);
        }
        if g.fenced.is_some() {
            return;
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// Bookkeeping for a fresh connection whose server holds everything up to `last_seq`.
fn connected(sh: &Shared, stream: &Conn, last_seq: u64) -> u64 {
    let mut g = sh.m.lock();
    while g.unacked.front().is_some_and(|i| i.seq <= last_seq) {
        let i = g.unacked.pop_front().unwrap();
        g.bytes -= i.size;
    }
    let lost = last_seq < g.durable_seq || g.unacked.front().is_some_and(|i| i.seq > last_seq + 1);
    if lost {
        let (lo, hi) = (g.trimmed_upto + 1, g.max_sco);
        tracing::error!(volume = %sh.cfg.volume, last_seq, acknowledged = g.durable_seq, "DTL server lost acknowledged entries; needs resync");
        g.add_gap(lo, hi.max(lo));
    }
    while let Some(i) = g.unacked.pop_back() {
        g.pending.push_front(i);
    }
    g.epochs += 1;
    let epoch = g.epochs;
    g.conn = epoch;
    g.stream = stream.try_clone().ok();
    g.next_seq = last_seq + 1;
    g.durable_seq = last_seq;
    g.last_sent_seq = last_seq;
    g.last_sync_sent_seq = last_seq;
    g.sync_in_flight = false;
    g.catchup_until = g.pending.back().map(|i| i.aid);
    if g.closing {
        if let Some(s) = g.stream.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
    tracing::info!(volume = %sh.cfg.volume, last_seq, resend = g.pending.len(), "DTL connected");
    sh.cv.notify_all();
    epoch
}

/// Send batches and SYNCs on connection `epoch` until it breaks or the client closes.
fn feed(sh: &Shared, mut stream: &Conn, epoch: u64) {
    let cfg = &sh.cfg;
    let mut req = 0u64;
    let mut out = Vec::new();
    loop {
        let mut g: MutexGuard<Inner> = sh.m.lock();
        let heartbeat_due = |g: &Inner| g.last_send.is_none_or(|t| t.elapsed() >= cfg.heartbeat);
        let sync_due = |g: &Inner| {
            !g.sync_in_flight && (g.last_sent_seq > g.last_sync_sent_seq && (g.sync_wanted || g.pending.is_empty()))
        };
        loop {
            if g.closing || g.conn != epoch {
                return;
            }
            if !g.pending.is_empty() || sync_due(&g) || (!g.sync_in_flight && heartbeat_due(&g)) {
                break;
            }
            let wait = g.last_send.map_or(Duration::ZERO, |t| cfg.heartbeat.saturating_sub(t.elapsed()));
            sh.cv.wait_for(&mut g, wait.max(Duration::from_millis(1)));
        }
        out.clear();
        if !g.pending.is_empty() {
            let mut batch: Vec<(u64, Arc<Entry>)> = Vec::new();
            let mut size = 0;
            while let Some(front) = g.pending.front() {
                if !batch.is_empty() && size + front.size > cfg.batch_bytes {
                    break;
                }
                let mut it = g.pending.pop_front().unwrap();
                it.seq = g.next_seq;
                g.next_seq += 1;
                size += it.size;
                batch.push((it.seq, it.entry.clone()));
                g.unacked.push_back(it);
            }
            g.last_sent_seq = g.next_seq - 1;
            req += 1;
            out.extend_from_slice(&append_frame(req, batch.iter().map(|(s, e)| (*s, &**e))));
        }
        if sync_due(&g) || (!g.sync_in_flight && heartbeat_due(&g)) {
            g.last_sync_sent_seq = g.last_sent_seq;
            g.sync_in_flight = true;
            g.sync_wanted = false;
            req += 1;
            out.extend_from_slice(&simple_frame(T_SYNC, req, 0));
        }
        g.last_send = Some(Instant::now());
        drop(g);
        if let Err(e) = stream.write_all(&out) {
            sh.m.lock().broken(epoch, format!("send: {e}"));
            sh.cv.notify_all();
            return;
        }
    }
}

/// Take replies on connection `epoch`: SYNC replies release durable entries.
fn reader_loop(sh: &Shared, stream: Conn, epoch: u64) {
    let mut body = Vec::new();
    let why = loop {
        match read_frame(&mut &stream, MAX_FRAME, &mut body) {
            Ok(true) => {}
            Ok(false) => break "server closed the connection".to_string(),
            Err(e) => break format!("receive: {e}"),
        }
        let reply = match Reply::decode(&body) {
            Ok(r) => r,
            Err(e) => break format!("bad reply: {e}"),
        };
        let mut g = sh.m.lock();
        if g.conn != epoch {
            return;
        }
        match reply {
            Reply::Appended { .. } => {}
            Reply::Synced { durable_seq, .. } => {
                g.sync_in_flight = false;
                while g.unacked.front().is_some_and(|i| i.seq <= durable_seq) {
                    let i = g.unacked.pop_front().unwrap();
                    g.bytes -= i.size;
                }
                g.durable_seq = g.durable_seq.max(durable_seq);
                g.check_catchup();
                sh.cv.notify_all();
            }
            Reply::Error { code: ErrorCode::Fenced, message, .. } => {
                tracing::error!(volume = %sh.cfg.volume, "DTL: fenced: {message}");
                g.fenced = Some(message.clone());
                g.broken(epoch, format!("fenced: {message}"));
                sh.cv.notify_all();
                return;
            }
            Reply::Error { code, message, .. } => break format!("server refused ({code}): {message}"),
            r => break format!("unexpected reply {r:?}"),
        }
    };
    sh.m.lock().broken(epoch, why);
    sh.cv.notify_all();
}
