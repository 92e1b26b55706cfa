//! `dataset.json` as `meddino` reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meddino::fuzzing::read_dataset_json(data);
});
