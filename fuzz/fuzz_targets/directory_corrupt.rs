//! Arbitrary bytes in the directory's words (root, bucket table, entry heads and
//! names, holder blocks): every directory call returns Ok or a typed error, never
//! a crash, a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shmkit::fuzzing::directory_corrupt(data));
