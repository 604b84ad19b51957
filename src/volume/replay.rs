//! Rebuilding a volume's maps from its metadata: the newest valid checkpoint plus a
//! replay of every later TLog, and what the object store alone holds of a volume.

use std::collections::BTreeMap;

use super::checkpoint::{self, CheckpointData};
use super::location::{Location, MAX_CLUSTERS_PER_SCO};
use super::map::ClusterMap;
use super::meta::VolumeMeta;
use super::snap_set::{Relocation, Snapshot, Snapshots};
use super::tlog::{self, Record};
use crate::backend::{keys, ObjectStore};
use crate::error::{Error, Result};

/// Maps rebuilt by replaying TLogs on top of a checkpoint.
pub(crate) struct Replay {
    pub map: ClusterMap,
    pub snaps: Snapshots,
    pub sco_sizes: BTreeMap<u64, u32>,
    /// Relocations of the TLog being replayed, applied to every map at its end.
    reloc: Relocation,
}

impl Replay {
    pub fn new(cp: CheckpointData) -> Replay {
        Replay { map: cp.map, snaps: cp.snaps, sco_sizes: cp.sco_sizes, reloc: Relocation::default() }
    }

    /// Apply every record of TLog `epoch` (read from `key`).
    pub fn tlog(&mut self, records: &[Record], epoch: u64, key: &str) -> Result<()> {
        for r in records {
            self.apply(r, epoch, key)?;
        }
        // Relocations commute with the other records of their TLog (they only rewrite
        // old locations, which no later record can produce), so one pass at the end.
        self.reloc.apply_all(&mut self.map, &mut self.snaps);
        self.reloc.clear();
        Ok(())
    }

    fn apply(&mut self, rec: &Record, epoch: u64, key: &str) -> Result<()> {
        let map = &mut self.map;
        let clusters = map.clusters();
        let bad = |what: &str| Error::Corrupt { key: key.to_string(), detail: format!("record {rec:?} {what}") };
        match *rec {
            Record::Write { cluster, count, loc } => {
                if cluster.checked_add(count as u64).is_none_or(|e| e > clusters) {
                    return Err(bad("is outside the volume"));
                }
                for i in 0..count {
                    map.set(cluster + i as u64, Location::advance(loc, i).pack());
                }
            }
            Record::Fill { cluster, count, entry } => {
                if cluster.checked_add(count).is_none_or(|e| e > clusters) {
                    return Err(bad("is outside the volume"));
                }
                map.fill(cluster, count, entry);
            }
            // Checksums matter only to local SCO files (see `super::crc_records`).
            Record::Seal { .. } | Record::Crcs { .. } => {}
            Record::Snapshot { id, created, name } => {
                self.snaps.insert(Snapshot { id, name: name.as_str().to_string(), created, epoch, map: map.clone() });
            }
            Record::SnapDelete { id } => {
                self.snaps.list.remove(&id);
            }
            Record::Rollback { id } => {
                // Pending relocations of this TLog apply to the snapshot's map too.
                let s = self.snaps.list.get(&id).ok_or_else(|| bad("names an unknown snapshot"))?;
                // The volume keeps its size; the snapshot's content is what fits.
                *map = s.map.clone();
                map.resize(clusters);
            }
            Record::Resize { clusters: n } => {
                if n == 0 || n >= 1 << 40 {
                    return Err(bad("has a bad size"));
                }
                map.resize(n);
            }
            Record::Relocate { from, count, to } => {
                if from.index as u64 + count as u64 > MAX_CLUSTERS_PER_SCO {
                    return Err(bad("is outside its SCO"));
                }
                self.reloc.add(from, count, to);
            }
        }
        Ok(())
    }
}

/// The maps of volume `meta` as the object store alone has them (newest checkpoint plus
/// every later uploaded TLog). Used for the parent layers of clones.
pub(crate) fn replay_from_store(store: &dyn ObjectStore, meta: &VolumeMeta) -> Result<Replay> {
    let (cp_epoch, mut replay) = load_checkpoint(store, meta)?;
    let tlogs = store_objects(store, meta, "tlog")?;
    // Uploads go in order: stop at the first gap.
    for (expect, (e, key)) in (cp_epoch + 1..).zip(tlogs.range(cp_epoch + 1..)) {
        if *e != expect {
            break;
        }
        let bytes = store.get(key)?;
        let p = tlog::parse_sealed(key, &bytes, *e)?;
        replay.tlog(&p.records, *e, key)?;
    }
    Ok(replay)
}

/// Objects of `kind` ("sco", "tlog") of volume `meta` by number, written by the
/// generation that owns each number (objects of fenced owners are left out).
pub(crate) fn store_objects(store: &dyn ObjectStore, meta: &VolumeMeta, kind: &str) -> Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for o in store.list(&keys::volume_prefix(&meta.name))? {
        if let Some((gen, k, n)) = keys::parse_data_key(&meta.name, &o.key) {
            if k == kind && meta.owns(gen, n) {
                out.insert(n, o.key);
            }
        }
    }
    Ok(out)
}

/// The last epoch the object store holds with every earlier one (newest valid
/// checkpoint, then uploaded TLogs without a gap).
pub(crate) fn uploaded_upto(store: &dyn ObjectStore, meta: &VolumeMeta) -> Result<u64> {
    let cp = valid_checkpoints(store, meta)?.last().map(|(e, _)| *e).unwrap_or(0);
    let tlogs = store_objects(store, meta, "tlog")?;
    Ok((cp + 1..)
        .zip(tlogs.range(cp + 1..))
        .take_while(|(want, (e, _))| want == *e)
        .last()
        .map(|(e, _)| e)
        .unwrap_or(cp))
}

/// Checkpoint keys of `meta` that a restart may use, oldest first.
pub(crate) fn valid_checkpoints(store: &dyn ObjectStore, meta: &VolumeMeta) -> Result<Vec<(u64, String)>> {
    let mut cps: Vec<(u64, String)> = store
        .list(&keys::checkpoint_prefix(&meta.name))?
        .into_iter()
        .filter_map(|o| {
            let (epoch, gen) = keys::parse_checkpoint_key(&o.key)?;
            meta.checkpoint_valid(gen, epoch).then_some((epoch, o.key))
        })
        .collect();
    cps.sort_unstable();
    Ok(cps)
}

/// The newest valid checkpoint of `meta` (or an empty state at epoch 0).
pub(crate) fn load_checkpoint(store: &dyn ObjectStore, meta: &VolumeMeta) -> Result<(u64, Replay)> {
    // Without a checkpoint the log is replayed from its start: at the size the volume was
    // created with (its Resize records change it).
    let (name, clusters) = (&meta.name, meta.initial_size.unwrap_or(meta.size) / meta.cluster_size as u64);
    for (_, key) in valid_checkpoints(store, meta)?.iter().rev() {
        match store.get(key).and_then(|b| checkpoint::decode(key, &b)) {
            Ok(cp) => return Ok((cp.epoch, Replay::new(cp))),
            Err(e) => tracing::warn!(volume = %name, error = %e, "skipping unusable checkpoint"),
        }
    }
    let empty = CheckpointData {
        epoch: 0,
        map: ClusterMap::new(clusters),
        snaps: Snapshots::default(),
        sco_sizes: BTreeMap::new(),
    };
    Ok((0, Replay::new(empty)))
}
