//! Loom models of the MPMC ring (`shmkit::model::MpmcModel`, the queue's own
//! algorithm over plain memory) at capacity 1 and 2: two producers and a
//! consumer exchange every message exactly once; a producer or a consumer that
//! dies at each of its crash points (holding the slot's owner word before
//! moving the position, and after moving it) never wedges the ring, never makes
//! a message arrive twice, and loses at most its own in-flight message. The
//! registry is the table of "alive" flags of `loom_model`.
//!
//! Run: `RUSTFLAGS="--cfg shmkit_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_mpmc`
#![cfg(shmkit_loom)]

mod loom_model;

use loom::sync::Arc;
use loom::thread;
use loom_model::{Registry, proc};
use shmkit::loom::{AtomicU32, Ordering};
use shmkit::model::MpmcModel;

/// Runs `f` under loom with room for the retry loops of three threads (a
/// consumer polling an empty ring, producers polling a full one).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.max_branches = 100_000;
    b.check(f);
}

/// As [`model`], with at most one preemption (three threads with retry loops
/// are out of reach at two on this machine's budget).
fn model_one_preemption(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.max_branches = 100_000;
    b.preemption_bound = Some(1);
    b.check(f);
}

/// Pushes `v` as `p`, retrying while full or busy; false if `p` died.
fn push(q: &MpmcModel, p: &loom_model::Proc, v: u64) -> bool {
    loop {
        match q.try_push(p, v) {
            Ok(Ok(())) => return true,
            Ok(Err(_)) => thread::yield_now(),
            Err(_) => return false,
        }
    }
}

/// Pushes `v` as `me`, consuming into `got` while the ring is full (the main
/// thread is the only consumer left).
fn push_consuming(q: &MpmcModel, me: &loom_model::Proc, v: u64, got: &mut Vec<u64>) {
    loop {
        match q.try_push(me, v).unwrap() {
            Ok(()) => return,
            Err(_) => match q.pop(me).unwrap() {
                Some(x) => got.push(x),
                None => thread::yield_now(),
            },
        }
    }
}

#[test]
fn two_producers_one_consumer_every_message_once() {
    for cap in [1u64, 2] {
        model_one_preemption(move || {
            let reg = Registry::new();
            let q = Arc::new(MpmcModel::new(cap));
            let ts: Vec<_> = [1u32, 2]
                .into_iter()
                .map(|slot| {
                    let (q, p) = (q.clone(), proc(&reg, slot));
                    thread::spawn(move || assert!(push(&q, &p, u64::from(slot) * 10)))
                })
                .collect();
            let me = proc(&reg, 0);
            let mut got = Vec::new();
            while got.len() < 2 {
                match q.pop(&me).unwrap() {
                    Some(v) => got.push(v),
                    None => thread::yield_now(),
                }
            }
            for t in ts {
                t.join().unwrap();
            }
            got.sort_unstable();
            assert_eq!(got, vec![10, 20]);
            assert_eq!(q.pop(&me).unwrap(), None);
        });
    }
}

#[test]
fn a_producer_dying_half_way_loses_only_its_own_message() {
    // Crash point 0: holding the owner word, before the tail moves (nothing
    // lost); 1: after the tail moved, before the data (its message lost).
    for (cap, point) in [(1u64, 0u32), (1, 1), (2, 0), (2, 1)] {
        model(move || {
            let reg = Registry::new();
            let q = Arc::new(MpmcModel::new(cap));
            let (q1, p1, r1) = (q.clone(), proc(&reg, 1), reg.clone());
            let dying = thread::spawn(move || {
                shmkit::loom::crash::arm(point);
                let pushed = push(&q1, &p1, 10);
                assert!(!pushed, "the armed producer must die");
                r1.die(1);
            });
            // The main thread is a live producer and the consumer.
            let me = proc(&reg, 0);
            let mut got = Vec::new();
            push_consuming(&q, &me, 20, &mut got);
            while !got.contains(&20) {
                match q.pop(&me).unwrap() {
                    Some(v) => got.push(v),
                    None => thread::yield_now(),
                }
            }
            dying.join().unwrap();
            while let Some(v) = q.pop(&me).unwrap() {
                got.push(v);
            }
            assert_eq!(got, vec![20], "the dead producer's message never arrives");
            // The ring works on at full capacity.
            for v in 0..cap {
                assert_eq!(q.try_push(&me, v).unwrap(), Ok(()));
            }
            for v in 0..cap {
                assert_eq!(q.pop(&me).unwrap(), Some(v));
            }
        });
    }
}

#[test]
fn a_consumer_dying_half_way_loses_at_most_its_own_message() {
    for (cap, point) in [(1u64, 0u32), (1, 1), (2, 0), (2, 1)] {
        model(move || {
            let reg = Registry::new();
            let q = Arc::new(MpmcModel::new(cap));
            let me = proc(&reg, 0);
            assert_eq!(q.try_push(&me, 10).unwrap(), Ok(()));
            let finished = Arc::new(AtomicU32::new(0));
            let (q1, p1, r1, f1) = (q.clone(), proc(&reg, 1), reg.clone(), finished.clone());
            let dying = thread::spawn(move || {
                shmkit::loom::crash::arm(point);
                // Dies at its point on whichever message it claims, or finds
                // the ring empty and returns.
                let r = q1.pop(&p1);
                if r.is_err() {
                    r1.die(1);
                }
                f1.store(1, Ordering::Release);
                r.is_err()
            });
            // The main thread is the producer of 20 and the other consumer.
            let mut got = Vec::new();
            push_consuming(&q, &me, 20, &mut got);
            let died = loop {
                match q.pop(&me).unwrap() {
                    Some(v) => got.push(v),
                    // Done when 20 came, or the dying consumer is gone (it may
                    // have taken 20 with it).
                    None if got.contains(&20) || finished.load(Ordering::Acquire) == 1 => {
                        break dying.join().unwrap();
                    }
                    None => thread::yield_now(),
                }
                if got.len() == 2 {
                    break dying.join().unwrap();
                }
            };
            while let Some(v) = q.pop(&me).unwrap() {
                got.push(v);
            }
            assert_eq!(q.pop(&me).unwrap(), None);
            let mut sorted = got.clone();
            sorted.dedup();
            assert_eq!(sorted.len(), got.len(), "a duplicate: {got:?}");
            assert!(got.iter().all(|v| *v == 10 || *v == 20));
            if !died || point == 0 {
                assert_eq!(got.len(), 2, "nothing may be lost: {got:?}");
            } else {
                // Its second crash point is either the stop after it moved the
                // head (its message lost) or, when its first claim lost the
                // head race, the owner-word point of a second claim (nothing
                // lost): at most one message lost.
                assert!(!got.is_empty(), "more than its own message lost: {got:?}");
            }
        });
    }
}
