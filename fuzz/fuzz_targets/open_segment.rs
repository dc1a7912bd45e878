//! Arbitrary bytes as a segment image: open returns Ok or a typed error, never a
//! crash, a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shmkit::fuzzing::open_segment(data));
