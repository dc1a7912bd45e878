//! Which robust locks one attachment is taking or holding, so that a lock word
//! naming the caller's own owner tag can be told apart from a legitimate hold.
//!
//! # Why
//!
//! A lock word holds its holder's [`OwnerTag`](crate::OwnerTag): registry slot and
//! incarnation, that is an *attachment* (all clones of one
//! [`Segment`](crate::Segment) share it). When a locker finds its own tag in the
//! word, either another thread of the same attachment holds the lock (legitimate:
//! wait), this very thread does (a self-deadlock: it waits until its deadline, as
//! the locks are not reentrant), or nobody of ours does and a peer wrote our tag
//! there (a forged or stray word: waiting would only burn the caller's timeout,
//! and a call without one would hang). This record tells the third case apart.
//!
//! # Layout (process-local, one per attachment)
//!
//! `OWNED` stripes, one per thread (the first threads to lock through the
//! attachment each claim one, for good), and one shared stripe for every other
//! thread (and for a thread whose own stripe is full). A stripe holds:
//!
//! | word        | meaning                                                         |
//! |-------------|-----------------------------------------------------------------|
//! | `owner`     | the owning thread's id (0: not claimed yet; the shared stripe: 0) |
//! | `overflow`  | shared stripe: entries that found no slot (low half: how many; high half: bumped at each of their leaves) |
//! | `slots[k]`  | `0` free; a lock's address: its call holds it or is *trying* (may put its tag in the word); address \| `WAITING`: its call waits (neither) |
//! | `gens[k]`   | bumped at every leave and every waiting mark of slot `k`'s entry |
//!
//! Only the owner fills a slot of its stripe, and only the entry's holder (the
//! locking thread, or whichever thread drops the guard) writes a filled slot and
//! its generation, so the common path is plain loads and stores: no
//! read-modify-write beyond the lock's own. The shared stripe fills slots by CAS.
//!
//! # Protocol
//!
//! - **enter** (before a lock call touches the lock word): take a free slot,
//!   trying (an `Acquire` load of `0`, then a `Release` store of the address; a
//!   CAS in the shared stripe), or count one overflow entry.
//! - a call that has to wait marks its entry `WAITING` while it does (it holds
//!   nothing and writes no tag then): once nothing it wrote names us any more (a
//!   reader's share withdrawn, a CAS failed), it bumps the slot's generation
//!   (`Release`), then stores the mark (`Release`); and *trying* again before each
//!   CAS that may put its tag in the word (`Release` store). Once it holds the
//!   lock the entry stays trying until the leave.
//! - the lock call's CAS that puts our tag in the lock word is a *release*
//!   (`AcqRel` or `SeqCst`), so whoever later acquires that word also sees the
//!   entry, trying.
//! - **leave** (after the lock word no longer names us on our behalf: released,
//!   or the attempt undone): bump the slot's generation (`Release`), then clear
//!   the slot (`Release`); an overflow entry counts itself out and bumps in one
//!   `Release` add.
//! - **check** (a locker of attachment A sees A's tag in a word): load every
//!   generation (`Acquire`), reload the lock word (`Acquire`), scan `overflow` and
//!   every slot (`Acquire`), load every generation again. The word is forged only
//!   if it still names A, no entry but the checker's own names this lock trying
//!   (and none is ambiguous, see below), and no generation moved.
//!
//! Why no legitimate holder is missed: let thread T of A have written the value
//! the reload reads (its acquiring CAS heads the release sequence that value is
//! in). T's entry was trying before that CAS, so the scan reads it, or a later
//! value of the slot. Trying: found. Later: T left or marked itself waiting, both
//! after bumping the slot's generation, and every later write of the slot happens
//! after that bump (the slot's writers follow one another: each next one loaded
//! the clear before it with `Acquire`), so the bump happens before the second
//! generation load. The first cannot have seen it: T released the word (or
//! withdrew its share) before the bump, so a checker that saw the bump would
//! reload a value written after that, not T's. So a generation moved in between,
//! and the check says "not forged". (Loom found the case a waiting mark without
//! the bump gets wrong: a reader withdrawing its share between the checker's
//! reload and its scan.)
//!
//! Why threads that all wait on a forged word all see it: each marks itself
//! waiting before it spins or sleeps, so at the latest after one sleep slice each
//! finds only waiting entries besides its own.
//!
//! **Ambiguity.** Entries are addresses. A lock inside this attachment's mapping
//! has one address there; a lock outside it (in another mapping of the same
//! segment, or in process memory) may be reached by two addresses in one process.
//! So a lock outside the mapping is judged forged only if no other trying entry
//! at all exists, and any other trying entry outside the mapping makes every
//! check "not forged". Overflow entries name no lock, so they always do.
//!
//! What this costs: on the uncontended path a thread-local read, a few plain
//! loads and three plain stores on the thread's own stripe, next to the lock's
//! own atomics; a thread beyond the first `OWNED` (8) of an attachment, or one
//! holding more than `SLOTS` (6) locks at once, pays a CAS instead of one store.
//! A guard leaked with `mem::forget` leaks its entry: the lock is then never
//! judged forged by this attachment (it waits, as before), which is the safe
//! side. Owned stripes are not given back when their thread exits.
//!
//! # Safety
//!
//! One `unsafe` block: a [`Held`] keeps its record as a tagged raw pointer (so a
//! guard stays two words), made from a reference and turned back into one for
//! the same lifetime.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::marker::PhantomData;

