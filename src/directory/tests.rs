//! Regressions from the reviews of the directory: forged words and races that
//! once freed live memory or made the directory unusable.
#![allow(clippy::disallowed_types)] // std atomics are directory objects here

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::SegmentOptions;
use crate::alloc::{BlockState, Heap};

/// Root lock words before the DirRoot fields.
const R: usize = 2;
const J_OP: usize = R + 7;

/// A hostile root write (journal J_MORE naming a peer's private block) makes the
/// next directory call free that block.
#[test]
#[cfg_attr(
    miri,
    ignore = "spawns threads and sleeps; the crash-point and prop tests run under miri"
)]
fn a_forged_journal_naming_a_peers_private_block_frees_nothing() {
    let seg = SegmentOptions::heap().max_size(8 << 20).create().unwrap();
    let _a = seg.create::<AtomicU64>("a", ()).unwrap();
    let peer = seg.try_clone().unwrap();
    let ph = Heap::attach(&peer).unwrap();
    let x = ph.alloc_raw(64, 8).unwrap();
    let word = ph.owner_word(x).unwrap();
    assert_eq!(ph.state(x).unwrap(), BlockState::Owned(peer.owner_tag()));
    let heap = Heap::attach(&seg).unwrap();
    let roots = heap.roots();
    roots[R + 8].store(0, Ordering::Relaxed); // j_a: no entry
    roots[R + 9].store(x, Ordering::Relaxed); // j_b
    roots[R + 10].store(word, Ordering::Relaxed); // j_c
    roots[J_OP].store(5, Ordering::Relaxed); // J_MORE
    let r = seg.directory().list();
    eprintln!("list after hostile journal: {:?}", r.map(|v| v.len()));
    let st = ph.state(x);
    eprintln!("peer's private block is now {st:?}");
    // The same with a Free block on a shared list: double listing.
    let y = heap.alloc_raw(64, 8).unwrap();
    heap.free(y).unwrap();
    heap.flush().unwrap();
    let wy = heap.owner_word(y).unwrap();
    eprintln!("y state {:?} word {wy:#x}", heap.state(y));
    roots[R + 8].store(0, Ordering::Relaxed);
    roots[R + 9].store(y, Ordering::Relaxed);
    roots[R + 10].store(wy, Ordering::Relaxed);
    roots[J_OP].store(5, Ordering::Relaxed);
    let r = seg.directory().list();
    eprintln!("list after 2nd hostile journal: {:?}", r.map(|v| v.len()));
    heap.flush().unwrap();
    let v = heap.verify();
    eprintln!("heap verify: clean={} {v}", v.is_clean());
    assert_eq!(
        st.unwrap(),
        BlockState::Owned(peer.owner_tag()),
        "a peer's private block was freed"
    );
}

fn entry_off(seg: &crate::Segment, name: &str) -> u64 {
    super::inspect::parts(seg)
        .unwrap()
        .entries
        .iter()
        .find(|e| e.name == name.as_bytes())
        .unwrap()
        .off
}

/// One stray word (state READY -> CREATING) in the entry of an object whose
/// creator has exited: the next reclaim frees it under a live holder.
#[test]
#[cfg_attr(
    miri,
    ignore = "spawns threads and sleeps; the crash-point and prop tests run under miri"
)]
fn a_held_entry_forged_back_to_creating_is_not_freed_by_reclaim() {
    let seg = SegmentOptions::heap().max_size(8 << 20).create().unwrap();
    let creator = seg.try_clone().unwrap();
    drop(creator.create::<AtomicU64>("m", ()).unwrap());
    drop(creator); // exits normally; the object lives on
    let h = seg.find::<AtomicU64>("m").unwrap();
    h.store(42, Ordering::Relaxed);
    let off = entry_off(&seg, "m");
    let heap = Heap::attach(&seg).unwrap();
    // SAFETY: a stray write by a "peer" into a live entry (plain u64, aligned).
    unsafe {
        seg.as_ptr()
            .add((off + super::inspect::E_STATE) as usize)
            .cast::<u64>()
            .write(1)
    };
    let n = seg.directory().reclaim();
    eprintln!(
        "reclaim: {n:?}; entry block now {:?}; holders before: 1 live",
        heap.state(off)
    );
    assert!(
        heap.state(off).unwrap() == BlockState::Shared,
        "freed under a live holder"
    );
}

