#![no_main]
// The harness lives in the library (exo::fuzzing::frame) so that tests/inproc/fuzz_regressions.rs replays
// the corpus through exactly the same code in the normal test suite.
libfuzzer_sys::fuzz_target!(|data: &[u8]| exo::fuzzing::frame(data));
