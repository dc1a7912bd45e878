//! Liveness under a peer that overwrites the registry (issue 10, item 2): one
//! flipped word must not make a live process "dead".
//!
//! A child process (this test binary, re-executed: `liveness::child_main`, role in
//! `SHMKIT_LIVENESS_ROLE`) attaches to a POSIX segment and its heap, allocates
//! blocks (small ones, some freed back into its cache, and a large one), fills them
//! with a pattern, reports its slot, owner tag and blocks, and stays alive until
//! its stdin closes, checking its blocks when asked. The parent then plays the
//! hostile peer: it flips one incarnation bit of the child's registry slot word,
//! or rewrites the pid or start time recorded in the slot, and checks that the
//! child's tag is still alive, that the slot is reported `Corrupt` (never `Dead`),
//! that neither the registry's nor the heap's `reclaim_dead` takes anything of the
//! child's, that the parent's own allocations never overlap a block the child
//! holds, and that the child's data is intact. Then the other way round: the child
//! is SIGKILLed, with the damaged word still there, and must be judged dead and
//! reclaimed. A slot word forged to claim `ACTIVE` for a process that is not
//! attached is judged dead and freed, and a process that exited while a forked
//! grandchild keeps its locks is still judged dead (the identity witness vouches
//! for the pid `/proc` shows gone).
#![allow(clippy::disallowed_types)] // the hostile peer writes raw words

use std::io::{BufRead, Write};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::common::{self, LineChild, PATIENCE};
use shmkit::alloc::{BlockState, Heap};
use shmkit::{Error, OwnerTag, Segment, SegmentOptions, SlotState};

const ROLE: &str = "SHMKIT_LIVENESS_ROLE";
const SEG: &str = "SHMKIT_LIVENESS_SEG";
/// Prefix of the lines a child says to its parent.
const PREFIX: &str = "SHMKIT-LIVENESS:";
/// The child's entry point (an ignored test of this module).
const CHILD_TEST: &str = "liveness::child_main";

/// Small blocks the child allocates, and how many of them it frees again (they
/// stay in its cache, `Cached` under its tag).
const SMALL: usize = 90;
const SMALL_FREED: usize = 9;
const SMALL_SIZE: usize = 768;
/// The child's large block (whole pages).
const LARGE_SIZE: usize = 64 << 10;

/// Registry slot layout (`registry::Slot`): state word, pid, uid, start time.
const SLOT_PID: u64 = 8;
const SLOT_START_TIME: u64 = 16;

/// The pattern byte at `i` of the child's block number `k`.
fn pattern(k: usize, i: usize) -> u8 {
    (k as u8).wrapping_mul(31) ^ (i as u8) ^ 0xa5
}

// ---------------------------------------------------------------------------------
// The child: a live process holding blocks.
// ---------------------------------------------------------------------------------

fn say(what: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{PREFIX}{what}").unwrap();
    out.flush().unwrap();
}

#[test]
#[ignore = "child process entry point, run by the tests of this module"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return; // run by hand with --ignored: nothing to do
    };
    let name = std::env::var(SEG).expect("segment name");
    match role.as_str() {
        "holder" => child_holder(&name),
        "forker" => child_forker(&name),
        other => panic!("unknown child role {other:?}"),
    }
}

/// Attaches, allocates a block, forks a grandchild that keeps everything it
/// inherited (no `after_fork`) and waits until killed (or its stdin closes),
/// reports, and exits.
fn child_forker(name: &str) {
    let seg = SegmentOptions::posix(name).open().expect("open");
    let heap = Heap::attach(&seg).expect("attach the heap");
    let off = heap.alloc(SMALL_SIZE, 16).expect("alloc").get();
    // SAFETY: the grandchild only makes async-signal-safe calls (read, _exit).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // Until killed, or until the test's end of our stdin closes (the test
        // process is gone): nothing outlives the test binary.
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into a local; read(2) is async-signal-safe.
        while unsafe { libc::read(0, (&raw mut byte).cast(), 1) } > 0 {}
        // SAFETY: _exit is async-signal-safe and runs nothing of this process.
        unsafe { libc::_exit(0) };
    }
    assert!(pid > 0, "fork");
    say(format!(
        "ready {} {} {off}:{SMALL_SIZE} {pid}",
        seg.slot(),
        seg.owner_tag().bits()
    ));
    // Exit without detaching, as a killed process would (the grandchild keeps the
    // description, and with it our locks).
    std::process::exit(0);
}

