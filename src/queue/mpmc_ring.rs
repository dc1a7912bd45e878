//! The MPMC ring's algorithm over plain words: Vyukov's bounded queue with a
//! per-slot claim word naming the claimant, so that a slot whose claimant died
//! half-way is repaired by the next process that finds it stuck.
//!
//! A slot is `STAMP`, `OWNER`, then the message's data words. The stamp is
//! `(position << 2) | kind` (the position truncated to 62 bits): `FREE(p)` is
//! ready for the producer of position `p`, `FULL(p)` holds the message of
//! position `p`, `SKIP(p)` is position `p` given up by a dead producer (its
//! consumer passes it without returning a value). The owner word is 0 or the
//! owner tag of the process that is claiming or has claimed the slot; only the
//! owner moves the slot's position word (tail or head) past the slot, and only the
//! owner (or a repairer that took the word over from a dead owner) writes the
//! stamp. `MpmcQueue`'s documentation gives the full state table.

use crate::loom::{AtomicU32, AtomicU64, Ordering, fence, spin_loop, yield_now};
use crate::segment::OwnerTag;
use crate::sync::Context;
use crate::{Error, Result};

/// Index of the stamp word in a slot.
pub(crate) const STAMP: usize = 0;
/// Index of the owner word in a slot.
pub(crate) const OWNER: usize = 1;
/// Index of the first data word in a slot.
pub(crate) const DATA: usize = 2;

/// Stamp kind: ready for the producer of the stamp's position.
pub(crate) const FREE: u64 = 0;
/// Stamp kind: holds the message of the stamp's position.
pub(crate) const FULL: u64 = 1;
/// Stamp kind: the position's producer died; its consumer skips the slot.
pub(crate) const SKIP: u64 = 2;

/// Iterations without progress (the position unchanged, the slot busy) before a
/// non-blocking call gives up and reports "would block" (a hang bound, not a
/// speed limit: a live claimant finishes in a few instructions unless it is
/// preempted).
#[cfg(not(shmkit_loom))]
const PATIENCE: u32 = 1 << 12;
#[cfg(shmkit_loom)]
const PATIENCE: u32 = 3;
/// Of which these spin before yielding the CPU.
const SPINS: u32 = 64;
/// Longest single futex sleep of a blocking call: it re-checks (and repairs a
/// slot a dead claimant left) between slices.
const SLICE: std::time::Duration = std::time::Duration::from_millis(10);

/// The stamp of position `p` with `kind`.
#[inline]
pub(crate) const fn stamp(p: u64, kind: u64) -> u64 {
    (p << 2) | kind
}

/// `a - b` for 62-bit positions, sign-extended.
#[inline]
const fn dist(a: u64, b: u64) -> i64 {
    ((a.wrapping_sub(b)) << 2) as i64 >> 2
}

/// One of the two position lines: the position word and its sleep/wake words.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct PosLine {
    /// Next position to produce (tail) or consume (head).
    pub(crate) pos: AtomicU64,
    /// Futex word: bumped by the other side when it frees a slot (tail line) or
    /// publishes a message (head line) while someone sleeps.
    pub(crate) wake: AtomicU32,
    /// Number of sleepers on `wake` (a hint: a dead sleeper leaves it high, which
    /// only costs wake syscalls).
    pub(crate) sleepers: AtomicU32,
    /// Keeps the next line off this one.
    pub(crate) _pad: [AtomicU64; 14],
}

/// What a claimant does at the point where a test may stop it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Point {
    /// A producer has moved the tail past its slot and not written the message.
    ProducerClaimed,
    /// A consumer has moved the head past its slot and not released it.
    ConsumerClaimed,
}

/// The outcome of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<V> {
    /// Done (`V`: nothing for a push, the message for a pop).
    Done(V),
    /// Full (push) or empty (pop), or the slot is busy with a live claimant.
    WouldBlock,
    /// The caller stopped at a test crash point (test support only).
    Died,
}

