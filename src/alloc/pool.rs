//! The small-block engine: a process-local cache per class in front of the shared
//! free lists, and the recovery that puts a dead process's blocks back.
//!
//! A block's owner word (see [`BlockState`]) is the truth about it; lists and
//! caches are only where to find it:
//!
//! * alloc from the cache: check `Cached(me)`, store `Owned(me)`, unlink (local);
//! * free: CAS `Owned(anyone) | Shared` → `Cached(me)` (the commit point: of two
//!   racing frees one wins, the other gets an error), link into the local cache;
//! * refill (cache empty): pop a batch from the shared list, re-tag it `Cached(me)`;
//! * flush (cache too long): unlink a batch locally, re-tag it `Free`, push it.
//!
//! Refill and flush run under the transfer lock in read mode (shared by all
//! processes); `reclaim` runs under it in write mode. A process killed anywhere
//! leaves each block it touched either `Owned(dead)`/`Cached(dead)` (reclaimed by
//! owner) or `Free` and on no list (reclaimed because, with the lists still and
//! every live process outside its transfers, no live process can be holding it).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::loom::Ordering;
use crate::sync::raw::{RawLockError, RawReadGuard, RawRwLock, RawWriteGuard};
use crate::sync::{Context, LockError};
use crate::{AtomicTagged, Error, OwnerTag, Result};

use super::class::{CLASSES, GEOMETRY};
use super::list;
use super::mem::{Loc, Mem};
use super::owner::{BlockState, FREE_WORD};

/// How long a heap operation waits for a lock held by a live process before it
/// gives up with [`Error::LockTimeout`]: holds are microseconds to milliseconds,
/// so this only triggers on a stopped (or stuck) process. It bounds the whole
/// call: every lock one call takes shares one [`Deadline`].
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// One heap call's deadline for all the locks it takes: a call waits at most its
/// bound *in all*, however many size classes or locks it goes through, and once
/// one lock has made it wait the bound out, the rest fail (or succeed) at once.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    start: Instant,
    at: Instant,
}

impl Deadline {
    /// A deadline `wait` from now.
    pub fn after(wait: Duration) -> Self {
        let start = Instant::now();
        Self {
            start,
            at: start.checked_add(wait).unwrap_or(start),
        }
    }

    /// The same call's deadline, no later than `wait` from now.
    pub fn within(self, wait: Duration) -> Self {
        let soon = Instant::now().checked_add(wait).unwrap_or(self.at);
        Self {
            start: self.start,
            at: self.at.min(soon),
        }
    }

    /// The instant.
    pub fn at(self) -> Instant {
        self.at
    }

    /// How long the call has run.
    pub fn waited(self) -> Duration {
        self.start.elapsed()
    }
}

/// Reader entries of the transfer lock (slots beyond it take the write side).
pub const TRANSFER_READERS: usize = 128;

/// The transfer lock's type.
pub type TransferLock = RawRwLock<TRANSFER_READERS>;

/// A held transfer lock: read mode normally, write mode for slots without a reader
/// entry (exactly one of the two is set); released on drop.
#[must_use = "the transfer lock is released as soon as the guard is dropped"]
pub struct TransferGuard<'a> {
    /// Shared with other transfers (held for its drop).
    _read: Option<RawReadGuard<'a, TRANSFER_READERS>>,
    /// Exclusive (held for its drop).
    _write: Option<RawWriteGuard<'a, TRANSFER_READERS>>,
}

/// The transfer lock's name in errors.
const TRANSFER: &str = "the heap's transfer lock";

/// Takes the transfer lock for a refill or flush, waiting until `d` at the latest.
///
/// # Errors
///
/// [`Error::LockTimeout`] if a live process holds it in write mode past `d`;
/// [`Error::InvalidArgument`] for a handle naming nobody; [`Error::Corrupt`] for a
/// lock that can never be taken again, or a lock word naming this attachment
/// while none of its threads holds it.
pub fn transfer_lock<'a, C: Context>(
    rw: &'a TransferLock,
    cx: &'a C,
    d: Deadline,
) -> Result<TransferGuard<'a>> {
    // A share taken from a dead writer is fine (inconsistent or not): what it
    // left half-done is what the next `reclaim` repairs.
    match RawReadGuard::read(rw, cx, Some(d.at())) {
        Ok(g) => Ok(TransferGuard {
            _read: Some(g),
            _write: None,
        }),
        Err(RawLockError::NoReaderEntry { .. }) => Ok(TransferGuard {
            _read: None,
            _write: Some(exclusive(rw, cx, d)?),
        }),
        Err(e) => Err(lock_error(TRANSFER, e.into_lock_error(), d)),
    }
}

