//! Operation sequences on queues against `VecDeque`, compared after every
//! operation. SPSC section: single and batch pushes and pops, full and empty,
//! role hand-overs (a clean drop, or a "dead" attachment's role taken over),
//! from a random starting index (wrap-around of the indices and the ring mask).
//! Broadcast section: sends, reads by three readers, readers rejoining and the
//! writer handing over or dying, against a model of what each reader gets or is
//! told it lost.
//!
//! Heap segments only.

#[path = "prop_queue/mpmc.rs"]
mod mpmc;

use std::collections::VecDeque;

use proptest::prelude::*;
use shmkit::queue::{Consumer, Producer, PushError, SpscQueue};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Push(u32),
    PushSlice(Vec<u32>),
    Pop,
    PopInto(usize),
    /// Drop and re-claim the producer (or the consumer).
    Handover(bool),
    /// The holder "dies" (its handle forgotten, its attachment crashed) and a new
    /// attachment takes the role over.
    Kill(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u32>().prop_map(Op::Push),
        2 => prop::collection::vec(any::<u32>(), 0..6).prop_map(Op::PushSlice),
        4 => Just(Op::Pop),
        2 => (0usize..6).prop_map(Op::PopInto),
        1 => any::<bool>().prop_map(Op::Handover),
        1 => any::<bool>().prop_map(Op::Kill),
    ]
}

fn start() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        (0u64..16).prop_map(|d| (1u64 << 32) - d),
        (0u64..16).prop_map(|d| u64::MAX - d),
        any::<u64>(),
    ]
}

/// A role handle and the attachment it was claimed through (which may "die").
type Held<H> = Option<(shmkit::Segment, H)>;

fn claim_tx(seg: &shmkit::Segment) -> Held<Producer<u32>> {
    let at = seg.try_clone().unwrap();
    let p = at.find::<SpscQueue<u32>>("q").unwrap().producer().unwrap();
    Some((at, p))
}

fn claim_rx(seg: &shmkit::Segment) -> Held<Consumer<u32>> {
    let at = seg.try_clone().unwrap();
    let c = at.find::<SpscQueue<u32>>("q").unwrap().consumer().unwrap();
    Some((at, c))
}

/// Gives a role up: cleanly (the handle dropped) or as a killed process would
/// (the handle forgotten, the attachment dead).
fn give_up<H>(held: &mut Held<H>, die: bool, kill: fn(H)) {
    let (at, h) = held.take().unwrap();
    if die {
        kill(h);
        at.simulate_crash();
    } else {
        drop(h);
    }
}

