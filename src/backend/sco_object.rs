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
//!
//! An encrypted volume's SCOs are sealed (see `crypto::cipher` for the key and nonce
//! scheme): each stored frame (after compression) is AES-256-GCM ciphertext + 16-byte
//! tag under the object's own key with the frame number as nonce, the index is sealed
//! too (its AAD is the footer), and the footer names the volume key and the salt:
//!
//! ```text
//! [sealed frame 0]...[sealed frame n-1][sealed index: n x 21 + 16][footer: 60 bytes]
//! footer: magic "LDSCOe01" | raw_len u64 | frame_size u32 | n_frames u32 |
//!         index_offset u64 | key id [8] | salt [16] | crc32c(footer[0..56]) u32
//! ```
//!
//! A damaged or swapped frame fails authentication: that frame reads as an IO error.

use std::sync::Arc;

use crate::crypto::cipher::{NonceKind, ObjectCipher, SALT_LEN, TAG_LEN};
use crate::crypto::KeyId;
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"LDSCOv01";
pub const FOOTER_LEN: usize = 40;
pub const SEALED_MAGIC: &[u8; 8] = b"LDSCOe01";
pub const SEALED_FOOTER_LEN: usize = 60;
pub const INDEX_ENTRY_LEN: usize = 21;
/// Largest frame an object may declare, the most `upload.frame_size` allows: a corrupt
/// footer must not make a reader allocate gigabytes for one frame (the fuzzer found a
/// 134-byte object declaring a 4 GiB frame).
pub const MAX_FRAME_SIZE: u32 = 4 << 20;

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
#[derive(Debug, Clone)]
pub struct ScoIndex {
    pub raw_len: u64,
    pub frame_size: u32,
    pub frames: Vec<FrameEntry>,
    /// The object's cipher when it is sealed.
    pub cipher: Option<Arc<ObjectCipher>>,
}

/// The most bytes [`encode_into`] writes for `raw_len` bytes of SCO data.
pub fn max_encoded_len(raw_len: usize, frame_size: usize) -> usize {
    let n_frames = raw_len.div_ceil(frame_size);
    // Every frame is stored in at most its raw size, but LZ4 needs room for its worst
    // case while compressing the last one.
    let slack = lz4_flex::block::get_maximum_output_size(frame_size.min(raw_len.max(1)));
    // Sealed: a tag per frame and one for the index, a longer footer.
    raw_len + slack + n_frames * (INDEX_ENTRY_LEN + TAG_LEN) + TAG_LEN + SEALED_FOOTER_LEN
}

/// Encode raw SCO data into the object format.
pub fn encode(raw: &[u8], frame_size: usize, codec: Codec) -> Vec<u8> {
    encode_sealed(raw, frame_size, codec, None)
}

/// Encode raw SCO data, sealed with `seal` when given.
pub fn encode_sealed(raw: &[u8], frame_size: usize, codec: Codec, seal: Option<&ObjectCipher>) -> Vec<u8> {
    let mut out = vec![0u8; max_encoded_len(raw.len(), frame_size)];
    let n = encode_into(raw, frame_size, codec, seal, &mut out);
    out.truncate(n);
    out
}

/// Whether an encoded object is sealed (ends with the sealed footer's magic).
pub fn is_sealed(object: &[u8]) -> bool {
    object.len() >= SEALED_FOOTER_LEN
        && &object[object.len() - SEALED_FOOTER_LEN..object.len() - SEALED_FOOTER_LEN + 8] == SEALED_MAGIC
}

/// Encode raw SCO data into `out` (at least [`max_encoded_len`] bytes), compressing
/// each frame and then, with `seal`, encrypting it; returns the object's length.
/// Allocates only the index (a few KiB).
pub fn encode_into(raw: &[u8], frame_size: usize, codec: Codec, seal: Option<&ObjectCipher>, out: &mut [u8]) -> usize {
    assert!(out.len() >= max_encoded_len(raw.len(), frame_size), "encode_into: output buffer too small");
    let n_frames = raw.len().div_ceil(frame_size);
    let mut index = Vec::with_capacity(n_frames * INDEX_ENTRY_LEN);
    let mut at = 0usize;
    for (i, chunk) in raw.chunks(frame_size).enumerate() {
        let offset = at as u64;
        let crc = crate::crc::crc32c(chunk);
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
        if let Some(c) = seal {
            let tag = c.seal(NonceKind::Frame, i as u64, &[], &mut out[offset as usize..at]);
            out[at..at + TAG_LEN].copy_from_slice(&tag);
            at += TAG_LEN;
        }
        let stored_len = at as u64 - offset;
        push_index_entry(&mut index, offset, stored_len as u32, chunk.len() as u32, used, crc);
    }
    let tail = match seal {
        Some(c) => sealed_index_and_footer(index, raw.len() as u64, frame_size, at as u64, c),
        None => index_and_footer(index, raw.len() as u64, frame_size, at as u64),
    };
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
    let index_crc = crate::crc::crc32c(&index);
    let mut footer = [0u8; FOOTER_LEN];
    footer[..8].copy_from_slice(MAGIC);
    footer[8..16].copy_from_slice(&raw_len.to_le_bytes());
    footer[16..20].copy_from_slice(&(frame_size as u32).to_le_bytes());
    footer[20..24].copy_from_slice(&(n_frames as u32).to_le_bytes());
    footer[24..32].copy_from_slice(&index_offset.to_le_bytes());
    footer[32..36].copy_from_slice(&index_crc.to_le_bytes());
    let fcrc = crate::crc::crc32c(&footer[..36]);
    footer[36..40].copy_from_slice(&fcrc.to_le_bytes());
    index.extend_from_slice(&footer);
    index
}

