//! The uploader ("proxy"): one per daemon, it owns the background traffic to the object
//! store. A bounded pool of threads takes jobs from the registered sources (volumes)
//! in round-robin order, so one busy volume cannot starve the others. A source decides
//! which of its jobs may run (SCOs before the TLog that references them) and handles
//! retries; the pool also gives each source a periodic `tick` (time-based sealing).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// Something with background uploads to run (a volume).
pub trait UploadSource: Send + Sync {
    /// Take the next job that may run now and run it to completion (including its
    /// bookkeeping). Returns false when there was nothing to do.
    fn run_one_job(&self) -> bool;
    /// Periodic housekeeping (about once a second).
    fn tick(&self);
}

#[derive(Default)]
struct Shared {
    sources: Vec<Weak<dyn UploadSource>>,
    next: usize,
    wakeups: u64,
}

struct Inner {
    shared: Mutex<Shared>,
    cv: Condvar,
    stop: AtomicBool,
}

/// Pool of upload threads.
pub struct Uploader {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Uploader {
    pub fn start(concurrency: usize) -> Arc<Uploader> {
        let inner =
            Arc::new(Inner { shared: Mutex::new(Shared::default()), cv: Condvar::new(), stop: AtomicBool::new(false) });
        let threads = (0..concurrency)
            .map(|i| {
                let inner = inner.clone();
                std::thread::Builder::new()
                    .name(format!("upload-{i}"))
                    .spawn(move || {
                        background_priority();
                        worker(inner, i == 0)
                    })
                    .expect("spawn upload thread")
            })
            .collect();
        Arc::new(Uploader { inner, threads: Mutex::new(threads) })
    }

    pub fn register(&self, src: Weak<dyn UploadSource>) {
        self.inner.shared.lock().sources.push(src);
        self.notify();
    }

    /// Wake the workers: a source has new work.
    pub fn notify(&self) {
        let mut s = self.inner.shared.lock();
        s.wakeups += 1;
        self.inner.cv.notify_all();
    }

    /// Stop the threads (pending work stays with its sources).
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.notify();
        let me = std::thread::current().id();
        for t in self.threads.lock().drain(..) {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Uploads (and scrub) are background work: the guest's IO (queue workers) gets the CPU first and
/// the write buffer absorbs the difference. Lowers this thread's scheduling priority.
pub(crate) fn background_priority() {
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, UPLOAD_NICE) != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the upload thread's priority");
        }
    }
}

/// Nice value of upload threads.
const UPLOAD_NICE: libc::c_int = 10;

/// How long an idle uploader thread keeps its upload buffers.
const BUFFERS_IDLE: Duration = Duration::from_secs(5);

fn worker(inner: Arc<Inner>, ticker: bool) {
    let mut last_tick = std::time::Instant::now();
    let mut idle_since: Option<std::time::Instant> = None;
    while !inner.stop.load(Ordering::SeqCst) {
        // Snapshot the sources, starting at a rotating position for fairness.
        let (sources, seen_wakeups) = {
            let mut s = inner.shared.lock();
            s.sources.retain(|w| w.strong_count() > 0);
            let n = s.sources.len();
            let start = if n == 0 { 0 } else { s.next % n };
            s.next = s.next.wrapping_add(1);
            let v: Vec<_> = (0..n).filter_map(|i| s.sources[(start + i) % n].upgrade()).collect();
            (v, s.wakeups)
        };
        if ticker && last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = std::time::Instant::now();
            for s in &sources {
                s.tick();
            }
        }
        let mut did = false;
        for s in &sources {
            if inner.stop.load(Ordering::SeqCst) {
                return;
            }
            if s.run_one_job() {
                did = true;
                break;
            }
        }
        drop(sources);
        if did {
            idle_since = None;
        } else {
            // Keep the upload buffers across short pauses; free them once idle a while.
            let since = *idle_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= BUFFERS_IDLE {
                super::upload_buffers::release();
            }
            let mut s = inner.shared.lock();
            if s.wakeups == seen_wakeups && !inner.stop.load(Ordering::SeqCst) {
                inner.cv.wait_for(&mut s, Duration::from_millis(250));
            }
        }
    }
}