fn run(log_cap: u32, start: u64, ops: Vec<Op>) {
    let cap = 1usize << log_cap;
    let seg = shmkit::SegmentOptions::heap().create().unwrap();
    let q = seg
        .find_or_create::<SpscQueue<u32>>("q", cap as u64)
        .unwrap();
    shmkit::testkit::spsc_set_indices(&q, start, start);
    let mut tx = claim_tx(&seg);
    let mut rx = claim_rx(&seg);
    let mut model = VecDeque::new();
    for op in ops {
        let p = &mut tx.as_mut().unwrap().1;
        let c = &mut rx.as_mut().unwrap().1;
        match op {
            Op::Push(v) => match p.try_push(v) {
                Ok(()) => model.push_back(v),
                Err(PushError::Full(back)) => {
                    assert_eq!(back, v);
                    assert_eq!(model.len(), cap);
                }
                Err(e) => panic!("{e}"),
            },
            Op::PushSlice(vs) => {
                let n = p.push_slice(&vs).unwrap();
                assert_eq!(n, vs.len().min(cap - model.len()));
                model.extend(&vs[..n]);
            }
            Op::Pop => assert_eq!(c.pop().unwrap(), model.pop_front()),
            Op::PopInto(k) => {
                let mut out = vec![0; k];
                let n = c.pop_into(&mut out).unwrap();
                assert_eq!(n, k.min(model.len()));
                let want: Vec<u32> = model.drain(..n).collect();
                assert_eq!(&out[..n], &want[..]);
            }
            Op::Handover(true) | Op::Kill(true) => {
                give_up(&mut tx, matches!(op, Op::Kill(_)), Producer::simulate_death);
                tx = claim_tx(&seg);
            }
            Op::Handover(false) | Op::Kill(false) => {
                give_up(&mut rx, matches!(op, Op::Kill(_)), Consumer::simulate_death);
                rx = claim_rx(&seg);
            }
        }
        let (p, c) = (&tx.as_ref().unwrap().1, &rx.as_ref().unwrap().1);
        assert_eq!(p.len(), model.len());
        assert_eq!(c.len(), model.len());
        assert_eq!(q.len(), model.len());
        assert_eq!(c.is_empty(), model.is_empty());
        assert_eq!(p.position().wrapping_sub(c.position()), model.len() as u64);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn spsc_matches_a_vecdeque(
        log_cap in 0u32..4,
        start in start(),
        ops in prop::collection::vec(op(), 1..64),
    ) {
        run(log_cap, start, ops);
    }
}

// ---------------------------------------------------------------------------------
// Broadcast: against a model of lag.
// ---------------------------------------------------------------------------------

mod broadcast {
    use proptest::prelude::*;
    use shmkit::queue::{Broadcast, BroadcastReader, BroadcastWriter, Received};

    #[derive(Clone, Debug)]
    enum Op {
        Send(u64),
        /// Reader `i` reads once.
        Recv(usize),
        /// Reader `i` is replaced by a new one (starting at the next message).
        Rejoin(usize),
        /// The writer gives its role up cleanly (`false`) or "dies" (`true`); a
        /// new attachment takes it over.
        Handover(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => any::<u64>().prop_map(Op::Send),
            6 => (0usize..3).prop_map(Op::Recv),
            1 => (0usize..3).prop_map(Op::Rejoin),
            1 => any::<bool>().prop_map(Op::Handover),
        ]
    }

    /// The model: every message sent, and each reader's cursor into them. A
    /// reader whose next message was overwritten (more than `cap` newer ones
    /// since) is told how many it lost and moves to the oldest still there.
    fn expect(sent: &[u64], cursor: &mut usize, cap: usize) -> Option<Received<u64>> {
        let oldest = sent.len().saturating_sub(cap);
        if *cursor < oldest {
            let lost = oldest - *cursor;
            *cursor = oldest;
            return Some(Received::Lagged(lost as u64));
        }
        let m = sent.get(*cursor).copied()?;
        *cursor += 1;
        Some(Received::Message(m))
    }

    type Writer = (shmkit::Segment, BroadcastWriter<u64>);

    fn claim(seg: &shmkit::Segment) -> Writer {
        let at = seg.try_clone().unwrap();
        let w = at.find::<Broadcast<u64>>("b").unwrap().writer().unwrap();
        (at, w)
    }

    fn run(log_cap: u32, start: u64, ops: Vec<Op>) {
        let cap = 1usize << log_cap;
        let seg = shmkit::SegmentOptions::heap().create().unwrap();
        let b = seg
            .find_or_create::<Broadcast<u64>>("b", cap as u64)
            .unwrap();
        b.testkit_raw().set_head(start);
        let mut w = Some(claim(&seg));
        // Messages are numbered from `start`; the model indexes them from 0.
        let mut sent: Vec<u64> = Vec::new();
        let mut readers: Vec<(BroadcastReader<u64>, usize)> =
            (0..3).map(|_| (b.reader().unwrap(), 0)).collect();
        for op in ops {
            match op {
                Op::Send(v) => {
                    w.as_mut().unwrap().1.send(v).unwrap();
                    sent.push(v);
                }
                Op::Recv(i) => {
                    let (r, cursor) = &mut readers[i];
                    let want = expect(&sent, cursor, cap);
                    assert_eq!(r.try_recv().unwrap(), want, "reader {i}");
                    assert_eq!(r.position(), start + *cursor as u64);
                }
                Op::Rejoin(i) => readers[i] = (b.reader().unwrap(), sent.len()),
                Op::Handover(die) => {
                    let (at, old) = w.take().unwrap();
                    if die {
                        std::mem::forget(old);
                        // SAFETY: no guard was taken through `at`; the writer
                        // handle was forgotten.
                        unsafe { at.simulate_crash_now() };
                    } else {
                        drop(old);
                    }
                    w = Some(claim(&seg));
                    assert_eq!(w.as_ref().unwrap().1.sent(), start + sent.len() as u64);
                }
            }
            for (r, cursor) in &readers {
                let behind = (sent.len() - *cursor).min(cap);
                assert_eq!(r.pending(), behind as u64);
            }
            assert_eq!(b.sent().unwrap(), start + sent.len() as u64);
        }
    }

    fn start() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            (0u64..16).prop_map(|d| (1u64 << 32) - d),
            0u64..1 << 40
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 4 } else { 128 },
            ..super::config()
        })]

        #[test]
        fn broadcast_matches_a_model_of_lag(
            log_cap in 0u32..4,
            start in start(),
            ops in prop::collection::vec(op(), 1..96),
        ) {
            run(log_cap, start, ops);
        }
    }
}
