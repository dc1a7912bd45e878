//! Loom models of the robust RwLock: readers and writers exclude each other, a
//! reader that dies holding its share does not block writers, and a writer that
//! dies (holding the lock or while waiting for readers) hands `OwnerDied` on.
//!
//! Run: `RUSTFLAGS="--cfg shmkit_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_rwlock`
#![cfg(shmkit_loom)]

mod loom_model;

use loom::sync::Arc;
use loom::thread;
use loom_model::{Registry, proc, proc_with_record, thread_of};
use shmkit::sync::{LockError, RwLock};

type Lock = RwLock<[u64; 2], 4>;

#[test]
fn a_writer_and_a_reader_exclude_each_other() {
    loom::model(|| {
        let reg = Registry::new();
        let l = Arc::new(Lock::new([0, 0]));
        let (l2, p1) = (l.clone(), proc(&reg, 1));
        let w = thread::spawn(move || {
            let mut g = l2.write(&p1).unwrap();
            g[0] = 1;
            g[1] = 1;
        });
        let p0 = proc(&reg, 0);
        let seen = *l.read(&p0).unwrap();
        assert!(seen == [0, 0] || seen == [1, 1], "torn read {seen:?}");
        w.join().unwrap();
        assert_eq!(*l.read(&p0).unwrap(), [1, 1]);
    });
}

#[test]
fn two_writers_lose_no_update() {
    loom::model(|| {
        let reg = Registry::new();
        let l = Arc::new(Lock::new([0, 0]));
        let (l2, p1) = (l.clone(), proc(&reg, 1));
        let w = thread::spawn(move || l2.write(&p1).unwrap()[0] += 1);
        let p0 = proc(&reg, 0);
        l.write(&p0).unwrap()[0] += 1;
        w.join().unwrap();
        assert_eq!(l.read(&p0).unwrap()[0], 2);
    });
}

#[test]
fn a_reader_that_dies_holding_its_share_does_not_block_writers() {
    loom::model(|| {
        let reg = Registry::new();
        let l = Arc::new(Lock::new([0, 0]));
        let (l2, p1, r2) = (l.clone(), proc(&reg, 1), reg.clone());
        let dying = thread::spawn(move || {
            if let Ok(g) = l2.try_read(&p1) {
                std::mem::forget(g); // dies holding a read share
            }
            r2.die(1);
        });
        let p0 = proc(&reg, 0);
        // The writer waits for live readers only.
        let mut g = match l.write(&p0) {
            Ok(g) => g,
            Err(e) => panic!("{e}"),
        };
        g[0] = 7;
        drop(g);
        dying.join().unwrap();
        assert_eq!(l.read(&p0).unwrap()[0], 7);
    });
}

#[test]
fn a_writer_that_dies_hands_owner_died_to_the_next_writer() {
    loom::model(|| {
        let reg = Registry::new();
        let l = Arc::new(Lock::new([0, 0]));
        let (l2, p1, r2) = (l.clone(), proc(&reg, 1), reg.clone());
        let dying = thread::spawn(move || {
            let mut g = l2.write(&p1).unwrap();
            g[0] = 1; // half-way to [1, 1]
            std::mem::forget(g);
            r2.die(1);
        });
        let p0 = proc(&reg, 0);
        // A reader first: it reads [0, 0] before the writer, or finds the dead
        // writer and reads with OwnerDied.
        match l.read(&p0) {
            Ok(g) => assert_eq!(*g, [0, 0]),
            Err(LockError::OwnerDied(g)) => {
                assert!(g.is_inconsistent());
                assert_eq!(*g, [1, 0]);
            }
            Err(e) => panic!("{e}"),
        }
        dying.join().unwrap();
        let mut g = l.write(&p0).unwrap_err().into_owner_died().unwrap();
        assert_eq!(*g, [1, 0]);
        *g = [1, 1];
        g.make_consistent();
        drop(g);
        assert_eq!(*l.read(&p0).unwrap(), [1, 1]);
    });
}

/// A writer and a reader of one process (one attachment: the same tag and lock
/// record): each may find our tag (the writer's in `state`, the reader's share in
/// our entry) put there by the other, and must wait, never call it forged.
#[test]
fn a_writer_and_a_reader_of_one_process_never_see_a_false_corrupt() {
    loom::model(|| {
        let reg = Registry::new();
        let l = Arc::new(Lock::new([0, 0]));
        let p0 = proc_with_record(&reg, 0);
        let (l2, p0b) = (l.clone(), thread_of(&p0));
        let w = thread::spawn(move || {
            let mut g = l2.write(&p0b).unwrap();
            g[0] = 1;
            g[1] = 1;
        });
        let seen = *l.read(&p0).unwrap();
        assert!(seen == [0, 0] || seen == [1, 1], "torn read {seen:?}");
        w.join().unwrap();
        assert_eq!(*l.read(&p0).unwrap(), [1, 1]);
    });
}

/// Two writers of one process contend without a false `Corrupt`.
#[test]
fn two_writers_of_one_process_lose_no_update_and_see_no_false_corrupt() {
    loom::model(|| {
        let reg = Registry::new();
        let l = Arc::new(Lock::new([0, 0]));
        let p0 = proc_with_record(&reg, 0);
        let (l2, p0b) = (l.clone(), thread_of(&p0));
        let w = thread::spawn(move || l2.write(&p0b).unwrap()[0] += 1);
        l.write(&p0).unwrap()[0] += 1;
        w.join().unwrap();
        assert_eq!(l.read(&p0).unwrap()[0], 2);
    });
}

/// A `state` naming our tag that no thread of ours holds (a context with our tag
/// but not our record wrote it) is `Corrupt` for our readers and writers.
#[test]
fn a_state_forged_with_our_tag_is_corrupt_for_readers_and_writers() {
    loom::model(|| {
        let reg = Registry::new();
        let l = Arc::new(Lock::new([0, 0]));
        std::mem::forget(l.write(&proc(&reg, 0)).unwrap()); // the forgery
        let p0 = proc_with_record(&reg, 0);
        let (l2, p0b) = (l.clone(), thread_of(&p0));
        let r = thread::spawn(move || matches!(l2.read(&p0b), Err(LockError::Corrupt { .. })));
        assert!(matches!(l.write(&p0), Err(LockError::Corrupt { .. })));
        assert!(r.join().unwrap());
    });
}
