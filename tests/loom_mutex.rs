//! Loom models of the robust mutex: mutual exclusion, wake-ups, and holders that
//! die holding the lock or half-way through acquiring it, with the registry played
//! by a table of "alive" flags (a death clears the flag, as the kernel releases a
//! dead process's liveness lock).
//!
//! The futex stand-in under loom re-checks and yields, so a lost wake-up shows up
//! as a waiter that can never make progress, which fails the model (loom's branch
//! limit). In production a lost wake-up costs at most one 2 ms sleep slice.
//! Sanity check done when this file was written: making the unlock's swap Relaxed
//! fails three of these models.
//!
//! Run: `RUSTFLAGS="--cfg shmkit_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_mutex`
#![cfg(shmkit_loom)]

mod loom_model;

use loom::sync::Arc;
use loom::thread;
use loom_model::{Registry, proc, proc_with_record, thread_of};
use shmkit::sync::{LockError, Mutex};

#[test]
fn two_lockers_exclude_each_other_and_lose_no_update() {
    loom::model(|| {
        let reg = Registry::new();
        let m = Arc::new(Mutex::new(0u64));
        let (m2, p2) = (m.clone(), proc(&reg, 1));
        let t = thread::spawn(move || {
            *m2.lock(&p2).unwrap() += 1;
        });
        let p0 = proc(&reg, 0);
        *m.lock(&p0).unwrap() += 1;
        t.join().unwrap();
        assert_eq!(*m.lock(&p0).unwrap(), 2);
    });
}

#[test]
fn try_lock_never_blocks_and_never_breaks_exclusion() {
    loom::model(|| {
        let reg = Registry::new();
        let m = Arc::new(Mutex::new(0u64));
        let (m2, p2) = (m.clone(), proc(&reg, 1));
        let t = thread::spawn(move || match m2.try_lock(&p2) {
            Ok(mut g) => {
                *g += 1;
                true
            }
            Err(LockError::WouldBlock) => false,
            Err(e) => panic!("{e}"),
        });
        let p0 = proc(&reg, 0);
        *m.lock(&p0).unwrap() += 1;
        let theirs = t.join().unwrap();
        assert_eq!(*m.lock(&p0).unwrap(), 1 + u64::from(theirs));
    });
}

#[test]
fn a_holder_that_dies_gives_the_waiter_owner_died_with_the_half_update() {
    loom::model(|| {
        let reg = Registry::new();
        let m = Arc::new(Mutex::new([0u64; 2]));
        let (m2, p2, r2) = (m.clone(), proc(&reg, 1), reg.clone());
        let dying = thread::spawn(move || {
            let mut g = m2.lock(&p2).unwrap();
            g[0] = 1; // half-way through [1, 1]
            std::mem::forget(g);
            r2.die(1);
        });
        let p0 = proc(&reg, 0);
        // The survivor either gets there first (then finds the dead holder on its
        // next lock) or finds the dead holder at once.
        match m.lock(&p0) {
            Ok(mut g) => {
                assert_eq!(*g, [0, 0]);
                g[1] = 0;
                drop(g);
                dying.join().unwrap();
                // Now the dead process holds it: the next lock reports it.
                let mut g = m.lock(&p0).unwrap_err().into_owner_died().unwrap();
                assert_eq!(*g, [1, 0]);
                *g = [1, 1];
                g.make_consistent();
            }
            Err(LockError::OwnerDied(mut g)) => {
                assert_eq!(*g, [1, 0]);
                *g = [1, 1];
                g.make_consistent();
                drop(g);
                dying.join().unwrap();
            }
            Err(e) => panic!("{e}"),
        }
        assert_eq!(*m.lock(&p0).unwrap(), [1, 1]);
    });
}

#[test]
fn a_locker_that_dies_while_waiting_leaves_the_lock_usable() {
    loom::model(|| {
        let reg = Registry::new();
        let m = Arc::new(Mutex::new(0u64));
        let p0 = proc(&reg, 0);
        let held = m.lock(&p0).unwrap();
        let (m2, p2, r2) = (m.clone(), proc(&reg, 1), reg.clone());
        let dying = thread::spawn(move || {
            // Tries once (may set WAITERS), then dies before acquiring.
            let _ = m2.try_lock(&p2);
            r2.die(1);
        });
        drop(held);
        dying.join().unwrap();
        let g = m.lock(&p0).unwrap();
        assert!(!g.is_inconsistent());
    });
}

#[test]
fn exactly_one_of_two_waiters_gets_owner_died() {
    loom::model(|| {
        let reg = Registry::new();
        let m = Arc::new(Mutex::new(0u64));
        // Process 2 died holding the lock.
        std::mem::forget(m.lock(&proc(&reg, 2)).unwrap());
        reg.die(2);
        let (m1, p1) = (m.clone(), proc(&reg, 1));
        let t = thread::spawn(move || match m1.lock(&p1) {
            Ok(_) => 0u32,
            Err(LockError::OwnerDied(mut g)) => {
                g.make_consistent();
                1
            }
            Err(e) => panic!("{e}"),
        });
        let p0 = proc(&reg, 0);
        let mine = match m.lock(&p0) {
            Ok(_) => 0u32,
            Err(LockError::OwnerDied(mut g)) => {
                g.make_consistent();
                1
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(mine + t.join().unwrap(), 1);
    });
}

/// Two threads of one process (one attachment: the same tag and lock record)
/// contend. Whichever finds its own tag in the word, put there by the other, must
/// wait for it (or get `WouldBlock`), never call it forged; no update is lost.
#[test]
fn two_threads_of_one_process_contend_without_a_false_corrupt() {
    loom::model(|| {
        let reg = Registry::new();
        let m = Arc::new(Mutex::new(0u64));
        let p0 = proc_with_record(&reg, 0);
        let (m2, p0b) = (m.clone(), thread_of(&p0));
        let t = thread::spawn(move || {
            let tried = match m2.try_lock(&p0b) {
                Ok(mut g) => {
                    *g += 1;
                    1
                }
                Err(LockError::WouldBlock) => 0,
                Err(e) => panic!("{e:?}"),
            };
            *m2.lock(&p0b).unwrap() += 1;
            tried
        });
        *m.lock(&p0).unwrap() += 1;
        *m.lock(&p0).unwrap() += 1;
        let tried = t.join().unwrap();
        assert_eq!(*m.lock(&p0).unwrap(), 3 + tried);
    });
}

/// A word naming our tag that none of our threads holds (written by a context
/// with our tag but not our record: what a peer writing our tag amounts to) is
/// `Corrupt` for each of our threads, also when two of them wait on it at once.
#[test]
fn a_word_forged_with_our_tag_is_corrupt_for_every_thread_of_ours() {
    loom::model(|| {
        let reg = Registry::new();
        let m = Arc::new(Mutex::new(0u64));
        std::mem::forget(m.lock(&proc(&reg, 0)).unwrap()); // the forgery
        let p0 = proc_with_record(&reg, 0);
        let (m2, p0b) = (m.clone(), thread_of(&p0));
        let t = thread::spawn(move || matches!(m2.lock(&p0b), Err(LockError::Corrupt { .. })));
        assert!(matches!(m.lock(&p0), Err(LockError::Corrupt { .. })));
        assert!(t.join().unwrap());
    });
}
