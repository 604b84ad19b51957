//! The volumes a running daemon serves, changed while it runs: attach opens a volume
//! (or a `VOL@SNAP` view) and serves it on its own socket; detach stops that one device
//! (in-flight requests finish), flushes and closes the volume and removes the socket.
//! Each volume has its own device threads, so attaching or detaching one never pauses
//! the others' IO. The wanted set is recorded in the data dir ([`super::record`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::record::{self, AttachSpec};
use crate::control::ops::Served;
use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::frontend::volume_target::VolumeTarget;
use crate::frontend::{spawn_device, DeviceHandle, FrontendError, ServeOptions};
use crate::units::{format_size, validate_name};
use crate::volume::{CloseReport, Volume};

/// Daemon-wide defaults of `logdisk serve` that attachments inherit.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Where `VOL.sock` goes when an attach names no socket.
    pub socket_dir: Option<PathBuf>,
    pub socket_mode: u32,
    pub socket_group: Option<u32>,
    pub num_queues: u16,
    pub queue_size: u16,
    /// Worker threads per device (0: one per queue).
    pub io_threads: u16,
    /// Register guest memory with the queues' io_uring rings.
    pub register_memory: bool,
}

/// An attach request as the operator gave it (unset fields take the defaults).
#[derive(Debug, Clone, Default)]
pub struct AttachRequest {
    pub name: String,
    pub socket: Option<PathBuf>,
    pub read_only: bool,
    pub num_queues: Option<u16>,
    pub queue_size: Option<u16>,
}

/// A volume being served.
struct Attached {
    volume: Arc<Volume>,
    device: DeviceHandle,
    spec: AttachSpec,
}

/// What `volume list` shows of an attachment.
#[derive(Debug, Clone)]
pub struct Status {
    pub spec: AttachSpec,
    /// False for a recorded attachment that could not be brought back.
    pub attached: bool,
    pub connected: bool,
    pub error: Option<String>,
}

/// The daemon's attached volumes and their record.
pub struct Attachments {
    root: PathBuf,
    defaults: Defaults,
    live: RwLock<HashMap<String, Attached>>,
    /// What should be attached (the record): live ones and ones that failed to come back.
    wanted: Mutex<BTreeMap<String, AttachSpec>>,
    /// Why a recorded attachment failed to come back at start.
    failed: Mutex<HashMap<String, String>>,
}

fn split(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((v, s)) => (v, Some(s)),
        None => (name, None),
    }
}

impl Attachments {
    /// The attachments of data dir `root` (the record is loaded, nothing attached yet).
    pub fn new(root: &Path, defaults: Defaults) -> Result<Attachments> {
        let wanted = record::load(root)?;
        Ok(Attachments {
            root: root.to_path_buf(),
            defaults,
            live: RwLock::new(HashMap::new()),
            wanted: Mutex::new(wanted),
            failed: Mutex::new(HashMap::new()),
        })
    }

    pub fn defaults(&self) -> &Defaults {
        &self.defaults
    }

    /// The recorded attachments (what a restarted daemon brings back).
    pub fn recorded(&self) -> Vec<AttachSpec> {
        self.wanted.lock().values().cloned().collect()
    }

    /// Every served volume by name (for management operations and the scrubber).
    pub fn volumes(&self) -> Served {
        self.live.read().iter().map(|(k, a)| (k.clone(), a.volume.clone())).collect()
    }

    /// The spec a request stands for.
    fn spec_of(&self, req: &AttachRequest) -> Result<AttachSpec> {
        let (vol, snap) = split(&req.name);
        validate_name("volume", vol)?;
        if let Some(s) = snap {
            validate_name("snapshot", s)?;
        }
        let socket = match (&req.socket, &self.defaults.socket_dir) {
            (Some(s), _) if s.is_absolute() => s.clone(),
            (Some(s), _) => {
                return Err(Error::InvalidArgument(format!("socket path {} must be absolute", s.display())))
            }
            (None, Some(d)) => d.join(format!("{}.sock", req.name)),
            (None, None) => {
                return Err(Error::InvalidArgument(
                    "give --socket PATH: this daemon was started without --socket-dir".into(),
                ))
            }
        };
        let spec = AttachSpec {
            name: req.name.clone(),
            socket,
            read_only: req.read_only || snap.is_some(),
            num_queues: req.num_queues.unwrap_or(self.defaults.num_queues),
            queue_size: req.queue_size.unwrap_or(self.defaults.queue_size),
        };
        self.options(&spec).validate().map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(spec)
    }

