//! The CLI sequence of snapshots, clones and scrub on a fresh data dir, byte-for-byte
//! against expected images; a scrub killed (abort at each fault point, and kill -9 at
//! random moments) loses nothing, and a rerun finishes the job with no garbage left.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};

const MB: usize = 1 << 20;
const SIZE: usize = 16 * MB;

fn logdisk(cwd: &Path, args: &[&str], fault: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_logdisk"));
    c.current_dir(cwd).args(args).env_remove("RUST_LOG").env_remove("LOGDISK_FAULT");
    if let Some(f) = fault {
        c.env("LOGDISK_FAULT", f);
    }
    c.output().unwrap()
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let o = logdisk(cwd, args, None);
    assert!(o.status.success(), "logdisk {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn fails(cwd: &Path, args: &[&str], needle: &str) {
    let o = logdisk(cwd, args, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "logdisk {args:?} should fail");
    assert!(err.contains(needle), "logdisk {args:?}: {err:?} lacks {needle:?}");
}

/// Overwrite `[off, off+len)` of the image file and the model with random data.
fn patch(d: &Path, img: &mut [u8], rng: &mut StdRng, off: usize, len: usize) {
    rng.fill(&mut img[off..off + len]);
    std::fs::write(d.join("img"), &*img).unwrap();
}

/// Overwrite 128 KiB in every MiB (at a varying offset): SCOs end up partly dead.
fn scatter(d: &Path, img: &mut [u8], rng: &mut StdRng) {
    let shift = rng.gen_range(0..4) * (256 << 10);
    for m in 0..SIZE / MB {
        let off = m * MB + shift;
        rng.fill(&mut img[off..off + (128 << 10)]);
        std::fs::write(d.join("piece"), &img[off..off + (128 << 10)]).unwrap();
        ok(d, &["volume", "import", "v", "piece", "--offset", &off.to_string()]);
    }
}

fn export_equals(d: &Path, what: &str, want: &[u8], extra: &[&str]) {
    let mut args = vec!["volume", "export", what, "out"];
    args.extend_from_slice(extra);
    ok(d, &args);
    let got = std::fs::read(d.join("out")).unwrap();
    assert!(got == want, "export of {what} differs");
}

fn info(d: &Path, vol: &str) -> serde_json::Value {
    serde_json::from_str(&ok(d, &["volume", "info", vol, "--json"])).unwrap()
}

#[test]
fn cli_snapshots_clones_and_scrub_survive_kills() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mut rng = StdRng::seed_from_u64(9);
    let mut img = vec![0u8; SIZE];
    ok(d, &["volume", "create", "v", "--size", "16M", "--sco-size", "256K"]);

    // A, s1, B, s2, C.
    patch(d, &mut img, &mut rng, 0, SIZE);
    ok(d, &["volume", "import", "v", "img"]);
    let a = img.clone();
    ok(d, &["snapshot", "create", "v@s1"]);
    patch(d, &mut img, &mut rng, 0, SIZE / 2);
    ok(d, &["volume", "import", "v", "img"]);
    let b = img.clone();
    ok(d, &["snapshot", "create", "v@s2"]);
    patch(d, &mut img, &mut rng, SIZE / 4, SIZE / 2);
    ok(d, &["volume", "import", "v", "img"]);
    export_equals(d, "v", &img, &[]);
    export_equals(d, "v@s1", &a, &[]);
    export_equals(d, "v@s2", &b, &[]);
    let list = ok(d, &["snapshot", "list", "v"]);
    assert!(list.contains("s1") && list.contains("s2"), "{list}");
    fails(d, &["snapshot", "create", "v"], "does not name a snapshot");
    fails(d, &["snapshot", "rollback", "v@nope"], "snapshot v@nope does not exist");

    // Rollback keeps every snapshot; writes after it work.
    ok(d, &["snapshot", "rollback", "v@s1"]);
    export_equals(d, "v", &a, &[]);
    img = a.clone();
    patch(d, &mut img, &mut rng, 0, MB);
    ok(d, &["volume", "import", "v", "img"]);
    export_equals(d, "v", &img, &[]);

    // Clone of s1, written; the parent is unchanged; the snapshot is protected.
    ok(d, &["clone", "v@s1", "c1"]);
    let mut c1 = a.clone();
    rng.fill(&mut c1[2 * MB..3 * MB]);
    std::fs::write(d.join("c1img"), &c1).unwrap();
    ok(d, &["volume", "import", "c1", "c1img"]);
    export_equals(d, "c1", &c1, &[]);
    export_equals(d, "v", &img, &[]);
    fails(d, &["snapshot", "delete", "v@s1"], "clones depend on it: c1");
    fails(d, &["volume", "delete", "v"], "clones depend on it: c1");

    // Garbage: s2 goes, v is overwritten twice more.
    ok(d, &["snapshot", "delete", "v@s2"]);
    let backend = format!("file://{}/logdisk-data/objects", d.display());
    for _ in 0..2 {
        patch(d, &mut img, &mut rng, 0, SIZE);
        ok(d, &["volume", "import", "v", "img"]);
    }
    scatter(d, &mut img, &mut rng);
    let before = info(d, "v");
    assert!(before["garbage_bytes"].as_u64().unwrap() >= 2 * SIZE as u64, "{before}");

    // A scrub dies at each fault point (and at random moments): nothing is lost.
    let points = ["scrub-after-first-copy", "scrub-after-flush", "scrub-after-upload", "scrub-after-first-delete"];
    for (round, p) in points.iter().enumerate() {
        let o = logdisk(d, &["scrub", "v", "--threshold", "0.9"], Some(p));
        assert!(!o.status.success(), "scrub with fault {p} should die: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("aborting at {p}")), "fault {p} was reached");
        export_equals(d, "v", &img, &[]);
        export_equals(d, "v@s1", &a, &[]);
        export_equals(d, "c1", &c1, &[]);
        // More garbage for the next round.
        let off = round * 3 * MB;
        patch(d, &mut img, &mut rng, off, 3 * MB);
        ok(d, &["volume", "import", "v", "img"]);
        scatter(d, &mut img, &mut rng);
    }
    for delay_ms in [30u64, 120, 300] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_logdisk"))
            .current_dir(d)
            .args(["scrub", "v", "--threshold", "0.9"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        export_equals(d, "v", &img, &[]);
        scatter(d, &mut img, &mut rng);
    }

    // The rerun finishes: no garbage left, the object store holds about the live data.
    let out = ok(d, &["scrub", "v"]);
    assert!(out.contains("scrubbed v"), "{out}");
    ok(d, &["scrub", "v", "--threshold", "1.0"]);
    let after = info(d, "v");
    assert_eq!(after["garbage_bytes"], 0, "{after}");
    let stored = after["stored_bytes"].as_u64().unwrap();
    let excl_s1 = after["snapshots"][0]["exclusive_bytes"].as_u64().unwrap();
    let live = after["written_bytes"].as_u64().unwrap() + excl_s1;
    eprintln!(
        "object store for v: {} bytes before scrub, {} after; live data {} (current {} + s1 alone {})",
        before["stored_bytes"], stored, live, after["written_bytes"], excl_s1
    );
    assert!(stored < before["stored_bytes"].as_u64().unwrap());
    assert!(stored <= live + live / 5, "stored {stored} vs live {live}");
    export_equals(d, "v", &img, &[]);
    export_equals(d, "v@s1", &a, &[]);
    export_equals(d, "c1", &c1, &[]);
    // Another host with only the object store.
    export_equals(d, "v", &img, &["--data-dir", "fresh", "--backend", &backend]);
    export_equals(d, "c1", &c1, &["--data-dir", "fresh"]);
    export_equals(d, "v@s1", &a, &["--data-dir", "fresh"]);
}
