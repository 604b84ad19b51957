//! The write path: guest writes (aligned, read-modify-written, planned for io_uring),
//! reservations at the tail of the open SCO (write-buffer throttle, pacer, space gate),
//! TLog records of the open epoch, maintenance copies and discards.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cluster_crc;
use super::crc_records;
use super::dtl_link::DtlMode;
use super::engine::Volume;
use super::iov::{self, iovec, AlignedBuf};
use super::location::Location;
use super::plan::{IoPlan, MAX_SEGS};
use super::sco_file::ScoFile;
use super::space::{Admit, LOW_DISK_WAIT};
use super::state::State;
use super::tlog::Record;
use crate::error::{Error, Result};

thread_local! {
    /// Per-thread scratch for a synchronous write's cluster checksums (no allocation per
    /// write once it has grown to the largest write's cluster count).
    static CRCS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Once the TLog's file system has been full this long, a write throttled on a full write
/// buffer fails: the uploads that would make room need the TLog.
const LOG_FULL_WAIT: Duration = Duration::from_secs(2);
/// Scrub and flatten copies may fill the write buffer this fraction of its limit beyond
/// where guest writes wait (1/8: 2 MiB of a 16 MiB buffer, 512 MiB of the default 4 GiB).
/// Copies are how space comes back: had they waited with the guest's writes for uploads to
/// make room, every upload would be taken again by the many guest requests waiting at
/// once, and a scrub pass moving 0.4 MB took 10 s while the disk filled.
const MAINTENANCE_HEADROOM_DIV: u64 = 8;

impl Volume {
    // ----- write path -----

    /// Write `iovs` at byte `offset`. Unaligned edges are read-modify-written.
    pub fn write_iovecs(&self, offset: u64, iovs: &[iovec]) -> Result<()> {
        let len = iov::total(iovs);
        self.check_range("write", offset, len)?;
        if self.read_only {
            return Err(Error::ReadOnly(self.name.clone()));
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters.write_bytes.fetch_add(len, Ordering::Relaxed);
        if len == 0 {
            return Ok(());
        }
        let mask = self.cs - 1;
        if offset & mask == 0 && len & mask == 0 {
            return self.write_clusters(offset >> self.shift, iovs);
        }
        let _g = self.rmw.lock();
        let end = offset + len;
        let mut pos = offset;
        let mut sub = Vec::new();
        while pos < end {
            let cstart = pos & !mask;
            let in_off = pos - cstart;
            if in_off == 0 && end - pos >= self.cs {
                // Aligned middle part, straight from the caller's buffers.
                let n = (end - pos) & !mask;
                iov::sub_range(iovs, pos - offset, n, &mut sub);
                self.write_clusters(pos >> self.shift, &sub)?;
                pos += n;
                continue;
            }
            let take = (self.cs - in_off).min(end - pos);
            let mut buf = AlignedBuf::zeroed(self.cs as usize);
            self.read_iovecs(cstart, &[buf.as_iovec()])?;
            iov::sub_range(iovs, pos - offset, take, &mut sub);
            // SAFETY: `sub` points into the caller's buffers, valid for this call.
            unsafe { iov::copy_out(&sub, &mut buf[in_off as usize..(in_off + take) as usize]) };
            self.write_clusters(cstart >> self.shift, &[buf.as_iovec()])?;
            pos += take;
        }
        Ok(())
    }

    /// Write whole clusters from `cluster`; `iovs` holds a multiple of the cluster size.
    ///
    /// Every write takes cluster checksums as it is written (two crc32c passes over its
    /// buffers on the IO path: before the IO, and after it to catch buffers the guest
    /// changed in flight): reads of local SCO data check them (`super::sco_crcs`), and an
    /// upload by hard link combines them into frame checksums (`Volume::adopt_sco`);
    /// clusters without one (written before a restart) get theirs when the uploader reads
    /// the SCO back. Checksumming only writes up to 64 KiB and reading larger ones back at
    /// upload cost more (a second disk read of the data, uploader CPU on cold memory):
    /// measured 2026-12-04, 1 MiB QD8 overwrites of a 1 GiB volume (native loadgen, 2
    /// queues, 3 alternating runs, busy 2-core host): 578-583 MB/s and 544-610 us CPU per
    /// IO checksumming every write, against 351-403 MB/s and 679-750 us.
    fn write_clusters(&self, cluster: u64, iovs: &[iovec]) -> Result<()> {
        let n = iov::total(iovs) >> self.shift;
        let dtl = self.dtl.read().clone();
        let mut done = 0u64;
        let mut sub = Vec::new();
        while done < n {
            let (file, index, take) = self.reserve(n - done, true, true)?;
            let bytes = (take as u64) << self.shift;
            let piece: &[iovec] = if done == 0 && take as u64 == n {
                iovs
            } else {
                iov::sub_range(iovs, done << self.shift, bytes, &mut sub);
                &sub
            };
            let io = CRCS.with_borrow_mut(|crcs| -> Result<_> {
                crcs.clear();
                // SAFETY: `piece` points into the caller's buffers, valid for this call.
                unsafe { cluster_crc::compute(piece, self.cs as usize, crcs) };
                let io = file.writev_at(piece, (index as u64) << self.shift);
                // SAFETY: as above.
                unsafe { cluster_crc::recheck(piece, self.cs as usize, crcs) };
                let ok = io.is_ok();
                if let (Some(l), true) = (&dtl, ok) {
                    // The data goes to the peer before the record that maps it.
                    let r = l.send_data(file.number, index, cluster + done, self.cs, piece);
                    self.dtl_result(r)?;
                }
                self.commit(&mut self.state.lock(), file.number, index, cluster + done, take, ok, crcs)?;
                Ok(io)
            })?;
            if let Err(e) = io {
                return Err(Error::io(format!("volume {}: cannot write SCO {}", self.name, file.number), e));
            }
            done += take as u64;
        }
        self.dtl_wait(dtl.as_deref(), DtlMode::Sync)
    }

    /// Finish a reserved write of `take` clusters at `(sco, index)` for `cluster`: map
    /// them, keep their checksums (`crcs`, one per cluster, or empty) and log the record
    /// if the data landed; release the reservation either way.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        st: &mut State,
        sco: u64,
        index: u32,
        cluster: u64,
        take: u32,
        ok: bool,
        crcs: &[u64],
    ) -> Result<()> {
        let Some(loc) = st.land(sco, index, cluster, take, ok, crcs) else {
            self.env.uploader.notify();
            return Ok(());
        };
        self.append_record(st, &Record::Write { cluster, count: take, loc })?;
        // The checksums follow in the same batch, so a restart gets them back.
        if crcs.len() == take as usize {
            crc_records::for_each_record(loc, crcs, |r| self.append_record(st, &r))?;
        }
        if crcs.len() != take as usize || crcs.iter().any(|&c| cluster_crc::get(c).is_none()) {
            st.log.unchecked = true;
        }
        Ok(())
    }

    /// Plan a write the caller performs itself (io_uring): reserves space for whole,
    /// aligned clusters. `Ok(false)`: not plannable (unaligned, too many segments) — use
    /// `write_iovecs`. A planned write must be finished with [`Volume::finish_write`].
    pub fn plan_write(&self, offset: u64, len: u64, plan: &mut IoPlan) -> Result<bool> {
        plan.clear();
        self.check_range("write", offset, len)?;
        if self.read_only {
            return Err(Error::ReadOnly(self.name.clone()));
        }
        let mask = self.cs - 1;
        let n = len >> self.shift;
        let sco_clusters = self.meta.sco_clusters as u64;
        if offset & mask != 0 || len & mask != 0 || len == 0 || n.div_ceil(sco_clusters) + 1 > MAX_SEGS as u64 {
            return Ok(false);
        }
        if self.dtl.read().is_some() {
            // Writes to a DTL copy their data from the request: the synchronous path.
            return Ok(false);
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters.write_bytes.fetch_add(len, Ordering::Relaxed);
        // Checksummed as written (see `write_clusters`).
        plan.set_crc_unit(self.cs as usize);
        let cluster = offset >> self.shift;
        let mut done = 0u64;
        while done < n {
            // Every piece is reserved before any is written: only the first may wait for
            // room in the write buffer (a later one would wait for the upload of the SCO
            // the earlier pieces hold in flight: a 1 MiB write across two 1 MiB SCOs hung
            // there, an 8 MiB buffer full).
            let (file, index, take) = match self.reserve(n - done, true, done == 0) {
                Ok(r) => r,
                Err(e) => {
                    let _ = self.finish_write(plan, false);
                    return Err(e);
                }
            };
            plan.push_file(&file, (index as u64) << self.shift, (take as u64) << self.shift, cluster + done, index);
            done += take as u64;
        }
        Ok(true)
    }

    /// Report the outcome of a planned write; clears the plan.
    pub fn finish_write(&self, plan: &mut IoPlan, ok: bool) -> Result<()> {
        let mut st = self.state.lock();
        let mut res = Ok(());
        let mut at = 0usize;
        for s in plan.segs() {
            let take = (s.len >> self.shift) as u32;
            // The plan's checksums run over its segments in order (none if not taken).
            let crcs = plan.crcs().get(at..at + take as usize).unwrap_or(&[]);
            at += take as usize;
            let r = self.commit(&mut st, s.sco, s.index, s.cluster, take, ok, crcs);
            if res.is_ok() {
                res = r;
            }
        }
        drop(st);
        plan.clear();
        res
    }

    /// Reserve up to `want` clusters at the tail of the open SCO, throttling while the
    /// write buffer is full (and, for `guest` writes, while space is short: see
    /// [`super::space`]) and rolling to a new epoch when the SCO is full. Scrub and
    /// flatten copies pass the space gate: they are how space comes back. `may_wait`
    /// false: the caller holds reservations not yet finished, so no throttle or pause.
    pub(crate) fn reserve(&self, want: u64, guest: bool, may_wait: bool) -> Result<(Arc<ScoFile>, u32, u32)> {
        let mut st = self.state.lock();
        self.check_writable(&st)?;
        if guest {
            // Waiting for space is the caller's (`wait_for_space`, before it holds any
            // reservation: an upload, and so scrub, waits for every reservation of an
            // SCO to finish); here a write only fails when nothing can be freed.
            if let Admit::Fail(why) = self.space.admit(st.scos.log_clusters, st.maps.map.mapped()) {
                return Err(Error::NoSpace { volume: self.name.clone(), detail: why });
            }
        }
        if guest && may_wait && self.env.opts.pace_writes {
            let pause = self.pacer.pause(want << self.shift, st.scos.wb_bytes, self.env.opts.wb_limit);
            if !pause.is_zero() {
                self.counters.paced.fetch_add(1, Ordering::Relaxed);
                self.counters.paced_us.fetch_add(pause.as_micros() as u64, Ordering::Relaxed);
                parking_lot::MutexGuard::unlocked(&mut st, || std::thread::sleep(pause));
                self.check_writable(&st)?;
            }
        }
        let limit = self.env.opts.wb_limit;
        let limit = if guest {
            limit
        } else {
            limit + (limit / MAINTENANCE_HEADROOM_DIV).max((self.meta.sco_clusters as u64) << self.shift)
        };
        if may_wait {
            self.wait_write_buffer(&mut st, limit, guest)?;
        }
        let sco_clusters = self.meta.sco_clusters;
        if st.log.needs_roll(sco_clusters, self.shift, || self.spare.is_ready()) {
            if st.log.open.is_some() {
                // The uploader makes the seal durable (a flush) in the background.
                self.env.uploader.notify();
            }
            self.roll(&mut st, true)?;
        }
        let (file, index, take) = st.reserve_tail(want, sco_clusters, self.shift);
        self.pacer.note_level(st.scos.wb_bytes, self.env.opts.wb_limit);
        self.env.disk.consume((take as u64) << self.shift);
        self.space.refresh(st.scos.log_clusters, st.maps.map.mapped());
        Ok((file, index, take))
    }

    /// Wait while the write buffer holds `limit` bytes or more, until uploads make room.
    /// A guest write reaches this holding none of its own reservations only when its
    /// frontend waited first (`wait_for_space`, after completing what it has in flight):
    /// an SCO is uploaded once every reservation in it has finished, so a worker waiting
    /// here with writes of its own in flight could wait for itself (found as a hang: an
    /// 8 MiB buffer of 1 MiB SCOs, 1 MiB writes at QD8 on 2 queues).
    fn wait_write_buffer(&self, st: &mut parking_lot::MutexGuard<'_, State>, limit: u64, guest: bool) -> Result<()> {
        let mut throttled = None;
        while st.scos.wb_bytes >= limit {
            if throttled.is_none() {
                throttled = Some(Instant::now());
                self.counters.throttled.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(volume = %self.name, "write buffer full: throttling writes until uploads catch up");
            }
            self.env.uploader.notify();
            self.progress.wait_for(st, Duration::from_millis(100));
            self.check_writable(st)?;
            if st.log.log_full_since.is_some_and(|t| t.elapsed() >= LOG_FULL_WAIT) {
                // Uploads that would make room cannot finish while the TLog cannot be
                // written: fail the write rather than hold the guest's request (at most
                // LOG_FULL_WAIT, counted from the first TLog write refused).
                return Err(self.log_space_error(&Error::io(
                    "the write buffer is full and its TLog cannot be written",
                    std::io::Error::from_raw_os_error(libc::ENOSPC),
                )));
            }
        }
        if let Some(t) = throttled {
            let waited_ms = t.elapsed().as_millis() as u64;
            tracing::debug!(volume = %self.name, waited_ms, guest, "write buffer throttle released");
        }
        self.pacer.note_level(st.scos.wb_bytes, self.env.opts.wb_limit);
        Ok(())
    }

    /// Recompute whether writes must wait (after the limits changed) and wake waiters.
    pub(crate) fn refresh_space(&self) {
        let st = self.state.lock();
        self.space.refresh(st.scos.log_clusters, st.maps.map.mapped());
        drop(st);
        self.progress.notify_all();
    }

    /// Writes may go on without waiting for scrub (one atomic load).
    pub fn space_admits(&self) -> bool {
        self.space.admits() && !self.pacer.is_full()
    }

    /// Wait while space is short, until scrub frees some; [`Error::NoSpace`] when nothing
    /// can be freed or the wait times out. Call it before a write, holding no
    /// reservation (a frontend first completes the requests it has in flight).
    pub fn wait_for_space(&self) -> Result<()> {
        if self.space_admits() {
            return Ok(());
        }
        let mut st = self.state.lock();
        if !self.space.admits() {
            self.wait_for_space_locked(&mut st)?;
        }
        // Then for room in the write buffer, holding no reservation (see
        // `wait_write_buffer`).
        self.wait_write_buffer(&mut st, self.env.opts.wb_limit, true)
    }

    fn wait_for_space_locked(&self, st: &mut parking_lot::MutexGuard<'_, State>) -> Result<()> {
        // The timeout runs from the last time scrub freed space: writes slowed to what
        // scrub reclaims go on; they fail only when scrub makes no progress at all.
        let entered = Instant::now();
        let mut start = entered;
        let mut mark = self.space.freed_mark();
        let timeout = self.env.opts.space_wait;
        self.space.set_waiting(true);
        let res = loop {
            let admit = self.space.admit(st.scos.log_clusters, st.maps.map.mapped());
            self.space.refresh(st.scos.log_clusters, st.maps.map.mapped());
            match admit {
                Admit::Yes => break Ok(()),
                Admit::Fail(why) => break Err(Error::NoSpace { volume: self.name.clone(), detail: why }),
                Admit::Wait | Admit::Slow if self.space.freed_mark() != mark => {
                    mark = self.space.freed_mark();
                    start = Instant::now();
                }
                Admit::Slow if start.elapsed() >= LOW_DISK_WAIT => {
                    tracing::debug!(volume = %self.name, "scrub freed nothing while the disk is low: writes go ahead");
                    self.space.lift_low_disk(mark);
                    self.space.refresh(st.scos.log_clusters, st.maps.map.mapped());
                    break Ok(());
                }
                Admit::Wait if start.elapsed() >= timeout => {
                    break Err(Error::NoSpace {
                        volume: self.name.clone(),
                        detail: format!("scrub freed nothing for {} s", timeout.as_secs()),
                    })
                }
                Admit::Wait | Admit::Slow => {
                    self.progress.wait_for(st, Duration::from_millis(50));
                    if let Err(e) = self.check_writable(st) {
                        break Err(e);
                    }
                }
            }
        };
        self.space.set_waiting(false);
        self.space.note_waited(entered.elapsed());
        if let Err(e) = &res {
            tracing::warn!(volume = %self.name, error = %e, "write refused");
        }
        res
    }

    /// Append a record to the open epoch's pending batch (opening one if needed).
    pub(crate) fn append_record(&self, st: &mut State, rec: &Record) -> Result<()> {
        if st.log.open.is_none() {
            self.roll(st, true)?;
        }
        let (epoch, bytes) = st.log.append(rec);
        if let Some(l) = &*self.dtl.read() {
            let r = l.send_record(epoch, bytes);
            self.dtl_result_locked(st, r)?;
        }
        Ok(())
    }

    /// Append whole clusters of `data` to the open SCO (over as many reservations as it
    /// takes) for maintenance copies (scrub, flatten). Once each piece has landed,
    /// `landed(state, location, first cluster of data, clusters)` maps and logs it under
    /// the volume lock.
    pub(crate) fn append_data(
        &self,
        data: &[u8],
        landed: impl FnMut(&mut State, Location, u32, u32) -> Result<()>,
    ) -> Result<()> {
        let v = [iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() }];
        // SAFETY: `v` describes `data`, borrowed for the whole call.
        unsafe { self.append_gathered(&v, landed) }
    }

    /// [`Self::append_data`] from the buffers of `iovs` in order, each a whole number of
    /// clusters: scrub writes a window's live runs straight from where they were read
    /// (packing them into one buffer first was 15 % of the daemon's CPU under random
    /// writes).
    ///
    /// # Safety
    /// Every iovec must point to readable memory of its length for the whole call.
    pub(crate) unsafe fn append_gathered(
        &self,
        iovs: &[iovec],
        mut landed: impl FnMut(&mut State, Location, u32, u32) -> Result<()>,
    ) -> Result<()> {
        let n = (iov::total(iovs) >> self.shift) as u32;
        let mut done = 0u32;
        let mut piece = Vec::with_capacity(iovs.len());
        let mut crcs = Vec::new();
        while done < n {
            let (file, index, take) = self.reserve((n - done) as u64, false, true)?;
            iov::sub_range(iovs, (done as u64) << self.shift, (take as u64) << self.shift, &mut piece);
            crcs.clear();
            // SAFETY: `piece` lies within `iovs`, readable for the call (the contract).
            unsafe { cluster_crc::compute(&piece, self.cs as usize, &mut crcs) };
            let io = file.writev_at(&piece, (index as u64) << self.shift);
            let mut st = self.state.lock();
            if let Some(l) = st.scos.local.get_mut(&file.number) {
                l.inflight -= 1;
            }
            if let Err(e) = io {
                drop(st);
                self.env.uploader.notify();
                return Err(Error::io(format!("volume {}: cannot write SCO {}", self.name, file.number), e));
            }
            if let Some(l) = &*self.dtl.read() {
                let r = l.send_data(file.number, index, 0, self.cs, &piece);
                self.dtl_result_locked(&mut st, r)?;
            }
            st.log.dirty.insert(file.number);
            let loc = Location::new(file.number, index);
            landed(&mut st, loc, done, take)?;
            // The copy's checksums, in memory and logged after the records that map it.
            if let Some(l) = st.scos.local.get(&file.number) {
                l.file.crcs.store(index, &crcs);
            }
            crc_records::for_each_record(loc, &crcs, |r| self.append_record(&mut st, &r))?;
            done += take;
        }
        Ok(())
    }

    // ----- discard / write zeroes -----

    /// Make `[offset, offset+len)` read as zeroes. Whole clusters are unmapped (a TLog
    /// record, no data written); partial clusters at the edges are zero-written.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range("write-zeroes", offset, len)?;
        if self.read_only {
            return Err(Error::ReadOnly(self.name.clone()));
        }
        let mask = self.cs - 1;
        let end = offset + len;
        let first_full = (offset + mask) & !mask;
        let last_full = end & !mask;
        if first_full >= last_full {
            return self.zero_bytes(offset, len);
        }
        if offset < first_full {
            self.zero_bytes(offset, first_full - offset)?;
        }
        // Unmap whole clusters, in chunks so guest IO is never blocked for long.
        let mut c = first_full >> self.shift;
        let c_end = last_full >> self.shift;
        const CHUNK: u64 = 1 << 16;
        while c < c_end {
            let n = (c_end - c).min(CHUNK);
            let mut st = self.state.lock();
            self.check_writable(&st)?;
            // Unmapped clusters read as zeroes (a clone records ZERO: no fall-through).
            let entry = st.maps.zero_entry();
            st.maps.map.fill(c, n, entry);
            self.append_record(&mut st, &Record::Fill { cluster: c, count: n, entry })?;
            drop(st);
            c += n;
        }
        if last_full < end {
            self.zero_bytes(last_full, end - last_full)?;
        }
        self.dtl_wait(self.dtl.read().clone().as_deref(), DtlMode::Sync)
    }

    fn zero_bytes(&self, offset: u64, len: u64) -> Result<()> {
        let mut z = vec![0u8; len as usize];
        let v = [iovec { iov_base: z.as_mut_ptr() as *mut libc::c_void, iov_len: z.len() }];
        self.write_iovecs(offset, &v)
    }

    // ----- convenience for slices -----

    /// Write `data` at `offset`, first waiting while space is short.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.wait_for_space()?;
        let v = [iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() }];
        self.write_iovecs(offset, &v)
    }
}
