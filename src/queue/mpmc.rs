//! [`MpmcQueue<T>`]: a bounded multi-producer multi-consumer queue in shared
//! memory (Vyukov's per-slot sequence stamps) that no dying process can wedge.
//!
//! The words, their states and what a dying process leaves behind are in
//! [`MpmcQueue`]'s documentation.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::error::PushError;
use super::mpmc_ring::{self, DATA, FREE, PosLine, Ring, Step, stamp};
#[cfg(feature = "testkit")]
use super::mpmc_ring::{OWNER, STAMP};
use crate::layout::{ShmSafe, ShmShared};
use crate::loom::{AtomicU64, Ordering};
use crate::segment::Segment;
use crate::{Error, Result};

/// Largest capacity of an [`MpmcQueue`].
pub const MPMC_MAX_CAPACITY: u64 = 1 << 32;

/// The first line: written once at creation.
#[repr(C)]
#[derive(Debug)]
struct MetaLine {
    capacity: AtomicU64,
    data_words: AtomicU64,
    _pad: [AtomicU64; 14],
}

/// A bounded multi-producer multi-consumer queue of `T` in a segment, found by
/// name ([`Segment::find_or_create`](crate::Segment::find_or_create) with the
/// capacity, a power of two, as its configuration); any number of producers and
/// consumers in any processes.
///
/// Messages are `Copy` types deriving zerocopy's `FromBytes`, `IntoBytes`,
/// `Immutable` and `KnownLayout` (no `unsafe`); they are copied in and out.
/// Use it through its [`Shared`](crate::Shared) handle, whose methods
/// (`try_push`, `pop`, `push_blocking_for`...) need no context argument.
///
/// # Examples
///
/// ```
/// use shmkit::queue::MpmcQueue;
/// let seg = shmkit::SegmentOptions::heap().create()?;
/// let q = seg.find_or_create::<MpmcQueue<u64>>("jobs", 8)?;
/// q.try_push(7).unwrap();
/// assert_eq!(seg.find::<MpmcQueue<u64>>("jobs")?.pop()?, Some(7));
/// # Ok::<(), shmkit::Error>(())
/// ```
///
/// # Layout
///
/// Three 128-byte lines, then `capacity` slots:
///
/// | line | words                                                         |
/// |------|---------------------------------------------------------------|
/// | meta | `capacity`, `data_words` (written once at creation)          |
/// | tail | `tail` (next position to produce), `wake`, `sleepers` (futex)|
/// | head | `head` (next position to consume), `wake`, `sleepers` (futex)|
/// | slot | `stamp`, `owner`, the message as `data_words` 64-bit words    |
///
/// Positions are 64-bit counters that only grow (and wrap at 2^64); the slot of
/// position `p` is `p mod capacity`.
///
/// # State of a slot
///
/// The stamp is `(p << 2) | kind` (`p` modulo 2^62, which every capacity divides);
/// the owner word is 0 or the [`OwnerTag`](crate::OwnerTag) of the process that
/// holds the slot for a claim.
///
/// | stamp     | owner | meaning                                                        |
/// |-----------|-------|----------------------------------------------------------------|
/// | `FREE(p)` | 0     | empty, ready for the producer of position `p`                  |
/// | `FREE(p)` | P     | producer P is claiming `p` (tail = p) or writing it (tail > p) |
/// | `FULL(p)` | 0     | holds the message of position `p`                              |
/// | `FULL(p)` | C     | consumer C is claiming `p` (head = p) or reading it (head > p) |
/// | `SKIP(p)` | 0/C   | as `FULL(p)`, but the producer of `p` died: no message         |
///
/// A push: take the owner word (CAS 0 → me), re-check the stamp, move the tail
/// `p → p + 1` (CAS), write the data words, store `FULL(p)` (Release), give the
/// owner word back. A pop: the same on the head, read the data words, store
/// `FREE(p + capacity)`, give the owner word back. Only the owner of a slot moves
/// a position past it, so "the position is past the stamp's while the owner word
/// names X" proves that X claimed the slot.
///
/// # A process dying inside an operation
///
/// | died                                   | left behind               | repair by the next one stuck on it |
/// |----------------------------------------|---------------------------|------------------------------------|
/// | before taking the owner word           | nothing                   | —                                  |
/// | holding it, before moving the position | `FREE(p)`/`FULL(p)`, owner dead, position = p | owner word cleared   |
/// | producer, after moving the tail        | `FREE(p)`, tail > p       | stamp `SKIP(p)`: the message is lost |
/// | producer, after `FULL(p)`              | owner dead                | owner word cleared: delivered      |
/// | consumer, after moving the head        | `FULL(p)`, head > p       | stamp `FREE(p + cap)`: the message is lost |
/// | consumer, after `FREE(p + cap)`        | owner dead                | owner word cleared                 |
///
/// A producer or consumer that finds its slot busy, or the queue apparently full
/// or empty because of a claimed slot, asks the registry whether the owner word's
/// process is alive (the kernel-backed verdict of
/// [`Segment::is_owner_alive`](crate::Segment::is_owner_alive), never a timeout)
/// and repairs only a dead one's slot, taking the owner word over first (so two
/// repairers never both act, and a repairer that dies is itself repaired).
///
/// **Guarantee.** A process killed inside a push or pop loses at most the one
/// message it had in flight (the one it was writing, or had taken and not
/// returned); no message is ever delivered twice, and no message is delivered
/// torn (its data words are written only by the slot's owner, before the Release
/// stamp that lets a consumer read them, and a skipped slot is never read). A
/// slow but live claimant is waited for (a non-blocking call then reports full or
/// empty), never repaired.
///
/// **Corrupt words.** A stamp impossible with the positions (from the future, of
/// another slot, an unknown kind) is [`Error::Corrupt`]; an owner word naming no
/// live process is treated as a dead claimant's; an owner word forged to name a
/// live process makes its slot look busy (calls report full/empty, blocking ones
/// time out); `len` is clamped to `[0, capacity]`. Every call returns: the
/// non-blocking ones within a bounded number of retries without progress.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct MpmcQueue<T> {
    meta: MetaLine,
    tail: PosLine,
    head: PosLine,
    _t: PhantomData<fn() -> T>,
}

