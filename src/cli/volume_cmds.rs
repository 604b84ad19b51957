//! `logdisk volume ...` commands run directly on a data dir.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::args::{Command, VolumeCmd};
use logdisk::datadir::{DataDir, VolumeInfo};
use logdisk::units::{format_size, parse_size};
use logdisk::volume::iov::AlignedBuf;
use logdisk::volume::Volume;

const CHUNK: usize = 4 << 20;

fn progress(len: u64, what: &str) -> ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn close(vol: &Volume) -> Result<()> {
    let r = vol.close()?;
    if !r.drained {
        eprintln!(
            "warning: {} not yet uploaded stays in the local write buffer; it is uploaded on the next start",
            format_size(r.pending_bytes)
        );
    }
    Ok(())
}

/// Run a command through the daemon that holds `data_dir`, if the command can be and a
/// daemon answers.
pub fn via_daemon(data_dir: &Path, cmd: &Command) -> Option<Result<()>> {
    use logdisk::control::client::try_request;
    use logdisk::control::protocol::Request;
    let req = match cmd {
        Command::Volume(VolumeCmd::List { .. }) => Request::List,
        Command::Volume(VolumeCmd::Info { name, .. }) => Request::Info { volume: name.clone() },
        Command::Volume(VolumeCmd::Create { name, size, cluster_size, sco_size }) => {
            let parse = |s: &Option<String>| s.as_deref().map(parse_size).transpose();
            let (size, cs, sco) = match (parse_size(size), parse(cluster_size), parse(sco_size)) {
                (Ok(a), Ok(b), Ok(c)) => (a, b, c),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Some(Err(e.into())),
            };
            Request::Create { volume: name.clone(), size, cluster_size: cs, sco_size: sco }
        }
        _ => return None,
    };
    let result = try_request(data_dir, &req)?;
    Some((|| -> Result<()> {
        let v = result?;
        match cmd {
            Command::Volume(VolumeCmd::List { json }) => print_list(&v, *json)?,
            Command::Volume(VolumeCmd::Info { json, .. }) => {
                let info: VolumeInfo = serde_json::from_value(v)?;
                print_info(&info, *json)?;
            }
            Command::Volume(VolumeCmd::Create { name, .. }) => println!("created volume {name}"),
            _ => {}
        }
        Ok(())
    })())
}

pub fn create(dd: &DataDir, name: &str, size: &str, cs: Option<&str>, sco: Option<&str>) -> Result<()> {
    let size = parse_size(size)?;
    let cs = cs.map(parse_size).transpose()?;
    let sco = sco.map(parse_size).transpose()?;
    let m = dd.create_volume(name, size, cs, sco)?;
    println!("created volume {} ({}, cluster {})", m.name, format_size(m.size), format_size(m.cluster_size as u64));
    Ok(())
}

pub fn list(dd: &DataDir, json: bool) -> Result<()> {
    let vols: Vec<_> = dd
        .list_volumes()?
        .iter()
        .map(|m| serde_json::json!({"name": m.name, "size": m.size, "cluster_size": m.cluster_size, "read_only": m.read_only}))
        .collect();
    print_list(&serde_json::Value::Array(vols), json)
}

/// Print a volume list (JSON array of {name, size, cluster_size, ...}).
fn print_list(v: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!("{:<32} {:>12} {:>8}", "NAME", "SIZE", "CLUSTER");
    for x in v.as_array().into_iter().flatten() {
        let size = x["size"].as_u64().unwrap_or(0);
        let cs = x["cluster_size"].as_u64().unwrap_or(0);
        println!("{:<32} {:>12} {:>8}", x["name"].as_str().unwrap_or(""), format_size(size), format_size(cs));
    }
    Ok(())
}

