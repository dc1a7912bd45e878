//! The generic hostile-peer run of issue 10: a child process hammers random words
//! all over a live segment (header, registry, heap metadata, blocks, directory)
//! for a few seconds while this process allocates, frees, reallocates, locks,
//! finds objects by name, verifies and reclaims. Every call must return — `Ok` or
//! a typed error — within the documented bounds: no panic, no crash (a SIGBUS or
//! SIGSEGV would kill this test binary), no hang.
//!
//! `SHMKIT_HAMMER_SECS` makes the run longer (default 3 s of hammering).

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmkit::alloc::Heap;
use shmkit::sync::Mutex;
use shmkit::{Segment, SegmentOptions};

use crate::common::{LineChild, PATIENCE, self_test_command};

const ROLE: &str = "SHMKIT_HAMMER_ROLE";
const NAME: &str = "SHMKIT_HAMMER_NAME";
const SECS: &str = "SHMKIT_HAMMER_SECS";
const TAGS: &str = "SHMKIT_HAMMER_TAGS";
const OUT: &str = "SHMKIT-HAMMER";

/// The longest one call may take: the 5 s lock bound once (one deadline per
/// call), plus slack for a loaded 2-core machine.
const CALL_BOUND: Duration = Duration::from_secs(15);

struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = SegmentOptions::posix(&self.0).remove();
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Times one call; panics naming it if it took longer than the bound.
fn timed<T>(what: &str, longest: &mut (Duration, String), f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    let took = t.elapsed();
    assert!(
        took <= CALL_BOUND,
        "{what} took {took:?} under a hostile peer"
    );
    if took > longest.0 {
        *longest = (took, what.to_owned());
    }
    r
}

#[test]
fn a_peer_writing_random_words_everywhere_never_crashes_hangs_or_panics_the_others() {
    let secs: u64 = std::env::var(SECS)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let name = shmkit::unique_name("hostile-hammer-").unwrap();
    let _u = Unlink(name.clone());
    let seg = SegmentOptions::posix(&name)
        .max_size(8 << 20)
        .create()
        .unwrap();
    let heap = Heap::attach(&seg).unwrap();
    let counter = seg.find_or_create::<Mutex<u64>>("counter", ()).unwrap();
    let hits = seg.find_or_create::<AtomicU64>("hits", ()).unwrap();
    // Some of everything before the storm: live blocks, cached ones, a large one.
    let mut live: Vec<u64> = (0..200)
        .map(|i| heap.alloc(16 + (i * 97) % 3000, 8).unwrap().get())
        .collect();
    live.push(heap.alloc(300 << 10, 4096).unwrap().get());
    for b in live.drain(..50) {
        heap.free(b).unwrap();
    }

    let mut cmd = self_test_command("hammer::child_main");
    cmd.env(ROLE, "hammer")
        .env(NAME, &name)
        .env(SECS, secs.to_string())
        .env(TAGS, seg.owner_tag().bits().to_string());
    let mut peer = LineChild::spawn(cmd, Stdio::null());
    peer.next_after(OUT, PATIENCE).expect("the hammer started");

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut longest = (Duration::ZERO, String::new());
    let (mut calls, mut errors) = (0u64, 0u64);
    let until = Instant::now() + Duration::from_secs(secs + 1);
    while Instant::now() < until {
        calls += 1;
        let ok = match rng.next() % 10 {
            0..=2 => {
                let size = 1 + (rng.next() % 5000) as usize;
                timed("alloc", &mut longest, || heap.alloc(size, 8))
                    .map(|o| live.push(o.get()))
                    .is_ok()
            }
            3 | 4 if !live.is_empty() => {
                let b = live.swap_remove((rng.next() % live.len() as u64) as usize);
                timed("free", &mut longest, || heap.free(b)).is_ok()
            }
            5 if !live.is_empty() => {
                let i = (rng.next() % live.len() as u64) as usize;
                let size = 1 + (rng.next() % 20_000) as usize;
                match timed("realloc", &mut longest, || heap.realloc(live[i], size, 8)) {
                    Ok(n) => {
                        live[i] = n.get();
                        true
                    }
                    Err(_) => false,
                }
            }
            6 => timed("lock", &mut longest, || {
                counter
                    .lock_for(Duration::from_millis(200))
                    .map(|mut g| *g += 1)
            })
            .is_ok(),
            7 => timed("find", &mut longest, || {
                seg.find::<AtomicU64>("hits")
                    .map(|h| h.fetch_add(1, Ordering::Relaxed))
            })
            .is_ok(),
            8 => {
                let r = timed("verify", &mut longest, || heap.verify());
                r.is_clean()
            }
            _ => timed("flush", &mut longest, || heap.flush()).is_ok(),
        };
        if !ok {
            errors += 1;
        }
    }
    let st = peer.wait_for_exit(PATIENCE).expect("the hammer exits");
    assert!(st.success(), "the hammer itself failed: {st:?}");
    // After the storm: every entry point still returns.
    let _ = timed("reclaim_dead", &mut longest, || heap.reclaim_dead());
    let _ = timed("verify", &mut longest, || heap.verify());
    let _ = timed("directory verify", &mut longest, || {
        seg.directory().verify()
    });
    let _ = timed("stats", &mut longest, || heap.stats());
    let _ = timed("attach", &mut longest, || {
        SegmentOptions::posix(&name)
            .open()
            .map(|s| Heap::attach(&s).map(drop))
    });
    for b in live.drain(..) {
        let _ = timed("free", &mut longest, || heap.free(b));
    }
    let _ = hits.load(Ordering::Relaxed);
    println!(
        "{calls} calls under a hostile peer, {errors} typed errors, longest {:?} ({})",
        longest.0, longest.1
    );
    assert!(calls > 100, "too few calls to mean anything: {calls}");
    drop(heap);
    drop(counter);
    drop(hits);
    timed("detach", &mut longest, move || drop::<Segment>(seg));
}

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    assert_eq!(role, "hammer");
    let name = std::env::var(NAME).unwrap();
    let secs: u64 = std::env::var(SECS).unwrap().parse().unwrap();
    let victim: u64 = std::env::var(TAGS).unwrap().parse().unwrap();
    let seg = SegmentOptions::posix(&name).open().unwrap();
    let me = seg.owner_tag().bits();
    println!("{OUT} started");
    let mut rng = Rng(std::process::id() as u64 | 1);
    let until = Instant::now() + Duration::from_secs(secs);
    let mut writes = 0u64;
    while Instant::now() < until {
        for _ in 0..1000 {
            let committed = seg.committed();
            let words = committed / 8;
            let at = (rng.next() % words) * 8;
            let r = rng.next();
            // Values a stray or hostile writer would leave: noise, zeros, all ones,
            // the top bit, the victim's or our own owner tag (a forged holder), a
            // plausible offset.
            let value = match r % 8 {
                0 | 1 => rng.next(),
                2 => 0,
                3 => u64::MAX,
                4 => 1 << 63,
                5 => victim,
                6 => me,
                _ => rng.next() % committed,
            };
            // SAFETY: the hostile peer's job: an 8-aligned word below the committed
            // size of its own mapping, written atomically (what any process with
            // write access can do to a shared segment).
            unsafe {
                (*seg.as_ptr().add(at as usize).cast::<AtomicU64>()).store(value, Ordering::Relaxed)
            };
            writes += 1;
        }
        std::thread::yield_now();
    }
    println!("{OUT} wrote {writes}");
    // Leave without detaching cleanly: the registry is garbage anyway.
    std::process::exit(0);
}
