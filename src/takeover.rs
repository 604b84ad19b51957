//! Failover: `logdisk volume takeover NAME --dtl HOST:PORT` on another host. Checks
//! that fencing can hold (conditional puts) and that the DTL covered every write,
//! fences the old owner (a newer generation on the DTL server, then in the volume
//! record in the object store, create-only), rebuilds the write buffer the old owner
//! had not uploaded from the DTL entries newer than the object store, restarts the
//! volume through the normal recovery, uploads everything under the new generation,
//! and leaves the volume ready to serve with the DTL attached.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use serde::Serialize;

use crate::backend::{keys, ObjectStore};
use crate::datadir::DataDir;
use crate::dtl::{DtlClient, DtlConfig, DtlState, EntryBody};
use crate::error::{Error, IoContext, Result};
use crate::local_settings::LocalSettings;
use crate::volume::dtl_link::{newest_mark, store_mark, CoverageMark, DtlSettings};
use crate::volume::meta::GenStart;
use crate::volume::recovery::uploaded_upto;
use crate::volume::tlog::{self, TlogWriter};

/// What a takeover did.
#[derive(Debug, Clone, Serialize)]
pub struct TakeoverReport {
    pub volume: String,
    /// The new owner generation (this host).
    pub generation: u32,
    /// Epochs up to this one came from the object store.
    pub store_upto: u64,
    /// DTL entries replayed (writes and records newer than the object store).
    pub dtl_entries: u64,
    /// Epochs rebuilt from the DTL.
    pub dtl_epochs: Vec<u64>,
    /// Checks that failed and were overridden by `--force`.
    pub forced: Vec<String>,
    /// Everything is in the object store under the new generation.
    pub uploaded: bool,
}

