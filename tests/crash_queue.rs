//! Real processes SIGKILLed while they use a queue.
//!
//! # SPSC
//!
//! One producer and one consumer process share an `SpscQueue<Msg>` of a POSIX
//! segment. The producer sends `(sequence, checksum words)` where the sequence is
//! the queue index it pushes at (`Producer::position`), so a successor producer
//! continues exactly after the last message its predecessor published. The
//! consumer checks every message: its checksum words (a torn message), and that
//! its sequence is the consumer's own index (a gap or a duplicate). Every round
//! the parent SIGKILLs the producer or the consumer at random after a random
//! 1–8 ms, reaps it and starts a successor, which takes the dead one's role over.
//! At the end both are killed, the parent takes both roles over and drains the
//! queue with the same checks: the index the consumer reaches must be the
//! producer's, and at least every message a producer saw committed.
//!
//! `cargo test` runs [`DEFAULT_ROUNDS`] kills; set `SHMKIT_CRASH_ROUNDS` for more,
//! e.g. `SHMKIT_CRASH_ROUNDS=5000 cargo test --release --test crash_queue -- --nocapture`.
//!
//! The test binary re-executes itself: `child_main` (ignored) reads its role from
//! `SHMKIT_CHILD_ROLE` and the segment name from `SHMKIT_CHILD_TARGET`. A child
//! leaves when its stdin reaches end-of-file, so none outlives the test binary.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{LineChild, PATIENCE, child_main_command};
use shmkit::queue::SpscQueue;
use shmkit::{Error, Segment, SegmentOptions, Shared};

const ROLE: &str = "SHMKIT_CHILD_ROLE";
const TARGET: &str = "SHMKIT_CHILD_TARGET";
const ROUNDS_VAR: &str = "SHMKIT_CRASH_ROUNDS";
const PREFIX: &str = "SHMKIT:";
/// Kills under plain `cargo test`.
const DEFAULT_ROUNDS: u64 = 200;
const CAPACITY: u64 = 64;

type Msg = [u64; 4];

/// The counters the children keep in the segment.
const TORN: usize = 0;
const OUT_OF_ORDER: usize = 1;
const RECEIVED: usize = 2;
const COMMITTED: usize = 3;
const ERRORS: usize = 4;
type Stats = [AtomicU64; 8];

fn msg(seq: u64) -> Msg {
    let a = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    [seq, a, a.rotate_left(17) ^ 0xdead_beef, !seq]
}

fn torn(m: &Msg) -> bool {
    *m != msg(m[0])
}

fn rounds() -> u64 {
    std::env::var(ROUNDS_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS)
}

// ---------------------------------------------------------------------------------
// The children.
// ---------------------------------------------------------------------------------

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return; // run by hand with --ignored: nothing to do
    };
    let name = std::env::var(TARGET).expect("SHMKIT_CHILD_TARGET");
    let seg = SegmentOptions::posix(&name).open().expect("child: open");
    let q = seg.find::<SpscQueue<Msg>>("q").expect("child: find q");
    let stats = seg.find::<Stats>("stats").expect("child: find stats");
    // Leave as soon as the parent is gone (our stdin closes with it).
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
        std::process::exit(0);
    });
    match role.as_str() {
        "spsc-producer" => spsc_producer(&q, &stats),
        "spsc-consumer" => spsc_consumer(&q, &stats),
        other => panic!("unknown child role {other:?}"),
    }
}

fn say(what: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{PREFIX}{what}").unwrap();
    out.flush().unwrap();
}

