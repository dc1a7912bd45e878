//! Bytes as heap operations by two handles (and dying third ones), checked against
//! a model: no overlap, no lost contents, typed errors, clean `verify`, no leak.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shmkit::fuzzing::heap_ops(data));
