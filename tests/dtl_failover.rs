//! Failover through the DTL at the library level: two data dirs ("hosts") share one
//! object store, a real DTL server runs on loopback. Host 1 writes with uploads
//! paused and disappears without a clean close; host 2 takes the volume over and must
//! read back every write host 1 completed. Also: a fenced old owner (dead or alive),
//! a refused takeover when the DTL was not in sync, and DEGRADED → in sync.
//! The DTL runs over TLS with a CA made at test time, as in production.
//! (`tests/dtl/failover.sh` does the same across network namespaces with kill -9.)

#[path = "common/tls.rs"]
mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use logdisk::config::Config;
use logdisk::control::ops;
use logdisk::control::protocol::Request;
use logdisk::datadir::DataDir;
use logdisk::dtl::tls::server_config;
use logdisk::dtl::{DtlServer, ServerOptions};
use logdisk::volume::dtl_link::{DtlMode, DtlSettings};
use logdisk::volume::Volume;
use logdisk::Error;
use rand::{rngs::StdRng, Rng, SeedableRng};

const TOKEN: &str = "failover-test-token";
const SIZE: u64 = 32 << 20;

struct Hosts {
    t: tempfile::TempDir,
    backend: String,
    cfg: Config,
}

impl Hosts {
    fn new() -> Hosts {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let mut cfg = Config::default();
        cfg.dtl.token_file = Some(t.path().join("token"));
        let certs = tls::make(&t.path().join("certs"), &["IP:127.0.0.1"]);
        cfg.dtl.ca_file = Some(certs.ca);
        cfg.upload.drain_timeout_secs = 60;
        cfg.write_buffer.seal_after_secs = 0;
        cfg.read_cache.size = logdisk::config::ByteSize(16 << 20);
        let backend = format!("file://{}", t.path().join("objects").display());
        Hosts { t, backend, cfg }
    }

    fn host(&self, n: u32) -> DataDir {
        DataDir::open(&self.t.path().join(format!("host{n}")), Some(&self.backend), self.cfg.clone()).unwrap()
    }

    fn dtl_dir(&self) -> std::path::PathBuf {
        self.t.path().join("dtl")
    }
}

impl Hosts {
    /// The DTL server over TLS (the certificate made in [`Hosts::new`]).
    fn server(&self, addr: &str) -> DtlServer {
        let certs = self.t.path().join("certs");
        let tls = server_config(&certs.join("server.pem"), &certs.join("server.key")).unwrap();
        let opts = ServerOptions { tls: Some(tls), ..Default::default() };
        DtlServer::start_with(addr, &self.dtl_dir(), Some(TOKEN.as_bytes().to_vec()), opts).unwrap()
    }
}

fn create(dd: &mut DataDir, name: &str, dtl: Option<DtlSettings>) {
    ops::run(
        dd,
        &Default::default(),
        Request::Create {
            volume: name.into(),
            size: SIZE,
            cluster_size: None,
            sco_size: Some(1 << 20),
            dtl,
            key: None,
        },
    )
    .unwrap();
}

/// Random writes (4k..256k, cluster-aligned or not) and a discard, into `vol` and `model`.
fn write_random(vol: &Volume, model: &mut [u8], rng: &mut StdRng, n: usize) {
    for i in 0..n {
        let len = [4096usize, 8192, 65536, 262144, 1000][rng.gen_range(0..5)];
        let off = rng.gen_range(0..(SIZE as usize - len)) & !511;
        if i % 37 == 36 {
            vol.write_zeroes(off as u64, len as u64).unwrap();
            model[off..off + len].fill(0);
            continue;
        }
        let mut buf = vec![0u8; len];
        rng.fill(&mut buf[..]);
        vol.write_at(off as u64, &buf).unwrap();
        model[off..off + len].copy_from_slice(&buf);
    }
}

fn assert_content(vol: &Volume, model: &[u8], what: &str) {
    let mut buf = vec![0u8; model.len()];
    vol.read_at(0, &mut buf).unwrap();
    if let Some(i) = buf.iter().zip(model).position(|(a, b)| a != b) {
        panic!("{what}: byte {i} differs (got {}, want {})", buf[i], model[i]);
    }
}

