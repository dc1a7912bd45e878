//! The directory (`Segment::find_or_create`, `Directory`): objects by name.
//!
//! * smoke: every object type created, found through another attachment and used;
//! * edge: name lengths (empty, 255 and 256 bytes), multibyte UTF-8 names, a name
//!   made non-UTF-8 by a peer's stray write, a second create, a missing name, a
//!   wrong type (the message names both identities), a wrong configuration;
//! * stress: 100 000 names created, found and removed, leaving the heap as it was;
//! * lifetimes: a handle that outlives `remove`, a name created anew while the old
//!   object is still held, removed objects whose only holder died; handles shared
//!   between threads;
//! * real processes: ten children racing `find_or_create` on five names (one
//!   builder each, one offset for all), and a creator SIGKILLed inside its init
//!   closure (nobody is handed the half-built object; the next `find_or_create`
//!   builds a fresh one; reclaim leaves everything clean).
//!
//! Two tests reproduce library bugs these tests found (now fixed): a name removed
//! while its creator builds it, and a create that linked a name twice past a
//! damaged entry.
//!
//! The process tests re-execute this binary: `child_main` (ignored) reads its role
//! from `SHMKIT_CHILD_ROLE` and the POSIX segment's name from
//! `SHMKIT_CHILD_TARGET`; children speak in stdout lines starting with `SHMKIT:`
//! and leave when their stdin reaches end-of-file. They are skipped under miri,
//! where the stress test runs with 200 names.
#![allow(clippy::disallowed_types)]

mod common;

use common::child::{PREFIX, ROLE, TARGET, say};
use std::collections::BTreeSet;
use std::io::Read;
use std::process::Stdio;
use std::sync::atomic::{
    AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering,
};
use std::sync::mpsc::{self};
use std::time::{Duration, Instant};

use common::{LineChild, PATIENCE};
use shmkit::alloc::Heap;
use shmkit::sync::{Condvar, Event, EventKind, Mutex, RwLock, Semaphore};
use shmkit::{
    CREATE_WAIT, Directory, Error, MAX_OBJECT_NAME, ObjectState, Segment, SegmentOptions, Shared,
    ShmObject,
};

const MIRI: bool = cfg!(miri);

/// A test still running after this long is hung: the watchdog aborts the binary.
const WATCHDOG: Duration = Duration::from_secs(120);

/// Bytes of an entry's head, which the name follows (`src/directory/entry.rs`).
const ENTRY_HEAD: u64 = 208;
/// An entry's `magic` ("SHMKDENT").
const ENTRY_MAGIC: u64 = 0x544e_4544_4b4d_4853;

/// Children racing `find_or_create`, and the names they race on.
const RACERS: usize = 10;
const RACED_NAMES: usize = 5;

// ---------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------

/// Aborts the whole test binary if not dropped within [`WATCHDOG`].
fn watchdog(test: &'static str) -> common::Watchdog {
    common::watchdog(test, WATCHDOG)
}

/// A process-memory segment (another "process" is a `try_clone`).
fn segment() -> Segment {
    SegmentOptions::heap().max_size(16 << 20).create().unwrap()
}

/// The heap's used bytes.
fn used(heap: &Heap) -> u64 {
    heap.stats().unwrap().used
}

/// Fails unless the heap and the directory both verify clean; returns the
/// directory's (entries, removed).
fn assert_clean(seg: &Segment, when: &str) -> (u64, u64) {
    let heap = Heap::attach(seg).unwrap();
    let h = heap.verify();
    assert!(h.is_clean(), "{when}: heap verify:\n{h}");
    let d = seg.directory().verify().unwrap();
    assert!(d.is_clean(), "{when}: directory verify: {d:?}");
    (d.entries, d.removed)
}

/// Builds the directory (its first create makes its table) and leaves it empty,
/// so that later `used` figures compare like with like.
fn build_directory(seg: &Segment) {
    drop(seg.create::<AtomicU64>("warm-up", ()).unwrap());
    seg.directory().remove("warm-up").unwrap();
}

/// Asserts that `r` is the error `want` names (by variant).
#[track_caller]
fn assert_err<T: std::fmt::Debug>(r: Result<T, Error>, want: &str) -> Error {
    match r {
        Err(e) if variant(&e) == want => e,
        other => panic!("expected Error::{want}, got {other:?}"),
    }
}

fn variant(e: &Error) -> &'static str {
    match e {
        Error::InvalidName { .. } => "InvalidName",
        Error::NotFound(_) => "NotFound",
        Error::AlreadyExists(_) => "AlreadyExists",
        Error::WrongType { .. } => "WrongType",
        Error::WrongConfig { .. } => "WrongConfig",
        Error::NotReady { .. } => "NotReady",
        Error::Corrupt { .. } => "Corrupt",
        _ => "another",
    }
}

fn assert_send_sync<T: Send + Sync>() {}

// ---------------------------------------------------------------------------------
// Smoke.
// ---------------------------------------------------------------------------------