/// The sealed index followed by the sealed footer (whose first 56 bytes are the
/// index's AAD).
fn sealed_index_and_footer(
    mut index: Vec<u8>,
    raw_len: u64,
    frame_size: usize,
    index_offset: u64,
    c: &ObjectCipher,
) -> Vec<u8> {
    let n_frames = index.len() / INDEX_ENTRY_LEN;
    let mut footer = [0u8; SEALED_FOOTER_LEN];
    footer[..8].copy_from_slice(SEALED_MAGIC);
    footer[8..16].copy_from_slice(&raw_len.to_le_bytes());
    footer[16..20].copy_from_slice(&(frame_size as u32).to_le_bytes());
    footer[20..24].copy_from_slice(&(n_frames as u32).to_le_bytes());
    footer[24..32].copy_from_slice(&index_offset.to_le_bytes());
    footer[32..40].copy_from_slice(&c.key_id.0);
    footer[40..56].copy_from_slice(&c.salt);
    let fcrc = crate::crc::crc32c(&footer[..56]);
    footer[56..60].copy_from_slice(&fcrc.to_le_bytes());
    let tag = c.seal(NonceKind::Index, 0, &footer[..56], &mut index);
    index.extend_from_slice(&tag);
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
    /// Set for sealed objects.
    pub sealed: Option<SealInfo>,
}

/// What a sealed footer says about the object's key.
#[derive(Debug, Clone, Copy)]
pub struct SealInfo {
    pub key_id: KeyId,
    pub salt: [u8; SALT_LEN],
    /// The footer's first 56 bytes: the AAD of the sealed index.
    pub aad: [u8; 56],
}

impl Footer {
    /// Stored bytes of the index (with its tag when sealed).
    pub fn index_len(&self) -> u64 {
        self.n_frames as u64 * INDEX_ENTRY_LEN as u64 + if self.sealed.is_some() { TAG_LEN as u64 } else { 0 }
    }

    pub fn footer_len(&self) -> u64 {
        if self.sealed.is_some() {
            SEALED_FOOTER_LEN as u64
        } else {
            FOOTER_LEN as u64
        }
    }
}

fn parse_sealed_footer(key: &str, f: &[u8], object_size: u64) -> Result<Footer> {
    if crate::crc::crc32c(&f[..56]) != u32_at(f, 56) {
        return Err(corrupt(key, "SCO footer checksum mismatch"));
    }
    let footer = Footer {
        raw_len: u64_at(f, 8),
        frame_size: u32_at(f, 16),
        n_frames: u32_at(f, 20),
        index_offset: u64_at(f, 24),
        index_crc: 0,
        sealed: Some(SealInfo {
            key_id: KeyId(f[32..40].try_into().expect("8 bytes")),
            salt: f[40..56].try_into().expect("16 bytes"),
            aad: f[..56].try_into().expect("56 bytes"),
        }),
    };
    check_footer(key, footer, object_size)
}

fn check_footer(key: &str, footer: Footer, object_size: u64) -> Result<Footer> {
    let expect_frames = footer.raw_len.div_ceil(footer.frame_size.max(1) as u64);
    if footer.frame_size == 0
        || footer.frame_size > MAX_FRAME_SIZE
        || footer.n_frames as u64 != expect_frames
        || footer.index_offset.checked_add(footer.index_len() + footer.footer_len()) != Some(object_size)
    {
        return Err(corrupt(key, "SCO footer fields are inconsistent"));
    }
    Ok(footer)
}

