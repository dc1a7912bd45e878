//! The segment header at offset 0, and its validation.
//!
//! # Layout (format version 2, 4096 bytes reserved)
//!
//! | offset | field          | written                                     |
//! |--------|----------------|---------------------------------------------|
//! | 0      | `magic`        | by the creator, before `Ready`              |
//! | 8      | `state`        | atomic: `Uninit → Initializing → Ready`     |
//! | 12     | `version`      | before `Ready`                              |
//! | 16     | `committed`    | atomic, grows while the segment is in use   |
//! | 24     | `fields`       | immutable after `Ready`, covered by `checksum` |
//!
//! Openers read nothing but `state` until it is `Ready` (Acquire), then copy the
//! immutable part into a local once ([`HeaderFields::snapshot`]) and check it.
#![allow(unsafe_code)]

use crate::error::{Error, Result};
use crate::layout::{FNV_START, PAGE_SIZE, fnv1a};
use crate::loom::{AtomicU32, AtomicU64};

/// The magic bytes at offset 0.
pub(crate) const MAGIC: [u8; 8] = *b"SHMKIT\x00\x01";
/// The on-segment format version this build reads and writes.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Bytes reserved for the header (the first page).
pub(crate) const HEADER_SIZE: u64 = PAGE_SIZE;
/// Largest segment (the tagged-offset limit).
pub(crate) const MAX_SEGMENT_SIZE: u64 = crate::ptr::Tagged::MAX_OFFSET;
/// Largest registry.
pub(crate) const MAX_SLOTS: u32 = 1 << 16;

/// The header as it lies in the segment.
#[repr(C)]
pub(crate) struct Header {
    pub magic: [u8; 8],
    pub state: AtomicU32,
    pub version: u32,
    pub committed: AtomicU64,
    pub fields: HeaderFields,
}

/// The immutable part of the header.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeaderFields {
    pub fingerprint: u64,
    pub header_size: u64,
    pub max_size: u64,
    pub seed: u64,
    pub creator_pid: u32,
    pub creator_uid: u32,
    pub creator_start_time: u64,
    pub creator_incarnation: u64,
    pub created_ns: u64,
    pub registry_offset: u64,
    pub registry_slots: u32,
    pub slot_size: u32,
    pub user_offset: u64,
    /// Where the heap header is; 0 in a segment made without a heap.
    pub heap_offset: u64,
    /// End of the raw region `[user_offset, raw_end)`, which no heap manages.
    pub raw_end: u64,
    pub reserved: [u64; 4],
    pub checksum: u64,
}

#[cfg(not(shmkit_loom))]
const _: () = {
    assert!(size_of::<Header>() <= HEADER_SIZE as usize);
    assert!(std::mem::offset_of!(Header, state) == 8);
    assert!(std::mem::offset_of!(Header, committed) == 16);
    assert!(std::mem::offset_of!(Header, fields) == 24);
};

/// The fingerprint of this build's layout: architecture, endianness, pointer width,
/// format version, the sizes of the structures in the segment and the liveness
/// protocol (builds that judge liveness differently must not share a segment).
pub(crate) fn fingerprint() -> u64 {
    let mut h = fnv1a(FNV_START, std::env::consts::ARCH.as_bytes());
    h = fnv1a(h, super::locks::PROTOCOL);
    h = fnv1a(
        h,
        if cfg!(target_endian = "little") {
            b"le"
        } else {
            b"be"
        },
    );
    h = fnv1a(h, &(usize::BITS).to_le_bytes());
    h = fnv1a(h, &FORMAT_VERSION.to_le_bytes());
    h = fnv1a(h, &(size_of::<HeaderFields>() as u64).to_le_bytes());
    fnv1a(
        h,
        &(size_of::<super::registry::Slot>() as u64).to_le_bytes(),
    )
}

impl HeaderFields {
    /// The checksum over every field but `checksum` itself, plus magic and version.
    pub fn compute_checksum(&self) -> u64 {
        let mut h = fnv1a(FNV_START, &MAGIC);
        h = fnv1a(h, &FORMAT_VERSION.to_le_bytes());
        for v in [
            self.fingerprint,
            self.header_size,
            self.max_size,
            self.seed,
            u64::from(self.creator_pid),
            u64::from(self.creator_uid),
            self.creator_start_time,
            self.creator_incarnation,
            self.created_ns,
            self.registry_offset,
            u64::from(self.registry_slots),
            u64::from(self.slot_size),
            self.user_offset,
            self.heap_offset,
            self.raw_end,
        ]
        .into_iter()
        .chain(self.reserved)
        {
            h = fnv1a(h, &v.to_le_bytes());
        }
        h
    }

