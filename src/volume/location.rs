//! Where a cluster's data lives, packed in 8 bytes: SCO number (40 bits) and cluster
//! index inside that SCO (24 bits). A map entry is a location or one of two markers.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Map entry: never written here (a clone falls through to its parent).
pub const UNMAPPED: u64 = 0;
/// Map entry: explicitly zero (discarded or zero-written); does not fall through.
pub const ZERO: u64 = 1;

const INDEX_BITS: u32 = 24;
/// Largest number of clusters one SCO may hold.
pub const MAX_CLUSTERS_PER_SCO: u64 = 1 << INDEX_BITS;
/// Largest SCO number.
pub const MAX_SCO: u64 = (1 << 40) - 1;

/// A cluster's location: `(sco, index)`; SCO numbers start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub sco: u64,
    pub index: u32,
}

impl Location {
    pub fn new(sco: u64, index: u32) -> Location {
        debug_assert!((1..=MAX_SCO).contains(&sco) && (index as u64) < MAX_CLUSTERS_PER_SCO);
        Location { sco, index }
    }

    pub fn pack(self) -> u64 {
        (self.sco << INDEX_BITS) | self.index as u64
    }

    /// Decode a map entry; `None` for UNMAPPED and ZERO.
    pub fn unpack(entry: u64) -> Option<Location> {
        if entry <= ZERO {
            return None;
        }
        Some(Location { sco: entry >> INDEX_BITS, index: (entry & (MAX_CLUSTERS_PER_SCO - 1)) as u32 })
    }

    /// The location `n` clusters further in the same SCO.
    pub fn advance(self, n: u32) -> Location {
        Location { sco: self.sco, index: self.index + n }
    }
}

/// Hashes an SCO number with one multiplication (Fibonacci hashing). A map's per-SCO counts
/// and the live-data walk look up an SCO per cluster changed or visited, and the default
/// SipHash was most of the walk's time; SCO numbers are not attacker-chosen.
#[derive(Default)]
pub struct ScoHasher(u64);

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

/// A hash map keyed by SCO number.
pub type ScoMap<V> = HashMap<u64, V, BuildHasherDefault<ScoHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack() {
        let l = Location::new(12345, 8191);
        assert_eq!(Location::unpack(l.pack()), Some(l));
        assert!(l.pack() > ZERO);
        assert_eq!(Location::unpack(UNMAPPED), None);
        assert_eq!(Location::unpack(ZERO), None);
        let m = Location::new(MAX_SCO, (MAX_CLUSTERS_PER_SCO - 1) as u32);
        assert_eq!(Location::unpack(m.pack()), Some(m));
    }
}
