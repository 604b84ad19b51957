//! vhost-user-blk protocol tests without a VM.
//!
//! The test plays the hypervisor: it connects to the device's unix socket with the vhost
//! crate's `Frontend`, shares memfd-backed "guest" memory with SET_MEM_TABLE, lays out split
//! virtqueues in that memory with a small driver-side ring writer ([`Vq`]), kicks through
//! eventfds and reads completions back from the used rings. The device serves a real temp
//! file through a test-only `BlockTarget` (pread/pwrite).

mod common;

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::vhost::{Vm, Vq, MEM_SIZE, QSIZE};
use logdisk::frontend::target::BlockTarget;
use logdisk::frontend::{spawn_device, DeviceHandle, FrontendError, ServeOptions};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const DISK_SIZE: u64 = 16 << 20;
const SERIAL: &str = "logdisk-test-serial-0123"; // longer than 20: truncated by GET_ID
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;

// ---------------------------------------------------------------------------------------
// A BlockTarget over a real temp file.

struct FileTarget {
    file: File,
    size: u64,
    read_only: bool,
    flushes: AtomicU64,
}

impl FileTarget {
    fn new(dir: &Path, read_only: bool) -> Arc<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("disk.img"))
            .unwrap();
        file.set_len(DISK_SIZE).unwrap();
        Arc::new(FileTarget { file, size: DISK_SIZE, read_only, flushes: AtomicU64::new(0) })
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "out of range")),
        }
    }
}

impl BlockTarget for FileTarget {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn serial(&self) -> String {
        SERIAL.to_string()
    }
    fn read_vectored(&self, mut offset: u64, bufs: &mut [IoSliceMut<'_>]) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        self.check(offset, total as u64)?;
        for b in bufs.iter_mut() {
            self.file.read_exact_at(b, offset)?;
            offset += b.len() as u64;
        }
        Ok(())
    }
    fn write_vectored(&self, mut offset: u64, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        self.check(offset, total as u64)?;
        for b in bufs {
            self.file.write_all_at(b, offset)?;
            offset += b.len() as u64;
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.file.sync_data()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.check(offset, len)?;
        let zeros = vec![0u8; len as usize];
        self.file.write_all_at(&zeros, offset)
    }
}

// The test hypervisor (guest memory, split virtqueues, a vhost-user frontend) is in
// tests/common/vhost.rs.

// ---------------------------------------------------------------------------------------
// Fixtures.

struct Fixture {
    handle: Option<DeviceHandle>,
    target: Arc<FileTarget>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(read_only: bool, num_queues: u16) -> Fixture {
        Fixture::with_threads(read_only, num_queues, 0)
    }

    /// Served by `io_threads` worker threads (0: one per queue).
    fn with_threads(read_only: bool, num_queues: u16, io_threads: u16) -> Fixture {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("blk.sock");
        let target = FileTarget::new(dir.path(), read_only);
        let opts = ServeOptions { num_queues, io_threads, queue_size: QSIZE, ..ServeOptions::default() };
        let handle = spawn_device(&socket, target.clone(), &opts).unwrap();
        Fixture { handle: Some(handle), target, socket, _dir: dir }
    }

    fn handle(&self) -> &DeviceHandle {
        self.handle.as_ref().unwrap()
    }

    fn shutdown(&mut self) {
        let h = self.handle.take().unwrap();
        let t = Instant::now();
        h.shutdown().unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "shutdown took too long");
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn le32(c: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(c[off..off + 4].try_into().unwrap())
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

// ---------------------------------------------------------------------------------------
// Tests.

#[test]
fn features_protocol_features_and_config_space() {
    let fx = Fixture::new(false, 2);
    let mut vm = Vm::connect(&fx.socket, 2, true);
    let f = vm.features;
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & (1u64 << bit), 0, "feature bit {bit} missing");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0, "RO offered for a writable target");
    assert_ne!(f & PROTOCOL_FEATURES_BIT, 0);
    let proto = vm.fe.get_protocol_features().unwrap();
    assert!(proto.contains(
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    ));
    assert_eq!(vm.fe.get_queue_num().unwrap(), 2);

    let c = vm.config();
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), DISK_SIZE / 512, "capacity");
    assert!(le32(&c, 8) >= 4096, "size_max");
    assert_eq!(le32(&c, 12), u32::from(QSIZE) - 2, "seg_max");
    assert_eq!(le32(&c, 20), 4096, "blk_size");
    assert_ne!(u16::from_le_bytes([c[26], c[27]]), 0, "min_io_size");
    assert_ne!(le32(&c, 28), 0, "opt_io_size");
    assert_eq!(c[32], 1, "wce (writeback)");
    assert_eq!(u16::from_le_bytes([c[34], c[35]]), 2, "num_queues");
    assert_ne!(le32(&c, 36), 0, "max_discard_sectors");
    assert_ne!(le32(&c, 40), 0, "max_discard_seg");
    assert_eq!(le32(&c, 44), 8, "discard_sector_alignment");
    assert_ne!(le32(&c, 48), 0, "max_write_zeroes_sectors");
    assert_ne!(le32(&c, 52), 0, "max_write_zeroes_seg");
    assert_eq!(c[56], 1, "write_zeroes_may_unmap");

