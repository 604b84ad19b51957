//! Daemon side of the control socket: a thread accepting connections, one request
//! per line, answered from the daemon's data dir and served volumes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::protocol::{Request, Response};
use crate::error::{IoContext, Result};
pub use crate::service::DaemonState;

pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    pub fn start(data_dir: &Path, state: Arc<DaemonState>) -> Result<ControlServer> {
        let path = data_dir.join(super::SOCKET_NAME);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).ctx(|| format!("cannot bind {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .ctx(|| format!("cannot chmod {}", path.display()))?;
        listener.set_nonblocking(true).ctx(|| format!("cannot configure {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                while !stop2.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let st = state.clone();
                            let _ =
                                std::thread::Builder::new().name("control-conn".into()).spawn(move || handle(s, &st));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "control socket accept failed");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            })
            .ctx(|| "cannot start the control thread".into())?;
        Ok(ControlServer { path, stop, thread: Some(thread) })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn handle(s: UnixStream, state: &DaemonState) {
    let _ = s.set_nonblocking(false);
    let mut reader = BufReader::new(&s);
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => answer(req, state),
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_string(&resp).expect("serializable");
        out.push('\n');
        if (&s).write_all(out.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

fn answer(req: Request, state: &DaemonState) -> Response {
    match state.answer(req) {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(e.to_string()),
    }
}
