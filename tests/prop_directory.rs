//! Model-based test of the directory: random sequences of directory calls from
//! three attachments of one heap-backed segment, applied to the directory and to a
//! plain model (a `HashMap` of names to objects: type, configuration and the value
//! written through handles), compared after every operation.
//!
//! * `A` (attachment 0) lives for the whole case; `B` and `C` are other "processes"
//!   (`try_clone` attachments, their own registry slots) that now and then detach
//!   cleanly and come back as a new attachment (reopen), or die holding handles
//!   (their handles never dropped, `simulate_crash_now`), after which `A` reclaims the
//!   registry, the heap and the directory and a new attachment takes their place.
//! * Operations, over a pool of four names (one of 255 bytes) and six object types
//!   (`Mutex<u64>`, `RwLock<u64>`, `AtomicU64`, `Semaphore` with 0, 1 or 3 permits,
//!   `Event` of either kind, `Condvar`): `create`, `find`, `find_or_create`,
//!   `find_or_create_with` (whose `init` writes a value), a write through a held
//!   handle, `remove`, dropping a handle, reopen, crash, and `reclaim` with nobody
//!   dead.
//! * Each call's outcome is the model's: `Ok`, `NotFound`, `WrongType`,
//!   `WrongConfig` or `AlreadyExists`.
//! * After every operation: every held handle (removed objects' included) reads
//!   the value last written through any handle on its object; handles on distinct
//!   objects have distinct offsets; `find` of every name (through the attachment
//!   that acted) agrees with the model, in value and configuration, and `find` as
//!   another type is `WrongType`; `list` names exactly the model's names, with the
//!   model's holder counts; the directory's `verify` is clean and counts the
//!   model's entries and its removed-but-held objects; the heap's `verify` is
//!   clean. At the end, dropping every handle and removing every name gives the
//!   heap back all but the (empty) table.
//!
//! Heap-backed segment only: this runs under miri too, with few, short cases and
//! the heap's `verify` at the end of each case only (`MIRIFLAGS="-Zmiri-permissive-
//! provenance -Zmiri-disable-isolation" cargo +nightly miri test --test
//! prop_directory`).

// The model test stores `std::sync::atomic::AtomicU64` objects in the directory:
// the type users name (the loom shim is the library's own business).
#![allow(clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::sample::Index;
use shmkit::alloc::Heap;
use shmkit::sync::{Condvar, Event, EventKind, Mutex, RwLock, Semaphore};
use shmkit::{Directory, Error, Segment, SegmentOptions, Shared, ShmObject};

/// 128 cases (about 4 s in a debug build here), 4 under miri (about 2 min); `PROPTEST_CASES`
/// overrides it for a longer hunt.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok());
    ProptestConfig {
        cases: cases.unwrap_or(if cfg!(miri) { 4 } else { 128 }),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn ops_len() -> std::ops::Range<usize> {
    if cfg!(miri) { 1..12 } else { 1..48 }
}

/// Attachments: A (never dies), B, C.
const ATTACHMENTS: usize = 3;
/// Names in the pool.
const NAMES: usize = 4;

/// Name `i` of the pool: short, plain, non-ASCII, and the longest allowed.
fn name(i: usize) -> String {
    match i {
        0 => "a".into(),
        1 => "hits".into(),
        2 => "queue/über-ünïcode".into(),
        _ => "n".repeat(shmkit::MAX_OBJECT_NAME),
    }
}

fn segment() -> Segment {
    SegmentOptions::heap()
        .registry_slots(8)
        .max_size(512 << 10)
        .create()
        .unwrap()
}

// ---------------------------------------------------------------------------------
// Object types, configurations, handles.
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Mutex,
    RwLock,
    Atomic,
    Sem,
    Event,
    Condvar,
}

const KINDS: [Kind; 6] = [
    Kind::Mutex,
    Kind::RwLock,
    Kind::Atomic,
    Kind::Sem,
    Kind::Event,
    Kind::Condvar,
];

/// A configuration of any of the kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cfg {
    Unit,
    Permits(u32),
    Event(EventKind),
}

impl Cfg {
    /// Configuration `pick` of `kind` (the kinds configured by `()` have one).
    fn of(kind: Kind, pick: u8) -> Cfg {
        match kind {
            Kind::Sem => Cfg::Permits([0, 1, 3][usize::from(pick % 3)]),
            Kind::Event if pick % 2 == 0 => Cfg::Event(EventKind::AutoReset),
            Kind::Event => Cfg::Event(EventKind::ManualReset),
            _ => Cfg::Unit,
        }
    }

