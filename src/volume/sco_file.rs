//! One SCO file in the local write buffer: cluster data appended by writes, read by
//! reads until the SCO is uploaded and evicted. Vectored IO goes straight between the
//! file and the caller's buffers (guest memory); O_DIRECT is used when the buffers
//! are aligned for it, the page cache otherwise.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::iov::{self, iovec};
use super::sco_crcs::ScoCrcs;
use crate::backend::sco_object::ScoIndex;
use crate::error::{IoContext, Result};

/// Separate blocks reserved past a fresh SCO's end ([`ScoFile::preallocate`]): one more
/// extent than an ext4 inode holds in itself (4), so its extent tree never folds back
/// into the inode while the SCO is written.
const EXTENT_ANCHORS: u64 = 5;
/// Size of each, and of the gap before it (a file system block).
const ANCHOR_BLOCK: u64 = 4096;

/// Alignment O_DIRECT needs for offsets, lengths and buffer addresses.
pub const DIRECT_ALIGN: usize = 512;

pub struct ScoFile {
    pub number: u64,
    path: PathBuf,
    buffered: File,
    direct: Option<File>,
    /// The device the file is on (`st_dev`).
    dev: u64,
    /// Per-cluster checksums of the data (reads check them).
    pub crcs: ScoCrcs,
    /// An object-store file read in place: its index, whose frame checksums check the
    /// clusters that have no checksum of their own yet (see `super::in_place`).
    pub frames: Option<Arc<ScoIndex>>,
    /// The preallocated tail of an SCO sealed early was cut (see [`ScoFile::cut_tail`]).
    tail_cut: parking_lot::Mutex<bool>,
}

impl ScoFile {
    /// Open (creating if `create`) the SCO file at `path`, of up to `clusters` clusters.
    pub fn open(path: &Path, number: u64, clusters: u32, create: bool, direct: bool) -> Result<ScoFile> {
        ScoFile::open_with(path, number, clusters, create, None, direct)
    }

    /// Open, read-only, an object-store file that holds SCO `number`'s raw bytes at
    /// their raw offsets, as `frames` says (see `ScoIndex::raw_in_place`).
    pub fn open_object(path: &Path, number: u64, frames: Arc<ScoIndex>, cs: u64, direct: bool) -> Result<ScoFile> {
        let clusters = (frames.raw_len / cs) as u32;
        ScoFile::open_with(path, number, clusters, false, Some(frames), direct)
    }

    fn open_with(
        path: &Path,
        number: u64,
        clusters: u32,
        create: bool,
        frames: Option<Arc<ScoIndex>>,
        direct: bool,
    ) -> Result<ScoFile> {
        let write = frames.is_none();
        let buffered = OpenOptions::new()
            .read(true)
            .write(write)
            .create(create)
            .truncate(false)
            .open(path)
            .ctx(|| format!("cannot open SCO file {}", path.display()))?;
        let direct = if direct {
            // Fall back silently to buffered IO on filesystems without O_DIRECT (tmpfs).
            OpenOptions::new().read(true).write(write).custom_flags(libc::O_DIRECT).open(path).ok()
        } else {
            None
        };
        let dev = std::os::unix::fs::MetadataExt::dev(
            &buffered.metadata().ctx(|| format!("cannot stat SCO file {}", path.display()))?,
        );
        Ok(ScoFile {
            number,
            path: path.to_path_buf(),
            buffered,
            direct,
            dev,
            crcs: ScoCrcs::new(clusters),
            frames,
            tail_cut: parking_lot::Mutex::new(false),
        })
    }

    pub fn direct_fd(&self) -> Option<i32> {
        self.direct.as_ref().map(|f| f.as_raw_fd())
    }

    pub fn dev(&self) -> u64 {
        self.dev
    }

