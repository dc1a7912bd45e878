//! `MpmcQueue`: smoke, edges (capacity 1 and 2, the 2^62 stamp and 2^64
//! position wraps, full/empty), stress across threads and real processes,
//! `find` with a wrong type or capacity, claimants that die between claiming a
//! slot and publishing it (simulated, and SIGKILLed processes), blocking forms
//! with timeouts, and corrupt words.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::child::{PREFIX, ROLE, TARGET, env_u64, leave_when_the_parent_goes, say};
use common::{LineChild, PATIENCE};
use shmkit::queue::testkit::{Stop, arm_stop, testkit_word_offsets};
use shmkit::queue::{MpmcQueue, PushError};
use shmkit::{Error, Segment, SegmentOptions, Shared, sync::Mutex};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

const WATCHDOG: Duration = Duration::from_secs(120);

fn heap_seg() -> Segment {
    SegmentOptions::heap().max_size(64 << 20).create().unwrap()
}

fn queue<T>(seg: &Segment, cap: u64) -> Shared<MpmcQueue<T>>
where
    T: shmkit::ShmSafe + Copy + FromBytes + IntoBytes + Immutable,
{
    seg.find_or_create::<MpmcQueue<T>>("q", cap).unwrap()
}

/// Pops everything there is now.
fn drain(q: &Shared<MpmcQueue<u64>>) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(v) = q.pop().unwrap() {
        out.push(v);
    }
    out
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct Odd {
    a: u64,
    b: u32,
    c: [u8; 4],
    d: u64,
}

#[test]
fn smoke_fifo_len_and_a_multi_word_message() {
    let seg = heap_seg();
    let q = queue::<u64>(&seg, 8);
    assert_eq!(q.capacity(), 8);
    assert!(q.is_empty());
    for v in 1..=5 {
        q.try_push(v).unwrap();
    }
    assert_eq!(q.len(), 5);
    assert_eq!(drain(&q), vec![1, 2, 3, 4, 5]);
    assert_eq!(q.len(), 0);

    let o = seg.find_or_create::<MpmcQueue<Odd>>("odd", 4).unwrap();
    let m = Odd {
        a: u64::MAX,
        b: 7,
        c: *b"abcd",
        d: 0x0102_0304_0506_0708,
    };
    o.try_push(m).unwrap();
    assert_eq!(o.pop().unwrap(), Some(m));
    assert_eq!(o.pop().unwrap(), None);

    // One-byte and odd-sized messages use a zero-padded last word.
    let b = seg
        .find_or_create::<MpmcQueue<[u8; 3]>>("bytes", 2)
        .unwrap();
    b.try_push([1, 2, 3]).unwrap();
    assert_eq!(b.pop().unwrap(), Some([1, 2, 3]));
}

#[test]
fn capacity_one_and_two_full_and_empty_over_many_laps() {
    for cap in [1u64, 2] {
        let seg = heap_seg();
        let q = queue::<u64>(&seg, cap);
        let mut next = 0u64;
        let mut expect = 0u64;
        for _ in 0..1000 {
            for _ in 0..cap {
                q.try_push(next).unwrap();
                next += 1;
            }
            assert_eq!(q.try_push(u64::MAX), Err(PushError::Full(u64::MAX)));
            assert_eq!(q.len(), cap);
            for _ in 0..cap {
                assert_eq!(q.pop().unwrap(), Some(expect));
                expect += 1;
            }
            assert_eq!(q.pop().unwrap(), None);
            assert_eq!(q.len(), 0);
        }
    }
}

