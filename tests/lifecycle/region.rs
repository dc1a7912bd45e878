//! Issue 9, item 1: one owner of the user region, recorded in the checksummed
//! segment header at creation. Each test reproduces a report first (the README's
//! examples combined), then checks the typed error or the documented behaviour.

use std::sync::atomic::{AtomicU64, Ordering};

use shmkit::sync::Mutex;
use shmkit::{Error, Offset, SegmentOptions};
use shmkit::{alloc::Heap, containers::ShmString};

use super::{Role, child, segment_name};

fn region_in_use<T: std::fmt::Debug>(r: shmkit::Result<T>, by: &str) {
    match r {
        Err(Error::RegionInUse { by: b, ref detail }) => {
            assert_eq!(b, by, "{detail}");
            assert!(!detail.is_empty());
        }
        other => panic!("expected RegionInUse {{ by: {by:?} }}, got {other:?}"),
    }
}

/// Report (a): a heap attached, then the README's `Mutex` placed at
/// `user_offset()`: the placement is refused, and the next process's attach finds
/// the heap and the published string intact.
#[test]
fn a_mutex_placed_over_an_attached_heap_is_refused_and_the_heap_survives() {
    let name = segment_name("a");
    let seg = SegmentOptions::posix(&name).create().unwrap();
    let heap = Heap::attach(&seg).unwrap();
    let s = ShmString::from_str(&heap, "published before the placement").unwrap();
    let at = s.into_shared().unwrap();

    let mutex_at = Offset::<Mutex<u64>>::new(seg.user_offset());
    region_in_use(seg.resolve_ptr(mutex_at), "the heap");
    // SAFETY: never reached past the check (the call fails); nothing else views it.
    region_in_use(unsafe { seg.place(mutex_at, Mutex::new(0)) }, "the heap");

    // A second process attaches the heap and reads the string.
    let out = child(Role::ReadString, &name, &at.get().to_string());
    assert_eq!(out.trim(), "published before the placement");
    assert!(heap.verify().is_clean(), "{}", heap.verify());
}

/// Report (b): the `Mutex` placed first in a raw segment, then `Heap::attach`:
/// the attach is refused and the mutex is untouched.
#[test]
fn a_heap_asked_of_a_raw_segment_is_refused_and_the_mutex_is_untouched() {
    let seg = SegmentOptions::memfd()
        .no_heap()
        .committed(64 << 10)
        .create()
        .unwrap();
    assert!(!seg.has_heap());
    let at = Offset::<Mutex<u64>>::new(seg.user_offset());
    // SAFETY: this test views the offset as a Mutex<u64> only, and nobody else
    // accesses it during the placement.
    let m = unsafe { seg.place(at, Mutex::new(7)) }.unwrap();
    region_in_use(Heap::attach(&seg), "raw placement");
    region_in_use(seg.directory().list(), "raw placement");
    region_in_use(seg.find_or_create::<Mutex<u64>>("x", ()), "raw placement");
    let g = m.lock(&seg).expect("the mutex is not damaged");
    assert_eq!(*g, 7);
}

/// Report (c): an `AtomicU64` at `user_offset()` plus a heap: refused with an
/// error that says what is there, not a cryptic heap-header state.
#[test]
fn an_atomic_over_a_heap_names_the_heap() {
    let seg = SegmentOptions::memfd().create().unwrap();
    let _heap = Heap::attach(&seg).unwrap();
    let r = seg.resolve_ptr(Offset::<AtomicU64>::new(seg.user_offset()));
    region_in_use(r, "the heap");
    let e = seg
        .resolve_ptr(Offset::<AtomicU64>::new(seg.user_offset()))
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("heap") && msg.contains("raw_region"), "{msg}");
}

/// Raw placement and a heap side by side: the reserved raw region is usable at
/// fixed offsets by every process, and no heap block ever lands in it.
#[test]
fn a_reserved_raw_region_and_the_heap_never_overlap() {
    let seg = SegmentOptions::memfd()
        .raw_region(3 * 4096 + 1)
        .create()
        .unwrap();
    let raw = seg.raw_region();
    assert_eq!(raw.start, seg.user_offset());
    assert_eq!(raw.end - raw.start, 4 * 4096, "rounded up to whole pages");
    assert_eq!(seg.heap_offset(), Some(raw.end));
    // The whole raw region is committed? Not necessarily: commit it, then use it.
    seg.commit(raw.end).unwrap();
    let first = Offset::<AtomicU64>::new(raw.start);
    let last = Offset::<AtomicU64>::new(raw.end - 8);
    for at in [first, last] {
        // SAFETY: this test views these words as AtomicU64 only.
        let w = unsafe { seg.resolve(at) }.unwrap();
        w.store(0xfeed, Ordering::Relaxed);
    }
    region_in_use(
        seg.resolve_ptr(Offset::<AtomicU64>::new(raw.end)),
        "the heap",
    );
    region_in_use(
        seg.resolve_ptr(Offset::<[u8; 16]>::new(raw.end - 8)),
        "the heap",
    );
    let heap = Heap::attach(&seg).unwrap();
    let mut blocks = Vec::new();
    for i in 0..2000u64 {
        let off = heap.alloc(16 + (i % 700) as usize, 8).unwrap().get();
        assert!(
            off >= raw.end,
            "block {off:#x} inside the raw region {raw:?}"
        );
        blocks.push(off);
    }
    for at in [first, last] {
        // SAFETY: as above.
        let w = unsafe { seg.resolve(at) }.unwrap();
        assert_eq!(
            w.load(Ordering::Relaxed),
            0xfeed,
            "the heap wrote the raw region"
        );
    }
    for b in blocks {
        heap.free(b).unwrap();
    }
    assert!(heap.verify().is_clean());
}

