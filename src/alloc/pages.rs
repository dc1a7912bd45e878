//! The page table: how the heap's data pages are split into runs, and the journal
//! that makes every change to it atomic across a crash.
//!
//! Pages `[0, brk)` are tiled by runs; each run's descriptor is one word:
//!
//! | bits   | field                                   |
//! |--------|-----------------------------------------|
//! | 62..64 | kind: 1 free, 2 span, 3 large           |
//! | 56..62 | size class (spans)                      |
//! | 32..56 | first page of the run                   |
//! | 0..32  | length in pages                         |
//!
//! Span and large runs carry their descriptor on every page (any interior offset
//! finds its run in one load); free runs on their first and last page only (enough
//! to hop from run to run and to merge neighbours). A descriptor is believed only
//! if the run's first page holds the same word, so stale interior words of a merged
//! free run never pass for a live run.
//!
//! All changes happen under the heap's page lock (a robust mutex) as a journalled
//! transaction: the ops are written, the journal is marked valid (the commit
//! point), applied, and cleared. Ops are absolute stores, so a holder that dies
//! anywhere is repaired by the next locker replaying a valid journal.

use crate::loom::{AtomicU64, Ordering};
use crate::{Error, Result};

use super::class::CLASSES;

/// Run kinds.
pub const FREE: u64 = 1;
/// A span of small blocks.
pub const SPAN: u64 = 2;
/// A large block.
pub const LARGE: u64 = 3;

/// Most pages a heap can have (the start field is 24 bits: 64 GiB of 4 KiB pages).
pub const MAX_PAGES: u64 = 1 << 24;

/// A decoded run descriptor.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// Kind ([`FREE`], [`SPAN`] or [`LARGE`]).
    pub kind: u64,
    /// Size class (spans only).
    pub class: usize,
    /// First page.
    pub start: u64,
    /// Length in pages.
    pub len: u64,
}

impl Run {
    /// The descriptor word.
    #[inline]
    pub fn word(self) -> u64 {
        (self.kind << 62)
            | ((self.class as u64 & 63) << 56)
            | ((self.start & 0xff_ffff) << 32)
            | (self.len & 0xffff_ffff)
    }

    /// Decodes a descriptor: `None` if it cannot be one (kind 0, zero length,
    /// class out of range, or past `MAX_PAGES`).
    #[inline]
    pub fn from_word(w: u64) -> Option<Self> {
        let r = Self {
            kind: w >> 62,
            class: ((w >> 56) & 63) as usize,
            start: (w >> 32) & 0xff_ffff,
            len: w & 0xffff_ffff,
        };
        let ok = r.kind != 0
            && r.len != 0
            && r.start + r.len <= MAX_PAGES
            && (r.kind == SPAN || r.class == 0)
            && r.class < CLASSES;
        ok.then_some(r)
    }

    /// One past the last page.
    #[inline]
    pub fn end(self) -> u64 {
        self.start + self.len
    }
}

/// Journal op codes.
const OP_RUN: u64 = 1;
const OP_OWNER: u64 = 2;
const OP_BRK: u64 = 3;
const OP_FREE_PAGES: u64 = 4;
const OP_DESC: u64 = 5;

/// Most ops in one transaction.
pub const JOURNAL_OPS: usize = 8;

/// One journalled change.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write a run's descriptor (all pages, or first and last for a free run).
    Run(Run),
    /// Write the owner word of a large block (by first page).
    Owner {
        /// First page.
        page: u64,
        /// Owner word.
        word: u64,
    },
    /// Move the break (pages in use).
    Brk(u64),
    /// Set the count of pages in free runs (a hint for the allocator).
    FreePages(u64),
    /// Write one page's descriptor (to retire a merged run's stale first page).
    Desc {
        /// The page.
        page: u64,
        /// The descriptor word.
        word: u64,
    },
}

/// The journal, in the heap header.
#[repr(C)]
#[derive(Debug)]
pub struct Journal {
    valid: AtomicU64,
    len: AtomicU64,
    ops: [[AtomicU64; 3]; JOURNAL_OPS],
}

