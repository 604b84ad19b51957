//! TLog: the transaction log of one epoch of a volume, written as checksummed batches.
//!
//! ```text
//! batch:  magic u32 "LDTB" | epoch u64 | seq u32 | count u32 | payload_len u32 |
//!         crc32c(header[0..24] + payload) u32 | payload (records)
//! record: one entry, encoded as in `super::tlog_record`
//! ```
//! A torn tail (crash during a batch write) fails its checksum and is cut off on replay.
//! The magic says whether the data the batch maps was durable when the batch was written:
//! "LDTB" after a sync of that data, "LDTU" ahead of it (records of completed writes, and
//! a flush that syncs data and records with one device flush). A power loss can keep an
//! "LDTU" batch and lose the data under it; recovery checks such batches of an unsealed
//! TLog against their checksum records (`super::tail_check`).
//! Batches written with O_DIRECT start on 512-byte sectors; the zeroes between them, and
//! a zeroed tail after the last one, are skipped.

use std::fs::File;
use std::os::unix::fs::FileExt;

pub use super::tlog_record::{Record, SnapName, CRCS_PER_RECORD};
use crate::error::{Error, IoContext, Result};

const MAGIC: u32 = 0x4C44_5442;
/// A batch written before the data it maps was synced.
const MAGIC_AHEAD: u32 = 0x4C44_5455;
pub const HEADER_LEN: usize = 28;

/// Appends batches to one TLog file. Records are encoded by the caller (under the
/// volume's state lock) and written here as one batch per flush.
///
/// On ext4 and XFS with O_DIRECT, batches go straight to the disk into a region of the
/// file already written with zeroes (whose size is durable), each batch starting on a
/// fresh 512-byte sector so that a torn write never touches an earlier batch. Such a
/// write changes no file metadata: it is made durable by the device cache flush of any
/// fdatasync on the same filesystem that starts after it (see [`TlogWriter::covered_by`]),
/// so a flush syncs only the SCO data and saves a second device flush.
pub struct TlogWriter {
    file: File,
    direct: Option<DirectLog>,
    /// One encoded batch (reused).
    scratch: Vec<u8>,
    epoch: u64,
    seq: u32,
    len: u64,
}

/// The O_DIRECT side of a TLog writer.
struct DirectLog {
    file: File,
    /// Bytes `[0, zeroed_end)` are written (records or zeroes); on the O_DIRECT path their
    /// size and blocks are synced before a batch goes into them, on the cached path by the
    /// flush's TLog sync.
    zeroed_end: u64,
    /// The device the file is on.
    dev: u64,
    /// Sector-aligned staging for one batch.
    buf: super::iov::AlignedBuf,
    /// The file's page (4 KiB) where the next batch starts, from `tail_base`: what is
    /// already written there (earlier batches, padding), zeroes after. A batch through
    /// the page cache is written from that page's start to a page end, so the kernel
    /// never reads the page from the disk first (the zeroed region went around the
    /// cache): that read was synchronous on the vring worker, once every few 1 MiB guest
    /// writes. `tail_base` is [`UNKNOWN`] when the page was not written by this writer.
    tail: Box<[u8]>,
    tail_base: u64,
}

/// Batches written with O_DIRECT start on this boundary.
const SECTOR: u64 = 512;
/// The zeroed region grows by its own size (a TLog of a few batches, as one epoch of
/// 1 MiB writes has, zeroes 64 KiB, not 1 MiB: each growth is written synchronously on
/// the writer's thread), from this much ...
const MIN_ZERO_CHUNK: u64 = 64 << 10;
/// ... up to this much at a time.
const ZERO_CHUNK: u64 = 1 << 20;
/// The page cache's unit: a batch through the cache is written in whole pages.
const PAGE: u64 = 4096;
/// `tail_base` when the page holding the next batch's start is not known.
const UNKNOWN: u64 = u64::MAX;
/// The zeroed region is written with O_DIRECT from a boundary of this size (a file system
/// block): a TLog continued after a restart with a length not on one stays in the page
/// cache path.
const ZERO_ALIGN: u64 = 4096;

