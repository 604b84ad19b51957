//! crc32c of each cluster as it is written, so uploading an SCO by adopting its file
//! need not read the data back to checksum its frames.
//!
//! A write's checksums are computed from the caller's buffers (guest memory) before the
//! IO and again after it: a cluster whose buffer changed while the IO ran (a guest racing
//! its own write) is marked unknown, and its frame is read back from the file at upload.
//! Values are stored as `u64`: [`UNKNOWN`], or a known crc with bit 32 set. Frame
//! checksums are combined from cluster checksums with a precomputed zero-shift operator
//! (one 32×32 GF(2) matrix-vector product per cluster).

use super::iov::iovec;

/// No checksum for this cluster (not written through a checksumming path, or changed).
pub const UNKNOWN: u64 = 0;
const KNOWN: u64 = 1 << 32;

/// The stored form of a known checksum.
pub fn known(crc: u32) -> u64 {
    KNOWN | crc as u64
}

/// The checksum in a stored value, if known.
pub fn get(v: u64) -> Option<u32> {
    (v & KNOWN != 0).then_some(v as u32)
}

/// Call `f` with the crc32c of each whole `cs`-byte cluster of the bytes of `iovs`, in
/// order, whatever the buffer boundaries (a trailing partial cluster is skipped).
///
/// # Safety
/// Every iovec must point to readable memory of its length for the whole call.
pub(crate) unsafe fn for_each_cluster(iovs: &[iovec], cs: usize, mut f: impl FnMut(u32)) {
    let mut crc = 0u32;
    let mut filled = 0usize;
    for v in iovs {
        let mut at = 0usize;
        while at < v.iov_len {
            let n = (v.iov_len - at).min(cs - filled);
            // SAFETY: inside the iovec, readable per the caller's contract.
            let piece = unsafe { std::slice::from_raw_parts((v.iov_base as *const u8).add(at), n) };
            crc = crate::crc::crc32c_append(crc, piece);
            filled += n;
            at += n;
            if filled == cs {
                f(crc);
                crc = 0;
                filled = 0;
            }
        }
    }
}

/// Append the checksum of each `cs`-byte cluster of the data in `iovs` (a multiple of
/// `cs` bytes) to `out`.
///
/// # Safety
/// As for [`for_each_cluster`].
pub unsafe fn compute(iovs: &[iovec], cs: usize, out: &mut Vec<u64>) {
    // SAFETY: forwarded contract.
    unsafe { for_each_cluster(iovs, cs, |crc| out.push(known(crc))) };
}

/// Checksum the data in `iovs` again and mark every cluster whose checksum differs from
/// `crcs` (computed by [`compute`] before the IO) as unknown.
///
/// # Safety
/// As for [`for_each_cluster`].
pub unsafe fn recheck(iovs: &[iovec], cs: usize, crcs: &mut [u64]) {
    let mut i = 0usize;
    // SAFETY: forwarded contract.
    unsafe {
        for_each_cluster(iovs, cs, |crc| {
            if let Some(c) = crcs.get_mut(i) {
                if *c != known(crc) {
                    *c = UNKNOWN;
                }
            }
            i += 1;
        });
    }
    // Fewer clusters than checksums: the rest cannot be vouched for.
    for c in crcs.iter_mut().skip(i) {
        *c = UNKNOWN;
    }
}

/// Combines checksums of consecutive pieces of one fixed length.
pub struct Combiner {
    /// The operator that appends `len` zero bytes to a crc register, as four byte
    /// tables: `bytes[k][b]` is its product with `b << 8k`, so applying it costs four
    /// lookups (the bit-by-bit product was ~6 % of the daemon's samples under 1 MiB
    /// writes: one per cluster at every SCO upload).
    bytes: Box<[[u32; 256]; 4]>,
}

fn times(m: &[u32; 32], mut v: u32) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while v != 0 {
        if v & 1 != 0 {
            sum ^= m[i];
        }
        v >>= 1;
        i += 1;
    }
    sum
}

fn product(a: &[u32; 32], b: &[u32; 32]) -> [u32; 32] {
    let mut out = [0u32; 32];
    for (o, &col) in out.iter_mut().zip(b.iter()) {
        *o = times(a, col);
    }
    out
}

impl Combiner {
    /// The combiner for pieces of `len` bytes, built once per length for the process
    /// (building one was ~1 % of the daemon's samples under 1 MiB writes: one per SCO
    /// upload). Lengths are cluster sizes, so the few built stay for good (16 KiB each).
    pub fn for_len(len: usize) -> &'static Combiner {
        static BUILT: std::sync::Mutex<Vec<(usize, &'static Combiner)>> = std::sync::Mutex::new(Vec::new());
        let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = built.iter().find(|(l, _)| *l == len) {
            return c;
        }
        let c: &'static Combiner = Box::leak(Box::new(Combiner::new(len)));
        built.push((len, c));
        c
    }

