//! Real processes killed with SIGKILL while they hold robust locks: a scaled
//! version of glibc's `tst-robust8`, for `Mutex`, `RwLock` and the ledgered
//! `Semaphore`.
//!
//! Each test creates a POSIX segment holding shared counters, one heartbeat and one
//! "doing" word per registry slot, and its objects. [`WORKERS`] worker processes
//! of [`THREADS`] threads each (every thread with its own handle, so its own
//! registry slot) open the segment by name and loop on random operations. Every
//! round the parent SIGKILLs one worker after a random 5–50 ms, starts a
//! replacement, reclaims the dead registry slots and, while the other workers keep
//! running, verifies every object with generous timeouts (a timeout is a hang).
//! Every surviving worker thread must have moved its heartbeat since the last
//! round (one stuck in a call is a hang too). At the end every worker is killed and
//! every object must be usable and consistent.
//!
//! - **Mutex** ([`MUTEXES`] `Mutex<Pair>`, invariant `a == b`): a worker picks a
//!   mutex (half the time from a small hot set, for contention), acquires it with
//!   `lock`, `try_lock`, `lock_for(Duration::ZERO)` or a short `lock_for`, then
//!   breaks the invariant for a random moment (`a += 1`, a spin or a short sleep,
//!   `b += 1`) and unlocks. `OwnerDied` is repaired (`b = a`, `make_consistent`)
//!   and counted; `Ok` with `a != b` and `NotRecoverable` are failures. The
//!   verifier locks every mutex with a generous `lock_for`. At most one `OwnerDied`
//!   can be owed per thread killed, which bounds the total from above; at least one
//!   must have been seen.
//! - **RwLock** ([`RWLOCKS`] `RwLock<Pair, 128>`): half of the operations read
//!   (`read`, `try_read`, `read_for`): the pair must not change during the read,
//!   and must satisfy the invariant unless the guard `is_inconsistent` (a writer
//!   died and nobody repaired yet: `OwnerDied` for a reader). The other half write
//!   (`write`, `try_write`, `write_for`) as the mutex workers do, repairing on
//!   `OwnerDied`. So victims die holding read shares, holding the write lock, and
//!   waiting. The verifier takes every lock for writing with a generous
//!   `write_for` (a dead reader's share must never block it), repairs, checks the
//!   invariant, then must get a plain `Ok` read. Writers' `OwnerDied` are bounded
//!   as the mutex's; at least one must have been seen.
//! - **Semaphore** (`Semaphore::<128>::with_ledger(PERMITS)`): a worker acquires
//!   (`acquire`, `try_acquire`, `acquire_for`), sets its slot's bit in a shared
//!   holders mask (more than [`PERMITS`] bits set is a failure), pauses, clears the
//!   bit and releases. A victim is stopped (SIGSTOP) before it is killed, so that
//!   the parent can clear its bits and read its ledger entries while it is frozen
//!   and still alive, before anyone can reclaim its permits: the mask check stays
//!   exact. The verifier holds the workers back (a gate in the segment) and must get
//!   all [`PERMITS`] permits (those of the dead come back), with no holder bit set
//!   and a further `try_acquire` refused; at the end too.
//!
//! `cargo test` runs [`DEFAULT_ROUNDS`] rounds (one kill each) per test; set
//! `SHMKIT_CRASH_ROUNDS` for long runs, e.g.
//! `SHMKIT_CRASH_ROUNDS=10000 cargo test --release --test crash_sync -- --nocapture`.
//! The tests of this file run one at a time (each has every core to itself).
//!
//! The test binary re-executes itself: `child_main` (ignored) reads its role from
//! `SHMKIT_CHILD_ROLE` and the segment name from `SHMKIT_CHILD_TARGET`. A worker
//! leaves when its stdin reaches end-of-file, so none outlives the test binary.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

mod common;

use common::child::{PREFIX, ROLE, TARGET, leave_when_the_parent_goes, say};
use common::crash::{self, Rng};
use std::ops::DerefMut;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering, compiler_fence};
use std::time::{Duration, Instant};

use common::{LineChild, PATIENCE, shm_path};
use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
use shmkit::sync::{LockError, Mutex, RwLock, Semaphore, SemaphoreError};
use shmkit::{Offset, OwnerTag, Segment, SegmentOptions, ShmSafe, SlotState};

/// Rounds (kills) under plain `cargo test`.
const DEFAULT_ROUNDS: u64 = 240;
const MUTEXES: usize = 100;
/// Half of the operations go to the first `HOT` mutexes.
const HOT: u64 = 8;
const RWLOCKS: usize = 20;
/// Half of the operations go to the first `RW_HOT` reader-writer locks.
const RW_HOT: u64 = 4;
/// Reader entries of each `RwLock`: at least [`SLOTS`].
const READERS: usize = 128;
/// Ledger entries of the semaphore: at least [`SLOTS`].
const LEDGER: usize = 128;
/// Permits in circulation.
const PERMITS: u32 = 3;
const WORKERS: usize = 4;
const THREADS: usize = 2;
/// Registry slots: enough for us and every worker, plus the dead awaiting
/// `reclaim_dead`. At most 64 (the semaphore test's holders mask is a `u64`).
const SLOTS: usize = 32;
/// Layout of the user region, in 64-byte cells: the counters, the heartbeats, the
/// "doing" words, then the objects (one mutex per cell, one `RwLock` per
/// [`RW_CELLS`] cells, or the semaphore).
const CELL: u64 = 64;
const BEATS_CELL: u64 = (size_of::<Stats>() as u64).div_ceil(CELL);
const DOING_CELL: u64 = BEATS_CELL + (SLOTS as u64 * 8).div_ceil(CELL);
const FIRST_OBJECT_CELL: u64 = DOING_CELL + (SLOTS as u64 * 8).div_ceil(CELL);
const RW_CELLS: u64 = (size_of::<Rw>() as u64).div_ceil(CELL);
/// The verifier's timeout: running out of it is a hang.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// The watchdog aborts if no round completes for a minute, or if the test runs
/// longer than this plus a second per round.
const BASE_BOUND: Duration = Duration::from_secs(90);

