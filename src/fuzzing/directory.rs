//! The directory with arbitrary bytes in its words ([`directory_corrupt`]): every
//! directory call returns `Ok` or an error, never panics, hangs or hands out
//! memory outside the segment.

// Objects of the std atomic types are what users store (the loom shim is the
// library's own business).
#![allow(clippy::disallowed_types)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::{Bytes, timed};
use crate::alloc::{BlockState, Heap};
use crate::directory::inspect::{
    self, CREATING, E_CREATOR, E_STATE, ENTRY_MAGIC, EntryBlock, Parts, W_GENERATION, W_JOURNAL,
    W_LIVE, W_USED,
};
use crate::sync::{Condvar, Event, EventKind, Mutex, RwLock, Semaphore};
use crate::{Result, Segment, SegmentOptions, Shared, ShmObject};

/// Size of the heap segment of a [`directory_corrupt`] case.
pub const DIR_HEAP: u64 = 512 << 10;
/// Registry slots of that segment (room for the crowd below and the others).
const SLOTS: u32 = 16;
/// Attachments that hold `n` at once: more than an entry's inline holders, so
/// that it gets an overflow holder block.
const CROWD: usize = 9;
/// Objects created to make the table grow past its first size (`knobs & 2`).
const FILLERS: u32 = 40;
/// Most words one case overwrites.
const MAX_POKES: u8 = 12;
/// Most directory calls after the corruption in one case.
const MAX_OPS: usize = 32;
/// Most handles a case keeps at once.
const MAX_HELD: usize = 16;

/// The object types of a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Mutex,
    Mutex32,
    RwLock,
    Atomic,
    Atomic32,
    Sem,
    Event,
    Condvar,
}

const KINDS: [Kind; 8] = [
    Kind::Mutex,
    Kind::Mutex32,
    Kind::RwLock,
    Kind::Atomic,
    Kind::Atomic32,
    Kind::Sem,
    Kind::Event,
    Kind::Condvar,
];

/// A handle on an object of any of the kinds.
enum Held {
    Mutex(Shared<Mutex<u64>>),
    Mutex32(Shared<Mutex<u32>>),
    RwLock(Shared<RwLock<u64>>),
    Atomic(Shared<AtomicU64>),
    Atomic32(Shared<AtomicU32>),
    Sem(Shared<Semaphore>),
    Event(Shared<Event>),
    Condvar(Shared<Condvar>),
}

macro_rules! each {
    ($held:expr, $h:ident => $e:expr) => {
        match $held {
            Held::Mutex($h) => $e,
            Held::Mutex32($h) => $e,
            Held::RwLock($h) => $e,
            Held::Atomic($h) => $e,
            Held::Atomic32($h) => $e,
            Held::Sem($h) => $e,
            Held::Event($h) => $e,
            Held::Condvar($h) => $e,
        }
    };
}

fn size<T>(_: &Shared<T>) -> u64
where
    T: ShmObject,
{
    size_of::<T>() as u64
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (off, len) = self.extent();
        let kind = each!(self, h => h.name());
        write!(f, "{kind:?} at {off:#x}+{len}")
    }
}

impl Held {
    /// The object's extent: (offset, bytes).
    fn extent(&self) -> (u64, u64) {
        each!(self, h => (h.offset().get(), size(h)))
    }

