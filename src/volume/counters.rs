//! Counters and point-in-time figures of one volume (`info`, metrics).

use std::sync::atomic::AtomicU64;

/// Counters exported by `info` and metrics.
#[derive(Default)]
pub struct Counters {
    /// Objects put to the store (SCOs, TLogs, checkpoints).
    pub store_puts: AtomicU64,
    /// Delete requests sent to the store (a batch of up to 1000 keys is one).
    pub store_delete_requests: AtomicU64,
    pub reads: AtomicU64,
    /// Device reads of local SCO data that guest reads took: a planned read's file runs
    /// (one io_uring read each) and the synchronous reads of the other path. Per guest
    /// read this says how scattered the data was (1 MiB of random-written clusters: 256).
    pub local_reads: AtomicU64,
    /// Bytes scrub read from its victims (whole windows, dead clusters between live runs
    /// included): with `write_bytes`, the disk traffic scrub adds per byte written.
    pub scrub_read_bytes: AtomicU64,
    pub writes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    /// Flushes that made data and TLog records durable with one device flush (an SCO file
    /// whose blocks were all written before: `FlushWork::single`).
    pub single_flushes: AtomicU64,
    pub throttled: AtomicU64,
    /// Guest writes the pacer slowed down, and the microseconds they waited in all.
    pub paced: AtomicU64,
    pub paced_us: AtomicU64,
    /// New SCOs opened in a freshly preallocated file (its extents unwritten: every
    /// write into it changes extent metadata) and in a reused one (a recycled dead SCO
    /// or the zero-filled spare: no metadata change).
    pub sco_files_fresh: AtomicU64,
    pub sco_files_reused: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub uploaded_stored_bytes: AtomicU64,
    /// Frames read back at upload for their checksum (clusters written without one).
    pub upload_frames_read: AtomicU64,
    /// Reads that found local SCO data failing its checksum (rot on the local disk).
    pub rotten_reads: AtomicU64,
    /// SCO objects opened to be read in place (`super::in_place`), after a restart.
    pub objects_read_in_place: AtomicU64,
    /// TLog writes refused for lack of space (ENOSPC, EDQUOT): retried by the next flush.
    pub flush_no_space: AtomicU64,
}

/// A point-in-time view of a volume's counters and state.
#[derive(Debug, Clone, Default)]
pub struct VolumeStats {
    pub mapped_clusters: u64,
    pub wb_bytes: u64,
    pub kept_bytes: u64,
    pub pending_epochs: u64,
    pub uploaded_bytes: u64,
    pub uploaded_stored_bytes: u64,
    /// Frames read back at upload for their checksum.
    pub upload_frames_read: u64,
    pub map_memory_bytes: u64,
    pub upload_error: Option<String>,
    /// Every epoch up to this one is in the object store.
    pub last_uploaded: u64,
}
