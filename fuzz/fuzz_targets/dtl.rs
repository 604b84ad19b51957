//! Fuzz the DTL wire protocol (frames, requests, APPEND entries, replies) as a server and a client read it from an untrusted peer (see `logdisk::dtl::fuzzing::fuzz_dtl`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = logdisk::dtl::fuzzing::fuzz_dtl(data);
});