/// Parse and check the footer (the last FOOTER_LEN bytes of `tail`) of an object of
/// `object_size` bytes.
pub fn parse_footer(key: &str, tail: &[u8], object_size: u64) -> Result<Footer> {
    if tail.len() < FOOTER_LEN {
        return Err(corrupt(key, format!("object too short ({} bytes) for an SCO footer", object_size)));
    }
    if is_sealed(tail) {
        return parse_sealed_footer(key, &tail[tail.len() - SEALED_FOOTER_LEN..], object_size);
    }
    let f = &tail[tail.len() - FOOTER_LEN..];
    if &f[0..8] != MAGIC {
        return Err(corrupt(key, "bad SCO footer magic"));
    }
    if crate::crc::crc32c(&f[..36]) != u32_at(f, 36) {
        return Err(corrupt(key, "SCO footer checksum mismatch"));
    }
    let footer = Footer {
        raw_len: u64_at(f, 8),
        frame_size: u32_at(f, 16),
        n_frames: u32_at(f, 20),
        index_offset: u64_at(f, 24),
        index_crc: u32_at(f, 32),
        sealed: None,
    };
    check_footer(key, footer, object_size)
}

/// Parse and check the index bytes described by `footer`; a sealed index is opened
/// with `cipher` (the object's, derived from the key the footer names).
pub fn parse_index(key: &str, footer: &Footer, index: &[u8], cipher: Option<Arc<ObjectCipher>>) -> Result<ScoIndex> {
    if index.len() as u64 != footer.index_len() {
        return Err(corrupt(key, "SCO index has the wrong length"));
    }
    let opened;
    let (index, cipher) = match (&footer.sealed, cipher) {
        (Some(seal), Some(c)) => {
            let mut buf = index.to_vec();
            if !c.open(NonceKind::Index, 0, &seal.aad, &mut buf) {
                return Err(corrupt(key, "SCO index fails authentication (damaged, or not this key)"));
            }
            buf.truncate(buf.len() - TAG_LEN);
            opened = buf;
            (&opened[..], Some(c))
        }
        (Some(_), None) => return Err(corrupt(key, "sealed SCO read without its key")),
        (None, _) => {
            if crate::crc::crc32c(index) != footer.index_crc {
                return Err(corrupt(key, "SCO index checksum mismatch"));
            }
            (index, None)
        }
    };
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
        let tag = if cipher.is_some() { TAG_LEN as u32 } else { 0 };
        if entry.stored_len < tag {
            return Err(corrupt(key, format!("frame {i}: index entry is inconsistent")));
        }
        expect_off += entry.stored_len as u64;
        frames.push(entry);
    }
    if expect_off != footer.index_offset {
        return Err(corrupt(key, "SCO frames do not end at the index"));
    }
    Ok(ScoIndex { raw_len: footer.raw_len, frame_size: footer.frame_size, frames, cipher })
}

/// Parse a whole plain object (footer + index) held in memory.
pub fn parse_object_index(key: &str, object: &[u8]) -> Result<ScoIndex> {
    parse_object_index_with(key, object, None)
}

/// Parse a whole object held in memory; a sealed one needs its `cipher`.
pub fn parse_object_index_with(key: &str, object: &[u8], cipher: Option<Arc<ObjectCipher>>) -> Result<ScoIndex> {
    let footer = parse_footer(key, object, object.len() as u64)?;
    let start = footer.index_offset as usize;
    parse_index(key, &footer, &object[start..start + footer.index_len() as usize], cipher)
}

