//! The NIfTI reader (images and label maps). The first byte picks the container: odd, the
//! rest is gzip-compressed here and read as `.nii.gz` (so the fuzzer explores headers and
//! data, not gzip); even, the rest is read as a plain `.nii`.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector & 1 == 1 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(rest).expect("in memory");
        let _ = meddino::fuzzing::read_nifti(&gz.finish().expect("in memory"), true);
    } else {
        let _ = meddino::fuzzing::read_nifti(rest, false);
    }
});