    fn permits(self) -> u32 {
        match self {
            Cfg::Permits(n) => n,
            _ => unreachable!("not a semaphore's configuration: {self:?}"),
        }
    }

    fn event(self) -> EventKind {
        match self {
            Cfg::Event(k) => k,
            _ => unreachable!("not an event's configuration: {self:?}"),
        }
    }

    /// The value of a fresh object of this configuration.
    fn initial(self) -> u64 {
        match self {
            Cfg::Permits(n) => u64::from(n),
            _ => 0,
        }
    }
}

/// A handle on an object of any kind.
enum Handle {
    Mutex(Shared<Mutex<u64>>),
    RwLock(Shared<RwLock<u64>>),
    Atomic(Shared<AtomicU64>),
    Sem(Shared<Semaphore>),
    Event(Shared<Event>),
    Condvar(Shared<Condvar>),
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} {:?} at {:#x}",
            self.kind(),
            self.name(),
            self.offset()
        )
    }
}

impl Handle {
    fn kind(&self) -> Kind {
        match self {
            Handle::Mutex(_) => Kind::Mutex,
            Handle::RwLock(_) => Kind::RwLock,
            Handle::Atomic(_) => Kind::Atomic,
            Handle::Sem(_) => Kind::Sem,
            Handle::Event(_) => Kind::Event,
            Handle::Condvar(_) => Kind::Condvar,
        }
    }

    fn offset(&self) -> u64 {
        match self {
            Handle::Mutex(h) => h.offset().get(),
            Handle::RwLock(h) => h.offset().get(),
            Handle::Atomic(h) => h.offset().get(),
            Handle::Sem(h) => h.offset().get(),
            Handle::Event(h) => h.offset().get(),
            Handle::Condvar(h) => h.offset().get(),
        }
    }

    fn name(&self) -> &str {
        match self {
            Handle::Mutex(h) => h.name(),
            Handle::RwLock(h) => h.name(),
            Handle::Atomic(h) => h.name(),
            Handle::Sem(h) => h.name(),
            Handle::Event(h) => h.name(),
            Handle::Condvar(h) => h.name(),
        }
    }

    fn config(&self) -> Cfg {
        match self {
            Handle::Sem(h) => Cfg::Permits(*h.config()),
            Handle::Event(h) => Cfg::Event(*h.config()),
            _ => Cfg::Unit,
        }
    }

    /// The object's value: the data, the permits available, set or not.
    fn value(&self) -> u64 {
        match self {
            Handle::Mutex(h) => *h.lock().unwrap(),
            Handle::RwLock(h) => *h.read().unwrap(),
            Handle::Atomic(h) => h.load(Ordering::Relaxed),
            Handle::Sem(h) => u64::from(h.available()),
            Handle::Event(h) => u64::from(h.is_set()),
            Handle::Condvar(_) => 0,
        }
    }

