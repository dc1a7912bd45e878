//! Robust process-shared sync: smoke, edge and stress tests, timeouts, owner death,
//! corrupt lock words, and mutual exclusion across threads and processes, for
//! `Mutex`, `RwLock`, `Semaphore` (plain and with a ledger), `Condvar` and `Event`.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

mod common;

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
fn watchdog(what: &'static str) -> impl Drop {
    struct Dog(std::sync::mpsc::Sender<()>);
    impl Drop for Dog {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(120)).is_err() {
            eprintln!("watchdog: {what} hung for 120 s");
            std::process::abort();
        }
    });
    Dog(tx)
}

#[test]
fn a_mutex_locks_and_unlocks() {
    let seg = heap();
    let m = mutex_at(&seg, 0, Pair::default());
    assert!(!m.is_locked());
    {
        let mut g = m.lock(&seg).unwrap();
        assert!(m.is_locked());
        assert!(!g.is_inconsistent());
        g.a += 1;
        g.b += 1;
    }
    assert!(!m.is_locked());
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: 1, b: 1 });
}

#[test]
fn a_held_mutex_refuses_try_lock_and_times_out() {
    let seg = heap();
    let peer = seg.try_clone().unwrap();
    let m = mutex_at(&seg, 0, 0u64);
    let held = m.lock(&seg).unwrap();
    assert!(matches!(m.try_lock(&peer), Err(LockError::WouldBlock)));
    assert!(matches!(
        m.lock_for(&peer, Duration::ZERO),
        Err(LockError::TimedOut)
    ));
    let t = Instant::now();
    assert!(matches!(
        m.lock_for(&peer, Duration::from_millis(30)),
        Err(LockError::TimedOut)
    ));
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert!(matches!(
        m.lock_until(&peer, Instant::now()),
        Err(LockError::TimedOut)
    ));
    drop(held);
    assert!(m.try_lock(&peer).is_ok());
    assert!(m.lock_for(&peer, Duration::ZERO).is_ok());
    // A huge timeout means no deadline, not a panic.
    assert!(m.lock_for(&peer, Duration::MAX).is_ok());
}

#[test]
fn a_waiter_is_woken_by_the_unlock() {
    let seg = heap();
    let peer = seg.try_clone().unwrap();
    let m = mutex_at(&seg, 0, 0u64);
    let held = m.lock(&seg).unwrap();
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let mut g = m.lock(&peer).unwrap();
            *g += 1;
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        w.join().unwrap();
    });
    assert_eq!(*m.lock(&seg).unwrap(), 1);
}

#[test]
fn threads_with_their_own_handles_exclude_each_other() {
    let _dog = watchdog("threads_with_their_own_handles_exclude_each_other");
    let seg = heap();
    let m = mutex_at(&seg, 0, Pair::default());
    let handles: Vec<Segment> = (0..4).map(|_| seg.try_clone().unwrap()).collect();
    const N: u64 = 20_000;
    std::thread::scope(|s| {
        for h in &handles {
            s.spawn(move || {
                let m = mutex_in::<Pair>(h, 0);
                for i in 0..N {
                    let mut g = match i % 3 {
                        0 => m.lock(h).unwrap(),
                        1 => m.lock_for(h, Duration::from_secs(10)).unwrap(),
                        _ => loop {
                            match m.try_lock(h) {
                                Ok(g) => break g,
                                Err(LockError::WouldBlock) => std::hint::spin_loop(),
                                Err(e) => panic!("{e}"),
                            }
                        },
                    };
                    assert_eq!(g.a, g.b, "two holders at once");
                    g.a += 1;
                    std::hint::spin_loop();
                    g.b += 1;
                }
            });
        }
    });
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: 4 * N, b: 4 * N });
}

#[test]
fn threads_sharing_one_handle_exclude_each_other() {
    let _dog = watchdog("threads_sharing_one_handle_exclude_each_other");
    let seg = heap();
    let m = mutex_at(&seg, 0, Pair::default());
    const N: u64 = 20_000;
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..N {
                    let mut g = m.lock(&seg).unwrap();
                    assert_eq!(g.a, g.b, "two holders at once");
                    g.a += 1;
                    g.b += 1;
                }
            });
        }
    });
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: 4 * N, b: 4 * N });
}

#[test]
fn a_dead_holder_gives_exactly_one_waiter_owner_died() {
    let _dog = watchdog("a_dead_holder_gives_exactly_one_waiter_owner_died");
    let seg = heap();
    let holder = seg.try_clone().unwrap();
    let m = mutex_at(&seg, 0, Pair::default());
    let mut g = m.lock(&holder).unwrap();
    g.a = 5; // half-way through an update...
    std::mem::forget(g);
    let waiters: Vec<Segment> = (0..3).map(|_| seg.try_clone().unwrap()).collect();
    let died = AtomicU32::new(0);
    let ok = AtomicU32::new(0);
    std::thread::scope(|s| {
        for w in &waiters {
            let (died, ok) = (&died, &ok);
            s.spawn(move || {
                let m = mutex_in::<Pair>(w, 0);
                match m.lock_for(w, Duration::from_secs(20)) {
                    Ok(g) => {
                        assert_eq!(g.a, g.b, "repaired before anyone else got it");
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(LockError::OwnerDied(mut g)) => {
                        assert!(g.is_inconsistent());
                        g.b = g.a; // repair
                        g.make_consistent();
                        died.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("{e}"),
                }
            });
        }
        std::thread::sleep(Duration::from_millis(20));
        holder.simulate_crash(); // ...and dies
    });
    assert_eq!(died.load(Ordering::Relaxed), 1);
    assert_eq!(ok.load(Ordering::Relaxed), 2);
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: 5, b: 5 });
}

#[test]
fn an_unrepaired_mutex_becomes_not_recoverable() {
    let seg = heap();
    let holder = seg.try_clone().unwrap();
    let m = mutex_at(&seg, 0, 0u64);
    std::mem::forget(m.lock(&holder).unwrap());
    holder.simulate_crash();
    let g = m.lock(&seg).unwrap_err().into_owner_died().unwrap();
    drop(g); // no make_consistent
    for _ in 0..3 {
        assert!(matches!(m.lock(&seg), Err(LockError::NotRecoverable)));
        assert!(matches!(m.try_lock(&seg), Err(LockError::NotRecoverable)));
        assert!(matches!(
            m.lock_for(&seg, Duration::from_millis(1)),
            Err(LockError::NotRecoverable)
        ));
    }
}

#[test]
fn a_holder_that_panics_gives_the_next_locker_owner_died() {
    let seg = heap();
    let m = mutex_at(&seg, 0, Pair::default());
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            let mut g = m.lock(&seg).unwrap();
            g.a += 1;
            panic!("holder panics mid-update");
        })
        .join()
    });
    assert!(r.is_err());
    let mut g = m.lock(&seg).unwrap_err().into_owner_died().unwrap();
    assert_eq!(*g, Pair { a: 1, b: 0 });
    g.b = g.a;
    g.make_consistent();
    drop(g);
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: 1, b: 1 });
}

#[test]
fn a_detached_holder_counts_as_dead() {
    let seg = heap();
    let holder = seg.try_clone().unwrap();
    let m = mutex_at(&seg, 0, 0u64);
    std::mem::forget(m.lock(&holder).unwrap());
    assert!(holder.detach());
    assert!(m.lock(&seg).unwrap_err().into_owner_died().is_some());
}

#[test]
fn corrupt_lock_words_are_taken_over_never_hung_on() {
    let _dog = watchdog("corrupt_lock_words_are_taken_over_never_hung_on");
    let seg = heap();
    let word = Offset::<u64>::new(seg.user_offset());
    let m = mutex_at(&seg, 0, 0u64);
    let garbage = [
        1u64,                  // incarnation 1 in slot 0: not our incarnation
        (0xfffe << 46) | 7,    // slot out of range of a 128-slot registry
        0x3fff_ffff_ffff_ffff, // every tag bit set
        1 << 62,               // WAITERS alone: names nobody
        (1 << 63) | (3 << 46), // inconsistent, names nobody
        u64::MAX,              // everything
    ];
    for g in garbage {
        // SAFETY: this test views each offset as one type only.
        unsafe { seg.write(word, g) }.unwrap();
        match m.lock_for(&seg, Duration::from_secs(5)) {
            Err(LockError::OwnerDied(mut guard)) => guard.make_consistent(),
            other => panic!("word {g:#x}: {other:?}"),
        }
        assert!(!m.is_locked());
        assert!(m.try_lock(&seg).is_ok());
    }
    // The one special word: not recoverable.
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.write(word, 1 << 63) }.unwrap();
    assert!(matches!(m.lock(&seg), Err(LockError::NotRecoverable)));
}

