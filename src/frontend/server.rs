//! Serving a device on a unix socket: bind, accept one hypervisor at a time, shut down.
//!
//! [`spawn_device`] binds the socket (mode and group set before the socket appears under its
//! final name) and starts a server thread. The thread waits with `poll` on the listening
//! socket and an exit eventfd; for each connection it builds a fresh [`BlkDevice`] and
//! vhost-user-backend `VhostUserDaemon` (whose worker threads serve the queues), waits for
//! the hypervisor to disconnect (VM shut down or rebooted), tears the daemon down and goes
//! back to accepting. [`DeviceHandle::shutdown`] works in both states: it shuts the live
//! connection down (workers finish the requests they are executing, then exit) or wakes
//! the accept wait.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::config::DeviceLimits;
use super::device::BlkDevice;
use super::target::BlockTarget;
use super::FrontendError;

/// How a device is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// Request queues, 1..=64.
    pub num_queues: u16,
    /// Worker threads the queues are dealt to (0: [`auto_io_threads`]; more than the
    /// queues: one per queue).
    pub io_threads: u16,
    /// Largest virtqueue the driver may set up (power of two, 4..=32768).
    pub queue_size: u16,
    /// Permission bits of the socket file.
    pub socket_mode: u32,
    /// Group (gid) of the socket file, to share it with a hypervisor user.
    pub socket_group: Option<u32>,
    /// Register guest memory with the queues' io_uring rings (see `DeviceLimits`; off by
    /// default).
    pub register_memory: bool,
}

/// The default worker threads of a device: one per queue, up to half the host's cores
/// (at least one). The guest's vCPUs drive the queues from the other half: on 2 cores one
/// worker serving both queues (as qemu-storage-daemon does) read 4 KiB at QD32 8 % faster
/// than a thread per queue, wrote 1 MiB 17 % faster and took less CPU per IO in every job;
/// only the 70/30 mixed job was 5-7 % slower (benches/README.md, 2026-12-07).
pub fn auto_io_threads(num_queues: u16, cores: usize) -> u16 {
    (cores / 2).clamp(1, usize::from(num_queues.max(1))) as u16
}

impl Default for ServeOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ServeOptions {
            num_queues: cores.clamp(1, 4) as u16,
            io_threads: 0,
            queue_size: 256,
            socket_mode: 0o600,
            socket_group: None,
            register_memory: false,
        }
    }
}

impl ServeOptions {
    /// Worker threads asked for, 0 meaning [`auto_io_threads`] (`DeviceLimits::with_io_threads`
    /// bounds it to 1..=num_queues).
    pub fn io_threads(&self) -> u16 {
        if self.io_threads == 0 {
            auto_io_threads(self.num_queues, std::thread::available_parallelism().map_or(1, |n| n.get()))
        } else {
            self.io_threads
        }
    }

    /// Check the options (done again by [`spawn_device`]).
    pub fn validate(&self) -> Result<(), FrontendError> {
        if !(1..=64).contains(&self.num_queues) {
            return Err(FrontendError::InvalidOptions(format!("num_queues must be 1..=64, not {}", self.num_queues)));
        }
        if !self.queue_size.is_power_of_two() || !(4..=32768).contains(&self.queue_size) {
            return Err(FrontendError::InvalidOptions(format!(
                "queue_size must be a power of two in 4..=32768, not {}",
                self.queue_size
            )));
        }
        if self.socket_mode & !0o777 != 0 {
            return Err(FrontendError::InvalidOptions(format!(
                "socket_mode {:o} has bits outside 0o777",
                self.socket_mode
            )));
        }
        Ok(())
    }
}

/// State shared between the handle and the server thread.
struct Shared {
    state: Mutex<ConnState>,
    connections: AtomicU64,
}

struct ConnState {
    shutdown: bool,
    conn: Option<ShutdownHandle>,
    /// The connected hypervisor's device.
    device: Option<Arc<BlkDevice>>,
}

