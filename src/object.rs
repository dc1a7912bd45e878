//! Type identity of the objects a directory stores: [`ShmObject`], its
//! [`ObjectConfig`] and the [`TypeIdentity`] recorded in every entry.
//!
//! # Safety
//!
//! [`ShmObject`] is an `unsafe trait`: the directory builds an object in a zeroed
//! block of [`ShmObject::size`] bytes with [`ShmObject::init`] and then hands out
//! `&Self` into it to every process that finds it by name.
#![allow(unsafe_code)]

use std::fmt;
use std::ptr::NonNull;

use crate::layout::{ShmSafe, ShmShared};
use crate::queue::{Broadcast, MpmcQueue, SpscQueue};
use crate::sync::{Condvar, Event, EventKind, Mutex, RwLock, Semaphore};
use crate::{Error, Result};

/// Words of a stored configuration.
pub const CONFIG_WORDS: usize = 4;

/// The configuration an object is built from (a capacity, a number of permits,
/// `()` for none), stored in the directory entry so that a later
/// [`find`](crate::Segment::find) asking for another one is refused
/// ([`Error::WrongConfig`]).
///
/// # Examples
///
/// ```
/// use shmkit::ObjectConfig;
/// assert_eq!(u64::decode(7u64.encode()), Some(7));
/// assert_eq!(<()>::decode(().encode()), Some(()));
/// ```
pub trait ObjectConfig: Copy + fmt::Debug + PartialEq + Send + Sync + 'static {
    /// The configuration as stored words.
    fn encode(&self) -> [u64; CONFIG_WORDS];
    /// The configuration back from stored words (written by a peer, so possibly
    /// anything): `None` if they encode no configuration.
    fn decode(words: [u64; CONFIG_WORDS]) -> Option<Self>;
}

impl ObjectConfig for () {
    fn encode(&self) -> [u64; CONFIG_WORDS] {
        [0; CONFIG_WORDS]
    }
    fn decode(w: [u64; CONFIG_WORDS]) -> Option<Self> {
        (w == [0; CONFIG_WORDS]).then_some(())
    }
}

macro_rules! int_config {
    ($($t:ty),*) => {$(
        impl ObjectConfig for $t {
            fn encode(&self) -> [u64; CONFIG_WORDS] {
                [*self as u64, 0, 0, 0]
            }
            fn decode(w: [u64; CONFIG_WORDS]) -> Option<Self> {
                if w[1..] != [0; CONFIG_WORDS - 1] {
                    return None;
                }
                <$t>::try_from(w[0]).ok()
            }
        }
    )*};
}
int_config!(u32, u64, usize);

impl ObjectConfig for EventKind {
    fn encode(&self) -> [u64; CONFIG_WORDS] {
        [matches!(self, EventKind::ManualReset) as u64, 0, 0, 0]
    }
    fn decode(w: [u64; CONFIG_WORDS]) -> Option<Self> {
        match w {
            [0, 0, 0, 0] => Some(EventKind::AutoReset),
            [1, 0, 0, 0] => Some(EventKind::ManualReset),
            _ => None,
        }
    }
}

/// What a directory entry records of an object's type, and what
/// [`find`](crate::Segment::find) compares: a name chosen by the type, its size for
/// the configuration, its alignment and its format version.
///
/// The name is the type's own (`shmkit::Mutex`, `shmkit::SpscQueue`...) followed by
/// its parameters as [`core::any::type_name`] spells them (`shmkit::Mutex<u64>`,
/// `shmkit::Mutex<my_app::Quote>`): the same in every process built from the same
/// source by the same compiler. Two programs that define "the same" struct under
/// different paths are told apart ([`Error::WrongType`]). What the identity cannot
/// see is a field layout changed under the same path and size (a struct whose
/// fields were reordered between two builds): such a view is memory-safe (every
/// bit pattern of a [`ShmSafe`] type is valid) but its values are wrong, so change
/// the type's name, or its size, when its layout changes.
///
/// # Examples
///
/// ```
/// use shmkit::{ShmObject, sync::Mutex};
/// let id = Mutex::<u64>::identity(&());
/// assert_eq!(id.name, "shmkit::Mutex<u64>");
/// assert_eq!(id.size, 24);
/// assert_eq!(id.to_string(), "shmkit::Mutex<u64> (format 1, 24 bytes, align 8)");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TypeIdentity {
    /// The type's name, with its parameters.
    pub name: String,
    /// Bytes of the object for its configuration.
    pub size: u64,
    /// Alignment.
    pub align: u64,
    /// Format version of the type's layout.
    pub version: u32,
}

