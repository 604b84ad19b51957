//! The SCO object format in the object store: the SCO's raw data cut into frames of
//! `frame_size` bytes, each compressed independently (or stored raw when compression
//! does not help) and checksummed (crc32c of the raw bytes), then an index of frames
//! and a fixed footer. A ranged read fetches and decodes only the frames it needs.
//!
//! ```text
//! [frame 0][frame 1]...[frame n-1][index: n x 21 bytes][footer: 40 bytes]
//! index entry: offset u64 | stored_len u32 | raw_len u32 | codec u8 | crc32c(raw) u32
//! footer:      magic "LDSCOv01" | raw_len u64 | frame_size u32 | n_frames u32 |
//!              index_offset u64 | crc32c(index) u32 | crc32c(footer[0..36]) u32
//! ```

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"LDSCOv01";
pub const FOOTER_LEN: usize = 40;
pub const INDEX_ENTRY_LEN: usize = 21;

/// Compression of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None = 0,
    Lz4 = 1,
}

impl Codec {
    pub fn parse(s: &str) -> Result<Codec> {
        match s {
            "none" => Ok(Codec::None),
            "lz4" => Ok(Codec::Lz4),
            _ => Err(Error::Config(format!("unknown compression {s:?}: use \"lz4\" or \"none\""))),
        }
    }

    fn from_u8(v: u8) -> Option<Codec> {
        match v {
            0 => Some(Codec::None),
            1 => Some(Codec::Lz4),
            _ => None,
        }
    }
}

/// One frame's place in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEntry {
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
    pub crc: u32,
}

/// The decoded index of an SCO object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoIndex {
    pub raw_len: u64,
    pub frame_size: u32,
    pub frames: Vec<FrameEntry>,
}

/// The most bytes [`encode_into`] writes for `raw_len` bytes of SCO data.
pub fn max_encoded_len(raw_len: usize, frame_size: usize) -> usize {
    let n_frames = raw_len.div_ceil(frame_size);
    // Every frame is stored in at most its raw size, but LZ4 needs room for its worst
    // case while compressing the last one.
    let slack = lz4_flex::block::get_maximum_output_size(frame_size.min(raw_len.max(1)));
    raw_len + slack + n_frames * INDEX_ENTRY_LEN + FOOTER_LEN
}

/// Encode raw SCO data into the object format.
pub fn encode(raw: &[u8], frame_size: usize, codec: Codec) -> Vec<u8> {
    let mut out = vec![0u8; max_encoded_len(raw.len(), frame_size)];
    let n = encode_into(raw, frame_size, codec, &mut out);
    out.truncate(n);
    out
}

/// Encode raw SCO data into `out` (at least [`max_encoded_len`] bytes); returns the
/// object's length. Allocates only the index (a few KiB).
pub fn encode_into(raw: &[u8], frame_size: usize, codec: Codec, out: &mut [u8]) -> usize {
    assert!(out.len() >= max_encoded_len(raw.len(), frame_size), "encode_into: output buffer too small");
    let n_frames = raw.len().div_ceil(frame_size);
    let mut index = Vec::with_capacity(n_frames * INDEX_ENTRY_LEN);
    let mut at = 0usize;
    for chunk in raw.chunks(frame_size) {
        let offset = at as u64;
        let crc = crc32c::crc32c(chunk);
        let mut used = Codec::None;
        if codec == Codec::Lz4 {
            if let Ok(c) = lz4_flex::block::compress_into(chunk, &mut out[at..]) {
                // Store raw unless compression saves at least 1/16.
                if c < chunk.len() - chunk.len() / 16 {
                    at += c;
                    used = Codec::Lz4;
                }
            }
        }
        if used == Codec::None {
            out[at..at + chunk.len()].copy_from_slice(chunk);
            at += chunk.len();
        }
        let stored_len = at as u64 - offset;
        push_index_entry(&mut index, offset, stored_len as u32, chunk.len() as u32, used, crc);
    }
    let tail = index_and_footer(index, raw.len() as u64, frame_size, at as u64);
    out[at..at + tail.len()].copy_from_slice(&tail);
    at + tail.len()
}

