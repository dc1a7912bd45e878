//! Real processes killed with SIGKILL while they hold robust mutexes: a scaled
//! version of glibc's `tst-robust8`.
//!
//! The parent creates a POSIX segment holding [`MUTEXES`] `Mutex<Pair>` (the
//! invariant is `a == b`), shared counters and one heartbeat per registry slot.
//! [`WORKERS`] worker processes of [`THREADS`] threads each (every thread with its
//! own handle) open the segment by name and loop: pick a random mutex (half the
//! time from a small hot set, for contention), acquire it with `lock`, `try_lock`,
//! `lock_for(Duration::ZERO)` or a short `lock_for`, then break the invariant for a
//! random moment (`a += 1`, a spin or a short sleep, `b += 1`) and unlock. A
//! worker that gets `OwnerDied` repairs (`b = a`), calls `make_consistent` and
//! counts it; `Ok` with `a != b` and `NotRecoverable` are counted as failures.
//!
//! Every round the parent SIGKILLs one worker after a random 5–50 ms, starts a
//! replacement, reclaims the dead registry slots and, while the other workers keep
//! running, locks every mutex with a generous `lock_for` (a timeout is a hang):
//! `Ok` must find the invariant holding, `OwnerDied` is repaired and counted. Every
//! surviving worker thread must have moved its heartbeat since the last round (one
//! stuck in a lock call is a hang too). At the end every worker is killed, and
//! every mutex must be lockable and consistent after repair. At most one
//! `OwnerDied` can be owed per thread killed, which bounds the total from above;
//! at least one must have been seen.
//!
//! `cargo test` runs [`DEFAULT_ROUNDS`] rounds (one kill each); set
//! `SHMKIT_CRASH_ROUNDS` for long runs, e.g.
//! `SHMKIT_CRASH_ROUNDS=10000 cargo test --release --test crash_sync -- --nocapture`.
//!
//! The test binary re-executes itself: `child_main` (ignored) reads its role from
//! `SHMKIT_CHILD_ROLE` and the segment name from `SHMKIT_CHILD_TARGET`. A worker
//! leaves when its stdin reaches end-of-file, so none outlives the test binary.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, compiler_fence};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use common::{LineChild, PATIENCE, shm_path};
use shmkit::sync::{LockError, Mutex, MutexGuard};
use shmkit::{Offset, Segment, SegmentOptions, ShmSafe, SlotState};

const ROLE: &str = "SHMKIT_CHILD_ROLE";
const TARGET: &str = "SHMKIT_CHILD_TARGET";
const ROUNDS_VAR: &str = "SHMKIT_CRASH_ROUNDS";
/// Prefix of every line a child says to its parent (libtest prints its own lines).
const PREFIX: &str = "SHMKIT:";

/// Rounds (kills) under plain `cargo test`.
const DEFAULT_ROUNDS: u64 = 240;
const MUTEXES: usize = 100;
/// Half of the operations go to the first `HOT` mutexes.
const HOT: u64 = 8;
const WORKERS: usize = 4;
const THREADS: usize = 2;
/// Registry slots: enough for us and every worker, plus the dead awaiting
/// `reclaim_dead`.
const SLOTS: usize = 32;
/// Layout of the user region, in 64-byte cells: the counters, the heartbeats, then
/// one mutex per cell.
const CELL: u64 = 64;
const BEATS_CELL: u64 = 1;
const FIRST_MUTEX_CELL: u64 = BEATS_CELL + (SLOTS as u64 * 8).div_ceil(CELL);
/// The verifier's timeout: running out of it is a hang.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// The watchdog aborts if no round completes for this long...
const STALL: Duration = Duration::from_secs(60);
/// ...or if the test runs longer than this plus [`PER_ROUND`] per round.
const BASE_BOUND: Duration = Duration::from_secs(90);
const PER_ROUND: Duration = Duration::from_secs(1);

/// What a mutex protects: the invariant is `a == b`, broken between the two
/// writes of an update.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
struct Pair {
    a: u64,
    b: u64,
}
// SAFETY: repr(C), two u64 and no padding: every bit pattern is a valid Pair, and
// nothing in it means anything local to one process.
unsafe impl ShmSafe for Pair {}

