//! Replays the saved fuzzing corpus (`fuzz/corpus/tftp_packet`) on every test run, so inputs
//! that once broke the decoder keep being checked without a fuzzer.

#[test]
fn the_saved_corpus_decodes_and_decides_without_panicking() {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/tftp_packet");
    let mut count = 0;
    for entry in std::fs::read_dir(&directory).expect("the corpus directory exists") {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        kiln_tftp::packet::fuzz_one(&bytes);
        count += 1;
    }
    assert!(count >= 8, "the corpus has {count} inputs");
}
