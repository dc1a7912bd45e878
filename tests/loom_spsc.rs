//! Loom models of `SpscQueue`: transfer at capacity 1 and 2 (single and batch),
//! a producer or consumer that dies before or after its publication (loom crash
//! points) and is replaced, and the sleep/wake protocol of the blocking forms.
//!
//! The whole file runs under the *blocking* futex model (a sleeper sleeps until
//! woken), so a lost wake-up is a deadlock that loom reports; the switch is global
//! to the binary, and the dying-thread models never sleep (a real sleeper notices
//! a dead peer through its 100 ms slice, which this model turns off).
//!
//! Sanity check done when this file was written: removing the SeqCst fence from
//! the waker side (`wake_peer`) makes the sleep/wake models fail with a deadlock.
//!
//! Run: `RUSTFLAGS="--cfg shmkit_loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_spsc`
#![cfg(shmkit_loom)]

mod loom_model;

use loom::thread;
use loom_model::{Registry, proc};
use shmkit::loom::crash;
use shmkit::loom::futex_model::set_blocking;
use shmkit::queue::{Consumer, Producer};
use shmkit::testkit::LocalSpsc;

/// Crash points of one push or pop: before and after the index store.
const CRASH_POINTS: u32 = 2;

fn push_spinning(tx: &mut Producer<u32>, v: u32) {
    while tx.try_push(v).is_err() {
        loom::thread::yield_now();
    }
}

fn pop_spinning(rx: &mut Consumer<u32>) -> u32 {
    loop {
        if let Some(v) = rx.pop().unwrap() {
            return v;
        }
        loom::thread::yield_now();
    }
}

fn transfers_in_order(cap: u64) {
    set_blocking(true);
    loom::model(move || {
        let reg = Registry::new();
        let q = LocalSpsc::<u32>::new(cap).unwrap();
        let mut tx = q.producer(proc(&reg, 1)).unwrap();
        let mut rx = q.consumer(proc(&reg, 0)).unwrap();
        let t = thread::spawn(move || {
            push_spinning(&mut tx, 1);
            push_spinning(&mut tx, 2);
        });
        assert_eq!(pop_spinning(&mut rx), 1);
        assert_eq!(pop_spinning(&mut rx), 2);
        t.join().unwrap();
        assert_eq!(rx.pop().unwrap(), None);
    });
}

#[test]
fn capacity_1_transfers_in_order() {
    transfers_in_order(1);
}

#[test]
fn capacity_2_transfers_in_order() {
    transfers_in_order(2);
}