/// Shared counters at the start of the user region, written by the workers (so
/// they survive their being killed).
type Stats = [AtomicU64; 8];
/// Acquisitions (`Ok` or `OwnerDied`) by workers.
const OPS: usize = 0;
/// `OwnerDied` seen by workers.
const OWNER_DIED: usize = 1;
/// `NotRecoverable` seen by workers (must stay 0).
const NOT_RECOVERABLE: usize = 2;
/// `Ok` with the invariant broken, seen by workers (must stay 0).
const VIOLATIONS: usize = 3;
const WOULD_BLOCK: usize = 4;
const TIMED_OUT: usize = 5;
/// Any other error (must stay 0).
const OTHER: usize = 6;

fn stats_at(seg: &Segment) -> Offset<Stats> {
    Offset::new(seg.user_offset())
}

/// One heartbeat per registry slot: the worker thread holding that slot counts its
/// loop iterations there, so that a thread stuck in a lock call shows.
type Beats = [AtomicU64; SLOTS];

fn beats_at(seg: &Segment) -> Offset<Beats> {
    Offset::new(seg.user_offset() + CELL * BEATS_CELL)
}

fn mutex_at(seg: &Segment, i: usize) -> Offset<Mutex<Pair>> {
    const { assert!(size_of::<Mutex<Pair>>() as u64 <= CELL) };
    Offset::new(seg.user_offset() + CELL * (FIRST_MUTEX_CELL + i as u64))
}

fn mutexes(seg: &Segment) -> Vec<&Mutex<Pair>> {
    (0..MUTEXES)
        .map(|i| seg.resolve(mutex_at(seg, i)).expect("resolve a mutex"))
        .collect()
}

/// A small non-cryptographic generator (splitmix64): timing, not secrets.
struct Rng(u64);

impl Rng {
    fn seeded(salt: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng(nanos ^ (u64::from(std::process::id()) << 32) ^ salt.wrapping_mul(0x9e37_79b9))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------------
// The worker side.
// ---------------------------------------------------------------------------------

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return; // run by hand with --ignored: nothing to do
    };
    match role.as_str() {
        "worker" => worker_main(),
        other => panic!("unknown child role {other:?}"),
    }
}

fn say(what: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{PREFIX}{what}").unwrap();
    out.flush().unwrap();
}

fn worker_main() {
    let name = std::env::var(TARGET).expect("SHMKIT_CHILD_TARGET");
    let first = SegmentOptions::posix(&name)
        .open()
        .unwrap_or_else(|e| panic!("worker: open {name}: {e:?}"));
    let mut handles = vec![first];
    for _ in 1..THREADS {
        let h = handles[0].try_clone().expect("worker: try_clone");
        handles.push(h);
    }
    // Leave as soon as the parent is gone (our stdin closes with it).
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
        std::process::exit(0);
    });
    std::thread::scope(|s| {
        for (t, h) in handles.iter().enumerate() {
            s.spawn(move || work(h, t as u64));
        }
        let slots: Vec<String> = handles.iter().map(|h| h.slot().to_string()).collect();
        say(format!("ready {}", slots.join(" ")));
    });
}

