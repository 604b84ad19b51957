//! The snapshot set of a volume (named, frozen copies of its cluster map that share
//! pages with the live map) and scrub relocations, which rewrite locations in every map
//! at once.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::location::Location;
use super::map::ClusterMap;

/// One snapshot: the map as of the TLog record that created it.
#[derive(Clone)]
pub struct Snapshot {
    pub id: u32,
    pub name: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The epoch whose TLog holds the snapshot record (sealed right after it).
    pub epoch: u64,
    pub map: ClusterMap,
}

impl Snapshot {
    /// What `snapshot list` shows (exclusive bytes come from the space accounting).
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            name: self.name.clone(),
            id: self.id,
            created: self.created,
            epoch: self.epoch,
            exclusive_bytes: 0,
        }
    }
}

/// Every snapshot of a volume, by id (ids are never reused).
#[derive(Clone, Default)]
pub struct Snapshots {
    pub list: BTreeMap<u32, Snapshot>,
    pub next_id: u32,
}

impl Snapshots {
    pub fn by_name(&self, name: &str) -> Option<&Snapshot> {
        self.list.values().find(|s| s.name == name)
    }

    pub fn insert(&mut self, s: Snapshot) {
        self.next_id = self.next_id.max(s.id + 1);
        self.list.insert(s.id, s);
    }

    pub fn maps_mut(&mut self) -> impl Iterator<Item = &mut ClusterMap> {
        self.list.values_mut().map(|s| &mut s.map)
    }
}

/// Old location → new location of clusters a scrub moved.
#[derive(Default, Clone)]
pub struct Relocation {
    table: HashMap<u64, u64>,
    scos: HashSet<u64>,
}

impl Relocation {
    pub fn add(&mut self, from: Location, count: u32, to: Location) {
        self.scos.insert(from.sco);
        for i in 0..count {
            self.table.insert(from.advance(i).pack(), to.advance(i).pack());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The new entry for map entry `e`, if `e` moved.
    pub fn lookup(&self, e: u64) -> Option<u64> {
        let loc = Location::unpack(e)?;
        if !self.scos.contains(&loc.sco) {
            return None;
        }
        self.table.get(&e).copied()
    }

    /// Rewrite every moved entry of `map` (a full pass).
    pub fn apply(&self, map: &mut ClusterMap) -> u64 {
        if self.is_empty() {
            return 0;
        }
        map.remap(|e| self.lookup(e))
    }

    /// Rewrite moved entries of the current map and every snapshot.
    pub fn apply_all(&self, map: &mut ClusterMap, snaps: &mut Snapshots) {
        self.apply(map);
        for m in snaps.maps_mut() {
            self.apply(m);
        }
    }

    pub fn clear(&mut self) {
        self.table.clear();
        self.scos.clear();
    }
}

/// What `snapshot list` shows of one snapshot (space figures come from scrub's accounting).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub id: u32,
    pub created: u64,
    pub epoch: u64,
    /// Bytes of data only this snapshot references (what deleting it frees).
    #[serde(default)]
    pub exclusive_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocation_rewrites_only_moved_entries() {
        let mut m = ClusterMap::new(1000);
        m.set(0, Location::new(2, 0).pack());
        m.set(1, Location::new(2, 1).pack());
        m.set(2, Location::new(3, 0).pack());
        let mut snaps = Snapshots::default();
        snaps.insert(Snapshot { id: 4, name: "a".into(), created: 0, epoch: 1, map: m.clone() });
        assert_eq!(snaps.next_id, 5);
        m.set(1, Location::new(5, 0).pack());
        let mut r = Relocation::default();
        r.add(Location::new(2, 0), 2, Location::new(7, 10));
        r.apply_all(&mut m, &mut snaps);
        assert_eq!(m.get(0), Location::new(7, 10).pack());
        assert_eq!(m.get(1), Location::new(5, 0).pack());
        assert_eq!(m.get(2), Location::new(3, 0).pack());
        let s = &snaps.by_name("a").unwrap().map;
        assert_eq!(s.get(1), Location::new(7, 11).pack());
    }
}
