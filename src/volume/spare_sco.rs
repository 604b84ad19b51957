//! A zero-filled SCO file prepared in the background for volumes that flush often.
//!
//! Writing into a freshly allocated file makes every fdatasync also write the file's
//! extent and inode changes; writing into blocks already written with zeroes changes no
//! metadata, so a flush costs one device cache flush, as for a raw file. Zero-filling
//! costs a second write of the SCO, so it is only done for volumes whose flushes cover
//! little data each (see `Volume::flush`); the file is renamed into place at the next
//! roll. A spare left over from an earlier run is used as is.
//!
//! Dead SCO files are recycled the same way: when scrub deletes an SCO that nothing reads
//! any more, its local file (cut to the SCO size) waits in `recycled/` instead of being
//! unlinked, and the next roll writes into it. Its blocks are already written, so the
//! new SCO's writes change no extent metadata (on the disk `benches/disk-ceiling.sh`
//! measured, in-place writes ran at 1.9x the rate of writes into fresh extents), and no
//! 32 MiB unlink holds the file system's journal. The stale bytes are the same volume's
//! and no map references them: SCO reads go only where TLog records put data.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::iov::AlignedBuf;

#[derive(Default)]
struct SpareState {
    ready: bool,
    preparing: bool,
    /// The last attempt failed (a full file system): no new one before a pause.
    failed_at: Option<std::time::Instant>,
    /// Dead SCO files waiting in `recycled/` to be written again, and whether every
    /// block of each is written ([`fully_written`]).
    recycled: Vec<(PathBuf, bool)>,
    /// Name of the next recycled file.
    next_name: u64,
}

/// Most dead SCO files kept for reuse (their disk space stays taken meanwhile): enough
/// for the SCOs one scrub pass frees under sustained overwrites.
pub const RECYCLE_MAX: usize = 16;

/// After a failed preparation (a full file system), the next attempt waits this long:
/// each attempt writes until the disk is full again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

pub struct SpareSco {
    path: PathBuf,
    pool: PathBuf,
    len: u64,
    state: Arc<Mutex<SpareState>>,
}

