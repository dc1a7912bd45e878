//! Queue words (an `SpscQueue` and a `Broadcast`) overwritten with chosen values
//! between operations from two attachments: every call returns a value or a
//! typed error, never a crash, a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shmkit::fuzzing::queue_corrupt(data));