#[test]
fn every_object_type_is_created_found_through_another_attachment_and_used() {
    let seg = segment();
    let peer = seg.try_clone().unwrap(); // another process, as the directory sees it

    // Mutex: a write under the lock is seen through the other attachment.
    let m = seg.create::<Mutex<[u64; 2]>>("mutex", ()).unwrap();
    *m.lock().unwrap() = [3, 4];
    let pm = peer.find::<Mutex<[u64; 2]>>("mutex").unwrap();
    assert_eq!(*pm.lock().unwrap(), [3, 4]);
    pm.lock().unwrap()[1] = 5;
    assert_eq!(*m.lock().unwrap(), [3, 5]);
    assert_eq!(pm.offset().get(), m.offset().get());
    assert_eq!(pm.name(), "mutex");

    // RwLock (default and small reader tables).
    let l = seg.create::<RwLock<u64>>("rwlock", ()).unwrap();
    *l.write().unwrap() = 9;
    let pl = peer.find::<RwLock<u64>>("rwlock").unwrap();
    {
        let (a, b) = (l.read().unwrap(), pl.read().unwrap());
        assert_eq!((*a, *b), (9, 9));
    }
    let small = seg.create::<RwLock<u32, 4>>("rwlock-4", ()).unwrap();
    *small.write().unwrap() = 1;
    assert_eq!(
        *peer
            .find::<RwLock<u32, 4>>("rwlock-4")
            .unwrap()
            .read()
            .unwrap(),
        1
    );

    // Semaphore: permits taken through one attachment are missing in the other.
    let s = seg.create::<Semaphore>("sem", 3).unwrap();
    let ps = peer.find::<Semaphore>("sem").unwrap();
    assert_eq!(*ps.config(), 3);
    s.acquire().unwrap();
    ps.try_acquire().unwrap();
    assert_eq!(s.available(), 1);
    assert_eq!(ps.available(), 1);
    s.release(1).unwrap();
    ps.release(1).unwrap();
    assert_eq!(ps.available(), 3);
    let ledger = seg.create::<Semaphore<4>>("sem-ledger", 2).unwrap();
    ledger.acquire().unwrap();
    assert_eq!(
        peer.find::<Semaphore<4>>("sem-ledger").unwrap().available(),
        1
    );
    ledger.release(1).unwrap();

    // Events of both kinds.
    let auto = seg
        .create::<Event>("event-auto", EventKind::AutoReset)
        .unwrap();
    let manual = seg
        .create::<Event>("event-manual", EventKind::ManualReset)
        .unwrap();
    let pa = peer.find::<Event>("event-auto").unwrap();
    let pmn = peer.find::<Event>("event-manual").unwrap();
    assert_eq!(*pa.config(), EventKind::AutoReset);
    assert_eq!(pmn.kind(), EventKind::ManualReset);
    auto.set();
    assert!(pa.wait_for(PATIENCE));
    assert!(
        !pa.is_set(),
        "an auto-reset event resets as its waiter returns"
    );
    manual.set();
    assert!(pmn.wait_for(PATIENCE));
    assert!(pmn.is_set(), "a manual-reset event stays set");
    pmn.reset();
    assert!(!manual.is_set());

    // Condvar with a Mutex: a thread of the other attachment waits for a flag.
    let flag = seg.create::<Mutex<u32>>("flag", ()).unwrap();
    let cv = seg.create::<Condvar>("cv", ()).unwrap();
    let waiter = {
        let peer = peer.clone();
        std::thread::spawn(move || {
            let flag = peer.find::<Mutex<u32>>("flag").unwrap();
            let cv = peer.find::<Condvar>("cv").unwrap();
            let deadline = Instant::now() + PATIENCE;
            let mut g = flag.lock().unwrap();
            while *g == 0 {
                assert!(Instant::now() < deadline, "never notified");
                g = cv.wait_for(g, Duration::from_millis(50)).unwrap().0;
            }
            *g
        })
    };
    *flag.lock().unwrap() = 7;
    cv.notify_all();
    assert_eq!(waiter.join().unwrap(), 7);

    // Every atomic.
    fn atomic<T: ShmObject<Config = ()>>(
        seg: &Segment,
        peer: &Segment,
        name: &str,
        store: impl Fn(&T),
        load: impl Fn(&T) -> i64,
    ) {
        let a = seg.create::<T>(name, ()).unwrap();
        assert_eq!(load(&a), 0, "{name}: a new atomic is zero");
        store(&a);
        assert_ne!(load(&a), 0);
        assert_eq!(load(&peer.find::<T>(name).unwrap()), load(&a), "{name}");
    }
    atomic::<AtomicU8>(
        &seg,
        &peer,
        "u8",
        |a| a.store(200, Ordering::Relaxed),
        |a| a.load(Ordering::Relaxed).into(),
    );
    atomic::<AtomicU16>(
        &seg,
        &peer,
        "u16",
        |a| a.store(60_000, Ordering::Relaxed),
        |a| a.load(Ordering::Relaxed).into(),
    );
    atomic::<AtomicU32>(
        &seg,
        &peer,
        "u32",
        |a| a.store(1 << 31, Ordering::Relaxed),
        |a| a.load(Ordering::Relaxed).into(),
    );
    atomic::<AtomicU64>(
        &seg,
        &peer,
        "u64",
        |a| a.store(1 << 40, Ordering::Relaxed),
        |a| a.load(Ordering::Relaxed) as i64,
    );
    atomic::<AtomicI8>(
        &seg,
        &peer,
        "i8",
        |a| a.store(-5, Ordering::Relaxed),
        |a| a.load(Ordering::Relaxed).into(),
    );
    atomic::<AtomicI16>(
        &seg,
        &peer,
        "i16",
        |a| a.store(-500, Ordering::Relaxed),
        |a| a.load(Ordering::Relaxed).into(),
    );
    atomic::<AtomicI32>(
        &seg,
        &peer,
        "i32",
        |a| a.store(-5 << 20, Ordering::Relaxed),
        |a| a.load(Ordering::Relaxed).into(),
    );
    atomic::<AtomicI64>(
        &seg,
        &peer,
        "i64",
        |a| a.store(-5 << 40, Ordering::Relaxed),
        |a| a.load(Ordering::Relaxed),
    );
    let n = peer.find::<AtomicU64>("u64").unwrap();
    n.fetch_add(1, Ordering::Relaxed);
    assert_eq!(
        seg.find::<AtomicU64>("u64")
            .unwrap()
            .load(Ordering::Relaxed),
        (1 << 40) + 1
    );

    // The directory lists them all, ready, with the identities they were made as.
    let list = seg.directory().list().unwrap();
    let names: BTreeSet<&str> = list.iter().map(|i| i.name.as_str()).collect();
    let want: BTreeSet<&str> = [
        "mutex",
        "rwlock",
        "rwlock-4",
        "sem",
        "sem-ledger",
        "event-auto",
        "event-manual",
        "flag",
        "cv",
        "u8",
        "u16",
        "u32",
        "u64",
        "i8",
        "i16",
        "i32",
        "i64",
    ]
    .into();
    assert_eq!(names, want);
    for i in &list {
        assert_eq!(i.state, ObjectState::Ready, "{i:?}");
        assert_eq!(i.creator, seg.owner_tag(), "{i:?}");
        assert!(i.creator_alive, "{i:?}");
        assert!(i.created_ns > 0, "{i:?}");
    }
    let info = |name: &str| list.iter().find(|i| i.name == name).unwrap().clone();
    assert_eq!(info("mutex").identity, Mutex::<[u64; 2]>::identity(&()));
    assert_eq!(info("mutex").offset, m.offset().get());
    assert_eq!(info("sem").identity.name, "shmkit::Semaphore<0>");
    assert_eq!(info("sem").config[0], 3);
    assert_eq!(info("event-manual").config[0], 1);
    assert_eq!(info("u64").identity.name, "core::sync::atomic::AtomicU64");
    // `mutex` is held by both attachments; `u8` only by none now (its handles
    // were dropped inside `atomic`).
    assert_eq!(info("mutex").holders, 2);
    assert_eq!(info("u8").holders, 0);
    // Offsets are distinct.
    let offsets: BTreeSet<u64> = list.iter().map(|i| i.offset).collect();
    assert_eq!(offsets.len(), list.len());

    assert_eq!(assert_clean(&seg, "after the smoke test"), (17, 0));
}

#[test]
fn find_or_create_builds_once_and_then_finds_the_same_object() {
    let seg = segment();
    let built = std::cell::Cell::new(0);
    let a = seg
        .directory()
        .find_or_create_with::<AtomicU64>("n", (), |n| {
            built.set(built.get() + 1);
            n.store(100, Ordering::Relaxed);
        })
        .unwrap();
    let b = seg
        .directory()
        .find_or_create_with::<AtomicU64>("n", (), |_| built.set(built.get() + 1))
        .unwrap();
    let c = seg.find_or_create::<AtomicU64>("n", ()).unwrap();
    assert_eq!(built.get(), 1, "init ran for a find");
    assert_eq!(b.load(Ordering::Relaxed), 100);
    assert_eq!(a.offset().get(), c.offset().get());
    c.fetch_add(1, Ordering::Relaxed);
    assert_eq!(a.load(Ordering::Relaxed), 101);
}

// ---------------------------------------------------------------------------------
// Edge: names.
// ---------------------------------------------------------------------------------

#[test]
fn an_empty_name_and_a_256_byte_name_are_refused() {
    let seg = segment();
    let dir = seg.directory();
    let long = "x".repeat(MAX_OBJECT_NAME + 1);
    assert_eq!(long.len(), 256);
    for name in ["", long.as_str()] {
        assert_err(dir.create::<AtomicU64>(name, ()), "InvalidName");
        assert_err(dir.find::<AtomicU64>(name), "InvalidName");
        assert_err(dir.find_or_create::<AtomicU64>(name, ()), "InvalidName");
        assert_err(
            dir.find_or_create_with::<AtomicU64>(name, (), |_| panic!("init of a refused name")),
            "InvalidName",
        );
        assert_err(dir.remove(name), "InvalidName");
    }
    // 256 bytes of multibyte characters: refused by bytes, not characters.
    let crabs = "🦀".repeat(64);
    assert_eq!((crabs.len(), crabs.chars().count()), (256, 64));
    assert_err(dir.create::<AtomicU64>(&crabs, ()), "InvalidName");
    assert!(dir.list().unwrap().is_empty());
    assert_eq!(assert_clean(&seg, "after refused names"), (0, 0));
}