#[test]
fn positions_wrap_past_2_pow_62_and_2_pow_64() {
    // Stamps hold positions modulo 2^62, position words wrap at 2^64: start
    // each a few laps before its wrap.
    for start in [(1u64 << 62) - 5, u64::MAX - 5, (1u64 << 32) - 3] {
        for cap in [1u64, 2, 4] {
            let seg = heap_seg();
            let q = queue::<u64>(&seg, cap);
            q.testkit_start_at(start).unwrap();
            let mut expect = 0;
            for i in 0..64u64 {
                q.try_push(i).unwrap();
                if i % 3 == 2 || q.len() == cap {
                    while let Some(v) = q.pop().unwrap() {
                        assert_eq!(v, expect, "start {start:#x} cap {cap}");
                        expect += 1;
                    }
                }
                assert!(q.len() <= cap);
            }
            while let Some(v) = q.pop().unwrap() {
                assert_eq!(v, expect);
                expect += 1;
            }
            assert_eq!(expect, 64);
        }
    }
}

#[test]
fn invalid_capacities_are_refused_with_a_typed_error() {
    let seg = heap_seg();
    for cap in [0u64, 3, 6, 1 << 33] {
        let e = seg
            .find_or_create::<MpmcQueue<u64>>("bad", cap)
            .unwrap_err();
        assert!(
            matches!(e, Error::InvalidCapacity { capacity, .. } if capacity == cap),
            "{cap}: {e:?}"
        );
    }
}

#[test]
fn find_with_another_capacity_or_type_is_refused() {
    let seg = heap_seg();
    let q = queue::<u64>(&seg, 4);
    q.try_push(1).unwrap();
    let e = seg.find_or_create::<MpmcQueue<u64>>("q", 8).unwrap_err();
    assert!(matches!(e, Error::WrongConfig { .. }), "{e:?}");
    let e = seg.find::<MpmcQueue<u32>>("q").unwrap_err();
    assert!(matches!(e, Error::WrongType { .. }), "{e:?}");
    let e = seg.find::<Mutex<u64>>("q").unwrap_err();
    assert!(matches!(e, Error::WrongType { .. }), "{e:?}");
    let found = seg.find::<MpmcQueue<u64>>("q").unwrap();
    assert_eq!(found.capacity(), 4);
    assert_eq!(found.pop().unwrap(), Some(1));
}

