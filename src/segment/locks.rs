//! Liveness locks: locks the kernel releases when their holder dies.
//!
//! Index 0 is the init lock (held by a creator while it initialises the segment);
//! index `1 + slot` is the lock of registry slot `slot`, held by the attached process
//! for as long as it is attached.
//!
//! For segments with a file descriptor these are open-file-description (OFD) `fcntl`
//! locks on single bytes far beyond the end of the data, so they never interfere
//! with the mapping. They belong to the open file description, not to the process:
//! a handle's descriptor is `O_CLOEXEC`, and after `fork` the child must call
//! [`Segment::after_fork`](crate::Segment::after_fork) to stop sharing the parent's
//! description. A shared mapping also holds a reference to the description it was
//! made through, so `after_fork` maps the range again, in place, through the
//! child's own description. The registry also cross-checks the pid and its start
//! time, so a forked child that never calls `after_fork` still cannot keep its dead
//! parent "alive" (its slot is judged dead, and freed once that child lets go).
//!
//! # Witnesses
//!
//! Besides its slot lock, an attachment holds two *witness* locks from before it
//! publishes its slot word until it detaches, through the same description:
//!
//! - the **tag witness**, one byte whose offset *is* its owner tag: `TAG_BASE +
//!   tag.bits()` (62 bits of slot and incarnation above 2^62, so the last possible
//!   byte is `i64::MAX`, the kernel's `OFFSET_MAX`). "Is tag T alive" is one
//!   `F_OFD_GETLK` on T's byte; no segment word enters the answer, so a peer that
//!   rewrites a slot word cannot make a live owner look dead.
//! - the **identity witness**, one byte at `IDENT_BASE` plus a 60-bit digest of
//!   the tag and the identity fields the owner wrote in its slot (pid, uid, start
//!   time, pid namespace). A verdict that overrules a held tag witness with `/proc`
//!   evidence about the recorded pid first checks that this byte is held: the
//!   kernel vouches that the fields are the owner's, not a peer's rewrite.
//!
//! Neither generic Linux byte-range locking nor tmpfs, ext4 or memfd limit lock
//! offsets to the file's `s_maxbytes`: any `l_start + l_len - 1 <= OFFSET_MAX`
//! is accepted (tested below).
//!
//! For heap-backed segments (tests, miri, loom) the same interface is served by an
//! in-process table of atomic owner tokens.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::{Error, Result};
use crate::loom::{Arc, AtomicU64, Ordering};
use crate::segment::owner::OwnerTag;

/// The liveness protocol, in the header's fingerprint: a build that judged a tag
/// by its slot word would take this build's owners for dead, and one without
/// witnesses would be taken for dead by it.
pub(crate) const PROTOCOL: &[u8] = b"liveness 2: slot lock, tag and identity witnesses";

/// Byte offset of lock 0 in the OFD-lock byte space: 1 TiB, beyond any data.
const LOCK_BASE: i64 = 1 << 40;
/// Byte offset of the identity witnesses (see the module docs).
const IDENT_BASE: i64 = 1 << 61;
/// Bits of an identity digest.
pub(crate) const DIGEST_MASK: u64 = (1 << 60) - 1;
/// Byte offset of the tag witnesses (see the module docs).
const TAG_BASE: i64 = 1 << 62;

/// A witness lock (see the module docs): a byte that says, while held, that an
/// attachment is attached.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[doc(hidden)]
pub enum Witness {
    /// The attachment whose owner tag this is.
    Tag(OwnerTag),
    /// The identity fields of slot `slot` as its owner wrote them, as a digest
    /// (`registry::identity_digest`; only the low 60 bits count).
    Identity {
        /// The registry slot.
        slot: u32,
        /// The digest of the owner's tag and identity fields.
        digest: u64,
    },
}

impl Witness {
    /// The byte of the OFD-lock space.
    fn offset(self) -> i64 {
        match self {
            // Tag bits are below 2^62: the byte is in [2^62, i64::MAX].
            Witness::Tag(t) => TAG_BASE + (t.bits() & OwnerTag::MASK) as i64,
            Witness::Identity { digest, .. } => IDENT_BASE + (digest & DIGEST_MASK) as i64,
        }
    }

    /// The registry slot it belongs to.
    fn slot(self) -> u32 {
        match self {
            Witness::Tag(t) => t.slot(),
            Witness::Identity { slot, .. } => slot,
        }
    }

