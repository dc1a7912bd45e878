//! `SpscQueue<T>`: a bounded single-producer, single-consumer ring of
//! `T: ShmSafe + Copy` in a segment, with crash-recoverable roles and blocking
//! forms.
//!
//! The algorithm is Lamport's ring (L. Lamport, "Specifying concurrent program
//! modules", TOPLAS 1983) with each side caching the other's index in its
//! process-local handle, as Erik Rigtorp's SPSCQueue does
//! (<https://github.com/rigtorp/SPSCQueue>): in steady state a push touches only
//! the producer's line and the slot, a pop only the consumer's line and the slot.
//!
//! # Safety
//!
//! The ring follows the header in the same directory block; it is reached through
//! the block pointer (never through `&SpscQueue`, whose provenance covers the
//! header only), at an index masked by the capacity that the directory checked
//! against the block's size.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::error::{Error, Result};
use crate::layout::{ShmSafe, ShmShared};
use crate::loom::{AtomicU32, AtomicU64, Ordering, UnsafeCell, fence};
use crate::segment::OwnerTag;
use crate::sync::{Context, futex};

/// How long a blocked side sleeps before it looks at its peer's liveness again.
pub(crate) const SLICE: std::time::Duration = std::time::Duration::from_millis(100);

/// Largest capacity (a power of two): keeps `tail - head` far from wrapping.
pub const MAX_CAPACITY: u64 = 1 << 40;

/// One 128-byte line (two 64-byte lines: the adjacent-line prefetcher pairs them).
#[repr(C, align(128))]
struct Line<X>(X);

/// The rarely written words: the roles and the waiter flags.
#[repr(C)]
struct Control {
    capacity: AtomicU64,
    producer: AtomicU64,
    consumer: AtomicU64,
    producer_sleeps: AtomicU32,
    consumer_sleeps: AtomicU32,
}

/// A bounded single-producer, single-consumer queue living in a segment, created
/// and found by name through the directory with its capacity as its configuration
/// (a power of two, at most [`MAX_CAPACITY`]).
///
/// Take the producer or consumer role from the directory handle
/// ([`Shared::producer`](crate::Shared::producer),
/// [`Shared::consumer`](crate::Shared::consumer)); the role handles push and pop.
///
/// # Layout
///
/// | offset | words (each written by)                                        |
/// |--------|----------------------------------------------------------------|
/// | 0      | `capacity` (creator), `producer`, `consumer` (role words, CAS by claimants), `producer_sleeps`, `consumer_sleeps` (waiter flags, futex words) |
/// | 128    | `tail`: index of the next push (the producer only)             |
/// | 256    | `head`: index of the next pop (the consumer only)              |
/// | 384    | the ring: `capacity` slots of `T`, slot of index `i` at `i & (capacity - 1)` |
///
/// # State table
///
/// | word               | value                | meaning                                    |
/// |--------------------|----------------------|--------------------------------------------|
/// | `producer`/`consumer` | 0                 | the role is free                           |
/// |                    | an owner tag         | held by that attachment; a dead one's is taken over by CAS |
/// | `tail - head`      | `0..=capacity`       | messages in the ring (wrapping `u64` arithmetic) |
/// |                    | more than `capacity` | corrupt (a peer overwrote an index): [`Error::Corrupt`] |
/// | `consumer_sleeps`  | 0 / 1                | the consumer is (about to be) asleep on it; the producer clears it and wakes |
/// | `producer_sleeps`  | 0 / 1                | the same for a producer waiting for room   |
///
/// Indices only grow (wrapping at 2^64); a slot of index `i` belongs to the
/// producer while `i >= tail` and to the consumer while `head <= i < tail`.
///
/// # A process dying inside each operation
///
/// - **push, before publishing `tail`**: the slot was written but never
///   published; the next producer overwrites it. Nothing committed is lost.
/// - **push, after publishing, before the wake**: the message is committed; a
///   sleeping consumer wakes at its next slice (100 ms) and finds it.
/// - **pop, before publishing `head`**: the message was read but not released;
///   the next consumer gets it again (at-least-once for a message the dead one
///   had not released, never a duplicate of a released one).
/// - **pop, after publishing**: released; a sleeping producer wakes at its slice.
/// - **holding a role**: the role word names a dead owner; the next claimant
///   takes it over by CAS, and a peer blocked on the dead side gets
///   [`Error::PeerDied`] within a slice.
///
/// # Examples
///
/// ```
/// use shmkit::queue::SpscQueue;
/// let seg = shmkit::SegmentOptions::heap().create()?;
/// let q = seg.find_or_create::<SpscQueue<u64>>("ticks", 8)?;
/// let mut tx = q.producer()?;
/// let mut rx = q.consumer()?;
/// tx.try_push(7).unwrap();
/// assert_eq!(rx.pop()?, Some(7));
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
pub struct SpscQueue<T> {
    ctl: Line<Control>,
    tail: Line<AtomicU64>,
    head: Line<AtomicU64>,
    _t: PhantomData<fn() -> T>,
}