use crate::loom::{AtomicU64, Ordering};

/// Stripes a thread can own (the first threads to lock through an attachment
/// each get one); one more, shared, serves every other thread.
const OWNED: usize = if cfg!(shmkit_loom) { 1 } else { 8 };
/// Slots per stripe.
const SLOTS: usize = if cfg!(shmkit_loom) { 2 } else { 6 };
/// Slot bit 0 (lock addresses are 8-aligned): the entry's call is waiting, neither
/// holding the lock nor about to put its tag in the word.
const WAITING: u64 = 1;
/// `overflow`: the count of entries in the low half, bumped-at-leave in the high.
const OVER_ONE: u64 = 1;
const OVER_LEAVE: u64 = (1 << 32) - 1;

/// One thread's (or, the last, every other thread's) part of the record.
#[repr(C, align(64))]
struct Stripe {
    /// The owning thread's id (0: nobody yet; always 0 for the shared stripe).
    owner: AtomicU64,
    /// Shared stripe only: entries that found every slot taken (low 32 bits:
    /// how many; high 32 bits: bumped at each of their leaves).
    overflow: AtomicU64,
    /// `0` free; a lock's address (trying or holding); address | `WAITING`.
    slots: [AtomicU64; SLOTS],
    /// Per slot: bumped at every leave and every waiting mark of its entry.
    gens: [AtomicU64; SLOTS],
}

impl Stripe {
    fn new() -> Self {
        Self {
            owner: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            gens: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The robust locks one attachment's threads are taking or holding: what lets a
/// lock call tell a lock word that names the caller's own attachment *through a
/// forged or stray write* from one that another thread of the attachment
/// legitimately holds (see [`Context::held_locks`](crate::sync::Context::held_locks)).
///
/// Process-local (never in a segment). A [`Segment`](crate::Segment) keeps one per
/// attachment; a custom [`Context`](crate::sync::Context) (a loom model, say)
/// may keep one per simulated process.
///
/// # Examples
///
/// ```
/// use shmkit::sync::{Context, HeldLocks};
/// let seg = shmkit::SegmentOptions::heap().create()?;
/// assert!(seg.held_locks().is_some()); // a segment keeps one per attachment
/// let record = HeldLocks::new(0..0);    // one for a custom context
/// # let _ = record;
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C, align(256))] // a `Held` keeps 8 bits of its own in the low bits
pub struct HeldLocks {
    /// `OWNED` stripes for threads, then the shared one.
    stripes: [Stripe; OWNED + 1],
    /// Tells this record from another at the same address (threads cache their
    /// stripe by it).
    id: u64,
    /// Addresses in `base..end` name their lock uniquely (the attachment's mapping).
    base: usize,
    end: usize,
}

impl HeldLocks {
    /// An empty record for an attachment whose mapping spans `mapping` (addresses
    /// there name one lock each; an empty range makes every lock "outside").
    pub fn new(mapping: std::ops::Range<usize>) -> Self {
        Self {
            stripes: std::array::from_fn(|_| Stripe::new()),
            id: crate::loom::unique_id(),
            base: mapping.start,
            end: mapping.end,
        }
    }