/// A device being served on one socket. Dropping it shuts it down (errors are logged).
pub struct DeviceHandle {
    socket: PathBuf,
    socket_id: (u64, u64),
    shared: Arc<Shared>,
    exit: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl DeviceHandle {
    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Hypervisor connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Acquire)
    }

    /// True while a hypervisor is connected.
    pub fn is_connected(&self) -> bool {
        self.shared.state.lock().conn.is_some()
    }

    /// The target changed size: the connected hypervisor (if any) sees the new capacity
    /// and is told with a config-change message; the next connection sees it anyway.
    /// Returns whether a hypervisor was told.
    pub fn config_changed(&self) -> io::Result<bool> {
        let device = self.shared.state.lock().device.clone();
        match device {
            Some(d) => d.config_changed(),
            None => Ok(false),
        }
    }

    /// Stop accepting, disconnect the hypervisor if one is connected (requests being
    /// executed finish first), join all threads and remove the socket file.
    pub fn shutdown(mut self) -> Result<(), FrontendError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), FrontendError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        {
            let mut st = self.shared.state.lock();
            st.shutdown = true;
            if let Some(conn) = &st.conn {
                conn.shutdown();
            }
        }
        if let Err(e) = self.exit.write(1) {
            tracing::warn!("waking the server thread: {e}");
        }
        let joined = thread.join();
        // Remove the socket only if it is still the one we bound.
        if let Ok(md) = std::fs::symlink_metadata(&self.socket) {
            if (md.dev(), md.ino()) == self.socket_id {
                let _ = std::fs::remove_file(&self.socket);
            }
        }
        joined.map_err(|_| FrontendError::Panicked(self.socket.clone()))?;
        tracing::info!(socket = %self.socket.display(), "vhost-user-blk device stopped");
        Ok(())
    }
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!("{e}");
        }
    }
}

impl std::fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceHandle").field("socket", &self.socket).field("connections", &self.connections()).finish()
    }
}

/// Bind `socket` and serve `target` on it, one hypervisor connection at a time, until
/// [`DeviceHandle::shutdown`].
pub fn spawn_device(
    socket: &Path,
    target: Arc<dyn BlockTarget>,
    opts: &ServeOptions,
) -> Result<DeviceHandle, FrontendError> {
    opts.validate()?;
    let listener = bind_socket(socket, opts.socket_mode, opts.socket_group)?;
    let sock_err = |source| FrontendError::Socket { path: socket.to_path_buf(), source };
    let md = std::fs::symlink_metadata(socket).map_err(sock_err)?;
    listener.set_nonblocking(true).map_err(sock_err)?;
    let exit = EventFd::new(EFD_NONBLOCK).map_err(sock_err)?;
    let exit_thread = exit.try_clone().map_err(sock_err)?;
    let shared = Arc::new(Shared {
        state: Mutex::new(ConnState { shutdown: false, conn: None, device: None }),
        connections: AtomicU64::new(0),
    });
    let server = Server {
        listener: Listener::from(listener),
        exit: exit_thread,
        target,
        opts: opts.clone(),
        shared: shared.clone(),
        socket: socket.to_path_buf(),
    };
    let name = socket.file_name().map_or_else(|| "vhost".into(), |n| n.to_string_lossy().into_owned());
    let thread = std::thread::Builder::new()
        .name(format!("vhost-{name}"))
        .spawn(move || server.run())
        .map_err(FrontendError::Thread)?;
    tracing::info!(socket = %socket.display(), queues = opts.num_queues, "vhost-user-blk device listening");
    Ok(DeviceHandle {
        socket: socket.to_path_buf(),
        socket_id: (md.dev(), md.ino()),
        shared,
        exit,
        thread: Some(thread),
    })
}

/// The server thread's state.
struct Server {
    listener: Listener,
    exit: EventFd,
    target: Arc<dyn BlockTarget>,
    opts: ServeOptions,
    shared: Arc<Shared>,
    socket: PathBuf,
}

enum Wake {
    Exit,
    Connection,
}

