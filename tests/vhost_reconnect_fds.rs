//! Reconnecting many times neither leaks file descriptors nor threads in the daemon.
//! (Its own test binary: it counts the process's fds, which other tests would disturb.)

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logdisk::frontend::target::BlockTarget;
use logdisk::frontend::{spawn_device, ServeOptions};
use vhost::vhost_user::Frontend;
use vhost::VhostBackend;

struct Null;

impl BlockTarget for Null {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_only(&self) -> bool {
        false
    }
    fn serial(&self) -> String {
        "null".into()
    }
    fn read_vectored(&self, _: u64, _: &mut [IoSliceMut<'_>]) -> io::Result<()> {
        Ok(())
    }
    fn write_vectored(&self, _: u64, _: &[IoSlice<'_>]) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Ok(())
    }
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn reconnects_do_not_leak_fds_or_threads() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("r.sock");
    let opts = ServeOptions { num_queues: 4, ..ServeOptions::default() };
    let h = spawn_device(&socket, Arc::new(Null), &opts).unwrap();
    let cycle = |h: &logdisk::frontend::DeviceHandle, n: u64| {
        let fe = Frontend::connect(&socket, 4).unwrap();
        fe.set_owner().unwrap();
        let f = fe.get_features().unwrap();
        fe.set_features(f).unwrap();
        drop(fe);
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.connections() < n || h.is_connected() {
            assert!(Instant::now() < deadline, "disconnect not noticed");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    cycle(&h, 1);
    // Let the daemon finish tearing down the first connection.
    std::thread::sleep(Duration::from_millis(100));
    let (fds, threads) = (count("/proc/self/fd"), count("/proc/self/task"));
    for n in 2..=21 {
        cycle(&h, n);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(h.connections(), 21);
    assert_eq!(count("/proc/self/fd"), fds, "fds leaked across reconnects");
    assert_eq!(count("/proc/self/task"), threads, "threads leaked");
    h.shutdown().unwrap();
}
