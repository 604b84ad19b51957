//! The decoders of untrusted input (DTL protocol, SCO objects, TLogs) on the stable
//! toolchain: every committed fuzz input (fuzz/seeds/<target>/, including each crash the
//! fuzzer found) replays through the cargo-fuzz bodies, the crashes found so far are named
//! tests, and seeded random shaped inputs reach every decoder path. The real fuzzing runs
//! in CI with `scripts/fuzz.sh`.
//!
//! `LOGDISK_FUZZ_ITERS` overrides the number of random inputs per decoder (default 5000).

use std::collections::HashSet;
use std::path::Path;

use logdisk::backend::fuzzing::{fuzz_sco_object, FuzzPath as ScoPath};
use logdisk::backend::sco_object::{encode, parse_object_index, Codec};
use logdisk::dtl::fuzzing::{fuzz_dtl, FuzzPath as DtlPath};
use logdisk::dtl::protocol::*;
use logdisk::dtl::Entry;
use logdisk::volume::location::Location;
use logdisk::volume::tlog::{encode_batch, parse, Record, SnapName, CRCS_PER_RECORD};
use logdisk::volume::tlog_fuzzing::{fuzz_tlog, FuzzPath as TlogPath};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

fn iterations() -> usize {
    std::env::var("LOGDISK_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000)
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let Ok(rd) = std::fs::read_dir(&dir) else { return Vec::new() };
    rd.map(|e| e.unwrap().path()).map(|p| (p.display().to_string(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn committed_fuzz_inputs_replay_without_a_crash() {
    let mut n = 0;
    for (name, data) in seeds("dtl") {
        eprintln!("dtl {name}");
        fuzz_dtl(&data);
        n += 1;
    }
    for (name, data) in seeds("sco_object") {
        eprintln!("sco_object {name}");
        fuzz_sco_object(&data);
        n += 1;
    }
    for (name, data) in seeds("tlog") {
        eprintln!("tlog {name}");
        fuzz_tlog(&data);
        n += 1;
    }
    assert!(n >= 2, "the crash inputs are committed");
}

/// Found by `scripts/fuzz.sh` (sco_object): a 40-byte object whose footer puts its index
/// at an offset that wraps around u64 passed the size check, then slicing panicked.
#[test]
fn sco_footer_with_a_wrapping_index_offset_is_refused() {
    let mut f = Vec::from(&b"LDSCOv01"[..]);
    f.extend_from_slice(&1u64.to_le_bytes()); // raw_len
    f.extend_from_slice(&1u32.to_le_bytes()); // frame_size
    f.extend_from_slice(&1u32.to_le_bytes()); // n_frames
    f.extend_from_slice(&(40u64.wrapping_sub(21 + 40)).to_le_bytes()); // index_offset
    f.extend_from_slice(&0u32.to_le_bytes()); // index crc
    let crc = crc32c::crc32c(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    let e = parse_object_index("v/g1/sco/1", &f).unwrap_err().to_string();
    assert!(e.contains("inconsistent"), "{e}");
}

/// Found by `scripts/fuzz.sh` (tlog): a valid batch header claiming 2^32-1 records made
/// the decoder reserve 343 GB and abort the process.
#[test]
fn tlog_batch_with_a_huge_record_count_is_cut_not_allocated() {
    let mut b = Vec::new();
    encode_batch(&mut b, 7, 0, u32::MAX, &[]);
    let p = parse(&b, 7);
    assert_eq!((p.batches, p.valid_len, p.torn), (0, 0, true));
    assert!(fuzz_tlog(&[&[1u8, 0][..], &u32::MAX.to_le_bytes(), &[0]].concat()) == TlogPath::Empty);
}

fn flip(rng: &mut StdRng, b: &mut [u8]) {
    if b.is_empty() {
        return;
    }
    for _ in 0..rng.gen_range(0..4) {
        let i = rng.gen_range(0..b.len());
        b[i] ^= 1 << rng.gen_range(0..8);
    }
}

fn entry(rng: &mut StdRng) -> Entry {
    if rng.gen_bool(0.5) {
        Entry::data(rng.gen_range(1..9), rng.gen(), rng.gen(), vec![rng.gen(); 4096 * rng.gen_range(1..3)])
    } else {
        let mut r = vec![0u8; rng.gen_range(0..40)];
        rng.fill_bytes(&mut r);
        Entry::record(rng.gen_range(1..9), r)
    }
}

#[test]
fn dtl_random_streams_reach_every_path() {
    let mut rng = StdRng::seed_from_u64(19);
    let mut seen = HashSet::new();
    for _ in 0..iterations() {
        let mut s = vec![if rng.gen_bool(0.9) { 0 } else { 1 }];
        s.extend(hello_frame(rng.gen(), "vol", b"token"));
        for _ in 0..rng.gen_range(0..4) {
            let f = match rng.gen_range(0..5) {
                0 => {
                    let es: Vec<Entry> = (0..rng.gen_range(0..3)).map(|_| entry(&mut rng)).collect();
                    append_frame(rng.gen(), es.iter().enumerate().map(|(i, e)| (i as u64, e)))
                }
                1 => simple_frame(T_SYNC, rng.gen(), 0),
                2 => simple_frame(T_QUERY, rng.gen(), rng.gen()),
                3 => simple_frame(T_TRIM, rng.gen(), rng.gen()),
                _ => error_frame(rng.gen(), ErrorCode::Malformed, "no"),
            };
            s.extend(f);
        }
        if rng.gen_bool(0.5) {
            let at = rng.gen_range(1..s.len());
            flip(&mut rng, &mut s[at..]);
        }
        seen.extend(fuzz_dtl(&s));
    }
    for p in [DtlPath::Request(T_HELLO), DtlPath::Entries, DtlPath::Reply, DtlPath::Malformed, DtlPath::Frame] {
        assert!(seen.contains(&p), "{p:?} never reached: {seen:?}");
    }
}

#[test]
fn sco_random_objects_reach_every_path() {
    let mut rng = StdRng::seed_from_u64(19);
    let mut seen = HashSet::new();
    for _ in 0..iterations() {
        let mut d = vec![rng.gen::<u8>() | 2];
        let len = rng.gen_range(0..9000u16);
        d.extend(len.to_le_bytes());
        let mut raw = vec![0u8; len as usize];
        if rng.gen_bool(0.5) {
            rng.fill_bytes(&mut raw);
        }
        d.extend(raw);
        for _ in 0..rng.gen_range(0..3) {
            d.extend([rng.gen::<u8>(), rng.gen(), rng.gen()]);
        }
        seen.insert(fuzz_sco_object(&d));
    }
    // And raw bytes, some of them whole objects.
    for _ in 0..iterations() / 4 {
        let mut raw = vec![0u8; rng.gen_range(0..3000)];
        rng.fill_bytes(&mut raw);
        let mut obj = encode(&raw, 512, Codec::Lz4);
        flip(&mut rng, &mut obj);
        seen.insert(fuzz_sco_object(&[&[rng.gen::<u8>() & !2][..], &obj].concat()));
    }
    for p in [ScoPath::Decoded, ScoPath::FrameRefused, ScoPath::Refused] {
        assert!(seen.contains(&p), "{p:?} never reached: {seen:?}");
    }
}

fn record(rng: &mut StdRng) -> Record {
    let loc = || Location::new(3, 5);
    match rng.gen_range(0..7) {
        0 => Record::Write { cluster: rng.gen_range(0..100), count: rng.gen_range(1..9), loc: loc() },
        1 => Record::Fill { cluster: rng.gen_range(0..100), count: 3, entry: rng.gen_range(0..2) },
        2 => Record::Snapshot { id: rng.gen(), created: rng.gen(), name: SnapName::new("snap").unwrap() },
        3 => Record::Relocate { from: loc(), count: 2, to: Location::new(9, 1) },
        4 => Record::Resize { clusters: rng.gen() },
        5 => {
            let count = rng.gen_range(1..=CRCS_PER_RECORD);
            let mut crcs = [0u32; CRCS_PER_RECORD];
            crcs[..count].iter_mut().for_each(|c| *c = rng.gen());
            Record::Crcs { loc: loc(), count: count as u8, crcs }
        }
        _ => Record::SnapDelete { id: rng.gen() },
    }
}

#[test]
fn tlog_random_logs_reach_every_path() {
    let mut rng = StdRng::seed_from_u64(19);
    let mut seen = HashSet::new();
    for _ in 0..iterations() {
        // Raw TLog bytes: real batches, some sealed, some cut or damaged.
        let mut b = Vec::new();
        let n = rng.gen_range(0..5u32);
        for seq in 0..n {
            let mut recs: Vec<Record> = (0..rng.gen_range(1..4)).map(|_| record(&mut rng)).collect();
            if seq == n - 1 && rng.gen_bool(0.5) {
                recs.push(Record::Seal { sco: 7, clusters: 4 });
            }
            let mut payload = Vec::new();
            recs.iter().for_each(|r| r.encode(&mut payload));
            encode_batch(&mut b, 7, seq, recs.len() as u32, &payload);
        }
        match rng.gen_range(0..4) {
            0 => flip(&mut rng, &mut b),
            1 if !b.is_empty() => b.truncate(rng.gen_range(0..b.len())),
            _ => {}
        }
        seen.insert(fuzz_tlog(&[&[0u8][..], &b].concat()));
        // Built batches from random bytes (valid checksums over random records).
        let mut d = vec![1u8];
        let mut tail = vec![0u8; rng.gen_range(0..200)];
        rng.fill_bytes(&mut tail);
        d.extend(tail);
        seen.insert(fuzz_tlog(&d));
    }
    for p in [TlogPath::Empty, TlogPath::Torn, TlogPath::Whole, TlogPath::Sealed] {
        assert!(seen.contains(&p), "{p:?} never reached: {seen:?}");
    }
}