/// A second create-only put of the same key must fail, or fencing would not hold.
pub fn probe_conditional_put(store: &dyn ObjectStore, volume: &str) -> Result<bool> {
    let key = keys::probe(volume, rand::random::<u64>());
    store.put(&key, b"probe 1")?;
    let second = store.put(&key, b"probe 2");
    let _ = store.delete(&key);
    match second {
        Err(Error::ObjectExists(_)) => Ok(true),
        Ok(()) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Take volume `name` over on this host. Without `force`, refuses when the object
/// store does not honour create-only puts, when the old owner's DTL was not in sync,
/// when the DTL is unreachable, or when it dropped entries the object store lacks.
pub fn takeover(dd: &mut DataDir, name: &str, dtl: DtlSettings, force: bool) -> Result<TakeoverReport> {
    let meta = dd.volume_meta(name)?;
    let store = dd.store().clone();
    let dir = dd.volume_dir(name);
    let local = LocalSettings::load(&dir)?;
    if local.owner_generation == meta.generation && dir.join("tlog").exists() {
        return Err(Error::InvalidArgument(format!(
            "this host already owns volume {name} (generation {}): serve it instead of taking it over",
            meta.generation
        )));
    }
    let mut forced = Vec::new();
    let mut check = |ok: bool, why: String| -> Result<()> {
        if ok {
            return Ok(());
        }
        if force {
            tracing::warn!(volume = name, "takeover forced: {why}");
            forced.push(why);
            return Ok(());
        }
        Err(Error::InvalidArgument(format!("refusing to take over volume {name}: {why} (--force overrides)")))
    };

    check(
        probe_conditional_put(store.as_ref(), name)?,
        "the object store accepted a second put of the same key: create-only puts are not honoured, so an old owner could not be fenced".into(),
    )?;
    let (mark, next_mark) = newest_mark(store.as_ref(), name)?;
    if let Some(m) = mark.as_ref().filter(|m| !m.covered) {
        check(
            false,
            format!(
                "the DTL was not in sync at the last owner (generation {}, since epoch {}: {}); writes not yet in the object store may be missing from it",
                m.generation, m.since_epoch, m.reason
            ),
        )?;
    }

    // Fence the old owner on the DTL server first: from here on it can neither append
    // nor trim, so the DTL keeps everything the object store may lack.
    let new_gen = meta.generation + 1;
    let token = dd.config().dtl.token()?;
    let mut cfg = DtlConfig::new(dtl.addr.clone(), token, name, new_gen);
    cfg.tls = dd.config().dtl.tls()?;
    let client = DtlClient::connect_with(cfg)?;
    let reachable = !matches!(client.state(), DtlState::Degraded(_));
    check(reachable, format!("the DTL server {} is not reachable", dtl.addr))?;

    let store_upto = uploaded_upto(store.as_ref(), &meta)?;
    if reachable {
        let trimmed = client.server_trimmed_upto()?;
        check(
            trimmed <= store_upto,
            format!("the DTL dropped epochs up to {trimmed} but the object store holds only up to {store_upto}"),
        )?;
    }

    // Record the new generation (create-only: of two concurrent takeovers one loses).
    let mut m = meta.clone();
    m.generation = new_gen;
    m.generations.push(GenStart { gen: new_gen, first_epoch: store_upto + 1 });
    match m.store_new_version(store.as_ref(), false) {
        Err(Error::ObjectExists(_)) => {
            return Err(Error::InvalidArgument(format!(
                "volume {name} changed while taking it over (another takeover?): try again"
            )))
        }
        r => r?,
    }
    tracing::info!(
        volume = name,
        generation = new_gen,
        first_epoch = store_upto + 1,
        "owner generation recorded: the old owner is fenced"
    );

    // Rebuild what the old owner had not uploaded (key sources recorded here stay).
    let key_sources = LocalSettings::load(&dir).map(|s| s.key_sources).unwrap_or_default();
    if dir.exists() {
        fs::remove_dir_all(&dir).ctx(|| format!("cannot remove stale {}", dir.display()))?;
    }
    let (dtl_entries, dtl_epochs) =
        if reachable { rebuild(&client, store_upto, &dir, meta.cluster_size as u64)? } else { (0, Vec::new()) };
    LocalSettings { owner_generation: new_gen, dtl: None, uploads_paused: false, key_sources: key_sources.clone() }
        .save(&dir)?;

    // Normal recovery: the object store up to `store_upto`, then the rebuilt epochs;
    // closing uploads them under the new generation.
    let vol = dd.open_volume(name, false)?;
    let closed = vol.close()?;
    let uploaded_upto = vol.stats().last_uploaded;
    drop(vol);
    if reachable && closed.drained {
        // The old owner's entries are in the object store now.
        if let Err(e) = client.trim(uploaded_upto) {
            tracing::warn!(volume = name, error = %e, "cannot trim the DTL after the takeover");
        }
    }
    client.close();
    LocalSettings { owner_generation: new_gen, dtl: Some(dtl), uploads_paused: false, key_sources }.save(&dir)?;
    let mark = CoverageMark {
        generation: new_gen,
        covered: true,
        since_epoch: 0,
        time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        reason: "taken over".into(),
    };
    store_mark(store.as_ref(), name, &AtomicU64::new(next_mark), &mark)?;
    Ok(TakeoverReport {
        volume: name.to_string(),
        generation: new_gen,
        store_upto,
        dtl_entries,
        dtl_epochs,
        forced,
        uploaded: closed.drained,
    })
}

/// Write the DTL's entries after epoch `after` into a write buffer in `dir`: data into
/// SCO files at their slots, records into TLog files, in the order they were logged.
fn rebuild(client: &DtlClient, after: u64, dir: &Path, cs: u64) -> Result<(u64, Vec<u64>)> {
    for sub in ["sco", "tlog"] {
        fs::create_dir_all(dir.join(sub)).ctx(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    let mut scos: BTreeMap<u64, File> = BTreeMap::new();
    let mut records: BTreeMap<u64, (Vec<u8>, u32)> = BTreeMap::new();
    let n = client.query_each(after, |e| {
        match e.body {
            EntryBody::Data { index, data, .. } => {
                let f = match scos.entry(e.sco) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => v.insert(open_sco(dir, e.sco)?),
                };
                f.write_all_at(&data, index as u64 * cs).ctx(|| format!("cannot write rebuilt SCO {}", e.sco))?;
            }
            EntryBody::Record(r) => {
                let (payload, count) = records.entry(e.sco).or_default();
                payload.extend_from_slice(&r);
                *count += 1;
            }
        }
        Ok(())
    })?;
    let epochs: Vec<u64> = records.keys().copied().collect();
    for (epoch, (payload, count)) in records {
        let path = dir.join("tlog").join(format!("{epoch:016x}"));
        let mut w = TlogWriter::create(&path, epoch, false)?;
        w.write_batch(&payload, count)?;
        w.sync()?;
        // A sealed epoch's SCO has exactly the sealed size (slots never written read as zeroes).
        let p = tlog::parse(&fs::read(&path).ctx(|| format!("cannot read {}", path.display()))?, epoch);
        if let Some((sco, clusters)) = p.sealed() {
            let f = match scos.remove(&sco) {
                Some(f) => f,
                None => open_sco(dir, sco)?,
            };
            let want = clusters as u64 * cs;
            if f.metadata().map(|m| m.len()).unwrap_or(0) < want {
                f.set_len(want).ctx(|| format!("cannot size rebuilt SCO {sco}"))?;
            }
            f.sync_all().ctx(|| format!("cannot sync rebuilt SCO {sco}"))?;
        }
    }
    for (sco, f) in scos {
        f.sync_all().ctx(|| format!("cannot sync rebuilt SCO {sco}"))?;
    }
    tracing::info!(entries = n, epochs = ?epochs, "write buffer rebuilt from the DTL");
    Ok((n, epochs))
}

fn open_sco(dir: &Path, sco: u64) -> Result<File> {
    let path = dir.join("sco").join(format!("{sco:016x}"));
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx(|| format!("cannot create {}", path.display()))
}
