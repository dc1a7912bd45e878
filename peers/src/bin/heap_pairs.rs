//! The same workload as `peers/boost_heap/bench.cpp`, on shmkit's heap (and on
//! glibc malloc as the in-process reference): alloc+free pairs, one byte written
//! into each block, in three modes (1t, 2t: two threads with a heap handle each,
//! 2p: this process and a forked child). Same calibration (about 75 ms batches
//! after a 150 ms warm-up), same output format:
//!
//! `shmkit size=16 mode=1t ns_per_pair=12.3 mops_total=81.3`
//!
//! `ns_per_pair` is per worker (batch wall time / pairs one worker did).
//! Options: `--sizes 16,256 --modes 1t,2t,2p --batches 11 --only shmkit|malloc`.
#![allow(clippy::disallowed_types)]

use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use shmkit::alloc::Heap;
use shmkit::{Segment, SegmentOptions};

const TARGET_BATCH_NS: f64 = 75e6;
const WARM_UP_NS: f64 = 150e6;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn shm_pairs(heap: &Heap, size: usize, n: u64) {
    for i in 0..n {
        let off = heap.alloc(size, 8).expect("alloc").get();
        // SAFETY: a live block of at least `size` >= 1 bytes, ours.
        unsafe { heap.ptr(off).unwrap().as_ptr().write_volatile(i as u8) };
        heap.free(black_box(off)).expect("free");
    }
}

fn malloc_pairs(size: usize, n: u64) {
    for i in 0..n {
        // SAFETY: malloc/free pairs; the byte written is inside the block.
        unsafe {
            let p = libc::malloc(size).cast::<u8>();
            assert!(!p.is_null());
            p.write_volatile(i as u8);
            libc::free(black_box(p).cast());
        }
    }
}

/// Control words for the forked follower, in the segment.
#[repr(C)]
struct Control {
    epoch: AtomicU64,
    pairs: AtomicU64,
    size: AtomicU64,
    done: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
    quit: AtomicU64,
}