    /// What tells two witnesses of one slot and kind apart (the in-process table).
    fn key(self) -> u64 {
        match self {
            Witness::Tag(t) => t.bits(),
            Witness::Identity { digest, .. } => digest & DIGEST_MASK,
        }
    }

    /// 0 for a tag witness, 1 for an identity witness (the in-process table).
    fn kind(self) -> usize {
        match self {
            Witness::Tag(_) => 0,
            Witness::Identity { .. } => 1,
        }
    }
}

/// A table of liveness locks, as seen by one handle.
#[doc(hidden)]
pub trait LockTable {
    /// Takes lock `i` for this handle without blocking. `Ok(true)` if it is now held
    /// by this handle (including when it already was), `Ok(false)` if another
    /// handle holds it.
    fn try_lock(&self, i: u32) -> Result<bool>;
    /// Releases lock `i` if this handle holds it.
    fn unlock(&self, i: u32);
    /// Whether a handle other than this one holds lock `i`.
    fn held_elsewhere(&self, i: u32) -> Result<bool>;
    /// Whether another handle holds any of the `n` locks from index `i` (one probe
    /// over the range for OFD locks; witnesses are not locks of the table).
    fn any_held_elsewhere(&self, i: u32, n: u32) -> Result<bool>;
    /// Takes witness `w` for this handle without blocking; as
    /// [`try_lock`](Self::try_lock).
    fn try_lock_witness(&self, w: Witness) -> Result<bool>;
    /// Releases witness `w` if this handle holds it.
    fn unlock_witness(&self, w: Witness);
    /// Releases every identity witness this handle holds for slot `slot` (an
    /// attachment holds one; its detach does not trust the segment's fields to
    /// recompute the digest).
    fn unlock_identity_witnesses(&self, slot: u32);
    /// Whether a handle other than this one holds witness `w`.
    fn witness_held_elsewhere(&self, w: Witness) -> Result<bool>;
}

/// OFD locks on one byte per lock, through the given descriptor.
pub(crate) struct OfdLocks<'fd>(pub(crate) BorrowedFd<'fd>);

/// Lock index of the *presence* lock of a System V companion lock file: a shared
/// lock that every handle using the file holds for as long as it has it open, one
/// past the last registry lock (index `MAX_SLOTS`, for slot `MAX_SLOTS - 1`).
/// Whoever deletes the file first takes every lock up to and including this one
/// exclusively ([`OfdLocks::try_lock_through`]), which succeeds only while nobody
/// uses it.
pub(crate) const PRESENCE: u32 = crate::segment::header::MAX_SLOTS + 1;

