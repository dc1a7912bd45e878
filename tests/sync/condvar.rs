//! `Condvar`: timed waits, notify one/all, hand-off between threads and processes, a
//! waiter that dies in its wait.

use super::*;

/// Waits for each value `1..=n` that [`produce`] hands over in `a`, acknowledging it
/// in `b`.
pub(super) fn consume(seg: &Segment, n: u64) {
    let (m, cv) = (at::<Mutex<Pair>>(seg, CV_MUTEX), at::<Condvar>(seg, CV));
    for i in 1..=n {
        let mut g = cv
            .wait_while(m.lock(seg).unwrap(), seg, |p| p.a == p.b)
            .unwrap();
        assert_eq!(g.a, i, "values are handed over in order, none skipped");
        g.b = g.a;
        drop(g);
        cv.notify_all();
    }
}

/// Hands the values `1..=n` over in `a`, each once the previous one was
/// acknowledged in `b`.
pub(super) fn produce(seg: &Segment, n: u64) {
    let (m, cv) = (at::<Mutex<Pair>>(seg, CV_MUTEX), at::<Condvar>(seg, CV));
    for i in 1..=n {
        let mut g = cv
            .wait_while(m.lock(seg).unwrap(), seg, |p| p.a != p.b)
            .unwrap();
        g.a = i;
        drop(g);
        cv.notify_all();
    }
}

#[test]
fn a_condvar_wait_for_times_out_and_relocks() {
    let seg = heap_with_everything();
    let (m, cv) = (at::<Mutex<Pair>>(&seg, CV_MUTEX), at::<Condvar>(&seg, CV));
    let g = m.lock(&seg).unwrap();
    let (g, r) = cv.wait_for(g, &seg, Duration::ZERO).unwrap();
    assert!(r.timed_out());
    assert!(m.is_locked());
    let (mut g, r) = cv.wait_until(g, &seg, Instant::now()).unwrap();
    assert!(r.timed_out());
    // Spurious wake-ups are allowed; a wait that says it timed out did.
    let deadline = Instant::now() + Duration::from_millis(30);
    loop {
        let (again, r) = cv.wait_until(g, &seg, deadline).unwrap();
        g = again;
        assert!(m.is_locked());
        if r.timed_out() {
            break;
        }
    }
    assert!(Instant::now() >= deadline);
    let t = Instant::now();
    loop {
        let (again, r) = cv.wait_for(g, &seg, Duration::from_millis(30)).unwrap();
        g = again;
        if r.timed_out() {
            break;
        }
    }
    assert!(t.elapsed() >= Duration::from_millis(30));
    drop(g);
    assert!(!m.is_locked());
}

#[test]
fn notify_all_wakes_every_waiter_and_notify_one_wakes_them_one_by_one() {
    let _dog = watchdog("notify_all_wakes_every_waiter_and_notify_one_wakes_them_one_by_one");
    let seg = heap_with_everything();
    let handles = clones(&seg, 3);
    let (m, cv) = (at::<Mutex<Pair>>(&seg, CV_MUTEX), at::<Condvar>(&seg, CV));
    // notify_all: every waiter sees the flag.
    std::thread::scope(|s| {
        for h in &handles {
            s.spawn(move || {
                let g = cv.wait_while(m.lock(h).unwrap(), h, |p| p.a == 0).unwrap();
                assert_eq!(g.a, 1);
            });
        }
        std::thread::sleep(Duration::from_millis(20));
        // The waiters released the mutex while waiting.
        m.try_lock(&seg).unwrap().a = 1;
        cv.notify_all();
    });
    // notify_one: one token per notify, each taken by one waiter.
    std::thread::scope(|s| {
        for h in &handles {
            s.spawn(move || {
                let mut g = cv.wait_while(m.lock(h).unwrap(), h, |p| p.b == 0).unwrap();
                g.b -= 1;
            });
        }
        for _ in 0..handles.len() {
            std::thread::sleep(Duration::from_millis(5));
            m.lock(&seg).unwrap().b += 1;
            cv.notify_one();
        }
    });
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: 1, b: 0 });
}

