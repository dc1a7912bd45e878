//! Liveness verdicts: what the kernel's witness locks (and `/proc`, where a
//! witness vouches for the identity it is asked about) say about an owner tag or a
//! registry slot.
//!
//! The rule: a death verdict needs kernel evidence about the very thing judged.
//! For a tag that is the tag witness (its byte is free: every description that
//! held it is gone); for a held witness overruled by `/proc` (a forked descendant
//! keeps a dead owner's description), the identity witness must vouch that the pid
//! and start time `/proc` was asked about are the owner's. Segment words only say
//! where to look; when they disagree with the kernel the verdict is "alive" (for a
//! tag) or [`SlotState::Corrupt`] (for a slot), never "dead".

use crate::error::Result;
use crate::loom::Ordering;
use crate::segment::handle::Segment;
use crate::segment::locks::{LockTable, Witness};
use crate::segment::owner::OwnerTag;
use crate::segment::registry::{self, ACTIVE, CLAIMING, STATUS_MASK, Slot};
use crate::segment::slot_info::SlotState;
use crate::segment::{os, proc};

/// The identity fields of a slot, as read from the segment (untrusted).
#[derive(Copy, Clone, Debug)]
pub(super) struct Fields {
    pub pid: u32,
    pub uid: u32,
    pub start_time: u64,
    pub pidns: u64,
}

impl Fields {
    /// The fields of `slot` now (Relaxed loads: ordered by the caller's Acquire
    /// load of the state word, and by the lock probe before it).
    fn read(slot: &Slot) -> Self {
        Self {
            pid: slot.pid.load(Ordering::Relaxed),
            uid: slot.uid.load(Ordering::Relaxed),
            start_time: slot.start_time.load(Ordering::Relaxed),
            pidns: slot.pidns.load(Ordering::Relaxed),
        }
    }
}

/// The verdict on a tag whose tag witness is held.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Held {
    /// Nothing overrules the witness.
    Alive,
    /// `/proc` shows the owner gone, about an identity the kernel vouches for.
    Dead,
    /// `/proc` shows the recorded pid gone, but the identity witness does not
    /// vouch for the recorded fields: a peer rewrote them.
    Corrupt,
}

impl Segment {
    /// [`is_owner_alive`](Segment::is_owner_alive) for a tag that names somebody
    /// other than this handle: one witness probe, and for a held witness the
    /// `/proc` cross-check. No segment word enters a "dead" answer.
    pub(super) fn foreign_owner_alive(&self, tag: OwnerTag) -> bool {
        if os::fork::current() != self.inner.fork_gen {
            // An inherited handle in a forked child: its probes would go through
            // the parent's description, to which the parent's witnesses are "ours".
            return true;
        }
        let Some(slot) = self.inner.slots().get(tag.slot() as usize) else {
            return false; // slot out of range: a corrupt tag names nobody
        };
        let locks = self.inner.store.locks();
        match locks.witness_held_elsewhere(Witness::Tag(tag)) {
            // Free: every description that held it is gone (or detached). A handle
            // forked without the atfork handler noticing still fails the pid check.
            Ok(false) => self.inner.pid != proc::self_pid(),
            Ok(true) => {
                // SYNC: Acquire pairs with the Release CAS to ACTIVE in
                // registry::claim: the owner's identity fields, written before it,
                // are visible (the word's value is not used).
                let _ = slot.state.load(Ordering::Acquire);
                self.held_verdict(&locks, tag, Fields::read(slot)) != Held::Dead
            }
            // We cannot tell: never declare a live owner dead on weak evidence.
            Err(_) => true,
        }
    }

    /// The verdict on `tag`, whose tag witness is held, with `fields` read from its
    /// slot: `/proc` may overrule the witness (a forked descendant holding a dead
    /// owner's description), but only about fields its identity witness vouches
    /// for.
    #[cold]
    fn held_verdict(&self, locks: &impl LockTable, tag: OwnerTag, f: Fields) -> Held {
        if f.pidns == 0 || f.pidns != proc::self_pidns() {
            return Held::Alive; // another pid namespace's /proc is not ours to read
        }
        if owner_verdict(f.pid, f.uid, f.start_time) == SlotState::Alive {
            return Held::Alive;
        }
        let digest = registry::identity_digest(tag, f.pid, f.uid, f.start_time, f.pidns);
        match locks.witness_held_elsewhere(Witness::Identity {
            slot: tag.slot(),
            digest,
        }) {
            Ok(true) => Held::Dead,
            Ok(false) | Err(_) => Held::Corrupt,
        }
    }

