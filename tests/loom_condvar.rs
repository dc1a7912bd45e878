//! Loom models of the condition variable: no lost wake-up between a waiter's check
//! and its sleep, notify_all reaches every waiter, and a waiter that dies leaves
//! nothing that could stop the others (the condvar has no waiter state at all).
//!
//! Run: `RUSTFLAGS="--cfg shmkit_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_condvar`
#![cfg(shmkit_loom)]

mod loom_model;

use loom::sync::Arc;
use loom::thread;
use loom_model::{Registry, proc};
use shmkit::sync::{Condvar, Mutex};

#[test]
fn a_notify_after_the_change_is_never_lost() {
    loom::model(|| {
        let reg = Registry::new();
        let pair = Arc::new((Mutex::new(0u32), Condvar::new()));
        let (p2, p1) = (pair.clone(), proc(&reg, 1));
        let producer = thread::spawn(move || {
            *p2.0.lock(&p1).unwrap() = 1;
            p2.1.notify_one();
        });
        let p0 = proc(&reg, 0);
        let g = pair
            .1
            .wait_while(pair.0.lock(&p0).unwrap(), &p0, |v| *v == 0)
            .unwrap();
        assert_eq!(*g, 1);
        drop(g);
        producer.join().unwrap();
    });
}

#[test]
fn notify_all_reaches_every_waiter_even_when_one_dies() {
    loom::model(|| {
        let reg = Registry::new();
        let pair = Arc::new((Mutex::new(0u32), Condvar::new()));
        // A waiter that read the counter, unlocked (as `wait` does) and died before
        // sleeping: the condvar keeps no waiter state, so nothing of it remains.
        // (Run before the others: with no state to race on, only its effect on the
        // mutex matters, and three model threads exceed loom's branch budget.)
        let pdead = proc(&reg, 2);
        drop(pair.0.lock(&pdead).unwrap());
        reg.die(2);
        let (pw, p1) = (pair.clone(), proc(&reg, 1));
        let waiter = thread::spawn(move || {
            let g =
                pw.1.wait_while(pw.0.lock(&p1).unwrap(), &p1, |v| *v == 0)
                    .unwrap();
            assert_eq!(*g, 1);
        });
        let p0 = proc(&reg, 0);
        *pair.0.lock(&p0).unwrap() = 1;
        pair.1.notify_all();
        waiter.join().unwrap();
    });
}