impl OfdLocks<'_> {
    /// The byte of lock `i`.
    fn index_offset(i: u32) -> i64 {
        LOCK_BASE + i64::from(i)
    }

    /// A request for `len` bytes from `start` (`len` 0: to the end of the space).
    fn flock_at(kind: libc::c_int, start: i64, len: i64) -> libc::flock {
        // SAFETY: libc::flock is a plain C struct for which all-zero is valid.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = start;
        fl.l_len = len;
        fl.l_pid = 0; // required to be 0 for OFD locks
        fl
    }

    /// A request for `len` locks of the table from index `i` on.
    fn flock_range(kind: libc::c_int, i: u32, len: u32) -> libc::flock {
        Self::flock_at(kind, Self::index_offset(i), i64::from(len))
    }

    /// Takes lock `i` *shared* for this handle without blocking: shared holders
    /// coexist, an exclusive holder excludes them. `Ok(false)` if another handle
    /// holds it exclusively.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if `fcntl` fails otherwise.
    pub(crate) fn try_share(&self, i: u32) -> Result<bool> {
        let mut fl = Self::flock_range(libc::F_RDLCK, i, 1);
        match self.fcntl(libc::F_OFD_SETLK, &mut fl) {
            Ok(()) => Ok(true),
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::ACCESS => Ok(false),
            Err(e) => Err(Error::os("fcntl(F_OFD_SETLK, F_RDLCK)", e)),
        }
    }

    /// Whether another handle holds any of the locks `0..end` exclusively (a live
    /// creator's init lock, an attached handle's slot lock), as opposed to shared
    /// locks only.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if `fcntl` fails.
    pub(crate) fn held_exclusively_below(&self, end: u32) -> Result<bool> {
        // A shared request conflicts with exclusive locks only.
        let mut fl = Self::flock_range(libc::F_RDLCK, 0, end);
        self.fcntl(libc::F_OFD_GETLK, &mut fl)
            .map_err(Error::at("fcntl(F_OFD_GETLK)"))?;
        Ok(i32::from(fl.l_type) != libc::F_UNLCK)
    }

    /// Takes every lock `0..=last` exclusively, at once, without blocking:
    /// `Ok(true)` only if no other handle holds any of them (shared or not). On
    /// `Ok(false)` nothing changed (a refused `F_OFD_SETLK` is all or nothing).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if `fcntl` fails otherwise.
    pub(crate) fn try_lock_through(&self, last: u32) -> Result<bool> {
        let mut fl = Self::flock_range(libc::F_WRLCK, 0, last.saturating_add(1));
        match self.fcntl(libc::F_OFD_SETLK, &mut fl) {
            Ok(()) => Ok(true),
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::ACCESS => Ok(false),
            Err(e) => Err(Error::os("fcntl(F_OFD_SETLK, whole table)", e)),
        }
    }

    /// Releases every witness this description holds (what the kernel does when
    /// the description's last reference goes): test support for simulated deaths.
    #[cfg(any(test, feature = "testkit"))]
    pub(crate) fn unlock_all_witnesses(&self) {
        self.unlock_at(IDENT_BASE, 0);
    }

    fn try_lock_at(&self, start: i64) -> Result<bool> {
        let mut fl = Self::flock_at(libc::F_WRLCK, start, 1);
        match self.fcntl(libc::F_OFD_SETLK, &mut fl) {
            Ok(()) => Ok(true),
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::ACCESS => Ok(false),
            Err(e) => Err(Error::os("fcntl(F_OFD_SETLK)", e)),
        }
    }

    fn unlock_at(&self, start: i64, len: i64) {
        let mut fl = Self::flock_at(libc::F_UNLCK, start, len);
        // Unlocking a byte we may not hold cannot fail on a valid descriptor; if it
        // did, the kernel still releases the lock when the descriptor closes.
        let _ = self.fcntl(libc::F_OFD_SETLK, &mut fl);
    }

    fn held_elsewhere_at(&self, start: i64) -> Result<bool> {
        let mut fl = Self::flock_at(libc::F_WRLCK, start, 1);
        self.fcntl(libc::F_OFD_GETLK, &mut fl)
            .map_err(Error::at("fcntl(F_OFD_GETLK)"))?;
        Ok(i32::from(fl.l_type) != libc::F_UNLCK)
    }

    fn fcntl(&self, cmd: libc::c_int, fl: &mut libc::flock) -> rustix::io::Result<()> {
        loop {
            // SAFETY: the descriptor is borrowed and open for the call; `fl` is a
            // valid, exclusively borrowed flock as F_OFD_* commands require.
            let r = unsafe { libc::fcntl(self.0.as_raw_fd(), cmd, fl as *mut libc::flock) };
            if r != -1 {
                return Ok(());
            }
            let errno = rustix::io::Errno::from_raw_os_error(
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            );
            if errno != rustix::io::Errno::INTR {
                return Err(errno);
            }
        }
    }
}

impl LockTable for OfdLocks<'_> {
    fn try_lock(&self, i: u32) -> Result<bool> {
        self.try_lock_at(Self::index_offset(i))
    }

    fn unlock(&self, i: u32) {
        self.unlock_at(Self::index_offset(i), 1);
    }

    fn held_elsewhere(&self, i: u32) -> Result<bool> {
        self.held_elsewhere_at(Self::index_offset(i))
    }

    fn try_lock_witness(&self, w: Witness) -> Result<bool> {
        self.try_lock_at(w.offset())
    }

    fn unlock_witness(&self, w: Witness) {
        self.unlock_at(w.offset(), 1);
    }

    fn unlock_identity_witnesses(&self, _slot: u32) {
        // A description carries one attachment (every attachment opens its own),
        // so its identity witnesses are that attachment's.
        self.unlock_at(IDENT_BASE, DIGEST_MASK as i64 + 1);
    }

    fn witness_held_elsewhere(&self, w: Witness) -> Result<bool> {
        self.held_elsewhere_at(w.offset())
    }

    fn any_held_elsewhere(&self, i: u32, n: u32) -> Result<bool> {
        let mut fl = Self::flock_range(libc::F_WRLCK, i, n.max(1));
        self.fcntl(libc::F_OFD_GETLK, &mut fl)
            .map_err(Error::at("fcntl(F_OFD_GETLK)"))?;
        Ok(i32::from(fl.l_type) != libc::F_UNLCK)
    }
}

