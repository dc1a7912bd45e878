//! Loom models of the heap's lock-free core: the tagged free list under the ABA
//! interleaving, concurrent alloc and free through process caches, and a process
//! killed at every crash point of alloc and free while another goes on, after
//! which `reclaim` brings every block back exactly once.
//!
//! The arena stands in for a span: blocks of class 0 (16 bytes) at `BASE`, their
//! owner words at `OWNERS`, reached through the same `Mem` trait the segment
//! implements.
//!
//! Run: `RUSTFLAGS="--cfg shmkit_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_heap`
#![cfg(shmkit_loom)]

mod loom_model;

use loom::sync::Arc;
use loom::thread;
use loom_model::{Proc, Registry, proc};
use shmkit::alloc::model::{
    BlockState, Cache, Deadline, FREE_WORD, LOCK_WAIT, Loc, Mem, TransferLock, exclusive,
    free_small, link, pop, push, reclaim, walk,
};
use shmkit::loom::{AtomicU64, Ordering, crash};
use shmkit::sync::Context;
use shmkit::{AtomicTagged, Tagged};

const BASE: u64 = 4096;
const OWNERS: u64 = 8192;

struct Arena {
    words: Vec<AtomicU64>,
    owners: Vec<AtomicU64>,
    n: u64,
    head: AtomicTagged,
    rw: TransferLock,
}

impl Mem for Arena {
    fn word(&self, off: u64) -> Option<&AtomicU64> {
        if off % 8 != 0 {
            return None;
        }
        if (BASE..BASE + 16 * self.n).contains(&off) {
            return self.words.get(((off - BASE) / 8) as usize);
        }
        if (OWNERS..OWNERS + 8 * self.n).contains(&off) {
            return self.owners.get(((off - OWNERS) / 8) as usize);
        }
        None
    }

    fn locate(&self, off: u64) -> Option<Loc> {
        let ok = (BASE..BASE + 16 * self.n).contains(&off) && (off - BASE) % 16 == 0;
        ok.then(|| Loc {
            class: 0,
            owner: OWNERS + (off - BASE) / 16 * 8,
        })
    }
}

fn block(i: u64) -> u64 {
    BASE + 16 * i
}

/// `n` free blocks on the list, in batches of `per_batch`.
fn arena(n: u64, per_batch: u64) -> Arc<Arena> {
    let a = Arena {
        words: (0..2 * n).map(|_| AtomicU64::new(0)).collect(),
        owners: (0..n).map(|_| AtomicU64::new(FREE_WORD)).collect(),
        n,
        head: AtomicTagged::new(Tagged::from_bits(0)),
        rw: TransferLock::new(),
    };
    let ids: Vec<u64> = (0..n).rev().collect();
    for chunk in ids.chunks(per_batch as usize) {
        for pair in chunk.windows(2) {
            link(&a, block(pair[0]))
                .unwrap()
                .store(block(pair[1]), Ordering::Relaxed);
        }
        link(&a, block(chunk[chunk.len() - 1]))
            .unwrap()
            .store(0, Ordering::Relaxed);
        push(&a, &a.head, block(chunk[0]), chunk.len() as u32).unwrap();
    }
    Arc::new(a)
}

fn listed(a: &Arena) -> Vec<u64> {
    let mut v = Vec::new();
    walk(a, &a.head, 0, 64, |b| {
        v.push(b);
        true
    })
    .unwrap();
    v.sort_unstable();
    v
}

/// Every block is Free and on the list exactly once.
fn all_free_once(a: &Arena) {
    let all: Vec<u64> = (0..a.n).map(block).collect();
    assert_eq!(listed(a), all, "list holds each block once");
    for (i, w) in a.owners.iter().enumerate() {
        assert_eq!(
            w.load(Ordering::Relaxed),
            FREE_WORD,
            "block {i} is not Free"
        );
    }
}

/// The heap's bound for one call's locks, from now.
fn soon() -> Deadline {
    Deadline::after(LOCK_WAIT)
}

fn reclaim_dead(a: &Arena, survivor: &Proc) -> u64 {
    let _w = exclusive(&a.rw, survivor, soon()).unwrap();
    let r = reclaim(a, &[&a.head], (0..a.n).map(|i| (block(i), 0)), 64, |t| {
        !survivor.is_alive_owner(t)
    })
    .unwrap();
    r.blocks
}

