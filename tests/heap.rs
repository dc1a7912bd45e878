//! The shared heap (`shmkit::alloc`): smoke, edge and stress tests.
//!
//! * every size class at its boundaries, every alignment, refused sizes and
//!   alignments;
//! * out of memory on a small segment, and freed spans serving other sizes again;
//! * the committed size growing, seen through other handles and other mappings;
//! * real processes handing blocks to each other (publish / adopt), and one killed
//!   while it holds blocks;
//! * bad offsets, double frees, foreign blocks: typed errors, and a clean heap after;
//! * stats (the sum, per owner), reclaim of a crashed handle's blocks;
//! * `ShmBox`, `ShmVec`, `ShmString`; two threads trading blocks.
//!
//! Every block a test holds carries a stamp over its whole usable size (a slice of a
//! fixed pseudo-random pattern, starting at a per-block shift), checked before it is
//! freed; the blocks a test holds are kept in a sorted map and never overlap.
//!
//! The process, memfd and POSIX tests are skipped under miri; the rest run there
//! with smaller counts and sizes of 1 KiB and up where the test allows (`verify`
//! and `stats` walk every block of every span, which costs miri about 10-30 ms a
//! block: a 16-byte span has 2816 of them), and check the heap with `verify` at
//! the end only (`cargo +nightly miri test --test heap`).

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use shmkit::{Error, Offset, OwnerTag, PAGE_SIZE, Segment, SegmentOptions};
use shmkit::{
    alloc::{BlockState, Heap, MAX_ALLOC, MAX_SMALL, OwnerStats, SIZES, Stats},
    containers::{ShmBox, ShmString, ShmVec},
};

const MIRI: bool = cfg!(miri);

// ---------------------------------------------------------------------------------
// Helpers: segments, stamps, tracked blocks, checks.
// ---------------------------------------------------------------------------------

/// A heap-backed segment of `max` bytes (64 KiB committed at first).
fn heap_segment(max: u64) -> Segment {
    SegmentOptions::heap()
        .max_size(max)
        .committed(64 << 10)
        .create()
        .unwrap()
}

/// The default size for tests that do not care.
fn roomy() -> u64 {
    if MIRI { 16 << 20 } else { 64 << 20 }
}

/// Longest stamp any test writes.
const MAX_STAMP: usize = if cfg!(miri) { 128 << 10 } else { 1 << 20 };
/// Distinct starting points in the pattern (a prime).
const SHIFTS: u64 = 4093;

/// A fixed pseudo-random byte pattern; a block's stamp is a slice of it.
fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        // Eight bytes at a time (xorshift64*), which miri runs in a second or two.
        let words = (MAX_STAMP + SHIFTS as usize).div_ceil(8);
        let mut p = Vec::with_capacity(words * 8);
        let mut rng = Rng::new(0x5eed);
        for _ in 0..words {
            p.extend_from_slice(&rng.next().to_le_bytes());
        }
        p
    })
}

fn stamp_of(seed: u64, len: usize) -> &'static [u8] {
    assert!(len <= MAX_STAMP, "stamp of {len} bytes: raise MAX_STAMP");
    &pattern()[(seed % SHIFTS) as usize..][..len]
}

/// Writes the stamp of `seed` over the first `len` bytes of block `off`.
fn stamp(heap: &Heap, off: u64, len: usize, seed: u64) {
    assert!(len as u64 <= heap.usable_size(off).unwrap());
    let src = stamp_of(seed, len);
    let dst = heap.ptr(off).unwrap();
    // SAFETY: the block is allocated to this test and at least `len` bytes long
    // (checked above); nothing else writes it meanwhile; the pattern is process
    // memory, so the two do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_ptr(), len) };
}

/// Whether the first `len` bytes of block `off` still hold the stamp of `seed`.
#[track_caller]
fn check_stamp(heap: &Heap, off: u64, len: usize, seed: u64) {
    assert!(len as u64 <= heap.usable_size(off).unwrap());
    let p = heap.ptr(off).unwrap();
    // SAFETY: the block is allocated and at least `len` bytes long (checked above);
    // whoever wrote it handed it over (publish/adopt, or a channel) before this
    // read, and nobody writes it while the slice lives.
    let got = unsafe { std::slice::from_raw_parts(p.as_ptr(), len) };
    let want = stamp_of(seed, len);
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
        panic!(
            "block {off:#x} ({len} bytes, seed {seed}): byte {at} is {:#04x}, expected {:#04x}",
            got[at], want[at]
        );
    }
}

/// Blocks a test holds: offset → (usable size, seed), never overlapping.
#[derive(Debug, Default)]
struct Blocks {
    map: BTreeMap<u64, (u64, u64)>,
    seeds: u64,
}

impl Blocks {
    /// Records a fresh block of at least `size` bytes, checks it overlaps no other,
    /// and stamps its whole usable size.
    #[track_caller]
    fn add(&mut self, heap: &Heap, off: u64, size: u64) -> u64 {
        let usable = heap.usable_size(off).unwrap();
        assert!(usable >= size, "block {off:#x}: {usable} usable < {size}");
        let seg = heap.segment();
        assert!(
            off >= seg.user_offset() && off + usable <= seg.committed(),
            "block {off:#x}+{usable} outside the committed user region"
        );
        let end = off + usable;
        if let Some((&s, &(u, _))) = self.map.range(..=off).next_back() {
            assert!(
                s + u <= off,
                "[{off:#x}, {end:#x}) overlaps [{s:#x}, {:#x})",
                s + u
            );
        }
        if let Some((&s, &(u, _))) = self.map.range(off..).next() {
            assert!(
                end <= s,
                "[{off:#x}, {end:#x}) overlaps [{s:#x}, {:#x})",
                s + u
            );
        }
        self.seeds += 1;
        let seed = self.seeds * 7919 + off / 16;
        stamp(heap, off, usable as usize, seed);
        self.map.insert(off, (usable, seed));
        usable
    }

    /// Checks a block's stamp and forgets it (the caller frees it).
    #[track_caller]
    fn take(&mut self, heap: &Heap, off: u64) {
        let (usable, seed) = self.map.remove(&off).expect("a tracked block");
        check_stamp(heap, off, usable as usize, seed);
    }

    #[track_caller]
    fn check(&self, heap: &Heap) {
        for (&off, &(usable, seed)) in &self.map {
            check_stamp(heap, off, usable as usize, seed);
        }
    }