    /// The value the setup wrote (only read from objects nothing overwrote).
    fn value(&self) -> u64 {
        match self {
            Held::Mutex(h) => *h.try_lock().expect("an untouched mutex is free"),
            Held::Mutex32(h) => u64::from(*h.try_lock().expect("an untouched mutex is free")),
            Held::RwLock(h) => *h
                .read_for(std::time::Duration::from_secs(1))
                .expect("an untouched lock is free"),
            Held::Atomic(h) => h.load(Ordering::Relaxed),
            Held::Atomic32(h) => u64::from(h.load(Ordering::Relaxed)),
            Held::Sem(h) => u64::from(h.available()),
            Held::Event(h) => u64::from(h.is_set()),
            Held::Condvar(_) => 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Find,
    Create,
    FindOrCreate,
    FindOrCreateWith,
}

fn call<T: ShmObject>(
    seg: &Segment,
    mode: Mode,
    name: &str,
    cfg: T::Config,
    init: impl FnOnce(&T),
) -> Result<Shared<T>> {
    let dir = seg.directory();
    match mode {
        Mode::Find => dir.find::<T>(name),
        Mode::Create => dir.create::<T>(name, cfg),
        Mode::FindOrCreate => dir.find_or_create::<T>(name, cfg),
        Mode::FindOrCreateWith => dir.find_or_create_with::<T>(name, cfg, init),
    }
}

/// Opens `name` as `kind` (configuration `pick`) in `mode` through `seg`.
fn open(seg: &Segment, mode: Mode, name: &str, kind: Kind, pick: u8) -> Result<Held> {
    let ev = if pick & 1 == 0 {
        EventKind::AutoReset
    } else {
        EventKind::ManualReset
    };
    Ok(match kind {
        Kind::Mutex => Held::Mutex(call(seg, mode, name, (), |_| {})?),
        Kind::Mutex32 => Held::Mutex32(call(seg, mode, name, (), |_| {})?),
        Kind::RwLock => Held::RwLock(call(seg, mode, name, (), |_| {})?),
        Kind::Atomic => Held::Atomic(call(seg, mode, name, (), |a: &AtomicU64| {
            a.store(u64::from(pick), Ordering::Relaxed);
        })?),
        Kind::Atomic32 => Held::Atomic32(call(seg, mode, name, (), |_| {})?),
        Kind::Sem => Held::Sem(call(seg, mode, name, u32::from(pick % 4), |_| {})?),
        Kind::Event => Held::Event(call(seg, mode, name, ev, |e: &Event| e.set())?),
        Kind::Condvar => Held::Condvar(call(seg, mode, name, (), |_| {})?),
    })
}

/// An object of the setup: name, kind, the value written into it.
#[derive(Clone, Debug)]
struct Obj {
    name: String,
    kind: Kind,
    value: u64,
}

/// What the setup built, for the corruption and the checks to aim at.
struct Setup {
    parts: Parts,
    /// The linked objects (the entries of `parts` with a bucket), by name.
    objs: Vec<Obj>,
    /// Handles held by A (the case's segment) and B: (name, handle).
    held: Vec<(String, Held)>,
    /// Owner words of live (A, B) and dead attachments.
    live_tags: [u64; 2],
    dead_tags: Vec<u64>,
    /// Root word 0 of the built directory (its magic).
    dir_magic: u64,
}

/// Builds a directory with something of everything: objects of every kind made
/// by A, by B and by a creator that has detached since, handles held by A and B,
/// an object held by more attachments than an entry records inline (an overflow
/// holder block), removed objects still held (by A, by B, and by a dead
/// attachment only), a tombstone, and with `knobs & 2` enough objects for the
/// table to have grown once; with `knobs & 4`, `reclaim` ran.
fn setup(a: &Segment, b: &Segment, knobs: u8) -> Setup {
    let mut objs = Vec::new();
    let mut held = Vec::new();
    let mut obj = |name: &str, kind, value| {
        objs.push(Obj {
            name: name.into(),
            kind,
            value,
        });
    };
    let m = a.create::<Mutex<u64>>("m", ()).expect("setup");
    *m.lock().expect("setup") = 7;
    obj("m", Kind::Mutex, 7);
    held.push(("m".to_string(), Held::Mutex(m)));
    let n = a.create::<AtomicU64>("n", ()).expect("setup");
    n.store(42, Ordering::Relaxed);
    obj("n", Kind::Atomic, 42);
    held.push(("n".to_string(), Held::Atomic(n)));
    let s = b.create::<Semaphore>("s", 3).expect("setup");
    obj("s", Kind::Sem, 3);
    held.push(("s".to_string(), Held::Sem(s)));
    a.create::<Event>("e", EventKind::ManualReset)
        .expect("setup")
        .set();
    obj("e", Kind::Event, 1);
    drop(a.create::<Condvar>("cv", ()).expect("setup"));
    obj("cv", Kind::Condvar, 0);
    // A creator that detaches: its entries name a dead creator.
    let p = a.try_clone().expect("setup");
    let mut dead_tags = vec![p.owner_tag().bits()];
    *p.create::<RwLock<u64>>("rw", ())
        .expect("setup")
        .write()
        .expect("setup") = 5;
    obj("rw", Kind::RwLock, 5);
    p.create::<AtomicU32>("c32", ())
        .expect("setup")
        .store(32, Ordering::Relaxed);
    obj("c32", Kind::Atomic32, 32);
    drop(p);
    if knobs & 1 == 0 {
        // Nine more holders of `n` (with A, one more than fit inline), all
        // attached at once, then gone: dead holds, one in the overflow block.
        let crowd: Vec<Segment> = (0..CROWD).map(|_| a.try_clone().expect("setup")).collect();
        for c in &crowd {
            assert!(inspect::hold_without_handle(c, "n").expect("setup"));
            dead_tags.push(c.owner_tag().bits());
        }
    }
    // Removed while held: by A, by B, by a dead attachment only.
    let ga = a.create::<AtomicU64>("gone-a", ()).expect("setup");
    a.directory().remove("gone-a").expect("setup");
    held.push(("gone-a".to_string(), Held::Atomic(ga)));
    let gb = b.create::<Mutex<u32>>("gone-b", ()).expect("setup");
    b.directory().remove("gone-b").expect("setup");
    held.push(("gone-b".to_string(), Held::Mutex32(gb)));
    let d = a.try_clone().expect("setup");
    drop(d.create::<Condvar>("gone-d", ()).expect("setup"));
    assert!(inspect::hold_without_handle(&d, "gone-d").expect("setup"));
    a.directory().remove("gone-d").expect("setup");
    dead_tags.push(d.owner_tag().bits());
    d.simulate_crash();
    // A tombstone.
    drop(a.create::<AtomicU64>("t", ()).expect("setup"));
    a.directory().remove("t").expect("setup");
    if knobs & 2 != 0 {
        for i in 0..FILLERS {
            let name = format!("f{i}");
            a.create::<AtomicU32>(&name, ())
                .expect("setup")
                .store(i, Ordering::Relaxed);
            obj(&name, Kind::Atomic32, u64::from(i));
        }
    }
    if knobs & 4 != 0 {
        a.directory().reclaim().expect("setup");
    }
    let parts = inspect::parts(a).expect("setup parts");
    let dir_magic = word(a, parts.root);
    Setup {
        parts,
        objs,
        held,
        live_tags: [a.owner_tag().bits(), b.owner_tag().bits()],
        dead_tags,
        dir_magic,
    }
}

/// Where a word the corruption may hit lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Root word `i`.
    Root(u64),
    /// Bucket `i` of the table.
    Table(usize),
    /// The head, name or type name of entry `k` of [`Parts::entries`].
    Entry(usize),
    /// The holder overflow block of entry `k`.
    More(usize),
}

#[derive(Clone, Copy, Debug)]
struct Target {
    off: u64,
    part: Part,
}

fn targets(p: &Parts) -> Vec<Target> {
    let mut t = Vec::new();
    assert_eq!(p.root, p.root_lock + inspect::ROOT_LOCK);
    // Not the root lock's words: a forged lock word naming a live process makes
    // every call wait for the lock's timeout (a separate matter).
    for i in 0..inspect::ROOT / 8 {
        t.push(Target {
            off: p.root + 8 * i,
            part: Part::Root(i),
        });
    }
    for i in 0..p.buckets as usize {
        t.push(Target {
            off: p.table + 8 * i as u64,
            part: Part::Table(i),
        });
    }
    for (k, e) in p.entries.iter().enumerate() {
        // Whole words before the object (the object's own bytes are the user's).
        for i in 0..(e.obj - e.off) / 8 {
            t.push(Target {
                off: e.off + 8 * i,
                part: Part::Entry(k),
            });
        }
        for i in 0..e.more_len / 8 {
            t.push(Target {
                off: e.more + 8 * i,
                part: Part::More(k),
            });
        }
    }
    t
}

fn word(seg: &Segment, off: u64) -> u64 {
    // SAFETY: `off` is an 8-aligned word of a directory block or of the root,
    // inside the committed heap of this case's segment, which this thread alone
    // uses; the directory reads these words by plain copies.
    unsafe { seg.as_ptr().add(off as usize).cast::<u64>().read() }
}

fn set_word(seg: &Segment, off: u64, v: u64) {
    // SAFETY: as in `word`; no directory call is running.
    unsafe { seg.as_ptr().add(off as usize).cast::<u64>().write(v) };
}

/// One overwrite: which target, what kind of value.
#[derive(Copy, Clone, Debug)]
struct Poke {
    target: u16,
    kind: u8,
    raw: u64,
}

/// The value `p` writes over `cur`.
fn poke_value(s: &Setup, seg: &Segment, t: &[Target], p: Poke, cur: u64) -> u64 {
    let raw = p.raw;
    let e = &s.parts.entries;
    let pick = |n: usize| (raw >> 8) as usize % n.max(1);
    match p.kind % 16 {
        0 => raw,
        1 => 0,
        2 => u64::MAX,
        3 => 1 << 63,
        // States, journal operations, empty and tombstone buckets.
        4 => raw % 8,
        5 => {
            let blocks: Vec<u64> = e
                .iter()
                .map(|e| e.off)
                .chain(e.iter().filter(|e| e.more != 0).map(|e| e.more))
                .chain([s.parts.table])
                .collect();
            let delta = [0, 0, 0, 8, 16, 200, 4096, (-8i64) as u64, (-16i64) as u64];
            blocks[pick(blocks.len())].wrapping_add(delta[(raw >> 40) as usize % delta.len()])
        }
        // The bucket word of a linked entry.
        6 => match e.get(pick(e.len())).and_then(|e| e.bucket) {
            Some(i) => word(seg, s.parts.table + 8 * i as u64),
            None => raw,
        },
        7 => {
            let tags: Vec<u64> = s.live_tags.iter().chain(&s.dead_tags).copied().collect();
            tags[pick(tags.len())]
        }
        // Lengths: of names, type names, objects.
        8 => [
            0,
            1,
            8,
            255,
            256,
            1024,
            1025,
            4096,
            u64::from(u32::MAX),
            raw % 300,
        ][(raw >> 8) as usize % 10],
        9 => word(seg, t[pick(t.len())].off),
        10 => cur ^ (1 << (raw % 64)),
        11 => cur.wrapping_add(raw as i8 as u64),
        12 => {
            let shift = (raw >> 8) % 8 * 8;
            (cur & !(0xff << shift)) | ((raw & 0xff) << shift)
        }
        13 => (cur & !0xffff_ffff) | (raw & 0xffff_ffff),
        14 => [ENTRY_MAGIC, s.dir_magic][(raw & 1) as usize],
        _ => raw % 64,
    }
}

/// Keeps an overwrite of the root's generation clear of the known overflow (the
/// directory bumps it with unchecked arithmetic: see [`directory_root_counter`]).
fn tame(part: Part, v: u64) -> u64 {
    match part {
        Part::Root(W_GENERATION) => v % (1 << 32),
        _ => v,
    }
}

/// Removes what the corruption may leave that makes calls wait by design: an
/// entry `Creating` under a live creator (a `find` waits `CREATE_WAIT` for it).
fn defuse(seg: &Segment, s: &Setup) {
    let p = &s.parts;
    let starts = p
        .entries
        .iter()
        .flat_map(|e| [e.off, e.more])
        .chain([p.table])
        .filter(|&o| o != 0);
    for off in starts {
        if word(seg, off) == ENTRY_MAGIC
            && word(seg, off + E_STATE) == CREATING
            && inspect::alive(seg, word(seg, off + E_CREATOR))
        {
            set_word(seg, off + E_CREATOR, 0);
        }
    }
}

/// A handle handed out under corruption must name memory inside the segment.
fn check_held(seg: &Segment, h: &Held) {
    let (off, len) = h.extent();
    assert!(
        off >= seg.user_offset() && off.checked_add(len).is_some_and(|e| e <= seg.committed()),
        "a handle at {off:#x}+{len} lies outside the segment's heap"
    );
}

/// Whether any poke hit `part`.
fn hit(pokes: &[Part], part: Part) -> bool {
    pokes.contains(&part)
}

/// The linked entries that nothing overwrote on the way to them: their own
/// blocks, the buckets from their home to theirs and the entries linked there,
/// and the root.
fn untouched<'p>(p: &'p Parts, pokes: &[Part]) -> Vec<&'p EntryBlock> {
    if pokes.iter().any(|t| matches!(t, Part::Root(_))) {
        return Vec::new();
    }
    let at_bucket = |i: usize| p.entries.iter().position(|e| e.bucket == Some(i));
    p.entries
        .iter()
        .enumerate()
        .filter(|(k, e)| {
            let Some(b) = e.bucket else {
                return false;
            };
            if hit(pokes, Part::Entry(*k)) || hit(pokes, Part::More(*k)) {
                return false;
            }
            let mut i = e.home;
            loop {
                if hit(pokes, Part::Table(i)) {
                    return false;
                }
                if let Some(j) = at_bucket(i) {
                    if hit(pokes, Part::Entry(j)) {
                        return false;
                    }
                }
                if i == b {
                    return true;
                }
                i = (i + 1) % p.buckets as usize;
            }
        })
        .map(|(_, e)| e)
        .collect()
}

