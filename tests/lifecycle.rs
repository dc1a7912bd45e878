//! Lifecycle tests of issue 9: what a new user runs into when combining the
//! README's examples, restarting a killed server, and cleaning up after System V.
//!
//! Children are this test binary re-executed (`child_main` with a role in the
//! environment), so every "process" here is a real one.
// Segment objects here are std atomics, as users write them (the loom shim is
// the crate's own business).
#![allow(clippy::disallowed_types)]

#[path = "common/mod.rs"]
mod common;

#[path = "lifecycle/region.rs"]
mod region;
#[path = "lifecycle/stale.rs"]
mod stale;
#[path = "lifecycle/sysv.rs"]
mod sysv;

use std::process::Stdio;

use common::{LineChild, PATIENCE, child_main_command};

const ROLE: &str = "SHMKIT_LIFECYCLE_ROLE";
const NAME: &str = "SHMKIT_LIFECYCLE_NAME";
const ARG: &str = "SHMKIT_LIFECYCLE_ARG";
const OUT: &str = "SHMKIT-LIFECYCLE-OUT";

/// What a child does.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Attach the heap and print the string published at `arg`.
    ReadString,
    /// Store 0 into the word at offset `arg` (a stray write).
    ZeroWord,
    /// Try `Heap::attach` and print the outcome.
    Attach,
    /// Create the segment (with a heap and a live block), say so, and wait to be
    /// killed or for stdin to close.
    CreateAndWait,
    /// Open the segment, say so, and wait for stdin to close.
    OpenAndWait,
}

impl Role {
    const ALL: [Role; 5] = [
        Role::ReadString,
        Role::ZeroWord,
        Role::Attach,
        Role::CreateAndWait,
        Role::OpenAndWait,
    ];

    fn parse(s: &str) -> Role {
        *Role::ALL
            .iter()
            .find(|r| format!("{r:?}") == s)
            .unwrap_or_else(|| panic!("unknown role {s}"))
    }
}

/// A fresh, unguessable POSIX name.
pub fn segment_name(what: &str) -> String {
    shmkit::unique_name(&format!("lifecycle-{what}-")).unwrap()
}

/// Runs a child in `role` on segment `name` to completion; returns what it said.
pub fn child(role: Role, name: &str, arg: &str) -> String {
    let mut c = spawn(role, name, arg);
    let out = c
        .next_after(OUT, PATIENCE)
        .unwrap_or_else(|e| panic!("child {role:?} said nothing: {e:?}"));
    c.close_stdin();
    let st = c.wait_for_exit(PATIENCE).expect("child exits");
    assert!(st.success(), "child {role:?} failed: {st:?}");
    out
}

/// Starts a child in `role`; its first answer is read with `next_after(OUT)`.
pub fn spawn(role: Role, name: &str, arg: &str) -> LineChild {
    let mut cmd = child_main_command();
    cmd.env(ROLE, format!("{role:?}"))
        .env(NAME, name)
        .env(ARG, arg);
    LineChild::spawn(cmd, Stdio::piped())
}

/// Blocks until the parent closes our stdin (or dies).
fn wait_for_parent() {
    let mut sink = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut sink);
}

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let role = Role::parse(&role);
    let name = std::env::var(NAME).unwrap();
    let arg = std::env::var(ARG).unwrap_or_default();
    let (out, wait) = match role {
        Role::ReadString | Role::ZeroWord | Role::Attach => (region::run(role, &name, &arg), false),
        Role::CreateAndWait | Role::OpenAndWait => (stale::run(role, &name, &arg), true),
    };
    // One line: the marker, then the answer.
    println!("{OUT} {}", out.replace('\n', " "));
    if wait {
        wait_for_parent();
    }
}
