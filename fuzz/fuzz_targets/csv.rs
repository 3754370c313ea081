#![no_main]

use libfuzzer_sys::fuzz_target;

// Byte 0: options (see src/lib.rs); the rest: a CSV stream for `read_csv`.
fuzz_target!(|data: &[u8]| {
    gpuq_fuzz::block_on(gpuq_fuzz::check_csv(data));
});
