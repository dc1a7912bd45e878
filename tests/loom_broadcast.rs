//! Loom models of `Broadcast`'s algorithm (the real `RawBroadcast` over loom
//! atomics), at capacity 1 and 2: a reader racing the writer never returns a torn
//! or repeated message and accounts for every one (received + lost = sent); a
//! writer that dies at any point inside a send, replaced by a new one, leaves no
//! torn message and no number used twice for two different messages a reader got;
//! and the bell protocol loses no wake-up (under the blocking futex model a lost
//! one is a reported deadlock).
//!
//! Run: `RUSTFLAGS="--cfg shmkit_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_broadcast`
#![cfg(shmkit_loom)]

mod loom_model;

use loom::sync::Arc;
use loom::thread;
use loom_model::{Registry, proc};
use shmkit::loom::{AtomicU64, futex_wait};
use shmkit::queue::{BroadcastHeader, Geometry, RawBroadcast, Received};

type Msg = [u64; 2];

/// A message whose two words agree (a torn read would not).
fn msg(n: u64, writer: u64) -> Msg {
    [
        n | writer << 32,
        (n | writer << 32).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    ]
}

fn check(m: Msg) -> (u64, u64) {
    assert_eq!(
        m[1],
        m[0].wrapping_mul(0x9e37_79b9_7f4a_7c15),
        "torn: {m:?}"
    );
    (m[0] & 0xffff_ffff, m[0] >> 32)
}

struct Ring {
    header: BroadcastHeader,
    words: Vec<AtomicU64>,
    geometry: Geometry,
}

impl Ring {
    fn new(capacity: u64) -> Arc<Self> {
        let geometry = Geometry::new(capacity, size_of::<Msg>()).unwrap();
        Arc::new(Ring {
            header: BroadcastHeader::new(&geometry),
            words: (0..geometry.ring_words())
                .map(|_| AtomicU64::new(0))
                .collect(),
            geometry,
        })
    }

    fn raw(&self) -> RawBroadcast<'_> {
        RawBroadcast::new(&self.header, &self.words, self.geometry)
    }
}

/// Reads what is there now into `got` (numbers and writers) and `lost`.
fn drain(raw: &RawBroadcast<'_>, at: &mut u64, got: &mut Vec<(u64, u64)>, lost: &mut u64) {
    while let Some(r) = raw.recv::<Msg>(at).unwrap() {
        match r {
            Received::Message(m) => got.push(check(m)),
            Received::Lagged(n) => *lost += n,
        }
    }
}

#[test]
fn a_reader_racing_the_writer_sees_whole_messages_and_counts_the_rest() {
    for cap in [1, 2] {
        loom::model(move || {
            let reg = Registry::new();
            let ring = Ring::new(cap);
            let r2 = ring.clone();
            let reader = thread::spawn(move || {
                let raw = r2.raw();
                let (mut at, mut got, mut lost) = (0, Vec::new(), 0);
                drain(&raw, &mut at, &mut got, &mut lost);
                (at, got, lost)
            });
            let raw = ring.raw();
            let p0 = proc(&reg, 0);
            let first = raw.claim_writer(&p0).unwrap();
            let mut bell = raw.bell_generation();
            for n in first..first + 3 {
                raw.send(n, msg(n, 0), &mut bell);
            }
            let (mut at, mut got, mut lost) = reader.join().unwrap();
            drain(&raw, &mut at, &mut got, &mut lost);
            assert!(got.windows(2).all(|p| p[0].0 < p[1].0), "{got:?}");
            assert_eq!(got.len() as u64 + lost, 3, "{got:?} + {lost}");
            assert_eq!(got.last().map(|g| g.0), Some(2), "the newest is kept");
        });
    }
}

#[test]
fn a_writer_dying_inside_a_send_leaves_nothing_torn_or_doubled() {
    // The first writer sends message 0, then dies at crash point `k` of message 1
    // (marked; half the data; complete but head not moved). The second takes over
    // and sends two more; a reader runs throughout.
    for k in 0..3 {
        loom::model(move || {
            let reg = Registry::new();
            let ring = Ring::new(2);
            let (r2, reg2) = (ring.clone(), reg.clone());
            let first = thread::spawn(move || {
                let raw = r2.raw();
                let p1 = proc(&reg2, 1);
                let mut next = raw.claim_writer(&p1).unwrap();
                let mut bell = raw.bell_generation();
                raw.send(next, msg(next, 1), &mut bell);
                next += 1;
                shmkit::loom::crash::arm(k);
                raw.send(next, msg(next, 1), &mut bell);
                assert!(shmkit::loom::crash::dead());
                reg2.die(1); // the kernel releases its locks
            });
            let r3 = ring.clone();
            let reader = thread::spawn(move || {
                let raw = r3.raw();
                let (mut at, mut got, mut lost) = (0, Vec::new(), 0);
                drain(&raw, &mut at, &mut got, &mut lost);
                drain(&raw, &mut at, &mut got, &mut lost);
                (at, got, lost)
            });
            first.join().unwrap();
            let raw = ring.raw();
            let p2 = proc(&reg, 2);
            let mut next = raw.claim_writer(&p2).unwrap();
            let start = next;
            let mut bell = raw.bell_generation();
            for _ in 0..2 {
                raw.send(next, msg(next, 2), &mut bell);
                next += 1;
            }
            let (mut at, mut got, mut lost) = reader.join().unwrap();
            drain(&raw, &mut at, &mut got, &mut lost);
            // Numbers strictly increase: no number read twice (a message a
            // reader got is never replaced under its number).
            assert!(got.windows(2).all(|p| p[0].0 < p[1].0), "{got:?}");
            assert_eq!(got.len() as u64 + lost, next, "{got:?} + {lost} of {next}");
            // The takeover resumes after the dead writer's completed messages.
            assert!(
                start == 1 || (start == 2 && k == 2),
                "start {start} at crash {k}"
            );
            for (n, w) in &got {
                assert!(*w == 1 && *n < start || *w == 2 && *n >= start, "{got:?}");
            }
        });
    }
}

#[test]
fn a_sleeping_reader_is_always_woken() {
    shmkit::loom::futex_model::set_blocking(true);
    loom::model(|| {
        let reg = Registry::new();
        let ring = Ring::new(2);
        let r2 = ring.clone();
        let reader = thread::spawn(move || {
            let raw = r2.raw();
            let mut at = 0;
            loop {
                if let Some(r) = raw.recv::<Msg>(&mut at).unwrap() {
                    return r;
                }
                let expected = raw.prepare_sleep();
                if let Some(r) = raw.recv::<Msg>(&mut at).unwrap() {
                    return r;
                }
                futex_wait(raw.bell(), expected, None);
            }
        });
        let raw = ring.raw();
        let p0 = proc(&reg, 0);
        let next = raw.claim_writer(&p0).unwrap();
        let mut bell = raw.bell_generation();
        raw.send(next, msg(next, 0), &mut bell);
        assert_eq!(reader.join().unwrap(), Received::Message(msg(0, 0)));
    });
}
