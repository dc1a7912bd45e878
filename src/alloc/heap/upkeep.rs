//! Upkeep: reclaiming what dead owners held, trimming free pages back to the OS,
//! flushing this handle's caches.

use std::collections::HashMap;

use crate::alloc::class::{CLASSES, GEOMETRY};
use crate::alloc::list;
use crate::alloc::mem::Mem;
use crate::alloc::owner::{BlockState, FREE_WORD};
use crate::alloc::pages::{self, LARGE, Run, SPAN, Table};
use crate::alloc::pool::{self, Deadline, LOCK_WAIT, Reclaimed, exclusive};
use crate::loom::Ordering;
use crate::{OwnerTag, PAGE_SIZE, Result};

use super::{Heap, span_blocks, word};

impl Heap {
    /// Returns the private blocks (owned and cached) of every dead process to the
    /// free lists, with any free block a death left off them. Any process may call
    /// it at any time; allocation elsewhere goes on meanwhile (free-list transfers
    /// pause for the pass).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`](crate::Error::Corrupt) if the metadata is broken (see [`verify`](Self::verify));
    /// [`Error::LockTimeout`](crate::Error::LockTimeout) if a live process holds the transfer or page lock
    /// past the heap's lock bound (5 s, both waits together).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// assert_eq!(heap.reclaim_dead()?.blocks, 0);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn reclaim_dead(&self) -> Result<Reclaimed> {
        self.reclaim_dead_until(Deadline::after(LOCK_WAIT))
    }

    /// [`reclaim_dead`](Self::reclaim_dead), waiting for its locks until `d`.
    pub(super) fn reclaim_dead_until(&self, d: Deadline) -> Result<Reclaimed> {
        let seg = &self.mem.seg;
        let _w = exclusive(&self.mem.hdr().transfer, seg, d)?;
        let _pl = self.page_lock_until(d)?;
        let runs = self.runs()?;
        let mut verdicts: HashMap<OwnerTag, bool> = HashMap::new();
        let mut is_dead =
            |t: OwnerTag| !*verdicts.entry(t).or_insert_with(|| seg.is_owner_alive(t));
        let budget: u64 = runs
            .iter()
            .filter(|r| r.kind == SPAN)
            .map(|r| GEOMETRY[r.class].blocks)
            .sum::<u64>()
            + 1;
        let heads = self.mem.heads();
        let mut out = pool::reclaim(
            &self.mem,
            &heads,
            span_blocks(&self.mem, &runs),
            budget,
            &mut is_dead,
        )?;
        let me = self.me()?;
        for r in runs.iter().filter(|r| r.kind == LARGE) {
            let ow = self.mem.owner(r.start);
            let w = ow.load(Ordering::Acquire);
            let owner = match BlockState::from_word(w) {
                // A large run is never Free outside a page-lock transaction (every
                // release writes Free in the transaction that frees the pages): a
                // Free one was left by an older build's reclaimer that died; free it.
                Some(BlockState::Free) => None,
                Some(s) => match s.private_owner() {
                    Some(t) if is_dead(t) => Some(t),
                    _ => continue,
                },
                None => continue,
            };
            // Claim it for us first (a crash from here on leaves it ours, dead, for
            // the next reclaim), then free it in one journalled transaction.
            // SYNC: Acquire pairs with the journal's Release owner store; the dead
            // owner's own writes are ordered by the registry's liveness verdict.
            if ow
                .compare_exchange(
                    w,
                    BlockState::Owned(me).to_word(),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            // Re-read the neighbours for each free (the previous one may have merged).
            self.release_run(*r);
            out.blocks += 1;
            out.bytes += r.len * PAGE_SIZE;
            if let Some(t) = owner {
                if !out.owners.contains(&t) {
                    out.owners.push(t);
                }
            }
        }
        Ok(out)
    }

    /// Gives spans whose blocks are all free back to the page level (so their pages
    /// can serve other classes and large blocks). Runs automatically before an
    /// out-of-memory error. Returns the pages released.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`](crate::Error::Corrupt) if the metadata is broken; [`Error::LockTimeout`](crate::Error::LockTimeout) as
    /// [`reclaim_dead`](Self::reclaim_dead).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let off = heap.alloc(100, 8)?;
    /// heap.free(off)?;
    /// heap.flush()?; // give the cached blocks back first
    /// assert!(heap.trim()? > 0);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn trim(&self) -> Result<u64> {
        self.trim_until(Deadline::after(LOCK_WAIT))
    }

    /// [`trim`](Self::trim), waiting for its locks until `d`.
    pub(super) fn trim_until(&self, d: Deadline) -> Result<u64> {
        let seg = &self.mem.seg;
        let _w = exclusive(&self.mem.hdr().transfer, seg, d)?;
        let _pl = self.page_lock_until(d)?;
        let runs = self.runs()?;
        let mut empty: Vec<Run> = Vec::new();
        for r in runs.iter().filter(|r| r.kind == SPAN) {
            let g = &GEOMETRY[r.class];
            let span = self.mem.page_off(r.start);
            let all_free = (0..g.blocks).all(|i| {
                self.mem
                    .word(span + 8 * i)
                    .is_some_and(|w| w.load(Ordering::Relaxed) == FREE_WORD)
            });
            if all_free {
                empty.push(*r);
            }
        }
        if empty.is_empty() {
            return Ok(0);
        }
        let in_empty = |b: u64| {
            empty.iter().any(|r| {
                let s = self.mem.page_off(r.start);
                b >= s && b < s + r.len * PAGE_SIZE
            })
        };
        // Take the empty spans' blocks off the lists (they become Free and
        // unlisted: a crash from here on is repaired by reclaim), then free the
        // spans.
        for (c, g) in GEOMETRY.iter().enumerate() {
            if !empty.iter().any(|r| r.class == c) {
                continue;
            }
            let head = self.mem.head(c);
            let mut keep = Vec::new();
            let budget = runs
                .iter()
                .filter(|r| r.kind == SPAN && r.class == c)
                .count() as u64
                * g.blocks
                + 1;
            list::walk(&self.mem, head, c, budget, |b| {
                if !in_empty(b) {
                    keep.push(b);
                }
                true
            })?;
            list::reset(head);
            for chunk in keep.chunks(g.batch as usize) {
                for pair in chunk.windows(2) {
                    word(&self.mem, pair[0])?.store(pair[1], Ordering::Relaxed);
                }
                word(&self.mem, chunk[chunk.len() - 1])?.store(0, Ordering::Relaxed);
                list::push(&self.mem, head, chunk[0], chunk.len() as u32)?;
            }
        }
        let mut released = 0;
        for r in empty {
            pages::commit(&self.mem, &pages::free_ops(&self.mem, r));
            released += r.len;
        }
        Ok(released)
    }

    /// Gives this handle's cached free blocks back to the shared lists (dropping
    /// the handle does it too). Waits for the locks the heap's lock bound (5 s) at
    /// most *in all*, however many size classes are cached: once a lock has made
    /// it wait that long, the remaining classes are tried once, without waiting.
    /// What could not be given back stays cached (and is reclaimed once this
    /// process is dead, if it never is).
    ///
    /// # Errors
    ///
    /// The first failure: [`Error::Corrupt`](crate::Error::Corrupt) if a cached chain was overwritten, or
    /// a lock word names this handle's attachment while none of its threads holds
    /// it (a forged or stray write: reported at once, not waited on);
    /// [`Error::LockTimeout`](crate::Error::LockTimeout) if a live process (stopped, say) held a heap lock
    /// past the bound.
    ///
    /// # Examples
    ///
    /// See [`trim`](Self::trim).
    pub fn flush(&self) -> Result<()> {
        self.flush_until(Deadline::after(LOCK_WAIT))
    }

    /// [`flush`](Self::flush), waiting for the locks until `d`.
    pub(super) fn flush_until(&self, d: Deadline) -> Result<()> {
        let mut first = Ok(());
        for c in 0..CLASSES {
            if let Err(e) = self.flush_class(c, 0, d) {
                first = first.and(Err(e));
            }
        }
        let large = self.flush_large(d);
        first.and(large)
    }

    /// Every run of the tiling, in order (bounded by the break).
    pub(crate) fn runs(&self) -> Result<Vec<Run>> {
        let brk = self.mem.brk().load(Ordering::Acquire);
        let mut out = Vec::new();
        let mut p = 0;
        while p < brk {
            let r = pages::run_starting(&self.mem, p)?;
            out.push(r);
            p = r.end();
        }
        Ok(out)
    }
}