    /// Checks and frees every block.
    #[track_caller]
    fn free_all(&mut self, heap: &Heap) {
        for (off, (usable, seed)) in std::mem::take(&mut self.map) {
            check_stamp(heap, off, usable as usize, seed);
            heap.free(off).unwrap();
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn offsets(&self) -> Vec<u64> {
        self.map.keys().copied().collect()
    }
}

/// `verify` finds nothing wrong, held the locks, and the bytes add up.
#[track_caller]
fn assert_clean(heap: &Heap) -> Stats {
    let r = heap.verify();
    assert!(r.is_clean(), "{r}");
    assert!(r.quiescent, "verify could not hold the heap still");
    let s = r.stats;
    assert_eq!(
        s.used + s.free + s.metadata,
        s.committed,
        "used + free + metadata != committed: {s:?}"
    );
    s
}

/// [`assert_clean`] in the middle of a test: natively only (under miri, each test
/// verifies once, at its end).
#[track_caller]
fn checkpoint(heap: &Heap) {
    if !MIRI {
        assert_clean(heap);
    }
}

/// 1 KiB under miri (64 blocks a span), `native` otherwise.
fn small_or_1k(native: u64) -> u64 {
    if MIRI { 1000 } else { native }
}

fn used(heap: &Heap) -> u64 {
    heap.stats().unwrap().used
}

#[track_caller]
fn assert_bad_block<T: std::fmt::Debug>(r: shmkit::Result<T>, off: u64) {
    match r {
        Err(Error::BadBlock { offset, .. }) if offset == off => {}
        other => panic!("offset {off:#x}: expected BadBlock, got {other:?}"),
    }
}

fn owner_stats(s: &Stats, tag: OwnerTag) -> Option<&OwnerStats> {
    s.owners.iter().find(|o| o.owner == tag)
}

/// The usable size a request of `size` bytes (alignment <= 16) gets.
fn usable_for(size: u64) -> u64 {
    SIZES
        .iter()
        .copied()
        .find(|&c| c >= size)
        .unwrap_or_else(|| size.div_ceil(PAGE_SIZE) * PAGE_SIZE)
}

fn class_index(size: u64) -> usize {
    SIZES.iter().position(|&c| c == size).unwrap()
}

/// Heap handles of simulated dead processes. A killed process never runs its
/// handle's drop (which would give its cached blocks back), so the handle is leaked
/// on purpose; kept reachable from here so that miri's leak check does not flag it.
/// Never dereferenced.
static DEAD_HANDLES: std::sync::Mutex<Vec<DeadHandle>> = std::sync::Mutex::new(Vec::new());

struct DeadHandle(#[allow(dead_code)] *mut ());

// SAFETY: the pointer is only kept, never dereferenced, in any thread.
unsafe impl Send for DeadHandle {}

/// Drops a heap handle the way a killed process does: without running anything.
/// (The caller then calls `simulate_crash` on its segment.)
fn bury(heap: Heap) {
    let p = Box::into_raw(Box::new(heap)).cast::<()>();
    DEAD_HANDLES.lock().unwrap().push(DeadHandle(p));
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// 1 ..= 2^max_log, log-uniform.
    fn size(&mut self, max_log: u64) -> u64 {
        let bits = self.below(max_log + 1);
        1 + self.below(1 << bits)
    }
}

/// Fails the test binary instead of hanging (inert under miri).
fn watchdog(what: &'static str) -> common::Watchdog {
    common::watchdog(what, Duration::from_secs(120) + stress_time())
}

// ---------------------------------------------------------------------------------
// Size classes and alignment.
// ---------------------------------------------------------------------------------

#[test]
fn every_size_class_serves_its_boundary_sizes_without_overlap() {
    let seg = heap_segment(roomy());
    let heap = Heap::attach(&seg).unwrap();
    let me = seg.owner_tag();
    let start = assert_clean(&heap).used;
    // Under miri, the classes of 1 KiB and up only (a verify of the small ones'
    // spans would take miri an hour).
    let mut sizes = if MIRI { vec![] } else { vec![1u64] };
    for &s in SIZES.iter().filter(|&&s| !MIRI || s >= 1024) {
        sizes.extend([s - 1, s, s + 1]);
    }
    let mut live = Blocks::default();
    let mut per_class = [0u64; SIZES.len()];
    let mut large = 0;
    for _round in 0..if MIRI { 1 } else { 3 } {
        for &size in &sizes {
            let off = heap.alloc(size as usize, 8).unwrap().get();
            assert_eq!(off % 8, 0);
            let usable = live.add(&heap, off, size);
            assert_eq!(
                usable,
                usable_for(size),
                "size {size}: the smallest class that fits"
            );
            assert_eq!(heap.state(off).unwrap(), BlockState::Owned(me));
            match SIZES.iter().position(|&c| c == usable) {
                Some(c) if size <= MAX_SMALL => per_class[c] += 1,
                _ => large += 1,
            }
        }
    }
    live.check(&heap);
    let s = assert_clean(&heap);
    for (c, cs) in s.classes.iter().enumerate() {
        assert_eq!(cs.size, SIZES[c]);
        assert_eq!(cs.used, per_class[c], "class {c} ({} B)", SIZES[c]);
        assert!(
            cs.spans >= 1 || per_class[c] == 0,
            "class {c} has blocks but no span"
        );
    }
    assert_eq!(s.large_blocks, large);
    let me_stats = owner_stats(&s, me).unwrap();
    assert_eq!(me_stats.owned_blocks, live.len() as u64);
    assert_eq!(s.used - start, me_stats.owned_bytes);
    live.free_all(&heap);
    assert_eq!(used(&heap), start);
    checkpoint(&heap);
}

#[test]
fn every_alignment_up_to_a_page_is_honoured() {
    let seg = heap_segment(roomy());
    let heap = Heap::attach(&seg).unwrap();
    let start = used(&heap);
    let sizes: &[u64] = if MIRI {
        &[1000, 5000, 40_000]
    } else {
        &[1, 8, 24, 100, 1000, 4096, 5000, 32768, 40_000, 100_000]
    };
    let mut live = Blocks::default();
    for shift in (0..=12).step_by(if MIRI { 3 } else { 1 }) {
        let align = 1usize << shift;
        for &size in sizes {
            let off = heap.alloc(size as usize, align).unwrap().get();
            assert_eq!(off % align as u64, 0, "size {size} align {align}");
            let addr = heap.ptr(off).unwrap().as_ptr() as usize;
            assert_eq!(addr % align, 0, "address of size {size} align {align}");
            live.add(&heap, off, size);
        }
    }
    live.check(&heap);
    checkpoint(&heap);
    live.free_all(&heap);
    assert_eq!(used(&heap), start);
    assert_clean(&heap);
}

#[test]
fn bad_alignments_and_sizes_are_refused() {
    let seg = heap_segment(4 << 20);
    let heap = Heap::attach(&seg).unwrap();
    let start = used(&heap);
    for align in [0, 3, 6, 12, 48, 4097, 8192, 1 << 20, usize::MAX] {
        for size in [1, 100, 100_000] {
            assert!(
                matches!(heap.alloc(size, align), Err(Error::InvalidArgument(_))),
                "size {size} align {align}"
            );
        }
    }
    for size in [0u64, MAX_ALLOC + 1, u64::MAX >> 1, u64::MAX] {
        match heap.alloc(size as usize, 8) {
            Err(Error::InvalidSize { size: s, .. }) => assert_eq!(s, size),
            other => panic!("size {size}: expected InvalidSize, got {other:?}"),
        }
    }
    // A segment too small to hold a heap at all (refused when it is created, since
    // the creator builds the heap; without a heap it is fine, and has none).
    assert!(matches!(
        SegmentOptions::heap().max_size(128 << 10).create(),
        Err(Error::InvalidSize { .. })
    ));
    let tiny = SegmentOptions::heap()
        .max_size(128 << 10)
        .no_heap()
        .create()
        .unwrap();
    assert!(matches!(
        Heap::attach(&tiny),
        Err(Error::RegionInUse { .. })
    ));
    // The largest size accepted at all, on a 4 MiB segment.
    match heap.alloc(MAX_ALLOC as usize, 8) {
        Err(e @ Error::OutOfMemory { .. }) => check_oom(&heap, &e, MAX_ALLOC),
        other => panic!("64 GiB on a 4 MiB segment: {other:?}"),
    }
    // realloc refuses the same sizes and leaves the block alone.
    let mut live = Blocks::default();
    let size = small_or_1k(100);
    let off = heap.alloc(size as usize, 8).unwrap().get();
    live.add(&heap, off, size);
    assert!(matches!(
        heap.realloc(off, 0, 8),
        Err(Error::InvalidSize { .. })
    ));
    assert!(matches!(
        heap.realloc(off, 1 << 20, 3),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        heap.realloc(off, (MAX_ALLOC + 1) as usize, 8),
        Err(Error::InvalidSize { .. })
    ));
    live.check(&heap);
    assert_eq!(heap.state(off).unwrap(), BlockState::Owned(seg.owner_tag()));
    live.free_all(&heap);
    assert_eq!(used(&heap), start);
    assert_clean(&heap);
}

/// `realloc` validates its alignment only when it has to move the block.
#[test]
fn realloc_refuses_invalid_alignments_even_in_place() {
    let seg = heap_segment(16 << 20);
    let heap = Heap::attach(&seg).unwrap();
    // A block whose offset is a multiple of 3 and of 8192 (realloc's in-place test
    // is `off % align == 0`).
    let off = (0..200)
        .map(|_| heap.alloc(100, 4096).unwrap().get())
        .find(|off| off % (3 * 8192) == 0)
        .expect("some 4096-aligned block is also 24576-aligned");
    assert_eq!(heap.usable_size(off).unwrap(), 4096);
    for align in [0usize, 3, 8192] {
        let r = heap.realloc(off, 4000, align);
        assert!(
            matches!(r, Err(Error::InvalidArgument(_))),
            "realloc({off:#x}, 4000, {align}) = {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Out of memory, and growth.
// ---------------------------------------------------------------------------------

/// Allocates `size`-byte blocks until the heap refuses; returns them and the error.
fn fill(heap: &Heap, live: &mut Blocks, size: u64) -> (Vec<u64>, Error) {
    let limit = heap.segment().max_size() / size.max(16) + 16;
    let mut got = Vec::new();
    for _ in 0..limit {
        match heap.alloc(size as usize, 8).map(|o| o.get()) {
            Ok(off) => {
                live.add(heap, off, size);
                got.push(off);
            }
            Err(e) => return (got, e),
        }
    }
    panic!(
        "{limit} blocks of {size} bytes fit in a {} byte segment",
        heap.segment().max_size()
    );
}

#[track_caller]
fn check_oom(heap: &Heap, e: &Error, size: u64) {
    let Error::OutOfMemory {
        requested,
        available,
    } = *e
    else {
        panic!("expected OutOfMemory, got {e:?}");
    };
    assert_eq!(requested, size, "{e}: the bytes asked for");
    assert_eq!(available % PAGE_SIZE, 0, "{e}");
    let s = heap.stats().unwrap();
    let seg = heap.segment();
    assert!(
        available + s.used + s.metadata <= seg.max_size() - seg.user_offset(),
        "{e}: more available than the segment has room for ({s:?})"
    );
}

#[test]
fn out_of_memory_is_reported_and_freed_spans_serve_any_size_again() {
    let max = if MIRI { 1 << 20 } else { 4 << 20 };
    let seg = heap_segment(max);
    let heap = Heap::attach(&seg).unwrap();
    let start = used(&heap);
    let small = if MIRI { 4000 } else { 1000 };
    let big = 100_000;
    let mut live = Blocks::default();

    // Small blocks until the segment is full.
    let (smalls, e) = fill(&heap, &mut live, small);
    check_oom(&heap, &e, small);
    let filled = smalls.len() as u64 * usable_for(small);
    assert!(
        filled > max * 3 / 4,
        "only {filled} bytes of small blocks fit in {max}"
    );
    assert_eq!(
        seg.committed(),
        max,
        "a full heap has committed the whole segment"
    );
    checkpoint(&heap);
    assert_eq!(used(&heap), start + filled);
    match heap.alloc(big, 8) {
        Err(e @ Error::OutOfMemory { .. }) => check_oom(&heap, &e, big as u64),
        other => panic!("a large block in a full heap: {other:?}"),
    }
    live.free_all(&heap);
    assert_eq!(used(&heap), start);
    checkpoint(&heap);

    // Large blocks in the same space: the small blocks' spans must come back to the
    // page level (this handle's cache flushed and the spans trimmed automatically
    // before an out-of-memory error). All of it but one large block's worth, give or
    // take two spans of slack.
    let (bigs, e) = fill(&heap, &mut live, big as u64);
    check_oom(&heap, &e, big as u64);
    let filled_big = bigs.len() as u64 * usable_for(big as u64);
    let span = (64 << 10) + PAGE_SIZE;
    assert!(
        filled_big + usable_for(big as u64) + 2 * span >= filled,
        "{filled_big} bytes of large blocks fit after {filled} bytes of small ones were freed"
    );
    checkpoint(&heap);
    live.free_all(&heap);
    assert_eq!(used(&heap), start);

    // And small blocks again, as many as the first time (give or take a span).
    let (again, e) = fill(&heap, &mut live, small);
    check_oom(&heap, &e, small);
    let span_blocks = (64 << 10) / usable_for(small);
    assert!(
        again.len() as u64 + span_blocks >= smalls.len() as u64,
        "{} small blocks fit the second time, {} the first",
        again.len(),
        smalls.len()
    );
    checkpoint(&heap);
    live.free_all(&heap);
    assert_eq!(used(&heap), start);
    heap.flush().unwrap();
    assert!(heap.trim().unwrap() > 0);
    assert_clean(&heap);
}

/// Before it reports out of memory, `alloc` gives back the free blocks cached by the
/// very handle that asks (they would pin their spans) and trims: the room they
/// held serves the request.
#[test]
fn out_of_memory_is_not_reported_while_the_own_cache_holds_the_room() {
    let seg = heap_segment(1 << 20);
    let heap = Heap::attach(&seg).unwrap();
    let mut small = Vec::new();
    while let Ok(off) = heap.alloc(4000, 8) {
        small.push(off);
    }
    for off in small {
        heap.free(off).unwrap();
    }
    let mut big = Vec::new();
    let e = loop {
        match heap.alloc(100_000, 8) {
            Ok(off) => big.push(off),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, Error::OutOfMemory { .. }), "{e:?}");
    heap.flush().unwrap();
    let r = heap.alloc(100_000, 8);
    assert!(
        r.is_err(),
        "refused with {e}, then after flush(): {r:?} ({} blocks before)",
        big.len()
    );
}

#[test]
fn the_heap_commits_more_of_its_segment_as_it_grows_and_every_handle_sees_it() {
    let seg = heap_segment(roomy());
    let heap = Heap::attach(&seg).unwrap();
    let peer = seg.try_clone().unwrap();
    let peer_heap = Heap::attach(&peer).unwrap();
    let start = used(&heap);
    let c0 = seg.committed();
    let target = if MIRI { 3 << 20 } else { 24 << 20 };
    let mut live = Blocks::default();
    let mut rng = Rng::new(1);
    let mut grew = 0;
    while seg.committed() < c0 + target {
        let before = seg.committed();
        let size = if rng.below(4) == 0 {
            40_000 + rng.below(if MIRI { 80_000 } else { 200_000 })
        } else if MIRI {
            1024 + rng.below(31 << 10)
        } else {
            rng.size(15)
        };
        let off = heap.alloc(size as usize, 8).unwrap().get();
        live.add(&heap, off, size);
        if seg.committed() > before {
            grew += 1;
            // The peer sees the new size and the new block, without remapping.
            assert_eq!(peer.committed(), seg.committed());
            let (usable, seed) = live.map[&off];
            check_stamp(&peer_heap, off, usable as usize, seed);
        }
    }
    assert!(grew >= 2, "the committed size grew only {grew} times");
    live.check(&peer_heap);
    // The peer frees half of them and allocates its own; we see its blocks.
    for off in live.offsets().into_iter().step_by(2) {
        live.take(&peer_heap, off);
        peer_heap.free(off).unwrap();
    }
    for i in 0..64 {
        let size = small_or_1k(100) + 997 * i;
        let off = peer_heap.alloc(size as usize, 8).unwrap().get();
        live.add(&peer_heap, off, size);
    }
    live.check(&heap);
    checkpoint(&heap);
    live.free_all(&heap);
    assert_eq!(used(&heap), start);
    assert_clean(&peer_heap);
}

#[test]
#[cfg_attr(miri, ignore = "memfd and POSIX shared memory")]
fn a_separate_mapping_sees_blocks_at_the_same_offsets_while_the_heap_grows() {
    for kind in ["memfd", "posix"] {
        let name = shmkit::unique_name("heap-map-").unwrap();
        let opts = match kind {
            "memfd" => SegmentOptions::memfd(),
            _ => SegmentOptions::posix(&name),
        };
        let seg = opts
            .max_size(32 << 20)
            .committed(64 << 10)
            .create()
            .unwrap();
        let other = match kind {
            "memfd" => SegmentOptions::memfd()
                .open_fd(seg.as_fd().unwrap().try_clone_to_owned().unwrap())
                .unwrap(),
            _ => SegmentOptions::posix(&name).open().unwrap(),
        };
        assert_ne!(
            seg.as_ptr(),
            other.as_ptr(),
            "{kind}: not a separate mapping"
        );
        let a = Heap::attach(&seg).unwrap();
        let b = Heap::attach(&other).unwrap();
        let start = used(&a);
        let c0 = other.committed();
        let mut live = Blocks::default();
        for i in 0..200u64 {
            let size = if i % 5 == 0 { 70_000 } else { 100 + 40 * i };
            let off = a.alloc(size as usize, 8).unwrap().get();
            live.add(&a, off, size);
            let (usable, seed) = live.map[&off];
            check_stamp(&b, off, usable as usize, seed);
        }
        assert!(other.committed() > c0, "{kind}: the heap did not grow");
        // The other mapping writes too; the first one sees it.
        for off in live.offsets().into_iter().step_by(3) {
            live.take(&b, off);
            b.free(off).unwrap();
            let off = b.alloc(3000, 64).unwrap().get();
            live.add(&b, off, 3000);
        }
        live.check(&a);
        assert_clean(&b);
        live.free_all(&b);
        assert_eq!(used(&a), start, "{kind}");
        assert_clean(&a);
    }
}

// ---------------------------------------------------------------------------------
// Real processes.
// ---------------------------------------------------------------------------------

const ROLE: &str = "SHMKIT_HEAP_TEST_ROLE";
const NAME: &str = "SHMKIT_HEAP_TEST_NAME";
const BLOCKS: &str = "SHMKIT_HEAP_TEST_BLOCKS";
/// Prefix of the lines a child says to its parent.
const PREFIX: &str = "SHMKIT:";
/// Sizes a child allocates: small classes, a cached large run, an uncached one.
const CHILD_SIZES: [u64; 7] = [1, 24, 100, 1000, 5000, 40_000, 300_000];

/// `off:usable:seed` triples, comma-separated.
fn encode(blocks: &[(u64, u64, u64)]) -> String {
    blocks
        .iter()
        .map(|(o, u, s)| format!("{o}:{u}:{s}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode(s: &str) -> Vec<(u64, u64, u64)> {
    s.trim()
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let v: Vec<u64> = t.split(':').map(|n| n.parse().unwrap()).collect();
            (v[0], v[1], v[2])
        })
        .collect()
}

/// Allocates one block of each of [`CHILD_SIZES`] (`rounds` times) and stamps it.
fn alloc_stamped(heap: &Heap, rounds: u64, salt: u64) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for r in 0..rounds {
        for &size in &CHILD_SIZES {
            let off = heap.alloc(size as usize, 8).unwrap().get();
            let usable = heap.usable_size(off).unwrap();
            let seed = salt + r * 1000 + size;
            stamp(heap, off, usable as usize, seed);
            out.push((off, usable, seed));
        }
    }
    out
}

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return; // run by hand with --ignored: nothing to do
    };
    let seg = SegmentOptions::posix(&std::env::var(NAME).unwrap())
        .open()
        .unwrap();
    let heap = Heap::attach(&seg).unwrap();
    let say = |what: String| println!("{PREFIX}{what}");
    say(format!("tag {}", seg.owner_tag().bits()));
    match role.as_str() {
        // Allocate, stamp, publish, say where; exit normally.
        "publish" => {
            let blocks = alloc_stamped(&heap, 3, 11);
            for &(off, _, _) in &blocks {
                heap.publish(off).unwrap();
            }
            say(format!("blocks {}", encode(&blocks)));
        }
        // Take the parent's published blocks over, check them, free them.
        "adopt-free" => {
            let blocks = decode(&std::env::var(BLOCKS).unwrap());
            for &(off, usable, seed) in &blocks {
                heap.adopt(off).unwrap();
                assert_eq!(heap.state(off).unwrap(), BlockState::Owned(seg.owner_tag()));
                check_stamp(&heap, off, usable as usize, seed);
                heap.free(off).unwrap();
            }
            say(format!("freed {}", blocks.len()));
        }
        // Hold some blocks privately (some freed into the cache), publish others,
        // then wait to be killed.
        "hold" => {
            let held = alloc_stamped(&heap, 2, 23);
            for &(off, _, _) in held.iter().step_by(3) {
                heap.free(off).unwrap();
            }
            let published = alloc_stamped(&heap, 1, 37);
            for &(off, _, _) in &published {
                heap.publish(off).unwrap();
            }
            say(format!("blocks {}", encode(&published)));
            println!("{}", common::DONE_MARKER);
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            return;
        }
        other => panic!("unknown role {other:?}"),
    }
    drop(heap);
    println!("{}", common::DONE_MARKER);
}

struct Child {
    proc: common::LineChild,
    tag: OwnerTag,
}

impl Child {
    fn spawn(role: &str, name: &str, env: &[(&str, String)], stdin: Stdio) -> Self {
        let mut cmd = common::child_main_command();
        cmd.env(ROLE, role).env(NAME, name);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = common::LineChild::spawn(cmd, stdin);
        let bits: u64 = Self::said(&proc, "tag").parse().unwrap();
        Child {
            proc,
            tag: OwnerTag::from_word(bits),
        }
    }

    fn said(proc: &common::LineChild, what: &str) -> String {
        let line = proc
            .next_after(PREFIX, common::PATIENCE)
            .unwrap_or_else(|e| panic!("child said no {what:?}: {e}"));
        line.strip_prefix(what)
            .unwrap_or_else(|| panic!("child said {line:?}, expected {what:?}"))
            .trim()
            .to_owned()
    }

    fn say(&self, what: &str) -> String {
        Self::said(&self.proc, what)
    }

    fn done(&self) {
        self.proc
            .next_after(common::DONE_MARKER, common::PATIENCE)
            .expect("child did not finish");
    }

    fn exit_ok(mut self) {
        self.done();
        let st = self
            .proc
            .wait_for_exit(common::PATIENCE)
            .expect("child hung");
        assert!(st.success(), "child failed: {st:?}");
    }
}

fn posix_segment() -> (Segment, String) {
    let name = shmkit::unique_name("heap-").unwrap();
    let seg = SegmentOptions::posix(&name)
        .max_size(32 << 20)
        .committed(64 << 10)
        .create()
        .unwrap();
    (seg, name)
}

#[test]
#[cfg_attr(miri, ignore = "processes")]
fn blocks_published_by_a_child_process_are_adopted_and_freed_by_the_parent() {
    let _dog = watchdog("blocks_published_by_a_child_process");
    let (seg, name) = posix_segment();
    let heap = Heap::attach(&seg).unwrap();
    let start = used(&heap);
    let child = Child::spawn("publish", &name, &[], Stdio::null());
    let blocks = decode(&child.say("blocks"));
    let tag = child.tag;
    child.exit_ok();
    assert_eq!(blocks.len(), 3 * CHILD_SIZES.len());
    // The child is gone; its published blocks are not its any more.
    let s = assert_clean(&heap);
    assert!(owner_stats(&s, tag).is_none(), "{:?}", s.owners);
    assert_eq!(heap.reclaim_dead().unwrap().blocks, 0);
    for &(off, usable, seed) in &blocks {
        assert_eq!(heap.state(off).unwrap(), BlockState::Shared);
        assert_eq!(heap.usable_size(off).unwrap(), usable);
        heap.adopt(off).unwrap();
        assert_eq!(heap.state(off).unwrap(), BlockState::Owned(seg.owner_tag()));
        check_stamp(&heap, off, usable as usize, seed);
        heap.free(off).unwrap();
    }
    assert_eq!(used(&heap), start);
    assert_clean(&heap);
}

#[test]
#[cfg_attr(miri, ignore = "processes")]
fn blocks_published_by_the_parent_are_freed_by_a_child_process() {
    let _dog = watchdog("blocks_published_by_the_parent");
    let (seg, name) = posix_segment();
    let heap = Heap::attach(&seg).unwrap();
    let start = used(&heap);
    let blocks = alloc_stamped(&heap, 3, 5);
    for &(off, _, _) in &blocks {
        heap.publish(off).unwrap();
    }
    let child = Child::spawn(
        "adopt-free",
        &name,
        &[(BLOCKS, encode(&blocks))],
        Stdio::null(),
    );
    assert_eq!(child.say("freed"), blocks.len().to_string());
    child.exit_ok();
    for &(off, _, _) in &blocks {
        assert_bad_block(heap.usable_size(off), off);
    }
    assert_eq!(used(&heap), start);
    let s = assert_clean(&heap);
    let me = seg.owner_tag();
    assert!(s.owners.iter().all(|o| o.owner == me), "{:?}", s.owners);
}

#[test]
#[cfg_attr(miri, ignore = "processes")]
fn a_killed_child_s_private_blocks_are_reclaimed_and_its_published_ones_survive() {
    let _dog = watchdog("a_killed_child_s_private_blocks");
    let (seg, name) = posix_segment();
    let heap = Heap::attach(&seg).unwrap();
    let start = used(&heap);
    let mut child = Child::spawn("hold", &name, &[], Stdio::piped());
    let published = decode(&child.say("blocks"));
    child.done();
    let tag = child.tag;
    let alive = heap.stats().unwrap();
    let held = owner_stats(&alive, tag)
        .expect("the child holds blocks")
        .clone();
    assert!(held.alive);
    assert!(held.owned_blocks > 0 && held.cached_blocks > 0, "{held:?}");
    // A live owner's blocks are not reclaimed.
    assert_eq!(heap.reclaim_dead().unwrap().blocks, 0);
    child.proc.kill().unwrap();
    child
        .proc
        .wait_for_exit(common::PATIENCE)
        .expect("killed child reaped");
    let dead = heap.stats().unwrap();
    let o = owner_stats(&dead, tag).unwrap();
    assert!(!o.alive);
    assert_eq!(
        (o.owned_bytes, o.cached_bytes),
        (held.owned_bytes, held.cached_bytes)
    );
    let r = heap.reclaim_dead().unwrap();
    assert_eq!(r.owners, vec![tag]);
    assert_eq!(
        r.bytes,
        held.owned_bytes + held.cached_bytes,
        "{r:?} {held:?}"
    );
    assert_eq!(
        r.blocks,
        held.owned_blocks + held.cached_blocks,
        "{r:?} {held:?}"
    );
    assert_eq!(r.unlisted, 0);
    let s = assert_clean(&heap);
    assert!(owner_stats(&s, tag).is_none(), "{:?}", s.owners);
    // What it published is still there, intact.
    for &(off, usable, seed) in &published {
        assert_eq!(heap.state(off).unwrap(), BlockState::Shared);
        heap.adopt(off).unwrap();
        check_stamp(&heap, off, usable as usize, seed);
        heap.free(off).unwrap();
    }
    assert_eq!(used(&heap), start);
    assert_clean(&heap);
}

// ---------------------------------------------------------------------------------
// Bad input.
// ---------------------------------------------------------------------------------

#[test]
fn bad_offsets_double_frees_and_foreign_blocks_are_typed_errors() {
    let seg = heap_segment(8 << 20);
    let heap = Heap::attach(&seg).unwrap();
    let peer = seg.try_clone().unwrap();
    let peer_heap = Heap::attach(&peer).unwrap();
    let (me, them) = (seg.owner_tag(), peer.owner_tag());
    let start = used(&heap);
    let mut live = Blocks::default();
    // The first block of a fresh heap is the first block of its first span, right
    // after the span's owner-word page(s).
    let small_size = if MIRI { 1024 } else { 64 };
    let small = heap.alloc(small_size, 8).unwrap().get();
    live.add(&heap, small, small_size as u64);
    assert_eq!(small % PAGE_SIZE, 0);
    let large = heap.alloc(5 * PAGE_SIZE as usize, 8).unwrap().get();
    live.add(&heap, large, 5 * PAGE_SIZE);
    let theirs_size = small_or_1k(200) * 2;
    let theirs = peer_heap.alloc(theirs_size as usize, 8).unwrap().get();
    live.add(&peer_heap, theirs, theirs_size);

    let user = seg.user_offset();
    let committed = seg.committed();
    let max = seg.max_size();
    // Outside the heap's committed data pages (`ptr` refuses these too).
    let outside = [
        0,
        1,
        8,
        user,     // the heap header
        user + 8, // inside it
        user + PAGE_SIZE,
        committed, // past the committed end
        committed + PAGE_SIZE,
        max - PAGE_SIZE,
        max,
        max + PAGE_SIZE,
        u64::MAX - (PAGE_SIZE - 1), // the last page of the address space
        u64::MAX - 7,
        u64::MAX,
    ];
    // Inside the data pages, but no block starts there.
    let inside = [
        small - 8, // the span's owner words
        small - PAGE_SIZE,
        small + 1, // inside a small block
        small + 8,
        small + 32,
        large + 8,             // inside a large block
        large + PAGE_SIZE,     // its second page
        large + 4 * PAGE_SIZE, // its last page
    ];
    for off in outside.into_iter().chain(inside) {
        assert_bad_block(heap.free(off), off);
        assert_bad_block(heap.state(off), off);
        assert_bad_block(heap.usable_size(off), off);
        assert_bad_block(heap.publish(off), off);
        assert_bad_block(heap.adopt(off), off);
        assert_bad_block(heap.realloc(off, 100, 8), off);
    }
    for off in outside {
        assert_bad_block(heap.ptr(off), off);
    }
    for off in inside {
        assert!(
            heap.ptr(off).is_ok(),
            "{off:#x} is in the committed data pages"
        );
    }
    checkpoint(&heap);

    // Ownership: publish only what we own, adopt only what is published.
    assert_bad_block(heap.publish(theirs), theirs);
    assert_bad_block(heap.adopt(theirs), theirs);
    assert_bad_block(heap.adopt(small), small);
    assert_bad_block(heap.adopt(large), large);
    heap.publish(small).unwrap();
    assert_bad_block(heap.publish(small), small);
    assert_bad_block(peer_heap.publish(small), small);
    peer_heap.adopt(small).unwrap();
    assert_eq!(heap.state(small).unwrap(), BlockState::Owned(them));
    assert_bad_block(peer_heap.adopt(small), small);
    assert_bad_block(heap.publish(small), small);
    assert_eq!(heap.state(theirs).unwrap(), BlockState::Owned(them));
    assert_eq!(heap.state(large).unwrap(), BlockState::Owned(me));
    live.check(&heap);
    checkpoint(&heap);

    // Double frees: small (cached, then on the shared list), large (cached run,
    // then a run given back to the page level).
    live.take(&heap, small);
    heap.free(small).unwrap();
    assert_eq!(heap.state(small).unwrap(), BlockState::Cached(me));
    assert_bad_block(heap.free(small), small);
    assert_bad_block(peer_heap.free(small), small);
    assert_bad_block(heap.usable_size(small), small);
    assert_bad_block(heap.publish(small), small);
    assert_bad_block(heap.adopt(small), small);
    heap.flush().unwrap();
    assert_eq!(heap.state(small).unwrap(), BlockState::Free);
    assert_bad_block(heap.free(small), small);
    assert_bad_block(heap.realloc(small, 10, 8), small);

    live.take(&heap, large);
    heap.free(large).unwrap();
    assert_eq!(heap.state(large).unwrap(), BlockState::Cached(me));
    assert_bad_block(heap.free(large), large);
    assert_bad_block(peer_heap.free(large), large);
    assert_bad_block(heap.adopt(large), large);
    let huge = heap.alloc(300 << 10, 8).unwrap().get(); // not kept in the large cache
    assert_eq!(heap.usable_size(huge).unwrap(), 300 << 10);
    heap.free(huge).unwrap();
    assert_bad_block(heap.free(huge), huge);
    assert_bad_block(heap.state(huge), huge);

    // A block in another handle's cache.
    live.take(&peer_heap, theirs);
    peer_heap.free(theirs).unwrap();
    assert_eq!(heap.state(theirs).unwrap(), BlockState::Cached(them));
    assert_bad_block(heap.free(theirs), theirs);
    assert_bad_block(heap.adopt(theirs), theirs);
    assert_bad_block(heap.publish(theirs), theirs);
    checkpoint(&heap);

    // Offsets from another segment, where this one has no block.
    let other = heap_segment(8 << 20);
    let other_heap = Heap::attach(&other).unwrap();
    let mut theirs_elsewhere = Vec::new();
    for _ in 0..4 {
        theirs_elsewhere.push(other_heap.alloc(1 << 20, 8).unwrap().get());
    }
    theirs_elsewhere.push(other_heap.alloc(small_or_1k(48) as usize, 8).unwrap().get());
    theirs_elsewhere.push(other_heap.alloc(100_000, 8).unwrap().get());
    for &off in &theirs_elsewhere[1..] {
        assert_bad_block(heap.free(off), off);
        assert_bad_block(heap.adopt(off), off);
        assert_bad_block(heap.state(off), off);
    }
    for off in theirs_elsewhere {
        other_heap.free(off).unwrap();
    }
    assert_clean(&other_heap);

    live.free_all(&heap);
    assert_eq!(used(&heap), start);
    assert_clean(&heap);
}

// ---------------------------------------------------------------------------------
// Stats and reclaim.
// ---------------------------------------------------------------------------------

#[test]
fn stats_add_up_and_count_each_owner_alive_or_dead() {
    let seg = heap_segment(roomy());
    let heap = Heap::attach(&seg).unwrap();
    let peer = seg.try_clone().unwrap();
    let peer_heap = Heap::attach(&peer).unwrap();
    let (me, them) = (seg.owner_tag(), peer.owner_tag());
    let s0 = assert_clean(&heap);
    assert!(s0.owners.is_empty(), "{:?}", s0.owners);
    assert!(s0.committed <= seg.committed());
    let mut live = Blocks::default();
    // Ours: 30 blocks of class 112 (1024 under miri), 3 large of 13 pages.
    let (ours, ours_class) = if MIRI { (1000, 1024) } else { (100, 112) };
    for _ in 0..30 {
        let off = heap.alloc(ours as usize, 8).unwrap().get();
        live.add(&heap, off, ours);
    }
    for _ in 0..3 {
        let off = heap.alloc(50_000, 8).unwrap().get();
        live.add(&heap, off, 50_000);
    }
    // Theirs: 10 blocks of class 2048 (3072 under miri), one large of 30 pages.
    let (their, their_class) = if MIRI { (3000, 3072) } else { (2000, 2048) };
    let mut theirs = Blocks::default();
    for _ in 0..10 {
        let off = peer_heap.alloc(their as usize, 8).unwrap().get();
        theirs.add(&peer_heap, off, their);
    }
    let big = peer_heap.alloc(30 * PAGE_SIZE as usize, 8).unwrap().get();
    theirs.add(&peer_heap, big, 30 * PAGE_SIZE);

    let s = assert_clean(&heap);
    let mine = owner_stats(&s, me).unwrap();
    assert!(mine.alive);
    assert_eq!(mine.owned_blocks, 33);
    assert_eq!(mine.owned_bytes, 30 * ours_class + 3 * 13 * PAGE_SIZE);
    assert_eq!(
        mine.cached_bytes % ours_class,
        0,
        "only one class is in our cache: {mine:?}"
    );
    let t = owner_stats(&s, them).unwrap();
    assert!(t.alive);
    assert_eq!(t.owned_blocks, 11);
    assert_eq!(t.owned_bytes, 10 * their_class + 30 * PAGE_SIZE);
    assert_eq!(s.classes[class_index(ours_class)].used, 30);
    assert_eq!(s.classes[class_index(their_class)].used, 10);
    assert_eq!(s.large_blocks, 4);
    assert_eq!(s.used - s0.used, mine.owned_bytes + t.owned_bytes);
    assert_eq!(s.shared, 0);
    assert!(s.high_water > 0 && s.high_water <= seg.max_size());
    assert!((0.0..1.0).contains(&s.fragmentation), "{}", s.fragmentation);
    assert!(s.free_pages * PAGE_SIZE <= s.free);
    assert!(s.largest_free_run <= s.free_pages * PAGE_SIZE);
    assert_eq!(heap.stats().unwrap(), s, "stats and verify count the same");

    // A published block moves from its owner to `shared`.
    let first = live.offsets()[0];
    heap.publish(first).unwrap();
    let s = heap.stats().unwrap();
    assert_eq!(owner_stats(&s, me).unwrap().owned_blocks, 32);
    assert_eq!(s.shared, live.map[&first].0);

    // The peer frees a few (cached now), then dies.
    for off in theirs.offsets().into_iter().take(4) {
        theirs.take(&peer_heap, off);
        peer_heap.free(off).unwrap();
    }
    let before = owner_stats(&heap.stats().unwrap(), them).unwrap().clone();
    assert!(before.cached_blocks >= 4, "{before:?}");
    bury(peer_heap);
    // SAFETY: this attachment's other handles were forgotten (as a killed
    // process's are): no guard borrows any of them.
    unsafe { peer.simulate_crash_now() };
    drop(peer);
    let s = assert_clean(&heap);
    let dead = owner_stats(&s, them).unwrap();
    assert!(!dead.alive);
    assert_eq!(
        (
            dead.owned_bytes,
            dead.cached_bytes,
            dead.owned_blocks,
            dead.cached_blocks
        ),
        (
            before.owned_bytes,
            before.cached_bytes,
            before.owned_blocks,
            before.cached_blocks
        )
    );
    let r = heap.reclaim_dead().unwrap();
    assert_eq!(r.owners, vec![them]);
    assert_eq!(r.bytes, before.owned_bytes + before.cached_bytes);
    assert_eq!(r.blocks, before.owned_blocks + before.cached_blocks);
    let s = assert_clean(&heap);
    assert!(owner_stats(&s, them).is_none(), "{:?}", s.owners);
    assert_eq!(
        s.used,
        s0.used + owner_stats(&s, me).unwrap().owned_bytes + s.shared
    );

    heap.adopt(first).unwrap();
    live.free_all(&heap);
    assert_eq!(used(&heap), s0.used);
    assert_clean(&heap);
}

#[test]
fn a_crashed_handle_s_blocks_are_reclaimed_and_a_live_one_s_are_not() {
    let seg = heap_segment(roomy());
    let heap = Heap::attach(&seg).unwrap();
    let start = used(&heap);
    let dying = seg.try_clone().unwrap();
    let dying_tag = dying.owner_tag();
    let living = seg.try_clone().unwrap();
    let living_heap = Heap::attach(&living).unwrap();
    let mut live = Blocks::default();
    // A live peer's blocks, owned and cached.
    let mut rng = Rng::new(7);
    let mut kept = Vec::new();
    for _ in 0..if MIRI { 12 } else { 40 } {
        let size = if MIRI {
            1000 + rng.below(100_000)
        } else {
            rng.size(17)
        };
        let off = living_heap.alloc(size as usize, 8).unwrap().get();
        live.add(&living_heap, off, size);
        kept.push(off);
    }
    for &off in kept.iter().step_by(4) {
        live.take(&living_heap, off);
        living_heap.free(off).unwrap();
    }

    // The dying handle: small and large blocks, reallocs, a growing ShmVec, some
    // frees into its caches, one block published.
    let published;
    {
        let h = Heap::attach(&dying).unwrap();
        let mut offs = Vec::new();
        for i in 0..if MIRI { 20 } else { 60u64 } {
            let size = if i % 10 == 9 {
                50_000 + 1000 * i
            } else {
                small_or_1k(1) + 37 * i * i
            };
            offs.push(h.alloc(size as usize, 8).unwrap().get());
        }
        for off in offs.iter_mut().step_by(3) {
            *off = h.realloc(*off, 3000, 8).unwrap().get();
        }
        offs[1] = h.realloc(offs[1], 120_000, 8).unwrap().get();
        for &off in offs.iter().skip(1).step_by(5) {
            h.free(off).unwrap();
        }
        published = h.alloc(1000, 8).unwrap().get();
        stamp(&h, published, 1000, 99);
        h.publish(published).unwrap();
        // (Not under miri: its header and first data blocks are in the 32- to
        // 256-byte classes, whose spans miri would take minutes to verify.)
        if !MIRI {
            let mut v = ShmVec::<u64>::new(&h).unwrap();
            for i in 0..5000 {
                v.push(i).unwrap();
            }
            std::mem::forget(v); // a dead process drops nothing
        }
        bury(h);
    }
    let before = owner_stats(&heap.stats().unwrap(), dying_tag)
        .unwrap()
        .clone();
    assert!(
        before.owned_blocks > 0 && before.cached_blocks > 0,
        "{before:?}"
    );
    let living_before = owner_stats(&heap.stats().unwrap(), living.owner_tag())
        .unwrap()
        .clone();
    // SAFETY: this attachment's other handles were forgotten (as a killed
    // process's are): no guard borrows any of them.
    unsafe { dying.simulate_crash_now() };
    drop(dying);

    let r = heap.reclaim_dead().unwrap();
    assert_eq!(r.owners, vec![dying_tag]);
    assert_eq!(
        r.bytes,
        before.owned_bytes + before.cached_bytes,
        "{r:?} {before:?}"
    );
    assert_eq!(
        r.blocks,
        before.owned_blocks + before.cached_blocks,
        "{r:?} {before:?}"
    );
    assert_eq!(r.unlisted, 0);
    let s = assert_clean(&heap);
    assert!(owner_stats(&s, dying_tag).is_none(), "{:?}", s.owners);
    // The living peer lost nothing.
    let l = owner_stats(&s, living.owner_tag()).unwrap();
    assert_eq!(l, &living_before);
    live.check(&heap);
    for &off in live.map.keys() {
        assert_eq!(
            heap.state(off).unwrap(),
            BlockState::Owned(living.owner_tag())
        );
    }
    assert_eq!(heap.reclaim_dead().unwrap(), Default::default());
    // The published block survived its owner.
    assert_eq!(heap.state(published).unwrap(), BlockState::Shared);
    heap.adopt(published).unwrap();
    check_stamp(&heap, published, 1000, 99);
    heap.free(published).unwrap();
    // The reclaimed space is usable again.
    let mut again = Blocks::default();
    for i in 0..if MIRI { 16 } else { 50u64 } {
        let size = small_or_1k(1) + 41 * i * i;
        let off = heap.alloc(size as usize, 8).unwrap().get();
        again.add(&heap, off, size);
    }
    again.free_all(&heap);
    live.free_all(&living_heap);
    assert_eq!(used(&heap), start);
    assert_clean(&heap);
}

// ---------------------------------------------------------------------------------
// ShmBox, ShmVec, ShmString.
// ---------------------------------------------------------------------------------

/// Words of the `ShmBox` test's payload: 32 bytes natively, 1 KiB under miri.
const WORDS: usize = if cfg!(miri) { 128 } else { 4 };
/// Bytes of a box that is too small for `[u64; TOO_BIG]`.
const TINY: usize = if cfg!(miri) { 1000 } else { 1 };
const TOO_BIG: usize = if cfg!(miri) { 256 } else { 8 };

#[test]
fn a_shm_box_round_trips_and_is_handed_over_between_handles() {
    let seg = heap_segment(4 << 20);
    let heap = Heap::attach(&seg).unwrap();
    let peer = seg.try_clone().unwrap();
    let peer_heap = Heap::attach(&peer).unwrap();
    let start = used(&heap);
    let first: [u64; WORDS] = std::array::from_fn(|i| i as u64 + 1);
    let second: [u64; WORDS] = std::array::from_fn(|i| i as u64 * 3 + 5);
    {
        let mut b = ShmBox::new(&heap, first).unwrap();
        assert_eq!(b.get(), first);
        b.set(second);
        assert_eq!(b.get(), second);
        let off = b.offset().get();
        assert_eq!(heap.state(off).unwrap(), BlockState::Owned(seg.owner_tag()));
        // SAFETY: the box owns the block; nothing else writes it.
        assert_eq!(unsafe { b.as_ptr().read() }, second);
        let shared = b.into_shared().unwrap();
        assert_eq!(heap.state(off).unwrap(), BlockState::Shared);
        let got = ShmBox::<[u64; WORDS]>::from_shared(&peer_heap, shared).unwrap();
        assert_eq!(
            heap.state(off).unwrap(),
            BlockState::Owned(peer.owner_tag())
        );
        assert_eq!(got.get(), second);
        // Taken over once only.
        assert_bad_block(ShmBox::<[u64; WORDS]>::from_shared(&heap, shared), off);
        drop(got);
        assert_bad_block(heap.usable_size(off), off);
    }
    assert_eq!(used(&heap), start);
    {
        // Bad offsets: not published, misaligned, too small, not a block.
        let b = ShmBox::new(&heap, [7u64; WORDS]).unwrap();
        let off = b.offset().get();
        assert_bad_block(
            ShmBox::<[u64; WORDS]>::from_shared(&peer_heap, b.offset()),
            off,
        );
        assert_bad_block(
            ShmBox::<u64>::from_shared(&peer_heap, Offset::new(off + 4)),
            off + 4,
        );
        assert_bad_block(
            ShmBox::<u32>::from_shared(&peer_heap, Offset::new(off + 8)),
            off + 8,
        );
        let small = ShmBox::new(&heap, [1u8; TINY])
            .unwrap()
            .into_shared()
            .unwrap();
        assert_bad_block(
            ShmBox::<[u64; TOO_BIG]>::from_shared(&peer_heap, Offset::new(small.get())),
            small.get(),
        );
        assert_eq!(
            heap.state(small.get()).unwrap(),
            BlockState::Shared,
            "given back"
        );
        assert_bad_block(ShmBox::<u8>::from_shared(&peer_heap, Offset::new(0)), 0);
        let small = ShmBox::<[u8; TINY]>::from_shared(&peer_heap, small).unwrap();
        assert_eq!(small.get(), [1; TINY]);
        assert_eq!(b.get(), [7; WORDS]);
    }
    heap.flush().unwrap();
    peer_heap.flush().unwrap();
    assert_eq!(used(&heap), start);
    assert_clean(&heap);
}

#[test]
fn a_shm_vec_grows_through_many_reallocations_and_is_handed_over() {
    let seg = heap_segment(roomy());
    let heap = Heap::attach(&seg).unwrap();
    let peer = seg.try_clone().unwrap();
    let peer_heap = Heap::attach(&peer).unwrap();
    let start = used(&heap);
    // Under miri from 1 KiB up (the header is in the 32-byte class regardless).
    let (n, first_cap, growths) = if MIRI { (700, 128, 3) } else { (40_000, 0, 8) };
    let header;
    {
        let mut v = ShmVec::<u64>::with_capacity(&heap, first_cap).unwrap();
        assert!(v.is_empty());
        let mut caps = vec![v.capacity()];
        for i in 0..n {
            v.push(i * 3).unwrap();
            if v.capacity() != *caps.last().unwrap() {
                caps.push(v.capacity());
            }
        }
        assert!(
            caps.len() > growths,
            "grew only {} times: {caps:?}",
            caps.len() - 1
        );
        assert_eq!(v.len(), n as usize);
        assert_eq!(v.get(n as usize), None);
        for i in (0..n).step_by(7) {
            assert_eq!(v.get(i as usize), Some(i * 3));
        }
        v.set(5, 555).unwrap();
        assert!(v.set(n as usize, 1).is_err());
        assert_eq!(v.pop(), Some((n - 1) * 3));
        v.extend_from_slice(&[1, 2, 3]).unwrap();
        assert_eq!(v.len(), n as usize + 2);
        let want: Vec<u64> = (0..n - 1)
            .map(|i| if i == 5 { 555 } else { i * 3 })
            .chain([1, 2, 3])
            .collect();
        assert_eq!(v.to_vec(), want);
        checkpoint(&heap);
        let typed = v.into_shared().unwrap();
        header = typed.get();
        assert_eq!(heap.state(header).unwrap(), BlockState::Shared);
        let got = ShmVec::<u64>::from_shared(&peer_heap, typed).unwrap();
        assert_eq!(got.to_vec(), want);
        assert_bad_block(ShmVec::<u64>::from_shared(&heap, typed), header);
    }
    assert_bad_block(heap.usable_size(header), header);
    heap.flush().unwrap();
    peer_heap.flush().unwrap();
    assert_eq!(used(&heap), start);
    {
        // Bytes, through the small classes.
        let mut v = ShmVec::<u8>::with_capacity(&heap, small_or_1k(3) as usize).unwrap();
        for i in 0..if MIRI { 3000 } else { 30_000 } {
            v.push(i as u8).unwrap();
        }
        assert!(v.to_vec().iter().enumerate().all(|(i, &b)| b == i as u8));
        v.clear();
        assert!(v.is_empty());
    }
    {
        // A published block that is no vector header: refused, given back.
        let junk = heap.alloc(24, 8).unwrap().get();
        stamp(&heap, junk, 24, 3);
        heap.publish(junk).unwrap();
        assert!(matches!(
            ShmVec::<u64>::from_shared(&peer_heap, Offset::new(junk)),
            Err(Error::BadBlock { .. })
        ));
        assert_eq!(heap.state(junk).unwrap(), BlockState::Shared, "given back");
        heap.adopt(junk).unwrap();
        heap.free(junk).unwrap();
        // Not published, not a block.
        let v = ShmVec::<u32>::new(&heap).unwrap();
        assert_bad_block(
            ShmVec::<u32>::from_shared(&peer_heap, v.offset()),
            v.offset().get(),
        );
        assert_bad_block(
            ShmVec::<u32>::from_shared(&peer_heap, Offset::new(v.offset().get() + 8)),
            v.offset().get() + 8,
        );
    }
    heap.flush().unwrap();
    assert_eq!(used(&heap), start);
    assert_clean(&heap);
}

#[test]
fn a_shm_string_round_trips_and_is_handed_over() {
    let seg = heap_segment(4 << 20);
    let heap = Heap::attach(&seg).unwrap();
    let peer = seg.try_clone().unwrap();
    let peer_heap = Heap::attach(&peer).unwrap();
    let start = used(&heap);
    let mut want = String::new();
    {
        // (Under miri from 1 KiB up.)
        let hello = "héllo".repeat(if MIRI { 200 } else { 1 });
        let mut s = ShmString::from_str(&heap, &hello).unwrap();
        want.push_str(&hello);
        for i in 0..if MIRI { 50 } else { 2000 } {
            let piece = format!(", {i} ünïcode");
            s.push_str(&piece).unwrap();
            want.push_str(&piece);
        }
        assert_eq!(s.len(), want.len());
        assert_eq!(s.to_string().unwrap(), want);
        let off = s.into_shared().unwrap();
        let got = ShmString::from_shared(&peer_heap, off).unwrap();
        assert_eq!(got.to_string().unwrap(), want);
        assert_bad_block(ShmString::from_shared(&heap, off), off.get());
        assert_bad_block(
            ShmString::from_shared(&heap, Offset::new(off.get() + 16)),
            off.get() + 16,
        );
        let mut got = got;
        got.clear();
        assert!(got.is_empty());
        assert_eq!(got.to_string().unwrap(), "");
    }
    assert!(ShmString::new(&heap).unwrap().is_empty());
    {
        // Bytes that are not UTF-8, taken over as a string: an error on reading.
        let mut v = ShmVec::<u8>::with_capacity(&heap, small_or_1k(0) as usize).unwrap();
        v.extend_from_slice(&[b'o', b'k', 0xff, 0xfe]).unwrap();
        let off = v.into_shared().unwrap();
        let s = ShmString::from_shared(&peer_heap, off.cast()).unwrap();
        assert_eq!(s.len(), 4);
        assert!(matches!(s.to_string(), Err(Error::Corrupt { .. })));
    }
    heap.flush().unwrap();
    peer_heap.flush().unwrap();
    assert_eq!(used(&heap), start);
    assert_clean(&heap);
}

// ---------------------------------------------------------------------------------
// Threads.
// ---------------------------------------------------------------------------------

// A handle may move to another thread (it is `Send`; not `Sync`: one per thread).
const _: fn() = || {
    fn is_send<T: Send>() {}
    is_send::<Heap>();
};

/// A block on its way to the other thread: offset, usable size, seed.
type Handoff = (u64, u64, u64);

/// How long each stress thread runs: 0.8 s, or `SHMKIT_HEAP_STRESS_MS` for a longer
/// hunt (under miri the op count bounds it).
fn stress_time() -> Duration {
    if MIRI {
        return Duration::from_secs(3600);
    }
    let ms = std::env::var("SHMKIT_HEAP_STRESS_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(800);
    Duration::from_millis(ms)
}

/// Takes a block the other thread handed off, and checks its stamp.
fn adopt(heap: &Heap, (off, usable, seed): Handoff) {
    heap.adopt(off).unwrap();
    check_stamp(heap, off, usable as usize, seed);
}

/// One thread's share of the stress test: random allocs, frees and hand-offs
/// through its own heap handle; returns how many blocks it handed off and received.
fn trader(seg: &Segment, id: u64, tx: Sender<Handoff>, rx: Receiver<Handoff>) -> (u64, u64) {
    let heap = Heap::attach(seg).unwrap();
    let mut rng = Rng::new(id + 100);
    let mut live: Vec<Handoff> = Vec::new();
    let (mut sent, mut got) = (0, 0);
    let deadline = Instant::now() + stress_time();
    let max_ops = if MIRI { 200 } else { u64::MAX };
    let cap = if MIRI { 16 } else { 400 };
    let mut ops = 0;
    while ops < max_ops && Instant::now() < deadline {
        ops += 1;
        let r = rng.below(100);
        if r < 45 && live.len() < cap {
            let size = if rng.below(50) == 0 {
                40_000 + rng.below(if MIRI { 80_000 } else { 300_000 })
            } else if MIRI {
                1000 + rng.below(15_000)
            } else {
                rng.size(16)
            };
            let max_shift = if rng.below(8) == 0 { 13 } else { 4 };
            let align = 1usize << rng.below(max_shift);
            let off = heap.alloc(size as usize, align).unwrap().get();
            assert_eq!(off % align as u64, 0);
            let usable = heap.usable_size(off).unwrap();
            let seed = id * 1_000_003 + ops;
            stamp(&heap, off, usable as usize, seed);
            live.push((off, usable, seed));
        } else if r < 80 && !live.is_empty() {
            let (off, usable, seed) = live.swap_remove(rng.below(live.len() as u64) as usize);
            check_stamp(&heap, off, usable as usize, seed);
            heap.free(off).unwrap();
        } else if r < 92 && !live.is_empty() {
            let b = live.swap_remove(rng.below(live.len() as u64) as usize);
            check_stamp(&heap, b.0, b.1 as usize, b.2);
            heap.publish(b.0).unwrap();
            tx.send(b).unwrap();
            sent += 1;
        } else if r < 99 {
            while let Ok(b) = rx.try_recv() {
                adopt(&heap, b);
                live.push(b);
                got += 1;
            }
        } else {
            heap.flush().unwrap();
        }
    }
    // Stop sending; take what the other thread still sends until it stops too.
    drop(tx);
    for b in rx {
        adopt(&heap, b);
        live.push(b);
        got += 1;
    }
    for (off, usable, seed) in live {
        check_stamp(&heap, off, usable as usize, seed);
        heap.free(off).unwrap();
    }
    (sent, got)
}

/// Two threads, each with its own heap handle, trade blocks for about a second.
/// With `own_slots`, the second thread's handle is on a `try_clone` of the segment
/// (another owner, as another process would be); otherwise both are on the same
/// `Segment` (one owner, two handles).
fn two_threads_trade(own_slots: bool) {
    let seg = heap_segment(roomy());
    let clone = seg.try_clone().unwrap();
    let second = if own_slots { &clone } else { &seg };
    let heap = Heap::attach(&seg).unwrap();
    let start = used(&heap);
    let (tx0, rx1) = mpsc::channel();
    let (tx1, rx0) = mpsc::channel();
    let counts = std::thread::scope(|s| {
        let a = s.spawn(|| trader(&seg, 0, tx0, rx0));
        let b = s.spawn(|| trader(second, 1, tx1, rx1));
        [a.join().unwrap(), b.join().unwrap()]
    });
    assert_eq!(counts[0].0, counts[1].1, "every block 0 sent, 1 received");
    assert_eq!(counts[1].0, counts[0].1, "every block 1 sent, 0 received");
    assert!(counts[0].0 > 0 && counts[1].0 > 0, "{counts:?}");
    assert_eq!(used(&heap), start);
    let s = assert_clean(&heap);
    assert!(
        s.owners.iter().all(|o| o.owned_blocks == 0),
        "{:?}",
        s.owners
    );
}

#[test]
fn two_threads_trade_blocks_and_leave_the_heap_clean() {
    let _dog = watchdog("two_threads_trade_blocks");
    two_threads_trade(false);
}

#[test]
fn two_threads_of_different_owners_trade_blocks_and_leave_the_heap_clean() {
    let _dog = watchdog("two_threads_of_different_owners");
    two_threads_trade(true);
}
