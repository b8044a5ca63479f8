//! Random transaction event sequences (requests, replies, CANCELs, ACKs,
//! local replies, clock jumps) against `txn::Table`: never a panic, never a
//! cell without a timer, and every cell ends.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = sipshard::txn::fuzzing::drive(data) {
        panic!("{e}");
    }
});
