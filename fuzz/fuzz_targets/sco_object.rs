//! Fuzz SCO objects (footer, index, frames) as read back from a bucket that may hold hostile objects (see `logdisk::backend::fuzzing::fuzz_sco_object`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = logdisk::backend::fuzzing::fuzz_sco_object(data);
});
