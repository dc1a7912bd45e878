//! `Broadcast<T>`: smoke, edges (capacity 1 and 2, sequences past 2^32), exact lag
//! accounting, stress across threads and real processes with no torn message, the
//! writer role (refusal, takeover after SIGKILL, mid-write deaths), blocking reads
//! with timeouts and `PeerDied`, no wake-up in a steady stream, wrong-type and
//! wrong-capacity `find`, and corrupt words.
//!
//! The test binary re-executes itself: `child_main` (ignored) reads its role from
//! `SHMKIT_CHILD_ROLE` and the segment name from `SHMKIT_CHILD_TARGET`.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::child::{PREFIX, ROLE, TARGET, leave_when_the_parent_goes, say};
use common::{LineChild, PATIENCE};
use shmkit::queue::{Broadcast, Received};
use shmkit::{Error, Segment, SegmentOptions, Shared};

/// A test message: a sequence number, the writer that sent it, and a checksum
/// of both spread over the rest (a torn read would break it).
type Msg = [u64; 4];

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn msg(seq: u64, writer: u64) -> Msg {
    let c = mix(seq ^ writer.rotate_left(32));
    [seq, writer, c, !c]
}

/// Panics on a torn message; returns its sequence number.
fn check(m: Msg) -> u64 {
    assert_eq!(m, msg(m[0], m[1]), "a torn message");
    m[0]
}

fn watchdog(test: &'static str) -> common::Watchdog {
    common::watchdog(test, Duration::from_secs(120))
}

fn segment() -> Segment {
    SegmentOptions::heap().max_size(32 << 20).create().unwrap()
}

fn ring(seg: &Segment, name: &str, capacity: u64) -> Shared<Broadcast<Msg>> {
    seg.find_or_create::<Broadcast<Msg>>(name, capacity)
        .unwrap()
}

/// Reads everything there is now: the sequence numbers received and the total
/// reported lost.
fn drain(r: &mut shmkit::queue::BroadcastReader<Msg>) -> (Vec<u64>, u64) {
    let (mut got, mut lost) = (Vec::new(), 0);
    while let Some(x) = r.try_recv().unwrap() {
        match x {
            Received::Message(m) => got.push(check(m)),
            Received::Lagged(n) => lost += n,
        }
    }
    (got, lost)
}

// ---------------------------------------------------------------------------------
// Smoke and edges.
// ---------------------------------------------------------------------------------

#[test]
fn every_reader_gets_every_message_in_order() {
    let seg = segment();
    let b = ring(&seg, "b", 64);
    let mut w = b.writer().unwrap();
    let mut readers: Vec<_> = (0..3).map(|_| b.reader().unwrap()).collect();
    for i in 0..50 {
        w.send(msg(i, 1)).unwrap();
    }
    for r in &mut readers {
        assert_eq!(r.pending(), 50);
        assert_eq!(drain(r), ((0..50).collect(), 0));
        assert_eq!(r.pending(), 0);
        assert_eq!(r.try_recv().unwrap(), None);
    }
    assert_eq!(b.sent().unwrap(), 50);
    assert_eq!(w.sent(), 50);
    // A reader made now starts at the next message.
    let mut late = b.reader().unwrap();
    assert_eq!(late.position(), 50);
    w.send(msg(50, 1)).unwrap();
    assert_eq!(drain(&mut late), (vec![50], 0));
}

#[test]
fn capacity_one_and_two_keep_the_newest_and_count_the_rest() {
    for cap in [1u64, 2] {
        let seg = segment();
        let b = ring(&seg, "b", cap);
        let mut w = b.writer().unwrap();
        let mut r = b.reader().unwrap();
        for round in 0..20u64 {
            let n = round % 5; // 0..4 messages while the reader is away
            let start = w.sent();
            for i in 0..n {
                w.send(msg(start + i, 7)).unwrap();
            }
            let (got, lost) = drain(&mut r);
            let kept = n.min(cap);
            assert_eq!(lost, n - kept, "capacity {cap}, {n} sent");
            assert_eq!(got, (start + n - kept..start + n).collect::<Vec<_>>());
            assert!(r.pending() <= cap);
        }
    }
}

