//! Fuzz entry points, shared by `fuzz/fuzz_targets/*` and the corpus replay tests.

#![allow(unsafe_code)] // reads and writes of segment memory only the fuzz case views

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::alloc::model::{Cache, FREE_WORD, GEOMETRY, Mem, free_small, walk};
use crate::alloc::{BlockState, CLASSES, Heap, MAX_ALLOC, MAX_SMALL};
use crate::loom::Ordering;
use crate::{Error, Offset, OwnerTag, PAGE_SIZE, Result, Segment, SegmentOptions, Tagged};

// The directory is not built under loom (it has its own model there).
#[cfg(not(shmkit_loom))]
mod directory;
// Queues are created through the directory: not under loom either.
#[cfg(not(shmkit_loom))]
mod queue;
/// Makes the fingerprint and checksum of a segment image consistent, so that a
/// test or fuzzer reaches the checks behind them.
pub fn repair_header(image: &mut [u8]) {
    crate::segment::repair_header(image);
}
#[cfg(not(shmkit_loom))]
pub use directory::{
    DIR_HEAP, directory_corrupt, directory_journal_names_a_held_entry, directory_root_counter,
};
#[cfg(not(shmkit_loom))]
pub use queue::queue_corrupt;

/// Largest image a fuzz case maps (keeps runs fast; larger inputs are truncated).
pub const MAX_IMAGE: usize = 1 << 20;

/// Arbitrary bytes as a segment image: opening must return `Ok` or a typed error,
/// never panic, crash or hang; whatever opens must then be usable.
///
/// # Panics
///
/// Only if the library breaks its own promises (that is the bug a fuzzer finds).
pub fn open_segment(data: &[u8]) {
    let data = &data[..data.len().min(MAX_IMAGE)];
    open_one(data);
    // Again with a consistent fingerprint and checksum, so the fuzzer also reaches
    // the field checks and the registry behind them.
    let mut repaired = data.to_vec();
    crate::segment::repair_header(&mut repaired);
    if repaired != data {
        open_one(&repaired);
    }
}

fn open_one(data: &[u8]) {
    let Ok(seg) = SegmentOptions::heap().open_image(data) else {
        return;
    };
    let committed = seg.committed();
    assert!(committed >= seg.user_offset() && committed <= seg.max_size());
    assert!(seg.is_alive(seg.slot()).expect("own slot"));
    let list = seg.slot_list().expect("heap locks never fail");
    assert!(list.iter().any(|s| s.own));
    // Every slot the image claimed is held by nobody here: all dead, all freed.
    let freed = seg.reclaim_dead().expect("heap locks never fail");
    assert_eq!(freed.len() + 1, list.len(), "{list:?}");
    // SAFETY: nothing else in this process views this segment.
    if let Ok(v) = unsafe { seg.read(Offset::<u64>::new(committed - 8)) } {
        let _ = std::hint::black_box(v);
    }
    match seg.try_clone() {
        Ok(peer) => assert!(peer.is_alive(seg.slot()).expect("probe")),
        Err(crate::Error::RegistryFull { slots: 1 }) => {}
        Err(e) => panic!("a second handle must attach: {e}"),
    }
}

// ---------------------------------------------------------------------------
// The shared heap: operations against a model, and corrupted metadata.
// ---------------------------------------------------------------------------

/// Size of the heap segment of [`heap_ops`]: a few MiB, so that running out of
/// memory is a few large allocations away.
pub const OPS_HEAP: u64 = 4 << 20;

/// Size of the heap segment of [`heap_corrupt`].
pub const CORRUPT_HEAP: u64 = 2 << 20;

/// Most operations one [`heap_ops`] case runs.
const MAX_OPS: usize = 384;
/// Most blocks a [`heap_ops`] case keeps (further allocations turn into frees).
const MAX_LIVE: usize = 192;
/// Refused frees per [`heap_ops`] case whose "nothing changed" is checked by
/// comparing `stats` before and after (a walk of every span: costly).
const STATS_COMPARED: u32 = 6;
/// A [`heap_ops`] case verifies the heap every this many operations.
const VERIFY_EVERY: usize = 128;
/// Most `verify` or `reclaim_dead` operations a [`heap_ops`] case asks for (each
/// walks every block; the periodic and final checks come on top).
const MAX_WALKS: u32 = 4;
/// Most third handles a [`heap_ops`] case kills.
const MAX_CRASHES: u32 = 3;
/// Most operations after the corruption in one [`heap_corrupt`] case.
const MAX_CORRUPT_OPS: usize = 48;
/// Most metadata words one [`heap_corrupt`] case overwrites.
const MAX_POKES: u8 = 8;
/// Longest one heap call may take before the harness calls it unbounded (a hang
/// shows as a fuzzer timeout; this catches the merely runaway first).
const CALL_BUDGET: Duration = Duration::from_secs(5);
/// Run kind of a span in a page descriptor (see `alloc/pages.rs`).
const RUN_SPAN: u64 = 2;

/// Fuzz bytes, read front to back; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.u8()))
    }
}

/// Runs one heap call, failing the case if it takes longer than [`CALL_BUDGET`].
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(
        cfg!(miri) || took < CALL_BUDGET,
        "{what} took {took:?}: unbounded work?"
    );
    out
}

/// A request size: mostly small, some large, a few invalid or hopeless.
fn pick_size(inp: &mut Bytes<'_>) -> usize {
    let k = inp.u8();
    let v = usize::from(inp.u16());
    match k % 8 {
        0..=3 => 1 + v % 256,
        4 => 1 + v % 4096,
        5 => 1 + v % MAX_SMALL as usize,
        6 => MAX_SMALL as usize + 1 + (v << 4),
        _ => match v % 7 {
            0 => 0,
            1 => MAX_SMALL as usize,
            2 => MAX_SMALL as usize + 1,
            3 => OPS_HEAP as usize,
            4 => 3 << 20,
            5 => usize::MAX,
            _ => (MAX_ALLOC + 1) as usize,
        },
    }
}

/// A size `alloc` accepts (1 byte to 1 MiB, or now and then more than the heap).
fn pick_valid_size(inp: &mut Bytes<'_>) -> usize {
    match pick_size(inp) {
        0 => 1,
        s if s as u64 > MAX_ALLOC => OPS_HEAP as usize,
        s => s,
    }
}

/// An alignment: mostly valid, some not.
fn pick_align(inp: &mut Bytes<'_>) -> usize {
    match inp.u8() % 16 {
        v @ 0..=12 => 1 << v,
        13 => 3,
        14 => 8192,
        _ => 0,
    }
}

/// A valid alignment.
fn pick_valid_align(inp: &mut Bytes<'_>) -> usize {
    1 << (inp.u8() % 13)
}

