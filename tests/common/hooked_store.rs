//! The real local directory store with test hooks: puts (and hard-link adoptions) can be
//! refused as an unavailable server would refuse them, reads of SCO objects are counted, and
//! a test can run something just before the next one (a scrub pass racing a read).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use logdisk::backend::local::LocalStore;
use logdisk::backend::{ObjectInfo, ObjectStore};
use logdisk::{Error, Result};

pub struct HookedStore {
    pub inner: LocalStore,
    /// While set, every put or adoption fails (volume records excepted).
    pub refuse_writes: AtomicBool,
    /// Writes refused so far.
    pub refused: AtomicU64,
    /// Reads (`get`, `get_range`, `get_tail`) of SCO objects so far.
    pub sco_reads: AtomicU64,
    /// Reads of SCO data (`get`, `get_range`), not counting index fetches (`get_tail`).
    pub sco_data_reads: AtomicU64,
    /// TLog objects put (written as copies, not adopted).
    pub tlog_puts: AtomicU64,
    /// Run (once) before the next read of an SCO object, then cleared.
    pub before_sco_read: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl HookedStore {
    pub fn open(dir: &Path) -> HookedStore {
        HookedStore {
            inner: LocalStore::open(dir).unwrap(),
            refuse_writes: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            sco_reads: AtomicU64::new(0),
            sco_data_reads: AtomicU64::new(0),
            tlog_puts: AtomicU64::new(0),
            before_sco_read: Mutex::new(None),
        }
    }

    fn check_write(&self, key: &str) -> Result<()> {
        if self.refuse_writes.load(Ordering::SeqCst) && !key.contains("/meta/volume/") {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Store("503 Service Unavailable (injected)".into()));
        }
        Ok(())
    }

    fn count_data_read(&self, key: &str) {
        if key.contains("/sco/") {
            self.sco_data_reads.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn count_read(&self, key: &str) {
        if key.contains("/sco/") {
            self.sco_reads.fetch_add(1, Ordering::SeqCst);
            let hook = self.before_sco_read.lock().unwrap().take();
            if let Some(f) = hook {
                f();
            }
        }
    }
}

impl ObjectStore for HookedStore {
    fn url(&self) -> String {
        self.inner.url()
    }
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.check_write(key)?;
        if key.contains("/tlog/") {
            self.tlog_puts.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.put(key, data)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.count_read(key);
        self.count_data_read(key);
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.count_read(key);
        self.count_data_read(key);
        self.inner.get_range(key, offset, len)
    }
    fn get_tail(&self, key: &str, len: u64) -> Result<(Vec<u8>, u64)> {
        self.count_read(key);
        self.inner.get_tail(key, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_children(prefix)
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key)
    }
    fn adopt_file(&self, key: &str, path: &Path) -> Result<bool> {
        self.check_write(key)?;
        self.inner.adopt_file(key, path)
    }
    fn sync_adopted(&self, keys: &[String]) -> Result<()> {
        self.inner.sync_adopted(keys)
    }
    fn adopts_files(&self) -> bool {
        self.inner.adopts_files()
    }
    fn local_file(&self, key: &str) -> Option<std::path::PathBuf> {
        self.inner.local_file(key)
    }
}
