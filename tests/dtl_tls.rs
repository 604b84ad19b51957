//! The DTL over TLS on 127.0.0.1 with real certificates (made by openssl at test time):
//! entries written over TLS are replayed intact and never cross the wire in plain text;
//! a client trusting another CA, expecting another name, with a wrong token, or without
//! TLS is refused with a clear error; so is a TLS client against a plain server.

#[path = "common/tls.rs"]
mod tls;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use logdisk::dtl::tls::{client_config, server_config};
use logdisk::dtl::{DtlClient, DtlConfig, DtlServer, DtlState, Entry, ErrorCode, ServerOptions};
use logdisk::Error;
use rand::{rngs::StdRng, Rng, SeedableRng};

const TOKEN: &[u8] = b"s3cret-token";

fn tls_server(dir: &Path, certs: &tls::Certs) -> DtlServer {
    let opts = ServerOptions { tls: Some(server_config(&certs.cert, &certs.key).unwrap()), ..Default::default() };
    DtlServer::start_with("127.0.0.1:0", dir, Some(TOKEN.to_vec()), opts).unwrap()
}

fn connect(addr: &str, token: &[u8], ca: Option<&Path>, generation: u32) -> logdisk::Result<DtlClient> {
    let mut cfg = DtlConfig::new(addr, token, "vm", generation);
    cfg.tls = ca.map(|ca| client_config(ca).unwrap());
    DtlClient::connect_with(cfg)
}

fn entries(rng: &mut StdRng, scos: std::ops::RangeInclusive<u64>, per_sco: u32) -> Vec<Entry> {
    let mut out = Vec::new();
    for sco in scos {
        for i in 0..per_sco {
            let mut data = vec![0u8; rng.gen_range(1..=3) * 4096];
            rng.fill(&mut data[..]);
            out.push(Entry::data(sco, i, rng.gen_range(0..1 << 20), data));
        }
        out.push(Entry::record(sco, format!("discard in sco {sco}").into_bytes()));
    }
    out
}

/// A TCP relay to `to` that records every byte the client sends.
fn tap(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let mut s = TcpStream::connect(to).unwrap();
            let (mut c2, mut s2b) = (c.try_clone().unwrap(), s.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2b, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
            let seen = s2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            seen.lock().unwrap().extend_from_slice(&buf[..n]);
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, seen)
}

fn expect_tls_error(r: logdisk::Result<DtlClient>, want: &str) -> String {
    match r {
        Err(Error::DtlTls(m)) => {
            assert!(m.contains(want), "{m}");
            assert_eq!(m.lines().count(), 1, "{m}");
            m
        }
        r => panic!("expected a TLS refusal ({want}), got {r:?}"),
    }
}

#[test]
fn entries_written_over_tls_are_replayed_and_never_plain_on_the_wire() {
    let t = tempfile::tempdir().unwrap();
    let certs = tls::make(&t.path().join("certs"), &["IP:127.0.0.1", "DNS:localhost"]);
    let mut rng = StdRng::seed_from_u64(21);
    let all = entries(&mut rng, 1..=4, 25);
    let server = tls_server(&t.path().join("dtl"), &certs);
    let (relay, seen) = tap(server.local_addr());
    let c = connect(&relay.to_string(), TOKEN, Some(&certs.ca), 1).unwrap();
    for chunk in all.chunks(9) {
        c.append(chunk.to_vec()).unwrap();
    }
    c.sync().unwrap();
    assert_eq!(c.state(), DtlState::InSync);
    assert_eq!(c.query(0).unwrap(), all);
    c.close();
    server.stop();

    // Nothing the client sent shows any 64-byte window of the data or the token.
    let wire = seen.lock().unwrap().clone();
    assert!(wire.len() > 500_000, "the relay saw {} bytes", wire.len());
    let mut windows = std::collections::HashSet::new();
    for w in wire.windows(64) {
        windows.insert(w);
    }
    for e in &all {
        if let logdisk::dtl::EntryBody::Data { data, .. } = &e.body {
            for w in data.chunks_exact(64) {
                assert!(!windows.contains(w), "plain data on the wire");
            }
        }
    }
    assert!(!wire.windows(TOKEN.len()).any(|w| w == TOKEN), "the token crossed the wire in plain text");

    // A new owner (after a restart of the server) replays everything over TLS, by name.
    let server = tls_server(&t.path().join("dtl"), &certs);
    let c = connect(&format!("localhost:{}", server.local_addr().port()), TOKEN, Some(&certs.ca), 2).unwrap();
    assert_eq!(c.query(0).unwrap(), all);
    c.close();
}