    fn options(&self, spec: &AttachSpec) -> ServeOptions {
        ServeOptions {
            num_queues: spec.num_queues,
            io_threads: self.defaults.io_threads,
            queue_size: spec.queue_size,
            socket_mode: self.defaults.socket_mode,
            socket_group: self.defaults.socket_group,
            register_memory: self.defaults.register_memory,
        }
    }

    /// Attach what `req` asks for and record it. The caller holds the data dir (so
    /// attach, detach and other management requests do not interleave).
    pub fn attach(&self, dd: &mut DataDir, req: &AttachRequest) -> Result<AttachSpec> {
        let spec = self.spec_of(req)?;
        self.attach_spec(dd, &spec)?;
        Ok(spec)
    }

    /// Attach `spec` (from a request, the command line or the record) and record it.
    pub fn attach_spec(&self, dd: &mut DataDir, spec: &AttachSpec) -> Result<()> {
        {
            let live = self.live.read();
            if let Some(a) = live.get(&spec.name) {
                return Err(Error::Refused(format!(
                    "volume {} is already attached on {}",
                    spec.name,
                    a.spec.socket.display()
                )));
            }
            if let Some((other, _)) = live.iter().find(|(_, a)| a.spec.socket == spec.socket) {
                return Err(Error::Refused(format!(
                    "socket path {} is in use by attached volume {other}",
                    spec.socket.display()
                )));
            }
        }
        let (vol, snap) = split(&spec.name);
        let volume = match snap {
            Some(s) => {
                let base = self.live.read().get(vol).map(|a| a.volume.clone());
                dd.open_snapshot_view(vol, s, base.as_ref())
            }
            None => dd.open_volume(vol, spec.read_only),
        }
        .map_err(|e| match e {
            Error::Fenced { .. } => Error::Refused(format!("volume {vol} is held by another host: {e}")),
            e => e,
        })?;
        let target = Arc::new(VolumeTarget::new(volume.clone(), spec.read_only));
        let device = match spawn_device(&spec.socket, target, &self.options(spec)) {
            Ok(d) => d,
            Err(e) => {
                if let Err(ce) = volume.close() {
                    tracing::warn!(volume = %spec.name, error = %ce, "closing after a failed attach");
                }
                return Err(match e {
                    FrontendError::SocketInUse(_) | FrontendError::NotASocket(_) => Error::Refused(e.to_string()),
                    e => Error::Refused(format!("cannot serve volume {}: {e}", spec.name)),
                });
            }
        };
        tracing::info!(volume = %spec.name, socket = %spec.socket.display(), size = %format_size(volume.size()),
            queues = spec.num_queues, read_only = spec.read_only, "attached");
        self.live.write().insert(spec.name.clone(), Attached { volume, device, spec: spec.clone() });
        self.failed.lock().remove(&spec.name);
        let mut wanted = self.wanted.lock();
        if wanted.get(&spec.name) != Some(spec) {
            wanted.insert(spec.name.clone(), spec.clone());
            record::save(&self.root, &wanted)?;
        }
        Ok(())
    }

    /// Drop `name` from the record (a volume named at start takes its socket).
    pub fn forget(&self, name: &str) -> Result<()> {
        let mut wanted = self.wanted.lock();
        if wanted.remove(name).is_some() {
            record::save(&self.root, &wanted)?;
        }
        Ok(())
    }

    /// Note that recorded attachment `name` could not be brought back (shown by list).
    pub fn mark_failed(&self, name: &str, why: String) {
        self.failed.lock().insert(name.to_string(), why);
    }