// SAFETY: repr(C), atomics only (PhantomData has no bytes), three 128-byte lines
// without padding; every bit pattern is a state the code handles (see the module
// docs of the type: corrupt words are reported, clamped or treated as dead claimants).
unsafe impl<T: 'static> ShmSafe for MpmcQueue<T> {}
// SAFETY: every byte is inside an atomic; the slots after the header are atomics
// too, reached through the segment's mapping.
unsafe impl<T: 'static> ShmShared for MpmcQueue<T> {}

// Loom's atomics are larger: the layout holds in real builds only.
#[cfg(not(shmkit_loom))]
const _: () = {
    assert!(size_of::<MetaLine>() == 128);
    assert!(size_of::<PosLine>() == 128);
    assert!(std::mem::offset_of!(MpmcQueue<u8>, tail) == 128);
    assert!(std::mem::offset_of!(MpmcQueue<u8>, head) == 256);
    assert!(size_of::<MpmcQueue<u8>>() == 384);
};

/// Bytes of the header before the slots.
const HEADER: u64 = 384;

/// Data words of a slot for messages of type `T`.
const fn data_words<T>() -> usize {
    size_of::<T>().div_ceil(8)
}

impl<T> MpmcQueue<T> {
    /// Bytes of a queue of `capacity` slots.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCapacity`] unless `capacity` is a power of two in
    /// `1..=MPMC_MAX_CAPACITY`; [`Error::InvalidSize`] if the size overflows.
    pub(crate) fn bytes_for(capacity: u64) -> Result<u64> {
        if !capacity.is_power_of_two() || capacity > MPMC_MAX_CAPACITY {
            return Err(Error::InvalidCapacity {
                capacity,
                max: MPMC_MAX_CAPACITY,
            });
        }
        let slot = ((DATA + data_words::<T>()) * 8) as u64;
        capacity
            .checked_mul(slot)
            .and_then(|s| s.checked_add(HEADER))
            .ok_or(Error::InvalidSize {
                size: u64::MAX,
                reason: "MPMC queue too large",
            })
    }

