//! nnU-Net plans as `meddino` reads them, every configuration resolved and used.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meddino::fuzzing::read_plans_json(data);
});
