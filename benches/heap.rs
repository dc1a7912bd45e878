//! Heap benchmarks: alloc+free pairs (one byte written into each block) at 16 B,
//! 256 B, 4 KiB and 64 KiB, in one thread, two threads (a heap handle each) and two
//! processes (a forked follower with its own handle), against glibc malloc (the
//! in-process reference) in the same run.
//!
//! `cargo bench --bench heap`. Boost.Interprocess runs the same workload in
//! `peers/boost_heap/` (`bash peers/boost_heap/compare.sh` prints both, A B A B,
//! with ratios).
#![allow(clippy::disallowed_types)]

use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use shmkit::SegmentOptions;
use shmkit::alloc::Heap;

const SIZES: [usize; 4] = [16, 256, 4096, 65536];

fn shm_pairs(heap: &Heap, size: usize, n: u64) {
    for i in 0..n {
        let off = heap.alloc(size, 8).unwrap().get();
        // SAFETY: a live block of at least `size` >= 1 bytes that we own.
        unsafe { heap.ptr(off).unwrap().as_ptr().write_volatile(i as u8) };
        heap.free(black_box(off)).unwrap();
    }
}

fn malloc_pairs(size: usize, n: u64) {
    for i in 0..n {
        // SAFETY: a malloc/free pair; the byte written is inside the block.
        unsafe {
            let p = libc::malloc(size).cast::<u8>();
            assert!(!p.is_null());
            p.write_volatile(i as u8);
            libc::free(black_box(p).cast());
        }
    }
}

/// Runs `work(n)` on two threads at once; the wall time of the pair of them.
fn two_threads(n: u64, work: &(dyn Fn(u64) + Sync)) -> Duration {
    let bar = Barrier::new(3);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                bar.wait();
                work(n);
            });
        }
        bar.wait();
        let t = Instant::now();
        // The scope joins both workers before returning.
        t
    })
    .elapsed()
}

fn one_thread(c: &mut Criterion) {
    let seg = SegmentOptions::memfd().max_size(1 << 30).create().unwrap();
    let heap = Heap::attach(&seg).unwrap();
    let mut g = c.benchmark_group("heap_pair_1t");
    for size in SIZES {
        g.bench_with_input(BenchmarkId::new("shmkit", size), &size, |b, &size| {
            b.iter_custom(|n| {
                let t = Instant::now();
                shm_pairs(&heap, size, n);
                t.elapsed()
            });
        });
        g.bench_with_input(BenchmarkId::new("malloc", size), &size, |b, &size| {
            b.iter_custom(|n| {
                let t = Instant::now();
                malloc_pairs(size, n);
                t.elapsed()
            });
        });
    }
    g.finish();
}

fn threads(c: &mut Criterion) {
    let seg = SegmentOptions::memfd().max_size(1 << 30).create().unwrap();
    let mut g = c.benchmark_group("heap_pair_2t");
    for size in SIZES {
        g.bench_with_input(BenchmarkId::new("shmkit", size), &size, |b, &size| {
            b.iter_custom(|n| {
                two_threads(n, &|n| {
                    let heap = Heap::attach(&seg).unwrap();
                    shm_pairs(&heap, size, n);
                })
            });
        });
        g.bench_with_input(BenchmarkId::new("malloc", size), &size, |b, &size| {
            b.iter_custom(|n| two_threads(n, &|n| malloc_pairs(size, n)));
        });
    }
    g.finish();
}

/// Words a forked follower watches: a request (epoch, pairs, size) and its answer.
#[repr(C)]
struct Control {
    epoch: AtomicU64,
    pairs: AtomicU64,
    size: AtomicU64,
    done: AtomicU64,
    quit: AtomicU64,
}

fn processes(c: &mut Criterion) {
    let name = shmkit::unique_name("bench-heap").unwrap();
    let seg = SegmentOptions::posix(&name)
        .max_size(1 << 30)
        .create()
        .unwrap();
    let heap = Heap::attach(&seg).unwrap();
    let ctl_off = heap.alloc(size_of::<Control>(), 8).unwrap().get();
    heap.publish(ctl_off).unwrap();
    let ctl_ptr = heap.ptr(ctl_off).unwrap().as_ptr().cast::<Control>();
    // SAFETY: a fresh, aligned block of Control's size; atomics only, zero is valid.
    let ctl: &Control = unsafe {
        ctl_ptr.write_bytes(0, 1);
        &*ctl_ptr
    };
    // SAFETY: the child opens its own handle, touches only the segment and exits
    // with _exit; the parent has no other threads running at this point.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mine = SegmentOptions::posix(&name).open().unwrap();
        let h = Heap::attach(&mine).unwrap();
        // SAFETY: same offset in the child's mapping of the same segment.
        let ctl = unsafe { &*mine.as_ptr().add(ctl_off as usize).cast::<Control>() };
        let mut seen = 0;
        while ctl.quit.load(Ordering::Acquire) == 0 {
            let e = ctl.epoch.load(Ordering::Acquire);
            if e == seen {
                std::hint::spin_loop();
                continue;
            }
            seen = e;
            let (n, size) = (
                ctl.pairs.load(Ordering::Relaxed),
                ctl.size.load(Ordering::Relaxed),
            );
            shm_pairs(&h, size as usize, n);
            ctl.done.store(e, Ordering::Release);
        }
        drop(h);
        // SAFETY: leave the forked child without the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut g = c.benchmark_group("heap_pair_2p");
    let mut epoch = 0;
    for size in SIZES {
        g.bench_with_input(BenchmarkId::new("shmkit", size), &size, |b, &size| {
            b.iter_custom(|n| {
                epoch += 1;
                ctl.pairs.store(n, Ordering::Relaxed);
                ctl.size.store(size as u64, Ordering::Relaxed);
                let t = Instant::now();
                ctl.epoch.store(epoch, Ordering::Release);
                shm_pairs(&heap, size, n);
                while ctl.done.load(Ordering::Acquire) != epoch {
                    std::hint::spin_loop();
                }
                t.elapsed()
            });
        });
    }
    g.finish();
    ctl.quit.store(1, Ordering::Release);
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = one_thread, threads, processes
}
criterion_main!(benches);