/// What `alloc(size, align)` may answer on an intact heap: a block, or the typed
/// error for a bad argument, or `OutOfMemory`.
fn expect_alloc(r: Result<u64>, size: usize, align: usize) -> Option<u64> {
    let bad_size = size == 0 || size as u64 > MAX_ALLOC;
    let bad_align = !align.is_power_of_two() || align as u64 > PAGE_SIZE;
    match r {
        Err(Error::InvalidSize { .. }) if bad_size => None,
        Err(Error::InvalidArgument(_)) if !bad_size && bad_align => None,
        Err(Error::OutOfMemory { .. }) if !bad_size && !bad_align => None,
        Ok(off) if !bad_size && !bad_align => Some(off),
        other => panic!("alloc({size}, {align}) answered {other:?}"),
    }
}

/// Byte `i` of the stamp of a block.
fn pattern(stamp: u64, i: usize) -> u8 {
    (stamp
        .wrapping_add(i as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        >> 56) as u8
}

/// Bytes at each end of a block that carry its stamp.
const STAMP_EDGE: usize = 64;

/// The byte ranges of a block of `size` that carry its stamp: its head and tail
/// (all of a small block), and one word per page in between. Whole aligned words
/// (a block's usable size is a multiple of 16, so rounding up stays inside it):
/// a plain write of part of a word that the heap wrote atomically (a free-list
/// link) crashes miri's weak-memory emulation (nightly 2026-05).
fn stamp_ranges(size: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let end = size.next_multiple_of(8);
    let head = end.min(STAMP_EDGE);
    let tail = (end.saturating_sub(STAMP_EDGE) / 8 * 8).max(head);
    [0..head, tail..end].into_iter().chain(
        (PAGE_SIZE as usize..tail)
            .step_by(PAGE_SIZE as usize)
            .map(|p| p..p + 8),
    )
}

/// The stamp bytes of `range` (at most [`STAMP_EDGE`] long).
fn stamp_bytes(stamp: u64, range: &std::ops::Range<usize>) -> [u8; STAMP_EDGE] {
    std::array::from_fn(|j| pattern(stamp, range.start + j))
}

fn write_stamp(heap: &Heap, off: u64, size: usize, stamp: u64) {
    let p = heap.ptr(off).expect("a live block has a pointer").as_ptr();
    for r in stamp_ranges(size) {
        let want = stamp_bytes(stamp, &r);
        // r.end <= size rounded up to 8 <= usable_size(off), checked on admission.
        // SAFETY: inside the live block at `off`, which only this case touches;
        // `want` is a local array.
        unsafe { std::ptr::copy_nonoverlapping(want.as_ptr(), p.add(r.start), r.len()) };
    }
}

/// Checks the stamp of the block at `off` below `upto` (as written for a block of
/// `size` with `stamp`).
fn check_stamp(heap: &Heap, off: u64, size: usize, stamp: u64, upto: usize) {
    let p = heap
        .ptr(off)
        .unwrap_or_else(|e| panic!("live block {off:#x} has no pointer: {e}"))
        .as_ptr();
    for r in stamp_ranges(size) {
        let n = r.end.min(upto).saturating_sub(r.start);
        if n == 0 {
            continue;
        }
        // SAFETY: as in `write_stamp` (whole words of the range are read, as they
        // were written): inside a block this case holds, which nothing writes
        // while the slice lives.
        let got = unsafe { std::slice::from_raw_parts(p.add(r.start), r.len()) };
        let want = stamp_bytes(stamp, &r);
        assert!(
            got[..n] == want[..n],
            "block {off:#x} (size {size}) was overwritten in bytes {:?}: {:02x?}",
            r.start..r.start + n,
            &got[..n]
        );
    }
}

/// Who holds a live block of the model.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Holder {
    /// Owned by heap handle 0 or 1.
    Handle(usize),
    /// Published.
    Shared,
    /// Owned by a third handle that died.
    Dead(OwnerTag),
}

/// A live block of the model.
#[derive(Copy, Clone, Debug)]
struct Block {
    size: usize,
    usable: u64,
    stamp: u64,
    holder: Holder,
}

/// A [`heap_ops`] case: two handles on one segment (two processes, as far as the
/// heap can tell), and what they should hold.
struct Ops<'h, 's> {
    seg: &'s Segment,
    heaps: [&'h Heap; 2],
    tags: [OwnerTag; 2],
    live: BTreeMap<u64, Block>,
    /// Blocks in the caches of dead handles: (offset, usable, owner).
    dead_cached: Vec<(u64, u64, OwnerTag)>,
    /// Offsets freed lately (double-free candidates).
    freed: Vec<u64>,
    stamps: u64,
    crashes: u32,
    bad_frees: u32,
    walks: u32,
    heap_off: u64,
    data_off: u64,
    data_end: u64,
}

impl<'h, 's> Ops<'h, 's> {
    fn new(seg: &'s Segment, heaps: [&'h Heap; 2], tags: [OwnerTag; 2]) -> Self {
        let lay = heaps[0].mem.lay;
        Self {
            seg,
            heaps,
            tags,
            live: BTreeMap::new(),
            dead_cached: Vec::new(),
            freed: Vec::new(),
            stamps: 0,
            crashes: 0,
            bad_frees: 0,
            walks: 0,
            heap_off: lay.heap_off,
            data_off: lay.data_off,
            data_end: lay.data_off + lay.npages * PAGE_SIZE,
        }
    }

    fn state_of(&self, holder: Holder) -> BlockState {
        match holder {
            Holder::Handle(h) => BlockState::Owned(self.tags[h]),
            Holder::Shared => BlockState::Shared,
            Holder::Dead(t) => BlockState::Owned(t),
        }
    }

    fn pick_live(&self, inp: &mut Bytes<'_>) -> Option<u64> {
        if self.live.is_empty() {
            return None;
        }
        let i = usize::from(inp.u16()) % self.live.len();
        self.live.keys().nth(i).copied()
    }

    fn remember_freed(&mut self, off: u64) {
        if self.freed.len() >= 64 {
            self.freed.remove(0);
        }
        self.freed.push(off);
    }

    /// Takes a fresh block into the model: aligned, big enough, inside the data
    /// area, overlapping nothing live, in the expected state; then stamps it.
    fn admit(&mut self, heap: &Heap, off: u64, size: usize, align: usize, holder: Holder) {
        assert_eq!(
            off % align as u64,
            0,
            "block {off:#x} is not {align}-aligned"
        );
        let usable = heap
            .usable_size(off)
            .unwrap_or_else(|e| panic!("usable_size of fresh block {off:#x}: {e}"));
        assert!(usable >= size as u64, "block {off:#x}: {usable} < {size}");
        let end = off.checked_add(usable).expect("block end overflows");
        assert!(
            off >= self.data_off && end <= self.data_end,
            "block {off:#x}+{usable} is outside the data pages"
        );
        if let Some((&p, b)) = self.live.range(..=off).next_back() {
            assert!(
                p + b.usable <= off,
                "block {off:#x}+{usable} overlaps live block {p:#x}: {b:?}"
            );
        }
        if let Some((&n, b)) = self.live.range(off..).next() {
            assert!(
                end <= n,
                "block {off:#x}+{usable} overlaps live block {n:#x}: {b:?}"
            );
        }
        for &(c, u, t) in &self.dead_cached {
            assert!(
                end <= c || c + u <= off,
                "block {off:#x}+{usable} overlaps {c:#x}, in the cache of dead {t:?}"
            );
        }
        let want = self.state_of(holder);
        assert_eq!(
            heap.state(off).ok(),
            Some(want),
            "state of fresh block {off:#x}"
        );
        self.stamps += 1;
        let stamp = self.stamps;
        write_stamp(heap, off, size, stamp);
        self.live.insert(
            off,
            Block {
                size,
                usable,
                stamp,
                holder,
            },
        );
    }

