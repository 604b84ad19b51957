//! Command-line grammar (clap). Global options are accepted before or after the
//! subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "logdisk",
    version,
    about = "Log-structured virtual disks for VMs over vhost-user-blk, with an object-store home"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalOpts {
    /// Local state: write buffer, read cache, metadata [default: ./logdisk-data]
    #[arg(long, global = true, value_name = "DIR", env = "LOGDISK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Object store URL: file:///path or s3://BUCKET/PREFIX (endpoint, region, credentials from
    /// AWS_* variables, profiles or the [s3] config section) [default: file://<data-dir>/objects;
    /// recorded at first use]
    #[arg(long, global = true, value_name = "URL", env = "LOGDISK_BACKEND")]
    pub backend: Option<String>,
    /// TOML configuration file (every key has a default)
    #[arg(long, global = true, value_name = "FILE", env = "LOGDISK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Encryption key file (32 bytes or 64 hex digits; repeatable): with `volume create
    /// --encrypt` the volume's key, with `volume set` its new key; otherwise only a key
    /// encrypted volumes may be read with (found by key id)
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Vec<PathBuf>,
    /// Command (run with sh -c) that prints a key, for a KMS or vault (repeatable; as
    /// --key-file)
    #[arg(long, global = true, value_name = "CMD")]
    pub key_command: Vec<String>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, inspect, import, export and delete volumes
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Serve volumes to hypervisors over vhost-user-blk (the daemon of the data dir);
    /// VOL@SNAP serves a snapshot read-only
    Serve(ServeArgs),
    /// Take, list, roll back to and delete snapshots (VOL@SNAP)
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Clone VOL@SNAP (or a template VOL) into a new volume: instant, no data copied
    Clone {
        /// VOL@SNAP, or the name of a template volume
        source: String,
        /// Name of the new volume
        target: String,
        /// Encrypt the clone with its own key (--key-file/--key-command); without it a
        /// clone of an encrypted volume writes with its parent's key
        #[arg(long)]
        encrypt: bool,
    },
    /// Reclaim object-store space: rewrite the live data of mostly-dead SCOs and delete
    /// what nothing references (runs to completion)
    Scrub {
        volume: String,
        /// Rewrite SCOs whose live fraction is below this
        #[arg(long, default_value_t = 0.5)]
        threshold: f64,
    },
    /// Serve a volume (or VOL@SNAP, read-only) on the running daemon: opens it and creates
    /// its socket (default <socket-dir>/<VOL>.sock), ready for a hypervisor
    Attach {
        /// VOL or VOL@SNAP
        volume: String,
        /// Socket path [default: <socket-dir of the daemon>/<VOL>.sock]
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Serve read-only (VIRTIO_BLK_F_RO)
        #[arg(long)]
        read_only: bool,
        /// Virtqueues [default: the daemon's --num-queues]
        #[arg(long)]
        num_queues: Option<u16>,
        /// Virtqueue size [default: the daemon's --queue-size]
        #[arg(long)]
        queue_size: Option<u16>,
    },
    /// Stop serving a volume: in-flight IO finishes, the volume is flushed and closed and
    /// its socket removed (its data is untouched)
    Detach {
        volume: String,
        /// Detach even while a hypervisor is connected (it is disconnected)
        #[arg(long)]
        force: bool,
    },
    /// Distributed Transaction Log: `dtl serve` keeps other hosts' un-uploaded writes
    #[command(subcommand)]
    Dtl(super::dtl_cmds::DtlCmd),
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Take a snapshot (O(1); crash-consistent while a guest writes)
    Create { target: String },
    /// List a volume's snapshots with the bytes each alone holds
    List {
        volume: String,
        #[arg(long)]
        json: bool,
    },
    /// Make the volume's content the snapshot's (every snapshot is kept)
    Rollback {
        target: String,
        /// Roll back even while a daemon serves the volume (the guest sees its disk change)
        #[arg(long)]
        force: bool,
    },
    /// Delete a snapshot; its exclusive data becomes garbage for scrub
    Delete { target: String },
    /// List the extents that differ between two snapshots of a volume (from the maps;
    /// no data is read): what `volume export VOL@B FILE --since A` writes
    Diff {
        /// VOL@A (the older snapshot)
        from: String,
        /// VOL@B
        to: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("where").args(["socket", "socket_dir"])))]
