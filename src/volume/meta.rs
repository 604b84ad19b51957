//! A volume's configuration record, stored in the object store as versioned,
//! immutable JSON objects (`<volume>/meta/volume/<version>`); the highest version wins.
//! A host with only the object store can list and open every volume from these.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::backend::{keys, ObjectStore};
use crate::error::{Error, Result};

/// From which epoch on an owner generation wrote its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenStart {
    pub gen: u32,
    pub first_epoch: u64,
}

/// What a clone reads through to: a snapshot of another volume, or (for a template)
/// that volume's frozen current content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    pub volume: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

impl std::fmt::Display for ParentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.snapshot {
            Some(s) => write!(f, "{}@{}", self.volume, s),
            None => write!(f, "{}", self.volume),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub name: String,
    /// Logical size in bytes (a multiple of the cluster size).
    pub size: u64,
    pub cluster_size: u32,
    /// Clusters per SCO.
    pub sco_clusters: u32,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Current owner generation.
    pub generation: u32,
    pub generations: Vec<GenStart>,
    #[serde(default)]
    pub read_only: bool,
    /// A read-only volume meant only as a clone parent.
    #[serde(default)]
    pub template: bool,
    /// Set for clones: unwritten clusters read through to this parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// Version of this record (its key).
    pub version: u64,
    /// Size at creation, set by the first resize: the size a replay of the whole log
    /// starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_size: Option<u64>,
    /// Set for encrypted volumes: the key id and key check (never the key). The record
    /// itself is then sealed with that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::crypto::EncryptionInfo>,
}

impl VolumeMeta {
    pub fn new(name: &str, size: u64, cluster_size: u32, sco_size: u64) -> VolumeMeta {
        VolumeMeta {
            name: name.to_string(),
            size,
            cluster_size,
            sco_clusters: (sco_size / cluster_size as u64) as u32,
            created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            generation: 1,
            generations: vec![GenStart { gen: 1, first_epoch: 1 }],
            read_only: false,
            template: false,
            parent: None,
            version: 1,
            initial_size: None,
            encryption: None,
        }
    }

    pub fn clusters(&self) -> u64 {
        self.size / self.cluster_size as u64
    }

    /// The owner generation that wrote epoch `epoch`.
    pub fn gen_of_epoch(&self, epoch: u64) -> u32 {
        self.generations.iter().rev().find(|g| g.first_epoch <= epoch).map(|g| g.gen).unwrap_or(1)
    }

    /// True when object `n` of generation `gen` is the one this record reads (objects a
    /// fenced older owner wrote after a takeover are not).
    pub fn owns(&self, gen: u32, n: u64) -> bool {
        self.gen_of_epoch(n) == gen
    }

    /// True when a checkpoint as of `epoch` written by generation `gen` (None: written
    /// before checkpoint keys named their generation) can be trusted: no newer
    /// generation had started by then (else a fenced owner wrote it).
    pub fn checkpoint_valid(&self, gen: Option<u32>, epoch: u64) -> bool {
        let gen = gen.unwrap_or_else(|| self.gen_of_epoch(epoch));
        self.generations.iter().all(|g| g.gen <= gen || g.first_epoch > epoch)
    }

    /// Load the newest version; `VolumeNotFound` if there is none.
    pub fn load(store: &dyn ObjectStore, name: &str) -> Result<VolumeMeta> {
        let list = store.list(&keys::volume_meta_prefix(name))?;
        let newest = list
            .iter()
            .filter_map(|o| keys::trailing_number(&o.key).map(|v| (v, &o.key)))
            .max_by_key(|(v, _)| *v)
            .ok_or_else(|| Error::VolumeNotFound(name.to_string()))?;
        let bytes = store.get(newest.1)?;
        if bytes.starts_with(crate::crypto::store::ERASED_MAGIC) {
            return Err(Error::CryptoErased(name.to_string()));
        }
        let meta: VolumeMeta = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt { key: newest.1.clone(), detail: format!("bad volume record: {e}") })?;
        if meta.name != name || meta.cluster_size == 0 || !meta.size.is_multiple_of(meta.cluster_size as u64) {
            return Err(Error::Corrupt { key: newest.1.clone(), detail: "inconsistent volume record".into() });
        }
        Ok(meta)
    }

    /// Store this record as a new version (create-only: a concurrent writer loses).
    pub fn store_new_version(&mut self, store: &dyn ObjectStore, first: bool) -> Result<()> {
        if !first {
            self.version += 1;
        }
        let bytes = serde_json::to_vec_pretty(self).expect("serializable");
        match store.put(&keys::volume_meta(&self.name, self.version), &bytes) {
            Err(Error::ObjectExists(_)) if first => Err(Error::VolumeExists(self.name.clone())),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalStore;

    #[test]
    fn versions() {
        let t = tempfile::tempdir().unwrap();
        let s = LocalStore::open(t.path()).unwrap();
        let mut m = VolumeMeta::new("v", 1 << 30, 4096, 32 << 20);
        assert_eq!(m.sco_clusters, 8192);
        m.store_new_version(&s, true).unwrap();
        assert!(matches!(VolumeMeta::new("v", 1, 4096, 4096).store_new_version(&s, true), Err(Error::VolumeExists(_))));
        m.read_only = true;
        m.store_new_version(&s, false).unwrap();
        let l = VolumeMeta::load(&s, "v").unwrap();
        assert_eq!(l.version, 2);
        assert!(l.read_only);
        assert!(matches!(VolumeMeta::load(&s, "w"), Err(Error::VolumeNotFound(_))));
        m.generations.push(GenStart { gen: 2, first_epoch: 10 });
        assert_eq!(m.gen_of_epoch(9), 1);
        assert_eq!(m.gen_of_epoch(10), 2);
        assert!(m.owns(1, 9) && !m.owns(1, 10) && m.owns(2, 10));
        assert!(m.checkpoint_valid(Some(1), 9) && !m.checkpoint_valid(Some(1), 10));
        assert!(m.checkpoint_valid(Some(2), 8) && m.checkpoint_valid(Some(2), 12));
    }
}