    /// Forgets the blocks of dead handles that were reclaimed behind our back (an
    /// allocation that ran short reclaims before reporting out of memory).
    fn purge_dead(&mut self) {
        let a = self.heaps[0];
        let gone: Vec<u64> = self
            .live
            .iter()
            .filter_map(|(&off, b)| match b.holder {
                Holder::Dead(t) => (a.state(off).ok() != Some(BlockState::Owned(t))).then_some(off),
                _ => None,
            })
            .collect();
        for off in gone {
            self.live.remove(&off);
        }
        self.dead_cached
            .retain(|&(off, _, t)| a.state(off).ok() == Some(BlockState::Cached(t)));
    }

    fn used(&self) -> u64 {
        self.live.values().map(|b| b.usable).sum()
    }

    fn alloc(&mut self, h: usize, inp: &mut Bytes<'_>) {
        if self.live.len() >= MAX_LIVE {
            return self.free(h, inp);
        }
        let (size, align) = (pick_size(inp), pick_align(inp));
        let heap = self.heaps[h];
        let r = timed("alloc", || heap.alloc_raw(size, align));
        self.purge_dead();
        if let Some(off) = expect_alloc(r, size, align) {
            self.admit(heap, off, size, align, Holder::Handle(h));
        }
    }

    fn free(&mut self, h: usize, inp: &mut Bytes<'_>) {
        let Some(off) = self.pick_live(inp) else {
            return;
        };
        let heap = self.heaps[h];
        let b = self.live.remove(&off).expect("picked");
        check_stamp(heap, off, b.size, b.stamp, usize::MAX);
        timed("free", || heap.free(off))
            .unwrap_or_else(|e| panic!("free of live block {off:#x} ({b:?}): {e}"));
        self.remember_freed(off);
    }

    /// Frees an offset that is no live block: `BadBlock`, and nothing changes (the
    /// first few times a case tries, checked by comparing `stats` around the call;
    /// `verify` and the stamps check the rest).
    fn bad_free(&mut self, h: usize, off: u64) {
        if self.live.contains_key(&off) {
            return;
        }
        self.bad_frees += 1;
        let compare = self.bad_frees <= STATS_COMPARED;
        let before = compare.then(|| self.heaps[0].stats().expect("stats"));
        let r = timed("free", || self.heaps[h].free(off));
        assert!(
            matches!(r, Err(Error::BadBlock { .. })),
            "free({off:#x}) of no live block answered {r:?}"
        );
        if let Some(before) = before {
            let after = self.heaps[0].stats().expect("stats");
            assert_eq!(before, after, "a refused free({off:#x}) changed the heap");
        }
    }

    fn garbage(&self, inp: &mut Bytes<'_>) -> u64 {
        let k = inp.u8();
        let v = inp.u64();
        let near = self
            .pick_live(&mut Bytes(&v.to_le_bytes()[..2]))
            .unwrap_or(self.data_off);
        let usable = self.live.get(&near).map_or(PAGE_SIZE, |b| b.usable);
        let data = self.data_end - self.data_off;
        match k % 8 {
            0 => v,
            1 => near + 1 + (v >> 16) % 15,
            2 => near + [8, 16, 32, 4096][(v >> 16) as usize % 4],
            3 => near + usable,
            4 => self.data_off + (v >> 16) % data,
            5 => self.heap_off + ((v >> 16) % (self.data_off - self.heap_off)) / 8 * 8,
            6 => [
                0,
                u64::MAX,
                u64::MAX - 7,
                self.data_off,
                self.data_off - 8,
                self.data_end,
                self.data_end - PAGE_SIZE,
                MAX_ALLOC,
                self.seg.max_size(),
                near.wrapping_sub(PAGE_SIZE),
            ][(v >> 16) as usize % 10],
            _ => self.data_off + ((v >> 16) % (data / PAGE_SIZE)) * PAGE_SIZE,
        }
    }

    fn realloc(&mut self, h: usize, inp: &mut Bytes<'_>) {
        let Some(off) = self.pick_live(inp) else {
            return;
        };
        let (size, align) = (pick_valid_size(inp), pick_valid_align(inp));
        let heap = self.heaps[h];
        let old = self.live[&off];
        // The documented rule: a block that fits without wasting half of it stays.
        let want = size as u64;
        let in_place = want <= old.usable && want * 2 > old.usable && off % align as u64 == 0;
        let r = timed("realloc", || heap.realloc_raw(off, size, align));
        match r {
            Ok(new) if new == off => {
                assert!(
                    in_place,
                    "realloc({off:#x}, {size}, {align}) of {old:?} returned the same offset \
                     without fitting in place; its state now: {:?}",
                    heap.state(off)
                );
                check_stamp(heap, off, old.size, old.stamp, old.size.min(size));
                let usable = heap.usable_size(off).expect("usable");
                assert!(usable >= want, "realloc in place to {size}: {usable}");
                self.stamps += 1;
                let b = self.live.get_mut(&off).expect("live");
                b.size = size;
                b.stamp = self.stamps;
                write_stamp(heap, off, size, self.stamps);
            }
            Ok(new) => {
                assert!(
                    !in_place,
                    "realloc({off:#x}, {size}, {align}) moved a block that fits"
                );
                self.live.remove(&off);
                self.remember_freed(off);
                self.purge_dead();
                let usable = heap.usable_size(new).unwrap_or(0);
                assert!(
                    usable >= want,
                    "realloc to {size} returned {new:#x}+{usable}"
                );
                check_stamp(heap, new, old.size, old.stamp, old.size.min(size));
                self.admit(heap, new, size, align, Holder::Handle(h));
            }
            Err(e) => {
                self.purge_dead();
                let still = self.live.contains_key(&off);
                match e {
                    // The old block is untouched, unless it was a dead handle's and
                    // the recovery before giving up reclaimed it.
                    Error::OutOfMemory { .. } if still => {
                        check_stamp(heap, off, old.size, old.stamp, usize::MAX);
                    }
                    Error::OutOfMemory { .. } => {}
                    // A dead handle's block, reclaimed by the recovery of the
                    // allocation inside: gone before realloc could free it.
                    Error::BadBlock { .. } if !still && matches!(old.holder, Holder::Dead(_)) => {}
                    e => panic!("realloc({off:#x}, {size}, {align}) of {old:?}: {e}"),
                }
            }
        }
    }

