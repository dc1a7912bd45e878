//! The directory's index: a hash table of entry offsets, under one robust lock,
//! whose every multi-step change is journalled.
//!
//! # Layout
//!
//! The root ([`DirRoot`], inside a robust [`Mutex`]) sits in the heap header's
//! root words, so every process finds it without agreeing on an offset. It names
//! a table block of `buckets` words (a power of two, open addressing, linear
//! probing). A bucket word is `0` (empty), `1` (tombstone) or
//! `hash28 << 36 | entry offset`: the top bits of the name's hash let a probe and a
//! rebuild skip entries without touching their blocks.
//!
//! # Crash safety
//!
//! Every change runs under the lock. A change of one word is its own commit
//! point; a change of several (link a new entry, remove one, free one, swap the
//! table, give an entry an overflow holder block) first writes its intent into the
//! root's journal and clears it when done. Whoever takes the lock next and finds a
//! journal finishes or undoes the change ([`Locked::recover`]), whether the
//! holder died (`OwnerDied`) or not. Blocks follow the heap's rule: *publish
//! before link, unlink before adopt, adopt before forgetting, free last*, so a
//! process killed at any instruction leaves each block either reachable, `Shared`
//! and named by the journal (finished by recovery), or owned by the dead process
//! (returned by the heap's `reclaim_dead`). Nothing reachable is ever freed
//! because a word looked wrong: corruption is an error, never a rebuild.
#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::time::Duration;

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::crash;
use super::entry::{self, CREATING, Entry, INLINE_HOLDERS, READY, REMOVED};
use crate::alloc::{BlockState, Heap};
use crate::segment::Segment;
use crate::sync::{LockError, Mutex, MutexGuard};
use crate::{Error, OwnerTag, Result};

/// `magic` of a built directory ("SHMKDIR2": entries of 208 bytes, a journal of
/// five words).
const DIR_MAGIC: u64 = 0x3252_4944_4b4d_4853;
/// Buckets of a new table.
const MIN_BUCKETS: u64 = 64;
/// Largest table (2^26 buckets, 512 MiB).
const MAX_BUCKETS: u64 = 1 << 26;
/// Empty bucket.
const EMPTY: u64 = 0;
/// Removed bucket (keeps probe chains intact until the next rebuild).
const TOMB: u64 = 1;
/// Bits of an entry offset in a bucket word (offsets stay below 64 GiB).
const OFF_BITS: u32 = 36;
const OFF_MASK: u64 = (1 << OFF_BITS) - 1;
/// Bits of hash kept in a bucket word.
const HASH_MASK: u64 = (1 << (64 - OFF_BITS)) - 1;
/// Longest walk of the removed list before it is declared cyclic.
const MAX_WALK: u64 = 1 << 24;
/// How long a directory call waits for the lock held by a live process.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Journal operations.
const J_LINK: u64 = 1;
const J_UNLINK: u64 = 2;
const J_REMOVE: u64 = 3;
const J_TABLE: u64 = 4;
const J_MORE: u64 = 5;

/// The directory's root: plain words, under the root lock.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DirRoot {
    /// 0 before the first object is created, then [`DIR_MAGIC`].
    pub magic: u64,
    /// Offset of the table block.
    pub table: u64,
    /// Buckets in it.
    pub buckets: u64,
    /// Entries linked in the table.
    pub live: u64,
    /// Entries plus tombstones.
    pub used: u64,
    /// Head of the removed-but-held list.
    pub removed: u64,
    /// Bumped by every change.
    pub generation: u64,
    /// Journal: operation, then its arguments.
    pub j_op: u64,
    /// Arguments (blocks, and the stamped owner words they were published with).
    pub j_a: u64,
    /// See `j_a`.
    pub j_b: u64,
    /// See `j_a`.
    pub j_c: u64,
    /// See `j_a`.
    pub j_d: u64,
    /// See `j_a`.
    pub j_e: u64,
}

#[cfg(not(shmkit_loom))]
const _: () = assert!(size_of::<Mutex<DirRoot>>() <= crate::alloc::ROOT_WORDS * 8);

/// The bucket word of an entry.
fn bucket_word(off: u64, hash: u64) -> u64 {
    ((hash & HASH_MASK) << OFF_BITS) | off
}

/// The directory, locked.
pub struct Locked<'h> {
    pub(super) heap: &'h Heap,
    pub(super) seg: &'h Segment,
    guard: std::mem::ManuallyDrop<MutexGuard<'h, DirRoot>>,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if super::crash::dead() {
            return; // a dead process unlocks nothing
        }
        // SAFETY: dropped once, here; the guard is not used afterwards.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.guard) };
    }
}