const _: () = assert!(SLOTS <= 64 && SLOTS <= READERS && SLOTS <= LEDGER);

/// What a lock protects: the invariant is `a == b`, broken between the two
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

type Rw = RwLock<Pair, READERS>;
type Sem = Semaphore<LEDGER>;

/// Shared counters at the start of the user region, written by the workers (so
/// they survive their being killed).
type Stats = [AtomicU64; 16];
/// Acquisitions (`Ok` or `OwnerDied`) by workers: mutex locks, `RwLock` write
/// locks, semaphore permits.
const OPS: usize = 0;
/// `OwnerDied` seen by workers (`RwLock`: by writers).
const OWNER_DIED: usize = 1;
/// `NotRecoverable` seen by workers (must stay 0).
const NOT_RECOVERABLE: usize = 2;
/// An invariant found broken by workers (must stay 0): `Ok` with `a != b`, data
/// changing under a read lock, more than [`PERMITS`] holders.
const VIOLATIONS: usize = 3;
const WOULD_BLOCK: usize = 4;
const TIMED_OUT: usize = 5;
/// Any other error (must stay 0).
const OTHER: usize = 6;
/// `RwLock` read locks taken by workers (`Ok` or `OwnerDied`).
const READS: usize = 7;
/// `OwnerDied` seen by readers (the data was left inconsistent by a dead writer).
const READ_OWNER_DIED: usize = 8;
/// Semaphore: bit `s` is set while the thread in registry slot `s` holds a permit.
const HOLDERS: usize = 9;
/// Semaphore: while non-zero, workers take no permit (the verifier wants them all).
const GATE: usize = 10;
/// Semaphore: the most holder bits seen set at once.
const MOST_HOLDERS: usize = 11;

fn stats_at(seg: &Segment) -> Offset<Stats> {
    Offset::new(seg.user_offset())
}

/// One heartbeat per registry slot: the worker thread holding that slot counts its
/// loop iterations there, so that a thread stuck in a lock call shows.
type Beats = [AtomicU64; SLOTS];

fn beats_at(seg: &Segment) -> Offset<Beats> {
    Offset::new(seg.user_offset() + CELL * BEATS_CELL)
}

/// One word per registry slot: what the worker thread holding that slot is doing
/// (one of [`DOING`]), read by the parent once the thread is dead.
type Doings = [AtomicU64; SLOTS];
const IDLE: u64 = 0;
/// In a lock or acquire call.
const WAITING: u64 = 1;
const READING: u64 = 2;
const WRITING: u64 = 3;
const HOLDING: u64 = 4;
/// The names of the "doing" states, by value.
const DOING: [&str; 5] = ["idle", "waiting", "reading", "writing", "holding a permit"];

fn doings_at(seg: &Segment) -> Offset<Doings> {
    Offset::new(seg.user_offset() + CELL * DOING_CELL)
}

fn mutex_at(seg: &Segment, i: usize) -> Offset<Mutex<Pair>> {
    const { assert!(size_of::<Mutex<Pair>>() as u64 <= CELL) };
    Offset::new(seg.user_offset() + CELL * (FIRST_OBJECT_CELL + i as u64))
}

fn mutexes(seg: &Segment) -> Vec<&Mutex<Pair>> {
    (0..MUTEXES)
        // SAFETY: this test views each offset as one type only.
        .map(|i| unsafe { seg.resolve(mutex_at(seg, i)) }.expect("resolve a mutex"))
        .collect()
}

fn rwlock_at(seg: &Segment, i: usize) -> Offset<Rw> {
    Offset::new(seg.user_offset() + CELL * (FIRST_OBJECT_CELL + RW_CELLS * i as u64))
}

fn rwlocks(seg: &Segment) -> Vec<&Rw> {
    (0..RWLOCKS)
        // SAFETY: this test views each offset as one type only.
        .map(|i| unsafe { seg.resolve(rwlock_at(seg, i)) }.expect("resolve an RwLock"))
        .collect()
}

fn semaphore_at(seg: &Segment) -> Offset<Sem> {
    Offset::new(seg.user_offset() + CELL * FIRST_OBJECT_CELL)
}

/// Indices drawn from the generator.
trait Pick {
    fn pick(&mut self, hot: u64, n: usize) -> usize;
}

