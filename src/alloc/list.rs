//! The shared free list of one size class: a Treiber stack of batches.
//!
//! The head is an [`AtomicTagged`]: the offset of the first block of the top batch
//! plus a 32-bit tag bumped by every successful CAS, so a head that went A → B → A
//! while a popper was descheduled fails its CAS (the ABA problem).
//!
//! A batch is a chain of free blocks of the class. Word 0 of each block links the
//! chain (0 ends it); word 1 of the first block holds the next batch's offset and,
//! in its top 16 bits, the chain's length.
//!
//! Every push and pop runs under the heap's transfer lock in read mode, so any
//! number of processes push and pop concurrently (the CAS is the only commit
//! point), while `reclaim_dead`, `trim` and `verify` take it in write mode and see
//! the lists still. A popper that dies right after its CAS leaves a batch whose
//! owner words still say Free but that is on no list: reclaim finds exactly those
//! (Free and unlisted while the lists are still) and lists them again.

use crate::loom::Ordering;
use crate::{AtomicTagged, Error, Result, Tagged};

use super::mem::Mem;

/// Mask of the offset in word 1.
const NEXT_MASK: u64 = (1 << 48) - 1;

/// Word 1 of a batch head: next batch and chain length.
#[inline]
pub fn batch_word(next: u64, count: u32) -> u64 {
    (next & NEXT_MASK) | (u64::from(count.min(0xffff)) << 48)
}

/// Word 0 (chain link) of block `b`.
#[inline]
pub fn link<M: Mem>(mem: &M, b: u64) -> Result<&crate::loom::AtomicU64> {
    mem.word(b)
        .ok_or_else(|| Error::corrupt("heap free list", format!("block {b:#x} is out of range")))
}

/// Word 1 (batch link) of block `b`.
#[inline]
fn batch_link<M: Mem>(mem: &M, b: u64) -> Result<&crate::loom::AtomicU64> {
    b.checked_add(8)
        .and_then(|o| mem.word(o))
        .ok_or_else(|| Error::corrupt("heap free list", format!("block {b:#x} is out of range")))
}

/// Pushes the batch `first` (a chain of `count` blocks, already linked and marked
/// Free) onto `head`.
///
/// # Errors
///
/// [`Error::Corrupt`] if `first` is not a block of this memory or does not fit a
/// tagged word.
pub fn push<M: Mem>(mem: &M, head: &AtomicTagged, first: u64, count: u32) -> Result<()> {
    let w1 = batch_link(mem, first)?;
    let mut cur = head.load(Ordering::Relaxed);
    loop {
        w1.store(batch_word(cur.offset(), count), Ordering::Relaxed);
        let new = cur.with_offset(first).ok_or_else(|| {
            Error::corrupt("heap free list", format!("block {first:#x} beyond 64 GiB"))
        })?;
        // SYNC: Release publishes the batch's links and owner words; pairs with the
        // Acquire load in `pop` (and in `walk`).
        match head.compare_exchange(cur, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(seen) => cur = seen,
        }
    }
}

/// Pops the top batch of `head`: `Some((first, count))`, or `None` if the list is
/// empty. The blocks' owner words are left Free; the caller re-tags them.
///
/// # Errors
///
/// [`Error::Corrupt`] if the head or the top batch's link is not a valid block of
/// class `class` (checked twice: a stale read is retried, a stable bad value is
/// corruption).
pub fn pop<M: Mem>(mem: &M, head: &AtomicTagged, class: usize) -> Result<Option<(u64, u32)>> {
    loop {
        // SYNC: Acquire pairs with the Release CAS in `push`: the batch's words are
        // visible before we read them.
        let cur = head.load(Ordering::Acquire);
        let top = cur.offset();
        if top == 0 {
            return Ok(None);
        }
        let Some(next) = read_next(mem, top, class) else {
            if head.load(Ordering::Acquire) == cur {
                return Err(Error::corrupt(
                    "heap free list",
                    format!("class {class}: head {top:#x} is not a free block with a valid link"),
                ));
            }
            continue; // a racing pop moved it: our read was stale
        };
        let (next_off, count) = next;
        let Some(new) = cur.with_offset(next_off) else {
            continue; // impossible for a checked link; retry re-reads
        };
        // SYNC: Acquire on success orders our later owner-word writes after the CAS
        // (a crash leaves them Free, never re-tagged early); the unchanged tag proves
        // nobody popped `top` since we read its link.
        if head
            .compare_exchange(cur, new, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Ok(Some((top, count)));
        }
        crate::loom::spin_loop();
    }
}

/// The next batch and the chain length of batch head `b`, if `b` is a block of
/// `class` and its link is a block of `class` or 0.
fn read_next<M: Mem>(mem: &M, b: u64, class: usize) -> Option<(u64, u32)> {
    if mem.locate(b)?.class != class {
        return None;
    }
    let w = batch_link(mem, b).ok()?.load(Ordering::Relaxed);
    let next = w & NEXT_MASK;
    let count = (w >> 48) as u32;
    if next != 0 && mem.locate(next).map(|l| l.class) != Some(class) {
        return None;
    }
    Some((next, count))
}

/// Visits every block on `head`'s list (batch by batch, chain by chain) while the
/// list is still (the caller holds the transfer lock in write mode), at most
/// `budget` blocks; `visit(block, batch_head)` returns false to stop.
///
/// # Errors
///
/// [`Error::Corrupt`] naming the first bad link or a list longer than `budget`
/// (which is how a cycle shows).
pub fn walk<M: Mem>(
    mem: &M,
    head: &AtomicTagged,
    class: usize,
    budget: u64,
    mut visit: impl FnMut(u64) -> bool,
) -> Result<()> {
    let mut steps = 0u64;
    // SYNC: Acquire pairs with the Release CAS in `push`.
    let mut batch = head.load(Ordering::Acquire).offset();
    while batch != 0 {
        let (next_batch, _count) = read_next(mem, batch, class).ok_or_else(|| {
            Error::corrupt(
                "heap free list",
                format!("class {class}: batch {batch:#x} is not a block with a valid link"),
            )
        })?;
        let mut b = batch;
        while b != 0 {
            steps += 1;
            if steps > budget {
                return Err(Error::corrupt(
                    "heap free list",
                    format!("class {class}: more than {budget} blocks (a cycle?)"),
                ));
            }
            if mem.locate(b).map(|l| l.class) != Some(class) {
                return Err(Error::corrupt(
                    "heap free list",
                    format!("class {class}: chain reaches {b:#x}, not a block of the class"),
                ));
            }
            if !visit(b) {
                return Ok(());
            }
            b = link(mem, b)?.load(Ordering::Relaxed);
        }
        batch = next_batch;
    }
    Ok(())
}

/// Replaces the whole list (write mode only): used by `trim` to rebuild it.
pub fn reset(head: &AtomicTagged) {
    let cur = head.load(Ordering::Relaxed);
    let empty = cur.with_offset(0).unwrap_or(Tagged::from_bits(0));
    head.store(empty, Ordering::Release);
}