#[test]
fn threads_n_by_m_every_value_received_exactly_once() {
    let _w = common::watchdog("threads_n_by_m", WATCHDOG);
    const PRODUCERS: u64 = 4;
    const CONSUMERS: usize = 3;
    const EACH: u64 = 20_000;
    for cap in [1u64, 2, 64] {
        let seg = heap_seg();
        let q = queue::<u64>(&seg, cap);
        let start = Arc::new(Barrier::new(PRODUCERS as usize + CONSUMERS));
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut producers = Vec::new();
        for id in 0..PRODUCERS {
            // Each producer its own attachment, as separate processes would be.
            let peer = seg.try_clone().unwrap();
            let (start, cap) = (start.clone(), cap);
            producers.push(std::thread::spawn(move || {
                let q = peer.find_or_create::<MpmcQueue<u64>>("q", cap).unwrap();
                start.wait();
                for seq in 0..EACH {
                    let mut v = (id << 32) | seq;
                    loop {
                        match q.try_push(v) {
                            Ok(()) => break,
                            Err(PushError::Full(back)) => {
                                v = back;
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            }));
        }
        let mut consumers = Vec::new();
        for _ in 0..CONSUMERS {
            let peer = seg.try_clone().unwrap();
            let (start, done) = (start.clone(), done.clone());
            consumers.push(std::thread::spawn(move || {
                let q = peer.find_or_create::<MpmcQueue<u64>>("q", cap).unwrap();
                start.wait();
                let mut got = Vec::new();
                loop {
                    match q.pop().unwrap() {
                        Some(v) => got.push(v),
                        None if done.load(std::sync::atomic::Ordering::Acquire) == 1 => {
                            match q.pop().unwrap() {
                                Some(v) => got.push(v),
                                None => return got,
                            }
                        }
                        None => std::thread::yield_now(),
                    }
                }
            }));
        }
        for p in producers {
            p.join().unwrap();
        }
        done.store(1, std::sync::atomic::Ordering::Release);
        let mut all = Vec::new();
        for c in consumers {
            all.extend(c.join().unwrap());
        }
        all.extend(drain(&q));
        assert_eq!(all.len() as u64, PRODUCERS * EACH, "cap {cap}");
        let set: BTreeSet<u64> = all.iter().copied().collect();
        assert_eq!(set.len(), all.len(), "duplicates at cap {cap}");
        for id in 0..PRODUCERS {
            for seq in 0..EACH {
                assert!(set.contains(&((id << 32) | seq)));
            }
        }
        // Per producer, one consumer sees its values in order: checked by the
        // model tests; here the multiset is exact.
        assert!(q.is_empty());
    }
}

#[test]
fn a_producer_dying_between_claim_and_publish_loses_exactly_its_message() {
    for cap in [1u64, 2, 4] {
        let seg = heap_seg();
        let q = queue::<u64>(&seg, cap);
        let peer = seg.try_clone().unwrap();
        let pq = peer.find::<MpmcQueue<u64>>("q").unwrap();
        if cap > 1 {
            q.try_push(1).unwrap();
        }
        arm_stop(Stop::ProducerClaimed);
        let e = pq.try_push(99).unwrap_err();
        assert!(
            matches!(e, PushError::Failed(99, Error::SimulatedCrash)),
            "{e:?}"
        );
        // The claimant is alive: its slot is waited for, never repaired.
        assert_eq!(q.pop().unwrap(), if cap > 1 { Some(1) } else { None });
        assert_eq!(q.pop().unwrap(), None);
        drop(pq);
        peer.simulate_crash();
        // Dead: the next consumer skips the slot; the queue works on.
        assert_eq!(q.pop().unwrap(), None);
        for v in 10..10 + cap {
            q.try_push(v).unwrap();
        }
        assert_eq!(drain(&q), (10..10 + cap).collect::<Vec<_>>());
        // A producer that laps onto the slot repairs it just as well; the
        // skipped slot then holds its place until a consumer passes it.
        let peer = seg.try_clone().unwrap();
        let pq = peer.find::<MpmcQueue<u64>>("q").unwrap();
        arm_stop(Stop::ProducerClaimed);
        assert!(pq.try_push(77).is_err());
        drop(pq);
        peer.simulate_crash();
        for v in 0..cap - 1 {
            q.try_push(v).unwrap();
        }
        assert_eq!(q.try_push(78), Err(PushError::Full(78)), "cap {cap}");
        let got = drain(&q);
        assert_eq!(got, (0..cap - 1).collect::<Vec<_>>(), "cap {cap}");
        for v in 0..cap {
            q.try_push(v).unwrap();
        }
        assert_eq!(drain(&q), (0..cap).collect::<Vec<_>>());
    }
}

#[test]
fn a_consumer_dying_between_claim_and_release_loses_exactly_its_message() {
    for cap in [1u64, 2, 4] {
        let seg = heap_seg();
        let q = queue::<u64>(&seg, cap);
        for v in 0..cap {
            q.try_push(v).unwrap();
        }
        let peer = seg.try_clone().unwrap();
        let pq = peer.find::<MpmcQueue<u64>>("q").unwrap();
        arm_stop(Stop::ConsumerClaimed);
        assert!(matches!(pq.pop(), Err(Error::SimulatedCrash)));
        // Alive: its slot stays taken, the queue full.
        assert_eq!(q.try_push(50), Err(PushError::Full(50)));
        drop(pq);
        peer.simulate_crash();
        // Dead: the slot of message 0 is released for the next lap.
        q.try_push(50).unwrap();
        let got = drain(&q);
        let mut expect: Vec<u64> = (1..cap).collect();
        expect.push(50);
        assert_eq!(got, expect, "cap {cap}");
        assert!(q.is_empty());
    }
}

#[test]
fn blocking_forms_time_out_and_wake() {
    let _w = common::watchdog("blocking_forms", WATCHDOG);
    let seg = heap_seg();
    let q = queue::<u64>(&seg, 1);
    let t0 = Instant::now();
    assert!(matches!(
        q.pop_blocking_for(Duration::from_millis(30)),
        Err(Error::TimedOut)
    ));
    assert!(t0.elapsed() >= Duration::from_millis(30));
    q.push_blocking_for(1, Duration::from_millis(10)).unwrap();
    let t0 = Instant::now();
    assert_eq!(
        q.push_blocking_until(2, Instant::now() + Duration::from_millis(30)),
        Err(PushError::TimedOut(2))
    );
    assert!(t0.elapsed() >= Duration::from_millis(30));
    // A sleeping consumer is woken by a push from another attachment.
    let peer = seg.try_clone().unwrap();
    assert_eq!(q.pop_blocking().unwrap(), 1);
    let t = std::thread::spawn(move || {
        let q = peer.find::<MpmcQueue<u64>>("q").unwrap();
        (0..100)
            .map(|_| q.pop_blocking_for(PATIENCE).unwrap())
            .collect::<Vec<_>>()
    });
    for v in 0..100 {
        q.push_blocking_for(v, PATIENCE).unwrap();
    }
    assert_eq!(t.join().unwrap(), (0..100).collect::<Vec<_>>());
    // A sleeping producer is woken by a pop.
    q.push_blocking(7).unwrap();
    let peer = seg.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let q = peer.find::<MpmcQueue<u64>>("q").unwrap();
        q.push_blocking(8).unwrap();
    });
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(q.pop_blocking_until(Instant::now() + PATIENCE).unwrap(), 7);
    t.join().unwrap();
    assert_eq!(q.pop().unwrap(), Some(8));
}

#[test]
fn a_sleeping_consumer_gets_past_a_dead_producers_slot() {
    let _w = common::watchdog("sleeping_consumer_dead_producer", WATCHDOG);
    let seg = heap_seg();
    let q = queue::<u64>(&seg, 2);
    let peer = seg.try_clone().unwrap();
    let pq = peer.find::<MpmcQueue<u64>>("q").unwrap();
    arm_stop(Stop::ProducerClaimed);
    assert!(pq.try_push(1).is_err());
    let other = seg.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let q = other.find::<MpmcQueue<u64>>("q").unwrap();
        q.pop_blocking_for(PATIENCE)
    });
    std::thread::sleep(Duration::from_millis(20));
    drop(pq);
    peer.simulate_crash();
    q.try_push(2).unwrap();
    assert_eq!(t.join().unwrap().unwrap(), 2);
}