fn child_holder(name: &str) {
    let seg = SegmentOptions::posix(name).open().expect("open");
    let heap = Heap::attach(&seg).expect("attach the heap");
    let mut blocks: Vec<(u64, usize)> = (0..SMALL)
        .map(|_| (heap.alloc(SMALL_SIZE, 16).expect("alloc").get(), SMALL_SIZE))
        .collect();
    for (off, _) in blocks.drain(..SMALL_FREED) {
        heap.free(off).expect("free into the cache");
    }
    blocks.push((
        heap.alloc(LARGE_SIZE, 4096).expect("alloc large").get(),
        LARGE_SIZE,
    ));
    for (k, &(off, size)) in blocks.iter().enumerate() {
        let p = heap.ptr(off).expect("ptr").as_ptr();
        for i in 0..size {
            // SAFETY: `off` is our block of at least `size` bytes; nobody else may
            // touch it while we hold it (which is what the test checks).
            unsafe { p.add(i).write_volatile(pattern(k, i)) };
        }
    }
    let list: Vec<String> = blocks.iter().map(|(o, s)| format!("{o}:{s}")).collect();
    say(format!(
        "ready {} {} {}",
        seg.slot(),
        seg.owner_tag().bits(),
        list.join(",")
    ));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() != "check" {
            continue;
        }
        let mut bad = None;
        'all: for (k, &(off, size)) in blocks.iter().enumerate() {
            let owned = heap.state(off).ok() == Some(BlockState::Owned(seg.owner_tag()));
            let p = heap.ptr(off).expect("ptr").as_ptr();
            for i in 0..size {
                // SAFETY: as above; a volatile read of our own block.
                if !owned || unsafe { p.add(i).read_volatile() } != pattern(k, i) {
                    bad = Some((off, i, owned));
                    break 'all;
                }
            }
        }
        match bad {
            None => say("intact"),
            Some((off, i, owned)) => say(format!("damaged {off} {i} owned={owned}")),
        }
    }
    for (off, _) in blocks {
        let _ = heap.free(off);
    }
}

// ---------------------------------------------------------------------------------
// The parent: the hostile peer.
// ---------------------------------------------------------------------------------

/// A live child holding blocks, as it reported itself.
struct Holder {
    proc: LineChild,
    slot: u32,
    tag: OwnerTag,
    /// `(offset, size)` of every block it holds.
    blocks: Vec<(u64, usize)>,
}

impl Holder {
    fn spawn(name: &str) -> Holder {
        Self::spawn_as(name, "holder").0
    }

