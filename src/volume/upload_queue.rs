//! The upload pipeline's part of the volume state: one job per sealed epoch (its SCO,
//! then its TLog, in epoch order), how far the object store holds every epoch, and the
//! metadata checkpoints due. The jobs run in `super::epochs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checkpoint::CheckpointData;
use super::sco_file::ScoFile;
use super::sco_set::ScoSet;

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

/// One upload the pipeline runs next.
pub(crate) enum Job {
    Sco { epoch: u64, file: Arc<ScoFile>, clusters: u32 },
    Tlog { epoch: u64 },
    Checkpoint(CheckpointData),
}

/// What [`UploadQueue::next_job`] found.
pub(crate) enum Pick {
    Job(Job),
    /// A job finished without work (an empty SCO): look again.
    Again,
    Nothing,
}

impl UploadQueue {
    /// Queue the upload of sealed epoch `epoch` (`sco_clusters` of data), made durable
    /// by the next flush.
    pub fn add(&mut self, epoch: u64, sco_clusters: u32) {
        let job =
            EpochUpload { sco_clusters, durable: false, sco: JobState::Waiting, tlog: JobState::Waiting, attempts: 0 };
        self.jobs.insert(epoch, job);
    }

    /// Mark a checkpoint as of `epoch` due when none is and one is wanted (asked for, or
    /// `every` epochs since the last); `data` takes it.
    pub fn checkpoint_if_due(&mut self, epoch: u64, every: u64, data: impl FnOnce() -> CheckpointData) {
        if self.checkpoint_due.is_none() && (self.checkpoint_at_seal || epoch >= self.last_checkpoint + every) {
            self.checkpoint_due = Some(data());
            self.checkpoint_at_seal = false;
        }
    }

    /// The next job in order: the SCO of the oldest durable epoch whose writes have all
    /// landed (reservations in `scos`), else the oldest TLog once its SCO is uploaded,
    /// else a due checkpoint once every epoch it covers is uploaded. Marks it running.
    pub fn next_job(&mut self, scos: &ScoSet) -> Pick {
        let now = Instant::now();
        let ready = |s: JobState| match s {
            JobState::Waiting => true,
            JobState::RetryAt(t) => t <= now,
            _ => false,
        };
        // SCOs of durable sealed epochs whose writes have all landed.
        let mut pick = None;
        for (&e, u) in self.jobs.iter() {
            if !u.durable {
                break;
            }
            if u.sco != JobState::Done && ready(u.sco) && scos.local.get(&e).is_none_or(|l| l.inflight == 0) {
                pick = Some(e);
                break;
            }
        }
        let first_tlog = self.jobs.iter().next().filter(|(_, u)| u.durable).map(|(e, _)| *e);
        if let Some(e) = pick {
            let file = scos.local.get(&e).map(|l| l.file.clone());
            let u = self.jobs.get_mut(&e).unwrap();
            u.sco = JobState::Running;
            let clusters = u.sco_clusters;
            match file {
                Some(file) if clusters > 0 => return Pick::Job(Job::Sco { epoch: e, file, clusters }),
                _ => {
                    u.sco = JobState::Done;
                    return Pick::Again;
                }
            }
        }
        // The oldest sealed TLog, once its SCO (and every earlier one) is uploaded.
        if let Some(e) = first_tlog {
            let u = self.jobs.get_mut(&e).unwrap();
            if u.sco == JobState::Done && ready(u.tlog) {
                u.tlog = JobState::Running;
                return Pick::Job(Job::Tlog { epoch: e });
            }
        }
        if !self.checkpoint_running {
            if let Some(cp) = &self.checkpoint_due {
                if cp.epoch <= self.last_uploaded {
                    let cp = self.checkpoint_due.take().unwrap();
                    self.checkpoint_running = true;
                    return Pick::Job(Job::Checkpoint(cp));
                }
            }
        }
        Pick::Nothing
    }

    pub fn sco_done(&mut self, epoch: u64) {
        if let Some(u) = self.jobs.get_mut(&epoch) {
            u.sco = JobState::Done;
            u.attempts = 0;
        }
        self.upload_error = None;
    }

    /// TLog `epoch` is uploaded: the epoch is in the object store. Returns its SCO's
    /// clusters of data.
    pub fn tlog_done(&mut self, epoch: u64) -> u32 {
        let u = self.jobs.remove(&epoch);
        self.last_uploaded = epoch;
        self.upload_error = None;
        u.map(|u| u.sco_clusters).unwrap_or(0)
    }

    pub fn checkpoint_done(&mut self, epoch: u64) {
        self.checkpoint_running = false;
        self.last_checkpoint = self.last_checkpoint.max(epoch);
    }

    /// `job` failed with `error`: retried after a backoff (with jitter) that grows with
    /// its attempts; a checkpoint is due again.
    pub fn failed(&mut self, job: Job, error: String) {
        self.upload_error = Some(error);
        let (epoch, sco) = match job {
            Job::Checkpoint(cp) => {
                self.checkpoint_running = false;
                if self.checkpoint_due.is_none() {
                    self.checkpoint_due = Some(cp);
                }
                return;
            }
            Job::Sco { epoch, .. } => (epoch, true),
            Job::Tlog { epoch } => (epoch, false),
        };
        if let Some(u) = self.jobs.get_mut(&epoch) {
            u.attempts += 1;
            let backoff = Duration::from_millis((100u64 << u.attempts.min(8)).min(30_000));
            // Jitter: up to a quarter of the backoff.
            let jitter = Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 4 + 1));
            let at = Instant::now() + backoff + jitter;
            match sco {
                true => u.sco = JobState::RetryAt(at),
                false => u.tlog = JobState::RetryAt(at),
            }
        }
    }
}
