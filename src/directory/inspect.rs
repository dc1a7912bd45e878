//! Where the directory's parts lie in the segment, for the fuzz harness
//! (`crate::fuzzing::directory`), which overwrites them: the root's words, the
//! bucket table, the entry blocks (linked and removed) and their holder blocks.
//! Test support only (`testkit`; not under loom, where the directory is not
//! built).
#![cfg(all(feature = "testkit", not(shmkit_loom)))]

use super::entry::{self, EntryHead, MAGIC};
use super::table::{DirRoot, Locked};
use crate::alloc::Heap;
use crate::segment::Segment;
use crate::sync::Mutex;
use crate::{OwnerTag, Result};

/// `state` of an entry whose creator is still building it.
pub(crate) const CREATING: u64 = entry::CREATING;
/// `magic` of an entry (its first word).
pub(crate) const ENTRY_MAGIC: u64 = MAGIC;
/// Byte offsets of an entry head's state and creator words.
pub(crate) const E_STATE: u64 = std::mem::offset_of!(EntryHead, state) as u64;
pub(crate) const E_CREATOR: u64 = std::mem::offset_of!(EntryHead, creator) as u64;
/// Bytes of the root lock's own words, before the root it guards.
pub(crate) const ROOT_LOCK: u64 = (size_of::<Mutex<DirRoot>>() - size_of::<DirRoot>()) as u64;
/// Bytes of the root (plain words).
pub(crate) const ROOT: u64 = size_of::<DirRoot>() as u64;
/// Root words: the counts of linked entries and of used buckets, the
/// generation, and the journal (its operation, then its arguments up to the
/// root's end).
pub(crate) const W_LIVE: u64 = word_of(std::mem::offset_of!(DirRoot, live));
pub(crate) const W_USED: u64 = word_of(std::mem::offset_of!(DirRoot, used));
pub(crate) const W_GENERATION: u64 = word_of(std::mem::offset_of!(DirRoot, generation));
pub(crate) const W_JOURNAL: u64 = word_of(std::mem::offset_of!(DirRoot, j_op));

const fn word_of(byte: usize) -> u64 {
    byte as u64 / 8
}

// The Mutex is repr(C): its words, then the data; DirRoot is whole words, so no
// padding follows it.
const _: () =
    assert!(ROOT_LOCK == 16 && ROOT % 8 == 0 && std::mem::offset_of!(EntryHead, magic) == 0);

/// One entry block.
#[derive(Clone, Debug)]
pub(crate) struct EntryBlock {
    /// Offset of the block (and of its head).
    pub off: u64,
    /// Offset of the object inside it: the head, the name and the type name lie
    /// in `off..obj`.
    pub obj: u64,
    /// The name.
    pub name: Vec<u8>,
    /// The bucket that links it (`None`: on the removed list).
    pub bucket: Option<usize>,
    /// Bucket a probe for its name starts at.
    pub home: usize,
    /// Its holder overflow block (0: none) and that block's bytes.
    pub more: u64,
    pub more_len: u64,
}

/// The directory's parts, as found (under its lock) when everything was intact.
#[derive(Clone, Debug)]
pub(crate) struct Parts {
    /// Offset of the root lock's words ([`ROOT_LOCK`] bytes).
    pub root_lock: u64,
    /// Offset of the root's words ([`ROOT`] bytes).
    pub root: u64,
    /// Offset of the table block and its buckets (words).
    pub table: u64,
    pub buckets: u64,
    /// Linked entries, in bucket order, then the removed list in its order.
    pub entries: Vec<EntryBlock>,
}

/// The parts of `seg`'s directory.
///
/// # Errors
///
/// What the directory calls return (an unbuilt directory is an error here).
pub(crate) fn parts(seg: &Segment) -> Result<Parts> {
    let heap = Heap::attach(seg)?;
    let base = seg.as_ptr() as u64;
    let root_lock = heap.roots().as_ptr() as u64 - base;
    let d = Locked::lock(&heap)?;
    if !d.built()? {
        return Err(crate::Error::NotFound("an unbuilt directory".into()));
    }
    let r = d.root();
    let more_len = u64::from(seg.registry_slots()) * 8;
    let block = |e: &entry::Entry, bucket| EntryBlock {
        off: e.off,
        obj: e.head.obj,
        name: e.name.clone(),
        bucket,
        home: (e.head.hash & (r.buckets - 1)) as usize,
        more: e.head.more,
        more_len: if e.head.more == 0 { 0 } else { more_len },
    };
    let mut entries = Vec::new();
    for (i, e) in d.entries()? {
        entries.push(block(&e?, Some(i)));
    }
    for (e, _) in d.removed()? {
        entries.push(block(&e, None));
    }
    Ok(Parts {
        root_lock,
        root: root_lock + ROOT_LOCK,
        table: r.table,
        buckets: r.buckets,
        entries,
    })
}

/// Records `seg`'s hold on the entry `name` without a handle, as a process that
/// held one and was killed leaves it. Returns whether the name was found.
///
/// # Errors
///
/// What the directory calls return.
pub(crate) fn hold_without_handle(seg: &Segment, name: &str) -> Result<bool> {
    let heap = Heap::attach(seg)?;
    let mut d = Locked::lock(&heap)?;
    let p = d.probe(name.as_bytes(), super::name_hash(seg, name.as_bytes()))?;
    let Some((_, mut e)) = p.found else {
        return Ok(false);
    };
    d.add_holder(&mut e, seg.owner_tag())?;
    Ok(true)
}

/// Whether `tag` (the bits of an owner word) names a live attachment.
pub(crate) fn alive(seg: &Segment, tag: u64) -> bool {
    seg.is_owner_alive(OwnerTag::from_word(tag))
}
