//! The SCO object fuzz body (cargo-fuzz target `sco_object`): a bucket may hold damaged or
//! hostile objects, and a volume reading one must get an error, never a panic or wrong
//! bytes.
//!
//! Input: a control byte, then either an object taken as is, or (control bit 1) raw SCO
//! data that is encoded (frame size and codec from the control byte) and then damaged by
//! the XOR edits that follow it. Unless control bit 0 is set, the footer and index
//! checksums are recomputed after the damage, as a hostile writer would, so the fuzzer
//! reaches the checks behind them. The body parses the footer and index, decodes every
//! frame through the ranged-read arithmetic, and checks: an undamaged encoding decodes to
//! its raw data; a frame that decodes passes its crc32c.

use super::sco_object::{encode, parse_object_index, Codec, FOOTER_LEN, INDEX_ENTRY_LEN};

/// What one input exercised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FuzzPath {
    /// Footer or index refused.
    Refused,
    /// Index parsed; some frame refused.
    FrameRefused,
    /// Every frame decoded.
    Decoded,
}

const KEY: &str = "fuzz/g1/sco/1";

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Recompute the index and footer checksums of `obj` (where the footer says they are).
fn fix_checksums(obj: &mut [u8]) {
    if obj.len() < FOOTER_LEN {
        return;
    }
    let f = obj.len() - FOOTER_LEN;
    let n_frames = u32::from_le_bytes(obj[f + 20..f + 24].try_into().unwrap()) as u64;
    let index_offset = u64_at(obj, f + 24);
    let index_len = n_frames * INDEX_ENTRY_LEN as u64;
    if let Some(end) = index_offset.checked_add(index_len).filter(|&e| e <= f as u64) {
        let crc = crate::crc::crc32c(&obj[index_offset as usize..end as usize]);
        obj[f + 32..f + 36].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crate::crc::crc32c(&obj[f..f + 36]);
    obj[f + 36..f + 40].copy_from_slice(&crc.to_le_bytes());
}

/// Run one input; panics on a violated invariant.
pub fn fuzz_sco_object(data: &[u8]) -> FuzzPath {
    let Some((&ctrl, rest)) = data.split_first() else {
        return FuzzPath::Refused;
    };
    let mut raw = None;
    let mut obj = if ctrl & 2 != 0 {
        // [raw_len u16][raw][edits: (pos u16, xor u8)...]
        let n = rest.len().min(2);
        let len =
            usize::from(u16::from_le_bytes([rest.first().copied().unwrap_or(0), rest.get(1).copied().unwrap_or(0)]))
                .min(rest.len() - n);
        let r = &rest[n..n + len];
        let frame_size = [1usize, 7, 512, 4096][usize::from((ctrl >> 2) & 3)];
        let codec = if ctrl & 0x10 != 0 { Codec::Lz4 } else { Codec::None };
        let mut obj = encode(r, frame_size, codec);
        let edits = &rest[n + len..];
        for e in edits.chunks_exact(3) {
            if obj.is_empty() {
                break;
            }
            let pos = usize::from(u16::from_le_bytes([e[0], e[1]])) % obj.len();
            obj[pos] ^= e[2];
        }
        if edits.len() < 3 || edits.chunks_exact(3).all(|e| e[2] == 0) {
            raw = Some(r);
        }
        obj
    } else {
        rest.to_vec()
    };
    if ctrl & 1 == 0 {
        fix_checksums(&mut obj);
    }

    let index = match parse_object_index(KEY, &obj) {
        Ok(i) => i,
        Err(e) => {
            assert!(raw.is_none(), "an undamaged object was refused: {e}");
            return FuzzPath::Refused;
        }
    };
    let mut out = Vec::new();
    let mut pos = 0u64;
    let mut whole = Vec::new();
    while pos < index.raw_len {
        // The same arithmetic a ranged read of one byte at `pos` uses.
        let (first, last) = index.frames_for(pos, 1).expect("in range");
        assert_eq!(first, last);
        let (off, len) = index.stored_range(first, last);
        let stored = usize::try_from(off).ok().zip(usize::try_from(off + len).ok()).and_then(|(a, b)| obj.get(a..b));
        let Some(stored) = stored else {
            assert!(raw.is_none(), "an undamaged object's frame is outside it");
            return FuzzPath::FrameRefused;
        };
        let raw_len = index.frames[first].raw_len as usize;
        out.clear();
        out.resize(raw_len, 0);
        // decode_frame opens sealed frames in place: work on a copy.
        let mut stored = stored.to_vec();
        if let Err(e) = index.decode_frame(KEY, first, &mut stored, &mut out) {
            assert!(raw.is_none(), "an undamaged frame was refused: {e}");
            return FuzzPath::FrameRefused;
        }
        assert_eq!(crate::crc::crc32c(&out), index.frames[first].crc);
        whole.extend_from_slice(&out);
        pos += raw_len as u64;
    }
    assert_eq!(whole.len() as u64, index.raw_len);
    if let Some(r) = raw {
        assert_eq!(whole, r, "an undamaged object decoded to other bytes");
    }
    FuzzPath::Decoded
}
