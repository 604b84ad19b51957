//! The dm-log-writes log format (the kernel's drivers/md/dm-log-writes.c and
//! Documentation/admin-guide/device-mapper/log-writes.rst) and its replay onto an image.
//!
//! Sector 0 of the log holds `struct log_write_super { le64 magic; le64 version; le64
//! nr_entries; le32 sectorsize; }`. Entries follow from byte `sectorsize` on, each a
//! `struct log_write_entry { le64 sector; le64 nr_sectors; le64 flags; le64 data_len; }`
//! in a block of its own (a mark's name right after it), then, except for discards,
//! `nr_sectors` blocks of data. Sectors are in units of `sectorsize`. Writes are logged
//! once flushed (or FUA), in the order they reached the disk, so replaying a prefix of the
//! log gives a state the disk could hold after a power loss.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

pub const FLUSH: u64 = 1;
pub const FUA: u64 = 2;
pub const DISCARD: u64 = 4;
pub const MARK: u64 = 8;
const MAGIC: u64 = 0x006a_7366_7773_6872;

#[derive(Debug, Clone)]
pub struct Entry {
    pub sector: u64,
    pub nr_sectors: u64,
    pub flags: u64,
    /// Byte offset of the data in the log.
    pub data: u64,
    pub mark: Option<String>,
}

pub struct Log {
    file: File,
    pub sectorsize: u64,
    pub entries: Vec<Entry>,
}

fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

impl Log {
    pub fn open(path: &Path) -> Result<Log> {
        let mut file = File::open(path).with_context(|| format!("open log {}", path.display()))?;
        let mut sb = [0u8; 32];
        file.read_exact(&mut sb).context("read the log super block")?;
        if le64(&sb, 0) != MAGIC {
            bail!("{}: not a dm-log-writes log (bad magic)", path.display());
        }
        if le64(&sb, 8) != 1 {
            bail!("{}: log version {} (only 1 is known)", path.display(), le64(&sb, 8));
        }
        let n = le64(&sb, 16);
        let ss = u64::from(u32::from_le_bytes(sb[24..28].try_into().expect("4 bytes")));
        if !(512..=65536).contains(&ss) || !ss.is_power_of_two() {
            bail!("{}: bad sector size {ss}", path.display());
        }
        let len = file.metadata()?.len();
        let mut entries = Vec::with_capacity(n as usize);
        let mut pos = ss;
        let mut hdr = vec![0u8; ss as usize];
        for i in 0..n {
            if pos + ss > len {
                bail!("{}: entry {i} of {n} lies past the end of the log", path.display());
            }
            file.read_exact_at(&mut hdr, pos).with_context(|| format!("read log entry {i}"))?;
            let (sector, nr_sectors, flags, data_len) = (le64(&hdr, 0), le64(&hdr, 8), le64(&hdr, 16), le64(&hdr, 24));
            pos += ss;
            let mark = if flags & MARK != 0 {
                let l = (data_len as usize).min(hdr.len() - 32);
                Some(String::from_utf8_lossy(&hdr[32..32 + l]).into_owned())
            } else {
                None
            };
            entries.push(Entry { sector, nr_sectors, flags, data: pos, mark });
            if flags & DISCARD == 0 {
                pos += nr_sectors * ss;
            }
        }
        if pos > len {
            bail!("{}: the last entry's data lies past the end of the log", path.display());
        }
        Ok(Log { file, sectorsize: ss, entries })
    }

    /// Apply entry `i` to `img`: data written, a discard zeroed.
    pub fn apply(&self, i: usize, img: &File, buf: &mut Vec<u8>) -> Result<()> {
        let e = &self.entries[i];
        if e.nr_sectors == 0 {
            return Ok(());
        }
        let off = e.sector * self.sectorsize;
        let len = (e.nr_sectors * self.sectorsize) as usize;
        buf.clear();
        buf.resize(len, 0);
        if e.flags & DISCARD == 0 {
            self.file.read_exact_at(buf, e.data).with_context(|| format!("read the data of log entry {i}"))?;
        }
        img.write_all_at(buf, off).with_context(|| format!("replay log entry {i} at byte {off}"))?;
        Ok(())
    }
}
