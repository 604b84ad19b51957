//! Unit tests of the device: config space access and the queue-to-worker mapping.
use super::*;

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
    fn read_vectored(&self, _: u64, _: &mut [io::IoSliceMut<'_>]) -> io::Result<()> {
        Ok(())
    }
    fn write_vectored(&self, _: u64, _: &[io::IoSlice<'_>]) -> io::Result<()> {
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

fn device() -> BlkDevice {
    let limits = DeviceLimits::new(1 << 20, false, 4096, 2, 128);
    BlkDevice::new(Arc::new(Null), limits, GuestMemoryAtomic::new(GuestMemoryMmap::new()))
}

#[test]
fn config_access_is_bounds_checked() {
    let d = device();
    assert_eq!(d.get_config(0, 60).len(), 60);
    assert_eq!(d.get_config(34, 2), vec![2, 0]);
    assert!(d.get_config(0, 200).is_empty());
    assert!(d.get_config(0x800, 4).is_empty());
    assert!(d.get_config(u32::MAX, u32::MAX).is_empty());
    d.set_config(WCE_OFFSET, &[0]).unwrap();
    assert_eq!(d.get_config(WCE_OFFSET, 1), vec![0]);
    assert!(d.set_config(WCE_OFFSET, &[2]).is_err());
    assert!(d.set_config(0, &[0; 8]).is_err());
    d.reset_device();
    assert_eq!(d.get_config(WCE_OFFSET, 1), vec![1]);
}

#[test]
fn one_worker_per_queue() {
    let d = device();
    assert_eq!(d.queues_per_thread(), vec![1, 2]);
    assert_eq!(d.num_queues(), 2);
    assert_eq!(d.max_queue_size(), 128);
    let exit = d.exit_event(0);
    assert!(exit.is_some());
    drop(exit);
    // The consumer fd was already closed by dropping it; forget it instead of closing
    // a number that may be reused.
    d.exit_fds.lock().clear();
}
