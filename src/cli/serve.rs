//! `logdisk serve`: open the volumes, serve each on its vhost-user-blk socket, answer
//! the control socket, and on SIGTERM/SIGINT finish in-flight requests, flush, drain
//! uploads (bounded) and exit 0.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use parking_lot::Mutex;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::args::ServeArgs;
use logdisk::control::server::{ControlServer, DaemonState};
use logdisk::datadir::DataDir;
use logdisk::frontend::volume_target::VolumeTarget;
use logdisk::frontend::{spawn_device, ServeOptions};
use logdisk::units::format_size;
use logdisk::volume::scrubber::Scrubber;

fn resolve_group(g: &str) -> Result<u32> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(g).context("bad group name")?;
    // SAFETY: getgrnam with a valid C string; the result is read immediately.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        bail!("unknown group {g:?}");
    }
    // SAFETY: non-null group entry.
    Ok(unsafe { (*gr).gr_gid })
}

pub fn serve(mut dd: DataDir, args: ServeArgs) -> Result<()> {
    if args.socket.is_none() && args.socket_dir.is_none() && args.nbd.is_empty() {
        bail!("nothing to serve on: give --socket PATH, --socket-dir DIR or --nbd ADDR");
    }
    if args.socket.is_some() && args.volumes.len() != 1 {
        bail!("--socket serves exactly one volume; use --socket-dir DIR for several");
    }
    let mode = u32::from_str_radix(args.socket_mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .with_context(|| format!("bad --socket-mode {:?}: use octal such as 0600", args.socket_mode))?;
    let mut opts = ServeOptions { queue_size: args.queue_size, socket_mode: mode, ..ServeOptions::default() };
    if let Some(q) = args.num_queues {
        if q == 0 || q > 64 {
            bail!("--num-queues must be 1..=64");
        }
        opts.num_queues = q;
    }
    opts.socket_group = args.socket_group.as_deref().map(resolve_group).transpose()?;
    let nbd_cfg = super::nbd_serve::config(&args, opts.socket_mode, opts.socket_group)?;
    if let Some(d) = &args.socket_dir {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    // Catch signals before anything is served, so a signal during start-up is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("cannot install signal handlers")?;

    let mut served = HashMap::new();
    let mut order = Vec::new();
    // Volumes first, then snapshot views (VOL@SNAP, always read-only), which may read
    // a snapshot of a volume served here.
    let (views, plain): (Vec<&String>, Vec<&String>) = args.volumes.iter().partition(|n| n.contains('@'));
    for name in plain.into_iter().chain(views) {
        if served.contains_key(name) {
            bail!("volume {name} named twice");
        }
        let vol = match super::volume_cmds::split_target(name) {
            (v, Some(snap)) => {
                let live = served.get(v).cloned();
                dd.open_snapshot_view(v, snap, live.as_ref())?
            }
            (v, None) => dd.open_volume(v, args.read_only)?,
        };
        served.insert(name.clone(), vol.clone());
        order.push((name.clone(), vol));
    }
    let root = dd.root().to_path_buf();
    let state = Arc::new(DaemonState { data_dir: Mutex::new(dd), served });
    let mut control = ControlServer::start(&root, state.clone())?;
    if let Some(addr) = &args.metrics {
        let local = logdisk::control::metrics::start(addr, state.clone())?;
        println!("metrics on http://{local}/metrics");
    }

    // Garbage-driven scrub of every open writable volume (and the clock as a backstop).
    let mut scrubber = {
        let mut dd = state.data_dir.lock();
        let cfg = dd.config().scrub.clone();
        let served = Arc::downgrade(&state);
        let volumes =
            Box::new(move || served.upgrade().map(|s| s.served.values().cloned().collect()).unwrap_or_default());
        Scrubber::start(dd.env()?, volumes, cfg, root.clone()).context("cannot start the scrubber")?
    };

    let mut devices = Vec::new();
    for (name, vol) in &order {
        let socket: PathBuf = match (&args.socket, &args.socket_dir) {
            (Some(s), _) => s.clone(),
            (None, Some(d)) => d.join(format!("{name}.sock")),
            _ => continue, // NBD only
        };
        let target = Arc::new(VolumeTarget::new(vol.clone(), args.read_only));
        let h = spawn_device(&socket, target, &opts).with_context(|| format!("cannot serve volume {name}"))?;
        tracing::info!(volume = %name, socket = %socket.display(), size = %format_size(vol.size()), queues = opts.num_queues, "serving");
        println!("serving volume {name} on {}", socket.display());
        devices.push(h);
    }
    let nbd = super::nbd_serve::start(nbd_cfg, &order, &state, args.read_only)?;
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let sig = signals.forever().next().unwrap_or(SIGTERM);
    tracing::info!(signal = sig, "shutting down: finishing in-flight requests");
    // A second signal during the drain exits at once (what is not uploaded stays local).
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            eprintln!("second signal: exiting now; un-uploaded data stays in the local write buffer");
            std::process::exit(1);
        }
    });
    for d in devices {
        if let Err(e) = d.shutdown() {
            tracing::warn!(error = %e, "device shutdown");
        }
    }
    nbd.stop();
    control.stop();
    scrubber.stop();
    let mut failed = false;
    for (name, vol) in &order {
        match vol.close() {
            Ok(r) if r.drained => tracing::info!(volume = %name, "flushed and uploaded"),
            Ok(r) => {
                tracing::warn!(volume = %name, pending = %format_size(r.pending_bytes), "flushed; not all uploaded (kept locally, uploaded on next start)")
            }
            Err(e) => {
                tracing::error!(volume = %name, error = %e, "close failed");
                failed = true;
            }
        }
    }
    drop(order);
    drop(state);
    if failed {
        bail!("some volumes failed to close cleanly");
    }
    Ok(())
}