    // A partial read at an offset. (Reads beyond the config space get the protocol's
    // zero-size error reply, which the vhost crate's test `Frontend` cannot parse — it
    // waits for the payload — so that path is unit-tested in `frontend::device`.)
    let (_, part) = vm.fe.get_config(34, 2, VhostUserConfigFlags::empty(), &[0u8; 2]).unwrap();
    assert_eq!(part, vec![2, 0]);

    // The guest may switch the cache to write-through, and nothing else.
    vm.fe.set_config(32, VhostUserConfigFlags::WRITABLE, &[0]).unwrap();
    assert_eq!(vm.config()[32], 0);
    assert!(vm.fe.set_config(0, VhostUserConfigFlags::WRITABLE, &[0; 8]).is_err());
}

#[test]
fn write_read_flush_get_id() {
    let fx = Fixture::new(false, 1);
    let mut vm = Vm::connect(&fx.socket, 1, true);

    // A write made of two data descriptors, read back as one.
    let data = pattern(7, 8192);
    let (a, b) = (vm.alloc(4096), vm.alloc(4096));
    vm.mem.write_slice(&data[..4096], GuestAddress(a)).unwrap();
    vm.mem.write_slice(&data[4096..], GuestAddress(b)).unwrap();
    let r = vm.submit(0, VIRTIO_BLK_T_OUT, 16, &[(a, 4096, false), (b, 4096, false)]);
    assert_eq!(vm.complete(&r), (OK, 1), "write: status OK, used len = status byte");
    let (st, used, back) = vm.read(0, 16, 8192);
    assert_eq!(st, OK);
    assert_eq!(used, 8192 + 1, "read used len = data + status");
    assert_eq!(back, data);
    let mut on_disk = vec![0u8; 8192];
    fx.target.file.read_exact_at(&mut on_disk, 16 * 512).unwrap();
    assert_eq!(on_disk, data, "the data reached the file");

    // Flush reaches the target.
    let before = fx.target.flushes.load(Ordering::SeqCst);
    assert_eq!(vm.simple(0, VIRTIO_BLK_T_FLUSH, 0), (OK, 1));
    assert_eq!(fx.target.flushes.load(Ordering::SeqCst), before + 1);

    // GET_ID: the first 20 bytes of the serial.
    let id = vm.alloc(20);
    let r = vm.submit(0, VIRTIO_BLK_T_GET_ID, 0, &[(id, 20, true)]);
    assert_eq!(vm.complete(&r), (OK, 21));
    let mut got = [0u8; 20];
    vm.mem.read_slice(&mut got, GuestAddress(id)).unwrap();
    assert_eq!(&got[..], &SERIAL.as_bytes()[..20]);

    // The last sector of the disk is reachable, one past it is not.
    let last = DISK_SIZE / 512 - 8;
    assert_eq!(vm.write(0, last, &pattern(1, 4096)).0, OK);
    assert_eq!(vm.read(0, last, 4096).2, pattern(1, 4096));

    // Write-through mode: every write is followed by a flush.
    vm.fe.set_config(32, VhostUserConfigFlags::WRITABLE, &[0]).unwrap();
    let before = fx.target.flushes.load(Ordering::SeqCst);
    assert_eq!(vm.write(0, 0, &pattern(3, 512)).0, OK);
    assert_eq!(fx.target.flushes.load(Ordering::SeqCst), before + 1);
}

#[test]
fn discard_and_write_zeroes_read_back_zeroes() {
    let fx = Fixture::new(false, 1);
    let mut vm = Vm::connect(&fx.socket, 1, true);
    let zeros = vec![0u8; 16384];

    assert_eq!(vm.write(0, 0, &pattern(9, 16384)).0, OK);
    assert_eq!(vm.ranges(0, VIRTIO_BLK_T_DISCARD, &[(0, 32, 0)]), (OK, 1));
    assert_eq!(vm.read(0, 0, 16384).2, zeros);

    // Write-zeroes, with and without UNMAP, several segments in one request.
    assert_eq!(vm.write(0, 64, &pattern(5, 16384)).0, OK);
    assert_eq!(
        vm.ranges(0, VIRTIO_BLK_T_WRITE_ZEROES, &[(64, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP), (72, 24, 0)]),
        (OK, 1)
    );
    assert_eq!(vm.read(0, 64, 16384).2, zeros);

    // Discard with the UNMAP flag, unknown flags: unsupported. No segment, a segment
    // beyond the disk, a partial segment: errors. Nothing was touched by them.
    assert_eq!(vm.write(0, 128, &pattern(6, 4096)).0, OK);
    let unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    assert_eq!(vm.ranges(0, VIRTIO_BLK_T_DISCARD, &[(128, 8, unmap)]).0, UNSUPP);
    assert_eq!(vm.ranges(0, VIRTIO_BLK_T_WRITE_ZEROES, &[(128, 8, 0x80)]).0, UNSUPP);
    assert_eq!(vm.ranges(0, VIRTIO_BLK_T_DISCARD, &[]).0, IOERR);
    let cap = DISK_SIZE / 512;
    assert_eq!(vm.ranges(0, VIRTIO_BLK_T_DISCARD, &[(cap - 4, 8, 0)]).0, IOERR);
    assert_eq!(vm.ranges(0, VIRTIO_BLK_T_WRITE_ZEROES, &[(128, 8, 0), (u64::MAX, 8, 0)]).0, IOERR);
    let odd = vm.alloc(24);
    let r = vm.submit(0, VIRTIO_BLK_T_DISCARD, 0, &[(odd, 24, false)]);
    assert_eq!(vm.complete(&r).0, IOERR);
    assert_eq!(vm.read(0, 128, 4096).2, pattern(6, 4096));
}