// ------------------------------------------------------------- processes

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

#[test]
fn processes_exclude_each_other() {
    let _dog = watchdog("processes_exclude_each_other");
    let (seg, name) = posix_with_mutex();
    let kids: Vec<_> = (0..3).map(|_| child("count", &name)).collect();
    // The parent competes too.
    let m = mutex_in::<Pair>(&seg, 0);
    for _ in 0..PER_CHILD {
        let mut g = m.lock(&seg).unwrap();
        assert_eq!(g.a, g.b, "two holders at once");
        g.a += 1;
        g.b += 1;
    }
    for k in kids {
        expect_line(&k, common::DONE_MARKER);
        finish(k);
    }
    let total = 4 * PER_CHILD;
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: total, b: total });
}

#[test]
fn a_sigkilled_holder_process_gives_owner_died_promptly() {
    let _dog = watchdog("a_sigkilled_holder_process_gives_owner_died_promptly");
    let (seg, name) = posix_with_mutex();
    let m = mutex_in::<Pair>(&seg, 0);
    for round in 0..5 {
        let mut k = child("hold", &name);
        expect_line(&k, "holding");
        assert!(matches!(m.try_lock(&seg), Err(LockError::WouldBlock)));
        let killed = Instant::now();
        k.kill().unwrap();
        let mut g = match m.lock_for(&seg, Duration::from_secs(10)) {
            Err(LockError::OwnerDied(g)) => g,
            other => panic!("round {round}: {other:?}"),
        };
        // Reported within a bound (generous: a loaded CI machine; the latency
        // example measures the real distribution).
        assert!(killed.elapsed() < Duration::from_secs(5));
        assert_eq!(g.a, g.b + 1, "the dead holder was half-way");
        g.b = g.a;
        g.make_consistent();
        drop(g);
        assert!(m.try_lock(&seg).is_ok());
        seg.reclaim_dead().unwrap();
    }
}

// ------------------------------------------------- the other primitives: layout

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

// ---------------------------------------------------------------- RwLock

#[test]
fn an_rwlock_admits_many_readers_at_once() {
    let _dog = watchdog("an_rwlock_admits_many_readers_at_once");
    let seg = heap_with_everything();
    let l = at::<Rw>(&seg, RW);
    let readers = clones(&seg, 4);
    let writer = seg.try_clone().unwrap();
    // Every handle, and one of them twice (its shares add up).
    let guards: Vec<_> = readers
        .iter()
        .chain(&readers[..1])
        .map(|h| l.read(h).unwrap())
        .collect();
    for g in &guards {
        assert!(!g.is_inconsistent());
        assert_eq!(**g, Pair::default());
    }
    assert!(l.try_read(&seg).is_ok());
    assert!(matches!(l.try_write(&writer), Err(LockError::WouldBlock)));
    drop(guards);
    assert!(l.try_write(&writer).is_ok());

    // Threads with their own handles, all inside at once: each keeps its read lock
    // until every other one has its own.
    let inside = AtomicU32::new(0);
    std::thread::scope(|s| {
        for h in &readers {
            let inside = &inside;
            s.spawn(move || {
                let l = at::<Rw>(h, RW);
                let g = l.read_for(h, Duration::from_secs(10)).unwrap();
                inside.fetch_add(1, Ordering::SeqCst);
                common::eventually("every reader inside at once", || {
                    inside.load(Ordering::SeqCst) == 4
                });
                assert_eq!(g.a, g.b);
            });
        }
    });
}

#[test]
fn an_rwlock_writer_excludes_readers_and_writers() {
    let seg = heap_with_everything();
    let peer = seg.try_clone().unwrap();
    let l = at::<Rw>(&seg, RW);
    let mut w = l.write(&seg).unwrap();
    assert!(!w.is_inconsistent());
    w.a = 1;
    assert!(matches!(l.try_read(&peer), Err(LockError::WouldBlock)));
    assert!(matches!(l.try_write(&peer), Err(LockError::WouldBlock)));
    assert!(matches!(
        l.read_for(&peer, Duration::ZERO),
        Err(LockError::TimedOut)
    ));
    assert!(matches!(
        l.write_for(&peer, Duration::ZERO),
        Err(LockError::TimedOut)
    ));
    let t = Instant::now();
    assert!(matches!(
        l.read_for(&peer, Duration::from_millis(30)),
        Err(LockError::TimedOut)
    ));
    assert!(t.elapsed() >= Duration::from_millis(30));
    let t = Instant::now();
    assert!(matches!(
        l.write_for(&peer, Duration::from_millis(30)),
        Err(LockError::TimedOut)
    ));
    assert!(t.elapsed() >= Duration::from_millis(30));
    // Not reentrant: the writer's own handle is refused too.
    assert!(matches!(l.try_write(&seg), Err(LockError::WouldBlock)));
    assert!(matches!(l.try_read(&seg), Err(LockError::WouldBlock)));
    w.b = 1;
    drop(w);
    assert_eq!(*l.try_read(&peer).unwrap(), Pair { a: 1, b: 1 });
    // A huge timeout means no deadline, not a panic.
    assert!(l.write_for(&peer, Duration::MAX).is_ok());
    assert!(l.read_for(&peer, Duration::MAX).is_ok());
}

#[test]
fn a_reader_holds_off_writers_and_a_timed_out_writer_lets_readers_back_in() {
    let seg = heap_with_everything();
    let [writer, late] = [0, 1].map(|_| seg.try_clone().unwrap());
    let l = at::<Rw>(&seg, RW);
    let r = l.read(&seg).unwrap();
    assert!(matches!(l.try_write(&writer), Err(LockError::WouldBlock)));
    assert!(matches!(
        l.write_for(&writer, Duration::ZERO),
        Err(LockError::TimedOut)
    ));
    assert!(matches!(
        l.write_for(&writer, Duration::from_millis(30)),
        Err(LockError::TimedOut)
    ));
    // The writer that gave up withdrew its claim: readers get in at once.
    let r2 = l.try_read(&late).unwrap();
    assert!(!r2.is_inconsistent());
    drop((r, r2));
    assert!(!l.try_write(&writer).unwrap().is_inconsistent());
}

#[test]
fn rwlock_waiters_are_woken_by_the_release() {
    let _dog = watchdog("rwlock_waiters_are_woken_by_the_release");
    let seg = heap_with_everything();
    let [peer, third] = [0, 1].map(|_| seg.try_clone().unwrap());
    let l = at::<Rw>(&seg, RW);
    // A writer waits for a reader.
    let r = l.read(&seg).unwrap();
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let mut g = l.write(&peer).unwrap();
            g.a += 1;
            g.b += 1;
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(r);
        w.join().unwrap();
    });
    // Readers wait for a writer.
    let w = l.write(&seg).unwrap();
    std::thread::scope(|s| {
        let readers: Vec<_> = [&peer, &third]
            .into_iter()
            .map(|h| s.spawn(move || *l.read(h).unwrap()))
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        drop(w);
        for r in readers {
            assert_eq!(r.join().unwrap(), Pair { a: 1, b: 1 });
        }
    });
}

#[test]
fn a_waiting_writer_blocks_new_readers() {
    let _dog = watchdog("a_waiting_writer_blocks_new_readers");
    let seg = heap_with_everything();
    let [writer, late] = [0, 1].map(|_| seg.try_clone().unwrap());
    let l = at::<Rw>(&seg, RW);
    let early = l.read(&seg).unwrap();
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let mut g = l.write_for(&writer, Duration::from_secs(20)).unwrap();
            g.a = 7;
            g.b = 7;
        });
        // Once the writer waits, a new reader is refused although only a reader
        // holds the lock...
        common::eventually("the writer to wait", || {
            matches!(l.try_read(&late), Err(LockError::WouldBlock))
        });
        assert!(matches!(
            l.read_for(&late, Duration::from_millis(30)),
            Err(LockError::TimedOut)
        ));
        // ...while the reader that was in keeps reading, and lets the writer in.
        assert_eq!(*early, Pair::default());
        drop(early);
        w.join().unwrap();
    });
    assert_eq!(*l.try_read(&late).unwrap(), Pair { a: 7, b: 7 });
}