/// One stray word (state READY -> REMOVED) in a linked entry: the last release
/// frees it while the table still links it.
#[test]
#[cfg_attr(
    miri,
    ignore = "spawns threads and sleeps; the crash-point and prop tests run under miri"
)]
fn a_linked_entry_forged_to_removed_is_not_freed_by_its_last_release() {
    let seg = SegmentOptions::heap().max_size(8 << 20).create().unwrap();
    let h = seg.create::<AtomicU64>("x", ()).unwrap();
    let off = entry_off(&seg, "x");
    let heap = Heap::attach(&seg).unwrap();
    // SAFETY: a stray write by a "peer" into a live entry (plain u64, aligned).
    unsafe {
        seg.as_ptr()
            .add((off + super::inspect::E_STATE) as usize)
            .cast::<u64>()
            .write(3)
    };
    drop(h);
    eprintln!("entry block after release: {:?}", heap.state(off));
    let rep = seg.directory().verify().unwrap();
    eprintln!("verify: {rep:?}");
    let again = seg.create::<AtomicU64>("x", ());
    eprintln!("create x again: {:?}", again.as_ref().map(|_| ()));
    assert!(
        heap.state(off).unwrap() == BlockState::Shared,
        "a linked entry was freed"
    );
}

/// The same race with natural timing (no injected delay): how often?
#[test]
#[cfg_attr(
    miri,
    ignore = "spawns threads and sleeps; the crash-point and prop tests run under miri"
)]
fn a_failed_build_racing_a_rebuild_in_another_thread_frees_nothing_of_it() {
    let mut bad = 0;
    let iters = if cfg!(miri) { 2 } else { 200 };
    for _ in 0..iters {
        let seg = SegmentOptions::heap().max_size(8 << 20).create().unwrap();
        let _other = seg.create::<AtomicU64>("other", ()).unwrap();
        let go = Arc::new(Barrier::new(2));
        let (s1, g1) = (seg.clone(), go.clone());
        let a = std::thread::spawn(move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                s1.directory()
                    .find_or_create_with::<AtomicU64>("x", (), |_| {
                        g1.wait();
                        std::thread::sleep(Duration::from_millis(2));
                        panic!("init fails");
                    })
            }));
        });
        let (s2, g2) = (seg.clone(), go.clone());
        let b = std::thread::spawn(move || {
            g2.wait();
            s2.directory()
                .find_or_create_with::<AtomicU64>("x", (), |v| {
                    std::thread::sleep(Duration::from_millis(3));
                    v.store(7, Ordering::Relaxed);
                })
                .map(|_| ())
        });
        a.join().unwrap();
        if let Err(e) = b.join().unwrap() {
            bad += 1;
            eprintln!("B: {e}");
        }
    }
    assert_eq!(
        bad, 0,
        "the rebuilding thread failed {bad} of {iters} times"
    );
}

/// One damaged entry on the removed list, then the last release of another
/// removed entry behind it: the journal is left open and every later directory
/// call fails.
#[test]
#[cfg_attr(
    miri,
    ignore = "spawns threads and sleeps; the crash-point and prop tests run under miri"
)]
fn a_damaged_entry_on_the_removed_list_leaves_other_names_reachable() {
    let seg = SegmentOptions::heap().max_size(8 << 20).create().unwrap();
    let c = seg.create::<AtomicU64>("c", ()).unwrap();
    let a = seg.create::<AtomicU64>("a", ()).unwrap();
    let b = seg.create::<AtomicU64>("b", ()).unwrap();
    let boff = entry_off(&seg, "b");
    seg.directory().remove("a").unwrap();
    seg.directory().remove("b").unwrap(); // list: b -> a
    // one stray word: b's magic
    // SAFETY: a stray write by a "peer" into a live entry (plain u64, aligned).
    unsafe { seg.as_ptr().add(boff as usize).cast::<u64>().write(0) };
    drop(a); // last release of a: unlink_free(None) walks the list through b
    let r = seg.find::<AtomicU64>("c");
    eprintln!(
        "find of an unrelated name afterwards: {:?}",
        r.as_ref().map(|_| ())
    );
    let r2 = seg.create::<AtomicU64>("d", ());
    eprintln!(
        "create of a new name afterwards: {:?}",
        r2.as_ref().map(|_| ())
    );
    drop((b, c));
    assert!(r.is_ok(), "an unrelated name became unreachable");
}
