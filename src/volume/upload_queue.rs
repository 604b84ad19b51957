//! The upload pipeline's part of the volume state: one job per sealed epoch (its SCO,
//! then its TLog, in epoch order), how far the object store holds every epoch, and the
//! metadata checkpoints due. The jobs run in `super::epochs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checkpoint::CheckpointData;
use super::sco_file::ScoFile;
use super::sco_set::ScoSet;
use crate::error::Error;

/// A checkpoint scrub asks for (after it deleted SCOs) waits until the last one is this
/// old. Under sustained random overwrites scrub deletes several times a second, and a
/// checkpoint at every seal (a copy of every map, encoded and compressed, plus two
/// listings of the store to prune what it replaces) cost 7 a second and a few % of the
/// daemon's CPU. An older checkpoint is as correct: the TLogs after it relocate and
/// overwrite what scrub moved (a restart replays them; none is pruned before a
/// checkpoint covers it), so waiting only makes a restart replay a little more.
pub const SCRUB_CHECKPOINT_MIN_INTERVAL: Duration = Duration::from_secs(2);

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
    /// When the last checkpoint was stored (by this process).
    pub last_checkpoint_at: Option<Instant>,
    /// A failed checkpoint upload is tried again no sooner than this (backoff as for
    /// SCOs and TLogs: on a read-only or failing disk it was retried ~150 times a
    /// second, each retry a warning in the log).
    pub checkpoint_retry: Option<(u32, Instant)>,
    /// A job failed for want of local space when the disk's `DiskRoom::grown` was this:
    /// once it changes (space returned), every job waiting for a retry is tried at once.
    /// With the backoff alone, uploads stayed stopped ~13 s after the space returned, a
    /// scrub pass waited as long for its copies, and the write buffer stayed full.
    pub no_space_at: Option<u64>,
}

/// When a job that failed for the `attempts`-th time is tried again: a backoff that
/// doubles from 200 ms up to 30 s, plus up to a quarter of it as jitter. (A job that
/// failed for want of local space is also tried again as soon as space returns: see
/// `UploadQueue::no_space_at`.)
fn retry_at(attempts: u32) -> Instant {
    let backoff = Duration::from_millis((100u64 << attempts.min(8)).min(30_000));
    let jitter = Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 4 + 1));
    Instant::now() + backoff + jitter
}

/// TLogs one job uploads at most. TLogs go one job at a time, in order; consecutive
/// sealed TLogs whose SCOs are uploaded go in one job, so a local directory store syncs
/// its directories once for all of them (each sync is a device flush: 30-100 ms under
/// sustained 1 MiB writes, when there was one per TLog).
pub(crate) const TLOG_BATCH: u64 = 16;

/// One upload the pipeline runs next.
pub(crate) enum Job {
    Sco {
        epoch: u64,
        file: Arc<ScoFile>,
        clusters: u32,
    },
    /// TLogs `epoch..=last`, in order.
    Tlog {
        epoch: u64,
        last: u64,
    },
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

    /// Mark a checkpoint as of `epoch` due when none is and one is wanted (asked for by
    /// scrub, at most every [`SCRUB_CHECKPOINT_MIN_INTERVAL`], or `every` epochs since
    /// the last); `data` takes it.
    pub fn checkpoint_if_due(&mut self, epoch: u64, every: u64, data: impl FnOnce() -> CheckpointData) {
        let asked = self.checkpoint_at_seal
            && self.last_checkpoint_at.is_none_or(|t| t.elapsed() >= SCRUB_CHECKPOINT_MIN_INTERVAL);
        if self.checkpoint_due.is_none() && (asked || epoch >= self.last_checkpoint + every) {
            self.checkpoint_due = Some(data());
            self.checkpoint_at_seal = false;
        }
    }

