//! A test hypervisor without a VM: a vhost-user frontend (the vhost crate's `Frontend`)
//! with memfd-backed "guest" memory shared by SET_MEM_TABLE, split virtqueues laid out in
//! that memory by a small driver-side ring writer ([`Vq`]), kicks through eventfds and
//! completions read back from the used rings.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const MEM_SIZE: usize = 8 << 20;
pub const QSIZE: u16 = 256;

// ---------------------------------------------------------------------------------------
// Guest memory and a driver-side split virtqueue.

/// Guest RAM: two guest-adjacent regions of `MEM_SIZE / 2`, each its own memfd and so its
/// own mapping (like RAM split around a PCI hole), so buffers can straddle regions.
pub fn guest_memory() -> GuestMemoryMmap<()> {
    let half = MEM_SIZE / 2;
    let region = |base: u64| {
        // SAFETY: plain memfd_create with a static NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"logdisk-guest".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a fresh fd that we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(half as u64).unwrap();
        (GuestAddress(base), half, Some(FileOffset::new(file, 0)))
    };
    GuestMemoryMmap::from_ranges_with_files(&[region(0), region(half as u64)]).unwrap()
}

/// Queue `q`'s rings live at `q * 0x10000`; data buffers from 1 MiB on.
pub fn ring_base(q: usize) -> u64 {
    q as u64 * 0x10000
}

/// A driver-side split virtqueue in guest memory.
pub struct Vq {
    pub base: u64,
    pub size: u16,
    pub next_desc: u16,
    pub avail_idx: u16,
    pub used_seen: u16,
    pub kick: EventFd,
    pub call: EventFd,
}

impl Vq {
    pub fn desc_addr(&self) -> u64 {
        self.base
    }
    pub fn avail_addr(&self) -> u64 {
        self.base + 0x1000
    }
    pub fn used_addr(&self) -> u64 {
        self.base + 0x2000
    }
    /// `used_event` lives after the avail ring.
    pub fn used_event_addr(&self) -> u64 {
        self.avail_addr() + 4 + 2 * u64::from(self.size)
    }
    /// `avail_event` lives after the used ring.
    pub fn avail_event_addr(&self) -> u64 {
        self.used_addr() + 4 + 8 * u64::from(self.size)
    }

    /// Write a chain with explicit `(addr, len, flags, next)` entries (`next == None` means
    /// "the next slot"); returns the head index. Does not publish it.
    pub fn write_raw_chain(&mut self, mem: &GuestMemoryMmap<()>, descs: &[(u64, u32, u16, Option<u16>)]) -> u16 {
        let head = self.next_desc;
        for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let next_idx = next.unwrap_or((idx + 1) % self.size);
            let flags = if last && next.is_none() { *flags } else { *flags | VRING_DESC_F_NEXT as u16 };
            let a = self.desc_addr() + 16 * u64::from(idx);
            mem.write_obj(*addr, GuestAddress(a)).unwrap();
            mem.write_obj(*len, GuestAddress(a + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(a + 12)).unwrap();
            mem.write_obj(next_idx, GuestAddress(a + 14)).unwrap();
        }
        self.next_desc = (head + descs.len() as u16) % self.size;
        head
    }

    /// Add a chain of `(addr, len, device_writable)` buffers; returns its head index.
    pub fn add(&mut self, mem: &GuestMemoryMmap<()>, bufs: &[(u64, u32, bool)]) -> u16 {
        let raw: Vec<_> =
            bufs.iter().map(|(a, l, w)| (*a, *l, if *w { VRING_DESC_F_WRITE as u16 } else { 0 }, None)).collect();
        let head = self.write_raw_chain(mem, &raw);
        self.publish(mem, head);
        head
    }

