//! virtio-blk request parsing and execution, as pure functions over guest memory.
//!
//! [`parse_request`] turns the descriptors of one chain into either an operation with its
//! iovecs already mapped into guest memory ([`Parsed::Run`]), an error status to report
//! ([`Parsed::Fail`]), or — when there is no writable status byte at all — nothing
//! ([`Parsed::Drop`]). It never panics and touches guest memory only through bounds-checked
//! accessors; it needs no socket or queue, so it is unit-tested and fuzzed directly.
//! [`execute`] runs a parsed operation against a [`BlockTarget`].
//!
//! Layout (virtio 1.x, any layout allowed): the device-readable descriptors form one byte
//! stream that starts with the 16-byte header (`type`, `ioprio`, `sector`) followed by OUT
//! data or discard/write-zeroes segments; the device-writable descriptors, which must all
//! come after the readable ones, form a second stream: IN / GET_ID data, then the status
//! byte as its very last byte.

use vm_memory::{GuestAddress, GuestMemoryBackend};

use logdisk_shm::{Desc, DescStream, GuestIoVecs, IoVecBuf, ShmError};
use virtio_bindings::bindings::virtio_blk::*;

use super::config::{DeviceLimits, ID_BYTES, MAX_RANGE_SECTORS, MAX_RANGE_SEGS, SECTOR_SIZE};
use super::target::BlockTarget;

/// Request completed successfully.
pub const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
/// Request failed.
pub const STATUS_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
/// Request type or flag not supported.
pub const STATUS_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

const HEADER_LEN: u64 = 16;
const RANGE_SEG_LEN: u64 = 16;

/// The descriptors of one chain, collected into a buffer reused across requests.
#[derive(Debug)]
pub struct ChainDescs {
    descs: Vec<Desc>,
    cap: usize,
    total: usize,
    last: Option<Desc>,
}

impl ChainDescs {
    /// Room for `cap` descriptors; a longer chain is remembered as truncated.
    pub fn with_capacity(cap: usize) -> Self {
        ChainDescs { descs: Vec::with_capacity(cap), cap, total: 0, last: None }
    }

    /// Forget the previous chain.
    pub fn clear(&mut self) {
        self.descs.clear();
        self.total = 0;
        self.last = None;
    }

    /// Add the next descriptor of the chain.
    pub fn push(&mut self, d: Desc) {
        if self.descs.len() < self.cap {
            self.descs.push(d);
        }
        self.total = self.total.saturating_add(1);
        self.last = Some(d);
    }

    /// The descriptors kept (all of them unless truncated).
    pub fn descs(&self) -> &[Desc] {
        &self.descs
    }

    /// True when the chain had more descriptors than the capacity.
    pub fn truncated(&self) -> bool {
        self.total > self.descs.len()
    }

    /// The chain's last descriptor, even when truncated.
    pub fn last(&self) -> Option<Desc> {
        self.last
    }
}

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The chain has no descriptor.
    #[error("empty descriptor chain")]
    EmptyChain,
    /// The last descriptor is device-readable, so there is no status byte.
    #[error("last descriptor is not device-writable (no status byte)")]
    StatusNotWritable,
    /// The last descriptor is empty.
    #[error("status descriptor has length 0")]
    StatusEmpty,
    /// The status byte is not in guest memory.
    #[error("status byte is outside guest memory")]
    StatusOutsideMemory,
    /// More descriptors than seg_max allows.
    #[error("chain has {0} descriptors, more than allowed")]
    TooManyDescriptors(usize),
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// Fewer than 16 header bytes.
    #[error("request header too short ({0} bytes)")]
    HeaderTooShort(u64),
    /// Data in the wrong direction for the request type.
    #[error("{0} request carries data in the wrong direction")]
    WrongDirection(&'static str),
    /// Data length not a multiple of 512.
    #[error("data length {0} is not a multiple of 512")]
    BadLength(u64),
    /// More data than seg_max * size_max.
    #[error("data length {0} exceeds the device limit")]
    TooLarge(u64),
    /// Sector range beyond the capacity.
    #[error("sectors {sector}+{count} beyond capacity {capacity}")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Sector count.
        count: u64,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// A write-type request on a read-only device.
    #[error("write to a read-only device")]
    ReadOnly,
    /// Bad discard / write-zeroes segment list.
    #[error("bad discard/write-zeroes segment list: {0}")]
    Segments(&'static str),
    /// Unknown request type.
    #[error("unsupported request type {0}")]
    UnsupportedType(u32),
    /// Unknown or disallowed segment flags.
    #[error("unsupported flags {0:#x}")]
    UnsupportedFlags(u32),
    /// A buffer is not (entirely) in guest memory, or similar.
    #[error("guest buffer: {0}")]
    Memory(#[from] ShmError),
}

/// One discard or write-zeroes range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeSeg {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP or 0.
    pub flags: u32,
}

impl RangeSeg {
    /// Byte offset and length.
    pub fn byte_range(&self) -> (u64, u64) {
        (self.sector * SECTOR_SIZE, u64::from(self.num_sectors) * SECTOR_SIZE)
    }

    /// True when the guest allows deallocation (write-zeroes UNMAP flag).
    pub fn unmap(&self) -> bool {
        self.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
    }
}

/// Up to [`MAX_RANGE_SEGS`] segments, on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeSegs {
    segs: [RangeSeg; MAX_RANGE_SEGS],
    n: usize,
}

