//! The vhost-user-blk device: a `VhostUserBackend` over any [`BlockTarget`].
//!
//! One [`BlkDevice`] exists per hypervisor connection. vhost-user-backend runs one epoll
//! worker thread per group of queues (`--io-threads`; see [`BlkDevice::queues_per_thread`]);
//! each queue has a `WorkerState` with the buffers a request needs (descriptor list, iovec
//! list) and its own io_uring, so the request path allocates nothing. Requests are executed
//! synchronously on the worker thread against the target. Guest-caused problems are
//! answered with a virtio status and logged (rate limited); they never stop a worker.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

use logdisk_shm::{Desc, IoVecBuf};

use super::config::{self, DeviceLimits, CONFIG_SPACE_LEN, ID_BYTES, WCE_OFFSET};
use super::device_inflight::{publish, walk_chain};
use super::inflight::{ChainRef, Inflight, Start};
use super::inflight_region::{InflightRegion, QueueTrack};
use super::request::{execute, parse_request, serial_bytes, ChainDescs, Op, Parsed, STATUS_IOERR};
use super::target::BlockTarget;

/// Guest memory as vhost-user-backend shares it.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// Signal the guest after this many completions even while more requests are queued.
const SIGNAL_BATCH: u32 = 32;

/// Per-worker, reusable request buffers, the requests in flight and log limiter.
pub(super) struct WorkerState {
    chain: ChainDescs,
    iov: IoVecBuf,
    warn: WarnLimiter,
    /// io_uring and in-flight slots (None: io_uring unavailable, requests run inline).
    inflight: Option<Inflight>,
    /// The worker's queue, kept for completing requests from the ring.
    vring: Option<VringRwLock>,
    /// The limits requests are checked against (capacity refreshed after a resize).
    limits: DeviceLimits,
    /// This queue's part of the inflight region (when the hypervisor gave one).
    pub(super) track: Option<QueueTrack>,
    /// Heads left in flight by a previous back-end, to run before new requests (reversed:
    /// the next one is last).
    pub(super) resubmit: Vec<u16>,
    /// Completions waiting to be published: with an inflight region, the target first
    /// logs the completed writes (`BlockTarget::log_completed`) so a daemon crash after
    /// the guest saw them cannot lose them.
    pub(super) ready: Vec<(u16, u32)>,
    /// The ring (re)started: signal the guest after the next pass over it.
    pub(super) notify_after_start: bool,
}

/// Logs the first few guest-caused warnings, then one in 1000, so a hostile guest cannot
/// flood the host's logs.
struct WarnLimiter {
    count: u64,
}

impl WarnLimiter {
    fn allow(&mut self) -> bool {
        self.count += 1;
        self.count <= 20 || self.count.is_multiple_of(1000)
    }
}

/// The vhost-user-blk backend for one connection.
pub struct BlkDevice {
    target: Arc<dyn BlockTarget>,
    limits: DeviceLimits,
    serial: [u8; ID_BYTES],
    mem: RwLock<GuestMem>,
    /// Memory tables received: a queue's ring registers the memory again when it changes.
    mem_gen: AtomicU64,
    event_idx: AtomicBool,
    writeback: AtomicBool,
    acked_features: AtomicU64,
    pub(super) workers: Vec<Mutex<WorkerState>>,
    /// The inflight I/O tracking region (SET_INFLIGHT_FD), if any.
    pub(super) inflight_region: Mutex<Option<std::sync::Arc<InflightRegion>>>,
    /// Exit eventfds that vhost-user-backend registers with its epoll and never closes;
    /// closed by [`BlkDevice::close_leaked_fds`] once the daemon and its workers are gone.
    exit_fds: Mutex<Vec<RawFd>>,
    /// Capacity in sectors now (grows with an online resize).
    capacity: AtomicU64,
    /// The backend-to-frontend channel (BACKEND_REQ), to announce config changes.
    backend_req: Mutex<Option<Backend>>,
}

