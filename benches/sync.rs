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

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = uncontended, contended
}
criterion_main!(benches);