/// Random operations on random mutexes, until killed.
fn work(seg: &Segment, thread: u64) {
    let stats = seg.resolve(stats_at(seg)).expect("resolve the counters");
    let beat = &seg.resolve(beats_at(seg)).expect("resolve the heartbeats")[seg.slot() as usize];
    let ms = mutexes(seg);
    let mut rng = Rng::seeded(thread + 1);
    loop {
        beat.fetch_add(1, Ordering::Relaxed);
        let i = if rng.below(2) == 0 {
            rng.below(HOT)
        } else {
            rng.below(MUTEXES as u64)
        } as usize;
        let m = ms[i];
        let r = match rng.below(4) {
            0 => m.lock(seg),
            1 => m.try_lock(seg),
            2 => m.lock_for(seg, Duration::ZERO),
            _ => m.lock_for(seg, Duration::from_micros(rng.below(3000))),
        };
        let mut g = match r {
            Ok(g) => {
                if g.a != g.b {
                    stats[VIOLATIONS].fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "worker: mutex {i}: Ok but the invariant is broken: {:?}",
                        *g
                    );
                }
                g
            }
            Err(LockError::OwnerDied(mut g)) => {
                stats[OWNER_DIED].fetch_add(1, Ordering::Relaxed);
                g.b = g.a;
                g.make_consistent();
                g
            }
            Err(LockError::WouldBlock) => {
                stats[WOULD_BLOCK].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(LockError::TimedOut) => {
                stats[TIMED_OUT].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(LockError::NotRecoverable) => {
                if stats[NOT_RECOVERABLE].fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("worker: mutex {i}: NotRecoverable");
                }
                continue;
            }
            Err(e) => {
                if stats[OTHER].fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("worker: mutex {i}: unexpected {e:?}");
                }
                continue;
            }
        };
        break_and_restore(&mut g, &mut rng);
        stats[OPS].fetch_add(1, Ordering::Relaxed);
        drop(g);
    }
}

/// `a += 1`, a random pause, `b += 1`: a holder killed in the pause leaves the
/// invariant broken.
fn break_and_restore(g: &mut MutexGuard<'_, Pair>, rng: &mut Rng) {
    g.a = g.a.wrapping_add(1);
    // The store to `a` must reach the shared mapping before the pause, where a
    // SIGKILL may land; the compiler may not sink it past this fence.
    compiler_fence(Ordering::SeqCst);
    match rng.below(1000) {
        0..900 => (0..rng.below(200)).for_each(|_| std::hint::spin_loop()),
        900..990 => (0..rng.below(20_000)).for_each(|_| std::hint::spin_loop()),
        _ => std::thread::sleep(Duration::from_micros(50 + rng.below(450))),
    }
    compiler_fence(Ordering::SeqCst);
    g.b = g.b.wrapping_add(1);
}

// ---------------------------------------------------------------------------------
// The parent side.
// ---------------------------------------------------------------------------------

/// Aborts the test binary (after removing the segment) if no round completes for
/// [`STALL`], or if the test runs past `bound`: a hang, not a speed limit.
struct Watchdog {
    progress: Arc<AtomicU64>,
    _disarm: Sender<()>,
}

impl Watchdog {
    fn new(name: String, bound: Duration) -> Self {
        let progress = Arc::new(AtomicU64::new(0));
        let seen = progress.clone();
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let start = Instant::now();
            let (mut last, mut since) = (0, Instant::now());
            loop {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return, // disarmed
                }
                let now = seen.load(Ordering::Relaxed);
                if now != last {
                    (last, since) = (now, Instant::now());
                }
                let why = if since.elapsed() > STALL {
                    format!("no round completed for {STALL:?} (last round {last})")
                } else if start.elapsed() > bound {
                    format!("still running after {bound:?} (round {last})")
                } else {
                    continue;
                };
                eprintln!("watchdog: crash_sync hung: {why}: aborting");
                let _ = SegmentOptions::posix(&name).remove();
                std::process::abort();
            }
        });
        Watchdog {
            progress,
            _disarm: tx,
        }
    }

    fn tick(&self, round: u64) {
        self.progress.store(round, Ordering::Relaxed);
    }
}

/// A worker process, killed and reaped when dropped.
struct Worker {
    child: LineChild,
    /// Its threads' registry slots and their heartbeats when last seen.
    threads: Vec<(usize, u64)>,
}

