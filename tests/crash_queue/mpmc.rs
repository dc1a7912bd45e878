//! Kill -9 of MPMC producers at random moments: producer processes push
//! `(producer id, sequence, checksum)` and count each push that returned in a
//! shared word; the parent consumes and SIGKILLs a random producer each round,
//! then replaces it (under a new id). At the end every message is checked:
//! none torn (checksum), none duplicated, and for each producer every sequence
//! below its committed count present, none above it; the one at its count (the
//! push in flight when it was killed) may be missing or present: the single
//! message the queue's guarantee allows to be lost.
//!
//! Only producers are killed here (the parent is the one consumer); consumer
//! deaths are covered by `queue_mpmc.rs` (simulated and SIGKILLed claimants)
//! and the property and loom models.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::child::{ROLE, TARGET, env_u64, say};
use crate::common::crash::{Rng, WorkerProcess, mix, rounds};
use shmkit::queue::MpmcQueue;
use shmkit::{Error, SegmentOptions};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

const ID: &str = "SHMKIT_MPMC_ID";
const PRODUCERS: usize = 3;
const CAP: u64 = 32;
const EXITS: &[(i32, &str)] = &[];

#[derive(Copy, Clone, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct Msg {
    id: u64,
    seq: u64,
    check: u64,
}

fn check(id: u64, seq: u64) -> u64 {
    mix(id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq)
}

fn spawn(name: &str, index: usize, id: u64) -> WorkerProcess {
    let mut cmd = crate::common::self_test_command("mpmc::child_main");
    cmd.env(ROLE, "producer")
        .env(TARGET, name)
        .env(ID, id.to_string());
    WorkerProcess::spawn(cmd, index, EXITS)
}

#[test]
fn producers_killed_at_random_lose_at_most_their_in_flight_message() {
    let n = rounds(200);
    let name = shmkit::unique_name("mpmc-crash-").unwrap();
    let dog = crate::common::crash::watchdog("crash_queue_mpmc", &name, n, Duration::from_secs(60));
    let seg = SegmentOptions::posix(&name)
        .max_size(16 << 20)
        .create()
        .unwrap();
    let q = seg.find_or_create::<MpmcQueue<Msg>>("q", CAP).unwrap();
    let mut rng = Rng::seeded(7);
    let mut next_id = 0u64;
    let mut workers: Vec<(WorkerProcess, u64)> = Vec::new();
    let beat_of = |id: u64| {
        seg.find_or_create::<AtomicU64>(&format!("beat-{id}"), ())
            .unwrap()
            .load(Ordering::Acquire)
    };
    for i in 0..PRODUCERS {
        let mut w = spawn(&name, i, next_id);
        let id = next_id;
        w.wait_ready(|| beat_of(id));
        workers.push((w, id));
        next_id += 1;
    }
    let mut got: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut committed: BTreeMap<u64, u64> = BTreeMap::new();
    let take = |q: &shmkit::Shared<MpmcQueue<Msg>>, got: &mut BTreeMap<u64, Vec<u64>>| match q
        .pop_blocking_for(Duration::from_millis(1))
    {
        Ok(m) => {
            assert_eq!(m.check, check(m.id, m.seq), "a torn message: {m:?}");
            got.entry(m.id).or_default().push(m.seq);
            true
        }
        Err(Error::TimedOut) => false,
        Err(e) => panic!("{e}"),
    };
    for round in 0..n {
        let until = Instant::now() + Duration::from_micros(200 + rng.below(3000));
        while Instant::now() < until {
            take(&q, &mut got);
        }
        let k = rng.below(PRODUCERS as u64) as usize;
        let (mut w, id) = workers.swap_remove(k);
        w.kill();
        committed.insert(id, beat_of(id));
        let mut nw = spawn(&name, w.index, next_id);
        let nid = next_id;
        nw.wait_ready(|| beat_of(nid));
        workers.push((nw, nid));
        next_id += 1;
        dog.tick(round);
    }
    for (mut w, id) in workers.drain(..) {
        w.kill();
        committed.insert(id, beat_of(id));
    }
    while take(&q, &mut got) {}
    assert!(q.is_empty());
    let total: usize = got.values().map(Vec::len).sum();
    assert!(
        total as u64 >= n,
        "only {total} messages in {n} rounds: the test exercised nothing"
    );
    let mut lost = 0;
    for (id, c) in &committed {
        let mut seqs = got.remove(id).unwrap_or_default();
        let n = seqs.len();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), n, "producer {id}: a duplicated message");
        assert!(
            seqs.iter().all(|s| *s <= *c),
            "producer {id}: a message past its count {c}"
        );
        for s in 0..*c {
            assert!(
                seqs.binary_search(&s).is_ok(),
                "producer {id}: committed message {s} lost"
            );
        }
        if seqs.binary_search(c).is_err() {
            lost += 1;
        }
    }
    assert!(got.is_empty(), "messages of unknown producers: {got:?}");
    eprintln!(
        "crash_queue_mpmc: {} kills, {} producers, {lost} of them without their message at their count (never pushed, or lost in flight)",
        n + PRODUCERS as u64,
        committed.len()
    );
}

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    assert_eq!(role, "producer");
    let name = std::env::var(TARGET).unwrap();
    let id = env_u64(ID);
    let seg = SegmentOptions::posix(&name).open().unwrap();
    let q = seg.find::<MpmcQueue<Msg>>("q").unwrap();
    let beat = seg
        .find_or_create::<AtomicU64>(&format!("beat-{id}"), ())
        .unwrap();
    crate::common::child::leave_when_the_parent_goes();
    say(format!("ready {}", seg.owner_tag().bits()));
    for seq in 0.. {
        let m = Msg {
            id,
            seq,
            check: check(id, seq),
        };
        loop {
            match q.push_blocking_for(m, Duration::from_millis(50)) {
                Ok(()) => break,
                Err(shmkit::queue::PushError::TimedOut(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        // Committed: the push returned.
        beat.store(seq + 1, Ordering::Release);
    }
}
