//! Loom models of the segment's lock-free protocols: the init-state word with its
//! init lock, and the registry slot claim / release / reclaim. A "crash" is a thread
//! that stops at an arbitrary step, after which the kernel's part (releasing its
//! liveness locks) is played by `MemLocks::release_all`.
//!
//! Run: `RUSTFLAGS="--cfg shmkit_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_segment`
#![cfg(shmkit_loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use shmkit::OwnerTag;
use shmkit::loom::{AtomicU32, Ordering};
use shmkit::model::{
    Identity, LockTable, MemHandle, MemLocks, Slot, Witness, claim, init, reclaim, release,
};

const INIT: u32 = 0;

/// The part of a segment the init protocol guards: a state word and a payload
/// that must be complete whenever anyone sees `Ready`.
struct Seg {
    state: AtomicU32,
    payload: UnsafeCell<[u64; 2]>,
}

// SAFETY: the payload is only written by the holder of the init lock before
// `publish`, and read after observing Ready; loom checks exactly that.
unsafe impl Sync for Seg {}

impl Seg {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: AtomicU32::new(init::UNINIT),
            payload: UnsafeCell::new([0, 0]),
        })
    }

    /// A full initialisation by the holder of the init lock. Returns false if the
    /// object was already initialised by a reclaimer that got the lock first (the
    /// real creator sees this as "my object was reclaimed" and starts over).
    fn initialise(&self, v: u64) -> bool {
        if !init::begin(&self.state) {
            return false;
        }
        // SAFETY: we hold the init lock and the state is Initializing: nobody else
        // reads or writes the payload until we publish.
        self.payload.with_mut(|p| unsafe { *p = [v, v] });
        init::publish(&self.state);
        true
    }

    /// What an opener sees once Ready.
    fn read(&self) -> [u64; 2] {
        assert_eq!(init::observe(&self.state), init::READY);
        // SAFETY: Ready was observed with Acquire; the payload is immutable now.
        self.payload.with(|p| unsafe { *p })
    }
}

/// The opener's side of the protocol: wait for Ready; if the init lock is free
/// and the state is still unready, the creator is gone (or has not started):
/// reclaim in place under the lock and initialise with `mine`.
fn open_or_reclaim(seg: &Seg, locks: &MemHandle<'_>, mine: u64) -> [u64; 2] {
    loop {
        if init::observe(&seg.state) == init::READY {
            return seg.read();
        }
        if locks.try_lock(INIT).unwrap() {
            if init::observe(&seg.state) != init::READY {
                assert!(init::reset(&seg.state));
                assert!(seg.initialise(mine), "we hold the lock and reset the state");
            }
            locks.unlock(INIT);
            return seg.read();
        }
        thread::yield_now();
    }
}

#[test]
fn an_opener_sees_a_complete_segment_once_ready() {
    loom::model(|| {
        let seg = Seg::new();
        let table = MemLocks::new(1);
        let (s2, t2) = (seg.clone(), table.clone());
        let creator = thread::spawn(move || {
            let me = MemHandle {
                table: &t2,
                token: t2.token(),
            };
            // A creator waits for a reclaimer that holds the lock (take_init_lock).
            while !me.try_lock(INIT).unwrap() {
                thread::yield_now();
            }
            let _published = s2.initialise(7);
            me.unlock(INIT);
        });
        let me = MemHandle {
            table: &table,
            token: table.token(),
        };
        let seen = open_or_reclaim(&seg, &me, 9);
        creator.join().unwrap();
        // Whoever initialised, it was exactly once and complete.
        assert!(seen == [7, 7] || seen == [9, 9], "{seen:?}");
        assert_eq!(seg.read(), seen);
    });
}

#[test]
fn a_creator_that_dies_half_way_is_reclaimed_and_never_seen_ready() {
    loom::model(|| {
        let seg = Seg::new();
        let table = MemLocks::new(1);
        let (s2, t2) = (seg.clone(), table.clone());
        let creator = thread::spawn(move || {
            let token = t2.token();
            let me = MemHandle { table: &t2, token };
            // A creator waits for a reclaimer that holds the lock (take_init_lock).
            while !me.try_lock(INIT).unwrap() {
                thread::yield_now();
            }
            if init::begin(&s2.state) {
                // SAFETY: as in Seg::initialise; we die before publishing.
                s2.payload.with_mut(|p| unsafe { (*p)[0] = 666 });
            }
            // SIGKILL here: the kernel releases our locks.
            t2.release_all(token);
        });
        let me = MemHandle {
            table: &table,
            token: table.token(),
        };
        let seen = open_or_reclaim(&seg, &me, 9);
        creator.join().unwrap();
        assert_eq!(
            seen,
            [9, 9],
            "the half-made payload must never be published"
        );
    });
}

fn who(incarnation: u64) -> Identity {
    Identity {
        incarnation,
        pid: incarnation as u32,
        uid: 0,
        start_time: 1,
        pidns: 1,
        now_ns: 1,
    }
}

fn slots(n: usize) -> Arc<Vec<Slot>> {
    Arc::new((0..n).map(|_| Slot::new()).collect())
}