impl Journal {
    /// An empty journal.
    pub fn new() -> Self {
        Self {
            valid: AtomicU64::new(0),
            len: AtomicU64::new(0),
            ops: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

/// The words a page table lives in: descriptors, large-block owner words, the
/// break and the free-page count.
pub trait Table {
    /// Pages the table describes.
    fn pages(&self) -> u64;
    /// Descriptor word of `page` (`page < pages()`).
    fn desc(&self, page: u64) -> &AtomicU64;
    /// Large-block owner word of `page`.
    fn owner(&self, page: u64) -> &AtomicU64;
    /// The break.
    fn brk(&self) -> &AtomicU64;
    /// Highest break seen.
    fn hwm(&self) -> &AtomicU64;
    /// Pages in free runs.
    fn free_pages(&self) -> &AtomicU64;
    /// The journal.
    fn journal(&self) -> &Journal;
    /// Whether data pages `[0, end)` are backed (committed).
    fn covers(&self, end: u64) -> bool;
}

/// Reads the run that covers `page`, believing it only if its first page agrees
/// and it lies below the break.
#[inline]
pub fn run_at<T: Table>(t: &T, page: u64) -> Option<Run> {
    if page >= t.pages() {
        return None;
    }
    // SYNC: Acquire pairs with the Release stores in `apply`: a run seen here was
    // fully set up (span owner words, links) before its descriptor was written.
    let w = t.desc(page).load(Ordering::Acquire);
    let r = Run::from_word(w)?;
    if page < r.start
        || page >= r.end()
        || r.end() > t.brk().load(Ordering::Acquire)
        || !t.covers(r.end())
    {
        return None;
    }
    if r.start != page && t.desc(r.start).load(Ordering::Acquire) != w {
        return None;
    }
    Some(r)
}

/// The run starting exactly at `page` (for tiling walks), any kind.
pub fn run_starting<T: Table>(t: &T, page: u64) -> Result<Run> {
    let bad = |why: &str| Error::corrupt("heap page table", format!("page {page}: {why}"));
    if page >= t.pages() {
        return Err(bad("beyond the table"));
    }
    let w = t.desc(page).load(Ordering::Acquire);
    let r = Run::from_word(w).ok_or_else(|| bad("no valid run descriptor"))?;
    if r.start != page {
        return Err(bad("descriptor names another first page"));
    }
    if r.end() > t.brk().load(Ordering::Acquire) {
        return Err(bad("run crosses the break"));
    }
    Ok(r)
}

/// Applies `ops` (validated: anything out of range is skipped).
fn apply<T: Table>(t: &T, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Run(r) => {
                if r.end() > t.pages() {
                    continue;
                }
                let w = r.word();
                // SYNC: Release pairs with the Acquire loads in `run_at`.
                if r.kind == FREE {
                    t.desc(r.start).store(w, Ordering::Release);
                    t.desc(r.end() - 1).store(w, Ordering::Release);
                } else {
                    for p in r.start..r.end() {
                        t.desc(p).store(w, Ordering::Release);
                    }
                }
            }
            Op::Owner { page, word } => {
                if page < t.pages() {
                    // SYNC: Release pairs with the Acquire of a later owner-word CAS.
                    t.owner(page).store(word, Ordering::Release);
                }
            }
            Op::Brk(b) => {
                if b <= t.pages() {
                    t.brk().store(b, Ordering::Release);
                    if t.hwm().load(Ordering::Relaxed) < b {
                        t.hwm().store(b, Ordering::Relaxed); // under the page lock
                    }
                }
            }
            Op::FreePages(n) => t.free_pages().store(n, Ordering::Relaxed),
            Op::Desc { page, word } => {
                if page < t.pages() {
                    // SYNC: Release pairs with the Acquire loads in `run_at`.
                    t.desc(page).store(word, Ordering::Release);
                }
            }
        }
    }
}

fn encode(op: Op) -> [u64; 3] {
    match op {
        Op::Run(r) => [OP_RUN, r.word(), 0],
        Op::Owner { page, word } => [OP_OWNER, page, word],
        Op::Brk(b) => [OP_BRK, b, 0],
        Op::FreePages(n) => [OP_FREE_PAGES, n, 0],
        Op::Desc { page, word } => [OP_DESC, page, word],
    }
}

fn decode(w: [u64; 3]) -> Option<Op> {
    match w[0] {
        OP_RUN => Run::from_word(w[1]).map(Op::Run),
        OP_OWNER => Some(Op::Owner {
            page: w[1],
            word: w[2],
        }),
        OP_BRK => Some(Op::Brk(w[1])),
        OP_FREE_PAGES => Some(Op::FreePages(w[1])),
        OP_DESC => Some(Op::Desc {
            page: w[1],
            word: w[2],
        }),
        _ => None,
    }
}

/// Runs `ops` as one crash-atomic transaction. The caller holds the page lock.
pub fn commit<T: Table>(t: &T, ops: &[Op]) {
    let j = t.journal();
    let ops = &ops[..ops.len().min(JOURNAL_OPS)];
    for (slot, op) in j.ops.iter().zip(ops) {
        for (w, v) in slot.iter().zip(encode(*op)) {
            w.store(v, Ordering::Relaxed);
        }
    }
    j.len.store(ops.len() as u64, Ordering::Relaxed);
    // SYNC: Release orders the op words before the commit mark; pairs with the
    // Acquire in `replay` (run by the next holder of the page lock after a death).
    j.valid.store(1, Ordering::Release);
    apply(t, ops);
    // SYNC: Release orders the applied stores before the journal is cleared.
    j.valid.store(0, Ordering::Release);
}

/// Replays a committed but possibly half-applied transaction (after the previous
/// page-lock holder died). Returns whether there was one.
pub fn replay<T: Table>(t: &T) -> bool {
    let j = t.journal();
    // SYNC: Acquire pairs with the Release store of `valid` in `commit`.
    if j.valid.load(Ordering::Acquire) != 1 {
        return false;
    }
    let n = (j.len.load(Ordering::Relaxed) as usize).min(JOURNAL_OPS);
    let ops: Vec<Op> = j.ops[..n]
        .iter()
        .filter_map(|s| decode(std::array::from_fn(|i| s[i].load(Ordering::Relaxed))))
        .collect();
    apply(t, &ops);
    j.valid.store(0, Ordering::Release);
    true
}

/// First free run of at least `n` pages, walking the tiling (bounded by the break).
///
/// # Errors
///
/// [`Error::Corrupt`] if the tiling is broken.
pub fn find_free<T: Table>(t: &T, n: u64) -> Result<Option<Run>> {
    if t.free_pages().load(Ordering::Relaxed) < n {
        return Ok(None);
    }
    let brk = t.brk().load(Ordering::Acquire);
    let mut p = 0;
    while p < brk {
        let r = run_starting(t, p)?;
        if r.kind == FREE && r.len >= n {
            return Ok(Some(r));
        }
        p = r.end();
    }
    Ok(None)
}

/// The break, checked against the table (a corrupt one is an error, not a wrap).
///
/// # Errors
///
/// [`Error::Corrupt`] if it exceeds the table.
pub fn brk<T: Table>(t: &T) -> Result<u64> {
    let b = t.brk().load(Ordering::Acquire);
    if b > t.pages() {
        return Err(Error::corrupt(
            "heap page table",
            format!("break {b} beyond {} pages", t.pages()),
        ));
    }
    Ok(b)
}

/// The ops that take `n` pages at the start of free run `from` (or at the break if
/// `from` is `None`) for a run `kind`/`class`. Returns the first page and the ops.
///
/// # Errors
///
/// [`Error::Corrupt`] for a corrupt break.
pub fn take_ops<T: Table>(
    t: &T,
    from: Option<Run>,
    n: u64,
    kind: u64,
    class: usize,
) -> Result<(u64, Vec<Op>)> {
    let brk = brk(t)?;
    let free = t.free_pages().load(Ordering::Relaxed);
    Ok(match from {
        Some(f) => {
            let mut ops = vec![Op::Run(Run {
                kind,
                class,
                start: f.start,
                len: n,
            })];
            if f.len > n {
                ops.push(Op::Run(Run {
                    kind: FREE,
                    class: 0,
                    start: f.start + n,
                    len: f.len - n,
                }));
            }
            ops.push(Op::FreePages(free.saturating_sub(n)));
            (f.start, ops)
        }
        None => (
            brk,
            vec![
                Op::Run(Run {
                    kind,
                    class,
                    start: brk,
                    len: n,
                }),
                Op::Brk(brk.saturating_add(n)),
            ],
        ),
    })
}

/// The ops that free run `r` (a span or large run), merging free neighbours and
/// lowering the break when the run ends at it.
pub fn free_ops<T: Table>(t: &T, r: Run) -> Vec<Op> {
    let brk = t.brk().load(Ordering::Acquire);
    let mut free = t.free_pages().load(Ordering::Relaxed);
    let (mut start, mut end) = (r.start, r.end());
    if start > 0 {
        if let Some(prev) = run_at(t, start - 1).filter(|p| p.kind == FREE && p.end() == start) {
            start = prev.start;
            free = free.saturating_sub(prev.len);
        }
    }
    if end < brk {
        if let Ok(next) = run_starting(t, end) {
            if next.kind == FREE {
                end = next.end();
                free = free.saturating_sub(next.len);
            }
        }
    }
    if end >= brk {
        vec![Op::Brk(start), Op::FreePages(free)]
    } else {
        let merged = Run {
            kind: FREE,
            class: 0,
            start,
            len: end - start,
        };
        let mut ops = vec![
            Op::Run(merged),
            Op::FreePages(free.saturating_add(end - start)),
        ];
        if start != r.start {
            // Merged into the previous run: `r`'s first page would otherwise keep
            // its old descriptor and vouch for its stale interior words.
            ops.push(Op::Desc {
                page: r.start,
                word: merged.word(),
            });
        }
        ops
    }
}
