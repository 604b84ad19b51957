//! Faults a real server cannot be made to produce on demand, from a tiny scripted HTTP
//! server: 503 SlowDown and 500 (retried by the SDK, then a short transient `Store`
//! error the uploader retries), 412/409 (create-only conflicts), 404, 501 for
//! `If-None-Match` (fallback to HEAD before PUT), and a server that accepts connections
//! but never answers (bounded by the attempt timeouts).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logdisk::backend::s3::S3Store;
use logdisk::backend::ObjectStore;
use logdisk::config::S3Config;
use logdisk::Error;

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// (status, S3 error code or "" for success, body for successful GETs)
type Script = dyn Fn(usize, &Req) -> (u16, &'static str, Vec<u8>) + Send + Sync;

struct Fake {
    port: u16,
    log: Arc<Mutex<Vec<Req>>>,
}

fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Req> {
    let mut line = String::new();
    if stream.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        stream.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let req = Req { method, path, headers };
    let len: usize = req.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    Some(req)
}

fn respond(stream: &mut TcpStream, method: &str, status: u16, code: &str, body: Vec<u8>) {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        409 => "Conflict",
        412 => "Precondition Failed",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    let body = if code.is_empty() {
        body
    } else {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>scripted {code}</Message>\
             <RequestId>1</RequestId></Error>"
        )
        .into_bytes()
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nETag: \"abc\"\r\nConnection: close\r\n",
        body.len()
    );
    if !code.is_empty() {
        head.push_str("Content-Type: application/xml\r\n");
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = stream.write_all(&body);
    }
}

impl Fake {
    /// Serve `script` for every request but HeadBucket (always 200, so the store opens).
    fn start(script: Box<Script>) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let script: Arc<Script> = script.into();
        std::thread::spawn(move || {
            let n = AtomicUsize::new(0);
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let Some(req) = read_request(&mut reader) else { continue };
                let mut w = conn;
                if req.method == "HEAD" && req.path.trim_end_matches('/') == "/bkt" {
                    respond(&mut w, "HEAD", 200, "", Vec::new());
                    continue;
                }
                log2.lock().unwrap().push(req.clone());
                let i = n.fetch_add(1, Ordering::SeqCst);
                let (status, code, body) = script(i, &req);
                if status == 1 {
                    // Headers and a little of the body, then silence.
                    let _ = w
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n0123456789");
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(60));
                        drop(w);
                    });
                    continue;
                }
                if status == 0 {
                    // Hang: keep the connection open, never answer.
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(60));
                        drop(w);
                    });
                    continue;
                }
                respond(&mut w, &req.method, status, code, body);
            }
        });
        Fake { port, log }
    }

    fn config(&self) -> S3Config {
        S3Config {
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            region: Some("us-east-1".into()),
            access_key_id: Some("AKIDFAKEFAKE".into()),
            secret_access_key: Some("fake-secret-value".into()),
            connect_timeout_secs: 1,
            read_timeout_secs: Some(4),
            read_attempt_timeout_secs: 1,
            write_attempt_timeout_secs: 1,
            max_attempts: 3,
            ..S3Config::default()
        }
    }

    fn open(&self) -> S3Store {
        S3Store::open("bkt", "p", &self.config()).unwrap()
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
}

