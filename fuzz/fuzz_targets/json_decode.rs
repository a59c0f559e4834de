#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| drs_fuzz::round_trip(&drs_protocol_json::Json, data));