#[test]
fn sequences_run_on_past_two_to_the_32() {
    let seg = segment();
    let b = ring(&seg, "b", 4);
    let start = (1u64 << 32) - 3;
    b.testkit_raw().set_head(start);
    let mut w = b.writer().unwrap();
    assert_eq!(w.sent(), start);
    let mut r = b.reader().unwrap();
    assert_eq!(r.position(), start);
    for i in 0..10 {
        w.send(msg(start + i, 1)).unwrap();
        assert_eq!(drain(&mut r), (vec![start + i], 0));
    }
    assert!(r.position() > 1 << 32);
    for i in 10..20 {
        w.send(msg(start + i, 1)).unwrap();
    }
    let (got, lost) = drain(&mut r);
    assert_eq!((got.len() as u64, lost), (4, 6));
    assert_eq!(*got.last().unwrap(), start + 19);
}

#[test]
fn a_slow_reader_accounts_for_every_message() {
    let seg = segment();
    let b = ring(&seg, "b", 8);
    let mut w = b.writer().unwrap();
    let mut r = b.reader().unwrap();
    let (mut received, mut lost, mut last) = (0u64, 0u64, None::<u64>);
    let mut rng = 1u64;
    for i in 0..5_000u64 {
        w.send(msg(i, 3)).unwrap();
        rng = mix(rng);
        if rng % 7 == 0 {
            // Read a few, sometimes all.
            for _ in 0..rng % 13 {
                match r.try_recv().unwrap() {
                    Some(Received::Message(m)) => {
                        let s = check(m);
                        assert!(last.is_none_or(|l| s > l), "out of order");
                        last = Some(s);
                        received += 1;
                    }
                    Some(Received::Lagged(n)) => lost += n,
                    None => break,
                }
            }
        }
    }
    let (rest, more) = drain(&mut r);
    assert!(rest.windows(2).all(|p| p[0] < p[1]));
    received += rest.len() as u64;
    lost += more;
    assert_eq!(
        received + lost,
        5_000,
        "every message received or counted lost"
    );
    assert!(lost > 0 && received > 8);
}

// ---------------------------------------------------------------------------------
// Stress: threads and processes.
// ---------------------------------------------------------------------------------

/// A reader's view of a stream of `total` messages from one writer: each message
/// whole, strictly increasing, and received + lost == total once it is over.
fn follow(r: &mut shmkit::queue::BroadcastReader<Msg>, total: u64) -> (u64, u64) {
    let (mut received, mut lost, mut last) = (0u64, 0u64, None::<u64>);
    while received + lost < total {
        match r.recv_for(PATIENCE).unwrap() {
            Some(Received::Message(m)) => {
                let s = check(m);
                assert!(last.is_none_or(|l| s > l), "{s} after {last:?}");
                if let Some(l) = last {
                    assert_eq!(s - l - 1, 0, "a gap not reported as a lag");
                }
                last = Some(s);
                received += 1;
            }
            Some(Received::Lagged(n)) => {
                lost += n;
                last = last.map(|l| l + n); // the next message follows the lost ones
            }
            None => panic!("no message for {PATIENCE:?} after {received} + {lost}"),
        }
    }
    assert_eq!(received + lost, total);
    (received, lost)
}