    fn inside(&self, addr: u64) -> bool {
        addr >= self.base as u64 && addr < self.end as u64
    }

    /// The stripe the calling thread owns in this record (claimed at its first
    /// lock here), or `None`: every owned stripe is taken (use the shared one).
    #[inline]
    fn my_stripe(&self) -> Option<usize> {
        ME.try_with(|c| {
            let (tid, rec, s) = c.get();
            if tid != 0 && rec == self.id {
                // Ours for good once claimed (owners never change).
                return (s < OWNED).then_some(s);
            }
            self.claim(c)
        })
        .ok()
        .flatten()
    }

    #[cold]
    fn claim(&self, c: &Cell<(u64, u64, usize)>) -> Option<usize> {
        let mut tid = c.get().0;
        if tid == 0 {
            tid = crate::loom::unique_id();
        }
        // Relaxed: the owner word only tells threads apart (each stripe is
        // claimed once, by one thread, from a fresh record).
        let s = (0..OWNED)
            .find(|&s| self.stripes[s].owner.load(Ordering::Relaxed) == tid)
            .or_else(|| {
                (0..OWNED).find(|&s| {
                    let o = &self.stripes[s].owner;
                    o.load(Ordering::Relaxed) == 0
                        && o.compare_exchange(0, tid, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                })
            });
        c.set((tid, self.id, s.unwrap_or(OWNED)));
        s
    }
}

// The calling thread: its id, and the record and stripe it used last.
#[cfg(not(shmkit_loom))]
thread_local! {
    static ME: Cell<(u64, u64, usize)> = const { Cell::new((0, 0, OWNED)) };
}
#[cfg(shmkit_loom)]
loom::thread_local! {
    static ME: Cell<(u64, u64, usize)> = Cell::new((0, 0, OWNED));
}

impl std::fmt::Debug for HeldLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldLocks")
            .field("mapping", &(self.base..self.end))
            .finish_non_exhaustive()
    }
}

/// Low bits of a [`Held`] word, below the record's address (256-aligned).
const FLAG: usize = 1; // the owner's own bit (a guard's "inconsistent")
const INDEX_SHIFT: u32 = 1; // bits 1..=6: stripe * SLOTS + slot, or OVER_INDEX
const INDEX_MASK: usize = 0x3f << INDEX_SHIFT;
const OVER_INDEX: usize = 0x3f;
const WAITS: usize = 1 << 7; // marked waiting (else trying)
const ADDR_MASK: usize = !0xff;
const _: () = assert!((OWNED + 1) * SLOTS <= OVER_INDEX);

/// One lock call's entry in a [`HeldLocks`] (or none, for a context without one):
/// made before the call touches the lock word, left when dropped. A guard carries
/// it, so dropping the guard leaves after its release.
///
/// One word, so that a guard stays two words (returned in registers): the
/// record's address with the entry's index, its waiting mark and one bit for the
/// owner (the guard's "inconsistent" flag) in the low bits.
pub(crate) struct Held<'a> {
    ptr: *const HeldLocks,
    _record: PhantomData<&'a HeldLocks>,
}

// SAFETY: a `Held` is a `&'a HeldLocks` (a `Sync` type of atomics) plus bits: it
// may move to, and be shared with, any thread, as that reference may.
unsafe impl Send for Held<'_> {}
// SAFETY: as for Send.
unsafe impl Sync for Held<'_> {}

impl Default for Held<'_> {
    fn default() -> Self {
        Self {
            ptr: std::ptr::null(),
            _record: PhantomData,
        }
    }
}

impl<'a> Held<'a> {
    /// Enters the lock at `addr` in `locks`, *trying* (nothing without a record).
    #[inline]
    pub(crate) fn enter(locks: Option<&'a HeldLocks>, addr: usize) -> Self {
        match locks {
            Some(l) => Self::enter_in(l, addr),
            None => Self::default(),
        }
    }

