//! `RwLock`: shared and exclusive holds, waking, writer preference, dead writers and
//! readers, stress across handles, threads and processes.

use super::*;

#[test]
fn an_rwlock_admits_many_readers_at_once() {
    let _dog = watchdog("an_rwlock_admits_many_readers_at_once");
    let seg = heap_with_everything();
    let l = at::<Rw>(&seg, RW);
    let readers = clones(&seg, 4);
    let writer = seg.try_clone().unwrap();
    // Every handle, and one of them twice (its shares add up).
    let guards: Vec<_> = readers
        .iter()
        .chain(&readers[..1])
        .map(|h| l.read(h).unwrap())
        .collect();
    for g in &guards {
        assert!(!g.is_inconsistent());
        assert_eq!(**g, Pair::default());
    }
    assert!(l.try_read(&seg).is_ok());
    assert!(matches!(l.try_write(&writer), Err(LockError::WouldBlock)));
    drop(guards);
    assert!(l.try_write(&writer).is_ok());

    // Threads with their own handles, all inside at once: each keeps its read lock
    // until every other one has its own.
    let inside = AtomicU32::new(0);
    std::thread::scope(|s| {
        for h in &readers {
            let inside = &inside;
            s.spawn(move || {
                let l = at::<Rw>(h, RW);
                let g = l.read_for(h, Duration::from_secs(10)).unwrap();
                inside.fetch_add(1, Ordering::SeqCst);
                common::eventually("every reader inside at once", || {
                    inside.load(Ordering::SeqCst) == 4
                });
                assert_eq!(g.a, g.b);
            });
        }
    });
}

#[test]
fn an_rwlock_writer_excludes_readers_and_writers() {
    let seg = heap_with_everything();
    let peer = seg.try_clone().unwrap();
    let l = at::<Rw>(&seg, RW);
    let mut w = l.write(&seg).unwrap();
    assert!(!w.is_inconsistent());
    w.a = 1;
    assert!(matches!(l.try_read(&peer), Err(LockError::WouldBlock)));
    assert!(matches!(l.try_write(&peer), Err(LockError::WouldBlock)));
    assert!(matches!(
        l.read_for(&peer, Duration::ZERO),
        Err(LockError::TimedOut)
    ));
    assert!(matches!(
        l.write_for(&peer, Duration::ZERO),
        Err(LockError::TimedOut)
    ));
    let t = Instant::now();
    assert!(matches!(
        l.read_for(&peer, Duration::from_millis(30)),
        Err(LockError::TimedOut)
    ));
    assert!(t.elapsed() >= Duration::from_millis(30));
    let t = Instant::now();
    assert!(matches!(
        l.write_for(&peer, Duration::from_millis(30)),
        Err(LockError::TimedOut)
    ));
    assert!(t.elapsed() >= Duration::from_millis(30));
    // Not reentrant: the writer's own handle is refused too.
    assert!(matches!(l.try_write(&seg), Err(LockError::WouldBlock)));
    assert!(matches!(l.try_read(&seg), Err(LockError::WouldBlock)));
    w.b = 1;
    drop(w);
    assert_eq!(*l.try_read(&peer).unwrap(), Pair { a: 1, b: 1 });
    // A huge timeout means no deadline, not a panic.
    assert!(l.write_for(&peer, Duration::MAX).is_ok());
    assert!(l.read_for(&peer, Duration::MAX).is_ok());
}

#[test]
fn a_reader_holds_off_writers_and_a_timed_out_writer_lets_readers_back_in() {
    let seg = heap_with_everything();
    let [writer, late] = [0, 1].map(|_| seg.try_clone().unwrap());
    let l = at::<Rw>(&seg, RW);
    let r = l.read(&seg).unwrap();
    assert!(matches!(l.try_write(&writer), Err(LockError::WouldBlock)));
    assert!(matches!(
        l.write_for(&writer, Duration::ZERO),
        Err(LockError::TimedOut)
    ));
    assert!(matches!(
        l.write_for(&writer, Duration::from_millis(30)),
        Err(LockError::TimedOut)
    ));
    // The writer that gave up withdrew its claim: readers get in at once.
    let r2 = l.try_read(&late).unwrap();
    assert!(!r2.is_inconsistent());
    drop((r, r2));
    assert!(!l.try_write(&writer).unwrap().is_inconsistent());
}