// The producer-written and the consumer-written words sit on their own 128-byte
// lines (rigtorp's false-sharing rule), and the ring starts after them.
#[cfg(not(shmkit_loom))]
const _: () = {
    assert!(std::mem::offset_of!(SpscQueue<u8>, tail) == 128);
    assert!(std::mem::offset_of!(SpscQueue<u8>, head) == 256);
    assert!(
        std::mem::offset_of!(SpscQueue<u8>, head) - std::mem::offset_of!(SpscQueue<u8>, tail)
            >= 128
    );
    assert!(size_of::<SpscQueue<u8>>() == 384);
};

// SAFETY: repr(C) atomics and padding only (the marker is zero-sized); every bit
// pattern of the words is a state handled (see the state table).
unsafe impl<T: ShmSafe> ShmSafe for SpscQueue<T> {}
// SAFETY: atomics only in the header; the ring is reached only by the role
// handles, each slot by one side at a time (see the state table).
unsafe impl<T: ShmSafe + Copy + Send> ShmShared for SpscQueue<T> {}

/// A ring slot.
pub(crate) type Slot<T> = UnsafeCell<T>;

impl<T: ShmSafe + Copy + Send> SpscQueue<T> {
    /// Bytes of the header: the ring starts here.
    pub(crate) const RING: usize = size_of::<Self>();

    /// Bytes of a queue of `capacity` slots, after checking the capacity.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSize`] for a capacity that is zero, not a power of two or
    /// above [`MAX_CAPACITY`], or a `T` aligned above 128.
    pub(crate) fn bytes(capacity: u64) -> Result<u64> {
        if capacity == 0 || !capacity.is_power_of_two() || capacity > MAX_CAPACITY {
            return Err(Error::InvalidSize {
                size: capacity,
                reason: "an SpscQueue capacity is a power of two from 1 to 2^40",
            });
        }
        if align_of::<T>() > 128 {
            return Err(Error::InvalidSize {
                size: align_of::<T>() as u64,
                reason: "an SpscQueue element is aligned to 128 bytes at most",
            });
        }
        (size_of::<Slot<T>>() as u64)
            .checked_mul(capacity)
            .and_then(|r| r.checked_add(Self::RING as u64))
            .ok_or(Error::InvalidSize {
                size: capacity,
                reason: "an SpscQueue of that capacity does not fit in 64 bits",
            })
    }

    /// Builds an empty queue of `capacity` slots at `at`.
    ///
    /// # Safety
    ///
    /// `at` is valid for writes of [`bytes`](Self::bytes)`(capacity)` bytes,
    /// aligned for `Self`, and used by nobody else until this returns.
    pub(crate) unsafe fn init(at: NonNull<Self>, capacity: u64) {
        let header = Self {
            ctl: Line(Control {
                capacity: AtomicU64::new(capacity),
                producer: AtomicU64::new(0),
                consumer: AtomicU64::new(0),
                producer_sleeps: AtomicU32::new(0),
                consumer_sleeps: AtomicU32::new(0),
            }),
            tail: Line(AtomicU64::new(0)),
            head: Line(AtomicU64::new(0)),
            _t: PhantomData,
        };
        // SAFETY: the caller's contract: valid, aligned, exclusive.
        unsafe { at.as_ptr().write(header) };
        let ring = at.cast::<u8>();
        for i in 0..capacity as usize {
            // SAFETY: slot i lies inside the caller's block (RING + capacity
            // slots), aligned (RING is a multiple of 128 >= align_of::<T>()).
            // Every bit pattern is a T (ShmSafe), so a zeroed one is valid.
            unsafe {
                ring.add(Self::RING)
                    .cast::<Slot<T>>()
                    .add(i)
                    .as_ptr()
                    .write(UnsafeCell::new(std::mem::zeroed()));
            }
        }
    }
}

/// The two sides of a queue, for errors and role words.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Producer,
    Consumer,
}

impl Side {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Side::Producer => "producer",
            Side::Consumer => "consumer",
        }
    }
    fn other(self) -> Side {
        match self {
            Side::Producer => Side::Consumer,
            Side::Consumer => Side::Producer,
        }
    }
}