impl Worker {
    fn spawn(name: &str) -> Self {
        let mut cmd = common::child_main_command();
        cmd.env(ROLE, "worker").env(TARGET, name);
        // Piped stdin: closed when we die, which tells the worker to leave.
        Worker {
            child: LineChild::spawn(cmd, Stdio::piped()),
            threads: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Waits (bounded) until the worker has attached and started its threads.
    fn wait_ready(&mut self, beats: &Beats) {
        let said = self
            .child
            .next_after(PREFIX, PATIENCE)
            .unwrap_or_else(|e| panic!("worker {} never became ready: {e}", self.pid()));
        let mut words = said.split_whitespace();
        assert_eq!(
            words.next(),
            Some("ready"),
            "worker {}: {said:?}",
            self.pid()
        );
        self.threads = words
            .map(|w| {
                let slot: usize = w.parse().unwrap_or_else(|e| panic!("{said:?}: {e}"));
                (slot, beats[slot].load(Ordering::Relaxed))
            })
            .collect();
        assert_eq!(
            self.threads.len(),
            THREADS,
            "worker {}: {said:?}",
            self.pid()
        );
    }

    /// Fails if the worker exited on its own (it only ever leaves by being killed),
    /// or if one of its threads makes no progress for [`PATIENCE`]: stuck in a lock
    /// call, a hang.
    fn assert_progress(&mut self, beats: &Beats) {
        if let Some(st) = self.child.wait_for_exit(Duration::ZERO) {
            panic!("worker {} exited on its own: {st}", self.pid());
        }
        let pid = self.pid();
        for (slot, last) in &mut self.threads {
            let now = common::poll(PATIENCE, Duration::from_millis(1), || {
                let now = beats[*slot].load(Ordering::Relaxed);
                (now != *last).then_some(now)
            });
            *last = now.unwrap_or_else(|| {
                panic!("worker {pid}: the thread in slot {slot} is stuck (a hang)")
            });
        }
    }

    /// SIGKILL, without reaping.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL a worker");
    }

    /// Reaps a killed worker (bounded); checks that SIGKILL is what ended it.
    fn reap_killed(mut self) {
        let pid = self.pid();
        let st = self
            .child
            .wait_for_exit(PATIENCE)
            .unwrap_or_else(|| panic!("worker {pid} not reaped after SIGKILL"));
        assert_eq!(st.signal(), Some(libc::SIGKILL), "worker {pid}: {st}");
    }
}

/// Counts accumulated by the parent.
#[derive(Default, Debug)]
struct Tally {
    rounds: u64,
    kills: u64,
    verifier_owner_died: u64,
    verifications: u64,
}

/// Locks every mutex (bounded: a timeout is a hang), checks the invariant on
/// `Ok`, repairs on `OwnerDied`. Returns the number of `OwnerDied`.
fn verify(seg: &Segment, ms: &[&Mutex<Pair>], when: &str) -> u64 {
    let mut died = 0;
    for (i, m) in ms.iter().enumerate() {
        match m.lock_for(seg, VERIFY_TIMEOUT) {
            Ok(g) => assert_eq!(g.a, g.b, "{when}: mutex {i}: Ok with the invariant broken"),
            Err(LockError::OwnerDied(mut g)) => {
                died += 1;
                g.b = g.a;
                g.make_consistent();
            }
            Err(LockError::TimedOut) => {
                panic!("{when}: mutex {i} not acquired within {VERIFY_TIMEOUT:?}: a hang ({m:?})")
            }
            Err(e) => panic!("{when}: mutex {i}: {e:?}"),
        }
    }
    died
}

/// Fails at once on anything a worker counted as wrong.
fn check_worker_failures(stats: &Stats, when: &str) {
    let nr = stats[NOT_RECOVERABLE].load(Ordering::Relaxed);
    let bad = stats[VIOLATIONS].load(Ordering::Relaxed);
    let other = stats[OTHER].load(Ordering::Relaxed);
    assert_eq!(
        (nr, bad, other),
        (0, 0, 0),
        "{when}: workers saw (NotRecoverable, Ok with a != b, other errors)"
    );
}

fn rounds() -> u64 {
    match std::env::var(ROUNDS_VAR) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{ROUNDS_VAR}={v:?}: {e}")),
        Err(_) => DEFAULT_ROUNDS,
    }
}

