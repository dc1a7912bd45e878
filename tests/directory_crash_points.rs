//! A process killed at every step of every directory change: each scenario runs
//! once per crash point `k` (the attachment "dies" at its `k`-th step, with the
//! directory lock held and nothing cleaned up, as SIGKILL leaves it), until the
//! change completes. After each death a survivor reclaims (registry, heap,
//! directory), and then:
//! - both verifiers are clean;
//! - the change happened or did not, nothing in between (names unique, objects
//!   whole, a handle a survivor held still works);
//! - once every name is removed, the heap holds exactly the empty directory's
//!   table: no block leaked, none freed twice, none freed under a live holder.
//!
//! The deaths come from the `testkit` crash points (`shmkit::testkit::arm`):
//! one point between every two stores or heap calls of the journal protocol.
//! `tests/crash_directory.rs` does the same with real SIGKILLs at random times.
#![allow(clippy::disallowed_types)] // std atomics are directory objects here
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use shmkit::alloc::Heap;
use shmkit::sync::Mutex;
use shmkit::{Error, Segment, SegmentOptions, Shared, testkit};

/// Heap bytes of a directory with no entry (its 64-bucket table).
const EMPTY_DIRECTORY: u64 = 512;
/// Crash points beyond any change's length: the loop must end well before.
const MAX_POINTS: u64 = 200;

struct World {
    seg: Segment,
    heap: Heap,
    /// Handles the survivor holds (must keep working whatever the peer did).
    mine: Vec<Shared<AtomicU64>>,
}

fn world(objects: usize) -> World {
    let seg = SegmentOptions::heap()
        .max_size(32 << 20)
        .registry_slots(16)
        .create()
        .unwrap();
    let heap = Heap::attach(&seg).unwrap();
    let mut mine = Vec::new();
    for i in 0..objects {
        let a = seg.create::<AtomicU64>(&format!("o{i}"), ()).unwrap();
        a.store(1000 + i as u64, Ordering::Relaxed);
        mine.push(a);
    }
    World { seg, heap, mine }
}

/// Runs `change` in a peer attachment armed to die at its `k`-th crash point.
/// Returns whether it died.
fn run_dying<R>(w: &World, k: u64, change: impl FnOnce(&Segment) -> shmkit::Result<R>) -> bool {
    let peer = w.seg.try_clone().unwrap();
    testkit::arm(k);
    let r = change(&peer);
    let died = testkit::died();
    testkit::disarm();
    match r {
        Err(Error::SimulatedCrash) => {
            assert!(died);
            // SAFETY: the peer's guards were forgotten by the dead paths, and its
            // handles (if any) are forgotten by `change`'s result below.
            unsafe { peer.simulate_crash_now() };
            std::mem::forget(peer);
            true
        }
        Err(e) => panic!("step {k}: the change failed without dying: {e}"),
        Ok(v) => {
            assert!(!died);
            drop(v); // the peer lived: it lets go normally
            false
        }
    }
}

/// What a survivor does after a death, and the checks every state must pass.
fn survive(w: &World, what: &str, k: u64) {
    let s = &w.seg;
    s.reclaim_dead().unwrap();
    w.heap.reclaim_dead().unwrap();
    // An unrelated heap user takes (and publishes, unstamped) whatever the
    // reclaim freed, before the directory's recovery runs: recovery must not
    // free any of it.
    let mut grabbed = Vec::new();
    for size in [64usize, 128, 256, 320, 384, 448, 512, 1024, 2048, 4096] {
        for _ in 0..6 {
            let b = w.heap.alloc(size, 8).unwrap().get();
            w.heap.publish(b).unwrap();
            grabbed.push(b);
        }
    }
    s.directory()
        .reclaim()
        .unwrap_or_else(|e| panic!("{what}, death at step {k}: reclaim: {e}"));
    w.heap.reclaim_dead().unwrap();
    for &b in &grabbed {
        assert_eq!(
            w.heap.state(b).unwrap(),
            shmkit::alloc::BlockState::Shared,
            "{what}, step {k}: recovery freed a block someone else reused"
        );
        w.heap.adopt(b).unwrap();
        w.heap.free(b).unwrap();
    }
    let rep = s.directory().verify().unwrap();
    assert!(rep.is_clean(), "{what}, death at step {k}: {rep:?}");
    let hv = w.heap.verify();
    assert!(hv.is_clean(), "{what}, death at step {k}: {hv}");
    let names: Vec<String> = s
        .directory()
        .list()
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        names.len(),
        "{what}, step {k}: a name twice: {names:?}"
    );
    for (i, a) in w.mine.iter().enumerate() {
        assert_eq!(
            a.load(Ordering::Relaxed),
            1000 + i as u64,
            "{what}, step {k}"
        );
    }
}

