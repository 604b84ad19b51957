//! A volume's link to its DTL peer: what the engine sends (each write's data, every TLog
//! record, in log order), how a write (`sync` mode) or a flush (`async` and `sync`)
//! waits until the peer holds it, the coverage marks in the object store that tell a
//! later takeover whether the DTL covered every write, trims after uploads, and
//! fencing by a newer owner generation.
//!
//! Coverage marks: when the DTL cannot confirm a write or flush (peer unreachable,
//! queue overflow), the owner first stores a "not covered" mark
//! (`<volume>/meta/dtl/<n>`) and only then completes the IO, so IO goes on (DEGRADED)
//! and a takeover knows the DTL may miss writes. Once the peer holds everything again
//! (and, for a DTL enabled on a volume with un-uploaded data, once that data is in the
//! object store), a "covered" mark follows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::iov::{self, iovec};
use crate::backend::{keys, ObjectStore};
use crate::dtl::protocol::MAX_DATA;
use crate::dtl::tls::ClientTls;
use crate::dtl::{DtlClient, DtlConfig, DtlState, Entry, ErrorCode};
use crate::error::{Error, Result};

/// When a write counts as done with respect to the DTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtlMode {
    /// A write completes only once the peer holds it.
    Sync,
    /// Writes go to the peer in the background; a flush waits for them.
    Async,
}

impl std::str::FromStr for DtlMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<DtlMode> {
        match s {
            "sync" => Ok(DtlMode::Sync),
            "async" => Ok(DtlMode::Async),
            _ => Err(Error::InvalidArgument(format!("DTL mode {s:?}: use sync, async or none"))),
        }
    }
}

impl std::fmt::Display for DtlMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DtlMode::Sync => "sync",
            DtlMode::Async => "async",
        })
    }
}

/// Where a volume's DTL is and how writes wait for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtlSettings {
    pub addr: String,
    pub mode: DtlMode,
}

/// A coverage mark as stored in the object store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoverageMark {
    pub generation: u32,
    /// The DTL holds every write not yet in the object store.
    pub covered: bool,
    /// Not covered: writes of epochs from this one on may be missing from the DTL.
    pub since_epoch: u64,
    pub time: u64,
    pub reason: String,
}

/// The newest coverage mark of `volume` and the number after it.
pub fn newest_mark(store: &dyn ObjectStore, volume: &str) -> Result<(Option<CoverageMark>, u64)> {
    let newest = store
        .list(&keys::dtl_mark_prefix(volume))?
        .into_iter()
        .filter_map(|o| keys::trailing_number(&o.key).map(|n| (n, o.key)))
        .max_by_key(|(n, _)| *n);
    let Some((n, key)) = newest else { return Ok((None, 1)) };
    let mark = serde_json::from_slice(&store.get(&key)?)
        .map_err(|e| Error::Corrupt { key: key.clone(), detail: format!("bad DTL coverage mark: {e}") })?;
    Ok((Some(mark), n + 1))
}

