//! Objects by name: the segment's directory.
//!
//! Unrelated processes meet by segment name, then by object name:
//!
//! ```
//! use shmkit::{SegmentOptions, sync::Mutex};
//!
//! let name = shmkit::unique_name("doc-dir-")?;
//! // Any process: the first one builds, the others find (type-checked).
//! let (a, _created) = SegmentOptions::posix(&name).max_size(16 << 20).open_or_create()?;
//! let hits = a.find_or_create::<Mutex<u64>>("hits", ())?;
//! *hits.lock_or_recover(|n| *n = 0)? += 1;
//!
//! let b = SegmentOptions::posix(&name).open()?; // another process, by name
//! assert_eq!(*b.find::<Mutex<u64>>("hits")?.lock()?, 1);
//! assert!(b.find::<Mutex<u32>>("hits").is_err()); // another type: refused
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Names
//!
//! An object name is UTF-8 text of 1 to 255 bytes; anything else is
//! [`Error::InvalidName`]. Names are per segment.
//!
//! # What an entry records
//!
//! The object's [`TypeIdentity`] (type name, size, alignment, format version), its
//! configuration, its offset and size, its state (`Creating` → `Ready`), who
//! created it and when, and which attachments hold handles on it.
//!
//! # A process dying
//!
//! - *while creating an object*: the entry stays `Creating` under a dead creator;
//!   nobody is handed the half-built object; the next `find_or_create` (or
//!   `create`) of that name, or [`Directory::reclaim`], frees it, and a fresh one is
//!   built;
//! - *inside any directory change*: the change is journalled; whoever takes the
//!   directory lock next finishes or undoes it (the heap's `reclaim_dead` returns
//!   what the dead process still owned privately);
//! - *holding handles*: its holds are those of a dead process: a removed object it
//!   held is freed by the next look at it ([`Directory::reclaim`], or a later
//!   release).
//!
//! # Cost
//!
//! `find` is a lock, a hash probe and a hold record: well under a microsecond at
//! 100 000 names (see `benches/directory.rs`); a process pays it once per object.
//! Every directory call takes one robust lock, held for microseconds; a live
//! process that keeps it past 5 s makes the others fail with
//! [`Error::LockTimeout`] instead of waiting forever.
#![allow(unsafe_code)]

mod broadcast;
pub(crate) mod crash;
mod entry;
pub(crate) mod inspect;
mod locks;
mod mpmc;
pub(crate) mod protocol;
mod queues;
mod shared;
mod table;
#[cfg(all(test, not(shmkit_loom)))]
mod tests;

use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::alloc::Heap;
use crate::object::{ObjectConfig, ShmObject, TypeIdentity, check_config};
use crate::segment::Segment;
use crate::{Error, OwnerTag, Result};

pub use entry::MAX_NAME;
#[cfg(feature = "testkit")]
pub use queues::{spsc_set_indices, spsc_set_roles, spsc_waiters};
pub use shared::Shared;
use table::{Locked, creator_alive};

/// How long a `find` waits for a live creator to finish building an object.
pub const CREATE_WAIT: Duration = Duration::from_secs(2);

/// The state of a directory entry.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObjectState {
    /// Its creator is building it.
    Creating,
    /// Built; `find` hands it out.
    Ready,
}

/// One object of the directory, as [`Directory::list`] reports it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ObjectInfo {
    /// The name.
    pub name: String,
    /// The recorded type identity.
    pub identity: TypeIdentity,
    /// The recorded configuration words.
    pub config: [u64; crate::object::CONFIG_WORDS],
    /// Creating or ready.
    pub state: ObjectState,
    /// Offset of the object in the segment.
    pub offset: u64,
    /// Owner tag of the creator.
    pub creator: OwnerTag,
    /// Whether the creator is alive.
    pub creator_alive: bool,
    /// Attachments (processes) holding handles on it, alive.
    pub holders: u64,
    /// When it was created (ns since the Unix epoch).
    pub created_ns: u64,
}