    pub fn publish(&mut self, mem: &GuestMemoryMmap<()>, head: u16) {
        let slot = self.avail_addr() + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        std::sync::atomic::fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail_addr() + 2)).unwrap();
    }

    pub fn kick(&self) {
        self.kick.write(1).unwrap();
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap<()>) -> u16 {
        mem.read_obj(GuestAddress(self.used_addr() + 2)).unwrap()
    }

    /// Wait for `n` more used entries; return them as `(id, len)`.
    pub fn wait_used(&mut self, mem: &GuestMemoryMmap<()>, n: u16) -> Vec<(u32, u32)> {
        let target = self.used_seen.wrapping_add(n);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_idx(mem) != target {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for used entries: have {}, want {}",
                self.used_idx(mem),
                target
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        let mut out = Vec::new();
        while self.used_seen != target {
            let e = self.used_addr() + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// The test hypervisor: a connected, configured frontend with guest memory and queues.
pub struct Vm {
    pub fe: Frontend,
    pub mem: GuestMemoryMmap<()>,
    pub vqs: Vec<Vq>,
    pub features: u64,
    /// Next free data buffer address (bump allocator; reset with `reset_bufs`).
    pub next_buf: u64,
}

pub struct Req {
    pub q: usize,
    pub head: u16,
    pub status: u64,
}

impl Vm {
    pub fn connect(socket: &Path, queues: usize, event_idx: bool) -> Vm {
        Self::connect_with(socket, queues, event_idx, false)
    }

    /// With `mem_slots`, memory is given region by region with ADD_MEM_REG (protocol
    /// feature CONFIGURE_MEM_SLOTS), and only the first region (rings and the buffers
    /// `alloc` hands out); otherwise all of it with SET_MEM_TABLE.
    pub fn connect_with(socket: &Path, queues: usize, event_idx: bool, mem_slots: bool) -> Vm {
        let mut fe = Frontend::connect(socket, queues as u64).unwrap();
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        let mut features = offered;
        if !event_idx {
            features &= !(1 << VIRTIO_RING_F_EVENT_IDX);
        }
        fe.set_features(features).unwrap();
        let proto = fe.get_protocol_features().unwrap();
        fe.set_protocol_features(proto).unwrap();
        fe.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);

        let mem = guest_memory();
        let infos: Vec<_> = mem.iter().map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).unwrap()).collect();
        if mem_slots {
            assert!(fe.get_max_mem_slots().unwrap() >= 8, "memory slots");
            fe.add_mem_region(&infos[0]).unwrap();
        } else {
            fe.set_mem_table(&infos).unwrap();
        }
        // The rings live in the first region.
        let uaddr = mem.find_region(GuestAddress(0)).unwrap().as_ptr() as u64;

        let mut vqs = Vec::new();
        for q in 0..queues {
            let vq = Vq {
                base: ring_base(q),
                size: QSIZE,
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
                kick: EventFd::new(EFD_NONBLOCK).unwrap(),
                call: EventFd::new(EFD_NONBLOCK).unwrap(),
            };
            fe.set_vring_num(q, QSIZE).unwrap();
            let cfg = VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: uaddr + vq.desc_addr(),
                used_ring_addr: uaddr + vq.used_addr(),
                avail_ring_addr: uaddr + vq.avail_addr(),
                log_addr: None,
            };
            fe.set_vring_addr(q, &cfg).unwrap();
            fe.set_vring_base(q, 0).unwrap();
            fe.set_vring_call(q, &vq.call).unwrap();
            fe.set_vring_kick(q, &vq.kick).unwrap();
            fe.set_vring_enable(q, true).unwrap();
            vqs.push(vq);
        }
        Vm { fe, mem, vqs, features, next_buf: 1 << 20 }
    }

    pub fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next_buf;
        self.next_buf = (self.next_buf + len + 63) & !63;
        assert!(self.next_buf < MEM_SIZE as u64, "test guest memory exhausted");
        a
    }

    pub fn reset_bufs(&mut self) {
        self.next_buf = 1 << 20;
    }

    pub fn header(&mut self, req_type: u32, sector: u64) -> u64 {
        let a = self.alloc(16);
        self.mem.write_obj(req_type, GuestAddress(a)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(a + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(a + 8)).unwrap();
        a
    }

    pub fn status_buf(&mut self) -> u64 {
        let a = self.alloc(1);
        self.mem.write_obj(0xffu8, GuestAddress(a)).unwrap();
        a
    }

    /// Queue a request with `middle` data descriptors between header and status.
    pub fn submit(&mut self, q: usize, req_type: u32, sector: u64, middle: &[(u64, u32, bool)]) -> Req {
        let hdr = self.header(req_type, sector);
        let status = self.status_buf();
        let mut bufs = vec![(hdr, 16, false)];
        bufs.extend_from_slice(middle);
        bufs.push((status, 1, true));
        let head = self.vqs[q].add(&self.mem, &bufs);
        Req { q, head, status }
    }

    /// Kick, wait for one completion, return `(status, used_len)`.
    pub fn complete(&mut self, r: &Req) -> (u8, u32) {
        self.vqs[r.q].kick();
        let used = self.vqs[r.q].wait_used(&self.mem, 1);
        assert_eq!(used[0].0, u32::from(r.head), "completion for another chain");
        let st: u8 = self.mem.read_obj(GuestAddress(r.status)).unwrap();
        (st, used[0].1)
    }

    pub fn write(&mut self, q: usize, sector: u64, data: &[u8]) -> (u8, u32) {
        let buf = self.alloc(data.len() as u64);
        self.mem.write_slice(data, GuestAddress(buf)).unwrap();
        let r = self.submit(q, VIRTIO_BLK_T_OUT, sector, &[(buf, data.len() as u32, false)]);
        self.complete(&r)
    }

    pub fn read(&mut self, q: usize, sector: u64, len: usize) -> (u8, u32, Vec<u8>) {
        let buf = self.alloc(len as u64);
        self.mem.write_slice(&vec![0xeeu8; len], GuestAddress(buf)).unwrap();
        let r = self.submit(q, VIRTIO_BLK_T_IN, sector, &[(buf, len as u32, true)]);
        let (st, used) = self.complete(&r);
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(buf)).unwrap();
        (st, used, out)
    }

    pub fn simple(&mut self, q: usize, req_type: u32, sector: u64) -> (u8, u32) {
        let r = self.submit(q, req_type, sector, &[]);
        self.complete(&r)
    }

    /// A discard or write-zeroes request with the given `(sector, num_sectors, flags)`.
    pub fn ranges(&mut self, q: usize, req_type: u32, segs: &[(u64, u32, u32)]) -> (u8, u32) {
        let buf = self.alloc(16 * segs.len() as u64);
        for (i, (s, n, f)) in segs.iter().enumerate() {
            let a = buf + 16 * i as u64;
            self.mem.write_obj(*s, GuestAddress(a)).unwrap();
            self.mem.write_obj(*n, GuestAddress(a + 8)).unwrap();
            self.mem.write_obj(*f, GuestAddress(a + 12)).unwrap();
        }
        let r = self.submit(q, req_type, 0, &[(buf, 16 * segs.len() as u32, false)]);
        self.complete(&r)
    }

    pub fn config(&mut self) -> Vec<u8> {
        let (_, data) = self.fe.get_config(0, 60, VhostUserConfigFlags::empty(), &[0u8; 60]).unwrap();
        data
    }
}