impl Pick for Rng {
    /// An index below `n`, half of the time below `hot` (for contention).
    fn pick(&mut self, hot: u64, n: usize) -> usize {
        (if self.below(2) == 0 {
            self.below(hot)
        } else {
            self.below(n as u64)
        }) as usize
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
        "mutex" => worker_main(mutex_work),
        "rwlock" => worker_main(rwlock_work),
        "semaphore" => worker_main(semaphore_work),
        other => panic!("unknown child role {other:?}"),
    }
}

/// Opens the segment, makes one handle per thread and runs `work` on each, until
/// killed (or until the parent is gone).
fn worker_main(work: fn(&Segment, u64)) {
    let name = std::env::var(TARGET).expect("SHMKIT_CHILD_TARGET");
    let first = SegmentOptions::posix(&name)
        .no_heap()
        .open()
        .unwrap_or_else(|e| panic!("worker: open {name}: {e:?}"));
    let mut handles = vec![first];
    for _ in 1..THREADS {
        let h = handles[0].try_clone().expect("worker: try_clone");
        handles.push(h);
    }
    leave_when_the_parent_goes();
    std::thread::scope(|s| {
        for (t, h) in handles.iter().enumerate() {
            s.spawn(move || work(h, t as u64));
        }
        let slots: Vec<String> = handles.iter().map(|h| h.slot().to_string()).collect();
        say(format!("ready {}", slots.join(" ")));
    });
}

/// What every worker thread needs: the counters, its heartbeat and its "doing"
/// word.
fn worker_parts(seg: &Segment) -> (&Stats, &AtomicU64, &AtomicU64) {
    let slot = seg.slot() as usize;
    // SAFETY: this test views each offset as one type only.
    let stats = unsafe { seg.resolve(stats_at(seg)) }.expect("resolve the counters");
    // SAFETY: this test views each offset as one type only.
    let beat = &unsafe { seg.resolve(beats_at(seg)) }.expect("resolve the heartbeats")[slot];
    // SAFETY: this test views each offset as one type only.
    let doing = &unsafe { seg.resolve(doings_at(seg)) }.expect("resolve the doing words")[slot];
    (stats, beat, doing)
}

/// Counts a lock call that did not acquire (`OwnerDied` is the caller's business:
/// here it counts as "other").
fn count_lock_error<G>(stats: &Stats, what: impl std::fmt::Display, e: &LockError<G>) {
    match e {
        LockError::WouldBlock => {
            stats[WOULD_BLOCK].fetch_add(1, Ordering::Relaxed);
        }
        LockError::TimedOut => {
            stats[TIMED_OUT].fetch_add(1, Ordering::Relaxed);
        }
        LockError::NotRecoverable => {
            if stats[NOT_RECOVERABLE].fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("worker: {what}: NotRecoverable");
            }
        }
        e => other_error(stats, format_args!("{what}: unexpected {e:?}")),
    }
}

/// Counts an error that must not happen, saying what the first one was.
fn other_error(stats: &Stats, what: impl std::fmt::Display) {
    if stats[OTHER].fetch_add(1, Ordering::Relaxed) == 0 {
        eprintln!("worker: {what}");
    }
}

/// Counts a broken invariant, saying what the first few were.
fn violation(stats: &Stats, what: impl std::fmt::Display) {
    if stats[VIOLATIONS].fetch_add(1, Ordering::Relaxed) < 10 {
        eprintln!("worker: {what}");
    }
}

/// Random operations on random mutexes, until killed.
fn mutex_work(seg: &Segment, thread: u64) {
    let (stats, beat, _) = worker_parts(seg);
    let ms = mutexes(seg);
    let mut rng = Rng::seeded(thread + 1);
    loop {
        beat.fetch_add(1, Ordering::Relaxed);
        let i = rng.pick(HOT, MUTEXES);
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
                    violation(
                        stats,
                        format_args!("mutex {i}: Ok but the invariant is broken: {:?}", *g),
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
            Err(e) => {
                count_lock_error(stats, format_args!("mutex {i}"), &e);
                continue;
            }
        };
        break_and_restore(&mut g, &mut rng);
        stats[OPS].fetch_add(1, Ordering::Relaxed);
        drop(g);
    }
}