/// A popper reads head A (next B) and is preempted; a peer pops A and B and pushes
/// A back. The tag makes the first popper's CAS fail instead of installing B, a
/// block the peer holds.
#[test]
fn aba_pop_pop_push_never_hands_a_block_out_twice() {
    loom::model(|| {
        let a = arena(3, 1);
        let a2 = a.clone();
        let t = thread::spawn(move || pop(&*a2, &a2.head, 0).unwrap().map(|(b, _)| b));
        let x = pop(&*a, &a.head, 0).unwrap().unwrap().0;
        let y = pop(&*a, &a.head, 0).unwrap().map(|(b, _)| b);
        link(&*a, x).unwrap().store(0, Ordering::Relaxed);
        push(&*a, &a.head, x, 1).unwrap();
        let got = t.join().unwrap();
        let mut seen = listed(&a);
        seen.extend(got);
        seen.extend(y);
        seen.sort_unstable();
        assert_eq!(seen, vec![block(0), block(1), block(2)]);
    });
}

/// Two processes allocate through their caches and free what they got: no block
/// is held by both, and all come back.
#[test]
fn concurrent_alloc_and_free_keep_every_block_once() {
    loom::model(|| {
        let reg = Registry::new();
        let a = arena(2, 1);
        let held: Arc<Vec<AtomicU64>> = Arc::new((0..2).map(|_| AtomicU64::new(0)).collect());
        let work = |a: Arc<Arena>, held: Arc<Vec<AtomicU64>>, p: Proc| {
            let cache = Cache::default();
            if !cache.refill(&*a, &a.head, &a.rw, &p, 0, soon()).unwrap() {
                return;
            }
            let b = cache.pop(&*a, 0, p.me()).unwrap().unwrap();
            let i = ((b - BASE) / 16) as usize;
            assert_eq!(
                held[i].swap(1, Ordering::Relaxed),
                0,
                "block handed out twice"
            );
            held[i].store(0, Ordering::Relaxed);
            let loc = a.locate(b).unwrap();
            free_small(&*a, &cache, b, loc, p.me()).unwrap();
            cache.flush(&*a, &a.head, &a.rw, &p, 0, 0, soon()).unwrap();
        };
        let (a2, h2, p1) = (a.clone(), held.clone(), proc(&reg, 1));
        let t = thread::spawn(move || work(a2, h2, p1));
        work(a.clone(), held, proc(&reg, 0));
        t.join().unwrap();
        all_free_once(&a);
    });
}

/// What a process does: take a batch, allocate one block, free it, give the cache
/// back. Stops at the first error (a simulated death).
fn alloc_free_cycle(a: &Arena, p: &Proc) -> Option<()> {
    let cache = Cache::default();
    cache
        .refill(a, &a.head, &a.rw, p, 0, soon())
        .ok()?
        .then_some(())?;
    let b = cache.pop(a, 0, p.me()).ok()??;
    free_small(a, &cache, b, a.locate(b)?, p.me()).ok()?;
    cache.flush(a, &a.head, &a.rw, p, 0, 0, soon()).ok()
}

/// Crash points along `alloc_free_cycle` with two blocks in one batch (plus one
/// past the end: the cycle completes and the process dies idle).
const CRASH_POINTS: u32 = 12;

/// A process killed at each crash point of alloc and free, while another process
/// allocates and frees: afterwards `reclaim` returns whatever the dead one held or
/// left unlisted, and every block is Free and listed exactly once.
#[test]
fn a_process_killed_anywhere_in_alloc_or_free_loses_nothing() {
    for k in 0..=CRASH_POINTS {
        loom::model(move || {
            let reg = Registry::new();
            let a = arena(2, 2);
            let (a1, p1, r1) = (a.clone(), proc(&reg, 1), reg.clone());
            let dying = thread::spawn(move || {
                crash::arm(k);
                let _ = alloc_free_cycle(&a1, &p1);
                // The last budget outlives every crash point of the cycle (if a
                // point is added, raise CRASH_POINTS so all stay covered).
                assert!(k < CRASH_POINTS || !crash::dead());
                r1.die(1);
            });
            let (a0, p0) = (a.clone(), proc(&reg, 0));
            let live = thread::spawn(move || {
                let _ = alloc_free_cycle(&a0, &p0);
            });
            dying.join().unwrap();
            live.join().unwrap();
            reclaim_dead(&a, &proc(&reg, 0));
            all_free_once(&a);
        });
    }
}