/// Whether `SHMKIT_FUZZ_TRACE` asks for each overwrite and call to be printed.
fn tracing() -> bool {
    static T: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *T.get_or_init(|| std::env::var_os("SHMKIT_FUZZ_TRACE").is_some())
}

/// Runs a call within the budget, printing it and its answer when tracing.
fn traced<T: std::fmt::Debug>(what: std::fmt::Arguments<'_>, f: impl FnOnce() -> T) -> T {
    let out = timed("a directory call", f);
    if tracing() {
        eprintln!("{what} -> {out:?}");
    }
    out
}

/// Names the operations pick from: the setup's, new ones, the longest allowed.
fn pick_name(inp: &mut Bytes<'_>) -> String {
    const POOL: [&str; 16] = [
        "m", "n", "s", "e", "cv", "rw", "c32", "gone-a", "gone-b", "gone-d", "t", "f0", "f39",
        "new-0", "new-1", "new-2",
    ];
    match inp.u8() {
        255 => "x".repeat(crate::MAX_OBJECT_NAME),
        k => POOL[usize::from(k) % POOL.len()].to_string(),
    }
}

/// One call on the corrupted directory through `seg`.
fn step(seg: &Segment, held: &mut Vec<(String, Held)>, op: u8, inp: &mut Bytes<'_>) {
    let dir = seg.directory();
    match op % 12 {
        0..=4 => {
            let mode = [
                Mode::Find,
                Mode::Find,
                Mode::Create,
                Mode::FindOrCreate,
                Mode::FindOrCreateWith,
            ][usize::from(op % 12)];
            let name = pick_name(inp);
            let kind = KINDS[usize::from(inp.u8()) % KINDS.len()];
            let pick = inp.u8();
            if let Ok(h) = traced(
                format_args!("{mode:?} {name:?} as {kind:?} ({pick}) via {}", seg.slot()),
                || open(seg, mode, &name, kind, pick),
            ) {
                check_held(seg, &h);
                if held.len() < MAX_HELD {
                    held.push((name, h));
                }
            }
        }
        5 | 6 => {
            let name = pick_name(inp);
            let _ = traced(format_args!("remove {name:?} via {}", seg.slot()), || {
                dir.remove(&name)
            });
        }
        7 => {
            if let Ok(list) = traced(format_args!("list via {}", seg.slot()), || dir.list()) {
                for i in &list {
                    assert!(
                        i.offset < seg.committed(),
                        "list: {:?} at {:#x} is outside the segment",
                        i.name,
                        i.offset
                    );
                }
            }
        }
        8 => {
            let _ = traced(format_args!("verify via {}", seg.slot()), || dir.verify());
        }
        9 => {
            let _ = traced(format_args!("reclaim via {}", seg.slot()), || dir.reclaim());
        }
        10 => {
            if !held.is_empty() {
                let i = usize::from(inp.u8()) % held.len();
                let h = held.swap_remove(i);
                let what = format!("drop {:?} {:?}", h.0, h.1);
                traced(format_args!("{what}"), || drop(h));
            }
        }
        _ => {
            // Another process comes, looks and goes.
            let Ok(peer) = seg.try_clone() else {
                return;
            };
            let name = pick_name(inp);
            let kind = KINDS[usize::from(inp.u8()) % KINDS.len()];
            let r = traced(
                format_args!("peer {}: find_or_create {name:?} as {kind:?}", peer.slot()),
                || open(&peer, Mode::FindOrCreate, &name, kind, 0),
            );
            if let Ok(h) = r {
                check_held(&peer, &h);
                timed("drop", || drop(h));
            }
            let _ = traced(format_args!("peer list"), || peer.directory().list());
            timed("detach", || drop(peer));
        }
    }
}