    /// Builds an empty queue of `capacity` slots in place.
    ///
    /// # Safety
    ///
    /// `at` is valid for writes of [`bytes_for`](Self::bytes_for)`(capacity)`
    /// bytes (which succeeded), aligned, zeroed and used by nobody else yet.
    pub(crate) unsafe fn init_in_place(at: NonNull<Self>, capacity: u64) {
        // SAFETY: the caller's contract: the header is valid, zeroed memory, and
        // zero is a valid atomic.
        let q = unsafe { at.as_ref() };
        q.meta.capacity.store(capacity, Ordering::Relaxed);
        q.meta
            .data_words
            .store(data_words::<T>() as u64, Ordering::Relaxed);
        let stride = DATA + data_words::<T>();
        let first = at.cast::<u8>().as_ptr().wrapping_add(HEADER as usize);
        for i in 0..capacity as usize {
            // SAFETY: slot i's stamp word lies inside the caller's region (its
            // size is HEADER + capacity * stride words), 8-aligned (the region is
            // 128-aligned and every offset a multiple of 8), zeroed: a valid atomic.
            let w = unsafe { &*first.add(i * stride * 8).cast::<AtomicU64>() };
            w.store(stamp(i as u64, FREE), Ordering::Relaxed);
        }
    }

    /// The ring's words, checked against `seg`'s committed bytes, for
    /// `capacity` slots (the handle's configuration).
    fn ring<'a>(&'a self, seg: &'a Segment, capacity: u64) -> Result<Ring<'a>> {
        let stride = DATA + data_words::<T>();
        let bytes = Self::bytes_for(capacity)?;
        let base = seg.as_ptr();
        let me = self as *const Self as usize;
        let off = me.wrapping_sub(base as usize) as u64;
        if me < base as usize || off.checked_add(bytes).is_none_or(|e| e > seg.committed()) {
            return Err(Error::InvalidArgument(
                "this MPMC queue does not lie inside that segment",
            ));
        }
        let n = capacity as usize * stride;
        let first = (off + HEADER) as usize;
        // SAFETY: [off + HEADER, off + bytes) is committed and mapped (checked above;
        // the mapping outlives 'a with `seg`), 8-aligned (the object is), and only
        // ever accessed as atomics (every bit pattern valid).
        let slots = unsafe {
            std::slice::from_raw_parts(base.add(first).cast::<AtomicU64>().cast_const(), n)
        };
        Ok(Ring {
            tail: &self.tail,
            head: &self.head,
            slots,
            stride,
            cap: capacity,
        })
    }

    /// The capacity word (as written at creation, unless a peer rewrote it).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let q = seg.find_or_create::<shmkit::queue::MpmcQueue<u32>>("q", 4)?;
    /// assert_eq!(q.raw().capacity_word(), 4);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn capacity_word(&self) -> u64 {
        self.meta.capacity.load(Ordering::Relaxed)
    }

    /// Messages in the queue (a snapshot), at most `capacity` whatever the words
    /// say.
    pub(crate) fn len_for(&self, capacity: u64) -> u64 {
        let h = self.head.pos.load(Ordering::Relaxed);
        let t = self.tail.pos.load(Ordering::Relaxed);
        (t.wrapping_sub(h) as i64).clamp(0, capacity as i64) as u64
    }
}

impl<T: ShmSafe + Copy + FromBytes + IntoBytes + Immutable> MpmcQueue<T> {
    /// Pushes `v` if there is room, as `seg`'s attachment, into a queue of
    /// `capacity` slots.
    ///
    /// # Errors
    ///
    /// The message back, with why (see [`PushError`]).
    pub(crate) fn try_push_in(
        &self,
        seg: &Segment,
        capacity: u64,
        v: T,
    ) -> std::result::Result<(), PushError<T>> {
        let ring = match self.ring(seg, capacity) {
            Ok(r) => r,
            Err(e) => return Err(PushError::Failed(v, e)),
        };
        match ring.push(seg, |words| store_words(words, &v)) {
            Ok(Step::Done(())) => Ok(()),
            Ok(Step::WouldBlock) => Err(PushError::Full(v)),
            Ok(Step::Died) => Err(PushError::Failed(v, mpmc_ring::died_error())),
            Err(e) => Err(PushError::Failed(v, e)),
        }
    }

    /// Pops a message if there is one.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`], [`Error::NotAttached`].
    pub(crate) fn pop_in(&self, seg: &Segment, capacity: u64) -> Result<Option<T>> {
        let ring = self.ring(seg, capacity)?;
        match ring.pop(seg, load_words::<T>)? {
            Step::Done(v) => Ok(Some(v)),
            Step::WouldBlock => Ok(None),
            Step::Died => Err(mpmc_ring::died_error()),
        }
    }