/// A view of one ring: its two position lines and `cap` slots of `stride` words.
pub(crate) struct Ring<'a> {
    pub(crate) tail: &'a PosLine,
    pub(crate) head: &'a PosLine,
    pub(crate) slots: &'a [AtomicU64],
    pub(crate) stride: usize,
    pub(crate) cap: u64,
}

fn corrupt(what: &'static str, detail: String) -> Error {
    Error::corrupt(what, detail)
}

impl<'a> Ring<'a> {
    /// The words of the slot of position `p`.
    #[inline]
    fn slot(&self, p: u64) -> &'a [AtomicU64] {
        let i = (p & (self.cap - 1)) as usize * self.stride;
        &self.slots[i..i + self.stride]
    }

    /// Pushes the message `write` stores into the data words, if there is room.
    ///
    /// # Errors
    ///
    /// [`Error::NotAttached`] for a context naming nobody; [`Error::Corrupt`] for
    /// impossible stamps or positions.
    pub(crate) fn push<C: Context + ?Sized>(
        &self,
        cx: &C,
        write: impl FnOnce(&[AtomicU64]),
    ) -> Result<Step<()>> {
        let me = attached(cx)?;
        let mut p = self.tail.pos.load(Ordering::Relaxed);
        let mut idle = 0;
        loop {
            let s = self.slot(p);
            // SYNC: Acquire pairs with the Release stamp store of the consumer
            // that freed the slot (its reads of the data are done before our
            // writes), and with a repairer's.
            let st = s[STAMP].load(Ordering::Acquire);
            let d = dist(st >> 2, p);
            let kind = st & 3;
            if d == 0 && kind == FREE {
                match self.claim(s, st, &self.tail.pos, p, me)? {
                    Claim::Won => {
                        if stop_here(Point::ProducerClaimed) {
                            return Ok(Step::Died);
                        }
                        write(&s[DATA..]);
                        // SYNC: Release publishes the data words; pairs with the
                        // Acquire stamp load in `pop`.
                        s[STAMP].store(stamp(p, FULL), Ordering::Release);
                        release_owner(s);
                        self.wake_side(self.head);
                        return Ok(Step::Done(()));
                    }
                    Claim::Moved(now) => {
                        (p, idle) = (now, 0);
                        continue;
                    }
                    Claim::Busy => {
                        if self.repair_if_dead(cx, s, me)? {
                            continue;
                        }
                    }
                }
            } else if d == -(self.cap as i64) && kind != 3 {
                // The previous lap's message is unconsumed, or in flight.
                let now = self.tail.pos.load(Ordering::Relaxed);
                if now != p {
                    (p, idle) = (now, 0);
                    continue;
                }
                if !self.repair_if_dead(cx, s, me)? {
                    return Ok(Step::WouldBlock);
                }
            } else {
                let now = self.tail.pos.load(Ordering::Relaxed);
                if now == p {
                    return Err(self.bad_stamp("tail", p, st));
                }
                (p, idle) = (now, 0);
                continue;
            }
            if !pause(&mut idle) {
                return Ok(Step::WouldBlock);
            }
            p = self.tail.pos.load(Ordering::Relaxed);
        }
    }

    /// Pops a message (read from the data words by `read`), if there is one.
    ///
    /// # Errors
    ///
    /// As [`push`](Self::push).
    pub(crate) fn pop<C: Context + ?Sized, V>(
        &self,
        cx: &C,
        mut read: impl FnMut(&[AtomicU64]) -> V,
    ) -> Result<Step<V>> {
        let me = attached(cx)?;
        let mut p = self.head.pos.load(Ordering::Relaxed);
        let mut idle = 0;
        loop {
            let s = self.slot(p);
            // SYNC: Acquire pairs with the producer's Release FULL store in `push`
            // (the data words are complete), or with a repairer's SKIP store.
            let st = s[STAMP].load(Ordering::Acquire);
            let d = dist(st >> 2, p);
            let kind = st & 3;
            if d == 0 && (kind == FULL || kind == SKIP) {
                match self.claim(s, st, &self.head.pos, p, me)? {
                    Claim::Won => {
                        if stop_here(Point::ConsumerClaimed) {
                            return Ok(Step::Died);
                        }
                        let v = (kind == FULL).then(|| read(&s[DATA..]));
                        // SYNC: Release orders our data reads before the next
                        // producer's writes; pairs with the Acquire in `push`.
                        s[STAMP].store(stamp(p.wrapping_add(self.cap), FREE), Ordering::Release);
                        release_owner(s);
                        self.wake_side(self.tail);
                        match v {
                            Some(v) => return Ok(Step::Done(v)),
                            None => {
                                (p, idle) = (p.wrapping_add(1), 0);
                                continue;
                            }
                        }
                    }
                    Claim::Moved(now) => {
                        (p, idle) = (now, 0);
                        continue;
                    }
                    Claim::Busy => {
                        if self.repair_if_dead(cx, s, me)? {
                            continue;
                        }
                    }
                }
            } else if (d == 0 && kind == FREE)
                || (d == -(self.cap as i64) && (kind == FULL || kind == SKIP))
            {
                // Not produced yet (or its producer is in flight), or the
                // previous lap's consumer is in flight.
                let now = self.head.pos.load(Ordering::Relaxed);
                if now != p {
                    (p, idle) = (now, 0);
                    continue;
                }
                if !self.repair_if_dead(cx, s, me)? {
                    return Ok(Step::WouldBlock);
                }
            } else {
                let now = self.head.pos.load(Ordering::Relaxed);
                if now == p {
                    return Err(self.bad_stamp("head", p, st));
                }
                (p, idle) = (now, 0);
                continue;
            }
            if !pause(&mut idle) {
                return Ok(Step::WouldBlock);
            }
            p = self.head.pos.load(Ordering::Relaxed);
        }
    }

    /// Takes the slot's owner word and moves `pos` from `p` to `p + 1`, the stamp
    /// still being `st`.
    fn claim(&self, s: &[AtomicU64], st: u64, pos: &AtomicU64, p: u64, me: u64) -> Result<Claim> {
        // SYNC: Acquire pairs with the Release in `release_owner` of the slot's
        // previous owner (its stamp store is visible to the re-check below).
        if s[OWNER]
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Ok(Claim::Busy);
        }
        // SYNC: Acquire, as the first stamp load of the caller.
        if s[STAMP].load(Ordering::Acquire) != st {
            release_owner(s);
            return Ok(Claim::Moved(pos.load(Ordering::Relaxed)));
        }
        if crate::loom::crash_point() {
            // A model's death holding the owner word, before the position moved.
            return Err(died_error());
        }
        // Relaxed: the owner word, not the position, orders the slot's words.
        match pos.compare_exchange(p, p.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => Ok(Claim::Won),
            Err(now) => {
                release_owner(s);
                Ok(Claim::Moved(now))
            }
        }
    }

    /// If the slot's owner word names a dead process, repairs what that process
    /// left half-done and returns true (the caller retries); false if the slot is
    /// free of owners or its owner lives.
    #[cold]
    fn repair_if_dead<C: Context + ?Sized>(
        &self,
        cx: &C,
        s: &[AtomicU64],
        me: u64,
    ) -> Result<bool> {
        // SYNC: Acquire pairs with the owner's Release in `release_owner`.
        let o = s[OWNER].load(Ordering::Acquire);
        if o == 0 || cx.is_alive_owner(OwnerTag::from_word(o)) {
            return Ok(false);
        }
        // The verdict "dead" happens-after every write of the dead owner
        // (Context, rule 3), so the loads below see its last stores.
        // SYNC: Acquire: as in `claim` (another repairer's release).
        if s[OWNER]
            .compare_exchange(o, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Ok(true); // someone else repaired it, or took it
        }
        let st = s[STAMP].load(Ordering::Acquire);
        let (sp, kind) = (st >> 2, st & 3);
        // Only the owner moves a position past its slot, so a position past the
        // stamp's says the dead owner claimed the slot.
        let fix = match kind {
            FREE if dist(self.tail.pos.load(Ordering::Relaxed), sp) > 0 => Some(stamp(sp, SKIP)),
            FULL | SKIP if dist(self.head.pos.load(Ordering::Relaxed), sp) > 0 => {
                Some(stamp(sp.wrapping_add(self.cap), FREE))
            }
            FREE | FULL | SKIP => None,
            _ => {
                release_owner(s);
                return Err(corrupt("MPMC queue slot", format!("stamp {st:#x}")));
            }
        };
        if let Some(fix) = fix {
            // SYNC: Release, as the claimant's own stamp store would have been
            // (pairs with the Acquire stamp loads of push and pop).
            s[STAMP].store(fix, Ordering::Release);
            let side = if kind == FREE { self.head } else { self.tail };
            self.wake_side(side);
        }
        release_owner(s);
        Ok(true)
    }

    /// Wakes the sleepers on `side`'s futex, if its sleeper count says so.
    #[inline]
    fn wake_side(&self, side: &PosLine) {
        // SYNC: the SeqCst fence orders our stamp store before the sleeper-count
        // load; it pairs with the fence in `sleep` (Dekker: either the sleeper
        // sees our stamp or we see the sleeper).
        fence(Ordering::SeqCst);
        if side.sleepers.load(Ordering::Relaxed) != 0 {
            wake(side);
        }
    }

    fn bad_stamp(&self, which: &'static str, p: u64, st: u64) -> Error {
        corrupt(
            "MPMC queue slot",
            format!(
                "stamp {st:#x} impossible with {which} position {p} (capacity {})",
                self.cap
            ),
        )
    }
}

