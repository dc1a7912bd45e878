//! Model-based test of the shared heap: random sequences of operations from three
//! handles of one heap-backed segment, applied to the heap and to a plain model (a
//! `HashMap` of live blocks: requested size, stamp seed, owner), compared after
//! every operation.
//!
//! * `A` and `B` are two "processes" (handles with their own registry slots); `C` is
//!   a third that crashes now and then (`simulate_crash_now`, its heap handle
//!   leaked as a killed process's would be) and is replaced by a fresh handle.
//! * Operations: alloc (size log-uniform 1 B … 256 KiB, random alignment), free,
//!   realloc, publish, hand-off (publish by the owner, adopt by the other), flush,
//!   trim, C's crash followed by `reclaim_dead`, and `reclaim_dead` with nobody
//!   dead.
//! * After every operation: no two live blocks overlap, every block's stamp is
//!   intact, its state is the model's, `verify` is clean and `used` is exactly the
//!   usable bytes of the model's blocks. At the end, freeing everything brings
//!   `used` back to its start.
//!
//! Heap-backed segment only: this runs under miri too, with few, short cases,
//! sizes of 1 KiB … 64 KiB, and `verify` at the end of each case only: it walks
//! every block of every span, which costs miri about 10-30 ms a block
//! (`cargo +nightly miri test --test prop_heap`).

use std::collections::HashMap;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use shmkit::alloc::{BlockState, Heap};
use shmkit::{Error, OwnerTag, Segment, SegmentOptions};

/// Sizes asked for are 2^MIN_LOG … 2^MAX_LOG bytes (log-uniform).
const MIN_LOG: f64 = if cfg!(miri) { 10.0 } else { 0.0 };
const MAX_LOG: f64 = if cfg!(miri) { 16.0 } else { 18.0 };
/// Largest block asked for.
const MAX_BLOCK: usize = if cfg!(miri) { 64 << 10 } else { 256 << 10 };
/// Handles C may go through in one case (the last one never crashes).
const C_HANDLES: usize = 4;

/// 64 cases (15-25 s in a debug build here), 4 under miri; `PROPTEST_CASES` overrides
/// it for a longer hunt.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok());
    ProptestConfig {
        cases: cases.unwrap_or(if cfg!(miri) { 4 } else { 64 }),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn ops_len() -> std::ops::Range<usize> {
    if cfg!(miri) { 1..16 } else { 1..64 }
}

/// Room for every live block of the longest sequence (all allocations at the
/// maximum size), with spans and fragmentation to spare.
fn segment() -> Segment {
    SegmentOptions::heap()
        .max_size(if cfg!(miri) { 12 << 20 } else { 40 << 20 })
        .committed(64 << 10)
        .create()
        .unwrap()
}

// ---------------------------------------------------------------------------------
// Stamps.
// ---------------------------------------------------------------------------------

/// Distinct starting points in the pattern (a prime).
const SHIFTS: u64 = 4093;

/// A fixed pseudo-random byte pattern; a block's stamp is a slice of it.
fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        // Eight bytes at a time (xorshift64*), which miri runs in a second or two.
        let words = (MAX_BLOCK + SHIFTS as usize).div_ceil(8);
        let mut p = Vec::with_capacity(words * 8);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..words {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            p.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        p
    })
}

fn stamp_of(seed: u64, len: usize) -> &'static [u8] {
    &pattern()[(seed % SHIFTS) as usize..][..len]
}

fn stamp(heap: &Heap, off: u64, len: usize, seed: u64) {
    assert!(len as u64 <= heap.usable_size(off).unwrap());
    let dst = heap.ptr(off).unwrap();
    // SAFETY: the block is allocated and at least `len` bytes long (checked above);
    // this single-threaded test is the only writer; the pattern is process memory.
    unsafe { std::ptr::copy_nonoverlapping(stamp_of(seed, len).as_ptr(), dst.as_ptr(), len) };
}

/// Whether the first `len` bytes of block `off` hold the stamp of `seed`.
fn intact(heap: &Heap, off: u64, len: usize, seed: u64) -> bool {
    assert!(len as u64 <= heap.usable_size(off).unwrap());
    let p = heap.ptr(off).unwrap();
    // SAFETY: as in `stamp`; nothing writes the block while the slice lives.
    let got = unsafe { std::slice::from_raw_parts(p.as_ptr(), len) };
    got == stamp_of(seed, len)
}

// ---------------------------------------------------------------------------------
// Dead handles.
// ---------------------------------------------------------------------------------

/// Heap handles of simulated dead processes, leaked on purpose (a killed process
/// runs no destructor, so its cached blocks stay `Cached(dead)`), kept reachable so
/// that miri's leak check does not flag them. Never dereferenced.
static DEAD_HANDLES: std::sync::Mutex<Vec<DeadHandle>> = std::sync::Mutex::new(Vec::new());