    fn publish(&mut self, h: usize, inp: &mut Bytes<'_>) {
        let Some(off) = self.pick_live(inp) else {
            return;
        };
        let heap = self.heaps[h];
        let holder = self.live[&off].holder;
        let r = heap.publish(off);
        if holder == Holder::Handle(h) {
            r.unwrap_or_else(|e| panic!("publish of own block {off:#x}: {e}"));
            self.live.get_mut(&off).expect("live").holder = Holder::Shared;
        } else {
            assert!(
                matches!(r, Err(Error::BadBlock { .. })),
                "publish by {h} of {holder:?} block {off:#x}: {r:?}"
            );
        }
        let want = self.state_of(self.live[&off].holder);
        assert_eq!(heap.state(off).ok(), Some(want), "state of {off:#x}");
    }

    fn adopt(&mut self, h: usize, inp: &mut Bytes<'_>) {
        let Some(off) = self.pick_live(inp) else {
            return;
        };
        let heap = self.heaps[h];
        let holder = self.live[&off].holder;
        let r = heap.adopt(off);
        if holder == Holder::Shared {
            r.unwrap_or_else(|e| panic!("adopt of shared block {off:#x}: {e}"));
            self.live.get_mut(&off).expect("live").holder = Holder::Handle(h);
        } else {
            assert!(
                matches!(r, Err(Error::BadBlock { .. })),
                "adopt by {h} of {holder:?} block {off:#x}: {r:?}"
            );
        }
        let want = self.state_of(self.live[&off].holder);
        assert_eq!(heap.state(off).ok(), Some(want), "state of {off:#x}");
    }

    /// A third handle allocates, keeps, publishes, frees and caches blocks, then
    /// dies (without giving its cache back: that is what a kill leaves).
    fn crash_third(&mut self, inp: &mut Bytes<'_>) {
        if self.crashes >= MAX_CRASHES {
            return;
        }
        self.crashes += 1;
        let seg3 = self.seg.try_clone().expect("a third handle");
        let tag = seg3.owner_tag();
        let h3 = Heap::attach(&seg3).expect("attach the third handle");
        // Its process-local cache, as the model's: dropped, never flushed.
        let cache = Cache::default();
        for _ in 0..1 + inp.u8() % 6 {
            if self.live.len() >= MAX_LIVE {
                break;
            }
            let (size, align) = (pick_valid_size(inp), pick_valid_align(inp));
            let r = timed("alloc", || h3.alloc_raw(size, align));
            self.purge_dead();
            let Some(off) = expect_alloc(r, size, align) else {
                continue;
            };
            self.admit(&h3, off, size, align, Holder::Dead(tag));
            match inp.u8() % 4 {
                0 => {} // dies owning it
                1 => {
                    h3.publish(off).expect("publish");
                    self.live.get_mut(&off).expect("live").holder = Holder::Shared;
                }
                2 => {
                    // Freed into its cache: dies with it cached.
                    let b = self.live.remove(&off).expect("live");
                    match h3.mem.locate(off) {
                        Some(loc) => {
                            free_small(&h3.mem, &cache, off, loc, tag).expect("free into a cache");
                        }
                        None => {
                            let page = (off - self.data_off) / PAGE_SIZE;
                            let ow = h3
                                .mem
                                .word(h3.mem.lay.ow_off + 8 * page)
                                .expect("large owner word");
                            ow.compare_exchange(
                                BlockState::Owned(tag).to_word(),
                                BlockState::Cached(tag).to_word(),
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            )
                            .expect("a large block we own");
                        }
                    }
                    self.dead_cached.push((off, b.usable, tag));
                }
                _ => {
                    self.live.remove(&off);
                    h3.free(off).expect("free");
                    self.remember_freed(off);
                }
            }
        }
        // Its own cache goes back first (its Drop then has nothing to do); the blocks
        // in `cache` stay Cached(tag), as a killed process's would.
        h3.flush().expect("flush");
        // SAFETY: no guard taken through `seg3` is alive: every heap call returned.
        unsafe { seg3.simulate_crash_now() };
        drop(h3);
        drop(cache);
        drop(seg3);
    }

    /// Reclaims the dead handles' blocks: exactly those the model knows of.
    fn reclaim(&mut self, h: usize) {
        self.purge_dead();
        let owned = self
            .live
            .values()
            .filter(|b| matches!(b.holder, Holder::Dead(_)))
            .count();
        let want = (owned + self.dead_cached.len()) as u64;
        let r = timed("reclaim_dead", || self.heaps[h].reclaim_dead())
            .unwrap_or_else(|e| panic!("reclaim_dead: {e}"));
        assert_eq!(
            (r.blocks, r.unlisted),
            (want, 0),
            "reclaim_dead returned {r:?}, the dead held {owned} owned and {} cached",
            self.dead_cached.len()
        );
        self.live
            .retain(|_, b| !matches!(b.holder, Holder::Dead(_)));
        self.dead_cached.clear();
    }

    /// `verify` is clean and agrees with the model; every stamp is intact.
    fn check(&mut self) {
        let a = self.heaps[0];
        let r = timed("verify", || a.verify());
        assert!(r.is_clean() && r.quiescent, "{r}");
        assert_eq!(r.stats.used, self.used(), "used bytes");
        let shared: u64 = self
            .live
            .values()
            .filter(|b| b.holder == Holder::Shared)
            .map(|b| b.usable)
            .sum();
        assert_eq!(r.stats.shared, shared, "shared bytes");
        for (&off, b) in &self.live {
            check_stamp(a, off, b.size, b.stamp, usize::MAX);
        }
    }

    fn step(&mut self, inp: &mut Bytes<'_>) {
        let op = inp.u8();
        let h = usize::from(op >> 7);
        match op % 16 {
            0..=3 => self.alloc(h, inp),
            4 | 5 => self.free(h, inp),
            6 => {
                let off = self.garbage(inp);
                self.bad_free(h, off);
            }
            7 => {
                if !self.freed.is_empty() {
                    let off = self.freed[usize::from(inp.u8()) % self.freed.len()];
                    self.bad_free(h, off);
                }
            }
            8 => self.realloc(h, inp),
            9 => self.publish(h, inp),
            10 => self.adopt(h, inp),
            11 => timed("flush", || self.heaps[h].flush()).expect("flush"),
            12 => {
                timed("trim", || self.heaps[h].trim()).expect("trim");
            }
            13 => self.crash_third(inp),
            // Both walk every block of the heap: a few per case keep cases fast.
            14 if self.walks < MAX_WALKS => {
                self.walks += 1;
                self.reclaim(h);
            }
            15 if self.walks < MAX_WALKS => {
                self.walks += 1;
                self.check();
            }
            _ => self.free(h, inp),
        }
    }