/// The queue's word at byte `off` from its start, as a peer could write it.
fn word(seg: &Segment, q: &Shared<MpmcQueue<u64>>, off: u64) -> &'static AtomicU64 {
    let at = seg.as_ptr().wrapping_add((q.offset().get() + off) as usize);
    // SAFETY: an 8-aligned AtomicU64 of the queue's block (the offsets come from
    // the queue's own layout), valid for any bit pattern, in the segment's
    // mapping, which the test keeps alive (a leaked clone) past every use.
    unsafe { &*at.cast::<AtomicU64>() }
}

#[test]
fn corrupt_words_are_reported_never_a_hang_and_len_stays_bounded() {
    let _w = common::watchdog("corrupt_words", WATCHDOG);
    use std::sync::atomic::Ordering::Relaxed;
    let seg = heap_seg();
    std::mem::forget(seg.clone());
    let q = queue::<u64>(&seg, 4);
    let [tail, head, stamp0, owner0] = testkit_word_offsets::<u64>(0);
    // A stamp from the future.
    word(&seg, &q, stamp0).store(1000 << 2, Relaxed);
    assert!(matches!(
        q.try_push(1),
        Err(PushError::Failed(1, Error::Corrupt { .. }))
    ));
    assert!(matches!(q.pop(), Err(Error::Corrupt { .. })));
    // An unknown kind.
    word(&seg, &q, stamp0).store(3, Relaxed);
    assert!(q.try_push(1).is_err());
    assert!(matches!(q.pop(), Err(Error::Corrupt { .. })));
    word(&seg, &q, stamp0).store(0, Relaxed);
    q.try_push(1).unwrap();
    assert_eq!(q.pop().unwrap(), Some(1));
    // Positions far apart: len is clamped, calls return.
    word(&seg, &q, tail).store(u64::MAX / 2, Relaxed);
    assert_eq!(q.len(), 4);
    assert!(q.try_push(2).is_err());
    word(&seg, &q, head).store(u64::MAX, Relaxed);
    assert!(q.len() <= 4);
    let _ = q.pop();
    assert!(q.pop_blocking_for(Duration::from_millis(20)).is_err());
    assert!(q.push_blocking_for(3, Duration::from_millis(20)).is_err());
    // An owner word naming nobody alive is a dead claimant's: cleared.
    word(&seg, &q, tail).store(1, Relaxed);
    word(&seg, &q, head).store(1, Relaxed);
    let s1 = testkit_word_offsets::<u64>(1)[2];
    word(&seg, &q, s1).store(1 << 2, Relaxed);
    word(&seg, &q, testkit_word_offsets::<u64>(1)[3]).store(0x3fff_ffff_ffff_ffff, Relaxed);
    q.try_push(4).unwrap();
    assert_eq!(q.pop().unwrap(), Some(4));
    // An owner word forged to name a live attachment: busy, never a hang.
    let live = seg.owner_tag().bits();
    let s2 = testkit_word_offsets::<u64>(2);
    word(&seg, &q, s2[3]).store(live, Relaxed);
    let t0 = Instant::now();
    assert_eq!(q.try_push(5), Err(PushError::Full(5)));
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        q.pop_blocking_for(Duration::from_millis(20)),
        Err(Error::TimedOut)
    ));
    let _ = owner0;
}

