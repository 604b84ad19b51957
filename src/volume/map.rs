//! The cluster map: cluster number → map entry (see `location`), in memory.
//!
//! Two levels of copy-on-write pages: a top vector of directories, each directory holds
//! `DIR_PAGES` pages of `PAGE_ENTRIES` entries (8 bytes each). Pages exist only where
//! the volume was written. Cloning a map is O(top size) and shares every page; the
//! first write to a shared page copies just that page (`Arc::make_mut`). Snapshots and
//! clones share pages this way.

use std::sync::Arc;

use super::location::{Location, ScoMap, UNMAPPED};

pub const PAGE_ENTRIES: usize = 128;
pub const DIR_PAGES: usize = 512;
const DIR_CLUSTERS: u64 = (PAGE_ENTRIES * DIR_PAGES) as u64;

#[derive(Clone)]
struct Page {
    entries: [u64; PAGE_ENTRIES],
    used: u32,
}

#[derive(Clone)]
struct Dir {
    pages: [Option<Arc<Page>>; DIR_PAGES],
}

/// Map of one volume (or one snapshot of it).
#[derive(Clone)]
pub struct ClusterMap {
    dirs: Vec<Option<Arc<Dir>>>,
    clusters: u64,
    mapped: u64,
    /// Entries pointing into each SCO, kept by every change: how much of an SCO this map
    /// holds, known without a walk (the scrubber's accounting looks at it every 50 ms
    /// under writes; walking a 1 GiB volume's 262 k entries each time was ~6 % of the
    /// daemon's CPU under random writes).
    per_sco: ScoMap<u32>,
}

/// Count `old` out of and `new` into `per_sco`.
fn recount(per_sco: &mut ScoMap<u32>, old: u64, new: u64) {
    if let Some(l) = Location::unpack(old) {
        if let std::collections::hash_map::Entry::Occupied(mut o) = per_sco.entry(l.sco) {
            *o.get_mut() -= 1;
            if *o.get() == 0 {
                o.remove();
            }
        }
    }
    if let Some(l) = Location::unpack(new) {
        *per_sco.entry(l.sco).or_default() += 1;
    }
}

impl ClusterMap {
    pub fn new(clusters: u64) -> ClusterMap {
        let n = clusters.div_ceil(DIR_CLUSTERS) as usize;
        ClusterMap { dirs: vec![None; n], clusters, mapped: 0, per_sco: ScoMap::default() }
    }

    pub fn clusters(&self) -> u64 {
        self.clusters
    }

    /// Number of entries that are not UNMAPPED.
    pub fn mapped(&self) -> u64 {
        self.mapped
    }

    /// Entries pointing into SCO `sco`.
    pub fn held_in(&self, sco: u64) -> u64 {
        self.per_sco.get(&sco).copied().unwrap_or(0) as u64
    }

    /// Entries pointing into each SCO this map references.
    pub fn per_sco(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.per_sco.iter().map(|(&s, &n)| (s, n as u64))
    }

    fn split(cluster: u64) -> (usize, usize, usize) {
        let d = (cluster / DIR_CLUSTERS) as usize;
        let r = (cluster % DIR_CLUSTERS) as usize;
        (d, r / PAGE_ENTRIES, r % PAGE_ENTRIES)
    }

    /// The entry of `cluster`; UNMAPPED beyond the map's end (a snapshot or parent map
    /// smaller than the volume that reads through it).
    pub fn get(&self, cluster: u64) -> u64 {
        if cluster >= self.clusters {
            return UNMAPPED;
        }
        let (d, p, e) = Self::split(cluster);
        match &self.dirs[d] {
            Some(dir) => match &dir.pages[p] {
                Some(page) => page.entries[e],
                None => UNMAPPED,
            },
            None => UNMAPPED,
        }
    }

    /// Grow or shrink to `clusters` (entries beyond a new, smaller end are dropped).
    pub fn resize(&mut self, clusters: u64) {
        if clusters < self.clusters {
            self.fill(clusters, self.clusters - clusters, UNMAPPED);
        }
        self.dirs.resize(clusters.div_ceil(DIR_CLUSTERS) as usize, None);
        self.clusters = clusters;
    }

    /// Set an entry; returns the old one.
    pub fn set(&mut self, cluster: u64, entry: u64) -> u64 {
        debug_assert!(cluster < self.clusters);
        let (d, p, e) = Self::split(cluster);
        if entry == UNMAPPED {
            // Do not allocate pages to store "unmapped".
            match &self.dirs[d] {
                Some(dir) if dir.pages[p].is_some() => {}
                _ => return UNMAPPED,
            }
        }
        let dir =
            Arc::make_mut(self.dirs[d].get_or_insert_with(|| Arc::new(Dir { pages: std::array::from_fn(|_| None) })));
        let slot = &mut dir.pages[p];
        let page =
            Arc::make_mut(slot.get_or_insert_with(|| Arc::new(Page { entries: [UNMAPPED; PAGE_ENTRIES], used: 0 })));
        let old = page.entries[e];
        page.entries[e] = entry;
        if old != entry {
            recount(&mut self.per_sco, old, entry);
        }
        match (old == UNMAPPED, entry == UNMAPPED) {
            (true, false) => {
                page.used += 1;
                self.mapped += 1;
            }
            (false, true) => {
                page.used -= 1;
                self.mapped -= 1;
                if page.used == 0 {
                    *slot = None;
                }
            }
            _ => {}
        }
        old
    }

