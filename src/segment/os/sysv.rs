//! System V shared memory (`shmget`/`shmat`), as fuzzers use it (AFL++ hands the id
//! to its targets in `__AFL_SHM_ID`).
//!
//! System V segments have no descriptor to lock, so each one gets a companion lock
//! file, `/dev/shm/.shmkit-sysv-<id>.lock`, carrying its liveness locks.
//!
//! # The lock file's own life
//!
//! Two handles that lock *different* files for one segment cannot see each other's
//! locks (a live holder would look dead), so the file is deleted only when provably
//! unused, with the file's own OFD locks as the evidence:
//!
//! - every descriptor a handle keeps on it holds the shared *presence* lock
//!   ([`PRESENCE`]), taken right after opening; the handle then checks that the path
//!   still names the file it locked (else it was deleted in between: open again);
//! - whoever deletes it ([`discard_lock_file`]) first takes every lock of the table,
//!   presence included, exclusively: that succeeds only while no other descriptor
//!   holds any, and while it is held nobody can start using the file. It then
//!   unlinks the path only if the path still names that file.
//!
//! It is deleted by a failed open, by `SegmentOptions::remove`, and by the last
//! handle to detach from a segment that is marked for removal.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::layout::{PAGE_SIZE, align_up};
use crate::segment::locks::{OfdLocks, PRESENCE};
use crate::segment::mapping::{Mapping, Unmap};

/// How many times [`lock_file`] retries (1 ms apart) while a remover holds the lock
/// file or replaces it under us; a remover holds it for two syscalls.
const LOCK_FILE_RETRIES: u32 = 2000;
/// How many times [`discard_lock_file`] tries again (1 ms apart) while others hold
/// only presence locks: an opener on its way to a slot, or the descriptor of a
/// handle just closed that lives on for an instant in a child forked by another
/// thread (until its `exec` closes it).
const DISCARD_RETRIES: u32 = 100;

/// `MADV_POPULATE_WRITE` (Linux 5.14): fault pages in, reporting ENOMEM instead of
/// delivering SIGBUS later.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// What `IPC_STAT` says.
#[derive(Copy, Clone, Debug)]
pub(crate) struct ShmStat {
    pub uid: u32,
    pub mode: u32,
    pub size: u64,
    /// Marked for removal (`IPC_RMID` done, still attached somewhere).
    pub dest: bool,
}

fn errno() -> rustix::io::Errno {
    rustix::io::Errno::from_raw_os_error(
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
    )
}

/// Creates a segment of `size` bytes with exactly `mode`, exclusively (removed
/// again if its mode cannot be set).
pub(crate) fn create(key: Option<i32>, size: u64, mode: u32) -> Result<i32> {
    let size_t = usize::try_from(size).map_err(|_| Error::InvalidSize {
        size,
        reason: "larger than the address space",
    })?;
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | libc::SHM_NORESERVE | (mode & 0o777) as i32;
    // SAFETY: shmget takes plain integers and touches no memory of ours.
    let id = unsafe { libc::shmget(key.unwrap_or(libc::IPC_PRIVATE), size_t, flags) };
    if id < 0 {
        let e = errno();
        return Err(match e {
            rustix::io::Errno::EXIST => {
                Error::AlreadyExists(format!("System V key {:#x}", key.unwrap_or(0)))
            }
            rustix::io::Errno::NOSPC | rustix::io::Errno::NOMEM => Error::NoSpace {
                requested: size,
                available: 0,
            },
            rustix::io::Errno::INVAL => Error::InvalidSize {
                size,
                reason: "refused by shmget (beyond SHMMAX or below SHMMIN)",
            },
            e => Error::os("shmget", e),
        });
    }
    // shmget applies no umask, but set the mode explicitly all the same.
    if let Err(e) = set_mode(id, mode) {
        let _ = remove(id);
        return Err(e);
    }
    Ok(id)
}

/// The id of the segment with `key`.
pub(crate) fn lookup(key: i32) -> Result<i32> {
    // SAFETY: plain integers.
    let id = unsafe { libc::shmget(key, 0, 0) };
    if id < 0 {
        return Err(match errno() {
            rustix::io::Errno::NOENT => Error::NotFound(format!("System V key {key:#x}")),
            rustix::io::Errno::ACCESS => Error::ForeignOwner {
                found: u32::MAX,
                expected: rustix::process::geteuid().as_raw(),
            },
            e => Error::os("shmget", e),
        });
    }
    Ok(id)
}

