//! The DTL server and client over real TCP on 127.0.0.1 with real files: round trips
//! across restarts, QUERY/TRIM, fencing, tokens, hostile input, reconnects after the
//! server is killed, and the `logdisk dtl serve` command line (also its stop with
//! loopback down).

#[path = "common/tls.rs"]
mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use logdisk::dtl::protocol::{self, FrameBuf, Reply, MAX_FRAME};
use logdisk::dtl::{DtlClient, DtlConfig, DtlServer, DtlState, Entry, ErrorCode, ServerOptions};
use logdisk::Error;
use rand::{rngs::StdRng, Rng, SeedableRng};

const TOKEN: &[u8] = b"s3cret-token";

fn start(dir: &Path) -> DtlServer {
    DtlServer::start("127.0.0.1:0", dir, Some(TOKEN.to_vec())).unwrap()
}

fn entries(rng: &mut StdRng, scos: std::ops::RangeInclusive<u64>, per_sco: u32) -> Vec<Entry> {
    let mut out = Vec::new();
    for sco in scos {
        for i in 0..per_sco {
            let blocks = rng.gen_range(1..=3);
            let mut data = vec![0u8; blocks * 4096];
            rng.fill(&mut data[..]);
            out.push(Entry::data(sco, i, rng.gen_range(0..1 << 20), data));
        }
        out.push(Entry::record(sco, format!("discard in sco {sco}").into_bytes()));
    }
    out
}

