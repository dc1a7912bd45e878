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
//! # Broadcast
//!
//! A writer process sends message `n` as `msg(n)` as fast as it can; every round
//! the parent reads for a random 1–8 ms, SIGKILLs the writer (inside a send, most
//! likely), reads what is left and starts a successor, which takes the role over.
//! Every message the parent reads must be whole and carry the number of its
//! position (no duplicate, no gap that is not reported as a lag), and at the end
//! received + lost must equal the messages sent.
//!
//! `cargo test` runs [`DEFAULT_ROUNDS`] kills (each section); set `SHMKIT_CRASH_ROUNDS` for more,
//! e.g. `SHMKIT_CRASH_ROUNDS=5000 cargo test --release --test crash_queue -- --nocapture`.
//!
//! The test binary re-executes itself: `child_main` (ignored) reads its role from
//! `SHMKIT_CHILD_ROLE` and the segment name from `SHMKIT_CHILD_TARGET`. A child
//! leaves when its stdin reaches end-of-file, so none outlives the test binary.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

mod common;
#[path = "crash_queue/mpmc.rs"]
mod mpmc;

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::child::{PREFIX, ROLE, TARGET, leave_when_the_parent_goes, say};
use common::crash::{self, Rng};
use common::{LineChild, PATIENCE, child_main_command};
use shmkit::queue::{Broadcast, Received, SpscQueue};
use shmkit::{Error, Segment, SegmentOptions, Shared};

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
    let stats = seg.find::<Stats>("stats").expect("child: find stats");
    leave_when_the_parent_goes();
    match role.as_str() {
        "spsc-producer" => spsc_producer(&seg.find("q").expect("child: find q"), &stats),
        "spsc-consumer" => spsc_consumer(&seg.find("q").expect("child: find q"), &stats),
        "bcast-writer" => bcast_writer(&seg.find("b").expect("child: find b")),
        other => panic!("unknown child role {other:?}"),
    }
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

/// Holds the broadcast writer role (taking a dead predecessor's over) and sends
/// message `n` as `msg(n)` for ever: a successor rewrites a message its
/// predecessor died writing under the same number and contents.
fn bcast_writer(b: &Shared<Broadcast<Msg>>) -> ! {
    let mut w = claim(|| b.writer());
    say("ready");
    loop {
        let n = w.sent();
        w.send(msg(n)).expect("child: send");
    }
}

// ---------------------------------------------------------------------------------
// The parent.
// ---------------------------------------------------------------------------------

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
    let mut rng = Rng::seeded(1);
    let mut producer = spawn("spsc-producer", &name);
    let mut consumer = spawn("spsc-consumer", &name);
    let rounds = crash::rounds(DEFAULT_ROUNDS);
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

/// Reads what is there: each message whole and numbered as its position; lags
/// counted. Returns (received, lost).
fn follow(r: &mut shmkit::queue::BroadcastReader<Msg>) -> (u64, u64) {
    let (mut received, mut lost) = (0, 0);
    loop {
        let at = r.position();
        match r.try_recv().unwrap() {
            Some(Received::Message(m)) => {
                assert!(!torn(&m), "a torn broadcast message: {m:?}");
                assert_eq!(m[0], at, "a duplicate or an unreported gap");
                received += 1;
            }
            Some(Received::Lagged(k)) => {
                assert_eq!(r.position(), at + k, "a lag that does not add up");
                lost += k;
            }
            None => return (received, lost),
        }
    }
}

#[test]
fn broadcast_readers_see_no_torn_or_repeated_message_across_writer_kills() {
    let name = shmkit::unique_name("crash-bcast-").unwrap();
    let seg: Segment = SegmentOptions::posix(&name)
        .max_size(1 << 22)
        .create()
        .unwrap();
    let b = seg.find_or_create::<Broadcast<Msg>>("b", CAPACITY).unwrap();
    seg.find_or_create::<Stats>("stats", ()).unwrap();
    let mut r = b.reader().unwrap();
    let mut rng = Rng::seeded(2);
    let rounds = crash::rounds(DEFAULT_ROUNDS);
    let (mut received, mut lost) = (0u64, 0u64);
    for _ in 0..rounds {
        let w = spawn("bcast-writer", &name);
        let until = Instant::now() + Duration::from_millis(1 + rng.below(8));
        while Instant::now() < until {
            let (a, l) = follow(&mut r);
            (received, lost) = (received + a, lost + l);
        }
        kill(w);
        let (a, l) = follow(&mut r);
        (received, lost) = (received + a, lost + l);
    }
    // The parent takes the role over last: one more message, then the count.
    let mut w = b.writer().expect("the dead writer's role is taken over");
    w.send(msg(w.sent())).unwrap();
    let (a, l) = follow(&mut r);
    (received, lost) = (received + a, lost + l);
    let sent = b.sent().unwrap();
    eprintln!(
        "crash_queue broadcast: {rounds} writer kills, {sent} sent, {received} read, {lost} lost"
    );
    assert_eq!(received + lost, sent, "every message read or counted lost");
    assert_eq!(r.position(), sent);
    assert!(received > rounds, "the reader kept up at times");
}