pub fn print_info(info: &VolumeInfo, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(info)?);
        return Ok(());
    }
    println!("name:               {}", info.name);
    println!("size:               {} ({} bytes)", format_size(info.size), info.size);
    println!("cluster size:       {}", format_size(info.cluster_size as u64));
    println!("SCO size:           {}", format_size(info.sco_size));
    println!("read-only:          {}", info.read_only);
    println!("backend:            {}", info.backend);
    println!("owner generation:   {}", info.generation);
    println!("written:            {}", format_size(info.written_bytes));
    println!("in object store:    {} in {} objects", format_size(info.stored_bytes), info.objects);
    println!("pending upload:     {}", format_size(info.pending_upload_bytes));
    println!("compression ratio:  {:.2}", info.compression_ratio);
    println!("map memory:         {}", format_size(info.map_memory_bytes));
    Ok(())
}

pub fn info(dd: &mut DataDir, name: &str, json: bool) -> Result<()> {
    let vol = dd.open_volume(name, true)?;
    let info = dd.volume_info(&vol)?;
    close(&vol)?;
    print_info(&info, json)
}

pub fn delete(dd: &DataDir, name: &str) -> Result<()> {
    dd.delete_volume(name)?;
    println!("deleted volume {name}");
    Ok(())
}

pub fn import(dd: &mut DataDir, name: &str, path: &Path, create: bool) -> Result<()> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
    if create {
        if len == 0 {
            bail!("{} is empty: cannot size a volume from it", path.display());
        }
        let cs = dd.config().volume.cluster_size.0;
        let size = len.div_ceil(cs) * cs;
        dd.create_volume(name, size, None, None)?;
    }
    let vol = dd.open_volume(name, false)?;
    if len > vol.size() {
        bail!("{} is {} bytes, larger than volume {} ({} bytes)", path.display(), len, name, vol.size());
    }
    let pb = progress(len, "import");
    let mut buf = AlignedBuf::zeroed(CHUNK);
    let mut off = 0u64;
    while off < len {
        let n = (CHUNK as u64).min(len - off) as usize;
        f.read_exact(&mut buf[..n]).with_context(|| format!("cannot read {}", path.display()))?;
        write_sparse(&vol, off, &buf[..n])?;
        off += n as u64;
        pb.set_position(off);
    }
    vol.flush()?;
    pb.finish_and_clear();
    close(&vol)?;
    println!("imported {} into volume {name}", format_size(len));
    Ok(())
}

/// Write `data` at `off`, turning runs of all-zero clusters into unmapped ranges.
fn write_sparse(vol: &Volume, off: u64, data: &[u8]) -> Result<()> {
    let cs = vol.cluster_size() as usize;
    let mut at = 0;
    while at < data.len() {
        let zero = |i: usize| data[i..(i + cs).min(data.len())].iter().all(|&b| b == 0);
        let kind = zero(at);
        let mut end = at;
        while end < data.len() && zero(end) == kind {
            end = (end + cs).min(data.len());
        }
        if kind {
            vol.write_zeroes(off + at as u64, (end - at) as u64)?;
        } else {
            vol.write_at(off + at as u64, &data[at..end])?;
        }
        at = end;
    }
    Ok(())
}

pub fn export(dd: &mut DataDir, name: &str, path: &Path) -> Result<()> {
    let vol = dd.open_volume(name, true)?;
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let size = vol.size();
    let pb = progress(size, "export");
    let mut buf = AlignedBuf::zeroed(CHUNK);
    let mut off = 0u64;
    while off < size {
        let n = (CHUNK as u64).min(size - off) as usize;
        if !vol.is_unmapped(off, n as u64) {
            vol.read_at(off, &mut buf[..n])?;
            if !buf[..n].iter().all(|&b| b == 0) {
                out.write_all_at(&buf[..n], off).with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        off += n as u64;
        pb.set_position(off);
    }
    out.set_len(size).with_context(|| format!("cannot size {}", path.display()))?;
    out.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    pb.finish_and_clear();
    close(&vol)?;
    println!("exported volume {name} ({}) to {}", format_size(size), path.display());
    Ok(())
}