pub struct ServeArgs {
    /// Serve one volume on this unix socket
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Serve every named (and later attached) volume on DIR/VOLUME.sock
    #[arg(long, value_name = "DIR")]
    pub socket_dir: Option<PathBuf>,
    /// Volumes to attach now (besides those recorded by earlier runs; `logdisk attach`
    /// adds more while it runs)
    #[arg(value_name = "VOLUME")]
    pub volumes: Vec<String>,
    /// Serve the named volumes read-only (VIRTIO_BLK_F_RO)
    #[arg(long)]
    pub read_only: bool,
    /// Virtqueues per device (default of later attaches too) [default: one per core, at most 4]
    #[arg(long)]
    pub num_queues: Option<u16>,
    /// Virtqueue size
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Worker threads per device, the queues dealt among them (0: one per queue, at most half the cores)
    #[arg(long, default_value_t = 0)]
    pub io_threads: u16,
    /// Register each guest's memory with the queues' io_uring rings, so requests skip
    /// pinning their pages one by one (less CPU per large IO). The kernel then pins all of
    /// guest memory while it is served, and the first request waits while pages the guest
    /// never touched are faulted in (seconds per GiB). Not for guests whose memory is
    /// discarded while they run (balloon, free page reporting, virtio-mem)
    #[arg(long)]
    pub register_memory: bool,
    /// Socket file mode (octal)
    #[arg(long, default_value = "0600")]
    pub socket_mode: String,
    /// Socket group (name or gid), for a hypervisor running as another user
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9101) at /metrics
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Also export the volumes over NBD (repeatable): unix:PATH (socket mode/group as
    /// above) or tcp:HOST:PORT (needs --nbd-token-file or --insecure). Export names are
    /// VOLUME and VOLUME@SNAP; snapshots of served volumes open on demand, read-only
    #[arg(long, value_name = "unix:PATH|tcp:HOST:PORT")]
    pub nbd: Vec<String>,
    /// File holding the token TCP NBD clients must give as TOKEN/EXPORT (export name)
    #[arg(long, value_name = "FILE")]
    pub nbd_token_file: Option<PathBuf>,
    /// Allow NBD over TCP without a token (anyone who reaches the port reads and writes)
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a volume
    Create {
        name: String,
        /// Size with binary units (512M, 10G, 2T); a multiple of the cluster size
        #[arg(long)]
        size: String,
        /// Cluster size (power of two, 4K..1M) [default: from config, 4K]
        #[arg(long)]
        cluster_size: Option<String>,
        /// SCO size [default: from config, 32M]
        #[arg(long)]
        sco_size: Option<String>,
        /// DTL peer (`logdisk dtl serve` on another host) that keeps un-uploaded writes
        #[arg(long, value_name = "HOST:PORT")]
        dtl: Option<String>,
        /// When writes wait for the DTL: sync (each write), async (each flush), none
        #[arg(long, value_name = "MODE", requires = "dtl")]
        dtl_mode: Option<String>,
        /// Encrypt everything the volume sends to the object store with the key from
        /// --key-file or --key-command (AES-256-GCM)
        #[arg(long)]
        encrypt: bool,
    },
    /// Change this host's settings of a volume (at once when the daemon serves it)
    Set {
        name: String,
        /// DTL peer, or `none` to stop using one
        #[arg(long, value_name = "HOST:PORT|none")]
        dtl: Option<String>,
        /// sync, async or none
        #[arg(long, value_name = "MODE")]
        dtl_mode: Option<String>,
        /// `paused` holds uploads to the object store back (data stays in the local
        /// write buffer and the DTL); `running` resumes them
        #[arg(long, value_name = "paused|running")]
        uploads: Option<String>,
    },
    /// Take a volume over after its owner host died: restore it from the object store,
    /// replay the DTL, fence the old owner
    Takeover {
        name: String,
        /// The DTL server that holds the old owner's writes (it becomes this host's peer)
        #[arg(long, value_name = "HOST:PORT")]
        dtl: String,
        /// DTL mode from now on: sync or async
        #[arg(long, value_name = "MODE", default_value = "sync")]
        dtl_mode: String,
        /// Take over even when the DTL was not in sync, is unreachable, or the object
        /// store cannot fence (writes may be lost)
        #[arg(long)]
        force: bool,
    },
    /// List volumes in the object store
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a volume's configuration and space use
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume and all its objects
    Delete { name: String },
    /// Write a raw image at offset 0 of a volume
    Import {
        name: String,
        file: PathBuf,
        /// Create the volume with the file's size rounded up to the cluster size
        #[arg(long)]
        create: bool,
        /// Write the file at this byte offset of the volume (binary units allowed)
        #[arg(long, default_value = "0")]
        offset: String,
        /// FILE is an incremental backup (`volume export VOL@B FILE --since A`): apply
        /// its changed extents (data and zeroed ranges)
        #[arg(long, conflicts_with_all = ["create", "offset"])]
        diff: bool,
    },
    /// Write the whole volume (or VOL@SNAP) to a raw file (sparse where unwritten)
    Export {
        name: String,
        file: PathBuf,
        /// Incremental: write only what changed since this older snapshot (VOL@SNAP
        /// exports only), as a diff file for `volume import --diff`
        #[arg(long, value_name = "SNAPSHOT")]
        since: Option<String>,
    },
    /// Change a volume's size, served or not: a served volume's guest is told at once
    /// (snapshots keep their size)
    Resize {
        name: String,
        /// New size with binary units; a multiple of the cluster size
        size: String,
        /// Allow a smaller size (drops the data past it; refused while attached)
        #[arg(long)]
        shrink: bool,
    },
    /// Make a volume a read-only template, meant only as a clone parent
    SetTemplate { name: String },
    /// Make an encrypted volume unreadable for good: its records are replaced by a
    /// tombstone (no host opens it again) and this host forgets its key sources and
    /// local data; its objects remain, readable only with the key
    CryptoErase {
        name: String,
        /// Confirm: this cannot be undone
        #[arg(long)]
        yes: bool,
    },
    /// Copy what a clone still reads from its parents so it stands alone
    Flatten { name: String },
}