impl RangeSegs {
    /// The segments.
    pub fn as_slice(&self) -> &[RangeSeg] {
        &self.segs[..self.n]
    }
}

/// A validated operation, its guest buffers mapped.
#[allow(clippy::large_enum_variant)] // see `Parsed`
pub enum Op<'a> {
    /// Read from the target into guest memory.
    Read {
        /// Byte offset on the target.
        offset: u64,
        /// Guest buffers to fill.
        bufs: GuestIoVecs<'a>,
    },
    /// Write guest memory to the target.
    Write {
        /// Byte offset on the target.
        offset: u64,
        /// Guest buffers to write.
        bufs: GuestIoVecs<'a>,
    },
    /// Make completed writes durable.
    Flush,
    /// Write the serial into guest memory.
    GetId {
        /// Guest buffer (at most 20 bytes).
        bufs: GuestIoVecs<'a>,
    },
    /// Unmap ranges.
    Discard(RangeSegs),
    /// Zero ranges.
    WriteZeroes(RangeSegs),
}

impl Op<'_> {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Flush => "flush",
            Op::GetId { .. } => "get-id",
            Op::Discard(_) => "discard",
            Op::WriteZeroes(_) => "write-zeroes",
        }
    }
}

/// The result of parsing one chain.
// Discard segments are kept inline (about 0.5 KiB on the stack) so that parsing does not
// allocate; boxing them would put an allocation on every discard.
#[allow(clippy::large_enum_variant)]
pub enum Parsed<'a> {
    /// No usable status byte: complete the chain with used length 0 and log.
    Drop(Malformed),
    /// Report `status` (with used length 1) without touching the target.
    Fail {
        /// Where the status byte goes.
        status_addr: GuestAddress,
        /// VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP.
        status: u8,
        /// Why.
        reason: Malformed,
    },
    /// Execute `op`, then write its status at `status_addr`.
    Run {
        /// Where the status byte goes.
        status_addr: GuestAddress,
        /// The operation.
        op: Op<'a>,
    },
}

/// Parse one descriptor chain. `iov` receives the data iovecs (reused across requests).
pub fn parse_request<'a, M: GuestMemoryBackend>(
    chain: &ChainDescs,
    mem: &'a M,
    limits: &DeviceLimits,
    iov: &'a mut IoVecBuf,
) -> Parsed<'a> {
    let status_addr = match status_address(chain, mem) {
        Ok(a) => a,
        Err(m) => return Parsed::Drop(m),
    };
    let fail = |status: u8, reason: Malformed| Parsed::Fail { status_addr, status, reason };
    match parse_op(chain, mem, limits, iov) {
        Ok(op) => Parsed::Run { status_addr, op },
        Err(m @ (Malformed::UnsupportedType(_) | Malformed::UnsupportedFlags(_))) => fail(STATUS_UNSUPP, m),
        Err(m) => fail(STATUS_IOERR, m),
    }
}

/// The status byte: the last byte of the last descriptor, which must be device-writable.
fn status_address<M: GuestMemoryBackend>(chain: &ChainDescs, mem: &M) -> Result<GuestAddress, Malformed> {
    let last = chain.last().ok_or(Malformed::EmptyChain)?;
    if !last.write_only {
        return Err(Malformed::StatusNotWritable);
    }
    if last.len == 0 {
        return Err(Malformed::StatusEmpty);
    }
    let addr =
        last.addr.checked_add(u64::from(last.len) - 1).map(GuestAddress).ok_or(Malformed::StatusOutsideMemory)?;
    mem.find_region(addr).map(|_| addr).ok_or(Malformed::StatusOutsideMemory)
}