#[test]
fn readers_on_threads_never_see_a_torn_or_reordered_message() {
    let _dog = watchdog("readers_on_threads_never_see_a_torn_or_reordered_message");
    const TOTAL: u64 = 200_000;
    let seg = segment();
    let b = ring(&seg, "b", 64);
    let readers: Vec<_> = (0..3).map(|_| b.reader().unwrap()).collect();
    let mut w = b.writer().unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = readers
            .into_iter()
            .map(|mut r| s.spawn(move || follow(&mut r, TOTAL)))
            .collect();
        for i in 0..TOTAL {
            w.send(msg(i, 9)).unwrap();
        }
        for h in hs {
            let (received, lost) = h.join().unwrap();
            eprintln!("thread reader: {received} received, {lost} lost");
        }
    });
}

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let name = std::env::var(TARGET).unwrap();
    let seg = SegmentOptions::posix(&name).open().unwrap();
    let b = seg.find::<Broadcast<Msg>>("ticks").unwrap();
    leave_when_the_parent_goes();
    match role.as_str() {
        // Sends `total` messages (the count from the env), then waits to be told.
        "writer" => {
            let total: u64 = std::env::var("SHMKIT_BC_TOTAL").unwrap().parse().unwrap();
            let mut w = b.writer().unwrap();
            say("ready");
            let start = w.sent();
            for i in start..start + total {
                w.send(msg(i, 5)).unwrap();
            }
            say("done");
            std::thread::sleep(Duration::from_secs(600));
        }
        // Holds the writer role and sends forever, fast (to be killed mid-send).
        "spammer" => {
            let mut w = b.writer().unwrap();
            say("ready");
            loop {
                let n = w.sent();
                w.send(msg(n, 5)).unwrap();
            }
        }
        // Follows `total` messages and reports its counts.
        "reader" => {
            let total: u64 = std::env::var("SHMKIT_BC_TOTAL").unwrap().parse().unwrap();
            let mut r = b.reader().unwrap();
            say("ready");
            let (received, lost) = follow(&mut r, total);
            say(format!("counts {received} {lost}"));
            std::thread::sleep(Duration::from_secs(600));
        }
        other => panic!("unknown role {other}"),
    }
}

fn child(role: &str, name: &str, total: u64) -> LineChild {
    let mut cmd = common::child_main_command();
    cmd.env(ROLE, role)
        .env(TARGET, name)
        .env("SHMKIT_BC_TOTAL", total.to_string());
    LineChild::spawn(cmd, Stdio::piped())
}

fn expect(k: &LineChild, what: &str) -> String {
    k.next_after(PREFIX, PATIENCE)
        .map(|l| {
            assert!(l.starts_with(what), "child said {l:?}, expected {what:?}");
            l
        })
        .unwrap_or_else(|e| panic!("child did not say {what:?}: {e}"))
}

fn posix() -> (Segment, String) {
    let name = shmkit::unique_name("t-bcast-").unwrap();
    let seg = SegmentOptions::posix(&name)
        .max_size(16 << 20)
        .create()
        .unwrap();
    ring(&seg, "ticks", 256);
    (seg, name)
}

#[test]
fn readers_in_other_processes_follow_a_writer_in_another() {
    let _dog = watchdog("readers_in_other_processes_follow_a_writer_in_another");
    const TOTAL: u64 = 100_000;
    let (seg, name) = posix();
    let b = seg.find::<Broadcast<Msg>>("ticks").unwrap();
    let mut mine = b.reader().unwrap();
    let kids: Vec<_> = (0..2).map(|_| child("reader", &name, TOTAL)).collect();
    for k in &kids {
        expect(k, "ready");
    }
    let w = child("writer", &name, TOTAL);
    expect(&w, "ready");
    let (received, lost) = follow(&mut mine, TOTAL);
    eprintln!("parent reader: {received} received, {lost} lost");
    for k in &kids {
        let line = expect(k, "counts");
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(v[0] + v[1], TOTAL, "child reader: {line}");
    }
    expect(&w, "done");
}

// ---------------------------------------------------------------------------------
// The writer role.
// ---------------------------------------------------------------------------------

#[test]
fn a_second_writer_is_refused_while_the_first_lives() {
    let seg = segment();
    let peer = seg.try_clone().unwrap();
    let b = ring(&seg, "b", 4);
    let w = b.writer().unwrap();
    match b.writer() {
        Err(Error::RoleTaken { role, holder, slot }) => {
            assert_eq!(role, "broadcast writer");
            assert_eq!(holder, seg.owner_tag().bits());
            assert_eq!(slot, seg.slot());
        }
        other => panic!("{other:?}"),
    }
    let theirs = peer.find::<Broadcast<Msg>>("b").unwrap();
    assert!(matches!(theirs.writer(), Err(Error::RoleTaken { .. })));
    drop(w);
    let mut w2 = theirs.writer().unwrap();
    w2.send(msg(0, 2)).unwrap();
    assert_eq!(b.sent().unwrap(), 1);
}