#[test]
fn names_of_1_and_255_bytes_are_accepted() {
    let seg = segment();
    let dir = seg.directory();
    let longest = "y".repeat(MAX_OBJECT_NAME);
    assert_eq!(longest.len(), 255);
    let a = dir.create::<AtomicU64>(&longest, ()).unwrap();
    let b = dir.create::<AtomicU64>("y", ()).unwrap();
    a.store(255, Ordering::Relaxed);
    b.store(1, Ordering::Relaxed);
    assert_eq!(
        dir.find::<AtomicU64>(&longest)
            .unwrap()
            .load(Ordering::Relaxed),
        255
    );
    assert_eq!(
        dir.find::<AtomicU64>("y").unwrap().load(Ordering::Relaxed),
        1
    );
    // A prefix of the longest name is another name.
    assert_err(dir.find::<AtomicU64>(&longest[..254]), "NotFound");
    let names: BTreeSet<String> = dir.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, [longest.clone(), "y".to_owned()].into());
    assert_eq!(a.name(), longest);
    dir.remove(&longest).unwrap();
    dir.remove("y").unwrap();
    drop((a, b));
    assert_eq!(assert_clean(&seg, "after removing them"), (0, 0));
}

#[test]
fn multibyte_utf8_names_are_names_like_any_other() {
    let seg = segment();
    let dir = seg.directory();
    let mixed = "größe-日本語-🦀";
    // 85 three-byte characters: exactly the longest name.
    let kanji = "日".repeat(85);
    assert_eq!(kanji.len(), MAX_OBJECT_NAME);
    // The same text in two Unicode normal forms: two names (names are bytes).
    let (composed, decomposed) = ("caf\u{e9}", "cafe\u{301}");
    for (i, name) in [mixed, kanji.as_str(), composed, decomposed]
        .into_iter()
        .enumerate()
    {
        let n = dir.create::<AtomicU64>(name, ()).unwrap();
        n.store(i as u64 + 10, Ordering::Relaxed);
        assert_eq!(n.name(), name);
    }
    for (i, name) in [mixed, kanji.as_str(), composed, decomposed]
        .into_iter()
        .enumerate()
    {
        let n = dir.find::<AtomicU64>(name).unwrap();
        assert_eq!(n.load(Ordering::Relaxed), i as u64 + 10, "{name:?}");
    }
    let names: BTreeSet<String> = dir.list().unwrap().into_iter().map(|i| i.name).collect();
    let want: BTreeSet<String> = [mixed, kanji.as_str(), composed, decomposed]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(names, want);
    // A name cut inside a character is simply another (missing) name.
    assert_err(dir.find::<AtomicU64>("größe-日本語-"), "NotFound");
    for name in [mixed, kanji.as_str(), composed, decomposed] {
        dir.remove(name).unwrap();
    }
    assert_eq!(assert_clean(&seg, "after removing them"), (0, 0));
}

/// The address of the first byte of `name`'s entry name, found from the object's
/// offset that `list` reports: the entry block is `| head (208 B) | name | type
/// name | pad | object |`, the object aligned for its type. Checked against the
/// head's magic and the name's bytes before it is returned.
fn entry_name_ptr(seg: &Segment, name: &str) -> *mut u8 {
    let list = seg.directory().list().unwrap();
    let info = list.iter().find(|i| i.name == name).unwrap();
    let id = &info.identity;
    let pre = ENTRY_HEAD + name.len() as u64 + id.name.len() as u64;
    let obj_at = pre.div_ceil(id.align) * id.align;
    let entry = info.offset - obj_at;
    assert_eq!(entry % 16, 0, "entry blocks are 16-aligned");
    assert!(entry >= seg.user_offset());
    assert!(info.offset + id.size <= seg.committed());
    // SAFETY: `entry .. entry + pre` lies inside the committed mapping (checked
    // above: it precedes the object, which ends inside it); the directory is idle
    // (this test holds no directory call open), and these are byte reads of plain
    // memory.
    unsafe {
        let base = seg.as_ptr().add(entry as usize);
        let magic = base.cast::<u64>().read_volatile();
        assert_eq!(magic, ENTRY_MAGIC, "no entry head at {entry:#x}");
        let bytes = std::slice::from_raw_parts(base.add(ENTRY_HEAD as usize), name.len());
        assert_eq!(
            bytes,
            name.as_bytes(),
            "the entry at {entry:#x} holds another name"
        );
        base.add(ENTRY_HEAD as usize)
    }
}

#[test]
fn a_name_made_non_utf8_by_a_peer_is_reported_corrupt_and_other_names_stay_findable() {
    let seg = segment();
    let dir = seg.directory();
    let names = ["alpha", "victim", "gamma", "delta"];
    for (i, name) in names.iter().enumerate() {
        dir.create::<AtomicU64>(name, ())
            .unwrap()
            .store(i as u64 + 1, Ordering::Relaxed);
    }
    let p = entry_name_ptr(&seg, "victim");
    // A peer's stray write: "victim" becomes b"\xffictim".
    // SAFETY: `p` points at the entry's first name byte (checked by
    // entry_name_ptr), inside the mapping; the directory is idle.
    let was = unsafe { p.read_volatile() };
    // SAFETY: as above.
    unsafe { p.write_volatile(0xff) };

    let e = assert_err(dir.list(), "Corrupt");
    let msg = e.to_string();
    assert!(msg.contains("not UTF-8"), "{msg}");
    assert!(
        msg.contains("entry at 0x"),
        "the error names the entry: {msg}"
    );
    let report = dir.verify().unwrap();
    assert!(!report.is_clean(), "verify missed the non-UTF-8 name");
    assert!(
        report.violations.iter().any(|v| v.contains("not UTF-8")),
        "{report:?}"
    );
    assert_eq!(report.entries, 4);
    // The damaged name is no longer the name "victim"...
    assert_err(dir.find::<AtomicU64>("victim"), "NotFound");
    // ...and every other name works as before: found, created, removed.
    for (i, name) in names.iter().enumerate().filter(|(_, n)| **n != "victim") {
        let n = dir.find::<AtomicU64>(name).unwrap();
        assert_eq!(n.load(Ordering::Relaxed), i as u64 + 1, "{name}");
    }
    dir.create::<AtomicU64>("epsilon", ()).unwrap();
    dir.remove("delta").unwrap();
    assert_err(dir.find::<AtomicU64>("delta"), "NotFound");
    assert_clean_heap(&seg, "with a damaged name");

    // The peer writes the byte back: the directory is whole again.
    // SAFETY: as above.
    unsafe { p.write_volatile(was) };
    let names_now: BTreeSet<String> = dir.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(
        names_now,
        ["alpha", "victim", "gamma", "epsilon"]
            .map(str::to_owned)
            .into()
    );
    assert_eq!(
        dir.find::<AtomicU64>("victim")
            .unwrap()
            .load(Ordering::Relaxed),
        2
    );
    assert_eq!(assert_clean(&seg, "after the repair"), (4, 0));
}

