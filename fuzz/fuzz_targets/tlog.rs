//! Fuzz TLog bytes (batches, records) as read back from a bucket or a crash-cut local file (see `logdisk::volume::tlog_fuzzing::fuzz_tlog`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = logdisk::volume::tlog_fuzzing::fuzz_tlog(data);
});