#[test]
fn rwlock_waiters_are_woken_by_the_release() {
    let _dog = watchdog("rwlock_waiters_are_woken_by_the_release");
    let seg = heap_with_everything();
    let [peer, third] = [0, 1].map(|_| seg.try_clone().unwrap());
    let l = at::<Rw>(&seg, RW);
    // A writer waits for a reader.
    let r = l.read(&seg).unwrap();
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let mut g = l.write(&peer).unwrap();
            g.a += 1;
            g.b += 1;
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(r);
        w.join().unwrap();
    });
    // Readers wait for a writer.
    let w = l.write(&seg).unwrap();
    std::thread::scope(|s| {
        let readers: Vec<_> = [&peer, &third]
            .into_iter()
            .map(|h| s.spawn(move || *l.read(h).unwrap()))
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        drop(w);
        for r in readers {
            assert_eq!(r.join().unwrap(), Pair { a: 1, b: 1 });
        }
    });
}

#[test]
fn a_waiting_writer_blocks_new_readers() {
    let _dog = watchdog("a_waiting_writer_blocks_new_readers");
    let seg = heap_with_everything();
    let [writer, late] = [0, 1].map(|_| seg.try_clone().unwrap());
    let l = at::<Rw>(&seg, RW);
    let early = l.read(&seg).unwrap();
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let mut g = l.write_for(&writer, Duration::from_secs(20)).unwrap();
            g.a = 7;
            g.b = 7;
        });
        // Once the writer waits, a new reader is refused although only a reader
        // holds the lock...
        common::eventually("the writer to wait", || {
            matches!(l.try_read(&late), Err(LockError::WouldBlock))
        });
        assert!(matches!(
            l.read_for(&late, Duration::from_millis(30)),
            Err(LockError::TimedOut)
        ));
        // ...while the reader that was in keeps reading, and lets the writer in.
        assert_eq!(*early, Pair::default());
        drop(early);
        w.join().unwrap();
    });
    assert_eq!(*l.try_read(&late).unwrap(), Pair { a: 7, b: 7 });
}

#[test]
fn a_dead_writer_gives_readers_owner_died_until_a_writer_repairs() {
    let seg = heap_with_everything();
    let [holder, reader] = [0, 1].map(|_| seg.try_clone().unwrap());
    let l = at::<Rw>(&seg, RW);
    let mut g = l.write(&holder).unwrap();
    g.a = 5; // half-way through an update...
    std::mem::forget(g);
    holder.simulate_crash(); // ...and dies
    // Every reader, every time, until a writer repairs: readers cannot.
    for _ in 0..3 {
        let attempts = [
            l.read(&reader),
            l.try_read(&seg),
            l.read_for(&reader, Duration::from_secs(5)),
        ];
        for r in attempts {
            let g = r.unwrap_err().into_owner_died().expect("OwnerDied");
            assert!(g.is_inconsistent());
            assert_eq!(*g, Pair { a: 5, b: 0 });
        }
    }
    let mut w = l
        .write_for(&seg, Duration::from_secs(5))
        .unwrap_err()
        .into_owner_died()
        .expect("the writer gets OwnerDied too");
    assert!(w.is_inconsistent());
    w.b = w.a;
    w.make_consistent();
    assert!(!w.is_inconsistent());
    drop(w);
    let r = l.try_read(&reader).unwrap();
    assert!(!r.is_inconsistent());
    assert_eq!(*r, Pair { a: 5, b: 5 });
    drop(r);
    assert!(!l.try_write(&reader).unwrap().is_inconsistent());
}

