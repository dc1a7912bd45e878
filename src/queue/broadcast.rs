//! [`Broadcast<T>`]: one writer, any number of readers, each with its own cursor;
//! a reader that falls behind is told exactly how much it lost.
//!
//! See [`Broadcast`] for the layout, the state table of its words, what a
//! process dying leaves behind and what a peer's damage does.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::ptr::NonNull;

use zerocopy::{FromBytes, IntoBytes};

use crate::error::{Error, Result};
use crate::layout::{ShmSafe, ShmShared};
use crate::loom::{AtomicU32, AtomicU64, Ordering, crash_point, fence, futex_wake};
use crate::segment::OwnerTag;
use crate::sync::Context;

/// The most slots a broadcast ring may have.
pub const MAX_BROADCAST_CAPACITY: u64 = 1 << 24;

/// Bytes of the header, before the ring.
const HEADER: usize = 256;

/// Sequences at or past this are impossible (a writer would need centuries to
/// reach them), so `2n + 2` never overflows; heads are refused from half of it.
const SEQ_LIMIT: u64 = 1 << 62;

/// How a ring of `T` messages is laid out: slots and words.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Slots (a power of two).
    pub capacity: u64,
    /// Data words of one message.
    pub words: usize,
    /// Words of one slot: the sequence word, the data, padding to 64 bytes.
    pub stride: usize,
}

impl Geometry {
    /// The geometry of a ring of `capacity` messages of `msg_bytes` bytes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] unless `capacity` is a power of two in
    /// `1..=MAX_BROADCAST_CAPACITY`; [`Error::InvalidSize`] for a message of more
    /// than 64 KiB.
    pub fn new(capacity: u64, msg_bytes: usize) -> Result<Self> {
        if !capacity.is_power_of_two() || capacity > MAX_BROADCAST_CAPACITY {
            return Err(Error::InvalidArgument(
                "a broadcast capacity is a power of two, at most 2^24",
            ));
        }
        if msg_bytes > 64 << 10 {
            return Err(Error::InvalidSize {
                size: msg_bytes as u64,
                reason: "a broadcast message is at most 64 KiB",
            });
        }
        let words = msg_bytes.div_ceil(8);
        let stride = (1 + words).div_ceil(8) * 8;
        Ok(Self {
            capacity,
            words,
            stride,
        })
    }

    /// Bytes of the whole object: header and ring.
    pub fn bytes(&self) -> u64 {
        HEADER as u64 + self.capacity * self.stride as u64 * 8
    }

    /// Words of the ring.
    pub fn ring_words(&self) -> usize {
        self.capacity as usize * self.stride
    }

    /// The first word (the sequence word) of the slot of message `n`.
    #[inline]
    fn slot(&self, n: u64) -> usize {
        (n & (self.capacity - 1)) as usize * self.stride
    }
}

/// The header's words (the ring of slots follows it in the same block).
#[repr(C, align(128))]
pub struct Header {
    capacity: AtomicU64,
    words: AtomicU64,
    writer: AtomicU64,
    _line0: [AtomicU64; 13],
    head: AtomicU64,
    bell: AtomicU32,
    _pad: AtomicU32,
    _line1: [AtomicU64; 14],
}

const _: () = assert!(size_of::<Header>() == HEADER || cfg!(shmkit_loom));

impl Header {
    /// A fresh header (for the loom models; in a segment, `init` writes one into
    /// a zeroed block).
    #[cfg(any(shmkit_loom, feature = "testkit"))]
    pub fn new(g: &Geometry) -> Self {
        Self {
            capacity: AtomicU64::new(g.capacity),
            words: AtomicU64::new(g.words as u64),
            writer: AtomicU64::new(0),
            _line0: Default::default(),
            head: AtomicU64::new(0),
            bell: AtomicU32::new(0),
            _pad: AtomicU32::new(0),
            _line1: Default::default(),
        }
    }
}