/// Takes the transfer lock in write mode (reclaim, trim, verify; transfers of slots
/// without a reader entry), waiting until `d` at the latest for the readers
/// (transfers) to leave. A previous writer that died is taken over: what it left
/// half-done (blocks Free and unlisted, or owned by it) is what the next
/// `reclaim` repairs.
///
/// # Errors
///
/// As [`transfer_lock`] (a live reader past `d` too).
pub fn exclusive<'a, C: Context>(
    rw: &'a TransferLock,
    cx: &'a C,
    d: Deadline,
) -> Result<RawWriteGuard<'a, TRANSFER_READERS>> {
    match RawWriteGuard::write(rw, cx, Some(d.at())) {
        Ok(mut g) => {
            if g.inconsistent() {
                g.make_consistent();
            }
            Ok(g)
        }
        Err(e) => Err(lock_error(TRANSFER, e.into_lock_error(), d)),
    }
}

/// The error for a heap lock `what` that a call with deadline `d` could not take.
pub fn lock_error(what: &'static str, e: LockError<()>, d: Deadline) -> Error {
    match e {
        LockError::NotAttached => Error::InvalidArgument(
            "this handle acts for no registry slot (forked without after_fork?)",
        ),
        // A live holder past the bound: a stopped or stuck process, not damage.
        LockError::TimedOut | LockError::WouldBlock => Error::LockTimeout {
            what,
            waited: d.waited(),
        },
        LockError::Corrupt { word } => Error::corrupt(
            what,
            format!(
                "lock word {word:#018x} names this attachment, which neither holds nor is \
                 taking it (a forged or stray write)"
            ),
        ),
        other => Error::corrupt(what, format!("cannot be acquired: {other:?}")),
    }
}

/// A process-local cache of free blocks per class: a stack of (block, owner word)
/// pairs in this process's memory, so a peer cannot tamper with it; the blocks'
/// owner words say `Cached(me)`, which is all recovery needs.
#[derive(Debug)]
pub struct Cache {
    stacks: RefCell<[Vec<(u64, u64)>; CLASSES]>,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            stacks: RefCell::new(std::array::from_fn(|_| Vec::new())),
        }
    }
}

/// The error a loom model's simulated death returns (after forgetting `guard`).
#[cold]
fn died<G>(guard: G) -> Error {
    std::mem::forget(guard);
    Error::Unsupported("simulated crash (loom model)")
}

fn owner_word<M: Mem>(mem: &M, at: u64) -> Result<&crate::loom::AtomicU64> {
    mem.word(at)
        .ok_or_else(|| Error::corrupt("heap span", format!("owner word {at:#x} out of range")))
}

impl Cache {
    /// Blocks cached for class `c`.
    pub fn count(&self, c: usize) -> usize {
        self.stacks.borrow()[c].len()
    }

    /// Takes a block of class `c` from the cache and tags it `Owned(me)`.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the block's owner word no longer says `Cached(me)` (a
    /// peer wrote it; the block is dropped from the cache).
    #[inline]
    pub fn pop<M: Mem>(&self, mem: &M, c: usize, me: OwnerTag) -> Result<Option<u64>> {
        let Some((b, at)) = self.stacks.borrow_mut()[c].pop() else {
            return Ok(None);
        };
        let ow = owner_word(mem, at)?;
        if ow.load(Ordering::Relaxed) != BlockState::Cached(me).to_word() {
            return Err(Error::corrupt(
                "heap cache",
                format!("cached block {b:#x} is no longer tagged as ours"),
            ));
        }
        // A crash after this store leaves an Owned(me) block that reclaim frees.
        ow.store(BlockState::Owned(me).to_word(), Ordering::Relaxed);
        if crate::loom::crash_point() {
            return Err(died(()));
        }
        Ok(Some(b))
    }

    /// Adds block `b` (owner word at `owner`, already `Cached(me)`); returns the
    /// class's new count.
    #[inline]
    pub fn push(&self, c: usize, b: u64, owner: u64) -> usize {
        let mut s = self.stacks.borrow_mut();
        s[c].push((b, owner));
        s[c].len()
    }

    /// Adds every block of a fresh span (owner words already `Cached(me)`), then
    /// flushes all but one batch of it to the shared list.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush).
    #[allow(clippy::too_many_arguments)] // the pool's parts, as every Cache call
    pub fn adopt<M: Mem, C: Context>(
        &self,
        mem: &M,
        head: &AtomicTagged,
        rw: &TransferLock,
        cx: &C,
        c: usize,
        blocks: impl Iterator<Item = (u64, u64)>,
        d: Deadline,
    ) -> Result<()> {
        self.stacks.borrow_mut()[c].extend(blocks);
        self.flush(mem, head, rw, cx, c, GEOMETRY[c].batch as usize, d)
    }

