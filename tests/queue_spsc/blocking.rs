//! Blocking forms: timeouts, wake-ups across threads, no wake syscall in a
//! steady stream, and a sleeper whose peer dies.

use std::time::{Duration, Instant};

use shmkit::queue::SpscQueue;
use shmkit::testkit::{queue_wake_count, spsc_waiters};
use shmkit::{Error, SegmentOptions};

#[test]
fn blocking_forms_time_out_on_empty_and_full() {
    let seg = SegmentOptions::heap().create().unwrap();
    let q = seg.find_or_create::<SpscQueue<u32>>("q", 1).unwrap();
    let (mut tx, mut rx) = (q.producer().unwrap(), q.consumer().unwrap());
    let t0 = Instant::now();
    assert!(matches!(
        rx.pop_blocking_for(Duration::from_millis(30)),
        Err(Error::TimedOut)
    ));
    assert!(t0.elapsed() >= Duration::from_millis(30));
    let past = Instant::now() - Duration::from_millis(1);
    assert!(matches!(rx.pop_blocking_until(past), Err(Error::TimedOut)));
    tx.push_blocking_for(1, Duration::from_millis(30)).unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        tx.push_blocking_for(2, Duration::from_millis(30)),
        Err(Error::TimedOut)
    ));
    assert!(t0.elapsed() >= Duration::from_millis(30));
    assert!(matches!(
        tx.push_blocking_until(2, Instant::now() + Duration::from_millis(5)),
        Err(Error::TimedOut)
    ));
    assert_eq!(
        rx.pop_blocking_until(Instant::now() + Duration::from_secs(5))
            .unwrap(),
        1
    );
    assert_eq!(rx.pop().unwrap(), None);
}

#[test]
fn a_sleeping_consumer_is_woken_by_a_push() {
    let seg = SegmentOptions::heap().create().unwrap();
    let q = seg.find_or_create::<SpscQueue<u32>>("q", 2).unwrap();
    let (mut tx, mut rx) = (q.producer().unwrap(), q.consumer().unwrap());
    let t = std::thread::spawn(move || {
        for v in 0..20 {
            std::thread::sleep(Duration::from_millis(2));
            // Blocking: a consumer descheduled for a while must not fail the test.
            tx.push_blocking_for(v, Duration::from_secs(30)).unwrap();
        }
        queue_wake_count()
    });
    for v in 0..20 {
        assert_eq!(rx.pop_blocking_for(Duration::from_secs(30)).unwrap(), v);
    }
    // At most one wake per push (the consumer sleeps at most once per message).
    assert!(t.join().unwrap() <= 20);
}

#[test]
fn a_sleeping_producer_is_woken_by_a_pop() {
    let seg = SegmentOptions::heap().create().unwrap();
    let q = seg.find_or_create::<SpscQueue<u32>>("q", 1).unwrap();
    let (mut tx, mut rx) = (q.producer().unwrap(), q.consumer().unwrap());
    let t = std::thread::spawn(move || {
        for v in 0..20 {
            tx.push_blocking_for(v, Duration::from_secs(30)).unwrap();
        }
    });
    for v in 0..20 {
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(rx.pop_blocking_for(Duration::from_secs(30)).unwrap(), v);
    }
    t.join().unwrap();
}

#[test]
fn a_steady_never_empty_stream_makes_no_wake_syscall() {
    let seg = SegmentOptions::heap().create().unwrap();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 64).unwrap();
    let (mut tx, mut rx) = (q.producer().unwrap(), q.consumer().unwrap());
    for v in 0..32 {
        tx.push_blocking(v).unwrap();
    }
    let before = queue_wake_count();
    for v in 0..100_000u64 {
        // The consumer never finds the queue empty nor the producer full: neither
        // sets its waiter flag, so neither side's publish makes a syscall.
        assert_eq!(rx.pop_blocking().unwrap(), v);
        tx.push_blocking(v + 32).unwrap();
    }
    assert_eq!(queue_wake_count() - before, 0);
    // Control: the counter does count a real wake (a consumer that slept).
    let mut drained = 0;
    while rx.pop().unwrap().is_some() {
        drained += 1;
    }
    assert_eq!(drained, 32);
    let t = std::thread::spawn(move || rx.pop_blocking_for(Duration::from_secs(30)).unwrap());
    crate::common::eventually("the consumer to flag itself asleep", || {
        spsc_waiters(&q).1 != 0
    });
    tx.try_push(7).unwrap();
    assert_eq!(t.join().unwrap(), 7);
    assert_eq!(queue_wake_count() - before, 1);
}

#[test]
fn a_consumer_asleep_when_the_producer_dies_gets_peer_died() {
    let seg = SegmentOptions::heap().create().unwrap();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 4).unwrap();
    let mut rx = q.consumer().unwrap();
    let peer = seg.try_clone().unwrap();
    let theirs = peer.find::<SpscQueue<u64>>("q").unwrap();
    let tx = theirs.producer().unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        tx.simulate_death();
        drop(theirs);
        peer.simulate_crash();
    });
    match rx.pop_blocking_for(Duration::from_secs(30)) {
        Err(Error::PeerDied { role }) => assert_eq!(role, "producer"),
        other => panic!("{other:?}"),
    }
    killer.join().unwrap();
    // A successor producer serves the same consumer.
    let mut tx = q.producer().unwrap();
    tx.try_push(9).unwrap();
    assert_eq!(rx.pop_blocking().unwrap(), 9);
}

#[test]
fn a_producer_asleep_when_the_consumer_dies_gets_peer_died() {
    let seg = SegmentOptions::heap().create().unwrap();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 1).unwrap();
    let mut tx = q.producer().unwrap();
    tx.try_push(1).unwrap();
    let peer = seg.try_clone().unwrap();
    let theirs = peer.find::<SpscQueue<u64>>("q").unwrap();
    let rx = theirs.consumer().unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        rx.simulate_death();
        drop(theirs);
        peer.simulate_crash();
    });
    match tx.push_blocking(2) {
        Err(Error::PeerDied { role }) => assert_eq!(role, "consumer"),
        other => panic!("{other:?}"),
    }
    killer.join().unwrap();
}
