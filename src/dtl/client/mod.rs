//! The DTL client a volume uses: a bounded queue drained by a background sender that
//! batches entries into APPEND frames and pipelines them (it never waits for a reply
//! before sending more), a reader thread that takes the replies, and reconnects with
//! exponential backoff.
//!
//! Sequence numbers: the sender numbers entries as it sends them, continuing from the
//! `last_seq` the server reports in its WELCOME. An entry stays in memory until a SYNC
//! reply says the server holds it durably. After a reconnect the server again reports
//! what it holds; everything after that is sent again (renumbered from there), so
//! nothing is lost and nothing is stored twice.
//!
//! SYNC: the sender keeps at most one SYNC in flight and sends the next one as soon as
//! there is something new to cover (group commit), when [`DtlClient::sync`] asks, and
//! every [`DtlConfig::heartbeat`] as a keepalive.
//!
//! Full queue: memory is bounded by [`DtlConfig::queue_limit`] (bytes of entries queued
//! or sent but not yet durable). An append that does not fit does not block the
//! volume's IO path: the client drops every entry that is not yet durable on the server
//! (and the new ones), and reports [`DtlState::NeedsResync`] from the lowest SCO it
//! dropped. New appends are then queued and sent normally. The gap closes when the owner
//! trims past the highest dropped SCO (those SCOs are then safe in the object store), or
//! when it has re-appended the dropped SCOs from its write buffer and calls
//! [`DtlClient::resynced`]. Until then [`DtlClient::sync`] fails, so the owner knows the
//! DTL does not cover its writes.
//!
//! One client per (volume, generation): two clients of one generation would confuse
//! each other's sequence numbers.
//!
//! Files: this one holds the settings, the states and the client's queue-facing calls
//! (append, sync, close); `queue.rs` the state the caller, the sender and the reader
//! share; `connection.rs` the handshake and the requests that run on a connection of
//! their own (query, trim); `replication.rs` the sender and reader threads.

mod connection;
mod queue;
mod replication;

use std::net::Shutdown;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use self::connection::{handshake, refused};
use self::queue::{Inner, Item, Shared, ITEM_OVERHEAD};
use self::replication::{connected, sender_loop};
use super::protocol::{valid_name, Entry, ErrorCode};
use super::tls::ClientTls;
use crate::error::{Error, Result};

/// Settings of a [`DtlClient`]; [`DtlConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct DtlConfig {
    /// Server address, `host:port`.
    pub addr: String,
    pub token: Vec<u8>,
    pub volume: String,
    /// Owner generation: a higher one fences every lower one on the server.
    pub generation: u32,
    /// Bytes of entries held in memory (queued, or sent but not yet durable).
    pub queue_limit: usize,
    /// Largest APPEND batch (at most 4 MiB).
    pub batch_bytes: usize,
    pub connect_timeout: Duration,
    /// A server that does not answer within this (plus the heartbeat) counts as lost.
    pub io_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// An idle connection sends a SYNC this often.
    pub heartbeat: Duration,
    /// Speak TLS and verify the server's certificate against this; `None`: plain text.
    pub tls: Option<ClientTls>,
}

