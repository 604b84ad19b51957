//! The read cache: a bounded on-disk store of object-store data shared by every volume
//! of the daemon, keyed by location (object, 4 KiB block), so clones of one template
//! share entries. Fixed slots in one file; an in-memory index; CLOCK eviction (a hit
//! sets a reference bit, the hand clears bits and evicts the first unreferenced slot),
//! which keeps hot blocks. Readers read slots without holding the lock and re-check a
//! per-slot version afterwards, so an eviction racing a read is detected and retried.
//! Fills from object-store fetches are written by a background thread (bounded backlog;
//! a fill that does not fit is dropped — it is only a cache), so a cold read does not
//! wait for hundreds of small cache writes. Each slot's crc32c is kept in memory: a hit
//! reads the whole block into a private buffer and checks it before any byte is handed
//! out, so a block that rotted on the disk is a miss (read again from the object store,
//! which checks its own checksums), never returned.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::iov::{self, iovec, AlignedBuf};
use crate::error::{IoContext, Result};

pub const BLOCK: usize = 4096;

/// A cached block: (object owner id, SCO number, block index in the SCO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub owner: u32,
    pub sco: u64,
    pub block: u32,
}

struct Index {
    map: HashMap<BlockKey, u32>,
    slot_key: Vec<Option<BlockKey>>,
    referenced: Vec<bool>,
    hand: usize,
    owners: HashMap<String, u32>,
}

pub struct ReadCache {
    buffered: File,
    direct: Option<File>,
    slots: usize,
    versions: Vec<AtomicU64>,
    /// crc32c of each slot's block, set when it is written (read under the index lock).
    crcs: Vec<AtomicU32>,
    index: Mutex<Index>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Hits whose block failed its checksum (dropped from the cache, served as misses).
    rotten: AtomicU64,
    filler: Mutex<Option<SyncSender<Fill>>>,
    fill_backlog: AtomicU64,
}

/// Whole blocks of one SCO to write into the cache in the background: `blocks` blocks
/// from `first_block`, taken from `data[start..]`.
pub struct Fill {
    pub owner: u32,
    pub sco: u64,
    pub first_block: u64,
    pub data: Arc<Vec<u8>>,
    pub start: usize,
    pub blocks: usize,
}

thread_local! {
    /// One block read from the cache file, checked before any of it is handed out.
    static BLOCK_BUF: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::zeroed(BLOCK));
}

/// Most bytes of fills waiting for the background writer.
const MAX_FILL_BACKLOG: u64 = 16 << 20;