    /// Writes `v` as this kind can (a semaphore takes a permit if there is one and
    /// `v` is odd, else gives one; an event is set for odd `v`, else reset);
    /// returns the value now.
    fn write(&self, v: u64) -> u64 {
        match self {
            Handle::Mutex(h) => *h.lock().unwrap() = v,
            Handle::RwLock(h) => *h.write().unwrap() = v,
            Handle::Atomic(h) => h.store(v, Ordering::Relaxed),
            Handle::Sem(h) => {
                if v & 1 == 1 && h.available() > 0 {
                    h.try_acquire().unwrap();
                } else {
                    h.release(1).unwrap();
                }
            }
            Handle::Event(h) if v & 1 == 1 => h.set(),
            Handle::Event(h) => h.reset(),
            Handle::Condvar(h) => h.notify_all(),
        }
        self.value()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Find,
    Create,
    FindOrCreate,
    /// `find_or_create_with`, whose `init` writes this value (where the kind
    /// holds one).
    FindOrCreateWith(u64),
}

/// What `init` of [`Mode::FindOrCreateWith`] leaves in a new object.
fn init_value(kind: Kind, cfg: Cfg, v: u64) -> u64 {
    match kind {
        Kind::Mutex | Kind::RwLock | Kind::Atomic => v,
        _ => cfg.initial(),
    }
}

fn call<T: ShmObject>(
    dir: Directory<'_>,
    mode: Mode,
    name: &str,
    cfg: T::Config,
    init: impl FnOnce(&T),
) -> shmkit::Result<Shared<T>> {
    match mode {
        Mode::Find => dir.find::<T>(name),
        Mode::Create => dir.create::<T>(name, cfg),
        Mode::FindOrCreate => dir.find_or_create::<T>(name, cfg),
        Mode::FindOrCreateWith(_) => dir.find_or_create_with::<T>(name, cfg, init),
    }
}

/// Opens `name` as `kind` in `mode` through `seg`.
fn open(seg: &Segment, mode: Mode, name: &str, kind: Kind, cfg: Cfg) -> shmkit::Result<Handle> {
    let dir = seg.directory();
    let v = match mode {
        Mode::FindOrCreateWith(v) => v,
        _ => 0,
    };
    Ok(match kind {
        Kind::Mutex => Handle::Mutex(call(dir, mode, name, (), |m: &Mutex<u64>| {
            *m.lock(seg).unwrap() = v;
        })?),
        Kind::RwLock => Handle::RwLock(call(dir, mode, name, (), |l: &RwLock<u64>| {
            *l.write(seg).unwrap() = v;
        })?),
        Kind::Atomic => Handle::Atomic(call(dir, mode, name, (), |a: &AtomicU64| {
            a.store(v, Ordering::Relaxed);
        })?),
        Kind::Sem => Handle::Sem(call(dir, mode, name, cfg.permits(), |_| {})?),
        Kind::Event => Handle::Event(call(dir, mode, name, cfg.event(), |_| {})?),
        Kind::Condvar => Handle::Condvar(call(dir, mode, name, (), |_| {})?),
    })
}

/// The outcome of a directory call, as the model predicts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    NotFound,
    WrongType,
    WrongConfig,
    AlreadyExists,
}

fn outcome<T>(r: &shmkit::Result<T>) -> Result<Outcome, TestCaseError> {
    Ok(match r {
        Ok(_) => Outcome::Ok,
        Err(Error::NotFound(_)) => Outcome::NotFound,
        Err(Error::WrongType { .. }) => Outcome::WrongType,
        Err(Error::WrongConfig { .. }) => Outcome::WrongConfig,
        Err(Error::AlreadyExists(_)) => Outcome::AlreadyExists,
        Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
    })
}

// ---------------------------------------------------------------------------------
// Dead handles.
// ---------------------------------------------------------------------------------

/// Handles of simulated dead attachments, never dropped (a killed process runs no
/// destructor: its holds stay recorded), kept reachable so that miri's leak check
/// does not flag them. Never used again.
static DEAD: std::sync::Mutex<Vec<Handle>> = std::sync::Mutex::new(Vec::new());

// ---------------------------------------------------------------------------------
// Operations and the model.
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    /// `kind`/`cfg`: `None` takes the model's for that name (a likely hit), or
    /// `alt` if the name is free.
    Open {
        who: usize,
        mode: Mode,
        name: usize,
        kind: Option<Kind>,
        alt: Kind,
        cfg: Option<u8>,
    },
    /// Writes through a held handle of `who`.
    Write {
        who: usize,
        handle: Index,
        value: u64,
    },
    Remove {
        who: usize,
        name: usize,
    },
    /// Drops a held handle of `who`.
    Drop {
        who: usize,
        handle: Index,
    },
    /// B or C detaches cleanly (dropping its handles); a new attachment takes
    /// its place.
    Reopen(usize),
    /// B or C dies holding its handles; A reclaims; a new attachment takes its
    /// place.
    Crash(usize),
    /// Nobody died since the last reclaim: the directory frees nothing.
    Reclaim,
}

