//! Smoke and edges of one queue in one process.

use shmkit::queue::{PushError, SpscQueue};
use shmkit::testkit::spsc_set_indices;
use shmkit::{Error, SegmentOptions};

fn seg() -> shmkit::Segment {
    SegmentOptions::heap().create().unwrap()
}

#[test]
fn a_pushed_value_pops_once_in_order() {
    let seg = seg();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 8).unwrap();
    let (mut tx, mut rx) = (q.producer().unwrap(), q.consumer().unwrap());
    assert!(q.is_empty() && tx.is_empty() && rx.is_empty());
    for v in [1, 2, 3] {
        tx.try_push(v).unwrap();
    }
    assert_eq!((q.len(), tx.len(), rx.len()), (3, 3, 3));
    assert_eq!(rx.pop().unwrap(), Some(1));
    assert_eq!(rx.pop().unwrap(), Some(2));
    assert_eq!(rx.pop().unwrap(), Some(3));
    assert_eq!(rx.pop().unwrap(), None);
    assert_eq!((tx.position(), rx.position()), (3, 3));
    assert_eq!((q.capacity(), tx.capacity(), rx.capacity()), (8, 8, 8));
}

fn fill_and_drain(cap: u64) {
    let seg = seg();
    let q = seg.find_or_create::<SpscQueue<u32>>("q", cap).unwrap();
    let (mut tx, mut rx) = (q.producer().unwrap(), q.consumer().unwrap());
    for round in 0..5u32 {
        for i in 0..cap as u32 {
            tx.try_push(round * 100 + i).unwrap();
        }
        assert_eq!(tx.len(), cap as usize);
        match tx.try_push(999) {
            Err(PushError::Full(999)) => {}
            other => panic!("a full queue took a value: {other:?}"),
        }
        for i in 0..cap as u32 {
            assert_eq!(rx.pop().unwrap(), Some(round * 100 + i));
        }
        assert_eq!(rx.pop().unwrap(), None);
    }
}

#[test]
fn capacity_1_alternates_full_and_empty() {
    fill_and_drain(1);
}

#[test]
fn capacity_2_alternates_full_and_empty() {
    fill_and_drain(2);
}

#[test]
fn a_capacity_that_is_not_a_power_of_two_is_refused() {
    let seg = seg();
    for bad in [0, 3, 6, 1000, (1 << 40) + 1, 1 << 41] {
        match seg.find_or_create::<SpscQueue<u8>>("q", bad) {
            Err(Error::InvalidSize { size, .. }) => assert_eq!(size, bad),
            other => panic!("capacity {bad}: {other:?}"),
        }
    }
}

#[test]
fn find_with_another_capacity_or_type_is_refused() {
    let seg = seg();
    let _q = seg.find_or_create::<SpscQueue<u64>>("q", 4).unwrap();
    assert!(matches!(
        seg.find_or_create::<SpscQueue<u64>>("q", 8),
        Err(Error::WrongConfig { .. })
    ));
    assert!(matches!(
        seg.find::<SpscQueue<u32>>("q"),
        Err(Error::WrongType { .. })
    ));
    assert!(matches!(
        seg.find::<shmkit::sync::Mutex<u64>>("q"),
        Err(Error::WrongType { .. })
    ));
    let again = seg.find::<SpscQueue<u64>>("q").unwrap();
    assert_eq!(again.capacity(), 4);
}

#[test]
fn batches_move_what_fits_with_one_publication() {
    let seg = seg();
    let q = seg.find_or_create::<SpscQueue<u16>>("q", 4).unwrap();
    let (mut tx, mut rx) = (q.producer().unwrap(), q.consumer().unwrap());
    assert_eq!(tx.push_slice(&[1, 2, 3, 4, 5, 6]).unwrap(), 4);
    assert_eq!(tx.push_slice(&[7]).unwrap(), 0);
    let mut out = [0u16; 3];
    assert_eq!(rx.pop_into(&mut out).unwrap(), 3);
    assert_eq!(out, [1, 2, 3]);
    assert_eq!(tx.push_slice(&[5, 6, 7]).unwrap(), 3);
    let mut out = [0u16; 8];
    assert_eq!(rx.pop_into(&mut out).unwrap(), 4);
    assert_eq!(&out[..4], &[4, 5, 6, 7]);
    assert_eq!(rx.pop_into(&mut out).unwrap(), 0);
    assert_eq!(tx.push_slice(&[]).unwrap(), 0);
}

fn wraps_from(start: u64, cap: u64) {
    let seg = seg();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", cap).unwrap();
    spsc_set_indices(&q, start, start);
    let (mut tx, mut rx) = (q.producer().unwrap(), q.consumer().unwrap());
    assert_eq!(tx.position(), start);
    let (mut next, mut pushed) = (0u64, 0u64);
    for _ in 0..64 {
        while tx.try_push(pushed).is_ok() {
            pushed += 1;
        }
        assert_eq!(q.len(), cap as usize);
        while let Some(v) = rx.pop().unwrap() {
            assert_eq!(v, next);
            next += 1;
        }
    }
    assert_eq!(rx.position(), start.wrapping_add(next));
    assert_eq!(tx.position(), rx.position());
}

#[test]
fn indices_wrap_past_2_pow_32() {
    wraps_from((1 << 32) - 5, 1);
    wraps_from((1 << 32) - 5, 2);
    wraps_from((1 << 32) - 5, 8);
}

#[test]
fn indices_wrap_past_2_pow_64() {
    wraps_from(u64::MAX - 4, 1);
    wraps_from(u64::MAX - 4, 2);
    wraps_from(u64::MAX - 6, 8);
}

