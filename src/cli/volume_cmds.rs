//! `logdisk volume ...` commands run directly on a data dir.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::args::{Command, SnapshotCmd, VolumeCmd};
use logdisk::control::protocol::Request;
use logdisk::crypto::KeySource;
use logdisk::datadir::{DataDir, VolumeInfo};
use logdisk::units::{format_size, parse_size};
use logdisk::volume::dtl_link::DtlSettings;
use logdisk::volume::iov::AlignedBuf;
use logdisk::volume::scrub::ScrubReport;
use logdisk::volume::snapshots::SnapshotInfo;
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

/// Split `VOL@SNAP` into its parts.
pub fn split_target(s: &str) -> (&str, Option<&str>) {
    match s.split_once('@') {
        Some((v, snap)) => (v, Some(snap)),
        None => (s, None),
    }
}

fn need_snapshot(s: &str) -> Result<(String, String)> {
    match split_target(s) {
        (v, Some(snap)) if !v.is_empty() && !snap.is_empty() => Ok((v.to_string(), snap.to_string())),
        _ => bail!("{s:?} does not name a snapshot: use VOLUME@SNAPSHOT"),
    }
}

/// The management request a command stands for (run by the daemon when one holds the
/// data dir, else here); `None` for commands that need the data dir itself.
/// `keys` are the key sources of the command line: the first is the key of `volume
/// create --encrypt`, `clone --encrypt` and `volume set` (rotation).
pub fn request_of(cmd: &Command, keys: &[KeySource]) -> Result<Option<Request>> {
    let parse = |s: &Option<String>| s.as_deref().map(parse_size).transpose();
    let the_key = |encrypt: bool| -> Result<Option<KeySource>> {
        match (encrypt, keys) {
            (false, _) => Ok(None),
            (true, []) => bail!("--encrypt needs the key: --key-file FILE or --key-command CMD"),
            (true, [k]) => Ok(Some(k.clone())),
            (true, _) => bail!("--encrypt takes exactly one --key-file or --key-command"),
        }
    };
    Ok(Some(match cmd {
        Command::Volume(VolumeCmd::List { .. }) => Request::List,
        Command::Volume(VolumeCmd::Info { name, .. }) => Request::Info { volume: name.clone() },
        Command::Volume(VolumeCmd::Create { name, size, cluster_size, sco_size, dtl, dtl_mode, encrypt }) => {
            Request::Create {
                key: the_key(*encrypt)?,
                volume: name.clone(),
                size: parse_size(size)?,
                cluster_size: parse(cluster_size)?,
                sco_size: parse(sco_size)?,
                dtl: match (dtl.as_deref(), dtl_mode.as_deref()) {
                    (None, _) | (_, Some("none")) => None,
                    (Some(a), m) => Some(DtlSettings { addr: a.to_string(), mode: m.unwrap_or("sync").parse()? }),
                },
            }
        }
        Command::Volume(VolumeCmd::Set { name, dtl, dtl_mode, uploads }) => Request::Set {
            volume: name.clone(),
            new_key: match keys {
                [] => None,
                [k] => Some(k.clone()),
                _ => bail!("volume set takes one --key-file or --key-command: the new key (old ones stay recorded)"),
            },
            dtl_addr: dtl.clone(),
            dtl_mode: dtl_mode.clone(),
            uploads_paused: match uploads.as_deref() {
                None => None,
                Some("paused") => Some(true),
                Some("running") => Some(false),
                Some(o) => bail!("--uploads {o:?}: use paused or running"),
            },
        },
        Command::Volume(VolumeCmd::Takeover { name, dtl, dtl_mode, force }) => Request::Takeover {
            volume: name.clone(),
            dtl: DtlSettings { addr: dtl.clone(), mode: dtl_mode.parse()? },
            force: *force,
        },
        Command::Volume(VolumeCmd::Delete { name }) => Request::Delete { volume: name.clone() },
        Command::Volume(VolumeCmd::SetTemplate { name }) => Request::SetTemplate { volume: name.clone() },
        Command::Volume(VolumeCmd::CryptoErase { name, yes }) => {
            if !yes {
                bail!("crypto-erase makes volume {name} unreadable for good: add --yes");
            }
            Request::CryptoErase { volume: name.clone() }
        }
        Command::Volume(VolumeCmd::Resize { name, size, shrink }) => {
            Request::Resize { volume: name.clone(), size: parse_size(size)?, shrink: *shrink }
        }
        Command::Volume(VolumeCmd::Flatten { name }) => Request::Flatten { volume: name.clone() },
        Command::Snapshot(SnapshotCmd::List { volume, .. }) => Request::SnapshotList { volume: volume.clone() },
        Command::Snapshot(SnapshotCmd::Create { target }) => {
            let (volume, snapshot) = need_snapshot(target)?;
            Request::SnapshotCreate { volume, snapshot }
        }
        Command::Snapshot(SnapshotCmd::Delete { target }) => {
            let (volume, snapshot) = need_snapshot(target)?;
            Request::SnapshotDelete { volume, snapshot }
        }
        Command::Snapshot(SnapshotCmd::Rollback { target, force }) => {
            let (volume, snapshot) = need_snapshot(target)?;
            Request::SnapshotRollback { volume, snapshot, force: *force }
        }
        Command::Snapshot(SnapshotCmd::Diff { from, to, .. }) => {
            let (volume, from) = need_snapshot(from)?;
            let (v2, to) = need_snapshot(to)?;
            if v2 != volume {
                bail!("snapshot diff compares two snapshots of one volume, not {volume} and {v2}");
            }
            Request::SnapshotDiff { volume, from, to }
        }
        Command::Clone { source, target, encrypt } => {
            let (v, snap) = split_target(source);
            if snap == Some("") || v.is_empty() {
                bail!("{source:?}: use VOLUME@SNAPSHOT or a template's name");
            }
            Request::Clone {
                source: v.to_string(),
                snapshot: snap.map(str::to_string),
                target: target.clone(),
                key: the_key(*encrypt)?,
            }
        }
        Command::Scrub { volume, threshold } => Request::Scrub { volume: volume.clone(), threshold: *threshold },
        Command::Attach { volume, socket, read_only, num_queues, queue_size } => Request::Attach {
            volume: volume.clone(),
            // The daemon runs elsewhere: it gets an absolute path.
            socket: socket.as_ref().map(|s| std::env::current_dir().map(|d| d.join(s))).transpose()?,
            read_only: *read_only,
            num_queues: *num_queues,
            queue_size: *queue_size,
        },
        Command::Detach { volume, force } => Request::Detach { volume: volume.clone(), force: *force },
        _ => return Ok(None),
    }))
}

