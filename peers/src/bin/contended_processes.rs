//! Two processes hammering one lock: shmkit's robust Mutex against a robust
//! process-shared pthread mutex, both in the same shared mapping, measured in the
//! same run (A B A B, medians), so that the ratio survives a noisy machine.
//!
//! ```text
//! cd peers && cargo run --release --bin contended_processes [rounds]
//! ```
#![allow(clippy::disallowed_types)] // the example's own std atomics

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use shmkit::sync::Mutex;
use shmkit::{Offset, Segment, SegmentOptions};

const OPS: u64 = 1_000_000;

/// Runs `op` OPS times in this process and in a forked child at once; returns the
/// wall time per op (both processes' ops counted).
fn two_processes(seg: &Segment, name: &str, go: &AtomicU32, op: &dyn Fn(&Segment)) -> f64 {
    go.store(0, Ordering::SeqCst);
    // SAFETY: this program is single-threaded; the child only runs `op` on the
    // MAP_SHARED segment, then leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // The child's own handle (its own registry slot and owner tag).
        let own = SegmentOptions::posix(name).open().expect("child handle");
        go.fetch_add(1, Ordering::SeqCst);
        while go.load(Ordering::SeqCst) < 2 {
            std::hint::spin_loop();
        }
        for _ in 0..OPS {
            op(&own);
        }
        drop(own);
        // SAFETY: leave the forked child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    while go.load(Ordering::SeqCst) < 1 {
        std::hint::spin_loop();
    }
    let start = Instant::now();
    go.fetch_add(1, Ordering::SeqCst);
    for _ in 0..OPS {
        op(seg);
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    start.elapsed().as_nanos() as f64 / (2 * OPS) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(11);
    let name = shmkit::unique_name("contended-")?;
    let seg = SegmentOptions::posix(&name)
        .max_size(1 << 20)
        .committed(64 << 10)
        .create()?;
    let base = seg.user_offset();
    // SAFETY: nothing else uses these offsets yet; the child is forked later.
    let ours = unsafe { seg.place(Offset::<Mutex<u64>>::new(base), Mutex::new(0))? };
    // SAFETY: this test views each offset as one type only.
    let go = unsafe { seg.resolve(Offset::<AtomicU32>::new(base + 64)) }?;
    let pm = seg
        .resolve_ptr(Offset::<[u64; 8]>::new(base + 128))?
        .as_ptr()
        .cast::<libc::pthread_mutex_t>();
    // SAFETY: a robust, process-shared pthread mutex initialised in the shared
    // mapping (64 bytes reserved, 40 used), before the child exists.
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut attr);
        libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
        assert_eq!(libc::pthread_mutex_init(pm, &attr), 0);
    }
    let pm_addr = pm as usize;
    let shm = |s: &Segment| *ours.lock(s).unwrap() += 1;
    let pthread = |_: &Segment| {
        let p = pm_addr as *mut libc::pthread_mutex_t;
        // SAFETY: the initialised mutex lives in the mapping for the whole program.
        unsafe {
            libc::pthread_mutex_lock(p);
            libc::pthread_mutex_unlock(p);
        }
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(two_processes(&seg, &name, go, &shm));
        b.push(two_processes(&seg, &name, go, &pthread));
    }
    let (ma, mb) = (median(a), median(b));
    println!("2-process contended lock+unlock, median of {rounds} rounds of 2 x {OPS} ops:");
    println!("  shmkit Mutex            {ma:7.1} ns/op");
    println!("  pthread robust pshared  {mb:7.1} ns/op");
    println!("  ratio shmkit/pthread = {:.2}", ma / mb);
    assert_eq!(*ours.lock(&seg).unwrap(), 2 * OPS * rounds as u64);
    Ok(())
}
