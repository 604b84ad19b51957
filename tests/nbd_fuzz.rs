//! The NBD handshake and request decoder on seeded random client streams (in memory, two
//! exports): shaped inputs (a valid greeting and options, then requests, with random
//! bytes flipped) and raw noise. Nothing may panic, the reply stream stays bounded, and
//! the interesting paths are all reached.
//!
//! `LOGDISK_FUZZ_ITERS` overrides the number of inputs (default 20000).

use std::collections::HashMap;

use logdisk::nbd::fuzzing::{fuzz_nbd, FuzzPath, MEM_SIZE};
use logdisk::nbd::protocol::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

fn iterations() -> usize {
    std::env::var("LOGDISK_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

fn option(b: &mut Vec<u8>, opt: u32, data: &[u8]) {
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
}

fn string(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// A plausible client stream: greeting reply, a few options, GO, then requests.
fn shaped(rng: &mut StdRng, token: Option<&str>) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
    let name = match (rng.gen_range(0..4), token) {
        (0, _) => "nope".to_string(),
        (1, Some(t)) => format!("{t}/ro"),
        (_, Some(t)) => format!("{t}/rw"),
        (1, None) => "ro".into(),
        _ => "rw".into(),
    };
    for _ in 0..rng.gen_range(0..4) {
        match rng.gen_range(0..6) {
            0 => option(&mut b, OPT_STRUCTURED_REPLY, &[]),
            1 => option(&mut b, OPT_LIST, &[]),
            2 => {
                let mut d = Vec::new();
                string(&mut d, &name);
                d.extend_from_slice(&2u32.to_be_bytes());
                string(&mut d, "base:allocation");
                string(&mut d, "logdisk:changed-since:s0");
                option(&mut b, OPT_SET_META_CONTEXT, &d);
            }
            3 => option(&mut b, rng.gen(), &[1, 2, 3]),
            4 => {
                let mut d = Vec::new();
                string(&mut d, &name);
                d.extend_from_slice(&1u16.to_be_bytes());
                d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                option(&mut b, OPT_INFO, &d);
            }
            _ => option(&mut b, OPT_STRUCTURED_REPLY, &[]),
        }
    }
    let mut d = Vec::new();
    string(&mut d, &name);
    d.extend_from_slice(&0u16.to_be_bytes());
    if rng.gen_bool(0.8) {
        option(&mut b, OPT_GO, &d);
    } else {
        option(&mut b, OPT_EXPORT_NAME, name.as_bytes());
    }
    for _ in 0..rng.gen_range(0..12) {
        let kind =
            [CMD_READ, CMD_WRITE, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS, 9][rng.gen_range(0..7)];
        let len: u32 = if rng.gen_bool(0.05) { rng.gen() } else { rng.gen_range(0..16384) };
        let off: u64 = if rng.gen_bool(0.05) { rng.gen() } else { rng.gen_range(0..MEM_SIZE) };
        b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&(rng.gen::<u16>() & 0x1f).to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&rng.gen::<u64>().to_be_bytes());
        b.extend_from_slice(&off.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        if kind == CMD_WRITE && len < 16384 {
            let at = b.len();
            b.resize(at + len as usize, 0);
            rng.fill_bytes(&mut b[at..]);
        }
    }
    if rng.gen_bool(0.3) {
        b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, CMD_DISC as u8]);
        b.extend_from_slice(&[0; 20]);
    }
    // Flip a few bytes in half of the inputs.
    if rng.gen_bool(0.5) && !b.is_empty() {
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..b.len());
            b[i] = rng.gen();
        }
    }
    b
}

#[test]
fn nbd_decoder_survives_random_clients() {
    let mut rng = StdRng::seed_from_u64(0x6e62_645f_6675_7a7a);
    let mut seen: HashMap<&'static str, usize> = HashMap::new();
    let iters = iterations();
    for i in 0..iters {
        let token = if i % 5 == 0 { Some("0123456789abcdef") } else { None };
        let input = if i % 4 == 0 {
            let mut b = vec![0u8; rng.gen_range(0..512)];
            rng.fill_bytes(&mut b);
            b
        } else {
            shaped(&mut rng, token)
        };
        let (path, out) = fuzz_nbd(&input, token);
        // Replies stay within what at most 12 in-range reads (each under 1 MiB: the
        // export's size) and their headers, option replies included, can add up to.
        assert!(out <= 16384 + 12 * ((1 << 20) + 2048), "{out} reply bytes for {} input bytes", input.len());
        let key = match path {
            FuzzPath::HandshakeError => "handshake-error",
            FuzzPath::HandshakeEnded => "handshake-ended",
            FuzzPath::Transmitted { structured: true, requests } if requests > 0 => "structured-requests",
            FuzzPath::Transmitted { structured: false, requests } if requests > 0 => "simple-requests",
            FuzzPath::Transmitted { .. } => "no-requests",
            FuzzPath::TransmitError { .. } => "transmit-error",
        };
        *seen.entry(key).or_default() += 1;
    }
    eprintln!("paths exercised: {seen:?}");
    if iters >= 20_000 {
        for k in ["handshake-error", "handshake-ended", "structured-requests", "simple-requests", "transmit-error"] {
            assert!(seen.contains_key(k), "{k} never reached: {seen:?}");
        }
    }
}