fn kind() -> impl Strategy<Value = Kind> {
    proptest::sample::select(KINDS.to_vec())
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        3 => Just(Mode::Find),
        2 => Just(Mode::Create),
        3 => Just(Mode::FindOrCreate),
        1 => any::<u64>().prop_map(Mode::FindOrCreateWith),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let who = 0..ATTACHMENTS;
    let peer = 1..ATTACHMENTS;
    let op = prop_oneof![
        10 => (
            who.clone(),
            mode(),
            0..NAMES,
            proptest::option::weighted(0.3, kind()),
            kind(),
            proptest::option::weighted(0.5, any::<u8>()),
        )
            .prop_map(|(who, mode, name, kind, alt, cfg)| Op::Open {
                who,
                mode,
                name,
                kind,
                alt,
                cfg
            }),
        4 => (who.clone(), any::<Index>(), any::<u64>())
            .prop_map(|(who, handle, value)| Op::Write { who, handle, value }),
        3 => (who.clone(), 0..NAMES).prop_map(|(who, name)| Op::Remove { who, name }),
        3 => (who, any::<Index>()).prop_map(|(who, handle)| Op::Drop { who, handle }),
        1 => peer.clone().prop_map(Op::Reopen),
        1 => peer.prop_map(Op::Crash),
        1 => Just(Op::Reclaim),
    ];
    proptest::collection::vec(op, ops_len())
}

/// An object of the model.
#[derive(Clone, Copy, Debug)]
struct Obj {
    kind: Kind,
    cfg: Cfg,
    value: u64,
}

struct World {
    /// The attachments (A, B, C), each with the handles it holds: (object, handle).
    atts: Vec<(Segment, Vec<(u64, Handle)>)>,
    /// The model: name → object id.
    names: HashMap<String, u64>,
    /// Objects named or held, by id.
    objs: HashMap<u64, Obj>,
    next_id: u64,
}

impl World {
    /// Which attachments hold handles on object `id`.
    fn holders(&self, id: u64) -> usize {
        self.atts
            .iter()
            .filter(|(_, hs)| hs.iter().any(|(o, _)| *o == id))
            .count()
    }

    /// Objects neither named nor held are gone (freed).
    fn forget_unreachable(&mut self) {
        let named: BTreeSet<u64> = self.names.values().copied().collect();
        let held: BTreeSet<u64> = self
            .atts
            .iter()
            .flat_map(|(_, hs)| hs.iter().map(|(o, _)| *o))
            .collect();
        self.objs
            .retain(|id, _| named.contains(id) || held.contains(id));
    }