impl TlogWriter {
    /// Continue a TLog file whose valid content is `len` bytes with `next_seq` batches.
    pub fn new(file: File, epoch: u64, len: u64, next_seq: u32) -> TlogWriter {
        TlogWriter { file, direct: None, scratch: Vec::new(), epoch, seq: next_seq, len }
    }

    /// Create the (new, empty) TLog file of `epoch` at `path`; `direct`: write batches
    /// with O_DIRECT where the filesystem allows it (see the type's doc).
    pub fn create(path: &std::path::Path, epoch: u64, direct: bool) -> Result<TlogWriter> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .ctx(|| format!("cannot create TLog {}", path.display()))?;
        let w = TlogWriter::new(file, epoch, 0, 0);
        Ok(if direct { w.with_direct(path) } else { w })
    }

    /// Write later batches with O_DIRECT if the filesystem is ext4 or XFS and allows it.
    pub fn with_direct(mut self, path: &std::path::Path) -> TlogWriter {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        const EXT4: i64 = 0xEF53;
        const XFS: i64 = 0x5846_5342;
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: fstatfs fills the struct for an fd we own.
        let ok = unsafe { libc::fstatfs(std::os::unix::io::AsRawFd::as_raw_fd(&self.file), &mut sfs) } == 0;
        #[allow(clippy::unnecessary_cast)]
        if !ok || !matches!(sfs.f_type as i64, EXT4 | XFS) {
            return self;
        }
        let (Ok(meta), Ok(dfile)) =
            (self.file.metadata(), std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path))
        else {
            return self;
        };
        self.direct = Some(DirectLog {
            file: dfile,
            zeroed_end: meta.len(),
            dev: meta.dev(),
            buf: super::iov::AlignedBuf::zeroed(64 << 10),
            tail: vec![0; PAGE as usize].into_boxed_slice(),
            tail_base: if self.len == 0 { 0 } else { UNKNOWN },
        });
        self
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Write `count` encoded records as one batch (not synced), after the data they map
    /// was synced.
    pub fn write_batch(&mut self, payload: &[u8], count: u32) -> Result<()> {
        self.encode_and_write(payload, count, false, false)
    }

    /// Write `count` encoded records as one batch (not synced) before the data they map
    /// is synced: one sync then makes both durable, and recovery checks the batch against
    /// the data it maps (a power loss can keep one without the other).
    pub fn write_batch_ahead(&mut self, payload: &[u8], count: u32) -> Result<()> {
        self.encode_and_write(payload, count, false, true)
    }

    /// Write `count` encoded records as one batch through the page cache, at the offset
    /// and with the zero padding an O_DIRECT batch gets (not synced). It then survives the
    /// daemon's death without a device write of its own; the next flush's fdatasync of
    /// this file makes it durable as it does the O_DIRECT batches (`Volume::log_completed`:
    /// the records of every completed write, before the guest sees the completion, which
    /// with O_DIRECT made each guest write at low queue depth two device writes, the
    /// second one synchronous on the vring worker). An O_DIRECT batch written later into
    /// the same page makes the kernel write the page back and drop it first.
    /// Its data is not synced yet either: the batch is written as one written ahead.
    pub fn write_batch_cached(&mut self, payload: &[u8], count: u32) -> Result<()> {
        self.encode_and_write(payload, count, true, true)
    }

    fn encode_and_write(&mut self, payload: &[u8], count: u32, cached: bool, ahead: bool) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        encode_batch_as(&mut buf, self.epoch, self.seq, count, payload, ahead);
        let res = self.write_encoded_via(&buf, cached);
        self.scratch = buf;
        res
    }

    /// `cached`: the batch itself goes through the page cache (the zeroed region still
    /// grows with O_DIRECT).
    fn write_encoded_via(&mut self, buf: &[u8], cached: bool) -> Result<()> {
        if self.direct.is_some() {
            match self.write_direct(buf, cached) {
                Ok(()) => {
                    self.seq += 1;
                    return Ok(());
                }
                Err(e) => {
                    // Fall back to the page cache (and a sync of this file) from here on,
                    // without the zeroes written ahead (all of them, or the part a full
                    // file system let through): nothing would trim them later.
                    tracing::warn!(epoch = self.epoch, error = %e, "O_DIRECT TLog write failed; writing through the page cache");
                    self.drop_zeroed_tail();
                }
            }
        }
        self.file.write_all_at(buf, self.len).ctx(|| format!("cannot write TLog {}", self.epoch))?;
        self.len += buf.len() as u64;
        self.seq += 1;
        Ok(())
    }

    fn write_direct(&mut self, batch: &[u8], cached: bool) -> std::io::Result<()> {
        let d = self.direct.as_mut().expect("direct mode");
        let start = self.len.next_multiple_of(SECTOR);
        let padded = (batch.len() as u64).next_multiple_of(SECTOR);
        let end = start + padded;
        if end > d.zeroed_end {
            // Grow the zeroed region, with O_DIRECT too: the blocks must be allocated and
            // written (not unwritten extents, not dirty page-cache pages) before a batch
            // goes into part of one. A 512-byte O_DIRECT write into a block the file
            // system still holds as unwritten makes it zero the rest of the block on disk:
            // with the zeroes written through the page cache (their conversion to written
            // extents completes after their writeback), a power-loss replay found a TLog
            // whose first batch read zeroes while the three after it, in the same block,
            // were intact (tests/guest/powerloss-e2e.sh, CI rehearsal 2026-12-04). This
            // flush syncs the file (with the SCOs, at once) so later batches change no
            // metadata.
            if !d.zeroed_end.is_multiple_of(ZERO_ALIGN) {
                return Err(std::io::Error::other("the zeroed region does not end on a 4 KiB boundary"));
            }
            let chunk = d.zeroed_end.next_power_of_two().clamp(MIN_ZERO_CHUNK, ZERO_CHUNK);
            let new_end = (end + chunk).next_multiple_of(chunk);
            let zeroes = super::iov::zeroes();
            let mut at = d.zeroed_end;
            while at < new_end {
                let n = (new_end - at).min(zeroes.len() as u64) as usize;
                d.file.write_all_at(&zeroes[..n], at)?;
                at += n as u64;
            }
            d.zeroed_end = new_end;
            if !cached {
                // Durable before any batch goes into them (one fdatasync per growth: a TLog
                // grows a few times per epoch; it commits the size and extents the flush's
                // TLog sync would commit otherwise). A batch written into the zeroes while
                // they were only completed could be replayed under them from a
                // dm-log-writes log: it records the writes a FLUSH covers when that FLUSH
                // completes, and two FLUSHes can complete out of order (3 power-loss
                // failures, 2026-12-06/07: a TLog's first batch, written after its zeroes,
                // replayed as zeroes). The batches a guest write's completion logs through
                // the page cache do not wait for this sync (they run on a vring worker).
                d.file.sync_data()?;
            }
        }
        let base = start - start % PAGE;
        // Through the cache from the page start, with what the page already holds in
        // front, when that is known (it always is for a TLog this writer created).
        let whole_pages = cached && (d.tail_base == base || start == base);
        let (from, head) = if whole_pages { (base, (start - base) as usize) } else { (start, 0) };
        let len = if whole_pages { (end - base).next_multiple_of(PAGE) } else { padded } as usize;
        if d.buf.len() < len {
            d.buf = super::iov::AlignedBuf::zeroed(len.next_power_of_two());
        }
        d.buf[..head].copy_from_slice(&d.tail[..head]);
        d.buf[head..head + batch.len()].copy_from_slice(batch);
        d.buf[head + batch.len()..len].fill(0);
        let to = if cached { &self.file } else { &d.file };
        to.write_all_at(&d.buf[..len], from)?;
        self.len = start + batch.len() as u64;
        // The page the next batch starts in, as the file holds it now.
        let next_base = end - end % PAGE;
        if next_base != d.tail_base {
            // A page this write covers from its start is known; one it began inside of
            // (an earlier writer's page) is not.
            d.tail.fill(0);
            d.tail_base = if from <= next_base { next_base } else { UNKNOWN };
        }
        let (lo, hi) = (from.max(next_base), (from + len as u64).min(next_base + PAGE));
        if d.tail_base != UNKNOWN && lo < hi {
            d.tail[(lo - next_base) as usize..(hi - next_base) as usize]
                .copy_from_slice(&d.buf[(lo - from) as usize..(hi - from) as usize]);
        }
        Ok(())
    }

    /// The device of the file system the TLog is on, when batches go with O_DIRECT
    /// (ext4, XFS): a flush can then make an SCO on the same device durable with the
    /// TLog's own sync (`FlushWork::single`).
    pub fn device(&self) -> Option<u64> {
        self.direct.as_ref().map(|d| d.dev)
    }

    /// The epoch is sealed: cut the zeroed tail so the file holds exactly its batches.
    pub fn finish(&mut self) {
        self.drop_zeroed_tail();
    }

    /// Give the zeroes written ahead of the batches (up to 2 MiB a TLog) back to the file
    /// system and write later batches through the page cache (each flush syncs the file).
    /// Called when the epoch is sealed, when an O_DIRECT write failed, and on every open
    /// TLog when the file system is full: otherwise the TLogs of the epochs that rolled
    /// while flushes failed for space take 2 MiB each once space returns, fill it again
    /// before any of them is sealed, and flushes keep failing.
    pub fn drop_zeroed_tail(&mut self) {
        if self.direct.take().is_some() {
            if let Err(e) = self.file.set_len(self.len) {
                tracing::warn!(epoch = self.epoch, error = %e, "cannot trim a TLog's zeroed tail (zeroes after it are ignored)");
            }
        }
    }

    /// Start writing the file's dirty pages to the disk, without waiting for them or
    /// flushing the device cache (best effort: the next sync writes what this did not).
    pub fn start_write_back(&self) {
        // SAFETY: plain syscall on an fd we own.
        unsafe { libc::sync_file_range(self.raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }

    /// The file's descriptor (for a sync issued with others).
    pub fn raw_fd(&self) -> std::os::unix::io::RawFd {
        std::os::unix::io::AsRawFd::as_raw_fd(&self.file)
    }

    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().ctx(|| format!("cannot sync TLog {}", self.epoch))
    }
}

