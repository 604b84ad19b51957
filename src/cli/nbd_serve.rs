//! `logdisk serve --nbd unix:PATH|tcp:HOST:PORT`: export the served volumes (and VOL@SNAP
//! views) over NBD beside their vhost-user sockets. `VOL@SNAP` of a volume served here
//! also resolves on demand (a snapshot taken while the daemon runs), read-only, with the
//! `logdisk:changed-since:OLDER` metadata context.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use anyhow::{bail, Context, Result};
use parking_lot::Mutex;

use super::args::ServeArgs;
use super::volume_cmds::split_target;
use logdisk::control::server::DaemonState;
use logdisk::nbd::volume_export::VolumeExport;
use logdisk::nbd::{server, ExportSet, ExportTarget, ListenAddr, NbdOptions, NbdServer};
use logdisk::volume::Volume;

/// Snapshot views opened on demand, at most this many at once.
const MAX_DYNAMIC: usize = 32;

/// The exports of `serve`: the named volumes and views, and snapshots of served volumes.
struct Exports {
    fixed: Vec<(String, Arc<VolumeExport>)>,
    state: Weak<DaemonState>,
    dynamic: Mutex<HashMap<String, Arc<VolumeExport>>>,
}

/// `f(A)` = the changes from `volume@A` to `volume@snap`, from the volume's maps.
fn changed_fn(state: Weak<DaemonState>, volume: String, snap: String) -> logdisk::nbd::volume_export::ChangedFn {
    Box::new(move |since: &str| {
        let st = state.upgrade().ok_or(logdisk::Error::ShutDown)?;
        if let Some(live) = st.served().get(&volume) {
            return live.snapshot_diff(since, &snap);
        }
        let mut dd = st.data_dir.lock();
        let v = dd.open_volume(&volume, true)?;
        let r = v.snapshot_diff(since, &snap);
        v.close()?;
        r
    })
}

impl Exports {
    fn export_of(&self, name: &str, vol: Arc<Volume>, read_only: bool) -> VolumeExport {
        let e = VolumeExport::new(vol, read_only);
        match split_target(name) {
            (v, Some(s)) => e.with_changed(changed_fn(self.state.clone(), v.to_string(), s.to_string())),
            _ => e,
        }
    }
}

impl ExportSet for Exports {
    fn names(&self) -> Vec<String> {
        self.fixed.iter().map(|(n, _)| n.clone()).collect()
    }

    fn open(&self, name: &str) -> Result<Arc<dyn ExportTarget>, String> {
        if let Some((_, e)) = self.fixed.iter().find(|(n, _)| n == name) {
            return Ok(e.clone());
        }
        let state = self.state.upgrade().ok_or("the daemon is shutting down")?;
        let served = state.served();
        let (v, Some(snap)) = split_target(name) else {
            // A volume attached (`logdisk attach`) after the NBD listener started.
            return match served.get(name) {
                Some(vol) => Ok(Arc::new(self.export_of(name, vol.clone(), vol.read_only()))),
                None => Err(format!("no export {name:?} here (see NBD_OPT_LIST)")),
            };
        };
        let live = served.get(v).filter(|l| !l.read_only()).cloned();
        let Some(live) = live else {
            return Err(format!("volume {v} is not served writable here, so {name} cannot be opened on demand"));
        };
        let mut dynamic = self.dynamic.lock();
        // Views no connection uses any more are let go (a deleted snapshot's view too).
        dynamic.retain(|_, e| Arc::strong_count(e) > 1);
        if let Some(e) = dynamic.get(name) {
            return Ok(e.clone());
        }
        if dynamic.len() >= MAX_DYNAMIC {
            return Err(format!("{MAX_DYNAMIC} snapshot exports are open already"));
        }
        let view = state.data_dir.lock().open_snapshot_view(v, snap, Some(&live)).map_err(|e| e.to_string())?;
        tracing::info!(export = name, "snapshot export opened on demand");
        let e = Arc::new(self.export_of(name, view, true));
        dynamic.insert(name.to_string(), e.clone());
        Ok(e)
    }
}

/// The NBD listeners `serve` was asked for (none without `--nbd`).
pub struct NbdExports {
    servers: Vec<NbdServer>,
}

impl NbdExports {
    pub fn stop(self) {
        for s in self.servers {
            s.stop();
        }
    }
}

/// The checked `--nbd*` options (checked before any volume is opened).
pub struct NbdConfig {
    addrs: Vec<ListenAddr>,
    opts: NbdOptions,
}

/// Check the NBD options of `serve`: addresses, token file, TCP only with a token or
/// `--insecure`.
pub fn config(args: &ServeArgs, socket_mode: u32, socket_group: Option<u32>) -> Result<NbdConfig> {
    if args.nbd.is_empty() && (args.nbd_token_file.is_some() || args.insecure) {
        bail!("--nbd-token-file and --insecure only apply with --nbd");
    }
    let token = match &args.nbd_token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            let t = t.trim().to_string();
            if t.len() < 16 || t.contains('/') || t.chars().any(char::is_whitespace) {
                bail!("the NBD token in {} must be at least 16 characters, without '/' or spaces", p.display());
            }
            Some(t)
        }
        None => None,
    };
    let opts = NbdOptions { socket_mode, socket_group, token, insecure: args.insecure, ..NbdOptions::default() };
    let mut addrs = Vec::new();
    for a in &args.nbd {
        let addr: ListenAddr = a.parse()?;
        if let ListenAddr::Tcp(t) = &addr {
            if opts.token.is_none() && !opts.insecure {
                bail!("NBD over TCP ({t}) needs a token (--nbd-token-file FILE) or --insecure: plain NBD has no authentication");
            }
        }
        addrs.push(addr);
    }
    Ok(NbdConfig { addrs, opts })
}

/// Start one NBD listener per `--nbd` address over the volumes `serve` opened.
pub fn start(
    cfg: NbdConfig,
    order: &[(String, Arc<Volume>)],
    state: &Arc<DaemonState>,
    read_only: bool,
) -> Result<NbdExports> {
    if cfg.addrs.is_empty() {
        return Ok(NbdExports { servers: Vec::new() });
    }
    let mut exports = Exports { fixed: Vec::new(), state: Arc::downgrade(state), dynamic: Mutex::new(HashMap::new()) };
    for (name, vol) in order {
        let e = exports.export_of(name, vol.clone(), read_only);
        exports.fixed.push((name.clone(), Arc::new(e)));
    }
    let exports: Arc<dyn ExportSet> = Arc::new(exports);
    let mut servers = Vec::new();
    for addr in &cfg.addrs {
        let s =
            server::start(addr, exports.clone(), &cfg.opts).with_context(|| format!("cannot serve NBD on {addr}"))?;
        println!("serving NBD on {} (exports: {})", s.addr(), exports.names().join(", "));
        servers.push(s);
    }
    Ok(NbdExports { servers })
}
