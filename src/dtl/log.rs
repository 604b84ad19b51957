//! The DTL server's per-volume store: append-only, checksummed segment files.
//!
//! Layout under `DIR/<volume>/`:
//! - `meta.json`: owner generation, trim watermark, and the sequence number reached when
//!   the last trim ran (so a fully trimmed volume still knows where its sequence is);
//!   replaced atomically (write, fsync, rename, fsync dir).
//! - `<first_seq, 20 digits>.seg`: an 8-byte magic, then records `len u32 | crc32c u32 |
//!   entry` (the entry encoding of [`super::protocol`]). One segment is active at a time;
//!   a new one starts when an entry of a higher SCO than the active segment holds arrives
//!   (so a segment is about one SCO) or the active one passes [`SEGMENT_ROLL`]. A segment
//!   is fdatasynced before the next one starts, so only the newest can have a torn tail.
//!
//! Sequence numbers are assigned by the owner and are contiguous; an entry at or below
//! what the store holds is a resend and is skipped, one that would leave a gap is refused.
//! TRIM deletes the segments whose highest SCO is at or below the watermark; entries at
//! or below the watermark that remain in mixed segments are hidden from QUERY. Data stays
//! on disk: memory per volume is a few fields per segment.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::protocol::{check_entries, check_entry, EntryHead, ErrorCode, ENTRY_HEADER, MAX_ENTRY};
use crate::error::{Error, IoContext, Result};

const SEG_MAGIC: &[u8; 8] = b"LDTLSEG1";
/// A segment rolls over once it is this large, even within one SCO.
pub const SEGMENT_ROLL: u64 = 64 << 20;
const REC_HEADER: usize = 8;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Meta {
    generation: u32,
    trimmed_upto: u64,
    seq_floor: u64,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    last_seq: u64,
    min_sco: u64,
    max_sco: u64,
    /// Bytes of valid records (including the magic).
    len: u64,
    path: PathBuf,
}

/// One volume's log on the DTL server. The server keeps it behind a mutex.
pub struct VolumeLog {
    name: String,
    dir: PathBuf,
    meta: Meta,
    segments: Vec<Segment>,
    /// Open handle of the last segment while it takes appends.
    active: Option<File>,
    written_seq: u64,
    durable_seq: u64,
}

pub(crate) fn refused(code: ErrorCode, message: impl Into<String>) -> Error {
    Error::DtlRefused { code, message: message.into() }
}

fn corrupt(path: &Path, detail: impl Into<String>) -> Error {
    Error::Corrupt { key: path.display().to_string(), detail: detail.into() }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).ctx(|| format!("fsync {}", dir.display()))
}

