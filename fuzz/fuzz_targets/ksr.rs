//! Random sequences of KSR calls on random messages
//! (`sipshard::kemi::fuzzing::drive`): every live `KSR.*` function but the
//! ones doing outside I/O, with typed random arguments, inside the request
//! or reply route; then the route's header edits are assembled and parsed
//! again. Lua errors are fine; a Rust panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = sipshard::kemi::fuzzing::drive(data) {
        panic!("harness: {e}");
    }
});