#[test]
fn a_dead_writer_gives_readers_owner_died_until_a_writer_repairs() {
    let seg = heap_with_everything();
    let [holder, reader] = [0, 1].map(|_| seg.try_clone().unwrap());
    let l = at::<Rw>(&seg, RW);
    let mut g = l.write(&holder).unwrap();
    g.a = 5; // half-way through an update...
    std::mem::forget(g);
    holder.simulate_crash(); // ...and dies
    // Every reader, every time, until a writer repairs: readers cannot.
    for _ in 0..3 {
        let attempts = [
            l.read(&reader),
            l.try_read(&seg),
            l.read_for(&reader, Duration::from_secs(5)),
        ];
        for r in attempts {
            let g = r.unwrap_err().into_owner_died().expect("OwnerDied");
            assert!(g.is_inconsistent());
            assert_eq!(*g, Pair { a: 5, b: 0 });
        }
    }
    let mut w = l
        .write_for(&seg, Duration::from_secs(5))
        .unwrap_err()
        .into_owner_died()
        .expect("the writer gets OwnerDied too");
    assert!(w.is_inconsistent());
    w.b = w.a;
    w.make_consistent();
    assert!(!w.is_inconsistent());
    drop(w);
    let r = l.try_read(&reader).unwrap();
    assert!(!r.is_inconsistent());
    assert_eq!(*r, Pair { a: 5, b: 5 });
    drop(r);
    assert!(!l.try_write(&reader).unwrap().is_inconsistent());
}

#[test]
fn waiters_on_a_writer_that_dies_get_in_and_the_next_writer_gets_owner_died() {
    let _dog = watchdog("waiters_on_a_writer_that_dies_get_in_and_the_next_writer_gets_owner_died");
    let seg = heap_with_everything();
    let [holder, reader, writer] = [0, 1, 2].map(|_| seg.try_clone().unwrap());
    let l = at::<Rw>(&seg, RW);
    let mut g = l.write(&holder).unwrap();
    g.a = 3;
    std::mem::forget(g);
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let mut g = l
                .write_for(&writer, Duration::from_secs(20))
                .unwrap_err()
                .into_owner_died()
                .expect("the next writer gets OwnerDied");
            assert!(g.is_inconsistent());
            g.b = g.a;
            g.make_consistent();
        });
        let r = s.spawn(|| {
            // Whoever comes first: the reader sees the damage, or the repair.
            match l.read_for(&reader, Duration::from_secs(20)) {
                Ok(g) => assert_eq!(*g, Pair { a: 3, b: 3 }),
                Err(LockError::OwnerDied(g)) => {
                    assert!(g.is_inconsistent());
                    assert_eq!(*g, Pair { a: 3, b: 0 });
                }
                Err(e) => panic!("{e}"),
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        holder.simulate_crash();
        w.join().unwrap();
        r.join().unwrap();
    });
    assert_eq!(*l.read(&seg).unwrap(), Pair { a: 3, b: 3 });
}

#[test]
fn an_unrepaired_rwlock_becomes_not_recoverable() {
    let seg = heap_with_everything();
    let holder = seg.try_clone().unwrap();
    let l = at::<Rw>(&seg, RW);
    std::mem::forget(l.write(&holder).unwrap());
    holder.simulate_crash();
    // A reader's OwnerDied guard dropped unrepaired changes nothing: readers
    // cannot repair.
    drop(l.read(&seg).unwrap_err().into_owner_died().unwrap());
    let g = l.write(&seg).unwrap_err().into_owner_died().unwrap();
    drop(g); // no make_consistent
    for _ in 0..3 {
        assert!(matches!(l.read(&seg), Err(LockError::NotRecoverable)));
        assert!(matches!(l.try_read(&seg), Err(LockError::NotRecoverable)));
        assert!(matches!(
            l.read_for(&seg, Duration::from_millis(1)),
            Err(LockError::NotRecoverable)
        ));
        assert!(matches!(l.write(&seg), Err(LockError::NotRecoverable)));
        assert!(matches!(l.try_write(&seg), Err(LockError::NotRecoverable)));
        assert!(matches!(
            l.write_for(&seg, Duration::from_millis(1)),
            Err(LockError::NotRecoverable)
        ));
    }
}

#[test]
fn a_writer_that_panics_leaves_the_rwlock_free_but_suspect() {
    let seg = heap_with_everything();
    let peer = seg.try_clone().unwrap();
    let l = at::<Rw>(&seg, RW);
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            let mut g = l.write(&seg).unwrap();
            g.a += 1;
            panic!("writer panics mid-update");
        })
        .join()
    });
    assert!(r.is_err());
    // Free (nobody is refused) but suspect (everyone is told).
    let g = l.try_read(&peer).unwrap_err().into_owner_died().unwrap();
    assert!(g.is_inconsistent());
    assert_eq!(*g, Pair { a: 1, b: 0 });
    drop(g);
    let mut w = l.try_write(&peer).unwrap_err().into_owner_died().unwrap();
    assert!(w.is_inconsistent());
    w.b = w.a;
    w.make_consistent();
    drop(w);
    let g = l.try_read(&seg).unwrap();
    assert!(!g.is_inconsistent());
    assert_eq!(*g, Pair { a: 1, b: 1 });
}

#[test]
fn a_dead_readers_share_is_released() {
    let _dog = watchdog("a_dead_readers_share_is_released");
    let seg = heap_with_everything();
    let l = at::<Rw>(&seg, RW);
    // A reader dies holding two shares: a writer gets in at once, and finds the
    // data consistent (readers change nothing).
    let reader = seg.try_clone().unwrap();
    std::mem::forget(l.read(&reader).unwrap());
    std::mem::forget(l.read(&reader).unwrap());
    reader.simulate_crash();
    let w = l.try_write(&seg).unwrap();
    assert!(!w.is_inconsistent());
    drop(w);
    // A writer already waiting when the reader dies gets in.
    let [reader, writer] = [0, 1].map(|_| seg.try_clone().unwrap());
    std::mem::forget(l.read(&reader).unwrap());
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let g = l.write_for(&writer, Duration::from_secs(20)).unwrap();
            assert!(!g.is_inconsistent());
        });
        common::eventually("the writer to wait", || {
            matches!(l.try_read(&seg), Err(LockError::WouldBlock))
        });
        reader.simulate_crash();
        w.join().unwrap();
    });
    assert!(l.try_read(&seg).is_ok());
}

#[test]
fn a_new_handle_in_a_dead_readers_slot_replaces_its_share() {
    let seg = heap_with_everything();
    let l = at::<Rw>(&seg, RW);
    let reader = seg.try_clone().unwrap();
    let slot = reader.slot();
    std::mem::forget(l.read(&reader).unwrap());
    reader.simulate_crash();
    assert_eq!(seg.reclaim_dead().unwrap(), vec![slot]);
    let heir = seg.try_clone().unwrap();
    assert_eq!(heir.slot(), slot, "the lowest free slot is taken");
    // The heir's first read replaces the dead share instead of adding to it, so
    // once the heir is done nobody holds the lock.
    drop(l.read(&heir).unwrap());
    assert!(l.try_write(&seg).is_ok());
}

