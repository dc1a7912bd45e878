//! The queue fuzz entry point: arbitrary values in the words of an `SpscQueue`
//! and a `Broadcast` between operations on them from two attachments.

use std::time::Duration;

use super::{Bytes, timed};
use crate::loom::{AtomicU64, Ordering};
use crate::object::ShmObject;
use crate::queue::{Broadcast, Received, SpscQueue};
use crate::{Error, Result, SegmentOptions, Shared};

/// Segment size of a queue case.
const QUEUE_HEAP: u64 = 4 << 20;
/// Operations in one case at most.
const MAX_QUEUE_OPS: usize = 256;

type SpscMsg = [u64; 2];
type BcastMsg = [u64; 3];

/// The `i`-th word of the object behind `h` (`i` below its size in words).
fn word_of<T: ShmObject>(h: &Shared<T>, i: usize) -> &AtomicU64 {
    let words = T::size(h.config()).expect("a checked configuration") as usize / 8;
    assert!(i < words);
    // SAFETY: the block holds `words` 8-aligned words (objects are 8-aligned and
    // their sizes multiples of 8), each an atomic (queue objects are atomics
    // only); the pointer has the whole block's provenance; `h` keeps the block.
    unsafe { &*h.as_non_null().as_ptr().cast::<AtomicU64>().add(i) }
}

/// A value for a poked word: zero, all ones, the top bit, small numbers, one
/// near what the word holds (plausible but wrong), or raw bytes.
fn poke_value(kind: u8, raw: u64, current: u64) -> u64 {
    match kind % 8 {
        0 => 0,
        1 => u64::MAX,
        2 => 1 << 63,
        3 => raw % 4,
        4 => current.wrapping_add(1 + raw % 8),
        5 => current.wrapping_sub(1 + raw % 8),
        6 => current ^ (1 << (raw % 64)),
        _ => raw,
    }
}

/// Whether `r` is a result the queues may give for a damaged queue: a value or
/// a typed error; panics (failing the case) on an error no queue call gives.
fn acceptable<T>(what: &str, r: Result<T>) {
    match r {
        Ok(_)
        | Err(Error::Corrupt { .. })
        | Err(Error::TimedOut)
        | Err(Error::WouldBlock)
        | Err(Error::RoleTaken { .. })
        | Err(Error::PeerDied { .. }) => {}
        Err(e) => panic!("{what}: unexpected error {e}"),
    }
}

