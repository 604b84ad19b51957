//! Opening a volume: rebuild its map from the newest valid metadata checkpoint plus a
//! replay of every later TLog (from the local write buffer when present, else from the
//! object store), cut torn TLog tails, seal epochs a crash left open, and queue every
//! sealed epoch that is not yet in the object store for upload. Works on a fresh data
//! dir too ("another host"): then everything comes from the object store.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::crc_records::Replayed;
use super::engine::{Volume, VolumeEnv};
use super::layers::load_layers;
use super::meta::VolumeMeta;
pub(crate) use super::replay::uploaded_upto;
use super::replay::{load_checkpoint, store_objects};
use super::sco_file::ScoFile;
use super::sco_set::LocalSco;
use super::state::State;
use super::tail_check;
use super::tlog::{self, Record, TlogWriter};
use super::upload_queue::{EpochUpload, JobState};
use crate::backend::keys;
use crate::backend::uploader::UploadSource;
use crate::error::{Error, IoContext, Result};

fn local_numbers(dir: &Path) -> Result<BTreeSet<u64>> {
    let mut out = BTreeSet::new();
    for e in fs::read_dir(dir).ctx(|| format!("cannot list {}", dir.display()))? {
        let e = e.ctx(|| format!("cannot list {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        match (name.len() == 16).then(|| u64::from_str_radix(&name, 16).ok()).flatten() {
            Some(n) => {
                out.insert(n);
            }
            None => tracing::warn!(file = %e.path().display(), "ignoring unexpected file in the write buffer"),
        }
    }
    Ok(out)
}

impl Volume {
    /// Open volume `meta` with local state in `dir`.
    pub fn open(env: Arc<VolumeEnv>, meta: VolumeMeta, dir: PathBuf, read_only: bool) -> Result<Arc<Volume>> {
        for sub in ["sco", "tlog"] {
            fs::create_dir_all(dir.join(sub)).ctx(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let name = meta.name.clone();
        let store = env.store.clone();
        let clusters = meta.clusters();

        // What the object store holds.
        let remote_tlogs = store_objects(store.as_ref(), &meta, "tlog")?;
        let remote_scos = store_objects(store.as_ref(), &meta, "sco")?;
        let mut max_epoch = remote_tlogs.keys().chain(remote_scos.keys()).copied().max().unwrap_or(0);
        // What the local write buffer holds.
        let local_scos = local_numbers(&dir.join("sco"))?;
        let local_tlogs = local_numbers(&dir.join("tlog"))?;
        max_epoch = max_epoch.max(local_tlogs.last().copied().unwrap_or(0));

        // Newest valid checkpoint.
        let (cp_epoch, mut replay) = load_checkpoint(store.as_ref(), &meta)?;
        max_epoch = max_epoch.max(cp_epoch);
        // An SCO file whose epoch has no TLog anywhere: a crash between creating an
        // epoch's SCO file and its TLog (nothing was written into it). It is removed
        // below and its number used again: skipping it would leave a gap in the epoch
        // sequence that the next open takes for a lost TLog.
        let orphan = |e: &u64| *e > cp_epoch && !local_tlogs.contains(e) && !remote_tlogs.contains_key(e);
        max_epoch = max_epoch.max(local_scos.iter().filter(|e| !orphan(e)).max().copied().unwrap_or(0));

        // Replay every TLog after the checkpoint, in order.
        let last_tlog = remote_tlogs.keys().chain(local_tlogs.iter()).copied().max().unwrap_or(0);
        // (epoch, valid TLog length, batches)
        let mut unsealed_local: Vec<(u64, u64, u32)> = Vec::new();
        // Clusters of each SCO that any replayed record references: a write reserved in
        // an epoch's SCO can complete (and be logged) after that epoch was sealed, so its
        // record sits in a later TLog, and that TLog can be durable while the seal of the
        // earlier one is not (their fdatasyncs run together).
        let mut referenced: HashMap<u64, u32> = HashMap::new();
        let mut last_uploaded = cp_epoch;
        let mut replayed = 0u64;
        // Cluster checksums the TLogs carry, for the local SCO files opened below.
        let mut crcs = Replayed::default();
        for e in (cp_epoch + 1)..=last_tlog {
            let local_path = dir.join("tlog").join(format!("{e:016x}"));
            if let Some(key) = remote_tlogs.get(&e) {
                let bytes = store.get(key)?;
                let p = tlog::parse_sealed(key, &bytes, e)?;
                note_references(&p.records, &mut referenced);
                replay.tlog(&p.records, e, key)?;
                crcs.collect(&p.records);
                if let Some((sco, n)) = p.sealed() {
                    replay.sco_sizes.insert(sco, n);
                }
                last_uploaded = e;
                if local_tlogs.contains(&e) {
                    let _ = fs::remove_file(&local_path);
                }
            } else if local_tlogs.contains(&e) {
                let bytes = fs::read(&local_path).ctx(|| format!("cannot read {}", local_path.display()))?;
                let mut p = tlog::parse(&bytes, e);
                let key = local_path.display().to_string();
                if p.torn {
                    tracing::warn!(volume = %name, tlog = %key, valid = p.valid_len, len = bytes.len(),
                        "cutting a torn TLog tail (writes that were never flushed)");
                }
                // A TLog sealed by a batch written after its data was synced has all its
                // data; one left open by the crash, or sealed ahead, is checked.
                let seal_ahead = p.ahead.last().is_some_and(|a| a.end == p.records.len());
                if p.sealed().is_none() || p.torn || seal_ahead {
                    if let Some(c) = tail_check::cut_unsynced(&mut p, &dir.join("sco"), meta.cluster_size)? {
                        tracing::warn!(volume = %name, tlog = %key, batch = c.batch, cluster_at = ?c.at,
                            dropped_batches = c.batches, dropped_records = c.records,
                            "cutting a TLog tail whose data is not on the disk (writes never flushed before a power loss)");
                    }
                }
                note_references(&p.records, &mut referenced);
                replay.tlog(&p.records, e, &key)?;
                crcs.collect(&p.records);
                match p.sealed() {
                    Some((sco, n)) if !p.torn => {
                        replay.sco_sizes.insert(sco, n);
                    }
                    _ => unsealed_local.push((e, p.valid_len, p.batches)),
                }
            } else if e > last_uploaded {
                // A gap: an epoch's TLog is neither local nor uploaded.
                return Err(Error::Corrupt {
                    key: keys::tlog(&name, meta.gen_of_epoch(e), e),
                    detail: "TLog missing from both the object store and the local write buffer".into(),
                });
            }
            replayed += 1;
        }

        // Seal epochs a crash left open, then queue everything not yet uploaded.
        let layers = load_layers(env.store.as_ref(), &env.cache, &meta)?;
        let mut state = State::empty(clusters, max_epoch + 1);
        state.maps.map = replay.map;
        state.maps.snaps = replay.snaps;
        state.maps.sco_sizes = replay.sco_sizes;
        state.maps.layers = layers;
        state.uploads.last_checkpoint = cp_epoch;
        state.uploads.last_uploaded = last_uploaded;
        let cs = meta.cluster_size as u64;
        for &e in &local_scos {
            let path = dir.join("sco").join(format!("{e:016x}"));
            let file = Arc::new(ScoFile::open(&path, e, meta.sco_clusters, false, env.opts.direct)?);
            let len = file.file_len()?;
            // A preallocated SCO file is longer than its data: a sealed SCO's size is in
            // its seal record; an unsealed one's is what durable records (of any TLog)
            // reference.
            let unsealed = unsealed_local.iter().any(|u| u.0 == e).then(|| referenced.get(&e).copied().unwrap_or(0));
            let known = state.maps.sco_sizes.get(&e).copied().or(unsealed);
            let clusters = known.map_or((len / cs) as u32, |k| k.min((len / cs) as u32));
            if unsealed.is_some() && len > clusters as u64 * cs {
                file.set_len(clusters as u64 * cs)?;
            }
            let uploaded = remote_tlogs.contains_key(&e) || e <= cp_epoch;
            if orphan(&e) {
                tracing::warn!(volume = %name, epoch = e, "removing an SCO file that no TLog references");
                let _ = fs::remove_file(&path);
                continue;
            }
            if uploaded && e <= cp_epoch {
                // Kept after upload, its TLog older than the checkpoint (not replayed):
                // its checksums come from the uploaded TLog (one small GET).
                if let Some(key) = remote_tlogs.get(&e) {
                    match store.get(key).and_then(|b| tlog::parse_sealed(key, &b, e)) {
                        Ok(p) => crcs.collect(&p.records),
                        Err(err) => tracing::warn!(volume = %name, sco = e, error = %err,
                            "cannot read the TLog of a kept SCO: its clusters are not checked for rot"),
                    }
                }
            }
            let checked = crcs.apply(e, clusters, &file.crcs);
            if checked > 0 {
                tracing::debug!(volume = %name, sco = e, clusters = checked, "cluster checksums restored from the TLog");
            }
            if uploaded {
                state.scos.kept_bytes += clusters as u64 * cs;
            } else {
                state.scos.wb_bytes += clusters as u64 * cs;
            }
            state.scos.local.insert(e, LocalSco { file, clusters, inflight: 0, uploaded, linked: false });
        }
        for (e, valid_len, batches) in unsealed_local {
            let path = dir.join("tlog").join(format!("{e:016x}"));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .ctx(|| format!("cannot open {}", path.display()))?;
            f.set_len(valid_len).ctx(|| format!("cannot truncate {}", path.display()))?;
            let clusters = state.scos.local.get(&e).map(|l| l.clusters).unwrap_or(0);
            state.maps.sco_sizes.insert(e, clusters);
            let mut w = TlogWriter::new(f, e, valid_len, batches);
            let mut payload = Vec::new();
            Record::Seal { sco: e, clusters }.encode(&mut payload);
            w.write_batch(&payload, 1)?;
            w.sync()?;
        }
        for &e in local_tlogs.iter().filter(|e| !remote_tlogs.contains_key(e) && **e > cp_epoch) {
            // Replay (or the re-seal above) recorded every local epoch's SCO size.
            let clusters = *state.maps.sco_sizes.get(&e).ok_or_else(|| Error::Corrupt {
                key: dir.join("tlog").join(format!("{e:016x}")).display().to_string(),
                detail: "local TLog was not replayed".into(),
            })?;
            state.uploads.jobs.insert(
                e,
                EpochUpload {
                    sco_clusters: clusters,
                    durable: true,
                    sco: JobState::Waiting,
                    tlog: JobState::Waiting,
                    attempts: 0,
                },
            );
        }
        state.scos.log_clusters = state.maps.sco_sizes.values().map(|&n| n as u64).sum();
        tracing::info!(
            volume = %name,
            checkpoint = cp_epoch,
            replayed_tlogs = replayed,
            pending_uploads = state.uploads.jobs.len(),
            mapped_clusters = state.maps.map.mapped(),
            "volume opened"
        );
        let vol = Arc::new(Volume::new_internal(meta, dir, env.clone(), read_only, state));
        let weak: std::sync::Weak<dyn UploadSource> = Arc::downgrade(&(vol.clone() as Arc<dyn UploadSource>));
        env.uploader.register(weak);
        env.open_volumes.lock().push(Arc::downgrade(&vol));
        Ok(vol)
    }
}

/// Note, per SCO, the clusters `records` place data in (one past the highest index).
fn note_references(records: &[Record], referenced: &mut HashMap<u64, u32>) {
    for r in records {
        let (loc, count) = match *r {
            Record::Write { loc, count, .. } => (loc, count),
            Record::Relocate { to, count, .. } => (to, count),
            _ => continue,
        };
        let n = referenced.entry(loc.sco).or_insert(0);
        *n = (*n).max(loc.index.saturating_add(count));
    }
}