fn ctl(id: i32, cmd: libc::c_int, ds: &mut libc::shmid_ds, op: &'static str) -> Result<()> {
    // SAFETY: `ds` is a valid, exclusively borrowed shmid_ds for IPC_STAT/IPC_SET.
    let r = unsafe { libc::shmctl(id, cmd, ds) };
    if r < 0 {
        return Err(match errno() {
            rustix::io::Errno::INVAL | rustix::io::Errno::IDRM => {
                Error::NotFound(format!("System V segment id {id}"))
            }
            e => Error::os(op, e),
        });
    }
    Ok(())
}

/// `IPC_STAT`.
pub(crate) fn stat(id: i32) -> Result<ShmStat> {
    // SAFETY: shmid_ds is a plain C struct for which all-zero is valid.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    ctl(id, libc::IPC_STAT, &mut ds, "shmctl(IPC_STAT)")?;
    Ok(ShmStat {
        uid: ds.shm_perm.uid,
        mode: u32::from(ds.shm_perm.mode) & 0o777,
        size: ds.shm_segsz as u64,
        dest: u32::from(ds.shm_perm.mode) & 0o1000 != 0,
    })
}

fn set_mode(id: i32, mode: u32) -> Result<()> {
    // SAFETY: as in `stat`.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    ctl(id, libc::IPC_STAT, &mut ds, "shmctl(IPC_STAT)")?;
    ds.shm_perm.mode = (mode & 0o777) as _;
    ctl(id, libc::IPC_SET, &mut ds, "shmctl(IPC_SET)")
}

/// Marks the segment for removal (it goes away at the last detach; attaching
/// handles keep it). Leaves the lock file to [`discard_lock_file`]: attached handles
/// may still be using it.
pub(crate) fn remove(id: i32) -> Result<()> {
    // SAFETY: IPC_RMID ignores the buffer; a null pointer is allowed.
    let r = unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    if r < 0 {
        return Err(match errno() {
            rustix::io::Errno::INVAL | rustix::io::Errno::IDRM => {
                Error::NotFound(format!("System V segment id {id}"))
            }
            e => Error::os("shmctl(IPC_RMID)", e),
        });
    }
    Ok(())
}

/// Attaches the segment read-write.
pub(crate) fn attach(id: i32, len: u64) -> Result<Mapping> {
    let len = usize::try_from(len).map_err(|_| Error::InvalidSize {
        size: len,
        reason: "larger than the address space",
    })?;
    // SAFETY: a fresh attach at an address of the kernel's choosing; affects no
    // existing memory. Ownership goes to the Mapping, which detaches it.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if p as isize == -1 {
        return Err(match errno() {
            rustix::io::Errno::INVAL | rustix::io::Errno::IDRM => {
                Error::NotFound(format!("System V segment id {id}"))
            }
            e => Error::os("shmat", e),
        });
    }
    let ptr = NonNull::new(p.cast::<u8>()).ok_or(Error::os("shmat", rustix::io::Errno::FAULT))?;
    // SAFETY: just attached, `len` bytes (the caller read the size from IPC_STAT),
    // released by shmdt.
    Ok(unsafe { Mapping::new(ptr, len, Unmap::Shmdt) })
}

/// Attaches the segment read-only, whatever its size (for a look at its first
/// bytes, [`head`]): the mapping covers its size rounded up to whole pages.
pub(crate) fn attach_read_only(id: i32) -> Result<Mapping> {
    let size = stat(id)?.size;
    let len = align_up(size.max(1), PAGE_SIZE)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or(Error::InvalidSize {
            size,
            reason: "larger than the address space",
        })?;
    // SAFETY: a fresh attach at an address of the kernel's choosing; affects no
    // existing memory. Ownership goes to the Mapping, which detaches it.
    let p = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if p as isize == -1 {
        return Err(match errno() {
            rustix::io::Errno::INVAL | rustix::io::Errno::IDRM => {
                Error::NotFound(format!("System V segment id {id}"))
            }
            e => Error::os("shmat(SHM_RDONLY)", e),
        });
    }
    let ptr = NonNull::new(p.cast::<u8>()).ok_or(Error::os("shmat", rustix::io::Errno::FAULT))?;
    // SAFETY: just attached; the kernel maps the size rounded up to pages, which
    // is `len`; released by shmdt.
    Ok(unsafe { Mapping::new(ptr, len, Unmap::Shmdt) })
}