/// Random reads and writes on random reader-writer locks, until killed.
fn rwlock_work(seg: &Segment, thread: u64) {
    let (stats, beat, doing) = worker_parts(seg);
    let ls = rwlocks(seg);
    let mut rng = Rng::seeded(thread + 1);
    loop {
        beat.fetch_add(1, Ordering::Relaxed);
        let i = rng.pick(RW_HOT, RWLOCKS);
        let l = ls[i];
        doing.store(WAITING, Ordering::Relaxed);
        if rng.below(2) == 0 {
            let r = match rng.below(4) {
                0 => l.read(seg),
                1 => l.try_read(seg),
                2 => l.read_for(seg, Duration::ZERO),
                _ => l.read_for(seg, Duration::from_micros(rng.below(3000))),
            };
            let g = match r {
                Ok(g) => g,
                Err(LockError::OwnerDied(g)) => {
                    stats[READ_OWNER_DIED].fetch_add(1, Ordering::Relaxed);
                    if !g.is_inconsistent() {
                        other_error(
                            stats,
                            format_args!("rwlock {i}: OwnerDied read not inconsistent"),
                        );
                    }
                    g
                }
                Err(e) => {
                    doing.store(IDLE, Ordering::Relaxed);
                    count_lock_error(stats, format_args!("rwlock {i} (read)"), &e);
                    continue;
                }
            };
            doing.store(READING, Ordering::Relaxed);
            // Read twice, a random moment apart: no writer may change the data
            // meanwhile, and unless a dead writer left it unrepaired (then only the
            // stability holds) the invariant holds.
            let first = *g;
            compiler_fence(Ordering::SeqCst);
            pause(&mut rng);
            compiler_fence(Ordering::SeqCst);
            let second = *g;
            if second != first || (!g.is_inconsistent() && first.a != first.b) {
                violation(
                    stats,
                    format_args!(
                        "rwlock {i}: read {first:?} then {second:?} (inconsistent: {})",
                        g.is_inconsistent()
                    ),
                );
            }
            stats[READS].fetch_add(1, Ordering::Relaxed);
            doing.store(IDLE, Ordering::Relaxed);
            drop(g);
        } else {
            let r = match rng.below(4) {
                0 => l.write(seg),
                1 => l.try_write(seg),
                2 => l.write_for(seg, Duration::ZERO),
                _ => l.write_for(seg, Duration::from_micros(rng.below(3000))),
            };
            let mut g = match r {
                Ok(g) => {
                    if g.a != g.b || g.is_inconsistent() {
                        violation(
                            stats,
                            format_args!(
                                "rwlock {i}: Ok write but {:?} (inconsistent: {})",
                                *g,
                                g.is_inconsistent()
                            ),
                        );
                    }
                    g
                }
                Err(LockError::OwnerDied(mut g)) => {
                    stats[OWNER_DIED].fetch_add(1, Ordering::Relaxed);
                    if !g.is_inconsistent() {
                        other_error(
                            stats,
                            format_args!("rwlock {i}: OwnerDied write not inconsistent"),
                        );
                    }
                    g.b = g.a;
                    g.make_consistent();
                    g
                }
                Err(e) => {
                    doing.store(IDLE, Ordering::Relaxed);
                    count_lock_error(stats, format_args!("rwlock {i} (write)"), &e);
                    continue;
                }
            };
            doing.store(WRITING, Ordering::Relaxed);
            break_and_restore(&mut g, &mut rng);
            stats[OPS].fetch_add(1, Ordering::Relaxed);
            doing.store(IDLE, Ordering::Relaxed);
            drop(g);
        }
    }
}

