//! A directory entry: one heap block holding the entry's head, the object's name,
//! its type name, and then (aligned) the object itself.
//!
//! ```text
//! block: | EntryHead (208 B) | name (1..=255 B) | type name | pad | object ... |
//! ```
//!
//! Every field is written under the directory lock and read under it; a peer may
//! still write anything, so a head is copied once ([`read`]) and every field is
//! checked before use. Nothing read from a head is used twice without the check.
#![allow(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::alloc::Heap;
use crate::object::{CONFIG_WORDS, MAX_OBJECT_ALIGN, MAX_TYPE_NAME};
use crate::{Error, Result};

/// `magic` of an entry ("SHMKDENT").
pub const MAGIC: u64 = 0x544e_4544_4b4d_4853;
/// Linked, its creator still building the object.
pub const CREATING: u64 = 1;
/// Built: handed out by `find`.
pub const READY: u64 = 2;
/// Removed from the table while processes still held it (on the removed list).
pub const REMOVED: u64 = 3;
/// Holder tags kept in the head; more go to an overflow block indexed by slot.
pub const INLINE_HOLDERS: usize = 8;
/// Longest object name, in bytes.
pub const MAX_NAME: usize = 255;

/// The head of an entry block.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EntryHead {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`CREATING`], [`READY`] or [`REMOVED`].
    pub state: u64,
    /// Owner tag (bits) of the creator.
    pub creator: u64,
    /// Hash of the name (seeded by the segment).
    pub hash: u64,
    /// Segment offset of the object (inside this block).
    pub obj: u64,
    /// Bytes of the object.
    pub size: u64,
    /// Alignment of the object.
    pub align: u64,
    /// Format version of the object's type.
    pub version: u64,
    /// The configuration the object was built from.
    pub config: [u64; CONFIG_WORDS],
    /// Bytes of the name.
    pub name_len: u64,
    /// Bytes of the type name.
    pub type_len: u64,
    /// Owner tags (bits) of the attachments holding handles; 0 = none.
    pub holders: [u64; INLINE_HOLDERS],
    /// Offset of the overflow holder block (one word per registry slot), or 0.
    pub more: u64,
    /// The holder block's owner word as published (stamped): recovery frees it
    /// only while the heap still shows exactly this word.
    pub more_word: u64,
    /// Next entry on the removed list, or 0.
    pub next_removed: u64,
    /// When it was created (CLOCK_REALTIME, ns).
    pub created_ns: u64,
}

/// Bytes of the head.
pub const HEAD: u64 = size_of::<EntryHead>() as u64;
const _: () = assert!(HEAD == 208);

/// An entry, copied and checked.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The block's offset.
    pub off: u64,
    /// The head as read.
    pub head: EntryHead,
    /// The name's bytes.
    pub name: Vec<u8>,
    /// The type name's bytes.
    pub type_name: Vec<u8>,
}

