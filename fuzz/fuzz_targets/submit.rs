#![no_main]

use libfuzzer_sys::fuzz_target;

// The whole input: a `POST /v1/jobs` body for `submit::parse`.
fuzz_target!(|data: &[u8]| {
    gpuq_fuzz::check_submit(data);
});