/// What [`Directory::verify`] found.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct DirReport {
    /// Entries in the table.
    pub entries: u64,
    /// Entries removed but still held.
    pub removed: u64,
    /// Everything that is wrong, one sentence each.
    pub violations: Vec<String>,
}

impl DirReport {
    /// No violation.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// assert!(seg.directory().verify()?.is_clean());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The directory of a segment: its objects by name ([`Segment::directory`]).
///
/// The common calls are also on [`Segment`] itself: [`Segment::find`],
/// [`Segment::create`], [`Segment::find_or_create`].
///
/// # Examples
///
/// ```
/// use shmkit::{SegmentOptions, sync::Semaphore};
/// let seg = SegmentOptions::heap().create()?;
/// let dir = seg.directory();
/// let s = dir.create::<Semaphore>("slots", 2)?;
/// assert_eq!(dir.list()?.len(), 1);
/// dir.remove("slots")?;          // the name is free again at once...
/// assert!(dir.find::<Semaphore>("slots").is_err());
/// assert_eq!(s.available(), 2);  // ...and `s` keeps working until dropped
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Directory<'s> {
    seg: &'s Segment,
}

use protocol::{Found, Mode, Step, step};

/// Checks an object name against the rule.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::InvalidName {
            name: name.chars().take(64).collect(),
            reason: "object names are UTF-8, 1 to 255 bytes",
        });
    }
    Ok(())
}