impl BlkDevice {
    /// A device serving `target` with `limits`, on guest memory `mem`.
    pub fn new(target: Arc<dyn BlockTarget>, limits: DeviceLimits, mem: GuestMem) -> Self {
        let serial = serial_bytes(&target.serial());
        let workers = (0..limits.num_queues)
            .map(|_| {
                let inflight = match Inflight::new(limits.queue_size, limits.iovec_capacity(), limits.register_memory) {
                    Ok(i) => Some(i),
                    Err(e) => {
                        tracing::warn!("io_uring unavailable, requests run one at a time: {e}");
                        None
                    }
                };
                Mutex::new(WorkerState {
                    chain: ChainDescs::with_capacity(limits.max_descriptors()),
                    iov: IoVecBuf::with_capacity(limits.iovec_capacity()),
                    warn: WarnLimiter { count: 0 },
                    inflight,
                    vring: None,
                    limits: limits.clone(),
                    track: None,
                    resubmit: Vec::with_capacity(usize::from(limits.queue_size)),
                    ready: Vec::with_capacity(usize::from(limits.queue_size)),
                    notify_after_start: false,
                })
            })
            .collect();
        BlkDevice {
            capacity: AtomicU64::new(limits.capacity_sectors),
            backend_req: Mutex::new(None),
            target,
            limits,
            serial,
            mem: RwLock::new(mem),
            mem_gen: AtomicU64::new(0),
            event_idx: AtomicBool::new(false),
            writeback: AtomicBool::new(true),
            acked_features: AtomicU64::new(0),
            workers,
            exit_fds: Mutex::new(Vec::new()),
            inflight_region: Mutex::new(None),
        }
    }

    /// The limits the device enforces and advertises.
    pub fn limits(&self) -> &DeviceLimits {
        &self.limits
    }

