//! Live clusters of a volume's SCOs, as bitmaps counted across every map (current and
//! snapshots), and the runs of live clusters scrub copies out of a victim.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::location::Location;
use super::map::ClusterMap;

/// Largest run of clusters in one relocation record.
pub(crate) const CHUNK_CLUSTERS: u32 = 256;

/// Live clusters of each SCO as bitmaps (bit i = cluster index i is referenced).
///
/// This walks every mapped cluster of every map (the scrubber does it each
/// `check_interval_ms`), so the per-cluster step is kept to a bit set: bitmaps live in a
/// vector and the last SCO hit is remembered, which spares the hash lookup for runs of
/// clusters in the same SCO (what sequential writes and scrub copies leave behind).
pub(crate) fn live_bitmaps(maps: &[&ClusterMap], sco_clusters: u32) -> HashMap<u64, Vec<u64>> {
    let words = (sco_clusters as usize).div_ceil(64);
    let mut slots: HashMap<u64, usize, BuildHasherDefault<ScoHasher>> = HashMap::default();
    let mut bitmaps: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut last: Option<(u64, usize)> = None;
    for m in maps {
        m.for_each_mapped(|_, e| {
            let Some(l) = Location::unpack(e) else { return };
            let slot = match last {
                Some((sco, slot)) if sco == l.sco => slot,
                _ => {
                    let slot = *slots.entry(l.sco).or_insert_with(|| {
                        bitmaps.push((l.sco, vec![0u64; words]));
                        bitmaps.len() - 1
                    });
                    last = Some((l.sco, slot));
                    slot
                }
            };
            if let Some(w) = bitmaps[slot].1.get_mut(l.index as usize / 64) {
                *w |= 1 << (l.index % 64);
            }
        });
    }
    bitmaps.into_iter().collect()
}

/// Hashes an SCO number with one multiplication (Fibonacci hashing). The live-data walk
/// looks up an SCO per cluster under random overwrites, and the default SipHash was most
/// of the walk's time; SCO numbers are not attacker-chosen.
#[derive(Default)]
struct ScoHasher(u64);

impl Hasher for ScoHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) fn popcount(b: &[u64]) -> u64 {
    b.iter().map(|w| w.count_ones() as u64).sum()
}

/// Runs `(index, count)` of set bits, each at most `CHUNK_CLUSTERS` long.
pub(crate) fn runs(bitmap: &[u64], limit: u32) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut i = 0u32;
    while i < limit {
        if bitmap[i as usize / 64] & (1 << (i % 64)) == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < limit && i - start < CHUNK_CLUSTERS && bitmap[i as usize / 64] & (1 << (i % 64)) != 0 {
            i += 1;
        }
        out.push((start, i - start));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_and_cap() {
        let mut b = vec![0u64; 8];
        for i in [0u32, 1, 2, 5, 63, 64, 65] {
            b[i as usize / 64] |= 1 << (i % 64);
        }
        for i in 100..400u32 {
            b[i as usize / 64] |= 1 << (i % 64);
        }
        assert_eq!(runs(&b, 512), vec![(0, 3), (5, 1), (63, 3), (100, 256), (356, 44)]);
        assert_eq!(popcount(&b), 7 + 300);
    }
}
