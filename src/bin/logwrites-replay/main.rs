//! logwrites-replay: the power-loss checker of tests/guest/powerloss-e2e.sh.
//!
//! Replays a dm-log-writes log (taken under ext4, or XFS with `--fs xfs`, holding a logdisk
//! data dir, while `logdisk-loadgen --journal` wrote to a served volume) onto an image, point
//! by point; at each chosen point it copies the image, recovers the file system as a mount
//! would and copies the data dir out (extract.rs: ext4 `e2fsck -E journal_only` + `debugfs
//! rdump`; XFS a loop mount, as root, + `cp -a`), exports
//! the volume with logdisk (the open runs logdisk's own recovery, no manual step) and
//! checks every sector against the client's journal (model.rs). Points: every mark after
//! the client's flushes, FLUSH/FUA entries, a write between each pair of those, and the
//! end of the log (after a clean shutdown every acknowledged write must be there).
//! With `--dtl-dir` (the run had a DTL server in sync mode), marks and the end are also
//! checked as a takeover would see them: a DTL server on this host on the replayed DTL
//! dir, `logdisk volume takeover` on an empty data dir from the replayed object store.
//!
//!   logwrites-replay --log log.img --dev-size 512M --journal journal.txt \
//!       --logdisk target/release/logdisk --volume vm --work /tmp/w --points all

#[allow(dead_code)] // fill() is the writer's half
#[path = "../../../benches/loadgen/src/crashpattern.rs"]
mod crashpattern;
mod extract;
mod log;
mod model;
mod point;
mod takeover;

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::log::{Log, FLUSH, FUA, MARK};
use crate::model::Model;
use crate::point::{Kind, Point};

#[derive(Parser, Debug)]
#[command(
    name = "logwrites-replay",
    version,
    about = "Replay a dm-log-writes log to each point and check a logdisk volume on it"
)]
struct Args {
    /// The dm-log-writes log device image
    #[arg(long, required_unless_present = "volume_image")]
    log: Option<PathBuf>,
    /// Size of the logged device (e.g. 512M)
    #[arg(long, value_parser = parse_size, required_unless_present = "volume_image")]
    dev_size: Option<u64>,
    /// No log: check this exported volume against the journal, every write acknowledged
    /// before the last completed flush required (device-fault tests)
    #[arg(long)]
    volume_image: Option<PathBuf>,
    /// The client's journal (logdisk-loadgen --journal)
    #[arg(long)]
    journal: PathBuf,
    /// Seed the client wrote its patterns with
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// logdisk binary that opens the volume
    #[arg(long, required_unless_present = "volume_image")]
    logdisk: Option<PathBuf>,
    /// logdisk configuration file (as in the run)
    #[arg(long)]
    config: Option<PathBuf>,
    /// Volume name
    #[arg(long, default_value = "vm")]
    volume: String,
    /// File system the data dir is on (ext4: e2fsck + debugfs; xfs: a loop mount, as root)
    #[arg(long, value_enum, default_value = "ext4")]
    fs: extract::Fs,
    /// Path of the data dir inside the file system
    #[arg(long, default_value = "/ld")]
    data_dir: String,
    /// Work directory (images, copies)
    #[arg(long, required_unless_present = "volume_image")]
    work: Option<PathBuf>,
    /// "all", or how many points to check (spread over marks, FLUSH/FUA entries and points between)
    #[arg(long, default_value = "40")]
    points: String,
    /// Path of the DTL server's dir inside the file system (the run had a DTL in sync mode)
    #[arg(long)]
    dtl_dir: Option<String>,
    /// "all", or at how many of the chosen marks (spread; plus the end) to also restart
    /// from the object store + DTL (needs --dtl-dir)
    #[arg(long, default_value = "all")]
    dtl_points: String,
    /// Mark after which the volume exists (earlier points are not checked)
    #[arg(long, default_value = "ready")]
    start_mark: String,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (n, m) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    n.parse::<u64>().map(|v| v * m).map_err(|_| format!("bad size '{s}'"))
}

