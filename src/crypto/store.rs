//! The object store as the volumes see it: a wrapper that seals every whole object of an
//! encrypted volume (TLogs, checkpoints, volume records, DTL marks) on put and opens it
//! on get, and refuses plain objects where a volume is known to be encrypted. SCO
//! objects pass through: `sco_object` seals them frame by frame and `sco_reader` opens
//! them, so ranged reads keep fetching single frames; ranged gets are therefore raw.

use std::path::Path;
use std::sync::Arc;

use super::cipher;
use super::{KeyRing, KeySource};
use crate::backend::{sco_object, ObjectInfo, ObjectStore};
use crate::error::{Error, Result};

/// First bytes of a crypto-erase tombstone record (plain: it must be readable without
/// the key, which is gone).
pub const ERASED_MAGIC: &[u8; 8] = b"LDERASED";

pub struct CryptoStore {
    inner: Arc<dyn ObjectStore>,
    keys: Arc<KeyRing>,
}

fn volume_of(key: &str) -> &str {
    key.split('/').next().unwrap_or("")
}

fn is_sco(key: &str) -> bool {
    key.split('/').nth(2) == Some("sco")
}

impl CryptoStore {
    pub fn new(inner: Arc<dyn ObjectStore>, keys: Arc<KeyRing>) -> CryptoStore {
        CryptoStore { inner, keys }
    }

    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn open(&self, key: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let volume = volume_of(key);
        if let Some(id) = cipher::blob_key_id(&bytes) {
            let k = self.keys.get(id, volume)?;
            let plain = cipher::open_blob(&k, key, bytes)?;
            if !self.keys.is_encrypted(volume) {
                self.keys.encrypted.write().insert(volume.to_string());
            }
            return Ok(plain);
        }
        if self.keys.is_encrypted(volume) && !bytes.starts_with(ERASED_MAGIC) {
            return Err(Error::Corrupt {
                key: key.into(),
                detail: if self.keys.encrypted.read().contains(volume) {
                    "a plain object in an encrypted volume (refused)".into()
                } else {
                    "a plain object, and this data dir requires encryption ([encryption] require = true): refused"
                        .into()
                },
            });
        }
        Ok(bytes)
    }
}

impl ObjectStore for CryptoStore {
    fn url(&self) -> String {
        self.inner.url()
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let volume = volume_of(key);
        match self.keys.writer(volume)? {
            Some(k) if is_sco(key) => {
                if !sco_object::is_sealed(data) {
                    return Err(Error::Key(format!("refusing to upload plain SCO {key} of encrypted volume {volume}")));
                }
                let _ = k;
                self.inner.put(key, data)
            }
            Some(k) if !data.starts_with(ERASED_MAGIC) => self.inner.put(key, &cipher::seal_blob(&k, key, data)),
            _ => self.inner.put(key, data),
        }
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let bytes = self.inner.get(key)?;
        if is_sco(key) {
            return Ok(bytes);
        }
        self.open(key, bytes)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.get_range(key, offset, len)
    }

    fn get_tail(&self, key: &str, len: u64) -> Result<(Vec<u8>, u64)> {
        self.inner.get_tail(key, len)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }

    fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_children(prefix)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key)
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.inner.delete_many(keys)
    }

    fn adopt_file(&self, key: &str, path: &Path) -> Result<bool> {
        if self.keys.writer_id(volume_of(key)).is_some() {
            return Ok(false);
        }
        self.inner.adopt_file(key, path)
    }

    fn sync_adopted(&self, keys: &[String]) -> Result<()> {
        self.inner.sync_adopted(keys)
    }

    fn adopts_files(&self) -> bool {
        self.inner.adopts_files()
    }

    /// Sealed objects are never read in place (their index names a cipher); the
    /// file is offered as is.
    fn local_file(&self, key: &str) -> Option<std::path::PathBuf> {
        self.inner.local_file(key)
    }
}

/// Shorthand for the sources a command line or config names.
pub fn sources(files: &[std::path::PathBuf], commands: &[String]) -> Vec<KeySource> {
    files
        .iter()
        .map(|f| KeySource::File(f.clone()).absolute())
        .chain(commands.iter().map(|c| KeySource::Command(c.clone())))
        .collect()
}
