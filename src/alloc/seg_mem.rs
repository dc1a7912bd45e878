//! The heap's view of its segment: checked word access, block lookup through the
//! page table, and the heap header.
#![allow(unsafe_code)]

use std::cell::Cell;

use crate::loom::{AtomicU64, Ordering};
use crate::segment::Segment;
use crate::sync::raw::RawMutex;
use crate::{AtomicTagged, Error, PAGE_SIZE, Result, Tagged};

use super::class::{CLASSES, GEOMETRY, block_index};
use super::mem::{Loc, Mem};
use super::pages::{self, Journal, MAX_PAGES, SPAN, Table};
use super::pool::TransferLock;

/// `state` of a heap whose header is built.
pub const READY: u64 = 0x0048_4541_5052_4459; // "HEAPRDY"
/// Format version of the heap metadata.
pub const VERSION: u64 = 2;
/// Magic of the heap header.
pub const MAGIC: u64 = 0x5041_4548_4b4d_4853; // "SHMKHEAP" little-endian

/// A free-list head on its own cache line.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Line {
    /// The head.
    pub head: AtomicTagged,
}

/// The heap header, at the first page boundary of the user region.
#[repr(C)]
#[derive(Debug)]
pub struct HeapHeader {
    /// `READY` from creation on (anything else is damage).
    pub state: AtomicU64,
    /// Everything else, written once by the builder before `READY`.
    pub body: HeapBody,
}

/// The header's body.
#[repr(C)]
#[derive(Debug)]
pub struct HeapBody {
    /// [`MAGIC`].
    pub magic: AtomicU64,
    /// [`VERSION`].
    pub version: AtomicU64,
    /// The layout, as the builder computed it (checked against ours on attach).
    pub layout: [AtomicU64; 5],
    /// Pages in use (tiled by runs).
    pub brk: AtomicU64,
    /// Highest break ever.
    pub hwm: AtomicU64,
    /// Pages in free runs below the break.
    pub free_pages: AtomicU64,
    /// Journal of the page table.
    pub journal: Journal,
    /// Serialises page-table changes.
    pub page_lock: RawMutex,
    /// Read mode: free-list transfers. Write mode: reclaim, trim, verify.
    pub transfer: TransferLock,
    /// Free-list heads per class.
    pub heads: [Line; CLASSES],
    /// Zeroed at build and never touched by the heap: the roots of the structures
    /// built on it (the directory), which every process finds here.
    pub roots: [AtomicU64; ROOT_WORDS],
}

/// Builds the heap header of a segment being created, before the segment is
/// `Ready` (so nobody else can see it): the body, then `READY`.
///
/// # Safety
///
/// `base` is the start of a mapping of at least `lay.pd_off` committed bytes that
/// no other thread or process reads or writes until the segment is published.
pub(crate) unsafe fn build(base: *mut u8, lay: &Layout) {
    // SAFETY: heap_off + size_of::<HeapHeader>() <= pd_off, inside the committed
    // mapping (caller); page-aligned; exclusively ours until publication (caller).
    unsafe {
        let h = base.add(lay.heap_off as usize).cast::<HeapHeader>();
        std::ptr::addr_of_mut!((*h).body).write(HeapBody::new(lay));
        // A plain write: nobody can see the segment yet. What publishes the body
        // and this word is the segment's Ready store (`init::publish`, Release),
        // paired with every opener's Acquire in `init::observe`.
        std::ptr::addr_of_mut!((*h).state).write(AtomicU64::new(READY));
    }
}

/// The error for a heap header whose state word is not `READY`.
#[cold]
fn overwritten(state: u64, at: u64) -> Error {
    Error::corrupt(
        "heap header",
        format!(
            "state word {state:#x} at {at:#x}, but the segment header records a heap \
             built there at creation: the heap header was overwritten (never rebuilt, \
             live blocks may be there)"
        ),
    )
}