/// Every checkable point after the start mark, in log order.
fn candidates(log: &Log, start_mark: &str) -> Result<Vec<Point>> {
    let start = log
        .entries
        .iter()
        .position(|e| e.mark.as_deref() == Some(start_mark))
        .with_context(|| format!("no mark '{start_mark}' in the log"))?;
    let mut pts = Vec::new();
    let mut last_anchor = start + 1;
    for (i, e) in log.entries.iter().enumerate().skip(start + 1) {
        let kind = if e.flags & MARK != 0 {
            Kind::Mark(e.mark.clone().unwrap_or_default())
        } else if e.flags & (FLUSH | FUA) != 0 {
            Kind::Flush
        } else {
            continue;
        };
        // a point between this anchor and the previous one, on a write
        let mid = (last_anchor + i) / 2;
        if mid > last_anchor && mid < i && log.entries[mid].flags & MARK == 0 {
            pts.push(Point { after: mid + 1, kind: Kind::Between });
        }
        pts.push(Point { after: i + 1, kind });
        last_anchor = i + 1;
    }
    pts.push(Point { after: log.entries.len(), kind: Kind::End });
    Ok(pts)
}

/// `n` points spread evenly: half marks, a quarter FLUSH/FUA entries, a quarter between;
/// always the end.
fn sample(all: Vec<Point>, n: usize) -> Vec<Point> {
    let pick = |v: Vec<Point>, k: usize| -> Vec<Point> {
        if v.len() <= k {
            return v;
        }
        (0..k).map(|j| v[(j * 2 + 1) * v.len() / (2 * k)].clone()).collect()
    };
    let by = |f: fn(&Kind) -> bool| all.iter().filter(|p| f(&p.kind)).cloned().collect::<Vec<_>>();
    let marks = by(|k| matches!(k, Kind::Mark(_)));
    let flushes = by(|k| matches!(k, Kind::Flush));
    let between = by(|k| matches!(k, Kind::Between));
    let mut out = pick(marks, n.div_ceil(2));
    out.extend(pick(flushes, n / 4));
    out.extend(pick(between, n - n.div_ceil(2) - n / 4));
    out.extend(by(|k| matches!(k, Kind::End)));
    out.sort_by_key(|p| p.after);
    out.dedup_by_key(|p| p.after);
    out
}