fn parse_op<'a, M: GuestMemoryBackend>(
    chain: &ChainDescs,
    mem: &'a M,
    limits: &DeviceLimits,
    iov: &'a mut IoVecBuf,
) -> Result<Op<'a>, Malformed> {
    if chain.truncated() || chain.descs().len() > limits.max_descriptors() {
        return Err(Malformed::TooManyDescriptors(chain.total));
    }
    let descs = chain.descs();
    let first_w = descs.iter().position(|d| d.write_only).unwrap_or(descs.len());
    if descs[first_w..].iter().any(|d| !d.write_only) {
        return Err(Malformed::ReadableAfterWritable);
    }
    let readable = DescStream::new(&descs[..first_w]);
    let writable = DescStream::new(&descs[first_w..]);
    if readable.len() < HEADER_LEN {
        return Err(Malformed::HeaderTooShort(readable.len()));
    }
    let mut hdr = [0u8; HEADER_LEN as usize];
    readable.read_at(mem, 0, &mut hdr)?;
    let req_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15]]);
    // Bytes the device may read after the header / write before the status byte.
    let out_len = readable.len() - HEADER_LEN;
    // The status descriptor exists and is writable, so the writable stream is non-empty.
    let in_len = writable.len().saturating_sub(1);

    match req_type {
        VIRTIO_BLK_T_IN => {
            if out_len != 0 {
                return Err(Malformed::WrongDirection("read"));
            }
            let offset = check_data(sector, in_len, limits)?;
            let mut b = iov.builder(mem);
            writable.map_range(0, in_len, &mut b)?;
            let mut bufs = b.finish();
            if bufs.has_overlap() {
                return Err(ShmError::Overlap.into());
            }
            Ok(Op::Read { offset, bufs })
        }
        VIRTIO_BLK_T_OUT => {
            if in_len != 0 {
                return Err(Malformed::WrongDirection("write"));
            }
            if limits.read_only {
                return Err(Malformed::ReadOnly);
            }
            let offset = check_data(sector, out_len, limits)?;
            let mut b = iov.builder(mem);
            readable.map_range(HEADER_LEN, out_len, &mut b)?;
            Ok(Op::Write { offset, bufs: b.finish() })
        }
        VIRTIO_BLK_T_FLUSH => Ok(Op::Flush),
        VIRTIO_BLK_T_GET_ID => {
            let n = in_len.min(ID_BYTES as u64);
            let mut b = iov.builder(mem);
            writable.map_range(0, n, &mut b)?;
            let mut bufs = b.finish();
            if bufs.has_overlap() {
                return Err(ShmError::Overlap.into());
            }
            Ok(Op::GetId { bufs })
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = req_type == VIRTIO_BLK_T_DISCARD;
            if in_len != 0 {
                return Err(Malformed::WrongDirection(if discard { "discard" } else { "write-zeroes" }));
            }
            if limits.read_only {
                return Err(Malformed::ReadOnly);
            }
            let segs = parse_segments(&readable, mem, limits, discard)?;
            Ok(if discard { Op::Discard(segs) } else { Op::WriteZeroes(segs) })
        }
        other => Err(Malformed::UnsupportedType(other)),
    }
}

/// Validate an IN/OUT transfer and return its byte offset.
fn check_data(sector: u64, len: u64, limits: &DeviceLimits) -> Result<u64, Malformed> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(Malformed::BadLength(len));
    }
    if len > limits.max_data_bytes {
        return Err(Malformed::TooLarge(len));
    }
    check_range(sector, len / SECTOR_SIZE, limits)?;
    Ok(sector * SECTOR_SIZE)
}

fn check_range(sector: u64, count: u64, limits: &DeviceLimits) -> Result<(), Malformed> {
    let out = Malformed::OutOfRange { sector, count, capacity: limits.capacity_sectors };
    match sector.checked_add(count) {
        Some(end) if end <= limits.capacity_sectors => Ok(()),
        _ => Err(out),
    }
}