/// A damaged entry in a name's probe chain may be that name's entry: `find`
/// says so (`Error::Corrupt`), and `create` and `find_or_create` must too, rather
/// than link a second entry of the same name.
#[test]
fn create_of_a_name_whose_entry_is_damaged_is_refused_rather_than_linked_twice() {
    let seg = segment();
    let dir = seg.directory();
    dir.create::<AtomicU64>("victim", ())
        .unwrap()
        .store(7, Ordering::Relaxed);
    // A peer's stray write zeroes the entry's magic.
    // SAFETY: entry_name_ptr checked that an entry head lies `ENTRY_HEAD` bytes
    // before `p`, inside the mapping; the directory is idle.
    let head = unsafe { entry_name_ptr(&seg, "victim").sub(ENTRY_HEAD as usize) }.cast::<u64>();
    // SAFETY: as above (the head is 16-aligned).
    unsafe { head.write_volatile(0) };
    assert_err(dir.find::<AtomicU64>("victim"), "Corrupt");
    let created = dir.create::<AtomicU64>("victim", ());
    let found_or_created = dir.find_or_create::<AtomicU64>("victim", ());
    // SAFETY: as above.
    unsafe { head.write_volatile(ENTRY_MAGIC) };
    let names: Vec<String> = dir.list().unwrap().into_iter().map(|i| i.name).collect();
    println!("create: {created:?}; find_or_create: {found_or_created:?}; names: {names:?}");
    assert_err(created, "Corrupt");
    assert_err(found_or_created, "Corrupt");
    assert_eq!(names, ["victim"]);
    assert_eq!(
        dir.find::<AtomicU64>("victim")
            .unwrap()
            .load(Ordering::Relaxed),
        7
    );
    assert_eq!(assert_clean(&seg, "after the repair"), (1, 0));
}

fn assert_clean_heap(seg: &Segment, when: &str) {
    let h = Heap::attach(seg).unwrap().verify();
    assert!(h.is_clean(), "{when}: heap verify:\n{h}");
}

// ---------------------------------------------------------------------------------
// Edge: refusals.
// ---------------------------------------------------------------------------------

#[test]
fn second_create_of_a_name_is_refused() {
    let seg = segment();
    let peer = seg.try_clone().unwrap();
    let first = seg.create::<Mutex<u64>>("once", ()).unwrap();
    *first.lock().unwrap() = 5;
    let e = assert_err(peer.create::<Mutex<u64>>("once", ()), "AlreadyExists");
    assert!(e.to_string().contains("once"), "{e}");
    // Whatever the type: the name is taken.
    assert_err(peer.create::<AtomicU64>("once", ()), "AlreadyExists");
    assert_err(seg.create::<Mutex<u64>>("once", ()), "AlreadyExists");
    // The refused creates changed nothing.
    assert_eq!(*peer.find::<Mutex<u64>>("once").unwrap().lock().unwrap(), 5);
    assert_eq!(assert_clean(&seg, "after refused creates"), (1, 0));
}

#[test]
fn find_of_a_missing_name_is_not_found() {
    let seg = segment();
    let dir = seg.directory();
    // Before the directory exists...
    let e = assert_err(dir.find::<AtomicU64>("nobody"), "NotFound");
    assert!(e.to_string().contains("nobody"), "{e}");
    assert_err(dir.remove("nobody"), "NotFound");
    assert!(dir.list().unwrap().is_empty());
    // ...and once it holds other names.
    let _s = dir.create::<AtomicU64>("somebody", ()).unwrap();
    assert_err(dir.find::<AtomicU64>("nobody"), "NotFound");
    assert_err(dir.find::<AtomicU64>("somebod"), "NotFound");
    assert_err(dir.find::<AtomicU64>("somebody "), "NotFound");
    assert_err(dir.find::<AtomicU64>("Somebody"), "NotFound");
    assert_err(dir.remove("nobody"), "NotFound");
    dir.remove("somebody").unwrap();
    assert_err(dir.find::<AtomicU64>("somebody"), "NotFound");
    assert_err(dir.remove("somebody"), "NotFound");
}

#[test]
fn finding_a_name_as_another_type_is_refused_naming_both_types() {
    let seg = segment();
    let dir = seg.directory();
    let _m = dir.create::<Mutex<u64>>("m", ()).unwrap();
    let e = assert_err(dir.find::<Mutex<u32>>("m"), "WrongType");
    let msg = e.to_string();
    assert!(msg.contains("\"m\""), "names the object: {msg}");
    assert!(
        msg.contains("shmkit::Mutex<u64>"),
        "names what it is: {msg}"
    );
    assert!(
        msg.contains("shmkit::Mutex<u32>"),
        "names what was asked: {msg}"
    );
    let Error::WrongType {
        name,
        found,
        expected,
    } = &e
    else {
        unreachable!()
    };
    assert_eq!(name, "m");
    assert_eq!(found, &Mutex::<u64>::identity(&()).to_string());
    assert_eq!(expected, &Mutex::<u32>::identity(&()).to_string());
    assert_err(dir.find_or_create::<Mutex<u32>>("m", ()), "WrongType");
    assert_err(dir.find::<RwLock<u64>>("m"), "WrongType");

    // Same size and alignment, another name: still another type.
    let _a = dir.create::<AtomicU64>("a", ()).unwrap();
    let e = assert_err(dir.find::<AtomicI64>("a"), "WrongType");
    let msg = e.to_string();
    assert!(
        msg.contains("core::sync::atomic::AtomicU64")
            && msg.contains("core::sync::atomic::AtomicI64"),
        "{msg}"
    );
    // Const parameters are part of the type.
    let _s = dir.create::<Semaphore>("s", 1).unwrap();
    let msg = assert_err(dir.find::<Semaphore<4>>("s"), "WrongType").to_string();
    assert!(
        msg.contains("shmkit::Semaphore<0>") && msg.contains("shmkit::Semaphore<4>"),
        "{msg}"
    );
    let _l = dir.create::<RwLock<u64, 4>>("l", ()).unwrap();
    let msg = assert_err(dir.find::<RwLock<u64>>("l"), "WrongType").to_string();
    assert!(
        msg.contains("shmkit::RwLock<u64, 4>") && msg.contains("shmkit::RwLock<u64, 128>"),
        "{msg}"
    );
    // The objects are untouched, and the right type still finds them.
    dir.find::<Mutex<u64>>("m").unwrap();
    dir.find::<AtomicU64>("a").unwrap();
    dir.find::<Semaphore>("s").unwrap();
    dir.find::<RwLock<u64, 4>>("l").unwrap();
    assert_eq!(assert_clean(&seg, "after wrong types"), (4, 0));
}

#[test]
fn finding_with_another_config_is_refused() {
    let seg = segment();
    let dir = seg.directory();
    let s = dir.find_or_create::<Semaphore>("slots", 3).unwrap();
    let e = assert_err(dir.find_or_create::<Semaphore>("slots", 4), "WrongConfig");
    let Error::WrongConfig {
        name,
        found,
        expected,
    } = &e
    else {
        unreachable!()
    };
    assert_eq!(
        (name.as_str(), found.as_str(), expected.as_str()),
        ("slots", "3", "4")
    );
    assert!(e.to_string().contains("slots"), "{e}");
    // `find` takes any configuration and reports it.
    let f = dir.find::<Semaphore>("slots").unwrap();
    assert_eq!(*f.config(), 3);
    assert_eq!(f.available(), 3);
    assert_eq!(
        *dir.find_or_create::<Semaphore>("slots", 3)
            .unwrap()
            .config(),
        3
    );
    drop(s);

    let _e = dir.create::<Event>("ev", EventKind::ManualReset).unwrap();
    let e = assert_err(
        dir.find_or_create::<Event>("ev", EventKind::AutoReset),
        "WrongConfig",
    );
    assert!(
        e.to_string().contains("ManualReset") && e.to_string().contains("AutoReset"),
        "{e}"
    );
    assert_eq!(
        *dir.find::<Event>("ev").unwrap().config(),
        EventKind::ManualReset
    );
    assert_eq!(assert_clean(&seg, "after wrong configs"), (2, 0));
}