/// Reclaim runs while a live process holds a block and another died holding one:
/// the dead one's comes back, the live one's is never touched.
#[test]
fn reclaim_never_takes_a_live_processes_block() {
    // The writer and a reader spin on each other's words (the futex stand-in
    // yields): allow the longer paths that takes.
    let mut b = loom::model::Builder::new();
    b.max_branches = 100_000;
    b.check(|| {
        let reg = Registry::new();
        let a = arena(2, 1);
        // Process 1 takes a block and dies holding it.
        let p1 = proc(&reg, 1);
        let c1 = Cache::default();
        assert!(c1.refill(&*a, &a.head, &a.rw, &p1, 0, soon()).unwrap());
        let dead_block = c1.pop(&*a, 0, p1.me()).unwrap().unwrap();
        reg.die(1);
        let (a2, p0) = (a.clone(), proc(&reg, 0));
        let live = thread::spawn(move || {
            let cache = Cache::default();
            let b = match cache
                .refill(&*a2, &a2.head, &a2.rw, &p0, 0, soon())
                .unwrap()
            {
                true => cache.pop(&*a2, 0, p0.me()).unwrap().unwrap(),
                false => return,
            };
            let w = a2.owners[((b - BASE) / 16) as usize].load(Ordering::Relaxed);
            assert_eq!(w, BlockState::Owned(p0.me()).to_word());
            free_small(&*a2, &cache, b, a2.locate(b).unwrap(), p0.me()).unwrap();
            cache
                .flush(&*a2, &a2.head, &a2.rw, &p0, 0, 0, soon())
                .unwrap();
        });
        let back = reclaim_dead(&a, &proc(&reg, 2));
        assert!(
            back <= 1,
            "only the dead process's block comes back ({dead_block:#x})"
        );
        live.join().unwrap();
        reclaim_dead(&a, &proc(&reg, 2));
        all_free_once(&a);
    });
}

/// A reclaimer killed at each point of its pass (after relisting some blocks, or
/// none, or all), while a live process allocates and frees: the next reclaim
/// finishes the job and every block is Free and listed exactly once.
#[test]
fn a_reclaimer_killed_anywhere_is_finished_by_the_next() {
    for k in 0..4 {
        // A reader spins (the futex stand-in yields) until the dead writer is
        // declared dead: allow the longer paths that takes.
        let mut b = loom::model::Builder::new();
        b.max_branches = 100_000;
        b.check(move || {
            let reg = Registry::new();
            let a = arena(3, 1);
            // Process 1 takes a block and dies holding it; process 2 pops a batch
            // and dies before re-tagging it (Free, on no list).
            let p1 = proc(&reg, 1);
            let c1 = Cache::default();
            assert!(c1.refill(&*a, &a.head, &a.rw, &p1, 0, soon()).unwrap());
            c1.pop(&*a, 0, p1.me()).unwrap().unwrap();
            reg.die(1);
            pop(&*a, &a.head, 0).unwrap().unwrap();
            reg.die(2);
            let (a3, r3) = (a.clone(), reg.clone());
            let reclaimer = thread::spawn(move || {
                let p3 = proc(&r3, 3);
                crash::arm(k);
                let w = exclusive(&a3.rw, &p3, soon()).unwrap();
                let all = (0..a3.n).map(|i| (block(i), 0));
                match reclaim(&*a3, &[&a3.head], all, 64, |t| !p3.is_alive_owner(t)) {
                    Ok(_) => drop(w),
                    Err(_) => std::mem::forget(w), // killed holding the lock
                }
                r3.die(3);
            });
            let (a0, p0) = (a.clone(), proc(&reg, 0));
            let live = thread::spawn(move || {
                let _ = alloc_free_cycle(&a0, &p0);
            });
            reclaimer.join().unwrap();
            live.join().unwrap();
            reclaim_dead(&a, &proc(&reg, 0));
            all_free_once(&a);
        });
    }
}
