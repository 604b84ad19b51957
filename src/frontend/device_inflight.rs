//! Inflight I/O tracking on the device: the region messages, ring start after a
//! reconnect (indexes and resubmission), and publishing used elements with the region's
//! bracketing. The region itself is [`super::inflight_region`].

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vhost::vhost_user::message::VhostUserInflight;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use logdisk_shm::Desc;

use parking_lot::Mutex;

use super::device::{BlkDevice, WorkerState};
use super::inflight_region::{self, InflightRegion, QueueTrack};
use super::request::ChainDescs;

/// Put `head` on the used ring with `len`, bracketed in the inflight region (if tracked).
pub(super) fn publish(
    vring: &VringRwLock,
    track: Option<&QueueTrack>,
    head: u16,
    len: u32,
) -> Result<(), virtio_queue::Error> {
    if let Some(t) = track {
        t.before_publish(head);
    }
    let r = vring.add_used(head, len);
    if let Some(t) = track {
        let used = vring.get_ref().get_queue().next_used();
        t.after_publish(head, used);
    }
    r
}

/// Collect the descriptors of the chain starting at `head` of a split ring whose
/// descriptor table is at `table` with `size` entries (indirect tables followed), as
/// popping it from the available ring would.
pub(super) fn walk_chain<M: GuestMemory>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
    out: &mut ChainDescs,
) -> Result<(), &'static str> {
    out.clear();
    let (mut table, mut len, mut idx) = (table, u32::from(size), head);
    let mut indirect = false;
    let mut seen = 0u32;
    loop {
        if u32::from(idx) >= len {
            return Err("descriptor index beyond its table");
        }
        let at = table.0.checked_add(16 * u64::from(idx)).ok_or("descriptor address overflows")?;
        let addr: u64 = mem.read_obj(GuestAddress(at)).map_err(|_| "descriptor outside guest memory")?;
        let dlen: u32 = mem.read_obj(GuestAddress(at + 8)).map_err(|_| "descriptor outside guest memory")?;
        let flags: u16 = mem.read_obj(GuestAddress(at + 12)).map_err(|_| "descriptor outside guest memory")?;
        let next: u16 = mem.read_obj(GuestAddress(at + 14)).map_err(|_| "descriptor outside guest memory")?;
        let (addr, dlen, flags, next) =
            (u64::from_le(addr), u32::from_le(dlen), u16::from_le(flags), u16::from_le(next));
        if u32::from(flags) & VRING_DESC_F_INDIRECT != 0 {
            if indirect {
                return Err("nested indirect descriptor table");
            }
            if dlen == 0 || dlen % 16 != 0 || dlen / 16 > 65536 {
                return Err("bad indirect descriptor table length");
            }
            (table, len, idx, indirect) = (GuestAddress(addr), dlen / 16, 0, true);
            continue;
        }
        out.push(Desc { addr, len: dlen, write_only: u32::from(flags) & VRING_DESC_F_WRITE != 0 });
        seen += 1;
        if seen > len {
            return Err("descriptor chain loops");
        }
        if u32::from(flags) & VRING_DESC_F_NEXT == 0 {
            return Ok(());
        }
        idx = next;
    }
}

impl BlkDevice {
    /// `GET_INFLIGHT_FD`: a fresh zeroed region for the hypervisor to keep.
    pub(super) fn inflight_get(&self, request: &VhostUserInflight) -> io::Result<(VhostUserInflight, File)> {
        let (reply, file) = inflight_region::allocate(request)?;
        tracing::debug!(queues = request.num_queues, queue_size = request.queue_size, "inflight region allocated");
        Ok((reply, file))
    }

    /// `SET_INFLIGHT_FD`: track requests in this region from now on.
    pub(super) fn inflight_set(&self, inflight: &VhostUserInflight, file: File) -> io::Result<()> {
        let region = InflightRegion::map(inflight, &file).inspect_err(|e| tracing::warn!("SET_INFLIGHT_FD: {e}"))?;
        tracing::debug!(queues = region.num_queues(), "inflight region set");
        *self.inflight_region.lock() = Some(region);
        Ok(())
    }

    /// The ring of `queue` starts: with an inflight region, set its next available index
    /// to used index + requests the previous back-end left marked and queue those requests
    /// for resubmission (oldest first, before any new one). In every case, kick the worker
    /// so they, and whatever the guest queued meanwhile, run even if the guest never kicks
    /// again, and have its first pass signal the guest once: a previous back-end may have
    /// published completions and signalled while the hypervisor had its notifiers torn
    /// down (restart, reconnect), and a guest that missed that interrupt waits forever.
    pub(super) fn inflight_ring_start(&self, queue: u32, vring: &VringRwLock) -> io::Result<()> {
        let Some(ws) = self.workers.get(queue as usize) else { return Ok(()) };
        ws.lock().notify_after_start = true;
        let restored = self.restore_from_region(queue, vring, ws);
        kick(queue, vring);
        restored
    }

    fn restore_from_region(&self, queue: u32, vring: &VringRwLock, ws: &Mutex<WorkerState>) -> io::Result<()> {
        let Some(region) = self.inflight_region.lock().clone() else { return Ok(()) };
        let Some(mut track) = u16::try_from(queue).ok().and_then(|q| region.queue(q)) else {
            tracing::warn!(queue, "the inflight region has no room for this queue: not tracked");
            return Ok(());
        };
        let used = vring.queue_used_idx().map_err(|e| io::Error::other(format!("reading the used index: {e}")))?;
        let size = vring.get_ref().get_queue().size();
        let restored = track.restore(used, size).inspect_err(|e| tracing::warn!(queue, "inflight region: {e}"))?;
        // Crash tests: the daemon dies after repairing the region, before resubmitting.
        crate::fault::point("vhost-ring-start");
        if let Some(next) = restored.next_avail {
            vring.set_queue_next_avail(next);
            vring.set_queue_next_used(used);
        }
        let n = restored.resubmit.len();
        let mut ws = ws.lock();
        ws.resubmit.clear();
        ws.resubmit.extend(restored.resubmit.iter().rev());
        ws.track = Some(track);
        drop(ws);
        if n > 0 {
            tracing::info!(queue, requests = n, used, "resubmitting requests left in flight by the previous back-end");
        }
        Ok(())
    }
}

/// Kick the worker of a starting ring: the previous back-end may have consumed the
/// guest's last kick and died before taking the requests it announced; with EVENT_IDX
/// the guest does not kick again for them, and it would wait forever.
fn kick(queue: u32, vring: &VringRwLock) {
    if let Some(kick) = vring.get_ref().get_kick() {
        let one = 1u64;
        // SAFETY: an 8-byte write from a live u64 to the ring's kick eventfd.
        let r = unsafe { libc::write(kick.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if r != 8 {
            tracing::warn!(queue, "kicking the worker: {}", io::Error::last_os_error());
        }
    }
}