/// In-process stand-in for OFD locks, for heap-backed segments: one owner token per
/// lock, 0 meaning free.
#[doc(hidden)]
pub struct MemLocks {
    words: Box<[AtomicU64]>,
    /// Two witnesses per registry slot (tag, identity): only the holder of the
    /// slot's lock takes them, so one entry per slot and kind suffices.
    witnesses: Box<[MemWitness]>,
    next_token: AtomicU64,
}

/// One witness entry: its holder's token (0: free) and which witness it is.
struct MemWitness {
    holder: AtomicU64,
    key: AtomicU64,
}

impl MemLocks {
    /// A table of `n` free locks: the init lock and `n - 1` slot locks, with the
    /// slots' witnesses.
    pub fn new(n: u32) -> Arc<Self> {
        let witnesses = 2 * n.saturating_sub(1) as usize;
        Arc::new(Self {
            words: (0..n).map(|_| AtomicU64::new(0)).collect(),
            witnesses: (0..witnesses)
                .map(|_| MemWitness {
                    holder: AtomicU64::new(0),
                    key: AtomicU64::new(0),
                })
                .collect(),
            next_token: AtomicU64::new(1),
        })
    }

    fn witness(&self, w: Witness) -> Result<&MemWitness> {
        (w.slot() as usize)
            .checked_mul(2)
            .and_then(|i| self.witnesses.get(i + w.kind()))
            .ok_or(Error::InvalidArgument("witness slot out of range"))
    }

    /// A fresh, never-used owner token (one per handle).
    pub fn token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Releases every lock held by `token`: what the kernel does at process exit.
    pub fn release_all(&self, token: u64) {
        for w in self.words.iter() {
            // SYNC: Release pairs with the Acquire CAS in MemHandle::try_lock, so the
            // next holder sees everything the dead holder wrote before "dying".
            let _ = w.compare_exchange(token, 0, Ordering::Release, Ordering::Relaxed);
        }
        for w in self.witnesses.iter() {
            if w.holder.load(Ordering::Relaxed) == token {
                w.key.store(0, Ordering::Relaxed);
                // SYNC: Release pairs with the Acquire loads in
                // MemHandle::witness_held_elsewhere (and the AcqRel CAS of the next
                // holder): whoever sees the entry free also sees the key cleared.
                let _ = w
                    .holder
                    .compare_exchange(token, 0, Ordering::Release, Ordering::Relaxed);
            }
        }
    }
}

/// One handle's view of a [`MemLocks`] table.
#[doc(hidden)]
pub struct MemHandle<'a> {
    /// The shared table.
    pub table: &'a MemLocks,
    /// This handle's owner token.
    pub token: u64,
}

