//! Who is attached: this attachment's slot, the registry's slots and their
//! liveness, and reclaiming the slots of the dead.

use crate::error::{Error, Result};
use crate::loom::Ordering;
use crate::segment::liveness::{SLOT_CHANGES, SUSPECT_RETRIES, corrupt_slot, read_slot};
use crate::segment::registry::{self, ACTIVE, STATUS_MASK};
use crate::segment::slot_info::{SlotInfo, SlotState};

use super::Segment;

impl Segment {
    /// This handle's registry slot.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// assert_ne!(seg.try_clone()?.slot(), seg.slot());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn slot(&self) -> u32 {
        self.inner.slot
    }

    /// This handle's random incarnation: `(slot, incarnation)` tags what it owns.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let info = seg.slot_info(seg.slot())?;
    /// assert_eq!(info.incarnation, seg.incarnation());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// Number of registry slots.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().registry_slots(4).create()?;
    /// assert_eq!(seg.registry_slots(), 4);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn registry_slots(&self) -> u32 {
        self.inner.fields.registry_slots
    }

    /// Whether the holder of `slot` is alive (false for a free slot).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an index out of range; [`Error::Os`] if the
    /// lock probe fails; [`Error::Corrupt`] if the slot's words disagree with the
    /// kernel's evidence ([`SlotState::Corrupt`]: somebody live holds the slot, but
    /// not as the words say).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::memfd().create()?;
    /// let peer = seg.try_clone()?;
    /// assert!(seg.is_alive(peer.slot())?);
    /// let slot = peer.slot();
    /// drop(peer);
    /// assert!(!seg.is_alive(slot)?); // detached: the slot is free
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn is_alive(&self, slot: u32) -> Result<bool> {
        let info = self.slot_info(slot)?;
        if info.state == SlotState::Corrupt {
            return Err(corrupt_slot(&info));
        }
        Ok(info.state == SlotState::Alive)
    }

    /// The verdict on one slot.
    ///
    /// The verdict comes from the kernel: the tag witness of the incarnation the
    /// slot word names (a lock its owner holds while attached) and the slot's
    /// liveness lock, both released by the kernel when their holder dies, so a
    /// reused pid or a zombie is never taken for the owner. A held witness is
    /// cross-checked against the recorded pid and start time (same pid namespace
    /// only), which catches a forked child that inherited the locks and outlived
    /// its parent, and the identity witness must vouch for those fields first.
    /// A slot word that disagrees with the locks (the slot lock is held, but not
    /// by the incarnation the word names) is [`SlotState::Corrupt`], never `Dead`.
    ///
    /// # Errors
    ///
    /// [`Error::ForkedHandle`] in a forked child that has not called
    /// [`after_fork`](Self::after_fork).
    /// As [`is_alive`](Self::is_alive).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::SlotState;
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let peer = seg.try_clone()?;
    /// let slot = peer.slot();
    /// // `peer`'s process is killed here (kill -9)
    /// # peer.simulate_crash(); // test support: the same as a SIGKILL
    /// assert_eq!(seg.slot_info(slot)?.state, SlotState::Dead);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn slot_info(&self, slot: u32) -> Result<SlotInfo> {
        self.check_pid()?;
        let s = self
            .slots()
            .get(slot as usize)
            .ok_or(Error::InvalidArgument("slot index out of range"))?;
        let mut suspect = 0;
        let mut changes = 0;
        loop {
            let (word, fields, attached_ns) = read_slot(s);
            let own = slot == self.inner.slot && word == (self.inner.incarnation | ACTIVE);
            let state = if word == 0 {
                SlotState::Free
            } else if own {
                SlotState::Alive
            } else {
                self.slot_verdict(slot, word, fields)?
            };
            // The verdict is on `word`: if the slot changed during the probes, judge
            // the new word (a slot keeps changing only under a misbehaving peer).
            // SYNC: Acquire pairs with the Release CAS in registry::claim/release.
            if s.state.load(Ordering::Acquire) != word && changes < SLOT_CHANGES {
                changes += 1;
                crate::loom::spin_loop();
                continue;
            }
            // A reclaimer holds a dead owner's slot lock for a moment: give it time
            // to finish before calling the slot corrupt.
            if state == SlotState::Corrupt && suspect < SUSPECT_RETRIES {
                suspect += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            return Ok(SlotInfo {
                index: slot,
                state,
                pid: if word == 0 { 0 } else { fields.pid },
                incarnation: word & !STATUS_MASK,
                attached_ns,
                own,
            });
        }
    }

    /// Every slot that is not free, with its verdict.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if a lock probe fails.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let _peer = seg.try_clone()?;
    /// assert_eq!(seg.slot_list()?.len(), 2);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn slot_list(&self) -> Result<Vec<SlotInfo>> {
        let mut v = Vec::new();
        for i in 0..self.inner.fields.registry_slots {
            let info = self.slot_info(i)?;
            if info.state != SlotState::Free {
                v.push(info);
            }
        }
        Ok(v)
    }

    /// Frees the slots of dead processes (and of processes that died attaching).
    /// Returns the indices freed.
    ///
    /// # Errors
    ///
    /// [`Error::ForkedHandle`] in a forked child that has not called
    /// [`after_fork`](Self::after_fork).
    /// [`Error::Os`] if a lock operation fails.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let peer = seg.try_clone()?;
    /// let slot = peer.slot();
    /// // `peer`'s process is killed here (kill -9)
    /// # peer.simulate_crash(); // test support: the same as a SIGKILL
    /// assert_eq!(seg.reclaim_dead()?, vec![slot]);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn reclaim_dead(&self) -> Result<Vec<u32>> {
        self.check_pid()?;
        let locks = self.inner.store.locks();
        let mut freed = Vec::new();
        for i in 0..self.inner.fields.registry_slots {
            if registry::reclaim(self.slots(), &locks, i, Some(self.inner.slot))? {
                freed.push(i);
                continue;
            }
            // The lock is held, yet its recorded owner is dead: a forked child that
            // never called after_fork holds an inherited copy of it. Free the word
            // judged dead (exactly that word: a new owner has a new incarnation).
            // Nobody can claim the slot until that holder lets go of the lock
            // (`claim` backs off), but it no longer names a dead process.
            let info = self.slot_info(i)?;
            if info.state == SlotState::Dead && !info.own {
                let word = info.incarnation | ACTIVE;
                // SYNC: Release pairs with the Acquire CAS in registry::claim.
                if self.slots()[i as usize]
                    .state
                    .compare_exchange(word, 0, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
                {
                    freed.push(i);
                }
            }
        }
        Ok(freed)
    }
}