// ---------------------------------------------------------------------------------
// Stress.
// ---------------------------------------------------------------------------------

#[test]
fn a_hundred_thousand_names_are_created_found_and_removed_leaving_the_heap_as_it_was() {
    let _dog = watchdog("a_hundred_thousand_names_...");
    let n: u64 = if MIRI { 200 } else { 100_000 };
    let seg = SegmentOptions::heap().max_size(256 << 20).create().unwrap();
    let heap = Heap::attach(&seg).unwrap();
    let empty = used(&heap);
    build_directory(&seg);
    let start = used(&heap);
    let dir = seg.directory();
    let name = |i: u64| format!("n{i}");

    let t = Instant::now();
    for i in 0..n {
        dir.create::<AtomicU64>(&name(i), ())
            .unwrap()
            .store(i, Ordering::Relaxed);
    }
    let created = t.elapsed();
    let peak = used(&heap);

    let t = Instant::now();
    for i in 0..n {
        let h = dir.find::<AtomicU64>(&name(i)).unwrap();
        assert_eq!(h.load(Ordering::Relaxed), i, "{}", name(i));
    }
    let found = t.elapsed();
    assert_err(dir.find::<AtomicU64>(&name(n)), "NotFound");
    assert_err(dir.create::<AtomicU64>(&name(n / 2), ()), "AlreadyExists");
    let list = dir.list().unwrap();
    assert_eq!(list.len() as u64, n);
    let offsets: BTreeSet<u64> = list.iter().map(|i| i.offset).collect();
    assert_eq!(offsets.len() as u64, n, "two names share an object");
    drop(list);
    assert_eq!(assert_clean(&seg, "full"), (n, 0));

    let t = Instant::now();
    for i in 0..n {
        dir.remove(&name(i)).unwrap();
    }
    let removed = t.elapsed();
    assert_err(dir.find::<AtomicU64>(&name(0)), "NotFound");
    assert_eq!(assert_clean(&seg, "emptied"), (0, 0));
    let end = used(&heap);
    println!(
        "directory: {n} names: create {:.2} s, find {:.2} s, remove {:.2} s; heap used: \
         {empty} B before the directory, {start} B with its empty table, {peak} B full \
         ({:.0} B a name), {end} B at the end",
        created.as_secs_f64(),
        found.as_secs_f64(),
        removed.as_secs_f64(),
        (peak - start) as f64 / n as f64,
    );
    assert!(
        end.abs_diff(start) <= 4096,
        "heap used {end} B after removing every name, {start} B before creating them"
    );
}

// ---------------------------------------------------------------------------------
// Lifetimes.
// ---------------------------------------------------------------------------------

#[test]
fn a_handle_that_outlives_remove_keeps_working_until_dropped_then_its_memory_is_freed() {
    let seg = segment();
    let heap = Heap::attach(&seg).unwrap();
    build_directory(&seg);
    let start = used(&heap);
    let dir = seg.directory();
    let m = dir.create::<Mutex<u64>>("m", ()).unwrap();
    *m.lock().unwrap() = 41;
    let clone = m.clone();
    dir.remove("m").unwrap();
    // The name is gone at once...
    assert_err(dir.find::<Mutex<u64>>("m"), "NotFound");
    assert_err(dir.remove("m"), "NotFound");
    assert!(dir.list().unwrap().is_empty());
    assert_eq!(assert_clean(&seg, "removed, held"), (0, 1));
    // ...the object is not.
    *m.lock().unwrap() += 1;
    assert_eq!(*clone.lock().unwrap(), 42);
    drop(m);
    assert_eq!(assert_clean(&seg, "one of two handles dropped"), (0, 1));
    *clone.lock().unwrap() += 1;
    assert_eq!(*clone.lock().unwrap(), 43);
    drop(clone);
    assert_eq!(assert_clean(&seg, "the last handle dropped"), (0, 0));
    assert_eq!(
        used(&heap),
        start,
        "the removed object's memory was not freed"
    );
}

#[test]
fn a_removed_object_held_by_another_attachment_lives_until_that_one_drops_it() {
    let seg = segment();
    let heap = Heap::attach(&seg).unwrap();
    build_directory(&seg);
    let start = used(&heap);
    let peer = seg.try_clone().unwrap();
    let ours = seg.create::<AtomicU64>("a", ()).unwrap();
    let theirs = peer.find::<AtomicU64>("a").unwrap();
    drop(ours);
    seg.directory().remove("a").unwrap();
    assert_eq!(assert_clean(&seg, "removed, held by the peer"), (0, 1));
    theirs.store(9, Ordering::Relaxed);
    assert_eq!(theirs.load(Ordering::Relaxed), 9);
    drop(theirs);
    assert_eq!(assert_clean(&seg, "the peer dropped it"), (0, 0));
    assert_eq!(used(&heap), start);
}

#[test]
fn a_removed_object_whose_only_holder_died_is_freed_by_reclaim() {
    let seg = segment();
    let heap = Heap::attach(&seg).unwrap();
    build_directory(&seg);
    let start = used(&heap);
    let peer = seg.try_clone().unwrap();
    let slot = peer.slot();
    let theirs = peer.find_or_create::<Mutex<u64>>("m", ()).unwrap();
    *theirs.lock().unwrap() = 1;
    // The peer dies holding its handle: nothing of it runs any more.
    std::mem::forget(theirs);
    // SAFETY: this attachment's other handles were forgotten (as a killed
    // process's are): no guard borrows any of them.
    unsafe { peer.simulate_crash_now() };
    drop(peer);
    seg.directory().remove("m").unwrap();
    // A removed object held only by the dead is freed by the remove itself or by
    // the next reclaim: either way nothing is left after reclaim.
    seg.directory().reclaim().unwrap();
    assert_eq!(seg.reclaim_dead().unwrap(), vec![slot]);
    heap.reclaim_dead().unwrap();
    assert_eq!(assert_clean(&seg, "after reclaim"), (0, 0));
    assert_eq!(used(&heap), start);
}

#[test]
fn a_removed_object_held_by_a_holder_that_dies_later_is_freed_by_reclaim() {
    let seg = segment();
    let heap = Heap::attach(&seg).unwrap();
    build_directory(&seg);
    let start = used(&heap);
    let peer = seg.try_clone().unwrap();
    let theirs = peer.find_or_create::<AtomicU64>("a", ()).unwrap();
    seg.directory().remove("a").unwrap();
    assert_eq!(
        seg.directory().reclaim().unwrap(),
        0,
        "a live holder's object"
    );
    assert_eq!(assert_clean(&seg, "removed, held by a live peer"), (0, 1));
    std::mem::forget(theirs);
    // SAFETY: this attachment's other handles were forgotten (as a killed
    // process's are): no guard borrows any of them.
    unsafe { peer.simulate_crash_now() };
    drop(peer);
    assert_eq!(seg.directory().reclaim().unwrap(), 1);
    assert_eq!(seg.directory().reclaim().unwrap(), 0);
    seg.reclaim_dead().unwrap();
    heap.reclaim_dead().unwrap();
    assert_eq!(assert_clean(&seg, "after reclaim"), (0, 0));
    assert_eq!(used(&heap), start);
}

