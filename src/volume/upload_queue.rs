//! The upload pipeline's part of the volume state: one job per sealed epoch (its SCO,
//! then its TLog, in epoch order), how far the object store holds every epoch, and the
//! metadata checkpoints due. The jobs run in `super::epochs`.

use std::collections::BTreeMap;
use std::time::Instant;

use super::checkpoint::CheckpointData;

/// State of one sealed epoch on its way to the object store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    Waiting,
    Running,
    Done,
    RetryAt(Instant),
}

#[derive(Debug)]
pub(crate) struct EpochUpload {
    pub sco_clusters: u32,
    /// The sealed TLog is written and synced locally.
    pub durable: bool,
    pub sco: JobState,
    pub tlog: JobState,
    pub attempts: u32,
}

/// Upload jobs and checkpoint bookkeeping (under the volume lock).
#[derive(Default)]
pub(crate) struct UploadQueue {
    /// One job per sealed epoch not yet fully in the object store.
    pub jobs: BTreeMap<u64, EpochUpload>,
    /// Every epoch up to this one is in the object store.
    pub last_uploaded: u64,
    pub upload_error: Option<String>,
    pub last_checkpoint: u64,
    pub checkpoint_due: Option<CheckpointData>,
    /// Take a checkpoint when the open epoch is sealed, whatever `checkpoint_every` says
    /// (scrub deleted SCOs).
    pub checkpoint_at_seal: bool,
    pub checkpoint_running: bool,
}