// ---------------------------------------------------------------------------------
// Real processes.
// ---------------------------------------------------------------------------------

const COUNT: &str = "SHMKIT_MPMC_COUNT";
const ID: &str = "SHMKIT_MPMC_ID";
const CAP: u64 = 16;

struct Named {
    name: String,
    seg: Segment,
}

fn named() -> Named {
    let name = shmkit::unique_name("mpmc-").unwrap();
    let seg = SegmentOptions::posix(&name)
        .max_size(16 << 20)
        .create()
        .unwrap();
    Named { name, seg }
}

fn child(role: &str, name: &str, extra: &[(&str, String)]) -> LineChild {
    let mut cmd = common::child_main_command();
    cmd.env(ROLE, role).env(TARGET, name);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    LineChild::spawn(cmd, Stdio::piped())
}

fn expect_line(c: &LineChild, what: &str) -> String {
    let l = c
        .next_after(PREFIX, PATIENCE)
        .unwrap_or_else(|e| panic!("child said nothing: {e}"));
    assert!(l.starts_with(what), "child said {l:?}, expected {what:?}");
    l[what.len()..].trim().to_owned()
}

#[test]
fn processes_two_producers_two_consumers_every_value_once() {
    let _w = common::watchdog("processes_2x2", WATCHDOG);
    let n = named();
    let q = queue::<u64>(&n.seg, CAP);
    const EACH: u64 = 5000;
    let producers: Vec<_> = (0..2u64)
        .map(|id| {
            child(
                "produce",
                &n.name,
                &[(ID, id.to_string()), (COUNT, EACH.to_string())],
            )
        })
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|_| child("consume", &n.name, &[(COUNT, "0".into())]))
        .collect();
    for p in &producers {
        expect_line(p, "produced");
    }
    let mut all: Vec<u64> = Vec::new();
    for mut c in consumers {
        c.close_stdin(); // consumers stop once the queue stays empty after EOF
        let got = expect_line(&c, "consumed");
        all.extend(got.split_whitespace().map(|w| w.parse::<u64>().unwrap()));
    }
    all.extend(drain(&q));
    let set: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(set.len(), all.len(), "a duplicate");
    assert_eq!(all.len() as u64, 2 * EACH);
}

