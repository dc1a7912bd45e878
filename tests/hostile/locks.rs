//! Issue 10, item 3: a lock word that names the caller's own attachment while none
//! of its threads holds or is taking the lock is `Corrupt` at once (the heap's
//! transfer and page locks, a user's `Mutex` and `RwLock`), never a wait; a live
//! holder past the bound is `LockTimeout`, and one heap call waits one bound *in
//! all*, however many size classes it flushes; threads of one attachment that
//! legitimately contend never see `Corrupt`.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use shmkit::alloc::model::{Deadline, LOCK_WAIT, TransferLock, exclusive};
use shmkit::alloc::{Heap, SIZES};
use shmkit::sync::{LockError, Mutex, RwLock};
use shmkit::{Error, Segment, SegmentOptions};

use crate::common::{LineChild, PATIENCE, self_test_command};

const ROLE: &str = "SHMKIT_HOSTILE_LOCKS_ROLE";
const NAME: &str = "SHMKIT_HOSTILE_LOCKS_NAME";
const AT: &str = "SHMKIT_HOSTILE_LOCKS_AT";
const VALUE: &str = "SHMKIT_HOSTILE_LOCKS_VALUE";
const OUT: &str = "SHMKIT-HOSTILE-LOCKS";

/// "At once": far below the 5 s lock bound a forged word used to cost per lock
/// (and per size class), far above the microseconds it takes.
const AT_ONCE: Duration = Duration::from_secs(2);

/// Bits of an owner tag's incarnation (a reader entry keeps them above its count).
const INC_MASK: u64 = (1 << 46) - 1;
/// Bits of a reader entry's count.
const COUNT_BITS: u32 = 18;
/// Offset of the first reader entry in an `RwLock` (state, seq, _reserved1,
/// drain, _reserved).
const READERS_AT: u64 = 24;

struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = SegmentOptions::posix(&self.0).remove();
    }
}

/// A named segment for one test, removed at the end.
fn segment(prefix: &str) -> (Segment, String, Unlink) {
    let name = shmkit::unique_name(prefix).unwrap();
    let seg = SegmentOptions::posix(&name)
        .max_size(32 << 20)
        .create()
        .unwrap();
    (seg, name.clone(), Unlink(name))
}

/// A peer process stores `value` into the word at offset `at` of segment `name`.
fn forge(name: &str, at: u64, value: u64) {
    let mut cmd = self_test_command("locks::child_main");
    cmd.env(ROLE, "store")
        .env(NAME, name)
        .env(AT, at.to_string())
        .env(VALUE, value.to_string());
    let mut c = LineChild::spawn(cmd, Stdio::null());
    let out = c
        .next_after(OUT, PATIENCE)
        .unwrap_or_else(|e| panic!("the forger said nothing: {e:?}"));
    assert_eq!(out.trim(), "stored");
    let st = c.wait_for_exit(PATIENCE).expect("the forger exits");
    assert!(st.success(), "the forger failed: {st:?}");
}

/// Our own store into the word at `at` (a repair, after a forgery).
fn store(seg: &Segment, at: u64, value: u64) {
    // SAFETY: an 8-aligned word inside our mapping (a lock word the test forged),
    // stored atomically.
    unsafe { (*seg.as_ptr().add(at as usize).cast::<AtomicU64>()).store(value, Ordering::SeqCst) };
}

/// The offset of `obj` in `seg`.
fn offset_of<T>(seg: &Segment, obj: &T) -> u64 {
    (std::ptr::from_ref(obj).addr() - seg.as_ptr().addr()) as u64
}

/// Runs `f` on a thread and returns its answer, failing (instead of hanging the
/// suite) if it takes longer than [`PATIENCE`]; also returns how long it took.
fn bounded<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> (R, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let r = rx
        .recv_timeout(PATIENCE)
        .expect("the call hung (a forged word was waited on without end)");
    (r, t.elapsed())
}

/// Caches one free block in each of the first `classes` size classes.
fn cache_classes(heap: &Heap, classes: usize) {
    for &size in &SIZES[..classes] {
        let b = heap.alloc(size as usize, 8).unwrap();
        heap.free(b).unwrap();
    }
}

