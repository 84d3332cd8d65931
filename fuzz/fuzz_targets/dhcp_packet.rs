//! Fuzzes the DHCP path a packet takes: decoding and the answer decision.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    kiln_dhcp::decide::fuzz_one(bytes);
});
