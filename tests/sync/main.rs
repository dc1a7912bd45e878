//! Robust process-shared sync: smoke, edge and stress tests, timeouts, owner death,
//! corrupt lock words, and mutual exclusion across threads and processes, for
//! `Mutex`, `RwLock`, `Semaphore` (plain and with a ledger), `Condvar` and `Event`.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

#[path = "../common/mod.rs"]
mod common;

mod condvar;
mod event;
mod mutex;
mod rwlock;
mod semaphore;

use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmkit::sync::{
    Condvar, Event, EventKind, LockError, Mutex, MutexGuard, RwLock, Semaphore, SemaphoreError,
};
use shmkit::{Offset, Segment, SegmentOptions, ShmSafe, ShmShared};

/// Data a mutex protects: the invariant is `a == b`, broken between the two
/// writes of an update.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
struct Pair {
    a: u64,
    b: u64,
}
// SAFETY: repr(C), two u64, no padding, every bit pattern valid.
unsafe impl ShmSafe for Pair {}

fn heap() -> Segment {
    SegmentOptions::heap()
        .no_heap()
        .max_size(4 << 20)
        .committed(1 << 20)
        .create()
        .unwrap()
}

/// Places a `Mutex<T>` at the `index`-th 64-byte cell of the user region.
fn mutex_at<T: ShmSafe + Send>(seg: &Segment, index: u64, value: T) -> &Mutex<T> {
    assert!(size_of::<Mutex<T>>() <= 64);
    let at = Offset::<Mutex<T>>::new(seg.user_offset() + 64 * index);
    // SAFETY: each test places each cell once, before any other handle uses it.
    unsafe { seg.place(at, Mutex::new(value)) }.unwrap()
}

/// The same mutex seen through another handle (another process would resolve the
/// same offset).
fn mutex_in<T: ShmSafe + Send>(seg: &Segment, index: u64) -> &Mutex<T> {
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.resolve(Offset::<Mutex<T>>::new(seg.user_offset() + 64 * index)) }.unwrap()
}

/// Fails the test instead of hanging.
fn watchdog(what: &'static str) -> common::Watchdog {
    common::watchdog(what, Duration::from_secs(120))
}

const ROLE: &str = "SHMKIT_SYNC_TEST_ROLE";
const NAME: &str = "SHMKIT_SYNC_TEST_NAME";

const PER_CHILD: u64 = 20_000;

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let seg = SegmentOptions::posix(&std::env::var(NAME).unwrap())
        .no_heap()
        .open()
        .unwrap();
    let m = mutex_in::<Pair>(&seg, 0);
    match role.as_str() {
        "count" => {
            for _ in 0..PER_CHILD {
                let mut g = m.lock(&seg).unwrap();
                assert_eq!(g.a, g.b, "two holders at once");
                g.a += 1;
                g.b += 1;
            }
            println!("{}", common::DONE_MARKER);
        }
        "hold" => {
            let mut g = m.lock(&seg).unwrap();
            g.a += 1; // half-way through an update
            println!("holding");
            std::thread::sleep(Duration::from_secs(600));
        }
        other => panic!("unknown role {other}"),
    }
}

fn child(role: &str, name: &str) -> common::LineChild {
    let mut cmd = common::child_main_command();
    cmd.env(ROLE, role).env(NAME, name);
    common::LineChild::spawn(cmd, Stdio::null())
}

fn expect_line(k: &common::LineChild, marker: &str) {
    k.next_after(marker, common::PATIENCE)
        .unwrap_or_else(|e| panic!("child did not print {marker:?}: {e}"));
}

fn finish(mut k: common::LineChild) {
    let st = k.wait_for_exit(common::PATIENCE).expect("child hung");
    assert!(st.success(), "child failed: {st:?}");
}

fn posix_with_mutex() -> (Segment, String) {
    let name = shmkit::unique_name("sync-").unwrap();
    let seg = SegmentOptions::posix(&name)
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .create()
        .unwrap();
    mutex_at(&seg, 0, Pair::default());
    (seg, name)
}

