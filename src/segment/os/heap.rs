//! Heap-backed regions: plain process memory laid out like a segment, for unit
//! tests, miri and loom (no OS sharing; threads stand in for processes).
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::ptr::NonNull;

use crate::error::{Error, Result};
use crate::layout::PAGE_SIZE;
use crate::segment::mapping::{Mapping, Unmap};

/// A zeroed, page-aligned region of `len` bytes.
pub(crate) fn alloc(len: u64) -> Result<Mapping> {
    let bad = || Error::InvalidSize {
        size: len,
        reason: "cannot allocate a heap region this large",
    };
    let size = usize::try_from(len).map_err(|_| bad())?;
    let layout = Layout::from_size_align(size, PAGE_SIZE as usize).map_err(|_| bad())?;
    if size == 0 {
        return Err(bad());
    }
    // SAFETY: the layout has a non-zero size (checked above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    let ptr = NonNull::new(ptr).ok_or_else(bad)?;
    // SAFETY: freshly allocated with this layout; the Mapping deallocates it.
    Ok(unsafe { Mapping::new(ptr, size, Unmap::Dealloc(layout)) })
}