/// Writers update the pair (breaking `a == b` in between) by every flavour of write
/// lock; readers check it holds and only grows.
fn rwlock_stress(writers: &[&Segment], readers: &[&Segment], n: u64) {
    let done = AtomicU32::new(0);
    std::thread::scope(|s| {
        for (i, &h) in writers.iter().enumerate() {
            let done = &done;
            s.spawn(move || {
                let l = at::<Rw>(h, RW);
                for j in 0..n {
                    let mut g = match (i as u64 + j) % 3 {
                        0 => l.write(h).unwrap(),
                        1 => l.write_for(h, Duration::from_secs(10)).unwrap(),
                        _ => loop {
                            match l.write_for(h, Duration::from_micros(200)) {
                                Ok(g) => break g,
                                Err(LockError::TimedOut) => {}
                                Err(e) => panic!("{e}"),
                            }
                        },
                    };
                    assert_eq!(g.a, g.b, "two writers at once");
                    g.a += 1;
                    spin(20);
                    g.b += 1;
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        for &h in readers {
            let done = &done;
            s.spawn(move || {
                let l = at::<Rw>(h, RW);
                let mut last = 0;
                let mut i = 0u64;
                while done.load(Ordering::SeqCst) < writers.len() as u32 {
                    i += 1;
                    let g = match i % 3 {
                        0 => l.read(h).unwrap(),
                        1 => l.read_for(h, Duration::from_secs(10)).unwrap(),
                        _ => match l.try_read(h) {
                            Ok(g) => g,
                            Err(LockError::WouldBlock) => {
                                std::thread::yield_now();
                                continue;
                            }
                            Err(e) => panic!("{e}"),
                        },
                    };
                    assert_eq!(g.a, g.b, "a reader saw a writer half-way");
                    assert!(g.a >= last, "an update was undone");
                    last = g.a;
                }
            });
        }
    });
}

#[test]
fn rwlock_readers_with_their_own_handles_never_see_a_writer_half_way() {
    let _dog = watchdog("rwlock_readers_with_their_own_handles_never_see_a_writer_half_way");
    let seg = heap_with_everything();
    let handles = clones(&seg, 5);
    let hs: Vec<&Segment> = handles.iter().collect();
    const N: u64 = 3000;
    rwlock_stress(&hs[..2], &hs[2..], N);
    let total = 2 * N;
    assert_eq!(
        *at::<Rw>(&seg, RW).read(&seg).unwrap(),
        Pair { a: total, b: total }
    );
}

#[test]
fn rwlock_threads_sharing_one_handle_never_see_a_writer_half_way() {
    let _dog = watchdog("rwlock_threads_sharing_one_handle_never_see_a_writer_half_way");
    let seg = heap_with_everything();
    const N: u64 = 2000;
    rwlock_stress(&[&seg, &seg], &[&seg, &seg], N);
    let total = 2 * N;
    assert_eq!(
        *at::<Rw>(&seg, RW).read(&seg).unwrap(),
        Pair { a: total, b: total }
    );
}

// ------------------------------------------------------------- Semaphore

#[test]
fn a_semaphore_counts_its_permits() {
    let seg = heap_with_everything();
    let peer = seg.try_clone().unwrap();
    let s = place(&seg, SEM, Semaphore::new(3));
    assert_eq!(s.available(), 3);
    s.acquire(&seg).unwrap();
    s.try_acquire(&peer).unwrap();
    s.acquire_for(&peer, Duration::ZERO).unwrap();
    assert_eq!(s.available(), 0);
    assert_eq!(s.try_acquire(&seg), Err(SemaphoreError::WouldBlock));
    assert_eq!(
        s.acquire_for(&seg, Duration::ZERO),
        Err(SemaphoreError::TimedOut)
    );
    let t = Instant::now();
    assert_eq!(
        s.acquire_for(&peer, Duration::from_millis(30)),
        Err(SemaphoreError::TimedOut)
    );
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert_eq!(
        s.acquire_until(&peer, Instant::now()),
        Err(SemaphoreError::TimedOut)
    );
    // Plain: anyone returns any number; nobody is on record.
    s.release(&peer, 2).unwrap();
    assert_eq!(s.available(), 2);
    s.release(&seg, 0).unwrap();
    assert_eq!(s.release(&seg, u32::MAX), Err(SemaphoreError::Overflow));
    assert_eq!(s.available(), 2);
    assert_eq!(s.held_by(seg.owner_tag()), 0);
    // A huge timeout means no deadline, not a panic.
    s.acquire_for(&seg, Duration::MAX).unwrap();
    assert_eq!(s.available(), 1);
}

#[test]
fn a_ledger_semaphore_counts_permits_per_holder() {
    let seg = heap_with_everything();
    let peer = seg.try_clone().unwrap();
    let s = place(&seg, LSEM, LedgerSem::with_ledger(3));
    s.acquire(&seg).unwrap();
    s.try_acquire(&peer).unwrap();
    s.acquire_for(&peer, Duration::ZERO).unwrap();
    assert_eq!(s.available(), 0);
    assert_eq!(s.held_by(seg.owner_tag()), 1);
    assert_eq!(s.held_by(peer.owner_tag()), 2);
    assert_eq!(s.try_acquire(&seg), Err(SemaphoreError::WouldBlock));
    assert_eq!(
        s.acquire_for(&seg, Duration::ZERO),
        Err(SemaphoreError::TimedOut)
    );
    assert_eq!(
        s.acquire_for(&seg, Duration::from_millis(30)),
        Err(SemaphoreError::TimedOut)
    );
    s.release(&peer, 2).unwrap();
    assert_eq!(s.held_by(peer.owner_tag()), 0);
    assert_eq!(s.available(), 2);
    s.release(&seg, 1).unwrap();
    assert_eq!(s.available(), 3);
}

#[test]
fn releasing_permits_a_handle_does_not_hold_is_refused() {
    let seg = heap_with_everything();
    let peer = seg.try_clone().unwrap();
    let s = at::<LedgerSem>(&seg, LSEM);
    assert_eq!(s.release(&seg, 1), Err(SemaphoreError::NotHeld));
    s.acquire(&seg).unwrap();
    // Not more than it holds, and not someone else's.
    assert_eq!(s.release(&seg, 2), Err(SemaphoreError::NotHeld));
    assert_eq!(s.release(&peer, 1), Err(SemaphoreError::NotHeld));
    assert_eq!(s.held_by(seg.owner_tag()), 1);
    assert_eq!(s.available(), PERMITS - 1);
    s.release(&seg, 1).unwrap();
    assert_eq!(s.release(&seg, 1), Err(SemaphoreError::NotHeld));
    assert_eq!(s.available(), PERMITS);
}

#[test]
fn a_handle_outside_the_ledger_is_refused() {
    let seg = SegmentOptions::heap()
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .registry_slots(8)
        .create()
        .unwrap();
    let handles = clones(&seg, 3);
    let s = place(&seg, 0, Semaphore::<2>::with_ledger(4));
    let all: Vec<&Segment> = std::iter::once(&seg).chain(&handles).collect();
    let outside = *all
        .iter()
        .find(|h| h.slot() >= 2)
        .expect("4 slots, 2 entries");
    let inside = *all.iter().find(|h| h.slot() < 2).unwrap();
    let refused = SemaphoreError::SlotOutsideLedger {
        slot: outside.slot(),
        ledger: 2,
    };
    assert_eq!(s.try_acquire(outside), Err(refused));
    assert_eq!(s.acquire(outside), Err(refused));
    assert_eq!(s.acquire_for(outside, Duration::ZERO), Err(refused));
    assert_eq!(
        s.acquire_for(outside, Duration::from_millis(10)),
        Err(refused)
    );
    assert_eq!(s.release(outside, 1), Err(refused));
    assert_eq!(s.held_by(outside.owner_tag()), 0);
    assert_eq!(s.available(), 4);
    assert!(refused.to_string().contains(&outside.slot().to_string()));
    // Handles inside the ledger are served as usual.
    s.acquire(inside).unwrap();
    assert_eq!(s.held_by(inside.owner_tag()), 1);
    assert_eq!(s.available(), 3);
}

/// Two waiters sleep on an exhausted semaphore of `PERMITS` (2) permits held by
/// `seg`, until `seg` releases both.
fn a_release_wakes_two_sleepers<const L: usize>(seg: &Segment, s: &Semaphore<L>) {
    s.acquire(seg).unwrap();
    s.acquire(seg).unwrap();
    let [a, b] = [0, 1].map(|_| seg.try_clone().unwrap());
    std::thread::scope(|sc| {
        let waiters: Vec<_> = [&a, &b]
            .into_iter()
            .map(|h| sc.spawn(move || s.acquire_for(h, Duration::from_secs(20))))
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        s.release(seg, PERMITS).unwrap();
        for w in waiters {
            assert_eq!(w.join().unwrap(), Ok(()));
        }
    });
    assert_eq!(s.available(), 0);
}

#[test]
fn a_release_wakes_sleeping_acquirers() {
    let _dog = watchdog("a_release_wakes_sleeping_acquirers");
    let seg = heap_with_everything();
    a_release_wakes_two_sleepers(&seg, at::<Semaphore>(&seg, SEM));
    a_release_wakes_two_sleepers(&seg, at::<LedgerSem>(&seg, LSEM));
}

/// Takes and returns a permit of the semaphore at cell `sem` `rounds` times through
/// `h`, by every flavour of acquire, counting the holders at cell [`INSIDE`] and the
/// most at once at [`MOST`]: more than [`PERMITS`] at once fails.
fn use_permits<const L: usize>(h: &Segment, sem: u64, rounds: u64) {
    let s = at::<Semaphore<L>>(h, sem);
    let inside = at::<AtomicU32>(h, INSIDE);
    let most = at::<AtomicU32>(h, MOST);
    for i in 0..rounds {
        match i % 3 {
            0 => s.acquire(h).unwrap(),
            1 => s.acquire_for(h, Duration::from_secs(10)).unwrap(),
            _ => loop {
                match s.try_acquire(h) {
                    Ok(()) => break,
                    Err(SemaphoreError::WouldBlock) => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            },
        }
        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        assert!(now <= PERMITS, "{now} holders of {PERMITS} permits");
        spin(50);
        inside.fetch_sub(1, Ordering::SeqCst);
        s.release(h, 1).unwrap();
    }
}

fn threads_never_exceed_the_permits<const L: usize>(sem: u64) {
    let seg = heap_with_everything();
    let handles = clones(&seg, 4);
    std::thread::scope(|s| {
        for h in &handles {
            s.spawn(move || use_permits::<L>(h, sem, 3000));
        }
    });
    let most = at::<AtomicU32>(&seg, MOST).load(Ordering::SeqCst);
    assert!((1..=PERMITS).contains(&most), "{most}");
    let s = at::<Semaphore<L>>(&seg, sem);
    assert_eq!(s.available(), PERMITS);
    for h in &handles {
        assert_eq!(s.held_by(h.owner_tag()), 0);
    }
}

#[test]
fn threads_never_exceed_the_permits_of_a_plain_semaphore() {
    let _dog = watchdog("threads_never_exceed_the_permits_of_a_plain_semaphore");
    threads_never_exceed_the_permits::<0>(SEM);
}

#[test]
fn threads_never_exceed_the_permits_of_a_ledger_semaphore() {
    let _dog = watchdog("threads_never_exceed_the_permits_of_a_ledger_semaphore");
    threads_never_exceed_the_permits::<128>(LSEM);
}

#[test]
fn a_crashed_holders_permits_come_back() {
    let _dog = watchdog("a_crashed_holders_permits_come_back");
    let seg = heap_with_everything();
    let [holder, waiter] = [0, 1].map(|_| seg.try_clone().unwrap());
    let s = at::<LedgerSem>(&seg, LSEM);
    s.acquire(&holder).unwrap();
    s.acquire(&holder).unwrap();
    let dead = holder.owner_tag();
    assert_eq!(s.held_by(dead), 2);
    // The holder is alive: nothing to take back.
    assert_eq!(s.try_acquire(&waiter), Err(SemaphoreError::WouldBlock));
    std::thread::scope(|sc| {
        let w = sc.spawn(|| s.acquire_for(&waiter, Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(20));
        holder.simulate_crash(); // dies holding both permits
        assert_eq!(w.join().unwrap(), Ok(()));
    });
    assert_eq!(s.held_by(dead), 0);
    assert_eq!(s.held_by(waiter.owner_tag()), 1);
    assert_eq!(s.available(), 1);
    s.try_acquire(&seg).unwrap();
    assert_eq!(s.available(), 0);
    // A holder that detaches without releasing counts as dead too.
    s.release(&seg, 1).unwrap();
    let leaver = seg.try_clone().unwrap();
    s.acquire(&leaver).unwrap();
    assert!(leaver.detach());
    s.try_acquire(&seg).unwrap();
    assert_eq!(s.held_by(seg.owner_tag()), 1);
}

#[test]
fn a_plain_semaphore_does_not_return_a_dead_holders_permits() {
    let seg = heap_with_everything();
    let holder = seg.try_clone().unwrap();
    let s = place(&seg, SEM, Semaphore::new(1));
    s.acquire(&holder).unwrap();
    holder.simulate_crash();
    // As documented: without a ledger nobody knows who held what.
    assert_eq!(s.try_acquire(&seg), Err(SemaphoreError::WouldBlock));
    assert_eq!(
        s.acquire_for(&seg, Duration::from_millis(10)),
        Err(SemaphoreError::TimedOut)
    );
    assert_eq!(s.available(), 0);
}

#[test]
fn a_ledger_operation_cut_short_by_a_crash_is_repaired_from_the_ledger() {
    let seg = heap_with_everything();
    let peer = seg.try_clone().unwrap();
    // Layout (repr(C)): count: u32 at 0, sleepers, total, reserved, then the
    // ledger's Mutex<()>, whose lock word is its first field, at 16.
    assert_eq!(size_of::<LedgerSem>(), 32 + 8 * 128);
    let s = place(&seg, LSEM, LedgerSem::with_ledger(3));
    s.acquire(&peer).unwrap(); // count 2, the ledger says the peer holds 1
    // The peer dies inside a second acquire, holding the ledger lock, after taking
    // a permit from the count and before writing it in the ledger.
    let base = seg.user_offset() + 64 * LSEM;
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.write(Offset::<u32>::new(base), 1) }.unwrap();
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.write(Offset::<u64>::new(base + 16), peer.owner_tag().bits()) }.unwrap();
    let dead = peer.owner_tag();
    peer.simulate_crash();
    assert_eq!(s.available(), 1);
    // The next caller takes the ledger lock over and rebuilds the count from the
    // ledger: 3 - 1 = 2, no permit lost...
    s.acquire(&seg).unwrap();
    assert_eq!(s.available(), 1);
    s.acquire(&seg).unwrap();
    assert_eq!(s.available(), 0);
    // ...and the one the dead peer had on record comes back when none is left.
    assert_eq!(s.held_by(dead), 1);
    s.try_acquire(&seg).unwrap();
    assert_eq!(s.held_by(dead), 0);
    assert_eq!(s.held_by(seg.owner_tag()), 3);
    assert_eq!(s.available(), 0);
    s.release(&seg, 3).unwrap();
    assert_eq!(s.available(), 3);
}

/// Found by `prop_sync`'s ledger model. `Semaphore::release` stores the caller's
/// ledger entry even when it names a dead previous holder of the slot: with `n = 0`
/// the check `held (0) >= n` passes and the dead holder's permits are overwritten,
/// neither in the count nor on record, lost for good.
#[test]
fn a_release_of_nothing_by_a_dead_holders_heir_loses_no_permit() {
    let seg = SegmentOptions::heap()
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .registry_slots(2)
        .create()
        .unwrap();
    let s = place(&seg, 0, Semaphore::<2>::with_ledger(2));
    let holder = seg.try_clone().unwrap();
    s.acquire(&holder).unwrap();
    s.acquire(&holder).unwrap();
    let dead = holder.owner_tag();
    holder.simulate_crash();
    // The registry is full: the dead slot is reclaimed and given to the heir.
    let heir = seg.try_clone().unwrap();
    assert_eq!(heir.slot(), dead.slot());
    assert_eq!(s.release(&heir, 0), Ok(()));
    // Both permits can still be had.
    assert_eq!(s.try_acquire(&seg), Ok(()));
    assert_eq!(s.try_acquire(&heir), Ok(()));
    assert_eq!(s.available(), 0);
}

// --------------------------------------------------------------- Condvar

/// Waits for each value `1..=n` that [`produce`] hands over in `a`, acknowledging it
/// in `b`.
fn consume(seg: &Segment, n: u64) {
    let (m, cv) = (at::<Mutex<Pair>>(seg, CV_MUTEX), at::<Condvar>(seg, CV));
    for i in 1..=n {
        let mut g = cv
            .wait_while(m.lock(seg).unwrap(), seg, |p| p.a == p.b)
            .unwrap();
        assert_eq!(g.a, i, "values are handed over in order, none skipped");
        g.b = g.a;
        drop(g);
        cv.notify_all();
    }
}

/// Hands the values `1..=n` over in `a`, each once the previous one was
/// acknowledged in `b`.
fn produce(seg: &Segment, n: u64) {
    let (m, cv) = (at::<Mutex<Pair>>(seg, CV_MUTEX), at::<Condvar>(seg, CV));
    for i in 1..=n {
        let mut g = cv
            .wait_while(m.lock(seg).unwrap(), seg, |p| p.a != p.b)
            .unwrap();
        g.a = i;
        drop(g);
        cv.notify_all();
    }
}

#[test]
fn a_condvar_wait_for_times_out_and_relocks() {
    let seg = heap_with_everything();
    let (m, cv) = (at::<Mutex<Pair>>(&seg, CV_MUTEX), at::<Condvar>(&seg, CV));
    let g = m.lock(&seg).unwrap();
    let (g, r) = cv.wait_for(g, &seg, Duration::ZERO).unwrap();
    assert!(r.timed_out());
    assert!(m.is_locked());
    let (mut g, r) = cv.wait_until(g, &seg, Instant::now()).unwrap();
    assert!(r.timed_out());
    // Spurious wake-ups are allowed; a wait that says it timed out did.
    let deadline = Instant::now() + Duration::from_millis(30);
    loop {
        let (again, r) = cv.wait_until(g, &seg, deadline).unwrap();
        g = again;
        assert!(m.is_locked());
        if r.timed_out() {
            break;
        }
    }
    assert!(Instant::now() >= deadline);
    let t = Instant::now();
    loop {
        let (again, r) = cv.wait_for(g, &seg, Duration::from_millis(30)).unwrap();
        g = again;
        if r.timed_out() {
            break;
        }
    }
    assert!(t.elapsed() >= Duration::from_millis(30));
    drop(g);
    assert!(!m.is_locked());
}

#[test]
fn notify_all_wakes_every_waiter_and_notify_one_wakes_them_one_by_one() {
    let _dog = watchdog("notify_all_wakes_every_waiter_and_notify_one_wakes_them_one_by_one");
    let seg = heap_with_everything();
    let handles = clones(&seg, 3);
    let (m, cv) = (at::<Mutex<Pair>>(&seg, CV_MUTEX), at::<Condvar>(&seg, CV));
    // notify_all: every waiter sees the flag.
    std::thread::scope(|s| {
        for h in &handles {
            s.spawn(move || {
                let g = cv.wait_while(m.lock(h).unwrap(), h, |p| p.a == 0).unwrap();
                assert_eq!(g.a, 1);
            });
        }
        std::thread::sleep(Duration::from_millis(20));
        // The waiters released the mutex while waiting.
        m.try_lock(&seg).unwrap().a = 1;
        cv.notify_all();
    });
    // notify_one: one token per notify, each taken by one waiter.
    std::thread::scope(|s| {
        for h in &handles {
            s.spawn(move || {
                let mut g = cv.wait_while(m.lock(h).unwrap(), h, |p| p.b == 0).unwrap();
                g.b -= 1;
            });
        }
        for _ in 0..handles.len() {
            std::thread::sleep(Duration::from_millis(5));
            m.lock(&seg).unwrap().b += 1;
            cv.notify_one();
        }
    });
    assert_eq!(*m.lock(&seg).unwrap(), Pair { a: 1, b: 0 });
}

#[test]
fn a_producer_and_a_consumer_thread_hand_values_through_a_condvar() {
    let _dog = watchdog("a_producer_and_a_consumer_thread_hand_values_through_a_condvar");
    let seg = heap_with_everything();
    let [p, c] = [0, 1].map(|_| seg.try_clone().unwrap());
    const N: u64 = 1000;
    std::thread::scope(|s| {
        s.spawn(|| consume(&c, N));
        s.spawn(|| produce(&p, N));
    });
    assert_eq!(
        *at::<Mutex<Pair>>(&seg, CV_MUTEX).lock(&seg).unwrap(),
        Pair { a: N, b: N }
    );
}

#[test]
fn a_waiter_that_dies_in_its_wait_does_not_stop_others_being_notified() {
    let _dog = watchdog("a_waiter_that_dies_in_its_wait_does_not_stop_others_being_notified");
    let seg = heap_with_everything();
    let [dying, other] = [0, 1].map(|_| seg.try_clone().unwrap());
    let (m, cv) = (at::<Mutex<Pair>>(&seg, CV_MUTEX), at::<Condvar>(&seg, CV));
    // A waiter dies where a signal could strike: its wait ends (relocking the
    // mutex) and its handle is gone.
    std::thread::scope(|s| {
        s.spawn(move || {
            let (g, _) = cv
                .wait_for(m.lock(&dying).unwrap(), &dying, Duration::from_millis(20))
                .unwrap();
            std::mem::forget(g);
            dying.simulate_crash();
        })
        .join()
        .unwrap();
    });
    // The mutex comes back with OwnerDied, and a notify reaches the next waiter.
    let mut g = m.lock(&seg).unwrap_err().into_owner_died().unwrap();
    g.make_consistent();
    drop(g);
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let g = cv
                .wait_while(m.lock(&other).unwrap(), &other, |p| p.a == 0)
                .unwrap();
            assert_eq!(g.a, 1);
        });
        std::thread::sleep(Duration::from_millis(20));
        m.lock(&seg).unwrap().a = 1;
        cv.notify_one();
        w.join().unwrap();
    });
}