/// Encode one batch of already-encoded records (their data synced before it).
pub fn encode_batch(out: &mut Vec<u8>, epoch: u64, seq: u32, count: u32, payload: &[u8]) {
    encode_batch_as(out, epoch, seq, count, payload, false)
}

/// Encode one batch; `ahead`: written before the data it maps was synced.
pub fn encode_batch_as(out: &mut Vec<u8>, epoch: u64, seq: u32, count: u32, payload: &[u8], ahead: bool) {
    let start = out.len();
    out.extend_from_slice(&(if ahead { MAGIC_AHEAD } else { MAGIC }).to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crate::crc::crc32c(&out[start..start + 24]);
    crc = crate::crc::crc32c_append(crc, payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The result of reading a TLog.
#[derive(Debug)]
pub struct Parsed {
    pub records: Vec<Record>,
    /// Bytes of valid batches from the start.
    pub valid_len: u64,
    pub batches: u32,
    /// True if bytes after `valid_len` did not form a valid batch.
    pub torn: bool,
    /// The batches written ahead of their data's sync (see the module doc), in order.
    pub ahead: Vec<AheadBatch>,
}

/// Where a batch written ahead of its data's sync is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AheadBatch {
    /// Its sequence number (batches before it: `seq`).
    pub seq: u32,
    /// Its first byte in the file.
    pub offset: u64,
    /// Its records: `records[first..end]`.
    pub first: usize,
    pub end: usize,
}

impl Parsed {
    /// Drop batch `b.seq` and every batch after it (`b` is one of `self.ahead`).
    pub fn cut_at(&mut self, b: AheadBatch) {
        self.records.truncate(b.first);
        self.valid_len = b.offset;
        self.batches = b.seq;
        self.torn = true;
        self.ahead.retain(|a| a.seq < b.seq);
    }

    pub fn sealed(&self) -> Option<(u64, u32)> {
        match self.records.last() {
            Some(Record::Seal { sco, clusters }) => Some((*sco, *clusters)),
            _ => None,
        }
    }
}

/// Parse TLog bytes of `epoch`, stopping at the first invalid batch.
pub fn parse(bytes: &[u8], epoch: u64) -> Parsed {
    let mut records = Vec::new();
    let mut ahead = Vec::new();
    let mut at = 0usize;
    let mut batches = 0u32;
    loop {
        if at == bytes.len() {
            return Parsed { records, valid_len: at as u64, batches, torn: false, ahead };
        }
        match parse_batch(&bytes[at..], epoch, batches) {
            Some((mut recs, used, was_ahead)) => {
                if was_ahead {
                    let first = records.len();
                    ahead.push(AheadBatch { seq: batches, offset: at as u64, first, end: first + recs.len() });
                }
                records.append(&mut recs);
                at += used;
                batches += 1;
            }
            None => {
                // Zeroes up to the next sector: padding of a batch written with O_DIRECT.
                let next = (at.next_multiple_of(SECTOR as usize)).min(bytes.len());
                if next > at
                    && next < bytes.len()
                    && bytes[at..next].iter().all(|&b| b == 0)
                    && parse_batch(&bytes[next..], epoch, batches).is_some()
                {
                    at = next;
                    continue;
                }
                // Only zeroes after the last batch: the zeroed, not yet used tail.
                let torn = bytes[at..].iter().any(|&b| b != 0);
                return Parsed { records, valid_len: at as u64, batches, torn, ahead };
            }
        }
    }
}

/// One batch: its records, its length, and whether it was written ahead of its data.
fn parse_batch(b: &[u8], epoch: u64, want_seq: u32) -> Option<(Vec<Record>, usize, bool)> {
    if b.len() < HEADER_LEN {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let e = u64::from_le_bytes(b[4..12].try_into().unwrap());
    let magic = u32_at(0);
    if !matches!(magic, MAGIC | MAGIC_AHEAD) || e != epoch || u32_at(12) != want_seq {
        return None;
    }
    let count = u32_at(16) as usize;
    let plen = u32_at(20) as usize;
    let payload = b.get(HEADER_LEN..HEADER_LEN + plen)?;
    let crc = crate::crc::crc32c_append(crate::crc::crc32c(&b[..24]), payload);
    if crc != u32_at(24) {
        return None;
    }
    // Every record takes at least 5 bytes: a hostile count must not size the vector
    // (found by fuzzing: a count of 2^32-1 aborted on a 343 GB allocation).
    let mut recs = Vec::with_capacity(count.min(payload.len() / 5));
    let mut at = 0;
    while at < payload.len() {
        let (r, used) = Record::decode(&payload[at..])?;
        recs.push(r);
        at += used;
    }
    if recs.len() != count {
        return None;
    }
    Some((recs, HEADER_LEN + plen, magic == MAGIC_AHEAD))
}

/// Parse a sealed TLog (from the object store): any damage is an error.
pub fn parse_sealed(key: &str, bytes: &[u8], epoch: u64) -> Result<Parsed> {
    let p = parse(bytes, epoch);
    if p.torn {
        return Err(Error::Corrupt { key: key.into(), detail: format!("TLog batch {} fails its checksum", p.batches) });
    }
    if p.sealed().is_none() {
        return Err(Error::Corrupt { key: key.into(), detail: "TLog has no seal record (truncated?)".into() });
    }
    Ok(p)
}

#[cfg(test)]
#[path = "tlog_tests.rs"]
mod tests;