/// Checks magic, version and layout words of a built heap header.
fn check_body(hdr: &HeapBody, lay: &Layout) -> Result<()> {
    let magic = hdr.magic.load(Ordering::Relaxed);
    if magic != MAGIC {
        return Err(Error::corrupt(
            "heap header",
            format!("magic {magic:#x}, expected {MAGIC:#x} (overwritten?)"),
        ));
    }
    let version = hdr.version.load(Ordering::Relaxed);
    if version != VERSION {
        return Err(Error::corrupt(
            "heap header",
            format!("format version {version}, this build reads {VERSION}"),
        ));
    }
    let stored = hdr.layout.each_ref().map(|w| w.load(Ordering::Relaxed));
    if stored != lay.words() {
        return Err(Error::corrupt(
            "heap header",
            format!(
                "layout {stored:?} differs from the segment header's {:?}",
                lay.words()
            ),
        ));
    }
    Ok(())
}

/// Words in [`HeapBody::roots`].
pub const ROOT_WORDS: usize = 32;

impl HeapBody {
    fn new(lay: &Layout) -> Self {
        Self {
            magic: AtomicU64::new(MAGIC),
            version: AtomicU64::new(VERSION),
            layout: lay.words().map(AtomicU64::new),
            brk: AtomicU64::new(0),
            hwm: AtomicU64::new(0),
            free_pages: AtomicU64::new(0),
            journal: Journal::new(),
            page_lock: RawMutex::new(),
            transfer: TransferLock::new(),
            heads: std::array::from_fn(|_| Line {
                head: AtomicTagged::new(Tagged::from_bits(0)),
            }),
            roots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Where the heap's parts are, a pure function of the segment's user offset and
/// maximum size (so every process computes it and nobody trusts a stored one).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Heap header.
    pub heap_off: u64,
    /// Run descriptors (8 bytes per page).
    pub pd_off: u64,
    /// Large-block owner words (8 bytes per page).
    pub ow_off: u64,
    /// First data page.
    pub data_off: u64,
    /// Data pages.
    pub npages: u64,
}

impl Layout {
    /// The layout for a segment.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSize`] if the segment cannot hold a heap with one span.
    pub fn new(user_offset: u64, max_size: u64) -> Result<Self> {
        let too_small = || Error::InvalidSize {
            size: max_size,
            reason: "too small for a heap (needs room for its header, tables and a 256 KiB span)",
        };
        let heap_off = crate::layout::align_up(user_offset, PAGE_SIZE).ok_or_else(too_small)?;
        let hdr = (size_of::<HeapHeader>() as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let pd_off = heap_off + hdr;
        let limit = max_size.min(Tagged::MAX_OFFSET);
        let avail = limit.checked_sub(pd_off).ok_or_else(too_small)?;
        let mut npages = (avail / (PAGE_SIZE + 16)).min(MAX_PAGES);
        let data_off = loop {
            let d = (pd_off + 16 * npages).div_ceil(PAGE_SIZE) * PAGE_SIZE;
            if d + npages * PAGE_SIZE <= limit || npages == 0 {
                break d;
            }
            npages -= 1;
        };
        if npages < 66 {
            return Err(too_small());
        }
        Ok(Self {
            heap_off,
            pd_off,
            ow_off: pd_off + 8 * npages,
            data_off,
            npages,
        })
    }

    fn words(&self) -> [u64; 5] {
        [
            self.heap_off,
            self.pd_off,
            self.ow_off,
            self.data_off,
            self.npages,
        ]
    }
}

/// The heap's checked view of the segment.
pub struct SegMem {
    /// The segment (a clone of the caller's handle: same slot, keeps the mapping).
    pub seg: Segment,
    base: *mut u8,
    /// The layout.
    pub lay: Layout,
    /// Committed bytes as last seen (grows only; refreshed on a miss).
    committed: Cell<u64>,
    /// The header body (inside the mapping `seg` keeps alive).
    hdr: std::ptr::NonNull<HeapBody>,
}

// SAFETY: `base` points into the mapping that `seg` (a shared reference to a
// `Sync` Segment) keeps alive; nothing about it is tied to the creating thread. The
// `Cell` is moved along with the value. (Not `Sync`: the `Cell` is not.)
unsafe impl Send for SegMem {}

impl std::fmt::Debug for SegMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegMem").field("lay", &self.lay).finish()
    }
}

impl SegMem {
    /// Attaches to the heap of `seg`, which its creator built (never builds).
    ///
    /// # Errors
    ///
    /// [`Error::RegionInUse`] without a heap; commit errors; [`Error::Corrupt`] for
    /// a heap header that is not the one the segment header records.
    pub fn attach(seg: &Segment) -> Result<Self> {
        let Some(heap_offset) = seg.heap_offset() else {
            return Err(Error::RegionInUse {
                by: "raw placement",
                detail: "this segment was made with SegmentOptions::no_heap(): its user \
                         region has no heap (and so no directory)"
                    .into(),
            });
        };
        // The header snapshot validated this layout at open; recomputed, not stored.
        let lay = Layout::new(heap_offset, seg.max_size())?;
        if seg.committed() < lay.data_off {
            seg.commit(lay.data_off)?;
        }
        let base = seg.as_ptr();
        // SAFETY: heap_off is page-aligned, and heap_off + size_of::<HeapHeader>()
        // <= pd_off <= data_off <= committed <= the mapping's length.
        let header_ptr = unsafe { base.add(lay.heap_off as usize).cast::<HeapHeader>() };
        // SAFETY: in bounds and aligned (above); an atomic, any bits valid; the
        // reference borrows `seg`, which keeps the mapping.
        let state = unsafe { &*std::ptr::addr_of!((*header_ptr).state) };
        if seg.owner_tag().is_nobody() {
            return Err(Error::InvalidArgument(
                "this handle acts for no registry slot (forked without after_fork?)",
            ));
        }
        // SYNC: the body and this word were written before the segment's Ready
        // (Release in `init::publish`), which our open observed with Acquire
        // (`init::observe`); this Acquire adds nothing to that pair.
        let s = state.load(Ordering::Acquire);
        if s != READY {
            return Err(overwritten(s, lay.heap_off));
        }
        // SAFETY: in bounds and aligned (above); built (READY); atomics and robust
        // locks only (any bits valid, shared access is their purpose); borrows `seg`.
        let hdr: &HeapBody = unsafe { &*std::ptr::addr_of!((*header_ptr).body) };
        check_body(hdr, &lay)?;
        Ok(Self {
            seg: seg.clone(),
            base,
            lay,
            committed: Cell::new(seg.committed()),
            hdr: std::ptr::NonNull::from(hdr),
        })
    }

