//! The state a [`DtlClient`](super::DtlClient)'s caller, sender and reader share under
//! one lock: entries queued and sent but not yet durable, sequence and durability
//! bookkeeping, the resync gap, and the [`DtlState`] they add up to.

use std::collections::VecDeque;
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::{DtlConfig, DtlState};
use crate::dtl::protocol::Entry;
use crate::dtl::tls::Conn;

pub(super) struct Item {
    pub(super) aid: u64,
    pub(super) seq: u64,
    pub(super) size: usize,
    pub(super) entry: Arc<Entry>,
}

pub(super) const ITEM_OVERHEAD: usize = 64;

#[derive(Default)]
pub(super) struct Inner {
    /// Appended, not yet sent on the current connection (oldest first).
    pub(super) pending: VecDeque<Item>,
    /// Sent on the current connection, not yet durable (oldest first).
    pub(super) unacked: VecDeque<Item>,
    pub(super) bytes: usize,
    pub(super) next_aid: u64,
    pub(super) next_seq: u64,
    /// Connection epoch; 0 while not connected.
    pub(super) conn: u64,
    pub(super) epochs: u64,
    pub(super) stream: Option<Conn>,
    pub(super) last_sent_seq: u64,
    pub(super) last_sync_sent_seq: u64,
    pub(super) sync_in_flight: bool,
    pub(super) sync_wanted: bool,
    pub(super) last_send: Option<Instant>,
    pub(super) durable_seq: u64,
    pub(super) last_error: Option<String>,
    pub(super) fenced: Option<String>,
    pub(super) gap: Option<(u64, u64)>,
    pub(super) catchup_until: Option<u64>,
    pub(super) trimmed_upto: u64,
    pub(super) max_sco: u64,
    pub(super) closing: bool,
}

impl Inner {
    pub(super) fn oldest_outstanding(&self) -> u64 {
        self.unacked.front().or(self.pending.front()).map_or(self.next_aid, |i| i.aid)
    }

    pub(super) fn check_catchup(&mut self) {
        if self.catchup_until.is_some_and(|a| self.oldest_outstanding() > a) {
            self.catchup_until = None;
            tracing::info!("DTL caught up");
        }
    }

    pub(super) fn add_gap(&mut self, lo: u64, hi: u64) {
        self.gap = Some(match self.gap {
            Some((a, b)) => (a.min(lo), b.max(hi)),
            None => (lo, hi),
        });
    }

    /// The connection `epoch` is gone.
    pub(super) fn broken(&mut self, epoch: u64, why: String) {
        if self.conn == epoch && epoch != 0 {
            if !self.closing {
                tracing::warn!("DTL connection lost: {why}");
            }
            self.conn = 0;
            self.last_error = Some(why);
            if let Some(s) = self.stream.take() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    pub(super) fn state(&self) -> DtlState {
        if self.closing {
            DtlState::Closed
        } else if let Some(f) = &self.fenced {
            DtlState::Fenced(f.clone())
        } else if let Some((lo, _)) = self.gap {
            DtlState::NeedsResync { from_sco: lo }
        } else if self.conn == 0 {
            DtlState::Degraded(self.last_error.clone().unwrap_or_else(|| "connecting".into()))
        } else if self.catchup_until.is_some() {
            DtlState::CatchingUp
        } else {
            DtlState::InSync
        }
    }
}

pub(super) struct Shared {
    pub(super) cfg: DtlConfig,
    pub(super) m: Mutex<Inner>,
    pub(super) cv: Condvar,
}