#[test]
fn untrusted_certificates_wrong_tokens_and_plain_peers_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let certs = tls::make(&t.path().join("certs"), &["IP:127.0.0.1"]);
    let other = tls::make(&t.path().join("other"), &["IP:127.0.0.1"]);
    let server = tls_server(&t.path().join("dtl"), &certs);
    let addr = server.local_addr().to_string();

    // A client trusting another CA.
    // (Both test CAs carry the same name, so rustls finds the issuer and the signature fails.)
    let m = expect_tls_error(connect(&addr, TOKEN, Some(&other.ca), 1), "invalid peer certificate");
    assert!(m.contains("BadSignature") || m.contains("UnknownIssuer"), "{m}");
    // The certificate does not name the host the client dialled.
    let by_name = format!("localhost:{}", server.local_addr().port());
    expect_tls_error(connect(&by_name, TOKEN, Some(&certs.ca), 1), "not valid for name \"localhost\"");
    // A wrong token inside TLS.
    match connect(&addr, b"wrong-token", Some(&certs.ca), 1) {
        Err(Error::DtlRefused { code: ErrorCode::BadToken, .. }) => {}
        r => panic!("expected a bad-token refusal, got {r:?}"),
    }
    // A plain-text client is told the server wants TLS.
    match connect(&addr, TOKEN, None, 1) {
        Err(Error::DtlRefused { code: ErrorCode::Malformed, message }) => {
            assert!(message.contains("requires TLS"), "{message}")
        }
        r => panic!("expected a plain client to be refused, got {r:?}"),
    }
    // The server still serves a good client afterwards.
    let c = connect(&addr, TOKEN, Some(&certs.ca), 1).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let e = entries(&mut rng, 1..=1, 3);
    c.append(e.clone()).unwrap();
    c.sync().unwrap();
    assert_eq!(c.query(0).unwrap(), e);
    c.close();
    server.stop();

    // A TLS client against a plain-text server.
    let plain = DtlServer::start("127.0.0.1:0", &t.path().join("plain"), Some(TOKEN.to_vec())).unwrap();
    expect_tls_error(connect(&plain.local_addr().to_string(), TOKEN, Some(&certs.ca), 1), "TLS handshake failed");
}

/// Peers that stall inside the TLS record header or send garbage after it are dropped
/// within the hello timeout; the server goes on serving good clients.
#[test]
fn stalled_or_garbage_handshakes_are_dropped() {
    let t = tempfile::tempdir().unwrap();
    let certs = tls::make(&t.path().join("certs"), &["IP:127.0.0.1"]);
    let opts = ServerOptions {
        tls: Some(server_config(&certs.cert, &certs.key).unwrap()),
        hello_timeout: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let server = DtlServer::start_with("127.0.0.1:0", &t.path().join("dtl"), Some(TOKEN.to_vec()), opts).unwrap();
    let addr = server.local_addr();
    let closed_within = |bytes: &[u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let t0 = std::time::Instant::now();
        let mut buf = [0u8; 4096];
        // Read until EOF or reset (a TLS alert may come first).
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        t0.elapsed()
    };
    assert!(closed_within(&[0x16, 0x03]) < std::time::Duration::from_secs(5), "stalled header not dropped");
    let mut junk = vec![0x16, 0x03, 0x03, 0x00, 0x40];
    junk.extend(std::iter::repeat_n(0xAB, 64));
    assert!(closed_within(&junk) < std::time::Duration::from_secs(5), "garbage handshake not dropped");
    let c = connect(&addr.to_string(), TOKEN, Some(&certs.ca), 1).unwrap();
    assert_eq!(c.state(), DtlState::InSync);
    c.close();
}