#[test]
fn a_killed_writers_role_is_taken_over_and_the_stream_goes_on() {
    let _dog = watchdog("a_killed_writers_role_is_taken_over_and_the_stream_goes_on");
    let (seg, name) = posix();
    let b = seg.find::<Broadcast<Msg>>("ticks").unwrap();
    let mut r = b.reader().unwrap();
    let mut received = Vec::new();
    let mut lost = 0;
    for round in 0..10 {
        let mut k = child("spammer", &name, 0);
        expect(&k, "ready");
        std::thread::sleep(Duration::from_millis(2 + round * 3));
        k.kill().unwrap(); // somewhere inside a send, most likely
        k.wait_for_exit(PATIENCE).expect("reaped");
        let (got, l) = drain(&mut r);
        received.extend(got);
        lost += l;
        // The next writer takes the role over at once and goes on numbering.
        let mut w = b.writer().unwrap();
        let n = w.sent();
        w.send(msg(n, 1)).unwrap();
        drop(w);
        let (got, l) = drain(&mut r);
        assert_eq!(
            got.last(),
            Some(&n),
            "round {round}: the new writer's message"
        );
        received.extend(got);
        lost += l;
    }
    assert!(
        received.windows(2).all(|p| p[0] < p[1]),
        "no duplicate, in order"
    );
    assert_eq!(received.len() as u64 + lost, b.sent().unwrap());
}

#[test]
fn a_writer_dead_mid_message_never_shows_a_torn_one() {
    // The slot of message n marked (odd) by a writer that died: readers see
    // nothing yet; the next writer writes message n again, whole.
    let seg = segment();
    let peer = seg.try_clone().unwrap();
    let b = ring(&seg, "b", 4);
    let mut r = b.reader().unwrap();
    {
        let theirs = peer.find::<Broadcast<Msg>>("b").unwrap();
        let mut w = theirs.writer().unwrap();
        w.send(msg(0, 2)).unwrap();
        std::mem::forget(w); // the role stays with the "dead" attachment
    }
    let raw = b.testkit_raw();
    raw.set_ring_word(8, 3); // slot 1 (stride 8 words): message 1 marked (2n + 1)
    raw.set_ring_word(9, 0xdead); // half its data
    assert_eq!(drain(&mut r), (vec![0], 0));
    // SAFETY: no guard was taken through `peer`; its writer handle was forgotten.
    unsafe { peer.simulate_crash_now() };
    let mut w = b.writer().unwrap();
    assert_eq!(w.sent(), 1, "message 1 is written again under its number");
    w.send(msg(1, 1)).unwrap();
    assert_eq!(drain(&mut r), (vec![1], 0));
}

// ---------------------------------------------------------------------------------
// Blocking reads.
// ---------------------------------------------------------------------------------

#[test]
fn blocking_reads_time_out_and_are_woken_by_a_send() {
    let _dog = watchdog("blocking_reads_time_out_and_are_woken_by_a_send");
    let seg = segment();
    let b = ring(&seg, "b", 4);
    let mut r = b.reader().unwrap();
    let t = Instant::now();
    assert_eq!(r.recv_for(Duration::from_millis(50)).unwrap(), None);
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert_eq!(r.recv_until(Instant::now()).unwrap(), None);
    let mut w = b.writer().unwrap();
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let mut got = Vec::new();
            for _ in 0..3 {
                match r.recv_blocking().unwrap() {
                    Received::Message(m) => got.push(check(m)),
                    Received::Lagged(n) => panic!("lagged {n}"),
                }
            }
            got
        });
        for i in 0..3 {
            // Wait until the reader sleeps (its waiting bit), then send.
            common::eventually("the reader to sleep", || {
                b.testkit_raw().bell().load(Ordering::SeqCst) & 1 == 1
            });
            w.send(msg(i, 1)).unwrap();
        }
        assert_eq!(h.join().unwrap(), vec![0, 1, 2]);
    });
}

