//! The CPU floor of logdisk's write checksums on this machine: the two crc32c passes
//! (`cluster_crc::compute` before the IO, `cluster_crc::recheck` after it) over 1 MiB
//! writes of 4 KiB clusters, from a buffer larger than the CPU caches (as guest memory
//! is). `benches/native-bench.sh` prints it beside logdisk's and qsd's CPU per 1 MiB
//! write: no backend that checksums every write can spend less.
//!
//!   crc-floor [--seconds S]     prints one line: "crc-floor <us per MiB> <GB/s per pass>"

use std::time::Instant;

use logdisk::volume::cluster_crc;
use logdisk::volume::iov::iovec;

/// Larger than any CPU cache here, so the passes read memory as a guest write's do.
const BUF: usize = 256 << 20;
const WRITE: usize = 1 << 20;
const CLUSTER: usize = 4096;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = match args.iter().position(|a| a == "--seconds") {
        Some(i) => args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            eprintln!("crc-floor: --seconds needs a number");
            std::process::exit(2)
        }),
        None => 2.0,
    };
    let buf: Vec<u8> = (0..BUF).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut crcs = Vec::with_capacity(WRITE / CLUSTER);
    let (mut writes, mut at) = (0u64, 0usize);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        let v = [iovec { iov_base: buf[at..].as_ptr() as *mut libc::c_void, iov_len: WRITE }];
        crcs.clear();
        // SAFETY: `v` points into `buf`, alive and unchanged for both calls.
        unsafe {
            cluster_crc::compute(&v, CLUSTER, &mut crcs);
            cluster_crc::recheck(&v, CLUSTER, &mut crcs);
        }
        writes += 1;
        at = (at + WRITE) % BUF;
    }
    let secs = start.elapsed().as_secs_f64();
    let us = secs * 1e6 / writes as f64;
    println!("crc-floor {us:.1} {:.1}", 2.0 * (writes as f64 * WRITE as f64) / secs / 1e9);
}
