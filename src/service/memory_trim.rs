//! Giving freed heap memory back to the host. glibc keeps what a thread frees in that
//! thread's arena and returns pages to the kernel only from an arena's top, so after a
//! burst of large transient buffers (object-store reads decoded into fresh buffers, cache
//! fills, recovery) the daemon's RSS stays near its peak long after the memory is free:
//! after a 4 GiB read-back 85 MiB anonymous, of which `malloc_trim(0)` gave back 35 MiB.
//! The trimmer calls `malloc_trim(0)` every [`TRIM_EVERY`] (it walks the arenas and
//! releases their free pages; a few milliseconds at most, off the IO path).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Often enough that a burst's memory is back within seconds, rarely enough that the
/// pages a busy daemon frees and reuses at once are not faulted in again and again.
pub const TRIM_EVERY: Duration = Duration::from_secs(3);

/// A thread that trims the heap every [`TRIM_EVERY`] until stopped (or dropped).
pub struct MemoryTrimmer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MemoryTrimmer {
    pub fn start() -> std::io::Result<MemoryTrimmer> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new().name("memory-trim".into()).spawn(move || {
            let mut last = Instant::now();
            while !s.load(Ordering::SeqCst) {
                std::thread::park_timeout(TRIM_EVERY.saturating_sub(last.elapsed()));
                if last.elapsed() >= TRIM_EVERY && !s.load(Ordering::SeqCst) {
                    trim();
                    last = Instant::now();
                }
            }
        })?;
        Ok(MemoryTrimmer { stop, thread: Some(thread) })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for MemoryTrimmer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Release the free pages of every malloc arena; returns whether any were released.
#[cfg(target_env = "gnu")]
pub fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers and glibc's allocator locks each arena while
    // it walks it, so it may run on any thread concurrently with other allocations.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries have no malloc_trim: nothing to do.
#[cfg(not(target_env = "gnu"))]
pub fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_promptly() {
        let mut t = MemoryTrimmer::start().unwrap();
        let start = Instant::now();
        t.stop();
        assert!(start.elapsed() < TRIM_EVERY, "stop waited for the interval");
    }

    #[cfg(target_env = "gnu")]
    #[test]
    fn gives_back_freed_arena_memory() {
        // 16 MiB of mid-sized blocks (under the mmap threshold), then a block allocated
        // after them that stays in use: the freed blocks lie below the arena's top, which
        // free() alone never returns to the kernel; a trim must.
        let blocks: Vec<Vec<u8>> = (0..256).map(|_| vec![1u8; 64 << 10]).collect();
        let pin = vec![1u8; 64 << 10];
        drop(blocks);
        assert!(trim(), "malloc_trim released nothing after 16 MiB were freed");
        drop(pin);
    }
}