    /// Set `count` entries from `cluster` to `entry`; unmapping skips absent pages.
    pub fn fill(&mut self, cluster: u64, count: u64, entry: u64) {
        let end = cluster + count;
        let mut c = cluster;
        while c < end {
            if entry == UNMAPPED {
                let (d, p, _) = Self::split(c);
                let skip_to = match &self.dirs[d] {
                    None => Some((d as u64 + 1) * DIR_CLUSTERS),
                    Some(dir) if dir.pages[p].is_none() => {
                        Some(d as u64 * DIR_CLUSTERS + ((p + 1) * PAGE_ENTRIES) as u64)
                    }
                    _ => None,
                };
                if let Some(next) = skip_to {
                    c = next.min(end);
                    continue;
                }
            }
            self.set(c, entry);
            c += 1;
        }
    }

    /// Visit every mapped entry in cluster order: `f(cluster, entry)`.
    pub fn for_each_mapped(&self, mut f: impl FnMut(u64, u64)) {
        for (d, dir) in self.dirs.iter().enumerate() {
            let Some(dir) = dir else { continue };
            for (p, page) in dir.pages.iter().enumerate() {
                let Some(page) = page else { continue };
                let base = d as u64 * DIR_CLUSTERS + (p * PAGE_ENTRIES) as u64;
                for (e, &v) in page.entries.iter().enumerate() {
                    if v != UNMAPPED {
                        f(base + e as u64, v);
                    }
                }
            }
        }
    }

    /// Replace every entry `e` for which `f(e)` is `Some(new)`; pages without a match
    /// stay shared. Returns how many entries changed.
    pub fn remap(&mut self, f: impl Fn(u64) -> Option<u64>) -> u64 {
        let mut changed = 0;
        for dir in self.dirs.iter_mut().flatten() {
            for p in 0..DIR_PAGES {
                let hit = match &dir.pages[p] {
                    Some(page) => page.entries.iter().any(|&e| e != UNMAPPED && f(e).is_some()),
                    None => false,
                };
                if !hit {
                    continue;
                }
                let page = Arc::make_mut(Arc::make_mut(dir).pages[p].as_mut().expect("page"));
                for e in page.entries.iter_mut() {
                    if *e != UNMAPPED {
                        if let Some(n) = f(*e) {
                            debug_assert_ne!(n, UNMAPPED);
                            recount(&mut self.per_sco, *e, n);
                            *e = n;
                            changed += 1;
                        }
                    }
                }
            }
        }
        changed
    }

    /// Visit, in order, every cluster whose entry differs between `self` and `other`
    /// (maps of the same volume): `f(cluster)`. Pages and directories the two maps share
    /// (untouched since one was copied from the other) are skipped without a look.
    pub fn diff(&self, other: &ClusterMap, mut f: impl FnMut(u64)) {
        debug_assert_eq!(self.clusters, other.clusters);
        let empty: [Option<Arc<Page>>; DIR_PAGES] = std::array::from_fn(|_| None);
        for d in 0..self.dirs.len().min(other.dirs.len()) {
            let (a, b) = (&self.dirs[d], &other.dirs[d]);
            match (a, b) {
                (None, None) => continue,
                (Some(x), Some(y)) if Arc::ptr_eq(x, y) => continue,
                _ => {}
            }
            let pa = a.as_ref().map_or(&empty, |x| &x.pages);
            let pb = b.as_ref().map_or(&empty, |x| &x.pages);
            for p in 0..DIR_PAGES {
                let (x, y) = (&pa[p], &pb[p]);
                let base = d as u64 * DIR_CLUSTERS + (p * PAGE_ENTRIES) as u64;
                match (x, y) {
                    (None, None) => continue,
                    (Some(x), Some(y)) if Arc::ptr_eq(x, y) => continue,
                    _ => {}
                }
                for e in 0..PAGE_ENTRIES {
                    let ea = x.as_ref().map_or(UNMAPPED, |pg| pg.entries[e]);
                    let eb = y.as_ref().map_or(UNMAPPED, |pg| pg.entries[e]);
                    if ea != eb {
                        f(base + e as u64);
                    }
                }
            }
        }
    }

