//! SCOs uploaded by hard link get their frame checksums from the cluster checksums taken
//! as the data was written, without reading the data back. A cluster whose buffer changed
//! while its write ran has no trustworthy checksum: its frame is read back from the file
//! at upload. Either way every frame of the stored object must verify and hold what is
//! on disk. Large writes carry their checksums too: nothing of them is read back.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logdisk::backend::{keys, sco_object, ObjectStore};
use logdisk::volume::plan::IoPlan;
use logdisk::volume::{EngineOptions, Volume};

fn options() -> EngineOptions {
    EngineOptions { frame_size: 16 << 10, seal_after: None, link_local: true, ..EngineOptions::default() }
}

fn wait_uploaded(vol: &Volume) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while vol.stats().pending_epochs > 0 {
        assert!(Instant::now() < deadline, "uploads did not finish: {:?}", vol.stats().upload_error);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every SCO object of volume "v": decode each frame (checksum verified) and return the
/// raw bytes per SCO number.
fn verified_objects(store: &dyn ObjectStore) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for o in store.list(&keys::volume_prefix("v")).unwrap() {
        let Some((_, "sco", n)) = keys::parse_data_key("v", &o.key) else { continue };
        let obj = store.get(&o.key).unwrap();
        let index = sco_object::parse_object_index(&o.key, &obj).unwrap();
        let mut raw = vec![0u8; index.raw_len as usize];
        for i in 0..index.frames.len() {
            let (a, len) = index.stored_range(i, i);
            let fs = index.frame_size as usize;
            let out_range = i * fs..i * fs + index.frames[i].raw_len as usize;
            index
                .decode_frame(&o.key, i, &mut obj[a as usize..(a + len) as usize].to_vec(), &mut raw[out_range])
                .unwrap();
        }
        out.push((n, raw));
    }
    assert!(!out.is_empty(), "no SCO object was uploaded");
    out
}

/// A small volume over a local directory store on a real disk (hard links, O_DIRECT).
struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
    env: Arc<logdisk::volume::VolumeEnv>,
    vol: Arc<Volume>,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(logdisk::backend::local::LocalStore::open(&dir.path().join("objects")).unwrap());
        let (env, vol) = common::small_volume(store.clone(), dir.path(), options());
        Setup { _dir: dir, store, env, vol }
    }

    /// Seal, wait for every upload, and return the raw bytes of all SCO objects in order
    /// (every frame verified).
    fn upload_all(&self) -> Vec<u8> {
        self.vol.seal().unwrap();
        wait_uploaded(&self.vol);
        verified_objects(self.store.as_ref()).into_iter().flat_map(|(_, raw)| raw).collect()
    }

    fn finish(self) {
        self.vol.close().unwrap();
        self.env.uploader.stop();
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8).collect()
}

#[test]
fn written_clusters_upload_without_reading_back() {
    let v = Setup::new();
    let vol = &v.vol;
    let image = pattern(3 << 20, 1);
    // Odd-sized writes, so buffers cut clusters at many places.
    let mut at = 0usize;
    for step in [4096usize, 12288, 65536, 8192, 4096 * 5].iter().cycle() {
        if at >= image.len() {
            break;
        }
        let n = (*step).min(image.len() - at);
        vol.write_at(at as u64, &image[at..at + n]).unwrap();
        at += n;
    }
    let raw = v.upload_all();
    assert_eq!(vol.stats().upload_frames_read, 0, "every frame's checksum came from the (small) writes");
    assert!(raw == image, "each cluster written once, in order, all in objects");
    let mut got = vec![0u8; image.len()];
    vol.read_at(0, &mut got).unwrap();
    assert!(got == image);
    v.finish();
}

#[test]
fn a_buffer_changed_during_its_write_is_read_back_at_upload() {
    let v = Setup::new();
    let vol = &v.vol;
    vol.write_at(0, &pattern(64 << 10, 2)).unwrap();

    // A planned write of 4 clusters at 64 KiB, performed here as the frontend would;
    // the "guest" changes cluster 2 of its buffer after the checksums were taken and
    // before the data reached the disk.
    let mut buf = pattern(16 << 10, 3);
    let mut plan = IoPlan::default();
    assert!(vol.plan_write(64 << 10, buf.len() as u64, &mut plan).unwrap());
    let iov = [libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() }];
    unsafe { plan.checksum_before(&iov) };
    buf[2 * 4096 + 100] ^= 0xff;
    let on_disk = buf.clone();
    let mut at = 0usize;
    for s in plan.segs() {
        let f = unsafe {
            std::mem::ManuallyDrop::new(<std::fs::File as std::os::unix::io::FromRawFd>::from_raw_fd(s.fd_buffered))
        };
        f.write_all_at(&buf[at..at + s.len as usize], s.file_offset).unwrap();
        at += s.len as usize;
    }
    unsafe { plan.checksum_after(&iov) };
    vol.finish_write(&mut plan, true).unwrap();

    let raw = v.upload_all();
    // 16 KiB frames: the first 4 came from the 64 KiB write, the fifth has the changed cluster.
    assert_eq!(vol.stats().upload_frames_read, 1, "only the frame of the changed cluster is read back");
    // The object verifies and holds what reached the disk.
    assert_eq!(raw.len(), 80 << 10);
    assert!(raw[64 << 10..] == on_disk[..]);
    let mut got = vec![0u8; 16 << 10];
    vol.read_at(64 << 10, &mut got).unwrap();
    assert!(got == on_disk);
    v.finish();
}

#[test]
fn large_writes_carry_their_checksums() {
    let v = Setup::new();
    let vol = &v.vol;
    let image = pattern(1 << 20, 4);
    vol.write_at(0, &image).unwrap();
    let raw = v.upload_all();
    // 1 MiB in 16 KiB frames, none read back: the write took its checksums.
    assert_eq!(vol.stats().upload_frames_read, 0, "a 1 MiB write was read back at upload");
    assert!(raw == image);
    v.finish();
}