fn name_hash(seg: &Segment, name: &[u8]) -> u64 {
    crate::layout::fnv1a(crate::layout::FNV_START ^ seg.seed(), name)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl<'s> Directory<'s> {
    /// Finds the object `name`, which must be a `T` (any configuration: the
    /// handle reports it).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::WrongType`] naming both identities;
    /// [`Error::NotReady`] if its live creator does not finish within
    /// [`CREATE_WAIT`]; [`Error::InvalidName`]; [`Error::Corrupt`] naming a
    /// damaged entry (other names stay reachable); [`Error::LockTimeout`].
    ///
    /// # Examples
    ///
    /// See [`Directory`].
    pub fn find<T: ShmObject>(&self, name: &str) -> Result<Shared<T>> {
        self.open(name, None, Mode::Find, |_| {})
    }

    /// Creates the object `name` as a `T` built from `config`.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`]; heap errors ([`Error::OutOfMemory`]...); as
    /// [`find`](Self::find).
    ///
    /// # Examples
    ///
    /// See [`Directory`].
    pub fn create<T: ShmObject>(&self, name: &str, config: T::Config) -> Result<Shared<T>> {
        self.open(name, Some(config), Mode::Create, |_| {})
    }

    /// Finds the object `name`, or creates it from `config` if there is none.
    /// Among processes racing on one name exactly one builds it; all get the
    /// same object.
    ///
    /// # Errors
    ///
    /// [`Error::WrongConfig`] if it exists with another configuration; as
    /// [`create`](Self::create) and [`find`](Self::find).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let a = seg.directory().find_or_create::<AtomicU64>("n", ())?;
    /// let b = seg.directory().find_or_create::<AtomicU64>("n", ())?;
    /// a.fetch_add(2, Ordering::Relaxed);
    /// assert_eq!(b.load(Ordering::Relaxed), 2);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn find_or_create<T: ShmObject>(&self, name: &str, config: T::Config) -> Result<Shared<T>> {
        self.open(name, Some(config), Mode::FindOrCreate, |_| {})
    }

    /// As [`find_or_create`](Self::find_or_create); the process that builds the
    /// object also runs `init` on it before anyone else can find it (others wait
    /// for it, within [`CREATE_WAIT`]).
    ///
    /// # Errors
    ///
    /// As [`find_or_create`](Self::find_or_create).
    ///
    /// # Panics
    ///
    /// If `init` panics (the half-built object is removed first).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let n = seg.directory()
    ///     .find_or_create_with::<AtomicU64>("n", (), |n| n.store(100, Ordering::Relaxed))?;
    /// assert_eq!(n.load(Ordering::Relaxed), 100);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn find_or_create_with<T: ShmObject>(
        &self,
        name: &str,
        config: T::Config,
        init: impl FnOnce(&T),
    ) -> Result<Shared<T>> {
        self.open(name, Some(config), Mode::FindOrCreate, init)
    }

    /// Removes the name. Processes that hold handles keep a working object until
    /// they drop them; its memory is freed after the last one (or when the last
    /// holders are dead). The name can be created anew at once (as another
    /// object).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::InvalidName`]; [`Error::Corrupt`];
    /// [`Error::LockTimeout`].
    ///
    /// # Examples
    ///
    /// See [`Directory`].
    pub fn remove(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let heap = Heap::attach(self.seg)?;
        let mut d = Locked::lock(&heap)?;
        if !d.built()? {
            return Err(Error::NotFound(format!("object {name:?}")));
        }
        let p = d.probe(name.as_bytes(), name_hash(self.seg, name.as_bytes()))?;
        let Some((i, mut e)) = p.found else {
            return Err(p
                .damaged
                .unwrap_or_else(|| Error::NotFound(format!("object {name:?}"))));
        };
        if d.live_holders(&e)? > 0 {
            d.move_to_removed(i, &mut e)?;
        } else {
            d.unlink_free(i, &e)?;
        }
        // Best effort: the name is gone whatever this says (a simulated death
        // inside is still a death).
        match d.shrink() {
            Err(e) if crash::dead() => Err(e),
            _ => Ok(()),
        }
    }

    /// Every object, in no particular order.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] naming the first damaged entry; [`Error::LockTimeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let _c = seg.create::<shmkit::sync::Condvar>("cv", ())?;
    /// let l = seg.directory().list()?;
    /// assert_eq!(l[0].name, "cv");
    /// assert_eq!(l[0].identity.name, "shmkit::Condvar");
    /// assert_eq!(l[0].holders, 1);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn list(&self) -> Result<Vec<ObjectInfo>> {
        let heap = Heap::attach(self.seg)?;
        let d = Locked::lock(&heap)?;
        let mut v = Vec::new();
        for (_, e) in d.entries()? {
            let e = e?;
            let name = String::from_utf8(e.name.clone()).map_err(|_| {
                Error::corrupt(
                    "directory entry",
                    format!("entry at {:#x}: name is not UTF-8", e.off),
                )
            })?;
            let creator = OwnerTag::from_word(e.head.creator);
            v.push(ObjectInfo {
                name,
                identity: identity_of(&e),
                config: e.head.config,
                state: if e.head.state == entry::READY {
                    ObjectState::Ready
                } else {
                    ObjectState::Creating
                },
                offset: e.head.obj,
                creator,
                creator_alive: self.seg.is_owner_alive(creator),
                holders: d.live_holders(&e)?,
                created_ns: e.head.created_ns,
            });
        }
        Ok(v)
    }

    /// Frees what dead processes left: objects whose creator died while
    /// building them, and removed objects whose every holder is gone. Returns
    /// how many entries it freed.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`]; [`Error::LockTimeout`]; heap errors.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// assert_eq!(seg.directory().reclaim()?, 0);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn reclaim(&self) -> Result<u64> {
        let heap = Heap::attach(self.seg)?;
        let mut d = Locked::lock(&heap)?;
        let mut n = 0;
        for (i, e) in d.entries()? {
            if let Ok(e) = e {
                // Only the creator holds a Creating entry: another live holder
                // means the state word lies, and nothing is freed.
                if e.head.state == entry::CREATING
                    && !creator_alive(self.seg, &e)
                    && d.live_holders(&e)? == 0
                {
                    d.unlink_free(i, &e)?;
                    n += 1;
                }
            }
        }
        // One walk: each freed entry's predecessor is the last one kept.
        let mut kept = 0;
        for (e, _) in d.removed()? {
            if d.live_holders(&e)? == 0 {
                d.unlink_free_listed(&e, kept)?;
                n += 1;
            } else {
                kept = e.off;
            }
        }
        Ok(n)
    }

    /// Checks the whole directory: every entry readable and consistent, counts,
    /// no name twice, the removed list, every block published in the heap.
    ///
    /// # Errors
    ///
    /// [`Error::LockTimeout`]; [`Error::Corrupt`] if a journal left by a dead
    /// process cannot be finished (a damaged table root is a violation, not an
    /// error).
    ///
    /// # Examples
    ///
    /// See [`DirReport::is_clean`].
    pub fn verify(&self) -> Result<DirReport> {
        let heap = Heap::attach(self.seg)?;
        let d = Locked::lock(&heap)?;
        let mut rep = DirReport::default();
        let entries = match d.entries() {
            Ok(v) => v,
            Err(e) => {
                rep.violations.push(e.to_string());
                return Ok(rep);
            }
        };
        let mut names = std::collections::HashSet::new();
        for (i, e) in &entries {
            match e {
                Err(err) => rep.violations.push(format!("bucket {i}: {err}")),
                Ok(e) => {
                    rep.entries += 1;
                    if !names.insert(e.name.clone()) {
                        rep.violations
                            .push(format!("name {:?} is linked twice", e.name_lossy()));
                    }
                    if std::str::from_utf8(&e.name).is_err() {
                        rep.violations
                            .push(format!("entry at {:#x}: name is not UTF-8", e.off));
                    }
                    check_block(&heap, e, &mut rep);
                }
            }
        }
        if d.built().unwrap_or(false) && d.root().live != entries.len() as u64 {
            rep.violations.push(format!(
                "root counts {} entries, the table holds {} ({} readable)",
                d.root().live,
                entries.len(),
                rep.entries
            ));
        }
        match d.removed() {
            Ok(list) => {
                for (e, _) in &list {
                    rep.removed += 1;
                    check_block(&heap, e, &mut rep);
                }
            }
            Err(e) => rep.violations.push(e.to_string()),
        }
        if d.root().j_op != 0 {
            rep.violations
                .push(format!("journal left open (operation {})", d.root().j_op));
        }
        Ok(rep)
    }

    fn open<T: ShmObject>(
        &self,
        name: &str,
        config: Option<T::Config>,
        mode: Mode,
        init: impl FnOnce(&T),
    ) -> Result<Shared<T>> {
        check_name(name)?;
        if let Some(c) = &config {
            check_config(c)?;
        }
        let seg = self.seg;
        let me = seg.owner_tag();
        if me.is_nobody() {
            return Err(Error::NotAttached);
        }
        let heap = Heap::attach(seg)?;
        let hash = name_hash(seg, name.as_bytes());
        let deadline = Instant::now() + CREATE_WAIT;
        let mut init = Some(init);
        loop {
            let mut d = Locked::lock(&heap)?;
            if !d.built()? {
                if mode == Mode::Find {
                    return Err(Error::NotFound(format!("object {name:?}")));
                }
                d.build()?;
            }
            let p = d.probe(name.as_bytes(), hash)?;
            let found = p.found.as_ref().map(|(_, e)| Found {
                creating: e.head.state == entry::CREATING,
                creator_alive: creator_alive(seg, e),
            });
            match step(found, mode) {
                Step::Wait => {
                    drop(d);
                    if Instant::now() >= deadline {
                        return Err(Error::NotReady {
                            state: entry::CREATING as u32,
                            waited: CREATE_WAIT,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Step::Reclaim => {
                    // Its creator died half-way: nobody gets the half-built object.
                    if let Some((i, e)) = &p.found {
                        if d.live_holders(e)? > 0 {
                            return Err(Error::corrupt(
                                "directory entry",
                                format!(
                                    "entry at {:#x} is Creating under a dead creator yet held by a live process",
                                    e.off
                                ),
                            ));
                        }
                        d.unlink_free(*i, e)?;
                    }
                    if mode == Mode::Find {
                        return Err(Error::NotFound(format!("object {name:?}")));
                    }
                    continue;
                }
                Step::Exists => return Err(Error::AlreadyExists(format!("object {name:?}"))),
                Step::Missing => {
                    return Err(p
                        .damaged
                        .unwrap_or_else(|| Error::NotFound(format!("object {name:?}"))));
                }
                Step::Hand => {
                    let Some((_, mut e)) = p.found else {
                        unreachable!("Hand needs an entry")
                    };
                    let (ptr, cfg) = check_found::<T>(&heap, &e, name, config)?;
                    hold(seg, &mut d, &mut e, me)?;
                    return Ok(Shared::new(seg, e.off, ptr, cfg, name));
                }
                Step::Build => {
                    if let Some(damaged) = p.damaged {
                        // A damaged entry on the probe path may be this very name:
                        // linking it again would give the name two objects.
                        return Err(damaged);
                    }
                }
            }
            if d.make_room()? {
                continue; // positions changed: probe again
            }
            let free = p
                .free
                .ok_or_else(|| Error::corrupt("directory table", "full with no free bucket"))?;
            let config = config.ok_or(Error::InvalidArgument("create without a config"))?;
            let (off, word) = create_entry::<T>(&mut d, free, name, hash, &config, me)?;
            drop(d);
            return build::<T>(
                seg,
                &heap,
                (off, word),
                name,
                config,
                init.take().unwrap_or_else(|| unreachable!()),
            );
        }
    }
}

/// The identity an entry records.
fn identity_of(e: &entry::Entry) -> TypeIdentity {
    TypeIdentity {
        name: String::from_utf8_lossy(&e.type_name).into_owned(),
        size: e.head.size,
        align: e.head.align,
        version: e.head.version as u32,
    }
}

/// Checks that the found entry is a `T` (with `config`, if given) and returns
/// the object's pointer and configuration.
fn check_found<T: ShmObject>(
    heap: &Heap,
    e: &entry::Entry,
    name: &str,
    config: Option<T::Config>,
) -> Result<(NonNull<T>, T::Config)> {
    let found = identity_of(e);
    let type_ok = e.type_name == T::type_name().as_bytes()
        && e.head.version == u64::from(T::VERSION)
        && e.head.align == align_of::<T>() as u64;
    let stored = <T::Config as ObjectConfig>::decode(e.head.config);
    let expected_size = stored.as_ref().and_then(|c| T::size(c).ok());
    if !type_ok || expected_size != Some(e.head.size) {
        let cfg = config.or(stored);
        let expected = match cfg {
            Some(c) => T::identity(&c),
            None => TypeIdentity {
                name: T::type_name(),
                size: 0,
                align: align_of::<T>() as u64,
                version: T::VERSION,
            },
        };
        return Err(Error::WrongType {
            name: name.into(),
            found: found.to_string(),
            expected: expected.to_string(),
        });
    }
    let stored = stored.unwrap_or_else(|| unreachable!("checked above"));
    if let Some(c) = config {
        if c != stored {
            return Err(Error::WrongConfig {
                name: name.into(),
                found: format!("{stored:?}"),
                expected: format!("{c:?}"),
            });
        }
    }
    if e.head.size < size_of::<T>() as u64 || e.head.obj % align_of::<T>() as u64 != 0 {
        return Err(Error::corrupt(
            "directory entry",
            format!("entry at {:#x}: object does not fit its type", e.off),
        ));
    }
    Ok((heap.ptr(e.head.obj)?.cast::<T>(), stored))
}

/// Records this attachment's hold on `e` (one record per attachment, counted
/// locally by handle).
fn hold(seg: &Segment, d: &mut Locked<'_>, e: &mut entry::Entry, me: OwnerTag) -> Result<()> {
    let mut local = seg.local().lock().unwrap_or_else(|e| e.into_inner());
    if !local.holds.contains_key(&e.off) {
        d.add_holder(e, me)?;
    }
    *local.holds.entry(e.off).or_insert(0) += 1;
    Ok(())
}

/// Allocates, writes and links a `Creating` entry for a new `T` at bucket `i`;
/// returns its offset. The creator holds it.
fn create_entry<T: ShmObject>(
    d: &mut Locked<'_>,
    i: usize,
    name: &str,
    hash: u64,
    config: &T::Config,
    me: OwnerTag,
) -> Result<(u64, u64)> {
    let size = T::size(config)?;
    if size < size_of::<T>() as u64 {
        return Err(Error::InvalidArgument("an object smaller than its type"));
    }
    let align = align_of::<T>() as u64;
    if align > crate::object::MAX_OBJECT_ALIGN as u64 {
        return Err(Error::InvalidArgument("object alignment above 4096"));
    }
    let type_name = T::type_name();
    if type_name.is_empty() || type_name.len() > crate::object::MAX_TYPE_NAME {
        return Err(Error::InvalidArgument("type name of 1 to 1024 bytes"));
    }
    let (obj_at, total) =
        entry::block_size(name.len(), type_name.len(), size, align).ok_or(Error::InvalidSize {
            size,
            reason: "object too large",
        })?;
    let total = usize::try_from(total).map_err(|_| Error::InvalidSize {
        size,
        reason: "object too large",
    })?;
    let off = d.heap.alloc_raw(total, align.max(16) as usize)?;
    let mut holders = [0; entry::INLINE_HOLDERS];
    holders[0] = me.bits();
    let head = entry::EntryHead {
        magic: entry::MAGIC,
        state: entry::CREATING,
        creator: me.bits(),
        hash,
        obj: off + obj_at,
        size,
        align,
        version: u64::from(T::VERSION),
        config: config.encode(),
        name_len: name.len() as u64,
        type_len: type_name.len() as u64,
        holders,
        more: 0,
        more_word: 0,
        next_removed: 0,
        created_ns: now_ns(),
    };
    let written = (|| {
        // SAFETY: `off` is our fresh block of `total` bytes as block_size computed.
        unsafe { entry::write_new(d.heap, off, &head, name.as_bytes(), type_name.as_bytes())? };
        let e = entry::read(d.heap, off)?;
        d.link(i, &e)
    })();
    let word = match written {
        Ok(w) => w,
        Err(err) => {
            d.discard(off); // freed only if link never published it
            return Err(err);
        }
    };
    let mut local = d.seg.local().lock().unwrap_or_else(|e| e.into_inner());
    *local.holds.entry(off).or_insert(0) += 1;
    local.building.insert(off);
    Ok((off, word))
}

/// Removes a half-built entry if its builder unwinds.
struct Unbuilt<'a> {
    seg: &'a Segment,
    heap: &'a Heap,
    off: u64,
    /// The entry's owner word as we published it: only that block is ours.
    word: u64,
}

impl Drop for Unbuilt<'_> {
    fn drop(&mut self) {
        if crash::dead() {
            return; // a dead process cleans nothing up
        }
        // Under the lock, so that no other thread of ours can see the entry as
        // abandoned (and free and rebuild it) before we are done with it. If the
        // lock cannot be had, the entry stays `Creating` under our live tag but
        // leaves `building`: the next look from this attachment reclaims it.
        let d = Locked::lock(self.heap);
        let mut local = self.seg.local().lock().unwrap_or_else(|e| e.into_inner());
        local.holds.remove(&self.off);
        local.building.remove(&self.off);
        drop(local);
        let Ok(mut d) = d else { return };
        if self.heap.owner_word(self.off).ok() != Some(self.word) {
            return; // not our entry any more
        }
        if let Ok(e) = entry::read(self.heap, self.off) {
            if e.head.state == entry::REMOVED {
                let _ = d.unlink_removed(self.off);
            } else if let Ok(Some(i)) = d.entries().map(|v| {
                v.into_iter()
                    .find(|(_, x)| x.as_ref().is_ok_and(|x| x.off == self.off))
            }) {
                let _ = d.unlink_free(i.0, &e);
            }
        }
    }
}

/// Builds the object of our `Creating` entry at `off`, then marks it ready.
fn build<T: ShmObject>(
    seg: &Segment,
    heap: &Heap,
    (off, word): (u64, u64),
    name: &str,
    config: T::Config,
    init: impl FnOnce(&T),
) -> Result<Shared<T>> {
    let guard = Unbuilt {
        seg,
        heap,
        off,
        word,
    };
    crash::point()?;
    let e = entry::read(heap, off)?;
    let ptr = heap.ptr(e.head.obj)?.cast::<T>();
    // SAFETY: our own Creating entry: nobody else touches its object until it is
    // Ready; the object area is `size` zeroed bytes aligned for T (block_size,
    // alloc alignment), as ShmObject::init requires.
    unsafe { T::init(ptr, &config) };
    // SAFETY: built just now; stays allocated while we hold the entry.
    init(unsafe { ptr.as_ref() });
    crash::point()?;
    let mut d = Locked::lock(heap)?;
    d.mark_ready(off, word, seg.owner_tag())?;
    seg.local()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .building
        .remove(&off);
    drop(d);
    std::mem::forget(guard);
    Ok(Shared::new(seg, off, ptr, config, name))
}

/// Checks one entry's blocks in the heap.
fn check_block(heap: &Heap, e: &entry::Entry, rep: &mut DirReport) {
    match heap.state(e.off) {
        Ok(crate::alloc::BlockState::Shared) => {}
        Ok(s) => rep.violations.push(format!(
            "entry {:?} at {:#x}: block is {s:?}, not published",
            e.name_lossy(),
            e.off
        )),
        Err(err) => {
            rep.violations
                .push(format!("entry {:?} at {:#x}: {err}", e.name_lossy(), e.off))
        }
    }
    if e.head.more != 0 && heap.state(e.head.more).ok() != Some(crate::alloc::BlockState::Shared) {
        rep.violations.push(format!(
            "entry {:?}: holder block {:#x} is not published",
            e.name_lossy(),
            e.head.more
        ));
    }
}

impl Segment {
    /// The segment's directory: objects by name.
    ///
    /// # Examples
    ///
    /// See [`Directory`].
    pub fn directory(&self) -> Directory<'_> {
        Directory { seg: self }
    }

    /// Finds the object `name`, which must be a `T`: [`Directory::find`].
    ///
    /// # Errors
    ///
    /// As [`Directory::find`].
    ///
    /// # Examples
    ///
    /// See [`Directory`].
    pub fn find<T: ShmObject>(&self, name: &str) -> Result<Shared<T>> {
        self.directory().find(name)
    }

    /// Creates the object `name`: [`Directory::create`].
    ///
    /// # Errors
    ///
    /// As [`Directory::create`].
    ///
    /// # Examples
    ///
    /// See [`Directory`].
    pub fn create<T: ShmObject>(&self, name: &str, config: T::Config) -> Result<Shared<T>> {
        self.directory().create(name, config)
    }

    /// Finds the object `name` or creates it: [`Directory::find_or_create`].
    ///
    /// # Errors
    ///
    /// As [`Directory::find_or_create`].
    ///
    /// # Examples
    ///
    /// See [`Directory`].
    pub fn find_or_create<T: ShmObject>(&self, name: &str, config: T::Config) -> Result<Shared<T>> {
        self.directory().find_or_create(name, config)
    }
}
