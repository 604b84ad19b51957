//! A zero-filled SCO file prepared in the background for volumes that flush often.
//!
//! Writing into a freshly allocated file makes every fdatasync also write the file's
//! extent and inode changes; writing into blocks already written with zeroes changes no
//! metadata, so a flush costs one device cache flush, as for a raw file. Zero-filling
//! costs a second write of the SCO, so it is only done for volumes whose flushes cover
//! little data each (see `Volume::flush`); the file is renamed into place at the next
//! roll. A spare left over from an earlier run is used as is.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
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
}

/// After a failed preparation (a full file system), the next attempt waits this long:
/// each attempt writes until the disk is full again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

pub struct SpareSco {
    path: PathBuf,
    len: u64,
    state: Arc<Mutex<SpareState>>,
}

impl SpareSco {
    /// The spare of the volume in `dir`, for SCOs of `len` bytes.
    pub fn new(dir: &Path, len: u64) -> SpareSco {
        let path = dir.join("spare-sco");
        let ready = std::fs::metadata(&path).is_ok_and(|m| m.len() == len);
        SpareSco { path, len, state: Arc::new(Mutex::new(SpareState { ready, preparing: false, failed_at: None })) }
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

    /// Move the ready spare to `to`; false if there is none.
    pub fn take(&self, to: &Path) -> bool {
        let mut s = self.state.lock();
        if !s.ready {
            return false;
        }
        s.ready = false;
        match std::fs::rename(&self.path, to) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot use the zeroed SCO file");
                false
            }
        }
    }
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
        assert!(!s.take(&t.path().join("a")));
        s.prepare();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !s.is_ready() {
            assert!(std::time::Instant::now() < deadline, "spare never became ready");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // A second volume object over the same dir sees the finished spare.
        assert!(SpareSco::new(t.path(), 3 << 20).is_ready());
        assert!(s.take(&t.path().join("a")));
        assert!(!s.take(&t.path().join("b")));
        let data = std::fs::read(t.path().join("a")).unwrap();
        assert_eq!(data.len(), 3 << 20);
        assert!(data.iter().all(|&b| b == 0));
    }
}
