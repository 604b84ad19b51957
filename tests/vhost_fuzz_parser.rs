//! The request-parser fuzz body on seeded random inputs: what CI runs in place of (or in
//! addition to) `cargo fuzz run request_parser` (see `fuzz/`).
//!
//! `LOGDISK_FUZZ_ITERS` overrides the number of inputs (default 20000).

use std::collections::HashMap;

use logdisk::frontend::fuzzing::{fuzz_request_parser, FuzzPath};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

fn iterations() -> usize {
    std::env::var("LOGDISK_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

#[test]
fn request_parser_survives_random_inputs() {
    let mut rng = StdRng::seed_from_u64(0x6c6f_6764_6973_6b21);
    let mut buf = vec![0u8; 1024];
    let mut seen: HashMap<FuzzPath, usize> = HashMap::new();
    let iters = iterations();
    for i in 0..iters {
        let len = rng.gen_range(0..buf.len());
        rng.fill_bytes(&mut buf[..len]);
        if i % 4 != 0 && len > 3 {
            // Three inputs in four are "shaped" (virtio-blk framing kept, see the fuzz body)
            // with few descriptors and mostly small segment counts.
            buf[0] |= 0x08;
            buf[2] %= 8;
        }
        *seen.entry(fuzz_request_parser(&buf[..len])).or_default() += 1;
    }
    eprintln!("paths exercised: {seen:?}");
    if iters >= 20_000 {
        for path in [
            FuzzPath::Drop,
            FuzzPath::Fail,
            FuzzPath::Run("read"),
            FuzzPath::Run("write"),
            FuzzPath::Run("flush"),
            FuzzPath::Run("get-id"),
            FuzzPath::Run("discard"),
            FuzzPath::Run("write-zeroes"),
        ] {
            assert!(seen.contains_key(&path), "{path:?} never reached: {seen:?}");
        }
    }
}

/// Found by cargo fuzz in CI: a data descriptor ending at the end of one guest region
/// and the next starting another region whose host mapping happened to follow it; the
/// iovec builder merged them into one iovec spanning two mappings. Iovecs are now merged
/// only within one region.
#[test]
fn request_parser_regression_inputs() {
    let crash: &[u8] = &[
        0x7d, 0x2b, 0x89, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0xfe, 0xff, 0x80, 0x2e, 0xf5, 0x96, 0x7e, 0x00, 0x7d, 0x00, 0x20, 0x00, 0x00, 0x00, 0xfc, 0xff, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0xfe, 0xff, 0x80, 0x2e, 0xf5, 0x96, 0x7e, 0x00, 0x7d, 0x00, 0x20, 0x00, 0x00, 0x00,
        0xfc, 0xff, 0xff, 0xff, 0x77, 0x75,
    ];
    fuzz_request_parser(crash);
}

#[test]
fn request_parser_edge_inputs() {
    fuzz_request_parser(&[]);
    fuzz_request_parser(&[0xff; 4096]);
    fuzz_request_parser(&[0x00; 4096]);
    for n in 0..64u8 {
        let mut v = vec![0x10, 0x80, n];
        v.extend(std::iter::repeat_n(n, 600));
        fuzz_request_parser(&v);
    }
}
