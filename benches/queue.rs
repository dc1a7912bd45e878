//! SPSC queue benchmarks between two threads, with the atomic floor measured in
//! the same run: a bare cache-line ping-pong between the same two threads.
//!
//! - `spsc_rtt/{8,64,1024}B`: a round trip through two `SpscQueue`s (ping, pong);
//!   one-way latency is half of it. `floor_rtt` is the same round trip on one
//!   atomic word.
//! - `spsc_throughput/{single,batch}`: 8-byte messages streamed from one thread to
//!   the other, one `try_push`/`pop` at a time or in batches of 32.
//! - `spsc_rtt_process/{8,64,1024}B`: the round trip with the echo side in another
//!   process (this bench binary re-executed with `SHMKIT_BENCH_ECHO` set), through
//!   queues of a POSIX segment.
//!
//! - `broadcast_send/{0,1,2,4}readers`: a `Broadcast` writer's cost per 32-byte
//!   message while that many reader threads follow the ring.
//!
//! `cargo bench --bench queue`. The peers (crossbeam `ArrayQueue`, `rtrb`,
//! iceoryx2, UDS, pipes) and a cross-process floor are not measured here yet.
#![allow(clippy::disallowed_types)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use shmkit::queue::{Broadcast, Received, SpscQueue};
use shmkit::zerocopy::FromZeros;
use shmkit::{SegmentOptions, ShmSafe};

/// Round trips through a ping and a pong queue of `T`, `iters` of them.
fn rtt<T: ShmSafe + Copy + Send + FromZeros>(iters: u64) -> Duration {
    let seg = SegmentOptions::heap().max_size(8 << 20).create().unwrap();
    let ping = seg.find_or_create::<SpscQueue<T>>("ping", 64).unwrap();
    let pong = seg.find_or_create::<SpscQueue<T>>("pong", 64).unwrap();
    let (mut ping_tx, mut ping_rx) = (ping.producer().unwrap(), ping.consumer().unwrap());
    let (mut pong_tx, mut pong_rx) = (pong.producer().unwrap(), pong.consumer().unwrap());
    let echo = std::thread::spawn(move || {
        for _ in 0..iters {
            let v = loop {
                if let Some(v) = ping_rx.pop().unwrap() {
                    break v;
                }
                std::hint::spin_loop();
            };
            while pong_tx.try_push(v).is_err() {
                std::hint::spin_loop();
            }
        }
    });
    let start = Instant::now();
    for _ in 0..iters {
        while ping_tx.try_push(T::new_zeroed()).is_err() {
            std::hint::spin_loop();
        }
        loop {
            if let Some(v) = pong_rx.pop().unwrap() {
                black_box(v);
                break;
            }
            std::hint::spin_loop();
        }
    }
    let took = start.elapsed();
    echo.join().unwrap();
    took
}

/// The floor: the same round trip on one atomic word (odd: ping, even: pong).
fn floor_rtt(iters: u64) -> Duration {
    let word = Arc::new(AtomicU64::new(0));
    let w2 = word.clone();
    let echo = std::thread::spawn(move || {
        for i in 0..iters {
            while w2.load(Ordering::Acquire) != 2 * i + 1 {
                std::hint::spin_loop();
            }
            w2.store(2 * i + 2, Ordering::Release);
        }
    });
    let start = Instant::now();
    for i in 0..iters {
        word.store(2 * i + 1, Ordering::Release);
        while word.load(Ordering::Acquire) != 2 * i + 2 {
            std::hint::spin_loop();
        }
    }
    let took = start.elapsed();
    echo.join().unwrap();
    took
}

/// Streams `iters` 8-byte messages, in batches of `batch` (1: single calls).
fn stream(iters: u64, batch: usize) -> Duration {
    let seg = SegmentOptions::heap().max_size(8 << 20).create().unwrap();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 4096).unwrap();
    let (mut tx, mut rx) = (q.producer().unwrap(), q.consumer().unwrap());
    let go = Arc::new(AtomicBool::new(false));
    let go2 = go.clone();
    let consumer = std::thread::spawn(move || {
        while !go2.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let mut got = 0u64;
        let mut buf = vec![0u64; batch];
        while got < iters {
            if batch == 1 {
                if let Some(v) = rx.pop().unwrap() {
                    black_box(v);
                    got += 1;
                }
            } else {
                got += rx.pop_into(&mut buf).unwrap() as u64;
            }
        }
    });
    let vals: Vec<u64> = (0..batch as u64).collect();
    let start = Instant::now();
    go.store(true, Ordering::Release);
    let mut sent = 0u64;
    while sent < iters {
        if batch == 1 {
            if tx.try_push(sent).is_ok() {
                sent += 1;
            }
        } else {
            let n = (batch as u64).min(iters - sent) as usize;
            sent += tx.push_slice(&vals[..n]).unwrap() as u64;
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

fn latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("spsc_rtt");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("floor_rtt", |b| b.iter_custom(floor_rtt));
    g.bench_function("8B", |b| b.iter_custom(rtt::<[u64; 1]>));
    g.bench_function("64B", |b| b.iter_custom(rtt::<[u64; 8]>));
    g.bench_function("1024B", |b| b.iter_custom(rtt::<[u64; 128]>));
    g.finish();
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("spsc_throughput");
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    g.bench_function("single", |b| b.iter_custom(|n| stream(n, 1)));
    g.bench_function("batch32", |b| b.iter_custom(|n| stream(n, 32)));
    g.finish();
}

const ECHO: &str = "SHMKIT_BENCH_ECHO";
const ECHO_SIZE: &str = "SHMKIT_BENCH_ECHO_WORDS";

/// The echo process: pops from "ping", pushes to "pong", until its stdin closes.
fn echo_main(name: &str, words: &str) {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut sink);
        std::process::exit(0);
    });
    match words {
        "1" => echo::<[u64; 1]>(name),
        "8" => echo::<[u64; 8]>(name),
        _ => echo::<[u64; 128]>(name),
    }
}

