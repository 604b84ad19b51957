//! The vhost-user control plane: connect as the frontend, negotiate features, share guest
//! memory, set up the vrings, and stop them again.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::mem::GuestMem;
use crate::vq::RingLayout;

pub const VIRTIO_F_VERSION_1: u64 = 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 29;
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1;
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 2;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 6;
pub const VIRTIO_BLK_F_FLUSH: u64 = 9;
pub const VIRTIO_BLK_F_TOPOLOGY: u64 = 10;
pub const VIRTIO_BLK_F_CONFIG_WCE: u64 = 11;
pub const VIRTIO_BLK_F_MQ: u64 = 12;
pub const VIRTIO_BLK_F_RO: u64 = 5;
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 30;

/// What the device told us and what we negotiated.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    pub offered_features: u64,
    pub acked_features: u64,
    pub protocol_features: u64,
    pub event_idx: bool,
    pub max_queues: u64,
    /// Capacity in bytes (from the config space; 0 when the device has no CONFIG).
    pub capacity: u64,
    pub blk_size: u32,
    pub size_max: u32,
    /// The config space's writeback byte (1 = write-back cache advertised).
    pub wce: Option<u8>,
    pub read_only: bool,
    pub flush: bool,
}

pub struct QueueFds {
    pub kick: EventFd,
    pub call: EventFd,
}

pub struct Device {
    fe: Frontend,
    pub info: DeviceInfo,
    queues: usize,
}

fn bit(f: u64, b: u64) -> bool {
    f & (1 << b) != 0
}

fn connect_retry(socket: &Path, queues: u64, wait: Duration) -> Result<Frontend> {
    let deadline = Instant::now() + wait;
    loop {
        match Frontend::connect(socket, queues) {
            Ok(fe) => return Ok(fe),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {}", socket.display())),
        }
    }
}

impl Device {
    /// Connect and negotiate. `queues` virtqueues will be used.
    pub fn connect(socket: &Path, queues: usize, allow_event_idx: bool, wait: Duration) -> Result<Device> {
        let mut fe = connect_retry(socket, queues as u64, wait)?;
        fe.set_owner().context("SET_OWNER")?;
        let offered = fe.get_features().context("GET_FEATURES")?;
        if !bit(offered, VIRTIO_F_VERSION_1) {
            bail!("the device does not offer VIRTIO_F_VERSION_1 (features {offered:#x})");
        }

        // Protocol features (as QEMU does: before SET_FEATURES).
        let mut proto = VhostUserProtocolFeatures::empty();
        if bit(offered, VHOST_USER_F_PROTOCOL_FEATURES) {
            let offered_proto = fe.get_protocol_features().context("GET_PROTOCOL_FEATURES")?;
            proto = offered_proto
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::REPLY_ACK);
            fe.set_protocol_features(proto).context("SET_PROTOCOL_FEATURES")?;
        }
        let max_queues = if proto.contains(VhostUserProtocolFeatures::MQ) {
            fe.get_queue_num().context("GET_QUEUE_NUM")?
        } else {
            1
        };
        if queues as u64 > max_queues {
            bail!("{queues} queues requested; the device has {max_queues}");
        }

        let wanted = [
            VIRTIO_F_VERSION_1,
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_TOPOLOGY,
            VIRTIO_BLK_F_CONFIG_WCE,
            VIRTIO_BLK_F_MQ,
            VIRTIO_BLK_F_RO,
            VHOST_USER_F_PROTOCOL_FEATURES,
        ]
        .iter()
        .fold(0u64, |a, b| a | (1 << b))
            | if allow_event_idx { 1 << VIRTIO_RING_F_EVENT_IDX } else { 0 };
        let acked = offered & wanted;
        fe.set_features(acked).context("SET_FEATURES")?;
        if proto.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }

        let mut info = DeviceInfo {
            offered_features: offered,
            acked_features: acked,
            protocol_features: proto.bits(),
            event_idx: bit(acked, VIRTIO_RING_F_EVENT_IDX),
            max_queues,
            capacity: 0,
            blk_size: 512,
            size_max: 0,
            wce: None,
            read_only: bit(acked, VIRTIO_BLK_F_RO),
            flush: bit(acked, VIRTIO_BLK_F_FLUSH),
        };
        if proto.contains(VhostUserProtocolFeatures::CONFIG) {
            // 36 bytes: capacity .. num_queues; every virtio-blk device has at least that.
            let (_, c) = fe.get_config(0, 36, VhostUserConfigFlags::empty(), &[0u8; 36]).context("GET_CONFIG")?;
            info.capacity = u64::from_le_bytes(c[0..8].try_into().unwrap()) * 512;
            if bit(acked, VIRTIO_BLK_F_SIZE_MAX) {
                info.size_max = u32::from_le_bytes(c[8..12].try_into().unwrap());
            }
            if bit(acked, VIRTIO_BLK_F_BLK_SIZE) {
                info.blk_size = u32::from_le_bytes(c[20..24].try_into().unwrap());
            }
            if bit(acked, VIRTIO_BLK_F_CONFIG_WCE) {
                info.wce = Some(c[32]);
            }
        }
        Ok(Device { fe, info, queues })
    }

    /// Share `mem` and start `layouts.len()` queues on it; returns their eventfds.
    pub fn start(&mut self, mem: &GuestMem, layouts: &[RingLayout]) -> Result<Vec<QueueFds>> {
        assert_eq!(layouts.len(), self.queues);
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: mem.size() as u64,
            userspace_addr: mem.host_addr(),
            mmap_offset: 0,
            mmap_handle: mem.fd(),
        };
        self.fe.set_mem_table(&[region]).context("SET_MEM_TABLE")?;
        let uaddr = mem.host_addr();
        let mut fds = Vec::new();
        for (q, l) in layouts.iter().enumerate() {
            let qf = QueueFds { kick: EventFd::new(EFD_NONBLOCK)?, call: EventFd::new(EFD_NONBLOCK)? };
            self.fe.set_vring_num(q, l.size).with_context(|| format!("SET_VRING_NUM {}", l.size))?;
            let cfg = VringConfigData {
                queue_max_size: l.size,
                queue_size: l.size,
                flags: 0,
                desc_table_addr: uaddr + l.desc,
                used_ring_addr: uaddr + l.used,
                avail_ring_addr: uaddr + l.avail,
                log_addr: None,
            };
            self.fe.set_vring_addr(q, &cfg).context("SET_VRING_ADDR")?;
            self.fe.set_vring_base(q, 0).context("SET_VRING_BASE")?;
            self.fe.set_vring_call(q, &qf.call).context("SET_VRING_CALL")?;
            self.fe.set_vring_kick(q, &qf.kick).context("SET_VRING_KICK")?;
            if bit(self.info.acked_features, VHOST_USER_F_PROTOCOL_FEATURES) {
                self.fe.set_vring_enable(q, true).context("SET_VRING_ENABLE")?;
            }
            fds.push(qf);
        }
        Ok(fds)
    }

    /// Stop every queue (GET_VRING_BASE), as a hypervisor does before it disconnects.
    pub fn stop(&mut self) -> Result<()> {
        for q in 0..self.queues {
            self.fe.get_vring_base(q).with_context(|| format!("GET_VRING_BASE {q}"))?;
        }
        Ok(())
    }
}
