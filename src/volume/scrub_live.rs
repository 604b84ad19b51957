//! Live clusters of a volume's SCOs across every map (current and snapshots): counted by
//! the current map itself when it is the only one, else from bitmaps a walk of every map
//! sets; and the runs of live clusters scrub copies out of a victim.

use std::collections::HashMap;

use super::location::{Location, ScoMap};
use super::map::ClusterMap;

/// Largest run of clusters in one relocation record.
const CHUNK_CLUSTERS: u32 = 256;

/// Live clusters of each SCO as bitmaps (bit i = cluster index i is referenced).
///
/// This walks every mapped cluster of every map (for a volume with snapshots, at each of
/// the scrubber's looks), so the per-cluster step is kept to a bit set: bitmaps live in a
/// vector and the last SCO hit is remembered, which spares the hash lookup for runs of
/// clusters in the same SCO (what sequential writes and scrub copies leave behind).
fn live_bitmaps(maps: &[ClusterMap], sco_clusters: u32) -> HashMap<u64, Vec<u64>> {
    let words = (sco_clusters as usize).div_ceil(64);
    let mut slots: ScoMap<usize> = ScoMap::default();
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

/// Live clusters of each SCO across `maps` (current first, then snapshots). One map
/// counts its own entries as they change (no walk; the usual volume without
/// snapshots); with snapshots a location several maps hold counts once, so they are
/// walked.
pub(crate) fn live_counts(maps: &[ClusterMap], sco_clusters: u32) -> ScoMap<u64> {
    match maps {
        [only] => only.per_sco().collect(),
        _ => live_bitmaps(maps, sco_clusters).into_iter().map(|(s, b)| (s, popcount(&b))).collect(),
    }
}

fn popcount(b: &[u64]) -> u64 {
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

    /// A lone map's own counts, and the walk over a map and its snapshot (a location
    /// both hold counted once), give the live clusters a plain count of distinct
    /// locations gives.
    #[test]
    fn live_counts_count_each_location_once() {
        use std::collections::{BTreeMap, BTreeSet};
        let distinct = |maps: &[ClusterMap]| {
            let mut seen = BTreeSet::new();
            for m in maps {
                m.for_each_mapped(|_, e| {
                    if let Some(l) = Location::unpack(e) {
                        seen.insert(l);
                    }
                });
            }
            let mut per: BTreeMap<u64, u64> = BTreeMap::new();
            for l in seen {
                *per.entry(l.sco).or_default() += 1;
            }
            per
        };
        let sorted = |c: ScoMap<u64>| c.into_iter().collect::<BTreeMap<_, _>>();
        let mut m = ClusterMap::new(4096);
        for c in 0..4096u64 {
            m.set(c, Location::new(1 + c / 1000, (c % 1000) as u32).pack());
        }
        let snap = m.clone();
        for c in (0..4096u64).step_by(3) {
            m.set(c, Location::new(9, (c / 3) as u32).pack());
        }
        assert_eq!(sorted(live_counts(std::slice::from_ref(&m), 2048)), distinct(std::slice::from_ref(&m)));
        let both = [m, snap];
        assert_eq!(sorted(live_counts(&both, 2048)), distinct(&both));
        assert_eq!(live_counts(&both, 2048)[&1], 1000, "SCO 1 is whole in the snapshot");
    }

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