impl Entry {
    /// The name as text (for messages: lossy).
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

fn bad(off: u64, reason: impl std::fmt::Display) -> Error {
    Error::corrupt("directory entry", format!("entry at {off:#x}: {reason}"))
}

/// Bytes of an entry block for a name, a type name and an object.
pub fn block_size(name: usize, type_name: usize, size: u64, align: u64) -> Option<(u64, u64)> {
    let pre = HEAD
        .checked_add(name as u64)?
        .checked_add(type_name as u64)?;
    let obj_at = crate::layout::align_up(pre, align)?;
    Some((obj_at, obj_at.checked_add(size)?))
}

/// Copies the entry at `off` and checks every field against the block it lies in.
///
/// # Errors
///
/// [`Error::Corrupt`] naming the entry for anything out of place.
pub fn read(heap: &Heap, off: u64) -> Result<Entry> {
    if off == 0 || off % 16 != 0 {
        return Err(bad(off, "misaligned offset"));
    }
    let block = heap
        .usable_size(off)
        .map_err(|e| bad(off, format!("not a live heap block ({e})")))?;
    if block < HEAD {
        return Err(bad(off, format!("block of {block} bytes holds no head")));
    }
    let p = heap.ptr(off)?;
    // SAFETY: `off` is a live block of `block >= HEAD` bytes inside this process's
    // mapping (usable_size, ptr); 16-aligned; EntryHead is plain words (any bits
    // valid). A copy: nothing below reads the head's memory again.
    let head: EntryHead = unsafe { p.cast::<EntryHead>().as_ptr().read() };
    if head.magic != MAGIC {
        return Err(bad(off, format!("magic {:#018x}", head.magic)));
    }
    if !matches!(head.state, CREATING | READY | REMOVED) {
        return Err(bad(off, format!("state {:#x}", head.state)));
    }
    let (name_len, type_len) = (head.name_len, head.type_len);
    if name_len == 0 || name_len > MAX_NAME as u64 {
        return Err(bad(off, format!("name length {name_len}")));
    }
    if type_len == 0 || type_len > MAX_TYPE_NAME as u64 {
        return Err(bad(off, format!("type name length {type_len}")));
    }
    let align = head.align;
    if !align.is_power_of_two() || align > MAX_OBJECT_ALIGN as u64 {
        return Err(bad(off, format!("alignment {align}")));
    }
    let Some((obj_at, end)) = block_size(name_len as usize, type_len as usize, head.size, align)
    else {
        return Err(bad(off, "sizes overflow"));
    };
    if end > block {
        return Err(bad(
            off,
            format!("object of {} bytes past its block of {block}", head.size),
        ));
    }
    if head.obj != off + obj_at || head.obj % align != 0 {
        return Err(bad(off, format!("object offset {:#x}", head.obj)));
    }
    let mut name = vec![0u8; name_len as usize];
    let mut type_name = vec![0u8; type_len as usize];
    // SAFETY: HEAD + name_len + type_len <= end <= block bytes of the live block;
    // byte copies into our own buffers.
    unsafe {
        let base = p.as_ptr().add(HEAD as usize);
        std::ptr::copy_nonoverlapping(base, name.as_mut_ptr(), name.len());
        std::ptr::copy_nonoverlapping(
            base.add(name.len()),
            type_name.as_mut_ptr(),
            type_name.len(),
        );
    }
    Ok(Entry {
        off,
        head,
        name,
        type_name,
    })
}

/// Writes a whole new entry into the block at `off` (ours, `block` bytes).
///
/// # Safety
///
/// `off` is a block this process owns (not yet linked), of at least
/// `obj_at + size` bytes as [`block_size`] computed for these names.
pub unsafe fn write_new(
    heap: &Heap,
    off: u64,
    head: &EntryHead,
    name: &[u8],
    type_name: &[u8],
) -> Result<()> {
    let p = heap.ptr(off)?.as_ptr();
    // SAFETY: the caller's contract: our block, large enough; the object area is
    // zeroed here so that `ShmObject::init` starts from zeroes.
    unsafe {
        p.cast::<EntryHead>().write(*head);
        let base = p.add(HEAD as usize);
        std::ptr::copy_nonoverlapping(name.as_ptr(), base, name.len());
        std::ptr::copy_nonoverlapping(type_name.as_ptr(), base.add(name.len()), type_name.len());
        let obj = p.add((head.obj - off) as usize);
        obj.write_bytes(0, head.size as usize);
    }
    Ok(())
}

/// Overwrites the head of the checked entry `e` (under the directory lock).
pub fn write_head(heap: &Heap, e: &Entry) -> Result<()> {
    let p = heap.ptr(e.off)?;
    // SAFETY: `e` was read and checked by `read` under the lock we still hold, so
    // `e.off` is a live block of at least HEAD bytes; plain words.
    unsafe { p.cast::<EntryHead>().as_ptr().write(e.head) };
    Ok(())
}
