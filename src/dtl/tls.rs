//! TLS for the DTL: [`Conn`] is plain TCP or rustls over TCP, usable by two threads at
//! once (one reading, one writing) as the DTL client does; the protocol code only sees
//! `Read + Write`.
//!
//! rustls keeps one state machine per connection. [`Conn`] guards it with a mutex held
//! only for CPU work (decrypt, encrypt): socket reads happen without it and socket writes
//! under a separate write lock, so a writer blocked on a full socket never stops the
//! reader from draining replies. Timeouts stay those set on the `TcpStream`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::{Error, Result};

/// What a client trusts (the CA bundle given in the config).
pub type ClientTls = Arc<rustls::ClientConfig>;
/// The server's certificate chain and key.
pub type ServerTls = Arc<rustls::ServerConfig>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates of a PEM file; at least one, else a one-line error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |e: &dyn std::fmt::Display| Error::Config(format!("certificate file {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"holds no PEM certificate"));
    }
    Ok(certs)
}

/// The CA certificates of a PEM bundle, each checked to be usable as a trust anchor.
pub fn read_roots(ca_file: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca_file)? {
        roots.add(c).map_err(|e| Error::Config(format!("CA file {}: {e}", ca_file.display())))?;
    }
    Ok(roots)
}

/// A client configuration trusting exactly the CA certificates of `ca_file` (PEM).
pub fn client_config(ca_file: &Path) -> Result<ClientTls> {
    let roots = read_roots(ca_file)?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A server configuration from a PEM certificate chain and its PEM private key.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<ServerTls> {
    let certs = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| Error::Config(format!("key file {}: {e}", key_file.display())))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Config(format!("certificate {} / key {}: {e}", cert_file.display(), key_file.display())))?;
    // Clients reconnect rarely: no session tickets to send or keep.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// The host part of `HOST:PORT` (`[v6]:port` too): the name the certificate must carry.
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// Whether the first bytes a client sent look like a TLS handshake record (0x16 0x03
/// 0x01..=0x04). A DTL frame cannot start so: its little-endian length would be far above
/// the HELLO limit. Waits for 3 bytes, at most `timeout`.
pub fn starts_with_tls(tcp: &TcpStream, timeout: std::time::Duration) -> io::Result<bool> {
    let mut b = [0u8; 3];
    let end = std::time::Instant::now() + timeout;
    loop {
        let n = tcp.peek(&mut b)?;
        if n == 0 {
            return Ok(false);
        }
        if b[0] != 0x16 || (n >= 2 && b[1] != 0x03) {
            return Ok(false);
        }
        if n >= 3 {
            return Ok((1..=4).contains(&b[2]));
        }
        if std::time::Instant::now() >= end {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no complete TLS record header in time"));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

struct TlsState {
    conn: rustls::Connection,
    /// Bytes read from the socket that rustls has not taken yet.
    raw: Vec<u8>,
    pos: usize,
}

struct Tls {
    st: Mutex<TlsState>,
    /// Held while TLS records are taken out of the state and written to the socket, so
    /// they reach it in order; the buffer is reused.
    wlock: Mutex<Vec<u8>>,
}

/// A DTL connection: plain TCP or TLS. Clones share the session ([`Conn::try_clone`]).
pub struct Conn {
    tcp: TcpStream,
    tls: Option<Arc<Tls>>,
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Conn {
    pub fn plain(tcp: TcpStream) -> Conn {
        Conn { tcp, tls: None }
    }

    /// Run the client handshake on `tcp` (blocking, under its timeouts), verifying the
    /// server certificate for `host` (a DNS name or an IP address).
    pub fn client(tcp: TcpStream, cfg: &ClientTls, host: &str) -> io::Result<Conn> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("server name {host:?}: {e}")))?;
        let c = rustls::ClientConnection::new(cfg.clone(), name).map_err(tls_err)?;
        Self::handshake(tcp, c.into())
    }

    /// Run the server handshake on `tcp` (blocking, under its timeouts).
    pub fn server(tcp: TcpStream, cfg: &ServerTls) -> io::Result<Conn> {
        let c = rustls::ServerConnection::new(cfg.clone()).map_err(tls_err)?;
        Self::handshake(tcp, c.into())
    }

    fn handshake(tcp: TcpStream, mut conn: rustls::Connection) -> io::Result<Conn> {
        conn.set_buffer_limit(None);
        let mut t = &tcp;
        while conn.is_handshaking() {
            conn.complete_io(&mut t)?;
        }
        while conn.wants_write() {
            conn.write_tls(&mut t)?;
        }
        let st = TlsState { conn, raw: Vec::new(), pos: 0 };
        Ok(Conn { tcp, tls: Some(Arc::new(Tls { st: Mutex::new(st), wlock: Mutex::new(Vec::new()) })) })
    }

    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(Conn { tcp: self.tcp.try_clone()?, tls: self.tls.clone() })
    }

    /// The socket (timeouts, peer address, shutdown).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.tcp.shutdown(how)
    }

    /// End the sending side: a TLS close_notify, then a TCP half-close.
    pub fn close_write(&self) {
        if let Some(t) = &self.tls {
            t.st.lock().conn.send_close_notify();
            let _ = self.flush_tls(t);
        }
        let _ = self.tcp.shutdown(Shutdown::Write);
    }

    /// Write whatever TLS records rustls has queued.
    fn flush_tls(&self, t: &Tls) -> io::Result<()> {
        let mut out = t.wlock.lock();
        out.clear();
        {
            let mut st = t.st.lock();
            while st.conn.wants_write() {
                st.conn.write_tls(&mut *out)?;
            }
        }
        (&self.tcp).write_all(&out)
    }

    fn read_tls(&self, t: &Tls, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut chunk = [0u8; 16 << 10];
        loop {
            let mut st = t.st.lock();
            match st.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed TCP without close_notify: DTL frames carry their own
                // length and checksum, so a cut inside a frame is still caught.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if st.pos < st.raw.len() {
                let TlsState { conn, raw, pos } = &mut *st;
                *pos += conn.read_tls(&mut &raw[*pos..])?;
                if *pos == raw.len() {
                    raw.clear();
                    *pos = 0;
                }
                conn.process_new_packets().map_err(tls_err)?;
                let wants = conn.wants_write();
                drop(st);
                if wants {
                    self.flush_tls(t)?;
                }
                continue;
            }
            drop(st);
            let n = (&self.tcp).read(&mut chunk)?;
            let mut st = t.st.lock();
            if n == 0 {
                st.conn.read_tls(&mut &[][..])?;
                st.conn.process_new_packets().map_err(tls_err)?;
            } else {
                st.raw.extend_from_slice(&chunk[..n]);
            }
        }
    }

    fn write_tls(&self, t: &Tls, buf: &[u8]) -> io::Result<usize> {
        let mut out = t.wlock.lock();
        out.clear();
        {
            let mut st = t.st.lock();
            let mut off = 0;
            while off < buf.len() {
                let n = st.conn.writer().write(&buf[off..])?;
                while st.conn.wants_write() {
                    st.conn.write_tls(&mut *out)?;
                }
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "TLS session closed"));
                }
                off += n;
            }
        }
        (&self.tcp).write_all(&out)?;
        Ok(buf.len())
    }
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.tls {
            None => (&self.tcp).read(buf),
            Some(t) => self.read_tls(t, buf),
        }
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.tls {
            None => (&self.tcp).write(buf),
            Some(t) => self.write_tls(t, buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        (&self.tcp).flush()
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self).flush()
    }
}