/// A queue's block as the role handles reach it: the block pointer (whose
/// provenance covers header and ring) and the capacity the directory checked.
pub(crate) struct RawSpsc<T> {
    q: NonNull<SpscQueue<T>>,
    cap: u64,
}

impl<T: ShmSafe + Copy + Send> RawSpsc<T> {
    /// # Safety
    ///
    /// `q` points to a block built by [`SpscQueue::init`] with `cap` slots (or
    /// one a peer may since have scribbled over: every bit pattern is handled),
    /// which stays mapped while the returned value lives.
    pub(crate) unsafe fn new(q: NonNull<SpscQueue<T>>, cap: u64) -> Self {
        Self { q, cap }
    }

    #[inline]
    pub(crate) fn capacity(&self) -> u64 {
        self.cap
    }

    #[inline]
    pub(crate) fn hdr(&self) -> &SpscQueue<T> {
        // SAFETY: `new`'s contract: mapped, built, every bit pattern handled.
        unsafe { self.q.as_ref() }
    }

    /// The slot of index `i` (masked).
    #[inline]
    pub(crate) fn slot(&self, i: u64) -> &Slot<T> {
        let at = (i & (self.cap - 1)) as usize;
        // SAFETY: `at < cap`, and the block holds `cap` slots after the header
        // (`new`'s contract; the directory checked the block's size against the
        // capacity); aligned as in `init`.
        unsafe {
            self.q
                .cast::<u8>()
                .add(SpscQueue::<T>::RING)
                .cast::<Slot<T>>()
                .add(at)
                .as_ref()
        }
    }

    fn role(&self, side: Side) -> &AtomicU64 {
        match side {
            Side::Producer => &self.hdr().ctl.0.producer,
            Side::Consumer => &self.hdr().ctl.0.consumer,
        }
    }

    /// The waiter flag `side` sets before it sleeps.
    #[inline]
    pub(crate) fn sleeps(&self, side: Side) -> &AtomicU32 {
        match side {
            Side::Producer => &self.hdr().ctl.0.producer_sleeps,
            Side::Consumer => &self.hdr().ctl.0.consumer_sleeps,
        }
    }

    #[inline]
    pub(crate) fn tail(&self) -> &AtomicU64 {
        &self.hdr().tail.0
    }

    #[inline]
    pub(crate) fn head(&self) -> &AtomicU64 {
        &self.hdr().head.0
    }

    /// `tail - head`, checked against the capacity.
    #[inline]
    pub(crate) fn distance(&self, tail: u64, head: u64) -> Result<u64> {
        let d = tail.wrapping_sub(head);
        if d > self.cap {
            return Err(corrupt_indices(tail, head, self.cap));
        }
        Ok(d)
    }

    /// Messages in the queue now, at most the capacity (a corrupt pair of indices
    /// reads as full; the next operation reports it).
    pub(crate) fn len(&self) -> u64 {
        // SYNC: Acquire pairs with the Release stores of the indices; only a
        // snapshot is wanted.
        let head = self.head().load(Ordering::Acquire);
        let tail = self.tail().load(Ordering::Acquire);
        self.distance(tail, head).unwrap_or(self.cap)
    }

    /// Overwrites both indices, as a peer could (test support: wrap-around
    /// starts and corruption).
    #[cfg(feature = "testkit")]
    pub(crate) fn set_indices(&self, tail: u64, head: u64) {
        self.tail().store(tail, Ordering::Release);
        self.head().store(head, Ordering::Release);
    }

    /// The waiter flags (producer's, consumer's), for tests.
    #[cfg(feature = "testkit")]
    pub(crate) fn waiters(&self) -> (u32, u32) {
        (
            self.sleeps(Side::Producer).load(Ordering::Relaxed),
            self.sleeps(Side::Consumer).load(Ordering::Relaxed),
        )
    }

    /// Overwrites both role words, as a peer could (test support).
    #[cfg(feature = "testkit")]
    pub(crate) fn set_roles(&self, producer: u64, consumer: u64) {
        self.role(Side::Producer).store(producer, Ordering::Release);
        self.role(Side::Consumer).store(consumer, Ordering::Release);
    }