/// Store a coverage mark of `volume` under number `n` (create-only; a taken number moves on).
pub fn store_mark(store: &dyn ObjectStore, volume: &str, next: &AtomicU64, mark: &CoverageMark) -> Result<()> {
    let bytes = serde_json::to_vec(mark).expect("serializable");
    loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        match store.put(&keys::dtl_mark(volume, n), &bytes) {
            Err(Error::ObjectExists(_)) => continue,
            r => return r,
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Why the link is not covering writes, while a "not covered" mark is stored.
struct Uncovered {
    /// The mark clears only once every epoch up to this one is uploaded (0: no need).
    until_uploaded: u64,
}

pub struct DtlLink {
    pub settings: DtlSettings,
    volume: String,
    generation: u32,
    client: DtlClient,
    uncovered: Mutex<Option<Uncovered>>,
    next_mark: AtomicU64,
}

impl DtlLink {
    /// Connect to the peer (an unreachable peer is not an error: the link starts
    /// DEGRADED and reconnects). A refusal (wrong token, fenced generation) is.
    pub fn start(
        settings: DtlSettings,
        token: &[u8],
        tls: Option<ClientTls>,
        volume: &str,
        generation: u32,
        store: &dyn ObjectStore,
    ) -> Result<DtlLink> {
        let (_, next) = newest_mark(store, volume)?;
        let mut cfg = DtlConfig::new(settings.addr.clone(), token, volume, generation);
        cfg.tls = tls;
        let client = DtlClient::connect_with(cfg)?;
        Ok(DtlLink {
            settings,
            volume: volume.to_string(),
            generation,
            client,
            uncovered: Mutex::new(None),
            next_mark: AtomicU64::new(next),
        })
    }

    pub fn mode(&self) -> DtlMode {
        self.settings.mode
    }

    /// Queue the data of a write that landed at `(sco, index)` for `cluster` on.
    /// `cluster_size` splits it into entries of at most 1 MiB.
    pub fn send_data(&self, sco: u64, index: u32, cluster: u64, cluster_size: u64, iovs: &[iovec]) -> Result<()> {
        let total = iov::total(iovs);
        let chunk = (MAX_DATA as u64 / cluster_size).max(1) * cluster_size;
        let mut entries = Vec::with_capacity(total.div_ceil(chunk) as usize);
        let mut sub = Vec::new();
        let mut done = 0u64;
        while done < total {
            let n = chunk.min(total - done);
            let mut data = vec![0u8; n as usize];
            iov::sub_range(iovs, done, n, &mut sub);
            // SAFETY: the caller's iovecs are valid for this call.
            unsafe { iov::copy_out(&sub, &mut data) };
            let k = done / cluster_size;
            entries.push(Entry::data(sco, index + k as u32, cluster + k, data));
            done += n;
        }
        self.append(entries)
    }

    /// Queue one encoded TLog record of epoch `epoch`.
    pub fn send_record(&self, epoch: u64, bytes: &[u8]) -> Result<()> {
        self.append(vec![Entry::record(epoch, bytes.to_vec())])
    }

    fn append(&self, entries: Vec<Entry>) -> Result<()> {
        match self.client.append(entries) {
            Err(e @ Error::DtlRefused { code: ErrorCode::Fenced, .. }) => Err(e),
            Err(e) => {
                tracing::warn!(volume = %self.volume, error = %e, "DTL append failed");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Wait until the peer holds everything queued so far. When it cannot, store a "not
    /// covered" mark first (since epoch `since_epoch`) and return Ok: IO goes on.
    /// Fencing by a newer owner is an error.
    pub fn wait_covered(&self, store: &dyn ObjectStore, since_epoch: u64) -> Result<()> {
        match self.client.sync() {
            Ok(()) => Ok(()),
            Err(e @ Error::DtlRefused { code: ErrorCode::Fenced, .. }) => Err(e),
            Err(e) => self.mark_uncovered(store, since_epoch, 0, &e.to_string()),
        }
    }

    /// Store a "not covered" mark unless one is already in force.
    pub fn mark_uncovered(
        &self,
        store: &dyn ObjectStore,
        since_epoch: u64,
        until_uploaded: u64,
        why: &str,
    ) -> Result<()> {
        let mut u = self.uncovered.lock();
        if let Some(cur) = u.as_mut() {
            cur.until_uploaded = cur.until_uploaded.max(until_uploaded);
            return Ok(());
        }
        let mark = CoverageMark {
            generation: self.generation,
            covered: false,
            since_epoch,
            time: now_secs(),
            reason: why.to_string(),
        };
        tracing::warn!(volume = %self.volume, since_epoch, reason = why, "DTL degraded: writes go on without a second copy until the DTL catches up");
        if let Err(e) = store_mark(store, &self.volume, &self.next_mark, &mark) {
            // IO still goes on: the write buffer holds the data durably on this host.
            tracing::error!(volume = %self.volume, error = %e, "cannot store the DTL 'not covered' mark; a takeover would not know the DTL is behind");
        }
        *u = Some(Uncovered { until_uploaded });
        Ok(())
    }

    /// Periodic check (uploader tick): once the peer holds everything again and the
    /// data it never had is uploaded, store a "covered" mark.
    pub fn tick(&self, store: &dyn ObjectStore, last_uploaded: u64) {
        let until = match &*self.uncovered.lock() {
            Some(u) => u.until_uploaded,
            None => return,
        };
        if last_uploaded < until || self.client.state() != DtlState::InSync || self.client.sync().is_err() {
            return;
        }
        let mark = CoverageMark {
            generation: self.generation,
            covered: true,
            since_epoch: 0,
            time: now_secs(),
            reason: "in sync".into(),
        };
        // Held while storing: a key rotation's mark rewrite waits (see `rewrite_marks`).
        let mut u = self.uncovered.lock();
        if u.is_none() {
            return;
        }
        match store_mark(store, &self.volume, &self.next_mark, &mark) {
            Ok(()) => {
                *u = None;
                tracing::info!(volume = %self.volume, "DTL back in sync: it covers every write not yet uploaded");
            }
            Err(e) => {
                tracing::warn!(volume = %self.volume, error = %e, "cannot store the DTL 'covered' mark; will retry")
            }
        }
    }

    /// Every epoch up to `epoch` is in the object store: the peer may drop it.
    pub fn trim(&self, epoch: u64) {
        if let Err(e) = self.client.trim(epoch) {
            tracing::debug!(volume = %self.volume, epoch, error = %e, "DTL trim failed (retried with the next upload)");
        }
    }

    /// State for `volume info` and metrics: in_sync, catching_up, degraded,
    /// needs_resync, fenced, closed; plus a detail.
    pub fn state(&self) -> (&'static str, String) {
        let uncovered = self.uncovered.lock().is_some();
        match self.client.state() {
            DtlState::InSync if uncovered => ("catching_up", "waiting for earlier writes to be uploaded".into()),
            DtlState::InSync => ("in_sync", String::new()),
            DtlState::CatchingUp => ("catching_up", String::new()),
            DtlState::Degraded(why) => ("degraded", why),
            DtlState::NeedsResync { from_sco } => ("needs_resync", format!("from epoch {from_sco}")),
            DtlState::Fenced(why) => ("fenced", why),
            DtlState::Closed => ("closed", String::new()),
        }
    }

    pub fn client(&self) -> &DtlClient {
        &self.client
    }
}

/// Bring `volume`'s DTL coverage marks under the store's current key (after a key
/// rotation): the newest mark is stored again under a new number, then every older one
/// is deleted (only the newest counts). `link`, the served volume's, is held meanwhile
/// so that no mark is stored between the two steps. Returns how many marks went.
pub fn rewrite_marks(store: &dyn ObjectStore, volume: &str, link: Option<&DtlLink>) -> Result<usize> {
    let _held = link.map(|l| l.uncovered.lock());
    let (mark, next) = newest_mark(store, volume)?;
    let Some(mark) = mark else { return Ok(0) };
    let old: Vec<String> = store.list(&keys::dtl_mark_prefix(volume))?.into_iter().map(|o| o.key).collect();
    let local = AtomicU64::new(next);
    let counter = link.map_or(&local, |l| &l.next_mark);
    counter.fetch_max(next, Ordering::SeqCst);
    store_mark(store, volume, counter, &mark)?;
    store.delete_many(&old)?;
    Ok(old.len())
}
