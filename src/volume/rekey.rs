//! Bringing an encrypted volume under its current key after a rotation (`logdisk
//! scrub`): SCOs sealed under an older key become scrub victims whatever their live
//! fraction (their live data is copied, so sealed anew, and they are deleted); then two
//! short epochs, each ending in a checkpoint, let the checkpoint rules delete every
//! older TLog and checkpoint; the newest DTL mark is stored again and older marks go;
//! the record stops naming older keys and its versions under them go. The scrubber
//! does the same in bounded, paced passes (`rekey_pass`) after a rotation.

use std::collections::BTreeMap;

use super::location::UNMAPPED;
use super::scrub_policy::Goal;
use super::tlog::Record;
use super::Volume;
use crate::backend::{keys, ObjectStore};
use crate::crypto::{cipher, KeyId};
use crate::error::{Error, Result};

/// The key id a sealed whole object names (from its first 16 bytes).
pub fn blob_header_key_id(head: &[u8]) -> Option<KeyId> {
    (head.len() >= 16 && &head[..8] == cipher::BLOB_MAGIC).then(|| KeyId(head[8..16].try_into().expect("8 bytes")))
}

/// Those of the whole (not SCO) objects `keys` whose header names a key other than
/// `cur`, or none. An object deleted since it was listed (checkpoint pruning) is not
/// old: it is skipped.
pub fn sealed_under_other_keys(
    store: &dyn ObjectStore,
    keys: impl IntoIterator<Item = String>,
    cur: KeyId,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for key in keys {
        match store.get_range(&key, 0, 16) {
            Ok(head) if blob_header_key_id(&head) != Some(cur) => out.push(key),
            Ok(_) | Err(Error::ObjectNotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

impl Volume {
    /// The key new objects of this volume are sealed with (`None`: not encrypted).
    pub fn current_key_id(&self) -> Option<KeyId> {
        self.env.keys.writer_id(&self.name)
    }

    /// SCOs among `objects` (number → key, size) sealed under a key other than the
    /// current one (or not sealed at all). Empty for a plain volume.
    pub(crate) fn scos_under_old_keys(&self, objects: &BTreeMap<u64, (String, u64)>) -> Result<Vec<u64>> {
        let Some(cur) = self.current_key_id() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (n, (key, _)) in objects {
            let ix = self.env.reader.index(key)?;
            if ix.cipher.as_ref().map(|c| c.key_id) != Some(cur) {
                out.push(*n);
            }
        }
        Ok(out)
    }

    /// TLogs and checkpoints of this volume in the store sealed under another key.
    pub fn metadata_under_old_keys(&self) -> Result<Vec<String>> {
        let Some(cur) = self.current_key_id() else {
            return Ok(Vec::new());
        };
        let listed = self.env.store.list(&keys::volume_prefix(&self.name))?;
        let metadata = listed.into_iter().map(|o| o.key).filter(|k| {
            matches!(keys::parse_data_key(&self.name, k), Some((_, "tlog", _))) || k.contains("/meta/checkpoint/")
        });
        sealed_under_other_keys(self.env.store.as_ref(), metadata, cur)
    }

    /// Seal two epochs holding only a no-op record, each ending in a checkpoint under
    /// the current key; the second checkpoint's pruning deletes every TLog up to the
    /// first and every older checkpoint.
    pub fn rekey_metadata(&self) -> Result<()> {
        for _ in 0..2 {
            {
                let mut st = self.state.lock();
                self.append_record(&mut st, &Record::Fill { cluster: 0, count: 0, entry: UNMAPPED })?;
                st.uploads.checkpoint_at_seal = true;
            }
            self.seal()?;
            self.upload_all("while rewriting metadata under the new key")?;
        }
        Ok(())
    }

    /// Whether some object of this volume's other than SCOs (TLogs, checkpoints, DTL
    /// marks) is sealed under an older key, and rewrite those. Then the record forgets
    /// the older keys. Call once no SCO is under an older key.
    pub(crate) fn finish_rekey(&self) -> Result<()> {
        let Some(cur) = self.current_key_id() else {
            return Ok(());
        };
        if !self.metadata_under_old_keys()?.is_empty() {
            self.rekey_metadata()?;
        }
        let store = self.env.store.as_ref();
        let marks = store.list(&keys::dtl_mark_prefix(&self.name))?.into_iter().map(|o| o.key);
        if !sealed_under_other_keys(store, marks, cur)?.is_empty() {
            let link = self.dtl.read().clone();
            super::dtl_link::rewrite_marks(store, &self.name, link.as_deref())?;
        }
        crate::crypto::ops::forget_old_keys(store, &self.name, cur)?;
        self.env.keys.set_rekey_pending(&self.name, false);
        tracing::info!(volume = %self.name, key_id = %cur, "every object of the volume is under its current key");
        Ok(())
    }

    /// One bounded background rekey pass (the scrubber's, after a rotation): SCOs under
    /// older keys are rewritten, about `max_moved` live clusters' worth; a pass that finds
    /// none left finishes the rotation (`finish_rekey`). Returns whether it is finished.
    pub fn rekey_pass(&self, max_moved: u64, pace: &mut dyn FnMut(u64)) -> Result<bool> {
        let rep = self.scrub_pass(&Goal::rekey(max_moved), pace)?;
        if rep.stale_key_scos > 0 {
            tracing::info!(volume = %self.name, stale = rep.stale_key_scos, rewritten = rep.scos_rewritten, "rewriting SCOs under the volume's new key");
            return Ok(false);
        }
        self.finish_rekey()?;
        Ok(true)
    }
}