fn main() {
    match run() {
        Ok(0) => {}
        Ok(_) => std::process::exit(1),
        Err(e) => {
            eprintln!("logwrites-replay: error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<u64> {
    let a = Args::parse();
    let t0 = Instant::now();
    let mut model = Model::load(&a.journal, a.seed)?;
    if let Some(img) = &a.volume_image {
        return check_image(&mut model, img);
    }
    let (Some(log), Some(dev_size), Some(logdisk), Some(work)) = (&a.log, a.dev_size, &a.logdisk, &a.work) else {
        bail!("--log, --dev-size, --logdisk and --work are needed");
    };
    let log = Log::open(log)?;
    let all = candidates(&log, &a.start_mark)?;
    let count = |f: fn(&Kind) -> bool| all.iter().filter(|p| f(&p.kind)).count();
    println!(
        "logwrites-replay: log of {} entries ({} marks, {} FLUSH/FUA); journal: {} acknowledged writes, {} completed flushes; {} checkable points",
        log.entries.len(),
        count(|k| matches!(k, Kind::Mark(_))),
        count(|k| matches!(k, Kind::Flush)),
        model.acked_writes,
        model.completed_flushes,
        all.len()
    );
    let points = match a.points.as_str() {
        "all" => all,
        n => sample(all, n.parse().context("--points: 'all' or a number")?),
    };
    std::fs::create_dir_all(work)?;
    let work = std::fs::canonicalize(work)?;
    let img_path = work.join("replay.img");
    let img = File::options().read(true).write(true).create(true).truncate(true).open(&img_path)?;
    img.set_len(dev_size)?;
    let ctx = point::Ctx {
        work,
        image: img_path,
        logdisk: logdisk.clone(),
        config: a.config.clone(),
        volume: a.volume.clone(),
        data_dir: a.data_dir.clone(),
        dtl_dir: a.dtl_dir.clone(),
        fs: a.fs,
    };
    // Points that also get the object store + DTL check: marks (spread) and the end.
    let marks: Vec<usize> = points.iter().filter(|p| matches!(p.kind, Kind::Mark(_))).map(|p| p.after).collect();
    let dtl_marks: Vec<usize> = match a.dtl_points.as_str() {
        "all" => marks,
        n => {
            let k: usize = n.parse().context("--dtl-points: 'all' or a number")?;
            if marks.len() <= k {
                marks
            } else {
                (0..k).map(|j| marks[(j * 2 + 1) * marks.len() / (2 * k)]).collect()
            }
        }
    };
    let with_dtl = |p: &Point| a.dtl_dir.is_some() && (p.kind == Kind::End || dtl_marks.contains(&p.after));

    let mut applied = 0usize;
    let mut req_pos = 0usize;
    let mut buf = Vec::new();
    let (mut checked, mut violations, mut by_kind) = (0u64, 0u64, [0u64; 4]);
    let (mut store_checked, mut store_violations) = (0u64, 0u64);
    // Takeovers that replayed DTL entries, and how many in all.
    let (mut dtl_used, mut dtl_total) = (0u64, 0u64);
    for (n, p) in points.iter().enumerate() {
        while applied < p.after {
            log.apply(applied, &img, &mut buf)?;
            if let Some(name) = &log.entries[applied].mark {
                if let Some(pos) = model.mark_position(name) {
                    req_pos = req_pos.max(pos);
                }
            }
            applied += 1;
        }
        let pos = if p.kind == Kind::End { model.end_position() } else { req_pos };
        model.require_until(pos);
        let r = ctx.check(p, &model, with_dtl(p)).with_context(|| format!("point after entry {}", p.after))?;
        checked += 1;
        by_kind[p.kind.index()] += 1;
        let mut status =
            if r.problems.is_empty() { "ok".to_string() } else { format!("VIOLATION: {}", r.problems.join("; ")) };
        if let Some(sp) = &r.store {
            store_checked += 1;
            if let Some(n) = r.dtl_entries {
                status.push_str(&format!("; takeover replayed {n} DTL entries"));
                dtl_used += u64::from(n > 0);
                dtl_total += n;
            }
            if sp.is_empty() {
                status.push_str("; object store ok");
            } else {
                store_violations += 1;
                status.push_str(&format!("; OBJECT STORE VIOLATION: {}", sp.join("; ")));
            }
        }
        println!(
            "point {}/{} after entry {} ({}): {} sectors required, {} written sectors read back, {status} [{:.1}s]",
            n + 1,
            points.len(),
            p.after,
            p.kind,
            model.required_sectors(),
            r.written,
            r.seconds
        );
        if !r.problems.is_empty() {
            violations += 1;
        }
    }
    println!(
        "logwrites-replay: data dir: {checked} points checked ({} marks, {} FLUSH/FUA, {} between, {} end), {violations} with violations; \
         object store{}: {store_checked} points checked, {store_violations} with violations{}; {:.0}s",
        by_kind[0],
        by_kind[1],
        by_kind[2],
        by_kind[3],
        if a.dtl_dir.is_some() { " + DTL (alone at the end)" } else { " alone (at the end)" },
        if a.dtl_dir.is_some() {
            format!(" ({dtl_used} takeovers replayed DTL entries, {dtl_total} in all)")
        } else {
            String::new()
        },
        t0.elapsed().as_secs_f64()
    );
    if checked == 0 {
        bail!("no point checked");
    }
    Ok(violations + store_violations)
}

/// `--volume-image`: one exported volume against the journal.
fn check_image(model: &mut Model, img: &std::path::Path) -> Result<u64> {
    let data = std::fs::read(img).with_context(|| format!("read {}", img.display()))?;
    model.require_until(model.last_completed_flush());
    let (bad, count) = model.check(&data, 10);
    println!(
        "logwrites-replay: {} acknowledged writes, {} completed flushes, {} failed requests; {} sectors required; {count} bad sectors",
        model.acked_writes,
        model.completed_flushes,
        model.failed,
        model.required_sectors()
    );
    for b in &bad {
        println!("  sector {}: {} (required write {})", b.sector, b.found, b.required);
    }
    Ok(u64::from(count > 0))
}