#[test]
fn a_name_created_again_while_the_removed_object_is_held_is_a_new_distinct_object() {
    let seg = segment();
    let heap = Heap::attach(&seg).unwrap();
    build_directory(&seg);
    let start = used(&heap);
    let dir = seg.directory();
    let old = dir.create::<AtomicU64>("n", ()).unwrap();
    old.store(7, Ordering::Relaxed);
    dir.remove("n").unwrap();
    let new = dir.create::<AtomicU64>("n", ()).unwrap();
    assert_ne!(old.offset().get(), new.offset().get());
    assert_eq!(new.load(Ordering::Relaxed), 0, "the new object is fresh");
    new.store(100, Ordering::Relaxed);
    old.fetch_add(1, Ordering::Relaxed);
    assert_eq!(old.load(Ordering::Relaxed), 8);
    assert_eq!(new.load(Ordering::Relaxed), 100);
    let found = dir.find::<AtomicU64>("n").unwrap();
    assert_eq!(found.offset().get(), new.offset().get());
    assert_eq!(assert_clean(&seg, "old held, new named"), (1, 1));
    // Removed again while both are held: two removed objects.
    dir.remove("n").unwrap();
    // A third incarnation, of another type.
    let third = dir.create::<Mutex<u64>>("n", ()).unwrap();
    assert_eq!(assert_clean(&seg, "two removed, a third named"), (1, 2));
    drop(old);
    assert_eq!(assert_clean(&seg, "the oldest dropped"), (1, 1));
    assert_eq!(found.load(Ordering::Relaxed), 100);
    drop((new, found));
    assert_eq!(assert_clean(&seg, "the second dropped"), (1, 0));
    *third.lock().unwrap() = 3;
    dir.remove("n").unwrap();
    drop(third);
    assert_eq!(assert_clean(&seg, "all gone"), (0, 0));
    assert_eq!(used(&heap), start);
}

/// `remove` of a name whose live creator is still building it (here: from inside
/// the init closure, where the creator does not hold the directory lock; in
/// `tests/crash_directory.rs` another process does it) must leave the creator a
/// working object, as for any holder, and nothing behind once it is dropped.
#[test]
fn a_name_removed_while_its_creator_builds_it_leaves_the_creator_a_working_object_and_no_leak() {
    let seg = segment();
    let heap = Heap::attach(&seg).unwrap();
    build_directory(&seg);
    let start = used(&heap);
    let dir = seg.directory();
    let mut removed = None;
    let built = dir.find_or_create_with::<AtomicU64>("n", (), |a| {
        a.store(5, Ordering::Relaxed);
        // A peer (here: ourselves, as the lock is not held during init) removes
        // the name meanwhile.
        removed = Some(dir.remove("n"));
    });
    println!("remove during build: {removed:?}; the creator got {built:?}");
    assert!(
        !matches!(built, Err(Error::Corrupt { .. })),
        "the creator was told the directory is corrupt: {built:?}"
    );
    if let Ok(a) = &built {
        assert_eq!(a.fetch_add(1, Ordering::Relaxed), 5);
    }
    drop(built);
    let (entries, removed_held) = assert_clean(&seg, "after the creator dropped its object");
    assert_eq!(
        (entries, removed_held),
        (0, 0),
        "an entry is left on the removed list with no handle on it"
    );
    assert_eq!(used(&heap), start, "the entry's block leaked");
}

#[test]
fn handles_are_send_and_sync_and_work_from_threads() {
    assert_send_sync::<Shared<Mutex<u64>>>();
    assert_send_sync::<Shared<AtomicU64>>();
    assert_send_sync::<Shared<Semaphore>>();
    assert_send_sync::<Shared<Event>>();
    assert_send_sync::<Shared<Condvar>>();
    assert_send_sync::<Shared<RwLock<u64>>>();
    assert_send_sync::<Directory<'static>>();

    const THREADS: u64 = 4;
    let per: u64 = if MIRI { 20 } else { 2000 };
    let seg = segment();
    let m = seg.create::<Mutex<u64>>("m", ()).unwrap();
    let built = seg.create::<AtomicU64>("built", ()).unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            // A clone moved to the thread, a reference shared with it, and the
            // segment to find more names with.
            let mine = m.clone();
            let (shared, built, seg) = (&m, &built, &seg);
            s.spawn(move || {
                for _ in 0..per {
                    *mine.lock().unwrap() += 1;
                    *shared.lock().unwrap() += 1;
                }
                // Every thread races to build the same names.
                for k in 0..4 {
                    let h = seg
                        .directory()
                        .find_or_create_with::<AtomicU64>(&format!("raced-{k}"), (), |_| {
                            built.fetch_add(1, Ordering::Relaxed);
                        })
                        .unwrap();
                    h.fetch_add(1, Ordering::Relaxed);
                }
                let own = seg.create::<AtomicU64>(&format!("thread-{t}"), ()).unwrap();
                own.store(t, Ordering::Relaxed);
            });
        }
    });
    assert_eq!(*m.lock().unwrap(), 2 * THREADS * per);
    assert_eq!(
        built.load(Ordering::Relaxed),
        4,
        "a raced name was built twice"
    );
    for k in 0..4 {
        let h = seg.find::<AtomicU64>(&format!("raced-{k}")).unwrap();
        assert_eq!(h.load(Ordering::Relaxed), THREADS);
    }
    // A handle made in one thread, used and dropped in another.
    let h = seg.find::<AtomicU64>("thread-0").unwrap();
    std::thread::spawn(move || assert_eq!(h.load(Ordering::Relaxed), 0))
        .join()
        .unwrap();
    assert_eq!(
        assert_clean(&seg, "after the threads"),
        (2 + 4 + THREADS, 0)
    );
}

// ---------------------------------------------------------------------------------
// Real processes.
// ---------------------------------------------------------------------------------

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return; // run by hand with --ignored: nothing to do
    };
    // Leave as soon as the parent is gone or done with us (our stdin closes).
    let (eof_tx, eof) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
        let _ = eof_tx.send(());
    });
    let name = std::env::var(TARGET).expect("SHMKIT_CHILD_TARGET");
    let seg = SegmentOptions::posix(&name)
        .open()
        .unwrap_or_else(|e| panic!("child: open {name}: {e:?}"));
    match role.as_str() {
        "racer" => racer_main(&seg, &eof),
        "die-creating" => die_creating_main(&seg),
        "fork-with-handles" => fork_with_handles_main(seg),
        other => panic!("unknown child role {other:?}"),
    }
    say(common::DONE_MARKER);
}

fn raced_name(k: usize) -> String {
    format!("raced-{k}")
}

fn builders_name(k: usize) -> String {
    format!("builders-{k}")
}