/// Permits taken and given back at random, until killed.
fn semaphore_work(seg: &Segment, thread: u64) {
    let (stats, beat, doing) = worker_parts(seg);
    // SAFETY: this test views each offset as one type only.
    let sem = unsafe { seg.resolve(semaphore_at(seg)) }.expect("resolve the semaphore");
    let bit = 1u64 << seg.slot();
    let mut rng = Rng::seeded(thread + 1);
    loop {
        beat.fetch_add(1, Ordering::Relaxed);
        if stats[GATE].load(Ordering::Acquire) != 0 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        doing.store(WAITING, Ordering::Relaxed);
        let r = match rng.below(4) {
            0 => sem.acquire(seg),
            1 => sem.try_acquire(seg),
            2 => sem.acquire_for(seg, Duration::ZERO),
            _ => sem.acquire_for(seg, Duration::from_micros(rng.below(3000))),
        };
        match r {
            Ok(()) => {}
            Err(e) => {
                doing.store(IDLE, Ordering::Relaxed);
                match e {
                    SemaphoreError::WouldBlock => {
                        stats[WOULD_BLOCK].fetch_add(1, Ordering::Relaxed)
                    }
                    SemaphoreError::TimedOut => stats[TIMED_OUT].fetch_add(1, Ordering::Relaxed),
                    e => {
                        other_error(stats, format_args!("acquire: unexpected {e:?}"));
                        0
                    }
                };
                continue;
            }
        }
        doing.store(HOLDING, Ordering::Relaxed);
        // SYNC: SeqCst, as every access to the mask: one total order of the holders'
        // comings and goings (the parent clears a stopped victim's bits with it).
        let before = stats[HOLDERS].fetch_or(bit, Ordering::SeqCst);
        let holders = (before | bit).count_ones();
        stats[MOST_HOLDERS].fetch_max(u64::from(holders), Ordering::Relaxed);
        if before & bit != 0 || holders > PERMITS {
            violation(
                stats,
                format_args!(
                    "slot {}: a permit acquired, holders mask {:#x} before ours ({holders} holders)",
                    seg.slot(),
                    before
                ),
            );
        }
        pause(&mut rng);
        stats[HOLDERS].fetch_and(!bit, Ordering::SeqCst);
        match sem.release(seg, 1) {
            Ok(()) => {
                stats[OPS].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => other_error(stats, format_args!("release: unexpected {e:?}")),
        }
        doing.store(IDLE, Ordering::Relaxed);
    }
}

/// A random moment: mostly a short spin, sometimes a long one, rarely a sleep.
fn pause(rng: &mut Rng) {
    match rng.below(1000) {
        0..900 => (0..rng.below(200)).for_each(|_| std::hint::spin_loop()),
        900..990 => (0..rng.below(20_000)).for_each(|_| std::hint::spin_loop()),
        _ => std::thread::sleep(Duration::from_micros(50 + rng.below(450))),
    }
}

/// `a += 1`, a random pause, `b += 1`: a holder killed in the pause leaves the
/// invariant broken.
fn break_and_restore<G: DerefMut<Target = Pair>>(g: &mut G, rng: &mut Rng) {
    g.a = g.a.wrapping_add(1);
    // The store to `a` must reach the shared mapping before the pause, where a
    // SIGKILL may land; the compiler may not sink it past this fence.
    compiler_fence(Ordering::SeqCst);
    pause(rng);
    compiler_fence(Ordering::SeqCst);
    g.b = g.b.wrapping_add(1);
}

// ---------------------------------------------------------------------------------
// The parent side.
// ---------------------------------------------------------------------------------

/// A worker process, killed and reaped when dropped.
struct Worker {
    child: LineChild,
    /// Its threads' registry slots and their heartbeats when last seen.
    threads: Vec<(usize, u64)>,
}

impl Worker {
    fn spawn(name: &str, role: &str) -> Self {
        let mut cmd = common::child_main_command();
        cmd.env(ROLE, role).env(TARGET, name);
        // Piped stdin: closed when we die, which tells the worker to leave.
        Worker {
            child: LineChild::spawn(cmd, Stdio::piped()),
            threads: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Its threads' registry slots (known once ready).
    fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.threads.iter().map(|&(slot, _)| slot)
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

    /// SIGSTOP, then waits (bounded) until every thread of the worker has stopped:
    /// its memory is frozen, and it is still alive for the registry (nobody can
    /// reclaim what it holds).
    fn stop(&mut self) {
        let raw = self.pid();
        let pid = Pid::from_raw(raw as i32).expect("a child's pid");
        kill_process(pid, Signal::STOP).expect("SIGSTOP a worker");
        // waitpid reports the stop only once the group stop is complete, i.e. once
        // every thread has stopped. Reporting a stop does not reap the child: `Child`
        // still reaps it after the SIGKILL.
        let seen = common::poll(PATIENCE, Duration::from_micros(100), || {
            match waitpid(Some(pid), WaitOptions::UNTRACED | WaitOptions::NOHANG) {
                Ok(None) => None,
                Ok(Some((_, st))) if st.stopped() => Some(Ok(())),
                Ok(Some((_, st))) => Some(Err(format!("not a stop: status {:#x}", st.as_raw()))),
                Err(e) => Some(Err(e.to_string())),
            }
        });
        match seen {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("worker {raw}: waiting for it to stop: {e}"),
            None => panic!("worker {raw} not stopped within {PATIENCE:?}"),
        }
    }

    /// SIGKILL, without reaping.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL a worker");
    }

    /// Reaps a killed worker (bounded); checks that SIGKILL is what ended it.
    /// Returns its threads' registry slots.
    fn reap_killed(mut self) -> Vec<usize> {
        let pid = self.pid();
        let st = self
            .child
            .wait_for_exit(PATIENCE)
            .unwrap_or_else(|| panic!("worker {pid} not reaped after SIGKILL"));
        assert_eq!(st.signal(), Some(libc::SIGKILL), "worker {pid}: {st}");
        self.slots().collect()
    }
}

/// Counts accumulated by the parent.
#[derive(Default, Debug)]
struct Tally {
    rounds: u64,
    kills: u64,
    verifier_owner_died: u64,
    verifications: u64,
    /// Killed worker threads, by what they were doing when they died ([`DOING`]).
    died_doing: [u64; DOING.len()],
}

impl Tally {
    /// Killed threads and what they were doing, for the report.
    fn deaths(&self) -> String {
        let parts: Vec<String> = DOING
            .iter()
            .zip(self.died_doing)
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        format!("threads killed: {}", parts.join(", "))
    }
}

/// How a victim dies.
enum Death<'a> {
    /// SIGKILL, at whatever moment it lands.
    Kill,
    /// SIGSTOP; the closure is called while every thread of the victim is stopped
    /// (still alive, memory frozen); then SIGKILL.
    StopThenKill(&'a mut dyn FnMut(&Worker)),
}

impl Death<'_> {
    fn inflict(&mut self, w: &mut Worker) {
        self.inflict_all(std::slice::from_mut(w));
    }

    /// Kills all of `ws` at once (stopped first, all of them, if so).
    fn inflict_all(&mut self, ws: &mut [Worker]) {
        if let Death::StopThenKill(frozen) = self {
            for w in ws.iter_mut() {
                w.stop();
            }
            for w in ws.iter() {
                frozen(w);
            }
        }
        for w in ws {
            w.kill();
        }
    }
}

/// Only one test of this file runs at a time: each crash test keeps every core
/// busy, and its timeouts are hang detectors, not contests for the CPU.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A crash test: its segment (counters, heartbeats, doing words and objects), its
/// watchdog, and the rounds of kills.
struct CrashRun {
    name: String,
    role: &'static str,
    rounds: u64,
    started: Instant,
    seg: Segment,
    dog: common::StallWatchdog,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl CrashRun {
    /// Waits for its turn, creates the segment and lets `place` put the objects
    /// there (nobody else has the segment's name yet).
    fn new(role: &'static str, place: impl FnOnce(&Segment)) -> Self {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let rounds = common::crash::rounds(DEFAULT_ROUNDS);
        let name = shmkit::unique_name("crash-sync-").unwrap();
        let dog = crash::watchdog("crash_sync", &name, rounds, BASE_BOUND);
        let started = Instant::now();
        let seg = SegmentOptions::posix(&name)
            .no_heap()
            .max_size(1 << 20)
            .committed(64 << 10)
            .registry_slots(SLOTS as u32)
            .create()
            .unwrap();
        // SAFETY: nobody else has the segment's name yet: nothing else can access
        // these offsets while they are written.
        unsafe { seg.place(stats_at(&seg), Default::default()) }.unwrap();
        // SAFETY: as above.
        unsafe { seg.place(beats_at(&seg), std::array::from_fn(|_| AtomicU64::new(0))) }.unwrap();
        // SAFETY: as above.
        unsafe { seg.place(doings_at(&seg), std::array::from_fn(|_| AtomicU64::new(0))) }.unwrap();
        place(&seg);
        CrashRun {
            name,
            role,
            rounds,
            started,
            seg,
            dog,
            _turn: turn,
        }
    }

    fn stats(&self) -> &Stats {
        // SAFETY: this test views each offset as one type only.
        unsafe { self.seg.resolve(stats_at(&self.seg)) }.unwrap()
    }

    /// Runs the rounds: each kills a random worker as `death` says, starts a
    /// replacement, reclaims the dead registry slots, calls `verify` (which returns
    /// the `OwnerDied` it saw) while the other workers keep running, and checks the
    /// workers' counters and progress. Then kills every worker at once and checks
    /// that only our registry slot is left.
    fn run(&self, tally: &mut Tally, mut death: Death<'_>, mut verify: impl FnMut(&str) -> u64) {
        let seg = &self.seg;
        let stats = self.stats();
        // SAFETY: this test views each offset as one type only.
        let beats = unsafe { seg.resolve(beats_at(seg)) }.unwrap();
        // SAFETY: this test views each offset as one type only.
        let doings = unsafe { seg.resolve(doings_at(seg)) }.unwrap();
        let died = |slots: Vec<usize>, tally: &mut Tally| {
            for slot in slots {
                let d = doings[slot].load(Ordering::Relaxed) as usize;
                tally.died_doing[d.min(DOING.len() - 1)] += 1;
            }
        };
        let mut workers: Vec<Worker> = (0..WORKERS)
            .map(|_| Worker::spawn(&self.name, self.role))
            .collect();
        for w in &mut workers {
            w.wait_ready(beats);
        }
        let mut rng = Rng::seeded(0);
        for round in 1..=self.rounds {
            std::thread::sleep(Duration::from_millis(5 + rng.below(46)));
            let v = rng.below(WORKERS as u64) as usize;
            death.inflict(&mut workers[v]);
            let victim = std::mem::replace(&mut workers[v], Worker::spawn(&self.name, self.role));
            died(victim.reap_killed(), tally);
            tally.kills += 1;
            // The victim's slots are dead: free them, so the registry never fills.
            seg.reclaim_dead().expect("reclaim_dead");
            // Verify while the other workers keep running (and the replacement starts).
            tally.verifier_owner_died += verify(&format!("round {round}"));
            tally.verifications += 1;
            check_worker_failures(stats, &format!("round {round}"));
            workers[v].wait_ready(beats);
            for w in &mut workers {
                w.assert_progress(beats);
            }
            tally.rounds = round;
            self.dog.tick(round);
        }

        // The end: kill them all at once.
        for w in &mut workers {
            w.assert_progress(beats);
        }
        death.inflict_all(&mut workers);
        for w in workers.drain(..) {
            died(w.reap_killed(), tally);
            tally.kills += 1;
        }
        seg.reclaim_dead().expect("reclaim_dead");
        let left: Vec<_> = seg.slot_list().unwrap();
        assert!(
            left.iter().all(|s| s.own && s.state == SlotState::Alive) && left.len() == 1,
            "registry slots left after every worker died and reclaim_dead: {left:#?}"
        );
    }

    /// Drops the segment, which must take its name with it.
    fn finish(self) {
        let name = self.name.clone();
        drop(self);
        assert!(!shm_path(&name).exists(), "segment {name} left behind");
    }
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

/// Takes every `RwLock` for writing (bounded: a timeout is a hang, e.g. a dead
/// reader's share not cleared), checks the invariant on `Ok`, repairs on
/// `OwnerDied`; then reads it, which must be a plain `Ok` (nobody died since the
/// repair). Returns the number of `OwnerDied`.
fn verify_rwlocks(seg: &Segment, ls: &[&Rw], when: &str) -> u64 {
    let mut died = 0;
    for (i, l) in ls.iter().enumerate() {
        match l.write_for(seg, VERIFY_TIMEOUT) {
            Ok(g) => {
                assert_eq!(g.a, g.b, "{when}: rwlock {i}: Ok with the invariant broken");
                assert!(
                    !g.is_inconsistent(),
                    "{when}: rwlock {i}: Ok but inconsistent"
                );
            }
            Err(LockError::OwnerDied(mut g)) => {
                assert!(
                    g.is_inconsistent(),
                    "{when}: rwlock {i}: OwnerDied, consistent"
                );
                died += 1;
                g.b = g.a;
                g.make_consistent();
            }
            Err(LockError::TimedOut) => panic!(
                "{when}: rwlock {i} not write-locked within {VERIFY_TIMEOUT:?}: a hang ({l:?})"
            ),
            Err(e) => panic!("{when}: rwlock {i}: write: {e:?}"),
        }
        match l.read_for(seg, VERIFY_TIMEOUT) {
            Ok(g) => assert_eq!(g.a, g.b, "{when}: rwlock {i}: read after repair"),
            Err(LockError::TimedOut) => panic!(
                "{when}: rwlock {i} not read-locked within {VERIFY_TIMEOUT:?}: a hang ({l:?})"
            ),
            Err(e) => panic!("{when}: rwlock {i}: read after repair: {e:?}"),
        }
    }
    died
}

/// Holds the workers back and takes all [`PERMITS`] permits (bounded: a timeout
/// means a dead holder's permits did not come back): then no worker may hold one
/// (the holders mask is empty) and one more `try_acquire` must be refused. Gives
/// them back and lets the workers go.
fn verify_semaphore(seg: &Segment, sem: &Sem, stats: &Stats, when: &str) {
    stats[GATE].store(1, Ordering::Release);
    let deadline = Instant::now() + VERIFY_TIMEOUT;
    for got in 0..PERMITS {
        match sem.acquire_until(seg, deadline) {
            Ok(()) => {}
            Err(SemaphoreError::TimedOut) => panic!(
                "{when}: only {got} of {PERMITS} permits within {VERIFY_TIMEOUT:?}: \
                 permits lost ({sem:?}, holders mask {:#x})",
                stats[HOLDERS].load(Ordering::SeqCst)
            ),
            Err(e) => panic!("{when}: acquire: {e:?}"),
        }
    }
    assert_eq!(
        sem.held_by(seg.owner_tag()),
        PERMITS,
        "{when}: our ledger entry"
    );
    assert_eq!(
        stats[HOLDERS].load(Ordering::SeqCst),
        0,
        "{when}: a worker holds a permit while we hold all {PERMITS}"
    );
    assert_eq!(
        sem.try_acquire(seg),
        Err(SemaphoreError::WouldBlock),
        "{when}: permit {} of {PERMITS}",
        PERMITS + 1
    );
    assert_eq!(sem.available(), 0, "{when}: {sem:?}");
    sem.release(seg, PERMITS).expect("give the permits back");
    stats[GATE].store(0, Ordering::Release);
}

/// Fails at once on anything a worker counted as wrong.
fn check_worker_failures(stats: &Stats, when: &str) {
    let nr = stats[NOT_RECOVERABLE].load(Ordering::Relaxed);
    let bad = stats[VIOLATIONS].load(Ordering::Relaxed);
    let other = stats[OTHER].load(Ordering::Relaxed);
    assert_eq!(
        (nr, bad, other),
        (0, 0, 0),
        "{when}: workers saw (NotRecoverable, broken invariants, other errors)"
    );
}

#[test]
fn killed_mutex_holders_are_recovered_and_the_invariant_holds() {
    let run = CrashRun::new("mutex", |seg| {
        for i in 0..MUTEXES {
            // SAFETY: nobody else has the segment's name yet: nothing else can
            // access these offsets while they are written.
            unsafe { seg.place(mutex_at(seg, i), Mutex::new(Pair::default())) }.unwrap();
        }
    });
    let (seg, stats) = (&run.seg, run.stats());
    let ms = mutexes(seg);
    let mut tally = Tally::default();
    run.run(&mut tally, Death::Kill, |when| verify(seg, &ms, when));

    // Every mutex must be lockable and, once repaired, consistent.
    tally.verifier_owner_died += verify(seg, &ms, "final repair");
    let final_died = verify(seg, &ms, "final check");
    assert_eq!(
        final_died, 0,
        "OwnerDied again after every mutex was repaired"
    );
    for (i, m) in ms.iter().enumerate() {
        assert!(!m.is_locked(), "mutex {i} still locked: {m:?}");
        let g = m.try_lock(seg).expect("a repaired, free mutex");
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
        run.started.elapsed().as_secs_f64()
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
    run.finish();
}

#[test]
fn killed_rwlock_readers_and_writers_are_recovered() {
    let run = CrashRun::new("rwlock", |seg| {
        for i in 0..RWLOCKS {
            // SAFETY: nobody else has the segment's name yet: nothing else can
            // access these offsets while they are written.
            unsafe { seg.place(rwlock_at(seg, i), RwLock::new(Pair::default())) }.unwrap();
        }
    });
    let (seg, stats) = (&run.seg, run.stats());
    let ls = rwlocks(seg);
    let mut tally = Tally::default();
    run.run(&mut tally, Death::Kill, |when| {
        verify_rwlocks(seg, &ls, when)
    });

    // Every lock must be usable and, once repaired, consistent.
    tally.verifier_owner_died += verify_rwlocks(seg, &ls, "final repair");
    let final_died = verify_rwlocks(seg, &ls, "final check");
    assert_eq!(
        final_died, 0,
        "OwnerDied again after every lock was repaired"
    );
    for (i, l) in ls.iter().enumerate() {
        let g = l.try_write(seg).expect("a repaired, free lock: try_write");
        assert!(g.a == g.b && !g.is_inconsistent(), "rwlock {i}: {g:?}");
        drop(g);
        let r1 = l.try_read(seg).expect("a repaired, free lock: try_read");
        assert!(r1.a == r1.b && !r1.is_inconsistent(), "rwlock {i}");
    }
    check_worker_failures(stats, "the end");

    let writer_died = stats[OWNER_DIED].load(Ordering::Relaxed);
    let reader_died = stats[READ_OWNER_DIED].load(Ordering::Relaxed);
    let total_died = writer_died + tally.verifier_owner_died;
    println!(
        "crash_sync rwlock: {} rounds, {} kills ({}), writers' OwnerDied {} by workers + {} \
         by the verifier, readers' OwnerDied {}, {} writes, {} reads, {} WouldBlock, \
         {} TimedOut, {} verifications, {:.1} s",
        tally.rounds,
        tally.kills,
        tally.deaths(),
        writer_died,
        tally.verifier_owner_died,
        reader_died,
        stats[OPS].load(Ordering::Relaxed),
        stats[READS].load(Ordering::Relaxed),
        stats[WOULD_BLOCK].load(Ordering::Relaxed),
        stats[TIMED_OUT].load(Ordering::Relaxed),
        tally.verifications,
        run.started.elapsed().as_secs_f64()
    );
    assert!(
        total_died > 0,
        "no dead writer recovered in {} kills: the test tested nothing",
        tally.kills
    );
    assert!(
        tally.died_doing[READING as usize] > 0,
        "no thread killed holding a read lock in {} kills ({})",
        tally.kills,
        tally.deaths()
    );
    // A dead writer's lock is taken over by exactly one writer (one that gives up
    // while draining readers puts the lock back as it found it): at most one
    // OwnerDied per killed thread, as for the mutex.
    assert!(
        total_died <= tally.kills * THREADS as u64,
        "{total_died} writers' OwnerDied for {} killed threads",
        tally.kills * THREADS as u64
    );
    drop(ls);
    run.finish();
}

#[test]
fn killed_semaphore_holders_give_their_permits_back() {
    let run = CrashRun::new("semaphore", |seg| {
        // SAFETY: nobody else has the segment's name yet: nothing else can access
        // this offset while it is written.
        unsafe { seg.place(semaphore_at(seg), Sem::with_ledger(PERMITS)) }.unwrap();
    });
    let (seg, stats) = (&run.seg, run.stats());
    // SAFETY: this test views each offset as one type only.
    let sem = unsafe { seg.resolve(semaphore_at(seg)) }.unwrap();
    let mut tally = Tally::default();
    // Permits the ledger records for the victims' threads when they are killed, and
    // how many of those threads held one.
    let (mut permits_of_dead, mut dead_holders, mut dead_bits) = (0u64, 0u64, 0u64);
    let mut frozen = |w: &Worker| {
        let mut mask = 0u64;
        for slot in w.slots() {
            let info = seg.slot_info(slot as u32).expect("slot_info");
            assert_eq!(info.pid, w.pid(), "slot {slot}: {info:?}");
            let tag = OwnerTag::new(slot as u32, info.incarnation).expect("a tag");
            let held = sem.held_by(tag);
            assert!(
                held <= 1,
                "slot {slot} holds {held} permits: each thread takes one"
            );
            permits_of_dead += u64::from(held);
            dead_holders += u64::from(held > 0);
            mask |= 1 << slot;
        }
        // The victim is frozen and alive: nobody can reclaim its permits yet, so its
        // holder bits go before its permits can be anyone else's.
        let before = stats[HOLDERS].fetch_and(!mask, Ordering::SeqCst);
        dead_bits += u64::from((before & mask).count_ones());
    };
    run.run(&mut tally, Death::StopThenKill(&mut frozen), |when| {
        verify_semaphore(seg, sem, stats, when);
        0
    });

    // Every worker is dead: all the permits must come back to us, and no more.
    verify_semaphore(seg, sem, stats, "the end");
    assert_eq!(sem.available(), PERMITS, "{sem:?}");
    check_worker_failures(stats, "the end");

    let most = stats[MOST_HOLDERS].load(Ordering::Relaxed);
    println!(
        "crash_sync semaphore: {} rounds, {} kills ({}), {} permits held by killed threads \
         ({} threads; {} counted in the holders mask) came back, {} acquisitions, at most \
         {most} of {PERMITS} holders at once, {} WouldBlock, {} TimedOut, {} verifications, \
         {:.1} s",
        tally.rounds,
        tally.kills,
        tally.deaths(),
        permits_of_dead,
        dead_holders,
        dead_bits,
        stats[OPS].load(Ordering::Relaxed),
        stats[WOULD_BLOCK].load(Ordering::Relaxed),
        stats[TIMED_OUT].load(Ordering::Relaxed),
        tally.verifications,
        run.started.elapsed().as_secs_f64()
    );
    assert!(
        permits_of_dead > 0,
        "no thread killed holding a permit in {} kills: the test tested nothing",
        tally.kills
    );
    assert!(most <= u64::from(PERMITS), "{most} holders at once");
    run.finish();
}
