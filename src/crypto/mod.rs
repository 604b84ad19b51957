//! Encryption at rest of everything a volume sends to the object store: volume keys
//! (32 bytes from a key file or a key command, never stored by logdisk), key ids, the
//! key ring a daemon reads and writes with, per-object AEAD (`cipher`), and the store
//! wrapper that seals whole objects (`store`). SCO objects are sealed frame by frame in
//! `backend::sco_object` so ranged reads still fetch only the frames they need.

pub mod cipher;
pub mod ops;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aws_lc_rs::hmac;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::error::{Error, Result};

pub const KEY_LEN: usize = 32;

/// Public name of a key: the first 8 bytes of HMAC-SHA256(key, "logdisk key id v1").
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl KeyId {
    pub fn parse(s: &str) -> Option<KeyId> {
        let v = hex_decode(s)?;
        Some(KeyId(v.try_into().ok()?))
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A volume key. Its bytes are wiped on drop and never printed.
pub struct VolumeKey {
    bytes: [u8; KEY_LEN],
    id: KeyId,
}

impl Drop for VolumeKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeKey(id {})", self.id)
    }
}

fn hmac_tag(key: &[u8], what: &str) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), what.as_bytes()).as_ref().to_vec()
}

impl VolumeKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> VolumeKey {
        let id = KeyId(hmac_tag(&bytes, "logdisk key id v1")[..8].try_into().expect("8 bytes"));
        VolumeKey { bytes, id }
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// A second public value derived from the key (stored in the volume record beside
    /// the key id): a key whose id matches but whose check does not is refused.
    pub fn check(&self) -> String {
        hex(&hmac_tag(&self.bytes, "logdisk key check v1")[..16])
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Parse key material: exactly 32 bytes, or 64 hex digits (surrounding whitespace
    /// ignored). `what` names the source in errors; the material never appears in one.
    pub fn parse(what: &str, mut material: Vec<u8>) -> Result<VolumeKey> {
        let text = std::str::from_utf8(&material).ok().map(|s| s.trim().to_string());
        let mut bytes = [0u8; KEY_LEN];
        let ok = match text.as_deref().filter(|t| t.len() == 2 * KEY_LEN).and_then(hex_decode) {
            Some(mut v) => {
                bytes.copy_from_slice(&v);
                v.zeroize();
                true
            }
            None if material.len() == KEY_LEN => {
                bytes.copy_from_slice(&material);
                true
            }
            None => false,
        };
        let n = material.len();
        material.zeroize();
        if let Some(mut t) = text {
            t.zeroize();
        }
        if !ok {
            return Err(Error::Key(format!("{what}: a key is 32 bytes or 64 hex digits (got {n} bytes)")));
        }
        let k = VolumeKey::from_bytes(bytes);
        bytes.zeroize();
        Ok(k)
    }
}

/// Where a key comes from. Only the source is ever recorded, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// A file holding the key.
    File(PathBuf),
    /// A shell command (`sh -c`) that prints the key (a KMS or vault client).
    Command(String),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "key file {}", p.display()),
            KeySource::Command(c) => write!(f, "key command {c:?}"),
        }
    }
}

impl KeySource {
    /// Make a file path absolute (it may be used later by a daemon in another dir).
    pub fn absolute(self) -> KeySource {
        match self {
            KeySource::File(p) if p.is_relative() => {
                KeySource::File(std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p))
            }
            s => s,
        }
    }

    /// Read the key.
    pub fn load(&self) -> Result<VolumeKey> {
        let what = self.to_string();
        let material = match self {
            KeySource::File(p) => std::fs::read(p).map_err(|e| Error::Key(format!("cannot read {what}: {e}")))?,
            KeySource::Command(c) => {
                let out = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(c)
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .output()
                    .map_err(|e| Error::Key(format!("cannot run {what}: {e}")))?;
                if !out.status.success() {
                    return Err(Error::Key(format!("{what} failed ({})", out.status)));
                }
                out.stdout
            }
        };
        VolumeKey::parse(&what, material)
    }
}

/// The keys a daemon knows (by id), sources not read yet, and which key each encrypted
/// volume writes with.
#[derive(Default)]
pub struct KeyRing {
    keys: RwLock<HashMap<KeyId, Arc<VolumeKey>>>,
    pending: Mutex<Vec<KeySource>>,
    loaded: Mutex<HashSet<KeySource>>,
    writers: RwLock<HashMap<String, KeyId>>,
    pub(crate) encrypted: RwLock<HashSet<String>>,
    /// Volumes rotated to a new key whose objects may still be sealed under an older
    /// one: the scrubber rewrites them in the background (`volume::rekey`).
    rekey: Mutex<HashSet<String>>,
    /// `[encryption] require`: every volume must be encrypted; a plain record or object
    /// is refused (a plain record swapped into the bucket is not a way to downgrade).
    require: AtomicBool,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({} keys)", self.keys.read().len())
    }
}

