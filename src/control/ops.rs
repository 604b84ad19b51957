//! Management operations: run by the daemon for control requests (on the volumes it
//! serves, while guests use them) and by the CLI directly when no daemon holds the data
//! dir. One implementation for both paths.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::protocol::Request;
use crate::datadir::{DataDir, NEEDS_STORE};
use crate::error::{Error, Result};
use crate::local_settings::LocalSettings;
use crate::volume::dtl_link::{DtlMode, DtlSettings};
use crate::volume::Volume;

/// Volumes a daemon serves, by name (empty for the CLI).
pub type Served = HashMap<String, Arc<Volume>>;

/// Run `f` on volume `name`: the served instance, or one opened (and closed) here.
fn with_volume<T>(
    dd: &mut DataDir,
    served: &Served,
    name: &str,
    read_only: bool,
    f: impl FnOnce(&Arc<Volume>) -> Result<T>,
) -> Result<T> {
    if let Some(v) = served.get(name) {
        return f(v);
    }
    let v = dd.open_volume(name, read_only)?;
    let r = f(&v);
    let closed = v.close();
    let r = r?;
    closed?;
    Ok(r)
}

fn refuse_served(served: &Served, name: &str, what: &str) -> Result<()> {
    if served.contains_key(name) {
        return Err(Error::InvalidArgument(format!(
            "cannot {what} volume {name} while this daemon serves it: stop serving it first"
        )));
    }
    Ok(())
}

/// Apply `volume set --dtl ADDR|none --dtl-mode sync|async|none` to the current settings.
fn dtl_change(cur: Option<DtlSettings>, addr: Option<&str>, mode: Option<&str>) -> Result<Option<DtlSettings>> {
    if addr == Some("none") || mode == Some("none") {
        return Ok(None);
    }
    let mode = mode.map(str::parse::<DtlMode>).transpose()?;
    match (cur, addr) {
        (_, Some(a)) => Ok(Some(DtlSettings { addr: a.to_string(), mode: mode.unwrap_or(DtlMode::Sync) })),
        (Some(c), None) => Ok(Some(DtlSettings { mode: mode.unwrap_or(c.mode), ..c })),
        (None, None) if mode.is_some() => {
            Err(Error::InvalidArgument("no DTL is set for this volume: give --dtl HOST:PORT".into()))
        }
        (None, None) => Ok(None),
    }
}

fn to_json<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("serializable")
}