fn push_index_entry(index: &mut Vec<u8>, offset: u64, stored_len: u32, raw_len: u32, codec: Codec, crc: u32) {
    index.extend_from_slice(&offset.to_le_bytes());
    index.extend_from_slice(&stored_len.to_le_bytes());
    index.extend_from_slice(&raw_len.to_le_bytes());
    index.push(codec as u8);
    index.extend_from_slice(&crc.to_le_bytes());
}

/// `index` followed by the footer, for frames ending at `index_offset`.
fn index_and_footer(mut index: Vec<u8>, raw_len: u64, frame_size: usize, index_offset: u64) -> Vec<u8> {
    let n_frames = index.len() / INDEX_ENTRY_LEN;
    let index_crc = crc32c::crc32c(&index);
    let mut footer = [0u8; FOOTER_LEN];
    footer[..8].copy_from_slice(MAGIC);
    footer[8..16].copy_from_slice(&raw_len.to_le_bytes());
    footer[16..20].copy_from_slice(&(frame_size as u32).to_le_bytes());
    footer[20..24].copy_from_slice(&(n_frames as u32).to_le_bytes());
    footer[24..32].copy_from_slice(&index_offset.to_le_bytes());
    footer[32..36].copy_from_slice(&index_crc.to_le_bytes());
    let fcrc = crc32c::crc32c(&footer[..36]);
    footer[36..40].copy_from_slice(&fcrc.to_le_bytes());
    index.extend_from_slice(&footer);
    index
}

/// What turns raw SCO data into an object with every frame stored raw: the index and
/// footer to append after the data, given each frame's crc32c (frames of `frame_size`,
/// the last one shorter). Lets a local store adopt the SCO file itself as the object.
pub fn raw_tail(raw_len: u64, frame_size: usize, frame_crcs: &[u32]) -> Vec<u8> {
    let mut index = Vec::with_capacity(frame_crcs.len() * INDEX_ENTRY_LEN + FOOTER_LEN);
    for (i, &crc) in frame_crcs.iter().enumerate() {
        let offset = (i * frame_size) as u64;
        let len = (raw_len - offset).min(frame_size as u64) as u32;
        push_index_entry(&mut index, offset, len, len, Codec::None, crc);
    }
    index_and_footer(index, raw_len, frame_size, raw_len)
}

