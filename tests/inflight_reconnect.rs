//! Restart under a running "guest", protocol level (no VM): a frontend keeps 64 requests
//! in flight on each of 2 queues (8 KiB reads and writes, through the io_uring path), the
//! daemon (`logdisk serve`, a real child process) is killed with -9 at a random moment, a
//! new one is started and the frontend reconnects with the same memory, rings and inflight
//! region (as QEMU with `reconnect-ms` does). Every request must complete exactly once with
//! an OK status, reads must return their pattern, and at the end the write area must read
//! back exactly as the model of completed writes says — including writes the guest saw
//! completed before a kill and never flushed. A last round restarts with SIGTERM.

mod common;

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};
use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::{Bytes, GuestAddress};

use common::cli::ok;
use common::fill_pattern;
use common::vhost::{InflightFd, Vm, QSIZE};

const QUEUES: usize = 2;
const DEPTH: usize = 64;
const BLOCK: u64 = 8 << 10;
const SECTORS: u64 = BLOCK / 512;
/// Writes go to blocks 0..WRITE_BLOCKS, reads to READ_FIRST.. (prefilled with READ_TAG).
const WRITE_BLOCKS: u64 = 2048;
const READ_FIRST: u64 = 4096;
const READ_BLOCKS: u64 = 512;
const READ_TAG: u64 = 0xAAAA;

struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(data: &Path, socket: &Path) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_logdisk"))
            .arg("--data-dir")
            .arg(data)
            .arg("serve")
            .arg("--socket")
            .arg(socket)
            .args(["--num-queues", "2", "v"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        // A socket left by a killed daemon exists already: wait until the new one answers.
        while std::os::unix::net::UnixStream::connect(socket).is_err()
            || !std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket())
        {
            assert!(t0.elapsed() < Duration::from_secs(60), "daemon did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        Daemon { child }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request slot of a queue: fixed descriptors (3 per slot), header, data, status.
#[derive(Clone, Copy)]
struct Busy {
    write: bool,
    block: u64,
    tag: u64,
}

struct Driver {
    vm: Vm,
    busy: Vec<Vec<Option<Busy>>>,
    /// Blocks with a write in flight (no second write to them until it completes).
    writing: HashSet<u64>,
    /// Tag of the last completed write per block (0: never written).
    model: Vec<u64>,
    next_tag: u64,
    rng: StdRng,
    completed: u64,
    submitting: bool,
    /// Kick after publishing (off right after a reconnect: the back-end must start alone).
    kicking: bool,
}

fn data_addr(q: usize, k: usize) -> u64 {
    (1 << 20) + ((q * DEPTH + k) as u64) * BLOCK
}
fn hdr_addr(q: usize, k: usize) -> u64 {
    (3 << 20) + ((q * DEPTH + k) as u64) * 32
}

impl Driver {
    fn submit(&mut self, q: usize, k: usize) {
        let write = self.rng.gen_bool(0.5);
        let (block, tag) = if write {
            let mut b = self.rng.gen_range(0..WRITE_BLOCKS);
            while self.writing.contains(&b) {
                b = self.rng.gen_range(0..WRITE_BLOCKS);
            }
            self.writing.insert(b);
            self.next_tag += 1;
            (b, self.next_tag)
        } else {
            (READ_FIRST + self.rng.gen_range(0..READ_BLOCKS), READ_TAG)
        };
        let (data, hdr) = (data_addr(q, k), hdr_addr(q, k));
        let mem = &self.vm.mem;
        let mut buf = vec![0u8; BLOCK as usize];
        if write {
            fill_pattern(&mut buf, tag, block * SECTORS);
        }
        mem.write_slice(&buf, GuestAddress(data)).unwrap();
        let t = if write { VIRTIO_BLK_T_OUT } else { VIRTIO_BLK_T_IN };
        mem.write_obj(t, GuestAddress(hdr)).unwrap();
        mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
        mem.write_obj(block * SECTORS, GuestAddress(hdr + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(hdr + 16)).unwrap();
        let dflags = if write { 0 } else { VRING_DESC_F_WRITE as u16 };
        let vq = &mut self.vm.vqs[q];
        vq.next_desc = (3 * k) as u16;
        let head = vq.write_raw_chain(
            mem,
            &[(hdr, 16, 0, None), (data, BLOCK as u32, dflags, None), (hdr + 16, 1, VRING_DESC_F_WRITE as u16, None)],
        );
        assert_eq!(head as usize, 3 * k);
        vq.publish(mem, head);
        self.busy[q][k] = Some(Busy { write, block, tag });
    }

    /// Handle every new used entry; resubmit freed slots while `submitting`; kick.
    fn poll(&mut self) -> usize {
        let mut n = 0;
        for q in 0..QUEUES {
            let used = self.vm.vqs[q].used_idx(&self.vm.mem);
            let new = used.wrapping_sub(self.vm.vqs[q].used_seen);
            if new == 0 {
                continue;
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            let vq = &mut self.vm.vqs[q];
            let entries: Vec<(u32, u32)> = (0..new)
                .map(|i| {
                    let e = vq.used_addr() + 4 + 8 * u64::from(vq.used_seen.wrapping_add(i) % vq.size);
                    (self.vm.mem.read_obj(GuestAddress(e)).unwrap(), self.vm.mem.read_obj(GuestAddress(e + 4)).unwrap())
                })
                .collect();
            vq.used_seen = used;
            for (id, len) in entries {
                let k = id as usize / 3;
                assert!(id % 3 == 0 && k < DEPTH, "queue {q}: used entry for unknown head {id}");
                let b = self.busy[q][k].take().unwrap_or_else(|| panic!("queue {q}: head {id} completed twice"));
                let st: u8 = self.vm.mem.read_obj(GuestAddress(hdr_addr(q, k) + 16)).unwrap();
                assert_eq!(st, VIRTIO_BLK_S_OK as u8, "queue {q} head {id} status");
                if b.write {
                    assert_eq!(len, 1, "write used length");
                    self.writing.remove(&b.block);
                    self.model[b.block as usize] = b.tag;
                } else {
                    assert_eq!(len, BLOCK as u32 + 1, "read used length");
                    let mut got = vec![0u8; BLOCK as usize];
                    self.vm.mem.read_slice(&mut got, GuestAddress(data_addr(q, k))).unwrap();
                    let mut want = vec![0u8; BLOCK as usize];
                    fill_pattern(&mut want, READ_TAG, b.block * SECTORS);
                    assert!(got == want, "queue {q} head {id}: read of block {} returned wrong data", b.block);
                }
                self.completed += 1;
                n += 1;
                if self.submitting {
                    self.submit(q, k);
                }
            }
            if self.kicking {
                self.vm.vqs[q].kick();
            }
        }
        n
    }

    fn outstanding(&self) -> usize {
        self.busy.iter().flatten().filter(|b| b.is_some()).count()
    }

    fn run_for(&mut self, d: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < d {
            if self.poll() == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    fn drain(&mut self) {
        self.submitting = false;
        let t0 = Instant::now();
        while self.outstanding() > 0 {
            assert!(t0.elapsed() < Duration::from_secs(30), "{} requests never completed", self.outstanding());
            if self.poll() == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Descriptors marked in flight in the region (split layout v1), per queue.
fn marked(inflight: &InflightFd) -> Vec<usize> {
    let len = inflight.desc.mmap_size as usize;
    // SAFETY: a read-only shared mapping of the region file, unmapped below.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, inflight.file.as_raw_fd(), 0)
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: `len` bytes are mapped at `p`.
    let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
    let per_q = logdisk::frontend::inflight_region::queue_region_size(QSIZE);
    let out =
        (0..QUEUES).map(|q| (0..QSIZE as usize).filter(|&d| bytes[q * per_q + 16 + 16 * d] == 1).count()).collect();
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(p, len) };
    out
}

#[test]
fn kill_9_with_requests_in_flight_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let socket: PathBuf = dir.path().join("v.sock");
    ok(&data, &["volume", "create", "v", "--size", "64M"]);
    let mut daemon = Daemon::start(&data, &socket);
    let (mut vm, inflight) = Vm::connect_inflight(&socket, QUEUES);

    // The read area holds a known pattern (flushed).
    for i in 0..READ_BLOCKS / 8 {
        vm.reset_bufs();
        let sector = (READ_FIRST + i * 8) * SECTORS;
        let mut b = vec![0u8; 8 * BLOCK as usize];
        fill_pattern(&mut b, READ_TAG, sector);
        assert_eq!(vm.write(0, sector, &b).0, VIRTIO_BLK_S_OK as u8);
    }
    assert_eq!(vm.simple(0, VIRTIO_BLK_T_FLUSH, 0).0, VIRTIO_BLK_S_OK as u8);
    // The slots' descriptors start right after what the prefill used: reset the rings'
    // descriptor allocation; every prefill request has completed.
    let seed = std::env::var("SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("SEED={seed}");
    let mut d = Driver {
        vm,
        busy: vec![vec![None; DEPTH]; QUEUES],
        writing: HashSet::new(),
        model: vec![0; WRITE_BLOCKS as usize],
        next_tag: 1,
        rng: StdRng::seed_from_u64(seed),
        completed: 0,
        submitting: true,
        kicking: true,
    };
    for q in 0..QUEUES {
        for k in 0..DEPTH {
            d.submit(q, k);
        }
        d.vm.vqs[q].kick();
    }
    let mut resubmitted = 0;
    for round in 0..4 {
        let ms = d.rng.gen_range(100..400);
        d.run_for(Duration::from_millis(ms));
        let graceful = round == 3;
        if graceful {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
            assert!(daemon.child.wait().unwrap().success(), "SIGTERM exit status");
        } else {
            daemon.child.kill().unwrap();
            daemon.child.wait().unwrap();
        }
        let left = marked(&inflight);
        let before = d.completed;
        // Completions published just before the end; the "guest" goes on queueing requests
        // (not seen by anyone until the reconnect).
        d.poll();
        eprintln!(
            "round {round} ({}): {ms} ms, {} completed so far, {} outstanding, marked in flight {left:?}",
            if graceful { "SIGTERM" } else { "kill -9" },
            before,
            d.outstanding()
        );
        if graceful {
            assert_eq!(left, vec![0; QUEUES], "a SIGTERM'd daemon completes what it took");
        }
        resubmitted += left.iter().sum::<usize>();
        // The dead back-end may have consumed the last kicks; the "guest" queued requests
        // since and, with EVENT_IDX, need not kick for them: the new back-end must look.
        for vq in &d.vm.vqs {
            let _ = vq.kick.read();
        }
        d.kicking = false;
        daemon = Daemon::start(&data, &socket);
        let t0 = Instant::now();
        d.vm.reconnect(&socket, &inflight);
        let u0: Vec<u16> = d.vm.vqs.iter().map(|v| v.used_seen).collect();
        while d.vm.vqs.iter().zip(&u0).any(|(v, u)| v.used_seen == *u) {
            assert!(t0.elapsed() < Duration::from_secs(20), "a queue completes nothing after the reconnect (no kick)");
            d.poll();
        }
        d.kicking = true;
        for vq in &d.vm.vqs {
            vq.kick();
        }
        eprintln!("round {round}: first completion {:?} after the daemon was up", t0.elapsed());
    }
    assert!(resubmitted > 0, "no kill caught a request in flight: resubmission not exercised");
    d.run_for(Duration::from_millis(100));
    d.drain();
    eprintln!("{} requests completed, {resubmitted} left in flight by killed daemons", d.completed);

    // Every completed write reads back, from this daemon and after one more kill -9.
    for pass in 0..2 {
        let vm = &mut d.vm;
        for b in 0..WRITE_BLOCKS {
            vm.reset_bufs();
            let (st, _, got) = vm.read(0, b * SECTORS, BLOCK as usize);
            assert_eq!(st, VIRTIO_BLK_S_OK as u8);
            let tag = d.model[b as usize];
            let mut want = vec![0u8; BLOCK as usize];
            if tag != 0 {
                fill_pattern(&mut want, tag, b * SECTORS);
            }
            assert!(got == want, "pass {pass}: block {b} (last write tag {tag}) differs");
        }
        if pass == 0 {
            daemon.child.kill().unwrap();
            daemon.child.wait().unwrap();
            daemon = Daemon::start(&data, &socket);
            vm.reconnect(&socket, &inflight);
        }
    }
    drop(daemon);
}