    /// Checks the heap header against the layout the segment header records:
    /// state, magic, version and layout words. What `verify` and `attach` ask.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] naming the first word found wrong.
    pub fn check_header(&self) -> Result<()> {
        let h = self
            .base
            .wrapping_add(self.lay.heap_off as usize)
            .cast::<HeapHeader>();
        // SAFETY: the heap header lies inside the mapping `self.seg` keeps
        // (checked in `attach`), aligned; its state word is an atomic, any bits
        // valid.
        let state = unsafe { &*std::ptr::addr_of!((*h).state) };
        let s = state.load(Ordering::Relaxed);
        if s != READY {
            return Err(overwritten(s, self.lay.heap_off));
        }
        check_body(self.hdr(), &self.lay)
    }

    /// The header body.
    #[inline]
    pub fn hdr(&self) -> &HeapBody {
        // SAFETY: checked and built in `attach`; inside the mapping that `self.seg`
        // keeps alive for as long as `self`; atomics and robust locks only.
        unsafe { self.hdr.as_ref() }
    }

    /// Makes sure data pages `[0, end)` are committed.
    ///
    /// # Errors
    ///
    /// [`Error::NoSpace`] from the backing store.
    pub fn ensure_pages(&self, end: u64) -> Result<()> {
        let need = self.lay.data_off + end * PAGE_SIZE;
        if need <= self.committed.get() {
            return Ok(());
        }
        let c = self.seg.committed();
        if need > c {
            // Grow in steps of at least 1 MiB (or an eighth) to keep syscalls rare.
            let step = (c / 8).max(1 << 20);
            let want = need.max(c + step).min(self.seg.max_size());
            self.seg.commit(want).or_else(|_| self.seg.commit(need))?;
        }
        self.committed.set(self.seg.committed());
        Ok(())
    }

