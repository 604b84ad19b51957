//! `logdisk serve` as a process, without a VM: socket mode, commands through the control
//! socket while it runs, the metrics endpoint, refusal of commands that need the data
//! dir, and a clean exit 0 on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn logdisk(cwd: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_logdisk")).current_dir(cwd).args(args).env_remove("RUST_LOG").output().unwrap()
}

#[test]
fn daemon_serves_control_socket_metrics_and_stops_on_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    assert!(logdisk(d, &["volume", "create", "vm", "--size", "64M"]).status.success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_logdisk"))
        .current_dir(d)
        .args(["serve", "--socket-dir", "socks", "--metrics", "127.0.0.1:0", "vm"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut metrics_addr = None;
    let t0 = Instant::now();
    while metrics_addr.is_none() || !d.join("socks/vm.sock").exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "daemon did not start");
        if let Some(Ok(l)) = lines.next() {
            if let Some(a) = l.strip_prefix("metrics on http://") {
                metrics_addr = Some(a.trim_end_matches("/metrics").to_string());
            }
        }
    }
    let mode = std::fs::metadata(d.join("socks/vm.sock")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "sockets are private by default");

    // Through the daemon: list, info, create.
    let out = logdisk(d, &["volume", "list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("vm"));
    let out = logdisk(d, &["volume", "info", "vm", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["size"], 64u64 << 20);
    assert!(logdisk(d, &["volume", "create", "second", "--size", "8M"]).status.success());
    let out = logdisk(d, &["volume", "list", "--json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("second"));
    // Deleting goes through the daemon too, but not for a volume it serves.
    let out = logdisk(d, &["volume", "delete", "vm"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("while this daemon serves it"));
    assert!(logdisk(d, &["volume", "delete", "second"]).status.success());
    // Commands that need the data dir itself are refused with the owner's pid.
    let out = logdisk(d, &["volume", "export", "vm", "/dev/null"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("in use by pid {}", child.id())));

    // Metrics.
    let mut s = std::net::TcpStream::connect(metrics_addr.unwrap()).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("logdisk_write_bytes_total{volume=\"vm\"} 0"), "{body}");
    assert!(body.contains("# TYPE logdisk_upload_lag_epochs gauge"), "{body}");

    // SIGTERM: clean exit 0, socket removed, data dir free again.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(!d.join("socks/vm.sock").exists());
    assert!(logdisk(d, &["volume", "delete", "vm"]).status.success());
}
