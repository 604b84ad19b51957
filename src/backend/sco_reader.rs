//! Ranged reads of SCO objects: fetch the footer and index once (kept in a bounded
//! in-memory table), then fetch only the frames covering a range and decode them,
//! verifying each frame's checksum. Concurrent reads of the same frames share one fetch
//! (single flight), and the most recently fetched frames stay in a bounded staging area
//! so that reads right after a fetch (read-ahead) are served while the read cache is
//! still being filled in the background.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::sco_object::{self, ScoIndex};
use super::ObjectStore;
use crate::crypto::cipher::ObjectCipher;
use crate::crypto::KeyRing;
use crate::error::{Error, Result};

const INDEX_CACHE_ENTRIES: usize = 2048;
/// Bytes of recently fetched frames kept in memory.
const STAGING_BYTES: usize = 8 << 20;
/// First tail fetch: footer plus the index of a 32 MiB SCO with 64 KiB frames.
const TAIL_GUESS: u64 = 16 << 10;

/// Decoded frames: raw offset of the first frame and the raw bytes.
pub type Frames = (u64, Arc<Vec<u8>>);

/// One fetch in progress; later readers of the same frames wait for its result.
#[derive(Default)]
struct Flight {
    result: Mutex<Option<std::result::Result<Frames, String>>>,
    cv: Condvar,
}

pub struct ScoReader {
    store: Arc<dyn ObjectStore>,
    /// Keys of sealed SCOs (found by the id in their footer).
    keys: Arc<KeyRing>,
    indexes: Mutex<HashMap<String, Arc<ScoIndex>>>,
    flights: Mutex<HashMap<(String, usize, usize), Arc<Flight>>>,
    staged: Mutex<std::collections::VecDeque<(String, Frames)>>,
    fetches: std::sync::atomic::AtomicU64,
}

impl ScoReader {
    pub fn new(store: Arc<dyn ObjectStore>) -> ScoReader {
        ScoReader::with_keys(store, Arc::new(KeyRing::default()))
    }