/// What a probe for a name found.
pub struct Probe {
    /// The bucket and the entry of that name.
    pub found: Option<(usize, Entry)>,
    /// The first bucket a new entry of that name may take.
    pub free: Option<usize>,
    /// A damaged entry met on the way (reported when the name is not found).
    pub damaged: Option<Error>,
}

impl<'h> Locked<'h> {
    /// Takes the directory lock of `heap`'s segment, finishing whatever a previous
    /// holder left in the journal.
    ///
    /// # Errors
    ///
    /// [`Error::LockTimeout`] if a live process holds it past [`LOCK_WAIT`];
    /// [`Error::Corrupt`] if the journal cannot be finished.
    pub fn lock(heap: &'h Heap) -> Result<Self> {
        let seg = heap.segment();
        let m = root_lock(heap)?;
        let guard = match m.lock_for(seg, LOCK_WAIT) {
            Ok(g) => g,
            Err(LockError::OwnerDied(mut g)) => {
                // The journal, replayed below, is the whole repair.
                g.make_consistent();
                g
            }
            // Only a stray write makes it so (this module always repairs), and it
            // erased the holder's name: taking it over could make two mutators.
            // The directory stays refused (an error, never a second writer).
            Err(LockError::NotRecoverable) => {
                return Err(Error::corrupt(
                    "directory lock",
                    "left not recoverable (this module never does that: a stray write)",
                ));
            }
            Err(LockError::TimedOut) => {
                return Err(Error::LockTimeout {
                    what: "the directory lock",
                    waited: LOCK_WAIT,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let mut d = Locked {
            heap,
            seg,
            guard: std::mem::ManuallyDrop::new(guard),
        };
        if d.guard.j_op != 0 {
            d.recover()?;
        }
        Ok(d)
    }

    /// The root, as the lock holder sees it.
    pub fn root(&self) -> DirRoot {
        **self.guard
    }

    /// Whether the directory was ever built.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for a root that is neither built nor empty.
    pub fn built(&self) -> Result<bool> {
        let r = **self.guard;
        match r.magic {
            DIR_MAGIC => Ok(true),
            0 if r.table == 0 && r.removed == 0 => Ok(false),
            m => Err(Error::corrupt(
                "directory root",
                format!("magic {m:#x}, table {:#x}", r.table),
            )),
        }
    }

    /// Builds an empty directory (first create in the segment).
    ///
    /// # Errors
    ///
    /// Heap errors.
    pub fn build(&mut self) -> Result<()> {
        if self.built()? {
            return Ok(());
        }
        let t = self.new_table(MIN_BUCKETS)?;
        if let Err(e) = self.publish_journalled(t, J_TABLE, [t, 0, 0, 0, MIN_BUCKETS], 1) {
            self.discard(t);
            return Err(e);
        }
        crash::point()?;
        let g = &mut **self.guard;
        g.live = 0;
        g.used = 0;
        g.buckets = MIN_BUCKETS;
        g.table = t;
        crash::point()?;
        let g = &mut **self.guard;
        g.magic = DIR_MAGIC;
        g.generation = g.generation.wrapping_add(1);
        self.clear_journal();
        Ok(())
    }

    fn journal(&mut self, op: u64, args: [u64; 5]) {
        let g = &mut **self.guard;
        [g.j_a, g.j_b, g.j_c, g.j_d, g.j_e] = args;
        g.j_op = op;
        // The journal is complete in memory before any step it covers: a process
        // killed at an instruction boundary leaves its stores in program order
        // (the kernel makes them visible before its death is), so only the
        // compiler could reorder them.
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }

    fn clear_journal(&mut self) {
        // Every step the journal covered is done before it is forgotten.
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        let g = &mut **self.guard;
        g.j_op = 0;
        [g.j_a, g.j_b, g.j_c, g.j_d, g.j_e] = [0; 5];
    }

    /// A fresh publish stamp: unique to this attachment (its owner tag) and call.
    fn stamp(&self) -> u64 {
        #[allow(clippy::disallowed_types)] // a process-local counter, not shared memory
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.seg.owner_tag().bits().to_le_bytes());
        bytes[8..].copy_from_slice(&n.to_le_bytes());
        crate::layout::fnv1a(crate::layout::FNV_START, &bytes) | 1
    }

    /// Publishes our block `off` with a fresh stamp, journalled first as `op`
    /// (`args` with the stamped word put at `word_at`); returns the word.
    fn publish_journalled(
        &mut self,
        off: u64,
        op: u64,
        mut args: [u64; 5],
        word_at: usize,
    ) -> Result<u64> {
        let stamp = self.stamp();
        args[word_at] = crate::alloc::shared_stamped(stamp);
        self.journal(op, args);
        crash::point()?;
        match self.heap.publish_stamped(off, stamp) {
            Ok(w) => Ok(w),
            Err(e) => {
                // Not published: still ours, the caller frees it.
                self.clear_journal();
                Err(e)
            }
        }
    }

    /// Frees a block of ours that a failed change never published (a published
    /// one is the journal's to finish). A dead process frees nothing.
    pub(super) fn discard(&self, off: u64) {
        if crash::dead() {
            return;
        }
        let me = self.seg.owner_tag();
        if self.heap.state(off).ok() == Some(BlockState::Owned(me)) {
            let _ = self.heap.free(off);
        }
    }

    /// A zeroed table block of `buckets` words, owned by us.
    fn new_table(&self, buckets: u64) -> Result<u64> {
        let bytes = (buckets * 8) as usize;
        let t = self.heap.alloc_raw(bytes, 8)?;
        let p = self.heap.ptr(t)?;
        // SAFETY: a fresh block of at least `bytes` bytes, ours alone.
        unsafe { p.as_ptr().write_bytes(0, bytes) };
        Ok(t)
    }

    /// The table, checked: its words and their number.
    fn table(&self) -> Result<(NonNull<u64>, u64)> {
        self.table_at().map(|(p, b, _)| (p, b))
    }

    /// The table, checked: its words, their number, and its block's offset.
    fn table_at(&self) -> Result<(NonNull<u64>, u64, u64)> {
        let r = **self.guard;
        let (t, b) = (r.table, r.buckets);
        if !b.is_power_of_two() || !(MIN_BUCKETS..=MAX_BUCKETS).contains(&b) || t % 8 != 0 {
            return Err(Error::corrupt(
                "directory root",
                format!("table {t:#x} of {b} buckets"),
            ));
        }
        let size = self.heap.usable_size(t).map_err(|e| {
            Error::corrupt(
                "directory root",
                format!("table {t:#x} is no live block ({e})"),
            )
        })?;
        if size < b * 8 {
            return Err(Error::corrupt(
                "directory root",
                format!("table block of {size} bytes for {b} buckets"),
            ));
        }
        Ok((self.heap.ptr(t)?.cast::<u64>(), b, t))
    }

    fn get(t: NonNull<u64>, i: usize) -> u64 {
        // SAFETY: callers pass i < buckets of a table checked by `table()`.
        unsafe { t.as_ptr().add(i).read() }
    }

    fn set(t: NonNull<u64>, i: usize, w: u64) {
        // SAFETY: as `get`; we hold the lock, the only writer.
        unsafe { t.as_ptr().add(i).write(w) };
    }

    /// Looks `name` up.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for a damaged table (a damaged entry is skipped and
    /// reported in [`Probe::damaged`]).
    pub fn probe(&self, name: &[u8], hash: u64) -> Result<Probe> {
        let (t, b) = self.table()?;
        let mut p = Probe {
            found: None,
            free: None,
            damaged: None,
        };
        let mut i = (hash & HASH_MASK & (b - 1)) as usize;
        for _ in 0..b {
            let w = Self::get(t, i);
            match w {
                EMPTY => {
                    p.free.get_or_insert(i);
                    return Ok(p);
                }
                TOMB => {
                    p.free.get_or_insert(i);
                }
                w if w >> OFF_BITS == hash & HASH_MASK => {
                    match entry::read(self.heap, w & OFF_MASK) {
                        Ok(e) if e.head.hash == hash && e.name == name => {
                            p.found = Some((i, e));
                            return Ok(p);
                        }
                        Ok(_) => {}
                        Err(err) => {
                            p.damaged.get_or_insert(err);
                        }
                    }
                }
                _ => {}
            }
            i = (i + 1) & (b as usize - 1);
        }
        Ok(p)
    }

    /// Makes room for one more entry (rebuilding the table when it is 3/4 used).
    /// Returns whether it rebuilt (bucket positions changed: probe again).
    ///
    /// # Errors
    ///
    /// Heap errors; [`Error::OutOfMemory`] past the largest table.
    pub fn make_room(&mut self) -> Result<bool> {
        let r = **self.guard;
        let (_, buckets) = self.table()?;
        let (live, used) = (r.live.min(buckets), r.used.min(buckets));
        if used.saturating_add(1).saturating_mul(4) <= buckets.saturating_mul(3) {
            return Ok(false);
        }
        let mut nb = buckets;
        if live.saturating_add(1).saturating_mul(2) > buckets {
            nb = nb.saturating_mul(2);
        }
        if nb > MAX_BUCKETS {
            return Err(Error::OutOfMemory {
                requested: nb * 8,
                available: 0,
            });
        }
        self.rebuild(nb)?;
        Ok(true)
    }

    /// Halves the table while it is at most 1/8 full (so a directory that held
    /// many names gives the memory back once they are removed).
    ///
    /// # Errors
    ///
    /// Heap errors (the old table then stays).
    pub fn shrink(&mut self) -> Result<()> {
        let (_, buckets) = self.table()?;
        if buckets <= MIN_BUCKETS || self.guard.live.saturating_mul(8) >= buckets {
            return Ok(());
        }
        // Counted (rarely: only when shrinking), not trusted from the root: the
        // new table must hold them all.
        let (live, _) = self.count()?;
        if live * 8 < buckets {
            let mut nb = buckets / 2;
            while nb > MIN_BUCKETS && live * 8 < nb {
                nb /= 2;
            }
            self.rebuild(nb)?;
        }
        Ok(())
    }

    /// Copies every entry into a new table of `nb` buckets and swaps it in.
    fn rebuild(&mut self, nb: u64) -> Result<()> {
        let (old, ob, old_off) = self.table_at()?;
        let (live, _) = self.count()?;
        if live >= nb {
            return Err(Error::corrupt(
                "directory table",
                format!("{live} entries do not fit {nb} buckets"),
            ));
        }
        let new = self.new_table(nb)?;
        let nt = self.heap.ptr(new)?.cast::<u64>();
        let mut live = 0;
        for i in 0..ob as usize {
            let w = Self::get(old, i);
            if w <= TOMB {
                continue;
            }
            let mut j = ((w >> OFF_BITS) & (nb - 1)) as usize;
            // Bounded: live < nb, so a free bucket exists.
            while Self::get(nt, j) != EMPTY {
                j = (j + 1) & (nb as usize - 1);
            }
            Self::set(nt, j, w);
            live += 1;
        }
        let old_word = self.published_word(old_off, "directory table")?;
        if let Err(e) = self.publish_journalled(new, J_TABLE, [new, 0, old_off, old_word, nb], 1) {
            self.discard(new);
            return Err(e);
        }
        crash::point()?;
        // The table word is the commit point; recovery (which runs before anyone
        // reads the table again) sets the bucket count that goes with it.
        let g = &mut **self.guard;
        g.table = new;
        crash::point()?;
        let g = &mut **self.guard;
        g.buckets = nb;
        g.live = live;
        g.used = live;
        g.generation = g.generation.wrapping_add(1);
        self.release(old_off, old_word)
    }

    /// The owner word of a reachable block of ours, which must be published.
    fn published_word(&self, off: u64, what: &'static str) -> Result<u64> {
        let w = self.heap.owner_word(off)?;
        if BlockState::from_word(w) != Some(BlockState::Shared) {
            return Err(Error::corrupt(
                what,
                format!("block {off:#x} is linked but not published (owner word {w:#018x})"),
            ));
        }
        Ok(w)
    }

    /// The second half of every free: `off` is unreachable, and ours while its
    /// owner word is still exactly `word` (the journal names both). Adopt it,
    /// forget the journal, free it. Any other word means it is not ours any more
    /// (the heap's `reclaim_dead` returns a block a dead process adopted, and a
    /// block freed since may be someone else's now): then only forget.
    fn release(&mut self, off: u64, word: u64) -> Result<()> {
        if off == 0
            || !crate::alloc::is_stamped(word)
            || self.heap.owner_word(off).ok() != Some(word)
        {
            self.clear_journal();
            return Ok(());
        }
        crash::point()?;
        self.heap.adopt_if(off, word)?;
        crash::point()?;
        self.clear_journal();
        crash::point()?;
        // Ours now, named by nothing: if we die before this, reclaim_dead frees it.
        self.heap.free(off)
    }

    /// Links a new entry (a block we own, fully written) at bucket `i`.
    ///
    /// # Errors
    ///
    /// Heap errors (the block is then still ours).
    pub fn link(&mut self, i: usize, e: &Entry) -> Result<u64> {
        let (t, _) = self.table()?;
        let word = self.publish_journalled(e.off, J_LINK, [e.off, 0, 0, 0, 0], 1)?;
        crash::point()?;
        let prev = Self::get(t, i);
        Self::set(t, i, bucket_word(e.off, e.head.hash));
        crash::point()?;
        let g = &mut **self.guard;
        g.live = g.live.saturating_add(1);
        if prev == EMPTY {
            g.used = g.used.saturating_add(1);
        }
        g.generation = g.generation.wrapping_add(1);
        self.clear_journal();
        Ok(word)
    }

    /// Unlinks the entry from bucket `i` and frees it with its holder block.
    ///
    /// # Errors
    ///
    /// Heap and corruption errors (the journal then finishes the job later).
    pub fn unlink_free(&mut self, i: usize, e: &Entry) -> Result<()> {
        let word = self.published_word(e.off, "directory entry")?;
        self.journal(J_UNLINK, [e.off, word, 0, 0, 0]);
        crash::point()?;
        let (t, _) = self.table()?;
        Self::set(t, i, TOMB);
        self.guard.live = self.guard.live.saturating_sub(1);
        self.guard.generation = self.guard.generation.wrapping_add(1);
        crash::point()?;
        self.free_entry(e.off, word)
    }

    /// Unlinks the entry from the removed list (its predecessor there is `prev`,
    /// 0 for the head) and frees it. Checked before anything changes: `prev` must
    /// link it, else `Corrupt` and nothing is freed (an entry that merely claims
    /// to be removed is never freed under its table bucket).
    ///
    /// # Errors
    ///
    /// As [`unlink_free`](Self::unlink_free).
    pub fn unlink_free_listed(&mut self, e: &Entry, prev: u64) -> Result<()> {
        let linked = if prev == 0 {
            self.guard.removed == e.off
        } else {
            entry::read(self.heap, prev)?.head.next_removed == e.off
        };
        if !linked || e.head.state != REMOVED {
            return Err(Error::corrupt(
                "directory removed list",
                format!(
                    "entry at {:#x} is not on the list where it claims to be",
                    e.off
                ),
            ));
        }
        let word = self.published_word(e.off, "directory entry")?;
        let next = e.head.next_removed;
        // Listed: j_c is the predecessor, j_d the successor, j_e = 1.
        self.journal(J_UNLINK, [e.off, word, prev, next, 1]);
        crash::point()?;
        self.relink(prev, e.off, next)?;
        self.guard.generation = self.guard.generation.wrapping_add(1);
        crash::point()?;
        self.free_entry(e.off, word)
    }

    /// Makes `prev` (0: the head) point past `off` to `next`, if it still points
    /// at `off` (idempotent, for recovery).
    fn relink(&mut self, prev: u64, off: u64, next: u64) -> Result<()> {
        if prev == 0 {
            if self.guard.removed == off {
                self.guard.removed = next;
            }
        } else if let Ok(mut p) = entry::read(self.heap, prev) {
            if p.head.next_removed == off {
                p.head.next_removed = next;
                entry::write_head(self.heap, &p)?;
            }
        }
        Ok(())
    }

    /// Unlinks a removed entry found by a walk of the list, and frees it.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if it is not on the list; as
    /// [`unlink_free_listed`](Self::unlink_free_listed).
    pub fn unlink_removed(&mut self, off: u64) -> Result<()> {
        let list = self.removed()?;
        let Some((e, prev)) = list.into_iter().find(|(e, _)| e.off == off) else {
            return Err(Error::corrupt(
                "directory removed list",
                format!("entry at {off:#x} is removed but on no list"),
            ));
        };
        self.unlink_free_listed(&e, prev)
    }

    /// Moves a held entry from bucket `i` to the removed list.
    ///
    /// # Errors
    ///
    /// Corruption errors (the journal then finishes the job later).
    pub fn move_to_removed(&mut self, i: usize, e: &mut Entry) -> Result<()> {
        self.journal(J_REMOVE, [e.off, 0, 0, 0, 0]);
        crash::point()?;
        let (t, _) = self.table()?;
        Self::set(t, i, TOMB);
        crash::point()?;
        self.guard.live = self.guard.live.saturating_sub(1);
        self.push_removed(e)?;
        self.guard.generation = self.guard.generation.wrapping_add(1);
        self.clear_journal();
        Ok(())
    }

    fn push_removed(&mut self, e: &mut Entry) -> Result<()> {
        e.head.state = REMOVED;
        e.head.next_removed = self.guard.removed;
        entry::write_head(self.heap, e)?;
        crash::point()?;
        self.guard.removed = e.off;
        crash::point()?;
        Ok(())
    }

    /// The entries of the removed list, in order: (entry, its predecessor).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for a damaged entry or a cycle.
    pub fn removed(&self) -> Result<Vec<(Entry, u64)>> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let (mut prev, mut cur) = (0, self.guard.removed);
        while cur != 0 {
            if !seen.insert(cur) || seen.len() as u64 > MAX_WALK {
                return Err(Error::corrupt("directory removed list", "cycle"));
            }
            let e = entry::read(self.heap, cur)?;
            if e.head.state != REMOVED {
                return Err(Error::corrupt(
                    "directory removed list",
                    format!("entry at {cur:#x} in state {}", e.head.state),
                ));
            }
            let next = e.head.next_removed;
            out.push((e, prev));
            prev = cur;
            cur = next;
        }
        Ok(out)
    }

    /// Frees an unreachable entry block published as `word` (journal set by the
    /// caller): first its holder block, then itself.
    fn free_entry(&mut self, off: u64, word: u64) -> Result<()> {
        if !crate::alloc::is_stamped(word) || self.heap.owner_word(off).ok() != Some(word) {
            // Not ours any more (a dead process adopted it: the heap reclaims it).
            self.clear_journal();
            return Ok(());
        }
        if let Ok(mut e) = entry::read(self.heap, off) {
            let (more, more_word) = (e.head.more, e.head.more_word);
            if more != 0 {
                let ours = crate::alloc::is_stamped(more_word)
                    && self.heap.owner_word(more).ok() == Some(more_word);
                if ours {
                    self.heap.adopt_if(more, more_word)?;
                    crash::point()?;
                }
                // Forget it before freeing it: a later look must not find it.
                e.head.more = 0;
                e.head.more_word = 0;
                entry::write_head(self.heap, &e)?;
                crash::point()?;
                if ours {
                    self.heap.free(more)?;
                    crash::point()?;
                }
            }
        }
        self.release(off, word)
    }

    /// Sets entry state READY (the creator, after building the object).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the entry is no longer the one we created.
    pub fn mark_ready(&mut self, off: u64, word: u64, me: OwnerTag) -> Result<()> {
        if self.heap.owner_word(off).ok() != Some(word) {
            return Err(Error::corrupt(
                "directory entry",
                format!("entry at {off:#x} was freed while we built it"),
            ));
        }
        let mut e = entry::read(self.heap, off)?;
        if e.head.state == REMOVED && e.head.creator == me.bits() {
            // Removed while we built it: the name is gone, our handle keeps the
            // object until dropped (it is on the removed list, held by us).
            return Ok(());
        }
        if e.head.state != CREATING || e.head.creator != me.bits() {
            return Err(Error::corrupt(
                "directory entry",
                format!(
                    "entry at {off:#x} changed while we built it (state {}, creator {:#x})",
                    e.head.state, e.head.creator
                ),
            ));
        }
        crash::point()?;
        e.head.state = READY;
        entry::write_head(self.heap, &e)?;
        self.guard.generation = self.guard.generation.wrapping_add(1);
        Ok(())
    }

    /// Records `me` as a holder of `e`.
    ///
    /// # Errors
    ///
    /// Heap errors (for the overflow block).
    pub fn add_holder(&mut self, e: &mut Entry, me: OwnerTag) -> Result<()> {
        let t = me.bits();
        if e.head.holders.contains(&t) {
            return Ok(());
        }
        crash::point()?;
        if let Some(h) = e.head.holders.iter_mut().find(|h| **h == 0) {
            *h = t;
            return entry::write_head(self.heap, e);
        }
        for i in 0..INLINE_HOLDERS {
            if !self
                .seg
                .is_owner_alive(OwnerTag::from_word(e.head.holders[i]))
            {
                e.head.holders[i] = t;
                return entry::write_head(self.heap, e);
            }
        }
        if e.head.more == 0 {
            self.add_more(e)?;
        }
        let (m, n) = self.more(e)?;
        let s = me.slot() as usize;
        if s < n {
            Self::set(m, s, t);
        }
        Ok(())
    }

    /// Gives `e` an overflow holder block of one word per registry slot.
    fn add_more(&mut self, e: &mut Entry) -> Result<()> {
        let n = self.seg.registry_slots() as u64;
        let blk = self.heap.alloc_raw((n * 8) as usize, 8)?;
        // SAFETY: a fresh block of n * 8 bytes, ours alone.
        unsafe {
            self.heap
                .ptr(blk)?
                .as_ptr()
                .write_bytes(0, (n * 8) as usize)
        };
        let word = match self.publish_journalled(blk, J_MORE, [e.off, blk, 0, 0, 0], 2) {
            Ok(w) => w,
            Err(err) => {
                self.discard(blk);
                return Err(err);
            }
        };
        crash::point()?;
        e.head.more = blk;
        e.head.more_word = word;
        entry::write_head(self.heap, e)?;
        crash::point()?;
        self.clear_journal();
        Ok(())
    }

    /// The overflow holder block of `e`, checked.
    fn more(&self, e: &Entry) -> Result<(NonNull<u64>, usize)> {
        let m = e.head.more;
        let n = self.seg.registry_slots() as u64;
        let size = self.heap.usable_size(m).map_err(|err| {
            Error::corrupt(
                "directory entry",
                format!("entry at {:#x}: holder block {m:#x} ({err})", e.off),
            )
        })?;
        if !crate::alloc::is_stamped(e.head.more_word)
            || self.heap.owner_word(m).ok() != Some(e.head.more_word)
        {
            return Err(Error::corrupt(
                "directory entry",
                format!(
                    "entry at {:#x}: holder block {m:#x} is not the one it published",
                    e.off
                ),
            ));
        }
        if m % 8 != 0 || size < n * 8 {
            return Err(Error::corrupt(
                "directory entry",
                format!("entry at {:#x}: holder block {m:#x} of {size} bytes", e.off),
            ));
        }
        Ok((self.heap.ptr(m)?.cast::<u64>(), n as usize))
    }

    /// Forgets `me` as a holder of `e`.
    ///
    /// # Errors
    ///
    /// Corruption errors.
    pub fn remove_holder(&mut self, e: &mut Entry, me: OwnerTag) -> Result<()> {
        crash::point()?;
        let t = me.bits();
        if let Some(h) = e.head.holders.iter_mut().find(|h| **h == t) {
            *h = 0;
            entry::write_head(self.heap, e)?;
        }
        if e.head.more != 0 {
            let (m, n) = self.more(e)?;
            let s = me.slot() as usize;
            if s < n && Self::get(m, s) == t {
                Self::set(m, s, 0);
            }
        }
        Ok(())
    }

    /// Live holders of `e`.
    ///
    /// # Errors
    ///
    /// Corruption errors.
    pub fn live_holders(&self, e: &Entry) -> Result<u64> {
        let alive = |t: u64| t != 0 && self.seg.is_owner_alive(OwnerTag::from_word(t));
        let mut n = e.head.holders.iter().filter(|t| alive(**t)).count() as u64;
        if e.head.more != 0 {
            let (m, k) = self.more(e)?;
            n += (0..k).filter(|i| alive(Self::get(m, *i))).count() as u64;
        }
        Ok(n)
    }

    /// Every entry of the table, with its bucket (damaged ones as errors).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for a damaged table.
    pub fn entries(&self) -> Result<Vec<(usize, Result<Entry>)>> {
        if !self.built()? {
            return Ok(Vec::new());
        }
        let (t, b) = self.table()?;
        let mut v = Vec::new();
        for i in 0..b as usize {
            let w = Self::get(t, i);
            if w > TOMB {
                let e = entry::read(self.heap, w & OFF_MASK).and_then(|e| {
                    if e.head.hash & HASH_MASK != w >> OFF_BITS {
                        Err(Error::corrupt(
                            "directory entry",
                            format!("entry at {:#x}: hash differs from its bucket's", e.off),
                        ))
                    } else if e.head.state == REMOVED {
                        Err(Error::corrupt(
                            "directory entry",
                            format!("entry at {:#x}: removed but in the table", e.off),
                        ))
                    } else {
                        Ok(e)
                    }
                });
                v.push((i, e));
            }
        }
        Ok(v)
    }

    /// Counts of the table as they are: (entries, entries + tombstones).
    fn count(&self) -> Result<(u64, u64)> {
        let (t, b) = self.table()?;
        let (mut live, mut used) = (0, 0);
        for i in 0..b as usize {
            let w = Self::get(t, i);
            live += (w > TOMB) as u64;
            used += (w != EMPTY) as u64;
        }
        Ok((live, used))
    }

    /// Whether the table links `off` (and where).
    fn find_linked(&self, off: u64) -> Result<Option<usize>> {
        if !self.built()? {
            return Ok(None);
        }
        let (t, b) = self.table()?;
        Ok((0..b as usize).find(|i| {
            let w = Self::get(t, *i);
            w > TOMB && w & OFF_MASK == off
        }))
    }

    /// Finishes (or undoes) the change named by the journal.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the structure cannot be made whole; the journal is
    /// then kept for the next try.
    pub fn recover(&mut self) -> Result<()> {
        let r = **self.guard;
        match r.j_op {
            J_LINK => {
                // Linked: done. Not linked: a published orphan, ours to free.
                if self.find_linked(r.j_a)?.is_none() {
                    self.free_entry(r.j_a, r.j_b)?;
                }
            }
            J_UNLINK => {
                if self.heap.owner_word(r.j_a).ok() == Some(r.j_b) {
                    // Still ours, so still where it was: take it out, free it.
                    if r.j_e == 1 {
                        self.relink(r.j_c, r.j_a, r.j_d)?;
                    } else if let Some(i) = self.find_linked(r.j_a)? {
                        let (t, _) = self.table()?;
                        Self::set(t, i, TOMB);
                    }
                }
                self.free_entry(r.j_a, r.j_b)?;
            }
            J_REMOVE => {
                if let Some(i) = self.find_linked(r.j_a)? {
                    let (t, _) = self.table()?;
                    Self::set(t, i, TOMB);
                }
                if !self.removed()?.iter().any(|(e, _)| e.off == r.j_a) {
                    let mut e = entry::read(self.heap, r.j_a)?;
                    self.push_removed(&mut e)?;
                }
            }
            J_TABLE => {
                let (new, new_word, old, old_word, nb) = (r.j_a, r.j_b, r.j_c, r.j_d, r.j_e);
                if r.table == new {
                    // Switched: finish the root, then the old table is garbage.
                    let g = &mut **self.guard;
                    g.buckets = nb;
                    g.magic = DIR_MAGIC;
                    self.release(old, old_word)?;
                } else {
                    if old == 0 {
                        // A first build that never switched: no directory yet.
                        **self.guard = DirRoot {
                            generation: r.generation.wrapping_add(1),
                            j_op: r.j_op,
                            j_a: r.j_a,
                            j_b: r.j_b,
                            j_c: r.j_c,
                            j_d: r.j_d,
                            j_e: r.j_e,
                            ..DirRoot::new_zeroed()
                        };
                    }
                    self.release(new, new_word)?;
                }
            }
            J_MORE => {
                let attached = entry::read(self.heap, r.j_a)
                    .map(|e| e.head.more == r.j_b)
                    .unwrap_or(false);
                if attached {
                    self.clear_journal();
                } else {
                    self.release(r.j_b, r.j_c)?;
                }
            }
            op => {
                return Err(Error::corrupt(
                    "directory journal",
                    format!("operation {op:#x}"),
                ));
            }
        }
        self.clear_journal();
        if self.built()? {
            let (live, used) = self.count()?;
            let g = &mut **self.guard;
            g.live = live;
            g.used = used;
            g.generation = g.generation.wrapping_add(1);
        }
        Ok(())
    }
}

/// The root lock in `heap`'s header.
fn root_lock(heap: &Heap) -> Result<&Mutex<DirRoot>> {
    #[cfg(shmkit_loom)]
    {
        let _ = heap;
        Err(Error::Unsupported(
            "the directory under loom (its protocol is modelled in tests/loom_directory.rs)",
        ))
    }
    #[cfg(not(shmkit_loom))]
    {
        let roots = heap.roots();
        // The words are zeroed at the heap's build and used only by the directory;
        // all-zero is an unlocked mutex over an empty root.
        // SAFETY: large and aligned enough (asserted above); every bit pattern is a
        // state Mutex and Locked handle.
        Ok(unsafe { &*(roots as *const _ as *const Mutex<DirRoot>) })
    }
}

/// Whether a CREATING entry's creator may still finish: a live process, or, for
/// our own attachment, one of our threads still building it.
pub fn creator_alive(seg: &Segment, e: &Entry) -> bool {
    if e.head.state != CREATING {
        return false;
    }
    let creator = OwnerTag::from_word(e.head.creator);
    if creator == seg.owner_tag() {
        let local = seg.local().lock().unwrap_or_else(|e| e.into_inner());
        return local.building.contains(&e.off);
    }
    seg.is_owner_alive(creator)
}