/// Answer one management request.
pub fn run(dd: &mut DataDir, served: &Served, req: Request) -> Result<Value> {
    match req {
        Request::List => {
            let v: Vec<_> = dd
                .list_volumes()?
                .into_iter()
                .map(|m| {
                    json!({"name": m.name, "size": m.size, "cluster_size": m.cluster_size, "read_only": m.read_only,
                        "template": m.template, "parent": m.parent.map(|p| p.to_string()),
                        "served": served.contains_key(&m.name), "attached": served.contains_key(&m.name)})
                })
                .collect();
            Ok(Value::Array(v))
        }
        Request::Served => Ok(json!(served.keys().collect::<Vec<_>>())),
        Request::Info { volume } => {
            let info = match served.get(&volume) {
                Some(v) => dd.volume_info(v)?,
                None => {
                    let v = dd.open_volume(&volume, true)?;
                    let info = dd.volume_info(&v);
                    v.close()?;
                    info?
                }
            };
            Ok(to_json(info))
        }
        Request::Create { volume, size, cluster_size, sco_size, dtl, key } => {
            let m = dd.create_volume_with(&volume, size, cluster_size, sco_size, key.as_ref())?;
            if dtl.is_some() {
                let s = dd.local_settings(&volume)?;
                dd.save_local_settings(&volume, &LocalSettings { owner_generation: m.generation, dtl, ..s })?;
            }
            Ok(json!({"name": m.name, "size": m.size, "cluster_size": m.cluster_size,
                "key_id": m.encryption.map(|e| e.key_id)}))
        }
        Request::AddKeys { sources } => {
            sources.into_iter().for_each(|s| dd.keys().add_source(s));
            Ok(json!({}))
        }
        Request::CryptoErase { volume } => {
            refuse_served(served, &volume, "crypto-erase")?;
            crate::crypto::ops::crypto_erase(dd, &volume)?;
            Ok(json!({"erased": volume}))
        }
        Request::Set { volume, dtl_addr, dtl_mode, uploads_paused, new_key } => {
            dd.volume_meta(&volume)?;
            if let Some(k) = &new_key {
                crate::crypto::ops::rotate(dd, &volume, k)?;
            }
            let mut s = dd.local_settings(&volume)?;
            let old_dtl = s.dtl.clone();
            s.dtl = dtl_change(s.dtl.take(), dtl_addr.as_deref(), dtl_mode.as_deref())?;
            if let Some(p) = uploads_paused {
                s.uploads_paused = p;
            }
            if let Some(v) = served.get(&volume) {
                if s.dtl != old_dtl {
                    let link = s.dtl.clone().map(|d| dd.dtl_link(v, d)).transpose()?;
                    v.set_dtl(link);
                }
                v.set_uploads_paused(s.uploads_paused);
            }
            dd.save_local_settings(&volume, &s)?;
            Ok(to_json(s))
        }
        Request::Takeover { volume, dtl, force } => {
            refuse_served(served, &volume, "take over")?;
            Ok(to_json(crate::takeover::takeover(dd, &volume, dtl, force)?))
        }
        Request::Delete { volume } => {
            refuse_served(served, &volume, "delete")?;
            dd.delete_volume(&volume)?;
            Ok(json!({"deleted": volume}))
        }
        Request::SnapshotCreate { volume, snapshot } => {
            let info = with_volume(dd, served, &volume, false, |v| v.create_snapshot(&snapshot))?;
            Ok(to_json(info))
        }
        Request::SnapshotList { volume } => {
            let list = with_volume(dd, served, &volume, true, |v| Ok(v.space()?.snapshots))?;
            Ok(to_json(list))
        }
        Request::SnapshotDelete { volume, snapshot } => {
            dd.check_no_dependents(&volume, Some(&snapshot), "delete")?;
            with_volume(dd, served, &volume, false, |v| v.delete_snapshot(&snapshot))?;
            Ok(json!({"deleted": format!("{volume}@{snapshot}")}))
        }
        Request::SnapshotRollback { volume, snapshot, force } => {
            if !force {
                refuse_served(served, &volume, "roll back (a guest may be attached; --force overrides)")?;
            }
            with_volume(dd, served, &volume, false, |v| v.rollback(&snapshot))?;
            Ok(json!({"rolled_back": format!("{volume}@{snapshot}")}))
        }
        Request::SnapshotDiff { volume, from, to } => {
            let (ext, cs) =
                with_volume(dd, served, &volume, true, |v| Ok((v.snapshot_diff(&from, &to)?, v.cluster_size())))?;
            let data: u64 = ext.iter().filter(|e| e.data).map(|e| e.length).sum();
            let zero: u64 = ext.iter().filter(|e| !e.data).map(|e| e.length).sum();
            Ok(json!({"volume": volume, "from": from, "to": to, "cluster_size": cs, "changed_bytes": data + zero,
                "data_bytes": data, "zeroed_bytes": zero, "extents": ext}))
        }
        Request::Clone { source, snapshot, target, key } => {
            let src = dd.volume_meta(&source)?;
            match &snapshot {
                None if !src.template => {
                    return Err(Error::InvalidArgument(format!(
                        "volume {source} is not a template: clone a snapshot ({source}@SNAP) or run `logdisk volume set-template {source}` first"
                    )))
                }
                None => {}
                Some(s) => {
                    // The snapshot must exist and its data be in the object store.
                    with_volume(dd, served, &source, true, |v| {
                        v.snapshot_map(s)?;
                        v.upload_all(NEEDS_STORE)
                    })?;
                }
            }
            let m = dd.create_clone_with(&target, &src, snapshot.as_deref(), key.as_ref())?;
            Ok(json!({"name": m.name, "parent": m.parent.map(|p| p.to_string()), "size": m.size}))
        }
        Request::SetTemplate { volume } => {
            refuse_served(served, &volume, "turn into a template")?;
            let v = dd.open_volume(&volume, false)?;
            let r = v.close()?;
            if !r.drained {
                return Err(Error::StoreTimeout {
                    what: format!("uploads of volume {volume}: a template's data must be in the object store"),
                    secs: 0,
                });
            }
            dd.update_meta(&volume, |m| {
                m.read_only = true;
                m.template = true;
            })?;
            Ok(json!({"template": volume}))
        }
        Request::Flatten { volume } => {
            let copied = with_volume(dd, served, &volume, false, |v| v.flatten())?;
            dd.update_meta(&volume, |m| m.parent = None)?;
            Ok(json!({"flattened": volume, "copied_bytes": copied}))
        }
        Request::Resize { volume, size, shrink } => {
            let m = dd.volume_meta(&volume)?;
            let cs = m.cluster_size as u64;
            if size == 0 || !size.is_multiple_of(cs) {
                return Err(Error::InvalidArgument(format!(
                    "size {size} of volume {volume} must be a positive multiple of its cluster size {cs}"
                )));
            }
            if m.read_only || m.template {
                return Err(Error::ReadOnly(volume));
            }
            if size < m.size && !shrink {
                return Err(Error::Refused(format!(
                    "{size} is smaller than volume {volume} ({} bytes): shrinking drops the data past the new end; add --shrink",
                    m.size
                )));
            }
            if size < m.size {
                refuse_served(served, &volume, "shrink")?;
            }
            let old = m.size;
            if size != old {
                with_volume(dd, served, &volume, false, |v| v.resize(size))?;
                dd.update_meta(&volume, |m| {
                    m.initial_size.get_or_insert(m.size);
                    m.size = size;
                })?;
            }
            Ok(json!({"name": volume, "old_size": old, "size": size}))
        }
        Request::Attach { .. } | Request::Detach { .. } => Err(Error::Refused(
            "attach and detach need the running daemon of this data dir: start `logdisk serve`".into(),
        )),
        Request::Scrub { volume, threshold } => {
            // After a key rotation, scrub also rewrites what is under older keys and
            // prunes the record versions under them (`Volume::finish_rekey`).
            let rep = with_volume(dd, served, &volume, false, |v| v.scrub(threshold))?;
            Ok(to_json(rep))
        }
    }
}