/// Claims a role, retrying while the registry still calls the predecessor alive.
fn claim<R>(mut f: impl FnMut() -> shmkit::Result<R>) -> R {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match f() {
            Ok(r) => return r,
            Err(Error::RoleTaken { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("child: claim: {e}"),
        }
    }
}

fn spsc_producer(q: &Shared<SpscQueue<Msg>>, stats: &Stats) -> ! {
    let mut tx = claim(|| q.producer());
    say("ready");
    loop {
        let seq = tx.position();
        match tx.push_blocking_for(msg(seq), Duration::from_millis(100)) {
            Ok(()) => {
                stats[COMMITTED].fetch_max(seq + 1, Ordering::SeqCst);
            }
            Err(Error::TimedOut | Error::PeerDied { .. }) => {}
            Err(_) => {
                stats[ERRORS].fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn spsc_consumer(q: &Shared<SpscQueue<Msg>>, stats: &Stats) -> ! {
    let mut rx = claim(|| q.consumer());
    say("ready");
    loop {
        let expected = rx.position();
        match rx.pop_blocking_for(Duration::from_millis(100)) {
            Ok(m) => {
                if torn(&m) {
                    stats[TORN].fetch_add(1, Ordering::SeqCst);
                } else if m[0] != expected {
                    stats[OUT_OF_ORDER].fetch_add(1, Ordering::SeqCst);
                }
                stats[RECEIVED].fetch_add(1, Ordering::SeqCst);
            }
            Err(Error::TimedOut | Error::PeerDied { .. }) => {}
            Err(_) => {
                stats[ERRORS].fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The parent.
// ---------------------------------------------------------------------------------

/// xorshift64*: the kill schedule (no need for a real generator).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn spawn(role: &str, name: &str) -> LineChild {
    let mut cmd = child_main_command();
    cmd.env(ROLE, role).env(TARGET, name);
    let child = LineChild::spawn(cmd, Stdio::piped());
    child
        .next_after(&format!("{PREFIX}ready"), PATIENCE)
        .unwrap_or_else(|e| panic!("{role} child not ready: {e:?}"));
    child
}

fn kill(mut child: LineChild) {
    child.kill().unwrap();
    assert!(
        child.wait_for_exit(PATIENCE).is_some(),
        "a killed child was not reaped"
    );
}

#[test]
fn spsc_survives_random_sigkills_without_duplicates_tears_or_gaps() {
    let name = shmkit::unique_name("crash-queue-").unwrap();
    let seg: Segment = SegmentOptions::posix(&name)
        .max_size(1 << 22)
        .create()
        .unwrap();
    let q = seg.find_or_create::<SpscQueue<Msg>>("q", CAPACITY).unwrap();
    let stats = seg.find_or_create::<Stats>("stats", ()).unwrap();
    let mut rng = Rng(0x1234_5678 ^ u64::from(std::process::id()));
    let mut producer = spawn("spsc-producer", &name);
    let mut consumer = spawn("spsc-consumer", &name);
    let rounds = rounds();
    let (mut producer_kills, mut consumer_kills) = (0u64, 0u64);
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_millis(1 + rng.next() % 8));
        if rng.next() % 2 == 0 {
            kill(producer);
            producer_kills += 1;
            producer = spawn("spsc-producer", &name);
        } else {
            kill(consumer);
            consumer_kills += 1;
            consumer = spawn("spsc-consumer", &name);
        }
    }
    kill(producer);
    kill(consumer);
    // Take both roles over and drain with the same checks.
    let tx = q
        .producer()
        .expect("the dead producer's role is taken over");
    let mut rx = q
        .consumer()
        .expect("the dead consumer's role is taken over");
    let mut drained = 0;
    while let Some(m) = rx.pop().unwrap() {
        assert!(!torn(&m), "a torn message in the queue: {m:?}");
        assert_eq!(m[0], rx.position() - 1, "a gap or duplicate in the queue");
        drained += 1;
    }
    assert!(drained <= CAPACITY);
    let s: Vec<u64> = stats.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    eprintln!(
        "crash_queue spsc: {rounds} kills ({producer_kills} producers, {consumer_kills} \
         consumers), {} received, {drained} drained, index {}",
        s[RECEIVED],
        rx.position()
    );
    assert_eq!(s[TORN], 0, "torn messages");
    assert_eq!(s[OUT_OF_ORDER], 0, "gaps or duplicates");
    assert_eq!(s[ERRORS], 0, "queue errors in the children");
    assert_eq!(
        rx.position(),
        tx.position(),
        "drained up to the producer's index"
    );
    assert!(
        tx.position() >= s[COMMITTED],
        "a committed message was lost"
    );
    assert!(s[RECEIVED] > 0, "no message went through");
}
