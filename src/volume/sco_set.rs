//! The write buffer's SCO files: every local SCO (open, sealed, uploaded but kept) with
//! its reservations in flight, the evicted ones still open because the object store holds
//! the same inode, and the byte and cluster counts the throttle and the space gate use.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
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
    /// SCOs found only in the object store that cannot be read in place (see
    /// `Volume::file_in_place`): not probed again.
    pub remote_only: HashSet<u64>,
    /// Bytes of local SCO data not yet in the object store.
    pub wb_bytes: u64,
    /// Bytes of local SCO data already uploaded (evictable).
    pub kept_bytes: u64,
    /// Clusters of the volume's log: every SCO kept (sealed, open), live or garbage.
    /// Grows with each reservation; the scrubber recounts it.
    pub log_clusters: u64,
    /// SCOs sealed early whose preallocated tail is still to be cut, with their data
    /// bytes: cut by the uploader threads outside the volume lock (`Volume::cut_tails`).
    pub tails: Vec<(Arc<ScoFile>, u64)>,
}

impl ScoSet {
    /// The open file of SCO `sco`, local or linked (`None`: only in the object store).
    pub fn file(&self, sco: u64) -> Option<&Arc<ScoFile>> {
        self.local.get(&sco).map(|l| &l.file).or_else(|| self.linked.get(&sco))
    }

    /// SCO `epoch` (`bytes` of data) is in the object store: its local copy becomes
    /// evictable. False when there is no local copy.
    pub fn uploaded(&mut self, epoch: u64, bytes: u64) -> bool {
        let Some(l) = self.local.get_mut(&epoch) else { return false };
        l.uploaded = true;
        self.wb_bytes = self.wb_bytes.saturating_sub(bytes);
        self.kept_bytes += bytes;
        true
    }

    /// Forget local copies of uploaded SCOs, oldest first, while local data exceeds
    /// `budget` bytes; returns the files to delete. Hard-linked ones stay open for reads
    /// (see [`ScoSet::linked`]).
    pub fn evict_uploaded(&mut self, budget: u64, shift: u32) -> Vec<PathBuf> {
        let mut files = Vec::new();
        while self.wb_bytes + self.kept_bytes > budget {
            let victim = self.local.iter().find(|(_, l)| l.uploaded && l.inflight == 0).map(|(e, _)| *e);
            let Some(e) = victim else { break };
            let l = self.local.remove(&e).unwrap();
            self.kept_bytes = self.kept_bytes.saturating_sub((l.clusters as u64) << shift);
            files.push(l.file.path().to_path_buf());
            if l.linked {
                // Unlinking the write-buffer name frees nothing: the object is this inode.
                self.keep_linked(e, l.file);
            }
        }
        files
    }

    /// Keep `file`, whose object is the file itself, open for reads of SCO `e` (the
    /// oldest such file is closed beyond [`LINKED_MAX`]).
    pub fn keep_linked(&mut self, e: u64, file: Arc<ScoFile>) {
        self.linked.insert(e, file);
        while self.linked.len() > LINKED_MAX {
            self.linked.pop_first();
        }
    }

    /// SCO `e` is deleted: forget its open object file and what was found about it.
    pub fn forget_object(&mut self, e: u64) {
        self.linked.remove(&e);
        self.remote_only.remove(&e);
    }
}
