#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| drs_fuzz::decode_and_answer(&drs_rembus::Rembus, data));