impl LockTable for MemHandle<'_> {
    fn try_lock(&self, i: u32) -> Result<bool> {
        let Some(w) = self.table.words.get(i as usize) else {
            return Err(Error::InvalidArgument("lock index out of range"));
        };
        // SYNC: Acquire pairs with the Release in unlock/release_all: the previous
        // holder's writes are visible to the new one.
        match w.compare_exchange(0, self.token, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => Ok(true),
            Err(cur) => Ok(cur == self.token),
        }
    }

    fn unlock(&self, i: u32) {
        if let Some(w) = self.table.words.get(i as usize) {
            // SYNC: Release pairs with the Acquire CAS in try_lock.
            let _ = w.compare_exchange(self.token, 0, Ordering::Release, Ordering::Relaxed);
        }
    }

    fn held_elsewhere(&self, i: u32) -> Result<bool> {
        let Some(w) = self.table.words.get(i as usize) else {
            return Err(Error::InvalidArgument("lock index out of range"));
        };
        let cur = w.load(Ordering::Acquire);
        Ok(cur != 0 && cur != self.token)
    }

    fn any_held_elsewhere(&self, i: u32, n: u32) -> Result<bool> {
        let held = self
            .table
            .words
            .iter()
            .skip(i as usize)
            .take(n as usize)
            .map(|w| w.load(Ordering::Acquire))
            .any(|cur| cur != 0 && cur != self.token);
        Ok(held)
    }

    fn try_lock_witness(&self, w: Witness) -> Result<bool> {
        let e = self.table.witness(w)?;
        // SYNC: AcqRel: Acquire pairs with the Release that freed the entry (the
        // previous holder's key store is overwritten after it); Release heads the
        // release sequence that readers of `holder` synchronise with.
        match e
            .holder
            .compare_exchange(0, self.token, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => {
                // SYNC: Release pairs with the Acquire load of `key` in
                // witness_held_elsewhere. The witness is taken before the tag is
                // published anywhere (the registry's Release CAS to ACTIVE), so a
                // reader who learned the tag sees this store.
                e.key.store(w.key(), Ordering::Release);
                Ok(true)
            }
            // Re-taking our own witness succeeds, as an OFD lock would.
            Err(cur) => Ok(cur == self.token && e.key.load(Ordering::Acquire) == w.key()),
        }
    }

    fn unlock_witness(&self, w: Witness) {
        let Ok(e) = self.table.witness(w) else {
            return;
        };
        if e.holder.load(Ordering::Relaxed) == self.token
            && e.key.load(Ordering::Relaxed) == w.key()
        {
            e.key.store(0, Ordering::Relaxed);
            // SYNC: Release pairs with the Acquire loads in witness_held_elsewhere
            // and the AcqRel CAS of the next holder.
            let _ = e
                .holder
                .compare_exchange(self.token, 0, Ordering::Release, Ordering::Relaxed);
        }
    }

    fn unlock_identity_witnesses(&self, slot: u32) {
        let Ok(e) = self.table.witness(Witness::Identity { slot, digest: 0 }) else {
            return;
        };
        if e.holder.load(Ordering::Relaxed) == self.token {
            e.key.store(0, Ordering::Relaxed);
            // SYNC: as in unlock_witness.
            let _ = e
                .holder
                .compare_exchange(self.token, 0, Ordering::Release, Ordering::Relaxed);
        }
    }

    fn witness_held_elsewhere(&self, w: Witness) -> Result<bool> {
        let e = self.table.witness(w)?;
        // SYNC: Acquire pairs with the AcqRel CAS of the holder (and the Release
        // that freed it); the key load then sees that holder's key or a later one.
        let holder = e.holder.load(Ordering::Acquire);
        // SYNC: Acquire pairs with the Release key store in try_lock_witness.
        Ok(holder != 0 && holder != self.token && e.key.load(Ordering::Acquire) == w.key())
    }
}

#[cfg(all(test, not(shmkit_loom), not(miri)))]
mod tests {
    use super::*;
    use crate::segment::os::fd;
    use std::os::fd::{AsFd, OwnedFd};

    /// Two descriptions of one file: `(holder, prober)`.
    fn pair(f: OwnedFd) -> (OwnedFd, OwnedFd) {
        let other = fd::reopen(f.as_fd()).unwrap();
        (f, other)
    }

    fn files() -> Vec<(&'static str, OwnedFd)> {
        use rustix::fs::{MemfdFlags, Mode, OFlags};
        let memfd = rustix::fs::memfd_create("shmkit-witness-test", MemfdFlags::CLOEXEC).unwrap();
        let mut v = vec![("memfd", memfd)];
        for (what, dir) in [
            ("/dev/shm", "/dev/shm".into()),
            ("temp dir", std::env::temp_dir()),
        ] {
            let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
            if let Ok(f) = rustix::fs::open(&dir, flags, Mode::from_raw_mode(0o600)) {
                v.push((what, f));
            }
        }
        v
    }

    fn tag(slot: u32, inc: u64) -> OwnerTag {
        OwnerTag::new(slot, inc).unwrap()
    }