/// A broadcast ring of `T` messages in a segment: one writer, any number of
/// readers in any processes, readers never slowing the writer. Created and found
/// by name with its capacity (a power of two) as its configuration; a handle's
/// [`writer`](crate::Shared::writer) takes the writer role,
/// [`reader`](crate::Shared::reader) makes a reader starting at the next message.
///
/// # Layout and state table
///
/// The object is a 256-byte header followed by `capacity` slots. A slot is one
/// sequence word and `ceil(size_of::<T>() / 8)` data words, padded to a multiple
/// of 64 bytes so that the writer filling one slot does not share a cache line
/// with a reader of the next.
///
/// | word | written by | values | meaning |
/// |---|---|---|---|
/// | `capacity`, `words` | `init` | as configured | for inspection only: every handle uses the configuration the directory checked, never these |
/// | `writer` | a claimant (CAS) | 0, an owner tag | the writer role: vacant, or held by that attachment |
/// | `head` | the writer | `n` | messages `0..n` are complete (the writer publishes it after each one) |
/// | `bell` | the writer; sleeping readers | `generation << 1 \| waiting` | futex word: readers set bit 0 before they sleep; the writer, seeing it, bumps the generation (clearing the bit) and wakes them all |
/// | slot `seq` | the writer | 0, `2m + 1`, `2m + 2` | never written, message `m` being written, message `m` complete (`m ≡ slot index mod capacity`) |
/// | slot data | the writer | any bytes | message `seq / 2 - 1` when `seq` is even and unchanged across the read |
///
/// A reader of message `n` reads its slot's `seq`: `2n + 2` means complete (it
/// copies the data, then checks that `seq` did not move: a seqlock read); below
/// that, not written yet; above, overwritten by a message `m ≥ n + capacity`,
/// which proves every message up to `m - capacity` lost, as the head proves every
/// one before `head - capacity`: the reader skips to the later of the two bounds
/// and reports [`Received::Lagged`] with the count. Readers
/// write nothing but the bell's waiting bit, so they never slow the writer, and
/// come and go freely.
///
/// # A process dying
///
/// - **The writer, inside `send`**: its slot's `seq` is left odd (`2n + 1`) or
///   already even with `head` not yet moved. Readers see "not written yet" or the
///   complete message; nothing torn is ever returned. The next writer (the role of
///   a dead holder is taken over) starts at `head`, first moving it past a slot
///   that is complete: a message readers may already have read is never
///   replaced, and a half-written one is written again under the same number.
/// - **A reader**: it wrote nothing but perhaps the bell's waiting bit, which the
///   writer clears at its next message (one wake-up call, then no more).
///
/// # Damage by a peer
///
/// A `seq` word or `head` that no writer can have produced (a sequence past the
/// published head, from another slot's residue class, a head near `u64::MAX`)
/// is [`Error::Corrupt`]; a plausible forged value can make a reader skip ahead
/// or wait (it reports the skip as a lag), never return a torn value, panic or
/// read outside the ring.
///
/// # Examples
///
/// ```
/// use shmkit::queue::{Broadcast, Received};
/// let seg = shmkit::SegmentOptions::heap().create()?;
/// let ticks = seg.find_or_create::<Broadcast<[u64; 2]>>("ticks", 4)?;
/// let mut w = ticks.writer()?;
/// let mut r = ticks.reader()?;
/// w.send([101, 7])?;
/// assert_eq!(r.try_recv()?, Some(Received::Message([101, 7])));
/// for i in 0..6 {
///     w.send([i, 0])?; // the reader is away: 2 of these are overwritten
/// }
/// assert_eq!(r.try_recv()?, Some(Received::Lagged(2)));
/// assert_eq!(r.try_recv()?, Some(Received::Message([2, 0])));
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
pub struct Broadcast<T> {
    header: Header,
    _messages: PhantomData<T>,
}

// SAFETY: repr(C): a header of atomics only (every bit pattern valid, nothing
// process-local); the ring after it is atomics too. PhantomData has no bytes.
unsafe impl<T: Send + Sync + 'static> ShmSafe for Broadcast<T> {}
// SAFETY: every byte is inside an atomic.
unsafe impl<T: Send + Sync + 'static> ShmShared for Broadcast<T> {}

impl<T: ShmSafe + FromBytes + IntoBytes + Copy + Send + Sync> Broadcast<T> {
    /// Bytes of a broadcast ring of `capacity` messages.
    ///
    /// # Errors
    ///
    /// As [`Geometry::new`].
    pub(crate) fn bytes(capacity: u64) -> Result<u64> {
        Ok(Geometry::new(capacity, size_of::<T>())?.bytes())
    }