    /// [`enter`](Self::enter) with a record. Not inlined: it keeps the lock
    /// calls' fast paths small enough to inline where they are called (a guard
    /// then comes back in registers).
    #[inline(never)]
    fn enter_in(l: &'a HeldLocks, addr: usize) -> Self {
        if let Some(s) = l.my_stripe() {
            // Our own stripe: only we fill its slots (a guard that moved to another
            // thread only clears its own), so plain stores do.
            let st = &l.stripes[s];
            for (k, slot) in st.slots.iter().enumerate() {
                // SYNC: Acquire pairs with the Release clear of the slot's previous
                // entry (by whichever thread dropped its guard): its gen bump
                // happens before all we do next. The Release store lets a check
                // that reads our entry see that bump too; the lock word's release
                // CAS that follows publishes the entry.
                if slot.load(Ordering::Acquire) == 0 {
                    slot.store(addr as u64, Ordering::Release);
                    return Self::at(l, s * SLOTS + k);
                }
            }
        }
        Self::enter_shared(l, addr)
    }

    /// The entry at `index` of `l`.
    #[inline]
    fn at(l: &'a HeldLocks, index: usize) -> Self {
        Self {
            ptr: std::ptr::from_ref(l).map_addr(|a| a | (index << INDEX_SHIFT)),
            _record: PhantomData,
        }
    }

    /// Enters in the shared stripe (a CAS per slot), or counts an overflow entry.
    #[cold]
    fn enter_shared(l: &'a HeldLocks, addr: usize) -> Self {
        let st = &l.stripes[OWNED];
        for (k, slot) in st.slots.iter().enumerate() {
            // SYNC: AcqRel: as the load and store in `enter`, in one step (other
            // threads fill these slots too).
            if slot.load(Ordering::Relaxed) == 0
                && slot
                    .compare_exchange(0, addr as u64, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                return Self::at(l, OWNED * SLOTS + k);
            }
        }
        // Relaxed: published by the lock word's release CAS, as a slot.
        st.overflow.fetch_add(OVER_ONE, Ordering::Relaxed);
        Self::at(l, OVER_INDEX)
    }

    fn bits(&self) -> usize {
        self.ptr.addr()
    }

