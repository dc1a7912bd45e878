//! `Event`, auto- and manual-reset: who is woken, timeouts, processes, a killed sleeper.

use super::*;

/// Waiters counted in the event at cell `index`: bits 2.. of its state word, the
/// first field (see the layout in `sync::event`'s docs).
fn event_sleepers(seg: &Segment, index: u64) -> u32 {
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.read(cell::<u32>(seg, index)) }.unwrap() >> 2
}

#[test]
fn an_auto_reset_event_wakes_exactly_one_waiter_per_set() {
    let _dog = watchdog("an_auto_reset_event_wakes_exactly_one_waiter_per_set");
    let seg = heap_with_everything();
    let e = at::<Event>(&seg, AUTO);
    assert_eq!(e.kind(), EventKind::AutoReset);
    let woken = AtomicU32::new(0);
    let start = std::sync::Barrier::new(3);
    // Three sleepers, one set: one wakes, the others time out. Then three more
    // sleepers and two sets, one after the other was taken: two wake.
    for sets in [1, 2] {
        woken.store(0, Ordering::SeqCst);
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let (woken, start) = (&woken, &start);
                    s.spawn(move || {
                        start.wait();
                        let got = e.wait_for(Duration::from_secs(1));
                        if got {
                            woken.fetch_add(1, Ordering::SeqCst);
                        }
                        got
                    })
                })
                .collect();
            common::eventually("three sleepers", || event_sleepers(&seg, AUTO) == 3);
            for i in 1..=sets {
                e.set();
                common::eventually("a waiter to take the set", || {
                    woken.load(Ordering::SeqCst) == i
                });
            }
            let got: Vec<bool> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
            assert_eq!(got.iter().filter(|g| **g).count(), sets as usize, "{got:?}");
        });
        assert!(!e.is_set(), "every set was taken");
        assert_eq!(event_sleepers(&seg, AUTO), 0);
    }
}

#[test]
fn a_manual_reset_event_wakes_every_waiter_and_stays_set_until_reset() {
    let _dog = watchdog("a_manual_reset_event_wakes_every_waiter_and_stays_set_until_reset");
    let seg = heap_with_everything();
    let e = at::<Event>(&seg, MANUAL);
    assert_eq!(e.kind(), EventKind::ManualReset);
    std::thread::scope(|s| {
        let waiters: Vec<_> = (0..3)
            .map(|_| s.spawn(|| e.wait_for(common::PATIENCE)))
            .collect();
        common::eventually("three sleepers", || event_sleepers(&seg, MANUAL) == 3);
        e.set();
        for w in waiters {
            assert!(w.join().unwrap());
        }
    });
    assert!(e.is_set());
    for _ in 0..3 {
        assert!(e.wait_for(Duration::ZERO));
        e.wait();
    }
    e.reset();
    assert!(!e.is_set());
    assert!(!e.wait_for(Duration::from_millis(10)));
    e.reset(); // a no-op on an unset event
    assert!(!e.is_set());
}

#[test]
fn event_waits_time_out_when_nobody_sets() {
    let seg = heap_with_everything();
    for (index, kind) in [
        (AUTO, EventKind::AutoReset),
        (MANUAL, EventKind::ManualReset),
    ] {
        let e = at::<Event>(&seg, index);
        assert_eq!(e.kind(), kind);
        assert!(!e.wait_for(Duration::ZERO));
        let t = Instant::now();
        assert!(!e.wait_for(Duration::from_millis(30)));
        assert!(t.elapsed() >= Duration::from_millis(30));
        let deadline = Instant::now() + Duration::from_millis(30);
        assert!(!e.wait_until(deadline));
        assert!(Instant::now() >= deadline);
        assert!(!e.wait_until(Instant::now()));
        assert!(!e.is_set());
        // A set made before the wait is not lost; a huge timeout is no deadline.
        e.set();
        assert!(e.wait_for(Duration::MAX));
        assert_eq!(e.is_set(), kind == EventKind::ManualReset);
        // Two sets before anyone waits: a flag, not a count.
        e.reset();
        e.set();
        e.set();
        assert!(e.wait_for(Duration::ZERO));
        assert_eq!(e.wait_for(Duration::ZERO), kind == EventKind::ManualReset);
        e.reset();
    }
}

#[test]
fn a_manual_reset_event_wakes_waiters_in_every_process() {
    let _dog = watchdog("a_manual_reset_event_wakes_waiters_in_every_process");
    let (seg, name) = posix_with_everything();
    let e = at::<Event>(&seg, MANUAL);
    let kids: Vec<_> = (0..2).map(|_| kin("event-wait-manual", &name)).collect();
    for k in &kids {
        expect_line(k, "waiting");
    }
    common::eventually("two sleepers", || event_sleepers(&seg, MANUAL) == 2);
    e.set();
    for k in kids {
        assert_eq!(k.next_after("woken ", common::PATIENCE).unwrap(), "true");
        finish(k);
    }
    assert_eq!(at::<AtomicU32>(&seg, WOKEN).load(Ordering::SeqCst), 2);
    assert!(e.is_set());
}

#[test]
fn an_auto_reset_event_wakes_one_waiting_process_per_set() {
    let _dog = watchdog("an_auto_reset_event_wakes_one_waiting_process_per_set");
    let (seg, name) = posix_with_everything();
    let e = at::<Event>(&seg, AUTO);
    let woken = at::<AtomicU32>(&seg, WOKEN);
    let kids: Vec<_> = (0..2).map(|_| kin("event-wait-auto", &name)).collect();
    for k in &kids {
        expect_line(k, "waiting");
    }
    common::eventually("two sleepers", || event_sleepers(&seg, AUTO) == 2);
    e.set();
    common::eventually("a waiter to take the set", || {
        woken.load(Ordering::SeqCst) >= 1
    });
    assert_eq!(woken.load(Ordering::SeqCst), 1, "one set, one waiter");
    assert!(!e.is_set());
    e.set();
    for k in kids {
        assert_eq!(k.next_after("woken ", common::PATIENCE).unwrap(), "true");
        finish(k);
    }
    assert_eq!(woken.load(Ordering::SeqCst), 2);
    assert!(!e.is_set());
}

#[test]
fn a_killed_sleeping_process_does_not_break_later_sets() {
    let _dog = watchdog("a_killed_sleeping_process_does_not_break_later_sets");
    let (seg, name) = posix_with_everything();
    let e = at::<Event>(&seg, AUTO);
    let mut k = kin("event-sleep", &name);
    expect_line(&k, "waiting");
    common::eventually("the child to sleep", || event_sleepers(&seg, AUTO) == 1);
    k.kill().unwrap();
    k.wait_for_exit(common::PATIENCE)
        .expect("the killed child is reaped");
    // A live sleeper is woken by the next set...
    std::thread::scope(|s| {
        let w = s.spawn(|| e.wait_for(common::PATIENCE));
        std::thread::sleep(Duration::from_millis(20));
        e.set();
        assert!(w.join().unwrap());
    });
    assert!(!e.is_set());
    // ...and sets without sleepers are kept for the next waiter.
    e.set();
    assert!(e.is_set());
    assert!(e.wait_for(Duration::ZERO));
    assert!(!e.wait_for(Duration::from_millis(10)));
}