    /// Builds the header in a zeroed block of [`bytes`](Self::bytes)`(capacity)`
    /// bytes (zeroed slots are "never written").
    ///
    /// # Safety
    ///
    /// [`ShmObject::init`](crate::ShmObject::init)'s contract.
    pub(crate) unsafe fn init(at: NonNull<Self>, capacity: u64) {
        // SAFETY: the caller's contract: valid, aligned, zeroed and exclusive.
        let h = unsafe { &at.as_ref().header };
        h.capacity.store(capacity, Ordering::Relaxed);
        h.words
            .store(size_of::<T>().div_ceil(8) as u64, Ordering::Relaxed);
    }
}

/// What a reader got: a message, or the news that it lost some.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Received<T> {
    /// The next message.
    Message(T),
    /// This many messages were overwritten before the reader got to them; its
    /// cursor now points at the oldest that may still be there.
    Lagged(u64),
}

/// The algorithm over a header and a ring of words (a segment block, or a loom
/// model's memory).
pub struct RawBroadcast<'a> {
    header: &'a Header,
    ring: &'a [AtomicU64],
    geometry: Geometry,
}

impl<'a> RawBroadcast<'a> {
    /// The algorithm over `header` and `ring` (of `geometry.ring_words()` words).
    ///
    /// # Panics
    ///
    /// If `ring` has another length.
    pub fn new(header: &'a Header, ring: &'a [AtomicU64], geometry: Geometry) -> Self {
        assert_eq!(ring.len(), geometry.ring_words(), "the ring's length");
        Self {
            header,
            ring,
            geometry,
        }
    }

    /// The view of the block at `at`, built by `init` for `geometry`.
    ///
    /// # Safety
    ///
    /// `at` is valid for `geometry.bytes()` bytes for `'a`, a block built by
    /// [`Broadcast::init`].
    pub(crate) unsafe fn from_block<T>(at: NonNull<Broadcast<T>>, geometry: Geometry) -> Self {
        // SAFETY: the caller's contract: the header and, right after it, the ring
        // of `ring_words` atomics, all inside the block and aligned (the block is
        // 128-aligned, the header 256 bytes).
        unsafe {
            let header = &*at.as_ptr().cast::<Header>();
            let first = at.as_ptr().cast::<u8>().add(HEADER).cast::<AtomicU64>();
            let ring = std::slice::from_raw_parts(first, geometry.ring_words());
            Self::new(header, ring, geometry)
        }
    }

    /// Messages published so far (`head`), checked.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for a head no writer can have reached.
    pub fn head(&self) -> Result<u64> {
        // SYNC: Acquire pairs with the writer's Release store of head in `send`.
        let h = self.header.head.load(Ordering::Acquire);
        // Half the limit: 2^61 sends of headroom before a writer resumed at a
        // forged head could reach it.
        if h >= SEQ_LIMIT / 2 {
            return Err(corrupt("head", format!("{h:#x} is past any sequence")));
        }
        Ok(h)
    }

    // ---------------------------------------------------------------- the writer

