//! Loom models under the *blocking* futex model: a waiter sleeps until woken,
//! ignoring its timeout slice, so any lost wake-up in Mutex, RwLock, Condvar,
//! Semaphore or Event is reported by loom as a deadlock. Nobody dies in these
//! models (real waiters notice dead holders through their slices, which this model
//! turns off). The switch is global to this test binary, hence its own file.
//!
//! Run: `RUSTFLAGS="--cfg shmkit_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_lost_wakeup`
#![cfg(shmkit_loom)]

mod loom_model;

use loom::sync::Arc;
use loom::thread;
use loom_model::{Registry, proc};
use shmkit::loom::futex_model::set_blocking;
use shmkit::sync::{Condvar, Event, EventKind, Mutex, RwLock, Semaphore};

#[test]
fn a_mutex_waiter_is_always_woken() {
    set_blocking(true);
    loom::model(|| {
        let reg = Registry::new();
        let m = Arc::new(Mutex::new(0u32));
        let (m2, p1) = (m.clone(), proc(&reg, 1));
        let t = thread::spawn(move || *m2.lock(&p1).unwrap() += 1);
        let p0 = proc(&reg, 0);
        *m.lock(&p0).unwrap() += 1;
        t.join().unwrap();
        assert_eq!(*m.lock(&p0).unwrap(), 2);
    });
}

#[test]
fn an_rwlock_waiter_is_always_woken() {
    set_blocking(true);
    loom::model(|| {
        let reg = Registry::new();
        let l = Arc::new(RwLock::<u32, 4>::new(0));
        let (l2, p1) = (l.clone(), proc(&reg, 1));
        let t = thread::spawn(move || *l2.write(&p1).unwrap() += 1);
        let p0 = proc(&reg, 0);
        let _ = *l.read(&p0).unwrap();
        t.join().unwrap();
        assert_eq!(*l.read(&p0).unwrap(), 1);
    });
}

#[test]
fn a_condvar_waiter_is_always_woken() {
    set_blocking(true);
    loom::model(|| {
        let reg = Registry::new();
        let pair = Arc::new((Mutex::new(0u32), Condvar::new()));
        let (p2, p1) = (pair.clone(), proc(&reg, 1));
        let t = thread::spawn(move || {
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
        t.join().unwrap();
    });
}

#[test]
fn a_semaphore_waiter_is_always_woken() {
    set_blocking(true);
    loom::model(|| {
        let reg = Registry::new();
        let s = Arc::new(Semaphore::new(0));
        let (s2, p1) = (s.clone(), proc(&reg, 1));
        let t = thread::spawn(move || s2.acquire(&p1).unwrap());
        s.release(&proc(&reg, 0), 1).unwrap();
        t.join().unwrap();
    });
}

#[test]
fn an_event_waiter_is_always_woken() {
    set_blocking(true);
    loom::model(|| {
        let e = Arc::new(Event::new(EventKind::AutoReset));
        let e2 = e.clone();
        let t = thread::spawn(move || e2.wait());
        e.set();
        t.join().unwrap();
        assert!(!e.is_set());
    });
}

#[test]
fn a_draining_writer_is_woken_by_the_last_reader() {
    set_blocking(true);
    loom::model(|| {
        let reg = Registry::new();
        let l = Arc::new(RwLock::<u32, 4>::new(0));
        let p0 = proc(&reg, 0);
        let r = l.read(&p0).unwrap();
        let (l2, p1) = (l.clone(), proc(&reg, 1));
        let w = thread::spawn(move || *l2.write(&p1).unwrap() += 1);
        drop(r); // the writer, draining or not yet there, must get in
        w.join().unwrap();
        assert_eq!(*l.read(&p0).unwrap(), 1);
    });
}
