//! The "object store + DTL" check of a replay point: what a host that takes over after a
//! power loss sees. A DTL server runs on this host (loopback, a free port) on a copy of
//! the replayed DTL dir; `logdisk volume takeover` on an empty data dir rebuilds the volume
//! from a copy of the replayed object store and the DTL, then it is exported and checked.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::point::{last_line, run};

/// A DTL server child, stopped (SIGTERM, then waited for) when dropped.
struct DtlServer {
    child: Child,
    pub addr: String,
}

impl DtlServer {
    /// The DTL flags of the run, in one place (as in tests/guest/powerloss-guest.sh).
    fn start(logdisk: &Path, dir: &Path, log: &Path) -> Result<DtlServer> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(logdisk)
            .args(["dtl", "serve", "--listen", &addr, "--insecure", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("start the DTL server")?;
        let mut srv = DtlServer { child, addr };
        let t0 = Instant::now();
        while TcpStream::connect(&srv.addr).is_err() {
            if let Some(st) = srv.child.try_wait()? {
                anyhow::bail!("the DTL server exited ({st}): {}", std::fs::read_to_string(log).unwrap_or_default());
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(20), "the DTL server did not listen on {}", srv.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(srv)
    }
}

impl Drop for DtlServer {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of our own child, not yet waited for (no reuse).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Copy `objects` and `dtl` (the replayed dirs) under `out`, take the volume over from
/// them on an empty data dir and export it to `raw`. Returns the number of DTL entries
/// the takeover replayed, or Err(message) when logdisk refuses; the caller checks the
/// exported image.
pub fn takeover_export(
    logdisk: &Path,
    config: Option<&Path>,
    volume: &str,
    objects: &Path,
    dtl: &Path,
    out: &Path,
    raw: &Path,
) -> Result<std::result::Result<u64, String>> {
    let store = out.join("objects-dtl");
    let dtl_copy = out.join("dtl-copy");
    for (from, to) in [(objects, &store), (dtl, &dtl_copy)] {
        let st = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
        anyhow::ensure!(st.success(), "cp {} {}", from.display(), to.display());
    }
    let srv = DtlServer::start(logdisk, &dtl_copy, &out.join("dtl-server.log"))?;
    let fresh = out.join("takeover-data-dir");
    let backend = format!("file://{}", store.display());
    let ld = |args: &[&str]| -> Result<(bool, String)> {
        let mut cmd = Command::new("timeout");
        cmd.arg("300").arg(logdisk).arg("--data-dir").arg(&fresh).arg("--backend").arg(&backend);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let (rc, text) = run(cmd.args(args))?;
        Ok((rc == 0, text))
    };
    let (ok, text) = ld(&["volume", "takeover", volume, "--dtl", &srv.addr, "--dtl-mode", "sync"])?;
    if !ok {
        return Ok(Err(format!("takeover refused: {}", last_line(&text))));
    }
    // "... N DTL entries replayed into M epochs ..."
    let replayed = text
        .split(" DTL entries replayed")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .with_context(|| format!("no DTL entry count in the takeover's output: {}", last_line(&text)))?;
    let raw_s = raw.to_str().context("path")?;
    let (ok, text) = ld(&["volume", "export", volume, raw_s])?;
    drop(srv);
    if !ok {
        return Ok(Err(format!("export after takeover failed: {}", last_line(&text))));
    }
    Ok(Ok(replayed))
}
