//! The process registry: a fixed table of slots in the segment, one per attached
//! process handle.
//!
//! # Slot state word
//!
//! | word                        | meaning                                             |
//! |-----------------------------|-----------------------------------------------------|
//! | `0`                         | free                                                |
//! | `incarnation \| CLAIMING`   | a process is claiming it (may have died doing so)   |
//! | `incarnation \| ACTIVE`     | attached; the owner holds the slot's liveness lock  |
//!
//! `incarnation` is a random 64-bit value with its two low bits cleared, drawn anew
//! at every attach; `(slot, incarnation)` is the owner tag the rest of shmkit uses.
//!
//! # Protocol
//!
//! *Claim*: CAS `0 → inc|CLAIMING`; take the slot's liveness lock, then the tag and
//! identity witnesses of `(slot, inc)` (see [`locks`](super::locks); if another
//! handle holds any of them, undo and try the next slot); fill in pid and start
//! time; CAS `inc|CLAIMING → inc|ACTIVE` (fails only if a reclaimer freed the slot
//! meanwhile, in which case unlock and go on). *Release*: CAS `inc|ACTIVE → 0`, then
//! unlock the witnesses, then the slot lock. *Reclaim*: take the slot's lock (proof
//! that no live process holds it), then CAS whatever non-zero word is there to `0`,
//! then unlock.
//!
//! A process killed at any step leaves either a free slot, or a non-free slot whose
//! lock the kernel released: reclaimable, never stuck. A claimer that finds its slot
//! reclaimed under it simply retries.
//!
//! # What the words are trusted for
//!
//! The state word only finds candidates. Whether the owner of tag `(slot, inc)` is
//! alive is the kernel's answer about the tag witness, which the owner holds
//! before its word says `ACTIVE` and until after it cleared it; the identity
//! fields feed a `/proc` cross-check only while the identity witness vouches for
//! them. A word that disagrees with that evidence is reported as corrupt, never
//! taken for a death.
#![allow(unsafe_code)]

use crate::error::{Error, Result};
use crate::layout::{FNV_START, fnv1a};
use crate::loom::{AtomicU32, AtomicU64, Ordering};
use crate::segment::locks::{LockTable, Witness};
use crate::segment::owner::OwnerTag;

/// Low bits of a slot word.
pub(crate) const STATUS_MASK: u64 = 0b11;
/// Status: being claimed.
pub(crate) const CLAIMING: u64 = 0b01;
/// Status: attached.
pub(crate) const ACTIVE: u64 = 0b10;

/// One registry slot, 64 bytes, in the segment.
#[repr(C)]
#[derive(Debug)]
#[doc(hidden)]
pub struct Slot {
    /// See the module docs.
    pub state: AtomicU64,
    /// The owner's pid, in the owner's pid namespace.
    pub pid: AtomicU32,
    /// The owner's effective uid.
    pub uid: AtomicU32,
    /// The owner's start time, in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: AtomicU64,
    /// The inode of the owner's pid namespace (`/proc/self/ns/pid`), 0 if unknown.
    pub pidns: AtomicU64,
    /// When the slot was claimed, nanoseconds since the Unix epoch.
    pub attached_ns: AtomicU64,
    /// Reserved for a heartbeat and later use.
    pub reserved: [AtomicU64; 3],
}

// SAFETY: repr(C), atomics only, every bit pattern valid, nothing process-local.
unsafe impl crate::ShmSafe for Slot {}
// SAFETY: every field is an atomic; no padding (64 bytes of atomics).
unsafe impl crate::ShmShared for Slot {}

#[cfg(not(shmkit_loom))]
const _: () = assert!(size_of::<Slot>() == 64);

impl Slot {
    /// A free slot.
    pub fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            pid: AtomicU32::new(0),
            uid: AtomicU32::new(0),
            start_time: AtomicU64::new(0),
            pidns: AtomicU64::new(0),
            attached_ns: AtomicU64::new(0),
            reserved: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        }
    }
}

impl Default for Slot {
    fn default() -> Self {
        Self::new()
    }
}

/// Who is claiming a slot.
#[derive(Copy, Clone, Debug, Default)]
#[doc(hidden)]
pub struct Identity {
    /// Random, two low bits clear, non-zero.
    pub incarnation: u64,
    /// Our pid.
    pub pid: u32,
    /// Our effective uid.
    pub uid: u32,
    /// Our start time in clock ticks.
    pub start_time: u64,
    /// Our pid namespace inode.
    pub pidns: u64,
    /// Now, in ns since the epoch.
    pub now_ns: u64,
}

/// Lock index of slot `i`.
#[inline]
pub(crate) fn lock_index(i: u32) -> u32 {
    i + 1
}

/// The digest of an owner's identity fields that its identity witness encodes.
pub(crate) fn identity_digest(
    tag: OwnerTag,
    pid: u32,
    uid: u32,
    start_time: u64,
    pidns: u64,
) -> u64 {
    let mut h = fnv1a(FNV_START, &tag.bits().to_le_bytes());
    for v in [u64::from(pid), u64::from(uid), start_time, pidns] {
        h = fnv1a(h, &v.to_le_bytes());
    }
    // Fold the high bits in: the witness keeps the low 60.
    h ^ (h >> 60)
}

/// The witnesses an owner of slot `i` described by `who` holds.
fn witnesses(i: u32, who: &Identity) -> Option<[Witness; 2]> {
    let tag = OwnerTag::new(i, who.incarnation)?;
    let digest = identity_digest(tag, who.pid, who.uid, who.start_time, who.pidns);
    Some([Witness::Tag(tag), Witness::Identity { slot: i, digest }])
}

