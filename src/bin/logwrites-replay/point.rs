//! Checking one replay point: copy the replayed image, recover the file system's journal
//! and copy the data dir out (extract.rs), open and export the volume with logdisk, compare
//! with the model. At the end of the log (after a clean shutdown) also from a copy of the
//! object store alone; at the points asked for, from the object store + the DTL server's
//! log (takeover.rs).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::extract::{self, Fs};
use crate::model::Model;
use crate::takeover;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// After a log mark (`f<id>`: the client's flush `id` had completed).
    Mark(String),
    /// After a FLUSH or FUA entry.
    Flush,
    /// After a write between two of the above.
    Between,
    /// The whole log (after logdisk's clean shutdown and the unmount).
    End,
}

impl Kind {
    pub fn index(&self) -> usize {
        match self {
            Kind::Mark(_) => 0,
            Kind::Flush => 1,
            Kind::Between => 2,
            Kind::End => 3,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Mark(m) => write!(f, "mark {m}"),
            Kind::Flush => write!(f, "FLUSH/FUA"),
            Kind::Between => write!(f, "between flushes"),
            Kind::End => write!(f, "end of log"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Point {
    /// Log entries applied (0..after).
    pub after: usize,
    pub kind: Kind,
}

pub struct Ctx {
    pub work: PathBuf,
    pub image: PathBuf,
    pub logdisk: PathBuf,
    pub config: Option<PathBuf>,
    pub volume: String,
    pub data_dir: String,
    /// Path of the DTL server's dir inside the file system, when the run had one.
    pub dtl_dir: Option<String>,
    pub fs: Fs,
}

pub struct Report {
    /// Problems of the data dir check.
    pub problems: Vec<String>,
    /// Problems of the object store check (alone at the end, + DTL where asked); None: not
    /// checked at this point.
    pub store: Option<Vec<String>>,
    /// DTL entries the takeover replayed (None: no takeover at this point).
    pub dtl_entries: Option<u64>,
    /// Sectors read back holding a write.
    pub written: usize,
    pub seconds: f64,
}

pub fn run(cmd: &mut Command) -> Result<(i32, String)> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    Ok((out.status.code().unwrap_or(-1), text))
}

pub fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim()
}

impl Ctx {
    /// Check point `p`; `with_dtl`: also restart from the object store + DTL.
    pub fn check(&self, p: &Point, model: &Model, with_dtl: bool) -> Result<Report> {
        let t0 = Instant::now();
        let mut problems = Vec::new();
        let mut store: Option<Vec<String>> = None;
        let mut dtl_entries = None;
        let copy = self.work.join("point.img");
        let out = self.work.join("point");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        let (rc, text) = run(Command::new("cp").arg("--sparse=always").arg(&self.image).arg(&copy))?;
        anyhow::ensure!(rc == 0, "cp: {}", last_line(&text));
        let dtl_dir = self.dtl_dir.as_deref().filter(|_| with_dtl);
        let mut dirs = vec![self.data_dir.as_str()];
        dirs.extend(dtl_dir);
        let text = extract::extract(self.fs, &copy, &dirs, &out, &mut problems)?;
        let dtl_copy = match dtl_dir {
            Some(d) => {
                let name = Path::new(d).file_name().context("--dtl-dir needs a name")?;
                let dir = out.join(name);
                if !dir.is_dir() {
                    store.get_or_insert_with(Vec::new).push(format!("no DTL dir: {}", last_line(&text)));
                    None
                } else {
                    Some(dir)
                }
            }
            None => None,
        };
        let name = Path::new(&self.data_dir).file_name().context("--data-dir needs a name")?;
        let dd = out.join(name);
        let mut written = 0;
        if !dd.join("backend").is_file() {
            problems.push(format!("no data dir in the file system: {}", last_line(&text)));
        } else {
            let objects = dd.join("objects");
            if let Some(dtl) = &dtl_copy {
                // A takeover after the power loss: object store + DTL, empty data dir
                // (before the data dir is opened below, which may upload).
                let raw = out.join("takeover.raw");
                let what = "object store + DTL";
                let list = store.get_or_insert_with(Vec::new);
                match takeover::takeover_export(
                    &self.logdisk,
                    self.config.as_deref(),
                    &self.volume,
                    &objects,
                    dtl,
                    &out,
                    &raw,
                )? {
                    Ok(n) => {
                        dtl_entries = Some(n);
                        check_raw(&raw, model, what, list)?;
                    }
                    Err(e) => list.push(format!("{what}: {e}")),
                }
            }
            if p.kind == Kind::End {
                // After a clean shutdown the object store alone holds every write: open a
                // copy of it from an empty data dir first (opening the data dir below may
                // upload what the shutdown left behind).
                let alone = out.join("objects-alone");
                let (rc, text) = run(Command::new("cp").arg("-a").arg(&objects).arg(&alone))?;
                anyhow::ensure!(rc == 0, "cp: {}", last_line(&text));
                let fresh = out.join("fresh-data-dir");
                let backend = format!("file://{}", alone.display());
                self.export_and_check(
                    &fresh,
                    Some(&backend),
                    &out.join("alone.raw"),
                    model,
                    "object store alone",
                    store.get_or_insert_with(Vec::new),
                )?;
            }
            // The embedded store is recorded by absolute path; it moved with the copy.
            std::fs::write(dd.join("backend"), format!("file://{}\n", objects.display()))?;
            written = self.export_and_check(&dd, None, &out.join("volume.raw"), model, "data dir", &mut problems)?;
        }
        if !problems.is_empty() || store.as_ref().is_some_and(|s| !s.is_empty()) {
            // keep the evidence
            let keep = self.work.join(format!("failed-{}", p.after));
            let _ = std::fs::remove_dir_all(&keep);
            std::fs::rename(&out, &keep)?;
            std::fs::rename(&copy, keep.join("point.img"))?;
        }
        Ok(Report { problems, store, dtl_entries, written, seconds: t0.elapsed().as_secs_f64() })
    }

    /// Export the volume from data dir `dd` (on `backend` when given) to `raw` and check it
    /// against the model; problems are pushed, labelled `what`. Returns the written sectors.
    fn export_and_check(
        &self,
        dd: &Path,
        backend: Option<&str>,
        raw: &Path,
        model: &Model,
        what: &str,
        problems: &mut Vec<String>,
    ) -> Result<usize> {
        let mut cmd = Command::new("timeout");
        cmd.arg("300").arg(&self.logdisk).arg("--data-dir").arg(dd);
        if let Some(b) = backend {
            cmd.arg("--backend").arg(b);
        }
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(["volume", "export", &self.volume]).arg(raw);
        let (rc, text) = run(&mut cmd)?;
        if rc != 0 {
            problems.push(format!("{what}: logdisk did not open the volume (exit {rc}): {}", last_line(&text)));
            return Ok(0);
        }
        check_raw(raw, model, what, problems)
    }
}

/// Check the exported image `raw` against the model; problems are pushed, labelled
/// `what`. Returns the written sectors.
fn check_raw(raw: &Path, model: &Model, what: &str, problems: &mut Vec<String>) -> Result<usize> {
    let data = std::fs::read(raw).with_context(|| format!("read {}", raw.display()))?;
    let (bad, count) = model.check(&data, 5);
    if count > 0 {
        let detail: Vec<String> =
            bad.iter().map(|b| format!("sector {}: {} (required write {})", b.sector, b.found, b.required)).collect();
        problems.push(format!("{what}: {count} bad sectors: {}", detail.join(", ")));
    }
    Ok(data.chunks_exact(512).filter(|s| s.iter().any(|b| *b != 0)).count())
}