    /// Frees everything: the heap is back where it started, with every page free.
    fn finish(mut self) {
        self.check();
        self.reclaim(0);
        let [a, b] = self.heaps;
        for (off, blk) in std::mem::take(&mut self.live) {
            check_stamp(a, off, blk.size, blk.stamp, usize::MAX);
            a.free(off)
                .unwrap_or_else(|e| panic!("free of live block {off:#x} ({blk:?}): {e}"));
        }
        a.flush().expect("flush");
        b.flush().expect("flush");
        timed("trim", || a.trim()).expect("trim");
        let r = a.verify();
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.stats.used, 0, "used bytes after freeing everything");
        // Every page is free again: the whole data area is one block.
        let whole = (self.data_end - self.data_off) as usize;
        let off = a
            .alloc_raw(whole, 8)
            .unwrap_or_else(|e| panic!("after freeing everything, alloc of all {whole}: {e}\n{r}"));
        a.free(off).expect("free");
        a.flush().expect("flush");
        let r = a.verify();
        assert!(r.is_clean() && r.stats.used == 0, "{r}");
    }
}

/// Bytes as a sequence of heap operations by two handles (alloc with any size and
/// alignment, free, free of garbage offsets, double free, realloc, publish and
/// adopt, flush, trim, the death of a third handle holding blocks, reclaim_dead)
/// on a [`OPS_HEAP`]-byte heap segment, checked against a model: live blocks never
/// overlap and keep their contents, refused frees are `BadBlock` and change
/// nothing, running out is `OutOfMemory`, `verify` is clean and agrees with the
/// model, and freeing everything gives every page back.
///
/// # Panics
///
/// Only if the heap breaks one of those promises (that is the bug a fuzzer finds).
pub fn heap_ops(data: &[u8]) {
    let seg = SegmentOptions::heap()
        .max_size(OPS_HEAP)
        .create()
        .expect("a heap segment");
    let peer = seg.try_clone().expect("a second handle");
    let a = Heap::attach(&seg).expect("attach");
    let b = Heap::attach(&peer).expect("attach the second handle");
    let mut ops = Ops::new(&seg, [&a, &b], [seg.owner_tag(), peer.owner_tag()]);
    let mut inp = Bytes(data);
    for i in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        ops.step(&mut inp);
        if i % VERIFY_EVERY == VERIFY_EVERY - 1 {
            ops.check();
        }
    }
    ops.finish();
}

/// A word of heap metadata that [`heap_corrupt`] may overwrite.
#[derive(Copy, Clone, Debug)]
struct Target {
    /// Segment offset (8-aligned).
    off: u64,
    /// Part of a lock: never given a value that may name a live handle (see
    /// [`poke_value`]).
    lock: bool,
}

/// What the setup of a [`heap_corrupt`] case left, for the corruption and the
/// operations to aim at.
struct Known {
    /// Blocks allocated (by either handle, or the dead one), published included.
    live: Vec<u64>,
    /// Offsets freed.
    freed: Vec<u64>,
    /// Blocks on the free lists.
    listed: Vec<u64>,
    /// First pages of the spans.
    spans: Vec<u64>,
    /// Owner tag of the dead third handle.
    dead: OwnerTag,
    /// Every metadata word the corruption may hit.
    targets: Vec<Target>,
    data_off: u64,
    data_end: u64,
    npages: u64,
}

impl Known {
    fn offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.live
            .iter()
            .chain(&self.freed)
            .chain(&self.listed)
            .chain(&self.spans)
            .copied()
            .chain([self.data_off, self.data_end - PAGE_SIZE])
    }

    fn offset(&self, pick: u64) -> u64 {
        let n = self.offsets().count() as u64;
        self.offsets()
            .nth((pick % n) as usize)
            .unwrap_or(self.data_off)
    }
}

/// Builds a heap with something of everything: spans of several classes, blocks
/// owned by two live handles, published blocks, free lists, cached blocks, a
/// cached and a released large run, and a dead handle's owned and cached blocks.
fn corrupt_setup(seg: &Segment, a: &Heap, b: &Heap, knobs: u8) -> Known {
    let mut live = Vec::new();
    let mut freed = Vec::new();
    // Classes with few blocks per span (128 at most): the walks of every block in
    // `verify` and `reclaim_dead` stay cheap, under miri too (heap_ops covers the
    // spans of thousands of tiny blocks).
    let small = [512usize, 1000, 3000, 9000, 30000];
    for (i, &s) in small.iter().enumerate() {
        let h = if i % 3 == 2 { b } else { a };
        for _ in 0..4 {
            live.push(h.alloc_raw(s, 8).expect("setup alloc"));
        }
    }
    let large: Vec<u64> = [40usize << 10, 100 << 10, 300 << 10, 60 << 10]
        .iter()
        .map(|&s| a.alloc_raw(s, 8).expect("setup alloc"))
        .collect();
    live.extend(&large);
    // Half the small blocks back: into the caches, and (flushed) onto the lists.
    for i in (0..small.len() * 4).step_by(2).rev() {
        let off = live.swap_remove(i);
        let h = if (i / 4) % 3 == 2 { b } else { a };
        h.free(off).expect("setup free");
        freed.push(off);
    }
    if knobs & 1 == 0 {
        a.flush().expect("setup flush");
    }
    // A cached large run (100 KiB) and a released one (300 KiB).
    for off in [large[1], large[2]] {
        live.retain(|&o| o != off);
        a.free(off).expect("setup free");
        freed.push(off);
    }
    if knobs & 2 == 0 {
        a.publish(live[0]).expect("setup publish");
    }
    // A third handle dies holding an owned small block, a cached one, and an owned
    // large block.
    let seg3 = seg.try_clone().expect("a third handle");
    let dead = seg3.owner_tag();
    {
        let h3 = Heap::attach(&seg3).expect("attach");
        let cache = Cache::default();
        let x = h3.alloc_raw(512, 8).expect("setup alloc");
        let y = h3.alloc_raw(512, 8).expect("setup alloc");
        let z = h3.alloc_raw(50 << 10, 8).expect("setup alloc");
        let loc = h3.mem.locate(y).expect("small block");
        free_small(&h3.mem, &cache, y, loc, dead).expect("free into a cache");
        live.extend([x, z]);
        freed.push(y);
        h3.flush().expect("setup flush");
        // SAFETY: no guard taken through `seg3` is alive.
        unsafe { seg3.simulate_crash_now() };
    }
    drop(seg3);
    if knobs & 4 != 0 {
        a.trim().expect("setup trim");
    }
    let mem = &a.mem;
    let lay = mem.lay;
    let runs = a.runs().expect("setup runs");
    let spans: Vec<u64> = runs
        .iter()
        .filter(|r| r.kind == RUN_SPAN)
        .map(|r| lay.data_off + r.start * PAGE_SIZE)
        .collect();
    let mut listed = Vec::new();
    for c in 0..CLASSES {
        let mut n = 0;
        walk(mem, mem.head(c), c, 1 << 20, |blk| {
            listed.push(blk);
            n += 1;
            n < 6
        })
        .expect("setup lists");
    }
    // The targets: the header body's words, the tables' words below the break, the
    // spans' first owner words, and the link words of listed blocks.
    let base = seg.as_ptr() as usize;
    let at = |p: *const u8| (p as usize - base) as u64;
    let hdr = mem.hdr();
    let mut targets = Vec::new();
    let mut words = |start: u64, bytes: usize, lock: bool| {
        for i in 0..(bytes / 8) as u64 {
            targets.push(Target {
                off: start + 8 * i,
                lock,
            });
        }
    };
    words(at(std::ptr::from_ref(&hdr.magic).cast()), 16, false);
    words(at(std::ptr::from_ref(&hdr.layout).cast()), 40, false);
    words(at(std::ptr::from_ref(&hdr.brk).cast()), 8, false);
    words(at(std::ptr::from_ref(&hdr.hwm).cast()), 8, false);
    words(at(std::ptr::from_ref(&hdr.free_pages).cast()), 8, false);
    let journal = std::ptr::from_ref(&hdr.journal);
    words(at(journal.cast()), size_of_val(&hdr.journal), false);
    let page_lock = std::ptr::from_ref(&hdr.page_lock);
    words(at(page_lock.cast()), size_of_val(&hdr.page_lock), true);
    // The transfer lock: its state, futex words and the first reader entries.
    let transfer = std::ptr::from_ref(&hdr.transfer);
    words(at(transfer.cast()), 24 + 8 * 4, true);
    for line in &hdr.heads {
        words(at(std::ptr::from_ref(&line.head).cast()), 8, false);
    }
    // Table words: the first, second and last page of each run (a run's interior
    // pages repeat its descriptor), and the two pages at the break.
    let brk = runs.last().map_or(0, |r| r.start + r.len);
    let mut pages: Vec<u64> = runs
        .iter()
        .flat_map(|r| [r.start, r.start + 1, r.start + r.len - 1])
        .chain([brk, brk + 1])
        .filter(|&p| p < lay.npages)
        .collect();
    pages.sort_unstable();
    pages.dedup();
    for p in pages {
        words(lay.pd_off + 8 * p, 8, false);
        words(lay.ow_off + 8 * p, 8, false);
    }
    for r in runs.iter().filter(|r| r.kind == RUN_SPAN) {
        let span = lay.data_off + r.start * PAGE_SIZE;
        let blocks = GEOMETRY[r.class].blocks;
        for i in (0..blocks.min(6)).chain([blocks - 1]) {
            words(span + 8 * i, 8, false);
        }
    }
    for &blk in &listed {
        words(blk, 16, false);
    }
    // Last (so the indices above stay those of the existing corpus): the heap
    // header's state word, which a fresh attach must find READY or refuse.
    words(lay.heap_off, 8, false);
    Known {
        live,
        freed,
        listed,
        spans,
        dead,
        targets,
        data_off: lay.data_off,
        data_end: lay.data_off + lay.npages * PAGE_SIZE,
        npages: lay.npages,
    }
}

