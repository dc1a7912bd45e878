//! `MpmcQueue` against `VecDeque`: random sequences of pushes, pops and deaths
//! of claimants (a producer or consumer of another attachment stopping between
//! claim and publish, then dying), at random capacities and start positions
//! (near the 2^62 stamp and 2^64 position wraps), through several handles.
//!
//! The model: a dead producer's message never arrives (its slot is a gap the
//! consumer passes; it takes a place until passed); a dead consumer's message is
//! gone. Nothing else is lost, duplicated or reordered.

use std::collections::VecDeque;

use proptest::prelude::*;
use shmkit::queue::testkit::{Stop, arm_stop};
use shmkit::queue::{MpmcQueue, PushError};
use shmkit::{Error, Segment, SegmentOptions, Shared};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Push through handle `h`.
    Push(usize),
    /// Pop through handle `h`.
    Pop(usize),
    /// A producer of a fresh attachment claims a slot and dies.
    ProducerDies,
    /// A consumer of a fresh attachment claims a slot and dies.
    ConsumerDies,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize).prop_map(Op::Push),
        5 => (0..3usize).prop_map(Op::Pop),
        1 => Just(Op::ProducerDies),
        1 => Just(Op::ConsumerDies),
    ]
}

/// A slot of the model: a message, or the gap a dead producer left.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cell {
    Msg(u64),
    Gap,
}

fn handles(seg: &Segment, cap: u64) -> Vec<Shared<MpmcQueue<u64>>> {
    let q = seg.find_or_create::<MpmcQueue<u64>>("q", cap).unwrap();
    vec![q.clone(), seg.find::<MpmcQueue<u64>>("q").unwrap(), q]
}

/// What a pop of the model returns: gaps at the front are passed.
fn model_pop(m: &mut VecDeque<Cell>) -> Option<u64> {
    while let Some(c) = m.pop_front() {
        if let Cell::Msg(v) = c {
            return Some(v);
        }
    }
    None
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn matches_a_vecdeque(
        cap_log in 0u32..4,
        start in prop_oneof![Just(0u64), Just((1u64 << 62) - 3), Just(u64::MAX - 3), any::<u64>()],
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let cap = 1u64 << cap_log;
        let seg = SegmentOptions::heap().max_size(8 << 20).create().unwrap();
        let qs = handles(&seg, cap);
        qs[0].testkit_start_at(start).unwrap();
        let mut model: VecDeque<Cell> = VecDeque::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Push(h) => {
                    let r = qs[h].try_push(next);
                    if model.len() as u64 == cap {
                        prop_assert_eq!(r, Err(PushError::Full(next)));
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        model.push_back(Cell::Msg(next));
                    }
                    next += 1;
                }
                Op::Pop(h) => {
                    let got = qs[h].pop().unwrap();
                    prop_assert_eq!(got, model_pop(&mut model));
                }
                Op::ProducerDies => {
                    let peer = seg.try_clone().unwrap();
                    let pq = peer.find::<MpmcQueue<u64>>("q").unwrap();
                    arm_stop(Stop::ProducerClaimed);
                    let r = pq.try_push(u64::MAX);
                    drop(pq);
                    peer.simulate_crash();
                    if model.len() as u64 == cap {
                        // Full: it never reached the stop.
                        arm_stop_clear();
                        prop_assert_eq!(r, Err(PushError::Full(u64::MAX)));
                    } else {
                        prop_assert!(matches!(r, Err(PushError::Failed(_, Error::SimulatedCrash))));
                        model.push_back(Cell::Gap);
                    }
                }
                Op::ConsumerDies => {
                    let peer = seg.try_clone().unwrap();
                    let pq = peer.find::<MpmcQueue<u64>>("q").unwrap();
                    arm_stop(Stop::ConsumerClaimed);
                    let r = pq.pop();
                    drop(pq);
                    peer.simulate_crash();
                    // It dies on the first slot it claims: a gap (passing it
                    // loses nothing) or a message (lost with it).
                    match model.pop_front() {
                        Some(_) => prop_assert!(matches!(r, Err(Error::SimulatedCrash))),
                        None => {
                            arm_stop_clear();
                            prop_assert_eq!(r.unwrap(), None);
                        }
                    }
                }
            }
            prop_assert_eq!(qs[0].len(), model.len() as u64);
        }
        while let Some(v) = model_pop(&mut model) {
            prop_assert_eq!(qs[1].pop().unwrap(), Some(v));
        }
        prop_assert_eq!(qs[2].pop().unwrap(), None);
        prop_assert!(qs[0].is_empty());
    }
}

/// Disarms a stop that was not reached (arming for a point this thread will
/// not reach in its next call: the other point, immediately overwritten).
fn arm_stop_clear() {
    shmkit::queue::testkit::disarm_stop();
}