/// A racer: waits for the "go" event, then `find_or_create`s every raced name
/// (the builder counts itself and dawdles, so that the others meet the entry while
/// it is being built), counts itself in each object, reports the offsets, and
/// holds its handles until its stdin closes.
fn racer_main(seg: &Segment, eof: &mpsc::Receiver<()>) {
    let go = seg.find::<Event>("go").unwrap();
    let builders: Vec<Shared<AtomicU64>> = (0..RACED_NAMES)
        .map(|k| seg.find::<AtomicU64>(&builders_name(k)).unwrap())
        .collect();
    say(format!("ready {}", seg.owner_tag().bits()));
    assert!(go.wait_for(PATIENCE), "no go within {PATIENCE:?}");
    let mut held = Vec::new();
    for (k, built) in builders.iter().enumerate() {
        let h = seg
            .directory()
            .find_or_create_with::<Mutex<u64>>(&raced_name(k), (), |m| {
                built.fetch_add(1, Ordering::Relaxed);
                *m.lock(seg).unwrap() = 1000; // seen by every finder
                std::thread::sleep(Duration::from_millis(20));
            })
            .unwrap_or_else(|e| panic!("racer: find_or_create {}: {e:?}", raced_name(k)));
        *h.lock().unwrap() += 1;
        held.push(h);
    }
    let offsets: Vec<String> = held.iter().map(|h| h.offset().get().to_string()).collect();
    say(format!("offsets {}", offsets.join(" ")));
    let _ = eof.recv_timeout(PATIENCE * 2);
}

/// The name the killed creator builds.
const HALF_BUILT: &str = "half-built";
/// What the killed creator's init writes before it says it is inside.
const HALF_BUILT_MARK: u64 = 0xdead_beef;

/// A creator that is SIGKILLed inside its init closure.
fn die_creating_main(seg: &Segment) -> ! {
    let _ = seg
        .directory()
        .find_or_create_with::<AtomicU64>(HALF_BUILT, (), |a| {
            a.store(HALF_BUILT_MARK, Ordering::Relaxed);
            say(format!("inside {}", seg.owner_tag().bits()));
            std::thread::sleep(PATIENCE * 2); // the parent kills us meanwhile
        });
    panic!("the creator was not killed");
}

/// What the grandchild of `fork-with-handles` reports in "forked" (bits).
const FORK_AFTER_FORK_OK: u64 = 1;
const FORK_OLD_HANDLE_ACTS_FOR_NOBODY: u64 = 2;
const FORK_NEW_HANDLE_LOCKS: u64 = 4;
const FORK_OWN_SLOT: u64 = 8;
const FORK_STALE_CLONE_REFUSED: u64 = 16;

/// Finds objects, forks with their handles alive, and in the grandchild calls
/// `after_fork` (which must work although the handles still hold the inherited
/// attachment), then checks the old handles act for nobody and new ones work.
fn fork_with_handles_main(mut seg: Segment) -> ! {
    let m = seg.find::<Mutex<u64>>("forked-mutex").unwrap();
    let report = seg.find::<AtomicU64>("forked").unwrap();
    let parent_slot = seg.slot();
    // SAFETY: fork has no memory-safety preconditions; the grandchild runs on a
    // copy of this thread only and relies on glibc's fork handlers for malloc.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut bits = 0;
        if seg.after_fork().is_ok() {
            bits |= FORK_AFTER_FORK_OK;
        }
        if matches!(m.lock(), Err(shmkit::Error::NotAttached)) {
            bits |= FORK_OLD_HANDLE_ACTS_FOR_NOBODY;
        }
        if let Ok(m2) = seg.find::<Mutex<u64>>("forked-mutex") {
            if let Ok(mut g) = m2.lock() {
                *g += 1;
                bits |= FORK_NEW_HANDLE_LOCKS;
            }
        }
        if seg.slot() != parent_slot && seg.is_alive(parent_slot).unwrap_or(false) {
            bits |= FORK_OWN_SLOT;
        }
        // A second after_fork on a clone of the inherited attachment is refused
        // (it would otherwise build on the descriptor handed back to /dev/null).
        let mut stale = m.segment().clone();
        if matches!(stale.after_fork(), Err(shmkit::Error::InvalidArgument(_))) {
            bits |= FORK_STALE_CLONE_REFUSED;
        }
        report.store(bits | 0x100, Ordering::Release);
        // SAFETY: leave at once, running none of the inherited destructors.
        unsafe { libc::_exit(0) };
    }
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waiting for our own child, into a live local.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    say(format!("forked {}", report.load(Ordering::Acquire)));
    std::process::exit(0);
}

/// A POSIX segment made for one test: the creator's handle, which removes it when
/// dropped.
fn posix_segment() -> (Segment, String) {
    let name = shmkit::unique_name("t-").unwrap();
    let seg = SegmentOptions::posix(&name)
        .max_size(16 << 20)
        .registry_slots(32)
        .create()
        .unwrap();
    (seg, name)
}

fn spawn_child(role: &str, segment: &str) -> LineChild {
    let mut cmd = common::child_main_command();
    cmd.env(ROLE, role).env(TARGET, segment);
    LineChild::spawn(cmd, Stdio::piped())
}

/// The words after `tag` in the next line the child says (bounded wait).
fn line(child: &LineChild, tag: &str) -> Vec<String> {
    let said = child
        .next_after(PREFIX, PATIENCE)
        .unwrap_or_else(|e| panic!("child {} did not say {tag:?}: {e}", child.pid()));
    let mut words = said.split_whitespace().map(str::to_owned);
    match words.next() {
        Some(t) if t == tag => words.collect(),
        _ => panic!("child {} said {said:?}, expected {tag:?}", child.pid()),
    }
}

#[test]
#[cfg_attr(miri, ignore = "spawns processes")]
fn after_fork_works_with_object_handles_alive_and_the_old_ones_act_for_nobody() {
    let _dog = watchdog("after_fork_works_with_object_handles_alive_...");
    let (seg, name) = posix_segment();
    let m = seg.create::<Mutex<u64>>("forked-mutex", ()).unwrap();
    let report = seg.create::<AtomicU64>("forked", ()).unwrap();
    let child = spawn_child("fork-with-handles", &name);
    let bits: u64 = line(&child, "forked")[0].parse().unwrap();
    assert_eq!(
        bits,
        0x100
            | FORK_AFTER_FORK_OK
            | FORK_OLD_HANDLE_ACTS_FOR_NOBODY
            | FORK_NEW_HANDLE_LOCKS
            | FORK_OWN_SLOT
            | FORK_STALE_CLONE_REFUSED,
        "grandchild report {bits:#x}"
    );
    assert_eq!(report.load(Ordering::Acquire), bits);
    assert_eq!(*m.lock().unwrap(), 1);
    drop(child);
    seg.reclaim_dead().unwrap();
    assert!(seg.directory().verify().unwrap().is_clean());
}

