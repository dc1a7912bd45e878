//! Large blocks: whole page runs with an owner word per run, taken from and given
//! back to the page table under the page lock.

use crate::alloc::large_cache::MAX_RUN_PAGES;
use crate::alloc::owner::{BlockState, FREE_WORD};
use crate::alloc::pages::{self, LARGE, Op, Run, Table};
use crate::alloc::pool::{Deadline, LOCK_WAIT};
use crate::loom::Ordering;
use crate::{Error, OwnerTag, PAGE_SIZE, Result};

use super::{Heap, claim};

impl Heap {
    /// Takes `n` pages for a run of `kind`: from the first free run that fits, or
    /// from the break (committing more of the segment). `prepare(first_page)` runs
    /// before the commit point; `extra` ops join the transaction.
    pub(super) fn take_pages(
        &self,
        n: u64,
        kind: u64,
        class: usize,
        prepare: impl FnOnce(u64) -> Result<()>,
        extra: impl FnOnce(u64) -> Vec<Op>,
    ) -> Result<u64> {
        let t = &self.mem;
        let from = pages::find_free(t, n)?;
        let (start, mut ops) = pages::take_ops(t, from, n, kind, class)?;
        if start.checked_add(n).is_none_or(|end| end > t.lay.npages) {
            return Err(self.oom(n * PAGE_SIZE));
        }
        t.ensure_pages(start + n)?;
        prepare(start)?;
        ops.extend(extra(start));
        pages::commit(t, &ops);
        Ok(start)
    }

    #[cold]
    pub(super) fn alloc_large(&self, size: u64, me: OwnerTag) -> Result<u64> {
        let n = size.div_ceil(PAGE_SIZE);
        if n > self.mem.lay.npages {
            return Err(self.oom(size));
        }
        if n <= MAX_RUN_PAGES {
            while let Some(start) = self.large.take(n) {
                let ow = self.mem.owner(start);
                let ok = pages::run_at(&self.mem, start)
                    .is_some_and(|r| r.kind == LARGE && r.start == start && r.len == n);
                // The CAS (not a load) catches a peer that rewrote the word: a
                // tampered cache entry is dropped and the run left alone.
                // SYNC: Acquire, as every owner-word claim: pairs with the Release
                // of a publish or of the journal's owner store.
                if ok
                    && ow
                        .compare_exchange(
                            BlockState::Cached(me).to_word(),
                            BlockState::Owned(me).to_word(),
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    return Ok(self.mem.page_off(start));
                }
            }
        }
        let d = Deadline::after(LOCK_WAIT);
        for attempt in 0..2 {
            let r = {
                let _pl = self.page_lock_until(d)?;
                self.take_pages(
                    n,
                    LARGE,
                    0,
                    |_| Ok(()),
                    |start| {
                        vec![Op::Owner {
                            page: start,
                            word: BlockState::Owned(me).to_word(),
                        }]
                    },
                )
            };
            match r {
                Ok(start) => return Ok(self.mem.page_off(start)),
                Err(Error::OutOfMemory { .. }) if attempt == 0 => self.recover_space(d)?,
                Err(Error::OutOfMemory { .. }) => return Err(self.oom(size)),
                Err(e) => return Err(e),
            }
        }
        Err(self.oom(size))
    }

    /// The large run starting at `off`, if there is one.
    pub(super) fn large_at(&self, off: u64) -> Option<Run> {
        let rel = off.checked_sub(self.mem.lay.data_off)?;
        if rel % PAGE_SIZE != 0 {
            return None;
        }
        let page = rel / PAGE_SIZE;
        pages::run_at(&self.mem, page).filter(|r| r.kind == LARGE && r.start == page)
    }

    #[cold]
    pub(super) fn free_large(&self, off: u64, me: OwnerTag) -> Result<()> {
        let bad = || Error::BadBlock {
            offset: off,
            reason: "not the start of a block of this heap",
        };
        let r = self.large_at(off).ok_or_else(bad)?;
        if self.large.has_room(r.len) {
            // Keep the run: the CAS to Cached(me) is the commit point.
            claim(self.mem.owner(r.start), off, BlockState::Cached(me))?;
            self.large.put(r.start, r.len);
            return Ok(());
        }
        let _pl = self.page_lock_until(Deadline::after(LOCK_WAIT))?;
        let r = self.large_at(off).ok_or_else(bad)?;
        // Cached(me), not a used state: a racing free of the same block gets
        // BadBlock; a crash before the commit leaves it ours to reclaim.
        claim(self.mem.owner(r.start), off, BlockState::Cached(me))?;
        self.release_run(r);
        Ok(())
    }

    /// Frees large run `r` at the page level (page lock held, owner word claimed).
    pub(super) fn release_run(&self, r: Run) {
        let mut ops = pages::free_ops(&self.mem, r);
        ops.push(Op::Owner {
            page: r.start,
            word: FREE_WORD,
        });
        pages::commit(&self.mem, &ops);
    }

    /// Gives the cached large runs back to the page level (the page lock waited
    /// for until `d`; the runs stay cached if it cannot be had).
    pub(super) fn flush_large(&self, d: Deadline) -> Result<()> {
        if self.large.is_empty() {
            return Ok(());
        }
        let me = self.me()?;
        let _pl = self.page_lock_until(d)?;
        let runs = self.large.drain();
        for (start, n) in runs {
            let Some(r) = pages::run_at(&self.mem, start)
                .filter(|r| r.kind == LARGE && r.start == start && r.len == n)
            else {
                continue;
            };
            // Claim it back before releasing it (it is ours only if the word still
            // says so; a crash after the CAS leaves it Owned(me) for reclaim).
            // SYNC: Acquire pairs with the Release of the journal's owner store.
            if self
                .mem
                .owner(start)
                .compare_exchange(
                    BlockState::Cached(me).to_word(),
                    BlockState::Owned(me).to_word(),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.release_run(r);
            }
        }
        Ok(())
    }
}