/// The first 8 bytes of a mapping made by [`attach_read_only`] or [`attach`] (a
/// volatile copy: another process may be writing them).
pub(crate) fn head(map: &Mapping) -> [u8; 8] {
    // SAFETY: every System V mapping made here covers at least one page, readable;
    // 8 plain bytes at offset 0 are valid for any bit pattern.
    unsafe { map.ptr().as_ptr().cast::<[u8; 8]>().read_volatile() }
}

/// Faults in `[from, to)` of the mapping so later touches cannot fail.
pub(crate) fn populate(map: &Mapping, from: u64, to: u64) -> Result<()> {
    if to <= from {
        return Ok(());
    }
    let (Ok(from), Ok(to)) = (usize::try_from(from), usize::try_from(to)) else {
        return Err(Error::InvalidArgument(
            "commit range beyond the address space",
        ));
    };
    if to > map.len() {
        return Err(Error::InvalidArgument("commit range beyond the mapping"));
    }
    // SAFETY: the range lies inside our live mapping (checked above);
    // MADV_POPULATE_WRITE only faults pages in, it changes no contents.
    let r = unsafe {
        libc::madvise(
            map.ptr().as_ptr().add(from).cast(),
            to - from,
            MADV_POPULATE_WRITE,
        )
    };
    if r < 0 {
        return match errno() {
            // Kernels before 5.14: nothing to pre-fault with; pages come on touch.
            rustix::io::Errno::INVAL => Ok(()),
            rustix::io::Errno::NOMEM | rustix::io::Errno::NOSPC | rustix::io::Errno::FAULT => {
                Err(Error::NoSpace {
                    requested: (to - from) as u64,
                    available: 0,
                })
            }
            e => Err(Error::os("madvise(MADV_POPULATE_WRITE)", e)),
        };
    }
    Ok(())
}

/// The companion lock file's path.
pub(crate) fn lock_path(id: i32) -> PathBuf {
    PathBuf::from(format!("{}/.shmkit-sysv-{id}.lock", super::fd::SHM_DIR))
}

