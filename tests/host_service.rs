//! The host service as a process: `logdisk serve` started with no volume, volumes
//! attached and detached through the control socket while others do IO through a
//! vhost-user frontend, no fd/thread leak over many cycles, the served set brought back
//! after `kill -9`, and one clear line for each bad request.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cli::{fails, logdisk, ok};
use common::fill_pattern;
use common::vhost::Vm;
use logdisk::control::protocol::Request;
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH};

const OK: u8 = VIRTIO_BLK_S_OK as u8;

fn is_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// A running `logdisk serve`.
struct Daemon {
    child: Child,
    data: PathBuf,
}

impl Daemon {
    /// Start `logdisk serve ARGS` and wait until its control socket and `sockets` exist.
    fn start(data: &Path, args: &[&str], sockets: &[PathBuf]) -> Daemon {
        Self::start_env(data, args, sockets, &[])
    }

    fn start_env(data: &Path, args: &[&str], sockets: &[PathBuf], env: &[(&str, &Path)]) -> Daemon {
        let _ = std::fs::remove_file(data.join("control.sock"));
        let child = Command::new(env!("CARGO_BIN_EXE_logdisk"))
            .envs(env.iter().copied())
            .arg("--data-dir")
            .arg(data)
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let d = Daemon { child, data: data.to_path_buf() };
        let t0 = Instant::now();
        while !is_socket(&data.join("control.sock")) || !sockets.iter().all(|s| is_socket(s)) {
            assert!(t0.elapsed() < Duration::from_secs(60), "daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn request(&self, req: &Request) -> logdisk::Result<serde_json::Value> {
        logdisk::control::client::try_request(&self.data, req).expect("the daemon answers")
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM and wait for exit 0.
    fn stop(mut self) {
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().unwrap();
        assert!(st.success(), "daemon exit: {st:?}");
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_field(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Write 64 KiB stamped with `tag` at `sector` and flush.
fn write_block(vm: &mut Vm, sector: u64, tag: u64) {
    vm.reset_bufs();
    let mut b = vec![0u8; 64 << 10];
    fill_pattern(&mut b, tag, sector);
    assert_eq!(vm.write(0, sector, &b).0, OK, "write");
    assert_eq!(vm.simple(0, VIRTIO_BLK_T_FLUSH, 0).0, OK, "flush");
}

fn check_block(vm: &mut Vm, sector: u64, tag: u64) {
    vm.reset_bufs();
    let mut want = vec![0u8; 64 << 10];
    fill_pattern(&mut want, tag, sector);
    let (st, _, got) = vm.read(0, sector, want.len());
    assert_eq!(st, OK, "read");
    assert!(got == want, "data at sector {sector} (tag {tag}) differs");
}

fn sock(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

#[test]
fn attach_twenty_detach_half_under_io_reattach() {
    let t = tempfile::tempdir().unwrap();
    let (data, socks) = (t.path().join("data"), t.path().join("socks"));
    let names: Vec<String> = (0..20).map(|i| format!("v{i:02}")).collect();
    for n in &names {
        ok(&data, &["volume", "create", n, "--size", "64M"]);
    }
    let d = Daemon::start(&data, &["--socket-dir", socks.to_str().unwrap(), "--num-queues", "1"], &[]);
    for n in &names {
        let out = ok(&data, &["attach", n]);
        assert!(out.contains(&format!("{}", sock(&socks, n).display())), "{out}");
    }
    let list = ok(&data, &["volume", "list", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(rows.iter().filter(|r| r["attached"] == true && r["connected"] == false).count(), 20, "{list}");

    // IO on each.
    let mut vms: Vec<Vm> = names.iter().map(|n| Vm::connect(&sock(&socks, n), 1, true)).collect();
    for (i, vm) in vms.iter_mut().enumerate() {
        write_block(vm, 0, i as u64);
        check_block(vm, 0, i as u64);
    }
    let list = ok(&data, &["volume", "list", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(rows.iter().filter(|r| r["connected"] == true).count(), 20, "{list}");
    let text = ok(&data, &["volume", "list"]);
    assert!(text.contains("CONNECTED") && text.contains(&sock(&socks, "v00").display().to_string()), "{text}");

    // The second half keeps doing IO (writes, flushes, reads checked) while the first
    // half is detached; the longest request there is recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<Vm> = vms.split_off(10);
    let workers: Vec<_> = busy
        .into_iter()
        .enumerate()
        .map(|(i, mut vm)| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut n, mut worst) = (0u64, Duration::ZERO);
                while !stop.load(Ordering::SeqCst) {
                    let t = Instant::now();
                    let sector = 128 + (n % 64) * 128;
                    write_block(&mut vm, sector, 1000 + n);
                    check_block(&mut vm, sector, 1000 + n);
                    worst = worst.max(t.elapsed());
                    n += 1;
                }
                (10 + i, vm, n, worst)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Connected: refused without --force.
    fails(&data, &["detach", "v00"], "hypervisor connected");
    // v00 with --force while its frontend is still connected; the others after their
    // frontend went away.
    ok(&data, &["detach", "v00", "--force"]);
    vms.drain(..);
    for n in &names[1..10] {
        let t0 = Instant::now();
        while logdisk(&data, &["detach", n]).status.code() != Some(0) {
            assert!(t0.elapsed() < Duration::from_secs(10), "detach {n} after disconnect");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for n in &names[..10] {
        assert!(!sock(&socks, n).exists(), "socket of {n} removed");
    }
    stop.store(true, Ordering::SeqCst);
    let mut busy: Vec<(usize, Vm)> = Vec::new();
    for w in workers {
        let (i, vm, n, worst) = w.join().unwrap();
        assert!(n > 0);
        eprintln!("v{i:02}: {n} write+flush+read rounds during detaches, longest {worst:?}");
        assert!(worst < Duration::from_millis(500), "v{i:02} paused {worst:?} while others detached");
        busy.push((i, vm));
    }
    // Re-attach; the data written before is there.
    for n in &names[..10] {
        ok(&data, &["attach", n]);
    }
    for (i, n) in names[..10].iter().enumerate() {
        let mut vm = Vm::connect(&sock(&socks, n), 1, true);
        check_block(&mut vm, 0, i as u64);
    }
    for (i, vm) in busy.iter_mut() {
        check_block(vm, 0, *i as u64);
    }
    drop(busy);
    d.stop();
    // Every socket is gone after a clean stop.
    assert!(names.iter().all(|n| !sock(&socks, n).exists()));
}

#[test]
fn hundred_attach_detach_cycles_leak_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (data, socks) = (t.path().join("data"), t.path().join("socks"));
    ok(&data, &["volume", "create", "c", "--size", "64M"]);
    ok(&data, &["volume", "create", "steady", "--size", "64M"]);
    let d = Daemon::start(&data, &["--socket-dir", socks.to_str().unwrap(), "--num-queues", "1"], &[]);
    d.request(&Request::Attach {
        volume: "steady".into(),
        socket: None,
        read_only: false,
        num_queues: None,
        queue_size: None,
    })
    .unwrap();
    let mut steady = Vm::connect(&sock(&socks, "steady"), 1, true);
    write_block(&mut steady, 0, 7);
    let attach =
        Request::Attach { volume: "c".into(), socket: None, read_only: false, num_queues: None, queue_size: None };
    let detach = Request::Detach { volume: "c".into(), force: false };
    let cycle = |i: u64| {
        d.request(&attach).unwrap();
        let mut vm = Vm::connect(&sock(&socks, "c"), 1, true);
        write_block(&mut vm, (i % 32) * 128, i);
        check_block(&mut vm, (i % 32) * 128, i);
        drop(vm);
        let t0 = Instant::now();
        while let Err(e) = d.request(&detach) {
            assert!(e.to_string().contains("hypervisor connected"), "{e}");
            assert!(t0.elapsed() < Duration::from_secs(10), "disconnect not noticed");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // Warm up (thread pools, caches, allocator arenas), then measure.
    for i in 0..5 {
        cycle(i);
    }
    let pid = d.pid();
    let (fds0, threads0, rss0) = (fd_count(pid), proc_field(pid, "Threads:"), proc_field(pid, "VmRSS:"));
    for i in 5..105 {
        cycle(i);
    }
    let (fds1, threads1, rss1) = (fd_count(pid), proc_field(pid, "Threads:"), proc_field(pid, "VmRSS:"));
    eprintln!("100 cycles: fds {fds0} -> {fds1}, threads {threads0} -> {threads1}, RSS {rss0} kB -> {rss1} kB");
    // A control connection's thread may come or go at the moment of a sample: allow a
    // couple; one leaked per cycle would be 100.
    assert!(fds1 <= fds0 + 2, "fd leak: {fds0} -> {fds1}");
    assert!(threads1 <= threads0 + 2, "thread leak: {threads0} -> {threads1}");
    assert!(rss1 < rss0 + 32 * 1024, "RSS grew from {rss0} kB to {rss1} kB");
    // The last cycle's data and the steady volume are intact.
    d.request(&attach).unwrap();
    let mut vm = Vm::connect(&sock(&socks, "c"), 1, true);
    check_block(&mut vm, (104 % 32) * 128, 104);
    check_block(&mut steady, 0, 7);
    drop((vm, steady));
    d.stop();
}

#[test]
fn kill9_then_restart_with_no_arguments_serves_the_same_volumes() {
    let t = tempfile::tempdir().unwrap();
    let (data, socks) = (t.path().join("data"), t.path().join("socks"));
    let names: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
    for n in &names {
        ok(&data, &["volume", "create", n, "--size", "64M"]);
    }
    let d = Daemon::start(&data, &["--socket-dir", socks.to_str().unwrap()], &[]);
    // Mixed options: they come back as they were.
    ok(&data, &["attach", "r0", "--num-queues", "1", "--queue-size", "512"]);
    let other = t.path().join("elsewhere.sock");
    ok(&data, &["attach", "r1", "--num-queues", "1", "--socket", other.to_str().unwrap()]);
    for n in &names[2..] {
        ok(&data, &["attach", n, "--num-queues", "1"]);
    }
    let sockets: Vec<PathBuf> = names.iter().map(|n| if n == "r1" { other.clone() } else { sock(&socks, n) }).collect();
    for (i, s) in sockets.iter().enumerate() {
        let mut vm = Vm::connect(s, 1, true);
        for k in 0..4 {
            write_block(&mut vm, k * 1024, (i * 10) as u64 + k);
        }
    }
    d.kill9();
    // Started again with no volume and no socket dir: the record brings all five back.
    let d = Daemon::start(&data, &[], &sockets);
    for (i, s) in sockets.iter().enumerate() {
        let mut vm = Vm::connect(s, 1, true);
        for k in 0..4 {
            check_block(&mut vm, k * 1024, (i * 10) as u64 + k);
        }
    }
    let list: Vec<serde_json::Value> = serde_json::from_str(&ok(&data, &["volume", "list", "--json"])).unwrap();
    let r0 = list.iter().find(|r| r["name"] == "r0").unwrap();
    assert_eq!((r0["queue_size"].as_u64(), r0["attached"].as_bool()), (Some(512), Some(true)), "{r0}");
    // Detached volumes stay detached across a restart.
    ok(&data, &["detach", "r4"]);
    d.stop();
    let d = Daemon::start(&data, &[], &sockets[..4]);
    assert!(!sock(&socks, "r4").exists());
    d.stop();
    // A volume named at start on a recorded volume's socket takes it over (scripts
    // that serve one volume after another on one socket keep working).
    let d = Daemon::start(&data, &["--socket", other.to_str().unwrap(), "r4"], &sockets[..4]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&ok(&data, &["volume", "list", "--json"])).unwrap();
    let on_other: Vec<&serde_json::Value> =
        list.iter().filter(|r| r["attached"] == true && r["socket"] == other.to_str().unwrap()).collect();
    assert_eq!(on_other.len(), 1, "{list:?}");
    assert_eq!(on_other[0]["name"], "r4");
    d.stop();
}

#[test]
fn bad_requests_get_one_line_and_leave_the_daemon_serving() {
    let t = tempfile::tempdir().unwrap();
    let (data, socks) = (t.path().join("data"), t.path().join("socks"));
    ok(&data, &["volume", "create", "a", "--size", "64M"]);
    ok(&data, &["volume", "create", "b", "--size", "64M"]);
    // Without a daemon, attach says what it needs.
    fails(&data, &["attach", "a"], "need the running daemon");
    let mut d = Daemon::start(
        &data,
        &["--socket-dir", socks.to_str().unwrap(), "--num-queues", "1", "a"],
        &[sock(&socks, "a")],
    );
    let mut vm = Vm::connect(&sock(&socks, "a"), 1, true);
    write_block(&mut vm, 0, 1);

    fails(&data, &["attach", "nope"], "volume nope not found");
    fails(&data, &["attach", "a"], "already attached");
    let a_sock = sock(&socks, "a");
    fails(&data, &["attach", "b", "--socket", a_sock.to_str().unwrap()], "in use");
    // A socket another process listens on.
    let foreign = t.path().join("foreign.sock");
    let _l = std::os::unix::net::UnixListener::bind(&foreign).unwrap();
    fails(&data, &["attach", "b", "--socket", foreign.to_str().unwrap()], "in use");
    fails(&data, &["attach", "b", "--num-queues", "0"], "num_queues");
    fails(&data, &["attach", "b", "--queue-size", "100"], "queue_size");
    fails(&data, &["attach", "bad/name"], "bad volume name");
    fails(&data, &["attach", "a@nosnap"], "nosnap");
    fails(&data, &["detach", "a"], "hypervisor connected");
    fails(&data, &["detach", "b"], "not attached");
    fails(&data, &["volume", "delete", "a"], "while this daemon serves it");
    // A garbage line on the control socket gets an error answer, nothing more.
    {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(data.join("control.sock")).unwrap();
        s.write_all(b"{\"op\":\"attach\"}\nnot json\n").unwrap();
        let mut r = BufReader::new(s);
        for _ in 0..2 {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("\"ok\":false"), "{line}");
        }
    }
    // Nothing of that touched the daemon or the served volume.
    assert!(d.alive());
    check_block(&mut vm, 0, 1);
    write_block(&mut vm, 256, 2);
    check_block(&mut vm, 256, 2);
    // b still attaches on its default socket after the refusals.
    ok(&data, &["attach", "b"]);
    drop(vm);
    d.stop();
}

#[test]
fn systemd_ready_once_sockets_listen_and_stopping_on_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let (data, socks) = (t.path().join("data"), t.path().join("socks"));
    ok(&data, &["volume", "create", "n", "--size", "64M"]);
    let ns = t.path().join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&ns).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let d = Daemon::start_env(&data, &["--socket-dir", socks.to_str().unwrap(), "n"], &[], &[("NOTIFY_SOCKET", &ns)]);
    let mut buf = [0u8; 512];
    let n = rx.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with("READY=1\n") && msg.contains("serving 1 volume"), "{msg:?}");
    // Ready means the volume's socket already accepts a hypervisor.
    let mut vm = Vm::connect(&sock(&socks, "n"), 1, true);
    write_block(&mut vm, 0, 5);
    drop(vm);
    let pid = d.pid();
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let n = rx.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with("STOPPING=1"), "{msg:?}");
    let mut d = d;
    assert!(d.child.wait().unwrap().success());
}
