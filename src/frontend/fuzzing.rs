//! The request-parser fuzz body, shared by the cargo-fuzz target (`fuzz/`) and the seeded
//! random test that CI runs (`tests/vhost_fuzz_parser.rs`).
//!
//! An input describes a guest memory image (three regions: two adjacent, one behind a
//! hole), a descriptor chain (addresses biased towards guest memory but sometimes wild),
//! the device's capacity and read-only flag. The body parses the chain, checks that every
//! iovec handed out lies inside a guest region and that accepted ranges fit the capacity,
//! then executes the request against an in-memory target, writing into "guest" memory
//! through the iovecs. Any panic is a bug.

use std::io::{self, IoSlice, IoSliceMut};

use parking_lot::Mutex;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use logdisk_shm::{Desc, IoVecBuf};

use super::config::{DeviceLimits, SECTOR_SIZE};
use super::request::{execute, parse_request, serial_bytes, ChainDescs, Op, Parsed};
use super::target::BlockTarget;

/// Guest memory layout used by the fuzz body: `(guest address, size)`.
pub const REGIONS: [(u64, usize); 3] = [(0x0, 0x10000), (0x10000, 0x8000), (0x40000, 0x1000)];
const ADDR_SPAN: u64 = 0x50000;

/// A byte reader that yields zeroes once the input is exhausted.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

/// An in-memory target that panics on out-of-range access (the parser must prevent it).
struct MemTarget {
    data: Mutex<Vec<u8>>,
    read_only: bool,
}

impl MemTarget {
    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let size = self.data.lock().len() as u64;
        let end = offset.checked_add(len).expect("offset + len overflows");
        assert!(end <= size, "request {offset}+{len} beyond capacity {size}");
        offset as usize..end as usize
    }
}