impl fmt::Display for TypeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (format {}, {} bytes, align {})",
            self.name, self.version, self.size, self.align
        )
    }
}

/// Longest type name a directory entry stores.
pub const MAX_TYPE_NAME: usize = 1024;

/// Largest alignment of an object (the heap's largest block alignment).
pub const MAX_OBJECT_ALIGN: usize = 4096;

/// A type that a segment's directory can build in place and hand out by name
/// ([`Segment::find_or_create`](crate::Segment::find_or_create)).
///
/// shmkit's own structures implement it (locks, semaphores, events, atomics; the
/// queues and maps as they come). A user's data goes *inside* one of them
/// (`Mutex<Quote>`, `RwLock<Book>`), where deriving zerocopy's traits is all it
/// takes (see [`ShmSafe`]).
///
/// # Safety
///
/// 1. [`size`](Self::size) returns at least `size_of::<Self>()` for every
///    configuration it accepts, the same in every process;
/// 2. [`init`](Self::init), given a zeroed, exclusively owned region of that many
///    bytes aligned to `align_of::<Self>()`, leaves a valid `Self` there whose
///    methods only touch those bytes;
/// 3. every state peers can leave in those bytes is safe to use through `&Self`
///    (which `ShmShared` already promises for the fixed part);
/// 4. [`type_name`](Self::type_name) and `VERSION` change whenever the layout does.
///
/// # Examples
///
/// ```
/// use shmkit::{ShmObject, sync::Semaphore};
/// assert_eq!(Semaphore::<0>::type_name(), "shmkit::Semaphore<0>");
/// assert!(Semaphore::<0>::size(&4).is_ok());
/// ```
pub unsafe trait ShmObject: ShmShared {
    /// What the object is built from.
    type Config: ObjectConfig;

    /// Format version of the layout; part of the identity.
    const VERSION: u32;

    /// The type's stable name, with its parameters (see [`TypeIdentity`]).
    fn type_name() -> String;

    /// Bytes the object takes for `config`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] or [`Error::InvalidSize`] for a configuration
    /// the type cannot be built with.
    fn size(_config: &Self::Config) -> Result<u64> {
        Ok(size_of::<Self>() as u64)
    }

    /// Builds the object in place.
    ///
    /// # Safety
    ///
    /// `at` is valid for writes of [`size`](Self::size)`(config)` bytes, aligned to
    /// `align_of::<Self>()`, zeroed, and used by nobody else until this returns.
    unsafe fn init(at: NonNull<Self>, config: &Self::Config);

    /// The identity the directory records for this type and `config` (an invalid
    /// configuration gives size 0, which no entry has).
    fn identity(config: &Self::Config) -> TypeIdentity {
        TypeIdentity {
            name: Self::type_name(),
            size: Self::size(config).unwrap_or(0),
            align: align_of::<Self>() as u64,
            version: Self::VERSION,
        }
    }
}

/// Writes `value` over the object at `at` (small, fixed-size objects only: large
/// ones are built field by field).
///
/// # Safety
///
/// As [`ShmObject::init`].
unsafe fn write_whole<T>(at: NonNull<T>, value: T) {
    // SAFETY: the caller's contract: valid for writes, aligned, exclusive.
    unsafe { at.as_ptr().write(value) };
}