// ---------------------------------------------------------------------------------------
// Reconnecting with an inflight region, as QEMU does after the back-end restarts.

/// The inflight I/O tracking region a frontend keeps across back-end restarts.
pub struct InflightFd {
    pub desc: vhost::vhost_user::message::VhostUserInflight,
    pub file: File,
}

impl Vm {
    /// Connect like QEMU with `reconnect-ms`: event index on, an inflight region asked for
    /// with GET_INFLIGHT_FD and handed back with SET_INFLIGHT_FD.
    pub fn connect_inflight(socket: &Path, queues: usize) -> (Vm, InflightFd) {
        let mut fe = Frontend::connect(socket, queues as u64).unwrap();
        let (features, proto) = negotiate(&mut fe);
        assert!(proto & vhost::vhost_user::message::VhostUserProtocolFeatures::INFLIGHT_SHMFD.bits() != 0);
        let req = vhost::vhost_user::message::VhostUserInflight::new(0, 0, queues as u16, QSIZE);
        let (desc, file) = fe.get_inflight_fd(&req).unwrap();
        let inflight = InflightFd { desc, file };
        let mem = guest_memory();
        let vqs = (0..queues)
            .map(|q| Vq {
                base: ring_base(q),
                size: QSIZE,
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
                kick: EventFd::new(EFD_NONBLOCK).unwrap(),
                call: EventFd::new(EFD_NONBLOCK).unwrap(),
            })
            .collect();
        let mut vm = Vm { fe, mem, vqs, features, next_buf: 1 << 20 };
        vm.start_rings(&inflight);
        (vm, inflight)
    }

    /// The back-end restarted: connect to `socket` again with the same memory, rings and
    /// inflight region; each ring's base is its used index (what QEMU restores when
    /// GET_VRING_BASE failed on the dead connection).
    pub fn reconnect(&mut self, socket: &Path, inflight: &InflightFd) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut fe = loop {
            match Frontend::connect(socket, self.vqs.len() as u64) {
                Ok(fe) => break fe,
                Err(e) => {
                    assert!(Instant::now() < deadline, "reconnecting: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        let (features, _) = negotiate(&mut fe);
        assert_eq!(features, self.features, "the restarted back-end offers the same features");
        self.fe = fe;
        self.start_rings(inflight);
    }

    fn start_rings(&mut self, inflight: &InflightFd) {
        use std::os::fd::AsRawFd;
        self.fe.set_inflight_fd(&inflight.desc, inflight.file.as_raw_fd()).unwrap();
        let infos: Vec<_> = self.mem.iter().map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).unwrap()).collect();
        self.fe.set_mem_table(&infos).unwrap();
        let uaddr = self.mem.find_region(GuestAddress(0)).unwrap().as_ptr() as u64;
        for (q, vq) in self.vqs.iter().enumerate() {
            self.fe.set_vring_num(q, QSIZE).unwrap();
            let base = vq.used_idx(&self.mem);
            self.fe.set_vring_base(q, base).unwrap();
            let cfg = VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: uaddr + vq.desc_addr(),
                used_ring_addr: uaddr + vq.used_addr(),
                avail_ring_addr: uaddr + vq.avail_addr(),
                log_addr: None,
            };
            self.fe.set_vring_addr(q, &cfg).unwrap();
            self.fe.set_vring_kick(q, &vq.kick).unwrap();
            self.fe.set_vring_call(q, &vq.call).unwrap();
            self.fe.set_vring_enable(q, true).unwrap();
        }
    }
}

/// SET_OWNER, features (all offered) and protocol features (all offered), replies on.
fn negotiate(fe: &mut Frontend) -> (u64, u64) {
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    fe.set_features(features).unwrap();
    let proto = fe.get_protocol_features().unwrap();
    fe.set_protocol_features(proto).unwrap();
    fe.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
    (features, proto.bits())
}
