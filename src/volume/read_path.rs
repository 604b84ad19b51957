//! The read path: resolve clusters through the maps (current, then parent layers) to
//! zeroes, local SCO files or the object store (through the read cache, with read-ahead
//! for sequential reads), and plan reads a frontend performs itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::engine::Volume;
use super::iov::{self, iovec};
use super::layers::Layer;
use super::location::Location;
use super::plan::IoPlan;
use super::read_cache::{BlockKey, Fill, BLOCK};
use super::sco_file::ScoFile;
use crate::backend::keys;
use crate::error::Result;

/// On a sequential miss, fetch this much beyond the request from the object store.
const READ_AHEAD: u64 = 1 << 20;

/// Reads of one request again after its data moved under it (each a scrub pass that
/// moved it between the lookup and the read; more in a row would mean passes back to back
/// faster than one object-store read, or a bug).
const MAX_MOVED_RETRIES: u32 = 8;

thread_local! {
    /// Per-thread iovec scratch for reads: the run being read, and its per-block pieces.
    static SCRATCH: std::cell::RefCell<(Vec<iovec>, Vec<iovec>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Where a run of clusters is read from.
enum Source {
    Zero,
    Local(Arc<ScoFile>, Location),
    Remote(Option<Arc<Layer>>, Location),
}

impl Volume {
    /// Plan a read the caller performs itself: local file ranges and zero runs.
    /// `Ok(false)`: some data is only in the object store (or too many runs) — use
    /// `read_iovecs`.
    pub fn plan_read(&self, offset: u64, len: u64, plan: &mut IoPlan) -> Result<bool> {
        plan.clear();
        self.check_range("read", offset, len)?;
        if len == 0 {
            return Ok(false);
        }
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            if plan.is_full() {
                plan.clear();
                return Ok(false);
            }
            let cluster = pos >> self.shift;
            let in_off = pos & (self.cs - 1);
            let (src, run) = self.resolve_run(cluster, (end - 1) >> self.shift);
            let run_bytes = ((run << self.shift) - in_off).min(end - pos);
            match src {
                Source::Zero => plan.push_zero(run_bytes),
                Source::Local(file, loc) => {
                    // Rotten SCOs, and parts of clusters with checksums (checked only
                    // whole), are read by `read_iovecs`.
                    let whole = in_off == 0 && run_bytes.is_multiple_of(self.cs);
                    // So are object files' clusters not yet checked against their frames.
                    let unchecked = file.frames.is_some() && !file.crcs.all_known(loc.index, run as u32);
                    if file.crcs.is_rotten() || unchecked || (!whole && file.crcs.any_known(loc.index, run as u32)) {
                        plan.clear();
                        return Ok(false);
                    }
                    plan.push_file(&file, ((loc.index as u64) << self.shift) + in_off, run_bytes, 0, 0)
                }
                Source::Remote(..) => {
                    plan.clear();
                    return Ok(false);
                }
            }
            pos += run_bytes;
        }
        plan.set_check_unit(self.cs as usize);
        self.counters.local_reads.fetch_add(plan.file_segs() as u64, Ordering::Relaxed);
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters.read_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(true)
    }
    // ----- read path -----

    /// Read into `iovs` from byte `offset`.
    pub fn read_iovecs(&self, offset: u64, iovs: &[iovec]) -> Result<()> {
        let len = iov::total(iovs);
        self.check_range("read", offset, len)?;
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters.read_bytes.fetch_add(len, Ordering::Relaxed);
        let sequential = self.last_read_end.swap(offset + len, Ordering::Relaxed) == offset;
        SCRATCH.with(|s| {
            let (sub, pieces) = &mut *s.borrow_mut();
            let end = offset + len;
            let mut pos = offset;
            let mut moves = 0;
            while pos < end {
                let cluster = pos >> self.shift;
                let in_off = pos & (self.cs - 1);
                let last_cluster = (end - 1) >> self.shift;
                let (src, run) = self.resolve_run(cluster, last_cluster);
                let run_bytes = ((run << self.shift) - in_off).min(end - pos);
                iov::sub_range(iovs, pos - offset, run_bytes, sub);
                let (res, loc) = match src {
                    Source::Zero => {
                        // SAFETY: the caller's iovecs are valid writable buffers.
                        unsafe { iov::zero(sub) };
                        (Ok(()), None)
                    }
                    Source::Local(file, loc) => {
                        self.counters.local_reads.fetch_add(1, Ordering::Relaxed);
                        (self.read_local(&file, loc, in_off, run_bytes, sub, pieces, sequential), Some(loc))
                    }
                    Source::Remote(layer, loc) => {
                        let r = self.read_remote(layer.as_deref(), loc, in_off, run_bytes, sub, pieces, sequential);
                        (r, Some(loc))
                    }
                };
                if let Err(e) = res {
                    // A scrub pass may have moved the run and deleted its old SCO between
                    // the lookup and the read (it rewrites the maps first): read it again
                    // from where it is now.
                    let now = Location::unpack(self.state.lock().maps.lookup(cluster).1);
                    if now != loc && moves < MAX_MOVED_RETRIES {
                        moves += 1;
                        tracing::debug!(volume = %self.name, error = %e, "data moved while being read: reading it again");
                        continue;
                    }
                    tracing::error!(volume = %self.name, offset = pos, error = %e, "read failed");
                    return Err(e);
                }
                pos += run_bytes;
            }
            Ok(())
        })
    }

    /// Resolve clusters from `first` (up to `last`) to one source run.
    fn resolve_run(&self, first: u64, last: u64) -> (Source, u64) {
        let st = self.state.lock();
        let (layer, loc, run) = st.maps.run(first, last);
        let Some(loc) = loc else { return (Source::Zero, run) };
        if layer > 0 {
            return (Source::Remote(Some(st.maps.layers[layer - 1].clone()), loc), run);
        }
        match st.scos.file(loc.sco) {
            Some(f) => (Source::Local(f.clone(), loc), run),
            None => (Source::Remote(None, loc), run),
        }
    }

    /// Read bytes `[in_off, in_off+len)` counted from location `loc` of an SCO that is
    /// only in the object store: read cache first, else fetch frames and fill the cache.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn read_remote(
        &self,
        layer: Option<&Layer>,
        loc: Location,
        in_off: u64,
        len: u64,
        iovs: &[iovec],
        sub: &mut Vec<iovec>,
        sequential: bool,
    ) -> Result<()> {
        let start = ((loc.index as u64) << self.shift) + in_off;
        let end = start + len;
        let mut pos = start;

        while pos < end {
            let block = pos / BLOCK as u64;
            let boff = (pos % BLOCK as u64) as usize;
            let take = (BLOCK as u64 - boff as u64).min(end - pos);
            iov::sub_range(iovs, pos - start, take, sub);
            let (owner, name, meta) = match layer {
                Some(l) => (l.owner, l.volume.as_str(), &l.meta),
                None => (self.owner, self.name.as_str(), &self.meta),
            };
            let key = BlockKey { owner, sco: loc.sco, block: block as u32 };
            if self.env.cache.read(key, boff, sub) {
                pos += take;
                continue;
            }
            // Miss. The volume's own SCO object may be a file to read in place.
            if layer.is_none() {
                if let Some(file) = self.file_in_place(loc.sco) {
                    iov::sub_range(iovs, pos - start, end - pos, sub);
                    let from = pos - ((loc.index as u64) << self.shift);
                    // Only a rotten SCO with another copy uses it: never this one.
                    let mut unused = Vec::new();
                    self.counters.local_reads.fetch_add(1, Ordering::Relaxed);
                    return self.read_local(&file, loc, from, end - pos, sub, &mut unused, sequential);
                }
            }
            // Fetch the frames covering the rest of the range (and, for sequential
            // reads, up to READ_AHEAD more of the same SCO into the cache).
            let okey = keys::sco(name, meta.gen_of_epoch(loc.sco), loc.sco);
            let mut fetch_end = end;
            if sequential {
                if let Ok(ix) = self.env.reader.index(&okey) {
                    fetch_end = (end + READ_AHEAD).min(ix.raw_len).max(end);
                }
            }
            let mut fetched = self.env.reader.read_frames(&okey, pos, fetch_end - pos);
            if fetched.is_err() && fetch_end > end {
                // The read-ahead part may be what failed: retry just the request.
                fetched = self.env.reader.read_frames(&okey, pos, end - pos);
            }
            let (raw_start, data) = fetched.map_err(|e| {
                tracing::debug!(volume = %self.name, object = %okey, error = %e, "read from the object store failed");
                e
            })?;
            // Fill the cache with every whole block fetched, in the background.
            let first_block = raw_start.div_ceil(BLOCK as u64);
            let last_block = (raw_start + data.len() as u64) / BLOCK as u64;
            if last_block > first_block {
                self.env.cache.insert_blocks_async(Fill {
                    owner,
                    sco: loc.sco,
                    first_block,
                    data: data.clone(),
                    start: (first_block * BLOCK as u64 - raw_start) as usize,
                    blocks: (last_block - first_block) as usize,
                });
            }
            iov::sub_range(iovs, pos - start, end - pos, sub);
            let at = (pos - raw_start) as usize;
            // SAFETY: the caller's iovecs are valid writable buffers.
            unsafe { iov::copy_in(sub, &data[at..at + (end - pos) as usize]) };
            return Ok(());
        }
        Ok(())
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let v = [iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() }];
        self.read_iovecs(offset, &v)
    }

    /// True when no cluster of `[offset, offset+len)` holds data (reads as zeroes).
    pub fn is_unmapped(&self, offset: u64, len: u64) -> bool {
        let st = self.state.lock();
        let first = offset >> self.shift;
        let last = (offset + len - 1) >> self.shift;
        (first..=last).all(|c| Location::unpack(st.maps.lookup(c).1).is_none())
    }
}