fn assert_forged(r: Result<(), Error>, lock: &str) {
    match r {
        Err(Error::Corrupt { what, detail }) => {
            assert!(what.contains(lock), "{what}: {detail}");
            assert!(detail.contains("names this attachment"), "{what}: {detail}");
        }
        other => panic!("{lock}: expected Corrupt, got {other:?}"),
    }
}

/// A peer writes our own owner tag into the heap's transfer-lock word while we
/// hold no guard: `flush` (4 cached classes: 20 s before the fix) and the
/// handle's drop fail at once with `Corrupt`; repaired, the heap works again.
#[test]
fn a_transfer_lock_naming_ourselves_fails_flush_and_drop_at_once() {
    let (seg, name, _u) = segment("hostile-locks-xfer-");
    let heap = Heap::attach(&seg).unwrap();
    cache_classes(&heap, 4);
    let (_, transfer) = heap.lock_offsets();
    forge(&name, transfer, seg.owner_tag().bits()); // `state`, the writer's tag
    let t = Instant::now();
    let r = heap.flush();
    let took = t.elapsed();
    assert_forged(r, "transfer lock");
    assert!(took < AT_ONCE, "flush took {took:?}");
    let t = Instant::now();
    drop(heap);
    assert!(t.elapsed() < AT_ONCE, "drop took {:?}", t.elapsed());
    store(&seg, transfer, 0);
    let heap = Heap::attach(&seg).unwrap();
    cache_classes(&heap, 4);
    heap.flush().unwrap();
}

/// The same for the heap's page lock: `flush` (a cached large run), the drop and
/// a large allocation fail at once with `Corrupt`.
#[test]
fn a_page_lock_naming_ourselves_fails_flush_drop_and_alloc_at_once() {
    let (seg, name, _u) = segment("hostile-locks-page-");
    let heap = Heap::attach(&seg).unwrap();
    let big = heap.alloc(100 << 10, 8).unwrap();
    heap.free(big).unwrap(); // kept in the handle's large-run cache
    let (page, _) = heap.lock_offsets();
    forge(&name, page, seg.owner_tag().bits());
    let t = Instant::now();
    assert_forged(heap.flush(), "page lock");
    assert_forged(heap.alloc(1 << 20, 8).map(drop), "page lock");
    assert!(t.elapsed() < AT_ONCE, "took {:?}", t.elapsed());
    let t = Instant::now();
    drop(heap);
    assert!(t.elapsed() < AT_ONCE, "drop took {:?}", t.elapsed());
    store(&seg, page, 0);
    let heap = Heap::attach(&seg).unwrap();
    heap.free(heap.alloc(1 << 20, 8).unwrap()).unwrap();
    heap.flush().unwrap();
}