#[test]
fn waiters_on_a_writer_that_dies_get_in_and_the_next_writer_gets_owner_died() {
    let _dog = watchdog("waiters_on_a_writer_that_dies_get_in_and_the_next_writer_gets_owner_died");
    let seg = heap_with_everything();
    let [holder, reader, writer] = [0, 1, 2].map(|_| seg.try_clone().unwrap());
    let l = at::<Rw>(&seg, RW);
    let mut g = l.write(&holder).unwrap();
    g.a = 3;
    std::mem::forget(g);
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let mut g = l
                .write_for(&writer, Duration::from_secs(20))
                .unwrap_err()
                .into_owner_died()
                .expect("the next writer gets OwnerDied");
            assert!(g.is_inconsistent());
            g.b = g.a;
            g.make_consistent();
        });
        let r = s.spawn(|| {
            // Whoever comes first: the reader sees the damage, or the repair.
            match l.read_for(&reader, Duration::from_secs(20)) {
                Ok(g) => assert_eq!(*g, Pair { a: 3, b: 3 }),
                Err(LockError::OwnerDied(g)) => {
                    assert!(g.is_inconsistent());
                    assert_eq!(*g, Pair { a: 3, b: 0 });
                }
                Err(e) => panic!("{e}"),
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        holder.simulate_crash();
        w.join().unwrap();
        r.join().unwrap();
    });
    assert_eq!(*l.read(&seg).unwrap(), Pair { a: 3, b: 3 });
}

#[test]
fn an_unrepaired_rwlock_becomes_not_recoverable() {
    let seg = heap_with_everything();
    let holder = seg.try_clone().unwrap();
    let l = at::<Rw>(&seg, RW);
    std::mem::forget(l.write(&holder).unwrap());
    holder.simulate_crash();
    // A reader's OwnerDied guard dropped unrepaired changes nothing: readers
    // cannot repair.
    drop(l.read(&seg).unwrap_err().into_owner_died().unwrap());
    let g = l.write(&seg).unwrap_err().into_owner_died().unwrap();
    drop(g); // no make_consistent
    for _ in 0..3 {
        assert!(matches!(l.read(&seg), Err(LockError::NotRecoverable)));
        assert!(matches!(l.try_read(&seg), Err(LockError::NotRecoverable)));
        assert!(matches!(
            l.read_for(&seg, Duration::from_millis(1)),
            Err(LockError::NotRecoverable)
        ));
        assert!(matches!(l.write(&seg), Err(LockError::NotRecoverable)));
        assert!(matches!(l.try_write(&seg), Err(LockError::NotRecoverable)));
        assert!(matches!(
            l.write_for(&seg, Duration::from_millis(1)),
            Err(LockError::NotRecoverable)
        ));
    }
}

#[test]
fn a_writer_that_panics_leaves_the_rwlock_free_but_suspect() {
    let seg = heap_with_everything();
    let peer = seg.try_clone().unwrap();
    let l = at::<Rw>(&seg, RW);
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            let mut g = l.write(&seg).unwrap();
            g.a += 1;
            panic!("writer panics mid-update");
        })
        .join()
    });
    assert!(r.is_err());
    // Free (nobody is refused) but suspect (everyone is told).
    let g = l.try_read(&peer).unwrap_err().into_owner_died().unwrap();
    assert!(g.is_inconsistent());
    assert_eq!(*g, Pair { a: 1, b: 0 });
    drop(g);
    let mut w = l.try_write(&peer).unwrap_err().into_owner_died().unwrap();
    assert!(w.is_inconsistent());
    w.b = w.a;
    w.make_consistent();
    drop(w);
    let g = l.try_read(&seg).unwrap();
    assert!(!g.is_inconsistent());
    assert_eq!(*g, Pair { a: 1, b: 1 });
}

#[test]
fn a_dead_readers_share_is_released() {
    let _dog = watchdog("a_dead_readers_share_is_released");
    let seg = heap_with_everything();
    let l = at::<Rw>(&seg, RW);
    // A reader dies holding two shares: a writer gets in at once, and finds the
    // data consistent (readers change nothing).
    let reader = seg.try_clone().unwrap();
    std::mem::forget(l.read(&reader).unwrap());
    std::mem::forget(l.read(&reader).unwrap());
    reader.simulate_crash();
    let w = l.try_write(&seg).unwrap();
    assert!(!w.is_inconsistent());
    drop(w);
    // A writer already waiting when the reader dies gets in.
    let [reader, writer] = [0, 1].map(|_| seg.try_clone().unwrap());
    std::mem::forget(l.read(&reader).unwrap());
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let g = l.write_for(&writer, Duration::from_secs(20)).unwrap();
            assert!(!g.is_inconsistent());
        });
        common::eventually("the writer to wait", || {
            matches!(l.try_read(&seg), Err(LockError::WouldBlock))
        });
        reader.simulate_crash();
        w.join().unwrap();
    });
    assert!(l.try_read(&seg).is_ok());
}

