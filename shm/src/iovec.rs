//! Descriptor chains turned into iovec lists that point into mapped guest memory.
//!
//! A virtio request is a chain of descriptors `(guest address, length, direction)`. The
//! device sees the device-readable descriptors as one byte stream and the device-writable
//! ones as another ([`DescStream`]). Ranges of a stream are mapped to host iovecs with an
//! [`IoVecBuilder`], which checks every byte of every descriptor against the guest memory
//! regions (a descriptor may span adjacent regions; it may not leave guest memory, wrap
//! around the address space, or exceed the list's fixed capacity). The iovecs live in an
//! [`IoVecBuf`] allocated once per queue worker, so the hot path does not allocate.
//!
//! The resulting [`GuestIoVecs`] borrows the guest memory object, so the mapping cannot be
//! torn down (memory hot-unplug, a new memory table) while the iovecs are in use.

use std::io::{IoSlice, IoSliceMut};
use std::marker::PhantomData;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

/// Errors of the chain to iovec conversion. Every one of them is the guest's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShmError {
    /// `addr + len` wraps around the 64-bit guest address space.
    #[error("guest range {addr:#x}+{len:#x} overflows the address space")]
    Overflow {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
    /// Part of the range is not backed by any guest memory region.
    #[error("guest range {addr:#x}+{len:#x} is not inside guest memory")]
    OutOfRange {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
    /// A guest memory region has no host mapping (cannot happen with mmapped regions).
    #[error("guest memory at {0:#x} has no host mapping")]
    NoHostMapping(u64),
    /// More iovecs than the list's fixed capacity.
    #[error("request needs more than {0} iovecs")]
    TooManySegments(usize),
    /// A range of a descriptor stream lies beyond the end of the stream.
    #[error("range {offset}+{len} is beyond the end of a {stream_len}-byte descriptor stream")]
    BeyondStream {
        /// Offset in the stream.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Total length of the stream.
        stream_len: u64,
    },
    /// Two device-writable iovecs overlap (the target would get aliasing buffers).
    #[error("device-writable buffers overlap")]
    Overlap,
}

/// One descriptor of a chain, as the device sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// True when the device may write the buffer (VIRTQ_DESC_F_WRITE).
    pub write_only: bool,
}

/// A reusable, fixed-capacity iovec list (one per queue worker).
pub struct IoVecBuf {
    iovs: Vec<libc::iovec>,
    scratch: Vec<(usize, usize)>,
    cap: usize,
}

// SAFETY: the raw pointers in `iovs` are only dereferenced through a `GuestIoVecs`, which
// borrows the guest memory they point into; between requests they are dead values.
unsafe impl Send for IoVecBuf {}

impl IoVecBuf {
    /// A list that holds at most `cap` iovecs; allocates once, here.
    pub fn with_capacity(cap: usize) -> Self {
        IoVecBuf { iovs: Vec::with_capacity(cap), scratch: Vec::with_capacity(cap), cap }
    }

    /// Maximum number of iovecs.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Start a new list over `mem` (the previous content is discarded).
    pub fn builder<'a, M: GuestMemoryBackend>(&'a mut self, mem: &'a M) -> IoVecBuilder<'a, M> {
        self.iovs.clear();
        IoVecBuilder { buf: self, mem, bytes: 0, last_region: None }
    }
}

impl std::fmt::Debug for IoVecBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoVecBuf").field("len", &self.iovs.len()).field("cap", &self.cap).finish()
    }
}

/// Appends bounds-checked guest ranges to an [`IoVecBuf`].
pub struct IoVecBuilder<'a, M> {
    buf: &'a mut IoVecBuf,
    mem: &'a M,
    bytes: u64,
    /// Guest start address of the region the last iovec lies in: adjacent pieces are
    /// merged only within one region, never across two mappings that merely happen to be
    /// adjacent in the host address space.
    last_region: Option<u64>,
}

