//! Fuzz the NBD handshake and request decoder with arbitrary client byte streams (see
//! `logdisk::nbd::fuzzing`); odd first bytes select an export token.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let token = (data.first().is_some_and(|b| b & 1 == 1)).then_some("0123456789abcdef");
    let _ = logdisk::nbd::fuzzing::fuzz_nbd(data.get(1..).unwrap_or(&[]), token);
});
