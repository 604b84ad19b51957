//! Which clusters point into the SCOs one scrub pass rewrites: found in one walk over every
//! map (current and snapshots), looked up per moved cluster when its map entries are
//! rewritten. A pass walks every mapped cluster of the volume (262 k for a full 1 GiB
//! volume), so the walk's test is a scan of a few victim numbers, not a hash, and the
//! result a table per victim indexed by cluster index (the usual single holder) with a
//! small overflow for locations several clusters share.

use std::collections::HashMap;

use super::location::Location;
use super::map::ClusterMap;
use super::scrub_live::runs;

/// No cluster holds this location.
const NONE: u64 = u64::MAX;

pub(crate) struct Holders {
    victims: Vec<u64>,
    /// Per victim, per cluster index: the first cluster found pointing there.
    first: Vec<Vec<u64>>,
    /// Further distinct clusters pointing at the same location (packed).
    more: HashMap<u64, Vec<u64>>,
}

impl Holders {
    /// Walk `maps` for entries pointing into `victims` (SCOs of `sco_clusters` clusters).
    pub(crate) fn find(maps: &[ClusterMap], victims: &[u64], sco_clusters: u32) -> Holders {
        let mut h = Holders {
            victims: victims.to_vec(),
            first: victims.iter().map(|_| vec![NONE; sco_clusters as usize]).collect(),
            more: HashMap::new(),
        };
        if victims.is_empty() {
            return h;
        }
        for m in maps {
            m.for_each_mapped(|c, e| {
                let Some(l) = Location::unpack(e) else { return };
                let Some(v) = h.victims.iter().position(|&s| s == l.sco) else { return };
                let Some(slot) = h.first[v].get_mut(l.index as usize) else { return };
                if *slot == NONE {
                    *slot = c;
                } else if *slot != c {
                    let more = h.more.entry(e).or_default();
                    if !more.contains(&c) {
                        more.push(c);
                    }
                }
            });
        }
        h
    }

    /// Runs `(index, count)` of the clusters of victim `sco` some map holds, below
    /// `total` (its live data; see [`runs`]).
    pub(crate) fn live_runs(&self, sco: u64, total: u32) -> Vec<(u32, u32)> {
        let Some(v) = self.victims.iter().position(|&s| s == sco) else { return Vec::new() };
        let mut bitmap = vec![0u64; self.first[v].len().div_ceil(64)];
        for (i, _) in self.first[v].iter().enumerate().filter(|(_, &c)| c != NONE) {
            bitmap[i / 64] |= 1 << (i % 64);
        }
        runs(&bitmap, total.min(self.first[v].len() as u32))
    }

    /// Call `f` with every cluster that pointed at `loc`.
    pub(crate) fn for_each(&self, loc: Location, mut f: impl FnMut(u64)) {
        let Some(v) = self.victims.iter().position(|&s| s == loc.sco) else { return };
        match self.first[v].get(loc.index as usize) {
            Some(&c) if c != NONE => f(c),
            _ => return,
        }
        for &c in self.more.get(&loc.pack()).map(|v| v.as_slice()).unwrap_or(&[]) {
            f(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_distinct_holder_once() {
        let mut a = ClusterMap::new(64);
        let mut b = ClusterMap::new(64);
        a.set(1, Location::new(7, 3).pack());
        a.set(2, Location::new(8, 0).pack());
        a.set(3, Location::new(9, 1).pack()); // not a victim
        b.set(1, Location::new(7, 3).pack()); // same cluster in a snapshot: once
        b.set(5, Location::new(7, 3).pack()); // another cluster, same location
        let h = Holders::find(&[a, b], &[7, 8], 16);
        let got = |l: Location| {
            let mut v = Vec::new();
            h.for_each(l, |c| v.push(c));
            v
        };
        assert_eq!(got(Location::new(7, 3)), vec![1, 5]);
        assert_eq!(got(Location::new(8, 0)), vec![2]);
        assert!(got(Location::new(9, 1)).is_empty());
        assert!(got(Location::new(7, 4)).is_empty());
        assert_eq!(h.live_runs(7, 16), vec![(3, 1)]);
        assert_eq!(h.live_runs(8, 16), vec![(0, 1)]);
        assert!(h.live_runs(9, 16).is_empty());
    }
}