impl<'a, M: GuestMemoryBackend> IoVecBuilder<'a, M> {
    /// Append the guest range `addr..addr+len`, split at region boundaries. Zero-length
    /// ranges add nothing. On error the list may hold part of the range.
    pub fn push(&mut self, addr: u64, len: u64) -> Result<(), ShmError> {
        if len == 0 {
            return Ok(());
        }
        addr.checked_add(len).ok_or(ShmError::Overflow { addr, len })?;
        let out_of_range = ShmError::OutOfRange { addr, len };
        let mut cur = addr;
        let mut remaining = len;
        while remaining > 0 {
            let region = self.mem.find_region(GuestAddress(cur)).ok_or_else(|| out_of_range.clone())?;
            let offset = cur.checked_sub(region.start_addr().raw_value()).ok_or_else(|| out_of_range.clone())?;
            let avail = region.len().checked_sub(offset).filter(|a| *a > 0).ok_or_else(|| out_of_range.clone())?;
            let chunk = remaining.min(avail);
            let chunk_usize = usize::try_from(chunk).map_err(|_| out_of_range.clone())?;
            let host =
                region.get_host_address(MemoryRegionAddress(offset)).map_err(|_| ShmError::NoHostMapping(cur))?;
            self.append(region.start_addr().raw_value(), host, chunk_usize)?;
            // `chunk <= remaining` and `cur + remaining` does not overflow (checked above).
            cur += chunk;
            remaining -= chunk;
        }
        self.bytes += len;
        Ok(())
    }

    fn append(&mut self, region: u64, host: *mut u8, len: usize) -> Result<(), ShmError> {
        if let Some(last) = self.buf.iovs.last_mut() {
            if self.last_region == Some(region)
                && (last.iov_base as usize).checked_add(last.iov_len) == Some(host as usize)
            {
                last.iov_len += len;
                return Ok(());
            }
        }
        if self.buf.iovs.len() >= self.buf.cap {
            return Err(ShmError::TooManySegments(self.buf.cap));
        }
        self.last_region = Some(region);
        self.buf.iovs.push(libc::iovec { iov_base: host.cast(), iov_len: len });
        Ok(())
    }

    /// Number of iovecs so far.
    pub fn len(&self) -> usize {
        self.buf.iovs.len()
    }

    /// True when no bytes were added.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Number of bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The finished list.
    pub fn finish(self) -> GuestIoVecs<'a> {
        let IoVecBuf { iovs, scratch, .. } = self.buf;
        GuestIoVecs { iovs: iovs.as_mut_slice(), scratch, bytes: self.bytes, _mem: PhantomData }
    }
}

/// An iovec list pointing into guest memory, valid while the guest memory borrow lives.
pub struct GuestIoVecs<'a> {
    iovs: &'a mut [libc::iovec],
    scratch: &'a mut Vec<(usize, usize)>,
    bytes: u64,
    _mem: PhantomData<&'a ()>,
}

impl<'a> GuestIoVecs<'a> {
    /// The raw iovecs (for `preadv`/`pwritev`/io_uring).
    pub fn iovecs(&self) -> &[libc::iovec] {
        self.iovs
    }

    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of iovecs.
    pub fn len(&self) -> usize {
        self.iovs.len()
    }

    /// True when the list is empty.
    pub fn is_empty(&self) -> bool {
        self.iovs.is_empty()
    }

    /// The buffers as `IoSlice`s, for a write to a file (guest memory is only read).
    pub fn as_io_slices(&self) -> &[IoSlice<'_>] {
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix (documented guarantee);
        // every iovec points into mapped guest memory, bounds-checked by the builder, that
        // stays mapped while `'a` (the guest memory borrow) lives.
        unsafe { std::slice::from_raw_parts(self.iovs.as_ptr().cast(), self.iovs.len()) }
    }

    /// The buffers as `IoSliceMut`s, for a read from a file into guest memory. Fails when
    /// two buffers overlap, which would hand aliasing mutable slices to the reader.
    ///
    /// The guest may still touch its own buffers while the device fills them; that is a
    /// guest bug and only affects the guest's data, never host memory.
    pub fn as_io_slices_mut(&mut self) -> Result<&mut [IoSliceMut<'_>], ShmError> {
        if self.has_overlap() {
            return Err(ShmError::Overlap);
        }
        // SAFETY: as for `as_io_slices`, plus: the buffers are pairwise disjoint (checked
        // just above) and `&mut self` prevents a second view at the same time.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.iovs.as_mut_ptr().cast(), self.iovs.len()) })
    }

