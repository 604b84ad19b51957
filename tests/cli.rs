//! The `logdisk` binary: volume lifecycle, import/export round trips (default data dir
//! and a fresh data dir on the same backend), and clear one-line errors.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use rand::{rngs::StdRng, Rng, SeedableRng};

fn logdisk(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logdisk")).current_dir(cwd).args(args).env_remove("RUST_LOG").output().unwrap()
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let o = logdisk(cwd, args);
    assert!(o.status.success(), "logdisk {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn fails(cwd: &Path, args: &[&str], needle: &str) {
    let o = logdisk(cwd, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "logdisk {args:?} should fail");
    assert!(err.contains(needle), "logdisk {args:?}: stderr {err:?} lacks {needle:?}");
    assert_eq!(err.trim().lines().count(), 1, "one line of error: {err:?}");
}

#[test]
fn import_export_round_trip_and_fresh_data_dir() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // 20 MiB random with a zero hole and an unaligned tail.
    let mut rng = StdRng::seed_from_u64(3);
    let mut img = vec![0u8; (20 << 20) + 1000];
    rng.fill(&mut img[..]);
    img[5 << 20..9 << 20].fill(0);
    std::fs::write(d.join("img"), &img).unwrap();
    ok(d, &["volume", "import", "vm", "img", "--create"]);
    let list = ok(d, &["volume", "list"]);
    assert!(list.contains("vm"), "{list}");
    // Export overwrites an existing, larger file with exactly the volume's size.
    std::fs::write(d.join("out"), vec![1u8; 30 << 20]).unwrap();
    ok(d, &["volume", "export", "vm", "out"]);
    let out = std::fs::read(d.join("out")).unwrap();
    let size = img.len().div_ceil(4096) * 4096;
    assert_eq!(out.len(), size);
    assert!(out[..img.len()] == img[..] && out[img.len()..].iter().all(|&b| b == 0));
    // A new, empty data dir on the same backend gives the same bytes.
    let backend = format!("file://{}/logdisk-data/objects", d.display());
    ok(d, &["volume", "export", "vm", "out2", "--data-dir", "fresh", "--backend", &backend]);
    assert!(std::fs::read(d.join("out2")).unwrap() == out);
    // The backend was recorded: later commands may omit it.
    let info = ok(d, &["--data-dir", "fresh", "volume", "info", "vm", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["size"], size as u64);
    assert_eq!(v["written_bytes"], (size - (4 << 20)) as u64);
    assert_eq!(v["backend"], backend);
    // Compression is reported for what is in the object store, also from a fresh host.
    // (The local store links SCO files uncompressed unless told to copy them.)
    let text: Vec<u8> = (0..(8 << 20)).map(|i: usize| b"logdisk compresses text "[i % 24]).collect();
    std::fs::write(d.join("text"), &text).unwrap();
    std::fs::write(d.join("copy.toml"), "[upload]\nlink_local = false\n").unwrap();
    ok(d, &["volume", "import", "txt", "text", "--create", "--config", "copy.toml"]);
    let info = ok(d, &["--data-dir", "fresh", "volume", "info", "txt", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert!(v["compression_ratio"].as_f64().unwrap() > 10.0, "{info}");
    let info = ok(d, &["--data-dir", "fresh", "volume", "info", "vm", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    let r = v["compression_ratio"].as_f64().unwrap();
    assert!((0.9..1.1).contains(&r), "random data stays about 1:1, got {r}");
    // ... and a different backend for that data dir is refused.
    fails(d, &["--data-dir", "fresh", "--backend", "file:///tmp/elsewhere", "volume", "list"], "belongs to backend");
    // Delete.
    ok(d, &["volume", "delete", "vm"]);
    assert!(!ok(d, &["volume", "list"]).contains("vm"));
    fails(d, &["volume", "export", "vm", "out3"], "volume vm not found");
}

#[test]
fn clear_errors_for_bad_input() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    fails(d, &["volume", "create", "a", "--size", "12Q"], "bad size");
    fails(d, &["volume", "create", "a", "--size", "1000"], "multiple of the cluster size");
    fails(d, &["volume", "create", ".a", "--size", "1M"], "bad volume name");
    fails(d, &["volume", "create", "a/b", "--size", "1M"], "bad volume name");
    fails(d, &["volume", "create", "a", "--size", "1M", "--cluster-size", "3000"], "power of two");
    fails(d, &["volume", "create", "a", "--size", "1M", "--backend", "ftp://x"], "bad backend URL");
    ok(d, &["volume", "create", "a", "--size", "1M"]);
    fails(d, &["volume", "create", "a", "--size", "1M"], "already exists");
    fails(d, &["volume", "info", "nope"], "not found");
    std::fs::write(d.join("big"), vec![1u8; 2 << 20]).unwrap();
    fails(d, &["volume", "import", "a", "big"], "larger than volume");
    fails(d, &["volume", "import", "a", "missing-file"], "cannot open");
    // An IO error's OS error is named once, not once more as its source.
    std::fs::write(d.join("plain-file"), b"x").unwrap();
    let o = logdisk(d, &["--data-dir", "plain-file/dd", "volume", "list"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("Not a directory"), "stderr {err:?}");
    assert_eq!(err.matches("Not a directory").count(), 1, "OS error repeated: {err:?}");
    std::fs::write(d.join("bad.toml"), "[volume]\ncluster_size = 100\n").unwrap();
    fails(d, &["--config", "bad.toml", "volume", "list"], "cluster_size");
    // Global options after the subcommand.
    assert!(ok(d, &["volume", "list", "--data-dir", "logdisk-data"]).contains('a'));
    // Bad CLI usage is a clap error (exit 2), with help available.
    let o = logdisk(d, &["volume", "frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(ok(d, &["--help"]).contains("volume"));
    assert!(ok(d, &["volume", "import", "--help"]).contains("--create"));
}

#[test]
fn second_process_on_a_data_dir_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &["volume", "create", "a", "--size", "1M"]);
    let held =
        logdisk::datadir::DataDir::open(&d.join("logdisk-data"), None, logdisk::config::Config::default()).unwrap();
    let me = std::process::id().to_string();
    fails(d, &["volume", "create", "b", "--size", "1M"], &format!("is in use by pid {me}"));
    drop(held);
    ok(d, &["volume", "create", "b", "--size", "1M"]);
}