#[test]
fn unknown_type_and_out_of_range() {
    let fx = Fixture::new(false, 1);
    let mut vm = Vm::connect(&fx.socket, 1, false);
    assert_eq!(vm.simple(0, 99, 0), (UNSUPP, 1));
    assert_eq!(vm.simple(0, VIRTIO_BLK_T_SCSI_CMD, 0).0, UNSUPP);
    let cap = DISK_SIZE / 512;
    assert_eq!(vm.read(0, cap, 512).0, IOERR);
    assert_eq!(vm.read(0, cap - 1, 1024).0, IOERR);
    assert_eq!(vm.write(0, u64::MAX, &[1u8; 512]).0, IOERR);
    assert_eq!(vm.write(0, u64::MAX / 512 + 1, &[1u8; 512]).0, IOERR);
    // Not a whole number of sectors.
    assert_eq!(vm.read(0, 0, 100).0, IOERR);
    assert_eq!(vm.write(0, 0, &[1u8; 513]).0, IOERR);
    // Still serving.
    assert_eq!(vm.write(0, 8, &pattern(2, 512)).0, OK);
    assert_eq!(vm.read(0, 8, 512).2, pattern(2, 512));
}

#[test]
fn read_only_device_refuses_writes() {
    let fx = Fixture::new(true, 1);
    fx.target.file.write_all_at(&pattern(4, 4096), 0).unwrap();
    let mut vm = Vm::connect(&fx.socket, 1, true);
    assert_ne!(vm.features & (1 << VIRTIO_BLK_F_RO), 0, "RO feature offered");
    let (st, used) = vm.write(0, 0, &[0u8; 4096]);
    assert_eq!((st, used), (IOERR, 1));
    assert_eq!(vm.ranges(0, VIRTIO_BLK_T_DISCARD, &[(0, 8, 0)]).0, IOERR);
    assert_eq!(vm.ranges(0, VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 0)]).0, IOERR);
    let (st, _, data) = vm.read(0, 0, 4096);
    assert_eq!(st, OK);
    assert_eq!(data, pattern(4, 4096), "nothing was written");
    assert_eq!(vm.simple(0, VIRTIO_BLK_T_FLUSH, 0).0, OK);
}

#[test]
fn multiqueue_requests_in_flight_on_all_queues() {
    multiqueue_in_flight(0);
}

#[test]
fn multiqueue_on_one_worker_thread_and_on_uneven_groups() {
    // 4 queues on one thread, and on 3 threads (queues 0 | 1 | 2, 3).
    multiqueue_in_flight(1);
    multiqueue_in_flight(3);
}

fn multiqueue_in_flight(io_threads: u16) {
    let fx = Fixture::with_threads(false, 4, io_threads);
    let mut vm = Vm::connect(&fx.socket, 4, true);
    // Queue 16 writes on each of 4 queues before kicking any of them.
    let mut reqs = Vec::new();
    for q in 0..4 {
        for i in 0..16u64 {
            let sector = (q as u64 * 16 + i) * 8;
            let buf = vm.alloc(4096);
            vm.mem.write_slice(&pattern((q * 16) as u8 + i as u8, 4096), GuestAddress(buf)).unwrap();
            reqs.push(vm.submit(q, VIRTIO_BLK_T_OUT, sector, &[(buf, 4096, false)]));
        }
    }
    for vq in &vm.vqs {
        vq.kick();
    }
    for q in 0..4 {
        let used = vm.vqs[q].wait_used(&vm.mem, 16);
        assert_eq!(used.len(), 16);
    }
    for r in &reqs {
        let st: u8 = vm.mem.read_obj(GuestAddress(r.status)).unwrap();
        assert_eq!(st, OK);
    }
    // Read everything back, each queue reading another queue's data.
    vm.reset_bufs();
    for q in 0..4 {
        for i in 0..16u64 {
            let sector = (q as u64 * 16 + i) * 8;
            let (st, _, data) = vm.read((q + 1) % 4, sector, 4096);
            assert_eq!(st, OK);
            assert_eq!(data, pattern((q * 16) as u8 + i as u8, 4096));
        }
    }
    // Stopping a ring (GET_VRING_BASE) reports how far the device consumed it.
    for q in 0..4 {
        assert_eq!(vm.fe.get_vring_base(q).unwrap(), 32);
    }
}