fn assert_clean(msg: &str) {
    assert!(!msg.contains("AKIDFAKEFAKE") && !msg.contains("fake-secret-value"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn slow_down_is_retried_then_reported_as_transient() {
    let f = Fake::start(Box::new(|_, _| (503, "SlowDown", Vec::new())));
    let s = f.open();
    let e = s.put("k", b"data").unwrap_err();
    assert!(matches!(&e, Error::Store(m) if m.contains("503") && m.contains("SlowDown")), "{e}");
    assert_clean(&e.to_string());
    assert_eq!(f.requests().len(), 3, "max_attempts = 3");
    let e = s.get_range("k", 0, 10).unwrap_err();
    assert!(matches!(&e, Error::Store(m) if m.contains("503")), "{e}");
    assert_eq!(f.requests().len(), 6);
    assert!(f.requests().iter().all(|r| r.path.starts_with("/bkt/p/k")), "{:?}", f.requests());
}

#[test]
fn internal_errors_are_retried_by_the_sdk() {
    let f =
        Fake::start(Box::new(|i, _| if i < 2 { (500, "InternalError", Vec::new()) } else { (200, "", Vec::new()) }));
    let s = f.open();
    s.put("k", b"data").unwrap();
    let reqs = f.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| r.method == "PUT" && r.header("if-none-match") == Some("*")), "{reqs:?}");
}

#[test]
fn conflicts_and_missing_keys() {
    let f = Fake::start(Box::new(|_, r| match (r.method.as_str(), r.path.split('?').next().unwrap()) {
        ("PUT", p) if p.ends_with("/a") => (412, "PreconditionFailed", Vec::new()),
        ("PUT", p) if p.ends_with("/b") => (409, "ConditionalRequestConflict", Vec::new()),
        ("GET", _) => (404, "NoSuchKey", Vec::new()),
        _ => (200, "", Vec::new()),
    }));
    let s = f.open();
    assert!(matches!(s.put("a", b"x"), Err(Error::ObjectExists(k)) if k == "a"));
    assert!(matches!(s.put("b", b"x"), Err(Error::ObjectExists(k)) if k == "b"));
    assert!(matches!(s.get("c"), Err(Error::ObjectNotFound(k)) if k == "c"));
    let r = s.get_tail("c", 10);
    assert!(matches!(r, Err(Error::ObjectNotFound(_))), "{r:?}");
    // Deleting a missing key is fine.
    s.delete("c").unwrap();
    // 412/409 are final: not retried.
    assert_eq!(f.requests().iter().filter(|r| r.method == "PUT").count(), 2);
}

#[test]
fn servers_without_conditional_puts_get_head_then_put() {
    let f = Fake::start(Box::new(|_, r| match r.method.as_str() {
        "PUT" if r.header("if-none-match").is_some() => (501, "NotImplemented", Vec::new()),
        "HEAD" if r.path.split('?').next().unwrap().ends_with("/exists") => (200, "", Vec::new()),
        "HEAD" => (404, "", Vec::new()),
        _ => (200, "", Vec::new()),
    }));
    let s = f.open();
    s.put("new", b"x").unwrap();
    assert!(matches!(s.put("exists", b"x"), Err(Error::ObjectExists(_))));
    let methods: Vec<(String, bool)> =
        f.requests().iter().map(|r| (r.method.clone(), r.header("if-none-match").is_some())).collect();
    let want: Vec<(String, bool)> = [("PUT", true), ("HEAD", false), ("PUT", false), ("HEAD", false)]
        .iter()
        .map(|(m, c)| (m.to_string(), *c))
        .collect();
    assert_eq!(methods, want);
}

#[test]
fn a_server_that_never_answers_times_out() {
    let f = Fake::start(Box::new(|_, _| (0, "", Vec::new())));
    let s = f.open();
    let t0 = Instant::now();
    let e = s.get("k").unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(e, Error::StoreTimeout { secs: 4, .. }), "{e}");
    assert!(took < Duration::from_secs(6), "read took {took:?}");
    let t0 = Instant::now();
    let e = s.put("k", b"x").unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(e, Error::StoreTimeout { .. }), "{e}");
    // 3 attempts of 1 s plus backoff.
    assert!(took < Duration::from_secs(8), "put took {took:?}");
    assert_clean(&e.to_string());
}

#[test]
fn ranged_reads_send_the_right_headers() {
    let f = Fake::start(Box::new(|_, r| match r.header("range") {
        // A server that ignores ranges: the store slices the whole object itself.
        Some(_) => (200, "", b"0123456789".to_vec()),
        None => (200, "", b"0123456789".to_vec()),
    }));
    let s = f.open();
    assert_eq!(s.get_range("k", 2, 3).unwrap(), b"234");
    assert_eq!(s.get_tail("k", 4).unwrap(), (b"6789".to_vec(), 10));
    let ranges: Vec<_> = f.requests().iter().map(|r| r.header("range").unwrap_or("").to_string()).collect();
    assert_eq!(ranges, vec!["bytes=2-4", "bytes=-4"]);
}

#[test]
fn a_body_that_stops_flowing_times_out() {
    let f = Fake::start(Box::new(|_, _| (1, "", Vec::new())));
    let s = f.open();
    // Whole-object GET: no data for read_attempt_timeout (1 s) ends it.
    let t0 = Instant::now();
    let e = s.get("k").unwrap_err();
    assert!(matches!(&e, Error::StoreTimeout { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
    // Ranged GET: the whole read deadline (4 s) bounds it.
    let t0 = Instant::now();
    let e = s.get_range("k", 0, 100000).unwrap_err();
    assert!(matches!(&e, Error::StoreTimeout { secs: 4, .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(6), "took {:?}", t0.elapsed());
}