fn client(addr: SocketAddr, volume: &str, generation: u32) -> DtlClient {
    let mut cfg = DtlConfig::new(addr.to_string(), TOKEN, volume, generation);
    cfg.backoff_min = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(200);
    DtlClient::connect_with(cfg).unwrap()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn after(all: &[Entry], sco: u64) -> Vec<Entry> {
    all.iter().filter(|e| e.sco > sco).cloned().collect()
}

fn refused_with(r: Result<impl std::fmt::Debug, Error>, want: ErrorCode) {
    match r {
        Err(Error::DtlRefused { code, .. }) if code == want => {}
        r => panic!("expected a {want} refusal, got {r:?}"),
    }
}

#[test]
fn round_trip_across_restarts_query_and_trim() {
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let all = entries(&mut rng, 1..=4, 20);
    let server = start(t.path());
    let c = client(server.local_addr(), "vm1", 1);
    for chunk in all.chunks(7) {
        c.append(chunk.to_vec()).unwrap();
    }
    c.sync().unwrap();
    assert_eq!(c.state(), DtlState::InSync);
    assert_eq!(c.query(0).unwrap(), all);
    assert_eq!(c.query(2).unwrap(), after(&all, 2));
    assert!(c.query(4).unwrap().is_empty());
    c.close();
    server.stop();

    // A restarted server reads its segments back.
    let server = start(t.path());
    let c = client(server.local_addr(), "vm1", 1);
    assert_eq!(c.query(0).unwrap(), all);
    c.trim(2).unwrap();
    assert_eq!(c.query(0).unwrap(), after(&all, 2));
    // More writes continue the sequence after the trim.
    let more = entries(&mut rng, 5..=5, 3);
    c.append(more.clone()).unwrap();
    c.sync().unwrap();
    c.close();
    server.stop();

    let server = start(t.path());
    let c = client(server.local_addr(), "vm1", 1);
    let mut want = after(&all, 2);
    want.extend(more);
    assert_eq!(c.query(0).unwrap(), want);
    // Trimmed SCOs' segments are gone from disk.
    let segs = std::fs::read_dir(t.path().join("vm1"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".seg"))
        .count();
    assert_eq!(segs, 3, "one segment per remaining SCO");
    c.trim(5).unwrap();
    assert!(c.query(0).unwrap().is_empty());
    c.close();
    server.stop();
}

#[test]
fn fencing_by_owner_generation() {
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let server = start(t.path());
    let old = client(server.local_addr(), "vm", 1);
    let first = entries(&mut rng, 1..=1, 5);
    old.append(first.clone()).unwrap();
    old.sync().unwrap();

    // A new owner takes over and sees what the old one logged.
    let new = client(server.local_addr(), "vm", 2);
    assert_eq!(new.query(0).unwrap(), first);
    // The old owner's next writes are refused as fenced.
    old.append(entries(&mut rng, 2..=2, 2)).unwrap();
    refused_with(old.sync(), ErrorCode::Fenced);
    assert!(matches!(old.state(), DtlState::Fenced(_)), "{:?}", old.state());
    refused_with(old.append(entries(&mut rng, 2..=2, 1)), ErrorCode::Fenced);
    refused_with(DtlClient::connect(&server.local_addr().to_string(), TOKEN, "vm", 1), ErrorCode::Fenced);
    // The new owner goes on from where the log is.
    let second = entries(&mut rng, 2..=2, 4);
    new.append(second.clone()).unwrap();
    new.sync().unwrap();
    let mut want = first.clone();
    want.extend(second);
    assert_eq!(new.query(0).unwrap(), want);
    new.close();
    server.stop();
    // Fencing survives a restart.
    let server = start(t.path());
    refused_with(DtlClient::connect(&server.local_addr().to_string(), TOKEN, "vm", 1), ErrorCode::Fenced);
    assert_eq!(client(server.local_addr(), "vm", 2).query(0).unwrap(), want);
}

#[test]
fn tokens() {
    let t = tempfile::tempdir().unwrap();
    let server = start(t.path());
    let addr = server.local_addr().to_string();
    refused_with(DtlClient::connect(&addr, b"s3cret-tokeN", "vm", 1), ErrorCode::BadToken);
    refused_with(DtlClient::connect(&addr, b"s3cret", "vm", 1), ErrorCode::BadToken);
    refused_with(DtlClient::connect(&addr, b"", "vm", 1), ErrorCode::BadToken);
    DtlClient::connect(&addr, TOKEN, "vm", 1).unwrap().close();
    server.stop();
    // Without a token configured (the CLI's --insecure) any client is served.
    let server = DtlServer::start("127.0.0.1:0", t.path(), None).unwrap();
    DtlClient::connect(&server.local_addr().to_string(), b"anything", "vm", 1).unwrap().close();
}

/// Send raw bytes, then read what the server answers until it closes the connection.
fn poke(addr: SocketAddr, bytes: &[u8], close_write: bool) -> Vec<Reply> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    if close_write {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut replies = Vec::new();
    let mut body = Vec::new();
    while let Ok(true) = protocol::read_frame(&mut s, MAX_FRAME, &mut body) {
        replies.push(Reply::decode(&body).unwrap());
    }
    replies
}

fn last_error(replies: &[Reply]) -> Option<ErrorCode> {
    match replies.last() {
        Some(Reply::Error { code, .. }) => Some(*code),
        _ => None,
    }
}

#[test]
fn bad_input_is_refused_and_other_volumes_stay_intact() {
    let t = tempfile::tempdir().unwrap();
    let opts = ServerOptions { hello_timeout: Duration::from_millis(500), ..ServerOptions::default() };
    let server = DtlServer::start_with("127.0.0.1:0", t.path(), Some(TOKEN.to_vec()), opts).unwrap();
    let addr = server.local_addr();
    let mut rng = StdRng::seed_from_u64(3);
    let good = client(addr, "good", 1);
    let mut want = entries(&mut rng, 1..=2, 10);
    good.append(want.clone()).unwrap();
    good.sync().unwrap();

    let hello = protocol::hello_frame(1, "good", TOKEN);
    let hello_other = protocol::hello_frame(1, "other", TOKEN);
    let mut valid_append = Vec::new();
    {
        let e = Entry::data(9, 0, 0, vec![7; 4096]);
        valid_append.extend_from_slice(&protocol::append_frame(1, [(1_000, &e)].into_iter()));
    }

    // Wrong token, then garbage of every shape, with and without a valid HELLO first.
    assert_eq!(last_error(&poke(addr, &protocol::hello_frame(1, "good", b"nope"), false)), Some(ErrorCode::BadToken));
    assert_eq!(last_error(&poke(addr, &protocol::hello_frame(1, "../etc", TOKEN), false)), Some(ErrorCode::BadName));
    for _ in 0..20 {
        let n = rng.gen_range(1..3000);
        let junk: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        let r = poke(addr, &junk, true);
        assert!(r.is_empty() || last_error(&r).is_some(), "{r:?}");
        let mut after_hello = hello_other.clone();
        after_hello.extend_from_slice(&junk);
        let r = poke(addr, &after_hello, true);
        assert!(matches!(r.first(), Some(Reply::Welcome { .. })), "{r:?}");
    }
    // Oversized length: before HELLO anything above 4 KiB, after it anything above 8 MiB.
    let mut big = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
    big.extend_from_slice(&[0; 4]);
    assert_eq!(last_error(&poke(addr, &big, false)), Some(ErrorCode::TooLarge));
    let mut b = 5000u32.to_le_bytes().to_vec();
    b.extend_from_slice(&[0; 4]);
    assert_eq!(last_error(&poke(addr, &b, false)), Some(ErrorCode::TooLarge));
    let mut hb = hello.clone();
    hb.extend_from_slice(&big);
    assert_eq!(last_error(&poke(addr, &hb, false)), Some(ErrorCode::TooLarge));
    // Truncated frames: a HELLO cut short, an APPEND for the good volume cut short.
    assert_eq!(last_error(&poke(addr, &hello[..hello.len() - 3], true)), Some(ErrorCode::Malformed));
    let mut cut = hello.clone();
    cut.extend_from_slice(&valid_append[..valid_append.len() - 100]);
    assert_eq!(last_error(&poke(addr, &cut, true)), Some(ErrorCode::Malformed));
    // A flipped bit in an APPEND to the good volume.
    let mut flipped = hello.clone();
    let mut a = valid_append.clone();
    a[40] ^= 0x10;
    flipped.extend_from_slice(&a);
    assert_eq!(last_error(&poke(addr, &flipped, false)), Some(ErrorCode::Malformed));
    // Well-framed but malformed entries (data not a multiple of 4 KiB) and a sequence gap.
    let mut f = FrameBuf::new(protocol::T_APPEND);
    f.u64(1).u32(1);
    Entry::record(9, vec![1; 10]).encode(1_000, f.buf_mut());
    let raw = f.buf_mut();
    raw[8 + 1 + 8 + 4 + 8 + 8] = 1; // kind = data, with a 10-byte payload
    let mut m = hello.clone();
    m.extend_from_slice(&f.finish());
    assert_eq!(last_error(&poke(addr, &m, false)), Some(ErrorCode::Malformed));
    let mut gap = hello.clone();
    gap.extend_from_slice(&valid_append);
    assert_eq!(last_error(&poke(addr, &gap, false)), Some(ErrorCode::SeqGap));
    // A request before HELLO; a second HELLO.
    assert_eq!(
        last_error(&poke(addr, &protocol::simple_frame(protocol::T_SYNC, 1, 0), false)),
        Some(ErrorCode::Malformed)
    );
    let mut twice = hello.clone();
    twice.extend_from_slice(&hello);
    assert_eq!(last_error(&poke(addr, &twice, false)), Some(ErrorCode::Malformed));
    // A client that stalls inside its HELLO is dropped after the hello timeout.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&hello[..5]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(t0.elapsed() < Duration::from_secs(5), "stalled client kept for {:?}", t0.elapsed());

    // The good volume's owner never noticed: its data is intact and it goes on.
    assert_eq!(good.query(0).unwrap(), want);
    let more = entries(&mut rng, 3..=3, 5);
    good.append(more.clone()).unwrap();
    good.sync().unwrap();
    want.extend(more);
    assert_eq!(good.query(0).unwrap(), want);
    assert_eq!(good.state(), DtlState::InSync);
    good.close();
    server.stop();
    let server = start(t.path());
    assert_eq!(client(server.local_addr(), "good", 1).query(0).unwrap(), want);
}

#[test]
fn many_volumes_and_owners_at_once() {
    let t = tempfile::tempdir().unwrap();
    let server = start(t.path());
    let addr = server.local_addr();
    let threads: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(100 + i);
                let c = client(addr, &format!("vol{i}"), 1);
                let all = entries(&mut rng, 1..=5, 12);
                for chunk in all.chunks(5) {
                    c.append(chunk.to_vec()).unwrap();
                    if rng.gen_bool(0.3) {
                        c.sync().unwrap();
                    }
                }
                c.sync().unwrap();
                assert_eq!(c.query(0).unwrap(), all);
                c.trim(3).unwrap();
                assert_eq!(c.query(0).unwrap(), after(&all, 3));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn full_queue_drops_to_needs_resync_and_trim_heals() {
    let t = tempfile::tempdir().unwrap();
    // Take a free port, then leave it closed: the server is down at first.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = DtlConfig::new(format!("127.0.0.1:{port}"), TOKEN, "vm", 1);
    cfg.queue_limit = 256 << 10;
    cfg.backoff_min = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(100);
    let c = DtlClient::connect_with(cfg).unwrap();
    assert!(matches!(c.state(), DtlState::Degraded(_)), "{:?}", c.state());
    let mut rng = StdRng::seed_from_u64(4);
    for sco in 1..=3 {
        c.append(entries(&mut rng, sco..=sco, 20)).unwrap();
    }
    assert_eq!(c.state(), DtlState::NeedsResync { from_sco: 1 });
    assert!(c.queued_bytes() <= 256 << 10);
    let server = DtlServer::start(format!("127.0.0.1:{port}"), t.path(), Some(TOKEN.to_vec())).unwrap();
    let later = entries(&mut rng, 4..=4, 3);
    c.append(later.clone()).unwrap();
    wait_for("reconnect", 10, || c.state() == DtlState::NeedsResync { from_sco: 1 } && c.queued_bytes() == 0);
    assert!(c.sync().is_err(), "sync must fail while entries are missing");
    // The owner uploaded SCOs 1..3: trimming them closes the gap.
    c.trim(3).unwrap();
    wait_for("in sync", 10, || c.state() == DtlState::InSync);
    c.sync().unwrap();
    assert_eq!(c.query(0).unwrap(), later);
    c.close();
    server.stop();
}

/// Start a `dtl serve` command line; returns the process and the first line it prints
/// (once it prints one, it is listening).
fn spawn_serving(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line)
}

/// `logdisk dtl serve` over TLS as a process; returns it and its address.
fn spawn_cli(dir: &Path, listen: &str, token_file: &Path, certs: &tls::Certs) -> (Child, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logdisk"));
    cmd.current_dir(dir)
        .args(["dtl", "serve", "--listen", listen, "--dir"])
        .arg(dir.join("dtl"))
        .arg("--token-file")
        .arg(token_file)
        .arg("--tls-cert")
        .arg(&certs.cert)
        .arg("--tls-key")
        .arg(&certs.key)
        .env_remove("RUST_LOG");
    let (child, line) = spawn_serving(&mut cmd);
    let addr = line
        .split_whitespace()
        .find_map(|w| w.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (child, addr)
}

#[test]
fn client_reconnects_after_the_server_is_killed() {
    let t = tempfile::tempdir().unwrap();
    let token_file = t.path().join("token");
    std::fs::write(&token_file, [TOKEN, b"\n"].concat()).unwrap();
    let certs = tls::make(&t.path().join("certs"), &["IP:127.0.0.1"]);
    let (mut child, addr) = spawn_cli(t.path(), "127.0.0.1:0", &token_file, &certs);
    let mut rng = StdRng::seed_from_u64(5);
    // Over TLS: the client reconnects with a fresh handshake after the kill.
    let mut cfg = DtlConfig::new(addr.to_string(), TOKEN, "vm", 1);
    cfg.backoff_min = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(200);
    cfg.tls = Some(logdisk::dtl::tls::client_config(&certs.ca).unwrap());
    let c = DtlClient::connect_with(cfg).unwrap();
    let mut all = entries(&mut rng, 1..=2, 10);
    c.append(all.clone()).unwrap();
    c.sync().unwrap();

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    wait_for("degraded", 60, || matches!(c.state(), DtlState::Degraded(_)));
    // Writes go on while the server is down; sync says the DTL does not cover them.
    let during = entries(&mut rng, 2..=3, 10);
    c.append(during.clone()).unwrap();
    all.extend(during);
    assert!(c.sync().is_err());

    let (mut child, addr2) = spawn_cli(t.path(), &addr.to_string(), &token_file, &certs);
    assert_eq!(addr, addr2);
    wait_for("back in sync", 30, || c.state() == DtlState::InSync);
    let last = entries(&mut rng, 4..=4, 3);
    c.append(last.clone()).unwrap();
    c.sync().unwrap();
    all.extend(last);
    assert_eq!(c.query(0).unwrap(), all, "nothing lost, nothing doubled");
    c.close();
    // SIGTERM stops the server cleanly.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn cli_refuses_to_start_without_a_token_or_tls() {
    let t = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_logdisk"))
            .current_dir(t.path())
            .args(["dtl", "serve", "--listen", "127.0.0.1:0", "--dir", "dtl"])
            .args(extra)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--token-file") && err.contains("--insecure"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    std::fs::write(t.path().join("empty"), "\n").unwrap();
    let o = run(&["--token-file", "empty"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is empty"), "{err}");
    let o = run(&["--token-file", "missing"]);
    assert!(!o.status.success());
    // A token but no certificate: TLS (or an explicit --insecure) is required.
    std::fs::write(t.path().join("token"), "tok\n").unwrap();
    let o = run(&["--token-file", "token"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--tls-cert") && err.contains("--insecure"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let o = run(&["--token-file", "token", "--tls-cert", "missing.pem", "--tls-key", "missing.key"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("missing.pem"), "{err}");
    // The DTL server needs no logdisk data dir.
    assert!(!t.path().join("logdisk-data").exists());
}

#[test]
fn server_that_lost_acknowledged_entries_is_not_trusted_silently() {
    let t = tempfile::tempdir().unwrap();
    let server = start(t.path());
    let addr = server.local_addr();
    let c = client(addr, "vm", 1);
    let mut rng = StdRng::seed_from_u64(6);
    c.append(entries(&mut rng, 1..=2, 5)).unwrap();
    c.sync().unwrap();
    server.stop();
    // The DTL host comes back with an empty disk.
    std::fs::remove_dir_all(t.path().join("vm")).unwrap();
    let server = DtlServer::start(addr, t.path(), Some(TOKEN.to_vec())).unwrap();
    wait_for("resync needed", 10, || c.state() == DtlState::NeedsResync { from_sco: 1 });
    assert!(c.sync().is_err());
    // Once SCOs 1 and 2 are in the object store the DTL covers the volume again.
    c.trim(2).unwrap();
    assert_eq!(c.state(), DtlState::InSync);
    let more = entries(&mut rng, 3..=3, 2);
    c.append(more.clone()).unwrap();
    c.sync().unwrap();
    assert_eq!(c.query(0).unwrap(), more);
    c.close();
    server.stop();
}

/// `dtl serve` stops on SIGTERM even where its own address cannot be connected to: in a
/// network namespace whose loopback is down (as in a freshly booted guest), a stop that
/// woke the accept loop by connecting to itself waited forever.
#[test]
fn cli_stops_on_sigterm_with_loopback_down() {
    if !Command::new("unshare").args(["-n", "true"]).status().is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot create a network namespace (needs root and unshare)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // A fresh network namespace: `lo` exists but is down.
    let (mut child, line) = spawn_serving(
        Command::new("unshare")
            .args(["-n", env!("CARGO_BIN_EXE_logdisk"), "dtl", "serve", "--listen", "127.0.0.1:7400", "--insecure"])
            .arg("--dir")
            .arg(t.path().join("dtl")),
    );
    assert!(line.contains("listening"), "{line}");
    // SAFETY: signalling our own child (unshare execs logdisk in place: same pid).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the DTL server did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success());
}