impl DtlConfig {
    pub fn new(addr: impl Into<String>, token: impl Into<Vec<u8>>, volume: impl Into<String>, generation: u32) -> Self {
        DtlConfig {
            addr: addr.into(),
            token: token.into(),
            volume: volume.into(),
            generation,
            queue_limit: 64 << 20,
            batch_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            heartbeat: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// How well the DTL covers the volume's writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtlState {
    /// Connected; everything appended is sent or about to be.
    InSync,
    /// Connected again after a loss; re-sending what the server did not hold.
    CatchingUp,
    /// Not connected (the reason); appends are queued and sent after the reconnect.
    Degraded(String),
    /// Entries of SCOs from `from_sco` on were dropped (queue overflow, or the server lost
    /// data): the DTL does not cover them until the owner trims past them or re-appends
    /// them and calls [`DtlClient::resynced`].
    NeedsResync { from_sco: u64 },
    /// A newer owner generation holds the volume; this client no longer sends.
    Fenced(String),
    /// [`DtlClient::close`] was called.
    Closed,
}

/// A volume's connection to its DTL server. Every method may be called from any thread.
pub struct DtlClient {
    shared: Arc<Shared>,
    sender: Option<JoinHandle<()>>,
}

impl DtlClient {
    /// Connect with default settings. See [`DtlClient::connect_with`].
    pub fn connect(addr: &str, token: &[u8], volume: &str, generation: u32) -> Result<DtlClient> {
        Self::connect_with(DtlConfig::new(addr, token, volume, generation))
    }

    /// Start a client. A refusal by the server (wrong token, fenced generation, bad name,
    /// version) is returned as an error; an unreachable server is not: the client starts
    /// [`DtlState::Degraded`] and keeps trying with backoff.
    pub fn connect_with(mut cfg: DtlConfig) -> Result<DtlClient> {
        if !valid_name(&cfg.volume) {
            return Err(Error::InvalidArgument(format!("bad volume name {:?}", cfg.volume)));
        }
        cfg.batch_bytes = cfg.batch_bytes.clamp(1, 4 << 20);
        let first = match handshake(&cfg) {
            Ok(c) => Some(c),
            Err(e @ (Error::DtlRefused { .. } | Error::DtlTls(_))) => return Err(e),
            Err(e) => {
                tracing::warn!(volume = %cfg.volume, "DTL not reachable, will retry: {e}");
                None
            }
        };
        let shared =
            Arc::new(Shared { cfg, m: Mutex::new(Inner { next_aid: 1, ..Inner::default() }), cv: Condvar::new() });
        // Register the first connection before returning, so the state is InSync at once.
        let first = first.map(|(stream, last_seq, _)| {
            let epoch = connected(&shared, &stream, last_seq);
            (stream, epoch)
        });
        let s = shared.clone();
        let sender = std::thread::Builder::new()
            .name("dtl-send".into())
            .spawn(move || sender_loop(&s, first))
            .map_err(|e| Error::io("spawn the DTL sender", e))?;
        Ok(DtlClient { shared, sender: Some(sender) })
    }

    /// Queue entries for the server. Returns at once (no network wait). Errors: an entry
    /// above the limits, a fenced or closed client. A full queue is not an error: see the
    /// module documentation ([`DtlState::NeedsResync`]).
    pub fn append(&self, entries: Vec<Entry>) -> Result<()> {
        for e in &entries {
            e.validate().map_err(|e| Error::InvalidArgument(e.to_string()))?;
        }
        let mut g = self.shared.m.lock();
        if g.closing {
            return Err(Error::ShutDown);
        }
        if let Some(f) = &g.fenced {
            return Err(refused(ErrorCode::Fenced, f.clone()));
        }
        let size: usize = entries.iter().map(|e| e.encoded_len() + ITEM_OVERHEAD).sum();
        if g.bytes + size > self.shared.cfg.queue_limit {
            let scos =
                g.pending.iter().chain(g.unacked.iter()).map(|i| i.entry.sco).chain(entries.iter().map(|e| e.sco));
            let (lo, hi) = scos.fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
            let dropped = g.pending.len() + g.unacked.len() + entries.len();
            g.pending.clear();
            g.unacked.clear();
            g.bytes = 0;
            g.catchup_until = None;
            if dropped > 0 && lo != u64::MAX {
                g.add_gap(lo, hi);
            }
            tracing::warn!(volume = %self.shared.cfg.volume, dropped, from_sco = lo, "DTL queue full: dropped entries not yet durable; needs resync");
            self.shared.cv.notify_all();
            return Ok(());
        }
        for e in entries {
            let aid = g.next_aid;
            g.next_aid += 1;
            g.max_sco = g.max_sco.max(e.sco);
            let size = e.encoded_len() + ITEM_OVERHEAD;
            g.bytes += size;
            g.pending.push_back(Item { aid, seq: 0, size, entry: Arc::new(e) });
        }
        drop(g);
        self.shared.cv.notify_all();
        Ok(())
    }

    /// Wait until everything appended before this call is durable on the server. Fails
    /// at once while the client is not connected (Degraded), needs a resync, is fenced or
    /// closed; fails if the connection is lost while waiting.
    pub fn sync(&self) -> Result<()> {
        let mut g = self.shared.m.lock();
        let target = g.next_aid - 1;
        loop {
            if g.oldest_outstanding() > target && g.gap.is_none() && g.fenced.is_none() {
                return Ok(());
            }
            match g.state() {
                DtlState::InSync | DtlState::CatchingUp => {}
                DtlState::Fenced(f) => return Err(refused(ErrorCode::Fenced, f)),
                DtlState::Closed => return Err(Error::ShutDown),
                s => return Err(Error::Dtl(format!("not in sync: {s:?}"))),
            }
            g.sync_wanted = true;
            self.shared.cv.notify_all();
            self.shared.cv.wait_for(&mut g, Duration::from_millis(200));
        }
    }

    /// How well the DTL covers the volume right now.
    pub fn state(&self) -> DtlState {
        self.shared.m.lock().state()
    }

    /// Bytes held in memory for the server (queued or not yet durable).
    pub fn queued_bytes(&self) -> usize {
        self.shared.m.lock().bytes
    }

    /// The owner has re-appended every entry the DTL was missing ([`DtlState::NeedsResync`]):
    /// clear the gap.
    pub fn resynced(&self) {
        self.shared.m.lock().gap = None;
    }

    fn check_usable(&self) -> Result<()> {
        let g = self.shared.m.lock();
        if g.closing {
            return Err(Error::ShutDown);
        }
        if let Some(f) = &g.fenced {
            return Err(refused(ErrorCode::Fenced, f.clone()));
        }
        Ok(())
    }

    /// Stop the background threads (entries not yet durable are abandoned; call
    /// [`DtlClient::sync`] first to keep them).
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        {
            let mut g = self.shared.m.lock();
            g.closing = true;
            if let Some(s) = g.stream.take() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        self.shared.cv.notify_all();
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for DtlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlClient")
            .field("addr", &self.shared.cfg.addr)
            .field("volume", &self.shared.cfg.volume)
            .field("generation", &self.shared.cfg.generation)
            .field("state", &self.state())
            .finish()
    }
}

impl Drop for DtlClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}
