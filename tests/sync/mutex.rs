//! `Mutex`: locking, timeouts, owner death (threads, handles, processes, fork), corrupt
//! lock words.

use super::*;

#[test]
fn a_mutex_locks_and_unlocks() {
    let seg = heap();
    let m = mutex_at(&seg, 0, Pair::default());
    assert!(!m.is_locked());
    {
        let mut g = m.lock(&seg).unwrap();
        assert!(m.is_locked());
        assert!(!g.is_inconsistent());
        g.a += 1;
        g.b += 1;
    }
    assert!(!m.is_locked());
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: 1, b: 1 });
}

#[test]
fn a_held_mutex_refuses_try_lock_and_times_out() {
    let seg = heap();
    let peer = seg.try_clone().unwrap();
    let m = mutex_at(&seg, 0, 0u64);
    let held = m.lock(&seg).unwrap();
    assert!(matches!(m.try_lock(&peer), Err(LockError::WouldBlock)));
    assert!(matches!(
        m.lock_for(&peer, Duration::ZERO),
        Err(LockError::TimedOut)
    ));
    let t = Instant::now();
    assert!(matches!(
        m.lock_for(&peer, Duration::from_millis(30)),
        Err(LockError::TimedOut)
    ));
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert!(matches!(
        m.lock_until(&peer, Instant::now()),
        Err(LockError::TimedOut)
    ));
    drop(held);
    assert!(m.try_lock(&peer).is_ok());
    assert!(m.lock_for(&peer, Duration::ZERO).is_ok());
    // A huge timeout means no deadline, not a panic.
    assert!(m.lock_for(&peer, Duration::MAX).is_ok());
}

#[test]
fn a_waiter_is_woken_by_the_unlock() {
    let seg = heap();
    let peer = seg.try_clone().unwrap();
    let m = mutex_at(&seg, 0, 0u64);
    let held = m.lock(&seg).unwrap();
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let mut g = m.lock(&peer).unwrap();
            *g += 1;
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        w.join().unwrap();
    });
    assert_eq!(*m.lock(&seg).unwrap(), 1);
}

#[test]
fn threads_with_their_own_handles_exclude_each_other() {
    let _dog = watchdog("threads_with_their_own_handles_exclude_each_other");
    let seg = heap();
    let m = mutex_at(&seg, 0, Pair::default());
    let handles: Vec<Segment> = (0..4).map(|_| seg.try_clone().unwrap()).collect();
    const N: u64 = 20_000;
    std::thread::scope(|s| {
        for h in &handles {
            s.spawn(move || {
                let m = mutex_in::<Pair>(h, 0);
                for i in 0..N {
                    let mut g = match i % 3 {
                        0 => m.lock(h).unwrap(),
                        1 => m.lock_for(h, Duration::from_secs(10)).unwrap(),
                        _ => loop {
                            match m.try_lock(h) {
                                Ok(g) => break g,
                                Err(LockError::WouldBlock) => std::hint::spin_loop(),
                                Err(e) => panic!("{e}"),
                            }
                        },
                    };
                    assert_eq!(g.a, g.b, "two holders at once");
                    g.a += 1;
                    std::hint::spin_loop();
                    g.b += 1;
                }
            });
        }
    });
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: 4 * N, b: 4 * N });
}

#[test]
fn threads_sharing_one_handle_exclude_each_other() {
    let _dog = watchdog("threads_sharing_one_handle_exclude_each_other");
    let seg = heap();
    let m = mutex_at(&seg, 0, Pair::default());
    const N: u64 = 20_000;
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..N {
                    let mut g = m.lock(&seg).unwrap();
                    assert_eq!(g.a, g.b, "two holders at once");
                    g.a += 1;
                    g.b += 1;
                }
            });
        }
    });
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: 4 * N, b: 4 * N });
}

#[test]
fn a_dead_holder_gives_exactly_one_waiter_owner_died() {
    let _dog = watchdog("a_dead_holder_gives_exactly_one_waiter_owner_died");
    let seg = heap();
    let holder = seg.try_clone().unwrap();
    let m = mutex_at(&seg, 0, Pair::default());
    let mut g = m.lock(&holder).unwrap();
    g.a = 5; // half-way through an update...
    std::mem::forget(g);
    let waiters: Vec<Segment> = (0..3).map(|_| seg.try_clone().unwrap()).collect();
    let died = AtomicU32::new(0);
    let ok = AtomicU32::new(0);
    std::thread::scope(|s| {
        for w in &waiters {
            let (died, ok) = (&died, &ok);
            s.spawn(move || {
                let m = mutex_in::<Pair>(w, 0);
                match m.lock_for(w, Duration::from_secs(20)) {
                    Ok(g) => {
                        assert_eq!(g.a, g.b, "repaired before anyone else got it");
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(LockError::OwnerDied(mut g)) => {
                        assert!(g.is_inconsistent());
                        g.b = g.a; // repair
                        g.make_consistent();
                        died.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("{e}"),
                }
            });
        }
        std::thread::sleep(Duration::from_millis(20));
        holder.simulate_crash(); // ...and dies
    });
    assert_eq!(died.load(Ordering::Relaxed), 1);
    assert_eq!(ok.load(Ordering::Relaxed), 2);
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: 5, b: 5 });
}