/// Builds a directory with something of everything (see [`setup`]), overwrites
/// up to 12 words of its root (not the root lock's), of its bucket table, of its
/// entries' heads, names and type names (linked and removed) and of a holder
/// overflow block with values chosen by `data`, then calls `find`, `create`,
/// `find_or_create(_with)`, `remove`, `list`, `verify` and `reclaim` through two
/// attachments and passing ones, and drops handles, as `data` says, and every
/// entry point once more.
///
/// Every call must return, `Ok` or `Err`, within the call budget; handles must
/// lie inside the segment; entries that nothing on their way was overwritten
/// (their block, the buckets from their home to theirs and the entries there, the
/// root) are still found, with their values; held objects whose own blocks (the
/// holder records) were not overwritten stay allocated, whatever the journal
/// says; the heap stays consistent.
///
/// Kept out of reach: the root lock's words (a forged holder makes calls wait for
/// the lock's timeout), an entry `Creating` under a live creator (waited for by
/// design), and a generation near overflow (the known bug of
/// [`directory_root_counter`]).
///
/// With `SHMKIT_FUZZ_TRACE` set, each overwrite and call is printed with its
/// answer: how to read a failing input.
///
/// # Panics
///
/// Only if the directory breaks those promises.
pub fn directory_corrupt(data: &[u8]) {
    let mut inp = Bytes(data);
    let knobs = inp.u8();
    let a = SegmentOptions::heap()
        .registry_slots(SLOTS)
        .max_size(DIR_HEAP)
        .create()
        .expect("a heap segment");
    let b = a.try_clone().expect("a second attachment");
    let mut s = setup(&a, &b, knobs);
    let t = targets(&s.parts);
    let mut hits = Vec::new();
    for _ in 0..1 + inp.u8() % MAX_POKES {
        let p = Poke {
            target: inp.u16(),
            kind: inp.u8(),
            raw: inp.u64(),
        };
        let tg = t[usize::from(p.target) % t.len()];
        let cur = word(&a, tg.off);
        let v = tame(tg.part, poke_value(&s, &a, &t, p, cur));
        if tracing() {
            eprintln!("poke {p:?} -> {tg:?}: {cur:#x} -> {v:#x}");
        }
        set_word(&a, tg.off, v);
        hits.push(tg.part);
    }
    defuse(&a, &s);
    // What nothing on its way touched is found as it was.
    for e in untouched(&s.parts, &hits) {
        let name = std::str::from_utf8(&e.name).expect("setup names are text");
        let o = s
            .objs
            .iter()
            .find(|o| o.name == name)
            .expect("a setup object");
        let h = timed("find", || open(&a, Mode::Find, name, o.kind, 0))
            .unwrap_or_else(|err| panic!("find {name:?}, untouched: {err}"));
        assert_eq!(h.extent().0, e.obj, "find {name:?}: another object");
        assert_eq!(h.value(), o.value, "find {name:?}: its value");
    }
    let segs = [&a, &b];
    let mut held = std::mem::take(&mut s.held);
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8();
        let seg = segs[usize::from(op >> 7)];
        step(seg, &mut held, op, &mut inp);
    }
    // Every entry point once more.
    for (i, o) in s.objs.iter().enumerate().take(12) {
        let r = traced(format_args!("tail: find {:?}", o.name), || {
            open(segs[i % 2], Mode::Find, &o.name, o.kind, 0)
        });
        if let Ok(h) = r {
            check_held(segs[i % 2], &h);
        }
    }
    for (i, mode) in [Mode::Create, Mode::FindOrCreate, Mode::FindOrCreateWith]
        .into_iter()
        .enumerate()
    {
        let name = format!("new-{i}");
        if let Ok(h) = traced(format_args!("tail: {mode:?} {name:?}"), || {
            open(&a, mode, &name, KINDS[i], 1)
        }) {
            check_held(&a, &h);
            held.push((name, h));
        }
    }
    let _ = traced(format_args!("tail: list"), || a.directory().list());
    let _ = traced(format_args!("tail: verify"), || a.directory().verify());
    let _ = traced(format_args!("tail: remove m"), || b.directory().remove("m"));
    let _ = traced(format_args!("tail: remove new-1"), || {
        a.directory().remove("new-1")
    });
    let _ = traced(format_args!("tail: reclaim"), || a.directory().reclaim());
    // Whatever the directory did with its words, it did through the heap's calls:
    // the heap is consistent.
    let heap = Heap::attach(&a).expect("attach");
    let r = timed("heap verify", || heap.verify());
    assert!(r.is_clean(), "the heap after the directory's calls: {r}");
    // A held object stays allocated unless its own holder records were
    // overwritten (they are all that says it is held), whatever the journal says.
    for (name, h) in &held {
        let at = h.extent().0;
        let Some((k, e)) = s
            .parts
            .entries
            .iter()
            .enumerate()
            .find(|(_, e)| e.obj == at && e.name == name.as_bytes())
        else {
            continue;
        };
        if hit(&hits, Part::Entry(k)) || hit(&hits, Part::More(k)) {
            continue;
        }
        assert_eq!(
            heap.state(e.off).ok(),
            Some(BlockState::Shared),
            "{name:?} (entry {:#x}, object {at:#x}) is held, yet its block was freed",
            e.off,
        );
    }
    drop(heap);
    while let Some((_, h)) = held.pop() {
        timed("drop", || drop(h));
    }
    let _ = timed("reclaim", || b.directory().reclaim());
    timed("detach", || drop(b));
    timed("detach", || drop(a));
}

