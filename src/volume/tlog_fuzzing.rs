//! The TLog decoder fuzz body (cargo-fuzz target `tlog`): a TLog comes back from the
//! object store (a bucket may hold damaged or hostile objects) or from a local file cut by
//! a crash, and must decode to records or a clear refusal, never a panic.
//!
//! Input: a control byte, then either TLog bytes taken as they are, or (control bit 0)
//! batches built from the input with valid headers and checksums (as a hostile writer
//! would) — `[payload_len u8][count u32][pad u8][payload]...` — so the fuzzer reaches the
//! record decoder behind the checksum. Checks: [`parse`] stops inside the input; its
//! records re-encode to the batch payloads it accepted; [`parse_sealed`] accepts exactly
//! the untorn logs ending in a seal.

use super::tlog::{encode_batch, parse, parse_sealed, Record, HEADER_LEN};

const EPOCH: u64 = 7;

/// What one input exercised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FuzzPath {
    /// No batch decoded.
    Empty,
    /// Some batches decoded, the rest torn.
    Torn,
    /// Every byte decoded (or zero padding).
    Whole,
    /// A whole TLog ending in a seal record.
    Sealed,
}

/// Run one input; panics on a violated invariant.
pub fn fuzz_tlog(data: &[u8]) -> FuzzPath {
    let Some((&ctrl, mut rest)) = data.split_first() else {
        return FuzzPath::Empty;
    };
    let mut payloads = Vec::new();
    let bytes = if ctrl & 1 == 1 {
        let mut out = Vec::new();
        let mut seq = 0u32;
        while rest.len() >= 6 {
            let (len, pad) = (usize::from(rest[0]), rest[5]);
            let count = u32::from_le_bytes(rest[1..5].try_into().unwrap());
            rest = &rest[6..];
            let payload = &rest[..len.min(rest.len())];
            rest = &rest[payload.len()..];
            encode_batch(&mut out, EPOCH, seq, count, payload);
            payloads.push(payload);
            seq += 1;
            if pad & 1 == 1 {
                out.resize(out.len().next_multiple_of(512), 0);
            }
        }
        out
    } else {
        rest.to_vec()
    };

    let p = parse(&bytes, EPOCH);
    assert!(p.valid_len <= bytes.len() as u64, "valid_len {} past {} bytes", p.valid_len, bytes.len());
    assert_eq!(p.torn, bytes[p.valid_len as usize..].iter().any(|&b| b != 0), "torn flag disagrees with the tail");
    if ctrl & 1 == 1 {
        // Built batches: the accepted ones are a prefix, their records re-encode to them.
        let mut enc = Vec::new();
        for r in &p.records {
            r.encode(&mut enc);
        }
        let accepted: Vec<u8> = payloads[..p.batches as usize].concat();
        assert_eq!(enc, accepted, "records do not re-encode to the accepted batches");
    } else if p.batches > 0 {
        assert!(p.valid_len >= HEADER_LEN as u64);
    }
    let sealed = parse_sealed("fuzz/g1/tlog/7", &bytes, EPOCH);
    assert_eq!(sealed.is_ok(), !p.torn && matches!(p.records.last(), Some(Record::Seal { .. })));
    match (sealed.is_ok(), p.torn, p.batches) {
        (true, _, _) => FuzzPath::Sealed,
        (_, _, 0) => FuzzPath::Empty,
        (_, true, _) => FuzzPath::Torn,
        _ => FuzzPath::Whole,
    }
}