    /// The next job in order: the SCO of the oldest durable epoch whose writes have all
    /// landed (reservations in `scos`), else the oldest TLog once its SCO is uploaded,
    /// else a due checkpoint once every epoch it covers is uploaded. Marks it running.
    pub fn next_job(&mut self, scos: &ScoSet, disk_grown: u64) -> Pick {
        if self.no_space_at.is_some_and(|g| g != disk_grown) {
            self.no_space_at = None;
            for u in self.jobs.values_mut() {
                for s in [&mut u.sco, &mut u.tlog] {
                    if matches!(s, JobState::RetryAt(_)) {
                        *s = JobState::Waiting;
                    }
                }
            }
            if let Some((_, at)) = &mut self.checkpoint_retry {
                *at = Instant::now();
            }
        }
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
        // The oldest sealed TLog, once its SCO (and every earlier one) is uploaded, with
        // the sealed TLogs right after it whose SCOs are uploaded too.
        if let Some(e) = first_tlog {
            let u = &self.jobs[&e];
            if u.sco == JobState::Done && ready(u.tlog) {
                let mut last = e;
                for (&n, u) in self.jobs.range(e + 1..e + TLOG_BATCH) {
                    if n != last + 1 || !u.durable || u.sco != JobState::Done || !ready(u.tlog) {
                        break;
                    }
                    last = n;
                }
                for u in self.jobs.range_mut(e..=last).map(|(_, u)| u) {
                    u.tlog = JobState::Running;
                }
                return Pick::Job(Job::Tlog { epoch: e, last });
            }
        }
        if !self.checkpoint_running && self.checkpoint_retry.is_none_or(|(_, at)| at <= now) {
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
        self.checkpoint_retry = None;
        self.last_checkpoint = self.last_checkpoint.max(epoch);
        self.last_checkpoint_at = Some(Instant::now());
    }

    /// `job` failed with `error`: retried after a backoff (with jitter) that grows with
    /// its attempts, or once the disk's space grows past `disk_grown` when `error` is for
    /// want of space; a checkpoint is due again.
    pub fn failed(&mut self, job: Job, error: &Error, disk_grown: u64) {
        if error.is_no_space() {
            self.no_space_at = Some(disk_grown);
        }
        self.upload_error = Some(error.to_string());
        let (epoch, sco) = match job {
            Job::Checkpoint(cp) => {
                self.checkpoint_running = false;
                let attempts = self.checkpoint_retry.map_or(0, |(a, _)| a) + 1;
                self.checkpoint_retry = Some((attempts, retry_at(attempts)));
                if self.checkpoint_due.is_none() {
                    self.checkpoint_due = Some(cp);
                }
                return;
            }
            Job::Sco { epoch, .. } => (epoch, true),
            Job::Tlog { epoch, last } => {
                // The first is retried after its backoff; the others wait their turn.
                if last > epoch {
                    for u in self.jobs.range_mut(epoch + 1..=last).map(|(_, u)| u) {
                        u.tlog = JobState::Waiting;
                    }
                }
                (epoch, false)
            }
        };
        if let Some(u) = self.jobs.get_mut(&epoch) {
            u.attempts += 1;
            let at = retry_at(u.attempts);
            match sco {
                true => u.sco = JobState::RetryAt(at),
                false => u.tlog = JobState::RetryAt(at),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::map::ClusterMap;
    use crate::volume::snap_set::Snapshots;

    fn checkpoint(epoch: u64) -> CheckpointData {
        CheckpointData { epoch, map: ClusterMap::new(8), snaps: Snapshots::default(), sco_sizes: BTreeMap::new() }
    }

    fn picks_checkpoint(q: &mut UploadQueue) -> bool {
        matches!(q.next_job(&ScoSet::default(), 0), Pick::Job(Job::Checkpoint(_)))
    }

    #[test]
    fn scrub_asks_for_checkpoints_at_most_every_interval() {
        let mut q = UploadQueue { last_checkpoint: 3, ..UploadQueue::default() };
        q.checkpoint_at_seal = true;
        q.checkpoint_if_due(4, 100, || checkpoint(4));
        assert!(q.checkpoint_due.take().is_some(), "the first one at once");
        q.checkpoint_done(4);
        q.checkpoint_at_seal = true;
        q.checkpoint_if_due(5, 100, || checkpoint(5));
        assert!(q.checkpoint_due.is_none(), "not right after the last");
        assert!(q.checkpoint_at_seal, "still wanted");
        q.checkpoint_if_due(104, 100, || checkpoint(104));
        assert!(q.checkpoint_due.take().is_some(), "`every` epochs still count");
        q.checkpoint_done(104);
        q.checkpoint_at_seal = true;
        q.last_checkpoint_at = Some(Instant::now() - SCRUB_CHECKPOINT_MIN_INTERVAL);
        q.checkpoint_if_due(105, 100, || checkpoint(105));
        assert!(q.checkpoint_due.is_some(), "once the interval has passed");
        assert!(!q.checkpoint_at_seal);
    }

    #[test]
    fn a_failed_checkpoint_is_retried_after_a_backoff() {
        let mut q = UploadQueue { last_uploaded: 5, checkpoint_due: Some(checkpoint(5)), ..UploadQueue::default() };
        assert!(picks_checkpoint(&mut q));
        q.failed(Job::Checkpoint(checkpoint(5)), &os_error(libc::EROFS), 0);
        assert!(q.checkpoint_due.is_some(), "still due");
        assert!(!picks_checkpoint(&mut q), "not again at once");
        // The first backoff is 200 ms (+ up to 50 ms of jitter).
        std::thread::sleep(Duration::from_millis(260));
        assert!(picks_checkpoint(&mut q));
        q.failed(Job::Checkpoint(checkpoint(5)), &os_error(libc::EROFS), 0);
        let (attempts, at) = q.checkpoint_retry.unwrap();
        assert_eq!(attempts, 2);
        assert!(at >= Instant::now() + Duration::from_millis(300), "the backoff grows");
        q.checkpoint_retry = Some((attempts, Instant::now()));
        assert!(picks_checkpoint(&mut q));
        q.checkpoint_done(5);
        assert_eq!(q.checkpoint_retry, None, "a success resets the backoff");
        assert_eq!(q.last_checkpoint, 5);
    }

    #[test]
    fn consecutive_sealed_tlogs_whose_scos_are_uploaded_go_in_one_job() {
        let mut q = UploadQueue::default();
        for (e, sco) in [(3, JobState::Done), (4, JobState::Done), (5, JobState::Done), (6, JobState::Running)] {
            q.jobs.insert(e, EpochUpload { sco_clusters: 0, durable: true, sco, tlog: JobState::Waiting, attempts: 0 });
        }
        // SCO 6 is still being uploaded: TLogs 3 to 5 go.
        let mut picks = Vec::new();
        loop {
            match q.next_job(&ScoSet::default(), 0) {
                Pick::Job(Job::Tlog { epoch, last }) => picks.push((epoch, last)),
                Pick::Again => continue,
                _ => break,
            }
        }
        assert_eq!(picks, [(3, 5)], "one job for 3..=5; 6 waits for it");
        q.failed(Job::Tlog { epoch: 3, last: 5 }, &os_error(libc::EIO), 0);
        assert!(matches!(q.jobs[&3].tlog, JobState::RetryAt(_)), "the first retries after its backoff");
        assert!(q.jobs.range(4..=5).all(|(_, u)| u.tlog == JobState::Waiting), "the others wait their turn");
        assert!(matches!(q.next_job(&ScoSet::default(), 0), Pick::Nothing), "none overtakes the first");
    }

    fn os_error(errno: i32) -> Error {
        Error::io("cannot write object", std::io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn jobs_failed_for_want_of_space_are_retried_once_space_returns() {
        let mut q = UploadQueue::default();
        let tlog_waits = || EpochUpload {
            sco_clusters: 0,
            durable: true,
            sco: JobState::Done,
            tlog: JobState::Waiting,
            attempts: 0,
        };
        q.jobs.insert(7, tlog_waits());
        let Pick::Job(job) = q.next_job(&ScoSet::default(), 3) else { panic!("TLog 7 not picked") };
        q.failed(job, &os_error(libc::ENOSPC), 3);
        assert!(matches!(q.next_job(&ScoSet::default(), 3), Pick::Nothing), "backing off");
        assert!(
            matches!(q.next_job(&ScoSet::default(), 4), Pick::Job(Job::Tlog { epoch: 7, last: 7 })),
            "space returned"
        );
        // Any other failure only backs off.
        q.failed(Job::Tlog { epoch: 7, last: 7 }, &os_error(libc::EIO), 4);
        assert_eq!(q.no_space_at, None);
        assert!(matches!(q.next_job(&ScoSet::default(), 5), Pick::Nothing), "backing off");
    }
}