struct DeadHandle(#[allow(dead_code)] *mut ());

// SAFETY: the pointer is only kept, never dereferenced, in any thread.
unsafe impl Send for DeadHandle {}

fn bury(heap: Heap) {
    let p = Box::into_raw(Box::new(heap)).cast::<()>();
    DEAD_HANDLES.lock().unwrap().push(DeadHandle(p));
}

// ---------------------------------------------------------------------------------
// Operations and the model.
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Who {
    A,
    B,
    C,
}

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        who: Who,
        size: usize,
        align: usize,
    },
    /// Free a live block (whoever holds it).
    Free {
        block: Index,
        via: Who,
    },
    /// Realloc a live block (the new one is `via`'s if it moves).
    Realloc {
        block: Index,
        size: usize,
        align: usize,
        via: Who,
    },
    /// Publish a block (by its owner); it stays shared.
    Publish {
        block: Index,
    },
    /// The owner publishes, `to` adopts.
    HandOff {
        block: Index,
        to: Who,
    },
    Flush(Who),
    Trim,
    /// C dies; A reclaims what it held.
    CrashC,
    /// Nobody died since the last reclaim: nothing comes back.
    Reclaim,
}

/// Log-uniform 1 B … 256 KiB (1 KiB … 64 KiB under miri).
fn size() -> impl Strategy<Value = usize> {
    (MIN_LOG..MAX_LOG).prop_map(|x| (2f64.powf(x) as usize).clamp(1, MAX_BLOCK))
}

fn align() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => Just(8usize),
        2 => (0u32..=4).prop_map(|s| 1usize << s),
        1 => (5u32..=12).prop_map(|s| 1usize << s),
    ]
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![Just(Who::A), Just(Who::B), Just(Who::C)]
}

fn a_or_b() -> impl Strategy<Value = Who> {
    prop_oneof![Just(Who::A), Just(Who::B)]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        8 => (who(), size(), align()).prop_map(|(who, size, align)| Op::Alloc { who, size, align }),
        4 => (any::<Index>(), who()).prop_map(|(block, via)| Op::Free { block, via }),
        3 => (any::<Index>(), size(), align(), who())
            .prop_map(|(block, size, align, via)| Op::Realloc { block, size, align, via }),
        1 => any::<Index>().prop_map(|block| Op::Publish { block }),
        3 => (any::<Index>(), a_or_b()).prop_map(|(block, to)| Op::HandOff { block, to }),
        1 => who().prop_map(Op::Flush),
        1 => Just(Op::Trim),
        1 => Just(Op::CrashC),
        1 => Just(Op::Reclaim),
    ];
    proptest::collection::vec(op, ops_len())
}

