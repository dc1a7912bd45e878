//! Lock benchmarks: shmkit's robust Mutex against a robust process-shared pthread
//! mutex (libc), parking_lot (in-process reference) and std, measured in the same
//! run so that ratios survive a noisy machine.
//!
//! `cargo bench --bench sync`; peers that need another process or crate (raw_sync,
//! POSIX semaphores across processes) live in `peers/`.
#![allow(clippy::disallowed_types)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use shmkit::sync::Mutex;
use shmkit::{Offset, Segment, SegmentOptions};

/// A robust, process-shared pthread mutex in heap memory (the attributes, not the
/// memory, decide its code path).
struct PthreadRobust(Box<libc::pthread_mutex_t>);

impl PthreadRobust {
    fn new() -> Self {
        // SAFETY: standard pthread attribute / mutex initialisation on memory we own;
        // every call's result is checked.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            assert_eq!(libc::pthread_mutexattr_init(&mut attr), 0);
            assert_eq!(
                libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED),
                0
            );
            assert_eq!(
                libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST),
                0
            );
            let mut m: Box<libc::pthread_mutex_t> = Box::new(std::mem::zeroed());
            assert_eq!(libc::pthread_mutex_init(&mut *m, &attr), 0);
            libc::pthread_mutexattr_destroy(&mut attr);
            Self(m)
        }
    }

    fn lock_unlock(&self) {
        let p = &*self.0 as *const libc::pthread_mutex_t as *mut libc::pthread_mutex_t;
        // SAFETY: an initialised mutex that outlives the call; lock then unlock.
        unsafe {
            libc::pthread_mutex_lock(p);
            libc::pthread_mutex_unlock(p);
        }
    }
}

// SAFETY: a process-shared pthread mutex may be used from any thread.
unsafe impl Sync for PthreadRobust {}
// SAFETY: as above.
unsafe impl Send for PthreadRobust {}

fn segment() -> Segment {
    SegmentOptions::heap()
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .create()
        .unwrap()
}

fn shm_mutex(seg: &Segment) -> &Mutex<u64> {
    // SAFETY: nothing else uses this offset.
    unsafe { seg.place(Offset::new(seg.user_offset()), Mutex::new(0)) }.unwrap()
}

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("uncontended lock+unlock");
    let seg = segment();
    let m = shm_mutex(&seg);
    g.bench_function("shmkit Mutex", |b| {
        b.iter(|| *black_box(m).lock(&seg).unwrap() += 1)
    });
    let p = PthreadRobust::new();
    g.bench_function("pthread robust pshared", |b| {
        b.iter(|| black_box(&p).lock_unlock())
    });
    let pl = parking_lot::Mutex::new(0u64);
    g.bench_function("parking_lot", |b| b.iter(|| *black_box(&pl).lock() += 1));
    let sm = std::sync::Mutex::new(0u64);
    g.bench_function("std", |b| b.iter(|| *black_box(&sm).lock().unwrap() += 1));
    g.finish();
}

/// `iters` lock/unlock pairs split over two threads (`op(thread)`); the wall time.
fn two_threads(iters: u64, op: impl Fn(usize) + Sync) -> Duration {
    let half = iters.div_ceil(2);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| (0..half).for_each(|_| op(1)));
        (0..half).for_each(|_| op(0));
    });
    start.elapsed()
}

fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("2-thread contended lock+unlock");
    let seg = segment();
    let other = seg.try_clone().unwrap();
    let m = shm_mutex(&seg);
    g.bench_function("shmkit Mutex", |b| {
        // Each thread locks through its own handle, as two processes would.
        let handles = [&seg, &other];
        b.iter_custom(|iters| two_threads(iters, |t| *m.lock(handles[t]).unwrap() += 1))
    });
    let p = PthreadRobust::new();
    g.bench_function("pthread robust pshared", |b| {
        b.iter_custom(|iters| two_threads(iters, |_| p.lock_unlock()))
    });
    let pl = parking_lot::Mutex::new(0u64);
    g.bench_function("parking_lot", |b| {
        b.iter_custom(|iters| two_threads(iters, |_| *pl.lock() += 1))
    });
    g.finish();
}

/// A raw shared futex ping-pong: the floor any wake-up primitive builds on.
struct RawFutexPair {
    words: [std::sync::atomic::AtomicU32; 2],
}

