//! The fdatasyncs of one flush, issued together: the SCO files a flush covers and the TLogs
//! it appended to are synced at once on a small io_uring, so the filesystem folds them into
//! one journal commit (ext4, XFS) instead of one commit per file. One after another where
//! io_uring is unavailable.
//!
//! Ordering: a TLog batch is written (page cache) before the syncs start, after the data it
//! describes was written. A crash during the syncs can leave a TLog record durable whose
//! data is not; only writes of the unfinished flush are affected, which the durability
//! contract does not cover, and journalling filesystems commit the data's extent changes
//! no later than the TLog's size change that follows them.

use std::io;
use std::os::unix::io::RawFd;

use logdisk_shm::{Completion, Uring};

/// Most files synced in one round on the ring.
const ROUND: usize = 16;

pub struct SyncSet {
    ring: Option<Uring>,
    done: [Completion; ROUND],
}

impl Default for SyncSet {
    fn default() -> Self {
        SyncSet::new()
    }
}

impl SyncSet {
    pub fn new() -> SyncSet {
        let ring = match Uring::new(ROUND as u32) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(error = %e, "io_uring unavailable: flushes sync files one by one");
                None
            }
        };
        SyncSet { ring, done: [Completion { user_data: 0, result: 0 }; ROUND] }
    }

    /// fdatasync every fd in `fds`. On failure returns the index of a file that failed.
    pub fn sync_all(&mut self, fds: &[RawFd]) -> Result<(), (usize, io::Error)> {
        for (n, chunk) in fds.chunks(ROUND).enumerate() {
            let base = n * ROUND;
            let ring = match self.ring.as_mut() {
                Some(r) if chunk.len() > 1 => r,
                _ => {
                    sync_each(chunk).map_err(|(i, e)| (base + i, e))?;
                    continue;
                }
            };
            match sync_on_ring(ring, &mut self.done, chunk) {
                Ok(()) => {}
                Err(RingError::File(i, e)) => return Err((base + i, e)),
                Err(RingError::Queue(e)) => {
                    // Nothing reached the kernel: sync the chunk directly, without the ring.
                    tracing::warn!(error = %e, "io_uring failed during a flush: syncing files one by one");
                    self.ring = None;
                    sync_each(chunk).map_err(|(i, e)| (base + i, e))?;
                }
                Err(RingError::Ring(e)) => {
                    // Some fdatasyncs may have completed unseen, an error among them: the
                    // kernel reports a writeback error once per open file, so syncing again
                    // could wrongly succeed. The flush fails (never use this ring again).
                    self.ring = None;
                    return Err((base, e));
                }
            }
        }
        Ok(())
    }
}

enum RingError {
    /// The fdatasync of file `.0` failed.
    File(usize, io::Error),
    /// The syncs could not be queued; none was submitted.
    Queue(io::Error),
    /// The ring itself failed after submitting; which files were synced is unknown.
    Ring(io::Error),
}

fn sync_each(fds: &[RawFd]) -> Result<(), (usize, io::Error)> {
    for (i, &fd) in fds.iter().enumerate() {
        // SAFETY: fdatasync on a file descriptor the caller keeps open.
        if unsafe { libc::fdatasync(fd) } != 0 {
            return Err((i, io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Queue an fdatasync per fd (at most [`ROUND`], on an idle ring), submit them together
/// and collect every completion; reports the first failed file.
fn sync_on_ring(ring: &mut Uring, done: &mut [Completion; ROUND], fds: &[RawFd]) -> Result<(), RingError> {
    for (i, &fd) in fds.iter().enumerate() {
        // A failed push after the first may follow a submit inside the ring: unknown state.
        ring.fdatasync(fd, i as u64).map_err(|e| if i == 0 { RingError::Queue(e) } else { RingError::Ring(e) })?;
    }
    let mut got = 0;
    let mut first_err = None;
    while got < fds.len() {
        if let Err(e) = ring.submit_and_wait(1) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RingError::Ring(e));
        }
        let k = ring.reap_into(&mut done[..fds.len() - got]);
        for c in &done[..k] {
            if let (Err(e), None) = (c.io_result(), &first_err) {
                first_err = Some(RingError::File(c.user_data as usize, e));
            }
        }
        got += k;
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn syncs_many_files_and_reports_the_failing_one() {
        let t = tempfile::tempdir().unwrap();
        let files: Vec<std::fs::File> = (0..20)
            .map(|i| {
                let p = t.path().join(format!("f{i}"));
                std::fs::write(&p, [i as u8; 100]).unwrap();
                std::fs::OpenOptions::new().write(true).open(p).unwrap()
            })
            .collect();
        let mut fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let mut set = SyncSet::new();
        set.sync_all(&fds).unwrap();
        set.sync_all(&fds[..1]).unwrap();
        set.sync_all(&[]).unwrap();
        fds[17] = -1;
        let (at, e) = set.sync_all(&fds).unwrap_err();
        assert_eq!(at, 17);
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        // The ring is still usable after a failure.
        set.sync_all(&fds[..3]).unwrap();
    }
}
