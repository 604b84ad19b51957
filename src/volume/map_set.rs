//! The map set of a volume: the current cluster map, its snapshots, the raw size of
//! every sealed SCO (what a checkpoint holds) and the parent layers of a clone, with the
//! lookup that falls through from the current map to the parents.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::checkpoint::CheckpointData;
use super::layers::Layer;
use super::location::{Location, UNMAPPED, ZERO};
use super::map::ClusterMap;
use super::snap_set::Snapshots;

/// Every map of a volume (under the volume lock).
pub(crate) struct MapSet {
    pub map: ClusterMap,
    pub snaps: Snapshots,
    /// Clusters of data in every sealed SCO (raw size), by SCO number.
    pub sco_sizes: BTreeMap<u64, u32>,
    /// Parent layers of a clone (nearest first): unmapped clusters fall through to them.
    pub layers: Vec<Arc<Layer>>,
}

impl MapSet {
    /// Maps of an empty volume of `clusters` clusters.
    pub fn new(clusters: u64) -> MapSet {
        MapSet {
            map: ClusterMap::new(clusters),
            snaps: Snapshots::default(),
            sco_sizes: BTreeMap::new(),
            layers: Vec::new(),
        }
    }

    /// What a checkpoint as of the end of `epoch` holds (maps share pages).
    pub fn checkpoint_data(&self, epoch: u64) -> CheckpointData {
        CheckpointData { epoch, map: self.map.clone(), snaps: self.snaps.clone(), sco_sizes: self.sco_sizes.clone() }
    }

    /// Copies of every map, current first, then snapshots by id (sharing pages).
    pub fn copies(&self) -> Vec<ClusterMap> {
        let mut maps = vec![self.map.clone()];
        maps.extend(self.snaps.list.values().map(|s| s.map.clone()));
        maps
    }

    /// Map entry of `cluster` and the layer it came from (0 = this volume, i = layer
    /// i-1); UNMAPPED entries fall through to the parent layers.
    #[inline]
    pub fn lookup(&self, cluster: u64) -> (usize, u64) {
        let e = self.map.get(cluster);
        if e != UNMAPPED || self.layers.is_empty() {
            return (0, e);
        }
        for (i, l) in self.layers.iter().enumerate() {
            let e = l.map.get(cluster);
            if e != UNMAPPED {
                return (i + 1, e);
            }
        }
        (0, UNMAPPED)
    }

    /// The run of clusters from `first` (up to `last`) that read from one place: the
    /// layer (as [`MapSet::lookup`]), the location of `first` (`None`: zeroes) and the
    /// run's length (data runs: consecutive locations of one layer, at most 2^20).
    pub fn run(&self, first: u64, last: u64) -> (usize, Option<Location>, u64) {
        let (layer, e0) = self.lookup(first);
        let mut run = 1u64;
        match Location::unpack(e0) {
            None => {
                while first + run <= last && Location::unpack(self.lookup(first + run).1).is_none() {
                    run += 1;
                }
                (layer, None, run)
            }
            Some(loc) => {
                while first + run <= last
                    && run < 1 << 20
                    && self.lookup(first + run) == (layer, loc.advance(run as u32).pack())
                {
                    run += 1;
                }
                (layer, Some(loc), run)
            }
        }
    }

    /// The entry a discard leaves: UNMAPPED, or ZERO when it would fall through to a parent.
    pub fn zero_entry(&self) -> u64 {
        if self.layers.is_empty() {
            UNMAPPED
        } else {
            ZERO
        }
    }
}