/// A directory with one object (`a`) and one removed but held (`gone`), whose
/// root counter `which` (0: linked entries, 1: used buckets, 2: the
/// generation) is then set to `value`, as a stray write could, before `remove`,
/// `create` and `find_or_create` of fresh names run. Returns the calls' answers.
///
/// # Panics
///
/// If setting the case up fails; and (the bug this reproduces) where a call
/// overflows the counter: `remove` with 0 linked entries, `create` with a used
/// count past `u64::MAX / 4` (both saturate now), or any change with a
/// generation of `u64::MAX` (`generation += 1`).
pub fn directory_root_counter(which: u8, value: u64) -> Vec<Result<()>> {
    let word = [W_LIVE, W_USED, W_GENERATION][usize::from(which % 3)];
    let seg = SegmentOptions::heap()
        .registry_slots(SLOTS)
        .max_size(DIR_HEAP)
        .create()
        .expect("a heap segment");
    // No handle lives across the calls: a handle dropped while a panic unwinds
    // re-enters the directory, whose recovery panics again (an abort).
    drop(seg.create::<AtomicU64>("a", ()).expect("create"));
    drop(seg.create::<AtomicU64>("gone", ()).expect("create"));
    assert!(inspect::hold_without_handle(&seg, "gone").expect("hold"));
    seg.directory().remove("gone").expect("remove");
    let p = inspect::parts(&seg).expect("parts");
    set_word(&seg, p.root + 8 * word, value);
    let dir = seg.directory();
    vec![
        dir.remove("a"),
        dir.create::<AtomicU64>("b", ()).map(drop),
        dir.find_or_create::<AtomicU64>("c", ()).map(drop),
        dir.remove("b"),
    ]
}

