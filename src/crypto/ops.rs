//! Volume-level key operations of a data dir: take an encrypted volume's record into
//! the key ring, rotate its key, crypto-erase it.

use std::time::{SystemTime, UNIX_EPOCH};

use super::store::ERASED_MAGIC;
use super::{EncryptionInfo, KeyId, KeyRing, KeySource};
use crate::backend::keys;
use crate::backend::ObjectStore;
use crate::datadir::DataDir;
use crate::error::{Error, IoContext, Result};
use crate::volume::VolumeMeta;

/// Volume `name`'s record says it is encrypted as `enc`: it writes with that key from
/// now on. A known key with that id must also match the recorded key check.
pub fn register(ring: &KeyRing, name: &str, enc: &EncryptionInfo) -> Result<()> {
    let id = KeyId::parse(&enc.key_id)
        .ok_or_else(|| Error::Corrupt { key: name.into(), detail: "bad key id in the volume record".into() })?;
    if let Ok(k) = ring.get(id, name) {
        if k.check() != enc.key_check {
            return Err(Error::KeyMissing {
                volume: name.into(),
                key_id: enc.key_id.clone(),
                detail: "the given key has that id but fails the key check (wrong key)".into(),
            });
        }
    }
    ring.set_writer(name, id);
    if !enc.old_key_ids.is_empty() {
        // Older objects may still be under those keys: the scrubber looks (once).
        ring.set_rekey_pending(name, true);
    }
    Ok(())
}

/// Rotate volume `name` to the key from `src`: new objects (and the record) are sealed
/// with it; older objects stay readable while their keys are given (this host keeps
/// the old source). `scrub` later rewrites SCOs still under an old key.
pub fn rotate(dd: &DataDir, name: &str, src: &KeySource) -> Result<EncryptionInfo> {
    let mut m = dd.volume_meta(name)?;
    let Some(mut enc) = m.encryption.clone() else {
        return Err(Error::Refused(format!(
            "volume {name} is not encrypted (encryption is chosen at create: volume create --encrypt)"
        )));
    };
    let k = dd.keys().load_source(src)?;
    let mut settings = dd.local_settings(name)?;
    if !settings.key_sources.contains(src) {
        settings.key_sources.push(src.clone());
    }
    if k.id().to_string() != enc.key_id {
        let old = std::mem::replace(&mut enc.key_id, k.id().to_string());
        enc.key_check = k.check();
        enc.old_key_ids.retain(|i| *i != enc.key_id);
        if !enc.old_key_ids.contains(&old) {
            enc.old_key_ids.push(old);
        }
        m.encryption = Some(enc.clone());
        let prev = dd.keys().writer_id(name);
        dd.keys().set_writer(name, k.id());
        if let Err(e) = m.store_new_version(dd.store().as_ref(), false) {
            if let Some(p) = prev {
                dd.keys().set_writer(name, p);
            }
            return Err(e);
        }
        dd.keys().set_rekey_pending(name, true);
        tracing::info!(volume = name, key_id = %enc.key_id, "volume key rotated; the scrubber rewrites older objects under the new key");
    }
    dd.save_local_settings(name, &settings)?;
    Ok(enc)
}

/// Crypto-erase volume `name` (not served): a plain tombstone record becomes its newest
/// version, every sealed record version is deleted, this host forgets the key sources
/// and drops its local state (write buffer, DTL settings). No logdisk opens it again,
/// on any host, even with the key: its data objects remain but only the key could read
/// them, and logdisk no longer knows where that key is.
pub fn crypto_erase(dd: &DataDir, name: &str) -> Result<()> {
    crate::units::validate_name("volume", name)?;
    let store = dd.store();
    let versions = store.list(&keys::volume_meta_prefix(name))?;
    let newest = versions.iter().filter_map(|o| keys::trailing_number(&o.key)).max();
    let Some(newest) = newest else {
        return Err(Error::VolumeNotFound(name.into()));
    };
    match dd.volume_meta(name) {
        Ok(m) if m.encryption.is_none() => {
            return Err(Error::Refused(format!("volume {name} is not encrypted: use volume delete")));
        }
        Ok(_) | Err(Error::KeyMissing { .. }) => {}
        Err(Error::CryptoErased(_)) => return Ok(()),
        Err(e) => return Err(e),
    }
    let when = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut tomb = ERASED_MAGIC.to_vec();
    tomb.extend_from_slice(format!(" {{\"name\":\"{name}\",\"erased_at\":{when}}}\n").as_bytes());
    store.put(&keys::volume_meta(name, newest + 1), &tomb)?;
    let sealed: Vec<String> = versions.into_iter().map(|o| o.key).collect();
    store.delete_many(&sealed)?;
    let dir = dd.volume_dir(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).ctx(|| format!("cannot remove {}", dir.display()))?;
    }
    dd.keys().forget_volume(name);
    tracing::warn!(volume = name, "volume crypto-erased");
    Ok(())
}

/// Delete the versions of volume `name`'s record not sealed under key `cur` (older
/// versions: a rotation stores the newest under its new key first).
pub fn prune_record_versions(store: &dyn ObjectStore, name: &str, cur: KeyId) -> Result<usize> {
    let versions = store.list(&keys::volume_meta_prefix(name))?.into_iter().map(|o| o.key);
    let old = crate::volume::rekey::sealed_under_other_keys(store, versions, cur)?;
    store.delete_many(&old)?;
    Ok(old.len())
}

/// Once nothing of volume `name` is under an older key: its newest record stops naming
/// older keys (a new version, if it named any) and record versions under them go.
pub fn forget_old_keys(store: &dyn ObjectStore, name: &str, cur: KeyId) -> Result<()> {
    let mut m = VolumeMeta::load(store, name)?;
    let Some(enc) = m.encryption.as_mut().filter(|e| e.key_id == cur.to_string()) else {
        // Not (or no longer) this key's volume: nothing of it to forget.
        return Ok(());
    };
    if !enc.old_key_ids.is_empty() {
        enc.old_key_ids.clear();
        m.store_new_version(store, false)?;
    }
    prune_record_versions(store, name, cur)?;
    Ok(())
}