/// One overwrite of a metadata word: which, with what kind of value.
#[derive(Copy, Clone, Debug)]
struct Poke {
    target: usize,
    kind: u8,
    raw: u64,
}

/// The value [`Poke`] `p` writes over `cur`, the word's current value.
fn poke_value(
    k: &Known,
    p: Poke,
    lock: bool,
    cur: u64,
    tags: [OwnerTag; 2],
    word: impl Fn(usize) -> u64,
) -> u64 {
    let live = tags[(p.raw & 1) as usize];
    let raw = p.raw;
    let mut kind = p.kind % 20;
    if lock && matches!(kind, 14..=19) {
        // Values made from the word itself or another word could name a live
        // holder (a live handle's reader entry with a bumped count, a live tag
        // copied from an owner word): such a lock is held, and waiting for it is
        // the known hang reported separately (`heap_lock_forgery`).
        kind = 0;
    }
    match kind {
        0 => raw,
        1 => 0,
        2 => u64::MAX,
        3 => 1 << 63,
        4 => FREE_WORD,
        5 => BlockState::Shared.to_word(),
        6 if !lock => BlockState::Owned(live).to_word(),
        7 if !lock => BlockState::Cached(live).to_word(),
        6 | 8 => BlockState::Owned(k.dead).to_word(),
        7 | 9 => BlockState::Cached(k.dead).to_word(),
        10 => {
            let delta = [0, 0, 0, 8, 16, 4096, (-8i64) as u64, (-16i64) as u64];
            k.offset(raw).wrapping_add(delta[(raw >> 32) as usize % 8])
        }
        11 => Tagged::new(k.offset(raw) / 16 * 16, (raw >> 32) as u32).map_or(raw, Tagged::to_bits),
        12 => {
            // A run descriptor: kind, class, first page, length.
            let kind = 1 + raw % 3;
            let class = if kind == RUN_SPAN {
                (raw >> 8) % CLASSES as u64
            } else {
                0
            };
            let start = (raw >> 16) % (k.npages + 2);
            let len = 1 + (raw >> 40) % 80;
            (kind << 62) | (class << 56) | (start << 32) | len
        }
        13 => raw % (k.npages + 4),
        14 => cur ^ (1 << (raw % 64)),
        15 => cur.wrapping_add(raw as i8 as u64),
        16 => (k.offset(raw) & ((1 << 48) - 1)) | ((raw >> 48) << 48),
        17 => word((raw % k.targets.len() as u64) as usize),
        18 => (cur & !0xffff_ffff) | (raw & 0xffff_ffff),
        _ => {
            let shift = (raw >> 8) % 8 * 8;
            (cur & !(0xff << shift)) | ((raw & 0xff) << shift)
        }
    }
}

/// A block a heap call handed out under corruption must still lie in the data
/// pages, aligned; the harness then writes its first and last words, as a user
/// would (whole words: see [`stamp_ranges`]).
fn check_handed_out(k: &Known, heap: &Heap, off: u64, size: usize, align: usize) {
    let end = off.checked_add(size as u64);
    assert!(
        off >= k.data_off && end.is_some_and(|e| e <= k.data_end),
        "a block handed out under corruption, {off:#x}+{size}, is outside the data pages \
         [{:#x}, {:#x})",
        k.data_off,
        k.data_end
    );
    assert_eq!(
        off % align as u64,
        0,
        "block {off:#x} is not {align}-aligned"
    );
    let p = heap.mem.ptr(off);
    let last = (size - 1) / 8 * 8;
    // SAFETY: [off, off + size rounded up to 8) lies in the data pages (checked
    // above; off is 16-aligned and the data pages end on a page), inside the
    // mapping; the heap says the block is ours.
    unsafe {
        p.cast::<u64>().write(0xa5a5_a5a5_a5a5_a5a5);
        p.add(last).cast::<u64>().write(0x5a5a_5a5a_5a5a_5a5a);
    }
}

/// `usable_size` (and so `ptr`) must describe memory inside the data pages.
fn check_extent(k: &Known, heap: &Heap, off: u64) {
    if let Ok(u) = heap.usable_size(off) {
        assert!(
            off >= k.data_off && off.checked_add(u).is_some_and(|e| e <= k.data_end),
            "usable_size({off:#x}) = {u:#x}: the block reaches outside the data pages \
             [{:#x}, {:#x})",
            k.data_off,
            k.data_end
        );
    }
}

