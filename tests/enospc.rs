//! A full write-buffer file system (ENOSPC): the data dir lives on a small ext4 image
//! loop-mounted on the host; the object store is elsewhere. A volume is served over
//! vhost-user (the test plays the hypervisor). With the file system filled up by a filler
//! file, guest writes and flushes fail with IOERR (or wait briefly), never hang, and are
//! counted as no-space failures (not a stopped volume); every write that completed OK
//! reads back; once the filler is deleted
//! the same served volume takes writes again without a restart; after a restart every
//! write acknowledged before a completed flush is still there.
//!
//! Needs root and `mount -o loop` (mkfs.ext4 from e2fsprogs); skipped, saying why, where
//! the loop mount is impossible.

mod common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::vhost::{Vm, QSIZE};
use logdisk::config::ByteSize;
use logdisk::frontend::volume_target::VolumeTarget;
use logdisk::frontend::{spawn_device, ServeOptions};
use virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_T_FLUSH;

const OK: u8 = 0;
const IOERR: u8 = 1;
const WRITE: usize = 64 << 10;
const VOLUME: u64 = 256 << 20;

/// A small ext4 file system on a loop device, unmounted on drop.
struct SmallFs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl SmallFs {
    fn mount(mb: u64) -> Result<SmallFs, String> {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let dir = tempfile::tempdir_in("/var/tmp").map_err(|e| e.to_string())?;
        let img = dir.path().join("fs.img");
        File::create(&img).and_then(|f| f.set_len(mb << 20)).map_err(|e| e.to_string())?;
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        run(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt))?;
        Ok(SmallFs { _dir: dir, mnt })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// Fill the file system at `dir` with `path` until writes fail (ENOSPC).
fn fill(path: &Path) -> u64 {
    let mut f = File::create(path).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(w) => n += w as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling: {e}");
                break;
            }
        }
    }
    let _ = f.sync_all();
    n
}

fn data(i: u64) -> Vec<u8> {
    let mut b = vec![0u8; WRITE];
    common::fill_pattern(&mut b, 0xE05 + i, i * (WRITE as u64 / 512));
    b
}

struct Log {
    /// Writes that completed OK, and whether a flush completed OK after them.
    ok: Vec<(u64, bool)>,
    failed: u64,
}

/// Write slots `range` (64 KiB each, distinct offsets), a flush after every 8.
fn write_run(vm: &mut Vm, range: std::ops::Range<u64>, log: &mut Log) {
    let mut since_flush = Vec::new();
    for i in range {
        let t = Instant::now();
        let (st, _) = vm.write(0, i * (WRITE as u64 / 512), &data(i));
        assert!(t.elapsed() < Duration::from_secs(9), "a write took {:?}", t.elapsed());
        assert!(st == OK || st == IOERR, "status {st}");
        if st == OK {
            since_flush.push(log.ok.len());
            log.ok.push((i, false));
        } else {
            log.failed += 1;
        }
        if i % 8 == 7 {
            if vm.simple(0, VIRTIO_BLK_T_FLUSH, 0).0 == OK {
                for k in since_flush.drain(..) {
                    log.ok[k].1 = true;
                }
            } else {
                log.failed += 1;
            }
        }
        vm.reset_bufs();
    }
}

fn check_reads(vol: &logdisk::volume::Volume, log: &Log, flushed_only: bool) -> usize {
    let mut buf = vec![0u8; WRITE];
    let mut n = 0;
    for &(i, flushed) in &log.ok {
        if flushed_only && !flushed {
            continue;
        }
        vol.read_at(i * WRITE as u64, &mut buf).unwrap();
        assert!(buf == data(i), "acknowledged write {i} (flushed {flushed}) does not read back");
        n += 1;
    }
    n
}

#[test]
fn full_write_buffer_fs_fails_writes_loses_nothing_and_recovers() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let fs = match SmallFs::mount(64) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED: cannot loop-mount a small ext4 image ({why}); the ENOSPC test needs root");
            return;
        }
    };
    let store = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut cfg = common::small_config();
    cfg.volume.sco_size = ByteSize(1 << 20);
    cfg.write_buffer.limit = ByteSize(24 << 20);
    let dd_path = fs.mnt.join("dd");
    let mut dd = common::open_dd(&dd_path, store.path(), cfg.clone());
    dd.create_volume("v", VOLUME, None, None).unwrap();
    let vol = dd.open_volume("v", false).unwrap();
    let socket = fs.mnt.join("v.sock");
    let target = Arc::new(VolumeTarget::new(vol.clone(), false));
    let handle =
        spawn_device(&socket, target, &ServeOptions { num_queues: 1, queue_size: QSIZE, ..Default::default() })
            .unwrap();
    let mut vm = Vm::connect(&socket, 1, true);
    let mut log = Log { ok: Vec::new(), failed: 0 };

    // Room to spare: everything succeeds.
    write_run(&mut vm, 0..64, &mut log);
    assert_eq!(log.failed, 0, "writes failed before the file system was full");

    // Full: writes and flushes fail (or wait), they do not hang.
    let filler = fs.mnt.join("filler");
    let filled = fill(&filler);
    eprintln!("filler: {} MiB", filled >> 20);
    write_run(&mut vm, 64..512, &mut log);
    let failed_full = log.failed;
    eprintln!("while full: {} writes ok in all, {} failed requests", log.ok.len(), failed_full);
    assert!(failed_full > 0, "a full file system must fail some requests");
    let no_space = vol.counters.flush_no_space.load(std::sync::atomic::Ordering::Relaxed);
    assert!(no_space > 0, "the failures must be TLog writes refused for space, retried later");
    // Everything that completed OK reads back, even now.
    check_reads(&vol, &log, false);

    // Space comes back: the same served volume takes writes again, no restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut slot = 512;
    loop {
        let before = log.failed;
        write_run(&mut vm, slot..slot + 16, &mut log);
        slot += 16;
        if log.failed == before {
            break;
        }
        assert!(Instant::now() < deadline, "writes still fail 30 s after space came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = log.failed;
    write_run(&mut vm, slot..slot + 64, &mut log);
    assert_eq!(log.failed, before, "writes fail again after space came back");
    let n = check_reads(&vol, &log, false);
    eprintln!("after recovery: {n} acknowledged writes read back");

    // Restart: every write acknowledged before a completed flush survives.
    handle.shutdown().unwrap();
    drop(vm);
    vol.close().unwrap();
    drop(vol);
    drop(dd);
    let mut dd = common::open_dd(&dd_path, store.path(), cfg);
    let vol = dd.open_volume("v", false).unwrap();
    let n = check_reads(&vol, &log, true);
    eprintln!("after restart: {n} flushed writes read back");
    vol.close().unwrap();
}