/// Opens (creating if needed) the companion lock file of segment `id`, refusing a
/// symlink, a file owned by neither us nor the segment's owner, and a file that
/// group or others may write when the segment itself does not let them (unless
/// allowed). A lock file we own gets exactly the segment's read/write bits, so every
/// user who may write the segment may also take its liveness locks.
///
/// The descriptor returned holds the file's presence lock, and the path named that
/// very file once the lock was held: nobody deletes it while the descriptor is open
/// (see the module doc).
pub(crate) fn lock_file(
    id: i32,
    allow_foreign_owner: bool,
    allow_shared_write: bool,
) -> Result<OwnedFd> {
    let seg = stat(id)?;
    let path = lock_path(id);
    for _ in 0..LOCK_FILE_RETRIES {
        let fd = open_lock_file(&path, &seg, allow_foreign_owner, allow_shared_write)?;
        // A remover holding the whole table is about to delete this file; one that
        // deleted it between our open and our lock leaves us a file nobody else
        // will find. Either way: open again.
        if OfdLocks(fd.as_fd()).try_share(PRESENCE)? && still_named(fd.as_fd(), &path)? {
            return Ok(fd);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(Error::os(
        "open(lock file): replaced or held by a remover on every try",
        rustix::io::Errno::AGAIN,
    ))
}

/// One attempt of [`lock_file`]: open or create, then check.
fn open_lock_file(
    path: &Path,
    seg: &ShmStat,
    allow_foreign_owner: bool,
    allow_shared_write: bool,
) -> Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let mode = seg.mode & 0o666;
    let what = path.display().to_string();
    // Open an existing lock file without O_CREAT first: with fs.protected_regular,
    // O_CREAT on another user's file in sticky /dev/shm fails even when it exists.
    let fd = loop {
        let base = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::open(path, base, Mode::empty()) {
            Ok(fd) => break fd,
            Err(rustix::io::Errno::NOENT) => {}
            Err(rustix::io::Errno::LOOP) => return Err(Error::NotRegularFile(what)),
            Err(e) => return Err(Error::os("open(lock file)", e)),
        }
        match rustix::fs::open(
            path,
            base | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(mode),
        ) {
            Ok(fd) => break fd,
            Err(rustix::io::Errno::EXIST) => continue, // created meanwhile: open it
            Err(e) => return Err(Error::os("open(O_CREAT|O_EXCL lock file)", e)),
        }
    };
    let st = super::fd::check_object(fd.as_fd(), &what, true, true)?;
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid == me {
        // O_CREAT applied the umask: set the bits exactly.
        if st.st_mode & 0o777 != mode {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                .map_err(Error::at("fchmod(lock file)"))?;
        }
    } else if st.st_uid != seg.uid && !allow_foreign_owner {
        return Err(Error::ForeignOwner {
            found: st.st_uid,
            expected: me,
        });
    } else if st.st_mode & 0o022 & !seg.mode != 0 && !allow_shared_write {
        return Err(Error::InsecureMode {
            mode: st.st_mode & 0o7777,
        });
    }
    Ok(fd)
}

/// Whether `path` still names the file open as `fd` (and it is not unlinked).
fn still_named(fd: BorrowedFd<'_>, path: &Path) -> Result<bool> {
    let st = rustix::fs::fstat(fd).map_err(Error::at("fstat(lock file)"))?;
    if st.st_nlink == 0 {
        return Ok(false);
    }
    match rustix::fs::lstat(path) {
        Ok(l) => Ok(l.st_dev == st.st_dev && l.st_ino == st.st_ino),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(Error::os("lstat(lock file)", e)),
    }
}

/// A new open file description of the lock file open as `lock` (for a second
/// handle's locks), holding its own presence lock. By descriptor, not by path: the
/// path may name another file by now.
pub(crate) fn reopen_lock_file(lock: BorrowedFd<'_>) -> Result<OwnedFd> {
    let fd = super::fd::reopen(lock)?;
    // `lock` holds the presence lock, so no remover holds the table: this succeeds.
    if !OfdLocks(fd.as_fd()).try_share(PRESENCE)? {
        return Err(Error::os(
            "fcntl(presence lock of a reopened lock file)",
            rustix::io::Errno::AGAIN,
        ));
    }
    Ok(fd)
}

/// Deletes the lock file of segment `id` if it is ours (our uid, a regular file)
/// and nobody uses it: no other open file description holds any of its locks
/// (while others hold presence locks only, it tries again for up to about 100 ms).
/// `own` is the caller's descriptor on it, if any: its own locks do not count, nor
/// do copies of it in forked children; on success it then holds the whole table
/// until it is closed, which the caller does next. Returns whether the file was
/// deleted; a missing file is `Ok(false)`.
///
/// # Errors
///
/// [`Error::Os`] if a syscall fails unexpectedly.
pub(crate) fn discard_lock_file(id: i32, own: Option<BorrowedFd<'_>>) -> Result<bool> {
    use rustix::fs::{Mode, OFlags};
    let path = lock_path(id);
    let opened;
    let fd = match own {
        Some(fd) => fd,
        None => {
            match rustix::fs::open(
                &path,
                OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
                Mode::empty(),
            ) {
                Ok(fd) => opened = fd,
                // Nothing there, or a symlink (never ours: we do not follow it).
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP) => return Ok(false),
                Err(e) => return Err(Error::os("open(lock file to discard)", e)),
            }
            opened.as_fd()
        }
    };
    let st = rustix::fs::fstat(fd).map_err(Error::at("fstat(lock file)"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG
        || st.st_uid != rustix::process::geteuid().as_raw()
    {
        return Ok(false);
    }
    let locks = OfdLocks(fd);
    let mut tries = 0;
    while !locks.try_lock_through(PRESENCE)? {
        tries += 1;
        // An init or slot lock held elsewhere: a live creator or attached handle.
        if tries > DISCARD_RETRIES || locks.held_exclusively_below(PRESENCE)? {
            return Ok(false); // in use
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // We hold every lock: nobody uses the file, and nobody can start to (their
    // presence lock is refused). Only the file we hold is unlinked.
    if !still_named(fd, &path)? {
        return Ok(false);
    }
    match rustix::fs::unlink(&path) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(Error::os("unlink(lock file)", e)),
    }
}

/// At a handle's last detach (its slot released, `lock` its descriptor): deletes the
/// lock file if the segment is marked for removal or gone, and no other handle
/// uses the file. Best effort: a failure leaves the file to `remove`.
pub(crate) fn discard_if_removed(id: i32, lock: BorrowedFd<'_>) {
    let removed = match stat(id) {
        Ok(st) => st.dest,
        Err(Error::NotFound(_)) => true,
        Err(_) => false,
    };
    if removed {
        let _ = discard_lock_file(id, Some(lock));
    }
}

#[cfg(all(test, not(miri), not(shmkit_loom)))]
mod tests {
    use super::*;
    use crate::segment::locks::LockTable;

    /// A fresh private segment and its lock file, both removed on drop.
    struct Fresh(i32);

    impl Fresh {
        fn new() -> Self {
            Fresh(create(None, 64 << 10, 0o600).expect("shmget"))
        }
    }

    impl Drop for Fresh {
        fn drop(&mut self) {
            let _ = remove(self.0);
            let _ = std::fs::remove_file(lock_path(self.0));
        }
    }

    #[test]
    fn a_lock_file_is_discarded_only_once_no_descriptor_uses_it() {
        let seg = Fresh::new();
        let path = lock_path(seg.0);
        let a = lock_file(seg.0, false, false).expect("lock file");
        let b = reopen_lock_file(a.as_fd()).expect("second description");
        // Presence alone keeps it (after a bounded wait for it to go away)...
        assert!(
            !discard_lock_file(seg.0, None).expect("discard"),
            "presence"
        );
        // ...and a slot lock held elsewhere keeps it at once.
        assert!(OfdLocks(b.as_fd()).try_lock(1).expect("slot lock"));
        assert!(
            !discard_lock_file(seg.0, None).expect("discard"),
            "two users"
        );
        assert!(!discard_lock_file(seg.0, Some(a.as_fd())).expect("discard"));
        drop(a);
        assert!(
            !discard_lock_file(seg.0, None).expect("discard"),
            "one user"
        );
        assert!(path.exists());
        // Copies of the caller's own description (dup, or a forked child's) do
        // not count.
        let copy = rustix::io::fcntl_dupfd_cloexec(&b, 0).expect("dup");
        assert!(discard_lock_file(seg.0, Some(b.as_fd())).expect("discard"));
        assert!(!path.exists(), "its last user discards it");
        drop(copy);
        assert!(
            !discard_lock_file(seg.0, None).expect("discard"),
            "nothing left"
        );
    }

    #[test]
    fn a_descriptor_opened_before_a_discard_is_never_kept() {
        let seg = Fresh::new();
        let path = lock_path(seg.0);
        let first = lock_file(seg.0, false, false).expect("lock file");
        drop(first);
        // An opener that has opened the file but not yet taken its presence lock
        // (the instant lock_file covers) holds nothing: a discard goes ahead.
        let stale: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open")
            .into();
        assert!(discard_lock_file(seg.0, None).expect("discard"));
        // Its presence lock succeeds on the unlinked file, which `still_named`
        // catches: lock_file would open again.
        assert!(OfdLocks(stale.as_fd()).try_share(PRESENCE).expect("share"));
        assert!(!still_named(stale.as_fd(), &path).expect("still_named"));
        // What lock_file gives instead is the file the path names.
        let fresh = lock_file(seg.0, false, false).expect("lock file");
        assert!(still_named(fresh.as_fd(), &path).expect("still_named"));
    }

    #[test]
    fn lock_file_waits_out_a_remover_and_returns_the_file_named_after_it() {
        let seg = Fresh::new();
        let path = lock_path(seg.0);
        let remover = lock_file(seg.0, false, false).expect("lock file");
        // The remover holds the whole table (as discard_lock_file does before it
        // unlinks): nobody may start using the file meanwhile.
        assert!(
            OfdLocks(remover.as_fd())
                .try_lock_through(PRESENCE)
                .expect("lock all")
        );
        let id = seg.0;
        let opener = std::thread::spawn(move || lock_file(id, false, false));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::remove_file(&path).expect("unlink");
        drop(remover);
        let got = opener.join().expect("opener thread").expect("lock file");
        assert!(still_named(got.as_fd(), &path).expect("still_named"));
        // And it holds that file's presence lock: nobody can discard it now.
        assert!(!discard_lock_file(seg.0, None).expect("discard"));
        assert!(path.exists());
    }
}