fn echo<T: ShmSafe + Copy + Send + FromZeros>(name: &str) {
    let seg = SegmentOptions::posix(name).open().unwrap();
    let mut rx = seg
        .find::<SpscQueue<T>>("ping")
        .unwrap()
        .consumer()
        .unwrap();
    let mut tx = seg
        .find::<SpscQueue<T>>("pong")
        .unwrap()
        .producer()
        .unwrap();
    println!("ready");
    loop {
        if let Some(v) = rx.pop().unwrap() {
            while tx.try_push(v).is_err() {
                std::hint::spin_loop();
            }
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Round trips to an echo process, for one message type.
fn process_rtt<T: ShmSafe + Copy + Send + FromZeros>(c: &mut Criterion, label: &str, words: &str) {
    let name = shmkit::unique_name("bench-queue-").unwrap();
    let seg = SegmentOptions::posix(&name)
        .max_size(8 << 20)
        .create()
        .unwrap();
    let ping = seg.find_or_create::<SpscQueue<T>>("ping", 64).unwrap();
    let pong = seg.find_or_create::<SpscQueue<T>>("pong", 64).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(ECHO, &name)
        .env(ECHO_SIZE, words)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let out = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let (mut tx, mut rx) = (ping.producer().unwrap(), pong.consumer().unwrap());
    let mut g = c.benchmark_group("spsc_rtt_process");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function(label, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                while tx.try_push(T::new_zeroed()).is_err() {
                    std::hint::spin_loop();
                }
                loop {
                    if let Some(v) = rx.pop().unwrap() {
                        black_box(v);
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            start.elapsed()
        })
    });
    g.finish();
    let _ = child.kill();
    let _ = child.wait();
}

fn processes(c: &mut Criterion) {
    process_rtt::<[u64; 1]>(c, "8B", "1");
    process_rtt::<[u64; 8]>(c, "64B", "8");
    process_rtt::<[u64; 128]>(c, "1024B", "128");
}

/// The broadcast writer's time for `iters` 32-byte messages while `readers`
/// threads follow the ring (each spinning on `try_recv`).
fn broadcast_send(iters: u64, readers: usize) -> Duration {
    let seg = SegmentOptions::heap().max_size(8 << 20).create().unwrap();
    let b = seg
        .find_or_create::<Broadcast<[u64; 4]>>("ticks", 4096)
        .unwrap();
    let mut w = b.writer().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let followers: Vec<_> = (0..readers)
        .map(|_| {
            let mut r = b.reader().unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match r.try_recv().unwrap() {
                        Some(Received::Message(m)) => n = n.wrapping_add(m[0]),
                        Some(Received::Lagged(k)) => n = n.wrapping_add(k),
                        None => std::hint::spin_loop(),
                    }
                }
                black_box(n)
            })
        })
        .collect();
    let start = Instant::now();
    for i in 0..iters {
        w.send([i, i, i, i]).unwrap();
    }
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for f in followers {
        f.join().unwrap();
    }
    took
}

/// `broadcast_send/{0,1,2,4}`: the writer's cost per message as readers are
/// added (readers write nothing, so it should not grow beyond cache traffic).
fn broadcast(c: &mut Criterion) {
    let mut g = c.benchmark_group("broadcast_send");
    g.throughput(Throughput::Elements(1));
    for readers in [0usize, 1, 2, 4] {
        g.bench_function(format!("{readers}readers"), |b| {
            b.iter_custom(|iters| broadcast_send(iters, readers))
        });
    }
    g.finish();
}

criterion_group!(benches, latency, throughput, processes, broadcast);

fn main() {
    if let Ok(name) = std::env::var(ECHO) {
        echo_main(&name, &std::env::var(ECHO_SIZE).unwrap_or_default());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
