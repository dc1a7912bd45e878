//! [`Heap::verify`] and [`Heap::stats`]: one bounded walk over the page table, the
//! spans' owner words and the free lists.
//!
//! The walk trusts nothing: every descriptor, owner word and link is decoded and
//! range-checked, every loop is bounded by the table size, and what is wrong is
//! reported as a [`Violation`] instead of stopping the walk (except where the
//! tiling itself is broken, after which nothing beyond can be located).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::loom::Ordering;
use crate::sync::raw::{RawMutexGuard, RawWriteGuard};
use crate::{OwnerTag, PAGE_SIZE, Result};

use super::class::{GEOMETRY, SIZES};
use super::heap::Heap;
use super::list;
use super::mem::Mem;
use super::owner::BlockState;
use super::pages::{self, FREE, LARGE, Run, SPAN, Table};
use super::stats::{OwnerStats, Stats};

/// One thing [`Heap::verify`] found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What is wrong.
    pub what: &'static str,
    /// The offset (of a block, run or word) it concerns.
    pub offset: u64,
    /// Details.
    pub detail: String,
}

/// The result of [`Heap::verify`].
#[derive(Clone, Debug)]
pub struct Report {
    /// Everything found wrong; empty for a consistent heap.
    pub violations: Vec<Violation>,
    /// The counts gathered on the way.
    pub stats: Stats,
    /// Whether the free lists were still during the walk (the transfer and page
    /// locks were taken). Without it, "free block on no list" cannot be judged and
    /// is not reported.
    pub quiescent: bool,
}

impl Report {
    /// No violations.
    ///
    /// # Examples
    ///
    /// See [`Heap`].
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "heap: {} violations; used {} free {} metadata {} of {} committed",
            self.violations.len(),
            self.stats.used,
            self.stats.free,
            self.stats.metadata,
            self.stats.committed
        )?;
        for v in self.violations.iter().take(20) {
            writeln!(f, "  {} at {:#x}: {}", v.what, v.offset, v.detail)?;
        }
        Ok(())
    }
}

/// How long verify waits for the locks before walking without them.
const LOCK_WAIT: Duration = Duration::from_secs(2);

struct Walk<'h> {
    heap: &'h Heap,
    out: Vec<Violation>,
    stats: Stats,
    /// Free small blocks seen in spans (offset → class).
    free_blocks: Vec<u64>,
    owners: HashMap<OwnerTag, OwnerStats>,
}