    /// Close the exit eventfds vhost-user-backend leaked. Call only after the daemon that
    /// used this device (and so its worker threads and epoll sets) has been dropped.
    pub fn close_leaked_fds(&self) {
        for fd in self.exit_fds.lock().drain(..) {
            // SAFETY: `fd` came from `into_raw_fd` in `exit_event`; nothing else owns or
            // closes it, and its only user (the worker's epoll) is gone.
            unsafe { libc::close(fd) };
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut limits = self.limits.clone();
        limits.capacity_sectors = self.capacity.load(Ordering::Acquire);
        config::config_space(&limits, self.writeback.load(Ordering::Relaxed))
    }

    /// The target changed size: serve and advertise the new capacity, and tell the
    /// frontend (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG; QEMU raises a config interrupt).
    /// Returns whether the frontend was told (it must have negotiated BACKEND_REQ).
    pub fn config_changed(&self) -> io::Result<bool> {
        let sectors = self.target.size() / config::SECTOR_SIZE;
        self.capacity.store(sectors, Ordering::Release);
        let Some(backend) = self.backend_req.lock().clone() else { return Ok(false) };
        backend.handle_config_change()?;
        Ok(true)
    }

    /// Process everything available on `vring`, honouring EVENT_IDX.
    fn handle_queue(&self, vring: &VringRwLock, ws: &mut WorkerState, queue: usize) {
        let event_idx = self.event_idx.load(Ordering::Acquire);
        loop {
            if event_idx {
                if let Err(e) = vring.disable_notification() {
                    tracing::warn!(queue, "disable_notification: {e}");
                }
            }
            self.process_queue(vring, ws, queue);
            if !event_idx {
                break;
            }
            // Re-enable notifications; if the driver queued more meanwhile, go again.
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(queue, "enable_notification: {e}");
                    break;
                }
            }
        }
        if std::mem::take(&mut ws.notify_after_start) {
            if let Err(e) = vring.signal_used_queue() {
                tracing::warn!(queue, "signalling the guest after a ring start: {e}");
            }
        }
    }

    fn process_queue(&self, vring: &VringRwLock, ws: &mut WorkerState, queue: usize) {
        let capacity = self.capacity.load(Ordering::Acquire);
        if ws.limits.capacity_sectors != capacity {
            ws.limits.capacity_sectors = capacity;
        }
        let atomic = self.mem.read().clone();
        let mem = atomic.memory();
        // Loaded after the mapping: the table `mem` is at most one newer than `gen`
        // (`Inflight::follow_memory`).
        let gen = self.mem_gen.load(Ordering::Acquire);
        if let Some(inf) = ws.inflight.as_mut() {
            inf.follow_memory(&mem, gen);
        }
        let writeback = self.writeback.load(Ordering::Relaxed);
        let mut pending = 0u32;
        // Requests a previous back-end left in flight go first, oldest first.
        while let Some(head) = ws.resubmit.pop() {
            let (table, size) = {
                let g = vring.get_ref();
                (g.get_queue().desc_table(), g.get_queue().size())
            };
            if let Err(e) = walk_chain(&*mem, GuestAddress(table), size, head, &mut ws.chain) {
                if ws.warn.allow() {
                    tracing::warn!(queue, head, "resubmitted chain: {e}");
                }
                ws.chain.clear();
            }
            self.run_popped(&mem, vring, ws, writeback, queue, head, &mut pending);
        }
        loop {
            let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(&*mem);
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            if let Some(t) = ws.track.as_mut() {
                t.mark(head);
            }
            ws.chain.clear();
            for d in chain {
                ws.chain.push(Desc { addr: d.addr().0, len: d.len(), write_only: d.is_write_only() });
            }
            self.run_popped(&mem, vring, ws, writeback, queue, head, &mut pending);
        }
        if let Some(inf) = ws.inflight.as_mut() {
            inf.submit();
        }
        if pending > 0 {
            self.publish_ready(vring, ws.track.as_ref(), &mut ws.ready, &mut ws.warn, queue);
            self.signal(vring, queue);
        }
    }

    /// Run the request in `ws.chain` (head `head`); publish it unless it went to the ring.
    #[allow(clippy::too_many_arguments)]
    fn run_popped(
        &self,
        mem: &GuestMemoryLoadGuard<GuestMemoryMmap<()>>,
        vring: &VringRwLock,
        ws: &mut WorkerState,
        writeback: bool,
        queue: usize,
        head: u16,
        pending: &mut u32,
    ) {
        let Some(used_len) = self.run_request(mem, ws, writeback, queue, head) else {
            return; // in flight on the ring
        };
        ws.ready.push((head, used_len));
        *pending += 1;
        if *pending >= SIGNAL_BATCH {
            self.publish_ready(vring, ws.track.as_ref(), &mut ws.ready, &mut ws.warn, queue);
            self.signal(vring, queue);
            *pending = 0;
        }
    }

    /// Publish the completions in `ready` (after logging completed writes when tracked).
    fn publish_ready(
        &self,
        vring: &VringRwLock,
        track: Option<&QueueTrack>,
        ready: &mut Vec<(u16, u32)>,
        warn: &mut WarnLimiter,
        queue: usize,
    ) {
        if ready.is_empty() {
            return;
        }
        if track.is_some() {
            if let Err(e) = self.target.log_completed() {
                // Completions still go out: the writes are done, only their crash safety
                // before the next flush is lost (the guest's flush reports the error).
                if warn.allow() {
                    tracing::warn!(queue, "logging completed writes: {e}");
                }
            }
        }
        for &(head, used) in ready.iter() {
            if let Err(e) = publish(vring, track, head, used) {
                if warn.allow() {
                    tracing::warn!(queue, head, "add_used failed: {e}");
                }
            }
        }
        ready.clear();
    }

    /// Complete what the worker's ring has finished (or, with `drain`, everything in
    /// flight), then notify the guest.
    fn complete_ring(&self, ws: &mut WorkerState, queue: usize, drain: bool) {
        let WorkerState { inflight, vring, warn, track, ready, .. } = ws;
        let (Some(inf), Some(vring)) = (inflight.as_mut(), vring.as_ref()) else { return };
        self.complete_into(inf, vring, track.as_ref(), ready, warn, queue, drain);
    }

    #[allow(clippy::too_many_arguments)] // the worker state's parts, borrowed apart
    fn complete_into(
        &self,
        inf: &mut Inflight,
        vring: &VringRwLock,
        track: Option<&QueueTrack>,
        ready: &mut Vec<(u16, u32)>,
        warn: &mut WarnLimiter,
        queue: usize,
        drain: bool,
    ) {
        let writeback = self.writeback.load(Ordering::Relaxed);
        // `ready` may hold synchronous completions of the current batch: publish them too.
        let mut done = |head: u16, used: u32| ready.push((head, used));
        if drain {
            inf.drain(self.target.as_ref(), writeback, &mut done);
        } else {
            inf.complete(self.target.as_ref(), writeback, &mut done);
        }
        if !ready.is_empty() {
            self.publish_ready(vring, track, ready, warn, queue);
            self.signal(vring, queue);
        }
    }

    /// Wait for and complete every request in flight on every worker's ring.
    pub fn drain_all(&self) {
        for (q, w) in self.workers.iter().enumerate() {
            self.complete_ring(&mut w.lock(), q, true);
        }
    }

    /// Each queue's ring eventfd (for the epoll loops), by queue.
    pub fn ring_fds(&self) -> Vec<Option<RawFd>> {
        self.workers.iter().map(|w| w.lock().inflight.as_ref().map(|i| i.eventfd())).collect()
    }

    /// The queues worker thread `t` serves.
    pub fn thread_queues(&self, t: usize) -> std::ops::Range<usize> {
        self.limits.thread_queues(t)
    }

    /// The epoll token of queue `q`'s ring eventfd (above the queue and exit-event tokens).
    pub fn ring_token(&self, q: usize) -> u64 {
        u64::from(self.limits.num_queues) + 1 + q as u64
    }

    /// Parse and run one request; write its status; return the used length, or `None`
    /// when the request went to the ring (it completes later).
    fn run_request(
        &self,
        mem: &GuestMemoryLoadGuard<GuestMemoryMmap<()>>,
        ws: &mut WorkerState,
        writeback: bool,
        queue: usize,
        head: u16,
    ) -> Option<u32> {
        let WorkerState { chain, iov, warn, inflight, vring, limits, track, ready, .. } = ws;
        let mut parsed = parse_request(chain, &**mem, limits, iov);
        if matches!(parsed, Parsed::Run { op: Op::Write { .. }, .. }) && !self.target.write_admitted() {
            // Space is short: complete the writes in flight (scrub waits for their
            // SCOs), then wait for scrub before this write. Reads never wait here.
            if let (Some(inf), Some(vring)) = (inflight.as_mut(), vring.as_ref()) {
                self.complete_into(inf, vring, track.as_ref(), ready, warn, queue, true);
            }
            // So do the writes of the other queues this thread serves: no other thread
            // completes them while this one waits (found as a hang: 2 queues on one
            // thread, a 70/30 job under the space bound). Only this thread locks them
            // besides `stop_vring`/`drain_all`, which hold one queue at a time.
            for q in self.limits.queues_of_thread_serving(queue).filter(|&q| q != queue) {
                if let Some(w) = self.workers.get(q) {
                    self.complete_ring(&mut w.lock(), q, true);
                }
            }
            if let Err(e) = self.target.wait_writable() {
                if warn.allow() {
                    tracing::warn!(queue, "{e}");
                }
            }
        }
        let mut refused = None;
        if let (Parsed::Run { status_addr, op }, Some(inf)) = (&mut parsed, inflight.as_mut()) {
            let chain = ChainRef { head, status_addr: *status_addr };
            let started = match op {
                Op::Read { offset, bufs } => Some(inf.start(self.target.as_ref(), mem, chain, *offset, bufs, false)),
                Op::Write { offset, bufs } => Some(inf.start(self.target.as_ref(), mem, chain, *offset, bufs, true)),
                _ => None,
            };
            match started {
                Some(Start::Started) => return None,
                Some(Start::Finished(used)) => return Some(used),
                Some(Start::Failed(e)) => {
                    if warn.allow() {
                        tracing::warn!(queue, "request failed: {e}");
                    }
                    refused = Some((*status_addr, STATUS_IOERR, 0));
                }
                Some(Start::NotPlanned) | None => {}
            }
        }
        let (status_addr, status, written) = if let Some(r) = refused {
            r
        } else {
            match parsed {
                Parsed::Drop(reason) => {
                    if warn.allow() {
                        tracing::warn!(queue, "dropping descriptor chain: {reason}");
                    }
                    return Some(0);
                }
                Parsed::Fail { status_addr, status, reason } => {
                    if warn.allow() {
                        tracing::warn!(queue, status, "refusing request: {reason}");
                    }
                    (status_addr, status, 0)
                }
                Parsed::Run { status_addr, op } => match execute(op, self.target.as_ref(), &self.serial, writeback) {
                    Ok(out) => (status_addr, super::request::STATUS_OK, out.written),
                    Err(e) => {
                        if warn.allow() {
                            tracing::warn!(queue, "request failed: {e}");
                        }
                        (status_addr, STATUS_IOERR, 0)
                    }
                },
            }
        };
        if let Err(e) = mem.write_obj(status, status_addr) {
            // Cannot happen: the parser checked the address is in guest memory.
            tracing::warn!(queue, "writing the status byte: {e}");
            return Some(0);
        }
        Some(written.saturating_add(1))
    }

    fn signal(&self, vring: &VringRwLock, queue: usize) {
        match vring.needs_notification() {
            Ok(true) => {
                if let Err(e) = vring.signal_used_queue() {
                    tracing::warn!(queue, "signalling the guest: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(queue, "needs_notification: {e}"),
        }
        self.target.completions_signalled();
    }
}

impl VhostUserBackend for BlkDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.limits.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.limits.queue_size)
    }

    fn features(&self) -> u64 {
        config::virtio_features(&self.limits)
    }

    fn acked_features(&self, features: u64) {
        self.acked_features.store(features, Ordering::Release);
        tracing::debug!("virtio features acked: {features:#x}");
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        config::protocol_features()
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        *self.backend_req.lock() = Some(backend);
    }

    fn reset_device(&self) {
        self.writeback.store(true, Ordering::Relaxed);
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config::read_config(&self.config_bytes(), offset, size).unwrap_or_else(|| {
            tracing::warn!(offset, size, "config read outside the config space");
            Vec::new()
        })
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only the writeback flag is writable (VIRTIO_BLK_F_CONFIG_WCE).
        match (offset, buf) {
            (WCE_OFFSET, [wce @ (0 | 1)]) => {
                self.writeback.store(*wce == 1, Ordering::Relaxed);
                tracing::debug!(writeback = *wce == 1, "guest set the write cache mode");
                Ok(())
            }
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "only the wce byte of the config space is writable")),
        }
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        // Crash tests: the daemon dies while the hypervisor is sending its memory table.
        crate::fault::point("vhost-mem-table");
        let mut m = self.mem.write();
        *m = mem;
        self.mem_gen.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..usize::from(self.limits.io_threads))
            .map(|t| self.limits.thread_queues(t).map(|q| 1u64 << q).sum())
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok((consumer, notifier)) => {
                self.exit_fds.lock().push(consumer.as_raw_fd());
                Some((consumer, notifier))
            }
            Err(e) => {
                tracing::error!("creating a worker exit eventfd: {e}");
                None
            }
        }
    }

    fn get_inflight_fd(&self, request: &VhostUserInflight) -> io::Result<(VhostUserInflight, std::fs::File)> {
        self.inflight_get(request)
    }

    fn set_inflight_fd(&self, inflight: &VhostUserInflight, file: std::fs::File) -> io::Result<()> {
        self.inflight_set(inflight, file)
    }

    fn vring_starting(&self, queue_index: u32, vring: &VringRwLock) -> io::Result<()> {
        self.inflight_ring_start(queue_index, vring)
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: the ring is already marked not ready and unregistered; wait for
        // the worker to finish the requests it is executing, so that the returned avail
        // index only covers completed requests.
        if let Some(ws) = self.workers.get(queue_index as usize) {
            let mut ws = ws.lock();
            self.complete_ring(&mut ws, queue_index as usize, true);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            tracing::warn!(thread_id, ?evset, "unexpected event set");
            return Ok(());
        }
        // A queue's kick comes as its index among this thread's queues (`vrings`); its
        // ring's completions with its ring token.
        let mine = self.limits.thread_queues(thread_id);
        let ring = u64::from(device_event).checked_sub(self.ring_token(0)).map(|q| q as usize);
        let queue = ring.unwrap_or(mine.start + usize::from(device_event));
        let local = queue.wrapping_sub(mine.start);
        let (true, Some(vring), Some(ws)) = (mine.contains(&queue), vrings.get(local), self.workers.get(queue)) else {
            tracing::warn!(thread_id, device_event, "event for an unknown queue");
            return Ok(());
        };
        let mut ws = ws.lock();
        if ring.is_some() {
            self.complete_ring(&mut ws, queue, false);
            return Ok(());
        }
        if ws.vring.is_none() {
            ws.vring = Some(vring.clone());
        }
        self.handle_queue(vring, &mut ws, queue);
        Ok(())
    }
}

impl BlkDevice {
    /// Features the driver acked (0 before negotiation).
    pub fn acked_features_bits(&self) -> u64 {
        self.acked_features.load(Ordering::Acquire)
    }

    /// True when the driver negotiated VIRTIO_RING_F_EVENT_IDX.
    pub fn event_idx_enabled(&self) -> bool {
        self.acked_features_bits() & (1 << VIRTIO_RING_F_EVENT_IDX) != 0
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
