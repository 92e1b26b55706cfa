//! The checkpoint loaders. The first byte picks the file type: odd, a PyTorch `.pth` (zip +
//! pickle); even, safetensors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let _ = meddino::fuzzing::read_checkpoint(rest, selector & 1 == 1);
});