fn bad<T>(r: shmkit::Result<T>) -> bool {
    matches!(r, Err(Error::BadBlock { .. }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    Owned(Who),
    Shared,
}

#[derive(Clone, Copy, Debug)]
struct Block {
    size: usize,
    seed: u64,
    holder: Holder,
}

struct World<'s> {
    seg: &'s Segment,
    a: Heap,
    b: Heap,
    b_tag: OwnerTag,
    c_segs: &'s [Segment],
    /// Index of the live C handle in `c_segs`.
    c_at: usize,
    c: Option<Heap>,
    /// The model: offset → block.
    live: HashMap<u64, Block>,
    seeds: u64,
}

impl<'s> World<'s> {
    fn heap(&self, who: Who) -> &Heap {
        match who {
            Who::A => &self.a,
            Who::B => &self.b,
            Who::C => self.c.as_ref().unwrap_or(&self.a),
        }
    }

    /// Who an operation by `who` really acts as (C's ops fall to A once every C
    /// handle has died).
    fn actor(&self, who: Who) -> Who {
        if who == Who::C && self.c.is_none() {
            Who::A
        } else {
            who
        }
    }

    fn tag(&self, who: Who) -> OwnerTag {
        match who {
            Who::A => self.seg.owner_tag(),
            Who::B => self.b_tag,
            Who::C => self.c_segs[self.c_at].owner_tag(),
        }
    }

    fn state_of(&self, h: Holder) -> BlockState {
        match h {
            Holder::Owned(w) => BlockState::Owned(self.tag(w)),
            Holder::Shared => BlockState::Shared,
        }
    }

    /// The live block `i` picks (in offset order, so that cases replay).
    fn pick(&self, i: Index) -> Option<(u64, Block)> {
        if self.live.is_empty() {
            return None;
        }
        let mut offs: Vec<u64> = self.live.keys().copied().collect();
        offs.sort_unstable();
        let off = offs[i.index(offs.len())];
        Some((off, self.live[&off]))
    }

    fn next_seed(&mut self) -> u64 {
        self.seeds += 1;
        self.seeds * 7919
    }

    /// The heap agrees with the model: states, sizes, stamps, no overlap, a clean
    /// verify, and `used` = the model's usable bytes (the last two natively only
    /// unless `walk`).
    fn check(&self, start: u64, step: usize, op: &Op, walk: bool) -> Result<(), TestCaseError> {
        let mut offs: Vec<u64> = self.live.keys().copied().collect();
        offs.sort_unstable();
        let mut end_of_previous = 0;
        let mut usable_total = 0;
        for off in offs {
            let b = self.live[&off];
            let usable = self.a.usable_size(off);
            prop_assert!(
                usable.is_ok(),
                "step {} {:?}: {:#x}: {:?}",
                step,
                op,
                off,
                usable
            );
            let usable = usable.unwrap();
            prop_assert!(usable >= b.size as u64);
            prop_assert!(
                off >= end_of_previous,
                "step {} {:?}: block {:#x} overlaps the one before (ending {:#x})",
                step,
                op,
                off,
                end_of_previous
            );
            end_of_previous = off + usable;
            usable_total += usable;
            prop_assert_eq!(
                self.a.state(off).unwrap(),
                self.state_of(b.holder),
                "step {} {:?}: block {:#x}",
                step,
                op,
                off
            );
            prop_assert!(
                intact(&self.a, off, b.size, b.seed),
                "step {} {:?}: block {:#x} ({} bytes) was overwritten",
                step,
                op,
                off,
                b.size
            );
        }
        if !walk {
            return Ok(());
        }
        let r = self.a.verify();
        prop_assert!(r.is_clean(), "step {} {:?}: {}", step, op, r);
        prop_assert!(r.quiescent);
        prop_assert_eq!(
            r.stats.used,
            start + usable_total,
            "step {} {:?}: used is not the model's blocks",
            step,
            op
        );
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Alloc { who, size, align } => {
                let who = self.actor(who);
                let h = self.heap(who);
                let off = h.alloc(size, align).unwrap().get();
                prop_assert_eq!(off % align as u64, 0);
                let seed = self.next_seed();
                stamp(self.heap(who), off, size, seed);
                let old = self.live.insert(
                    off,
                    Block {
                        size,
                        seed,
                        holder: Holder::Owned(who),
                    },
                );
                prop_assert!(old.is_none(), "{:#x} handed out twice", off);
            }
            Op::Free { block, via } => {
                let Some((off, _)) = self.pick(block) else {
                    return Ok(());
                };
                let h = self.heap(self.actor(via));
                h.free(off).unwrap();
                prop_assert!(bad(h.free(off)), "a double free of {:#x} was accepted", off);
                self.live.remove(&off);
            }
            Op::Realloc {
                block,
                size,
                align,
                via,
            } => {
                let Some((off, b)) = self.pick(block) else {
                    return Ok(());
                };
                let via = self.actor(via);
                let new = self.heap(via).realloc(off, size, align).unwrap().get();
                prop_assert_eq!(new % align as u64, 0);
                let keep = b.size.min(size);
                prop_assert!(
                    intact(&self.a, new, keep, b.seed),
                    "realloc {:#x} -> {:#x} lost the contents",
                    off,
                    new
                );
                self.live.remove(&off);
                let holder = if new == off {
                    b.holder
                } else {
                    prop_assert!(
                        matches!(self.a.usable_size(off), Err(Error::BadBlock { .. })),
                        "the old block {:#x} is still allocated",
                        off
                    );
                    Holder::Owned(via)
                };
                let seed = self.next_seed();
                stamp(&self.a, new, size, seed);
                let old = self.live.insert(new, Block { size, seed, holder });
                prop_assert!(old.is_none(), "{:#x} handed out twice", new);
            }
            Op::Publish { block } => {
                let Some((off, b)) = self.pick(block) else {
                    return Ok(());
                };
                match b.holder {
                    Holder::Owned(w) => {
                        self.heap(w).publish(off).unwrap();
                        self.live.get_mut(&off).unwrap().holder = Holder::Shared;
                    }
                    Holder::Shared => {
                        let r = self.a.publish(off);
                        prop_assert!(bad(r), "a shared block {:#x} published again", off);
                    }
                }
            }
            Op::HandOff { block, to } => {
                let Some((off, b)) = self.pick(block) else {
                    return Ok(());
                };
                if let Holder::Owned(w) = b.holder {
                    // Not published yet: nobody adopts it.
                    let r = self.heap(to).adopt(off);
                    prop_assert!(matches!(r, Err(Error::BadBlock { .. })), "{:?}", r);
                    if w != to {
                        let r = self.heap(to).publish(off);
                        prop_assert!(matches!(r, Err(Error::BadBlock { .. })), "{:?}", r);
                    }
                    self.heap(w).publish(off).unwrap();
                    let r = self.heap(w).publish(off);
                    prop_assert!(matches!(r, Err(Error::BadBlock { .. })), "{:?}", r);
                }
                self.heap(to).adopt(off).unwrap();
                let r = self.heap(to).adopt(off);
                prop_assert!(matches!(r, Err(Error::BadBlock { .. })), "{:?}", r);
                self.live.get_mut(&off).unwrap().holder = Holder::Owned(to);
            }
            Op::Flush(who) => self.heap(who).flush().unwrap(),
            Op::Trim => {
                self.a.trim().unwrap();
            }
            Op::CrashC => self.crash_c()?,
            Op::Reclaim => {
                let r = self.a.reclaim_dead().unwrap();
                prop_assert_eq!(r, Default::default(), "nobody died since the last reclaim");
            }
        }
        Ok(())
    }

    /// C dies holding what it holds; A reclaims exactly that; a new C takes over.
    fn crash_c(&mut self) -> Result<(), TestCaseError> {
        let Some(c) = self.c.take() else {
            return Ok(());
        };
        let tag = self.tag(Who::C);
        let (blocks, bytes) = self
            .live
            .iter()
            .filter(|(_, b)| b.holder == Holder::Owned(Who::C))
            .fold((0, 0), |(n, sum), (&off, _)| {
                (n + 1, sum + self.a.usable_size(off).unwrap())
            });
        bury(c);
        let seg = &self.c_segs[self.c_at];
        // SAFETY: no guard taken through this handle is alive: the heap takes and
        // releases its locks within each call, and the handle was just buried.
        unsafe { seg.simulate_crash_now() };
        let s = self.a.stats().unwrap();
        let dead = s.owners.iter().find(|o| o.owner == tag);
        let (cached_blocks, cached_bytes) = match dead {
            Some(o) => {
                prop_assert!(!o.alive, "{:?}", o);
                prop_assert_eq!((o.owned_blocks, o.owned_bytes), (blocks, bytes));
                (o.cached_blocks, o.cached_bytes)
            }
            None => {
                prop_assert_eq!(blocks, 0);
                (0, 0)
            }
        };
        let r = self.a.reclaim_dead().unwrap();
        prop_assert_eq!(r.blocks, blocks + cached_blocks, "{:?}", r);
        prop_assert_eq!(r.bytes, bytes + cached_bytes, "{:?}", r);
        prop_assert_eq!(r.unlisted, 0);
        if r.blocks > 0 {
            prop_assert_eq!(r.owners, vec![tag]);
        }
        self.live.retain(|_, b| b.holder != Holder::Owned(Who::C));
        if self.c_at + 1 < self.c_segs.len() {
            self.c_at += 1;
            self.c = Some(Heap::attach(&self.c_segs[self.c_at]).unwrap());
        }
        Ok(())
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let seg = segment();
    let seg_b = seg.try_clone().unwrap();
    let c_segs: Vec<Segment> = (0..C_HANDLES).map(|_| seg.try_clone().unwrap()).collect();
    let a = Heap::attach(&seg).unwrap();
    let start = a.stats().unwrap().used;
    let mut w = World {
        seg: &seg,
        a,
        b: Heap::attach(&seg_b).unwrap(),
        b_tag: seg_b.owner_tag(),
        c_segs: &c_segs,
        c_at: 0,
        c: Some(Heap::attach(&c_segs[0]).unwrap()),
        live: HashMap::new(),
        seeds: 0,
    };
    for (step, op) in ops.iter().enumerate() {
        w.apply(op)?;
        w.check(start, step, op, !cfg!(miri) || step + 1 == ops.len())?;
    }
    // Free everything (through A, whoever holds it): back to where we started.
    let mut offs: Vec<u64> = w.live.keys().copied().collect();
    offs.sort_unstable();
    for off in offs {
        let b = w.live.remove(&off).unwrap();
        prop_assert!(intact(&w.a, off, b.size, b.seed));
        w.a.free(off).unwrap();
    }
    prop_assert_eq!(w.a.stats().unwrap().used, start);
    w.a.flush().unwrap();
    w.b.flush().unwrap();
    if let Some(c) = &w.c {
        c.flush().unwrap();
    }
    w.a.trim().unwrap();
    let r = w.a.verify();
    prop_assert!(r.is_clean(), "{}", r);
    prop_assert_eq!(r.stats.used, start);
    prop_assert!(
        r.stats
            .owners
            .iter()
            .all(|o| o.owned_blocks == 0 && o.alive),
        "{:?}",
        r.stats.owners
    );
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_heap_behaves_like_its_model(ops in ops()) {
        run(&ops)?;
    }
}
