//! Requests: framing (datagram and stream), every typed accessor,
//! check_request, Edits::assemble and build_reply. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::run(data, true);
});
