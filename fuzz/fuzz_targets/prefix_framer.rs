#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| drs_fuzz::frames(drs_core::Framing::LengthPrefixed, data));
