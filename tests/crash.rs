//! Real `kill -9` of a child process in the middle of writes, discards, flushes, SCO
//! rolls and uploads; then restart on the same data dir and verify: every cluster holds
//! its content as of the last flush the child reported, or content of a later op. The
//! same with scrub passes running beside the writes (SCOs deleted while overwrites that
//! emptied them are not yet flushed).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};

use common::{fill_pattern, open_dd, small_config};

const SIZE: u64 = 16 << 20;
const CLUSTERS: u64 = SIZE / 4096;
const SEED: u64 = 42;

#[derive(Clone, Copy)]
enum Op {
    Write { cluster: u64, n: u64 },
    Discard { cluster: u64, n: u64 },
    Flush,
}

/// The op sequence; with `scrub` a flush comes about every 80 ops instead of 8, so that
/// much is unflushed when scrub deletes SCOs.
fn ops(scrub: bool) -> impl Iterator<Item = Op> {
    let mut rng = StdRng::seed_from_u64(SEED);
    std::iter::from_fn(move || {
        let c = rng.gen_range(0..CLUSTERS);
        let n = rng.gen_range(1..=32u64).min(CLUSTERS - c);
        Some(match rng.gen_range(0..100) {
            0..=79 => Op::Write { cluster: c, n },
            80..=87 => Op::Discard { cluster: c, n },
            _ if scrub && rng.gen_range(0..10) > 0 => Op::Write { cluster: c, n },
            _ => Op::Flush,
        })
    })
}

/// The child: run ops forever, printing `FLUSHED <ops completed>` after each flush.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("LOGDISK_CRASH_CHILD") else { return };
    let dir = std::path::PathBuf::from(dir);
    // The parent has just closed the data dir; a child the other test of this process
    // forked meanwhile may still hold the lock's file description until its exec (a CI
    // rehearsal saw DataDirInUse here): wait for it, briefly.
    let backend = format!("file://{}", dir.join("objects").display());
    let t0 = Instant::now();
    let mut dd = loop {
        match logdisk::datadir::DataDir::open(&dir.join("host"), Some(&backend), small_config()) {
            Err(logdisk::Error::DataDirInUse { .. }) if t0.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            r => break r.expect("open data dir"),
        }
    };
    let name = std::env::var("LOGDISK_CRASH_VOLUME").unwrap();
    let vol = dd.open_volume(&name, false).unwrap();
    let scrub = std::env::var("LOGDISK_CRASH_SCRUB").is_ok();
    if scrub {
        let v = vol.clone();
        std::thread::spawn(move || loop {
            // Errors (nothing uploaded yet, say) only mean "try again".
            let _ = v.scrub(0.9);
            std::thread::sleep(Duration::from_millis(5));
        });
    }
    let mut out = std::io::stdout();
    for (k, op) in ops(scrub).enumerate() {
        let tag = k as u64 + 1;
        match op {
            Op::Write { cluster, n } => {
                let mut buf = vec![0u8; (n * 4096) as usize];
                fill_pattern(&mut buf, tag, cluster * 8);
                vol.write_at(cluster * 4096, &buf).unwrap();
            }
            Op::Discard { cluster, n } => vol.write_zeroes(cluster * 4096, n * 4096).unwrap(),
            Op::Flush => {
                vol.flush().unwrap();
                writeln!(out, "FLUSHED {}", k + 1).unwrap();
                out.flush().unwrap();
            }
        }
    }
}

#[test]
fn kill_9_during_writes_loses_nothing_flushed() {
    kill_9_rounds(false);
}

#[test]
fn kill_9_during_writes_and_scrub_loses_nothing_flushed() {
    kill_9_rounds(true);
}

/// Three rounds of: a child writes (and scrubs, with `scrub`), is killed with -9 after
/// a while, and the volume reopened must hold every flushed write.
fn kill_9_rounds(scrub: bool) {
    if std::env::var("LOGDISK_CRASH_CHILD").is_ok() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let name = format!("crash{round}{}", if scrub { "-scrub" } else { "" });
        {
            let dd = open_dd(&t.path().join("host"), &t.path().join("objects"), small_config());
            dd.create_volume(&name, SIZE, None, None).unwrap();
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("LOGDISK_CRASH_CHILD", t.path())
            .env("LOGDISK_CRASH_VOLUME", &name)
            .env(if scrub { "LOGDISK_CRASH_SCRUB" } else { "LOGDISK_CRASH_NO_SCRUB" }, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let start = Instant::now();
        let kill_after = Duration::from_millis(1500 + 700 * round);
        let mut flushed = 0usize;
        while start.elapsed() < kill_after {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(n) = l.strip_prefix("FLUSHED ") {
                        flushed = n.trim().parse().unwrap();
                    }
                }
                _ => break,
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(flushed > 50, "round {round}: child flushed only {flushed} ops before the kill");
        verify(t.path(), &name, flushed, round, scrub);
    }
}

fn verify(dir: &std::path::Path, name: &str, flushed: usize, round: u64, scrub: bool) {
    // Expected per cluster: the tag of the last op <= flushed (0 = zero), and every tag a
    // later op may have left there.
    let mut last = vec![0u64; CLUSTERS as usize];
    let mut later: Vec<Vec<u64>> = vec![Vec::new(); CLUSTERS as usize];
    for (k, op) in ops(scrub).take(flushed + 200_000).enumerate() {
        let tag = k as u64 + 1;
        let (c, n, v) = match op {
            Op::Write { cluster, n } => (cluster, n, tag),
            Op::Discard { cluster, n } => (cluster, n, 0),
            Op::Flush => continue,
        };
        for i in c..c + n {
            if k < flushed {
                last[i as usize] = v;
            } else {
                later[i as usize].push(v);
            }
        }
    }
    let mut dd = open_dd(&dir.join("host"), &dir.join("objects"), small_config());
    let vol = dd.open_volume(name, false).unwrap();
    let mut disk = vec![0u8; SIZE as usize];
    vol.read_at(0, &mut disk).unwrap();
    let mut want = vec![0u8; 4096];
    for c in 0..CLUSTERS as usize {
        let got = &disk[c * 4096..(c + 1) * 4096];
        let tag = if got.iter().all(|&b| b == 0) { 0 } else { u64::from_le_bytes(got[..8].try_into().unwrap()) };
        assert!(
            tag == last[c] || later[c].contains(&tag),
            "round {round}: cluster {c} holds tag {tag}, want {} (flushed through op {flushed}) or one of {:?}",
            last[c],
            later[c]
        );
        if tag != 0 {
            fill_pattern(&mut want, tag, c as u64 * 8);
            assert!(want == got, "round {round}: cluster {c} holds a torn or foreign copy of tag {tag}");
        }
    }
    vol.close().unwrap();
}
