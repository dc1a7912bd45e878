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
//! For heap-backed segments (tests, miri, loom) the same interface is served by an
//! in-process table of atomic owner tokens.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::{Error, Result};
use crate::loom::{Arc, AtomicU64, Ordering};

/// Byte offset of lock 0 in the OFD-lock byte space: 1 TiB, beyond any data.
const LOCK_BASE: i64 = 1 << 40;

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
    /// over the range for OFD locks).
    fn any_held_elsewhere(&self, i: u32, n: u32) -> Result<bool>;
}

/// OFD locks on one byte per lock, through the given descriptor.
pub(crate) struct OfdLocks<'fd>(pub(crate) BorrowedFd<'fd>);

/// Lock index of the *presence* lock of a System V companion lock file: a shared
/// lock that every handle using the file holds for as long as it has it open, one
/// past the last registry lock (index `MAX_SLOTS`, for slot `MAX_SLOTS - 1`). Whoever deletes the file first
/// takes every lock up to and including this one exclusively
/// ([`OfdLocks::try_lock_through`]), which succeeds only while nobody uses it.
pub(crate) const PRESENCE: u32 = crate::segment::header::MAX_SLOTS + 1;

impl OfdLocks<'_> {
    fn flock(kind: libc::c_int, i: u32) -> libc::flock {
        Self::flock_range(kind, i, 1)
    }

    /// A request for `len` locks from index `i` on.
    fn flock_range(kind: libc::c_int, i: u32, len: u32) -> libc::flock {
        // SAFETY: libc::flock is a plain C struct for which all-zero is valid.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = LOCK_BASE + i64::from(i);
        fl.l_len = i64::from(len);
        fl.l_pid = 0; // required to be 0 for OFD locks
        fl
    }

    /// Takes lock `i` *shared* for this handle without blocking: shared holders
    /// coexist, an exclusive holder excludes them. `Ok(false)` if another handle
    /// holds it exclusively.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if `fcntl` fails otherwise.
    pub(crate) fn try_share(&self, i: u32) -> Result<bool> {
        let mut fl = Self::flock(libc::F_RDLCK, i);
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
        let mut fl = Self::flock(libc::F_WRLCK, i);
        match self.fcntl(libc::F_OFD_SETLK, &mut fl) {
            Ok(()) => Ok(true),
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::ACCESS => Ok(false),
            Err(e) => Err(Error::os("fcntl(F_OFD_SETLK)", e)),
        }
    }

    fn unlock(&self, i: u32) {
        let mut fl = Self::flock(libc::F_UNLCK, i);
        // Unlocking a byte we may not hold cannot fail on a valid descriptor; if it
        // did, the kernel still releases the lock when the descriptor closes.
        let _ = self.fcntl(libc::F_OFD_SETLK, &mut fl);
    }

    fn held_elsewhere(&self, i: u32) -> Result<bool> {
        let mut fl = Self::flock(libc::F_WRLCK, i);
        self.fcntl(libc::F_OFD_GETLK, &mut fl)
            .map_err(Error::at("fcntl(F_OFD_GETLK)"))?;
        Ok(i32::from(fl.l_type) != libc::F_UNLCK)
    }

    fn any_held_elsewhere(&self, i: u32, n: u32) -> Result<bool> {
        let mut fl = Self::flock(libc::F_WRLCK, i);
        fl.l_len = i64::from(n.max(1));
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
    next_token: AtomicU64,
}

impl MemLocks {
    /// A table of `n` free locks.
    pub fn new(n: u32) -> Arc<Self> {
        Arc::new(Self {
            words: (0..n).map(|_| AtomicU64::new(0)).collect(),
            next_token: AtomicU64::new(1),
        })
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
}