    /// Claims the writer role for `cx`, taking over a dead holder's; returns the
    /// number of the next message to write.
    ///
    /// # Errors
    ///
    /// [`Error::RoleTaken`] naming a live holder (this attachment included);
    /// [`Error::NotAttached`]; [`Error::Corrupt`] for an impossible head.
    pub fn claim_writer(&self, cx: &dyn Context) -> Result<u64> {
        let me = cx.me();
        if me.is_nobody() {
            return Err(Error::NotAttached);
        }
        let word = &self.header.writer;
        let mut seen = 0;
        loop {
            // SYNC: AcqRel: Acquire pairs with the previous writer's Release in
            // `release_writer` (or our takeover's CAS), so its last stores of head
            // and the slots are visible before we read them; Release publishes
            // our claim.
            match word.compare_exchange(seen, me.bits(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(cur) => {
                    let holder = OwnerTag::from_word(cur);
                    if cur != 0 && (cur == me.bits() || cx.is_alive_owner(holder)) {
                        return Err(Error::RoleTaken {
                            role: "broadcast writer",
                            holder: cur,
                            slot: holder.slot(),
                        });
                    }
                    seen = cur; // vacant, or a dead holder's: take it over
                }
            }
        }
        match self.resume() {
            Ok(n) => Ok(n),
            Err(e) => {
                self.release_writer(me);
                Err(e)
            }
        }
    }

    /// Where a new writer starts: `head`, moved past a slot its predecessor
    /// completed but did not count (readers may have read that message).
    fn resume(&self) -> Result<u64> {
        let n = self.head()?;
        let seq = &self.ring[self.geometry.slot(n)];
        // SYNC: Acquire pairs with the dead writer's Release store of the slot's
        // final sequence in `send`.
        if seq.load(Ordering::Acquire) == 2 * n + 2 {
            // SYNC: Release as in `send`: readers that see this head see the slot.
            self.header.head.store(n + 1, Ordering::Release);
            return Ok(n + 1);
        }
        Ok(n)
    }

    /// Gives the writer role back (if `me` still holds it).
    pub fn release_writer(&self, me: OwnerTag) {
        // SYNC: Release pairs with the next claimant's Acquire in `claim_writer`:
        // our last message is complete before the role is free.
        let _ =
            self.header
                .writer
                .compare_exchange(me.bits(), 0, Ordering::Release, Ordering::Relaxed);
    }

    /// The writer's current bell generation (where a new writer starts counting).
    pub fn bell_generation(&self) -> u32 {
        self.header.bell.load(Ordering::Relaxed) >> 1
    }

    /// Writes message `n` (the writer's next number): marks the slot, fills it,
    /// completes it, publishes `head = n + 1`, and rings the bell if a reader
    /// sleeps. `generation` is the writer's bell generation.
    #[inline]
    pub fn send<T: FromBytes + IntoBytes + Copy>(&self, n: u64, value: T, generation: &mut u32) {
        debug_assert!(n < SEQ_LIMIT);
        let at = self.geometry.slot(n);
        let seq = &self.ring[at];
        // SYNC: Release pairs with the Acquire of a lagging reader's sequence load
        // in `lagged`: it then sees a head of at least `n` (stored after message
        // n - 1). The fence orders this mark before the data stores below, so a
        // reader whose data loads see any of them sees the mark on its re-check
        // (the seqlock write side).
        seq.store(2 * n + 1, Ordering::Release);
        fence(Ordering::Release);
        if crash_point() {
            return; // loom: the writer dies with the slot marked
        }
        let mut copy = value;
        let bytes = copy.as_mut_bytes();
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.ring[at + 1 + i].store(u64::from_ne_bytes(w), Ordering::Relaxed);
        }
        if crash_point() {
            return; // loom: the writer dies with the data half written
        }
        // SYNC: Release pairs with the reader's Acquire load of seq in `recv`:
        // the data stores above are visible to a reader that sees `2n + 2`.
        seq.store(2 * n + 2, Ordering::Release);
        if crash_point() {
            return; // loom: the writer dies before publishing head
        }
        // SYNC: Release pairs with the Acquire in `head` (joining and lagging
        // readers, the next writer).
        self.header.head.store(n + 1, Ordering::Release);
        // SYNC: this SeqCst fence and the one a sleeping reader takes after
        // setting the bell's waiting bit in `prepare_sleep` order themselves:
        // either we see its waiting bit below, or its re-check sees our sequence
        // store.
        fence(Ordering::SeqCst);
        if self.header.bell.load(Ordering::Relaxed) & 1 != 0 {
            self.ring_bell(generation);
        }
    }

    /// Wakes every sleeping reader: a new generation (clearing the waiting bit, so
    /// a reader killed asleep costs one wake-up, not one per message).
    #[cold]
    fn ring_bell(&self, generation: &mut u32) {
        *generation = generation.wrapping_add(1) & (u32::MAX >> 1);
        // SYNC: SeqCst: a reader's fetch_or after this sets the bit on the new
        // generation and re-checks (seeing our message); one before it waits on
        // a value that is no longer there and returns at once.
        self.header.bell.store(*generation << 1, Ordering::SeqCst);
        futex_wake(&self.header.bell, u32::MAX);
    }

    // ---------------------------------------------------------------- readers

