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
                    .spawn(move || worker(inner, i == 0))
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

fn worker(inner: Arc<Inner>, ticker: bool) {
    let mut last_tick = std::time::Instant::now();
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
        if !did {
            let mut s = inner.shared.lock();
            if s.wakeups == seen_wakeups && !inner.stop.load(Ordering::SeqCst) {
                inner.cv.wait_for(&mut s, Duration::from_millis(250));
            }
        }
    }
}