/// One operation on a corrupted heap: anything but a panic, a hang or a memory
/// error is fine.
fn corrupt_step(k: &mut Known, seg: &Segment, heaps: [&Heap; 2], op: u8, inp: &mut Bytes<'_>) {
    let heap = heaps[usize::from(op >> 7)];
    match op % 12 {
        0 => {
            let r = timed("verify", || heap.verify());
            let _ = std::hint::black_box(r.to_string());
        }
        1 => {
            let _ = timed("stats", || heap.stats());
        }
        2 | 3 => {
            let (size, align) = (pick_valid_size(inp), pick_valid_align(inp));
            if let Ok(off) = timed("alloc", || heap.alloc_raw(size, align)) {
                check_handed_out(k, heap, off, size, align);
                k.live.push(off);
            }
        }
        4 => {
            let off = k.offset(inp.u64());
            let _ = timed("free", || heap.free(off));
        }
        5 => {
            let off = match inp.u8() % 3 {
                0 => inp.u64(),
                1 => k.offset(inp.u64()).wrapping_add(u64::from(inp.u8())),
                _ => k.data_off + inp.u64() % (k.data_end - k.data_off),
            };
            let _ = timed("free", || heap.free(off));
        }
        6 => {
            let off = k.offset(inp.u64());
            let (size, align) = (pick_valid_size(inp), pick_valid_align(inp));
            check_extent(k, heap, off);
            if let Ok(new) = timed("realloc", || heap.realloc_raw(off, size, align)) {
                check_handed_out(k, heap, new, size, align);
                k.live.push(new);
            }
        }
        7 => {
            let _ = timed("reclaim_dead", || heap.reclaim_dead());
        }
        8 => {
            let _ = timed("trim", || heap.trim());
        }
        9 => {
            let _ = timed("flush", || heap.flush());
        }
        10 => {
            let off = k.offset(inp.u64());
            let _ = heap.state(off);
            check_extent(k, heap, off);
            let _ = heap.ptr(off);
            let _ = if inp.u8() & 1 == 0 {
                heap.publish(off)
            } else {
                heap.adopt(off)
            };
        }
        _ => fresh_handle(k, seg, inp, true),
    }
}

/// A new handle attaches to the corrupted heap and uses it.
fn fresh_handle(k: &mut Known, seg: &Segment, inp: &mut Bytes<'_>, verify: bool) {
    let Ok(peer) = seg.try_clone() else {
        return;
    };
    let Ok(h) = timed("attach", || Heap::attach(&peer)) else {
        return;
    };
    if verify {
        let _ = timed("verify", || h.verify());
    }
    let (size, align) = (pick_valid_size(inp), pick_valid_align(inp));
    if let Ok(off) = timed("alloc", || h.alloc_raw(size, align)) {
        check_handed_out(k, &h, off, size, align);
        let _ = timed("free", || h.free(off));
    }
    let off = k.offset(inp.u64());
    let _ = timed("free", || h.free(off));
    timed("drop", || drop(h));
}

/// Every entry point once more, whatever the bytes chose: allocations of every
/// kind (small, large, more than is free), frees of valid, freed and garbage
/// offsets, reallocs, the walks, and a fresh handle.
fn corrupt_tail(k: &mut Known, seg: &Segment, heaps: [&Heap; 2]) {
    let [a, b] = heaps;
    let r = timed("verify", || a.verify());
    let _ = std::hint::black_box(r.to_string());
    let _ = timed("stats", || a.stats());
    for (size, align) in [
        (700, 8),
        (1000, 64),
        (5000, 4096),
        (40 << 10, 8),
        (200 << 10, 8),
        (CORRUPT_HEAP as usize / 2, 8),
        (CORRUPT_HEAP as usize, 8),
    ] {
        if let Ok(off) = timed("alloc", || a.alloc_raw(size, align)) {
            check_handed_out(k, a, off, size, align);
            k.live.push(off);
        }
    }
    let valid: Vec<u64> = k.live.iter().take(6).copied().collect();
    for (i, &off) in valid.iter().enumerate() {
        check_extent(k, a, off);
        let _ = a.state(off);
        let _ = if i % 2 == 0 {
            a.publish(off)
        } else {
            b.adopt(off)
        };
        let size = [16, 3000, 100 << 10][i % 3];
        if let Ok(new) = timed("realloc", || heaps[i % 2].realloc(off, size, 8)) {
            check_handed_out(k, heaps[i % 2], new.get(), size, 8);
            let _ = timed("free", || a.free(new));
        }
    }
    let garbage = [k.data_off + 8, k.data_end, u64::MAX, 0];
    for off in k.freed.iter().take(4).copied().chain(garbage) {
        let _ = timed("free", || b.free(off));
    }
    for (i, off) in k.live.clone().into_iter().enumerate() {
        let _ = timed("free", || heaps[i % 2].free(off));
    }
    let _ = timed("reclaim_dead", || a.reclaim_dead());
    let _ = timed("trim", || a.trim());
    for h in heaps {
        let _ = timed("flush", || h.flush());
    }
    if let Ok(off) = timed("alloc", || b.alloc_raw(300 << 10, 8)) {
        check_handed_out(k, b, off, 300 << 10, 8);
        let _ = timed("free", || b.free(off));
    }
    fresh_handle(k, seg, &mut Bytes(&[]), false);
}

/// Builds a heap, overwrites metadata words as `pokes` say, and runs operations
/// from `inp` and then every entry point once more. `exact`: the pokes' targets
/// are indices into the target list (false if one is out of range, and nothing
/// runs) rather than taken modulo its length.
fn corrupt_case(knobs: u8, pokes: &[Poke], inp: &mut Bytes<'_>, exact: bool) -> bool {
    let seg = SegmentOptions::heap()
        .max_size(CORRUPT_HEAP)
        .create()
        .expect("a heap segment");
    let peer = seg.try_clone().expect("a second handle");
    let a = Heap::attach(&seg).expect("attach");
    let b = Heap::attach(&peer).expect("attach the second handle");
    let mut k = corrupt_setup(&seg, &a, &b, knobs);
    let tags = [seg.owner_tag(), peer.owner_tag()];
    let n = k.targets.len();
    let word = |i: usize| {
        a.mem
            .word(k.targets[i].off)
            .expect("targets are committed heap words")
    };
    for &p in pokes {
        if exact && p.target >= n {
            return false;
        }
        let t = k.targets[p.target % n];
        let w = word(p.target % n);
        let v = poke_value(&k, p, t.lock, w.load(Ordering::Relaxed), tags, |i| {
            word(i).load(Ordering::Relaxed)
        });
        if std::env::var_os("SHMKIT_FUZZ_TRACE").is_some() {
            eprintln!(
                "poke {p:?} -> target {} {t:?} (rel to heap {:#x}): {:#x} -> {v:#x}",
                p.target % n,
                t.off - a.mem.lay.heap_off,
                w.load(Ordering::Relaxed)
            );
        }
        w.store(v, Ordering::Relaxed);
    }
    let heaps = [&a, &b];
    for _ in 0..MAX_CORRUPT_OPS {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8();
        corrupt_step(&mut k, &seg, heaps, op, inp);
    }
    corrupt_tail(&mut k, &seg, heaps);
    timed("drop", || drop(b));
    timed("drop", || drop(a));
    true
}

