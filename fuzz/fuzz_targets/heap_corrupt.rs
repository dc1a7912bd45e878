//! Heap metadata overwritten with chosen bytes: every heap call returns Ok or a
//! typed error, never a crash, a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shmkit::fuzzing::heap_corrupt(data));
