//! Online resize: a served volume grows while a vhost-user frontend is connected; the
//! frontend gets VHOST_USER_BACKEND_CONFIG_CHANGE_MSG and re-reads the capacity from the
//! config space; data beyond the old end persists across a restart and reads back from
//! a fresh data dir; snapshots keep their size; bad resizes get one clear line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cli::{fails, ok};
use common::fill_pattern;
use common::vhost::Vm;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{FrontendReqHandler, HandlerResult, VhostUserFrontend, VhostUserFrontendReqHandler};
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH};

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const OLD: u64 = 64 << 20;
const NEW: u64 = 128 << 20;

fn serve(data: &Path, args: &[&str], sockets: &[PathBuf]) -> Child {
    let _ = std::fs::remove_file(data.join("control.sock"));
    let child = Command::new(env!("CARGO_BIN_EXE_logdisk"))
        .arg("--data-dir")
        .arg(data)
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !data.join("control.sock").exists() || !sockets.iter().all(|s| s.exists()) {
        assert!(t0.elapsed() < Duration::from_secs(60), "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// The frontend's side of the backend request channel: counts config-change messages.
struct Notices(AtomicU64);

impl VhostUserFrontendReqHandler for Notices {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }
}

/// Give `vm`'s backend a request channel served by a thread; returns the counter.
fn listen_for_config_changes(vm: &mut Vm) -> Arc<Notices> {
    let notices = Arc::new(Notices(AtomicU64::new(0)));
    let mut handler = FrontendReqHandler::new(notices.clone()).unwrap();
    handler.set_reply_ack_flag(true);
    vm.fe.set_backend_request_fd(&handler.get_tx_raw_fd()).unwrap();
    std::thread::spawn(move || while handler.handle_request().is_ok() {});
    notices
}

fn capacity(vm: &mut Vm) -> u64 {
    u64::from_le_bytes(vm.config()[0..8].try_into().unwrap())
}

fn block(tag: u64, sector: u64) -> Vec<u8> {
    let mut b = vec![0u8; 64 << 10];
    fill_pattern(&mut b, tag, sector);
    b
}

#[test]
fn grow_a_served_volume_online() {
    let t = tempfile::tempdir().unwrap();
    let (data, socks) = (t.path().join("data"), t.path().join("socks"));
    ok(&data, &["volume", "create", "g", "--size", "64M"]);
    ok(&data, &["snapshot", "create", "g@before"]);
    let d = serve(&data, &["--socket-dir", socks.to_str().unwrap(), "--num-queues", "1", "g"], &[socks.join("g.sock")]);
    let mut vm = Vm::connect(&socks.join("g.sock"), 1, true);
    let proto = vm.fe.get_protocol_features().unwrap();
    assert!(proto.contains(VhostUserProtocolFeatures::BACKEND_REQ | VhostUserProtocolFeatures::REPLY_ACK));
    let notices = listen_for_config_changes(&mut vm);
    assert_eq!(capacity(&mut vm), OLD / 512);
    let last_old = OLD / 512 - 128;
    assert_eq!(vm.write(0, last_old, &block(1, last_old)).0, OK);
    // Past the old end: refused before the resize.
    let beyond = OLD / 512 + 1000;
    vm.reset_bufs();
    assert_eq!(vm.write(0, beyond, &block(2, beyond)).0, IOERR);

    // Bad resizes first: one line each, nothing changes.
    fails(&data, &["volume", "resize", "g", "32M"], "--shrink");
    fails(&data, &["volume", "resize", "g", "32M", "--shrink"], "while this daemon serves it");
    fails(&data, &["volume", "resize", "g", "100000001"], "multiple of its cluster size");
    fails(&data, &["volume", "resize", "nope", "1G"], "volume nope not found");
    assert_eq!(notices.0.load(Ordering::SeqCst), 0);

    let out = ok(&data, &["volume", "resize", "g", "128M"]);
    assert!(out.contains("from 64.00 MiB to 128.00 MiB"), "{out}");
    let t0 = Instant::now();
    while notices.0.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no config-change message");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(capacity(&mut vm), NEW / 512, "the config space shows the new capacity");
    // The new space is usable at once, up to the new end and not past it.
    vm.reset_bufs();
    assert_eq!(vm.write(0, beyond, &block(2, beyond)).0, OK);
    let last_new = NEW / 512 - 128;
    assert_eq!(vm.write(0, last_new, &block(3, last_new)).0, OK);
    assert_eq!(vm.write(0, NEW / 512 - 64, &block(4, 0)).0, IOERR);
    assert_eq!(vm.simple(0, VIRTIO_BLK_T_FLUSH, 0).0, OK);
    for (tag, s) in [(1, last_old), (2, beyond), (3, last_new)] {
        vm.reset_bufs();
        let (st, _, got) = vm.read(0, s, 64 << 10);
        assert!(st == OK && got == block(tag, s), "sector {s}");
    }
    let info: serde_json::Value = serde_json::from_str(&ok(&data, &["volume", "info", "g", "--json"])).unwrap();
    assert_eq!(info["size"], NEW);
    // The snapshot kept its size: served as a view it has the old capacity.
    ok(&data, &["attach", "g@before", "--num-queues", "1"]);
    let mut view = Vm::connect(&socks.join("g@before.sock"), 1, true);
    assert_eq!(capacity(&mut view), OLD / 512);
    drop((view, vm));
    stop(d);

    // Restarted with no arguments (g and the view come back): same size, same data.
    let d = serve(&data, &[], &[socks.join("g.sock")]);
    let mut vm = Vm::connect(&socks.join("g.sock"), 1, true);
    assert_eq!(capacity(&mut vm), NEW / 512);
    for (tag, s) in [(1, last_old), (2, beyond), (3, last_new)] {
        vm.reset_bufs();
        let (st, _, got) = vm.read(0, s, 64 << 10);
        assert!(st == OK && got == block(tag, s), "sector {s} after restart");
    }
    drop(vm);
    stop(d);

    // A fresh data dir on the same object store sees the new size and the data.
    let backend = format!("file://{}", data.join("objects").display());
    let fresh = t.path().join("fresh");
    let out = t.path().join("g.img");
    ok(&fresh, &["--backend", &backend, "volume", "export", "g", out.to_str().unwrap()]);
    let img = std::fs::read(&out).unwrap();
    assert_eq!(img.len() as u64, NEW);
    for (tag, s) in [(1, last_old), (2, beyond), (3, last_new)] {
        let at = (s * 512) as usize;
        assert!(img[at..at + (64 << 10)] == block(tag, s)[..], "sector {s} from a fresh data dir");
    }
    let snap = t.path().join("before.img");
    ok(&fresh, &["volume", "export", "g@before", snap.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&snap).unwrap().len(), OLD, "the snapshot kept its size");
}

#[test]
fn resize_without_a_daemon_grow_then_shrink() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let img: Vec<u8> = (0..(8u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(t.path().join("in"), &img).unwrap();
    ok(&data, &["volume", "import", "s", t.path().join("in").to_str().unwrap(), "--create"]);
    ok(&data, &["volume", "resize", "s", "16M"]);
    // Data past the old end, written after the grow.
    ok(&data, &["volume", "import", "s", t.path().join("in").to_str().unwrap(), "--offset", "8M"]);
    let out = t.path().join("out");
    ok(&data, &["volume", "export", "s", out.to_str().unwrap()]);
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), 16 << 20);
    assert!(got[..8 << 20] == img[..] && got[8 << 20..] == img[..]);
    fails(&data, &["volume", "resize", "s", "4M"], "--shrink");
    ok(&data, &["volume", "resize", "s", "4M", "--shrink"]);
    // Growing again shows zeroes past the shrunk end, not the old data.
    ok(&data, &["volume", "resize", "s", "12M"]);
    ok(&data, &["volume", "export", "s", out.to_str().unwrap()]);
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), 12 << 20);
    assert!(got[..4 << 20] == img[..4 << 20]);
    assert!(got[4 << 20..].iter().all(|&b| b == 0), "data past a shrink is gone");
}

