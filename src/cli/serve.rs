//! `logdisk serve`: the host service. Attaches the volumes recorded by earlier runs and
//! those named on the command line, answers the control socket (attach, detach and every
//! management request while it runs), exports over NBD with `--nbd` (`nbd_serve.rs`), and
//! on SIGTERM/SIGINT finishes in-flight requests, flushes, drains uploads (bounded) and
//! exits 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use parking_lot::Mutex;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::args::ServeArgs;
use logdisk::control::server::ControlServer;
use logdisk::datadir::DataDir;
use logdisk::frontend::ServeOptions;
use logdisk::service::memory_trim::MemoryTrimmer;
use logdisk::service::notify::notify;
use logdisk::service::{AttachRequest, Attachments, DaemonState, Defaults};
use logdisk::volume::scrubber::Scrubber;
use logdisk::volume::Volume;

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

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) })
}

/// The daemon-wide defaults from the command line.
fn defaults(args: &ServeArgs) -> Result<Defaults> {
    let socket_mode = u32::from_str_radix(args.socket_mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .with_context(|| format!("bad --socket-mode {:?}: use octal such as 0600", args.socket_mode))?;
    let mut num_queues = ServeOptions::default().num_queues;
    if let Some(q) = args.num_queues {
        if q == 0 || q > 64 {
            bail!("--num-queues must be 1..=64");
        }
        num_queues = q;
    }
    let socket_dir = match &args.socket_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            Some(absolute(d)?)
        }
        None => None,
    };
    Ok(Defaults {
        socket_dir,
        socket_mode,
        socket_group: args.socket_group.as_deref().map(resolve_group).transpose()?,
        num_queues,
        queue_size: args.queue_size,
        io_threads: args.io_threads,
        register_memory: args.register_memory,
    })
}

pub fn serve(mut dd: DataDir, args: ServeArgs) -> Result<()> {
    if args.socket.is_some() && args.volumes.len() != 1 {
        bail!("--socket serves exactly one volume; use --socket-dir DIR for several");
    }
    // Named volumes with no vhost-user socket are served over NBD only.
    let nbd_only = args.socket.is_none() && args.socket_dir.is_none() && !args.nbd.is_empty();
    if !args.volumes.is_empty() && args.socket.is_none() && args.socket_dir.is_none() && !nbd_only {
        bail!("give --socket-dir DIR (or --socket PATH for one volume, or --nbd ADDR) to serve the named volumes");
    }
    let defaults = defaults(&args)?;
    let nbd_cfg = super::nbd_serve::config(&args, defaults.socket_mode, defaults.socket_group)?;
    // Catch signals before anything is served, so a signal during start-up is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("cannot install signal handlers")?;
    // Room for every volume's open SCO object files (see service::fd_limit).
    match logdisk::service::fd_limit::raise() {
        Ok((before, after)) if after > before => tracing::info!(before, after, "open-file limit raised"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }

    let root = dd.root().to_path_buf();
    let attachments = Attachments::new(&root, defaults)?;
    let unattached = if nbd_only { open_unattached(&mut dd, &args)? } else { Vec::new() };
    let state = Arc::new(DaemonState {
        data_dir: Mutex::new(dd),
        attachments,
        unattached: unattached.iter().cloned().collect::<HashMap<_, _>>(),
    });
    attach_at_start(&state, &args, nbd_only)?;
    // NBD exports of the named volumes (attached or not); others attached later resolve
    // by name.
    let named: Vec<(String, Arc<Volume>)> = {
        let served = state.served();
        args.volumes.iter().filter_map(|n| served.get(n).map(|v| (n.clone(), v.clone()))).collect()
    };
    let nbd = super::nbd_serve::start(nbd_cfg, &named, &state, args.read_only)?;
    drop(named);

    let mut control = ControlServer::start(&root, state.clone())?;
    if let Some(addr) = &args.metrics {
        let local = logdisk::control::metrics::start(addr, state.clone())?;
        println!("metrics on http://{local}/metrics");
    }
    // Garbage-driven scrub of every attached writable volume (and the clock as a backstop).
    let mut scrubber = {
        let mut dd = state.data_dir.lock();
        let cfg = dd.config().scrub.clone();
        let weak = Arc::downgrade(&state);
        let volumes = Box::new(move || weak.upgrade().map(|s| s.served().into_values().collect()).unwrap_or_default());
        Scrubber::start(dd.env()?, volumes, cfg, root.clone()).context("cannot start the scrubber")?
    };
    // Freed heap memory back to the host every few seconds (glibc keeps it otherwise).
    let mut trimmer = MemoryTrimmer::start().context("cannot start the memory trimmer")?;
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Every attached socket listens and the control socket answers.
    let n = state.served().len();
    notify(&format!("READY=1\nSTATUS=serving {n} volume{}", if n == 1 { "" } else { "s" }));

    let sig = signals.forever().next().unwrap_or(SIGTERM);
    notify("STOPPING=1\nSTATUS=stopping: finishing in-flight requests, flushing, draining uploads");
    tracing::info!(signal = sig, "shutting down: finishing in-flight requests");
    // A second signal during the drain exits at once (what is not uploaded stays local).
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            eprintln!("second signal: exiting now; un-uploaded data stays in the local write buffer");
            std::process::exit(1);
        }
    });
    // No new management requests, then stop the scrubber, then the devices and volumes.
    nbd.stop();
    control.stop();
    scrubber.stop();
    trimmer.stop();
    let mut failed = state.attachments.shutdown_all();
    for (name, vol) in &unattached {
        if let Err(e) = vol.close() {
            tracing::error!(volume = %name, error = %e, "close failed");
            failed.push(name.clone());
        }
    }
    drop(unattached);
    drop(state);
    if !failed.is_empty() {
        bail!("some volumes failed to close cleanly: {}", failed.join(", "));
    }
    Ok(())
}