    pub fn with_keys(store: Arc<dyn ObjectStore>, keys: Arc<KeyRing>) -> ScoReader {
        ScoReader {
            store,
            keys,
            indexes: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            staged: Mutex::new(std::collections::VecDeque::new()),
            fetches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The index of object `key`, fetched on first use.
    pub fn index(&self, key: &str) -> Result<Arc<ScoIndex>> {
        if let Some(ix) = self.indexes.lock().get(key) {
            return Ok(ix.clone());
        }
        let (tail, size) = self.store.get_tail(key, TAIL_GUESS)?;
        let footer = sco_object::parse_footer(key, &tail, size)?;
        let cipher = match &footer.sealed {
            Some(s) => {
                let k = self.keys.get(s.key_id, key.split('/').next().unwrap_or(""))?;
                Some(Arc::new(ObjectCipher::derive(&k, s.salt, key)))
            }
            None => None,
        };
        let need = footer.index_len() + footer.footer_len();
        let index = if need <= tail.len() as u64 {
            let start = tail.len() - need as usize;
            sco_object::parse_index(key, &footer, &tail[start..start + footer.index_len() as usize], cipher)?
        } else {
            let bytes = self.store.get_range(key, footer.index_offset, footer.index_len())?;
            sco_object::parse_index(key, &footer, &bytes, cipher)?
        };
        let index = Arc::new(index);
        let mut t = self.indexes.lock();
        if t.len() >= INDEX_CACHE_ENTRIES {
            t.clear();
        }
        t.insert(key.to_string(), index.clone());
        Ok(index)
    }

    /// Ranged GETs issued so far (single-flight waiters do not count).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Decode the frames covering raw bytes `[off, off+len)` of object `key`.
    /// Returns the raw offset of the first frame and the frames' raw bytes.
    pub fn read_frames(&self, key: &str, off: u64, len: u64) -> Result<Frames> {
        let index = self.index(key)?;
        let (first, last) = index.frames_for(off, len).ok_or_else(|| Error::Corrupt {
            key: key.to_string(),
            detail: format!("range {off}+{len} is beyond the SCO's {} bytes", index.raw_len),
        })?;
        if let Some(hit) = self.staged_covering(key, off, len) {
            return Ok(hit);
        }
        let id = (key.to_string(), first, last);
        let (flight, leader) = {
            let mut f = self.flights.lock();
            match f.get(&id) {
                Some(fl) => (fl.clone(), false),
                None => {
                    let fl = Arc::new(Flight::default());
                    f.insert(id.clone(), fl.clone());
                    (fl, true)
                }
            }
        };
        if !leader {
            let mut r = flight.result.lock();
            while r.is_none() {
                flight.cv.wait(&mut r);
            }
            return match r.as_ref().expect("set") {
                Ok(frames) => Ok(frames.clone()),
                Err(msg) => Err(Error::Corrupt { key: key.to_string(), detail: msg.clone() }),
            };
        }
        let res = self.fetch_frames(key, &index, first, last);
        if let Ok(frames) = &res {
            self.stage(key, frames.clone());
        }
        *flight.result.lock() = Some(match &res {
            Ok(frames) => Ok(frames.clone()),
            Err(e) => Err(e.to_string()),
        });
        flight.cv.notify_all();
        self.flights.lock().remove(&id);
        res
    }

    /// Staged frames that cover `[off, off+len)` of `key`.
    fn staged_covering(&self, key: &str, off: u64, len: u64) -> Option<Frames> {
        let st = self.staged.lock();
        st.iter()
            .rev()
            .find(|(k, (start, data))| k == key && *start <= off && off + len <= start + data.len() as u64)
            .map(|(_, f)| f.clone())
    }

    fn stage(&self, key: &str, frames: Frames) {
        let mut st = self.staged.lock();
        st.push_back((key.to_string(), frames));
        let mut total: usize = st.iter().map(|(_, (_, d))| d.len()).sum();
        while total > STAGING_BYTES && st.len() > 1 {
            if let Some((_, (_, d))) = st.pop_front() {
                total -= d.len();
            }
        }
    }

    fn fetch_frames(&self, key: &str, index: &ScoIndex, first: usize, last: usize) -> Result<Frames> {
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (soff, slen) = index.stored_range(first, last);
        let mut stored = self.store.get_range(key, soff, slen)?;
        if stored.len() as u64 != slen {
            return Err(Error::Corrupt { key: key.to_string(), detail: "object shorter than its index says".into() });
        }
        let raw_start = first as u64 * index.frame_size as u64;
        let raw_end = (raw_start + (last - first + 1) as u64 * index.frame_size as u64).min(index.raw_len);
        let mut out = vec![0u8; (raw_end - raw_start) as usize];
        let mut at = 0usize;
        for i in first..=last {
            let e = index.frames[i];
            let s = (e.offset - soff) as usize;
            index.decode_frame(
                key,
                i,
                &mut stored[s..s + e.stored_len as usize],
                &mut out[at..at + e.raw_len as usize],
            )?;
            at += e.raw_len as usize;
        }
        Ok((raw_start, Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalStore;
    use crate::backend::sco_object::{encode, Codec};

    /// A store whose ranged GETs take 300 ms, so concurrent readers overlap.
    struct SlowStore(LocalStore);

    impl ObjectStore for SlowStore {
        fn url(&self) -> String {
            self.0.url()
        }
        fn put(&self, key: &str, data: &[u8]) -> Result<()> {
            self.0.put(key, data)
        }
        fn get(&self, key: &str) -> Result<Vec<u8>> {
            self.0.get(key)
        }
        fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
            std::thread::sleep(std::time::Duration::from_millis(300));
            self.0.get_range(key, offset, len)
        }
        fn get_tail(&self, key: &str, len: u64) -> Result<(Vec<u8>, u64)> {
            self.0.get_tail(key, len)
        }
        fn list(&self, prefix: &str) -> Result<Vec<super::super::ObjectInfo>> {
            self.0.list(prefix)
        }
        fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
            self.0.list_children(prefix)
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.0.delete(key)
        }
    }

    #[test]
    fn concurrent_misses_share_one_fetch() {
        let t = tempfile::tempdir().unwrap();
        let store = Arc::new(SlowStore(LocalStore::open(t.path()).unwrap()));
        let raw: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        store.put("v/s", &encode(&raw, 65536, Codec::Lz4)).unwrap();
        let r = Arc::new(ScoReader::new(store));
        r.index("v/s").unwrap();
        let ts: Vec<_> = (0..8)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || r.read_frames("v/s", 200_000, 1000).unwrap())
            })
            .collect();
        for t in ts {
            let (start, data) = t.join().unwrap();
            assert_eq!(&data[..], &raw[start as usize..start as usize + data.len()]);
        }
        assert_eq!(r.fetches(), 1, "eight concurrent readers of one frame share one GET");
    }

    #[test]
    fn ranged_reads_and_corruption() {
        let t = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(t.path()).unwrap());
        let raw: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        store.put("v/s", &encode(&raw, 65536, Codec::Lz4)).unwrap();
        let r = ScoReader::new(store.clone());
        let (start, data) = r.read_frames("v/s", 70000, 100).unwrap();
        assert_eq!(start, 65536);
        assert_eq!(&data[..], &raw[65536..131072]);

        let (start, data) = r.read_frames("v/s", 999_000, 1000).unwrap();
        assert_eq!(&data[..], &raw[start as usize..]);
        assert!(r.read_frames("v/s", 999_000, 1001).is_err());
        // Damage frame 2 in a copy of the object; frame 1 still reads.
        let mut obj = store.get("v/s").unwrap();
        let ix = r.index("v/s").unwrap();
        obj[ix.frames[2].offset as usize + 5] ^= 0xff;
        store.put("v/t", &obj).unwrap();
        assert!(matches!(r.read_frames("v/t", 131072, 10), Err(Error::Corrupt { .. })));
        assert!(r.read_frames("v/t", 65536, 10).is_ok());
    }
}
