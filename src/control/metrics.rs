//! Prometheus text endpoint of a running daemon (`serve --metrics ADDR`): per-volume IO
//! counters, write-buffer fill, upload lag and throughput, read-cache hits.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::server::DaemonState;
use crate::error::{IoContext, Result};

/// Render every metric in the Prometheus text format.
pub fn render(state: &DaemonState) -> String {
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, values: &mut dyn Iterator<Item = (String, f64)>| {
        out.push_str(&format!("# HELP logdisk_{name} {help}\n# TYPE logdisk_{name} {kind}\n"));
        for (labels, v) in values {
            out.push_str(&format!("logdisk_{name}{labels} {v}\n"));
        }
    };
    let served = state.served();
    let vols: Vec<_> = {
        let mut v: Vec<_> = served.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    };
    let label = |n: &str| format!("{{volume=\"{n}\"}}");
    type Get = fn(&crate::volume::Volume, &crate::volume::engine::VolumeStats) -> f64;
    let series: [(&str, &str, &str, Get); 24] = [
        ("store_puts_total", "counter", "Objects put to the store (SCOs, TLogs, checkpoints).", |v, _| {
            v.counters.store_puts.load(Ordering::Relaxed) as f64
        }),
        ("store_delete_requests_total", "counter", "Delete requests (one per batch of up to 1000 keys).", |v, _| {
            v.counters.store_delete_requests.load(Ordering::Relaxed) as f64
        }),
        ("reads_total", "counter", "Read requests.", |v, _| v.counters.reads.load(Ordering::Relaxed) as f64),
        ("local_reads_total", "counter", "Device reads of local SCO data for guest reads.", |v, _| {
            v.counters.local_reads.load(Ordering::Relaxed) as f64
        }),
        ("scrub_read_bytes_total", "counter", "Bytes scrub read from its victims.", |v, _| {
            v.counters.scrub_read_bytes.load(Ordering::Relaxed) as f64
        }),
        ("writes_total", "counter", "Write requests.", |v, _| v.counters.writes.load(Ordering::Relaxed) as f64),
        ("read_bytes_total", "counter", "Bytes read.", |v, _| v.counters.read_bytes.load(Ordering::Relaxed) as f64),
        ("write_bytes_total", "counter", "Bytes written.", |v, _| {
            v.counters.write_bytes.load(Ordering::Relaxed) as f64
        }),
        ("flushes_total", "counter", "Flushes.", |v, _| v.counters.flushes.load(Ordering::Relaxed) as f64),
        (
            "flushes_single_total",
            "counter",
            "Flushes that took one device flush (data and TLog records together).",
            |v, _| v.counters.single_flushes.load(Ordering::Relaxed) as f64,
        ),
        ("throttled_total", "counter", "Writes that waited for a full write buffer.", |v, _| {
            v.counters.throttled.load(Ordering::Relaxed) as f64
        }),
        ("paced_total", "counter", "Guest writes slowed down as the write buffer filled.", |v, _| {
            v.counters.paced.load(Ordering::Relaxed) as f64
        }),
        ("paced_seconds_total", "counter", "Time guest writes waited for the pacer.", |v, _| {
            v.counters.paced_us.load(Ordering::Relaxed) as f64 / 1e6
        }),
        ("sco_files_fresh_total", "counter", "New SCOs opened in a freshly preallocated file.", |v, _| {
            v.counters.sco_files_fresh.load(Ordering::Relaxed) as f64
        }),
        ("sco_files_reused_total", "counter", "New SCOs opened in a recycled or zero-filled file.", |v, _| {
            v.counters.sco_files_reused.load(Ordering::Relaxed) as f64
        }),
        ("uploaded_bytes_total", "counter", "Raw SCO bytes uploaded.", |_, s| s.uploaded_bytes as f64),
        ("uploaded_stored_bytes_total", "counter", "Stored (compressed) SCO bytes uploaded.", |_, s| {
            s.uploaded_stored_bytes as f64
        }),
        ("upload_frames_read_total", "counter", "SCO frames read back at upload for their checksum.", |_, s| {
            s.upload_frames_read as f64
        }),
        ("write_buffer_bytes", "gauge", "Local data not yet in the object store.", |_, s| s.wb_bytes as f64),
        ("write_buffer_uploaded_bytes", "gauge", "Uploaded data still kept locally (evictable).", |_, s| {
            s.kept_bytes as f64
        }),
        ("dtl_degraded", "gauge", "1 while the DTL does not cover every write not yet uploaded.", |v, _| {
            match v.dtl_status() {
                Some((_, state, _)) if state != "in_sync" => 1.0,
                _ => 0.0,
            }
        }),
        ("uploads_paused", "gauge", "1 while uploads are paused by the operator.", |v, _| {
            if v.uploads_paused() {
                1.0
            } else {
                0.0
            }
        }),
        ("upload_lag_epochs", "gauge", "Sealed epochs waiting for upload.", |_, s| s.pending_epochs as f64),
        ("upload_failing", "gauge", "1 while the last upload attempt failed.", |_, s| {
            if s.upload_error.is_some() {
                1.0
            } else {
                0.0
            }
        }),
    ];
    let stats: Vec<_> = vols.iter().map(|(_, v)| v.stats()).collect();
    for (name, kind, help, get) in series {
        metric(name, kind, help, &mut vols.iter().zip(&stats).map(|((n, v), s)| (label(n), get(v, s))));
    }
    // Space: the scrubber's last look at each volume (no accounting per scrape).
    let figures: Vec<_> = vols.iter().map(|(_, v)| v.space.figures()).collect();
    type Space = fn(&crate::volume::Volume, &crate::volume::space::SpaceFigures) -> f64;
    let space: [(&str, &str, &str, Space); 13] = [
        ("live_bytes", "gauge", "Bytes some map (current or snapshot) references.", |_, f| f.live_bytes as f64),
        ("garbage_bytes", "gauge", "Bytes of the log nothing references (scrub reclaims them).", |_, f| {
            f.garbage_bytes as f64
        }),
        ("log_bytes", "gauge", "Raw bytes of the volume's log, live and garbage.", |_, f| f.log_bytes as f64),
        ("space_amplification", "gauge", "Log bytes per live byte.", |_, f| f.space_amplification()),
        ("write_amplification", "gauge", "Bytes put to the object store per byte written by guests.", |v, _| {
            let w = v.counters.write_bytes.load(Ordering::Relaxed);
            if w == 0 {
                0.0
            } else {
                v.counters.uploaded_stored_bytes.load(Ordering::Relaxed) as f64 / w as f64
            }
        }),
        ("space_budget_bytes", "gauge", "The volume's space budget (0: none).", |_, f| f.budget_bytes as f64),
        (
            "space_state",
            "gauge",
            "0 ok, 1 scrubbing, 2 writes wait for scrub, 3 writes fail (no space).",
            |_, f| match f.state.as_str() {
                "scrubbing" => 1.0,
                "throttled" => 2.0,
                "full" => 3.0,
                _ => 0.0,
            },
        ),
        ("scrub_passes_total", "counter", "Scrub passes.", |_, f| f.scrub_passes as f64),
        ("scrub_moved_bytes_total", "counter", "Live bytes scrub copied.", |_, f| f.scrub_moved_bytes as f64),
        ("scrub_freed_bytes_total", "counter", "Object-store bytes scrub freed.", |_, f| f.scrub_freed_bytes as f64),
        ("scrub_rotten_scos", "gauge", "SCOs scrub keeps for rotten clusters with no good copy.", |_, f| {
            f.rotten_scos as f64
        }),
        ("space_throttled_writes_total", "counter", "Guest writes that waited for scrub to free space.", |_, f| {
            f.throttled_writes as f64
        }),
        (
            "space_throttled_seconds_total",
            "counter",
            "Time guest writes waited for scrub to free space (summed over writers).",
            |_, f| f.throttled_us as f64 / 1e6,
        ),
    ];
    for (name, kind, help, get) in space {
        metric(name, kind, help, &mut vols.iter().zip(&figures).map(|((n, v), f)| (label(n), get(v, f))));
    }
    if let Some((_, v)) = vols.first() {
        let (hits, misses) = v.cache_stats();
        metric(
            "read_cache_hits_total",
            "counter",
            "Read-cache block hits.",
            &mut std::iter::once((String::new(), hits as f64)),
        );
        metric(
            "read_cache_misses_total",
            "counter",
            "Read-cache block misses.",
            &mut std::iter::once((String::new(), misses as f64)),
        );
        metric(
            "read_cache_rotten_total",
            "counter",
            "Read-cache blocks that failed their checksum (dropped, read from the object store).",
            &mut std::iter::once((String::new(), v.env.cache.rotten() as f64)),
        );
    }
    out
}

/// Serve `GET /metrics` on `addr` in a background thread.
pub fn start(addr: &str, state: Arc<DaemonState>) -> Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).ctx(|| format!("cannot listen on {addr} for metrics"))?;
    let local = listener.local_addr().ctx(|| "metrics socket".into())?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = answer(conn, &state);
            }
        })
        .ctx(|| "cannot start the metrics thread".into())?;
    Ok(local)
}

fn answer(mut conn: TcpStream, state: &DaemonState) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut first = String::new();
    let mut reader = BufReader::new(conn.try_clone()?);
    reader.read_line(&mut first)?;
    // Drain the request headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let (status, body) = if first.starts_with("GET /metrics") || first.starts_with("GET / ") {
        ("200 OK", render(state))
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
