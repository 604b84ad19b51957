//! What the device advertises: virtio feature bits, vhost-user protocol features, and the
//! virtio-blk configuration space, plus the limits the request parser enforces.
//!
//! Limits and config space come from one [`DeviceLimits`] so that what the guest is told
//! (seg_max, size_max, discard and write-zeroes limits) is exactly what is enforced.

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Bytes per virtio sector (request sector numbers are always in these units).
pub const SECTOR_SIZE: u64 = 512;
/// Logical block size advertised when the target reports an unusable one.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Largest single segment (size_max), bytes.
pub const SIZE_MAX: u32 = 1 << 20;
/// Largest discard / write-zeroes range per segment, in sectors (1 GiB).
pub const MAX_RANGE_SECTORS: u32 = 1 << 21;
/// Most discard / write-zeroes segments in one request.
pub const MAX_RANGE_SEGS: usize = 32;
/// Size of `struct virtio_blk_config` (up to and including the zoned characteristics).
pub const CONFIG_SPACE_LEN: usize = 96;
/// Offset of the `wce` (writeback) byte in the config space.
pub const WCE_OFFSET: u32 = 32;
/// Bytes of the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Device geometry and request limits, fixed for the life of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Writes, discards and write-zeroes are refused.
    pub read_only: bool,
    /// Logical block size (power of two, 512..=64 KiB).
    pub block_size: u32,
    /// Most data segments per request.
    pub seg_max: u32,
    /// Largest segment, bytes.
    pub size_max: u32,
    /// Largest data transfer of one IN/OUT request (`seg_max * size_max`).
    pub max_data_bytes: u64,
    /// Number of request queues.
    pub num_queues: u16,
    /// Largest queue the driver may configure.
    pub queue_size: u16,
    /// Worker threads the queues are dealt to (1..=num_queues; contiguous groups).
    pub io_threads: u16,
    /// Register guest memory with each queue's io_uring as fixed buffers: the kernel pins
    /// it once (all of it, faulting in pages the guest never touched) instead of pinning
    /// each request's pages (`src/frontend/inflight.rs`). Off by default: registering
    /// happens on the queue's worker at its first request, and an untouched 1 GiB memfd
    /// took 3.3 s to register here (2 GiB: 4.4 s), a stall no guest should see at boot.
    /// Pinned pages also outlive a discard of guest memory (balloon, free page reporting,
    /// virtio-mem): IO would reach the old page, not the one the guest faults in next.
    pub register_memory: bool,
}

impl DeviceLimits {
    /// Limits for a target of `capacity_bytes` (rounded down to whole sectors).
    pub fn new(capacity_bytes: u64, read_only: bool, block_size: u32, num_queues: u16, queue_size: u16) -> Self {
        let block_size = if block_size.is_power_of_two() && (512..=65536).contains(&block_size) {
            block_size
        } else {
            DEFAULT_BLOCK_SIZE
        };
        // Header and status take a descriptor each; the rest may carry data.
        let seg_max = u32::from(queue_size).saturating_sub(2).max(1);
        DeviceLimits {
            capacity_sectors: capacity_bytes / SECTOR_SIZE,
            read_only,
            block_size,
            seg_max,
            size_max: SIZE_MAX,
            max_data_bytes: u64::from(seg_max) * u64::from(SIZE_MAX),
            num_queues,
            queue_size,
            io_threads: num_queues,
            register_memory: false,
        }
    }

    /// The same limits with the queues dealt to `threads` worker threads (clamped to
    /// 1..=num_queues).
    pub fn with_io_threads(mut self, threads: u16) -> Self {
        self.io_threads = threads.clamp(1, self.num_queues.max(1));
        self
    }

    /// The same limits, registering guest memory with the rings or not.
    pub fn with_register_memory(mut self, register: bool) -> Self {
        self.register_memory = register;
        self
    }

    /// The queues worker thread `t` serves: contiguous groups, sizes differing by at most
    /// one.
    pub fn thread_queues(&self, t: usize) -> std::ops::Range<usize> {
        let (q, n) = (usize::from(self.num_queues), usize::from(self.io_threads.max(1)));
        t * q / n..(t + 1) * q / n
    }