/// Takes the witnesses of slot `i` for `who` (undoing a partial take). Returns
/// whether this handle now holds both.
fn take_witnesses(locks: &impl LockTable, i: u32, who: &Identity) -> Result<bool> {
    let Some(ws) = witnesses(i, who) else {
        return Ok(false); // a slot beyond 16 bits has no tag: never claimed
    };
    for (k, w) in ws.iter().enumerate() {
        let taken = locks.try_lock_witness(*w);
        if !matches!(taken, Ok(true)) {
            for held in &ws[..k] {
                locks.unlock_witness(*held);
            }
            return taken;
        }
    }
    Ok(true)
}

/// Claims a free slot for `who`. Returns the slot index.
///
/// # Errors
///
/// [`Error::RegistryFull`] if no slot is free; lock errors from the OS.
#[doc(hidden)]
pub fn claim(slots: &[Slot], locks: &impl LockTable, who: &Identity) -> Result<u32> {
    let claiming = who.incarnation | CLAIMING;
    for (i, slot) in slots.iter().enumerate() {
        let i = i as u32;
        if slot.state.load(Ordering::Relaxed) != 0 {
            continue;
        }
        // SYNC: Acquire pairs with the Release CAS to 0 in release/reclaim: the
        // previous owner's use of the slot happens before ours. Failure: Relaxed,
        // we only move on.
        if slot
            .state
            .compare_exchange(0, claiming, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let give_back = || {
            // SYNC: Release pairs with the Acquire CAS of the next claimer.
            let _ = slot
                .state
                .compare_exchange(claiming, 0, Ordering::Release, Ordering::Relaxed);
        };
        match locks.try_lock(lock_index(i)) {
            Ok(true) => {}
            // A reclaimer, or a forked descendant of a dead owner, holds the lock.
            Ok(false) => {
                give_back();
                continue;
            }
            Err(e) => {
                give_back();
                return Err(e);
            }
        }
        // The witnesses before the word says ACTIVE: from then on peers may ask
        // about our tag, and the witness must already answer "alive".
        match take_witnesses(locks, i, who) {
            Ok(true) => {}
            // Held elsewhere (a peer squatting on bytes, or a digest collision):
            // this slot will not do.
            Ok(false) => {
                locks.unlock(lock_index(i));
                give_back();
                continue;
            }
            Err(e) => {
                locks.unlock(lock_index(i));
                give_back();
                return Err(e);
            }
        }
        slot.pid.store(who.pid, Ordering::Relaxed);
        slot.uid.store(who.uid, Ordering::Relaxed);
        slot.start_time.store(who.start_time, Ordering::Relaxed);
        slot.pidns.store(who.pidns, Ordering::Relaxed);
        slot.attached_ns.store(who.now_ns, Ordering::Relaxed);
        // SYNC: Release publishes the identity fields above; pairs with the Acquire
        // load of the state word in `Segment::slot_info`.
        match slot.state.compare_exchange(
            claiming,
            who.incarnation | ACTIVE,
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Ok(i),
            Err(_) => {
                release_witnesses(locks, i, who.incarnation);
                locks.unlock(lock_index(i));
            }
        }
    }
    Err(Error::RegistryFull {
        slots: slots.len() as u32,
    })
}

/// Releases slot `i` held by `incarnation`. Returns whether it was still ours.
#[doc(hidden)]
pub fn release(slots: &[Slot], locks: &impl LockTable, i: u32, incarnation: u64) -> bool {
    let Some(slot) = slots.get(i as usize) else {
        return false;
    };
    // SYNC: Release pairs with the Acquire CAS in `claim`: our use of the slot
    // happens before the next claimer's.
    let ours = slot
        .state
        .compare_exchange(
            incarnation | ACTIVE,
            0,
            Ordering::Release,
            Ordering::Relaxed,
        )
        .is_ok();
    // Witnesses first: whenever the slot lock is free, so are they.
    release_witnesses(locks, i, incarnation);
    locks.unlock(lock_index(i));
    ours
}

/// Releases the witnesses an owner of slot `i` with `incarnation` holds (the
/// identity witness without its digest: the fields in the segment are not trusted
/// to recompute it).
fn release_witnesses(locks: &impl LockTable, i: u32, incarnation: u64) {
    if let Some(tag) = OwnerTag::new(i, incarnation) {
        locks.unlock_witness(Witness::Tag(tag));
    }
    locks.unlock_identity_witnesses(i);
}

/// Frees slot `i` if it is taken but nobody holds its lock (its owner died, or died
/// claiming it). Never frees `own` (this handle's slot). Returns whether it freed it.
///
/// # Errors
///
/// Lock errors from the OS.
#[doc(hidden)]
pub fn reclaim(slots: &[Slot], locks: &impl LockTable, i: u32, own: Option<u32>) -> Result<bool> {
    let Some(slot) = slots.get(i as usize) else {
        return Ok(false);
    };
    // The word judged, read *before* the lock: if a new owner claims the slot
    // between our lock and our CAS (possible when another thread of this handle
    // shares our open file description, whose OFD locks re-enter), its word has a
    // new random incarnation and the CAS fails. SYNC: Acquire pairs with the
    // Release CAS in `claim`, so we see the final word of the dead owner.
    let word = slot.state.load(Ordering::Acquire);
    if own == Some(i) || word == 0 {
        return Ok(false);
    }
    if !locks.try_lock(lock_index(i))? {
        return Ok(false);
    }
    // We hold the lock: the owner of `word` is not alive (a live owner holds it
    // from claim to release). SYNC: Release pairs with the Acquire CAS in `claim`
    // of the next claimer.
    let freed = slot
        .state
        .compare_exchange(word, 0, Ordering::Release, Ordering::Relaxed)
        .is_ok();
    locks.unlock(lock_index(i));
    Ok(freed)
}