/// A crash after a resize's TLog record but before its volume record, with no checkpoint:
/// a fresh host replays the whole log from the creation size, the snapshot taken before
/// keeps the old size, the data past the old end is there and the record is finished.
#[test]
fn resize_replayed_from_the_log_alone() {
    use common::{open_dd, small_config};
    let t = tempfile::tempdir().unwrap();
    let backend = t.path().join("objects");
    let mut cfg = small_config();
    cfg.upload.checkpoint_every = 1000; // no checkpoint: replay from the first TLog
    {
        let mut dd = open_dd(&t.path().join("a"), &backend, cfg.clone());
        dd.create_volume("v", 4 << 20, None, None).unwrap();
        let vol = dd.open_volume("v", false).unwrap();
        vol.write_at(0, &[1u8; 4096]).unwrap();
        vol.create_snapshot("small").unwrap();
        vol.resize(8 << 20).unwrap();
        vol.write_at(6 << 20, &[2u8; 4096]).unwrap();
        assert!(vol.write_at(8 << 20, &[3u8; 4096]).is_err(), "past the new end");
        vol.flush().unwrap();
        vol.seal().unwrap();
        assert!(vol.wait_uploaded(Duration::from_secs(30)));
        // No close (no final checkpoint) and no new volume record: as after a crash.
    }
    assert!(
        !backend.join("v/meta/checkpoint").exists()
            || std::fs::read_dir(backend.join("v/meta/checkpoint")).unwrap().count() == 0
    );
    let mut dd = open_dd(&t.path().join("b"), &backend, cfg);
    assert_eq!(dd.volume_meta("v").unwrap().size, 4 << 20);
    let vol = dd.open_volume("v", false).unwrap();
    assert_eq!(vol.size(), 8 << 20);
    assert_eq!(dd.volume_meta("v").unwrap().size, 8 << 20, "the volume record is finished at open");
    let mut b = vec![0u8; 4096];
    vol.read_at(6 << 20, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 2));
    vol.read_at(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 1));
    let view = dd.open_snapshot_view("v", "small", Some(&vol)).unwrap();
    assert_eq!(view.size(), 4 << 20, "the snapshot keeps its size");
    view.read_at(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 1));
    vol.close().unwrap();
}