/// A third process attaching after a peer overwrote the heap header gets
/// `Corrupt` (never a rebuild over the live blocks), and the first process's
/// `verify` notices the overwrite.
#[test]
fn a_third_process_after_an_overwrite_gets_corrupt_and_verify_notices() {
    let name = segment_name("third");
    let seg = SegmentOptions::posix(&name).create().unwrap();
    let heap = Heap::attach(&seg).unwrap();
    let live: Vec<u64> = (0..5).map(|_| heap.alloc(4096, 8).unwrap().get()).collect();
    for (i, &b) in live.iter().enumerate() {
        // SAFETY: our own private blocks of 4096 bytes.
        unsafe { heap.ptr(b).unwrap().as_ptr().write_bytes(i as u8 + 1, 4096) };
    }
    assert!(heap.verify().is_clean());
    let heap_at = seg.heap_offset().unwrap();
    // The second process overwrites the heap's state word (a stray write).
    let out = child(Role::ZeroWord, &name, &heap_at.to_string());
    assert_eq!(out.trim(), "zeroed");
    // The third process: attach refused.
    let out = child(Role::Attach, &name, "");
    assert!(
        out.contains("Corrupt") && out.contains("heap header") && out.contains("overwritten"),
        "{out}"
    );
    // Nobody rebuilt anything: our blocks still hold their bytes.
    for (i, &b) in live.iter().enumerate() {
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(heap.ptr(b).unwrap().as_ptr(), 4096) };
        assert!(bytes.iter().all(|&x| x == i as u8 + 1), "block {i} changed");
    }
    let report = heap.verify();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.what == "heap header overwritten"),
        "{report}"
    );
}

/// Bad input: a header that claims an owner of the user region that makes no
/// sense (checksum made consistent, so only the region checks stand in the way)
/// is refused at open, never taken for a heap.
#[test]
fn a_header_claiming_a_nonsensical_region_owner_is_refused() {
    let seg = SegmentOptions::memfd().create().unwrap();
    let len = seg.committed() as usize;
    // SAFETY: the committed prefix of our own mapping; nobody writes it meanwhile.
    let image = unsafe { std::slice::from_raw_parts(seg.as_ptr(), len) }.to_vec();
    const FIELDS: usize = 24;
    const HEAP_OFFSET: usize = FIELDS + 88;
    const RAW_END: usize = FIELDS + 96;
    let cases: [(&str, u64, u64); 5] = [
        ("heap inside the registry", 4096, 4096),
        ("raw end past max_size", 0, u64::MAX),
        ("no heap but raw end short", 0, seg.user_offset()),
        (
            "heap not at the raw end",
            seg.user_offset() + 4096,
            seg.user_offset(),
        ),
        (
            "heap too close to the end",
            seg.max_size() - 4096,
            seg.max_size() - 4096,
        ),
    ];
    for (what, heap_offset, raw_end) in cases {
        let mut img = image.clone();
        img[HEAP_OFFSET..HEAP_OFFSET + 8].copy_from_slice(&heap_offset.to_ne_bytes());
        img[RAW_END..RAW_END + 8].copy_from_slice(&raw_end.to_ne_bytes());
        shmkit::fuzzing::repair_header(&mut img);
        img.resize(seg.max_size() as usize, 0);
        match SegmentOptions::heap().open_image(&img) {
            Err(Error::Corrupt { what: w, .. }) => {
                assert!(w == "heap_offset" || w == "raw_end", "{what}: {w}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// The child of [`a_third_process_after_an_overwrite_gets_corrupt_and_verify_notices`]
/// and friends.
pub fn run(role: Role, name: &str, arg: &str) -> String {
    let seg = SegmentOptions::posix(name).open().unwrap();
    match role {
        Role::ReadString => {
            let heap = Heap::attach(&seg).unwrap();
            let off = arg.parse::<u64>().unwrap();
            let s = ShmString::from_shared(&heap, Offset::new(off)).unwrap();
            s.to_string().unwrap()
        }
        Role::ZeroWord => {
            let off = arg.parse::<u64>().unwrap();
            // A peer's stray write: the word is in our mapping (heap header).
            let p = seg.as_ptr().wrapping_add(off as usize).cast::<AtomicU64>();
            // SAFETY: `off` is the heap header's state word inside the mapping,
            // 8-aligned; an atomic store is what a misbehaving peer would do.
            unsafe { (*p).store(0, Ordering::SeqCst) };
            "zeroed".into()
        }
        Role::Attach => match Heap::attach(&seg) {
            Ok(_) => "attached".into(),
            Err(e) => format!("{e:?} {e}"),
        },
        _ => unreachable!("not a region role"),
    }
}