    /// A child in `role`, and the words of its report after the blocks.
    fn spawn_as(name: &str, role: &str) -> (Holder, Vec<String>) {
        let mut cmd = common::self_test_command(CHILD_TEST);
        cmd.env(ROLE, role).env(SEG, name);
        let proc = LineChild::spawn(cmd, Stdio::piped());
        let line = proc
            .next_after(PREFIX, PATIENCE)
            .unwrap_or_else(|e| panic!("the holder did not report: {e}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"ready"), "{line}");
        let slot: u32 = words[1].parse().unwrap();
        let tag = OwnerTag::from_word(words[2].parse().unwrap());
        assert_eq!(tag.slot(), slot);
        let blocks = words[3]
            .split(',')
            .map(|b| {
                let (o, s) = b.split_once(':').unwrap();
                (o.parse().unwrap(), s.parse().unwrap())
            })
            .collect();
        let rest = words[4..].iter().map(|w| w.to_string()).collect();
        let holder = Holder {
            proc,
            slot,
            tag,
            blocks,
        };
        (holder, rest)
    }

    /// Asks the child to check its blocks; panics unless they are intact.
    fn assert_intact(&mut self, what: &str) {
        let stdin = self.proc.stdin().expect("stdin");
        writeln!(stdin, "check").unwrap();
        stdin.flush().unwrap();
        let answer = self.proc.next_after(PREFIX, PATIENCE).expect("an answer");
        assert_eq!(answer.trim(), "intact", "{what}: the live holder's data");
    }

    fn kill(&mut self) {
        self.proc.kill().unwrap();
        assert!(self.proc.wait_for_exit(PATIENCE).is_some(), "reaped");
    }
}

/// A word of registry slot `slot` at `field` bytes into it, as a peer sees it.
fn slot_word<T>(seg: &Segment, slot: u32, field: u64) -> &T {
    let off = shmkit::testkit::registry_slot_offset(seg, slot).expect("slot in range") + field;
    assert!(off + size_of::<T>() as u64 <= seg.user_offset());
    assert_eq!(off % align_of::<T>() as u64, 0);
    // SAFETY: in bounds of the mapping (below user_offset, which is committed) and
    // aligned (checked); T is an atomic of the field's size, valid for any bits,
    // and the library only accesses these words atomically too.
    unsafe { &*seg.as_ptr().add(off as usize).cast::<T>() }
}

/// The bit of a slot word that carries incarnation bit 20 of the owner tag.
const FLIP: u64 = 1 << (2 + 20);

/// A fresh named segment with a heap: `(name, segment, heap)`.
fn posix_heap(prefix: &str) -> (String, Segment, Heap) {
    let name = shmkit::unique_name(prefix).unwrap();
    let seg = SegmentOptions::posix(&name)
        .max_size(64 << 20)
        .create()
        .unwrap();
    let heap = Heap::attach(&seg).unwrap();
    (name, seg, heap)
}

/// Everything a live, wronged holder must still have: its tag alive, its slot
/// `Corrupt` (a typed error from `is_alive`, never "dead"), nothing of it
/// reclaimed by either `reclaim_dead`, its blocks still its own, and the parent's
/// allocations clear of them.
fn assert_untouched(seg: &Segment, heap: &Heap, a: &mut Holder, what: &str) {
    assert!(
        seg.is_owner_alive(a.tag),
        "{what}: a live owner judged dead"
    );
    let info = seg.slot_info(a.slot).unwrap();
    assert_eq!(info.state, SlotState::Corrupt, "{what}: {info:?}");
    assert!(
        matches!(seg.is_alive(a.slot), Err(Error::Corrupt { .. })),
        "{what}: {:?}",
        seg.is_alive(a.slot)
    );
    assert!(
        !seg.reclaim_dead().unwrap().contains(&a.slot),
        "{what}: the registry freed a live slot"
    );
    let r = heap.reclaim_dead().unwrap();
    assert_eq!((r.blocks, r.bytes), (0, 0), "{what}: reclaimed {r:?}");
    assert!(r.owners.is_empty(), "{what}: {r:?}");
    for &(off, _) in &a.blocks {
        assert_eq!(
            heap.state(off).unwrap(),
            BlockState::Owned(a.tag),
            "{what}: block {off}"
        );
    }
    // The parent allocates as much again: nothing it gets overlaps a held block.
    let mine: Vec<(u64, usize)> = (0..2 * SMALL)
        .map(|_| (heap.alloc(SMALL_SIZE, 16).unwrap().get(), SMALL_SIZE))
        .chain(std::iter::once((
            heap.alloc(LARGE_SIZE, 4096).unwrap().get(),
            LARGE_SIZE,
        )))
        .collect();
    for &(m, ms) in &mine {
        for &(o, os) in &a.blocks {
            let disjoint = m + ms as u64 <= o || o + os as u64 <= m;
            assert!(
                disjoint,
                "{what}: our block {m}+{ms} overlaps the holder's {o}+{os}"
            );
        }
    }
    for (m, _) in mine {
        heap.free(m).unwrap();
    }
    assert!(heap.verify().is_clean(), "{what}: {:?}", heap.verify());
    a.assert_intact(what);
}

/// After the holder was SIGKILLed: its tag dead, its slot dead and freed, its
/// blocks back.
fn assert_dead_and_reclaimed(seg: &Segment, heap: &Heap, a: &Holder, what: &str) {
    common::eventually("the killed holder's tag to be dead", || {
        !seg.is_owner_alive(a.tag)
    });
    assert_eq!(
        seg.slot_info(a.slot).unwrap().state,
        SlotState::Dead,
        "{what}"
    );
    let r = heap.reclaim_dead().unwrap();
    let held = a.blocks.len() as u64;
    assert!(r.blocks >= held, "{what}: {r:?} of {held} blocks");
    assert_eq!(r.owners, vec![a.tag], "{what}");
    for &(off, _) in &a.blocks {
        assert!(
            !matches!(heap.state(off), Ok(BlockState::Owned(t)) if t == a.tag),
            "{what}: block {off} still the dead holder's"
        );
    }
    assert!(seg.reclaim_dead().unwrap().contains(&a.slot), "{what}");
    assert_eq!(seg.slot_info(a.slot).unwrap().state, SlotState::Free);
    assert!(heap.verify().is_clean(), "{what}: {:?}", heap.verify());
}

// ---------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------

#[test]
fn one_flipped_incarnation_bit_does_not_make_a_live_holder_dead() {
    let (name, seg, heap) = posix_heap("hostile-flip-");
    let mut a = Holder::spawn(&name);
    assert!(seg.is_owner_alive(a.tag));
    assert_eq!(seg.slot_info(a.slot).unwrap().state, SlotState::Alive);
    let word = slot_word::<AtomicU64>(&seg, a.slot, 0);
    let before = word.load(Ordering::Acquire);
    assert_eq!(
        OwnerTag::new(a.slot, before & !3),
        Some(a.tag),
        "this test's idea of the slot word"
    );
    word.fetch_xor(FLIP, Ordering::AcqRel);
    let forged = OwnerTag::new(a.slot, (before ^ FLIP) & !3).unwrap();
    assert_ne!(forged, a.tag);
    assert!(
        !seg.is_owner_alive(forged),
        "the incarnation the word now names has no owner"
    );
    assert_untouched(&seg, &heap, &mut a, "flipped incarnation bit");
    // The other way round: killed, with the flipped word still in place.
    a.kill();
    assert_dead_and_reclaimed(&seg, &heap, &a, "killed after the flip");
}

#[test]
fn a_rewritten_pid_or_start_time_does_not_make_a_live_holder_dead() {
    let (name, seg, heap) = posix_heap("hostile-pid-");
    let mut a = Holder::spawn(&name);
    let pid = slot_word::<AtomicU32>(&seg, a.slot, SLOT_PID);
    let start = slot_word::<AtomicU64>(&seg, a.slot, SLOT_START_TIME);
    assert_eq!(
        pid.load(Ordering::Relaxed),
        a.proc.pid(),
        "this test's idea of the slot"
    );
    let (real_pid, real_start) = (pid.load(Ordering::Relaxed), start.load(Ordering::Relaxed));
    // A pid no process has (above any pid_max): /proc says "gone".
    pid.store(u32::MAX - 1, Ordering::Relaxed);
    assert_untouched(&seg, &heap, &mut a, "pid rewritten to a dead one");
    pid.store(real_pid, Ordering::Relaxed);
    assert_eq!(seg.slot_info(a.slot).unwrap().state, SlotState::Alive);
    // Another start time: /proc says "the pid was reused".
    start.store(real_start + 1, Ordering::Relaxed);
    assert_untouched(&seg, &heap, &mut a, "start time rewritten");
    a.kill();
    assert_dead_and_reclaimed(&seg, &heap, &a, "killed with a rewritten start time");
}

#[test]
fn a_slot_word_claiming_a_process_that_is_not_attached_is_dead() {
    let (name, seg, heap) = posix_heap("hostile-forged-");
    // A real process that attached and was killed; its slot is freed.
    let mut a = Holder::spawn(&name);
    a.kill();
    assert_dead_and_reclaimed(&seg, &heap, &a, "killed");
    let (word, pid, start) = (
        slot_word::<AtomicU64>(&seg, a.slot, 0),
        slot_word::<AtomicU32>(&seg, a.slot, SLOT_PID),
        slot_word::<AtomicU64>(&seg, a.slot, SLOT_START_TIME),
    );
    assert_eq!(word.load(Ordering::Acquire), 0);
    // The peer writes the dead process back in, then a live process (us) under an
    // incarnation nobody holds: both are dead verdicts, and the registry frees them.
    let me = std::process::id();
    let my_start = std::fs::read_to_string("/proc/self/stat").unwrap();
    let my_start: u64 = my_start[my_start.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let dead_word = ((a.tag.bits() & ((1 << 46) - 1)) << 2) | 0b10;
    for (w, p, st, what) in [
        (dead_word, a.proc.pid(), 0, "the killed process"),
        (
            0x5eed_1234_5678_9ab0 | 0b10,
            me,
            my_start,
            "a live pid, a made-up incarnation",
        ),
    ] {
        pid.store(p, Ordering::Relaxed);
        if st != 0 {
            start.store(st, Ordering::Relaxed);
        }
        word.store(w, Ordering::Release);
        let tag = OwnerTag::new(a.slot, w & !3).unwrap();
        assert!(!seg.is_owner_alive(tag), "{what}");
        assert_eq!(
            seg.slot_info(a.slot).unwrap().state,
            SlotState::Dead,
            "{what}"
        );
        assert!(!seg.is_alive(a.slot).unwrap(), "{what}");
        assert_eq!(seg.reclaim_dead().unwrap(), vec![a.slot], "{what}");
        assert_eq!(
            seg.slot_info(a.slot).unwrap().state,
            SlotState::Free,
            "{what}"
        );
    }
    // And the heap was never touched.
    assert_eq!(heap.reclaim_dead().unwrap().blocks, 0);
    assert!(heap.verify().is_clean());
}

/// The same verdicts in one process, for every kind of lock table: OFD locks
/// through a descriptor (memfd), a System V lock file, and the in-process table of
/// heap-backed segments.
#[test]
fn a_flipped_word_of_an_attachment_in_this_process_is_corrupt_not_dead() {
    let kinds = [
        ("memfd", SegmentOptions::memfd()),
        ("sysv", SegmentOptions::sysv_private()),
        ("heap", SegmentOptions::heap()),
    ];
    for (what, opts) in kinds {
        let seg = opts.max_size(4 << 20).create().unwrap();
        let peer = seg.try_clone().unwrap();
        let (slot, tag) = (peer.slot(), peer.owner_tag());
        let word = slot_word::<AtomicU64>(&seg, slot, 0);
        word.fetch_xor(FLIP, Ordering::AcqRel);
        assert!(seg.is_owner_alive(tag), "{what}");
        assert_eq!(
            seg.slot_info(slot).unwrap().state,
            SlotState::Corrupt,
            "{what}"
        );
        assert!(!seg.reclaim_dead().unwrap().contains(&slot), "{what}");
        // The peer itself is unaffected: its own tag is a compare.
        assert!(peer.is_owner_alive(tag), "{what}");
        word.fetch_xor(FLIP, Ordering::AcqRel);
        assert_eq!(
            seg.slot_info(slot).unwrap().state,
            SlotState::Alive,
            "{what}"
        );
        word.fetch_xor(FLIP, Ordering::AcqRel);
        peer.simulate_crash();
        assert!(!seg.is_owner_alive(tag), "{what}: a dead attachment");
        assert_eq!(
            seg.slot_info(slot).unwrap().state,
            SlotState::Dead,
            "{what}"
        );
        assert_eq!(seg.reclaim_dead().unwrap(), vec![slot], "{what}");
    }
}

/// The kernel's evidence and `/proc` together still catch the case they were
/// combined for: a process that exited while a forked grandchild (no
/// `after_fork`) keeps its description, and with it its slot lock and both its
/// witnesses. The identity witness vouches for the recorded pid, `/proc` says it is
/// gone: dead, and its block comes back.
#[test]
fn a_dead_owner_whose_forked_child_keeps_its_locks_is_still_dead() {
    let (name, seg, heap) = posix_heap("hostile-fork-");
    let (mut a, rest) = Holder::spawn_as(&name, "forker");
    let _grandchild = KillOnDrop(rest[0].parse().unwrap());
    assert!(a.proc.wait_for_exit(PATIENCE).is_some(), "the forker exits");
    common::eventually("the exited owner to be dead", || !seg.is_owner_alive(a.tag));
    assert_eq!(seg.slot_info(a.slot).unwrap().state, SlotState::Dead);
    let r = heap.reclaim_dead().unwrap();
    // Its block, and the free blocks its cache had taken with it.
    assert!(r.blocks >= 1, "{r:?}");
    assert_eq!(r.owners, vec![a.tag]);
    let (off, _) = a.blocks[0];
    assert!(!matches!(heap.state(off), Ok(BlockState::Owned(t)) if t == a.tag));
    assert!(seg.reclaim_dead().unwrap().contains(&a.slot));
    assert!(heap.verify().is_clean());
}

/// SIGKILLs a grandchild (which is not ours to reap) when dropped, also when a
/// test fails: it holds our stderr open.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid the forker reported and a constant signal.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}