    /// Refills class `c` with one batch from the shared list; false if it is empty.
    /// Waits for the transfer lock until `d` at the latest.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for a corrupt list; lock errors (see [`transfer_lock`]).
    pub fn refill<M: Mem, C: Context>(
        &self,
        mem: &M,
        head: &AtomicTagged,
        rw: &TransferLock,
        cx: &C,
        c: usize,
        d: Deadline,
    ) -> Result<bool> {
        let me = cx.me();
        let g = transfer_lock(rw, cx, d)?;
        if crate::loom::crash_point() {
            return Err(died(g));
        }
        let Some((first, count)) = list::pop(mem, head, c)? else {
            return Ok(false);
        };
        if crate::loom::crash_point() {
            return Err(died(g)); // popped, nothing re-tagged: Free and unlisted
        }
        // Re-tag the chain; a bad link cuts it (what follows stays Free and
        // unlisted, which reclaim repairs).
        let max = u64::from(count.max(1)).min(GEOMETRY[c].blocks * 64);
        let mut stacks = self.stacks.borrow_mut();
        let stack = &mut stacks[c];
        let before = stack.len();
        let (mut b, mut n) = (first, 0u64);
        while b != 0 && n < max {
            let Some(loc) = mem.locate(b).filter(|l| l.class == c) else {
                break;
            };
            let ow = owner_word(mem, loc.owner)?;
            if ow.load(Ordering::Relaxed) != FREE_WORD {
                break;
            }
            let next = list::link(mem, b)?.load(Ordering::Relaxed);
            ow.store(BlockState::Cached(me).to_word(), Ordering::Relaxed);
            stack.push((b, loc.owner));
            n += 1;
            b = next;
            if crate::loom::crash_point() {
                return Err(died(g)); // part re-tagged, the rest Free and unlisted
            }
        }
        if stack.len() == before {
            return Err(Error::corrupt(
                "heap free list",
                format!("class {c}: popped batch {first:#x} holds no free block"),
            ));
        }
        Ok(true)
    }

    /// Moves all but `keep` cached blocks of class `c` (the oldest) to the shared
    /// list, in batches. Waits for the transfer lock until `d` at the latest.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for a block whose link word is out of range; lock errors
    /// (see [`transfer_lock`]).
    #[allow(clippy::too_many_arguments)] // the pool's parts, as every Cache call
    pub fn flush<M: Mem, C: Context>(
        &self,
        mem: &M,
        head: &AtomicTagged,
        rw: &TransferLock,
        cx: &C,
        c: usize,
        keep: usize,
        d: Deadline,
    ) -> Result<()> {
        if self.count(c) <= keep {
            return Ok(());
        }
        let g = transfer_lock(rw, cx, d)?;
        let batch = GEOMETRY[c].batch as usize;
        let mut stacks = self.stacks.borrow_mut();
        let stack = &mut stacks[c];
        while stack.len() > keep {
            let n = (stack.len() - keep).min(batch);
            // Out of the cache first (a crash leaves them Cached(me) for reclaim),
            // then linked, marked Free (a crash leaves them Free and unlisted, for
            // reclaim too), then pushed.
            let chunk: Vec<(u64, u64)> = stack.drain(..n).collect();
            for (k, &(b, _)) in chunk.iter().enumerate() {
                let next = chunk.get(k + 1).map_or(0, |&(nb, _)| nb);
                list::link(mem, b)?.store(next, Ordering::Relaxed);
            }
            if crate::loom::crash_point() {
                return Err(died(g)); // out of the cache, still Cached(me)
            }
            for &(_, at) in &chunk {
                owner_word(mem, at)?.store(FREE_WORD, Ordering::Relaxed);
                if crate::loom::crash_point() {
                    return Err(died(g)); // some Free and unlisted
                }
            }
            list::push(mem, head, chunk[0].0, n as u32)?;
            if crate::loom::crash_point() {
                return Err(died(g)); // pushed, lock still held
            }
        }
        Ok(())
    }
}