    /// The queues served by the thread that serves `queue` (itself included).
    pub fn queues_of_thread_serving(&self, queue: usize) -> std::ops::Range<usize> {
        (0..usize::from(self.io_threads.max(1)))
            .map(|t| self.thread_queues(t))
            .find(|r| r.contains(&queue))
            .unwrap_or(queue..queue + 1)
    }

    /// Most descriptors one request chain may have (data segments + header + status).
    pub fn max_descriptors(&self) -> usize {
        self.seg_max as usize + 2
    }

    /// Most iovecs one request may need (a segment may span two guest memory regions).
    pub fn iovec_capacity(&self) -> usize {
        2 * self.max_descriptors()
    }

    /// Discard alignment / granularity, in sectors.
    pub fn discard_alignment_sectors(&self) -> u32 {
        self.block_size / SECTOR_SIZE as u32
    }
}

/// Virtio feature bits offered to the driver.
pub fn virtio_features(limits: &DeviceLimits) -> u64 {
    let bits = [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ];
    let mut f = bits.iter().fold(0u64, |acc, b| acc | (1u64 << b));
    if limits.read_only {
        f |= 1 << VIRTIO_BLK_F_RO;
    }
    f | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// vhost-user protocol features offered to the frontend.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        // GET_MAX_MEM_SLOTS / ADD_MEM_REG / REM_MEM_REG (memory hot-plug, many regions):
        // vhost-user-backend maps each region; requests are bounds-checked against the
        // memory current when they are parsed, and a request in flight keeps its memory.
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        // GET/SET_INFLIGHT_FD: requests taken from the rings are tracked in a region the
        // hypervisor keeps, so a restarted daemon resubmits what the old one left in flight.
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
}