impl BlockTarget for MemTarget {
    fn size(&self) -> u64 {
        self.data.lock().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn serial(&self) -> String {
        "fuzz-serial".into()
    }
    fn read_vectored(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let r = self.range(offset, total as u64);
        let data = self.data.lock();
        let mut pos = r.start;
        for b in bufs.iter_mut() {
            let n = b.len();
            b.copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
        Ok(())
    }
    fn write_vectored(&self, offset: u64, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        assert!(!self.read_only, "write reached a read-only target");
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let r = self.range(offset, total as u64);
        let mut data = self.data.lock();
        let mut pos = r.start;
        for b in bufs {
            data[pos..pos + b.len()].copy_from_slice(b);
            pos += b.len();
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        assert!(!self.read_only, "write-zeroes reached a read-only target");
        let r = self.range(offset, len);
        self.data.lock()[r].fill(0);
        Ok(())
    }
}

/// True when `[ptr, ptr+len)` lies inside one mapped guest region.
fn inside_guest(mem: &GuestMemoryMmap<()>, ptr: usize, len: usize) -> bool {
    mem.iter().any(|r| {
        let base = r.as_ptr() as usize;
        ptr >= base && ptr.saturating_add(len) <= base + r.len() as usize
    })
}

/// What one input exercised (so tests can check the inputs reach every path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FuzzPath {
    /// The input could not set up guest memory.
    Setup,
    /// Dropped (no status byte).
    Drop,
    /// Refused with an error status.
    Fail,
    /// Executed the named operation.
    Run(&'static str),
}

/// Run one fuzz input. Panics on any violated invariant.
pub fn fuzz_request_parser(data: &[u8]) -> FuzzPath {
    let mut input = Input { data };
    let ranges: Vec<_> = REGIONS.iter().map(|(a, s)| (GuestAddress(*a), *s)).collect();
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&ranges) else {
        return FuzzPath::Setup;
    };

    // Device: capacity up to 64 KiB (in sectors), maybe read-only, small queue so that the
    // descriptor limit is reachable.
    let ctrl = input.u8();
    let capacity_sectors = u64::from(input.u8() % 129);
    let read_only = ctrl & 0x81 == 0x81;
    let queue_size = [4u16, 16, 64, 256][usize::from((ctrl >> 1) & 3)];
    let limits = DeviceLimits::new(capacity_sectors * SECTOR_SIZE, read_only, 4096, 1, queue_size);
    let target = MemTarget { data: Mutex::new(vec![0u8; (capacity_sectors * SECTOR_SIZE) as usize]), read_only };

    // The descriptor chain. "Shaped" inputs (ctrl bit 3) keep the virtio-blk frame —
    // readable header first, one-byte writable status last, sector-sized data between — so
    // that random inputs reach execution, not only the early refusals.
    let shaped = ctrl & 0x08 != 0;
    let n = usize::from(input.u8() % 24);
    let mut chain = ChainDescs::with_capacity(limits.max_descriptors());
    for i in 0..n {
        let mode = input.u8();
        let raw_addr = input.u64();
        let raw_len = input.u32();
        // Shaped inputs go wild (any address, any length) only rarely.
        let (wild_addr, wild_len) =
            if shaped { (mode & 0xe0 == 0xe0, mode & 0x70 == 0x70) } else { (mode & 0x80 != 0, mode & 0x40 != 0) };
        let addr = if wild_addr {
            raw_addr
        } else if mode & 0x0c == 0x0c {
            raw_addr % ADDR_SPAN // sometimes in the holes
        } else {
            raw_addr % (REGIONS[0].1 + REGIONS[1].1) as u64 // the two adjacent regions
        };
        let mut len = if wild_len { raw_len } else { raw_len % 0x3000 };
        let mut write_only = mode & 1 != 0;
        if shaped && !wild_len {
            if i == 0 {
                write_only = false;
                // Header, possibly followed by discard/write-zeroes segments.
                len = 16 + 16 * u32::from((mode >> 2) & 3);
            } else if i + 1 == n {
                write_only = true;
                len = 1;
            } else {
                len = (raw_len % 9) * 512;
                // Data descriptors share one direction (ctrl bit 6), with rare exceptions.
                write_only = (ctrl & 0x40 != 0) ^ (mode & 0x07 == 0x07);
            }
        }
        chain.push(Desc { addr, len, write_only });
    }

    // A well-formed header where the first descriptor points, so that the interesting
    // request types are reached often.
    let first = chain.descs().first().copied();
    if shaped || ctrl & 0x10 != 0 {
        if let Some(first) = first {
            let types = [0u32, 1, 4, 8, 11, 13, 2, 99];
            let t = types[usize::from(input.u8() % 8)];
            let sector = u64::from(input.u16()) % (capacity_sectors / 2 + 16);
            let _ = mem.write_obj(t, GuestAddress(first.addr));
            let _ = mem.write_obj(0u32, GuestAddress(first.addr.wrapping_add(4)));
            let _ = mem.write_obj(sector, GuestAddress(first.addr.wrapping_add(8)));
            // Plausible discard / write-zeroes segments right after the header.
            for k in 0..3u64 {
                let at = first.addr.wrapping_add(16 + 16 * k);
                let seg_sector = u64::from(input.u8()) % (capacity_sectors + 4);
                let num = u32::from(input.u8() % 16);
                let flags = u32::from(input.u8() % 3);
                let _ = mem.write_obj(seg_sector, GuestAddress(at));
                let _ = mem.write_obj(num, GuestAddress(at.wrapping_add(8)));
                let _ = mem.write_obj(flags, GuestAddress(at.wrapping_add(12)));
            }
        }
    }
    // The rest of the input fills guest memory (discard segments, data, ...) right after
    // the header, or at a chosen descriptor.
    let pick = usize::from(input.u8());
    let fill_at = if shaped {
        first.map_or(0, |d| d.addr.wrapping_add(64))
    } else {
        chain.descs().get(pick % n.max(1)).map_or(0, |d| d.addr.wrapping_add(16))
    };
    let rest = input.data;
    let _ = mem.write_slice(rest, GuestAddress(fill_at));

    let mut iov = IoVecBuf::with_capacity(limits.iovec_capacity());
    let serial = serial_bytes(&target.serial());
    match parse_request(&chain, &mem, &limits, &mut iov) {
        Parsed::Drop(_) => FuzzPath::Drop,
        Parsed::Fail { status_addr, .. } => {
            assert!(mem.find_region(status_addr).is_some(), "status outside memory");
            FuzzPath::Fail
        }
        Parsed::Run { status_addr, op } => {
            assert!(mem.find_region(status_addr).is_some(), "status outside memory");
            let cap = capacity_sectors * SECTOR_SIZE;
            match &op {
                Op::Read { offset, bufs } | Op::Write { offset, bufs } => {
                    assert!(!read_only || matches!(op, Op::Read { .. }));
                    assert_eq!(bufs.bytes() % SECTOR_SIZE, 0);
                    assert!(offset + bufs.bytes() <= cap, "accepted range beyond capacity");
                    for v in bufs.iovecs() {
                        assert!(inside_guest(&mem, v.iov_base as usize, v.iov_len), "iovec outside guest memory");
                    }
                }
                Op::GetId { bufs } => {
                    assert!(bufs.bytes() <= 20);
                    for v in bufs.iovecs() {
                        assert!(inside_guest(&mem, v.iov_base as usize, v.iov_len));
                    }
                }
                Op::Discard(segs) | Op::WriteZeroes(segs) => {
                    assert!(!read_only);
                    for s in segs.as_slice() {
                        let (off, len) = s.byte_range();
                        assert!(off + len <= cap, "accepted segment beyond capacity");
                    }
                }
                Op::Flush => {}
            }
            let name = op.name();
            let _ = execute(op, &target, &serial, ctrl & 0x20 == 0);
            let _ = mem.write_obj(0u8, status_addr);
            FuzzPath::Run(name)
        }
    }
}