    /// The record, if the context keeps one.
    #[inline]
    fn locks(&self) -> Option<&'a HeldLocks> {
        let p = self.ptr.map_addr(|a| a & ADDR_MASK);
        // SAFETY: `p` is null, or the address of the `&'a HeldLocks` given to
        // `enter` (with its provenance: only low bits were set and cleared), which
        // lives for 'a.
        unsafe { p.as_ref() }
    }

    /// The entry's index (`OVER_INDEX` for an overflow entry).
    #[inline]
    fn index(&self) -> usize {
        (self.bits() & INDEX_MASK) >> INDEX_SHIFT
    }

    /// Our stripe and slot, if the entry has a slot (not overflow, not without a
    /// record).
    #[inline]
    fn slot(&self) -> Option<(&'a Stripe, usize)> {
        let l = self.locks()?;
        let i = self.index();
        (i < OVER_INDEX).then(|| (&l.stripes[i / SLOTS], i % SLOTS))
    }

    fn set(&mut self, bit: usize, on: bool) {
        self.ptr = self.ptr.map_addr(|a| if on { a | bit } else { a & !bit });
    }

    /// The owner's bit (a guard's "inconsistent" flag).
    #[inline]
    pub(crate) fn flag(&self) -> bool {
        self.bits() & FLAG != 0
    }

    /// Sets the owner's bit.
    #[inline]
    pub(crate) fn set_flag(&mut self, on: bool) {
        self.set(FLAG, on);
    }

    /// Bumps slot `k`'s generation. Only the entry's holder writes it (the next
    /// entry in the slot starts after our clear), so a load and a store do.
    #[inline]
    fn bump(st: &Stripe, k: usize) {
        let g = st.gens[k].load(Ordering::Relaxed);
        // SYNC: Release pairs with the Acquire gen loads in `forged`: what we
        // released (a lock word, a reader share) happens before whoever sees it.
        st.gens[k].store(g.wrapping_add(1), Ordering::Release);
    }

    /// Marks the entry (of the lock at `addr`) *waiting*: this call neither holds
    /// the lock nor is about to put its tag in the word, until
    /// [`trying`](Self::trying). Checks ignore waiting entries, so that threads of
    /// one attachment that all wait on a forged word all see it as forged. Only
    /// once nothing the call wrote names us any more (a reader's share withdrawn,
    /// a failed CAS): like a leave, it bumps the slot's generation first.
    #[inline]
    pub(crate) fn waiting(&mut self, addr: usize) {
        if self.bits() & WAITS != 0 {
            return;
        }
        if let Some((st, k)) = self.slot() {
            Self::bump(st, k);
            // SYNC: Release, as every store to a slot: a check that reads it also
            // sees our bump (module docs).
            st.slots[k].store(addr as u64 | WAITING, Ordering::Release);
            self.set(WAITS, true);
        }
    }

    /// Marks the entry *trying* again, before a CAS that may put our tag in the
    /// word (the CAS's release half publishes the mark).
    #[inline]
    pub(crate) fn trying(&mut self, addr: usize) {
        if self.bits() & WAITS == 0 {
            return;
        }
        if let Some((st, k)) = self.slot() {
            // SYNC: Release, as in `waiting`.
            st.slots[k].store(addr as u64, Ordering::Release);
            self.set(WAITS, false);
        }
    }

    /// Whether a word naming our own attachment in the lock at `addr` is forged:
    /// no other thread of the attachment is holding the lock, or trying to take
    /// it. `reload` reads the lock word again (with `Acquire`) and says whether it
    /// still names us.
    ///
    /// `false` when the context keeps no record (nothing can be told then).
    #[cold]
    pub(crate) fn forged(&self, addr: usize, reload: impl FnOnce() -> bool) -> bool {
        let Some(l) = self.locks() else {
            return false;
        };
        // SYNC: Acquire pairs with the Release gen stores (and overflow leaves): a
        // bump seen here means what it released did so before our reload.
        let before = generations(l);
        if !reload() {
            return false;
        }
        let addr = addr as u64;
        let ours_inside = l.inside(addr);
        let mine = self.index();
        // SYNC: Acquire pairs with the Release overflow leave.
        let over = l.stripes[OWNED].overflow.load(Ordering::Acquire) & 0xffff_ffff;
        if over > u64::from(mine == OVER_INDEX) {
            return false; // an entry that names no lock: could be this one
        }
        let slots = l.stripes.iter().flat_map(|st| st.slots.iter());
        for (i, slot) in slots.enumerate() {
            if i == mine {
                continue;
            }
            // SYNC: Acquire pairs with the Release stores to slots (enter,
            // `waiting`, `trying`, the clear): the gen bumps before them are seen
            // by the second `generations` below.
            let a = slot.load(Ordering::Acquire);
            if a != 0 && a & WAITING == 0 && (a == addr || !ours_inside || !l.inside(a)) {
                return false; // this lock, or possibly this lock
            }
        }
        // Unchanged: nobody of ours left a lock, or began waiting, meanwhile.
        generations(l) == before
    }
}

/// Every slot's generation and the overflow leaves, in order (`Acquire`).
fn generations(l: &HeldLocks) -> [u64; (OWNED + 1) * SLOTS + 1] {
    let mut out = [0; (OWNED + 1) * SLOTS + 1];
    let gens = l.stripes.iter().flat_map(|st| st.gens.iter());
    for (o, g) in out.iter_mut().zip(gens) {
        *o = g.load(Ordering::Acquire);
    }
    out[(OWNED + 1) * SLOTS] = l.stripes[OWNED].overflow.load(Ordering::Acquire) >> 32;
    out
}

impl Drop for Held<'_> {
    #[inline]
    fn drop(&mut self) {
        let Some(l) = self.locks() else { return };
        match self.slot() {
            Some((st, k)) => {
                Self::bump(st, k);
                // SYNC: Release pairs with the Acquire slot loads in `forged` and in
                // the next `enter` of the slot: our bump happens before them.
                st.slots[k].store(0, Ordering::Release);
            }
            // SYNC: Release pairs with the Acquire overflow loads in `forged`:
            // count down and bump in one step.
            None => {
                l.stripes[OWNED]
                    .overflow
                    .fetch_add(OVER_LEAVE, Ordering::Release);
            }
        }
    }
}