/// The `struct virtio_blk_config` bytes (little-endian, as virtio 1.x requires).
pub fn config_space(limits: &DeviceLimits, writeback: bool) -> [u8; CONFIG_SPACE_LEN] {
    let mut c = [0u8; CONFIG_SPACE_LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    let sectors_per_block = limits.discard_alignment_sectors();
    let range_sectors = MAX_RANGE_SECTORS.max(sectors_per_block);
    put(0, &limits.capacity_sectors.to_le_bytes()); // capacity
    put(8, &limits.size_max.to_le_bytes()); // size_max
    put(12, &limits.seg_max.to_le_bytes()); // seg_max
                                            // 16..20: geometry (VIRTIO_BLK_F_GEOMETRY not offered)
    put(20, &limits.block_size.to_le_bytes()); // blk_size
    put(24, &[0]); // physical_block_exp: physical block == logical block
    put(25, &[0]); // alignment_offset
    put(26, &1u16.to_le_bytes()); // min_io_size, in logical blocks
    let opt_blocks = (limits.size_max / limits.block_size).max(1);
    put(28, &opt_blocks.to_le_bytes()); // opt_io_size, in logical blocks
    put(32, &[u8::from(writeback)]); // wce
    put(34, &limits.num_queues.to_le_bytes()); // num_queues
    put(36, &range_sectors.to_le_bytes()); // max_discard_sectors
    put(40, &(MAX_RANGE_SEGS as u32).to_le_bytes()); // max_discard_seg
    put(44, &sectors_per_block.to_le_bytes()); // discard_sector_alignment
    put(48, &range_sectors.to_le_bytes()); // max_write_zeroes_sectors
    put(52, &(MAX_RANGE_SEGS as u32).to_le_bytes()); // max_write_zeroes_seg
    put(56, &[1]); // write_zeroes_may_unmap
                   // 60..96: secure erase and zoned fields, features not offered.
    c
}

/// `size` bytes of `space` at `offset`, or `None` when the range is not inside it.
pub fn read_config(space: &[u8], offset: u32, size: u32) -> Option<Vec<u8>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    space.get(start..end).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn queues_are_dealt_to_threads_in_contiguous_groups() {
        let l = DeviceLimits::new(1 << 20, false, 512, 4, 256);
        let groups = |l: &DeviceLimits| (0..usize::from(l.io_threads)).map(|t| l.thread_queues(t)).collect::<Vec<_>>();
        assert_eq!(groups(&l), [0..1, 1..2, 2..3, 3..4]);
        assert_eq!(groups(&l.clone().with_io_threads(1)), vec![0..4usize]);
        assert_eq!(groups(&l.clone().with_io_threads(3)), [0..1, 1..2, 2..4]);
        // Clamped: never more threads than queues, never none.
        assert_eq!(groups(&l.clone().with_io_threads(9)), [0..1, 1..2, 2..3, 3..4]);
        assert_eq!(groups(&l.clone().with_io_threads(0)), vec![0..4usize]);
        let three = l.with_io_threads(3);
        assert_eq!([0, 1, 2, 3].map(|q| three.queues_of_thread_serving(q)), [0..1, 1..2, 2..4, 2..4]);
    }

    #[test]
    fn layout_matches_the_bindings() {
        assert_eq!(size_of::<virtio_blk_config>(), CONFIG_SPACE_LEN);
        assert_eq!(offset_of!(virtio_blk_config, size_max), 8);
        assert_eq!(offset_of!(virtio_blk_config, seg_max), 12);
        assert_eq!(offset_of!(virtio_blk_config, blk_size), 20);
        assert_eq!(offset_of!(virtio_blk_config, physical_block_exp), 24);
        assert_eq!(offset_of!(virtio_blk_config, min_io_size), 26);
        assert_eq!(offset_of!(virtio_blk_config, opt_io_size), 28);
        assert_eq!(offset_of!(virtio_blk_config, wce) as u32, WCE_OFFSET);
        assert_eq!(offset_of!(virtio_blk_config, num_queues), 34);
        assert_eq!(offset_of!(virtio_blk_config, max_discard_sectors), 36);
        assert_eq!(offset_of!(virtio_blk_config, max_discard_seg), 40);
        assert_eq!(offset_of!(virtio_blk_config, discard_sector_alignment), 44);
        assert_eq!(offset_of!(virtio_blk_config, max_write_zeroes_sectors), 48);
        assert_eq!(offset_of!(virtio_blk_config, max_write_zeroes_seg), 52);
        assert_eq!(offset_of!(virtio_blk_config, write_zeroes_may_unmap), 56);
    }

    #[test]
    fn config_fields() {
        let l = DeviceLimits::new(1 << 30, false, 4096, 4, 256);
        let c = config_space(&l, true);
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 1 << 21);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 254);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 4096);
        assert_eq!(c[32], 1);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 4);
        assert_eq!(u32::from_le_bytes(c[44..48].try_into().unwrap()), 8);
        assert_eq!(c[56], 1);
        assert_eq!(config_space(&l, false)[32], 0);
    }

    #[test]
    fn config_reads_are_bounds_checked() {
        let c = [1u8; CONFIG_SPACE_LEN];
        assert_eq!(read_config(&c, 0, 96).map(|v| v.len()), Some(96));
        assert_eq!(read_config(&c, 95, 1).map(|v| v.len()), Some(1));
        assert_eq!(read_config(&c, 96, 0).map(|v| v.len()), Some(0));
        assert!(read_config(&c, 95, 2).is_none());
        assert!(read_config(&c, u32::MAX, 2).is_none());
        assert!(read_config(&c, 8, u32::MAX).is_none());
    }

    #[test]
    fn features() {
        let rw = DeviceLimits::new(1 << 20, false, 4096, 1, 128);
        let ro = DeviceLimits::new(1 << 20, true, 4096, 1, 128);
        assert_eq!(virtio_features(&rw) & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(virtio_features(&ro) & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(virtio_features(&rw) & (1 << VIRTIO_F_VERSION_1), 0);
        assert_eq!(DeviceLimits::new(1 << 20, false, 1000, 1, 128).block_size, 4096);
    }
}
