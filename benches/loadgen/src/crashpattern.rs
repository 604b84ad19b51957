//! The power-loss workload's data pattern and journal format, shared by the writer
//! (`logdisk-loadgen --journal`) and the checker (`logwrites-replay`, which includes this
//! file by path): no dependencies beyond std.
//!
//! Every 512-byte sector a write carries names itself: magic, the write's generation (a
//! number unique to each write, given in submission order), the sector and the seed, then
//! 60 words derived from the four. A sector read back is either all zeroes, a valid
//! sector of one generation at this very sector, or garbage.
//!
//! Journal lines (text, in the order the client saw events):
//!   `W <gen> <sector> <sectors>`  a write is about to be submitted
//!   `A <gen>`                     the write completed OK
//!   `X <gen>`                     the write completed with an error status
//!   `F <id>`                      flush `id` is about to be submitted
//!   `C <id>`                      flush `id` completed OK (covers every `A` above its `F`)
//!   `M <id>`                      mark `f<id>` was added to the dm-log-writes log
//!   `E`                           end of the run

pub const SECTOR: usize = 512;
pub const MAGIC: u64 = u64::from_le_bytes(*b"LDPLWRIT");

#[inline]
fn word(seed: u64, gen: u64, sector: u64, i: u64) -> u64 {
    let mut z = seed
        ^ gen.wrapping_mul(0xd6e8_feb8_6659_fd93)
        ^ sector.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ i.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fill `buf` (a multiple of 512 bytes) as write `gen` at `first_sector`.
pub fn fill(buf: &mut [u8], seed: u64, gen: u64, first_sector: u64) {
    for (k, s) in buf.chunks_exact_mut(SECTOR).enumerate() {
        let sector = first_sector + k as u64;
        let head = [MAGIC, gen, sector, seed];
        for (i, w) in s.chunks_exact_mut(8).enumerate() {
            let v = if i < 4 { head[i] } else { word(seed, gen, sector, i as u64) };
            w.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// What one sector read back holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sector {
    Zero,
    /// A complete sector of write `gen`, at the right place.
    Gen(u64),
    /// Anything else: bytes no write put at this sector.
    Garbage,
}

pub fn classify(s: &[u8], seed: u64, sector: u64) -> Sector {
    if s.iter().all(|b| *b == 0) {
        return Sector::Zero;
    }
    let w = |i: usize| u64::from_le_bytes(s[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    if w(0) != MAGIC || w(2) != sector || w(3) != seed {
        return Sector::Garbage;
    }
    let gen = w(1);
    if (4..SECTOR / 8).all(|i| w(i) == word(seed, gen, sector, i as u64)) {
        Sector::Gen(gen)
    } else {
        Sector::Garbage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_classify() {
        let mut b = vec![0u8; 4096];
        assert_eq!(classify(&b[..512], 1, 8), Sector::Zero);
        fill(&mut b, 1, 42, 8);
        assert_eq!(classify(&b[512..1024], 1, 9), Sector::Gen(42));
        assert_eq!(classify(&b[512..1024], 1, 10), Sector::Garbage);
        b[700] ^= 1;
        assert_eq!(classify(&b[512..1024], 1, 9), Sector::Garbage);
    }
}
