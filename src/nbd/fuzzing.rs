//! The NBD fuzz body: feed arbitrary client bytes to the handshake and, when it picks an
//! export, to the request loop, against in-memory exports. Used by the seeded test
//! `tests/nbd_fuzz.rs` (and usable from a cargo-fuzz target).

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use parking_lot::Mutex;

use super::handshake::{negotiate, Auth, Negotiation};
use super::transmission::{transmit, Buffers};
use super::{ExportSet, ExportTarget};

/// Size of each in-memory export.
pub const MEM_SIZE: u64 = 1 << 20;

/// A byte array as an export (block size 4096, allocation: all-zero 4 KiB blocks are holes).
pub struct MemExport {
    data: Mutex<Vec<u8>>,
    read_only: bool,
}

impl MemExport {
    pub fn new(read_only: bool) -> MemExport {
        MemExport { data: Mutex::new(vec![0; MEM_SIZE as usize]), read_only }
    }

    fn check(&self, off: u64, len: u64) -> io::Result<(usize, usize)> {
        match off.checked_add(len) {
            Some(end) if end <= MEM_SIZE => Ok((off as usize, end as usize)),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "out of range")),
        }
    }
}

impl ExportTarget for MemExport {
    fn size(&self) -> u64 {
        MEM_SIZE
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn block_size(&self) -> u32 {
        4096
    }
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let (a, b) = self.check(off, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.lock()[a..b]);
        Ok(())
    }
    fn wait_writable(&self) -> io::Result<()> {
        Ok(())
    }
    fn write(&self, off: u64, d: &[u8]) -> io::Result<()> {
        let (a, b) = self.check(off, d.len() as u64)?;
        self.data.lock()[a..b].copy_from_slice(d);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn zero(&self, off: u64, len: u64) -> io::Result<()> {
        let (a, b) = self.check(off, len)?;
        self.data.lock()[a..b].fill(0);
        Ok(())
    }
    fn allocation(&self, off: u64, len: u64, f: &mut dyn FnMut(u64, bool) -> bool) -> io::Result<()> {
        let (a, b) = self.check(off, len)?;
        let d = self.data.lock();
        let mut pos = a;
        while pos < b {
            let blk_end = ((pos / 4096 + 1) * 4096).min(b);
            let data = d[pos / 4096 * 4096..((pos / 4096 + 1) * 4096)].iter().any(|&x| x != 0);
            if !f((blk_end - pos) as u64, data) {
                break;
            }
            pos = blk_end;
        }
        Ok(())
    }
    fn changed_since(&self, snapshot: &str) -> Option<io::Result<Vec<crate::volume::extents::ChangedExtent>>> {
        (snapshot == "s0")
            .then(|| Ok(vec![crate::volume::extents::ChangedExtent { offset: 8192, length: 4096, data: true }]))
    }
}

/// Exports `rw` (writable) and `ro` (read-only).
pub struct MemExports {
    rw: Arc<MemExport>,
    ro: Arc<MemExport>,
}

impl Default for MemExports {
    fn default() -> Self {
        MemExports { rw: Arc::new(MemExport::new(false)), ro: Arc::new(MemExport::new(true)) }
    }
}

impl ExportSet for MemExports {
    fn names(&self) -> Vec<String> {
        vec!["rw".into(), "ro".into()]
    }
    fn open(&self, name: &str) -> Result<Arc<dyn ExportTarget>, String> {
        match name {
            "rw" => Ok(self.rw.clone()),
            "ro" => Ok(self.ro.clone()),
            _ => Err(format!("no export {name:?}")),
        }
    }
}

/// How far an input got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FuzzPath {
    /// The handshake failed (bad magic, short input, bad flags).
    HandshakeError,
    /// The client left during option haggling.
    HandshakeEnded,
    /// Requests ran; the loop ended cleanly (disconnect or end of input).
    Transmitted { structured: bool, requests: u64 },
    /// Requests ran, then the client broke the protocol.
    TransmitError { requests: u64 },
}

/// Run one input as a client byte stream; `token` protects the exports when set.
pub fn fuzz_nbd(input: &[u8], token: Option<&str>) -> (FuzzPath, usize) {
    let exports = MemExports::default();
    let auth = Auth { token: token.map(str::to_string) };
    let stop = AtomicBool::new(false);
    let mut r = input;
    let mut out: Vec<u8> = Vec::new();
    let session = match negotiate(&mut r, &mut out, &exports, &auth, &stop) {
        Err(_) => return (FuzzPath::HandshakeError, out.len()),
        Ok(Negotiation::Ended) => return (FuzzPath::HandshakeEnded, out.len()),
        Ok(Negotiation::Transmit(s)) => s,
    };
    let bufs = Buffers::default();
    let path = match transmit(&mut r, &mut out, &session, &bufs, 0) {
        Ok(st) => FuzzPath::Transmitted { structured: session.structured, requests: st.requests },
        Err(_) => FuzzPath::TransmitError { requests: 0 },
    };
    (path, out.len())
}