/// Builds a heap with something of everything (spans of several classes, free
/// lists, cached and released large runs, published blocks, a dead handle's
/// blocks), overwrites heap metadata words (header, journal, locks, free-list
/// heads, page descriptors, large owner words, span owner words, link words of
/// free blocks) with values chosen by `data`, then calls every entry point
/// (`verify`, `stats`, `alloc`, `free` of valid and garbage offsets, `realloc`,
/// `reclaim_dead`, `trim`, `flush`, a fresh attach) as `data` says and once more
/// each. Every call must return, `Ok` or `Err`: never panic, hang or touch memory
/// outside the segment; blocks handed out must lie in the heap's data pages.
///
/// With `SHMKIT_FUZZ_TRACE` set in the environment, each overwrite is printed
/// (target, old and new value): how to read a crashing input.
///
/// # Panics
///
/// Only if the heap breaks those promises.
pub fn heap_corrupt(data: &[u8]) {
    let mut inp = Bytes(data);
    let knobs = inp.u8();
    let pokes: Vec<Poke> = (0..1 + inp.u8() % MAX_POKES)
        .map(|_| Poke {
            target: usize::from(inp.u16()),
            kind: inp.u8(),
            raw: inp.u64(),
        })
        .collect();
    corrupt_case(knobs, &pokes, &mut inp, false);
}

/// The deterministic sweep's case: metadata word `target` (an index into the
/// harness's target list) overwritten with a value of `kind` (1: 0, 2: `u64::MAX`,
/// 3: `1 << 63`, 10: a valid-looking block offset; see [`heap_corrupt`]), then
/// every entry point called once. Returns false if `target` is past the list.
///
/// # Panics
///
/// As [`heap_corrupt`].
pub fn heap_corrupt_word(target: usize, kind: u8) -> bool {
    let poke = Poke {
        target,
        kind,
        raw: 0,
    };
    corrupt_case(0, &[poke], &mut Bytes(&[]), true)
}

/// A regression case (found by the heap_corrupt fuzzer, fixed): heap calls took the
/// page lock and the transfer lock without a deadline, so a lock word that a peer
/// (or stray write) made name a live process blocked them forever; now they give up
/// after `LOCK_WAIT` with an error. `which` 0: the page lock's word names the
/// second handle, then the first allocates a large block (its pages come from the
/// page level: waits in `Mutex::lock_for`); 1: the second handle's reader entry in
/// the transfer lock shows one share, then the first calls `reclaim_dead` (waits
/// in `RwLock::write_for`). Returns what the blocked call returned (a timeout
/// error naming the lock, after the wait: the word names a live process).
///
/// # Errors
///
/// The blocked call's: [`Error::LockTimeout`] naming the lock.
///
/// # Panics
///
/// If setting the case up fails.
pub fn heap_lock_forgery(which: u8) -> Result<()> {
    let seg = SegmentOptions::heap()
        .max_size(CORRUPT_HEAP)
        .create()
        .expect("a heap segment");
    let peer = seg.try_clone().expect("a second handle");
    let a = Heap::attach(&seg).expect("attach");
    let b = Heap::attach(&peer).expect("attach the second handle");
    // The second handle takes and releases a read share once (its reader entry
    // then carries its incarnation).
    let off = b.alloc_raw(64, 8).expect("alloc");
    b.free(off).expect("free");
    b.flush().expect("flush");
    let hdr = a.mem.hdr();
    let base = seg.as_ptr() as usize;
    let at = |p: *const u8| (p as usize - base) as u64;
    if which == 0 {
        let w = a
            .mem
            .word(at(std::ptr::from_ref(&hdr.page_lock).cast()))
            .expect("lock word");
        w.store(peer.owner_tag().bits(), Ordering::Relaxed);
        // A small block would come from the free list the second handle filled,
        // without the page lock.
        a.alloc_raw(100 << 10, 8).map(drop)
    } else {
        // RwLock: state, seq, _reserved1, drain, _reserved, then one reader entry
        // per slot (24 bytes in).
        let entry = at(std::ptr::from_ref(&hdr.transfer).cast()) + 24 + 8 * u64::from(peer.slot());
        let w = a.mem.word(entry).expect("reader entry");
        let v = w.load(Ordering::Relaxed);
        assert_ne!(v, 0, "the second handle's reader entry is set");
        w.store(v | 1, Ordering::Relaxed);
        a.reclaim_dead().map(drop)
    }
}

/// A regression case (found by the heap_ops model, fixed: realloc now takes the
/// block over before allocating): `realloc` of a large block owned
/// by a dead handle, on a full heap. Its allocation runs out of memory, recovers
/// space by reclaiming dead handles' blocks, which frees the very block being
/// reallocated, and gets its pages back: the "new" block is the old one. `realloc`
/// then copies the block onto itself (`copy_nonoverlapping` with overlapping
/// ranges: undefined behaviour; debug builds abort on it) and frees it, returning
/// `Ok` with the offset of a block that is free.
///
/// Returns realloc's answer and, if it is a block, that block's state afterwards
/// (which should be owned by the caller).
///
/// # Panics
///
/// If setting the case up fails.
pub fn heap_realloc_of_a_reclaimed_block() -> (Result<u64>, Option<Result<BlockState>>) {
    let seg = SegmentOptions::heap()
        .max_size(CORRUPT_HEAP)
        .create()
        .expect("a heap segment");
    let a = Heap::attach(&seg).expect("attach");
    let seg3 = seg.try_clone().expect("a third handle");
    let h3 = Heap::attach(&seg3).expect("attach");
    // The third handle's block comes first; then the heap is filled to the brim
    // (while the third handle lives, so recovery finds nothing to reclaim).
    let old = h3.alloc_raw(256 << 10, 8).expect("alloc");
    let mut fill = Vec::new();
    for size in [256 << 10, 16 << 10, 4 << 10] {
        while let Ok(off) = a.alloc_raw(size, 8) {
            fill.push(off);
        }
    }
    h3.flush().expect("flush");
    // SAFETY: no guard taken through `seg3` is alive.
    unsafe { seg3.simulate_crash_now() };
    drop(h3);
    drop(seg3);
    // Half the size: not in place; 32 pages, which only the dead block's pages
    // can give once reclaimed.
    let r = a.realloc(old, 128 << 10, 8).map(|o| o.get());
    let state = r.as_ref().ok().map(|&new| a.state(new));
    (r, state)
}