impl RawFutexPair {
    fn wait(&self, i: usize) {
        use std::sync::atomic::Ordering::*;
        // Sleep while the word is 0, then consume it.
        while self.words[i].swap(0, Acquire) == 0 {
            // SAFETY: FUTEX_WAIT on a valid, aligned u32 we own; shared (not PRIVATE).
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.words[i].as_ptr(),
                    libc::FUTEX_WAIT,
                    0u32,
                    std::ptr::null::<libc::timespec>(),
                );
            }
        }
    }

    fn post(&self, i: usize) {
        self.words[i].store(1, std::sync::atomic::Ordering::Release);
        // SAFETY: FUTEX_WAKE on a valid, aligned u32 we own.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.words[i].as_ptr(),
                libc::FUTEX_WAKE,
                1u32,
            )
        };
    }
}

/// A POSIX process-shared semaphore pair.
struct SemPair(Box<[libc::sem_t; 2]>);

impl SemPair {
    fn new(initial: u32) -> Self {
        // SAFETY: sem_init on memory we own, pshared = 1; results checked.
        unsafe {
            let mut s: Box<[libc::sem_t; 2]> = Box::new(std::mem::zeroed());
            assert_eq!(libc::sem_init(&mut s[0], 1, initial), 0);
            assert_eq!(libc::sem_init(&mut s[1], 1, initial), 0);
            Self(s)
        }
    }
    fn ptr(&self, i: usize) -> *mut libc::sem_t {
        &self.0[i] as *const libc::sem_t as *mut libc::sem_t
    }
    fn wait(&self, i: usize) {
        // SAFETY: an initialised semaphore that outlives the call.
        while unsafe { libc::sem_wait(self.ptr(i)) } != 0 {}
    }
    fn post(&self, i: usize) {
        // SAFETY: as above.
        unsafe { libc::sem_post(self.ptr(i)) };
    }
}

// SAFETY: process-shared semaphores may be used from any thread.
unsafe impl Sync for SemPair {}

/// `iters` round trips between two threads (`post(0)`, other side `wait(0)`,
/// `post(1)`, `wait(1)`); the wall time divided by two is one wake-up latency.
fn ping_pong(iters: u64, wait: impl Fn(usize) + Sync, post: impl Fn(usize) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..iters {
                wait(0);
                post(1);
            }
        });
        for _ in 0..iters {
            post(0);
            wait(1);
        }
    });
    start.elapsed() / 2
}

fn wake_latency(c: &mut Criterion) {
    use shmkit::sync::{Event, EventKind};
    let mut g = c.benchmark_group("post -> wake latency (half a round trip)");
    let raw = RawFutexPair {
        words: [
            std::sync::atomic::AtomicU32::new(0),
            std::sync::atomic::AtomicU32::new(0),
        ],
    };
    g.bench_function("raw futex", |b| {
        b.iter_custom(|iters| ping_pong(iters, |i| raw.wait(i), |i| raw.post(i)))
    });
    let ev = [
        Event::new(EventKind::AutoReset),
        Event::new(EventKind::AutoReset),
    ];
    g.bench_function("shmkit Event", |b| {
        b.iter_custom(|iters| ping_pong(iters, |i| ev[i].wait(), |i| ev[i].set()))
    });
    let sem = SemPair::new(0);
    g.bench_function("POSIX sem_t", |b| {
        b.iter_custom(|iters| ping_pong(iters, |i| sem.wait(i), |i| sem.post(i)))
    });
    g.finish();
}

fn semaphore(c: &mut Criterion) {
    use shmkit::sync::Semaphore;
    let mut g = c.benchmark_group("uncontended acquire+release");
    let seg = segment();
    let s = Semaphore::new(1);
    g.bench_function("shmkit Semaphore", |b| {
        b.iter(|| {
            s.acquire(&seg).unwrap();
            s.release(&seg, 1).unwrap();
        })
    });
    let l = Semaphore::<128>::with_ledger(1);
    g.bench_function("shmkit Semaphore (ledger)", |b| {
        b.iter(|| {
            l.acquire(&seg).unwrap();
            l.release(&seg, 1).unwrap();
        })
    });
    let sem = SemPair::new(1);
    g.bench_function("POSIX sem_t", |b| {
        b.iter(|| {
            sem.wait(0);
            sem.post(0);
        })
    });
    g.finish();
}

fn rwlock(c: &mut Criterion) {
    use shmkit::sync::RwLock;
    let mut g = c.benchmark_group("uncontended read lock+unlock");
    let seg = segment();
    let l: RwLock<u64> = RwLock::new(0);
    g.bench_function("shmkit RwLock", |b| {
        b.iter(|| *black_box(&l).read(&seg).unwrap())
    });
    let pl = parking_lot::RwLock::new(0u64);
    g.bench_function("parking_lot", |b| b.iter(|| *black_box(&pl).read()));
    let sl = std::sync::RwLock::new(0u64);
    g.bench_function("std", |b| b.iter(|| *black_box(&sl).read().unwrap()));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = uncontended, contended, wake_latency, semaphore, rwlock
}
criterion_main!(benches);