#[test]
fn a_steady_stream_rings_no_bell() {
    // Readers that poll (never sleep) cost the writer no wake-up: the bell's
    // generation moves only when a reader slept.
    let seg = segment();
    let b = ring(&seg, "b", 1024);
    let mut w = b.writer().unwrap();
    let mut readers: Vec<_> = (0..2).map(|_| b.reader().unwrap()).collect();
    let bell = || b.testkit_raw().bell().load(Ordering::SeqCst);
    let before = bell();
    for i in 0..10_000 {
        w.send(msg(i, 1)).unwrap();
        if i % 100 == 99 {
            for r in &mut readers {
                assert_eq!(drain(r).0.len(), 100);
            }
        }
    }
    assert_eq!(
        bell(),
        before,
        "no wake-up in a stream nobody slept through"
    );
    // One sleeper: one generation step for the next send, then none again.
    let mut r = b.reader().unwrap();
    assert_eq!(r.recv_for(Duration::from_millis(20)).unwrap(), None);
    w.send(msg(10_000, 1)).unwrap();
    let after = bell();
    assert_ne!(after, before);
    assert_eq!(after & 1, 0, "the writer cleared the waiting bit");
    for i in 10_001..10_100 {
        w.send(msg(i, 1)).unwrap();
    }
    assert_eq!(bell(), after, "a reader that slept once costs one wake-up");
}

#[test]
fn a_sleeping_reader_learns_that_the_writer_died() {
    let _dog = watchdog("a_sleeping_reader_learns_that_the_writer_died");
    let (seg, name) = posix();
    let b = seg.find::<Broadcast<Msg>>("ticks").unwrap();
    let mut r = b.reader().unwrap();
    let mut k = child("writer", &name, 3);
    expect(&k, "ready");
    expect(&k, "done");
    assert_eq!(drain(&mut r), (vec![0, 1, 2], 0));
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let t = Instant::now();
            let e = r.recv_blocking().unwrap_err();
            stop.store(true, Ordering::SeqCst);
            (e, t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !stop.load(Ordering::SeqCst),
            "the reader waits for a live writer"
        );
        let killed = Instant::now();
        k.kill().unwrap();
        k.wait_for_exit(PATIENCE).expect("reaped");
        let (e, _) = h.join().unwrap();
        assert!(
            matches!(
                e,
                Error::PeerDied {
                    role: "broadcast writer"
                }
            ),
            "{e:?}"
        );
        assert!(killed.elapsed() < Duration::from_secs(5));
    });
    // A new writer takes over; the reader goes on.
    let mut w = b.writer().unwrap();
    w.send(msg(3, 1)).unwrap();
    assert_eq!(drain(&mut r), (vec![3], 0));
}

// ---------------------------------------------------------------------------------
// Finding, and damage.
// ---------------------------------------------------------------------------------