    /// For pieces of `len` bytes.
    pub fn new(len: usize) -> Combiner {
        // One zero bit (reflected crc32c polynomial), then squared to one zero byte.
        let mut bit = [0u32; 32];
        bit[0] = 0x82F6_3B78;
        for (n, b) in bit.iter_mut().enumerate().skip(1) {
            *b = 1 << (n - 1);
        }
        let two = product(&bit, &bit);
        let four = product(&two, &two);
        let mut base = product(&four, &four);
        // shift = byte^len by squaring.
        let mut shift = [0u32; 32];
        for (n, s) in shift.iter_mut().enumerate() {
            *s = 1 << n;
        }
        let mut n = len;
        while n > 0 {
            if n & 1 == 1 {
                shift = product(&base, &shift);
            }
            base = product(&base, &base);
            n >>= 1;
        }
        let mut bytes = Box::new([[0u32; 256]; 4]);
        for (k, table) in bytes.iter_mut().enumerate() {
            for (b, t) in table.iter_mut().enumerate() {
                *t = times(&shift, (b as u32) << (8 * k));
            }
        }
        Combiner { bytes }
    }

    /// crc32c(A ‖ B) from crc32c(A) and crc32c(B), B being `len` bytes long.
    pub fn append(&self, crc_a: u32, crc_b: u32) -> u32 {
        let t = &self.bytes;
        let [b0, b1, b2, b3] = crc_a.to_le_bytes();
        t[0][b0 as usize] ^ t[1][b1 as usize] ^ t[2][b2 as usize] ^ t[3][b3 as usize] ^ crc_b
    }

    /// The checksum of the concatenation of pieces with the given stored checksums, or
    /// `None` if any is unknown (or there are none).
    pub fn all(&self, crcs: &[u64]) -> Option<u32> {
        let (first, rest) = crcs.split_first()?;
        let mut crc = get(*first)?;
        for &c in rest {
            crc = self.append(crc, get(c)?);
        }
        Some(crc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(b: &[u8]) -> iovec {
        iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }
    }

    fn data(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn cluster_checksums_match_whatever_the_buffer_split() {
        let d = data(4 * 4096, 7);
        let want: Vec<u64> = d.chunks(4096).map(|c| known(crate::crc::crc32c(c))).collect();
        let mut got = Vec::new();
        unsafe { compute(&[iov(&d)], 4096, &mut got) };
        assert_eq!(got, want);
        // Buffers that cut clusters at odd places.
        let cuts = [(0, 100), (100, 5000), (5000, 8192), (8192, 12000), (12000, 16384)];
        let v: Vec<iovec> = cuts.iter().map(|&(a, b)| iov(&d[a..b])).collect();
        got.clear();
        unsafe { compute(&v, 4096, &mut got) };
        assert_eq!(got, want);
        unsafe { recheck(&v, 4096, &mut got) };
        assert_eq!(got, want, "unchanged data keeps every checksum");
    }

    #[test]
    fn recheck_marks_changed_clusters_unknown() {
        let mut d = data(3 * 4096, 9);
        let mut crcs = Vec::new();
        unsafe { compute(&[iov(&d)], 4096, &mut crcs) };
        d[4096 + 17] ^= 0x40;
        unsafe { recheck(&[iov(&d)], 4096, &mut crcs) };
        assert!(get(crcs[0]).is_some());
        assert_eq!(crcs[1], UNKNOWN);
        assert!(get(crcs[2]).is_some());
    }

    #[test]
    fn combined_cluster_checksums_equal_the_frame_checksum() {
        for cs in [512usize, 4096, 65536] {
            let c = Combiner::for_len(cs);
            assert!(std::ptr::eq(c, Combiner::for_len(cs)), "built once per length");
            let d = data(cs * 16 + cs, cs as u32);
            let crcs: Vec<u64> = d.chunks(cs).map(|x| known(crate::crc::crc32c(x))).collect();
            for n in 1..=crcs.len() {
                assert_eq!(c.all(&crcs[..n]), Some(crate::crc::crc32c(&d[..n * cs])), "cs {cs}, {n} pieces");
            }
            let mut holes = crcs.clone();
            holes[3] = UNKNOWN;
            assert_eq!(c.all(&holes), None);
            assert_eq!(c.all(&[]), None);
        }
    }
}
