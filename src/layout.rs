//! What may live in a segment, and checked size arithmetic.
//!
//! # Safety
//!
//! [`ShmSafe`] is an `unsafe trait`: implementing it promises the layout rules below,
//! which the rest of the crate relies on when it hands out references into a segment.
#![allow(unsafe_code)]

use zerocopy::{FromBytes, IntoBytes, KnownLayout};

use crate::loom::{AtomicU32, AtomicU64};

/// Types that may be placed in a shared-memory segment.
///
/// # Safety
///
/// Implement only for types that satisfy all of:
/// 1. `#[repr(C)]` or `#[repr(transparent)]` (or a primitive), so every process and
///    every build agrees on the layout;
/// 2. no pointers, references, `Box`/`Vec`/`String`, file descriptors, thread
///    locals or anything else whose meaning is local to one process: only plain
///    integers, atomics, arrays of them and [`Offset`](crate::Offset)s;
/// 3. **every bit pattern is a valid value** (a peer can write anything): no `bool`,
///    `char`, enums, `NonZero*` or references;
/// 4. any field that several processes mutate concurrently is an atomic: a shared
///    reference into the segment is handed out, so plain fields are only for data
///    that does not change while shared.
///
/// # Deriving it: no `unsafe`
///
/// Every type that implements zerocopy's `FromBytes`, `IntoBytes` and `KnownLayout`
/// is `ShmSafe`: derive them (the derives check the rules at compile time) and
/// never write the `unsafe impl`. Primitives, arrays and std's atomics are
/// covered the same way.
///
/// # Examples
///
/// ```
/// use shmkit::ShmSafe;
/// use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
///
/// #[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
/// #[repr(C)]
/// struct Quote {
///     price: u64,
///     qty: u32,
///     venue: u32,
/// }
/// fn shm_safe<T: ShmSafe>() {}
/// shm_safe::<Quote>();
/// shm_safe::<[u64; 4]>();
/// ```
///
/// Padding, a `bool`, a reference or a `Box` is refused at compile time:
///
/// ```compile_fail
/// # use zerocopy::{FromBytes, IntoBytes, KnownLayout};
/// #[derive(FromBytes, IntoBytes, KnownLayout)]
/// #[repr(C)]
/// struct Padded { a: u8, b: u64 } // 7 bytes of padding
/// ```
///
/// ```compile_fail
/// # use zerocopy::{FromBytes, IntoBytes, KnownLayout};
/// #[derive(FromBytes, IntoBytes, KnownLayout)]
/// #[repr(C)]
/// struct Flag { on: bool } // not every bit pattern is a bool
/// ```
///
/// ```compile_fail
/// # use zerocopy::{FromBytes, IntoBytes, KnownLayout};
/// #[derive(FromBytes, IntoBytes, KnownLayout)]
/// #[repr(C)]
/// struct Ref { r: &'static u64 } // a pointer of this process
/// ```
///
/// ```compile_fail
/// # use zerocopy::{FromBytes, IntoBytes, KnownLayout};
/// #[derive(FromBytes, IntoBytes, KnownLayout)]
/// #[repr(C)]
/// struct Boxed { b: Box<u64> } // memory of this process
/// ```
pub unsafe trait ShmSafe: Sized + 'static {}

/// [`ShmSafe`] types that may be *shared by reference* while other processes write
/// them: every byte lies inside an atomic, or inside an `UnsafeCell` that the type
/// reaches only under its own robust lock (as [`sync::Mutex`](crate::sync::Mutex)
/// does). [`Segment::resolve`](crate::Segment::resolve)
/// hands out `&T` only for these; plain data is copied in and out with
/// [`Segment::read`](crate::Segment::read) and [`Segment::write`](crate::Segment::write).
///
/// # Safety
///
/// Implement only for `ShmSafe` types in which every byte belongs to an atomic, to
/// another `ShmShared` type, or to an `UnsafeCell` the type accesses only while
/// holding its own lock, so that concurrent writes by peers are never data races
/// on memory a `&T` covers.
///
/// # Examples
///
/// ```
/// use shmkit::{ShmSafe, ShmShared};
/// use std::sync::atomic::{AtomicU32, AtomicU64};
///
/// #[repr(C)]
/// struct Counters {
///     hits: AtomicU64,
///     misses: AtomicU64,
///     epoch: AtomicU32,
///     spare: AtomicU32,
/// }
/// // SAFETY: repr(C), atomics only, no padding.
/// unsafe impl ShmSafe for Counters {}
/// // SAFETY: every byte is inside an atomic.
/// unsafe impl ShmShared for Counters {}
/// ```
pub unsafe trait ShmShared: ShmSafe + Sync {}

macro_rules! shm_shared {
    ($($t:ty),* $(,)?) => {
        // SAFETY: atomics: every byte is inside the atomic.
        $(unsafe impl ShmShared for $t {})*
    };
}

shm_shared!(AtomicU32, AtomicU64, ());

// SAFETY: an array of ShmShared values has no bytes outside its elements.
unsafe impl<T: ShmShared + FromBytes + IntoBytes + KnownLayout, const N: usize> ShmShared
    for [T; N]
{
}

macro_rules! shm_safe {
    ($($t:ty),* $(,)?) => {
        // SAFETY: the crate's own atomics (the loom shim's wrappers): fixed layout,
        // every bit pattern valid, nothing process-local.
        $(unsafe impl ShmSafe for $t {})*
    };
}

shm_safe!(AtomicU32, AtomicU64);

// SAFETY: zerocopy's derives prove exactly rules 1-3: `IntoBytes` rejects a type
// with padding or without a fixed (`repr(C)`/`transparent`/primitive) layout,
// `FromBytes` one with any invalid bit pattern (bool, char, enums, `NonZero*`,
// references, `Box`), and raw pointers implement neither. Rule 4 is not a
// soundness rule for plain data: such types are copied in and out, and shared by
// reference only as `ShmShared` (atomics or data under a robust lock).
unsafe impl<T: FromBytes + IntoBytes + KnownLayout + 'static> ShmSafe for T {}

// std's atomics, for users' own types (shmkit itself uses the loom shim's). They
// are `ShmSafe` through zerocopy (above).
#[allow(clippy::disallowed_types)]
mod std_atomics {
    use super::ShmShared;
    use std::sync::atomic::{
        AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicU8, AtomicU16, AtomicU32, AtomicU64,
    };
    shm_shared!(
        AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicI8, AtomicI16, AtomicI32, AtomicI64,
    );
}

/// 64-bit FNV-1a, used for the header checksum and the layout fingerprint.
///
/// Not a cryptographic hash: it detects accidents (torn writes, foreign files, a
/// different build), not forgery, which a peer with write access can always do.
pub(crate) const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The FNV-1a offset basis.
pub(crate) const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The page size shmkit assumes for alignment of sizes (checked against the OS at
/// runtime on the paths that map memory).
pub const PAGE_SIZE: u64 = 4096;

/// Round `n` up to a multiple of `align` (a power of two), or `None` on overflow.
#[inline]
pub(crate) const fn align_up(n: u64, align: u64) -> Option<u64> {
    match n.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}