// SAFETY: size_of::<Self>(); init writes a complete unlocked Mutex whose data is
// the zeroed T (valid: T is ShmSafe, every bit pattern valid); ShmShared covers
// the rest.
unsafe impl<T: ShmSafe + Send> ShmObject for Mutex<T> {
    type Config = ();
    const VERSION: u32 = 1;
    fn type_name() -> String {
        format!("shmkit::Mutex<{}>", std::any::type_name::<T>())
    }
    unsafe fn init(at: NonNull<Self>, _config: &()) {
        // SAFETY: the caller's contract; the data stays the zeroed bytes.
        unsafe { Mutex::init_in_place(at) };
    }
}

// SAFETY: as for Mutex.
unsafe impl<T: ShmSafe + Send + Sync, const R: usize> ShmObject for RwLock<T, R> {
    type Config = ();
    const VERSION: u32 = 1;
    fn type_name() -> String {
        format!("shmkit::RwLock<{}, {R}>", std::any::type_name::<T>())
    }
    unsafe fn init(at: NonNull<Self>, _config: &()) {
        // SAFETY: the caller's contract; the data stays the zeroed bytes.
        unsafe { RwLock::init_in_place(at) };
    }
}

// SAFETY: size_of::<Self>(); a semaphore is small and built whole.
unsafe impl<const L: usize> ShmObject for Semaphore<L> {
    /// The number of permits.
    type Config = u32;
    const VERSION: u32 = 1;
    fn type_name() -> String {
        format!("shmkit::Semaphore<{L}>")
    }
    unsafe fn init(at: NonNull<Self>, permits: &u32) {
        // SAFETY: the caller's contract.
        unsafe { write_whole(at, Semaphore::<L>::with_ledger(*permits)) };
    }
}

// SAFETY: size_of::<Self>(); built whole.
unsafe impl ShmObject for Event {
    type Config = EventKind;
    const VERSION: u32 = 1;
    fn type_name() -> String {
        "shmkit::Event".into()
    }
    unsafe fn init(at: NonNull<Self>, kind: &EventKind) {
        // SAFETY: the caller's contract.
        unsafe { write_whole(at, Event::new(*kind)) };
    }
}

// SAFETY: size_of::<Self>(); built whole.
unsafe impl ShmObject for Condvar {
    type Config = ();
    const VERSION: u32 = 1;
    fn type_name() -> String {
        "shmkit::Condvar".into()
    }
    unsafe fn init(at: NonNull<Self>, _config: &()) {
        // SAFETY: the caller's contract.
        unsafe { write_whole(at, Condvar::new()) };
    }
}

macro_rules! atomic_object {
    ($($t:ident),*) => {$(
        // SAFETY: size_of::<Self>(); zero is a valid atomic and init leaves it.
        #[allow(clippy::disallowed_types)]
        unsafe impl ShmObject for std::sync::atomic::$t {
            type Config = ();
            const VERSION: u32 = 1;
            fn type_name() -> String {
                concat!("core::sync::atomic::", stringify!($t)).into()
            }
            unsafe fn init(_at: NonNull<Self>, _config: &()) {}
        }
    )*};
}
atomic_object!(
    AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicI8, AtomicI16, AtomicI32, AtomicI64
);

// SAFETY: N elements of a ShmObject whose size is its type's (config `()`): the
// array's size; init builds each element in place; an array of ShmShared
// zerocopy types is ShmShared.
unsafe impl<T, const N: usize> ShmObject for [T; N]
where
    T: ShmObject<Config = ()> + zerocopy::FromBytes + zerocopy::IntoBytes + zerocopy::KnownLayout,
{
    type Config = ();
    const VERSION: u32 = 1;
    fn type_name() -> String {
        format!("[{}; {N}]", T::type_name())
    }
    unsafe fn init(at: NonNull<Self>, config: &()) {
        let first = at.cast::<T>();
        for i in 0..N {
            // SAFETY: element i of the caller's region, itself zeroed, aligned and
            // exclusive.
            unsafe { T::init(first.add(i), config) };
        }
    }
}

