//! Fuzz the virtio-blk request parser and executor with arbitrary descriptor chains,
//! headers and guest memory contents (see `logdisk::frontend::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = logdisk::frontend::fuzzing::fuzz_request_parser(data);
});