#[test]
fn a_new_handle_in_a_dead_readers_slot_replaces_its_share() {
    let seg = heap_with_everything();
    let l = at::<Rw>(&seg, RW);
    let reader = seg.try_clone().unwrap();
    let slot = reader.slot();
    std::mem::forget(l.read(&reader).unwrap());
    reader.simulate_crash();
    assert_eq!(seg.reclaim_dead().unwrap(), vec![slot]);
    let heir = seg.try_clone().unwrap();
    assert_eq!(heir.slot(), slot, "the lowest free slot is taken");
    // The heir's first read replaces the dead share instead of adding to it, so
    // once the heir is done nobody holds the lock.
    drop(l.read(&heir).unwrap());
    assert!(l.try_write(&seg).is_ok());
}

/// Writers update the pair (breaking `a == b` in between) by every flavour of write
/// lock; readers check it holds and only grows.
fn rwlock_stress(writers: &[&Segment], readers: &[&Segment], n: u64) {
    let done = AtomicU32::new(0);
    std::thread::scope(|s| {
        for (i, &h) in writers.iter().enumerate() {
            let done = &done;
            s.spawn(move || {
                let l = at::<Rw>(h, RW);
                for j in 0..n {
                    let mut g = match (i as u64 + j) % 3 {
                        0 => l.write(h).unwrap(),
                        1 => l.write_for(h, Duration::from_secs(10)).unwrap(),
                        _ => loop {
                            match l.write_for(h, Duration::from_micros(200)) {
                                Ok(g) => break g,
                                Err(LockError::TimedOut) => {}
                                Err(e) => panic!("{e}"),
                            }
                        },
                    };
                    assert_eq!(g.a, g.b, "two writers at once");
                    g.a += 1;
                    spin(20);
                    g.b += 1;
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        for &h in readers {
            let done = &done;
            s.spawn(move || {
                let l = at::<Rw>(h, RW);
                let mut last = 0;
                let mut i = 0u64;
                while done.load(Ordering::SeqCst) < writers.len() as u32 {
                    i += 1;
                    let g = match i % 3 {
                        0 => l.read(h).unwrap(),
                        1 => l.read_for(h, Duration::from_secs(10)).unwrap(),
                        _ => match l.try_read(h) {
                            Ok(g) => g,
                            Err(LockError::WouldBlock) => {
                                std::thread::yield_now();
                                continue;
                            }
                            Err(e) => panic!("{e}"),
                        },
                    };
                    assert_eq!(g.a, g.b, "a reader saw a writer half-way");
                    assert!(g.a >= last, "an update was undone");
                    last = g.a;
                }
            });
        }
    });
}

#[test]
fn rwlock_readers_with_their_own_handles_never_see_a_writer_half_way() {
    let _dog = watchdog("rwlock_readers_with_their_own_handles_never_see_a_writer_half_way");
    let seg = heap_with_everything();
    let handles = clones(&seg, 5);
    let hs: Vec<&Segment> = handles.iter().collect();
    const N: u64 = 3000;
    rwlock_stress(&hs[..2], &hs[2..], N);
    let total = 2 * N;
    assert_eq!(
        *at::<Rw>(&seg, RW).read(&seg).unwrap(),
        Pair { a: total, b: total }
    );
}

#[test]
fn rwlock_threads_sharing_one_handle_never_see_a_writer_half_way() {
    let _dog = watchdog("rwlock_threads_sharing_one_handle_never_see_a_writer_half_way");
    let seg = heap_with_everything();
    const N: u64 = 2000;
    rwlock_stress(&[&seg, &seg], &[&seg, &seg], N);
    let total = 2 * N;
    assert_eq!(
        *at::<Rw>(&seg, RW).read(&seg).unwrap(),
        Pair { a: total, b: total }
    );
}

/// `RW_ROUNDS` read or write locks; writers break `a == b` for a moment.
pub(super) fn rw_count(seg: &Segment) {
    let l = at::<Rw>(seg, RW);
    for i in 0..RW_ROUNDS {
        if i % 4 == 0 {
            let mut g = l.write(seg).unwrap();
            assert_eq!(g.a, g.b, "two writers at once");
            g.a += 1;
            spin(20);
            g.b += 1;
        } else {
            let g = l.read(seg).unwrap();
            assert_eq!(g.a, g.b, "a reader saw a writer half-way");
        }
    }
}

#[test]
fn rwlock_users_in_processes_exclude_each_other() {
    let _dog = watchdog("rwlock_users_in_processes_exclude_each_other");
    let (seg, name) = posix_with_everything();
    let kids: Vec<_> = (0..2).map(|_| kin("rw-count", &name)).collect();
    rw_count(&seg); // the parent competes too
    for k in kids {
        expect_line(&k, common::DONE_MARKER);
        finish(k);
    }
    let total = 3 * RW_WRITES;
    assert_eq!(
        *at::<Rw>(&seg, RW).read(&seg).unwrap(),
        Pair { a: total, b: total }
    );
}

#[test]
fn a_sigkilled_writer_process_gives_readers_and_the_next_writer_owner_died() {
    let _dog = watchdog("a_sigkilled_writer_process_gives_readers_and_the_next_writer_owner_died");
    let (seg, name) = posix_with_everything();
    let reader = seg.try_clone().unwrap();
    let l = at::<Rw>(&seg, RW);
    let mut k = kin("rw-hold-write", &name);
    expect_line(&k, "holding");
    assert!(matches!(l.try_read(&reader), Err(LockError::WouldBlock)));
    assert!(matches!(l.try_write(&seg), Err(LockError::WouldBlock)));
    k.kill().unwrap();
    let g = match l.read_for(&reader, Duration::from_secs(10)) {
        Err(LockError::OwnerDied(g)) => g,
        other => panic!("{other:?}"),
    };
    assert!(g.is_inconsistent());
    assert_eq!(g.a, g.b + 1, "the dead writer was half-way");
    drop(g);
    let mut w = match l.write_for(&seg, Duration::from_secs(10)) {
        Err(LockError::OwnerDied(w)) => w,
        other => panic!("{other:?}"),
    };
    w.b = w.a;
    w.make_consistent();
    drop(w);
    assert!(!l.try_read(&reader).unwrap().is_inconsistent());
}

#[test]
fn a_sigkilled_reader_process_releases_its_share() {
    let _dog = watchdog("a_sigkilled_reader_process_releases_its_share");
    let (seg, name) = posix_with_everything();
    let writer = seg.try_clone().unwrap();
    let l = at::<Rw>(&seg, RW);
    let mut k = kin("rw-hold-read", &name);
    expect_line(&k, "holding");
    assert!(matches!(l.try_write(&writer), Err(LockError::WouldBlock)));
    assert!(l.try_read(&seg).is_ok(), "readers share");
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let g = l.write_for(&writer, Duration::from_secs(20)).unwrap();
            assert!(!g.is_inconsistent(), "a dead reader changed nothing");
        });
        common::eventually("the writer to wait", || {
            matches!(l.try_read(&seg), Err(LockError::WouldBlock))
        });
        k.kill().unwrap();
        w.join().unwrap();
    });
}