fn parse_segments<M: GuestMemoryBackend>(
    readable: &DescStream<'_>,
    mem: &M,
    limits: &DeviceLimits,
    discard: bool,
) -> Result<RangeSegs, Malformed> {
    let len = readable.len() - HEADER_LEN;
    if len == 0 || !len.is_multiple_of(RANGE_SEG_LEN) {
        return Err(Malformed::Segments("length is not a positive multiple of 16"));
    }
    let n = len / RANGE_SEG_LEN;
    if n > MAX_RANGE_SEGS as u64 {
        return Err(Malformed::Segments("more segments than max_*_seg"));
    }
    let mut segs = RangeSegs { segs: [RangeSeg::default(); MAX_RANGE_SEGS], n: 0 };
    let max_sectors = MAX_RANGE_SECTORS.max(limits.discard_alignment_sectors());
    for i in 0..n {
        let mut raw = [0u8; RANGE_SEG_LEN as usize];
        readable.read_at(mem, HEADER_LEN + i * RANGE_SEG_LEN, &mut raw)?;
        let seg = RangeSeg {
            sector: u64::from_le_bytes([raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7]]),
            num_sectors: u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
            flags: u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]),
        };
        if seg.flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            return Err(Malformed::UnsupportedFlags(seg.flags));
        }
        if discard && seg.flags != 0 {
            // virtio: the unmap flag is only defined for write-zeroes.
            return Err(Malformed::UnsupportedFlags(seg.flags));
        }
        if seg.num_sectors > max_sectors {
            return Err(Malformed::Segments("segment larger than max_*_sectors"));
        }
        check_range(seg.sector, u64::from(seg.num_sectors), limits)?;
        segs.segs[segs.n] = seg;
        segs.n += 1;
    }
    Ok(segs)
}

/// What a successful execution produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes written into the guest's data buffers (not counting the status byte).
    pub written: u32,
}

/// A target error while executing an operation (reported to the guest as IOERR).
#[derive(Debug, thiserror::Error)]
#[error("{op} failed: {source}")]
pub struct ExecError {
    /// Operation name.
    pub op: &'static str,
    /// The target's error.
    #[source]
    pub source: std::io::Error,
}

/// Run `op` against `target`. `serial` is the GET_ID answer (zero padded to 20 bytes);
/// `writeback == false` (the guest turned the write cache off) makes every write,
/// discard and write-zeroes durable before it completes.
pub fn execute(
    op: Op<'_>,
    target: &dyn BlockTarget,
    serial: &[u8; ID_BYTES],
    writeback: bool,
) -> Result<Outcome, ExecError> {
    let name = op.name();
    let wrap = |source: std::io::Error| ExecError { op: name, source };
    let mut modified = false;
    let written = match op {
        Op::Read { offset, mut bufs } => {
            let bytes = bufs.bytes();
            let slices = bufs.as_io_slices_mut().map_err(|e| wrap(std::io::Error::other(e)))?;
            target.read_vectored(offset, slices).map_err(wrap)?;
            bytes
        }
        Op::Write { offset, bufs } => {
            target.write_vectored(offset, bufs.as_io_slices()).map_err(wrap)?;
            modified = true;
            0
        }
        Op::Flush => {
            target.flush().map_err(wrap)?;
            0
        }
        Op::GetId { mut bufs } => {
            let bytes = bufs.bytes();
            let slices = bufs.as_io_slices_mut().map_err(|e| wrap(std::io::Error::other(e)))?;
            let mut src: &[u8] = serial;
            for s in slices.iter_mut() {
                let n = s.len().min(src.len());
                s[..n].copy_from_slice(&src[..n]);
                src = &src[n..];
            }
            bytes
        }
        Op::Discard(segs) => {
            for s in segs.as_slice().iter().filter(|s| s.num_sectors > 0) {
                let (off, len) = s.byte_range();
                target.discard(off, len).map_err(wrap)?;
                modified = true;
            }
            0
        }
        Op::WriteZeroes(segs) => {
            for s in segs.as_slice().iter().filter(|s| s.num_sectors > 0) {
                let (off, len) = s.byte_range();
                target.write_zeroes(off, len, s.unmap()).map_err(wrap)?;
                modified = true;
            }
            0
        }
    };
    if modified && !writeback {
        target.flush().map_err(wrap)?;
    }
    Ok(Outcome { written: u32::try_from(written).unwrap_or(u32::MAX) })
}

/// The GET_ID answer for `serial`: its first 20 bytes, zero padded.
pub fn serial_bytes(serial: &str) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    let b = serial.as_bytes();
    let n = b.len().min(ID_BYTES);
    id[..n].copy_from_slice(&b[..n]);
    id
}