#[test]
fn find_refuses_another_type_or_capacity() {
    let seg = segment();
    ring(&seg, "b", 8);
    assert!(matches!(
        seg.find_or_create::<Broadcast<Msg>>("b", 16),
        Err(Error::WrongConfig { .. })
    ));
    assert!(matches!(
        seg.find::<Broadcast<[u64; 2]>>("b"),
        Err(Error::WrongType { .. })
    ));
    assert!(matches!(
        seg.find_or_create::<Broadcast<Msg>>("c", 3),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        seg.find_or_create::<Broadcast<Msg>>("c", 0),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(seg.find::<Broadcast<Msg>>("b").unwrap().capacity(), 8);
}

#[test]
fn corrupt_words_are_errors_never_torn_values_or_hangs() {
    let seg = segment();
    let b = ring(&seg, "b", 4);
    let raw = b.testkit_raw();
    let mut w = b.writer().unwrap();
    for i in 0..3 {
        w.send(msg(i, 1)).unwrap();
    }
    // A sequence from another slot's residue class, and one past the head.
    for forged in [2 * 6 + 2, 2 * 41 + 1, u64::MAX] {
        w.send(msg(w.sent(), 1)).unwrap();
        let mut r = b.reader().unwrap(); // at the next message, not written yet
        let slot = (r.position() % 4) as usize * 8;
        raw.set_ring_word(slot, forged);
        match r.try_recv() {
            Err(Error::Corrupt {
                what: "broadcast slot",
                ..
            }) => {}
            other => panic!("forged {forged:#x}: {other:?}"),
        }
        raw.set_ring_word(slot, 0);
    }
    // A head no writer reaches: readers and writers refuse it.
    drop(w);
    raw.set_head(u64::MAX - 1);
    assert!(matches!(
        b.reader(),
        Err(Error::Corrupt { what: "head", .. })
    ));
    assert!(matches!(
        b.writer(),
        Err(Error::Corrupt { what: "head", .. })
    ));
    assert!(matches!(b.sent(), Err(Error::Corrupt { .. })));
    // ...and the role is given back after the refusal.
    raw.set_head(3);
    let mut w = b.writer().unwrap();
    w.send(msg(w.sent(), 1)).unwrap();
    // A forged head far ahead: pending never exceeds the capacity.
    let r = b.reader().unwrap();
    raw.set_head(1 << 40);
    assert!(r.pending() <= 4);
    // A forged writer word naming nobody alive is taken over.
    drop(w);
    raw.set_writer_word(shmkit::OwnerTag::new(3, 77).unwrap().bits());
    let w = b.writer().unwrap();
    assert_eq!(w.sent(), 1 << 40);
}

// ---------------------------------------------------------------------------------
// Review regressions.
// ---------------------------------------------------------------------------------

#[test]
fn a_timeout_too_long_for_an_instant_waits_instead_of_panicking() {
    let _dog = watchdog("a_timeout_too_long_for_an_instant_waits_instead_of_panicking");
    let seg = segment();
    let b = ring(&seg, "b", 4);
    let mut r = b.reader().unwrap();
    let mut w = b.writer().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            w.send(msg(0, 1)).unwrap();
        });
        assert_eq!(
            r.recv_for(Duration::MAX).unwrap(),
            Some(Received::Message(msg(0, 1)))
        );
    });
}

#[test]
fn a_head_near_the_sequence_limit_is_refused() {
    let seg = segment();
    let b = ring(&seg, "b", 4);
    b.testkit_raw().set_head((1 << 62) - 1);
    assert!(matches!(
        b.writer(),
        Err(Error::Corrupt { what: "head", .. })
    ));
    b.testkit_raw().set_head(1 << 61);
    assert!(matches!(
        b.reader(),
        Err(Error::Corrupt { what: "head", .. })
    ));
    b.testkit_raw().set_head((1 << 61) - 1);
    let mut w = b.writer().unwrap();
    w.send(msg(0, 1)).unwrap();
}

#[test]
fn a_writer_inherited_by_a_forked_child_neither_writes_nor_frees_the_role() {
    let seg = SegmentOptions::anonymous()
        .max_size(8 << 20)
        .create()
        .unwrap();
    let b = ring(&seg, "b", 4);
    let mut w = b.writer().unwrap();
    // SAFETY: the child only calls send and drops the handle (atomics, no lock
    // a parent thread could hold), then leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let refused = matches!(w.send(msg(0, 9)), Err(Error::NotAttached));
        drop(w); // must not give the parent's role back
        // SAFETY: leaving the forked child without the parent's destructors.
        unsafe { libc::_exit(if refused { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's send was not refused"
    );
    assert!(
        matches!(b.writer(), Err(Error::RoleTaken { .. })),
        "the child's drop freed the parent's role"
    );
    assert_eq!(b.sent().unwrap(), 0, "the child wrote");
    w.send(msg(0, 1)).unwrap();
}