// ----------------------------------------------------------------- Event

/// Waiters counted in the event at cell `index`: bits 2.. of its state word, the
/// first field (see the layout in `sync::event`'s docs).
fn event_sleepers(seg: &Segment, index: u64) -> u32 {
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.read(cell::<u32>(seg, index)) }.unwrap() >> 2
}

#[test]
fn an_auto_reset_event_wakes_exactly_one_waiter_per_set() {
    let _dog = watchdog("an_auto_reset_event_wakes_exactly_one_waiter_per_set");
    let seg = heap_with_everything();
    let e = at::<Event>(&seg, AUTO);
    assert_eq!(e.kind(), EventKind::AutoReset);
    let woken = AtomicU32::new(0);
    let start = std::sync::Barrier::new(3);
    // Three sleepers, one set: one wakes, the others time out. Then three more
    // sleepers and two sets, one after the other was taken: two wake.
    for sets in [1, 2] {
        woken.store(0, Ordering::SeqCst);
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let (woken, start) = (&woken, &start);
                    s.spawn(move || {
                        start.wait();
                        let got = e.wait_for(Duration::from_secs(1));
                        if got {
                            woken.fetch_add(1, Ordering::SeqCst);
                        }
                        got
                    })
                })
                .collect();
            common::eventually("three sleepers", || event_sleepers(&seg, AUTO) == 3);
            for i in 1..=sets {
                e.set();
                common::eventually("a waiter to take the set", || {
                    woken.load(Ordering::SeqCst) == i
                });
            }
            let got: Vec<bool> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
            assert_eq!(got.iter().filter(|g| **g).count(), sets as usize, "{got:?}");
        });
        assert!(!e.is_set(), "every set was taken");
        assert_eq!(event_sleepers(&seg, AUTO), 0);
    }
}

