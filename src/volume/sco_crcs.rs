//! Per-cluster crc32c of one local SCO file, shared by its writers, its uploader and every
//! reader without a lock, so that reads of local SCO data can be checked for rot.
//!
//! A cluster's checksum is set when a write lands with checksums taken from its buffers
//! (see [`super::cluster_crc`]), or when the uploader reads the SCO back (clusters written
//! by large writes, or before a restart). A cluster without one cannot be checked.
//! Memory: 4 bytes + 1 bit per cluster (a thousandth of the data with 4 KiB clusters).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::cluster_crc;
use super::iov::iovec;

pub struct ScoCrcs {
    crcs: Box<[AtomicU32]>,
    /// Bit `i`: cluster `i`'s checksum is set (published after the value, with Release).
    known: Box<[AtomicU64]>,
    /// A read found a cluster whose bytes do not match its checksum.
    rotten: AtomicBool,
}

impl ScoCrcs {
    /// A table for `clusters` clusters, none known.
    pub fn new(clusters: u32) -> ScoCrcs {
        let n = clusters as usize;
        ScoCrcs {
            crcs: (0..n).map(|_| AtomicU32::new(0)).collect(),
            known: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            rotten: AtomicBool::new(false),
        }
    }

    /// Clusters the table covers.
    pub fn len(&self) -> usize {
        self.crcs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.crcs.is_empty()
    }

    /// The checksum of cluster `i`, if known.
    pub fn get(&self, i: u32) -> Option<u32> {
        let i = i as usize;
        let word = self.known.get(i / 64)?.load(Ordering::Acquire);
        (word & (1 << (i % 64)) != 0).then(|| self.crcs[i].load(Ordering::Relaxed))
    }

    /// Set cluster `i`'s checksum.
    pub fn set(&self, i: u32, crc: u32) {
        let i = i as usize;
        if let Some(c) = self.crcs.get(i) {
            c.store(crc, Ordering::Relaxed);
            self.known[i / 64].fetch_or(1 << (i % 64), Ordering::Release);
        }
    }

    /// Forget cluster `i`'s checksum (its slot is written again).
    pub fn clear(&self, i: u32) {
        let i = i as usize;
        if i < self.crcs.len() {
            self.known[i / 64].fetch_and(!(1 << (i % 64)), Ordering::Release);
        }
    }

    /// Store checksums in [`cluster_crc`] form for clusters `first..`: known ones are set,
    /// unknown ones cleared.
    pub fn store(&self, first: u32, values: &[u64]) {
        for (i, &v) in values.iter().enumerate() {
            match cluster_crc::get(v) {
                Some(c) => self.set(first + i as u32, c),
                None => self.clear(first + i as u32),
            }
        }
    }

    /// Whether any of clusters `first..first+n` has a checksum.
    pub fn any_known(&self, first: u32, n: u32) -> bool {
        (first..first.saturating_add(n)).any(|i| self.get(i).is_some())
    }

    /// Whether every one of clusters `first..first+n` has a checksum.
    pub fn all_known(&self, first: u32, n: u32) -> bool {
        (first..first.saturating_add(n)).all(|i| self.get(i).is_some())
    }

    /// The checksums of clusters `0..n` in [`cluster_crc`] form.
    pub fn values(&self, n: usize) -> Vec<u64> {
        (0..n as u32).map(|i| self.get(i).map_or(cluster_crc::UNKNOWN, cluster_crc::known)).collect()
    }

    /// Set the checksum of every unknown cluster from `data`, the SCO's bytes from cluster
    /// `first` on (whole clusters of `cs` bytes; a partial tail is skipped).
    pub fn fill_unknown(&self, first: u32, data: &[u8], cs: usize) {
        for (i, c) in data.chunks_exact(cs).enumerate() {
            let idx = first + i as u32;
            if self.get(idx).is_none() {
                self.set(idx, crate::crc::crc32c(c));
            }
        }
    }

    /// Check the bytes of whole clusters `first..` read into `iovs` (a multiple of `cs`
    /// bytes) against their checksums. Returns the first cluster that does not match.
    ///
    /// # Safety
    /// Every iovec must point to readable memory of its length for the whole call.
    pub unsafe fn verify(&self, first: u32, iovs: &[iovec], cs: usize) -> Result<(), u32> {
        let mut i = first;
        let mut bad = None;
        // SAFETY: forwarded contract.
        unsafe {
            cluster_crc::for_each_cluster(iovs, cs, |crc| {
                if bad.is_none() && self.get(i).is_some_and(|want| want != crc) {
                    bad = Some(i);
                }
                i += 1;
            })
        };
        bad.map_or(Ok(()), Err)
    }

    /// Mark the SCO as holding rotten bytes (reads prefer another copy from now on).
    pub fn mark_rotten(&self) {
        self.rotten.store(true, Ordering::Relaxed);
    }

    pub fn is_rotten(&self) -> bool {
        self.rotten.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(b: &[u8]) -> iovec {
        iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }
    }

    #[test]
    fn verify_finds_the_changed_cluster() {
        let t = ScoCrcs::new(100);
        let data: Vec<u8> = (0..4 * 4096).map(|i| (i * 7 % 251) as u8).collect();
        t.fill_unknown(10, &data, 4096);
        assert_eq!(t.get(9), None);
        assert_eq!(t.get(11), Some(crate::crc::crc32c(&data[4096..8192])));
        let mut rotten = data.clone();
        rotten[2 * 4096 + 17] ^= 0x40;
        // Split buffers across the cluster boundaries: the check does not care.
        let (a, b) = rotten.split_at(5000);
        // SAFETY: the iovecs point to live slices.
        unsafe {
            assert_eq!(t.verify(10, &[iov(&data)], 4096), Ok(()));
            assert_eq!(t.verify(10, &[iov(a), iov(b)], 4096), Err(12));
        }
        t.clear(12);
        // SAFETY: as above.
        assert_eq!(unsafe { t.verify(10, &[iov(a), iov(b)], 4096) }, Ok(()));
        t.store(0, &[cluster_crc::known(5), cluster_crc::UNKNOWN]);
        assert_eq!((t.get(0), t.get(1)), (Some(5), None));
        assert!(t.any_known(0, 2) && !t.any_known(1, 1));
    }
}
