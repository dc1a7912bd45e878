//! Loom models of the semaphore: permits are never over-granted, a release wakes
//! an acquirer, and with a ledger the permits of a process that dies holding them,
//! or dies half-way through acquiring one, come back.
//!
//! Run: `RUSTFLAGS="--cfg shmkit_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_semaphore`
#![cfg(shmkit_loom)]

mod loom_model;

use loom::sync::Arc;
use loom::thread;
use loom_model::{Registry, proc};
use shmkit::loom::{AtomicU32, Ordering};
use shmkit::sync::{Semaphore, SemaphoreError};

#[test]
fn one_permit_is_never_held_twice() {
    loom::model(|| {
        let reg = Registry::new();
        let s = Arc::new(Semaphore::new(1));
        let inside = Arc::new(AtomicU32::new(0));
        let (s2, i2, p1) = (s.clone(), inside.clone(), proc(&reg, 1));
        let t = thread::spawn(move || {
            s2.acquire(&p1).unwrap();
            assert_eq!(i2.fetch_add(1, Ordering::Relaxed), 0);
            i2.fetch_sub(1, Ordering::Relaxed);
            s2.release(&p1, 1).unwrap();
        });
        let p0 = proc(&reg, 0);
        if s.try_acquire(&p0).is_ok() {
            assert_eq!(inside.fetch_add(1, Ordering::Relaxed), 0);
            inside.fetch_sub(1, Ordering::Relaxed);
            s.release(&p0, 1).unwrap();
        }
        t.join().unwrap();
        assert_eq!(s.available(), 1);
    });
}

#[test]
fn a_release_lets_a_waiting_acquirer_in() {
    loom::model(|| {
        let reg = Registry::new();
        let s = Arc::new(Semaphore::new(0));
        let (s2, p1) = (s.clone(), proc(&reg, 1));
        let t = thread::spawn(move || s2.acquire(&p1).unwrap());
        s.release(&proc(&reg, 0), 1).unwrap();
        t.join().unwrap();
        assert_eq!(s.available(), 0);
    });
}

#[test]
fn ledger_permits_of_a_holder_that_dies_come_back() {
    loom::model(|| {
        let reg = Registry::new();
        let s = Arc::new(Semaphore::<4>::with_ledger(1));
        let (s2, p1, r2) = (s.clone(), proc(&reg, 1), reg.clone());
        let dying = thread::spawn(move || {
            if s2.try_acquire(&p1).is_ok() {
                r2.die(1); // dies holding the permit
            }
        });
        let p0 = proc(&reg, 0);
        dying.join().unwrap();
        // Whether the dead process got the permit or not, it is ours now.
        s.acquire(&p0).unwrap();
        assert_eq!(s.try_acquire(&p0), Err(SemaphoreError::WouldBlock));
        s.release(&p0, 1).unwrap();
        assert_eq!(s.available(), 1);
    });
}

#[test]
fn a_process_that_dies_half_way_through_acquiring_leaves_no_lost_permit() {
    loom::model(|| {
        let reg = Registry::new();
        let s = Arc::new(Semaphore::<4>::with_ledger(2));
        let (s2, p1, r2) = (s.clone(), proc(&reg, 1), reg.clone());
        let dying = thread::spawn(move || {
            s2.die_half_way_through_acquire(&p1);
            r2.die(1);
        });
        let p0 = proc(&reg, 0);
        let first = s.acquire(&p0);
        dying.join().unwrap();
        first.unwrap();
        // Both permits are reachable: the repair rebuilt the count from the ledger.
        s.acquire(&p0).unwrap();
        assert_eq!(s.try_acquire(&p0), Err(SemaphoreError::WouldBlock));
        s.release(&p0, 2).unwrap();
        assert_eq!(s.available(), 2);
    });
}
