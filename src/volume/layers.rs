//! Parent layers of clones and snapshot views: read-only maps of other volumes (or of
//! snapshots) that unwritten clusters fall through to, nearest parent first. Their data
//! is read from the object store under the parent volume's keys.

use std::sync::Arc;

use super::map::ClusterMap;
use super::meta::VolumeMeta;
use super::read_cache::ReadCache;
use super::replay::replay_from_store;
use super::snap_set::Relocation;
use crate::backend::ObjectStore;
use crate::error::{Error, Result};

/// Longest chain of clones of clones.
const MAX_DEPTH: usize = 32;

/// One read-only parent map.
pub struct Layer {
    /// The volume whose objects hold this layer's data.
    pub volume: String,
    /// Read-cache owner id of that volume.
    pub owner: u32,
    pub meta: VolumeMeta,
    pub map: ClusterMap,
}

impl Layer {
    /// The same layer with a scrub's relocations applied.
    pub fn relocated(&self, reloc: &Relocation) -> Layer {
        let mut map = self.map.clone();
        reloc.apply(&mut map);
        Layer { volume: self.volume.clone(), owner: self.owner, meta: self.meta.clone(), map }
    }
}

/// A layer holding `map` of volume `meta` (a snapshot's map, or a template's map).
pub fn layer_of(cache: &ReadCache, meta: &VolumeMeta, map: ClusterMap) -> Arc<Layer> {
    Arc::new(Layer { volume: meta.name.clone(), owner: cache.owner_id(&meta.name), meta: meta.clone(), map })
}

/// The parent chain of `meta` (empty unless it is a clone), from the object store.
pub fn load_layers(store: &dyn ObjectStore, cache: &ReadCache, meta: &VolumeMeta) -> Result<Vec<Arc<Layer>>> {
    let mut out = Vec::new();
    let mut next = meta.parent.clone();
    while let Some(p) = next {
        if out.len() >= MAX_DEPTH {
            return Err(Error::InvalidArgument(format!("clone chain of {} is deeper than {MAX_DEPTH}", meta.name)));
        }
        let pm = VolumeMeta::load(store, &p.volume).map_err(|e| match e {
            Error::VolumeNotFound(_) => Error::Corrupt {
                key: meta.name.clone(),
                detail: format!("its parent volume {} does not exist", p.volume),
            },
            e => e,
        })?;
        // A clone may be larger than its parent (it reads zeroes past the parent's end).
        if pm.cluster_size != meta.cluster_size {
            return Err(Error::Corrupt { key: meta.name.clone(), detail: format!("parent {p} has another geometry") });
        }
        let replay = replay_from_store(store, &pm)?;
        let map = match &p.snapshot {
            Some(s) => replay
                .snaps
                .by_name(s)
                .ok_or_else(|| Error::Corrupt {
                    key: meta.name.clone(),
                    detail: format!("its parent snapshot {p} does not exist"),
                })?
                .map
                .clone(),
            None => replay.map,
        };
        out.push(layer_of(cache, &pm, map));
        next = pm.parent.clone();
    }
    Ok(out)
}
