//! Object-store SCOs read in place: an SCO evicted from the write buffer after its upload
//! by hard link is read through its still-open file ([`super::sco_set::ScoSet::linked`]).
//! After a restart those files are closed, and the same objects would be read through the
//! object-store path: whole frames fetched into fresh buffers, copied into the read cache,
//! then copied again to the guest. Here such an object is opened again as the local file
//! it is, so that reads go straight from the disk to the caller's buffers (and planned
//! reads through io_uring), as before the restart.
//!
//! An object qualifies when it is one plain file of a local directory store on the write
//! buffer's filesystem, with `upload.link_local` on, and it holds the SCO's raw bytes at
//! their raw offsets (adopted, or every frame stored raw; never a sealed one). Reads of it
//! are checked as those of the object-store path are: the first read of a frame reads the
//! whole frame and checks it against the index's checksum, then keeps a checksum per
//! cluster, which later reads of those clusters check as reads of local SCO files do
//! (`super::local_read`).

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::engine::Volume;
use super::sco_file::ScoFile;
use crate::backend::keys;
use crate::error::Result;

impl Volume {
    /// The open file of SCO `sco`, found only in the object store, when its object can
    /// be read in place (see the module doc); `None`: read it through the object store.
    /// Called on read-cache misses of the volume's own SCOs; IO runs without the lock.
    pub(crate) fn file_in_place(&self, sco: u64) -> Option<Arc<ScoFile>> {
        if !self.env.opts.link_local {
            return None;
        }
        {
            let st = self.state.lock();
            if st.scos.local.contains_key(&sco) || st.scos.remote_only.contains(&sco) {
                // A local file sent the read here (rot): its object is another copy.
                return None;
            }
            if let Some(f) = st.scos.linked.get(&sco) {
                return Some(f.clone());
            }
        }
        let file = match self.open_in_place(sco) {
            Ok(f) => f,
            Err(e) => {
                // Perhaps passing (no descriptor left, an unreadable index): the next
                // miss tries again; this read goes through the object store.
                tracing::debug!(volume = %self.name, sco, error = %e, "cannot open an SCO object to read in place");
                return None;
            }
        };
        let mut st = self.state.lock();
        // A scrub pass that deleted the SCO meanwhile removed its size: keep nothing.
        if !st.maps.sco_sizes.contains_key(&sco) {
            return None;
        }
        match file {
            Some(f) => {
                self.counters.objects_read_in_place.fetch_add(1, Ordering::Relaxed);
                st.scos.keep_linked(sco, f.clone());
                Some(f)
            }
            None => {
                // Not a raw file on this filesystem: that does not change.
                st.scos.remote_only.insert(sco);
                None
            }
        }
    }

    /// Open SCO `sco`'s object as a file, if it qualifies.
    fn open_in_place(&self, sco: u64) -> Result<Option<Arc<ScoFile>>> {
        let key = keys::sco(&self.name, self.meta.gen_of_epoch(sco), sco);
        let Some(path) = self.env.store.local_file(&key) else { return Ok(None) };
        let index = self.env.reader.index(&key)?;
        // Frames are checked through their clusters' checksums (see `check_frames`).
        let whole_clusters = index.raw_len.is_multiple_of(self.cs) && (index.frame_size as u64).is_multiple_of(self.cs);
        if !index.raw_in_place() || !whole_clusters {
            return Ok(None);
        }
        let raw_len = index.raw_len;
        let file = ScoFile::open_object(&path, sco, index, self.cs, self.env.opts.direct)?;
        let wb_dev = std::fs::metadata(&self.dir).map(|m| m.dev()).ok();
        if wb_dev != Some(file.dev()) || file.file_len()? < raw_len {
            return Ok(None);
        }
        Ok(Some(Arc::new(file)))
    }
}