/// Operations on an `SpscQueue` and a `Broadcast` (roles held by two attachments
/// of one heap segment), with words of either overwritten between them. Every
/// call must return a value or a typed error — never panic, crash, read outside
/// its ring or hang (each call is bounded by the harness's call budget). Before
/// the first overwrite, every message must also come out as it went in.
///
/// # Panics
///
/// Only if a queue breaks those promises.
pub fn queue_corrupt(data: &[u8]) {
    let mut inp = Bytes(data);
    let a = SegmentOptions::heap()
        .max_size(QUEUE_HEAP)
        .create()
        .expect("a heap segment");
    let b = a.try_clone().expect("a second attachment");
    let cap = 1u64 << (inp.u8() % 7);
    let q = a
        .find_or_create::<SpscQueue<SpscMsg>>("q", cap)
        .expect("an SPSC queue");
    let bc = a
        .find_or_create::<Broadcast<BcastMsg>>("b", cap)
        .expect("a broadcast ring");
    let (qb, bcb) = (
        b.find::<SpscQueue<SpscMsg>>("q")
            .expect("found by the second attachment"),
        b.find::<Broadcast<BcastMsg>>("b")
            .expect("found by the second attachment"),
    );
    let mut tx = q.producer().ok();
    let mut rx = qb.consumer().ok();
    let mut w = bc.writer().ok();
    let mut r = bcb.reader().ok();
    let (mut sent, mut got, mut poked) = (0u64, 0u64, false);
    let (mut bsent, mut blast) = (0u64, None::<u64>);
    let q_words = SpscQueue::<SpscMsg>::size(&cap).expect("a valid capacity") as usize / 8;
    let b_words = Broadcast::<BcastMsg>::size(&cap).expect("a valid capacity") as usize / 8;
    for _ in 0..MAX_QUEUE_OPS {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 12 {
            0 => {
                if let Some(t) = tx.as_mut() {
                    match timed("try_push", || t.try_push([sent, !sent])) {
                        Ok(()) => sent += 1,
                        Err(e) => assert!(poked || e.is_full(), "try_push: {e}"),
                    }
                }
            }
            1 => {
                if let Some(c) = rx.as_mut() {
                    match timed("pop", || c.pop()) {
                        Ok(Some(m)) if !poked => {
                            assert_eq!(m, [got, !got], "a message changed in the queue");
                            got += 1;
                        }
                        other => acceptable("pop", other),
                    }
                }
            }
            2 => {
                if let Some(t) = tx.as_mut() {
                    let n = usize::from(inp.u8() % 9);
                    let batch: Vec<SpscMsg> =
                        (0..n as u64).map(|i| [sent + i, !(sent + i)]).collect();
                    match timed("push_slice", || t.push_slice(&batch)) {
                        Ok(k) => sent += k as u64,
                        other => acceptable("push_slice", other),
                    }
                }
            }
            3 => {
                if let Some(c) = rx.as_mut() {
                    let mut out = vec![[0; 2]; usize::from(inp.u8() % 9)];
                    match timed("pop_into", || c.pop_into(&mut out)) {
                        Ok(k) if !poked => {
                            for m in &out[..k] {
                                assert_eq!(*m, [got, !got], "a batch message changed");
                                got += 1;
                            }
                        }
                        other => acceptable("pop_into", other),
                    }
                }
            }
            4 => {
                if let Some(c) = rx.as_mut() {
                    let d = Duration::from_millis(u64::from(inp.u8() % 3));
                    match timed("pop_blocking_for", || c.pop_blocking_for(d)) {
                        Ok(m) if !poked => {
                            assert_eq!(m, [got, !got], "a message changed in the queue");
                            got += 1;
                        }
                        other => acceptable("pop_blocking_for", other),
                    }
                }
            }
            5 => {
                if let Some(wr) = w.as_mut() {
                    let n = wr.sent();
                    acceptable("send", timed("send", || wr.send([n, !n, n ^ 0x5a5a])));
                    bsent += 1;
                }
            }
            6 => {
                if let Some(rd) = r.as_mut() {
                    match timed("try_recv", || rd.try_recv()) {
                        Ok(Some(Received::Message(m))) if !poked => {
                            assert_eq!(m, [m[0], !m[0], m[0] ^ 0x5a5a], "a torn broadcast message");
                            assert!(blast.is_none_or(|l| m[0] > l), "out of order");
                            blast = Some(m[0]);
                        }
                        Ok(Some(Received::Lagged(n))) if !poked => {
                            assert!(n <= bsent, "lagged {n} of {bsent} sent");
                        }
                        other => acceptable("try_recv", other),
                    }
                }
            }
            7 => {
                if let Some(rd) = r.as_mut() {
                    let d = Duration::from_millis(u64::from(inp.u8() % 3));
                    match timed("recv_for", || rd.recv_for(d)) {
                        Ok(Some(Received::Message(m))) if !poked => {
                            assert_eq!(m, [m[0], !m[0], m[0] ^ 0x5a5a], "a torn broadcast message");
                            assert!(blast.is_none_or(|l| m[0] > l), "out of order");
                            blast = Some(m[0]);
                        }
                        other => acceptable("recv_for", other),
                    }
                    assert!(rd.pending() <= cap, "pending past the capacity");
                }
            }
            8 => {
                // Give a role back and take it again (from the other attachment).
                match inp.u8() % 4 {
                    0 => {
                        drop(tx.take()); // the role is given back first
                        tx = timed("producer", || qb.producer()).ok();
                    }
                    1 => {
                        drop(rx.take());
                        rx = timed("consumer", || q.consumer()).ok();
                    }
                    2 => {
                        drop(w.take());
                        w = timed("writer", || bcb.writer()).ok();
                    }
                    _ => r = timed("reader", || bc.reader()).ok(),
                }
                poked = true; // counters no longer follow one stream
            }
            9 => {
                assert!(
                    timed("len", || q.len()) <= cap as usize,
                    "len past the capacity"
                );
                acceptable("sent", timed("sent", || bc.sent()));
            }
            10 => {
                let (i, kind, raw) = (inp.u16(), inp.u8(), inp.u64());
                let cell = word_of(&q, usize::from(i) % q_words);
                let v = poke_value(kind, raw, cell.load(Ordering::Relaxed));
                cell.store(v, Ordering::Relaxed);
                poked = true;
            }
            _ => {
                let (i, kind, raw) = (inp.u16(), inp.u8(), inp.u64());
                let cell = word_of(&bc, usize::from(i) % b_words);
                let v = poke_value(kind, raw, cell.load(Ordering::Relaxed));
                cell.store(v, Ordering::Relaxed);
                poked = true;
            }
        }
    }
}
