//! System V shared memory (`shmget`/`shmat`), as fuzzers use it (AFL++ hands the id
//! to its targets in `__AFL_SHM_ID`).
//!
//! System V segments have no descriptor to lock, so each one gets a companion lock
//! file, `/dev/shm/.shmkit-sysv-<id>.lock`, carrying its liveness locks.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::ptr::NonNull;

use crate::error::{Error, Result};
use crate::segment::mapping::{Mapping, Unmap};

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

/// Marks the segment for removal (it goes away at the last detach).
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
    let _ = std::fs::remove_file(lock_path(id));
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
pub(crate) fn lock_file(
    id: i32,
    allow_foreign_owner: bool,
    allow_shared_write: bool,
) -> Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let seg = stat(id)?;
    let mode = seg.mode & 0o666;
    let path = lock_path(id);
    let what = path.display().to_string();
    // Open an existing lock file without O_CREAT first: with fs.protected_regular,
    // O_CREAT on another user's file in sticky /dev/shm fails even when it exists.
    let fd = loop {
        let base = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::open(&path, base, Mode::empty()) {
            Ok(fd) => break fd,
            Err(rustix::io::Errno::NOENT) => {}
            Err(rustix::io::Errno::LOOP) => return Err(Error::NotRegularFile(what)),
            Err(e) => return Err(Error::os("open(lock file)", e)),
        }
        match rustix::fs::open(
            &path,
            base | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(mode),
        ) {
            Ok(fd) => break fd,
            Err(rustix::io::Errno::EXIST) => continue, // created meanwhile: open it
            Err(e) => return Err(Error::os("open(O_CREAT|O_EXCL lock file)", e)),
        }
    };
    let st = super::fd::check_object(std::os::fd::AsFd::as_fd(&fd), &what, true, true)?;
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