    /// Heap bytes held by this map's pages (shared pages counted fully).
    pub fn memory_bytes(&self) -> u64 {
        let mut n = (self.dirs.len() * std::mem::size_of::<Option<Arc<Dir>>>()) as u64;
        for dir in self.dirs.iter().flatten() {
            n += std::mem::size_of::<Dir>() as u64 + 16;
            n += dir.pages.iter().flatten().count() as u64 * (std::mem::size_of::<Page>() as u64 + 16);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::location::ZERO;

    #[test]
    fn set_get_and_cow() {
        let mut m = ClusterMap::new(1_000_000);
        assert_eq!(m.get(999_999), UNMAPPED);
        assert_eq!(m.set(5, 77), UNMAPPED);
        assert_eq!(m.set(999_999, ZERO), UNMAPPED);
        assert_eq!(m.get(5), 77);
        assert_eq!(m.mapped(), 2);
        let snap = m.clone();
        m.set(5, 88);
        m.set(6, 99);
        assert_eq!(snap.get(5), 77);
        assert_eq!(snap.get(6), UNMAPPED);
        assert_eq!(m.get(5), 88);
        m.set(5, UNMAPPED);
        m.set(6, UNMAPPED);
        assert_eq!(m.mapped(), 1);
        let mut seen = vec![];
        snap.for_each_mapped(|c, e| seen.push((c, e)));
        assert_eq!(seen, vec![(5, 77), (999_999, ZERO)]);
        // Setting UNMAPPED where nothing exists allocates nothing.
        let mut e = ClusterMap::new(1 << 30);
        let before = e.memory_bytes();
        e.set(123_456_789, UNMAPPED);
        assert_eq!(e.memory_bytes(), before);
        e.fill(0, 1 << 18, UNMAPPED);
        assert_eq!(e.memory_bytes(), before);
        e.fill(100, 300, ZERO);
        assert_eq!(e.mapped(), 300);
        e.fill(0, 1 << 18, UNMAPPED);
        assert_eq!(e.mapped(), 0);
        assert_eq!(e.memory_bytes(), before + 16 + std::mem::size_of::<Dir>() as u64);
    }

    #[test]
    fn diff_visits_changed_clusters_only() {
        let mut a = ClusterMap::new(200_000);
        a.set(3, 10);
        a.set(70_000, 11);
        let mut b = a.clone();
        let mut seen = vec![];
        a.diff(&b, |c| seen.push(c));
        assert!(seen.is_empty());
        b.set(3, 12);
        b.set(4, ZERO);
        b.set(70_000, UNMAPPED);
        b.set(150_000, 13);
        a.diff(&b, |c| seen.push(c));
        assert_eq!(seen, vec![3, 4, 70_000, 150_000]);
    }

    #[test]
    fn remap_keeps_unmatched_pages_shared() {
        let mut m = ClusterMap::new(100_000);
        m.set(1, 10);
        m.set(50_000, 20);
        let snap = m.clone();
        assert_eq!(m.remap(|e| (e == 10).then_some(11)), 1);
        assert_eq!(m.get(1), 11);
        assert_eq!(snap.get(1), 10);
        assert_eq!(m.get(50_000), 20);
        assert_eq!(m.mapped(), 2);
    }

    /// The per-SCO counts always equal what a walk of the entries counts, through sets,
    /// fills, unmaps, remaps, a shrink, and in a copy changed apart from its original.
    #[test]
    fn per_sco_counts_match_a_walk() {
        use rand::{Rng, SeedableRng};
        fn walked(m: &ClusterMap) -> Vec<(u64, u64)> {
            let mut c = std::collections::BTreeMap::new();
            m.for_each_mapped(|_, e| {
                if let Some(l) = Location::unpack(e) {
                    *c.entry(l.sco).or_insert(0u64) += 1;
                }
            });
            c.into_iter().collect()
        }
        fn counted(m: &ClusterMap) -> Vec<(u64, u64)> {
            let mut v: Vec<(u64, u64)> = m.per_sco().collect();
            v.sort();
            v
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut m = ClusterMap::new(100_000);
        let at = |sco: u64, i: u32| Location::new(sco, i).pack();
        let mut snap = None;
        for round in 0..20_000u32 {
            let c = rng.gen_range(0..100_000u64);
            match rng.gen_range(0..10) {
                0 => m.set(c, UNMAPPED),
                1 => m.set(c, ZERO),
                2 => {
                    m.fill(c, rng.gen_range(1..300u64).min(100_000 - c), at(rng.gen_range(1..9), 5));
                    UNMAPPED
                }
                _ => m.set(c, at(rng.gen_range(1..9), rng.gen_range(0..64))),
            };
            if round == 10_000 {
                snap = Some(m.clone());
                m.remap(|e| (Location::unpack(e).map(|l| l.sco) == Some(3)).then(|| at(9, 1)));
            }
        }
        assert_eq!(counted(&m), walked(&m));
        assert!(m.held_in(9) > 0);
        let snap = snap.unwrap();
        assert_eq!(counted(&snap), walked(&snap));
        m.resize(50_000);
        assert_eq!(counted(&m), walked(&m));
        assert_eq!(m.held_in(1_000), 0);
    }

    #[test]
    fn memory_per_written_cluster_fully_random() {
        // Every cluster of a 1 GiB volume written once in random order.
        let clusters = 262_144u64;
        let mut m = ClusterMap::new(clusters);
        let mut order: Vec<u64> = (0..clusters).collect();
        use rand::seq::SliceRandom;
        order.shuffle(&mut rand::thread_rng());
        for (i, c) in order.into_iter().enumerate() {
            m.set(c, 2 + i as u64);
        }
        let per = m.memory_bytes() as f64 / clusters as f64;
        assert!(per <= 16.0, "{per} bytes per cluster");
    }
}
