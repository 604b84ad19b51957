//! The replication stream of a [`DtlClient`](super::DtlClient): the sender thread
//! (reconnect with backoff, then batch queued entries into pipelined APPENDs and SYNCs),
//! the reader thread (SYNC replies release durable entries; a fence stops the client),
//! and the bookkeeping when a connection starts (what the server already holds, what to
//! send again, whether it lost acknowledged entries).

use std::io::Write;
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use super::connection::{handshake, permanent};
use super::queue::{Inner, Shared};
use crate::dtl::protocol::{append_frame, read_frame, simple_frame, Entry, ErrorCode, Reply, MAX_FRAME, T_SYNC};
use crate::dtl::tls::Conn;

/// The sender: (re)connect with backoff, then feed the connection until it breaks.
pub(super) fn sender_loop(sh: &Arc<Shared>, mut first: Option<(Conn, u64)>) {
    let cfg = &sh.cfg;
    let mut backoff = cfg.backoff_min;
    loop {
        if sh.m.lock().closing {
            return;
        }
        let conn = match first.take() {
            Some(c) => Ok(c),
            None => handshake(cfg).map(|(stream, last_seq, _)| {
                let epoch = connected(sh, &stream, last_seq);
                (stream, epoch)
            }),
        };
        match conn {
            Ok((stream, epoch)) => {
                backoff = cfg.backoff_min;
                let Ok(rd) = stream.try_clone() else {
                    sh.m.lock().broken(epoch, "cannot clone the socket".into());
                    continue;
                };
                let s2 = sh.clone();
                let reader =
                    std::thread::Builder::new().name("dtl-recv".into()).spawn(move || reader_loop(&s2, rd, epoch));
                match reader {
                    Ok(reader) => {
                        feed(sh, &stream, epoch);
                        sh.m.lock().broken(epoch, "closed".into());
                        let _ = stream.shutdown(Shutdown::Both);
                        let _ = reader.join();
                    }
                    Err(e) => sh.m.lock().broken(epoch, format!("cannot spawn the DTL reader: {e}")),
                }
            }
            Err(e) => {
                let mut g = sh.m.lock();
                if permanent(&e) {
                    tracing::error!(volume = %cfg.volume, "DTL refused for good: {e}");
                    g.fenced = Some(e.to_string());
                    sh.cv.notify_all();
                    return;
                }
                tracing::debug!(volume = %cfg.volume, "DTL reconnect failed: {e}");
                g.last_error = Some(e.to_string());
                sh.cv.notify_all();
            }
        }
        let until = Instant::now() + backoff;
        let mut g = sh.m.lock();
        while !g.closing && g.fenced.is_none() && Instant::now() < until {
            sh.cv.wait_until(&mut g, until);
        }
        if g.fenced.is_some() {
            return;
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// Bookkeeping for a fresh connection whose server holds everything up to `last_seq`.
pub(super) fn connected(sh: &Shared, stream: &Conn, last_seq: u64) -> u64 {
    let mut g = sh.m.lock();
    while g.unacked.front().is_some_and(|i| i.seq <= last_seq) {
        let i = g.unacked.pop_front().unwrap();
        g.bytes -= i.size;
    }
    let lost = last_seq < g.durable_seq || g.unacked.front().is_some_and(|i| i.seq > last_seq + 1);
    if lost {
        let (lo, hi) = (g.trimmed_upto + 1, g.max_sco);
        tracing::error!(volume = %sh.cfg.volume, last_seq, acknowledged = g.durable_seq, "DTL server lost acknowledged entries; needs resync");
        g.add_gap(lo, hi.max(lo));
    }
    while let Some(i) = g.unacked.pop_back() {
        g.pending.push_front(i);
    }
    g.epochs += 1;
    let epoch = g.epochs;
    g.conn = epoch;
    g.stream = stream.try_clone().ok();
    g.next_seq = last_seq + 1;
    g.durable_seq = last_seq;
    g.last_sent_seq = last_seq;
    g.last_sync_sent_seq = last_seq;
    g.sync_in_flight = false;
    g.catchup_until = g.pending.back().map(|i| i.aid);
    if g.closing {
        if let Some(s) = g.stream.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
    tracing::info!(volume = %sh.cfg.volume, last_seq, resend = g.pending.len(), "DTL connected");
    sh.cv.notify_all();
    epoch
}

/// Send batches and SYNCs on connection `epoch` until it breaks or the client closes.
fn feed(sh: &Shared, mut stream: &Conn, epoch: u64) {
    let cfg = &sh.cfg;
    let mut req = 0u64;
    let mut out = Vec::new();
    loop {
        let mut g: MutexGuard<Inner> = sh.m.lock();
        let heartbeat_due = |g: &Inner| g.last_send.is_none_or(|t| t.elapsed() >= cfg.heartbeat);
        let sync_due = |g: &Inner| {
            !g.sync_in_flight && (g.last_sent_seq > g.last_sync_sent_seq && (g.sync_wanted || g.pending.is_empty()))
        };
        loop {
            if g.closing || g.conn != epoch {
                return;
            }
            if !g.pending.is_empty() || sync_due(&g) || (!g.sync_in_flight && heartbeat_due(&g)) {
                break;
            }
            let wait = g.last_send.map_or(Duration::ZERO, |t| cfg.heartbeat.saturating_sub(t.elapsed()));
            sh.cv.wait_for(&mut g, wait.max(Duration::from_millis(1)));
        }
        out.clear();
        if !g.pending.is_empty() {
            let mut batch: Vec<(u64, Arc<Entry>)> = Vec::new();
            let mut size = 0;
            while let Some(front) = g.pending.front() {
                if !batch.is_empty() && size + front.size > cfg.batch_bytes {
                    break;
                }
                let mut it = g.pending.pop_front().unwrap();
                it.seq = g.next_seq;
                g.next_seq += 1;
                size += it.size;
                batch.push((it.seq, it.entry.clone()));
                g.unacked.push_back(it);
            }
            g.last_sent_seq = g.next_seq - 1;
            req += 1;
            out.extend_from_slice(&append_frame(req, batch.iter().map(|(s, e)| (*s, &**e))));
        }
        if sync_due(&g) || (!g.sync_in_flight && heartbeat_due(&g)) {
            g.last_sync_sent_seq = g.last_sent_seq;
            g.sync_in_flight = true;
            g.sync_wanted = false;
            req += 1;
            out.extend_from_slice(&simple_frame(T_SYNC, req, 0));
        }
        g.last_send = Some(Instant::now());
        drop(g);
        if let Err(e) = stream.write_all(&out) {
            sh.m.lock().broken(epoch, format!("send: {e}"));
            sh.cv.notify_all();
            return;
        }
    }
}

/// Take replies on connection `epoch`: SYNC replies release durable entries.
fn reader_loop(sh: &Shared, stream: Conn, epoch: u64) {
    let mut body = Vec::new();
    let why = loop {
        match read_frame(&mut &stream, MAX_FRAME, &mut body) {
            Ok(true) => {}
            Ok(false) => break "server closed the connection".to_string(),
            Err(e) => break format!("receive: {e}"),
        }
        let reply = match Reply::decode(&body) {
            Ok(r) => r,
            Err(e) => break format!("bad reply: {e}"),
        };
        let mut g = sh.m.lock();
        if g.conn != epoch {
            return;
        }
        match reply {
            Reply::Appended { .. } => {}
            Reply::Synced { durable_seq, .. } => {
                g.sync_in_flight = false;
                while g.unacked.front().is_some_and(|i| i.seq <= durable_seq) {
                    let i = g.unacked.pop_front().unwrap();
                    g.bytes -= i.size;
                }
                g.durable_seq = g.durable_seq.max(durable_seq);
                g.check_catchup();
                sh.cv.notify_all();
            }
            Reply::Error { code: ErrorCode::Fenced, message, .. } => {
                tracing::error!(volume = %sh.cfg.volume, "DTL: fenced: {message}");
                g.fenced = Some(message.clone());
                g.broken(epoch, format!("fenced: {message}"));
                sh.cv.notify_all();
                return;
            }
            Reply::Error { code, message, .. } => break format!("server refused ({code}): {message}"),
            r => break format!("unexpected reply {r:?}"),
        }
    };
    sh.m.lock().broken(epoch, why);
    sh.cv.notify_all();
}
