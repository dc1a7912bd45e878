//! The child side of a re-executed test binary: the environment its parent sets,
//! its line protocol to the parent, and its exit when the parent goes.

use std::io::{Read, Write};

/// The child's role (which the test's `child_main` dispatches on).
pub const ROLE: &str = "SHMKIT_CHILD_ROLE";

/// The segment (name or key) the child opens.
pub const TARGET: &str = "SHMKIT_CHILD_TARGET";

/// Prefix of every line a child says to its parent (libtest prints its own lines).
pub const PREFIX: &str = "SHMKIT:";

/// What a child that found something wrong says, before exiting.
pub const FAIL_MARK: &str = "SHMKIT:FAIL ";

/// One line to the parent, flushed at once.
pub fn say(what: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{PREFIX}{what}").unwrap();
    out.flush().unwrap();
}

/// A `u64` from the environment variable `var` (panics if unset).
pub fn env_u64(var: &str) -> u64 {
    let v = std::env::var(var).unwrap_or_else(|_| panic!("{var} not set"));
    v.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{var}={v:?}: {e}"))
}

/// Exits the process as soon as the parent is gone (the child's
/// stdin, a pipe from the parent, reaches end-of-file), so no child outlives
/// the test binary.
pub fn leave_when_the_parent_goes() {
    std::thread::spawn(|| {
        wait_for_eof();
        std::process::exit(0);
    });
}

/// Blocks until the parent closes the child's stdin (or dies).
pub fn wait_for_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().lock().read_to_end(&mut sink);
}