    /// Removed objects still held by a live attachment.
    fn removed_held(&self) -> u64 {
        let named: BTreeSet<u64> = self.names.values().copied().collect();
        self.objs.keys().filter(|id| !named.contains(id)).count() as u64
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Open {
                who,
                mode,
                name: n,
                kind,
                alt,
                cfg,
            } => {
                let n = name(n);
                let existing = self.names.get(&n).map(|id| (*id, self.objs[id]));
                let kind = kind.or(existing.map(|(_, o)| o.kind)).unwrap_or(alt);
                let cfg = match (cfg, existing) {
                    (Some(pick), _) => Cfg::of(kind, pick),
                    (None, Some((_, o))) if o.kind == kind => o.cfg,
                    (None, _) => Cfg::of(kind, 0),
                };
                let want = match (mode, existing) {
                    (Mode::Find, None) => Outcome::NotFound,
                    (_, None) => Outcome::Ok,
                    (Mode::Create, Some(_)) => Outcome::AlreadyExists,
                    (_, Some((_, o))) if o.kind != kind => Outcome::WrongType,
                    (Mode::Find, Some(_)) => Outcome::Ok,
                    (_, Some((_, o))) if o.cfg != cfg => Outcome::WrongConfig,
                    (_, Some(_)) => Outcome::Ok,
                };
                let r = open(&self.atts[who].0, mode, &n, kind, cfg);
                prop_assert_eq!(outcome(&r)?, want, "{:?}", r);
                let Ok(h) = r else {
                    return Ok(());
                };
                prop_assert_eq!(h.kind(), kind);
                prop_assert_eq!(h.name(), n.as_str());
                let id = match existing {
                    Some((id, o)) => {
                        prop_assert_eq!(h.config(), o.cfg, "the stored configuration");
                        prop_assert_eq!(h.value(), o.value, "the value written before");
                        id
                    }
                    None => {
                        let value = match mode {
                            Mode::FindOrCreateWith(v) => init_value(kind, cfg, v),
                            _ => cfg.initial(),
                        };
                        prop_assert_eq!(h.config(), cfg);
                        prop_assert_eq!(h.value(), value, "a new object is fresh");
                        self.next_id += 1;
                        let id = self.next_id;
                        self.objs.insert(id, Obj { kind, cfg, value });
                        self.names.insert(n, id);
                        id
                    }
                };
                self.atts[who].1.push((id, h));
            }
            Op::Write { who, handle, value } => {
                let hs = &self.atts[who].1;
                if hs.is_empty() {
                    return Ok(());
                }
                let (id, h) = &hs[handle.index(hs.len())];
                let now = h.write(value);
                let o = self.objs.get_mut(id).unwrap();
                let want = match o.kind {
                    Kind::Mutex | Kind::RwLock | Kind::Atomic => value,
                    Kind::Sem if value & 1 == 1 && o.value > 0 => o.value - 1,
                    Kind::Sem => o.value + 1,
                    Kind::Event => value & 1,
                    Kind::Condvar => 0,
                };
                prop_assert_eq!(now, want, "{:?}", h);
                o.value = want;
            }
            Op::Remove { who, name: n } => {
                let n = name(n);
                let r = self.atts[who].0.directory().remove(&n);
                let want = if self.names.remove(&n).is_some() {
                    Outcome::Ok
                } else {
                    Outcome::NotFound
                };
                prop_assert_eq!(outcome(&r)?, want, "{:?}", r);
                self.forget_unreachable();
            }
            Op::Drop { who, handle } => {
                let hs = &mut self.atts[who].1;
                if hs.is_empty() {
                    return Ok(());
                }
                let i = handle.index(hs.len());
                drop(hs.remove(i));
                self.forget_unreachable();
            }
            Op::Reopen(who) => {
                let fresh = self.atts[0].0.try_clone().unwrap();
                let (seg, hs) = std::mem::replace(&mut self.atts[who], (fresh, Vec::new()));
                drop(hs);
                prop_assert!(seg.detach(), "a dropped handle kept its attachment");
                self.forget_unreachable();
            }
            Op::Crash(who) => self.crash(who)?,
            Op::Reclaim => {
                let n = self.atts[0].0.directory().reclaim().unwrap();
                prop_assert_eq!(n, 0, "nobody died since the last reclaim");
            }
        }
        Ok(())
    }

    /// `who` dies holding its handles; A reclaims its slot, its heap blocks (none:
    /// every directory block is published) and the removed objects only it held.
    fn crash(&mut self, who: usize) -> Result<(), TestCaseError> {
        let fresh = self.atts[0].0.try_clone().unwrap();
        let (seg, hs) = std::mem::replace(&mut self.atts[who], (fresh, Vec::new()));
        let slot = seg.slot();
        let before: BTreeSet<u64> = self.objs.keys().copied().collect();
        DEAD.lock().unwrap().extend(hs.into_iter().map(|(_, h)| h));
        // SAFETY: no guard taken through this attachment is alive (every call of
        // this test drops its guards before returning); its handles are buried
        // above, never to be used again.
        unsafe { seg.simulate_crash_now() };
        drop(seg);
        self.forget_unreachable();
        let freed = before.len() - self.objs.len();
        let a = &self.atts[0].0;
        prop_assert_eq!(a.reclaim_dead().unwrap(), vec![slot]);
        let r = Heap::attach(a).unwrap().reclaim_dead().unwrap();
        prop_assert_eq!(r.blocks, 0, "a dead attachment owned heap blocks: {:?}", r);
        let n = a.directory().reclaim().unwrap();
        prop_assert_eq!(
            n,
            freed as u64,
            "the removed objects that only the dead attachment held"
        );
        Ok(())
    }

    /// The directory agrees with the model (see the file's docs).
    fn check(&self, who: usize, heap_verify: bool) -> Result<(), TestCaseError> {
        let mut offsets: BTreeMap<u64, u64> = BTreeMap::new();
        for (seg, hs) in &self.atts {
            for (id, h) in hs {
                let o = self.objs[id];
                prop_assert_eq!(h.value(), o.value, "held {:?} (slot {})", h, seg.slot());
                prop_assert_eq!(h.config(), o.cfg);
                let seen = *offsets.entry(h.offset()).or_insert(*id);
                prop_assert_eq!(seen, *id, "two objects at {:#x}", h.offset());
            }
        }
        let seg = &self.atts[who].0;
        for i in 0..NAMES {
            let n = name(i);
            match self.names.get(&n) {
                None => {
                    let r = open(seg, Mode::Find, &n, KINDS[i], Cfg::of(KINDS[i], 0));
                    prop_assert_eq!(outcome(&r)?, Outcome::NotFound, "{:?}", r);
                }
                Some(id) => {
                    let o = self.objs[id];
                    let h = open(seg, Mode::Find, &n, o.kind, o.cfg);
                    prop_assert!(h.is_ok(), "find {:?}: {:?}", n, h);
                    let h = h.unwrap();
                    prop_assert_eq!(h.value(), o.value, "found {:?}", h);
                    prop_assert_eq!(h.config(), o.cfg);
                    if let Some(&seen) = offsets.get(&h.offset()) {
                        prop_assert_eq!(seen, *id, "found {:?}: another object's", h);
                    }
                    let other = KINDS
                        [(KINDS.iter().position(|k| *k == o.kind).unwrap() + 1 + i) % KINDS.len()];
                    let r = open(seg, Mode::Find, &n, other, Cfg::of(other, 0));
                    prop_assert_eq!(outcome(&r)?, Outcome::WrongType, "{:?}", r);
                }
            }
        }
        let dir = seg.directory();
        let list = dir.list().unwrap();
        let listed: BTreeMap<String, u64> =
            list.iter().map(|i| (i.name.clone(), i.holders)).collect();
        let model: BTreeMap<String, u64> = self
            .names
            .iter()
            .map(|(n, id)| (n.clone(), self.holders(*id) as u64))
            .collect();
        prop_assert_eq!(listed.len(), list.len(), "a name listed twice: {:?}", list);
        prop_assert_eq!(listed, model, "list: names and holders");
        let rep = dir.verify().unwrap();
        prop_assert!(rep.is_clean(), "{:?}", rep);
        prop_assert_eq!(rep.entries, self.names.len() as u64);
        prop_assert_eq!(rep.removed, self.removed_held(), "removed but held");
        if heap_verify {
            let r = Heap::attach(seg).unwrap().verify();
            prop_assert!(r.is_clean(), "{}", r);
        }
        Ok(())
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let seg = segment();
    // The table is built by the first create and stays: what the heap holds when
    // the directory is empty.
    drop(seg.create::<AtomicU64>("warm-up", ()).unwrap());
    seg.directory().remove("warm-up").unwrap();
    let empty = Heap::attach(&seg).unwrap().stats().unwrap().used;
    let mut w = World {
        atts: vec![(seg.clone(), Vec::new())],
        names: HashMap::new(),
        objs: HashMap::new(),
        next_id: 0,
    };
    for _ in 1..ATTACHMENTS {
        w.atts.push((seg.try_clone().unwrap(), Vec::new()));
    }
    for (step, op) in ops.iter().enumerate() {
        w.apply(op)
            .map_err(|e| TestCaseError::fail(format!("step {step} {op:?}: {e}")))?;
        let who = match *op {
            Op::Open { who, .. }
            | Op::Write { who, .. }
            | Op::Remove { who, .. }
            | Op::Drop { who, .. }
            | Op::Reopen(who)
            | Op::Crash(who) => who,
            Op::Reclaim => 0,
        };
        w.check(who, !cfg!(miri) || step + 1 == ops.len())
            .map_err(|e| TestCaseError::fail(format!("after step {step} {op:?}: {e}")))?;
    }
    // Everything dropped and removed: the heap holds the empty table only.
    for (_, hs) in &mut w.atts {
        hs.clear();
    }
    w.forget_unreachable();
    let names: Vec<String> = w.names.keys().cloned().collect();
    for n in names {
        seg.directory().remove(&n).unwrap();
        w.names.remove(&n);
    }
    w.forget_unreachable();
    prop_assert!(w.objs.is_empty());
    w.check(0, true)?;
    prop_assert!(seg.directory().list().unwrap().is_empty());
    prop_assert_eq!(seg.directory().reclaim().unwrap(), 0);
    let heap = Heap::attach(&seg).unwrap();
    prop_assert_eq!(
        heap.stats().unwrap().used,
        empty,
        "heap bytes left once every object is gone"
    );
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_directory_behaves_like_its_model(ops in ops()) {
        run(&ops)?;
    }
}

#[test]
fn empty_and_overlong_names_are_refused() {
    let seg = segment();
    let long = "n".repeat(shmkit::MAX_OBJECT_NAME + 1);
    for n in ["", long.as_str()] {
        assert!(matches!(
            seg.find_or_create::<AtomicU64>(n, ()),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            seg.find::<AtomicU64>(n),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            seg.directory().remove(n),
            Err(Error::InvalidName { .. })
        ));
    }
    assert!(seg.directory().list().unwrap().is_empty());
}