impl KeyRing {
    /// Remember a source, read when a key it may hold is first needed.
    pub fn add_source(&self, s: KeySource) {
        if !self.loaded.lock().contains(&s) {
            let mut p = self.pending.lock();
            if !p.contains(&s) {
                p.push(s);
            }
        }
    }

    /// Read a source now (errors are the caller's).
    pub fn load_source(&self, s: &KeySource) -> Result<Arc<VolumeKey>> {
        let k = Arc::new(s.load()?);
        self.loaded.lock().insert(s.clone());
        self.pending.lock().retain(|p| p != s);
        Ok(self.keys.write().entry(k.id()).or_insert(k).clone())
    }

    pub fn add_key(&self, k: VolumeKey) -> Arc<VolumeKey> {
        let k = Arc::new(k);
        self.keys.write().entry(k.id()).or_insert(k).clone()
    }

    /// The key with id `id` (reading pending sources on a miss).
    pub fn get(&self, id: KeyId, volume: &str) -> Result<Arc<VolumeKey>> {
        if let Some(k) = self.keys.read().get(&id) {
            return Ok(k.clone());
        }
        let pending: Vec<KeySource> = std::mem::take(&mut *self.pending.lock());
        let mut problems = Vec::new();
        for s in pending {
            match self.load_source(&s) {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(volume, "{e}");
                    problems.push(e.to_string());
                }
            }
        }
        if let Some(k) = self.keys.read().get(&id) {
            return Ok(k.clone());
        }
        let known = self.keys.read().len();
        Err(Error::KeyMissing {
            volume: volume.to_string(),
            key_id: id.to_string(),
            detail: if problems.is_empty() {
                if known == 0 {
                    "no key given (--key-file, --key-command or [encryption] in the config)".into()
                } else {
                    format!("none of the {known} given keys is that key (wrong key?)")
                }
            } else {
                problems.join("; ")
            },
        })
    }

    /// Volume `volume` writes (and seals its records) with key `id`.
    pub fn set_writer(&self, volume: &str, id: KeyId) {
        self.writers.write().insert(volume.to_string(), id);
        self.encrypted.write().insert(volume.to_string());
    }

    /// The key new objects of `volume` are sealed with (`None`: plain volume).
    pub fn writer(&self, volume: &str) -> Result<Option<Arc<VolumeKey>>> {
        let id = self.writers.read().get(volume).copied();
        id.map(|id| self.get(id, volume)).transpose()
    }

    pub fn writer_id(&self, volume: &str) -> Option<KeyId> {
        self.writers.read().get(volume).copied()
    }

    /// Whether objects of `volume` must be encrypted (plain ones are refused).
    pub fn is_encrypted(&self, volume: &str) -> bool {
        self.requires_encryption() || self.encrypted.read().contains(volume)
    }

    /// Refuse every plain volume (`[encryption] require = true`).
    pub fn set_require(&self, on: bool) {
        self.require.store(on, Ordering::SeqCst);
    }

    pub fn requires_encryption(&self) -> bool {
        self.require.load(Ordering::SeqCst)
    }

    /// Volume `volume` may hold objects under an older key (after a rotation, or when
    /// its record names older keys); `false` once a pass found none.
    pub fn set_rekey_pending(&self, volume: &str, pending: bool) {
        let mut r = self.rekey.lock();
        if pending {
            r.insert(volume.to_string());
        } else {
            r.remove(volume);
        }
    }

    pub fn rekey_pending(&self, volume: &str) -> bool {
        self.rekey.lock().contains(volume)
    }

    /// Forget a volume (deleted or crypto-erased).
    pub fn forget_volume(&self, volume: &str) {
        self.writers.write().remove(volume);
        self.encrypted.write().remove(volume);
        self.rekey.lock().remove(volume);
    }
}

/// What a volume record says about its encryption (never the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// Id of the key new objects are sealed with.
    pub key_id: String,
    /// Key check of that key (see [`VolumeKey::check`]).
    pub key_check: String,
    /// Ids of earlier keys that older objects may still be sealed with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub old_key_ids: Vec<String>,
}

impl EncryptionInfo {
    pub fn of(key: &VolumeKey) -> EncryptionInfo {
        EncryptionInfo { key_id: key.id().to_string(), key_check: key.check(), old_key_ids: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parsing_and_ids() {
        let hexkey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
        let a = VolumeKey::parse("t", hexkey.as_bytes().to_vec()).unwrap();
        let b = VolumeKey::parse("t", hex_decode(hexkey.trim()).unwrap()).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(a.check(), b.check());
        assert_eq!(KeyId::parse(&a.id().to_string()), Some(a.id()));
        let e = VolumeKey::parse("key file x", b"short secret".to_vec()).unwrap_err().to_string();
        assert!(e.contains("key file x") && !e.contains("secret"), "{e}");
        assert!(!format!("{a:?}").contains("0011"));
    }
}