/// The `index`-th 64-byte cell of the user region, as an offset to a `T` (objects
/// larger than a cell span several).
fn cell<T>(seg: &Segment, index: u64) -> Offset<T> {
    Offset::new(seg.user_offset() + 64 * index)
}

/// Places `value` at the `index`-th cell.
fn place<T: ShmShared>(seg: &Segment, index: u64, value: T) -> &T {
    // SAFETY: each test places each object once, before any other handle uses it.
    unsafe { seg.place(cell(seg, index), value) }.unwrap()
}

/// The object at the `index`-th cell, seen through `seg` (another process resolves
/// the same cell).
fn at<T: ShmShared>(seg: &Segment, index: u64) -> &T {
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.resolve(cell(seg, index)) }.unwrap()
}

/// Where [`everything`] puts each object, in cells.
const RW: u64 = 0; // RwLock<Pair>, 17 cells
const SEM: u64 = 20; // plain Semaphore with PERMITS permits
const LSEM: u64 = 22; // LedgerSem with PERMITS permits, 17 cells
const INSIDE: u64 = 40; // AtomicU32: permits out right now, as their holders count them
const MOST: u64 = 41; // AtomicU32: the most permits ever out at once
const WOKEN: u64 = 42; // AtomicU32: event waiters that returned true
const CV_MUTEX: u64 = 43; // Mutex<Pair> for the condition variable
const CV: u64 = 44; // Condvar
const AUTO: u64 = 45; // Event, auto-reset
const MANUAL: u64 = 46; // Event, manual-reset

type Rw = RwLock<Pair>;
/// A semaphore with a ledger entry for every slot of a default (128-slot) registry.
type LedgerSem = Semaphore<128>;
const PERMITS: u32 = 2;

/// Places every object of the layout above in `seg`, fresh.
fn everything(seg: &Segment) {
    // Checked at run time: under `cfg(shmkit_loom)` (compiled, never run) the sizes differ.
    assert!(size_of::<Rw>() as u64 <= 64 * (SEM - RW));
    assert!(size_of::<Semaphore>() as u64 <= 64 * (LSEM - SEM));
    assert!(size_of::<LedgerSem>() as u64 <= 64 * (INSIDE - LSEM));
    assert!(size_of::<Condvar>() <= 64 && size_of::<Event>() <= 64);
    place(seg, RW, Rw::new(Pair::default()));
    place(seg, SEM, Semaphore::new(PERMITS));
    place(seg, LSEM, LedgerSem::with_ledger(PERMITS));
    for c in [INSIDE, MOST, WOKEN] {
        place(seg, c, AtomicU32::new(0));
    }
    mutex_at(seg, CV_MUTEX, Pair::default());
    place(seg, CV, Condvar::new());
    place(seg, AUTO, Event::new(EventKind::AutoReset));
    place(seg, MANUAL, Event::new(EventKind::ManualReset));
}

fn heap_with_everything() -> Segment {
    let seg = heap();
    everything(&seg);
    seg
}

fn clones(seg: &Segment, n: usize) -> Vec<Segment> {
    (0..n).map(|_| seg.try_clone().unwrap()).collect()
}

/// Locks, accepting `OwnerDied` (for data that needs no repair: a test where a
/// killed process may have held the mutex at the moment it died).
fn lock_repairing<'a, T>(m: &'a Mutex<T>, cx: &'a Segment) -> MutexGuard<'a, T> {
    match m.lock(cx) {
        Ok(g) => g,
        Err(LockError::OwnerDied(mut g)) => {
            g.make_consistent();
            g
        }
        Err(e) => panic!("{e}"),
    }
}

fn spin(n: u32) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

const KIN_ROLE: &str = "SHMKIT_SYNC_TEST_KIN_ROLE";
const KIN_MAIN: &str = "child_main_for_the_other_primitives";