impl ReadCache {
    /// Create (replacing any old one) a cache of `size` bytes in file `path`.
    pub fn create(path: &Path, size: u64, direct: bool) -> Result<ReadCache> {
        let slots = (size / BLOCK as u64).max(16) as usize;
        let _ = std::fs::remove_file(path);
        let buffered = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .ctx(|| format!("cannot create read cache {}", path.display()))?;
        buffered.set_len((slots * BLOCK) as u64).ctx(|| format!("cannot size read cache {}", path.display()))?;
        let direct = if direct {
            OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(path).ok()
        } else {
            None
        };
        Ok(ReadCache {
            buffered,
            direct,
            slots,
            versions: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            crcs: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            index: Mutex::new(Index {
                map: HashMap::with_capacity(slots.min(1 << 20)),
                slot_key: vec![None; slots],
                referenced: vec![false; slots],
                hand: 0,
                owners: HashMap::new(),
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            rotten: AtomicU64::new(0),
            filler: Mutex::new(None),
            fill_backlog: AtomicU64::new(0),
        })
    }

    /// A stable small id for an object owner (volume name).
    pub fn owner_id(&self, name: &str) -> u32 {
        let mut ix = self.index.lock();
        let next = ix.owners.len() as u32;
        *ix.owners.entry(name.to_string()).or_insert(next)
    }

    pub fn stats(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// Hits refused because the block failed its checksum.
    pub fn rotten(&self) -> u64 {
        self.rotten.load(Ordering::Relaxed)
    }

    /// Read `[off, off+len)` of a cached block into `iovs`; false on a miss (also when
    /// the block fails its checksum: the entry is dropped).
    pub fn read(&self, key: BlockKey, off: usize, iovs: &[iovec]) -> bool {
        let len = iov::total(iovs) as usize;
        debug_assert!(off + len <= BLOCK);
        for _ in 0..3 {
            let (slot, ver, crc) = {
                let mut ix = self.index.lock();
                match ix.map.get(&key).copied() {
                    Some(s) => {
                        let s = s as usize;
                        ix.referenced[s] = true;
                        (s, self.versions[s].load(Ordering::Acquire), self.crcs[s].load(Ordering::Acquire))
                    }
                    None => {
                        self.misses.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                }
            };
            let f = self.direct.as_ref().unwrap_or(&self.buffered);
            // The whole block into a private buffer, checked, then copied out: the check
            // never runs over guest memory (which the guest may change meanwhile).
            let got = BLOCK_BUF.with(|b| {
                let mut b = b.borrow_mut();
                let v = [b.as_iovec()];
                if read_into(f, &v, (slot * BLOCK) as u64).is_err() {
                    return Some(false);
                }
                if self.versions[slot].load(Ordering::Acquire) != ver {
                    return None; // Evicted while read: look again.
                }
                if crate::crc::crc32c(&b) != crc {
                    self.drop_rotten(key, slot, ver);
                    return Some(false);
                }
                // SAFETY: the caller's iovecs are writable buffers of `len` bytes.
                unsafe { iov::copy_in(iovs, &b[off..off + len]) };
                Some(true)
            });
            match got {
                Some(true) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Some(false) => return false,
                None => continue,
            }
        }
        false
    }

    /// A block that failed its checksum leaves the cache (unless evicted meanwhile).
    fn drop_rotten(&self, key: BlockKey, slot: usize, ver: u64) {
        let n = self.rotten.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                sco = key.sco,
                block = key.block,
                rotten = n,
                "read-cache block failed its checksum: dropped, read from the object store instead"
            );
        }
        let mut ix = self.index.lock();
        if ix.map.get(&key) == Some(&(slot as u32)) && self.versions[slot].load(Ordering::Acquire) == ver {
            ix.map.remove(&key);
            ix.slot_key[slot] = None;
        }
    }

    /// Insert a whole block (overwriting an existing entry for the key).
    pub fn insert(&self, key: BlockKey, data: &[u8]) {
        debug_assert_eq!(data.len(), BLOCK);
        let slot = {
            let mut ix = self.index.lock();
            if let Some(old) = ix.map.remove(&key) {
                ix.slot_key[old as usize] = None;
            }
            // CLOCK: find a slot that is free or not recently used.
            let slot = loop {
                let h = ix.hand;
                ix.hand = (h + 1) % self.slots;
                if ix.slot_key[h].is_none() {
                    break h;
                }
                if ix.referenced[h] {
                    ix.referenced[h] = false;
                } else {
                    break h;
                }
            };
            if let Some(old) = ix.slot_key[slot].take() {
                ix.map.remove(&old);
            }
            self.versions[slot].fetch_add(1, Ordering::AcqRel);
            slot
        };
        let mut buf = AlignedBuf::zeroed(BLOCK);
        buf.copy_from_slice(data);
        let f = self.direct.as_ref().unwrap_or(&self.buffered);
        if read_write_at(f, &buf, (slot * BLOCK) as u64).is_err() {
            return; // Slot stays free: a cache write failure only costs a miss later.
        }
        let mut ix = self.index.lock();
        self.crcs[slot].store(crate::crc::crc32c(data), Ordering::Release);
        ix.slot_key[slot] = Some(key);
        ix.referenced[slot] = false;
        ix.map.insert(key, slot as u32);
    }

    /// Insert a run of whole blocks in the background. Dropped when the backlog is full.
    pub fn insert_blocks_async(self: &Arc<Self>, fill: Fill) {
        let bytes = (fill.blocks * BLOCK) as u64;
        if fill.blocks == 0 || self.fill_backlog.load(Ordering::Relaxed) + bytes > MAX_FILL_BACKLOG {
            return;
        }
        let mut filler = self.filler.lock();
        if filler.is_none() {
            let (tx, rx) = sync_channel::<Fill>(256);
            let weak: Weak<ReadCache> = Arc::downgrade(self);
            let spawned = std::thread::Builder::new().name("cache-fill".into()).spawn(move || {
                for f in rx.iter() {
                    let Some(cache) = weak.upgrade() else { break };
                    for i in 0..f.blocks {
                        let at = f.start + i * BLOCK;
                        let key = BlockKey { owner: f.owner, sco: f.sco, block: (f.first_block + i as u64) as u32 };
                        cache.insert(key, &f.data[at..at + BLOCK]);
                    }
                    cache.fill_backlog.fetch_sub((f.blocks * BLOCK) as u64, Ordering::Relaxed);
                }
            });
            match spawned {
                Ok(_) => *filler = Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the read-cache filler");
                    return;
                }
            }
        }
        let tx = filler.as_ref().expect("filler");
        self.fill_backlog.fetch_add(bytes, Ordering::Relaxed);
        if tx.try_send(fill).is_err() {
            self.fill_backlog.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

fn read_into(f: &File, iovs: &[iovec], pos: u64) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let want = iov::total(iovs) as isize;
    // SAFETY: iovecs are caller-owned writable buffers.
    let r = unsafe { libc::preadv(f.as_raw_fd(), iovs.as_ptr(), iovs.len() as i32, pos as libc::off_t) };
    if r != want {
        return Err(std::io::Error::other("short read from read cache"));
    }
    Ok(())
}

fn read_write_at(f: &File, buf: &[u8], pos: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    f.write_all_at(buf, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_hit_evict() {
        let t = tempfile::tempdir().unwrap();
        let c = ReadCache::create(&t.path().join("c"), 16 * BLOCK as u64, true).unwrap();
        let o = c.owner_id("v");
        assert_eq!(c.owner_id("v"), o);
        let key = |b| BlockKey { owner: o, sco: 1, block: b };
        for b in 0..16 {
            c.insert(key(b), &[b as u8; BLOCK]);
        }
        let mut out = AlignedBuf::zeroed(BLOCK);
        assert!(c.read(key(3), 0, &[out.as_iovec()]));
        assert_eq!(out[100], 3);
        let mut small = [0u8; 10];
        let v = [iovec { iov_base: small.as_mut_ptr() as *mut _, iov_len: 10 }];
        assert!(c.read(key(5), 7, &v));
        assert_eq!(small, [5u8; 10]);
        // Block 3 and 5 are referenced; inserting 2 more evicts unreferenced ones first.
        c.insert(key(100), &[9u8; BLOCK]);
        c.insert(key(101), &[9u8; BLOCK]);
        assert!(c.read(key(3), 0, &[out.as_iovec()]));
        assert!(c.read(key(100), 0, &[out.as_iovec()]));
        assert_eq!(out[0], 9);
        let present = (0..16).filter(|&b| c.read(key(b), 0, &[out.as_iovec()])).count();
        assert_eq!(present, 14);
        // Background fills land eventually.
        let c = Arc::new(c);
        let data = Arc::new((0..4 * BLOCK).map(|i| (i / BLOCK) as u8 + 40).collect::<Vec<u8>>());
        c.insert_blocks_async(Fill { owner: o, sco: 7, first_block: 10, data, start: BLOCK, blocks: 3 });
        let t0 = std::time::Instant::now();
        while !c.read(BlockKey { owner: o, sco: 7, block: 12 }, 0, &[out.as_iovec()]) {
            assert!(t0.elapsed().as_secs() < 5, "background fill never landed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(out[0], 43);
    }

    #[test]
    fn a_rotten_block_is_a_miss_never_returned() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("c");
        let c = ReadCache::create(&path, 16 * BLOCK as u64, true).unwrap();
        let key = BlockKey { owner: c.owner_id("v"), sco: 1, block: 0 };
        c.insert(key, &[7u8; BLOCK]);
        let mut out = AlignedBuf::zeroed(BLOCK);
        assert!(c.read(key, 0, &[out.as_iovec()]));
        // One bit flips on the disk, in every block of the file.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.chunks_mut(BLOCK).for_each(|b| b[123] ^= 0x10);
        std::fs::write(&path, &bytes).unwrap();
        let mut small = [0u8; 16];
        let v = [iovec { iov_base: small.as_mut_ptr() as *mut _, iov_len: 16 }];
        assert!(!c.read(key, 0, &v), "a rotten block was served");
        assert_eq!(small, [0u8; 16], "bytes of a rotten block reached the caller");
        assert_eq!(c.rotten(), 1);
        assert!(!c.read(key, 0, &[out.as_iovec()]), "the rotten entry stays");
        assert_eq!(c.rotten(), 1, "the second read is a plain miss");
        c.insert(key, &[8u8; BLOCK]);
        assert!(c.read(key, 0, &[out.as_iovec()]));
        assert_eq!(out[123], 8);
    }
}