    #[test]
    fn the_kernel_takes_witnesses_up_to_the_last_byte_of_the_lock_space() {
        // The extremes of both witness ranges: tag bits all ones put the byte at
        // i64::MAX (OFFSET_MAX), which must lock like any other.
        let extremes = [
            Witness::Tag(tag(0, 4)),
            Witness::Tag(tag(0xffff, !3)),
            Witness::Identity { slot: 0, digest: 0 },
            Witness::Identity {
                slot: 0,
                digest: u64::MAX,
            },
        ];
        assert_eq!(extremes[1].offset(), i64::MAX);
        for (what, f) in files() {
            let (a, b) = pair(f);
            let (a, b) = (OfdLocks(a.as_fd()), OfdLocks(b.as_fd()));
            for w in extremes {
                assert!(a.try_lock_witness(w).unwrap(), "{what}: {w:?}");
                assert!(b.witness_held_elsewhere(w).unwrap(), "{what}: {w:?}");
                assert!(!a.witness_held_elsewhere(w).unwrap(), "{what}: own lock");
                assert!(
                    !b.try_lock_witness(w).unwrap(),
                    "{what}: {w:?} is exclusive"
                );
                a.unlock_witness(w);
                assert!(!b.witness_held_elsewhere(w).unwrap(), "{what}: {w:?}");
            }
            // The ranges do not overlap each other or the index locks.
            assert!(a.try_lock(u32::MAX).unwrap());
            assert!(a.try_lock_witness(extremes[3]).unwrap());
            assert!(b.try_lock_witness(extremes[0]).unwrap(), "{what}");
            assert!(b.try_lock_witness(extremes[2]).unwrap(), "{what}");
            a.unlock_identity_witnesses(0);
            assert!(!b.witness_held_elsewhere(extremes[3]).unwrap(), "{what}");
            assert!(
                b.held_elsewhere(u32::MAX).unwrap(),
                "{what}: index lock kept"
            );
            b.unlock_all_witnesses();
            assert!(!a.witness_held_elsewhere(extremes[0]).unwrap(), "{what}");
        }
    }

    #[test]
    fn a_tag_witness_answers_for_its_tag_only() {
        for (what, f) in files() {
            let (a, b) = pair(f);
            let (a, b) = (OfdLocks(a.as_fd()), OfdLocks(b.as_fd()));
            let mine = tag(3, 0x1234_5678_9ab0);
            assert!(a.try_lock_witness(Witness::Tag(mine)).unwrap());
            assert!(b.witness_held_elsewhere(Witness::Tag(mine)).unwrap());
            // One flipped incarnation bit, or another slot: another byte.
            let flipped = tag(3, 0x1234_5678_9ab0 ^ (1 << 20));
            assert!(
                !b.witness_held_elsewhere(Witness::Tag(flipped)).unwrap(),
                "{what}"
            );
            assert!(
                !b.witness_held_elsewhere(Witness::Tag(tag(4, 0x1234_5678_9ab0)))
                    .unwrap()
            );
        }
    }

    #[test]
    fn the_in_process_table_serves_the_same_witness_semantics() {
        let table = MemLocks::new(3);
        let a = MemHandle {
            table: &table,
            token: table.token(),
        };
        let b = MemHandle {
            table: &table,
            token: table.token(),
        };
        let mine = Witness::Tag(tag(1, 0x40));
        let flipped = Witness::Tag(tag(1, 0x40 ^ (1 << 9)));
        let ident = Witness::Identity {
            slot: 1,
            digest: 99,
        };
        assert!(a.try_lock_witness(mine).unwrap());
        assert!(a.try_lock_witness(mine).unwrap(), "re-taking our own");
        assert!(a.try_lock_witness(ident).unwrap());
        assert!(!b.try_lock_witness(mine).unwrap());
        assert!(b.witness_held_elsewhere(mine).unwrap());
        assert!(!a.witness_held_elsewhere(mine).unwrap(), "our own");
        assert!(!b.witness_held_elsewhere(flipped).unwrap());
        assert!(b.witness_held_elsewhere(ident).unwrap());
        assert!(
            !b.witness_held_elsewhere(Witness::Identity {
                slot: 1,
                digest: 98
            })
            .unwrap()
        );
        a.unlock_identity_witnesses(1);
        assert!(!b.witness_held_elsewhere(ident).unwrap());
        table.release_all(a.token); // "SIGKILL"
        assert!(!b.witness_held_elsewhere(mine).unwrap());
        assert!(b.try_lock_witness(flipped).unwrap());
        assert!(a.witness_held_elsewhere(flipped).unwrap());
        assert!(
            a.try_lock_witness(Witness::Tag(tag(2, 4))).is_err(),
            "no slot 2"
        );
    }
}