#[test]
fn a_manual_reset_event_wakes_every_waiter_and_stays_set_until_reset() {
    let _dog = watchdog("a_manual_reset_event_wakes_every_waiter_and_stays_set_until_reset");
    let seg = heap_with_everything();
    let e = at::<Event>(&seg, MANUAL);
    assert_eq!(e.kind(), EventKind::ManualReset);
    std::thread::scope(|s| {
        let waiters: Vec<_> = (0..3)
            .map(|_| s.spawn(|| e.wait_for(common::PATIENCE)))
            .collect();
        common::eventually("three sleepers", || event_sleepers(&seg, MANUAL) == 3);
        e.set();
        for w in waiters {
            assert!(w.join().unwrap());
        }
    });
    assert!(e.is_set());
    for _ in 0..3 {
        assert!(e.wait_for(Duration::ZERO));
        e.wait();
    }
    e.reset();
    assert!(!e.is_set());
    assert!(!e.wait_for(Duration::from_millis(10)));
    e.reset(); // a no-op on an unset event
    assert!(!e.is_set());
}

#[test]
fn event_waits_time_out_when_nobody_sets() {
    let seg = heap_with_everything();
    for (index, kind) in [
        (AUTO, EventKind::AutoReset),
        (MANUAL, EventKind::ManualReset),
    ] {
        let e = at::<Event>(&seg, index);
        assert_eq!(e.kind(), kind);
        assert!(!e.wait_for(Duration::ZERO));
        let t = Instant::now();
        assert!(!e.wait_for(Duration::from_millis(30)));
        assert!(t.elapsed() >= Duration::from_millis(30));
        let deadline = Instant::now() + Duration::from_millis(30);
        assert!(!e.wait_until(deadline));
        assert!(Instant::now() >= deadline);
        assert!(!e.wait_until(Instant::now()));
        assert!(!e.is_set());
        // A set made before the wait is not lost; a huge timeout is no deadline.
        e.set();
        assert!(e.wait_for(Duration::MAX));
        assert_eq!(e.is_set(), kind == EventKind::ManualReset);
        // Two sets before anyone waits: a flag, not a count.
        e.reset();
        e.set();
        e.set();
        assert!(e.wait_for(Duration::ZERO));
        assert_eq!(e.wait_for(Duration::ZERO), kind == EventKind::ManualReset);
        e.reset();
    }
}

