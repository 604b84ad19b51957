//! The power-loss workload (`--journal FILE`): every queue writes verifiable patterns
//! (`crashpattern`) to its own part of the region with many requests in flight, sends a
//! FLUSH after every few writes, and records in the journal what it submitted and what
//! completed, in the order it saw it. After each completed FLUSH it adds a mark to a
//! dm-log-writes device (`--dm-mark NAME`, the DM_TARGET_MSG ioctl `dmsetup message NAME
//! 0 mark f<id>` sends), so a replay checker can tell which writes a point of the log must
//! hold. No two writes in flight touch the same block.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::crashpattern;
use crate::worker::{wait_call, QueueCtx, Rng, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_OUT};

#[derive(Clone, Debug)]
pub struct PlSpec {
    pub seed: u64,
    /// Region (bytes).
    pub offset: u64,
    pub len: u64,
    pub bs: u64,
    /// Writes are 1 to this many blocks.
    pub max_blocks: u64,
    /// A queue sends a FLUSH after this many completed writes.
    pub flush_every: u32,
    /// Stop once this many flushes completed (all queues).
    pub flushes: u64,
    pub time: Option<Duration>,
    pub timeout: Duration,
    /// Failed requests are journaled and the run goes on (device-fault tests).
    pub allow_errors: bool,
}

/// `dmsetup message NAME 0 mark M` without a process per mark: the DM_TARGET_MSG ioctl.
pub struct DmMark {
    control: File,
    name: String,
}

const DM_IOCTL_SIZE: usize = 312;
const DM_NAME_OFF: usize = 48;
const DM_TARGET_MSG: libc::c_ulong = (3 << 30) | ((DM_IOCTL_SIZE as libc::c_ulong) << 16) | (0xfd << 8) | 14;

impl DmMark {
    pub fn open(name: &str) -> Result<DmMark> {
        if name.is_empty() || name.len() >= 128 {
            bail!("bad device-mapper name '{name}'");
        }
        let control = File::options()
            .read(true)
            .write(true)
            .open("/dev/mapper/control")
            .context("open /dev/mapper/control (is dm-mod loaded?)")?;
        Ok(DmMark { control, name: name.to_string() })
    }

