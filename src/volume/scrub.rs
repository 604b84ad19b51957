//! Scrubbing (garbage collection) and space accounting. Live clusters of every SCO are
//! counted across the current map and every snapshot (clones read a parent's snapshot
//! maps, so they are covered too). Scrub copies the live clusters of mostly-dead SCOs
//! into the open SCO, logs `Relocate` records and rewrites the maps chunk by chunk
//! (never holding the volume lock for long), waits until the relocations are in the
//! object store, and only then deletes the old SCOs. A crash at any point loses nothing:
//! a rerun finds the copies (or redoes them) and deletes what nothing references.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::engine::Volume;
use super::iov::{iovec, AlignedBuf};
use super::location::{Location, ScoMap};
use super::map::ClusterMap;
use super::scrub_holders::Holders;
use super::scrub_live::live_counts;
use super::scrub_policy::{self, Candidate, Goal, UploadFirst};
use super::snap_set::{Relocation, SnapshotInfo};
use super::tlog::Record;
use crate::backend::keys;
use crate::error::{Error, Result};

/// Clusters of a victim SCO read at once (512 KiB with 4 KiB clusters); its live part is
/// then copied in one append, so a fragmented SCO costs a few large IOs, not one per run.
/// Not larger: a guest's 4 KiB read queued behind a 4 MiB scrub read on the disk waited
/// for it (native 70/30 random read/write with scrub running: p99 1.9 ms with 4 MiB
/// windows, 0.7 ms with 512 KiB, the same IOPS and scrub rate).
const WINDOW_CLUSTERS: u32 = 128;

/// What one scrub did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScrubReport {
    /// SCOs in the object store that were examined.
    pub scos_examined: u64,
    /// SCOs whose live data was copied before they were deleted.
    pub scos_rewritten: u64,
    /// SCOs deleted (rewritten ones plus ones nothing referenced).
    pub scos_deleted: u64,
    /// Bytes of live data copied.
    pub moved_bytes: u64,
    /// Stored bytes of the deleted SCO objects.
    pub freed_bytes: u64,
    /// Victims kept because a live cluster of theirs is rotten with no good copy (the
    /// rest of their live data was moved; see [`super::scrub_rot`]).
    #[serde(default)]
    pub scos_kept_rotten: u64,
    /// Live clusters left in those victims.
    #[serde(default)]
    pub rotten_clusters: u64,
    /// SCOs found sealed under an older key (before this pass rewrote some of them).
    pub stale_key_scos: u64,
}

/// Space use of a volume, from the live accounting.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpaceReport {
    /// Raw bytes of sealed SCOs in the object store that no map references.
    pub garbage_bytes: u64,
    /// Raw bytes of sealed SCOs in the object store that some map references.
    pub live_bytes: u64,
    /// Every snapshot, with the bytes only it references.
    pub snapshots: Vec<SnapshotInfo>,
}

/// Live and garbage clusters of a volume's log (see [`Volume::usage`]).
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Clusters of every SCO kept, sealed or open, uploaded or not.
    pub log: u64,
    /// Clusters some map references.
    pub live: u64,
    /// `log - live`.
    pub garbage: u64,
    /// Garbage in uploaded SCOs: what a pass can free without waiting for uploads.
    pub reclaimable: u64,
    /// `live` minus the current map's mapped entries (what snapshots hold).
    pub live_adjust: i64,
    /// The next epoch to open (ages of SCOs are measured from it).
    pub newest: u64,
    /// Uploaded SCOs.
    pub candidates: Vec<Candidate>,
}

/// A consistent copy of a volume's maps and what is computed from them.
struct Accounting {
    /// Current map first, then snapshots by id.
    maps: Vec<ClusterMap>,
    /// The snapshots of `maps[1..]`, in that order.
    snaps: Vec<SnapshotInfo>,
    /// Live clusters of each SCO across `maps`.
    live: ScoMap<u64>,
    sizes: BTreeMap<u64, u32>,
    last_uploaded: u64,
}