// ------------------------------------------ the other primitives: processes

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
            rw_count(&seg);
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
            use_permits::<0>(&seg, SEM, SEM_ROUNDS);
            println!("{}", common::DONE_MARKER);
        }
        "lsem-count" => {
            use_permits::<128>(&seg, LSEM, SEM_ROUNDS);
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
            consume(&seg, HANDOFFS);
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

/// `RW_ROUNDS` read or write locks; writers break `a == b` for a moment.
fn rw_count(seg: &Segment) {
    let l = at::<Rw>(seg, RW);
    for i in 0..RW_ROUNDS {
        if i % 4 == 0 {
            let mut g = l.write(seg).unwrap();
            assert_eq!(g.a, g.b, "two writers at once");
            g.a += 1;
            spin(20);
            g.b += 1;
        } else {
            let g = l.read(seg).unwrap();
            assert_eq!(g.a, g.b, "a reader saw a writer half-way");
        }
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

#[test]
fn rwlock_users_in_processes_exclude_each_other() {
    let _dog = watchdog("rwlock_users_in_processes_exclude_each_other");
    let (seg, name) = posix_with_everything();
    let kids: Vec<_> = (0..2).map(|_| kin("rw-count", &name)).collect();
    rw_count(&seg); // the parent competes too
    for k in kids {
        expect_line(&k, common::DONE_MARKER);
        finish(k);
    }
    let total = 3 * RW_WRITES;
    assert_eq!(
        *at::<Rw>(&seg, RW).read(&seg).unwrap(),
        Pair { a: total, b: total }
    );
}

#[test]
fn a_sigkilled_writer_process_gives_readers_and_the_next_writer_owner_died() {
    let _dog = watchdog("a_sigkilled_writer_process_gives_readers_and_the_next_writer_owner_died");
    let (seg, name) = posix_with_everything();
    let reader = seg.try_clone().unwrap();
    let l = at::<Rw>(&seg, RW);
    let mut k = kin("rw-hold-write", &name);
    expect_line(&k, "holding");
    assert!(matches!(l.try_read(&reader), Err(LockError::WouldBlock)));
    assert!(matches!(l.try_write(&seg), Err(LockError::WouldBlock)));
    k.kill().unwrap();
    let g = match l.read_for(&reader, Duration::from_secs(10)) {
        Err(LockError::OwnerDied(g)) => g,
        other => panic!("{other:?}"),
    };
    assert!(g.is_inconsistent());
    assert_eq!(g.a, g.b + 1, "the dead writer was half-way");
    drop(g);
    let mut w = match l.write_for(&seg, Duration::from_secs(10)) {
        Err(LockError::OwnerDied(w)) => w,
        other => panic!("{other:?}"),
    };
    w.b = w.a;
    w.make_consistent();
    drop(w);
    assert!(!l.try_read(&reader).unwrap().is_inconsistent());
}

#[test]
fn a_sigkilled_reader_process_releases_its_share() {
    let _dog = watchdog("a_sigkilled_reader_process_releases_its_share");
    let (seg, name) = posix_with_everything();
    let writer = seg.try_clone().unwrap();
    let l = at::<Rw>(&seg, RW);
    let mut k = kin("rw-hold-read", &name);
    expect_line(&k, "holding");
    assert!(matches!(l.try_write(&writer), Err(LockError::WouldBlock)));
    assert!(l.try_read(&seg).is_ok(), "readers share");
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let g = l.write_for(&writer, Duration::from_secs(20)).unwrap();
            assert!(!g.is_inconsistent(), "a dead reader changed nothing");
        });
        common::eventually("the writer to wait", || {
            matches!(l.try_read(&seg), Err(LockError::WouldBlock))
        });
        k.kill().unwrap();
        w.join().unwrap();
    });
}

#[test]
fn a_writer_process_killed_while_waiting_for_readers_blocks_nobody() {
    let _dog = watchdog("a_writer_process_killed_while_waiting_for_readers_blocks_nobody");
    let (seg, name) = posix_with_everything();
    let reader = seg.try_clone().unwrap();
    let l = at::<Rw>(&seg, RW);
    let early = l.read(&seg).unwrap();
    let mut k = kin("rw-wait-write", &name);
    expect_line(&k, "claiming");
    common::eventually("the child's claim", || {
        matches!(l.try_read(&reader), Err(LockError::WouldBlock))
    });
    k.kill().unwrap();
    k.wait_for_exit(common::PATIENCE)
        .expect("the killed child is reaped");
    // The reader that was in reads on; new readers get in, told (as documented:
    // a writer died in the lock, if only waiting) with OwnerDied.
    assert_eq!(*early, Pair::default());
    let late = match l.read_for(&reader, Duration::from_secs(10)) {
        Err(LockError::OwnerDied(g)) => g,
        other => panic!("{other:?}"),
    };
    assert_eq!(*late, Pair::default());
    drop((early, late));
    let mut w = match l.write_for(&seg, Duration::from_secs(10)) {
        Err(LockError::OwnerDied(w)) => w,
        other => panic!("{other:?}"),
    };
    w.make_consistent();
    drop(w);
    assert!(!l.try_read(&reader).unwrap().is_inconsistent());
}

/// Sleepers counted in the semaphore at cell `index`: its second `u32` (the type
/// is `repr(C)`: `count`, then `sleepers`).
/// 1 if the semaphore's count word says someone may sleep on it (bit 31).
fn semaphore_sleepers(seg: &Segment, index: u64) -> u32 {
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.read(cell::<[u32; 2]>(seg, index)) }.unwrap()[0] >> 31
}