#[test]
fn two_claimers_get_distinct_slots() {
    loom::model(|| {
        let slots = slots(2);
        let table = MemLocks::new(3);
        let (s2, t2) = (slots.clone(), table.clone());
        let other = thread::spawn(move || {
            let me = MemHandle {
                table: &t2,
                token: t2.token(),
            };
            let i = claim(&s2, &me, &who(4)).unwrap();
            assert_eq!(s2[i as usize].state.load(Ordering::Acquire), 4 | 2);
            assert!(release(&s2, &me, i, 4));
            i
        });
        let me = MemHandle {
            table: &table,
            token: table.token(),
        };
        let i = claim(&slots, &me, &who(8)).unwrap();
        let j = other.join().unwrap();
        // Either distinct, or the other released before we claimed the same one.
        assert_eq!(slots[i as usize].state.load(Ordering::Acquire), 8 | 2);
        let _ = j;
        assert!(release(&slots, &me, i, 8));
        assert!(slots.iter().all(|s| s.state.load(Ordering::Acquire) == 0));
    });
}

#[test]
fn a_reclaimer_never_frees_a_live_claimer() {
    loom::model(|| {
        let slots = slots(1);
        let table = MemLocks::new(2);
        let (s2, t2) = (slots.clone(), table.clone());
        let reclaimer = thread::spawn(move || {
            let me = MemHandle {
                table: &t2,
                token: t2.token(),
            };
            reclaim(&s2, &me, 0, None).unwrap()
        });
        let me = MemHandle {
            table: &table,
            token: table.token(),
        };
        // A claim may lose the race to a reclaimer that momentarily holds the lock:
        // then it retries, as Segment does.
        let i = loop {
            match claim(&slots, &me, &who(4)) {
                Ok(i) => break i,
                Err(_) => thread::yield_now(),
            }
        };
        reclaimer.join().unwrap();
        assert_eq!(slots[i as usize].state.load(Ordering::Acquire), 4 | 2);
        assert!(me.try_lock(1).unwrap(), "the claimer holds its slot lock");
    });
}

/// A claimer that stops after step `k` of the claim protocol (0: after the CAS to
/// Claiming; 1: after taking the lock; 2: after publishing Active), then dies.
fn die_after(k: u32, slots: &[Slot], table: &MemLocks, token: u64) {
    let me = MemHandle { table, token };
    let inc = 12;
    let claimed = slots[0]
        .state
        .compare_exchange(0, inc | 1, Ordering::Acquire, Ordering::Relaxed)
        .is_ok();
    if claimed && k >= 1 && me.try_lock(1).unwrap() {
        slots[0].pid.store(12, Ordering::Relaxed);
        if k >= 2 {
            let _ = slots[0].state.compare_exchange(
                inc | 1,
                inc | 2,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
    }
    table.release_all(token); // the kernel's part of SIGKILL
}

#[test]
fn a_claimer_that_dies_half_way_leaves_a_reclaimable_slot() {
    for k in 0..3 {
        loom::model(move || {
            let slots = slots(1);
            let table = MemLocks::new(2);
            let (s2, t2) = (slots.clone(), table.clone());
            let dying = thread::spawn(move || die_after(k, &s2, &t2, t2.token()));
            let me = MemHandle {
                table: &table,
                token: table.token(),
            };
            // The survivor attaches: on a full registry it reclaims and retries.
            let i = loop {
                match claim(&slots, &me, &who(4)) {
                    Ok(i) => break i,
                    Err(_) => {
                        let _ = reclaim(&slots, &me, 0, None).unwrap();
                        thread::yield_now();
                    }
                }
            };
            dying.join().unwrap();
            assert_eq!(i, 0);
            assert_eq!(slots[0].state.load(Ordering::Acquire), 4 | 2);
            assert!(release(&slots, &me, 0, 4));
        });
    }
}

/// The tag witness answers for a published tag: a prober that sees the slot word
/// say ACTIVE finds the witness of the tag it names held (the claimer takes it
/// before publishing), for as long as the owner lives; once the owner dies (the
/// kernel's part played by `release_all`) or detaches, it is free. The prober never
/// looks at the word again to decide.
#[test]
fn a_published_tag_is_witnessed_until_its_owner_goes() {
    for dies in [false, true] {
        loom::model(move || {
            let slots = slots(1);
            let table = MemLocks::new(2);
            let done = Arc::new(AtomicU32::new(0));
            let (s2, t2, d2) = (slots.clone(), table.clone(), done.clone());
            let owner = thread::spawn(move || {
                let token = t2.token();
                let me = MemHandle { table: &t2, token };
                let i = claim(&s2, &me, &who(4)).unwrap();
                while d2.load(Ordering::Acquire) == 0 {
                    thread::yield_now();
                }
                if dies {
                    t2.release_all(token); // SIGKILL
                } else {
                    assert!(release(&s2, &me, i, 4));
                }
            });
            let me = MemHandle {
                table: &table,
                token: table.token(),
            };
            let tag = Witness::Tag(OwnerTag::new(0, 4).unwrap());
            let word = slots[0].state.load(Ordering::Acquire);
            if word == 4 | 2 {
                assert!(
                    me.witness_held_elsewhere(tag).unwrap(),
                    "a published tag unwitnessed"
                );
            }
            // A flipped incarnation names a tag nobody witnesses.
            let flipped = Witness::Tag(OwnerTag::new(0, 4 ^ (1 << 9)).unwrap());
            assert!(!me.witness_held_elsewhere(flipped).unwrap());
            done.store(1, Ordering::Release);
            owner.join().unwrap();
            assert!(
                !me.witness_held_elsewhere(tag).unwrap(),
                "the owner is gone"
            );
        });
    }
}
