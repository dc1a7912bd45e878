//! Loom models of the directory's create race: processes racing `find_or_create`
//! on one name (exactly one builds, everyone gets the same, fully built object),
//! and a creator that dies half-way (after linking its `Creating` entry, or while
//! holding the directory lock), with a survivor that reclaims and builds anew.
//!
//! What is real here: shmkit's robust `Mutex` (the directory lock), the decision
//! function `open` uses (`model::step`), and the liveness oracle's contract
//! (played by `loom_model::Registry`). What is modelled: the hash table and the
//! heap shrink to one entry slot of the name and an object cell with a build
//! stamp; the journal of the real table is not in these models (the crash tests
//! and the prop model cover it).
//!
//! Run: `RUSTFLAGS="--cfg shmkit_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_directory`
#![cfg(shmkit_loom)]

mod loom_model;

use loom::sync::Arc;
use loom::thread;
use loom_model::{Proc, Registry, proc};
use shmkit::loom::{AtomicU64, Ordering};
use shmkit::model::{Found, Mode, Step, step};
use shmkit::sync::{Context, LockError, Mutex};

/// The name's slot in the table: 0 = no entry.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// 0 empty, 1 creating, 2 ready.
    state: u64,
    /// Creator's tag bits.
    creator: u64,
    /// Which object (a fresh id per build).
    object: u64,
}

/// One name's corner of a directory, plus the objects it can point at.
struct Dir {
    lock: Mutex<Slot>,
    /// Next object id (a stand-in for the heap handing out a fresh block).
    next: AtomicU64,
    /// Object `i`'s stamp: 0 until built, then `BUILT` (two words: a torn build
    /// leaves them different).
    objects: [[AtomicU64; 2]; 3],
    /// How many builds completed.
    builds: AtomicU64,
}

const BUILT: u64 = 0xB1;

impl Dir {
    fn new() -> Arc<Self> {
        Arc::new(Dir {
            lock: Mutex::new(Slot::default()),
            next: AtomicU64::new(0),
            objects: std::array::from_fn(|_| [AtomicU64::new(0), AtomicU64::new(0)]),
            builds: AtomicU64::new(0),
        })
    }

    /// `open` of the real directory, on this corner: returns the object handed out.
    /// `die_at`: where this process dies (then it returns `None`).
    fn find_or_create(&self, p: &Proc, reg: &Registry, die_at: Option<Die>) -> Option<u64> {
        loop {
            let mut g = match self.lock.lock(p) {
                Ok(g) => g,
                Err(LockError::OwnerDied(mut g)) => {
                    // The real directory replays its journal here; the slot's
                    // single-word changes need none.
                    g.make_consistent();
                    g
                }
                Err(e) => panic!("{e}"),
            };
            let found = (g.state != 0).then(|| Found {
                creating: g.state == 1,
                creator_alive: g.state == 1
                    && p.is_alive_owner(shmkit::OwnerTag::from_word(g.creator)),
            });
            match step(found, Mode::FindOrCreate) {
                Step::Hand => {
                    let o = g.object;
                    drop(g);
                    // Never a half-built object.
                    let stamp = &self.objects[o as usize];
                    assert_eq!(stamp[0].load(Ordering::Acquire), BUILT);
                    assert_eq!(stamp[1].load(Ordering::Acquire), BUILT);
                    return Some(o);
                }
                Step::Wait => {
                    drop(g);
                    thread::yield_now();
                }
                Step::Reclaim => {
                    *g = Slot::default();
                }
                Step::Build => {
                    let o = self.next.fetch_add(1, Ordering::Relaxed);
                    *g = Slot {
                        state: 1,
                        creator: p.me().bits(),
                        object: o,
                    };
                    if die_at == Some(Die::HoldingTheLock) {
                        std::mem::forget(g);
                        reg.die(p.slot);
                        return None;
                    }
                    drop(g);
                    let stamp = &self.objects[o as usize];
                    stamp[0].store(BUILT, Ordering::Release);
                    if die_at == Some(Die::HalfBuilt) {
                        reg.die(p.slot);
                        return None;
                    }
                    stamp[1].store(BUILT, Ordering::Release);
                    let mut g = match self.lock.lock(p) {
                        Ok(g) => g,
                        Err(LockError::OwnerDied(mut g)) => {
                            g.make_consistent();
                            g
                        }
                        Err(e) => panic!("{e}"),
                    };
                    assert_eq!((g.state, g.object), (1, o), "our Creating entry changed");
                    g.state = 2;
                    drop(g);
                    self.builds.fetch_add(1, Ordering::Relaxed);
                    return Some(o);
                }
                s => panic!("find_or_create cannot {s:?}"),
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Die {
    /// After linking the Creating entry, before unlocking.
    HoldingTheLock,
    /// After linking, with the object half-built.
    HalfBuilt,
}

#[test]
fn two_racing_find_or_creates_build_once_and_share_the_object() {
    loom::model(|| {
        let reg = Registry::new();
        let dir = Dir::new();
        let (d2, r2) = (dir.clone(), reg.clone());
        let t = thread::spawn(move || d2.find_or_create(&proc(&r2, 1), &r2, None));
        let mine = dir.find_or_create(&proc(&reg, 0), &reg, None);
        let theirs = t.join().unwrap();
        assert_eq!(mine, theirs);
        assert_eq!(dir.builds.load(Ordering::Relaxed), 1);
    });
}

fn survivor_rebuilds_after(die: Die) {
    loom::model(move || {
        let reg = Registry::new();
        let dir = Dir::new();
        let (d2, r2) = (dir.clone(), reg.clone());
        let dying = thread::spawn(move || d2.find_or_create(&proc(&r2, 1), &r2, Some(die)));
        let got = dir.find_or_create(&proc(&reg, 0), &reg, None).unwrap();
        let died = dying.join().unwrap();
        // The dying creator either lost the race (then it found the survivor's
        // object before dying) or died; either way the survivor built exactly
        // one complete object or was handed the one the creator finished.
        match died {
            None => assert_eq!(dir.builds.load(Ordering::Relaxed), 1),
            Some(o) => assert_eq!(o, got),
        }
        // A third look finds the same object.
        assert_eq!(dir.find_or_create(&proc(&reg, 0), &reg, None), Some(got));
    });
}

#[test]
fn a_creator_killed_holding_the_directory_lock_is_replaced_by_the_survivor() {
    survivor_rebuilds_after(Die::HoldingTheLock);
}

#[test]
fn a_creator_killed_half_way_through_building_is_replaced_by_the_survivor() {
    survivor_rebuilds_after(Die::HalfBuilt);
}

#[test]
fn the_decision_never_hands_out_a_creating_entry() {
    for mode in [Mode::Find, Mode::Create, Mode::FindOrCreate] {
        for alive in [false, true] {
            let s = step(
                Some(Found {
                    creating: true,
                    creator_alive: alive,
                }),
                mode,
            );
            assert_eq!(s, if alive { Step::Wait } else { Step::Reclaim });
        }
    }
    assert_eq!(step(None, Mode::Find), Step::Missing);
    assert_eq!(step(None, Mode::FindOrCreate), Step::Build);
}