fn follower(seg: &Segment, ctl: &Control) -> ! {
    let heap = Heap::attach(seg).expect("child attach");
    let mut seen = 0;
    loop {
        let e = ctl.epoch.load(Ordering::Acquire);
        if ctl.quit.load(Ordering::Acquire) == 1 {
            drop(heap);
            // SAFETY: leave the forked child without running the parent's atexit.
            unsafe { libc::_exit(0) };
        }
        if e == seen {
            std::hint::spin_loop();
            continue;
        }
        seen = e;
        let (n, size) = (
            ctl.pairs.load(Ordering::Relaxed),
            ctl.size.load(Ordering::Relaxed),
        );
        let s = now_ns();
        shm_pairs(&heap, size as usize, n);
        ctl.start.store(s, Ordering::Relaxed);
        ctl.end.store(now_ns(), Ordering::Relaxed);
        ctl.done.store(e, Ordering::Release);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Calibrates and times one case; `batch(n)` returns the wall ns of n pairs per worker.
fn run_case(
    name: &str,
    size: usize,
    mode: &str,
    workers: f64,
    batches: usize,
    mut batch: impl FnMut(u64) -> f64,
) {
    let mut pairs = 1000u64;
    while batch(pairs) < 10e6 {
        pairs *= 2;
    }
    let start = Instant::now();
    let mut warm = Vec::new();
    while warm.len() < 3 || (start.elapsed().as_nanos() as f64) < WARM_UP_NS {
        warm.push(batch(pairs) / pairs as f64);
    }
    let per = median(warm[warm.len() - 3..].to_vec());
    let pairs = ((TARGET_BATCH_NS / per) as u64).max(1000);
    let ns: Vec<f64> = (0..batches).map(|_| batch(pairs) / pairs as f64).collect();
    let m = median(ns);
    println!(
        "{name} size={size} mode={mode} ns_per_pair={m:.1} mops_total={:.2}",
        workers * 1e3 / m
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut sizes = vec![16usize, 256, 4096, 65536];
    let mut modes = vec!["1t".to_string(), "2t".into(), "2p".into()];
    let mut batches = 11;
    let mut only: Option<String> = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--sizes" => sizes = v.split(',').map(|s| s.parse().unwrap()).collect(),
            "--modes" => modes = v.split(',').map(String::from).collect(),
            "--batches" => batches = v.parse()?,
            "--only" => only = Some(v),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let name = shmkit::unique_name("heap-pairs")?;
    let seg = SegmentOptions::posix(&name).max_size(1 << 30).create()?;
    let heap = Heap::attach(&seg)?;
    let ctl_off = heap.alloc(size_of::<Control>(), 8)?.get();
    heap.publish(ctl_off)?;
    let ctl_ptr = heap.ptr(ctl_off)?.as_ptr().cast::<Control>();
    // SAFETY: a fresh block big enough and aligned for Control, which is atomics
    // only (all-zero is a valid value); it lives as long as the segment.
    let ctl: &Control = unsafe {
        ctl_ptr.write_bytes(0, 1);
        &*ctl_ptr
    };
    for &size in &sizes {
        for mode in &modes {
            match mode.as_str() {
                "1t" => {
                    if want("shmkit") {
                        run_case("shmkit", size, "1t", 1.0, batches, |n| {
                            let t = now_ns();
                            shm_pairs(&heap, size, n);
                            (now_ns() - t) as f64
                        });
                    }
                    if want("malloc") {
                        run_case("malloc", size, "1t", 1.0, batches, |n| {
                            let t = now_ns();
                            malloc_pairs(size, n);
                            (now_ns() - t) as f64
                        });
                    }
                }
                "2t" => {
                    for name in ["shmkit", "malloc"] {
                        if !want(name) {
                            continue;
                        }
                        run_case(name, size, "2t", 2.0, batches, |n| {
                            let bar = Barrier::new(2);
                            let times: Vec<(u64, u64)> = std::thread::scope(|s| {
                                let hs: Vec<_> = (0..2)
                                    .map(|_| {
                                        s.spawn(|| {
                                            let h = (name == "shmkit")
                                                .then(|| Heap::attach(&seg).unwrap());
                                            bar.wait();
                                            let t = now_ns();
                                            match &h {
                                                Some(h) => shm_pairs(h, size, n),
                                                None => malloc_pairs(size, n),
                                            }
                                            (t, now_ns())
                                        })
                                    })
                                    .collect();
                                hs.into_iter().map(|h| h.join().unwrap()).collect()
                            });
                            let s = times.iter().map(|t| t.0).min().unwrap();
                            let e = times.iter().map(|t| t.1).max().unwrap();
                            (e - s) as f64
                        });
                    }
                }
                "2p" if want("shmkit") => {
                    // SAFETY: the child only touches the segment and the heap, then _exits.
                    let pid = unsafe { libc::fork() };
                    if pid == 0 {
                        // A handle of our own (a registry slot of our own).
                        let mine = SegmentOptions::posix(&name).open().expect("child open");
                        let base = mine.as_ptr();
                        // SAFETY: the control block is at the same offset in the
                        // child's mapping of the same segment, alive while `mine` is.
                        let ctl = unsafe { &*base.add(ctl_off as usize).cast::<Control>() };
                        follower(&mine, ctl);
                    }
                    let mut epoch = ctl.epoch.load(Ordering::Relaxed);
                    run_case("shmkit", size, "2p", 2.0, batches, |n| {
                        epoch += 1;
                        ctl.pairs.store(n, Ordering::Relaxed);
                        ctl.size.store(size as u64, Ordering::Relaxed);
                        ctl.epoch.store(epoch, Ordering::Release);
                        let s = now_ns();
                        shm_pairs(&heap, size, n);
                        let e = now_ns();
                        while ctl.done.load(Ordering::Acquire) != epoch {
                            std::hint::spin_loop();
                        }
                        let cs = ctl.start.load(Ordering::Relaxed);
                        let ce = ctl.end.load(Ordering::Relaxed);
                        (e.max(ce) - s.min(cs)) as f64
                    });
                    ctl.quit.store(1, Ordering::Release);
                    let mut status = 0;
                    // SAFETY: waiting for our own child.
                    unsafe { libc::waitpid(pid, &mut status, 0) };
                    ctl.quit.store(0, Ordering::Release);
                }
                _ => {}
            }
        }
    }
    let r = heap.verify();
    eprintln!("{r}");
    Ok(())
}