    /// Claims `side` for `cx`: free, or held by a dead owner (taken over).
    ///
    /// # Errors
    ///
    /// [`Error::NotAttached`] for a context naming nobody; [`Error::RoleTaken`]
    /// naming a live holder (this attachment included).
    pub(crate) fn claim(&self, side: Side, cx: &dyn Context) -> Result<OwnerTag> {
        let me = cx.me();
        if me.is_nobody() {
            return Err(Error::NotAttached);
        }
        let word = self.role(side);
        let mut cur = word.load(Ordering::Acquire);
        loop {
            if cur != 0 {
                let holder = OwnerTag::from_word(cur);
                if cx.is_alive_owner(holder) {
                    return Err(Error::RoleTaken {
                        role: side.name(),
                        holder: holder.bits(),
                        slot: holder.slot(),
                    });
                }
            }
            // SYNC: Acquire pairs with the Release CAS in `release` (a clean
            // hand-over) and, for a dead holder, with the death verdict (Context
            // rule 3): the previous holder's index stores are visible to our
            // loads of them. Failure: the new word is re-examined, Acquire for the
            // same reason.
            match word.compare_exchange(cur, me.bits(), Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Ok(me),
                Err(now) => cur = now,
            }
        }
    }

    /// Gives `side` back if `me` still holds it.
    pub(crate) fn release(&self, side: Side, me: OwnerTag) {
        // SYNC: Release pairs with the Acquire CAS in `claim`: our index stores
        // happen-before the next holder's loads. Failure (someone took the role
        // over from us, or a peer wrote the word): nothing to give back.
        let _ =
            self.role(side)
                .compare_exchange(me.bits(), 0, Ordering::Release, Ordering::Relaxed);
    }

    /// Whether the peer of `side` is known dead (its role word names an owner the
    /// registry says is gone). A free role is not a dead peer: one may come.
    #[cold]
    pub(crate) fn peer_died(&self, side: Side, cx: &dyn Context) -> bool {
        let w = self.role(side.other()).load(Ordering::Acquire);
        w != 0 && !cx.is_alive_owner(OwnerTag::from_word(w))
    }

    /// After publishing an index: wakes the peer of `side` if its waiter flag says
    /// it sleeps (or is about to). No syscall when the flag is clear.
    #[inline]
    pub(crate) fn wake_peer(&self, side: Side) {
        // SeqCst fence: the Dekker pair with the fence in `sleep`. Either the
        // peer's re-check after setting its flag sees our index store, or this
        // load sees its flag (a Release/Acquire pair cannot order a store before
        // a later load).
        fence(Ordering::SeqCst);
        let flag = self.sleeps(side.other());
        if flag.load(Ordering::Relaxed) != 0 {
            self.wake_slow(flag);
        }
    }

    #[cold]
    fn wake_slow(&self, flag: &AtomicU32) {
        // One wake per sleep: whoever clears the flag wakes.
        if flag.swap(0, Ordering::Relaxed) != 0 {
            count_wake();
            futex::wake_one(flag);
        }
    }

    /// Sleeps as `side` until `ready` holds (re-checked after the waiter flag is
    /// set), the deadline passes or the peer dies; `Ok(false)` on the deadline.
    ///
    /// # Errors
    ///
    /// [`Error::PeerDied`]; what `ready` returns.
    #[cold]
    pub(crate) fn sleep(
        &self,
        side: Side,
        cx: &dyn Context,
        deadline: Option<std::time::Instant>,
        mut ready: impl FnMut() -> Result<bool>,
    ) -> Result<bool> {
        let flag = self.sleeps(side);
        loop {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return ready(); // checked before the flag and the liveness probe
            }
            flag.store(1, Ordering::Relaxed);
            // SeqCst fence: pairs with the one in `wake_peer` (see there).
            fence(Ordering::SeqCst);
            let r = ready();
            if !matches!(r, Ok(false)) {
                flag.store(0, Ordering::Relaxed);
                return r;
            }
            if self.peer_died(side, cx) {
                flag.store(0, Ordering::Relaxed);
                return Err(Error::PeerDied {
                    role: side.other().name(),
                });
            }
            // The flag stays set across slices (a waker clears it): a publish
            // after a slice timed out still sees a sleeper.
            if !futex::wait(flag, 1, deadline, SLICE) {
                flag.store(0, Ordering::Relaxed);
                return ready();
            }
        }
    }
}

#[cold]
fn corrupt_indices(tail: u64, head: u64, cap: u64) -> Error {
    Error::corrupt(
        "SpscQueue indices",
        format!("tail {tail} - head {head} is more than the capacity {cap}"),
    )
}

// Wake syscalls made by queues on this thread (test support): per thread, so that
// a test counting its own wakes is not disturbed by tests running beside it.
#[cfg(feature = "testkit")]
std::thread_local! {
    static WAKES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[inline]
fn count_wake() {
    #[cfg(feature = "testkit")]
    WAKES.with(|w| w.set(w.get() + 1));
}

/// Wake syscalls made by queue operations on the calling thread so far (test
/// support).
#[cfg(feature = "testkit")]
pub fn wake_count() -> u64 {
    WAKES.with(|w| w.get())
}