/// Wakes everyone sleeping on `side` (cold: only when someone sleeps).
#[cold]
fn wake(side: &PosLine) {
    side.wake.fetch_add(1, Ordering::Release);
    crate::sync::futex::wake_all(&side.wake);
}

/// Registers as a sleeper on `side`, re-runs `ready` and, if it is still not
/// ready, sleeps until woken, `deadline` or a slice; returns `ready`'s answer,
/// and false at the end too if the deadline has passed (`timed_out`).
pub(crate) fn sleep<R>(
    side: &PosLine,
    deadline: Option<std::time::Instant>,
    mut ready: impl FnMut() -> Option<R>,
) -> std::result::Result<Option<R>, ()> {
    let seen = side.wake.load(Ordering::Acquire);
    side.sleepers.fetch_add(1, Ordering::Relaxed);
    // SYNC: pairs with the fence in `wake_side`.
    fence(Ordering::SeqCst);
    let got = ready();
    let more = got.is_some() || crate::sync::futex::wait(&side.wake, seen, deadline, SLICE);
    side.sleepers.fetch_sub(1, Ordering::Relaxed);
    if got.is_some() || more {
        Ok(got)
    } else {
        Err(())
    }
}

enum Claim {
    Won,
    Moved(u64),
    Busy,
}