impl ScoIndex {
    /// Whether the object holds the SCO's raw bytes at their raw offsets (every frame
    /// stored raw, unsealed, back to back from byte 0), as an adopted SCO file does: it
    /// can then be read in place like the SCO file it was.
    pub fn raw_in_place(&self) -> bool {
        self.cipher.is_none()
            && self.frames.iter().enumerate().all(|(i, f)| {
                f.codec == Codec::None
                    && f.offset == i as u64 * self.frame_size as u64
                    && f.stored_len == f.raw_len
                    && (f.raw_len == self.frame_size || i + 1 == self.frames.len())
            })
            && self.frames.len() as u64 == self.raw_len.div_ceil(self.frame_size.max(1) as u64)
    }

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
    /// verifying its checksum; a sealed frame is first authenticated and decrypted in
    /// place (so `stored` is changed).
    pub fn decode_frame(&self, key: &str, i: usize, stored: &mut [u8], out: &mut [u8]) -> Result<()> {
        let e = &self.frames[i];
        if stored.len() != e.stored_len as usize || out.len() != e.raw_len as usize {
            return Err(corrupt(key, format!("frame {i}: short read")));
        }
        let stored: &[u8] = match &self.cipher {
            Some(c) => {
                if !c.open(NonceKind::Frame, i as u64, &[], stored) {
                    return Err(corrupt(
                        key,
                        format!(
                            "frame {i}: fails authentication (raw bytes {}..{})",
                            i as u64 * self.frame_size as u64,
                            i as u64 * self.frame_size as u64 + e.raw_len as u64
                        ),
                    ));
                }
                &stored[..stored.len() - TAG_LEN]
            }
            None => stored,
        };
        match e.codec {
            // A hostile index can claim a stored length other than the raw one.
            Codec::None if stored.len() != out.len() => {
                return Err(corrupt(
                    key,
                    format!("frame {i}: {} bytes stored for {} raw, uncompressed", stored.len(), out.len()),
                ));
            }
            Codec::None => out.copy_from_slice(stored),
            Codec::Lz4 => {
                let n = lz4_flex::block::decompress_into(stored, out)
                    .map_err(|err| corrupt(key, format!("frame {i}: cannot decompress: {err}")))?;
                if n != out.len() {
                    return Err(corrupt(key, format!("frame {i}: decompressed to {n} bytes, want {}", out.len())));
                }
            }
        }
        if crate::crc::crc32c(out) != e.crc {
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
                idx.decode_frame(
                    "k",
                    i,
                    &mut obj[e.offset as usize..(e.offset + e.stored_len as u64) as usize].to_vec(),
                    &mut out,
                )
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
        let crcs: Vec<u32> = raw.chunks(65536).map(crate::crc::crc32c).collect();
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
        let r = idx.decode_frame(
            "k",
            3,
            &mut obj[e.offset as usize..(e.offset + e.stored_len as u64) as usize].to_vec(),
            &mut out,
        );
        assert!(matches!(r, Err(Error::Corrupt { .. })));
        let e2 = idx.frames[2];
        let mut out2 = vec![0u8; e2.raw_len as usize];
        idx.decode_frame(
            "k",
            2,
            &mut obj[e2.offset as usize..(e2.offset + e2.stored_len as u64) as usize].to_vec(),
            &mut out2,
        )
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
    fn sealed_round_trip_and_tamper() {
        use crate::crypto::{cipher, VolumeKey};
        let raw = sample();
        let k = VolumeKey::from_bytes([3u8; 32]);
        let c = Arc::new(ObjectCipher::derive(&k, cipher::random_salt(), "v/g000001/sco/1"));
        let obj = encode_sealed(&raw, 65536, Codec::Lz4, Some(&c));
        assert!(is_sealed(&obj));
        let lz = lz4_flex::block::compress(&raw[100_000..165_536]);
        for hay in [&raw[150_000..150_064], &lz[100..164]] {
            assert!(!obj.windows(64).any(|w| w == hay), "plaintext or its compression in a sealed SCO");
        }
        assert!(parse_object_index("k", &obj).is_err(), "a sealed SCO needs its key");
        let other = Arc::new(ObjectCipher::derive(&k, c.salt, "v/g000001/sco/2"));
        assert!(parse_object_index_with("v/g000001/sco/1", &obj, Some(other)).is_err(), "bound to its name");
        let idx = parse_object_index_with("k", &obj, Some(c.clone())).unwrap();
        let mut bad = obj.clone();
        bad[idx.frames[3].offset as usize + 7] ^= 4;
        for i in 0..idx.frames.len() {
            let e = idx.frames[i];
            let r = e.offset as usize..(e.offset + e.stored_len as u64) as usize;
            let mut out = vec![0u8; e.raw_len as usize];
            idx.decode_frame("k", i, &mut obj[r.clone()].to_vec(), &mut out).unwrap();
            assert_eq!(&out[..], &raw[i * 65536..i * 65536 + e.raw_len as usize]);
            let damaged = idx.decode_frame("k", i, &mut bad[r].to_vec(), &mut out);
            assert_eq!(damaged.is_err(), i == 3, "only the flipped frame fails");
        }
        // Swapped frames fail too (the nonce is the frame number).
        let (a, b) = (idx.frames[0], idx.frames[1]);
        let mut out = vec![0u8; 65536];
        let mut f1 = obj[a.offset as usize..(a.offset + a.stored_len as u64) as usize].to_vec();
        assert!(a.stored_len != b.stored_len || idx.decode_frame("k", 1, &mut f1, &mut out).is_err());
    }

    #[test]
    fn a_footer_declaring_a_frame_above_the_largest_is_refused() {
        // 8 KiB of data as one frame, the footer saying frames are MAX_FRAME_SIZE + 4 KiB.
        let raw = vec![7u8; 8192];
        let crcs = [crate::crc::crc32c(&raw)];
        for (frame, ok) in [(MAX_FRAME_SIZE as usize, true), (MAX_FRAME_SIZE as usize + 4096, false)] {
            let mut obj = raw.clone();
            obj.extend_from_slice(&raw_tail(raw.len() as u64, frame, &crcs));
            assert_eq!(parse_object_index("k", &obj).is_ok(), ok, "frame size {frame}");
        }
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