#[test]
fn killed_mutex_holders_are_recovered_and_the_invariant_holds() {
    let rounds = rounds();
    let name = shmkit::unique_name("crash-sync-").unwrap();
    let dog = Watchdog::new(
        name.clone(),
        BASE_BOUND + PER_ROUND * u32::try_from(rounds).unwrap_or(u32::MAX),
    );
    let started = Instant::now();
    let seg = SegmentOptions::posix(&name)
        .max_size(1 << 20)
        .committed(64 << 10)
        .registry_slots(SLOTS as u32)
        .create()
        .unwrap();
    // SAFETY: nobody else has the segment's name yet: nothing else can access these
    // offsets while they are written.
    let stats = unsafe { seg.place(stats_at(&seg), Default::default()) }.unwrap();
    // SAFETY: as above.
    let beats =
        unsafe { seg.place(beats_at(&seg), std::array::from_fn(|_| AtomicU64::new(0))) }.unwrap();
    for i in 0..MUTEXES {
        // SAFETY: as above.
        unsafe { seg.place(mutex_at(&seg, i), Mutex::new(Pair::default())) }.unwrap();
    }
    let ms = mutexes(&seg);

    let mut workers: Vec<Worker> = (0..WORKERS).map(|_| Worker::spawn(&name)).collect();
    for w in &mut workers {
        w.wait_ready(beats);
    }
    let mut rng = Rng::seeded(0);
    let mut tally = Tally::default();
    for round in 1..=rounds {
        std::thread::sleep(Duration::from_millis(5 + rng.below(46)));
        let v = rng.below(WORKERS as u64) as usize;
        workers[v].kill();
        let victim = std::mem::replace(&mut workers[v], Worker::spawn(&name));
        victim.reap_killed();
        tally.kills += 1;
        // The victim's slots are dead: free them, so the registry never fills.
        seg.reclaim_dead().expect("reclaim_dead");
        // Verify while the other workers keep running (and the replacement starts).
        tally.verifier_owner_died += verify(&seg, &ms, &format!("round {round}"));
        tally.verifications += 1;
        check_worker_failures(stats, &format!("round {round}"));
        workers[v].wait_ready(beats);
        for w in &mut workers {
            w.assert_progress(beats);
        }
        tally.rounds = round;
        dog.tick(round);
    }

    // The end: kill them all at once, then every mutex must be lockable and,
    // once repaired, consistent.
    for w in &mut workers {
        w.assert_progress(beats);
        w.kill();
    }
    for w in workers.drain(..) {
        w.reap_killed();
        tally.kills += 1;
    }
    seg.reclaim_dead().expect("reclaim_dead");
    let left: Vec<_> = seg.slot_list().unwrap();
    assert!(
        left.iter().all(|s| s.own && s.state == SlotState::Alive) && left.len() == 1,
        "registry slots left after every worker died and reclaim_dead: {left:#?}"
    );
    tally.verifier_owner_died += verify(&seg, &ms, "final repair");
    let final_died = verify(&seg, &ms, "final check");
    assert_eq!(
        final_died, 0,
        "OwnerDied again after every mutex was repaired"
    );
    for (i, m) in ms.iter().enumerate() {
        assert!(!m.is_locked(), "mutex {i} still locked: {m:?}");
        let g = m.try_lock(&seg).expect("a repaired, free mutex");
        assert_eq!(g.a, g.b, "mutex {i}");
    }
    check_worker_failures(stats, "the end");

    let worker_died = stats[OWNER_DIED].load(Ordering::Relaxed);
    let total_died = worker_died + tally.verifier_owner_died;
    println!(
        "crash_sync: {} rounds, {} kills, OwnerDied {} by workers + {} by the verifier, \
         {} ops, {} WouldBlock, {} TimedOut, {} verifications, {:.1} s",
        tally.rounds,
        tally.kills,
        worker_died,
        tally.verifier_owner_died,
        stats[OPS].load(Ordering::Relaxed),
        stats[WOULD_BLOCK].load(Ordering::Relaxed),
        stats[TIMED_OUT].load(Ordering::Relaxed),
        tally.verifications,
        started.elapsed().as_secs_f64()
    );
    assert!(
        total_died > 0,
        "no OwnerDied in {} kills: the test tested nothing",
        tally.kills
    );
    // Each killed thread held at most one mutex, so at most that many OwnerDied
    // are owed: more means one death was reported twice (or a live holder's lock
    // was taken over).
    assert!(
        total_died <= tally.kills * THREADS as u64,
        "{total_died} OwnerDied for {} killed threads",
        tally.kills * THREADS as u64
    );
    drop(ms);
    drop(seg);
    assert!(!shm_path(&name).exists(), "segment {name} left behind");
}