/// Removes everything and checks that only the empty table is left.
fn finish(w: World, what: &str, k: u64) {
    let World { seg, heap, mine } = w;
    for o in seg.directory().list().unwrap() {
        seg.directory().remove(&o.name).unwrap();
    }
    drop(mine);
    // A last change makes sure the table has shrunk back.
    drop(seg.create::<AtomicU64>("last", ()).unwrap());
    seg.directory().remove("last").unwrap();
    seg.directory().reclaim().unwrap();
    heap.reclaim_dead().unwrap();
    heap.flush().unwrap();
    let rep = seg.directory().verify().unwrap();
    assert_eq!(
        (rep.entries, rep.removed),
        (0, 0),
        "{what}, step {k}: {rep:?}"
    );
    let used = heap.stats().unwrap().used;
    assert_eq!(
        used, EMPTY_DIRECTORY,
        "{what}, death at step {k}: bytes leaked or lost"
    );
}

/// Kills the change at each of its steps in turn, on a fresh world each time.
fn every_step(
    what: &str,
    objects: usize,
    setup: impl Fn(&World) -> Vec<Box<dyn std::any::Any>>,
    change: impl Fn(&Segment) -> shmkit::Result<Box<dyn std::any::Any>>,
) -> u64 {
    for k in 1..MAX_POINTS {
        let w = world(objects);
        let kept = setup(&w);
        let died = run_dying(&w, k, |p| change(p));
        survive(&w, what, k);
        drop(kept);
        finish(w, what, k);
        if !died {
            eprintln!("{what}: killed at each of its {} steps", k - 1);
            return k - 1;
        }
    }
    panic!("{what}: still dying after {MAX_POINTS} steps");
}

fn none(_: &World) -> Vec<Box<dyn std::any::Any>> {
    Vec::new()
}

#[test]
fn a_first_create_killed_at_any_step_leaves_no_directory_or_a_whole_one() {
    let n = every_step("first create", 0, none, |p| {
        Ok(Box::new(p.create::<Mutex<u64>>("m", ())?))
    });
    assert!(n >= 6, "only {n} steps");
}

#[test]
fn a_create_killed_at_any_step_leaves_the_name_absent_or_whole() {
    every_step("create", 3, none, |p| {
        Ok(Box::new(p.create::<Mutex<u64>>("m", ())?))
    });
}

#[test]
fn a_create_that_grows_the_table_killed_at_any_step_loses_no_name() {
    // 48 entries = 3/4 of 64 buckets: the 49th create rebuilds the table first.
    let n = every_step("growing create", 48, none, |p| {
        Ok(Box::new(p.create::<AtomicU64>("grow", ())?))
    });
    assert!(n > 10, "only {n} steps: the table did not grow");
}

#[test]
fn a_remove_killed_at_any_step_frees_the_entry_once_or_not_at_all() {
    every_step(
        "remove",
        3,
        |w| {
            drop(w.seg.create::<AtomicU64>("victim", ()).unwrap());
            Vec::new()
        },
        |p| {
            p.directory()
                .remove("victim")
                .map(|()| Box::new(()) as Box<dyn std::any::Any>)
        },
    );
}

#[test]
fn a_remove_that_shrinks_the_table_killed_at_any_step_loses_no_name() {
    let n = every_step(
        "shrinking remove",
        2,
        |w| {
            // 150 names: 256 buckets. Down to 32 (a table 1/8 full, not yet less).
            for i in 0..148 {
                drop(w.seg.create::<AtomicU64>(&format!("tmp{i}"), ()).unwrap());
            }
            for i in 1..119 {
                w.seg.directory().remove(&format!("tmp{i}")).unwrap();
            }
            Vec::new()
        },
        // The 31st of 256: this remove halves the table.
        |p| {
            p.directory()
                .remove("tmp0")
                .map(|()| Box::new(()) as Box<dyn std::any::Any>)
        },
    );
    assert!(n > 10, "only {n} steps: the table did not shrink");
}

