//! A process-local cache of freed large runs, so that a large block freed and
//! allocated again (the common pattern for buffers) skips the page lock.
//!
//! A cached run keeps its page-table descriptor; its owner word says `Cached(me)`,
//! so if this process dies the run is reclaimed like any cached small block.

use std::cell::RefCell;

/// Largest run kept (in pages): 256 KiB.
pub const MAX_RUN_PAGES: u64 = 64;
/// Most runs kept.
const MAX_RUNS: usize = 8;

/// Cached runs: (first page, pages), most recent last.
#[derive(Debug, Default)]
pub struct LargeCache {
    runs: RefCell<Vec<(u64, u64)>>,
}

impl LargeCache {
    /// Takes a cached run of exactly `pages` pages.
    #[inline]
    pub fn take(&self, pages: u64) -> Option<u64> {
        let mut runs = self.runs.borrow_mut();
        let i = runs.iter().rposition(|&(_, n)| n == pages)?;
        Some(runs.swap_remove(i).0)
    }

    /// Whether a run of `pages` would be kept.
    #[inline]
    pub fn has_room(&self, pages: u64) -> bool {
        pages <= MAX_RUN_PAGES && self.runs.borrow().len() < MAX_RUNS
    }

    /// Keeps a run.
    #[inline]
    pub fn put(&self, start: u64, pages: u64) {
        self.runs.borrow_mut().push((start, pages));
    }

    /// Whether no run is cached.
    pub fn is_empty(&self) -> bool {
        self.runs.borrow().is_empty()
    }

    /// Empties the cache.
    pub fn drain(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.runs.borrow_mut())
    }
}