    /// Reads message `n` for a reader whose cursor is `*n`: the message (and the
    /// cursor moves on), a lag (the cursor jumps to the oldest message that may
    /// still be there), or `None` if message `n` is not written yet.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for a sequence word no writer can have produced.
    #[inline]
    pub fn recv<T: FromBytes + IntoBytes + Copy>(
        &self,
        n: &mut u64,
    ) -> Result<Option<Received<T>>> {
        let at = self.geometry.slot(*n);
        let seq = &self.ring[at];
        let want = 2 * *n + 2;
        // SYNC: Acquire pairs with the writer's Release store of `2n + 2` in
        // `send`: the data is visible.
        let s1 = seq.load(Ordering::Acquire);
        if s1 == want {
            let mut value = T::new_zeroed();
            let bytes = value.as_mut_bytes();
            for (i, chunk) in bytes.chunks_mut(8).enumerate() {
                let w = self.ring[at + 1 + i].load(Ordering::Relaxed).to_ne_bytes();
                chunk.copy_from_slice(&w[..chunk.len()]);
            }
            // SYNC: Acquire fence pairs with the writer's Release fence after its
            // mark in `send`: if a data load above saw a later message's store,
            // the re-check below sees that message's mark (the seqlock read side).
            fence(Ordering::Acquire);
            if seq.load(Ordering::Relaxed) == want {
                *n += 1;
                return Ok(Some(Received::Message(value)));
            }
            return self.lagged(n);
        }
        if s1 < want {
            return Ok(None); // not written yet (or an older lap's)
        }
        self.lagged(n)
    }

    /// The slot of message `*n` holds a later message: every message up to that
    /// one's number minus the capacity is lost, and every one the head has lapped.
    #[cold]
    fn lagged<T>(&self, n: &mut u64) -> Result<Option<Received<T>>> {
        let cap = self.geometry.capacity;
        // SYNC: Acquire pairs with the writer's Release stores of the sequence in
        // `send` (the mark included): the head loaded next is at least its number.
        let s = self.ring[self.geometry.slot(*n)].load(Ordering::Acquire);
        let head = self.head()?;
        let m = s.wrapping_sub(1) / 2; // the later message's number
        if s == 0 || m % cap != *n % cap || m < *n + cap || m > head {
            return Err(corrupt(
                "broadcast slot",
                format!(
                    "sequence {s:#x} in the slot of message {n} (capacity {cap}, head {head}) \
                     names no message a writer can have written there"
                ),
            ));
        }
        // Lost: everything up to m - cap (m's slot is theirs), and everything
        // the head has since lapped; the oldest that may still be there is the
        // later of the two bounds.
        let first = (m + 1 - cap).max(head - cap);
        let missed = first - *n;
        *n = first;
        Ok(Some(Received::Lagged(missed)))
    }

    /// Messages a reader at `n` has not read yet, as the head says (at most the
    /// capacity: older ones are overwritten).
    pub fn pending(&self, n: u64) -> u64 {
        let h = self.header.head.load(Ordering::Acquire);
        h.saturating_sub(n).min(self.geometry.capacity)
    }

    /// A reader about to sleep: sets the bell's waiting bit and returns the value
    /// to wait on (the reader re-checks for a message before it waits).
    pub fn prepare_sleep(&self) -> u32 {
        let expected = self.header.bell.fetch_or(1, Ordering::SeqCst) | 1;
        // SYNC: this SeqCst fence and the writer's in `send` order themselves in
        // the single total order: if ours comes first, the writer's bell load
        // after its fence sees our waiting bit; if the writer's comes first, our
        // re-check's sequence load after this fence sees its sequence store. (The
        // SeqCst RMW alone does not order our later Acquire load: loom finds the
        // lost wake-up without this fence.)
        fence(Ordering::SeqCst);
        expected
    }

    /// The bell (the futex word readers sleep on).
    pub fn bell(&self) -> &AtomicU32 {
        &self.header.bell
    }

    /// The writer role word's holder, if any.
    pub fn writer_holder(&self) -> Option<OwnerTag> {
        // SYNC: Relaxed: a hint for liveness checks; nothing is read through it.
        let w = self.header.writer.load(Ordering::Relaxed);
        (w != 0).then(|| OwnerTag::from_word(w))
    }

    /// Overwrites the head, as a peer could (test support: starting near a wrap,
    /// damage).
    #[cfg(any(shmkit_loom, feature = "testkit"))]
    pub fn set_head(&self, head: u64) {
        self.header.head.store(head, Ordering::Release);
    }

    /// Overwrites a ring word, as a peer could (test support).
    #[cfg(any(shmkit_loom, feature = "testkit"))]
    pub fn set_ring_word(&self, index: usize, value: u64) {
        self.ring[index].store(value, Ordering::Release);
    }

    /// Overwrites the writer role word, as a peer could (test support).
    #[cfg(any(shmkit_loom, feature = "testkit"))]
    pub fn set_writer_word(&self, value: u64) {
        self.header.writer.store(value, Ordering::Release);
    }
}

#[cold]
fn corrupt(what: &'static str, detail: String) -> Error {
    Error::Corrupt { what, detail }
}