#[test]
fn a_writer_process_killed_while_waiting_for_readers_blocks_nobody() {
    let _dog = watchdog("a_writer_process_killed_while_waiting_for_readers_blocks_nobody");
    let (seg, name) = posix_with_everything();
    let reader = seg.try_clone().unwrap();
    let l = at::<Rw>(&seg, RW);
    let early = l.read(&seg).unwrap();
    let mut k = kin("rw-wait-write", &name);
    expect_line(&k, "claiming");
    common::eventually("the child's claim", || {
        matches!(l.try_read(&reader), Err(LockError::WouldBlock))
    });
    k.kill().unwrap();
    k.wait_for_exit(common::PATIENCE)
        .expect("the killed child is reaped");
    // The reader that was in reads on; new readers get in, told (as documented:
    // a writer died in the lock, if only waiting) with OwnerDied.
    assert_eq!(*early, Pair::default());
    let late = match l.read_for(&reader, Duration::from_secs(10)) {
        Err(LockError::OwnerDied(g)) => g,
        other => panic!("{other:?}"),
    };
    assert_eq!(*late, Pair::default());
    drop((early, late));
    let mut w = match l.write_for(&seg, Duration::from_secs(10)) {
        Err(LockError::OwnerDied(w)) => w,
        other => panic!("{other:?}"),
    };
    w.make_consistent();
    drop(w);
    assert!(!l.try_read(&reader).unwrap().is_inconsistent());
}