impl SpareSco {
    /// The spare of the volume in `dir`, for SCOs of `len` bytes.
    pub fn new(dir: &Path, len: u64) -> SpareSco {
        let path = dir.join("spare-sco");
        let ready = std::fs::metadata(&path).is_ok_and(|m| m.len() == len);
        // Recycled files of an earlier run: reused if they have the SCO size.
        let pool = dir.join("recycled");
        let mut recycled = Vec::new();
        for e in std::fs::read_dir(&pool).into_iter().flatten().flatten() {
            let p = e.path();
            if recycled.len() < RECYCLE_MAX && e.metadata().is_ok_and(|m| m.len() == len && m.nlink() == 1) {
                let written = std::fs::File::open(&p).is_ok_and(|f| fully_written(&f, len));
                recycled.push((p, written));
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
        let next_name = recycled.len() as u64;
        let state = SpareState { ready, preparing: false, failed_at: None, recycled, next_name };
        SpareSco { path, pool, len, state: Arc::new(Mutex::new(state)) }
    }

    /// Keep the dead SCO file at `path` for reuse instead of deleting it; false (the
    /// caller deletes it) when the pool is full, the file is smaller than an SCO, another
    /// name links it (an object store's hard link), or moving it fails. The caller makes
    /// sure nothing reads the file any more.
    pub fn offer(&self, path: &Path) -> bool {
        let mut s = self.state.lock();
        if s.recycled.len() >= RECYCLE_MAX {
            return false;
        }
        let to = self.pool.join(format!("{:016x}", s.next_name));
        let moved = (|| -> std::io::Result<Option<bool>> {
            let f = OpenOptions::new().write(true).open(path)?;
            let m = f.metadata()?;
            if m.len() < self.len || m.nlink() != 1 {
                return Ok(None);
            }
            // A sealed SCO carries its footer after the data: cut back to the SCO size.
            if m.len() > self.len {
                f.set_len(self.len)?;
            }
            let written = fully_written(&f, self.len);
            // Drop its cached pages (IO not aligned for O_DIRECT goes through the page
            // cache, `ScoFile::pick`; scrub read its victims that way until 2026-12-05): a
            // guest's O_DIRECT write into a range with cached pages cannot be issued
            // without blocking, so io_uring hands every such write to a kernel worker
            // (measured: 11 % of the daemon's samples under 4 KiB QD1 writes while
            // scrub ran, p50 118 against 91 us without scrub).
            // SAFETY: plain syscall on an fd we own; advice only.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            std::fs::create_dir_all(&self.pool)?;
            std::fs::rename(path, &to)?;
            Ok(Some(written))
        })();
        match moved {
            Ok(Some(written)) => {
                s.next_name += 1;
                s.recycled.push((to, written));
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(file = %path.display(), error = %e, "cannot keep a dead SCO file for reuse");
                false
            }
        }
    }

    /// Dead SCO files waiting for reuse.
    pub fn recycled(&self) -> usize {
        self.state.lock().recycled.len()
    }

    pub fn is_ready(&self) -> bool {
        self.state.lock().ready
    }

    /// Start zero-filling a spare in the background, unless one is ready or under way.
    pub fn prepare(&self) {
        {
            let mut s = self.state.lock();
            if s.ready || s.preparing || s.failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER) {
                return;
            }
            s.preparing = true;
        }
        let (path, len, state) = (self.path.clone(), self.len, self.state.clone());
        let spawned = std::thread::Builder::new().name("spare-sco".into()).spawn(move || {
            let res = zero_fill(&path, len);
            let mut s = state.lock();
            s.preparing = false;
            match res {
                Ok(()) => {
                    s.ready = true;
                    s.failed_at = None;
                }
                Err(e) => {
                    if s.failed_at.is_none() {
                        tracing::warn!(file = %path.display(), error = %e, "cannot prepare a zeroed SCO file (retried now and then)");
                    }
                    s.failed_at = Some(std::time::Instant::now());
                    // A partial spare would only hold space.
                    let _ = std::fs::remove_file(&path);
                }
            }
        });
        if spawned.is_err() {
            self.state.lock().preparing = false;
        }
    }

    /// Move the ready spare, or else a recycled SCO file, to `to`: a file of the SCO
    /// size whose blocks are written (`Some(true)`; `Some(false)` for a recycled file
    /// with blocks the file system holds as unwritten or not at all); `None` if there is
    /// none.
    pub fn take(&self, to: &Path) -> Option<bool> {
        let mut s = self.state.lock();
        if !s.ready {
            while let Some((p, written)) = s.recycled.pop() {
                match std::fs::rename(&p, to) {
                    Ok(()) => return Some(written),
                    Err(e) => tracing::warn!(file = %p.display(), error = %e, "cannot reuse a recycled SCO file"),
                }
            }
            return None;
        }
        s.ready = false;
        match std::fs::rename(&self.path, to) {
            Ok(()) => Some(true),
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot use the zeroed SCO file");
                None
            }
        }
    }
}

/// True if the file system holds every block of `f`'s first `len` bytes as written data
/// (FIEMAP, after writing back dirty pages): no hole, no unwritten (preallocated) or
/// delayed-allocation extent. Writing into such a file changes no extent metadata. (A
/// recycled SCO can hold unwritten extents where a write reserved space and then failed.)
/// False where FIEMAP is not supported.
pub fn fully_written(f: &std::fs::File, len: u64) -> bool {
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; EXTENTS],
    }
    const EXTENTS: usize = 32;
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 0x1;
    const LAST: u32 = 0x1;
    // Unknown location, delayed allocation, unwritten (preallocated).
    const NOT_WRITTEN: u32 = 0x2 | 0x4 | 0x800;
    let mut at = 0u64;
    while at < len {
        let empty = Extent { logical: 0, physical: 0, length: 0, reserved64: [0; 2], flags: 0, reserved: [0; 3] };
        let mut m = Fiemap {
            start: at,
            length: len - at,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: EXTENTS as u32,
            reserved: 0,
            extents: [empty; EXTENTS],
        };
        // SAFETY: FS_IOC_FIEMAP fills at most `extent_count` extents of the struct we own.
        if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP as _, &mut m as *mut Fiemap) } != 0 {
            return false;
        }
        if m.mapped_extents == 0 {
            return false;
        }
        for e in &m.extents[..(m.mapped_extents as usize).min(EXTENTS)] {
            if e.logical > at || e.flags & NOT_WRITTEN != 0 {
                return false;
            }
            at = at.max(e.logical + e.length);
            if e.flags & LAST != 0 && at < len {
                return false;
            }
        }
    }
    true
}