/// Run a management request on `dd` directly (no daemon holds the data dir).
pub fn run_request(dd: &mut DataDir, cmd: &Command, req: Request) -> Result<()> {
    let v = logdisk::control::ops::run(dd, &Default::default(), req)?;
    print_result(cmd, &v)
}

/// Print what a management request answered.
pub fn print_result(cmd: &Command, v: &serde_json::Value) -> Result<()> {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    match cmd {
        Command::Volume(VolumeCmd::List { json }) => print_list(v, *json)?,
        Command::Volume(VolumeCmd::Info { json, .. }) => {
            let info: VolumeInfo = serde_json::from_value(v.clone())?;
            print_info(&info, *json)?
        }
        Command::Volume(VolumeCmd::Create { .. }) => {
            let size = v["size"].as_u64().unwrap_or(0);
            let cs = v["cluster_size"].as_u64().unwrap_or(0);
            println!("created volume {} ({}, cluster {})", s("name"), format_size(size), format_size(cs));
        }
        Command::Volume(VolumeCmd::Delete { name }) => println!("deleted volume {name}"),
        Command::Volume(VolumeCmd::CryptoErase { name, .. }) => {
            println!("crypto-erased volume {name}: it can no longer be opened")
        }
        Command::Volume(VolumeCmd::Set { name, .. }) => {
            let dtl = match (v["dtl"]["addr"].as_str(), v["dtl"]["mode"].as_str()) {
                (Some(a), Some(m)) => format!("{a} ({m})"),
                _ => "none".into(),
            };
            let uploads = if v["uploads_paused"].as_bool() == Some(true) { "paused" } else { "running" };
            println!("volume {name}: DTL {dtl}, uploads {uploads}");
        }
        Command::Volume(VolumeCmd::Takeover { name, .. }) => {
            let r = v;
            println!(
                "took over volume {name} as owner generation {}: epochs up to {} from the object store, {} DTL entries replayed into {} epochs; {}",
                r["generation"],
                r["store_upto"],
                r["dtl_entries"],
                r["dtl_epochs"].as_array().map(|a| a.len()).unwrap_or(0),
                if r["uploaded"].as_bool() == Some(true) { "everything is in the object store" } else { "some data is still only local (uploads continue when served)" }
            );
            if let Some(f) = r["forced"].as_array().filter(|a| !a.is_empty()) {
                for x in f {
                    println!("  forced past: {}", x.as_str().unwrap_or(""));
                }
            }
        }
        Command::Volume(VolumeCmd::SetTemplate { name }) => println!("volume {name} is now a read-only template"),
        Command::Volume(VolumeCmd::Resize { name, .. }) => println!(
            "resized volume {name} from {} to {}",
            format_size(v["old_size"].as_u64().unwrap_or(0)),
            format_size(v["size"].as_u64().unwrap_or(0))
        ),
        Command::Volume(VolumeCmd::Flatten { name }) => println!(
            "flattened {name}: copied {} from its parents; it no longer depends on them",
            format_size(v["copied_bytes"].as_u64().unwrap_or(0))
        ),
        Command::Snapshot(SnapshotCmd::Create { target }) => println!("created snapshot {target}"),
        Command::Snapshot(SnapshotCmd::List { json, .. }) => {
            let list: Vec<SnapshotInfo> = serde_json::from_value(v.clone())?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<32} {:<20} {:>12}", "NAME", "CREATED (UTC)", "EXCLUSIVE");
                for x in list {
                    println!("{:<32} {:<20} {:>12}", x.name, format_time(x.created), format_size(x.exclusive_bytes));
                }
            }
        }
        Command::Snapshot(SnapshotCmd::Delete { target }) => println!("deleted snapshot {target}"),
        Command::Snapshot(SnapshotCmd::Diff { from, to, json }) => {
            if *json {
                println!("{}", serde_json::to_string_pretty(v)?);
            } else {
                println!("{:>16} {:>14}  CONTENT", "OFFSET", "LENGTH");
                for e in v["extents"].as_array().into_iter().flatten() {
                    let kind = if e["data"].as_bool() == Some(true) { "data" } else { "zeroed" };
                    let n = |k: &str| e[k].as_u64().unwrap_or(0);
                    println!("{:>16} {:>14}  {kind}", n("offset"), n("length"));
                }
                let n = |k: &str| v[k].as_u64().unwrap_or(0);
                println!(
                    "{from} -> {to}: {} changed ({} data, {} zeroed)",
                    format_size(n("changed_bytes")),
                    format_size(n("data_bytes")),
                    format_size(n("zeroed_bytes"))
                );
            }
        }
        Command::Snapshot(SnapshotCmd::Rollback { target, .. }) => println!("rolled back to {target}"),
        Command::Clone { target, .. } => println!("created clone {target} of {}", s("parent")),
        Command::Attach { volume, .. } => println!("attached {volume} on {}", s("socket")),
        Command::Detach { volume, .. } => {
            if v["drained"].as_bool() == Some(false) {
                println!(
                    "detached {volume}; {} not yet uploaded stays in the local write buffer",
                    format_size(v["pending_bytes"].as_u64().unwrap_or(0))
                );
            } else {
                println!("detached {volume}");
            }
        }
        Command::Scrub { volume, .. } => {
            let r: ScrubReport = serde_json::from_value(v.clone())?;
            println!(
                "scrubbed {volume}: {} SCOs examined, {} rewritten, {} deleted; moved {}, freed {} in the object store",
                r.scos_examined,
                r.scos_rewritten,
                r.scos_deleted,
                format_size(r.moved_bytes),
                format_size(r.freed_bytes)
            );
        }
        _ => println!("{}", serde_json::to_string_pretty(v)?),
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of Unix seconds.
fn format_time(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Print a volume list (JSON array of {name, size, cluster_size, ...}).
fn print_list(v: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!("{:<32} {:>12} {:>8}  {:<9} {:<9}  NOTES", "NAME", "SIZE", "CLUSTER", "ATTACHED", "CONNECTED");
    for x in v.as_array().into_iter().flatten() {
        let size = x["size"].as_u64().unwrap_or(0);
        let cs = x["cluster_size"].as_u64().unwrap_or(0);
        let mut notes = Vec::new();
        if x["template"].as_bool() == Some(true) {
            notes.push("template".to_string());
        }
        if let Some(p) = x["parent"].as_str() {
            notes.push(format!("clone of {p}"));
        }
        if let Some(s) = x["socket"].as_str() {
            notes.push(format!("socket {s}"));
        }
        if let Some(e) = x["attach_error"].as_str() {
            notes.push(format!("attach failed: {e}"));
        }
        let yes = |k: &str| if x[k].as_bool() == Some(true) { "yes" } else { "no" };
        let name = x["name"].as_str().unwrap_or("");
        let size = if size == 0 { "-".to_string() } else { format_size(size) };
        let cs = if cs == 0 { "-".to_string() } else { format_size(cs) };
        println!(
            "{:<32} {:>12} {:>8}  {:<9} {:<9}  {}",
            name,
            size,
            cs,
            yes("attached"),
            yes("connected"),
            notes.join(", ")
        );
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
    if let Some(id) = &info.key_id {
        println!("encryption:         AES-256-GCM, key id {id}");
    }
    println!("SCO size:           {}", format_size(info.sco_size));
    println!("read-only:          {}", info.read_only);
    println!("backend:            {}", info.backend);
    println!("owner generation:   {}", info.generation);
    println!("written:            {}", format_size(info.written_bytes));
    println!("in object store:    {} in {} objects", format_size(info.stored_bytes), info.objects);
    println!("pending upload:     {}", format_size(info.pending_upload_bytes));
    println!("compression ratio:  {:.2}", info.compression_ratio);
    println!("map memory:         {}", format_size(info.map_memory_bytes));
    println!("garbage:            {} (scrub reclaims it)", format_size(info.garbage_bytes));
    println!("live:               {}", format_size(info.live_bytes));
    println!("space amplification: {:.2} (object store / live)", info.space_amplification);
    if info.write_amplification > 0.0 {
        println!(
            "write amplification: {:.2} (put to the store / written by guests, since start)",
            info.write_amplification
        );
    }
    if let Some(f) = &info.space {
        let budget =
            if f.budget_bytes > 0 { format!(", budget {}", format_size(f.budget_bytes)) } else { String::new() };
        println!("space:              {}{budget}", f.state);
        if let Some(r) = &f.reason {
            println!("  why:              {r}");
        }
        if f.scrub_passes > 0 || f.throttled_writes > 0 {
            println!(
                "scrub:              {} passes, moved {}, freed {} (last pass {}/s); {} writes waited for space",
                f.scrub_passes,
                format_size(f.scrub_moved_bytes),
                format_size(f.scrub_freed_bytes),
                format_size(f.scrub_rate),
                f.throttled_writes
            );
        }
        if f.rotten_scos > 0 {
            println!(
                "  rot:              {} SCOs kept: live clusters in them are rotten with no good copy \
                 (reads of them fail; rewriting them lets scrub free the SCOs)",
                f.rotten_scos
            );
        }
    }
    if info.template {
        println!("template:           yes (read-only clone parent)");
    }
    if let Some(p) = &info.parent {
        println!("clone of:           {p}");
    }
    match &info.dtl {
        Some(d) if d.state == "off" => println!("DTL:                none"),
        Some(d) => println!(
            "DTL:                {} ({}) {}{}",
            d.addr,
            d.mode,
            d.state,
            if d.detail.is_empty() { String::new() } else { format!(": {}", d.detail) }
        ),
        None => {}
    }
    if info.uploads_paused {
        println!("uploads:            PAUSED (volume set {} --uploads running resumes them)", info.name);
    }
    println!("snapshots:          {}", info.snapshots.len());
    for s in &info.snapshots {
        println!("  {:<30} {}  exclusive {}", s.name, format_time(s.created), format_size(s.exclusive_bytes));
    }
    Ok(())
}

pub fn import(dd: &mut DataDir, name: &str, path: &Path, create: bool, offset: &str) -> Result<()> {
    let base = parse_size(offset)?;
    if create && base != 0 {
        bail!("--create sizes the volume from the file: it takes no --offset");
    }
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
    if base.checked_add(len).is_none_or(|end| end > vol.size()) {
        let at = if base == 0 { String::new() } else { format!(" at offset {base}") };
        bail!("{} is {} bytes, larger than volume {} ({} bytes){at}", path.display(), len, name, vol.size());
    }
    let pb = progress(len, "import");
    let mut buf = AlignedBuf::zeroed(CHUNK);
    let mut off = 0u64;
    while off < len {
        let n = (CHUNK as u64).min(len - off) as usize;
        f.read_exact(&mut buf[..n]).with_context(|| format!("cannot read {}", path.display()))?;
        write_sparse(&vol, base + off, &buf[..n])?;
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

/// Create (or truncate) the output file of an export.
pub(super) fn create_output(path: &Path) -> Result<std::fs::File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

pub fn export(dd: &mut DataDir, name: &str, path: &Path) -> Result<()> {
    let vol = match split_target(name) {
        (v, Some(snap)) => dd.open_snapshot_view(v, snap, None)?,
        (v, None) => dd.open_volume(v, true)?,
    };
    let out = create_output(path)?;
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