impl Walk<'_> {
    fn bad(&mut self, what: &'static str, offset: u64, detail: impl Into<String>) {
        if self.out.len() < 10_000 {
            self.out.push(Violation {
                what,
                offset,
                detail: detail.into(),
            });
        }
    }

    fn owner(&mut self, t: OwnerTag) -> &mut OwnerStats {
        let seg = self.heap.segment();
        self.owners.entry(t).or_insert_with(|| OwnerStats {
            owner: t,
            alive: seg.is_owner_alive(t),
            owned_blocks: 0,
            owned_bytes: 0,
            cached_blocks: 0,
            cached_bytes: 0,
        })
    }

    /// Walks the tiling; returns the runs it could read.
    fn tiling(&mut self) -> Vec<Run> {
        let mem = &self.heap.mem;
        let brk = mem.brk().load(Ordering::Acquire);
        let mut runs = Vec::new();
        if brk > mem.lay.npages {
            self.bad(
                "break beyond the page table",
                mem.lay.data_off,
                format!("{brk} pages"),
            );
            return runs;
        }
        let committed = self.heap.segment().committed();
        if mem.page_off(brk) > committed {
            self.bad(
                "break beyond the committed size",
                mem.page_off(brk),
                format!("committed {committed:#x}"),
            );
            return runs;
        }
        let mut p = 0;
        while p < brk {
            match pages::run_starting(mem, p) {
                Ok(r) => {
                    runs.push(r);
                    p = r.end();
                }
                Err(e) => {
                    self.bad("page table tiling broken", mem.page_off(p), e.to_string());
                    break;
                }
            }
        }
        runs
    }

    fn run(&mut self, r: Run) {
        let mem = &self.heap.mem;
        let at = mem.page_off(r.start);
        let w = r.word();
        match r.kind {
            FREE => {
                if mem.desc(r.end() - 1).load(Ordering::Relaxed) != w {
                    self.bad("free run's last page disagrees", at, format!("{r:?}"));
                }
                self.stats.free_pages += r.len;
                self.stats.largest_free_run = self.stats.largest_free_run.max(r.len * PAGE_SIZE);
            }
            SPAN | LARGE => {
                if (r.start..r.end()).any(|p| mem.desc(p).load(Ordering::Relaxed) != w) {
                    self.bad("run's pages disagree", at, format!("{r:?}"));
                }
                if r.kind == SPAN {
                    self.span(r);
                } else {
                    self.large(r);
                }
            }
            _ => self.bad("unknown run kind", at, format!("{r:?}")),
        }
    }

    fn span(&mut self, r: Run) {
        let mem = &self.heap.mem;
        let g = GEOMETRY[r.class];
        let at = mem.page_off(r.start);
        if r.len != g.pages {
            self.bad(
                "span of the wrong length",
                at,
                format!("{r:?}, class wants {}", g.pages),
            );
            return;
        }
        let slots = self.heap.segment().registry_slots();
        let blocks = at + g.meta_pages * PAGE_SIZE;
        self.stats.classes[r.class].spans += 1;
        self.stats.metadata += r.len * PAGE_SIZE - g.blocks * g.size;
        for i in 0..g.blocks {
            let b = blocks + i * g.size;
            let Some(word) = mem.word(at + 8 * i) else {
                self.bad("owner word out of range", at + 8 * i, "");
                continue;
            };
            let v = word.load(Ordering::Relaxed);
            let c = &mut self.stats.classes[r.class];
            match BlockState::from_word(v) {
                Some(BlockState::Free) => {
                    c.free += 1;
                    self.free_blocks.push(b);
                    self.stats.free += g.size;
                }
                Some(BlockState::Shared) => {
                    c.used += 1;
                    self.stats.used += g.size;
                    self.stats.shared += g.size;
                }
                Some(s @ (BlockState::Owned(t) | BlockState::Cached(t))) => {
                    if t.slot() >= slots {
                        self.bad("owner names no registry slot", b, format!("{v:#018x}"));
                    }
                    let o = self.owner(t);
                    if matches!(s, BlockState::Owned(_)) {
                        o.owned_blocks += 1;
                        o.owned_bytes += g.size;
                        self.stats.classes[r.class].used += 1;
                        self.stats.used += g.size;
                    } else {
                        o.cached_blocks += 1;
                        o.cached_bytes += g.size;
                        self.stats.classes[r.class].cached += 1;
                        self.stats.free += g.size;
                    }
                }
                None => {
                    self.bad("corrupt owner word", b, format!("{v:#018x}"));
                    self.stats.metadata += g.size; // counted somewhere, to keep the sum
                }
            }
        }
    }

    fn large(&mut self, r: Run) {
        let mem = &self.heap.mem;
        let at = mem.page_off(r.start);
        let bytes = r.len * PAGE_SIZE;
        let v = mem.owner(r.start).load(Ordering::Relaxed);
        match BlockState::from_word(v) {
            Some(BlockState::Shared) => {
                self.stats.shared += bytes;
                self.stats.used += bytes;
            }
            Some(BlockState::Owned(t)) => {
                let o = self.owner(t);
                o.owned_blocks += 1;
                o.owned_bytes += bytes;
                self.stats.used += bytes;
            }
            Some(BlockState::Cached(t)) => {
                let o = self.owner(t);
                o.cached_blocks += 1;
                o.cached_bytes += bytes;
                self.stats.free += bytes;
                return;
            }
            _ => {
                self.bad(
                    "large block with a bad owner word",
                    at,
                    format!("{v:#018x}"),
                );
                self.stats.used += bytes;
            }
        }
        self.stats.large_blocks += 1;
    }

    fn lists(&mut self, quiescent: bool) {
        let mem = &self.heap.mem;
        // Sorted vectors, not hash sets: cheaper here, and much cheaper under miri.
        self.free_blocks.sort_unstable();
        let mut listed: Vec<u64> = Vec::new();
        for (c, g) in GEOMETRY.iter().enumerate() {
            let budget = self.stats.classes[c].spans * g.blocks + 1;
            let from = listed.len();
            let r = list::walk(mem, mem.head(c), c, budget, |b| {
                listed.push(b);
                true
            });
            if let Err(e) = r {
                self.bad("free list broken", 0, format!("class {c}: {e}"));
            }
            let mine = &mut listed[from..];
            mine.sort_unstable();
            let dups: Vec<u64> = mine
                .windows(2)
                .filter(|w| w[0] == w[1])
                .map(|w| w[0])
                .collect();
            let not_free: Vec<u64> = mine
                .iter()
                .filter(|b| self.free_blocks.binary_search(b).is_err())
                .copied()
                .collect();
            for b in dups {
                self.bad(
                    "block on a free list twice (a cycle)",
                    b,
                    format!("class {c}"),
                );
            }
            for b in not_free {
                self.bad("listed block is not free", b, format!("class {c}"));
            }
        }
        if quiescent {
            listed.sort_unstable();
            let lost: Vec<u64> = self
                .free_blocks
                .iter()
                .filter(|b| listed.binary_search(b).is_err())
                .copied()
                .collect();
            for b in lost {
                self.bad(
                    "free block on no list (reclaim_dead returns it)",
                    b,
                    String::new(),
                );
            }
        }
    }
}