    /// Pushes `v`, sleeping while the queue is full, until `deadline`.
    ///
    /// # Errors
    ///
    /// As [`try_push_in`](Self::try_push_in), with `TimedOut` for the deadline.
    pub(crate) fn push_until_in(
        &self,
        seg: &Segment,
        capacity: u64,
        mut v: T,
        deadline: Option<Instant>,
    ) -> std::result::Result<(), PushError<T>> {
        loop {
            match self.try_push_in(seg, capacity, v) {
                Err(PushError::Full(back)) => v = back,
                done => return done,
            }
            let mut back = Some(v);
            let slept = mpmc_ring::sleep(&self.tail, deadline, || {
                let v = back.take()?;
                match self.try_push_in(seg, capacity, v) {
                    Err(PushError::Full(b)) => {
                        back = Some(b);
                        None
                    }
                    done => Some(done),
                }
            });
            match slept {
                Ok(Some(done)) => return done,
                Ok(None) => v = back.take().expect("kept when not pushed"),
                Err(()) => return Err(PushError::TimedOut(back.take().expect("kept"))),
            }
        }
    }

    /// Pops, sleeping while the queue is empty, until `deadline`.
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`]; as [`pop_in`](Self::pop_in).
    pub(crate) fn pop_until_in(
        &self,
        seg: &Segment,
        capacity: u64,
        deadline: Option<Instant>,
    ) -> Result<T> {
        loop {
            if let Some(v) = self.pop_in(seg, capacity)? {
                return Ok(v);
            }
            let slept = mpmc_ring::sleep(&self.head, deadline, || {
                self.pop_in(seg, capacity).transpose()
            });
            match slept {
                Ok(Some(got)) => return got,
                Ok(None) => {}
                Err(()) => return Err(Error::TimedOut),
            }
        }
    }

    /// Deadline for `timeout` from now (`None`: too far to represent, so never).
    pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
        Instant::now().checked_add(timeout)
    }
}

/// Copies `v` into the data words (whole 64-bit words, the last zero-padded).
#[inline]
fn store_words<T: IntoBytes + Immutable>(words: &[AtomicU64], v: &T) {
    for (w, chunk) in words.iter().zip(v.as_bytes().chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        // Relaxed: the stamp's Release store publishes these.
        w.store(u64::from_ne_bytes(b), Ordering::Relaxed);
    }
}

/// A message copied out of the data words.
#[inline]
fn load_words<T: FromBytes + IntoBytes>(words: &[AtomicU64]) -> T {
    let mut v = T::new_zeroed();
    for (w, chunk) in words.iter().zip(v.as_mut_bytes().chunks_mut(8)) {
        // Relaxed: the stamp's Acquire load ordered these after the producer's.
        let b = w.load(Ordering::Relaxed).to_ne_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    v
}

/// Test support (`testkit`): start an empty queue at position `start`, so that
/// tests reach the 2^62 stamp wrap and the 2^64 position wrap in a few laps.
///
/// # Errors
///
/// [`Error::InvalidArgument`] if the queue is not empty or not idle (a slot
/// owned); as the queue's other calls.
#[cfg(feature = "testkit")]
pub fn testkit_start_at<T>(
    q: &MpmcQueue<T>,
    seg: &Segment,
    capacity: u64,
    start: u64,
) -> Result<()> {
    let ring = q.ring(seg, capacity)?;
    let h = q.head.pos.load(Ordering::Acquire);
    if q.tail.pos.load(Ordering::Acquire) != h {
        return Err(Error::InvalidArgument("the queue is not empty"));
    }
    for i in 0..capacity {
        let s = &ring.slots[i as usize * ring.stride..][..ring.stride];
        if s[OWNER].load(Ordering::Acquire) != 0 {
            return Err(Error::InvalidArgument("a slot of the queue is owned"));
        }
        // The position >= start whose slot is i.
        let p = start.wrapping_add(i.wrapping_sub(start) & (capacity - 1));
        s[STAMP].store(stamp(p, FREE), Ordering::Release);
    }
    q.tail.pos.store(start, Ordering::Release);
    q.head.pos.store(start, Ordering::Release);
    Ok(())
}

/// Test support (`testkit`): the byte offsets, from the queue's start, of the
/// `tail` and `head` words and of slot `i`'s stamp and owner words (for tests
/// that play a peer corrupting them).
#[cfg(feature = "testkit")]
pub fn testkit_word_offsets<T>(i: u64) -> [u64; 4] {
    let slot = HEADER + i * ((DATA + data_words::<T>()) * 8) as u64;
    [
        128,
        256,
        slot + (STAMP * 8) as u64,
        slot + (OWNER * 8) as u64,
    ]
}