    pub fn buffered_fd(&self) -> i32 {
        self.buffered.as_raw_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_len(&self) -> Result<u64> {
        Ok(self.buffered.metadata().ctx(|| format!("cannot stat {}", self.path.display()))?.len())
    }

    fn pick(&self, iovs: &[iovec], off: u64) -> &File {
        match &self.direct {
            Some(d) if (off as usize).is_multiple_of(DIRECT_ALIGN) && iov::aligned(iovs, DIRECT_ALIGN) => d,
            _ => &self.buffered,
        }
    }

    /// Write all of `iovs` at `off`.
    pub fn writev_at(&self, iovs: &[iovec], off: u64) -> io::Result<()> {
        let f = self.pick(iovs, off);
        rw_all(f.as_raw_fd(), iovs, off, true)
    }

    /// Fill all of `iovs` from `off`; reading past the end of the file is an error.
    pub fn readv_at(&self, iovs: &[iovec], off: u64) -> io::Result<()> {
        let f = self.pick(iovs, off);
        rw_all(f.as_raw_fd(), iovs, off, false)
    }

    /// Write the file's dirty pages (IO not aligned for O_DIRECT went through the page
    /// cache) to the disk and wait for them, without a device cache flush or any file
    /// metadata: for a flush whose one device flush comes from another file's sync.
    pub fn write_back(&self) -> Result<()> {
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::sync_file_range(self.buffered.as_raw_fd(), 0, 0, flags) } != 0 {
            return Err(crate::error::Error::io(
                format!("cannot write back {}", self.path.display()),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Cut a sealed SCO's file back to its `len` bytes of data, once: the first call
    /// cuts (when the file is longer), later ones do nothing. Its upload job calls it
    /// before it appends the object's index and footer, and so does the uploader's early
    /// look at SCOs sealed early (`Volume::cut_tails`): whichever comes second must not
    /// cut that footer off.
    pub fn cut_tail(&self, len: u64) -> Result<()> {
        let mut cut = self.tail_cut.lock();
        if !*cut && self.file_len()? > len {
            self.set_len(len)?;
        }
        *cut = true;
        Ok(())
    }

    pub fn sync_data(&self) -> Result<()> {
        self.buffered.sync_data().ctx(|| format!("cannot sync {}", self.path.display()))
    }

    /// Allocate `len` bytes of disk for the file up front (its size becomes `len`): the
    /// writes that fill it are then not file-extending writes, which the filesystem
    /// serialises (one at a time per file). Best effort: tmpfs and friends keep growing
    /// the file by writes.
    ///
    /// Past the end it also reserves [`EXTENT_ANCHORS`] single blocks, apart from each
    /// other (`FALLOC_FL_KEEP_SIZE`: the size stays `len` and nothing reads them; a cut
    /// frees them, else those past the sealed tail go when the file is deleted or
    /// recycled: at most 16 KiB per SCO). They keep the file's extent tree one
    /// level deep for as long as the file is written into. Without them, on ext4, writes
    /// completing out of order split the preallocated extent into more pieces than the
    /// inode holds, the file system allocated an extent block, merged the pieces back as
    /// the gaps were written, and freed the block again: on a file system mounted with
    /// `discard`, each free was a synchronous 4 KiB discard in the write's completion,
    /// about 2 000 a second under 4 KiB random read/write (seen with `perf record -e
    /// block:block_bio_queue`, 2026-12-07).
    pub fn preallocate(&self, len: u64) {
        let fd = self.buffered.as_raw_fd();
        // SAFETY: plain syscall on an fd we own.
        let r = unsafe { libc::fallocate(fd, 0, 0, len as libc::off_t) };
        if r != 0 {
            tracing::debug!(path = %self.path.display(), error = %io::Error::last_os_error(), "fallocate failed");
            return;
        }
        for i in 0..EXTENT_ANCHORS {
            let at = len + ANCHOR_BLOCK * (2 * i + 1);
            // SAFETY: as above. Best effort: without anchors, writes only cost more.
            unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, at as libc::off_t, ANCHOR_BLOCK as libc::off_t) };
        }
    }

    /// Write `data` at `off` through the page cache and fsync the file (data and size).
    pub fn write_durably_at(&self, data: &[u8], off: u64) -> Result<()> {
        self.buffered.write_all_at(data, off).ctx(|| format!("cannot write {}", self.path.display()))?;
        self.buffered.sync_all().ctx(|| format!("cannot sync {}", self.path.display()))
    }

    pub fn set_len(&self, len: u64) -> Result<()> {
        self.buffered.set_len(len).ctx(|| format!("cannot truncate {}", self.path.display()))
    }
}

/// pwritev/preadv all bytes, retrying short transfers and EINTR.
fn rw_all(fd: i32, iovs: &[iovec], mut off: u64, write: bool) -> io::Result<()> {
    let mut total = iov::total(iovs);
    let mut done_in_first = 0usize;
    let mut idx = 0usize;
    let mut scratch: [iovec; 64] = [iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 64];
    while total > 0 {
        // Build a window of up to 64 iovecs starting at (idx, done_in_first).
        let mut n = 0;
        let mut i = idx;
        while i < iovs.len() && n < scratch.len() {
            let skip = if i == idx { done_in_first } else { 0 };
            if iovs[i].iov_len > skip {
                scratch[n] = iovec {
                    // SAFETY: skip < iov_len.
                    iov_base: unsafe { (iovs[i].iov_base as *mut u8).add(skip) } as *mut libc::c_void,
                    iov_len: iovs[i].iov_len - skip,
                };
                n += 1;
            }
            i += 1;
        }
        // SAFETY: the iovecs describe caller-owned buffers valid for this call.
        let r = unsafe {
            if write {
                libc::pwritev(fd, scratch.as_ptr(), n as i32, off as libc::off_t)
            } else {
                libc::preadv(fd, scratch.as_ptr(), n as i32, off as libc::off_t)
            }
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read from SCO file"));
        }
        let mut adv = r as usize;
        off += adv as u64;
        total -= adv as u64;
        while adv > 0 && idx < iovs.len() {
            let left = iovs[idx].iov_len - done_in_first;
            if adv >= left {
                adv -= left;
                idx += 1;
                done_in_first = 0;
            } else {
                done_in_first += adv;
                adv = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::iov::AlignedBuf;

    #[test]
    fn aligned_and_unaligned_io() {
        let t = tempfile::tempdir().unwrap();
        let f = ScoFile::open(&t.path().join("s"), 1, 16, true, true).unwrap();
        let mut a = AlignedBuf::zeroed(8192);
        a.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        f.writev_at(&[a.as_iovec()], 4096).unwrap();
        let mut odd = vec![0u8; 100];
        let v = [iovec { iov_base: odd.as_mut_ptr().wrapping_add(1) as *mut _, iov_len: 99 }];
        f.readv_at(&v, 4096 + 3).unwrap();
        assert_eq!(odd[1], 3);
        assert_eq!(odd[99], 101);
        let mut past = vec![0u8; 10];
        let v = [iovec { iov_base: past.as_mut_ptr() as *mut _, iov_len: 10 }];
        assert!(f.readv_at(&v, 8192 + 4096 - 5).is_err());
    }

    #[test]
    fn preallocation_reserves_anchors_past_the_end_and_keeps_the_size() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("s");
        let len = 1u64 << 20;
        let f = ScoFile::open(&path, 1, 256, true, true).unwrap();
        f.preallocate(len);
        let held = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
        assert_eq!(f.file_len().unwrap(), len, "the anchors do not change the size");
        if held(&path) >= len {
            // fallocate works here: the anchors hold their blocks too.
            assert!(held(&path) >= len + EXTENT_ANCHORS * ANCHOR_BLOCK, "{} bytes held", held(&path));
        }
        // Writes completing in any order land where they were written.
        let mut bufs = Vec::new();
        for (n, i) in [5u64, 1, 7, 0, 3, 6, 2, 4].into_iter().enumerate() {
            let mut a = AlignedBuf::zeroed(4096);
            a.iter_mut().for_each(|b| *b = n as u8 + 1);
            f.writev_at(&[a.as_iovec()], i * 4096).unwrap();
            bufs.push((i, n as u8 + 1));
        }
        for (i, v) in bufs {
            let mut a = AlignedBuf::zeroed(4096);
            f.readv_at(&[a.as_iovec()], i * 4096).unwrap();
            assert!(a.iter().all(|&b| b == v), "block {i}");
        }
        assert_eq!(f.file_len().unwrap(), len);
        // A cut (a seal's truncate) frees them with the rest of the tail.
        f.set_len(8 * 4096).unwrap();
        assert!(held(&path) <= 8 * 4096 + 2 * ANCHOR_BLOCK, "{} bytes held after the cut", held(&path));
    }
}