    /// The verdict on registry slot `slot` whose state word was `word` (not free,
    /// not ours) and identity fields `f`, for [`slot_info`](Segment::slot_info).
    /// `Corrupt` may be transient (a reclaimer holding the slot lock for a moment):
    /// the caller asks again before reporting it.
    ///
    /// # Errors
    ///
    /// [`Error::Os`](crate::Error::Os) if a lock probe fails.
    pub(super) fn slot_verdict(&self, slot: u32, word: u64, f: Fields) -> Result<SlotState> {
        let locks = self.inner.store.locks();
        let slot_held = || locks.held_elsewhere(registry::lock_index(slot));
        if word & STATUS_MASK != ACTIVE {
            // Claiming, or a status no build writes: judged by the slot lock alone
            // (a free slot lock means no live process holds the slot).
            return Ok(if word & STATUS_MASK == CLAIMING || slot_held()? {
                SlotState::Claiming
            } else {
                SlotState::Dead
            });
        }
        let Some(tag) = OwnerTag::new(slot, word & !STATUS_MASK) else {
            return Ok(SlotState::Corrupt); // not reached: validated registries fit 16 bits
        };
        if locks.witness_held_elsewhere(Witness::Tag(tag))? {
            return Ok(match self.held_verdict(&locks, tag, f) {
                Held::Alive => SlotState::Alive,
                Held::Dead => SlotState::Dead,
                Held::Corrupt => SlotState::Corrupt,
            });
        }
        if !slot_held()? {
            // Neither the word's owner nor anybody else holds the slot.
            return Ok(SlotState::Dead);
        }
        // Somebody holds the slot, but not as the owner the word names (that owner
        // took its witness before writing ACTIVE and releases it only after
        // clearing the word): a reclaimer for a moment, or a rewritten word.
        Ok(SlotState::Corrupt)
    }
}

/// The verdict on a liveness lock that is held, from what /proc says of its
/// recorded owner (same pid namespace). The lock is authoritative for "dead"; a held
/// lock is overruled only by positive evidence that the owner is gone: a forked
/// descendant holds an inherited copy of the lock. Callers must have the identity
/// witness vouch for the fields before acting on `Dead`.
fn owner_verdict(pid: u32, uid: u32, start_time: u64) -> SlotState {
    match proc::lookup(pid) {
        proc::Lookup::Present(st) => {
            // A different start time: the pid was reused. A zombie with no live
            // thread: the owner has exited (its lock lives on in a descendant).
            let reused = start_time != 0 && st.start_time != start_time;
            let exited = (st.state == b'Z' || st.state == b'X') && !proc::has_live_threads(pid);
            if reused || exited {
                SlotState::Dead
            } else {
                SlotState::Alive
            }
        }
        proc::Lookup::Gone => {
            // /proc mounted with hidepid hides other users' processes: only trust
            // "gone" for our own uid (or as root, who sees everything).
            let me = rustix::process::geteuid().as_raw();
            if uid == me || me == 0 {
                SlotState::Dead
            } else {
                SlotState::Alive
            }
        }
        proc::Lookup::Unknown => SlotState::Alive,
    }
}

/// How many times [`Segment::slot_info`] judges a slot word again because it
/// changed under its probes, before it reports the latest verdict.
pub(super) const SLOT_CHANGES: u32 = 64;
/// How many times (1 ms apart) [`Segment::slot_info`] asks again about a slot
/// that looks corrupt, in case a reclaimer is holding its lock for a moment.
pub(super) const SUSPECT_RETRIES: u32 = 20;

/// The state word, identity fields and attach time of `s`, read seqlock-style:
/// the fields belong to the word only if the word is unchanged after reading them
/// (a slot can be released and re-claimed meanwhile).
pub(super) fn read_slot(s: &Slot) -> (u64, Fields, u64) {
    loop {
        // SYNC: Acquire pairs with the Release CAS in registry::claim; the identity
        // fields below are those the claimer published.
        let word = s.state.load(Ordering::Acquire);
        let fields = Fields::read(s);
        let attached_ns = s.attached_ns.load(Ordering::Relaxed);
        // SYNC: an Acquire fence orders the field loads before the re-check (the
        // seqlock read side).
        crate::loom::fence(Ordering::Acquire);
        if s.state.load(Ordering::Relaxed) == word {
            return (word, fields, attached_ns);
        }
        crate::loom::spin_loop();
    }
}

/// The error [`Segment::is_alive`] gives for a [`SlotState::Corrupt`] slot.
pub(super) fn corrupt_slot(info: &crate::SlotInfo) -> crate::Error {
    crate::Error::corrupt(
        "registry slot",
        format!(
            "slot {}: its lock is held, but not by incarnation {:#x} that its word names \
             (or its identity fields are not its owner's)",
            info.index, info.incarnation
        ),
    )
}

#[cfg(feature = "testkit")]
impl Segment {
    /// Test support: the byte offset of registry slot `slot` in the segment (its
    /// state word first, then pid, uid, start time, pid namespace), `None` out of
    /// range. What a hostile peer would compute from the header.
    pub(crate) fn registry_slot_offset(&self, slot: u32) -> Option<u64> {
        let f = &self.inner.fields;
        (slot < f.registry_slots)
            .then(|| f.registry_offset + u64::from(slot) * u64::from(f.slot_size))
    }
}