#[test]
fn a_sigkilled_producer_between_claim_and_publish_loses_one_message() {
    let _w = common::watchdog("sigkill_producer", WATCHDOG);
    let n = named();
    let q = queue::<u64>(&n.seg, CAP);
    let mut c = child("produce-then-stop", &n.name, &[(COUNT, "5".into())]);
    expect_line(&c, "claimed");
    // The claimant lives: its slot blocks what follows it.
    assert_eq!(drain(&q), vec![0, 1, 2, 3, 4]);
    q.try_push(100).unwrap();
    assert_eq!(q.pop().unwrap(), None);
    c.kill().unwrap();
    assert!(c.wait_for_exit(PATIENCE).is_some());
    // Dead (the kernel says so): the slot is skipped, nothing else is lost.
    common::eventually("the dead producer's slot skipped", || {
        q.pop().unwrap() == Some(100)
    });
    for v in 0..3 * CAP {
        q.try_push(v).unwrap();
        assert_eq!(q.pop().unwrap(), Some(v));
    }
}

#[test]
fn a_sigkilled_consumer_between_claim_and_release_loses_one_message() {
    let _w = common::watchdog("sigkill_consumer", WATCHDOG);
    let n = named();
    let q = queue::<u64>(&n.seg, CAP);
    for v in 0..CAP {
        q.try_push(v).unwrap();
    }
    let mut c = child("consume-then-stop", &n.name, &[(COUNT, "3".into())]);
    let got = expect_line(&c, "claimed");
    assert_eq!(got, "0 1 2");
    for v in CAP..CAP + 3 {
        q.try_push(v).unwrap();
    }
    // The claimant lives: the slot of message 3 stays taken.
    assert_eq!(q.try_push(500), Err(PushError::Full(500)));
    c.kill().unwrap();
    assert!(c.wait_for_exit(PATIENCE).is_some());
    common::eventually("the dead consumer's slot released", || {
        q.try_push(500).is_ok()
    });
    let rest = drain(&q);
    let mut expect: Vec<u64> = (4..CAP + 3).collect();
    expect.push(500);
    assert_eq!(
        rest, expect,
        "message 3 (the one in flight) lost, nothing else"
    );
}

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return; // run by hand with --ignored: nothing to do
    };
    let name = std::env::var(TARGET).unwrap();
    let seg = SegmentOptions::posix(&name).open().unwrap();
    let q = seg.find::<MpmcQueue<u64>>("q").unwrap();
    let count = env_u64(COUNT);
    match role.as_str() {
        "produce" => {
            let id = env_u64(ID);
            for seq in 0..count {
                q.push_blocking_for((id << 32) | seq, PATIENCE).unwrap();
            }
            say("produced");
            common::child::wait_for_eof();
        }
        "consume" => {
            let eof = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let e2 = eof.clone();
            std::thread::spawn(move || {
                common::child::wait_for_eof();
                e2.store(1, std::sync::atomic::Ordering::Release);
            });
            let mut got = Vec::new();
            loop {
                match q.pop_blocking_for(Duration::from_millis(5)) {
                    Ok(v) => got.push(v),
                    Err(Error::TimedOut) if eof.load(std::sync::atomic::Ordering::Acquire) == 1 => {
                        break;
                    }
                    Err(Error::TimedOut) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            let words: Vec<String> = got.iter().map(u64::to_string).collect();
            say(format!("consumed {}", words.join(" ")));
        }
        "produce-then-stop" => {
            leave_when_the_parent_goes();
            for v in 0..count {
                q.try_push(v).unwrap();
            }
            arm_stop(Stop::ProducerClaimed);
            assert!(q.try_push(999).is_err());
            say("claimed");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "consume-then-stop" => {
            leave_when_the_parent_goes();
            let got: Vec<String> = (0..count)
                .map(|_| q.pop().unwrap().unwrap().to_string())
                .collect();
            arm_stop(Stop::ConsumerClaimed);
            assert!(q.pop().is_err());
            say(format!("claimed {}", got.join(" ")));
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        other => panic!("unknown child role {other:?}"),
    }
}