#[test]
fn a_producer_and_a_consumer_thread_hand_values_through_a_condvar() {
    let _dog = watchdog("a_producer_and_a_consumer_thread_hand_values_through_a_condvar");
    let seg = heap_with_everything();
    let [p, c] = [0, 1].map(|_| seg.try_clone().unwrap());
    const N: u64 = 1000;
    std::thread::scope(|s| {
        s.spawn(|| consume(&c, N));
        s.spawn(|| produce(&p, N));
    });
    assert_eq!(
        *at::<Mutex<Pair>>(&seg, CV_MUTEX).lock(&seg).unwrap(),
        Pair { a: N, b: N }
    );
}

#[test]
fn a_waiter_that_dies_in_its_wait_does_not_stop_others_being_notified() {
    let _dog = watchdog("a_waiter_that_dies_in_its_wait_does_not_stop_others_being_notified");
    let seg = heap_with_everything();
    let [dying, other] = [0, 1].map(|_| seg.try_clone().unwrap());
    let (m, cv) = (at::<Mutex<Pair>>(&seg, CV_MUTEX), at::<Condvar>(&seg, CV));
    // A waiter dies where a signal could strike: its wait ends (relocking the
    // mutex) and its handle is gone.
    std::thread::scope(|s| {
        s.spawn(move || {
            let (g, _) = cv
                .wait_for(m.lock(&dying).unwrap(), &dying, Duration::from_millis(20))
                .unwrap();
            std::mem::forget(g);
            dying.simulate_crash();
        })
        .join()
        .unwrap();
    });
    // The mutex comes back with OwnerDied, and a notify reaches the next waiter.
    let mut g = m.lock(&seg).unwrap_err().into_owner_died().unwrap();
    g.make_consistent();
    drop(g);
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let g = cv
                .wait_while(m.lock(&other).unwrap(), &other, |p| p.a == 0)
                .unwrap();
            assert_eq!(g.a, 1);
        });
        std::thread::sleep(Duration::from_millis(20));
        m.lock(&seg).unwrap().a = 1;
        cv.notify_one();
        w.join().unwrap();
    });
}

#[test]
fn a_producer_and_a_consumer_process_hand_values_through_a_condvar() {
    let _dog = watchdog("a_producer_and_a_consumer_process_hand_values_through_a_condvar");
    let (seg, name) = posix_with_everything();
    let k = kin("cv-consume", &name);
    produce(&seg, HANDOFFS);
    expect_line(&k, common::DONE_MARKER);
    finish(k);
    assert_eq!(
        *at::<Mutex<Pair>>(&seg, CV_MUTEX).lock(&seg).unwrap(),
        Pair {
            a: HANDOFFS,
            b: HANDOFFS
        }
    );
}

#[test]
fn a_waiter_process_killed_in_its_wait_does_not_stop_others_being_notified() {
    let _dog = watchdog("a_waiter_process_killed_in_its_wait_does_not_stop_others_being_notified");
    let (seg, name) = posix_with_everything();
    let other = seg.try_clone().unwrap();
    let (m, cv) = (at::<Mutex<Pair>>(&seg, CV_MUTEX), at::<Condvar>(&seg, CV));
    let mut k = kin("cv-wait", &name);
    expect_line(&k, "waiting"); // printed holding the mutex, just before the wait
    drop(lock_repairing(m, &seg)); // free: the child is in its wait
    k.kill().unwrap();
    k.wait_for_exit(common::PATIENCE)
        .expect("the killed child is reaped");
    // It may have died between two slices of its wait, holding the mutex.
    drop(lock_repairing(m, &seg));
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let g = cv
                .wait_while(m.lock(&other).unwrap(), &other, |p| p.a == 0)
                .unwrap();
            assert_eq!(g.a, 1);
        });
        std::thread::sleep(Duration::from_millis(20));
        m.lock(&seg).unwrap().a = 1;
        cv.notify_one();
        w.join().unwrap();
    });
}