    /// True when two iovecs share a byte (O(n log n), no allocation).
    pub fn has_overlap(&mut self) -> bool {
        if self.iovs.len() < 2 {
            return false;
        }
        self.scratch.clear();
        self.scratch.extend(self.iovs.iter().map(|v| (v.iov_base as usize, v.iov_len)));
        self.scratch.sort_unstable();
        self.scratch.windows(2).any(|w| w[0].0.saturating_add(w[0].1) > w[1].0)
    }
}

/// A run of descriptors seen as one contiguous byte stream.
#[derive(Debug, Clone, Copy)]
pub struct DescStream<'d> {
    descs: &'d [Desc],
    len: u64,
}

impl<'d> DescStream<'d> {
    /// The stream of `descs`, in order.
    pub fn new(descs: &'d [Desc]) -> Self {
        let len = descs.iter().map(|d| u64::from(d.len)).sum();
        DescStream { descs, len }
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the stream holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Visit the guest ranges that make up `offset..offset+len` of the stream.
    fn for_each_range(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, u64) -> Result<(), ShmError>,
    ) -> Result<(), ShmError> {
        let beyond = ShmError::BeyondStream { offset, len, stream_len: self.len };
        let end = offset.checked_add(len).ok_or_else(|| beyond.clone())?;
        if end > self.len {
            return Err(beyond);
        }
        let mut pos = 0u64; // stream offset of the current descriptor
        let mut done = 0u64; // bytes of the range visited
        for d in self.descs {
            if done == len {
                break;
            }
            let dlen = u64::from(d.len);
            let dend = pos + dlen;
            let start = offset + done;
            if start < dend {
                let in_desc = start - pos;
                let take = (dlen - in_desc).min(len - done);
                let gaddr = d.addr.checked_add(in_desc).ok_or(ShmError::Overflow { addr: d.addr, len: dlen })?;
                f(gaddr, take, done)?;
                done += take;
            }
            pos = dend;
        }
        Ok(())
    }

    /// Copy `buf.len()` bytes at `offset` of the stream out of guest memory.
    pub fn read_at<M: GuestMemoryBackend>(&self, mem: &M, offset: u64, buf: &mut [u8]) -> Result<(), ShmError> {
        self.for_each_range(offset, buf.len() as u64, |addr, take, done| {
            let (lo, hi) = (done as usize, (done + take) as usize);
            mem.read_slice(&mut buf[lo..hi], GuestAddress(addr)).map_err(|_| ShmError::OutOfRange { addr, len: take })
        })
    }

    /// Copy `buf` into guest memory at `offset` of the stream.
    pub fn write_at<M: GuestMemoryBackend>(&self, mem: &M, offset: u64, buf: &[u8]) -> Result<(), ShmError> {
        self.for_each_range(offset, buf.len() as u64, |addr, take, done| {
            let (lo, hi) = (done as usize, (done + take) as usize);
            mem.write_slice(&buf[lo..hi], GuestAddress(addr)).map_err(|_| ShmError::OutOfRange { addr, len: take })
        })
    }

    /// Append the guest memory behind `offset..offset+len` of the stream to `builder`.
    pub fn map_range<M: GuestMemoryBackend>(
        &self,
        offset: u64,
        len: u64,
        builder: &mut IoVecBuilder<'_, M>,
    ) -> Result<(), ShmError> {
        self.for_each_range(offset, len, |addr, take, _| builder.push(addr, take))
    }