/// Open the named volumes (volumes first, then `VOL@SNAP` views) for NBD only.
fn open_unattached(dd: &mut DataDir, args: &ServeArgs) -> Result<Vec<(String, Arc<Volume>)>> {
    let mut open: Vec<(String, Arc<Volume>)> = Vec::new();
    let (views, plain): (Vec<&String>, Vec<&String>) = args.volumes.iter().partition(|n| n.contains('@'));
    for name in plain.into_iter().chain(views) {
        if open.iter().any(|(n, _)| n == name) {
            bail!("volume {name} named twice");
        }
        let vol = match super::volume_cmds::split_target(name) {
            (v, Some(snap)) => {
                let live = open.iter().find(|(n, _)| n == v).map(|(_, l)| l.clone());
                dd.open_snapshot_view(v, snap, live.as_ref())?
            }
            (v, None) => dd.open_volume(v, args.read_only)?,
        };
        open.push((name.clone(), vol));
    }
    Ok(open)
}

/// Attach the recorded volumes (a failure is logged, and shown by `volume list`; the
/// others are served) and then the named ones (a failure ends the start, as before).
fn attach_at_start(state: &DaemonState, args: &ServeArgs, nbd_only: bool) -> Result<()> {
    let mut dd = state.data_dir.lock();
    let named: Vec<&String> = {
        // Volumes first, then snapshot views (VOL@SNAP), which may read a snapshot of a
        // volume served here.
        let (views, plain): (Vec<&String>, Vec<&String>) = args.volumes.iter().partition(|n| n.contains('@'));
        plain.into_iter().chain(views).collect()
    };
    for (i, n) in named.iter().enumerate() {
        if named[..i].contains(n) {
            bail!("volume {n} named twice");
        }
    }
    // The sockets the named volumes take: a recorded attachment on one of them gives way
    // (a script serving another volume on the same socket replaces the old one).
    let claimed: Vec<PathBuf> = match (&args.socket, &state.attachments.defaults().socket_dir) {
        (Some(s), _) => vec![absolute(s)?],
        (None, Some(d)) => named.iter().map(|n| d.join(format!("{n}.sock"))).collect(),
        (None, None) => Vec::new(),
    };
    let mut recorded = state.attachments.recorded();
    recorded.retain(|s| !named.iter().any(|n| **n == s.name));
    for s in recorded.iter().filter(|s| claimed.contains(&s.socket)) {
        tracing::info!(volume = %s.name, socket = %s.socket.display(), "recorded attachment replaced by a volume named at start");
        state.attachments.forget(&s.name)?;
    }
    recorded.retain(|s| !claimed.contains(&s.socket));
    recorded.sort_by_key(|s| s.name.contains('@'));
    for spec in recorded {
        // After a reboot a socket dir on tmpfs (/run) is gone: make it again.
        if let Some(dir) = spec.socket.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match state.attachments.attach_spec(&mut dd, &spec) {
            Ok(()) => println!("serving volume {} on {}", spec.name, spec.socket.display()),
            Err(e) => {
                tracing::error!(volume = %spec.name, error = %e, "cannot attach a recorded volume");
                state.attachments.mark_failed(&spec.name, e.to_string());
            }
        }
    }
    if nbd_only {
        return Ok(()); // opened by `open_unattached`
    }
    for name in named {
        let req = AttachRequest {
            name: name.clone(),
            socket: args.socket.as_deref().map(absolute).transpose()?,
            read_only: args.read_only,
            num_queues: None,
            queue_size: None,
        };
        let spec = state.attachments.attach(&mut dd, &req).with_context(|| format!("cannot serve volume {name}"))?;
        println!("serving volume {name} on {}", spec.socket.display());
    }
    Ok(())
}
