//! A volume, or a read-only snapshot view of one, as an NBD [`ExportTarget`]: reads and
//! writes go to the volume engine, allocation comes from its map
//! ([`Volume::extents`]), changed blocks from its snapshot maps.

use std::io;
use std::sync::Arc;

use super::ExportTarget;
use crate::volume::extents::ChangedExtent;
use crate::volume::Volume;

/// Answers `logdisk:changed-since:SNAP` for a snapshot export.
pub type ChangedFn = Box<dyn Fn(&str) -> crate::Result<Vec<ChangedExtent>> + Send + Sync>;

pub struct VolumeExport {
    vol: Arc<Volume>,
    read_only: bool,
    changed: Option<ChangedFn>,
}

impl VolumeExport {
    pub fn new(vol: Arc<Volume>, read_only: bool) -> VolumeExport {
        VolumeExport { read_only: read_only || vol.read_only(), vol, changed: None }
    }

    /// Offer `logdisk:changed-since:SNAP`, answered by `f(SNAP)`.
    pub fn with_changed(mut self, f: ChangedFn) -> VolumeExport {
        self.changed = Some(f);
        self
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.vol
    }
}

fn iov(buf: &[u8]) -> [libc::iovec; 1] {
    [libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() }]
}

impl ExportTarget for VolumeExport {
    fn size(&self) -> u64 {
        self.vol.size()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn block_size(&self) -> u32 {
        self.vol.cluster_size() as u32
    }

    fn description(&self) -> String {
        format!("logdisk volume {}{}", self.vol.name(), if self.read_only { " (read-only)" } else { "" })
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.vol.read_iovecs(offset, &iov(buf)).map_err(io::Error::from)
    }

    fn wait_writable(&self) -> io::Result<()> {
        self.vol.wait_for_space().map_err(io::Error::from)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only export"));
        }
        self.vol.write_iovecs(offset, &iov(data)).map_err(io::Error::from)
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.vol.flush().map_err(io::Error::from)
    }

    fn zero(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only export"));
        }
        self.vol.write_zeroes(offset, len).map_err(io::Error::from)
    }

    fn allocation(&self, offset: u64, len: u64, f: &mut dyn FnMut(u64, bool) -> bool) -> io::Result<()> {
        self.vol.extents(offset, len, |e| f(e.len, e.data)).map_err(io::Error::from)
    }

    fn changed_since(&self, snapshot: &str) -> Option<io::Result<Vec<ChangedExtent>>> {
        self.changed.as_ref().map(|f| f(snapshot).map_err(io::Error::from))
    }
}