fn dtl(addr: &str, mode: DtlMode) -> DtlSettings {
    DtlSettings { addr: addr.to_string(), mode }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Host 1 writes (part uploaded, then uploads paused), disappears; host 2 takes over.
fn failover(mode: DtlMode) {
    let h = Hosts::new();
    let srv = h.server("127.0.0.1:0");
    let addr = srv.local_addr().to_string();
    let mut rng = StdRng::seed_from_u64(7 + mode as u64);
    let mut model = vec![0u8; SIZE as usize];

    let mut dd1 = h.host(1);
    create(&mut dd1, "v", Some(dtl(&addr, mode)));
    let v1 = dd1.open_volume("v", false).unwrap();
    write_random(&v1, &mut model, &mut rng, 60);
    v1.upload_all("test").unwrap();
    ops::run(
        &mut dd1,
        &[("v".to_string(), v1.clone())].into_iter().collect(),
        Request::Set { volume: "v".into(), dtl_addr: None, dtl_mode: None, uploads_paused: Some(true), new_key: None },
    )
    .unwrap();
    write_random(&v1, &mut model, &mut rng, 400);
    v1.flush().unwrap();
    if mode == DtlMode::Sync {
        // Completed writes after the last flush are in the DTL too.
        write_random(&v1, &mut model, &mut rng, 40);
    }
    assert_eq!(v1.dtl_status().unwrap().1, "in_sync");
    assert!(v1.stats().wb_bytes > 0, "uploads were paused: data only local");
    // Host 1 dies: no close, no drain.
    drop(v1);
    drop(dd1);

    let mut dd2 = h.host(2);
    let rep = logdisk::takeover::takeover(&mut dd2, "v", dtl(&addr, DtlMode::Sync), false).unwrap();
    assert_eq!(rep.generation, 2);
    assert!(rep.dtl_entries > 0 && !rep.dtl_epochs.is_empty(), "{rep:?}");
    assert!(rep.uploaded && rep.forced.is_empty(), "{rep:?}");
    let v2 = dd2.open_volume("v", false).unwrap();
    assert_content(&v2, &model, "after takeover");
    assert_eq!(v2.dtl_status().unwrap().1, "in_sync");
    write_random(&v2, &mut model, &mut rng, 50);
    assert!(v2.close().unwrap().drained);
    drop(v2);
    drop(dd2);

    // The old owner's stale copy is fenced.
    let mut dd1 = h.host(1);
    match dd1.open_volume("v", false) {
        Err(Error::Fenced { generation: 1, by: 2, .. }) => {}
        r => panic!("old owner opened a taken-over volume: {:?}", r.map(|_| ())),
    }
    drop(dd1);
    // A third host reads everything from the object store alone.
    let mut dd3 = h.host(3);
    let v3 = dd3.open_volume("v", true).unwrap();
    assert_content(&v3, &model, "from the object store alone");
    drop(srv);
}

#[test]
fn takeover_sync_mode() {
    failover(DtlMode::Sync);
}

#[test]
fn takeover_async_mode() {
    failover(DtlMode::Async);
}

/// An old owner that is still running stops writing and uploading once fenced.
#[test]
fn live_old_owner_is_fenced() {
    let h = Hosts::new();
    let srv = h.server("127.0.0.1:0");
    let addr = srv.local_addr().to_string();
    let mut rng = StdRng::seed_from_u64(11);
    let mut model = vec![0u8; SIZE as usize];
    let mut dd1 = h.host(1);
    create(&mut dd1, "v", Some(dtl(&addr, DtlMode::Sync)));
    let v1 = dd1.open_volume("v", false).unwrap();
    v1.set_uploads_paused(true);
    write_random(&v1, &mut model, &mut rng, 100);
    v1.flush().unwrap();

    let mut dd2 = h.host(2);
    logdisk::takeover::takeover(&mut dd2, "v", dtl(&addr, DtlMode::Sync), false).unwrap();
    // The old owner's next write is refused, and its uploads (resumed) never land
    // where the new owner reads.
    let r = v1.write_at(0, &[0xAB; 4096]);
    assert!(matches!(r, Err(Error::Fenced { .. })), "{r:?}");
    assert!(v1.is_fenced());
    v1.set_uploads_paused(false);
    let _ = v1.upload_all("test");
    let v2 = dd2.open_volume("v", false).unwrap();
    assert_content(&v2, &model, "new owner after the old one tried to go on");
    v2.close().unwrap();
    drop(v2);
    drop(dd2);
    let mut dd3 = h.host(3);
    assert_content(&dd3.open_volume("v", true).unwrap(), &model, "object store after the old owner tried to go on");
    drop(srv);
}

/// DTL down: IO goes on DEGRADED and a "not covered" mark makes a later takeover
/// refuse (unless forced). DTL back: in sync again.
#[test]
fn degraded_then_back_and_refused_takeover() {
    let h = Hosts::new();
    let srv = h.server("127.0.0.1:0");
    let addr = srv.local_addr().to_string();
    let mut rng = StdRng::seed_from_u64(13);
    let mut model = vec![0u8; SIZE as usize];
    let mut dd1 = h.host(1);
    create(&mut dd1, "v", Some(dtl(&addr, DtlMode::Async)));
    let v1: Arc<Volume> = dd1.open_volume("v", false).unwrap();
    v1.set_uploads_paused(true);
    write_random(&v1, &mut model, &mut rng, 50);
    v1.flush().unwrap();
    srv.stop();
    write_random(&v1, &mut model, &mut rng, 50);
    v1.flush().unwrap(); // IO goes on without the peer
    let state = v1.dtl_status().unwrap().1;
    assert!(state == "degraded" || state == "catching_up", "{state}");
    // The peer returns on the same address: the client catches up, a tick marks it covered.
    let srv = h.server(&addr);
    wait_for("DTL back in sync", 30, || v1.dtl_status().unwrap().1 == "in_sync");
    write_random(&v1, &mut model, &mut rng, 20);
    v1.flush().unwrap();
    // Now the peer goes away for good and host 1 dies with flushed writes it lacks.
    srv.stop();
    write_random(&v1, &mut model, &mut rng, 20);
    v1.flush().unwrap();
    drop(v1);
    drop(dd1);
    let srv = h.server(&addr);
    let mut dd2 = h.host(2);
    match logdisk::takeover::takeover(&mut dd2, "v", dtl(&addr, DtlMode::Sync), false) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("not in sync"), "{m}"),
        r => panic!("takeover of a volume whose DTL was behind: {r:?}"),
    }
    // Forced, it takes what the DTL has (here: everything but the last 20 writes).
    let rep = logdisk::takeover::takeover(&mut dd2, "v", dtl(&addr, DtlMode::Sync), true).unwrap();
    assert_eq!(rep.forced.len(), 1, "{rep:?}");
    drop(srv);
}

/// A host whose config names no DTL CA (and not `insecure`) refuses to open a volume with
/// a DTL in one line; one set to plain text is refused by the TLS server.
#[test]
fn dtl_volume_needs_tls_or_an_explicit_insecure() {
    let h = Hosts::new();
    let srv = h.server("127.0.0.1:0");
    let addr = srv.local_addr().to_string();
    let mut dd1 = h.host(1);
    create(&mut dd1, "v", Some(dtl(&addr, DtlMode::Sync)));
    drop(dd1);
    let open = |tweak: &dyn Fn(&mut Config)| {
        let mut cfg = h.cfg.clone();
        tweak(&mut cfg);
        let mut dd = DataDir::open(&h.t.path().join("host1"), Some(&h.backend), cfg).unwrap();
        dd.open_volume("v", false).map(|_| ()).unwrap_err().to_string()
    };
    let m = open(&|c| c.dtl.ca_file = None);
    assert!(m.contains("ca_file") && m.contains("insecure = true") && m.lines().count() == 1, "{m}");
    let m = open(&|c| {
        c.dtl.ca_file = None;
        c.dtl.insecure = true;
    });
    assert!(m.contains("requires TLS"), "{m}");
}
