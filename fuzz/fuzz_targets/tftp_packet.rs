//! Fuzzes TFTP packet parsing and option negotiation.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    kiln_tftp::packet::fuzz_one(bytes);
});
