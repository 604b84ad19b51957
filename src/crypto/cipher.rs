//! Per-object AEAD (AES-256-GCM, aws-lc-rs). Every object of an encrypted volume gets
//! its own key: HKDF-SHA256 of the volume key, salted with 16 random bytes chosen for
//! this upload and bound to the object's key (its name in the store). Within one
//! object, nonces are `(kind, counter)`: frame `i` of an SCO, its index, or the single
//! sealed body of a whole-object blob.
//!
//! Why nonces never repeat for a key: a derived key exists for exactly one
//! (volume key, salt, object name) triple, and objects are immutable — an object is
//! encrypted once, as one upload, and never modified, so each `(kind, counter)` is used
//! once per derived key. A re-upload of the same object name after a crash (the put may
//! have reached the store, or not, and the SCO's bytes may differ if frames were
//! compressed differently) draws a fresh random salt, hence a fresh derived key: even
//! an overwrite on a store that ignores create-only puts cannot reuse a (key, nonce)
//! pair with different plaintext. 2^-128 salt collisions are the only exception.
//!
//! Blob format (TLogs, checkpoints, volume records, DTL marks):
//! `"LDENCv01" | key id (8) | salt (16) | ciphertext | tag (16)`; the 32-byte header is
//! the AAD, so a changed key id or salt fails authentication.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};

use super::{KeyId, VolumeKey};
use crate::error::{Error, Result};

pub const TAG_LEN: usize = 16;
pub const SALT_LEN: usize = 16;
pub const BLOB_MAGIC: &[u8; 8] = b"LDENCv01";
pub const BLOB_HEADER_LEN: usize = 8 + 8 + SALT_LEN;

/// Nonce domains within one object.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum NonceKind {
    Frame = 0,
    Index = 1,
    Blob = 2,
}

/// The AEAD key of one object (derived; never stored).
pub struct ObjectCipher {
    key: LessSafeKey,
    pub key_id: KeyId,
    pub salt: [u8; SALT_LEN],
}

impl std::fmt::Debug for ObjectCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectCipher(key id {})", self.key_id)
    }
}

fn nonce(kind: NonceKind, counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&(kind as u32).to_be_bytes());
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// A fresh random salt.
pub fn random_salt() -> [u8; SALT_LEN] {
    let mut s = [0u8; SALT_LEN];
    aws_lc_rs::rand::fill(&mut s).expect("system random source");
    s
}

impl ObjectCipher {
    /// The cipher of object `object_key` under `key` with `salt`.
    pub fn derive(key: &VolumeKey, salt: [u8; SALT_LEN], object_key: &str) -> ObjectCipher {
        let info = format!("logdisk object v1 {object_key}");
        let info = [info.as_bytes()];
        let prk = Salt::new(HKDF_SHA256, &salt).extract(key.bytes());
        let okm = prk.expand(&info, &AES_256_GCM).expect("HKDF output of one AES key");
        ObjectCipher { key: LessSafeKey::new(UnboundKey::from(okm)), key_id: key.id(), salt }
    }

    /// Encrypt `data` in place; returns the tag to store after it.
    pub fn seal(&self, kind: NonceKind, counter: u64, aad: &[u8], data: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(kind, counter), Aad::from(aad), data)
            .expect("AES-GCM seal of a bounded buffer");
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_ref());
        t
    }

    /// Decrypt and authenticate `data` (ciphertext followed by its tag) in place; the
    /// plaintext is `data[..len - TAG_LEN]`. `false`: authentication failed.
    pub fn open(&self, kind: NonceKind, counter: u64, aad: &[u8], data: &mut [u8]) -> bool {
        data.len() >= TAG_LEN && self.key.open_in_place(nonce(kind, counter), Aad::from(aad), data).is_ok()
    }
}

/// Whether `bytes` is a sealed blob.
pub fn is_blob(bytes: &[u8]) -> bool {
    bytes.len() >= BLOB_HEADER_LEN + TAG_LEN && &bytes[..8] == BLOB_MAGIC
}

/// The key id a sealed blob names.
pub fn blob_key_id(bytes: &[u8]) -> Option<KeyId> {
    is_blob(bytes).then(|| KeyId(bytes[8..16].try_into().expect("8 bytes")))
}

/// Seal a whole object.
pub fn seal_blob(key: &VolumeKey, object_key: &str, plain: &[u8]) -> Vec<u8> {
    let salt = random_salt();
    let c = ObjectCipher::derive(key, salt, object_key);
    let mut out = Vec::with_capacity(BLOB_HEADER_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(BLOB_MAGIC);
    out.extend_from_slice(&key.id().0);
    out.extend_from_slice(&salt);
    out.extend_from_slice(plain);
    let (head, body) = out.split_at_mut(BLOB_HEADER_LEN);
    let tag = c.seal(NonceKind::Blob, 0, head, body);
    out.extend_from_slice(&tag);
    out
}

/// Open a sealed blob with `key` (whose id the blob names).
pub fn open_blob(key: &VolumeKey, object_key: &str, mut sealed: Vec<u8>) -> Result<Vec<u8>> {
    if !is_blob(&sealed) {
        return Err(Error::Corrupt { key: object_key.into(), detail: "not an encrypted object".into() });
    }
    let salt: [u8; SALT_LEN] = sealed[16..32].try_into().expect("16 bytes");
    let c = ObjectCipher::derive(key, salt, object_key);
    let (head, body) = sealed.split_at_mut(BLOB_HEADER_LEN);
    if !c.open(NonceKind::Blob, 0, head, body) {
        return Err(Error::Corrupt {
            key: object_key.into(),
            detail: "authentication failed (damaged or swapped)".into(),
        });
    }
    let n = sealed.len() - TAG_LEN;
    sealed.truncate(n);
    sealed.drain(..BLOB_HEADER_LEN);
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trip_and_tamper() {
        let k = VolumeKey::from_bytes([7u8; 32]);
        let s = seal_blob(&k, "v/meta/volume/1", b"hello world");
        assert_eq!(blob_key_id(&s), Some(k.id()));
        assert!(!s.windows(5).any(|w| w == b"hello"));
        assert_eq!(open_blob(&k, "v/meta/volume/1", s.clone()).unwrap(), b"hello world");
        // Another name (a swapped object), a flipped bit, another key: refused.
        assert!(open_blob(&k, "v/meta/volume/2", s.clone()).is_err());
        let mut t = s.clone();
        t[40] ^= 1;
        assert!(open_blob(&k, "v/meta/volume/1", t).is_err());
        assert!(open_blob(&VolumeKey::from_bytes([8u8; 32]), "v/meta/volume/1", s.clone()).is_err());
        // Two seals of the same plaintext differ (fresh salt per upload).
        assert_ne!(s, seal_blob(&k, "v/meta/volume/1", b"hello world"));
    }
}