/// Gives the owner word up.
#[inline]
fn release_owner(s: &[AtomicU64]) {
    // SYNC: Release pairs with the Acquire owner CAS of the next claimant or
    // repairer, so our stamp store is visible to its re-check.
    s[OWNER].store(0, Ordering::Release);
}

/// The caller's owner tag bits.
fn attached<C: Context + ?Sized>(cx: &C) -> Result<u64> {
    let me = cx.me();
    if me.is_nobody() {
        return Err(Error::NotAttached);
    }
    Ok(me.bits())
}

/// One idle round: spin, then yield; false once patience is spent.
fn pause(idle: &mut u32) -> bool {
    *idle += 1;
    if *idle > PATIENCE {
        return false;
    }
    if *idle < SPINS {
        spin_loop();
    } else {
        yield_now();
    }
    true
}

/// Whether the calling thread stops here (a loom crash point, or a testkit
/// stop armed for `point`).
#[inline]
fn stop_here(point: Point) -> bool {
    crate::loom::crash_point() || super::mpmc_testkit::hit(point)
}

/// The error a call that stopped at a crash point returns.
pub(crate) fn died_error() -> Error {
    #[cfg(feature = "testkit")]
    {
        Error::SimulatedCrash
    }
    #[cfg(not(feature = "testkit"))]
    {
        Error::Unsupported("simulated crash outside test support")
    }
}