    pub fn mark(&self, label: &str) -> Result<()> {
        // struct dm_ioctl (312 bytes) then struct dm_target_msg { u64 sector; char message[]; }
        let msg = format!("mark {label}");
        let mut buf = vec![0u64; 1024 / 8];
        // SAFETY: the Vec<u64> owns 1024 initialized, 8-aligned bytes; viewed as bytes.
        let b = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, 1024) };
        let put32 = |b: &mut [u8], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        put32(b, 0, 4); // version 4.0.0
        put32(b, 12, 1024); // data_size: the whole buffer
        put32(b, 16, DM_IOCTL_SIZE as u32); // data_start
        b[DM_NAME_OFF..DM_NAME_OFF + self.name.len()].copy_from_slice(self.name.as_bytes());
        let m = DM_IOCTL_SIZE + 8; // sector 0, then the message
        if m + msg.len() + 1 > 1024 {
            bail!("mark label too long");
        }
        b[m..m + msg.len()].copy_from_slice(msg.as_bytes());
        // SAFETY: DM_TARGET_MSG reads and writes at most data_size (1024) bytes of `buf`.
        let r = unsafe { libc::ioctl(self.control.as_raw_fd(), DM_TARGET_MSG, buf.as_mut_ptr()) };
        if r != 0 {
            bail!("dm message {} 0 {msg}: {}", self.name, std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// State shared by the queue threads.
pub struct Shared {
    journal: Mutex<BufWriter<File>>,
    mark: Option<DmMark>,
    gen: AtomicU64,
    flush_id: AtomicU64,
    pub flushes_done: AtomicU64,
    pub writes_done: AtomicU64,
    pub errors: AtomicU64,
    pub stop: AtomicBool,
}

impl Shared {
    pub fn new(journal: File, mark: Option<DmMark>) -> Shared {
        Shared {
            journal: Mutex::new(BufWriter::with_capacity(1 << 20, journal)),
            mark,
            gen: AtomicU64::new(1),
            flush_id: AtomicU64::new(1),
            flushes_done: AtomicU64::new(0),
            writes_done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    fn line(&self, args: std::fmt::Arguments<'_>) -> Result<()> {
        let mut j = self.journal.lock().expect("journal lock");
        j.write_fmt(args)?;
        Ok(())
    }

    /// Journal `C id`, then the mark, then `M id`, all under the journal lock (so the
    /// marks' order in the log is their order in the journal).
    fn flushed(&self, id: u64) -> Result<()> {
        let mut j = self.journal.lock().expect("journal lock");
        writeln!(j, "C {id}")?;
        if let Some(m) = &self.mark {
            m.mark(&format!("f{id}"))?;
            writeln!(j, "M {id}")?;
        }
        Ok(())
    }

    pub fn finish(&self) -> Result<()> {
        let mut j = self.journal.lock().expect("journal lock");
        writeln!(j, "E")?;
        j.flush()?;
        j.get_ref().sync_all()?;
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Idle,
    Write { gen: u64, block: u64, blocks: u64 },
    Flush { id: u64 },
}

/// Run the workload on one queue with `depth` requests in flight.
pub fn run_queue(ctx: &mut QueueCtx<'_>, spec: &PlSpec, depth: usize, sh: &Shared) -> Result<()> {
    let spb = spec.bs / 512;
    let share = spec.len / spec.bs / ctx.nq as u64;
    if share < spec.max_blocks.max(depth as u64) {
        bail!("region too small: {share} blocks per queue");
    }
    let first_block = spec.offset / spec.bs + ctx.q as u64 * share;
    let mut busy = vec![false; share as usize];
    let mut rng = Rng::new(spec.seed.wrapping_add(ctx.q as u64 * 0x1000_0001));
    let mut slots = vec![Slot::Idle; depth];
    let deadline = spec.time.map(|t| Instant::now() + t);
    let mut since_flush = 0u32;
    let mut flush_inflight = false;
    let mut inflight = 0usize;
    let mut error: Option<String> = None;

    let done = |sh: &Shared| {
        sh.stop.load(Ordering::Relaxed)
            || sh.flushes_done.load(Ordering::Relaxed) >= spec.flushes
            || deadline.is_some_and(|d| Instant::now() >= d)
    };

    // Queue the next request on `slot`; false when the run is over.
    let mut next = |ctx: &mut QueueCtx<'_>,
                    slot: usize,
                    s: &mut Slot,
                    busy: &mut [bool],
                    since_flush: &mut u32,
                    flush_inflight: &mut bool|
     -> Result<bool> {
        if done(sh) {
            return Ok(false);
        }
        let a = ctx.slots[slot];
        if *since_flush >= spec.flush_every && !*flush_inflight {
            let id = sh.flush_id.fetch_add(1, Ordering::Relaxed);
            sh.line(format_args!("F {id}\n"))?;
            ctx.vq.push(slot as u16, &a, VIRTIO_BLK_T_FLUSH, 0, None);
            *s = Slot::Flush { id };
            *since_flush = 0;
            *flush_inflight = true;
            return Ok(true);
        }
        // A random run of 1..=max_blocks free blocks; fall back to one free block.
        let mut pick = None;
        for _ in 0..8 {
            let n = 1 + rng.below(spec.max_blocks);
            let b = rng.below(share - n + 1);
            if !busy[b as usize..(b + n) as usize].iter().any(|x| *x) {
                pick = Some((b, n));
                break;
            }
        }
        let (block, blocks) = match pick {
            Some(p) => p,
            None => {
                let start = rng.below(share);
                let b = (0..share).map(|i| (start + i) % share).find(|b| !busy[*b as usize]);
                (b.expect("fewer requests in flight than blocks"), 1)
            }
        };
        busy[block as usize..(block + blocks) as usize].fill(true);
        let sector = (first_block + block) * spb;
        let len = (blocks * spec.bs) as usize;
        let gen = sh.gen.fetch_add(1, Ordering::Relaxed);
        crashpattern::fill(ctx.mem.slice_mut(a.data, len), spec.seed, gen, sector);
        sh.line(format_args!("W {gen} {sector} {}\n", blocks * spb))?;
        ctx.vq.push(slot as u16, &a, VIRTIO_BLK_T_OUT, sector, Some((len as u32, false)));
        *s = Slot::Write { gen, block, blocks };
        Ok(true)
    };

    for (i, s) in slots.iter_mut().enumerate() {
        if next(ctx, i, s, &mut busy, &mut since_flush, &mut flush_inflight)? {
            inflight += 1;
        }
    }
    if ctx.vq.publish() {
        ctx.kick.write(1)?;
    }
    let mut last_progress = Instant::now();
    while inflight > 0 {
        let used = ctx.vq.used_idx();
        let mut reaped = 0;
        while let Some((slot, _)) = ctx.vq.pop_used(used) {
            reaped += 1;
            let slot = slot as usize;
            let ok = ctx.vq.status(&ctx.slots[slot]) == 0;
            match slots[slot] {
                Slot::Idle => bail!("queue {}: completion for idle slot {slot}", ctx.q),
                Slot::Write { gen, block, blocks } => {
                    busy[block as usize..(block + blocks) as usize].fill(false);
                    if ok {
                        sh.line(format_args!("A {gen}\n"))?;
                        sh.writes_done.fetch_add(1, Ordering::Relaxed);
                        since_flush += 1;
                    } else {
                        sh.line(format_args!("X {gen}\n"))?;
                        sh.errors.fetch_add(1, Ordering::Relaxed);
                        error.get_or_insert_with(|| format!("queue {}: write gen {gen} failed", ctx.q));
                    }
                }
                Slot::Flush { id } => {
                    flush_inflight = false;
                    if ok {
                        sh.flushed(id)?;
                        let n = sh.flushes_done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_multiple_of(500) {
                            eprintln!("logdisk-loadgen: {n} flushes completed");
                        }
                    } else {
                        sh.line(format_args!("Y {id}\n"))?;
                        sh.errors.fetch_add(1, Ordering::Relaxed);
                        error.get_or_insert_with(|| format!("queue {}: flush {id} failed", ctx.q));
                    }
                }
            }
            if error.is_some() && !spec.allow_errors {
                sh.stop.store(true, Ordering::Relaxed);
            }
            let mut s = slots[slot];
            if !next(ctx, slot, &mut s, &mut busy, &mut since_flush, &mut flush_inflight)? {
                s = Slot::Idle;
                inflight -= 1;
            }
            slots[slot] = s;
        }
        if reaped > 0 {
            last_progress = Instant::now();
            if ctx.vq.publish() {
                ctx.kick.write(1)?;
            }
            continue;
        }
        if ctx.vq.arm() {
            continue;
        }
        let waited = last_progress.elapsed();
        if waited >= spec.timeout {
            bail!(
                "queue {}: no completion for {:.1} s with {inflight} request(s) in flight",
                ctx.q,
                waited.as_secs_f64()
            );
        }
        wait_call(&ctx.call, spec.timeout - waited);
    }
    match error {
        Some(e) if !spec.allow_errors => bail!(e),
        _ => Ok(()),
    }
}