/// A directory with `a` (held by this attachment) and `gone` (removed, held);
/// the root's journal is then made to name the block of `which` (0: `a`, 1:
/// `gone`) as operation `op` (1 link, 2 unlink, 4 table), as a stray write could,
/// and the next call takes the lock and recovers. Returns whether the held
/// object's entry block is still allocated afterwards (it should be: a block
/// that is reachable and held is never freed because a word looked wrong).
///
/// # Panics
///
/// If setting the case up fails.
pub fn directory_journal_names_a_held_entry(op: u64, which: u8) -> bool {
    let seg = SegmentOptions::heap()
        .registry_slots(SLOTS)
        .max_size(DIR_HEAP)
        .create()
        .expect("a heap segment");
    let a = seg.create::<AtomicU64>("a", ()).expect("create");
    let gone = seg.create::<AtomicU64>("gone", ()).expect("create");
    seg.directory().remove("gone").expect("remove");
    let p = inspect::parts(&seg).expect("parts");
    let name: &[u8] = if which == 0 { b"a" } else { b"gone" };
    let e = p.entries.iter().find(|e| e.name == name).expect("entry");
    set_word(&seg, p.root + 8 * W_JOURNAL, op);
    set_word(&seg, p.root + 8 * (W_JOURNAL + 1), e.off);
    for w in W_JOURNAL + 2..inspect::ROOT / 8 {
        set_word(&seg, p.root + 8 * w, 0);
    }
    let _ = seg.directory().list();
    let heap = Heap::attach(&seg).expect("attach");
    let kept = heap.state(e.off).ok() == Some(BlockState::Shared);
    drop(heap);
    // The handles' drops may now free what they name a second time: the heap
    // refuses that (BadBlock), and Drop ignores errors.
    drop(a);
    drop(gone);
    kept
}