/// A peer holds the transfer lock in write mode (as `verify` does) and is
/// stopped with SIGSTOP: our `flush` of a realistic 17-class cache gives up with
/// `LockTimeout` after about one bound (it took 17 bounds, 85 s, before the fix),
/// and so does the handle's drop.
#[test]
fn a_stopped_transfer_lock_holder_costs_one_bound_per_call_not_per_class() {
    let (seg, name, _u) = segment("hostile-locks-stop-");
    let heap = Heap::attach(&seg).unwrap();
    cache_classes(&heap, 17);
    let (_, transfer) = heap.lock_offsets();
    let mut cmd = self_test_command("locks::child_main");
    cmd.env(ROLE, "hold")
        .env(NAME, &name)
        .env(AT, transfer.to_string());
    let peer = LineChild::spawn(cmd, Stdio::piped());
    let said = peer.next_after(OUT, PATIENCE).expect("the holder answers");
    assert_eq!(said.trim(), "held");
    kill_process(Pid::from_raw(peer.pid() as i32).unwrap(), Signal::STOP).unwrap();
    // Generous: one bound is expected; the old behaviour took 17.
    let most = 2 * LOCK_WAIT + Duration::from_secs(5);
    let t = Instant::now();
    let r = heap.flush();
    let took = t.elapsed();
    match r {
        Err(Error::LockTimeout { what, waited }) => {
            assert!(what.contains("transfer lock"), "{what}");
            assert!(waited >= LOCK_WAIT, "waited {waited:?}");
        }
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    assert!(took < most, "flush took {took:?}");
    let t = Instant::now();
    drop(heap);
    assert!(t.elapsed() < most, "drop took {:?}", t.elapsed());
    drop(peer); // SIGKILL ends a stopped process too
}

/// A user's `Mutex` found by name: a peer writes our tag into its word. Every
/// lock call of ours (any clone of our attachment, any thread, with or without a
/// timeout) fails at once with `Corrupt`; another attachment of this same process
/// (`try_clone`) sees a live holder instead (its tag is not ours).
#[test]
fn a_user_mutex_naming_ourselves_is_corrupt_at_once_for_every_call() {
    let (seg, name, _u) = segment("hostile-locks-mutex-");
    let m = seg.find_or_create::<Mutex<u64>>("m", ()).unwrap();
    let at = offset_of(&seg, m.raw());
    let tag = seg.owner_tag().bits();
    forge(&name, at, tag);
    let (r, took) = bounded({
        let seg = seg.clone();
        move || seg.find::<Mutex<u64>>("m").unwrap().lock().map(drop)
    });
    assert!(
        matches!(&r, Err(Error::Corrupt { what, .. }) if *what == "lock word"),
        "{r:?}"
    );
    assert!(took < AT_ONCE, "lock took {took:?}");
    let t = Instant::now();
    let raw = m.raw();
    assert!(matches!(raw.lock(&seg), Err(LockError::Corrupt { word }) if word == tag));
    let clone = seg.clone();
    let r = raw.lock_for(&clone, Duration::from_secs(10));
    assert!(matches!(r, Err(LockError::Corrupt { .. })), "{r:?}");
    assert!(matches!(raw.try_lock(&seg), Err(LockError::Corrupt { .. })));
    assert!(t.elapsed() < AT_ONCE, "took {:?}", t.elapsed());
    let other = seg.try_clone().unwrap();
    assert!(matches!(raw.try_lock(&other), Err(LockError::WouldBlock)));
    store(&seg, at, 0);
    *m.lock().unwrap() += 1;
    assert_eq!(*m.lock().unwrap(), 1);
}

/// A user's `RwLock` found by name: our tag forged into its writer word makes our
/// reads and writes `Corrupt` at once; a share forged into our own reader entry
/// makes our writes `Corrupt` (reads go on), while another attachment's writer
/// waits for that "live reader" and times out.
#[test]
fn a_user_rwlock_naming_ourselves_is_corrupt_at_once() {
    let (seg, name, _u) = segment("hostile-locks-rwlock-");
    let l = seg.find_or_create::<RwLock<u64>>("l", ()).unwrap();
    let at = offset_of(&seg, l.raw());
    let tag = seg.owner_tag().bits();
    forge(&name, at, tag);
    let (r, took) = bounded({
        let seg = seg.clone();
        move || {
            let l = seg.find::<RwLock<u64>>("l").unwrap();
            (l.read().map(drop), l.write().map(drop))
        }
    });
    assert!(matches!(r.0, Err(Error::Corrupt { .. })), "{:?}", r.0);
    assert!(matches!(r.1, Err(Error::Corrupt { .. })), "{:?}", r.1);
    assert!(took < AT_ONCE, "took {took:?}");
    store(&seg, at, 0);
    *l.write().unwrap() = 5;

    let entry = at + READERS_AT + 8 * u64::from(seg.slot());
    forge(&name, entry, ((tag & INC_MASK) << COUNT_BITS) | 1);
    let (r, took) = bounded({
        let seg = seg.clone();
        move || seg.find::<RwLock<u64>>("l").unwrap().write().map(drop)
    });
    assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
    assert!(took < AT_ONCE, "write took {took:?}");
    assert_eq!(*l.read().unwrap(), 5, "readers go on");
    let other = seg.try_clone().unwrap();
    let r = l.raw().write_for(&other, Duration::from_millis(50));
    assert!(matches!(r, Err(LockError::TimedOut)), "{r:?}");
    store(&seg, entry, 0);
    *l.write().unwrap() += 1;
    assert_eq!(*l.read().unwrap(), 6);
}

/// Two threads of one process on one attachment hammer one `Mutex` (each finds
/// the other's tag, which is its own, in the word all the time): never `Corrupt`,
/// no update lost.
#[test]
fn two_threads_of_one_attachment_contending_on_a_mutex_never_see_corrupt() {
    let seg = SegmentOptions::heap().create().unwrap();
    let m = seg.find_or_create::<Mutex<u64>>("m", ()).unwrap();
    const ROUNDS: u64 = 20_000;
    let done: u64 = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (seg, m) = (seg.clone(), &m);
                s.spawn(move || {
                    let mut done = 0;
                    for i in 0..ROUNDS {
                        let g = match i % 3 {
                            0 => m.raw().lock(&seg),
                            1 => m.raw().lock_for(&seg, PATIENCE),
                            _ => match m.raw().try_lock(&seg) {
                                Err(LockError::WouldBlock) => continue,
                                r => r,
                            },
                        };
                        match g {
                            Ok(mut g) => *g += 1,
                            Err(e) => panic!("round {i}: {e:?}"),
                        }
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    assert_eq!(*m.lock().unwrap(), done);
}

/// Two threads of one attachment on one `RwLock` (readers and writers) and on
/// the heap (transfers in read mode against `trim`'s write mode, each thread with
/// its own `Heap` handle): never `Corrupt`.
#[test]
fn threads_of_one_attachment_on_an_rwlock_and_the_heap_never_see_corrupt() {
    let seg = SegmentOptions::heap().max_size(16 << 20).create().unwrap();
    let l = seg.find_or_create::<RwLock<u64>>("l", ()).unwrap();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (seg, l) = (seg.clone(), &l);
            s.spawn(move || {
                for i in 0..5_000u64 {
                    if (i + t) % 2 == 0 {
                        *l.raw().write(&seg).unwrap() += 1;
                    } else {
                        let _ = *l.raw().read(&seg).unwrap();
                    }
                }
            });
        }
        for t in 0..2 {
            let seg = seg.clone();
            s.spawn(move || {
                let heap = Heap::attach(&seg).unwrap();
                for i in 0..300 {
                    let blocks: Vec<u64> =
                        (0..40).map(|_| heap.alloc(48, 8).unwrap().get()).collect();
                    for b in blocks {
                        heap.free(b).unwrap();
                    }
                    heap.flush().unwrap();
                    if (i + t) % 3 == 0 {
                        heap.trim().unwrap();
                    }
                }
            });
        }
    });
    assert_eq!(*l.read().unwrap(), 5_000);
    assert!(Heap::attach(&seg).unwrap().verify().is_clean());
}

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let name = std::env::var(NAME).unwrap();
    let at: u64 = std::env::var(AT).unwrap().parse().unwrap();
    let seg = SegmentOptions::posix(&name).open().unwrap();
    match role.as_str() {
        "store" => {
            let value: u64 = std::env::var(VALUE).unwrap().parse().unwrap();
            // SAFETY: a misbehaving peer's write: an 8-aligned word of the
            // mapping, stored atomically.
            unsafe {
                (*seg.as_ptr().add(at as usize).cast::<AtomicU64>()).store(value, Ordering::SeqCst)
            };
            println!("{OUT} stored");
        }
        "hold" => {
            // SAFETY: the heap's transfer lock (the parent's `lock_offsets`), an
            // RwLock built in place; the segment outlives the reference.
            let rw = unsafe { &*seg.as_ptr().add(at as usize).cast::<TransferLock>() };
            let _w = exclusive(rw, &seg, Deadline::after(LOCK_WAIT)).unwrap();
            println!("{OUT} held");
            // Hold it until the parent ends us (or its end closes our stdin).
            let _ = std::io::stdin().read_line(&mut String::new());
        }
        r => panic!("unknown role {r}"),
    }
}