/// Write `len` zero bytes to `path` (O_DIRECT where possible: no page-cache pollution),
/// sync, and rename into place.
fn zero_fill(path: &Path, len: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let chunk = 1usize << 20;
    let buf = AlignedBuf::zeroed(chunk);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&tmp)
        .or_else(|_| OpenOptions::new().write(true).create(true).truncate(true).open(&tmp))?;
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(chunk as u64) as usize;
        file.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepares_in_the_background_and_hands_over_once() {
        let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        let s = SpareSco::new(t.path(), 3 << 20);
        assert!(!s.is_ready());
        assert!(s.take(&t.path().join("a")).is_none());
        s.prepare();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !s.is_ready() {
            assert!(std::time::Instant::now() < deadline, "spare never became ready");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // A second volume object over the same dir sees the finished spare.
        assert!(SpareSco::new(t.path(), 3 << 20).is_ready());
        assert_eq!(s.take(&t.path().join("a")), Some(true));
        assert!(s.take(&t.path().join("b")).is_none());
        let data = std::fs::read(t.path().join("a")).unwrap();
        assert_eq!(data.len(), 3 << 20);
        assert!(data.iter().all(|&b| b == 0));
    }

    #[test]
    fn dead_sco_files_are_recycled_once_and_bounded() {
        let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        let len = 64 << 10;
        let s = SpareSco::new(t.path(), len);
        let dead = |name: &str, size: u64| {
            let p = t.path().join(name);
            std::fs::write(&p, vec![7u8; size as usize]).unwrap();
            p
        };
        // A sealed SCO with its footer: cut to the SCO size.
        assert!(s.offer(&dead("a", len + 100)));
        assert!(!t.path().join("a").exists());
        // Too short, or still linked elsewhere (an object store's hard link): refused.
        assert!(!s.offer(&dead("short", len - 4096)));
        let linked = dead("linked", len);
        std::fs::hard_link(&linked, t.path().join("object")).unwrap();
        assert!(!s.offer(&linked));
        assert_eq!(s.recycled(), 1);
        // A new SCO takes it: the SCO size, the old bytes (never read: no map points there).
        assert!(s.take(&t.path().join("sco-9")).is_some());
        assert_eq!(std::fs::metadata(t.path().join("sco-9")).unwrap().len(), len);
        assert!(s.take(&t.path().join("sco-10")).is_none(), "a recycled file handed out twice");
        // Bounded; what is left over is found again by the next run.
        for i in 0..RECYCLE_MAX + 3 {
            let ok = s.offer(&dead(&format!("d{i}"), len));
            assert_eq!(ok, i < RECYCLE_MAX, "offer {i}");
        }
        assert_eq!(SpareSco::new(t.path(), len).recycled(), RECYCLE_MAX);
    }

    #[test]
    fn written_files_are_told_from_preallocated_and_sparse_ones() {
        let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        let len = 1u64 << 20;
        let p = t.path().join("f");
        std::fs::write(&p, vec![1u8; len as usize]).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        if !fully_written(&f, len) {
            // No FIEMAP here (tmpfs and the like): always false, which is safe.
            eprintln!("FIEMAP not supported on {}: skipped", t.path().display());
            return;
        }
        // Dirty pages only (delayed allocation) count once written back (FIEMAP syncs).
        let q = t.path().join("dirty");
        std::fs::write(&q, vec![2u8; len as usize]).unwrap();
        assert!(fully_written(&std::fs::File::open(&q).unwrap(), len));
        // Preallocated: unwritten extents.
        let g = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(t.path().join("g")).unwrap();
        // SAFETY: plain syscall on an fd we own.
        assert_eq!(unsafe { libc::fallocate(g.as_raw_fd(), 0, 0, len as libc::off_t) }, 0);
        assert!(!fully_written(&g, len));
        // Written but for one preallocated block in the middle (a failed write), or sparse.
        g.write_all_at(&vec![3u8; len as usize], 0).unwrap();
        g.sync_all().unwrap();
        assert!(fully_written(&g, len));
        // SAFETY: as above; punch a hole, then preallocate it again.
        let (off, n) = ((len / 2) as libc::off_t, 4096 as libc::off_t);
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        assert_eq!(unsafe { libc::fallocate(g.as_raw_fd(), punch, off, n) }, 0);
        assert!(!fully_written(&g, len), "a hole");
        // SAFETY: as above.
        assert_eq!(unsafe { libc::fallocate(g.as_raw_fd(), 0, off, n) }, 0);
        assert!(!fully_written(&g, len), "an unwritten block");
        // Shorter than asked: not written up to `len`.
        assert!(!fully_written(&f, 2 * len));
    }
}