/// Read or write locks a child takes in `rw-count`; one in four is a write.
const RW_ROUNDS: u64 = 4000;
const RW_WRITES: u64 = RW_ROUNDS / 4;

/// Permits a child takes and returns in `sem-count` and `lsem-count`.
const SEM_ROUNDS: u64 = 3000;
/// Values handed from the parent to a `cv-consume` child.
const HANDOFFS: u64 = 300;

/// Child entry point for the `RwLock`, `Semaphore`, `Condvar` and `Event` tests: opens
/// the segment named by `NAME`, laid out by [`everything`], and plays `KIN_ROLE`.
#[test]
#[ignore = "child entry point"]
fn child_main_for_the_other_primitives() {
    let Ok(role) = std::env::var(KIN_ROLE) else {
        return;
    };
    let seg = SegmentOptions::posix(&std::env::var(NAME).unwrap())
        .no_heap()
        .open()
        .unwrap();
    let forever = || std::thread::sleep(Duration::from_secs(600));
    match role.as_str() {
        "rw-count" => {
            rwlock::rw_count(&seg);
            println!("{}", common::DONE_MARKER);
        }
        "rw-hold-write" => {
            let mut g = at::<Rw>(&seg, RW).write(&seg).unwrap();
            g.a += 1; // half-way through an update
            println!("holding");
            forever();
        }
        "rw-hold-read" => {
            let _g = at::<Rw>(&seg, RW).read(&seg).unwrap();
            println!("holding");
            forever();
        }
        "sem-count" => {
            semaphore::use_permits::<0>(&seg, SEM, SEM_ROUNDS);
            println!("{}", common::DONE_MARKER);
        }
        "lsem-count" => {
            semaphore::use_permits::<128>(&seg, LSEM, SEM_ROUNDS);
            println!("{}", common::DONE_MARKER);
        }
        "rw-wait-write" => {
            println!("claiming");
            let _ = at::<Rw>(&seg, RW).write(&seg);
            println!("{}", common::DONE_MARKER);
        }
        "sem-wait" => {
            println!("waiting");
            at::<Semaphore>(&seg, SEM).acquire(&seg).unwrap();
            println!("{}", common::DONE_MARKER);
        }
        "lsem-hold" => {
            let s = at::<LedgerSem>(&seg, LSEM);
            for _ in 0..PERMITS {
                s.acquire(&seg).unwrap();
            }
            println!("holding");
            forever();
        }
        "cv-consume" => {
            condvar::consume(&seg, HANDOFFS);
            println!("{}", common::DONE_MARKER);
        }
        "cv-wait" => {
            let (m, cv) = (at::<Mutex<Pair>>(&seg, CV_MUTEX), at::<Condvar>(&seg, CV));
            let g = m.lock(&seg).unwrap();
            println!("waiting");
            let _ = cv.wait_while(g, &seg, |p| p.a == 0);
            println!("{}", common::DONE_MARKER);
        }
        "event-wait-auto" | "event-wait-manual" => {
            let e = at::<Event>(&seg, if role.ends_with("auto") { AUTO } else { MANUAL });
            println!("waiting");
            let got = e.wait_for(common::PATIENCE);
            if got {
                at::<AtomicU32>(&seg, WOKEN).fetch_add(1, Ordering::SeqCst);
            }
            println!("woken {got}");
        }
        "event-sleep" => {
            println!("waiting");
            at::<Event>(&seg, AUTO).wait();
            println!("{}", common::DONE_MARKER);
        }
        other => panic!("unknown role {other}"),
    }
}

fn kin(role: &str, name: &str) -> common::LineChild {
    let mut cmd = common::self_test_command(KIN_MAIN);
    cmd.env(KIN_ROLE, role).env(NAME, name);
    common::LineChild::spawn(cmd, Stdio::null())
}

fn posix_with_everything() -> (Segment, String) {
    let name = shmkit::unique_name("sync-kin-").unwrap();
    let seg = SegmentOptions::posix(&name)
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .create()
        .unwrap();
    everything(&seg);
    (seg, name)
}