// SAFETY: (1) `bytes` is the header (size_of::<Self>()) plus the ring, the same
// in every process; (2) init writes the header's fixed words inside those bytes
// (zeroed slots are "never written"), and the handles reach only the ring's
// words; (3) every word pattern is handled (see Broadcast's state table), every
// data pattern is a T (FromBytes); (4) the name carries T, VERSION the layout.
unsafe impl<T> ShmObject for Broadcast<T>
where
    T: ShmSafe + zerocopy::FromBytes + zerocopy::IntoBytes + Copy + Send + Sync,
{
    /// The capacity: a power of two, at most
    /// [`MAX_BROADCAST_CAPACITY`](crate::queue::MAX_BROADCAST_CAPACITY).
    type Config = u64;
    const VERSION: u32 = 1;
    fn type_name() -> String {
        format!("shmkit::Broadcast<{}>", std::any::type_name::<T>())
    }
    fn size(capacity: &u64) -> Result<u64> {
        Broadcast::<T>::bytes(*capacity)
    }
    unsafe fn init(at: NonNull<Self>, capacity: &u64) {
        // SAFETY: the caller's contract, for `size(capacity)` bytes.
        unsafe { Broadcast::init(at, *capacity) };
    }
}

// SAFETY: (1) `bytes` is the header (size_of::<Self>()) plus the ring, the same
// in every process; (2) init builds the header and every slot in place inside
// those bytes, and the role handles reach only slots below the capacity;
// (3) every word pattern is handled (see SpscQueue's state table), every slot
// pattern is a T (ShmSafe); (4) the name carries T, VERSION the layout.
unsafe impl<T: ShmSafe + Copy + Send> ShmObject for SpscQueue<T> {
    /// The capacity: a power of two, at most [`MAX_CAPACITY`](crate::queue::MAX_CAPACITY).
    type Config = u64;
    const VERSION: u32 = 1;
    fn type_name() -> String {
        format!("shmkit::SpscQueue<{}>", std::any::type_name::<T>())
    }
    fn size(capacity: &u64) -> Result<u64> {
        SpscQueue::<T>::bytes(*capacity)
    }
    unsafe fn init(at: NonNull<Self>, capacity: &u64) {
        // SAFETY: the caller's contract, for `size(capacity)` bytes.
        unsafe { SpscQueue::init(at, *capacity) };
    }
}

// SAFETY: `size` is the header (size_of::<Self>()) plus the slots, the same in
// every process for a capacity; init builds the header and every slot's stamp in
// the zeroed region and touches nothing else; every state of those atomics is
// handled (see MpmcQueue's documentation); the name carries T.
unsafe impl<T: 'static> ShmObject for MpmcQueue<T> {
    /// The capacity: a power of two.
    type Config = u64;
    const VERSION: u32 = 1;
    fn type_name() -> String {
        format!("shmkit::MpmcQueue<{}>", std::any::type_name::<T>())
    }
    fn size(capacity: &u64) -> Result<u64> {
        MpmcQueue::<T>::bytes_for(*capacity)
    }
    unsafe fn init(at: NonNull<Self>, capacity: &u64) {
        // SAFETY: the caller's contract, for `size(capacity)` bytes (init is only
        // called after `size` accepted the configuration).
        unsafe { MpmcQueue::init_in_place(at, *capacity) };
    }
}

/// Checks that a configuration is storable: encode → decode gives it back.
pub(crate) fn check_config<C: ObjectConfig>(c: &C) -> Result<()> {
    if C::decode(c.encode()).as_ref() != Some(c) {
        return Err(Error::InvalidArgument(
            "the object's configuration does not survive being stored",
        ));
    }
    Ok(())
}
