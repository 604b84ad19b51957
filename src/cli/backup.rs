//! Incremental backups from the log: `volume export VOL@B FILE --since A` writes only the
//! clusters that differ between snapshots A and B (found from the maps, no data compared)
//! and `volume import VOL FILE --diff` applies such a file.
//!
//! A diff file is a sparse image of the volume's size holding B's data at the changed
//! data extents (holes elsewhere), followed by a JSON trailer listing every changed extent
//! (data, or zeroed since A), then the trailer's length (u64 little-endian) and the magic
//! `LDDIFF01`. Its allocated size is the changed data plus a block or two of trailer.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::volume_cmds::{create_output, split_target};
use logdisk::datadir::DataDir;
use logdisk::units::format_size;
use logdisk::volume::extents::ChangedExtent;
use logdisk::volume::iov::AlignedBuf;

const MAGIC: &[u8; 8] = b"LDDIFF01";
const CHUNK: u64 = 4 << 20;

#[derive(Serialize, Deserialize)]
struct Trailer {
    format: String,
    version: u32,
    volume: String,
    from: String,
    to: String,
    size: u64,
    cluster_size: u64,
    extents: Vec<ChangedExtent>,
}

/// Totals of a list of changed extents: (data bytes, zeroed bytes).
pub fn totals(ext: &[ChangedExtent]) -> (u64, u64) {
    ext.iter().fold((0, 0), |(d, z), e| if e.data { (d + e.length, z) } else { (d, z + e.length) })
}

/// `volume export VOL@TO FILE --since FROM`.
pub fn export_since(dd: &mut DataDir, name: &str, since: &str, path: &Path) -> Result<()> {
    let (v, Some(to)) = split_target(name) else {
        bail!("--since needs a snapshot to export: use VOLUME@SNAPSHOT --since OLDER");
    };
    let vol = dd.open_volume(v, true)?;
    let diff = vol.snapshot_diff(since, to);
    let cs = vol.cluster_size();
    vol.close()?;
    let extents = diff?;
    let view = dd.open_snapshot_view(v, to, None)?;
    let size = view.size();
    let out = create_output(path)?;
    let mut buf = AlignedBuf::zeroed(CHUNK as usize);
    for e in extents.iter().filter(|e| e.data) {
        let mut off = e.offset;
        while off < e.offset + e.length {
            let n = CHUNK.min(e.offset + e.length - off) as usize;
            view.read_at(off, &mut buf[..n])?;
            if !buf[..n].iter().all(|&b| b == 0) {
                out.write_all_at(&buf[..n], off).with_context(|| format!("cannot write {}", path.display()))?;
            }
            off += n as u64;
        }
    }
    let trailer = Trailer {
        format: "logdisk-diff".into(),
        version: 1,
        volume: v.to_string(),
        from: since.to_string(),
        to: to.to_string(),
        size,
        cluster_size: cs,
        extents,
    };
    let mut t = serde_json::to_vec(&trailer)?;
    t.extend_from_slice(&(t.len() as u64).to_le_bytes());
    t.extend_from_slice(MAGIC);
    out.write_all_at(&t, size).with_context(|| format!("cannot write {}", path.display()))?;
    out.set_len(size + t.len() as u64)?;
    out.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    let (data, zero) = totals(&trailer.extents);
    println!(
        "exported the changes {v}@{since} -> {v}@{to} to {}: {} of data, {} zeroed, in {} extents",
        path.display(),
        format_size(data),
        format_size(zero),
        trailer.extents.len()
    );
    Ok(())
}

fn read_trailer(f: &File, path: &Path) -> Result<Trailer> {
    let len = f.metadata()?.len();
    let not_diff =
        || format!("{} is not a logdisk diff file (made by `volume export VOL@B FILE --since A`)", path.display());
    if len < 16 {
        bail!(not_diff());
    }
    let mut tail = [0u8; 16];
    f.read_exact_at(&mut tail, len - 16)?;
    if &tail[8..] != MAGIC {
        bail!(not_diff());
    }
    let tlen = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
    if tlen > len - 16 || tlen > 1 << 30 {
        bail!(not_diff());
    }
    let mut t = vec![0u8; tlen as usize];
    f.read_exact_at(&mut t, len - 16 - tlen)?;
    let tr: Trailer = serde_json::from_slice(&t).with_context(not_diff)?;
    if tr.format != "logdisk-diff" || tr.version != 1 || tr.size != len - 16 - tlen {
        bail!(not_diff());
    }
    for e in &tr.extents {
        if e.offset.checked_add(e.length).is_none_or(|end| end > tr.size) {
            bail!("{}: extent {}+{} is outside the volume size {}", path.display(), e.offset, e.length, tr.size);
        }
    }
    Ok(tr)
}

/// `volume import VOL FILE --diff`.
pub fn import_diff(dd: &mut DataDir, name: &str, path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let tr = read_trailer(&f, path)?;
    let vol = dd.open_volume(name, false)?;
    if vol.size() != tr.size {
        bail!("{} holds changes of a {}-byte volume; volume {name} is {} bytes", path.display(), tr.size, vol.size());
    }
    let mut buf = AlignedBuf::zeroed(CHUNK as usize);
    let cs = vol.cluster_size() as usize;
    for e in &tr.extents {
        if !e.data {
            vol.write_zeroes(e.offset, e.length)?;
            continue;
        }
        let mut off = e.offset;
        while off < e.offset + e.length {
            let n = CHUNK.min(e.offset + e.length - off) as usize;
            f.read_exact_at(&mut buf[..n], off).with_context(|| format!("cannot read {}", path.display()))?;
            // All-zero clusters become holes; the rest is written as is.
            let mut at = 0;
            while at < n {
                let end = (at + cs).min(n);
                let run_zero = buf[at..end].iter().all(|&b| b == 0);
                let mut stop = end;
                while stop < n {
                    let next = (stop + cs).min(n);
                    if buf[stop..next].iter().all(|&b| b == 0) != run_zero {
                        break;
                    }
                    stop = next;
                }
                if run_zero {
                    vol.write_zeroes(off + at as u64, (stop - at) as u64)?;
                } else {
                    vol.write_at(off + at as u64, &buf[at..stop])?;
                }
                at = stop;
            }
            off += n as u64;
        }
    }
    vol.flush()?;
    let r = vol.close()?;
    if !r.drained {
        eprintln!("warning: some of it is not yet uploaded; it is uploaded on the next start");
    }
    let (data, zero) = totals(&tr.extents);
    let v = &tr.volume;
    println!(
        "applied {v}@{} -> {v}@{} to volume {name}: {} of data, {} zeroed",
        tr.from,
        tr.to,
        format_size(data),
        format_size(zero)
    );
    Ok(())
}