impl Server {
    fn run(mut self) {
        let span = tracing::info_span!("vhost", socket = %self.socket.display());
        let _enter = span.enter();
        loop {
            match wait_readable(self.listener.as_raw_fd(), self.exit.as_raw_fd()) {
                Ok(Wake::Exit) => break,
                Ok(Wake::Connection) => {}
                Err(e) => {
                    tracing::error!("poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            if self.shared.state.lock().shutdown {
                break;
            }
            if let Err(e) = self.serve_one() {
                tracing::warn!("connection ended with an error: {e}");
                // Do not spin if accepting keeps failing.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Accept the pending connection and serve it until it closes.
    fn serve_one(&mut self) -> Result<(), String> {
        let limits = DeviceLimits::new(
            self.target.size(),
            self.target.read_only(),
            self.target.block_size(),
            self.opts.num_queues,
            self.opts.queue_size,
        )
        .with_io_threads(self.opts.io_threads())
        .with_register_memory(self.opts.register_memory);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        let device = Arc::new(BlkDevice::new(self.target.clone(), limits, mem.clone()));
        let result = self.run_daemon(device.clone(), mem);
        // The daemon, its worker threads and their epoll sets are gone now.
        device.close_leaked_fds();
        result
    }

    fn run_daemon(
        &mut self,
        device: Arc<BlkDevice>,
        mem: GuestMemoryAtomic<GuestMemoryMmap<()>>,
    ) -> Result<(), String> {
        let mut daemon = VhostUserDaemon::new("vhost-blk".into(), device.clone(), mem)
            .map_err(|e| format!("creating the vhost-user daemon: {e}"))?;
        // Wire each queue's io_uring completion eventfd into its worker's epoll loop.
        let fds = device.ring_fds();
        for (t, handler) in daemon.get_epoll_handlers().iter().enumerate() {
            for q in device.thread_queues(t) {
                if let Some(fd) = fds[q] {
                    handler
                        .register_listener(fd, EventSet::IN, device.ring_token(q))
                        .map_err(|e| format!("registering the io_uring eventfd: {e}"))?;
                }
            }
        }
        // `poll` saw a pending connection, so a blocking accept returns at once (and cannot
        // spin the way the daemon's accept loop does on a non-blocking listener).
        let started = self
            .listener
            .set_nonblocking(false)
            .map_err(|e| e.to_string())
            .and_then(|()| daemon.start(&mut self.listener).map_err(|e| e.to_string()));
        let _ = self.listener.set_nonblocking(true);
        started.map_err(|e| format!("accepting a connection: {e}"))?;
        let n = self.shared.connections.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(connection = n, "hypervisor connected");
        {
            let mut st = self.shared.state.lock();
            if st.shutdown {
                daemon.request_shutdown();
            } else {
                st.conn = daemon.shutdown_handle();
                st.device = Some(device.clone());
            }
        }
        let result = daemon.wait();
        {
            let mut st = self.shared.state.lock();
            st.conn = None;
            st.device = None;
        }
        // Dropping the daemon stops its workers (after the request each is executing) and
        // joins them; then finish what is still in flight on the rings.
        drop(daemon);
        device.drain_all();
        match result {
            Ok(()) => {
                tracing::info!(connection = n, "hypervisor disconnected");
                Ok(())
            }
            Err(e) => {
                // A hypervisor that goes away mid-message is a disconnect, not a failure.
                tracing::info!(connection = n, "hypervisor disconnected: {e}");
                Ok(())
            }
        }
    }
}

/// Wait until the listener has a connection or the exit eventfd fires.
fn wait_readable(listener: RawFd, exit: RawFd) -> io::Result<Wake> {
    let mut fds = [
        libc::pollfd { fd: exit, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: listener, events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            return Ok(Wake::Exit);
        }
        if fds[1].revents != 0 {
            return Ok(Wake::Connection);
        }
    }
}

/// Bind a listening unix socket at `path` with `mode` and `group`, replacing a stale socket
/// file. The socket is bound in a fresh private directory, given its mode and group there,
/// and renamed into place, so it is never reachable under its final name with wider access.
pub(crate) fn bind_socket(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener, FrontendError> {
    let err = |source| FrontendError::Socket { path: path.to_path_buf(), source };
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(FrontendError::SocketInUse(path.to_path_buf()));
            }
            tracing::info!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(err)?;
        }
        Ok(_) => return Err(FrontendError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let setup = |p: &Path| -> io::Result<()> {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(p, None, Some(gid))?;
        }
        Ok(())
    };
    let private = make_private_dir(&parent).map_err(err)?;
    let tmp = private.join("s");
    let staged = UnixListener::bind(&tmp).and_then(|l| {
        setup(&tmp)?;
        std::fs::rename(&tmp, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&private);
    match staged {
        Ok(l) => Ok(l),
        // A path close to the sun_path limit may fit where the longer staging path does
        // not: bind in place (mode set right after bind).
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            let l = UnixListener::bind(path).map_err(err)?;
            setup(path).map_err(err)?;
            Ok(l)
        }
        Err(e) => Err(err(e)),
    }
}

/// `mkdtemp` in `parent`: a new directory only we can enter.
fn make_private_dir(parent: &Path) -> io::Result<PathBuf> {
    let mut template = parent.join(".ld-XXXXXX").as_os_str().as_bytes().to_vec();
    template.push(0);
    // SAFETY: `template` is a writable NUL-terminated buffer ending in "XXXXXX\0".
    let p = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
    if p.is_null() {
        return Err(io::Error::last_os_error());
    }
    template.pop();
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&template)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_workers_are_one_per_queue_up_to_half_the_cores() {
        assert_eq!(auto_io_threads(2, 1), 1);
        assert_eq!(auto_io_threads(2, 2), 1);
        assert_eq!(auto_io_threads(4, 4), 2);
        assert_eq!(auto_io_threads(2, 64), 2);
        assert_eq!(auto_io_threads(0, 8), 1);
        let asked = ServeOptions { io_threads: 3, ..ServeOptions::default() };
        assert_eq!(asked.io_threads(), 3);
    }
}