impl Heap {
    fn walk(&self, quiescent: bool, lists: bool) -> (Stats, Vec<Violation>) {
        let mut w = Walk {
            heap: self,
            out: Vec::new(),
            stats: Stats::default(),
            free_blocks: Vec::new(),
            owners: HashMap::new(),
        };
        for (c, s) in w.stats.classes.iter_mut().enumerate() {
            s.size = SIZES[c];
        }
        let mem = &self.mem;
        if let Err(e) = mem.check_header() {
            // Against the segment header's record of the heap (fixed at creation).
            w.bad("heap header overwritten", mem.lay.heap_off, e.to_string());
        }
        let committed = self.segment().committed();
        w.stats.committed = committed.saturating_sub(mem.lay.heap_off);
        w.stats.metadata = mem.lay.data_off - mem.lay.heap_off;
        let runs = w.tiling();
        for r in &runs {
            w.run(*r);
        }
        let tiled = runs.last().map_or(0, |r| r.end());
        let above = (committed.saturating_sub(mem.page_off(tiled))) / PAGE_SIZE;
        w.stats.free_pages += above;
        w.stats.largest_free_run = w.stats.largest_free_run.max(above * PAGE_SIZE);
        w.stats.free += w.stats.free_pages * PAGE_SIZE;
        let hint = mem.free_pages().load(Ordering::Relaxed);
        if tiled == mem.brk().load(Ordering::Relaxed) && hint != w.stats.free_pages - above {
            w.bad(
                "free-page count disagrees with the page table",
                mem.lay.data_off,
                format!("counter {hint}, runs {}", w.stats.free_pages - above),
            );
        }
        if lists {
            w.lists(quiescent);
        }
        let sum = w.stats.used + w.stats.free + w.stats.metadata;
        if tiled == mem.brk().load(Ordering::Relaxed) && sum != w.stats.committed {
            w.bad(
                "accounting: used + free + metadata != committed",
                mem.lay.heap_off,
                format!(
                    "{} + {} + {} = {sum}, committed {}",
                    w.stats.used, w.stats.free, w.stats.metadata, w.stats.committed
                ),
            );
        }
        w.stats.high_water = mem.hwm().load(Ordering::Relaxed).saturating_mul(PAGE_SIZE);
        w.stats.fragmentation = if w.stats.free_pages == 0 {
            0.0
        } else {
            1.0 - w.stats.largest_free_run as f64 / (w.stats.free_pages * PAGE_SIZE) as f64
        };
        let mut owners: Vec<OwnerStats> = w.owners.into_values().collect();
        owners.sort_by_key(|o| o.owner.bits());
        w.stats.owners = owners;
        (w.stats, w.out)
    }

    /// Checks the whole heap and returns what is wrong: the heap header against the
    /// segment header's record of it, every run in range and
    /// tiling the pages, every block aligned and in its span, every owner word
    /// valid, the free lists acyclic, holding only free blocks of their class, and
    /// (when the lists could be held still) every free block on a list; and
    /// `used + free + metadata == committed`. Total and bounded: it never panics or
    /// loops, whatever the segment holds. It pauses free-list transfers while it
    /// runs (up to 2 s waiting for them; without them it still checks what it can).
    ///
    /// # Examples
    ///
    /// See [`Heap`].
    pub fn verify(&self) -> Report {
        let seg = self.segment();
        let bound = Instant::now().checked_add(LOCK_WAIT);
        let w = match RawWriteGuard::write(&self.mem.hdr().transfer, seg, bound) {
            Ok(mut g) => {
                g.make_consistent();
                Some(g)
            }
            Err(_) => None,
        };
        let bound = Instant::now().checked_add(LOCK_WAIT);
        let p = match RawMutexGuard::lock(&self.mem.hdr().page_lock, seg, bound) {
            Ok(mut g) => {
                if g.inconsistent() {
                    pages::replay(&self.mem);
                    g.make_consistent();
                }
                Some(g)
            }
            Err(_) => None,
        };
        let quiescent = w.is_some() && p.is_some();
        let (stats, violations) = self.walk(quiescent, true);
        Report {
            violations,
            stats,
            quiescent,
        }
    }

    /// Counts what the heap holds: used, free and metadata bytes, per class, per
    /// owner (live and dead), the high-water mark and fragmentation. Takes the page
    /// lock for the walk; allocation goes on meanwhile, so the counts are a
    /// snapshot that may be a few blocks stale.
    ///
    /// # Errors
    ///
    /// Lock errors (see [`Heap::alloc`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let before = heap.stats()?.used;
    /// let off = heap.alloc(1000, 8)?;
    /// assert_eq!(heap.stats()?.used, before + 1024);
    /// heap.free(off)?;
    /// assert_eq!(heap.stats()?.used, before);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn stats(&self) -> Result<Stats> {
        let _p = self.page_lock()?;
        Ok(self.walk(false, false).0)
    }
}
