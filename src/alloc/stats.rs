//! [`Stats`]: what the heap holds, by class and by owner.

use crate::OwnerTag;

use super::class::CLASSES;

/// Counts for one size class.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Block size.
    pub size: u64,
    /// Spans of the class.
    pub spans: u64,
    /// Blocks handed out (owned or shared).
    pub used: u64,
    /// Free blocks on the shared lists (or on their way to them).
    pub free: u64,
    /// Free blocks in processes' caches.
    pub cached: u64,
}

/// What one owner holds privately.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerStats {
    /// The owner.
    pub owner: OwnerTag,
    /// Whether it is alive (a dead owner's blocks come back with `reclaim_dead`).
    pub alive: bool,
    /// Blocks it owns (allocated, not published).
    pub owned_blocks: u64,
    /// Their bytes.
    pub owned_bytes: u64,
    /// Free blocks in its caches.
    pub cached_blocks: u64,
    /// Their bytes.
    pub cached_bytes: u64,
}

/// A snapshot of the heap. Bytes are of the heap region: from the heap header to
/// the segment's committed end; `used + free + metadata == committed`.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Committed bytes of the heap region.
    pub committed: u64,
    /// Bytes in blocks handed out (small blocks at their class size, large blocks
    /// at whole pages).
    pub used: u64,
    /// Bytes free: free and cached small blocks, large runs in processes' caches,
    /// free page runs, and committed pages above the break.
    pub free: u64,
    /// Bytes of metadata: header, page tables, span owner words, span tails.
    pub metadata: u64,
    /// Bytes in published (shared) blocks, part of `used`.
    pub shared: u64,
    /// Large blocks handed out (including any with a corrupt owner word, which
    /// `verify` reports).
    pub large_blocks: u64,
    /// Per size class.
    pub classes: [ClassStats; CLASSES],
    /// Per owner with private blocks or cache, live and dead.
    pub owners: Vec<OwnerStats>,
    /// Highest extent the heap ever reached, in bytes from its first data page.
    pub high_water: u64,
    /// Pages in free runs (below the break) plus committed pages above it.
    pub free_pages: u64,
    /// The largest free page run (including the committed space above the break).
    pub largest_free_run: u64,
    /// External fragmentation of the page level: `1 - largest_free_run /
    /// free_pages` (0 when everything free is one run).
    pub fragmentation: f64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            committed: 0,
            used: 0,
            free: 0,
            metadata: 0,
            shared: 0,
            large_blocks: 0,
            classes: [ClassStats::default(); CLASSES],
            owners: Vec::new(),
            high_water: 0,
            free_pages: 0,
            largest_free_run: 0,
            fragmentation: 0.0,
        }
    }
}