    /// Detach `name`: refused while a hypervisor is connected unless `force` (which
    /// disconnects it); in-flight requests finish, the volume is flushed and closed, the
    /// socket removed and the record updated.
    pub fn detach(&self, name: &str, force: bool) -> Result<Option<CloseReport>> {
        let a = {
            let mut live = self.live.write();
            match live.get(name) {
                None => {
                    drop(live);
                    // A recorded attachment that did not come back: forget it.
                    let mut wanted = self.wanted.lock();
                    if wanted.remove(name).is_some() {
                        record::save(&self.root, &wanted)?;
                        self.failed.lock().remove(name);
                        return Ok(None);
                    }
                    return Err(Error::Refused(format!("volume {name} is not attached")));
                }
                Some(a) if a.device.is_connected() && !force => {
                    return Err(Error::Refused(format!(
                    "volume {name} has a hypervisor connected on {}: detach the disk from the VM first, or use --force",
                    a.spec.socket.display()
                )))
                }
                Some(_) => {}
            }
            // Views of this volume read their snapshot from the object store: they stay.
            live.remove(name).expect("present")
        };
        {
            let mut wanted = self.wanted.lock();
            wanted.remove(name);
            record::save(&self.root, &wanted)?;
        }
        let report = close_attached(name, a)?;
        Ok(Some(report))
    }

    /// Volume `name` changed size: tell its connected hypervisor (errors are logged: the
    /// new size is recorded either way and a reconnecting hypervisor sees it).
    pub fn config_changed(&self, name: &str) {
        let live = self.live.read();
        let Some(a) = live.get(name) else { return };
        match a.device.config_changed() {
            Ok(told) => {
                tracing::info!(volume = name, size = a.volume.size(), told_hypervisor = told, "capacity changed")
            }
            Err(e) => tracing::warn!(volume = name, error = %e, "cannot tell the hypervisor about the new capacity"),
        }
    }

    /// Socket and connection of attachment `name`.
    pub fn status(&self) -> Vec<Status> {
        let live = self.live.read();
        let failed = self.failed.lock();
        self.wanted
            .lock()
            .values()
            .map(|spec| {
                let a = live.get(&spec.name);
                Status {
                    spec: a.map_or_else(|| spec.clone(), |a| a.spec.clone()),
                    attached: a.is_some(),
                    connected: a.is_some_and(|a| a.device.is_connected()),
                    error: failed.get(&spec.name).cloned(),
                }
            })
            .collect()
    }

    /// Stop every device and close every volume (daemon shutdown); the record stays, so
    /// the next start attaches them again. Returns the volumes that failed to close.
    pub fn shutdown_all(&self) -> Vec<String> {
        let all: Vec<(String, Attached)> = self.live.write().drain().collect();
        // Stop every device first (guests stop issuing IO), then close the volumes.
        let (mut volumes, mut failed) = (Vec::new(), Vec::new());
        for (name, a) in all {
            if let Err(e) = a.device.shutdown() {
                tracing::warn!(volume = %name, error = %e, "device shutdown");
            }
            volumes.push((name, a.volume));
        }
        for (name, vol) in volumes {
            match vol.close() {
                Ok(r) => log_close(&name, &r),
                Err(e) => {
                    tracing::error!(volume = %name, error = %e, "close failed");
                    failed.push(name);
                }
            }
        }
        failed
    }
}

fn log_close(name: &str, r: &CloseReport) {
    if r.drained {
        tracing::info!(volume = %name, "flushed and uploaded");
    } else {
        tracing::warn!(volume = %name, pending = %format_size(r.pending_bytes),
            "flushed; not all uploaded (kept locally, uploaded on next start)");
    }
}

/// Stop one device (its in-flight requests finish) and close its volume.
fn close_attached(name: &str, a: Attached) -> Result<CloseReport> {
    let Attached { volume, device, spec } = a;
    device.shutdown().map_err(|e| Error::Refused(format!("stopping the device of {name}: {e}")))?;
    let r = volume.close()?;
    log_close(name, &r);
    tracing::info!(volume = %name, socket = %spec.socket.display(), "detached");
    Ok(r)
}