    /// Guest address of the byte at `offset` of the stream, if it is in guest memory.
    pub fn addr_of<M: GuestMemoryBackend>(&self, mem: &M, offset: u64) -> Option<GuestAddress> {
        let mut found = None;
        self.for_each_range(offset, 1, |addr, _, _| {
            found = Some(addr);
            Ok(())
        })
        .ok()?;
        let addr = GuestAddress(found?);
        mem.find_region(addr).map(|_| addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem(ranges: &[(u64, usize)]) -> GuestMemoryMmap<()> {
        let r: Vec<_> = ranges.iter().map(|(a, l)| (GuestAddress(*a), *l)).collect();
        GuestMemoryMmap::from_ranges(&r).expect("test memory")
    }

    fn host(m: &GuestMemoryMmap<()>, addr: u64) -> usize {
        m.get_host_address(GuestAddress(addr)).expect("mapped") as usize
    }

    #[test]
    fn single_region_descriptor() {
        let m = mem(&[(0x1000, 0x4000)]);
        let mut buf = IoVecBuf::with_capacity(4);
        let mut b = buf.builder(&m);
        b.push(0x1800, 0x200).unwrap();
        let v = b.finish();
        assert_eq!(v.len(), 1);
        assert_eq!(v.bytes(), 0x200);
        assert_eq!(v.iovecs()[0].iov_base as usize, host(&m, 0x1800));
        assert_eq!(v.iovecs()[0].iov_len, 0x200);
    }

    #[test]
    fn exact_region_end_is_allowed_one_past_is_not() {
        let m = mem(&[(0x1000, 0x1000)]);
        let mut buf = IoVecBuf::with_capacity(4);
        let mut b = buf.builder(&m);
        b.push(0x1000, 0x1000).unwrap();
        assert_eq!(b.push(0x1001, 0x1000), Err(ShmError::OutOfRange { addr: 0x1001, len: 0x1000 }));
        assert!(b.push(0x2000, 1).is_err());
        assert!(b.push(0xfff, 1).is_err());
    }

    #[test]
    fn descriptor_crossing_adjacent_regions_splits() {
        // Two separately mapped, guest-adjacent regions: host addresses are unrelated.
        let m = mem(&[(0x0, 0x1000), (0x1000, 0x1000)]);
        let mut buf = IoVecBuf::with_capacity(4);
        let mut b = buf.builder(&m);
        b.push(0x800, 0x1000).unwrap();
        let v = b.finish();
        let total: usize = v.iovecs().iter().map(|i| i.iov_len).sum();
        assert_eq!(total, 0x1000);
        assert_eq!(v.iovecs()[0].iov_base as usize, host(&m, 0x800));
        assert_eq!(v.iovecs()[0].iov_len, 0x800);
        if v.len() == 2 {
            assert_eq!(v.iovecs()[1].iov_base as usize, host(&m, 0x1000));
        }
    }

    #[test]
    fn descriptor_crossing_a_hole_fails() {
        let m = mem(&[(0x0, 0x1000), (0x2000, 0x1000)]);
        let mut buf = IoVecBuf::with_capacity(4);
        let mut b = buf.builder(&m);
        assert!(matches!(b.push(0x800, 0x1000), Err(ShmError::OutOfRange { .. })));
        assert!(b.push(0x1800, 0x100).is_err());
    }

    #[test]
    fn address_overflow_fails() {
        let m = mem(&[(0x0, 0x1000)]);
        let mut buf = IoVecBuf::with_capacity(4);
        let mut b = buf.builder(&m);
        assert!(matches!(b.push(u64::MAX - 10, 100), Err(ShmError::Overflow { .. })));
        assert!(matches!(b.push(0x10, u64::MAX), Err(ShmError::Overflow { .. })));
        assert!(b.push(u64::MAX, 1).is_err());
    }

    #[test]
    fn out_of_range_and_huge_lengths_fail() {
        let m = mem(&[(0x10000, 0x1000)]);
        let mut buf = IoVecBuf::with_capacity(4);
        let mut b = buf.builder(&m);
        assert!(b.push(0x0, 0x10).is_err());
        assert!(b.push(0x10000, u32::MAX as u64).is_err());
        assert!(b.push(0x20000, 1).is_err());
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn capacity_is_enforced_and_contiguous_ranges_merge() {
        let m = mem(&[(0x0, 0x10000)]);
        let mut buf = IoVecBuf::with_capacity(2);
        let mut b = buf.builder(&m);
        b.push(0x0, 0x100).unwrap();
        b.push(0x100, 0x100).unwrap(); // merges with the previous one
        assert_eq!(b.len(), 1);
        b.push(0x1000, 0x100).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b.push(0x3000, 0x100), Err(ShmError::TooManySegments(2)));
        // The buffer is reusable and starts empty.
        let b = buf.builder(&m);
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn zero_length_adds_nothing() {
        let m = mem(&[(0x0, 0x1000)]);
        let mut buf = IoVecBuf::with_capacity(1);
        let mut b = buf.builder(&m);
        b.push(0xdead_0000, 0).unwrap();
        assert!(b.is_empty());
        assert!(b.finish().is_empty());
    }

    #[test]
    fn overlap_detection() {
        let m = mem(&[(0x0, 0x10000)]);
        let mut buf = IoVecBuf::with_capacity(8);
        let mut b = buf.builder(&m);
        b.push(0x2000, 0x100).unwrap();
        b.push(0x0, 0x100).unwrap();
        b.push(0x1000, 0x100).unwrap();
        let mut v = b.finish();
        assert!(!v.has_overlap());
        assert_eq!(v.as_io_slices_mut().map(|s| s.len()), Ok(3));

        let mut b = buf.builder(&m);
        b.push(0x2000, 0x100).unwrap();
        b.push(0x20ff, 0x10).unwrap(); // overlaps the last byte of the first
        let mut v = b.finish();
        assert!(v.has_overlap());
        assert!(matches!(v.as_io_slices_mut(), Err(ShmError::Overlap)));
    }

    #[test]
    fn io_slices_reach_guest_memory() {
        let m = mem(&[(0x0, 0x1000), (0x1000, 0x1000)]);
        m.write_slice(&[7u8; 16], GuestAddress(0xff8)).unwrap();
        let mut buf = IoVecBuf::with_capacity(4);
        let mut b = buf.builder(&m);
        b.push(0xff8, 16).unwrap();
        let mut v = b.finish();
        let read: Vec<u8> = v.as_io_slices().iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(read, vec![7u8; 16]);
        for s in v.as_io_slices_mut().unwrap() {
            s.fill(9);
        }
        let mut back = [0u8; 16];
        m.read_slice(&mut back, GuestAddress(0xff8)).unwrap();
        assert_eq!(back, [9u8; 16]);
    }

    #[test]
    fn stream_ranges_span_descriptors() {
        let m = mem(&[(0x0, 0x10000)]);
        for (i, b) in (0u8..64).enumerate() {
            m.write_slice(&[b], GuestAddress(0x1000 + i as u64)).unwrap();
        }
        // Stream: 10 bytes at 0x1000, 20 at 0x100a, 34 at 0x101e (contiguous content).
        let descs = [
            Desc { addr: 0x1000, len: 10, write_only: false },
            Desc { addr: 0x100a, len: 20, write_only: false },
            Desc { addr: 0x101e, len: 34, write_only: false },
        ];
        let s = DescStream::new(&descs);
        assert_eq!(s.len(), 64);
        let mut hdr = [0u8; 16];
        s.read_at(&m, 5, &mut hdr).unwrap();
        assert_eq!(hdr.to_vec(), (5u8..21).collect::<Vec<_>>());
        assert!(matches!(s.read_at(&m, 60, &mut hdr), Err(ShmError::BeyondStream { .. })));
        let mut buf = IoVecBuf::with_capacity(8);
        let mut b = buf.builder(&m);
        s.map_range(16, 48, &mut b).unwrap();
        assert_eq!(b.bytes(), 48);
        assert_eq!(s.addr_of(&m, 63), Some(GuestAddress(0x103f)));
        assert_eq!(s.addr_of(&m, 64), None);
        s.write_at(&m, 8, &[0xaa; 4]).unwrap();
        let mut back = [0u8; 4];
        m.read_slice(&mut back, GuestAddress(0x1008)).unwrap();
        assert_eq!(back, [0xaa; 4]);
    }

    #[test]
    fn stream_descriptor_outside_memory() {
        let m = mem(&[(0x0, 0x1000)]);
        let descs = [
            Desc { addr: 0x0, len: 16, write_only: false },
            Desc { addr: 0x8000_0000, len: 512, write_only: false },
            Desc { addr: u64::MAX - 3, len: 16, write_only: true },
        ];
        let s = DescStream::new(&descs);
        let mut hdr = [0u8; 16];
        s.read_at(&m, 0, &mut hdr).unwrap();
        let mut buf = IoVecBuf::with_capacity(8);
        let mut b = buf.builder(&m);
        assert!(matches!(s.map_range(16, 512, &mut b), Err(ShmError::OutOfRange { .. })));
        assert!(s.map_range(16, 520, &mut b).is_err());
        assert_eq!(s.addr_of(&m, 100), None);
        assert_eq!(s.addr_of(&m, 16 + 512 + 15), None);
    }
}