#[test]
#[cfg_attr(miri, ignore = "spawns processes")]
fn ten_processes_racing_find_or_create_build_each_name_once_and_share_it() {
    let _dog = watchdog("ten_processes_racing_find_or_create_...");
    let (seg, name) = posix_segment();
    let heap = Heap::attach(&seg).unwrap();
    build_directory(&seg);
    let start = used(&heap);
    let go = seg.create::<Event>("go", EventKind::ManualReset).unwrap();
    let builders: Vec<Shared<AtomicU64>> = (0..RACED_NAMES)
        .map(|k| seg.create::<AtomicU64>(&builders_name(k), ()).unwrap())
        .collect();
    let mut children: Vec<LineChild> = (0..RACERS).map(|_| spawn_child("racer", &name)).collect();
    let tags: BTreeSet<u64> = children
        .iter()
        .map(|c| line(c, "ready")[0].parse().unwrap())
        .collect();
    assert_eq!(tags.len(), RACERS);
    go.set();
    let reports: Vec<Vec<String>> = children.iter().map(|c| line(c, "offsets")).collect();
    for (c, r) in children.iter().zip(&reports) {
        assert_eq!(r, &reports[0], "child {} saw other objects", c.pid());
    }
    for (k, built) in builders.iter().enumerate() {
        assert_eq!(
            built.load(Ordering::Relaxed),
            1,
            "{} built {} times",
            raced_name(k),
            built.load(Ordering::Relaxed)
        );
        let m = seg.find::<Mutex<u64>>(&raced_name(k)).unwrap();
        assert_eq!(m.offset().get().to_string(), reports[0][k]);
        assert_eq!(
            *m.lock().unwrap(),
            1000 + RACERS as u64,
            "{}",
            raced_name(k)
        );
    }
    // Every child holds every raced object (more holders than an entry keeps
    // inline), and one child built each.
    let list = seg.directory().list().unwrap();
    for k in 0..RACED_NAMES {
        let i = list.iter().find(|i| i.name == raced_name(k)).unwrap();
        assert_eq!(i.holders, RACERS as u64, "{i:?}");
        assert!(tags.contains(&i.creator.bits()), "{i:?}");
        assert_eq!(i.state, ObjectState::Ready);
    }
    assert_eq!(
        assert_clean(&seg, "children holding"),
        (1 + 2 * RACED_NAMES as u64, 0)
    );
    for c in &mut children {
        c.close_stdin();
    }
    for c in &mut children {
        let st = c.wait_for_exit(PATIENCE).expect("a racer did not leave");
        assert!(st.success(), "racer {}: {st}", c.pid());
    }
    seg.reclaim_dead().unwrap();
    let r = heap.reclaim_dead().unwrap();
    assert_eq!(
        r.blocks, 0,
        "racers that left gracefully left blocks: {r:?}"
    );
    // Only the parent's own handles (on "go" and the counters) are left.
    for i in seg.directory().list().unwrap() {
        let ours = u64::from(!i.name.starts_with("raced-"));
        assert_eq!(i.holders, ours, "{i:?}");
    }
    for k in 0..RACED_NAMES {
        seg.directory().remove(&raced_name(k)).unwrap();
    }
    assert_eq!(
        assert_clean(&seg, "after the race"),
        (1 + RACED_NAMES as u64, 0)
    );
    // The objects every process held have overflow holder blocks; they go with
    // their entries.
    drop((go, builders));
    seg.directory().remove("go").unwrap();
    for k in 0..RACED_NAMES {
        seg.directory().remove(&builders_name(k)).unwrap();
    }
    assert_eq!(assert_clean(&seg, "emptied"), (0, 0));
    assert_eq!(used(&heap), start);
    drop((heap, seg));
    assert!(
        !common::shm_path(&name).exists(),
        "segment {name} left behind"
    );
}

/// Starts a creator that is SIGKILLed inside its init closure of
/// [`HALF_BUILT`]; checks what a live and a dead creator's entry look like and
/// returns the dead creator's owner tag.
fn kill_a_creator_inside_init(seg: &Segment, name: &str) -> shmkit::OwnerTag {
    let mut child = spawn_child("die-creating", name);
    let tag = shmkit::OwnerTag::from_word(line(&child, "inside")[0].parse().unwrap());
    let list = seg.directory().list().unwrap();
    let i = list.iter().find(|i| i.name == HALF_BUILT).unwrap();
    assert_eq!(i.state, ObjectState::Creating, "{i:?}");
    assert_eq!(i.creator, tag);
    assert!(i.creator_alive, "{i:?}");
    // While its creator lives, a find waits for it, then gives up: never the
    // half-built object.
    let t = Instant::now();
    assert_err(seg.find::<AtomicU64>(HALF_BUILT), "NotReady");
    assert!(t.elapsed() >= CREATE_WAIT);
    child.kill().unwrap();
    let st = child
        .wait_for_exit(PATIENCE)
        .expect("not reaped after SIGKILL");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}");
    let list = seg.directory().list().unwrap();
    let i = list.iter().find(|i| i.name == HALF_BUILT).unwrap();
    assert_eq!(i.state, ObjectState::Creating, "{i:?}");
    assert!(!i.creator_alive, "{i:?}");
    tag
}

/// The registry, heap and directory reclaims after a death; the heap's must take
/// what `dead` owned.
fn reclaim_everything(seg: &Segment, heap: &Heap, dead: shmkit::OwnerTag) -> u64 {
    let slots = seg.reclaim_dead().unwrap();
    assert_eq!(slots, vec![dead.slot()]);
    let r = heap.reclaim_dead().unwrap();
    assert!(
        r.owners.iter().all(|o| *o == dead),
        "reclaimed blocks of live owners: {r:?}"
    );
    seg.directory().reclaim().unwrap()
}

#[test]
#[cfg_attr(miri, ignore = "spawns processes")]
fn a_creator_killed_mid_create_is_never_found_and_the_next_find_or_create_builds_afresh() {
    let _dog = watchdog("a_creator_killed_mid_create_...");
    let (seg, name) = posix_segment();
    let heap = Heap::attach(&seg).unwrap();
    build_directory(&seg);
    let start = used(&heap);
    let dead = kill_a_creator_inside_init(&seg, &name);
    assert_err(seg.find::<AtomicU64>(HALF_BUILT), "NotFound");
    assert_err(seg.find::<AtomicU64>(HALF_BUILT), "NotFound");
    let mut builds = 0;
    let fresh = seg
        .directory()
        .find_or_create_with::<AtomicU64>(HALF_BUILT, (), |a| {
            builds += 1;
            assert_eq!(a.load(Ordering::Relaxed), 0, "handed the half-built object");
            a.store(1, Ordering::Relaxed);
        })
        .unwrap();
    assert_eq!(builds, 1, "the next find_or_create did not build");
    assert_eq!(fresh.load(Ordering::Relaxed), 1);
    let i = seg.directory().list().unwrap();
    assert_eq!(i.len(), 1);
    assert_eq!(
        (i[0].state, i[0].creator),
        (ObjectState::Ready, seg.owner_tag())
    );
    assert_eq!(reclaim_everything(&seg, &heap, dead), 0);
    assert_eq!(assert_clean(&seg, "after reclaim"), (1, 0));
    assert_eq!(
        seg.find::<AtomicU64>(HALF_BUILT)
            .unwrap()
            .load(Ordering::Relaxed),
        1
    );
    seg.directory().remove(HALF_BUILT).unwrap();
    drop(fresh);
    assert_eq!(assert_clean(&seg, "at the end"), (0, 0));
    assert_eq!(used(&heap), start);
    drop((heap, seg));
    assert!(
        !common::shm_path(&name).exists(),
        "segment {name} left behind"
    );
}

#[test]
#[cfg_attr(miri, ignore = "spawns processes")]
fn a_dead_creators_half_built_entry_is_freed_by_directory_reclaim() {
    let _dog = watchdog("a_dead_creators_half_built_entry_...");
    let (seg, name) = posix_segment();
    let heap = Heap::attach(&seg).unwrap();
    build_directory(&seg);
    let start = used(&heap);
    let dead = kill_a_creator_inside_init(&seg, &name);
    assert_eq!(reclaim_everything(&seg, &heap, dead), 1);
    assert!(seg.directory().list().unwrap().is_empty());
    assert_eq!(assert_clean(&seg, "after reclaim"), (0, 0));
    assert_eq!(used(&heap), start);
    // The name is free: a plain create builds it.
    let a = seg.create::<AtomicU64>(HALF_BUILT, ()).unwrap();
    assert_eq!(a.load(Ordering::Relaxed), 0);
    seg.directory().remove(HALF_BUILT).unwrap();
    drop(a);
    assert_eq!(used(&heap), start);
    drop((heap, seg));
    assert!(
        !common::shm_path(&name).exists(),
        "segment {name} left behind"
    );
}