#[test]
fn a_process_killed_waiting_for_a_permit_takes_none() {
    let _dog = watchdog("a_process_killed_waiting_for_a_permit_takes_none");
    let (seg, name) = posix_with_everything();
    let other = seg.try_clone().unwrap();
    let s = at::<Semaphore>(&seg, SEM);
    for _ in 0..PERMITS {
        s.acquire(&seg).unwrap();
    }
    let mut k = kin("sem-wait", &name);
    expect_line(&k, "waiting");
    common::eventually("the child to sleep", || semaphore_sleepers(&seg, SEM) >= 1);
    k.kill().unwrap();
    k.wait_for_exit(common::PATIENCE)
        .expect("the killed child is reaped");
    // A live sleeper is woken by the next release, and gets the permit.
    std::thread::scope(|sc| {
        let w = sc.spawn(|| s.acquire_for(&other, Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(20));
        s.release(&seg, 1).unwrap();
        assert_eq!(w.join().unwrap(), Ok(()));
    });
    s.release(&seg, 1).unwrap();
    assert_eq!(s.available(), 1);
    assert_eq!(s.try_acquire(&seg), Ok(()));
}

fn processes_never_exceed_the_permits(role: &str, parent: impl FnOnce(&Segment), sem: u64) {
    let (seg, name) = posix_with_everything();
    let kids: Vec<_> = (0..2).map(|_| kin(role, &name)).collect();
    parent(&seg);
    for k in kids {
        expect_line(&k, common::DONE_MARKER);
        finish(k);
    }
    let most = at::<AtomicU32>(&seg, MOST).load(Ordering::SeqCst);
    assert!((1..=PERMITS).contains(&most), "{most}");
    assert_eq!(at::<AtomicU32>(&seg, INSIDE).load(Ordering::SeqCst), 0);
    let available = if sem == SEM {
        at::<Semaphore>(&seg, SEM).available()
    } else {
        at::<LedgerSem>(&seg, LSEM).available()
    };
    assert_eq!(available, PERMITS);
}

#[test]
fn processes_never_exceed_the_permits_of_a_plain_semaphore() {
    let _dog = watchdog("processes_never_exceed_the_permits_of_a_plain_semaphore");
    processes_never_exceed_the_permits(
        "sem-count",
        |seg| use_permits::<0>(seg, SEM, SEM_ROUNDS),
        SEM,
    );
}

#[test]
fn processes_never_exceed_the_permits_of_a_ledger_semaphore() {
    let _dog = watchdog("processes_never_exceed_the_permits_of_a_ledger_semaphore");
    processes_never_exceed_the_permits(
        "lsem-count",
        |seg| use_permits::<128>(seg, LSEM, SEM_ROUNDS),
        LSEM,
    );
}

#[test]
fn a_sigkilled_holder_process_permits_come_back() {
    let _dog = watchdog("a_sigkilled_holder_process_permits_come_back");
    let (seg, name) = posix_with_everything();
    let s = at::<LedgerSem>(&seg, LSEM);
    let mut k = kin("lsem-hold", &name);
    expect_line(&k, "holding");
    assert_eq!(s.available(), 0);
    assert_eq!(s.try_acquire(&seg), Err(SemaphoreError::WouldBlock));
    k.kill().unwrap();
    assert_eq!(s.acquire_for(&seg, Duration::from_secs(10)), Ok(()));
    assert_eq!(s.try_acquire(&seg), Ok(()));
    assert_eq!(s.held_by(seg.owner_tag()), PERMITS);
    assert_eq!(s.available(), 0);
    s.release(&seg, PERMITS).unwrap();
    assert_eq!(s.available(), PERMITS);
}

#[test]
fn a_producer_and_a_consumer_process_hand_values_through_a_condvar() {
    let _dog = watchdog("a_producer_and_a_consumer_process_hand_values_through_a_condvar");
    let (seg, name) = posix_with_everything();
    let k = kin("cv-consume", &name);
    produce(&seg, HANDOFFS);
    expect_line(&k, common::DONE_MARKER);
    finish(k);
    assert_eq!(
        *at::<Mutex<Pair>>(&seg, CV_MUTEX).lock(&seg).unwrap(),
        Pair {
            a: HANDOFFS,
            b: HANDOFFS
        }
    );
}

#[test]
fn a_waiter_process_killed_in_its_wait_does_not_stop_others_being_notified() {
    let _dog = watchdog("a_waiter_process_killed_in_its_wait_does_not_stop_others_being_notified");
    let (seg, name) = posix_with_everything();
    let other = seg.try_clone().unwrap();
    let (m, cv) = (at::<Mutex<Pair>>(&seg, CV_MUTEX), at::<Condvar>(&seg, CV));
    let mut k = kin("cv-wait", &name);
    expect_line(&k, "waiting"); // printed holding the mutex, just before the wait
    drop(lock_repairing(m, &seg)); // free: the child is in its wait
    k.kill().unwrap();
    k.wait_for_exit(common::PATIENCE)
        .expect("the killed child is reaped");
    // It may have died between two slices of its wait, holding the mutex.
    drop(lock_repairing(m, &seg));
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let g = cv
                .wait_while(m.lock(&other).unwrap(), &other, |p| p.a == 0)
                .unwrap();
            assert_eq!(g.a, 1);
        });
        std::thread::sleep(Duration::from_millis(20));
        m.lock(&seg).unwrap().a = 1;
        cv.notify_one();
        w.join().unwrap();
    });
}

#[test]
fn a_manual_reset_event_wakes_waiters_in_every_process() {
    let _dog = watchdog("a_manual_reset_event_wakes_waiters_in_every_process");
    let (seg, name) = posix_with_everything();
    let e = at::<Event>(&seg, MANUAL);
    let kids: Vec<_> = (0..2).map(|_| kin("event-wait-manual", &name)).collect();
    for k in &kids {
        expect_line(k, "waiting");
    }
    common::eventually("two sleepers", || event_sleepers(&seg, MANUAL) == 2);
    e.set();
    for k in kids {
        assert_eq!(k.next_after("woken ", common::PATIENCE).unwrap(), "true");
        finish(k);
    }
    assert_eq!(at::<AtomicU32>(&seg, WOKEN).load(Ordering::SeqCst), 2);
    assert!(e.is_set());
}

#[test]
fn an_auto_reset_event_wakes_one_waiting_process_per_set() {
    let _dog = watchdog("an_auto_reset_event_wakes_one_waiting_process_per_set");
    let (seg, name) = posix_with_everything();
    let e = at::<Event>(&seg, AUTO);
    let woken = at::<AtomicU32>(&seg, WOKEN);
    let kids: Vec<_> = (0..2).map(|_| kin("event-wait-auto", &name)).collect();
    for k in &kids {
        expect_line(k, "waiting");
    }
    common::eventually("two sleepers", || event_sleepers(&seg, AUTO) == 2);
    e.set();
    common::eventually("a waiter to take the set", || {
        woken.load(Ordering::SeqCst) >= 1
    });
    assert_eq!(woken.load(Ordering::SeqCst), 1, "one set, one waiter");
    assert!(!e.is_set());
    e.set();
    for k in kids {
        assert_eq!(k.next_after("woken ", common::PATIENCE).unwrap(), "true");
        finish(k);
    }
    assert_eq!(woken.load(Ordering::SeqCst), 2);
    assert!(!e.is_set());
}

#[test]
fn a_killed_sleeping_process_does_not_break_later_sets() {
    let _dog = watchdog("a_killed_sleeping_process_does_not_break_later_sets");
    let (seg, name) = posix_with_everything();
    let e = at::<Event>(&seg, AUTO);
    let mut k = kin("event-sleep", &name);
    expect_line(&k, "waiting");
    common::eventually("the child to sleep", || event_sleepers(&seg, AUTO) == 1);
    k.kill().unwrap();
    k.wait_for_exit(common::PATIENCE)
        .expect("the killed child is reaped");
    // A live sleeper is woken by the next set...
    std::thread::scope(|s| {
        let w = s.spawn(|| e.wait_for(common::PATIENCE));
        std::thread::sleep(Duration::from_millis(20));
        e.set();
        assert!(w.join().unwrap());
    });
    assert!(!e.is_set());
    // ...and sets without sleepers are kept for the next waiter.
    e.set();
    assert!(e.is_set());
    assert!(e.wait_for(Duration::ZERO));
    assert!(!e.wait_for(Duration::from_millis(10)));
}

#[test]
fn an_inherited_handle_locks_for_nobody_in_a_forked_child() {
    let _dog = watchdog("an_inherited_handle_locks_for_nobody_in_a_forked_child");
    let seg = SegmentOptions::anonymous()
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .create()
        .unwrap();
    let m = mutex_at(&seg, 0, 0u64);
    // SAFETY: the child only calls lock (atomics, no allocation on this path) and
    // leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match m.try_lock(&seg) {
            Err(LockError::NotAttached) => 0,
            Ok(_) => 1,
            Err(_) => 2,
        };
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child locked as its parent (1) or got another error (2)"
    );
    // The parent's own handle is unaffected.
    assert!(m.try_lock(&seg).is_ok());
}
