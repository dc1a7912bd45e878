//! Directory benchmarks: `find` of an existing name at 10, 10 000 and 100 000
//! names (the cost a process pays once per object), `find_or_create` of existing
//! names while a second process races on the same names, and a handle's `lock()`
//! against the low-level `lock(&seg)` on the same mutex, in the same run.
//!
//! `cargo bench --bench directory`. The racing process is this binary re-executed
//! with `SHMKIT_BENCH_RACER=<segment name>`.
#![allow(clippy::disallowed_types)] // std atomics are the objects benchmarked here

use std::hint::black_box;
use std::process::{Child, Command};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group};
use shmkit::sync::Mutex;
use shmkit::{Segment, SegmentOptions};

const COUNTS: [usize; 3] = [10, 10_000, 100_000];
const RACER: &str = "SHMKIT_BENCH_RACER";

fn name(i: usize) -> String {
    format!("object-{i}")
}

/// A posix segment holding `n` AtomicU64 objects named `object-0..n`.
fn filled(n: usize) -> (Segment, String) {
    let seg_name = shmkit::unique_name("bench-dir-").unwrap();
    let seg = SegmentOptions::posix(&seg_name)
        .max_size(1 << 30)
        .create()
        .unwrap();
    for i in 0..n {
        drop(seg.create::<AtomicU64>(&name(i), ()).unwrap());
    }
    (seg, seg_name)
}

/// Finds names in a fixed pseudo-random order (no cache-friendly stride).
fn picks(n: usize) -> Vec<String> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            name((x % n as u64) as usize)
        })
        .collect()
}

fn find(c: &mut Criterion) {
    let mut g = c.benchmark_group("directory_find");
    g.measurement_time(Duration::from_secs(3));
    for n in COUNTS {
        let (seg, _name) = filled(n);
        let names = picks(n);
        // Held handles make each drop below a local count decrement, so this is
        // `find` itself: lock, probe, hold record.
        let held: Vec<_> = names
            .iter()
            .map(|k| seg.find::<AtomicU64>(k).unwrap())
            .collect();
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("find", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % names.len();
                black_box(seg.find::<AtomicU64>(&names[i]).unwrap());
            })
        });
        drop(held);
        // A first find and a last drop: the whole cost of meeting an object once.
        g.bench_with_input(BenchmarkId::new("find_then_release", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % names.len();
                black_box(seg.find::<AtomicU64>(&names[i]).unwrap());
            })
        });
    }
    g.finish();
}

struct Racer(Child);

impl Drop for Racer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_or_create_raced(c: &mut Criterion) {
    let mut g = c.benchmark_group("directory_find_or_create_2p");
    g.measurement_time(Duration::from_secs(3));
    for n in COUNTS {
        let (seg, seg_name) = filled(n);
        let names = picks(n);
        let _racer = Racer(
            Command::new(std::env::current_exe().unwrap())
                .env(RACER, &seg_name)
                .env("SHMKIT_BENCH_NAMES", n.to_string())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(200));
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("find_or_create", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % names.len();
                black_box(seg.find_or_create::<AtomicU64>(&names[i], ()).unwrap());
            })
        });
    }
    g.finish();
}

fn lock(c: &mut Criterion) {
    let mut g = c.benchmark_group("handle_lock");
    let seg = SegmentOptions::heap().create().unwrap();
    let m = seg.find_or_create::<Mutex<u64>>("m", ()).unwrap();
    let raw: &Mutex<u64> = m.raw();
    g.bench_function("handle.lock()", |b| {
        b.iter(|| *m.lock().unwrap() += 1);
    });
    g.bench_function("mutex.lock(&seg)", |b| {
        b.iter(|| *raw.lock(&seg).unwrap() += 1);
    });
    g.finish();
}

/// The racing process: `find_or_create` over the same names until killed.
fn racer(seg_name: &str) -> ! {
    let seg = SegmentOptions::posix(seg_name).open().unwrap();
    let n: usize = std::env::var("SHMKIT_BENCH_NAMES")
        .unwrap()
        .parse()
        .unwrap();
    let names = picks(n);
    loop {
        for k in &names {
            drop(black_box(seg.find_or_create::<AtomicU64>(k, ()).unwrap()));
        }
    }
}

criterion_group!(benches, find, find_or_create_raced, lock);

fn main() {
    if let Ok(seg) = std::env::var(RACER) {
        racer(&seg);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