/// Frees the small block `b` (at `loc`) into `cache`: the CAS from a used state to
/// `Cached(me)` is the commit point. Returns the class's new cache count.
///
/// # Errors
///
/// [`Error::BadBlock`] for a block that is not handed out (double free, never
/// allocated); [`Error::Corrupt`] for a corrupt owner word.
#[inline]
pub fn free_small<M: Mem>(mem: &M, cache: &Cache, b: u64, loc: Loc, me: OwnerTag) -> Result<usize> {
    let ow = owner_word(mem, loc.owner)?;
    let mine = BlockState::Cached(me).to_word();
    // The common case first: our own block.
    let own = BlockState::Owned(me).to_word();
    let mut w = own;
    loop {
        // SYNC: Acquire pairs with the Release of whoever last handed the block on
        // (a publish), so their writes to it happen before our reuse.
        match ow.compare_exchange(w, mine, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => break,
            Err(seen) => w = seen,
        }
        if crate::loom::crash_point() {
            return Err(died(()));
        }
        match BlockState::from_word(w) {
            Some(BlockState::Owned(_) | BlockState::Shared) => {}
            Some(BlockState::Cached(_) | BlockState::Free) => {
                return Err(Error::BadBlock {
                    offset: b,
                    reason: "not allocated (double free?)",
                });
            }
            None => {
                return Err(Error::corrupt(
                    "heap owner word",
                    format!("block {b:#x}: {w:#018x}"),
                ));
            }
        }
    }
    if w != own && mem.locate(b) != Some(loc) {
        // A double free raced with the span's trim and reuse: the word we took
        // belongs to something else now. Put it back; the offset is stale.
        // Relaxed: we publish nothing (the block was never ours to use).
        let _ = ow.compare_exchange(mine, w, Ordering::Relaxed, Ordering::Relaxed);
        return Err(Error::BadBlock {
            offset: b,
            reason: "not allocated (its span was reused)",
        });
    }
    if crate::loom::crash_point() {
        return Err(died(())); // Cached(me), in no cache
    }
    Ok(cache.push(loc.class, b, loc.owner))
}

/// What [`Heap::reclaim_dead`](super::Heap::reclaim_dead) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Blocks returned to the free lists (including the unlisted ones).
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Free blocks that were on no list (a transfer cut short by a death).
    pub unlisted: u64,
    /// The dead owners whose blocks came back.
    pub owners: Vec<OwnerTag>,
}

/// Returns to the shared lists every small block whose owner word names a dead
/// owner, and every Free block on no list. The caller holds the transfer lock in
/// write mode, so the lists are still and no live process is mid-transfer.
/// `blocks` yields every small block `(offset, class)`. A list whose links are
/// broken is dropped and rebuilt from the owner words.
///
/// # Errors
///
/// [`Error::Corrupt`] if a block's link word is out of range while relisting
/// (blocks not yet relisted stay Free and unlisted, for the next pass).
pub fn reclaim<M: Mem>(
    mem: &M,
    heads: &[&AtomicTagged],
    blocks: impl Iterator<Item = (u64, usize)>,
    budget: u64,
    mut is_dead: impl FnMut(OwnerTag) -> bool,
) -> Result<Reclaimed> {
    // A sorted vector, not a hash set: cheaper here, and much cheaper under miri.
    let mut listed = Vec::new();
    for (c, head) in heads.iter().enumerate().take(CLASSES) {
        let mut mine = Vec::new();
        if list::walk(mem, head, c, budget, |b| {
            mine.push(b);
            true
        })
        .is_err()
        {
            // A broken list (a peer wrote its links): drop it. Its free blocks
            // become unlisted and are listed again below from their owner words.
            list::reset(head);
            continue;
        }
        listed.extend(mine);
    }
    listed.sort_unstable();
    let mut out = Reclaimed::default();
    let mut back: Vec<Vec<u64>> = vec![Vec::new(); CLASSES];
    for (b, c) in blocks {
        let Some(loc) = mem.locate(b) else { continue };
        let Some(ow) = mem.word(loc.owner) else {
            continue;
        };
        let w = ow.load(Ordering::Acquire);
        match BlockState::from_word(w) {
            Some(BlockState::Free) if listed.binary_search(&b).is_err() => {
                out.unlisted += 1;
                back[c].push(b);
            }
            Some(s) => {
                let Some(t) = s.private_owner() else { continue };
                if !is_dead(t) {
                    continue;
                }
                // A live process may free a dead owner's block concurrently: the
                // CAS decides. SYNC: Acquire, as every owner-word claim; the dead
                // owner's writes are ordered by the registry's liveness verdict.
                if ow
                    .compare_exchange(w, FREE_WORD, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    if !out.owners.contains(&t) {
                        out.owners.push(t);
                    }
                    back[c].push(b);
                    if crate::loom::crash_point() {
                        return Err(died(())); // Free and unlisted: the next pass
                    }
                }
            }
            None => {}
        }
    }
    for (c, blocks) in back.iter().enumerate() {
        let g = &GEOMETRY[c];
        for chunk in blocks.chunks(g.batch as usize) {
            for pair in chunk.windows(2) {
                list::link(mem, pair[0])?.store(pair[1], Ordering::Relaxed);
            }
            let last = chunk[chunk.len() - 1];
            list::link(mem, last)?.store(0, Ordering::Relaxed);
            list::push(mem, heads[c], chunk[0], chunk.len() as u32)?;
            if crate::loom::crash_point() {
                return Err(died(()));
            }
            out.blocks += chunk.len() as u64;
            out.bytes += chunk.len() as u64 * g.size;
        }
    }
    Ok(out)
}