#[test]
fn corrupt_indices_are_reported_and_len_stays_within_capacity() {
    let seg = seg();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 4).unwrap();
    // A distance above the capacity, and a consumer index past the producer's.
    for (tail, head) in [(9, 0), (0, 1), (u64::MAX, 0), (5, 100)] {
        spsc_set_indices(&q, tail, head);
        assert!(q.len() <= 4);
        assert!(matches!(q.producer(), Err(Error::Corrupt { .. })));
        assert!(matches!(q.consumer(), Err(Error::Corrupt { .. })));
    }
    // Corrupted while held: the next operation that reads the peer's index says so.
    spsc_set_indices(&q, 0, 0);
    let (mut tx, mut rx) = (q.producer().unwrap(), q.consumer().unwrap());
    spsc_set_indices(&q, 0, 7); // head past tail: the producer reads head
    assert!(matches!(tx.push_slice(&[1; 5]), Err(Error::Corrupt { .. })));
    spsc_set_indices(&q, 100, 0); // tail far ahead: the consumer reads tail
    assert!(matches!(rx.pop(), Err(Error::Corrupt { .. })));
    assert!(matches!(
        rx.pop_into(&mut [0; 2]),
        Err(Error::Corrupt { .. })
    ));
    assert!(q.len() <= 4 && rx.len() <= 4);
    // The producer's view after filling its cached room: the next refresh fails.
    spsc_set_indices(&q, 0, 0);
    drop((tx, rx));
    let mut tx = q.producer().unwrap();
    for v in 0..4 {
        tx.try_push(v).unwrap();
    }
    spsc_set_indices(&q, 4, 9);
    match tx.try_push(5) {
        Err(PushError::Failed(5, Error::Corrupt { .. })) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_struct_message_round_trips() {
    use shmkit::zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
    #[derive(Clone, Copy, Debug, PartialEq, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[zerocopy(crate = "shmkit::zerocopy")]
    #[repr(C)]
    struct Quote {
        px: u64,
        qty: u32,
        venue: u32,
    }
    let seg = seg();
    let q = seg
        .find_or_create::<SpscQueue<Quote>>("quotes", 16)
        .unwrap();
    let (mut tx, mut rx) = (q.producer().unwrap(), q.consumer().unwrap());
    let v = Quote {
        px: 101,
        qty: 7,
        venue: 3,
    };
    tx.try_push(v).unwrap();
    assert_eq!(rx.pop().unwrap(), Some(v));
}

#[test]
fn threads_stream_a_million_messages_in_order() {
    let seg = seg();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 64).unwrap();
    let n: u64 = if cfg!(debug_assertions) {
        200_000
    } else {
        2_000_000
    };
    let mut tx = q.producer().unwrap();
    let mut rx = q.consumer().unwrap();
    let t = std::thread::spawn(move || {
        let mut batch = Vec::new();
        let mut i = 0;
        while i < n {
            if i % 3 == 0 {
                batch.clear();
                batch.extend(i..(i + 5).min(n));
                let mut done = 0;
                while done < batch.len() {
                    done += tx.push_slice(&batch[done..]).unwrap();
                }
                i += batch.len() as u64;
            } else {
                tx.push_blocking(i).unwrap();
                i += 1;
            }
        }
    });
    let mut next = 0;
    let mut buf = [0u64; 7];
    while next < n {
        if next % 2 == 0 {
            let k = rx.pop_into(&mut buf).unwrap();
            for v in &buf[..k] {
                assert_eq!(*v, next);
                next += 1;
            }
        } else {
            assert_eq!(rx.pop_blocking().unwrap(), next);
            next += 1;
        }
    }
    t.join().unwrap();
    assert_eq!(rx.pop().unwrap(), None);
}

#[test]
fn arbitrary_index_and_role_words_give_errors_never_a_panic_or_a_hang() {
    let seg = seg();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 4).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Mostly small numbers (near each other), sometimes anything.
        if x % 3 == 0 { x } else { x % 16 }
    };
    let ok = |e: &Error| {
        matches!(
            e,
            Error::Corrupt { .. }
                | Error::RoleTaken { .. }
                | Error::TimedOut
                | Error::PeerDied { .. }
        )
    };
    for _ in 0..2000 {
        spsc_set_indices(&q, next(), next());
        shmkit::testkit::spsc_set_roles(&q, next() << 40, next() << 40);
        assert!(q.len() <= 4);
        if let Ok(mut tx) = q.producer().map_err(|e| assert!(ok(&e), "{e}")) {
            let _ = tx.try_push(1);
            let _ = tx
                .push_slice(&[1, 2, 3])
                .map_err(|e| assert!(ok(&e), "{e}"));
            let _ = tx
                .push_blocking_for(2, std::time::Duration::from_millis(1))
                .map_err(|e| assert!(ok(&e), "{e}"));
            assert!(tx.len() <= 4);
        }
        spsc_set_indices(&q, next(), next());
        if let Ok(mut rx) = q.consumer().map_err(|e| assert!(ok(&e), "{e}")) {
            let _ = rx.pop().map_err(|e| assert!(ok(&e), "{e}"));
            let _ = rx.pop_into(&mut [0; 3]).map_err(|e| assert!(ok(&e), "{e}"));
            let _ = rx
                .pop_blocking_for(std::time::Duration::from_millis(1))
                .map_err(|e| assert!(ok(&e), "{e}"));
            assert!(rx.len() <= 4);
        }
    }
}