    /// Free-list head of class `c`.
    #[inline]
    pub fn head(&self, c: usize) -> &AtomicTagged {
        &self.hdr().heads[c].head
    }

    /// All heads, as a slice of lines (see [`heads`](Self::heads)).
    pub fn heads(&self) -> Vec<&AtomicTagged> {
        self.hdr().heads.iter().map(|l| &l.head).collect()
    }

    #[inline(always)]
    fn table_word(&self, base: u64, page: u64) -> &AtomicU64 {
        let page = page.min(self.lay.npages - 1);
        // SAFETY: page < npages, so base + 8 * page lies in the table, which is
        // below data_off <= committed <= the mapping's length; 8-aligned; the words
        // are only ever accessed as AtomicU64.
        unsafe {
            &*self
                .base
                .add((base + 8 * page) as usize)
                .cast::<AtomicU64>()
        }
    }

    /// Offset of data page `page`.
    #[inline]
    pub fn page_off(&self, page: u64) -> u64 {
        self.lay.data_off + page * PAGE_SIZE
    }

    /// Pointer to offset `off` (no checks: callers checked it is a live block).
    #[inline]
    pub fn ptr(&self, off: u64) -> *mut u8 {
        self.base.wrapping_add(off as usize)
    }
}

impl Mem for SegMem {
    #[inline]
    fn word(&self, off: u64) -> Option<&AtomicU64> {
        if off % 8 != 0 || off < self.lay.heap_off {
            return None;
        }
        let end = off.checked_add(8)?;
        if end > self.committed.get() {
            self.committed.set(self.seg.committed());
            if end > self.committed.get() {
                return None;
            }
        }
        // SAFETY: heap_off <= off and off + 8 <= committed <= the mapping's length;
        // 8-aligned; heap words (links, owner words) are only accessed as atomics by
        // this crate (users' own accesses to block memory are to blocks they hold).
        Some(unsafe { &*self.base.add(off as usize).cast::<AtomicU64>() })
    }

    #[inline(always)]
    fn locate(&self, off: u64) -> Option<Loc> {
        let rel = off.checked_sub(self.lay.data_off)?;
        let r = pages::run_at(self, rel / PAGE_SIZE)?;
        if r.kind != SPAN {
            return None;
        }
        let g = &GEOMETRY[r.class];
        if r.len != g.pages {
            return None;
        }
        let span = self.page_off(r.start);
        let delta = off.checked_sub(span + g.meta_pages * PAGE_SIZE)?;
        let idx = block_index(r.class, delta)?;
        Some(Loc {
            class: r.class,
            owner: span + 8 * idx,
        })
    }
}

impl Table for SegMem {
    #[inline]
    fn pages(&self) -> u64 {
        self.lay.npages
    }
    #[inline]
    fn desc(&self, page: u64) -> &AtomicU64 {
        self.table_word(self.lay.pd_off, page)
    }
    fn owner(&self, page: u64) -> &AtomicU64 {
        self.table_word(self.lay.ow_off, page)
    }
    #[inline]
    fn brk(&self) -> &AtomicU64 {
        &self.hdr().brk
    }
    fn hwm(&self) -> &AtomicU64 {
        &self.hdr().hwm
    }
    fn free_pages(&self) -> &AtomicU64 {
        &self.hdr().free_pages
    }
    fn journal(&self) -> &Journal {
        &self.hdr().journal
    }
    #[inline]
    fn covers(&self, end: u64) -> bool {
        let need = self
            .lay
            .data_off
            .saturating_add(end.saturating_mul(PAGE_SIZE));
        if need <= self.committed.get() {
            return true;
        }
        self.committed.set(self.seg.committed());
        need <= self.committed.get()
    }
}