impl Volume {
    /// SCO objects of this volume in the store: number → (key, stored bytes).
    fn sco_objects(&self) -> Result<BTreeMap<u64, (String, u64)>> {
        let mut out = BTreeMap::new();
        for o in self.env.store.list(&keys::volume_prefix(&self.name))? {
            match keys::parse_data_key(&self.name, &o.key) {
                Some((gen, "sco", n)) if self.meta.owns(gen, n) => {
                    out.insert(n, (o.key, o.size));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Every map, their live counts, the SCO sizes and the last uploaded epoch, as of
    /// one moment.
    fn accounting(&self) -> Accounting {
        let st = self.state.lock();
        let maps = st.maps.copies();
        let snaps = st.maps.snaps.list.values().map(|s| s.info()).collect();
        let (sizes, last_uploaded) = (st.maps.sco_sizes.clone(), st.uploads.last_uploaded);
        drop(st);
        let live = live_counts(&maps, self.meta.sco_clusters);
        Accounting { maps, snaps, live, sizes, last_uploaded }
    }

    /// Live and garbage bytes, and what each snapshot alone holds.
    pub fn space(&self) -> Result<SpaceReport> {
        let Accounting { maps, snaps, live, sizes, last_uploaded } = self.accounting();
        let mut rep = SpaceReport { snapshots: snaps, ..SpaceReport::default() };
        for n in self.sco_objects()?.keys() {
            let total = sizes.get(n).copied().unwrap_or(0) as u64;
            if *n > last_uploaded {
                continue;
            }
            let l = live.get(n).copied().unwrap_or(0).min(total);
            rep.live_bytes += l * self.cs;
            rep.garbage_bytes += (total - l) * self.cs;
        }
        // A location is in a snapshot's exclusive set when no other map holds it (each
        // map holds a location at most once).
        if maps.len() > 1 {
            let mut count: HashMap<u64, u32> = HashMap::new();
            for m in &maps {
                m.for_each_mapped(|_, e| {
                    if Location::unpack(e).is_some() {
                        *count.entry(e).or_default() += 1;
                    }
                });
            }
            for (m, snap) in maps.iter().skip(1).zip(rep.snapshots.iter_mut()) {
                let mut excl = 0u64;
                m.for_each_mapped(|_, e| {
                    if count.get(&e) == Some(&1) {
                        excl += 1;
                    }
                });
                snap.exclusive_bytes = excl * self.cs;
            }
        }
        Ok(rep)
    }

    /// Live and garbage clusters of the volume's whole log (uploaded or not), and the
    /// uploaded SCOs scrub may rewrite, from the maps and the recorded SCO sizes (no
    /// object-store request). Also recounts the log the space gate sees.
    pub fn usage(&self) -> Usage {
        // Without snapshots the current map's own counts are read under the lock below,
        // with no copy and no walk. With snapshots every map is walked first (a snapshot
        // taken meanwhile is missed until the next look: live under-counted once).
        let walked = {
            let st = self.state.lock();
            (!st.maps.snaps.list.is_empty()).then(|| (st.maps.map.mapped(), st.maps.copies()))
        }
        .map(|(mapped, maps)| (mapped, live_counts(&maps, self.meta.sco_clusters)));
        let rotten = self.rotten.lock();
        let mut st = self.state.lock();
        let (mapped, walked) = match walked {
            Some((mapped, live)) => (mapped, Some(live)),
            None => (st.maps.map.mapped(), None),
        };
        let live_of = |map: &ClusterMap, n: u64| match &walked {
            Some(live) => live.get(&n).copied().unwrap_or(0),
            None => map.held_in(n),
        };
        let open = st.log.open.as_ref().map(|o| (o.epoch, o.next_index as u64));
        let mut u = Usage { newest: st.log.next_epoch, ..Usage::default() };
        for (&n, &size) in &st.maps.sco_sizes {
            let total = size as u64;
            let l = live_of(&st.maps.map, n).min(total);
            u.log += total;
            u.live += l;
            let c = Candidate { sco: n, total, live: l };
            if n <= st.uploads.last_uploaded && !rotten.passes_over(&c) {
                u.reclaimable += total - l;
                u.candidates.push(c);
            }
        }
        let rotten_scos = rotten.len() as u64;
        drop(rotten);
        self.space.update(|f| f.rotten_scos = rotten_scos);
        if let Some((e, next)) = open {
            u.log += next;
            u.live += live_of(&st.maps.map, e).min(next);
        }
        u.garbage = u.log - u.live;
        // Clusters reserved after the maps were copied count as garbage here until the
        // next look: a small over-estimate, never an under-estimate.
        st.scos.log_clusters = u.log;
        u.live_adjust = u.live as i64 - mapped as i64;
        self.space.refresh(st.scos.log_clusters, st.maps.map.mapped());
        u
    }

    /// Scrub: rewrite the live data of SCOs whose live fraction is below `threshold`,
    /// delete them and every SCO nothing references. Returns when done.
    pub fn scrub(&self, threshold: f64) -> Result<ScrubReport> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(Error::InvalidArgument(format!("scrub threshold {threshold} must be between 0 and 1")));
        }
        let rep = self.scrub_pass(&Goal::all_below(threshold), &mut |_| {})?;
        // The pass rewrote every SCO under an older key: the rest of a rotation follows.
        self.finish_rekey()?;
        Ok(rep)
    }

    /// Run `f` while no scrub pass of this volume runs. A reader that copies one of the
    /// volume's maps and registers itself (a snapshot view) does both in `f`: a pass
    /// relocates only the readers registered when it moves clusters, so a copy taken
    /// before a pass and registered after it would point into SCOs the pass deleted.
    pub fn without_scrub<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _one = self.scrub_lock.lock();
        f()
    }

    /// One scrub pass: delete dead SCOs and rewrite the victims `goal` picks (cost-benefit
    /// order); `pace(bytes)` is called after each copied run (the scrubber sleeps there
    /// to leave the disk to guests).
    pub fn scrub_pass(&self, goal: &Goal, pace: &mut dyn FnMut(u64)) -> Result<ScrubReport> {
        if self.read_only {
            return Err(Error::ReadOnly(self.name.clone()));
        }
        let _one = self.scrub_lock.lock();
        let started = std::time::Instant::now();
        // Only SCOs in the object store are candidates: upload everything sealed first
        // (unless the goal says what is uploaded is enough).
        match goal.upload_first {
            UploadFirst::No => {}
            UploadFirst::Drain => {
                self.flush()?;
                self.upload_all("before scrubbing; scrub again later")?;
            }
            UploadFirst::Within(t) => {
                self.flush()?;
                if !self.upload_sealed_within(t)? {
                    tracing::debug!(volume = %self.name, "uploads still running: scrubbing what is uploaded");
                }
            }
        }
        let t_upload = started.elapsed();

        let Accounting { maps, live, sizes, last_uploaded, .. } = self.accounting();
        let objects = self.sco_objects()?;
        let mut rep = ScrubReport::default();
        let cands: Vec<Candidate> = {
            let rotten = self.rotten.lock();
            objects
                .keys()
                .filter(|n| **n <= last_uploaded)
                .map(|&n| {
                    let total = sizes.get(&n).copied().unwrap_or(0) as u64;
                    Candidate { sco: n, total, live: live.get(&n).copied().unwrap_or(0) }
                })
                .filter(|c| !rotten.passes_over(c))
                .collect()
        };
        rep.scos_examined = cands.len() as u64;
        let newest = self.state.lock().log.next_epoch;
        let (dead, mut victims) = scrub_policy::choose(&cands, newest, goal);
        if goal.rekey {
            // SCOs sealed under an older key of an encrypted volume (after a rotation)
            // are rewritten whatever their live part, as far as the goal's copy bound
            // allows (the rest: next pass).
            let stale = self.scos_under_old_keys(&objects)?;
            rep.stale_key_scos = stale.len() as u64;
            let live_of = |n: &u64| cands.iter().find(|c| c.sco == *n).map(|c| c.live).unwrap_or(0);
            let mut moving: u64 = victims.iter().map(live_of).sum();
            for n in stale {
                let l = live_of(&n);
                if l == 0 || victims.contains(&n) || dead.contains(&n) {
                    continue;
                }
                if !victims.is_empty() && moving + l > goal.max_moved_clusters {
                    break;
                }
                moving += l;
                victims.push(n);
            }
        }

        // Which clusters (in any map) point into each victim: the map rewrite visits
        // only those.
        let holders = Holders::find(&maps, &victims, self.meta.sco_clusters);
        drop(maps);
        let mut copy = PassCopies { holders: &holders, moved: Relocation::default(), window: AlignedBuf::zeroed(0) };
        let mut kept = Vec::new();
        for &v in &victims {
            let total = sizes.get(&v).copied().unwrap_or(0);
            let all = holders.live_runs(v, total);
            // Runs grouped into windows: one read per window, one append of its live part.
            let mut rest = &all[..];
            let mut rotten = 0u64;
            while let Some(&(lo, _)) = rest.first() {
                let n = rest.iter().take_while(|(i, c)| i + c - lo <= WINDOW_CLUSTERS).count().max(1);
                let b = match self.move_window(&mut copy, v, &rest[..n]) {
                    // A rotten cluster with no good copy: move the window's other
                    // clusters one by one and leave the rotten ones where they are.
                    Err(Error::Corrupt { .. }) => {
                        let (b, r) = self.move_around_rot(&mut copy, v, &rest[..n])?;
                        rotten += r;
                        b
                    }
                    r => r?,
                };
                rep.moved_bytes += b;
                pace(b);
                rest = &rest[n..];
            }
            if rotten > 0 {
                tracing::error!(
                    volume = %self.name, sco = v, rotten,
                    "scrub: live clusters of this SCO are rotten and have no good copy; the rest was \
                     moved, the SCO is kept (reads of those clusters fail until the guest rewrites them)"
                );
                self.rotten.lock().keep(v, rotten);
                rep.scos_kept_rotten += 1;
                rep.rotten_clusters += rotten;
                kept.push(v);
                continue;
            }
            rep.scos_rewritten += 1;
            crate::fault::point("scrub-after-first-copy");
        }
        let moved = copy.moved;
        let t_copy = started.elapsed();
        if !victims.is_empty() {
            self.flush()?;
            crate::fault::point("scrub-after-flush");
            self.upload_all("of the scrubbed data; scrub again later")?;
            crate::fault::point("scrub-after-upload");
            // Clones and snapshot views open in this process read our maps: move them too.
            for other in self.env.volumes() {
                if !std::ptr::eq(other.as_ref(), self) {
                    other.relocate_layers(&self.name, &moved);
                }
            }
        }
        // Nothing references the old SCOs any more, in memory or in the object store.
        if !victims.is_empty() || !dead.is_empty() {
            // The overwrites that left them dead may still sit in an unflushed TLog
            // batch: made durable before anything goes, or a crash would bring back map
            // entries pointing at deleted SCOs.
            self.flush()?;
            self.check_owner()?;
        }
        let t_settle = started.elapsed();
        let mut unlink = Vec::new();
        // Victims kept for rot stay (their other clusters moved all the same: the
        // relocations above were flushed, uploaded and passed to clones as any).
        let gone: Vec<u64> = victims.iter().filter(|v| !kept.contains(v)).chain(&dead).copied().collect();
        // The first alone (a crash test stops right after it), the rest in one batch
        // (one DeleteObjects request per 1000 on S3).
        if let Some((first, rest)) = gone.split_first() {
            self.delete_objects(std::slice::from_ref(&objects[first].0))?;
            crate::fault::point("scrub-after-first-delete");
            let keys: Vec<String> = rest.iter().map(|n| objects[n].0.clone()).collect();
            self.delete_objects(&keys)?;
        }
        for n in &gone {
            let size = objects[n].1;
            rep.freed_bytes += size;
            rep.scos_deleted += 1;
            // Not under the volume lock: `usage` takes `rotten` first, then `state`.
            self.rotten.lock().forget(*n);
            let mut st = self.state.lock();
            if let Some(c) = st.maps.sco_sizes.remove(n) {
                st.scos.log_clusters = st.scos.log_clusters.saturating_sub(c as u64);
            }
            st.scos.forget_object(*n);
            if let Some(l) = st.scos.local.get(n) {
                if l.uploaded && l.inflight == 0 {
                    let l = st.scos.local.remove(n).expect("present");
                    st.scos.kept_bytes = st.scos.kept_bytes.saturating_sub((l.clusters as u64) << self.shift);
                    // Reusable only when no read holds the file (a plan keeps it open):
                    // new writes into it must never reach a read of the old data.
                    let idle = Arc::strong_count(&l.file) == 1;
                    unlink.push((l.file.path().to_path_buf(), idle));
                }
            }
        }
        // Writers waiting for space look again.
        if rep.scos_deleted > 0 {
            self.space.note_freed();
        }
        {
            let st = self.state.lock();
            self.space.refresh(st.scos.log_clusters, st.maps.map.mapped());
        }
        self.progress.notify_all();
        // Unlinking a large file takes a while: never under the volume lock. Dead files
        // nothing reads are kept for the next SCOs instead (see `spare_sco`).
        for (p, idle) in unlink {
            if !(idle && self.spare.offer(&p)) {
                let _ = std::fs::remove_file(p);
            }
        }
        // SCO sizes of objects gone earlier (a crashed scrub) are forgotten too.
        {
            let mut st = self.state.lock();
            let st = &mut *st;
            st.maps
                .sco_sizes
                .retain(|n, _| *n > last_uploaded || objects.contains_key(n) || st.scos.local.contains_key(n));
        }
        let t_delete = started.elapsed();
        if rep.scos_deleted > 0 {
            // A checkpoint without the deleted SCOs (it also prunes TLogs no restart
            // needs), taken when the open epoch is sealed: a checkpoint holds the maps as
            // of an epoch's end, never entries of an epoch still being written (a crash
            // could cut those off).
            self.state.lock().uploads.checkpoint_at_seal = true;
        }
        let secs = started.elapsed().as_secs_f64();
        tracing::debug!(
            volume = %self.name,
            upload_ms = t_upload.as_millis() as u64,
            copy_ms = (t_copy - t_upload).as_millis() as u64,
            settle_ms = (t_settle - t_copy).as_millis() as u64,
            delete_ms = (t_delete - t_settle).as_millis() as u64,
            "scrub pass phases"
        );
        self.space.update(|f| {
            f.scrub_passes += 1;
            f.scrub_moved_bytes += rep.moved_bytes;
            f.scrub_freed_bytes += rep.freed_bytes;
            f.scrub_rate = (rep.freed_bytes as f64 / secs.max(1e-3)) as u64;
        });
        if rep.scos_deleted > 0 {
            tracing::info!(volume = %self.name, ?rep, secs, "scrub pass finished");
        } else {
            tracing::debug!(volume = %self.name, ?rep, "scrub pass: nothing to reclaim");
        }
        Ok(rep)
    }

    /// Copy the live `runs` (index, count) of SCO `sco`, which lie within one window, into
    /// the open SCO: one read of the window, one append of the live clusters together
    /// (gathered from the window, not copied); log a relocation per run and rewrite every
    /// map entry that still points at them. Returns the bytes copied.
    fn move_window(&self, copy: &mut PassCopies, sco: u64, runs: &[(u32, u32)]) -> Result<u64> {
        let (Some(&(lo, _)), Some(&(last, last_n))) = (runs.first(), runs.last()) else { return Ok(0) };
        let PassCopies { holders, moved, window } = copy;
        let window = fit(window, ((last + last_n - lo) as usize) << self.shift);
        self.read_sco(Location::new(sco, lo), window)?;
        self.counters.scrub_read_bytes.fetch_add(window.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let live: u32 = runs.iter().map(|r| r.1).sum();
        // (source index, count, offset in the append), clusters; and the runs' iovecs.
        let mut pieces = Vec::with_capacity(runs.len());
        let mut iovs = Vec::with_capacity(runs.len());
        let mut at = 0u32;
        for &(i, n) in runs {
            let live = &window[((i - lo) as usize) << self.shift..((i - lo + n) as usize) << self.shift];
            iovs.push(iovec { iov_base: live.as_ptr() as *mut libc::c_void, iov_len: live.len() });
            pieces.push((i, n, at));
            at += n;
        }
        // SAFETY: `iovs` point into `window`, borrowed and unchanged for the call.
        let appended = unsafe {
            self.append_gathered(&iovs, |st, dst, done, take| {
                for &(i, n, off) in &pieces {
                    let (a, b) = (off.max(done), (off + n).min(done + take));
                    if a >= b {
                        continue;
                    }
                    let (src, to, count) = (Location::new(sco, i + (a - off)), dst.advance(a - done), b - a);
                    // Log and apply in one critical section, so a checkpoint taken at an
                    // epoch boundary has either both or neither.
                    self.append_record(st, &Record::Relocate { from: src, count, to })?;
                    for k in 0..count {
                        let (old, new) = (src.advance(k).pack(), to.advance(k).pack());
                        holders.for_each(src.advance(k), |c| {
                            for m in std::iter::once(&mut st.maps.map).chain(st.maps.snaps.maps_mut()) {
                                if m.get(c) == old {
                                    m.set(c, new);
                                }
                            }
                        });
                    }
                    moved.add(src, count, to);
                }
                Ok(())
            })
        };
        appended?;
        Ok((live as u64) << self.shift)
    }

    /// [`Self::move_window`] for a window with a rotten cluster: its clusters moved one
    /// by one, the rotten ones (no good copy) left in place. Returns the bytes copied and
    /// the clusters left.
    fn move_around_rot(&self, copy: &mut PassCopies, sco: u64, runs: &[(u32, u32)]) -> Result<(u64, u64)> {
        let (mut bytes, mut rotten) = (0, 0);
        for i in runs.iter().flat_map(|&(i, n)| i..i + n) {
            match self.move_window(copy, sco, &[(i, 1)]) {
                Ok(b) => bytes += b,
                Err(Error::Corrupt { key, detail }) => {
                    tracing::warn!(volume = %self.name, sco, cluster = i, %key, %detail, "scrub: rotten cluster left in place");
                    rotten += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((bytes, rotten))
    }

    /// Read whole clusters from `from` of an uploaded SCO (local copy or object store).
    fn read_sco(&self, from: Location, buf: &mut [u8]) -> Result<()> {
        let off = (from.index as u64) << self.shift;
        let v = [iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() }];
        // A local copy, or an object that is a file here (hard-linked and still open, or
        // read in place): read as a guest read is, checked against the checksums (a
        // rotten local copy is read from the object store's own copy, if any; copying it
        // on would give the rotten bytes a fresh checksum), with no object-store fetch,
        // decode or copy otherwise. O_DIRECT where the buffer allows (the windows are
        // aligned): a victim read through the page cache left its pages cached, and once
        // its file was recycled every guest write into it lost io_uring's non-blocking
        // path.
        let file = self.state.lock().scos.file(from.sco).cloned();
        if let Some(f) = file.or_else(|| self.file_in_place(from.sco)) {
            return self.read_local(&f, from, 0, buf.len() as u64, &v, &mut Vec::new(), false);
        }
        let key = keys::sco(&self.name, self.meta.gen_of_epoch(from.sco), from.sco);
        let (start, data): (u64, Arc<Vec<u8>>) = self.env.reader.read_frames(&key, off, buf.len() as u64)?;
        let at = (off - start) as usize;
        buf.copy_from_slice(&data[at..at + buf.len()]);
        Ok(())
    }
}

/// What a pass's copies share.
struct PassCopies<'a> {
    /// Which clusters point into each victim.
    holders: &'a Holders,
    /// The relocations done so far (passed to clones once uploaded).
    moved: Relocation,
    /// The window buffer, reused window after window (fresh zeroed 4 MiB buffers per
    /// window were ~6 % of the daemon's samples under random writes).
    window: AlignedBuf,
}

/// `buf` grown to at least `len` bytes (contents unspecified), as a `len`-byte slice.
fn fit(buf: &mut AlignedBuf, len: usize) -> &mut [u8] {
    if buf.len() < len {
        *buf = AlignedBuf::zeroed(len);
    }
    &mut buf[..len]
}