fn corrupt(key: &str, detail: impl Into<String>) -> Error {
    Error::Corrupt { key: key.to_string(), detail: detail.into() }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Footer fields needed to locate the index.
#[derive(Debug, Clone, Copy)]
pub struct Footer {
    pub raw_len: u64,
    pub frame_size: u32,
    pub n_frames: u32,
    pub index_offset: u64,
    pub index_crc: u32,
}

impl Footer {
    pub fn index_len(&self) -> u64 {
        self.n_frames as u64 * INDEX_ENTRY_LEN as u64
    }
}

/// Parse and check the footer (the last FOOTER_LEN bytes of `tail`) of an object of
/// `object_size` bytes.
pub fn parse_footer(key: &str, tail: &[u8], object_size: u64) -> Result<Footer> {
    if tail.len() < FOOTER_LEN {
        return Err(corrupt(key, format!("object too short ({} bytes) for an SCO footer", object_size)));
    }
    let f = &tail[tail.len() - FOOTER_LEN..];
    if &f[0..8] != MAGIC {
        return Err(corrupt(key, "bad SCO footer magic"));
    }
    if crc32c::crc32c(&f[..36]) != u32_at(f, 36) {
        return Err(corrupt(key, "SCO footer checksum mismatch"));
    }
    let footer = Footer {
        raw_len: u64_at(f, 8),
        frame_size: u32_at(f, 16),
        n_frames: u32_at(f, 20),
        index_offset: u64_at(f, 24),
        index_crc: u32_at(f, 32),
    };
    let expect_frames = footer.raw_len.div_ceil(footer.frame_size.max(1) as u64);
    // Checked: a hostile index offset must not wrap around to match (found by fuzzing:
    // a 40-byte object then claimed an index before its start, and slicing it panicked).
    let end = footer.index_offset.checked_add(footer.index_len()).and_then(|e| e.checked_add(FOOTER_LEN as u64));
    if footer.frame_size == 0 || footer.n_frames as u64 != expect_frames || end != Some(object_size) {
        return Err(corrupt(key, "SCO footer fields are inconsistent"));
    }
    Ok(footer)
}

/// Parse and check the index bytes described by `footer`.
pub fn parse_index(key: &str, footer: &Footer, index: &[u8]) -> Result<ScoIndex> {
    if index.len() as u64 != footer.index_len() || crc32c::crc32c(index) != footer.index_crc {
        return Err(corrupt(key, "SCO index checksum mismatch"));
    }
    let mut frames = Vec::with_capacity(footer.n_frames as usize);
    let mut expect_off = 0u64;
    for (i, e) in index.chunks_exact(INDEX_ENTRY_LEN).enumerate() {
        let entry = FrameEntry {
            offset: u64_at(e, 0),
            stored_len: u32_at(e, 8),
            raw_len: u32_at(e, 12),
            codec: Codec::from_u8(e[16]).ok_or_else(|| corrupt(key, format!("frame {i}: unknown codec")))?,
            crc: u32_at(e, 17),
        };
        let want_raw = (footer.raw_len - i as u64 * footer.frame_size as u64).min(footer.frame_size as u64);
        if entry.offset != expect_off || entry.raw_len as u64 != want_raw {
            return Err(corrupt(key, format!("frame {i}: index entry is inconsistent")));
        }
        expect_off += entry.stored_len as u64;
        frames.push(entry);
    }
    if expect_off != footer.index_offset {
        return Err(corrupt(key, "SCO frames do not end at the index"));
    }
    Ok(ScoIndex { raw_len: footer.raw_len, frame_size: footer.frame_size, frames })
}

/// Parse a whole object (footer + index) held in memory.
pub fn parse_object_index(key: &str, object: &[u8]) -> Result<ScoIndex> {
    let footer = parse_footer(key, object, object.len() as u64)?;
    let start = footer.index_offset as usize;
    parse_index(key, &footer, &object[start..start + footer.index_len() as usize])
}

impl ScoIndex {
    /// Frames `[first, last]` covering raw bytes `[off, off+len)`.
    pub fn frames_for(&self, off: u64, len: u64) -> Option<(usize, usize)> {
        if len == 0 || off + len > self.raw_len {
            return None;
        }
        let fs = self.frame_size as u64;
        Some(((off / fs) as usize, ((off + len - 1) / fs) as usize))
    }

    /// Byte range in the object of frames `[first, last]`.
    pub fn stored_range(&self, first: usize, last: usize) -> (u64, u64) {
        let a = self.frames[first].offset;
        let b = self.frames[last].offset + self.frames[last].stored_len as u64;
        (a, b - a)
    }

    /// Decode frame `i` from its stored bytes into `out` (exactly its raw length),
    /// verifying its checksum.
    pub fn decode_frame(&self, key: &str, i: usize, stored: &[u8], out: &mut [u8]) -> Result<()> {
        let e = &self.frames[i];
        if stored.len() != e.stored_len as usize || out.len() != e.raw_len as usize {
            return Err(corrupt(key, format!("frame {i}: short read")));
        }
        match e.codec {
            Codec::None => out.copy_from_slice(stored),
            Codec::Lz4 => {
                let n = lz4_flex::block::decompress_into(stored, out)
                    .map_err(|err| corrupt(key, format!("frame {i}: cannot decompress: {err}")))?;
                if n != out.len() {
                    return Err(corrupt(key, format!("frame {i}: decompressed to {n} bytes, want {}", out.len())));
                }
            }
        }
        if crc32c::crc32c(out) != e.crc {
            return Err(corrupt(
                key,
                format!(
                    "frame {i}: checksum mismatch (raw bytes {}..{})",
                    i as u64 * self.frame_size as u64,
                    i as u64 * self.frame_size as u64 + e.raw_len as u64
                ),
            ));
        }
        Ok(())
    }

    /// Total stored (compressed) bytes of the frames.
    pub fn stored_len(&self) -> u64 {
        self.frames.iter().map(|f| f.stored_len as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn sample() -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut raw = vec![0u8; 300_000];
        rng.fill(&mut raw[..100_000]); // incompressible part
        for (i, b) in raw[100_000..].iter_mut().enumerate() {
            *b = (i / 100) as u8; // compressible part
        }
        raw
    }

    #[test]
    fn round_trip_every_frame() {
        let raw = sample();
        for codec in [Codec::None, Codec::Lz4] {
            let obj = encode(&raw, 65536, codec);
            let idx = parse_object_index("k", &obj).unwrap();
            assert_eq!(idx.frames.len(), 5);
            for i in 0..idx.frames.len() {
                let e = idx.frames[i];
                let mut out = vec![0u8; e.raw_len as usize];
                idx.decode_frame("k", i, &obj[e.offset as usize..(e.offset + e.stored_len as u64) as usize], &mut out)
                    .unwrap();
                assert_eq!(&out[..], &raw[i * 65536..i * 65536 + e.raw_len as usize]);
            }
            if codec == Codec::Lz4 {
                assert_eq!(idx.frames[0].codec, Codec::None, "random data stays raw");
                assert_eq!(idx.frames[3].codec, Codec::Lz4);
                assert!(obj.len() < raw.len());
            }
        }
    }

    #[test]
    fn raw_data_plus_raw_tail_is_the_uncompressed_object() {
        let raw = sample();
        let crcs: Vec<u32> = raw.chunks(65536).map(crc32c::crc32c).collect();
        let mut adopted = raw.clone();
        adopted.extend_from_slice(&raw_tail(raw.len() as u64, 65536, &crcs));
        assert_eq!(adopted, encode(&raw, 65536, Codec::None));
        parse_object_index("k", &adopted).unwrap();
    }

    #[test]
    fn damage_is_detected_per_frame() {
        let raw = sample();
        let mut obj = encode(&raw, 65536, Codec::Lz4);
        let idx = parse_object_index("k", &obj).unwrap();
        let e = idx.frames[3];
        obj[e.offset as usize + 10] ^= 0x55;
        let mut out = vec![0u8; e.raw_len as usize];
        let r = idx.decode_frame("k", 3, &obj[e.offset as usize..(e.offset + e.stored_len as u64) as usize], &mut out);
        assert!(matches!(r, Err(Error::Corrupt { .. })));
        let e2 = idx.frames[2];
        let mut out2 = vec![0u8; e2.raw_len as usize];
        idx.decode_frame("k", 2, &obj[e2.offset as usize..(e2.offset + e2.stored_len as u64) as usize], &mut out2)
            .unwrap();
        // Damaged footer and index are refused.
        let n = obj.len();
        let mut bad = obj.clone();
        bad[n - 5] ^= 1;
        assert!(parse_object_index("k", &bad).is_err());
        let mut bad = obj.clone();
        bad[idx.frames.last().unwrap().offset as usize + idx.frames.last().unwrap().stored_len as usize + 3] ^= 1;
        assert!(parse_object_index("k", &bad).is_err());
        assert!(parse_object_index("k", &obj[..30]).is_err());
    }

    #[test]
    fn frames_for_ranges() {
        let obj = encode(&vec![1u8; 200_000], 65536, Codec::Lz4);
        let idx = parse_object_index("k", &obj).unwrap();
        assert_eq!(idx.frames_for(0, 4096), Some((0, 0)));
        assert_eq!(idx.frames_for(65536 - 1, 2), Some((0, 1)));
        assert_eq!(idx.frames_for(196608, 3392), Some((3, 3)));
        assert_eq!(idx.frames_for(196608, 3393), None);
    }
}