#[test]
fn event_idx_suppresses_and_requests_notifications() {
    let fx = Fixture::new(false, 1);
    let mut vm = Vm::connect(&fx.socket, 1, true);
    assert_ne!(vm.features & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    let wait_call = |vq: &Vq, ms: u64| -> bool {
        let deadline = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < deadline {
            if vq.call.read().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    };

    // used_event = 0: the driver wants an interrupt when used idx passes 0.
    vm.mem.write_obj(0u16, GuestAddress(vm.vqs[0].used_event_addr())).unwrap();
    let _ = vm.vqs[0].call.read();
    assert_eq!(vm.simple(0, VIRTIO_BLK_T_FLUSH, 0).0, OK);
    assert!(wait_call(&vm.vqs[0], 2000), "no interrupt although requested");
    // The device re-enabled kicks by publishing avail_event = next avail index.
    let avail_event: u16 = vm.mem.read_obj(GuestAddress(vm.vqs[0].avail_event_addr())).unwrap();
    assert_eq!(avail_event, vm.vqs[0].avail_idx);

    // used_event far ahead: completions arrive without an interrupt.
    vm.mem.write_obj(1000u16, GuestAddress(vm.vqs[0].used_event_addr())).unwrap();
    let _ = vm.vqs[0].call.read();
    for _ in 0..3 {
        assert_eq!(vm.simple(0, VIRTIO_BLK_T_FLUSH, 0).0, OK);
    }
    assert!(!wait_call(&vm.vqs[0], 100), "interrupt although suppressed");

    // Several requests queued before one kick are all completed.
    let reqs: Vec<_> = (0..8).map(|_| vm.submit(0, VIRTIO_BLK_T_FLUSH, 0, &[])).collect();
    vm.vqs[0].kick();
    assert_eq!(vm.vqs[0].wait_used(&vm.mem, 8).len(), 8);
    for r in reqs {
        assert_eq!(vm.mem.read_obj::<u8>(GuestAddress(r.status)).unwrap(), OK);
    }
}

#[test]
fn malformed_chains_get_errors_and_the_device_keeps_serving() {
    let fx = Fixture::new(false, 1);
    let mut vm = Vm::connect(&fx.socket, 1, true);
    let w = VRING_DESC_F_WRITE as u16;
    let outside = (MEM_SIZE as u64) + 0x1000;

    let expect = |vm: &mut Vm,
                  descs: &[(u64, u32, u16, Option<u16>)],
                  status_at: Option<u64>,
                  want: Option<(u8, u32)>,
                  what: &str| {
        let head = vm.vqs[0].write_raw_chain(&vm.mem, descs);
        vm.vqs[0].publish(&vm.mem, head);
        vm.vqs[0].kick();
        let used = vm.vqs[0].wait_used(&vm.mem, 1);
        assert_eq!(used[0].0, u32::from(head), "{what}: wrong chain completed");
        match (status_at, want) {
            (Some(addr), Some((st, len))) => {
                let got: u8 = vm.mem.read_obj(GuestAddress(addr)).unwrap();
                assert_eq!((got, used[0].1), (st, len), "{what}");
            }
            _ => assert_eq!(used[0].1, 0, "{what}: dropped chain must have used len 0"),
        }
    };

    let hdr = vm.header(VIRTIO_BLK_T_IN, 0);
    let data = vm.alloc(4096);
    let st = vm.status_buf();

    // No status descriptor: the chain ends with a device-readable buffer.
    expect(&mut vm, &[(hdr, 16, 0, None), (data, 512, 0, None)], None, None, "no status");
    // Status descriptor not writable.
    expect(&mut vm, &[(hdr, 16, 0, None), (data, 512, w, None), (st, 1, 0, None)], None, None, "read-only status");
    // Status descriptor outside guest memory.
    expect(&mut vm, &[(hdr, 16, 0, None), (outside, 1, w, None)], None, None, "status outside memory");
    // Zero-length status descriptor.
    expect(&mut vm, &[(hdr, 16, 0, None), (st, 0, w, None)], None, None, "empty status");
    // Status at the very end of the address space (addr + len overflows).
    expect(&mut vm, &[(hdr, 16, 0, None), (u64::MAX - 1, 4, w, None)], None, None, "status overflow");
    // Data descriptor outside guest memory.
    expect(
        &mut vm,
        &[(hdr, 16, 0, None), (outside, 4096, w, None), (st, 1, w, None)],
        Some(st),
        Some((IOERR, 1)),
        "data outside memory",
    );
    // Data descriptor straddling the end of guest memory.
    expect(
        &mut vm,
        &[(hdr, 16, 0, None), (MEM_SIZE as u64 - 512, 4096, w, None), (st, 1, w, None)],
        Some(st),
        Some((IOERR, 1)),
        "data straddling the end",
    );
    // Header too short.
    expect(&mut vm, &[(hdr, 8, 0, None), (st, 1, w, None)], Some(st), Some((IOERR, 1)), "short header");
    // Header itself outside guest memory.
    expect(&mut vm, &[(outside, 16, 0, None), (st, 1, w, None)], Some(st), Some((IOERR, 1)), "header outside memory");
    // Huge data length.
    expect(
        &mut vm,
        &[(hdr, 16, 0, None), (data, 0xffff_f000, w, None), (st, 1, w, None)],
        Some(st),
        Some((IOERR, 1)),
        "huge length",
    );
    // Wrong direction: a read whose data buffer is device-readable.
    expect(
        &mut vm,
        &[(hdr, 16, 0, None), (data, 4096, 0, None), (st, 1, w, None)],
        Some(st),
        Some((IOERR, 1)),
        "read into a readable buffer",
    );
    // A device-readable descriptor after a writable one.
    expect(
        &mut vm,
        &[(hdr, 16, 0, None), (data, 512, w, None), (data, 512, 0, None), (st, 1, w, None)],
        Some(st),
        Some((IOERR, 1)),
        "readable after writable",
    );
    // A write whose data is device-writable.
    let whdr = vm.header(VIRTIO_BLK_T_OUT, 0);
    expect(
        &mut vm,
        &[(whdr, 16, 0, None), (data, 4096, w, None), (st, 1, w, None)],
        Some(st),
        Some((IOERR, 1)),
        "write from a writable buffer",
    );
    // Overlapping device-writable buffers.
    expect(
        &mut vm,
        &[(hdr, 16, 0, None), (data, 1024, w, None), (data + 512, 1024, w, None), (st, 1, w, None)],
        Some(st),
        Some((IOERR, 1)),
        "overlapping buffers",
    );
    // A descriptor loop: the chain is cut at the queue size; the device must not hang.
    let loop_head = vm.vqs[0].next_desc;
    let head = vm.vqs[0].write_raw_chain(&vm.mem, &[(hdr, 16, 0, None), (data, 512, w, Some(loop_head + 1))]);
    vm.vqs[0].publish(&vm.mem, head);
    vm.vqs[0].kick();
    let used = vm.vqs[0].wait_used(&vm.mem, 1);
    assert_eq!(used[0].0, u32::from(head));
    // Too many descriptors (more than seg_max + 2), in an indirect table longer than the
    // queue: the device answers IOERR through the last descriptor.
    let n = 300u64;
    let table = vm.alloc(16 * n);
    for i in 0..n {
        let (addr, len, flags) = match i {
            0 => (hdr, 16u32, 0u16),
            i if i == n - 1 => (st, 1, w),
            i => (data + (i % 8) * 512, 512, w),
        };
        let a = table + 16 * i;
        let next_flag = if i == n - 1 { 0 } else { VRING_DESC_F_NEXT as u16 };
        vm.mem.write_obj(addr, GuestAddress(a)).unwrap();
        vm.mem.write_obj(len, GuestAddress(a + 8)).unwrap();
        vm.mem.write_obj(flags | next_flag, GuestAddress(a + 12)).unwrap();
        vm.mem.write_obj((i + 1) as u16, GuestAddress(a + 14)).unwrap();
    }
    let indirect = VRING_DESC_F_INDIRECT as u16;
    expect(&mut vm, &[(table, 16 * n as u32, indirect, None)], Some(st), Some((IOERR, 1)), "too many descriptors");
    // A valid request through an indirect table works.
    let table = vm.alloc(48);
    let buf = vm.alloc(512);
    vm.mem.write_slice(&[0x5au8; 512], GuestAddress(buf)).unwrap();
    let whdr2 = vm.header(VIRTIO_BLK_T_OUT, 48);
    for (i, (addr, len, flags)) in [(whdr2, 16u32, 0u16), (buf, 512, 0), (st, 1, w)].into_iter().enumerate() {
        let a = table + 16 * i as u64;
        let next_flag = if i == 2 { 0 } else { VRING_DESC_F_NEXT as u16 };
        vm.mem.write_obj(addr, GuestAddress(a)).unwrap();
        vm.mem.write_obj(len, GuestAddress(a + 8)).unwrap();
        vm.mem.write_obj(flags | next_flag, GuestAddress(a + 12)).unwrap();
        vm.mem.write_obj((i + 1) as u16, GuestAddress(a + 14)).unwrap();
    }
    expect(&mut vm, &[(table, 48, indirect, None)], Some(st), Some((OK, 1)), "indirect write");
    assert_eq!(vm.read(0, 48, 512).2, vec![0x5au8; 512]);

    // The device still serves valid requests.
    assert_eq!(vm.write(0, 40, &pattern(8, 4096)).0, OK);
    assert_eq!(vm.read(0, 40, 4096), (OK, 4097, pattern(8, 4096)));
    assert!(fx.handle().is_connected());
}

#[test]
fn disconnect_then_a_second_frontend_sees_the_data() {
    let fx = Fixture::new(false, 2);
    {
        let mut vm = Vm::connect(&fx.socket, 2, true);
        assert_eq!(vm.write(1, 80, &pattern(11, 4096)).0, OK);
        // Dropping the frontend closes the socket, as a VM shutting down does.
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while fx.handle().is_connected() {
        assert!(Instant::now() < deadline, "disconnect not noticed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut vm = Vm::connect(&fx.socket, 2, false);
    assert_eq!(vm.read(0, 80, 4096), (OK, 4097, pattern(11, 4096)));
    assert_eq!(fx.handle().connections(), 2);
}

#[test]
fn shutdown_while_connected() {
    let mut fx = Fixture::new(false, 2);
    let mut vm = Vm::connect(&fx.socket, 2, true);
    assert_eq!(vm.write(0, 0, &pattern(1, 512)).0, OK);
    fx.shutdown();
    assert!(!fx.socket.exists(), "socket file removed");
    // The frontend sees the connection gone.
    assert!(vm.fe.get_features().is_err());
}

#[test]
fn shutdown_while_waiting_and_socket_setup() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    // A stale socket file (its server is gone) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let target = FileTarget::new(dir.path(), false);
    let opts = ServeOptions { num_queues: 1, socket_mode: 0o660, ..ServeOptions::default() };
    let h = spawn_device(&socket, target.clone(), &opts).unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // A live socket is not stolen; a regular file is not replaced.
    match spawn_device(&socket, target.clone(), &opts) {
        Err(FrontendError::SocketInUse(_)) => {}
        other => panic!("expected SocketInUse, got {other:?}"),
    }
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"data").unwrap();
    assert!(matches!(spawn_device(&plain, target.clone(), &opts), Err(FrontendError::NotASocket(_))));
    let bad = ServeOptions { num_queues: 0, ..ServeOptions::default() };
    assert!(matches!(
        spawn_device(&dir.path().join("x.sock"), target.clone(), &bad),
        Err(FrontendError::InvalidOptions(_))
    ));
    let t = Instant::now();
    h.shutdown().unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(!socket.exists());
    // Default socket mode is 0600.
    let h = spawn_device(&socket, target, &ServeOptions::default()).unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(h);
    assert!(!socket.exists());
}

#[test]
fn buffers_straddling_two_memory_regions() {
    let fx = Fixture::new(false, 1);
    let mut vm = Vm::connect(&fx.socket, 1, true);
    assert_eq!(vm.mem.num_regions(), 2);
    let boundary = (MEM_SIZE / 2) as u64;
    let data = pattern(21, 8192);
    let buf = boundary - 3000;
    vm.mem.write_slice(&data, GuestAddress(buf)).unwrap();
    let r = vm.submit(0, VIRTIO_BLK_T_OUT, 200, &[(buf, 8192, false)]);
    assert_eq!(vm.complete(&r), (OK, 1));
    let mut on_disk = vec![0u8; 8192];
    fx.target.file.read_exact_at(&mut on_disk, 200 * 512).unwrap();
    assert_eq!(on_disk, data);
    // Read back into another straddling buffer.
    let rbuf = boundary - 512;
    vm.mem.write_slice(&[0u8; 8192], GuestAddress(rbuf)).unwrap();
    let r = vm.submit(0, VIRTIO_BLK_T_IN, 200, &[(rbuf, 8192, true)]);
    assert_eq!(vm.complete(&r), (OK, 8193));
    let mut back = vec![0u8; 8192];
    vm.mem.read_slice(&mut back, GuestAddress(rbuf)).unwrap();
    assert_eq!(back, data);
}

// ---------------------------------------------------------------------------------------
// A real volume behind the device: requests go through the io_uring path.

#[test]
fn volume_target_many_requests_in_flight_through_the_ring() {
    volume_target_through_the_ring(0);
}

#[test]
fn volume_target_through_the_ring_with_both_queues_on_one_thread() {
    // Each queue's io_uring completions reach the one worker under their own token.
    volume_target_through_the_ring(1);
}

/// The ring tests count process-wide submissions (`ring_requests_started`,
/// `fixed_submitted`): they run one at a time, so each test's counts are its own.
static RING_COUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn volume_target_through_the_ring(io_threads: u16) {
    let _counts = RING_COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = logdisk::config::Config::default();
    cfg.volume.sco_size = logdisk::config::ByteSize(256 << 10); // writes cross SCO boundaries
    cfg.write_buffer.limit = logdisk::config::ByteSize(64 << 20);
    let mut dd = logdisk::datadir::DataDir::open(&dir.path().join("dd"), None, cfg).unwrap();
    dd.create_volume("vt", DISK_SIZE, None, None).unwrap();
    let vol = dd.open_volume("vt", false).unwrap();
    let target = Arc::new(logdisk::frontend::volume_target::VolumeTarget::new(vol.clone(), false));
    let socket = dir.path().join("vt.sock");
    // Guest memory registered with the rings (`serve --register-memory`).
    let opts =
        ServeOptions { num_queues: 2, io_threads, queue_size: QSIZE, register_memory: true, ..ServeOptions::default() };
    let handle = spawn_device(&socket, target, &opts).unwrap();
    let mut vm = Vm::connect(&socket, 2, true);

    // Reads of never-written data need no IO at all and must still complete.
    for q in 0..2 {
        let (st, used, data) = vm.read(q, 8 * q as u64, 8192);
        assert_eq!((st, used), (OK, 8193));
        assert!(data.iter().all(|&b| b == 0));
    }
    vm.reset_bufs();
    let ring_before = logdisk::frontend::inflight::ring_requests_started();
    let fixed_before = logdisk_shm::fixed_submitted();
    // 2 queues x 40 writes queued before any kick: 4 KiB, 64 KiB and 192 KiB writes, some
    // from buffers that are not 512-byte aligned (the page-cache fd is used for those).
    let mut expect = vec![0u8; DISK_SIZE as usize];
    let mut reqs = Vec::new();
    let mut seed = 1u8;
    for q in 0..2 {
        for i in 0..40u64 {
            let len = [4096usize, 65536, 196608][(i % 3) as usize];
            let sector = (q as u64 * 40 + i) * 400; // 200 KiB apart: no two writes overlap
            let data = pattern(seed, len);
            seed = seed.wrapping_add(7);
            let misalign = if i % 5 == 0 { 8 } else { 0 };
            let buf = vm.alloc(len as u64 + 64) + misalign;
            vm.mem.write_slice(&data, GuestAddress(buf)).unwrap();
            expect[(sector * 512) as usize..(sector * 512) as usize + len].copy_from_slice(&data);
            reqs.push(vm.submit(q, VIRTIO_BLK_T_OUT, sector, &[(buf, len as u32, false)]));
        }
    }
    for vq in &vm.vqs {
        vq.kick();
    }
    for q in 0..2 {
        assert_eq!(vm.vqs[q].wait_used(&vm.mem, 40).len(), 40);
    }
    for r in &reqs {
        let st: u8 = vm.mem.read_obj(GuestAddress(r.status)).unwrap();
        assert_eq!(st, OK);
    }
    assert_eq!(vm.simple(0, VIRTIO_BLK_T_FLUSH, 0).0, OK);

    // Read the whole disk back with 64 KiB reads queued 32 at a time on both queues.
    vm.reset_bufs();
    let mut got = vec![0u8; DISK_SIZE as usize];
    let chunk = 65536u64;
    let mut off = 0u64;
    while off < DISK_SIZE {
        let mut batch = Vec::new();
        for q in 0..2 {
            for _ in 0..16 {
                if off >= DISK_SIZE {
                    break;
                }
                let buf = vm.alloc(chunk);
                batch.push((vm.submit(q, VIRTIO_BLK_T_IN, off / 512, &[(buf, chunk as u32, true)]), buf, off));
                off += chunk;
            }
        }
        for vq in &vm.vqs {
            vq.kick();
        }
        for q in 0..2 {
            let n = batch.iter().filter(|(r, _, _)| r.q == q).count();
            let used = vm.vqs[q].wait_used(&vm.mem, n as u16);
            assert!(used.iter().all(|u| u.1 == chunk as u32 + 1), "used length of a read");
        }
        for (r, buf, o) in batch {
            let st: u8 = vm.mem.read_obj(GuestAddress(r.status)).unwrap();
            assert_eq!(st, OK);
            vm.mem.read_slice(&mut got[o as usize..(o + chunk) as usize], GuestAddress(buf)).unwrap();
        }
        vm.reset_bufs();
    }
    assert!(got == expect, "data read through the ring differs from what was written");
    let on_ring = logdisk::frontend::inflight::ring_requests_started() - ring_before;
    // Every write, and reads except those spanning more than MAX_SEGS runs.
    assert!(on_ring >= 80 + 230, "only {on_ring} requests went through io_uring");
    // Guest memory is registered with the rings (`register_memory`): where the kernel has
    // vectored fixed IO, the requests went as fixed IO into it (SQEs, merged
    // across requests: at least one per batch of 32 reads above, 8 of them).
    if logdisk_shm::Uring::new(8).is_ok_and(|r| r.can_register_memory()) {
        let fixed = logdisk_shm::fixed_submitted() - fixed_before;
        assert!(fixed >= 8, "only {fixed} SQEs went as fixed IO into registered guest memory");
    }
    // Out of range through the ring path is IOERR, and the device keeps serving.
    let (st, _) = vm.write(1, DISK_SIZE / 512 - 4, &[1u8; 4096]);
    assert_eq!(st, IOERR);
    let (st, _, data) = vm.read(1, 0, 4096);
    assert_eq!(st, OK);
    assert_eq!(&data[..], &expect[..4096]);
    drop(vm);
    handle.shutdown().unwrap();
    vol.close().unwrap();
}

/// CONFIGURE_MEM_SLOTS: memory added with ADD_MEM_REG (no SET_MEM_TABLE); a second region
/// added, used, removed: a chain pointing into the removed region gets an error status
/// and the device keeps serving the first.
#[test]
fn memory_slots_add_and_remove_regions() {
    let fx = Fixture::new(false, 1);
    let mut vm = Vm::connect_with(&fx.socket, 1, true, true);
    let proto = vm.fe.get_protocol_features().unwrap();
    assert!(proto.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS));
    let second = vm.mem.iter().nth(1).map(|r| vhost::VhostUserMemoryRegionInfo::from_guest_region(r).unwrap()).unwrap();
    let hi = (MEM_SIZE / 2) as u64 + 0x1000; // a buffer in the second region
    let data = pattern(7, 4096);
    // IO in the first region.
    assert_eq!(vm.write(0, 8, &data).0, OK);
    assert_eq!(vm.read(0, 8, 4096).2, data);
    // Not yet added: a buffer in the second region is refused.
    let io_at = |vm: &mut Vm, t: u32, sector: u64, addr: u64| {
        let r = vm.submit(0, t, sector, &[(addr, 4096, t == VIRTIO_BLK_T_IN)]);
        vm.complete(&r).0
    };
    vm.mem.write_slice(&pattern(9, 4096), GuestAddress(hi)).unwrap();
    assert_eq!(io_at(&mut vm, VIRTIO_BLK_T_OUT, 16, hi), IOERR);
    vm.fe.add_mem_region(&second).unwrap();
    assert_eq!(io_at(&mut vm, VIRTIO_BLK_T_OUT, 16, hi), OK);
    vm.mem.write_slice(&[0u8; 4096], GuestAddress(hi)).unwrap();
    assert_eq!(io_at(&mut vm, VIRTIO_BLK_T_IN, 16, hi), OK);
    let mut got = vec![0u8; 4096];
    vm.mem.read_slice(&mut got, GuestAddress(hi)).unwrap();
    assert_eq!(got, pattern(9, 4096), "IO in the added region");
    assert_eq!(vm.read(0, 8, 4096).2, data, "and in the first");
    vm.fe.remove_mem_region(&second).unwrap();
    assert_eq!(io_at(&mut vm, VIRTIO_BLK_T_IN, 16, hi), IOERR, "a chain into a removed region");
    assert_eq!(io_at(&mut vm, VIRTIO_BLK_T_OUT, 24, hi), IOERR);
    assert_eq!(vm.read(0, 16, 4096).2, pattern(9, 4096), "the device keeps serving");
}

/// Guest memory registered with a volume's rings follows the memory table: IO through the
/// ring into a region added later lands in it, a chain into a removed region is refused,
/// and the region added again serves IO again, with the registered path used throughout
/// where the kernel has it.
#[test]
fn registered_memory_follows_added_and_removed_regions() {
    let _counts = RING_COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut dd =
        logdisk::datadir::DataDir::open(&dir.path().join("dd"), None, logdisk::config::Config::default()).unwrap();
    dd.create_volume("vm", DISK_SIZE, None, None).unwrap();
    let vol = dd.open_volume("vm", false).unwrap();
    let target = Arc::new(logdisk::frontend::volume_target::VolumeTarget::new(vol.clone(), false));
    let socket = dir.path().join("vm.sock");
    let opts = ServeOptions { num_queues: 1, queue_size: QSIZE, register_memory: true, ..ServeOptions::default() };
    let handle = spawn_device(&socket, target, &opts).unwrap();
    let mut vm = Vm::connect_with(&socket, 1, true, true);
    let second = vm.mem.iter().nth(1).map(|r| vhost::VhostUserMemoryRegionInfo::from_guest_region(r).unwrap()).unwrap();
    let hi = (MEM_SIZE / 2) as u64 + 0x1000; // a buffer in the second region
    let io_at = |vm: &mut Vm, t: u32, sector: u64, addr: u64| {
        let r = vm.submit(0, t, sector, &[(addr, 4096, t == VIRTIO_BLK_T_IN)]);
        vm.complete(&r).0
    };
    let ring0 = logdisk::frontend::inflight::ring_requests_started();
    let fixed0 = logdisk_shm::fixed_submitted();
    let data = pattern(3, 4096);
    assert_eq!(vm.write(0, 8, &data).0, OK);
    assert_eq!(vm.read(0, 8, 4096).2, data);
    for (round, seed) in [(0, 11u8), (1, 29)] {
        vm.fe.add_mem_region(&second).unwrap();
        vm.mem.write_slice(&pattern(seed, 4096), GuestAddress(hi)).unwrap();
        assert_eq!(io_at(&mut vm, VIRTIO_BLK_T_OUT, 16, hi), OK, "round {round}: a write from the added region");
        vm.mem.write_slice(&[0u8; 4096], GuestAddress(hi)).unwrap();
        assert_eq!(io_at(&mut vm, VIRTIO_BLK_T_IN, 16, hi), OK);
        let mut got = vec![0u8; 4096];
        vm.mem.read_slice(&mut got, GuestAddress(hi)).unwrap();
        assert_eq!(got, pattern(seed, 4096), "round {round}: a read into the added region");
        assert_eq!(vm.read(0, 8, 4096).2, data, "round {round}: and into the first");
        vm.fe.remove_mem_region(&second).unwrap();
        assert_eq!(io_at(&mut vm, VIRTIO_BLK_T_IN, 16, hi), IOERR, "round {round}: a chain into a removed region");
        assert_eq!(vm.read(0, 16, 4096).2, pattern(seed, 4096), "round {round}: the device keeps serving");
    }
    assert!(logdisk::frontend::inflight::ring_requests_started() - ring0 >= 10, "the IO went through the ring");
    if logdisk_shm::Uring::new(8).is_ok_and(|r| r.can_register_memory()) {
        let fixed = logdisk_shm::fixed_submitted() - fixed0;
        assert!(fixed >= 10, "only {fixed} SQEs went as fixed IO into registered guest memory");
    }
    drop(vm);
    handle.shutdown().unwrap();
    vol.close().unwrap();
}
