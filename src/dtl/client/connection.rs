//! Connecting to the DTL server (TCP, optional TLS, HELLO answered by WELCOME), and the
//! requests that each run on a fresh connection of their own: QUERY, TRIM (which also
//! drops queued entries of the trimmed SCOs) and the server's trim watermark.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};

use super::{DtlClient, DtlConfig};
use crate::dtl::protocol::{
    hello_frame, read_frame, simple_frame, Entry, ErrorCode, ProtoError, Reply, MAX_FRAME, T_QUERY, T_TRIM,
};
use crate::dtl::tls::{host_of, Conn};
use crate::error::{Error, Result};

pub(super) fn refused(code: ErrorCode, message: String) -> Error {
    Error::DtlRefused { code, message }
}

fn proto(e: ProtoError) -> Error {
    Error::Dtl(e.to_string())
}

/// Connect and say hello; returns the stream and the server's (last_seq, trimmed_upto).
pub(super) fn handshake(cfg: &DtlConfig) -> Result<(Conn, u64, u64)> {
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
pub(super) fn permanent(e: &Error) -> bool {
    matches!(e, Error::DtlRefused { code: ErrorCode::Fenced | ErrorCode::BadName | ErrorCode::BadVersion, .. })
}

impl DtlClient {
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
}
