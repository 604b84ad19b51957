//! Randomized model test: random aligned and unaligned writes, reads, discards,
//! flushes and crash points against an in-memory reference disk. After each crash and
//! restart every 512-byte sector holds either its content as of the last completed
//! flush or the content of a write issued after it — never anything else.

mod common;

use std::collections::HashSet;

use rand::{rngs::StdRng, Rng, SeedableRng};

use common::{fill_pattern, open_dd, small_config};

const SIZE: u64 = 8 << 20;
const SECTOR: u64 = 512;
const SECTORS: usize = (SIZE / SECTOR) as usize;

/// Reference: current content per sector as (tag) where tag 0 = zeroes, plus, since the
/// last flush, every tag each sector may hold after a crash.
struct Reference {
    current: Vec<u64>,
    since_flush: Vec<Option<HashSet<u64>>>,
}

impl Reference {
    fn new() -> Self {
        Reference { current: vec![0; SECTORS], since_flush: vec![None; SECTORS] }
    }
    fn set(&mut self, first: usize, n: usize, tag: u64) {
        for s in first..first + n {
            let prev = self.current[s];
            self.since_flush[s].get_or_insert_with(|| HashSet::from([prev])).insert(tag);
            self.current[s] = tag;
        }
    }
    fn flush(&mut self) {
        self.since_flush.iter_mut().for_each(|s| *s = None);
    }
    /// After a crash: adopt what the volume holds where allowed; panic otherwise.
    fn settle(&mut self, disk: &[u8]) {
        for s in 0..SECTORS {
            let bytes = &disk[s * 512..(s + 1) * 512];
            let tag = sector_tag(bytes, s as u64).unwrap_or_else(|| panic!("sector {s} holds garbage"));
            match &self.since_flush[s] {
                None => assert_eq!(tag, self.current[s], "sector {s}: flushed content lost"),
                Some(allowed) => assert!(allowed.contains(&tag), "sector {s}: tag {tag} was never written there"),
            }
            self.current[s] = tag;
        }
        self.flush();
    }
}

/// The tag a sector holds, if it is a valid pattern (or zeroes = 0).
fn sector_tag(bytes: &[u8], sector: u64) -> Option<u64> {
    if bytes.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let tag = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let mut want = vec![0u8; 512];
    fill_pattern(&mut want, tag, sector);
    (want == bytes).then_some(tag)
}

fn read_all(vol: &logdisk::volume::Volume) -> Vec<u8> {
    let mut disk = vec![0u8; SIZE as usize];
    vol.read_at(0, &mut disk).unwrap();
    disk
}

fn run(seed: u64, ops: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let t = tempfile::tempdir().unwrap();
    let backend = t.path().join("objects");
    let mut host = 0;
    let mut dd = open_dd(&t.path().join(format!("host{host}")), &backend, small_config());
    dd.create_volume("model", SIZE, None, None).unwrap();
    let mut vol = dd.open_volume("model", false).unwrap();
    let mut reference = Reference::new();
    let mut tag = 1u64;
    for op in 0..ops {
        match rng.gen_range(0..100) {
            0..=49 => {
                // Write: aligned clusters or arbitrary sectors.
                let (first, n) = if rng.gen_bool(0.6) {
                    let c = rng.gen_range(0..SIZE / 4096);
                    let n = rng.gen_range(1..=16u64).min(SIZE / 4096 - c);
                    ((c * 8) as usize, (n * 8) as usize)
                } else {
                    let s = rng.gen_range(0..SECTORS);
                    (s, rng.gen_range(1..=24usize).min(SECTORS - s))
                };
                let mut buf = vec![0u8; n * 512];
                fill_pattern(&mut buf, tag, first as u64);
                vol.write_at(first as u64 * SECTOR, &buf).unwrap();
                reference.set(first, n, tag);
                tag += 1;
            }
            50..=69 => {
                let s = rng.gen_range(0..SECTORS);
                let n = rng.gen_range(1..=64usize).min(SECTORS - s);
                let mut buf = vec![0u8; n * 512];
                vol.read_at(s as u64 * SECTOR, &mut buf).unwrap();
                for i in 0..n {
                    let got = sector_tag(&buf[i * 512..(i + 1) * 512], (s + i) as u64);
                    assert_eq!(got, Some(reference.current[s + i]), "seed {seed} op {op}: sector {}", s + i);
                }
            }
            70..=79 => {
                let s = rng.gen_range(0..SECTORS);
                let n = rng.gen_range(1..=200usize).min(SECTORS - s);
                vol.write_zeroes(s as u64 * SECTOR, n as u64 * SECTOR).unwrap();
                reference.set(s, n, 0);
            }
            80..=91 => {
                vol.flush().unwrap();
                reference.flush();
            }
            92..=96 => {
                // Crash: abandon the process state without closing, maybe tear the TLog.
                drop(vol);
                drop(dd);
                if rng.gen_bool(0.5) {
                    tear_newest_tlog(&t.path().join(format!("host{host}")), &mut rng);
                }
                dd = open_dd(&t.path().join(format!("host{host}")), &backend, small_config());
                vol = dd.open_volume("model", false).unwrap();
                reference.settle(&read_all(&vol));
            }
            _ => {
                // Clean shutdown, then restart from the object store alone on a new host.
                vol.close().unwrap();
                drop(vol);
                drop(dd);
                host += 1;
                dd = open_dd(&t.path().join(format!("host{host}")), &backend, small_config());
                vol = dd.open_volume("model", false).unwrap();
                reference.flush();
                let disk = read_all(&vol);
                for s in 0..SECTORS {
                    assert_eq!(
                        sector_tag(&disk[s * 512..(s + 1) * 512], s as u64),
                        Some(reference.current[s]),
                        "seed {seed} op {op} after restart from the object store: sector {s}"
                    );
                }
            }
        }
    }
    vol.close().unwrap();
}

/// Append a partial, garbage batch to the newest local TLog (a write torn by a crash).
fn tear_newest_tlog(host: &std::path::Path, rng: &mut StdRng) {
    let dir = host.join("volumes/model/tlog");
    let Some(newest) = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).max() else { return };
    let mut junk = vec![0u8; rng.gen_range(1..200)];
    rng.fill(&mut junk[..]);
    if rng.gen_bool(0.5) {
        let n = 4.min(junk.len());
        junk[..n].copy_from_slice(&0x4C44_5442u32.to_le_bytes()[..n]);
    }
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(newest).unwrap().write_all(&junk).unwrap();
}

#[test]
fn model_seed_1() {
    run(1, 3000);
}

#[test]
fn model_seed_2() {
    run(2, 3000);
}

#[test]
fn model_many_seeds() {
    for seed in 10..16 {
        run(seed, 800);
    }
}
