//! The write buffer's SCO files: every local SCO (open, sealed, uploaded but kept) with
//! its reservations in flight, the evicted ones still open because the object store holds
//! the same inode, and the byte and cluster counts the throttle and the space gate use.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::sco_file::ScoFile;

pub(crate) struct LocalSco {
    pub file: Arc<ScoFile>,
    pub clusters: u32,
    pub inflight: u32,
    pub uploaded: bool,
    /// Uploaded by hard-linking the file into the object store: the object is this
    /// inode, so after eviction the open file still reads the SCO's data.
    pub linked: bool,
}

/// Most evicted SCO files kept open because the object store holds the same inode
/// (two descriptors each); older ones are read through the object store.
pub(crate) const LINKED_MAX: usize = 512;

/// The local SCO files of a volume (under the volume lock).
#[derive(Default)]
pub(crate) struct ScoSet {
    pub local: BTreeMap<u64, LocalSco>,
    /// Evicted SCOs whose object is their own (hard-linked) file, still open for reads.
    pub linked: BTreeMap<u64, Arc<ScoFile>>,
    /// Bytes of local SCO data not yet in the object store.
    pub wb_bytes: u64,
    /// Bytes of local SCO data already uploaded (evictable).
    pub kept_bytes: u64,
    /// Clusters of the volume's log: every SCO kept (sealed, open), live or garbage.
    /// Grows with each reservation; the scrubber recounts it.
    pub log_clusters: u64,
}

impl ScoSet {
    /// The open file of SCO `sco`, local or linked (`None`: only in the object store).
    pub fn file(&self, sco: u64) -> Option<&Arc<ScoFile>> {
        self.local.get(&sco).map(|l| &l.file).or_else(|| self.linked.get(&sco))
    }
}
