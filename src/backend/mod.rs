//! Object stores: the trait every backend implements, the key layout, the SCO object
//! format, the local-directory store (embedded default), the S3 store and the uploader.

pub mod fuzzing;
pub mod keys;
pub mod local;
#[cfg(feature = "s3")]
pub mod s3;
pub mod sco_object;
pub mod sco_reader;
pub mod upload_buffers;
pub mod uploader;
pub mod url;

use crate::error::Result;

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// An immutable-object store (local directory, S3). Keys use `/` as separator.
/// Implementations are blocking and safe to share between threads.
pub trait ObjectStore: Send + Sync {
    /// The store's URL, without credentials.
    fn url(&self) -> String;
    /// Create `key` with `data`; fails with `ObjectExists` if the key is already there
    /// (objects are never overwritten).
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// The whole object.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// `len` bytes at `offset` (fewer only if the object ends first).
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// The last `len` bytes of the object and the object's total size.
    fn get_tail(&self, key: &str, len: u64) -> Result<(Vec<u8>, u64)>;
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// The distinct next path components below `prefix` (which ends in `/` or is empty).
    fn list_children(&self, prefix: &str) -> Result<Vec<String>>;
    /// Remove an object; removing a missing object is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Remove several objects (S3: one DeleteObjects request per 1000 keys).
    fn delete_many(&self, keys: &[String]) -> Result<()> {
        keys.iter().try_for_each(|k| self.delete(k))
    }
    /// Make the durable file at `path` the object `key` without copying it (a hard link
    /// into a local directory store). `Ok(false)`: not possible here — put a copy.
    /// Fails with `ObjectExists` like `put`. The file must never change afterwards. The
    /// object's name is durable once [`Self::sync_adopted`] returned for its key (one
    /// sync for several files).
    fn adopt_file(&self, _key: &str, _path: &std::path::Path) -> Result<bool> {
        Ok(false)
    }
    /// Make the names [`Self::adopt_file`] gave `keys` durable.
    fn sync_adopted(&self, _keys: &[String]) -> Result<()> {
        Ok(())
    }
    /// Whether `adopt_file` may work here (worth preparing a file for it).
    fn adopts_files(&self) -> bool {
        false
    }
    /// The file that is object `key`, when the store keeps objects as plain files (a
    /// local directory store) and it exists: a reader may read it in place.
    fn local_file(&self, _key: &str) -> Option<std::path::PathBuf> {
        None
    }
}