#[test]
fn an_unrepaired_mutex_becomes_not_recoverable() {
    let seg = heap();
    let holder = seg.try_clone().unwrap();
    let m = mutex_at(&seg, 0, 0u64);
    std::mem::forget(m.lock(&holder).unwrap());
    holder.simulate_crash();
    let g = m.lock(&seg).unwrap_err().into_owner_died().unwrap();
    drop(g); // no make_consistent
    for _ in 0..3 {
        assert!(matches!(m.lock(&seg), Err(LockError::NotRecoverable)));
        assert!(matches!(m.try_lock(&seg), Err(LockError::NotRecoverable)));
        assert!(matches!(
            m.lock_for(&seg, Duration::from_millis(1)),
            Err(LockError::NotRecoverable)
        ));
    }
}

#[test]
fn a_holder_that_panics_gives_the_next_locker_owner_died() {
    let seg = heap();
    let m = mutex_at(&seg, 0, Pair::default());
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            let mut g = m.lock(&seg).unwrap();
            g.a += 1;
            panic!("holder panics mid-update");
        })
        .join()
    });
    assert!(r.is_err());
    let mut g = m.lock(&seg).unwrap_err().into_owner_died().unwrap();
    assert_eq!(*g, Pair { a: 1, b: 0 });
    g.b = g.a;
    g.make_consistent();
    drop(g);
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: 1, b: 1 });
}

#[test]
fn a_detached_holder_counts_as_dead() {
    let seg = heap();
    let holder = seg.try_clone().unwrap();
    let m = mutex_at(&seg, 0, 0u64);
    std::mem::forget(m.lock(&holder).unwrap());
    assert!(holder.detach());
    assert!(m.lock(&seg).unwrap_err().into_owner_died().is_some());
}

#[test]
fn corrupt_lock_words_are_taken_over_never_hung_on() {
    let _dog = watchdog("corrupt_lock_words_are_taken_over_never_hung_on");
    let seg = heap();
    let word = Offset::<u64>::new(seg.user_offset());
    let m = mutex_at(&seg, 0, 0u64);
    let garbage = [
        1u64,                  // incarnation 1 in slot 0: not our incarnation
        (0xfffe << 46) | 7,    // slot out of range of a 128-slot registry
        0x3fff_ffff_ffff_ffff, // every tag bit set
        1 << 62,               // WAITERS alone: names nobody
        (1 << 63) | (3 << 46), // inconsistent, names nobody
        u64::MAX,              // everything
    ];
    for g in garbage {
        // SAFETY: this test views each offset as one type only.
        unsafe { seg.write(word, g) }.unwrap();
        match m.lock_for(&seg, Duration::from_secs(5)) {
            Err(LockError::OwnerDied(mut guard)) => guard.make_consistent(),
            other => panic!("word {g:#x}: {other:?}"),
        }
        assert!(!m.is_locked());
        assert!(m.try_lock(&seg).is_ok());
    }
    // The one special word: not recoverable.
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.write(word, 1 << 63) }.unwrap();
    assert!(matches!(m.lock(&seg), Err(LockError::NotRecoverable)));
}

#[test]
fn processes_exclude_each_other() {
    let _dog = watchdog("processes_exclude_each_other");
    let (seg, name) = posix_with_mutex();
    let kids: Vec<_> = (0..3).map(|_| child("count", &name)).collect();
    // The parent competes too.
    let m = mutex_in::<Pair>(&seg, 0);
    for _ in 0..PER_CHILD {
        let mut g = m.lock(&seg).unwrap();
        assert_eq!(g.a, g.b, "two holders at once");
        g.a += 1;
        g.b += 1;
    }
    for k in kids {
        expect_line(&k, common::DONE_MARKER);
        finish(k);
    }
    let total = 4 * PER_CHILD;
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: total, b: total });
}

#[test]
fn a_sigkilled_holder_process_gives_owner_died_promptly() {
    let _dog = watchdog("a_sigkilled_holder_process_gives_owner_died_promptly");
    let (seg, name) = posix_with_mutex();
    let m = mutex_in::<Pair>(&seg, 0);
    for round in 0..5 {
        let mut k = child("hold", &name);
        expect_line(&k, "holding");
        assert!(matches!(m.try_lock(&seg), Err(LockError::WouldBlock)));
        let killed = Instant::now();
        k.kill().unwrap();
        let mut g = match m.lock_for(&seg, Duration::from_secs(10)) {
            Err(LockError::OwnerDied(g)) => g,
            other => panic!("round {round}: {other:?}"),
        };
        // Reported within a bound (generous: a loaded CI machine; the latency
        // example measures the real distribution).
        assert!(killed.elapsed() < Duration::from_secs(5));
        assert_eq!(g.a, g.b + 1, "the dead holder was half-way");
        g.b = g.a;
        g.make_consistent();
        drop(g);
        assert!(m.try_lock(&seg).is_ok());
        seg.reclaim_dead().unwrap();
    }
}

#[test]
fn an_inherited_handle_locks_for_nobody_in_a_forked_child() {
    let _dog = watchdog("an_inherited_handle_locks_for_nobody_in_a_forked_child");
    let seg = SegmentOptions::anonymous()
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .create()
        .unwrap();
    let m = mutex_at(&seg, 0, 0u64);
    // SAFETY: the child only calls lock (atomics, no allocation on this path) and
    // leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match m.try_lock(&seg) {
            Err(LockError::NotAttached) => 0,
            Ok(_) => 1,
            Err(_) => 2,
        };
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child locked as its parent (1) or got another error (2)"
    );
    // The parent's own handle is unaffected.
    assert!(m.try_lock(&seg).is_ok());
}