/// Read the next record of a segment: `Ok(None)` at a clean end, `Err(reason)` at a torn or
/// damaged record (the caller cuts there). `buf` receives the entry bytes.
fn next_record(r: &mut impl Read, buf: &mut Vec<u8>) -> std::result::Result<Option<EntryHead>, String> {
    let mut head = [0u8; REC_HEADER];
    let mut got = 0;
    while got < REC_HEADER {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err("torn record header".into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let len = u32::from_le_bytes(head[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().unwrap());
    if !(ENTRY_HEADER..=MAX_ENTRY).contains(&len) {
        return Err(format!("record length {len}"));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).map_err(|e| format!("torn record: {e}"))?;
    if crate::crc::crc32c(buf) != crc {
        return Err("record checksum mismatch".into());
    }
    let h = check_entry(buf).map_err(|e| e.to_string())?;
    if h.len != len {
        return Err("record length does not match its entry".into());
    }
    Ok(Some(h))
}

/// Validate one segment; truncate it at the first bad record. `None` if nothing valid.
fn scan_segment(first: u64, prev_last: u64, path: &Path) -> Result<(Option<Segment>, Option<String>)> {
    let file = OpenOptions::new().read(true).write(true).open(path).ctx(|| format!("open {}", path.display()))?;
    let mut r = BufReader::with_capacity(1 << 20, &file);
    let mut magic = [0u8; 8];
    if r.read_exact(&mut magic).is_err() || &magic != SEG_MAGIC {
        return Ok((None, Some("bad segment header".into())));
    }
    let mut seg = Segment {
        first_seq: first,
        last_seq: 0,
        min_sco: u64::MAX,
        max_sco: 0,
        len: SEG_MAGIC.len() as u64,
        path: path.to_path_buf(),
    };
    let mut buf = Vec::new();
    let mut damaged = None;
    let mut count = 0u64;
    loop {
        match next_record(&mut r, &mut buf) {
            Ok(None) => break,
            Ok(Some(h)) => {
                let expect = if count == 0 { first } else { seg.last_seq + 1 };
                if h.seq != expect || h.seq <= prev_last {
                    damaged = Some(format!("sequence {} where {expect} was expected", h.seq));
                    break;
                }
                count += 1;
                seg.last_seq = h.seq;
                seg.min_sco = seg.min_sco.min(h.sco);
                seg.max_sco = seg.max_sco.max(h.sco);
                seg.len += (REC_HEADER + h.len) as u64;
            }
            Err(e) => {
                damaged = Some(e);
                break;
            }
        }
    }
    drop(r);
    if damaged.is_some() {
        file.set_len(seg.len).ctx(|| format!("truncate {}", path.display()))?;
        file.sync_all().ctx(|| format!("fsync {}", path.display()))?;
    }
    Ok((if count == 0 { None } else { Some(seg) }, damaged))
}

/// A consistent view of one segment for a QUERY: an open handle (valid even if a TRIM
/// deletes the file meanwhile) and the length that was valid when it was taken.
pub struct SegmentView {
    file: File,
    len: u64,
    max_sco: u64,
    path: PathBuf,
}

impl SegmentView {
    /// Stream the entries with `sco > after` to `f` (entry bytes as on the wire).
    pub fn for_each(self, after: u64, mut f: impl FnMut(EntryHead, &[u8]) -> Result<()>) -> Result<()> {
        if self.max_sco <= after {
            return Ok(());
        }
        let mut r = BufReader::with_capacity(1 << 20, self.file.take(self.len));
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).ctx(|| format!("read {}", self.path.display()))?;
        let mut buf = Vec::new();
        loop {
            match next_record(&mut r, &mut buf) {
                Ok(None) => return Ok(()),
                Ok(Some(h)) if h.sco > after => f(h, &buf)?,
                Ok(Some(_)) => {}
                Err(e) => return Err(corrupt(&self.path, e)),
            }
        }
    }
}

impl VolumeLog {
    /// Open (or create) the log of `name` under `root`, re-reading every segment and
    /// cutting a torn tail.
    pub fn open(root: &Path, name: &str) -> Result<VolumeLog> {
        let dir = root.join(name);
        fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let meta_path = dir.join("meta.json");
        let meta = match fs::read(&meta_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| corrupt(&meta_path, e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(Error::io(format!("read {}", meta_path.display()), e)),
        };
        let mut names = Vec::new();
        for ent in fs::read_dir(&dir).ctx(|| format!("list {}", dir.display()))? {
            let ent = ent.ctx(|| format!("list {}", dir.display()))?;
            let fname = ent.file_name();
            let Some(s) = fname.to_str() else { continue };
            if let Some(n) = s.strip_suffix(".seg").and_then(|n| n.parse::<u64>().ok()) {
                names.push((n, ent.path()));
            } else if s.ends_with(".tmp") {
                let _ = fs::remove_file(ent.path());
            }
        }
        names.sort();
        let mut log = VolumeLog {
            name: name.to_string(),
            dir,
            meta,
            segments: Vec::new(),
            active: None,
            written_seq: 0,
            durable_seq: 0,
        };
        let mut cut_rest = false;
        let mut prev_last = 0;
        for (first, path) in names {
            if cut_rest {
                tracing::error!(volume = name, segment = %path.display(), "deleting a segment after a damaged one");
                fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
                continue;
            }
            let (seg, damaged) = scan_segment(first, prev_last, &path)?;
            if let Some(why) = damaged {
                tracing::warn!(volume = name, segment = %path.display(), valid = seg.as_ref().map_or(0, |s| s.len), "cutting torn tail: {why}");
                cut_rest = true;
            }
            match seg {
                Some(s) => {
                    prev_last = s.last_seq;
                    log.segments.push(s);
                }
                None => fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?,
            }
        }
        log.written_seq = prev_last.max(meta.seq_floor);
        sync_dir(&log.dir)?;
        log.durable_seq = log.written_seq;
        tracing::info!(
            volume = name,
            segments = log.segments.len(),
            last_seq = log.written_seq,
            generation = log.meta.generation,
            "DTL volume opened"
        );
        Ok(log)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The owner generation that holds the volume.
    pub fn generation(&self) -> u32 {
        self.meta.generation
    }

    /// Highest sequence number written (not necessarily durable).
    pub fn last_seq(&self) -> u64 {
        self.written_seq
    }

    pub fn trimmed_upto(&self) -> u64 {
        self.meta.trimmed_upto
    }

    fn save_meta(&self, meta: Meta) -> Result<()> {
        let path = self.dir.join("meta.json");
        let tmp = self.dir.join("meta.json.tmp");
        let mut f = File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(&meta).expect("meta serializes")).ctx(|| format!("write {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
        fs::rename(&tmp, &path).ctx(|| format!("rename {}", tmp.display()))?;
        sync_dir(&self.dir)
    }

    fn check_owner(&self, generation: u32) -> Result<()> {
        if generation < self.meta.generation {
            return Err(refused(
                ErrorCode::Fenced,
                format!(
                    "volume {} is owned by generation {}; generation {generation} is fenced",
                    self.name, self.meta.generation
                ),
            ));
        }
        Ok(())
    }

    /// An owner says hello: a higher generation takes the volume over (persisted before
    /// it is answered), a lower one is fenced. Returns the durable sequence number.
    pub fn hello(&mut self, generation: u32) -> Result<u64> {
        self.check_owner(generation)?;
        if generation > self.meta.generation {
            let meta = Meta { generation, ..self.meta };
            self.save_meta(meta)?;
            self.meta = meta;
            tracing::info!(volume = %self.name, generation, "new owner generation");
        }
        self.sync(generation)
    }

    /// Append the `count` encoded entries in `raw` for the owner `generation`; returns the
    /// highest sequence number written.
    pub fn append(&mut self, generation: u32, raw: &[u8], count: u32) -> Result<u64> {
        self.check_owner(generation)?;
        let heads = check_entries(raw, count).map_err(|e| refused(ErrorCode::Malformed, e.to_string()))?;
        // Validate the whole batch before writing any of it.
        let mut expect = self.written_seq + 1;
        for h in &heads {
            if h.seq >= expect {
                if h.seq != expect {
                    return Err(refused(
                        ErrorCode::SeqGap,
                        format!("entry {} would leave a gap: the server holds up to {}", h.seq, expect - 1),
                    ));
                }
                expect += 1;
            }
        }
        let mut off = 0;
        let mut buf: Vec<u8> = Vec::new();
        let mut last = self.written_seq;
        for h in heads {
            let bytes = &raw[off..off + h.len];
            off += h.len;
            if h.seq <= last {
                continue; // a resend of what is already stored
            }
            last = h.seq;
            let roll = match self.segments.last() {
                _ if self.active.is_none() => true,
                Some(s) => h.sco > s.max_sco || s.len + (REC_HEADER + h.len) as u64 > SEGMENT_ROLL,
                None => true,
            };
            if roll {
                self.write_out(&mut buf)?;
                self.start_segment(h.seq)?;
            }
            buf.extend_from_slice(&(h.len as u32).to_le_bytes());
            buf.extend_from_slice(&crate::crc::crc32c(bytes).to_le_bytes());
            buf.extend_from_slice(bytes);
            let seg = self.segments.last_mut().expect("active segment");
            seg.last_seq = h.seq;
            seg.min_sco = seg.min_sco.min(h.sco);
            seg.max_sco = seg.max_sco.max(h.sco);
            if buf.len() >= 1 << 20 {
                self.write_out(&mut buf)?;
            }
        }
        self.write_out(&mut buf)?;
        Ok(self.written_seq)
    }

    /// Write the buffered records of the active segment; on failure cut the segment back
    /// to what was valid before.
    fn write_out(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let seg = self.segments.last_mut().expect("active segment");
        let file = self.active.as_mut().expect("active segment");
        let r = file.write_all(buf);
        if let Err(e) = r {
            let _ = file.set_len(seg.len);
            let _ = file.seek(SeekFrom::Start(seg.len));
            // The in-memory summary may now claim entries that were not written: rescan.
            let path = seg.path.clone();
            self.active = None;
            let first = seg.first_seq;
            let prev = self.segments.len().checked_sub(2).map_or(0, |i| self.segments[i].last_seq);
            let (s, _) = scan_segment(first, prev, &path)?;
            self.segments.pop();
            match s {
                Some(s) => {
                    self.written_seq = s.last_seq;
                    self.segments.push(s);
                }
                None => {
                    let _ = fs::remove_file(&path);
                    self.written_seq = first - 1;
                }
            }
            buf.clear();
            return Err(Error::io(format!("append to {}", path.display()), e));
        }
        seg.len += buf.len() as u64;
        self.written_seq = seg.last_seq;
        buf.clear();
        Ok(())
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<()> {
        if let Some(f) = self.active.take() {
            f.sync_data().ctx(|| format!("fsync segment of {}", self.name))?;
            self.durable_seq = self.written_seq;
        }
        let path = self.dir.join(format!("{first_seq:020}.seg"));
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .ctx(|| format!("create {}", path.display()))?;
        f.write_all(SEG_MAGIC).ctx(|| format!("write {}", path.display()))?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            first_seq,
            last_seq: first_seq - 1,
            min_sco: u64::MAX,
            max_sco: 0,
            len: SEG_MAGIC.len() as u64,
            path,
        });
        self.active = Some(f);
        Ok(())
    }

    /// Make everything written durable; returns the durable sequence number.
    pub fn sync(&mut self, generation: u32) -> Result<u64> {
        self.check_owner(generation)?;
        if self.durable_seq < self.written_seq {
            if let Some(f) = &self.active {
                f.sync_data().ctx(|| format!("fsync segment of {}", self.name))?;
            }
            self.durable_seq = self.written_seq;
        }
        Ok(self.durable_seq)
    }

    /// Drop every entry with `sco <= upto` (whole segments are deleted; the rest is hidden).
    pub fn trim(&mut self, generation: u32, upto: u64) -> Result<u64> {
        self.sync(generation)?;
        let meta = Meta { trimmed_upto: upto.max(self.meta.trimmed_upto), seq_floor: self.durable_seq, ..self.meta };
        if meta != self.meta {
            self.save_meta(meta)?;
            self.meta = meta;
        }
        let upto = meta.trimmed_upto;
        let n_before = self.segments.len();
        let mut keep = Vec::with_capacity(self.segments.len());
        let last = self.segments.len().saturating_sub(1);
        for (i, s) in std::mem::take(&mut self.segments).into_iter().enumerate() {
            if s.max_sco <= upto {
                if i == last {
                    self.active = None;
                }
                fs::remove_file(&s.path).ctx(|| format!("remove {}", s.path.display()))?;
            } else {
                keep.push(s);
            }
        }
        self.segments = keep;
        if self.segments.len() != n_before {
            sync_dir(&self.dir)?;
        }
        tracing::debug!(volume = %self.name, upto, deleted = n_before - self.segments.len(), "trimmed");
        Ok(upto)
    }

    /// Handles on the segments that may hold entries with `sco > after`, for streaming
    /// without holding the volume lock.
    pub fn query_views(&self, generation: u32, after: u64) -> Result<(u64, Vec<SegmentView>)> {
        self.check_owner(generation)?;
        let after = after.max(self.meta.trimmed_upto);
        let mut views = Vec::new();
        for s in &self.segments {
            if s.max_sco > after {
                let file = File::open(&s.path).ctx(|| format!("open {}", s.path.display()))?;
                views.push(SegmentView { file, len: s.len, max_sco: s.max_sco, path: s.path.clone() });
            }
        }
        Ok((after, views))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtl::protocol::Entry;

    fn raw(entries: &[(u64, Entry)]) -> (Vec<u8>, u32) {
        let mut v = Vec::new();
        for (s, e) in entries {
            e.encode(*s, &mut v);
        }
        (v, entries.len() as u32)
    }

    fn read_all(log: &VolumeLog, after: u64) -> Vec<(u64, u64)> {
        let (after, views) = log.query_views(0, after).unwrap();
        let mut out = Vec::new();
        for v in views {
            v.for_each(after, |h, _| {
                out.push((h.seq, h.sco));
                Ok(())
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn append_restart_trim_and_torn_tail() {
        let t = tempfile::tempdir().unwrap();
        let mut log = VolumeLog::open(t.path(), "v").unwrap();
        let es: Vec<(u64, Entry)> =
            (1..=6u64).map(|i| (i, Entry::data(i.div_ceil(2), i as u32, i, vec![i as u8; 4096]))).collect();
        let (r, n) = raw(&es);
        assert_eq!(log.append(0, &r, n).unwrap(), 6);
        // A resend of a prefix plus one new entry; a gap is refused.
        let (r, n) = raw(&[es[4].clone(), es[5].clone(), (7, Entry::record(4, b"x".to_vec()))]);
        assert_eq!(log.append(0, &r, n).unwrap(), 7);
        let (r, n) = raw(&[(9, Entry::record(4, b"y".to_vec()))]);
        assert!(matches!(log.append(0, &r, n), Err(Error::DtlRefused { code: ErrorCode::SeqGap, .. })));
        assert_eq!(log.sync(0).unwrap(), 7);
        assert_eq!(log.segments.len(), 4);
        drop(log);
        // Tear the last segment in the middle of its last record.
        let log = VolumeLog::open(t.path(), "v").unwrap();
        assert_eq!(log.last_seq(), 7);
        let last = log.segments.last().unwrap();
        let f = OpenOptions::new().write(true).open(&last.path).unwrap();
        f.set_len(last.len - 1).unwrap();
        drop(log);
        let mut log = VolumeLog::open(t.path(), "v").unwrap();
        assert_eq!(log.last_seq(), 6);
        assert_eq!(read_all(&log, 1).into_iter().map(|x| x.0).collect::<Vec<_>>(), [3, 4, 5, 6]);
        // Trim SCO 1 and 2: their segments go; the sequence is remembered.
        log.trim(0, 2).unwrap();
        assert_eq!(read_all(&log, 0), [(5, 3), (6, 3)]);
        log.trim(0, 3).unwrap();
        assert!(read_all(&log, 0).is_empty());
        drop(log);
        let mut log = VolumeLog::open(t.path(), "v").unwrap();
        assert_eq!((log.last_seq(), log.trimmed_upto()), (6, 3));
        let (r, n) = raw(&[(7, Entry::record(4, b"z".to_vec()))]);
        assert_eq!(log.append(0, &r, n).unwrap(), 7);
        // Fencing.
        log.hello(2).unwrap();
        assert!(matches!(log.append(1, &r, n), Err(Error::DtlRefused { code: ErrorCode::Fenced, .. })));
        assert!(matches!(log.hello(1), Err(Error::DtlRefused { code: ErrorCode::Fenced, .. })));
        drop(log);
        assert_eq!(VolumeLog::open(t.path(), "v").unwrap().generation(), 2);
    }
}