    /// Checks a snapshot against itself and against the mapped length.
    ///
    /// # Errors
    ///
    /// The first thing found wrong, as a typed error.
    pub fn validate(&self, magic: [u8; 8], version: u32, mapped_len: u64) -> Result<()> {
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        if version != FORMAT_VERSION {
            return Err(Error::VersionMismatch {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let computed = self.compute_checksum();
        if computed != self.checksum {
            return Err(Error::ChecksumMismatch {
                found: self.checksum,
                computed,
            });
        }
        let expected = fingerprint();
        if self.fingerprint != expected {
            return Err(Error::FingerprintMismatch {
                found: self.fingerprint,
                expected,
            });
        }
        let bad = |what, detail: String| Err(Error::corrupt(what, detail));
        if self.header_size != HEADER_SIZE {
            return bad(
                "header_size",
                format!("{} != {HEADER_SIZE}", self.header_size),
            );
        }
        if self.max_size != mapped_len {
            return bad(
                "max_size",
                format!("{} but the object is {mapped_len} bytes", self.max_size),
            );
        }
        if self.slot_size as usize != size_of::<super::registry::Slot>() {
            return bad("slot_size", format!("{}", self.slot_size));
        }
        if self.registry_slots == 0 || self.registry_slots > MAX_SLOTS {
            return bad("registry_slots", format!("{}", self.registry_slots));
        }
        let reg_end = u64::from(self.registry_slots)
            .checked_mul(u64::from(self.slot_size))
            .and_then(|n| n.checked_add(self.registry_offset));
        match reg_end {
            Some(end)
                if self.registry_offset >= HEADER_SIZE
                    && self.registry_offset % 64 == 0
                    && end <= self.user_offset => {}
            _ => {
                return bad(
                    "registry_offset",
                    format!(
                        "{:#x} with {} slots does not fit below {:#x}",
                        self.registry_offset, self.registry_slots, self.user_offset
                    ),
                );
            }
        }
        if self.user_offset % PAGE_SIZE != 0 || self.user_offset > self.max_size {
            return bad("user_offset", format!("{:#x}", self.user_offset));
        }
        self.validate_region()
    }

    /// Checks who owns the user region: either no heap and a raw region to the end,
    /// or a raw region of whole pages followed by a heap whose layout fits.
    fn validate_region(&self) -> Result<()> {
        let bad = |what, detail: String| Err(Error::corrupt(what, detail));
        if self.raw_end < self.user_offset || self.raw_end > self.max_size {
            return bad(
                "raw_end",
                format!(
                    "{:#x} outside the user region [{:#x}, {:#x}]",
                    self.raw_end, self.user_offset, self.max_size
                ),
            );
        }
        if self.heap_offset == 0 {
            if self.raw_end != self.max_size {
                return bad(
                    "raw_end",
                    format!(
                        "{:#x} in a segment without a heap (must be max_size {:#x})",
                        self.raw_end, self.max_size
                    ),
                );
            }
            return Ok(());
        }
        if self.raw_end % PAGE_SIZE != 0 || self.heap_offset != self.raw_end {
            return bad(
                "heap_offset",
                format!(
                    "{:#x} does not start at the page-aligned end of the raw region {:#x}",
                    self.heap_offset, self.raw_end
                ),
            );
        }
        match crate::alloc::HeapLayout::new(self.heap_offset, self.max_size) {
            Ok(_) => Ok(()),
            Err(e) => bad("heap_offset", format!("{:#x}: {e}", self.heap_offset)),
        }
    }
}

/// Checks a committed size read from the header against the validated fields.
pub(crate) fn check_committed(committed: u64, f: &HeaderFields) -> Result<u64> {
    if committed < f.user_offset || committed > f.max_size || committed % PAGE_SIZE != 0 {
        return Err(Error::corrupt(
            "committed",
            format!(
                "{committed:#x} outside [{:#x}, {:#x}] or not page-aligned",
                f.user_offset, f.max_size
            ),
        ));
    }
    Ok(committed)
}

/// Fuzzing aid: makes the fingerprint and checksum of a header image consistent,
/// so that a fuzzer reaches the checks behind them. No-op on a short image.
#[doc(hidden)]
#[cfg(feature = "testkit")]
pub fn repair_header(image: &mut [u8]) {
    const FIELDS: usize = std::mem::offset_of!(Header, fields);
    if image.len() < FIELDS + size_of::<HeaderFields>() {
        return;
    }
    let at = image[FIELDS..].as_mut_ptr().cast::<HeaderFields>();
    // SAFETY: the image holds a whole HeaderFields at FIELDS (checked above);
    // unaligned access is used because a byte slice has no alignment; HeaderFields
    // is plain integers, valid for any bytes.
    let mut f = unsafe { at.read_unaligned() };
    f.fingerprint = fingerprint();
    f.checksum = f.compute_checksum();
    // SAFETY: as above.
    unsafe { at.write_unaligned(f) };
}
