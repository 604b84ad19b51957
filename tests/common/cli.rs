//! Running the `logdisk` binary on a data dir from integration tests.

use std::path::Path;
use std::process::{Command, Output};

/// `logdisk --data-dir DATA ARGS...`, its output captured.
pub fn logdisk(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logdisk"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Run a command that must succeed; its stdout.
pub fn ok(data: &Path, args: &[&str]) -> String {
    let o = logdisk(data, args);
    assert!(o.status.success(), "logdisk {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Run a command that must fail with one line containing `needle`.
pub fn fails(data: &Path, args: &[&str], needle: &str) {
    let o = logdisk(data, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "logdisk {args:?} should fail");
    assert!(err.contains(needle), "logdisk {args:?}: stderr {err:?} lacks {needle:?}");
    assert_eq!(err.trim().lines().count(), 1, "one line of error: {err:?}");
}