#[test]
fn a_remove_of_a_held_object_killed_at_any_step_never_frees_it_under_its_holder() {
    every_step(
        "remove of a held object",
        2,
        |w| {
            let held = w.seg.create::<AtomicU64>("held", ()).unwrap();
            held.store(77, Ordering::Relaxed);
            vec![Box::new(held) as Box<dyn std::any::Any>]
        },
        |p| {
            p.directory()
                .remove("held")
                .map(|()| Box::new(()) as Box<dyn std::any::Any>)
        },
    );
}

#[test]
fn a_last_release_of_a_removed_object_killed_at_any_step_frees_it_once() {
    every_step("release of a removed object", 2, none, |p| {
        let h = p.create::<AtomicU64>("gone", ())?;
        p.directory().remove("gone")?;
        drop(h); // the last release frees it (unless we die inside)
        if testkit::died() {
            return Err(Error::SimulatedCrash);
        }
        Ok(Box::new(()))
    });
}

#[test]
fn a_find_that_needs_an_overflow_holder_block_killed_at_any_step_keeps_the_object() {
    let n = every_step(
        "find with a holder block",
        1,
        |w| {
            // The creator and seven other attachments fill the eight inline holders.
            (0..7)
                .map(|_| {
                    let a = w.seg.try_clone().unwrap();
                    let h = a.find::<AtomicU64>("o0").unwrap();
                    Box::new((h, a)) as Box<dyn std::any::Any>
                })
                .collect()
        },
        |p| Ok(Box::new(p.find::<AtomicU64>("o0")?)),
    );
    assert!(n > 3, "only {n} steps: no holder block was made");
}

#[test]
fn a_find_or_create_that_reclaims_a_dead_builder_killed_at_any_step_builds_once() {
    every_step(
        "find_or_create over a dead builder",
        1,
        |w| {
            // A builder that dies inside its init (Creating under a dead tag).
            let b = w.seg.try_clone().unwrap();
            let r = b
                .directory()
                .find_or_create_with::<AtomicU64>("half", (), |a| {
                    a.store(5, Ordering::Relaxed);
                    testkit::arm(1);
                });
            assert!(matches!(r, Err(Error::SimulatedCrash)), "{r:?}");
            testkit::disarm();
            // SAFETY: the builder's guards were forgotten by its dead paths.
            unsafe { b.simulate_crash_now() };
            std::mem::forget(b);
            Vec::new()
        },
        |p| {
            let h = p.find_or_create::<AtomicU64>("half", ())?;
            assert_eq!(h.load(Ordering::Relaxed), 0, "handed a half-built object");
            Ok(Box::new(h))
        },
    );
}

/// A death inside the change, then a second death inside the recovery of the
/// first (at each of its steps), then a survivor: recovery is itself crash-safe.
fn every_step_twice(
    what: &str,
    objects: usize,
    change: impl Fn(&Segment) -> shmkit::Result<Box<dyn std::any::Any>>,
) -> u64 {
    let mut runs = 0;
    for k in 1..MAX_POINTS {
        let mut first_died = false;
        for j in 1..MAX_POINTS {
            let w = world(objects);
            first_died = run_dying(&w, k, &change);
            if !first_died {
                finish(w, what, k);
                break;
            }
            // The next process to touch the directory recovers it, and dies too.
            let second_died = run_dying(&w, j, |p| {
                p.directory()
                    .reclaim()
                    .map(|n| Box::new(n) as Box<dyn std::any::Any>)
            });
            survive(&w, what, k * 1000 + j);
            finish(w, what, k * 1000 + j);
            runs += 1;
            if !second_died {
                break;
            }
        }
        if !first_died {
            return runs;
        }
    }
    panic!("{what}: still dying after {MAX_POINTS} steps");
}

#[test]
fn a_recovery_killed_at_any_step_is_finished_by_the_next_process() {
    let a = every_step_twice("growing create, recovery killed", 48, |p| {
        Ok(Box::new(p.create::<AtomicU64>("grow", ())?))
    });
    let b = every_step_twice("remove, recovery killed", 3, |p| {
        p.directory().remove("o1")?;
        Ok(Box::new(()))
    });
    eprintln!("double deaths: {a} + {b} runs");
    assert!(a > 12 && b > 5, "{a} {b}");
}