#[test]
fn batches_at_capacity_2_transfer_in_order() {
    set_blocking(true);
    loom::model(|| {
        let reg = Registry::new();
        let q = LocalSpsc::<u32>::new(2).unwrap();
        let mut tx = q.producer(proc(&reg, 1)).unwrap();
        let mut rx = q.consumer(proc(&reg, 0)).unwrap();
        let t = thread::spawn(move || {
            let vals = [1, 2, 3];
            let mut done = 0;
            while done < vals.len() {
                done += tx.push_slice(&vals[done..]).unwrap();
                loom::thread::yield_now();
            }
        });
        let mut got = Vec::new();
        while got.len() < 3 {
            let mut buf = [0; 2];
            let n = rx.pop_into(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            loom::thread::yield_now();
        }
        t.join().unwrap();
        assert_eq!(got, [1, 2, 3]);
    });
}

#[test]
fn a_producer_dying_around_its_publish_is_replaced_without_loss_or_duplicate() {
    set_blocking(true);
    for k in 0..=CRASH_POINTS {
        loom::model(move || {
            let reg = Registry::new();
            let q = LocalSpsc::<u32>::new(2).unwrap();
            let mut rx = q.consumer(proc(&reg, 0)).unwrap();
            let (q1, p1, r1) = (q.clone(), proc(&reg, 1), reg.clone());
            let t = thread::spawn(move || {
                let mut tx = q1.producer(p1).unwrap();
                crash::arm(k);
                let _ = tx.try_push(1);
                let dead = crash::dead();
                drop(tx); // a dead thread's drop gives nothing back
                if dead {
                    r1.die(1);
                }
                dead
            });
            let mut got: Vec<u32> = rx.pop().unwrap().into_iter().collect();
            let dead = t.join().unwrap();
            let mut tx = q.producer(proc(&reg, 2)).unwrap();
            tx.try_push(2).unwrap();
            while let Some(v) = rx.pop().unwrap() {
                got.push(v);
            }
            // Before its publication the message was never committed; after it,
            // it must arrive exactly once.
            let want: &[u32] = if dead && k == 0 { &[2] } else { &[1, 2] };
            assert_eq!(got, want, "crash budget {k}, dead {dead}");
        });
    }
}

#[test]
fn a_consumer_dying_around_its_release_is_replaced_without_loss_or_duplicate() {
    set_blocking(true);
    for k in 0..=CRASH_POINTS {
        loom::model(move || {
            let reg = Registry::new();
            let q = LocalSpsc::<u32>::new(1).unwrap();
            let mut tx = q.producer(proc(&reg, 0)).unwrap();
            tx.try_push(1).unwrap();
            let (q1, p1, r1) = (q.clone(), proc(&reg, 1), reg.clone());
            let t = thread::spawn(move || {
                let mut rx = q1.consumer(p1).unwrap();
                crash::arm(k);
                let got = rx.pop().unwrap();
                let dead = crash::dead();
                drop(rx);
                if dead {
                    r1.die(1);
                }
                (dead, got)
            });
            // The producer races the dying consumer for the slot.
            let early = tx.try_push(2).is_ok();
            let (dead, got) = t.join().unwrap();
            if !early {
                // Room only if the consumer released before it died (or lived).
                let released = !dead || k > 0;
                assert_eq!(tx.try_push(2).is_ok(), released, "budget {k}, dead {dead}");
                if !released {
                    // The message is still there for the successor; push after.
                    let mut rx = q.consumer(proc(&reg, 2)).unwrap();
                    assert_eq!(rx.pop().unwrap(), Some(1));
                    tx.try_push(2).unwrap();
                    assert_eq!(rx.pop().unwrap(), Some(2));
                    assert_eq!(rx.pop().unwrap(), None);
                    return;
                }
            }
            let mut rx = q.consumer(proc(&reg, 2)).unwrap();
            let mut rest = Vec::new();
            while let Some(v) = rx.pop().unwrap() {
                rest.push(v);
            }
            if !dead {
                assert_eq!(got, Some(1));
            }
            // Released (alive, or dead after publishing): the successor sees only
            // what came after; a death before the release leaves it to them.
            let want: &[u32] = if dead && k == 0 { &[1, 2] } else { &[2] };
            assert_eq!(rest, want, "budget {k}, dead {dead}");
        });
    }
}

#[test]
fn a_sleeping_consumer_is_always_woken_by_a_push() {
    set_blocking(true);
    loom::model(|| {
        let reg = Registry::new();
        let q = LocalSpsc::<u32>::new(1).unwrap();
        let mut tx = q.producer(proc(&reg, 1)).unwrap();
        let mut rx = q.consumer(proc(&reg, 0)).unwrap();
        let t = thread::spawn(move || {
            tx.try_push(1).unwrap();
        });
        assert_eq!(rx.pop_blocking().unwrap(), 1);
        t.join().unwrap();
    });
}

#[test]
fn producer_and_consumer_sleeping_in_turn_are_always_woken() {
    set_blocking(true);
    loom::model(|| {
        let reg = Registry::new();
        let q = LocalSpsc::<u32>::new(1).unwrap();
        let mut tx = q.producer(proc(&reg, 1)).unwrap();
        let mut rx = q.consumer(proc(&reg, 0)).unwrap();
        let t = thread::spawn(move || {
            tx.push_blocking(1).unwrap();
            tx.push_blocking(2).unwrap();
        });
        assert_eq!(rx.pop_blocking().unwrap(), 1);
        assert_eq!(rx.pop_blocking().unwrap(), 2);
        t.join().unwrap();
    });
}

#[test]
fn of_two_racing_claimants_exactly_one_gets_the_role() {
    set_blocking(true);
    loom::model(|| {
        let reg = Registry::new();
        let q = LocalSpsc::<u32>::new(1).unwrap();
        let (q1, p1) = (q.clone(), proc(&reg, 1));
        // Each holds what it got until both have tried.
        let t = thread::spawn(move || q1.producer(p1));
        let mine = q.producer(proc(&reg, 0));
        let theirs = t.join().unwrap();
        assert!(
            mine.is_ok() != theirs.is_ok(),
            "mine {:?}, theirs {:?}",
            mine.is_ok(),
            theirs.is_ok()
        );
    });
}
