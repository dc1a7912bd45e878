//! `SpscQueue<T>`: smoke, edges (capacity 1 and 2, wrap-around of the indices,
//! full/empty, batches), corrupt indices, roles (refusal naming the holder,
//! takeover from a dead one, in-process and after a real SIGKILL), blocking forms
//! with timeouts and a dead peer, wrong type/capacity, and stress across threads
//! and across two real processes.
//!
//! The binary re-executes itself for the process tests: `child_main` (ignored)
//! reads its role from `SHMKIT_CHILD_ROLE` and the segment name from
//! `SHMKIT_CHILD_TARGET`.
#![cfg(not(miri))]

mod common;

#[path = "queue_spsc/basic.rs"]
mod basic;
#[path = "queue_spsc/blocking.rs"]
mod blocking;
#[path = "queue_spsc/procs.rs"]
mod procs;
#[path = "queue_spsc/roles.rs"]
mod roles;

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(procs::ROLE) else {
        return; // run by hand with --ignored: nothing to do
    };
    procs::child(&role);
}
