//! Segments backed by a file descriptor: named POSIX shm (a file in `/dev/shm`, as
//! glibc and musl implement `shm_open`), plain files, and memfds.
#![allow(unsafe_code)]

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;

use rustix::fs::{self, FallocateFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::segment::mapping::{Mapping, Unmap};

/// Where POSIX shared-memory objects live on Linux.
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// `/dev/shm/<bare name>`.
pub(crate) fn shm_path(bare: &str) -> std::path::PathBuf {
    Path::new(SHM_DIR).join(bare)
}

/// Who and what an opened object is.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Identity {
    pub dev: u64,
    pub ino: u64,
}

/// Opens (or, with `create`, exclusively creates) `path`, never following a symlink.
/// A created object gets exactly `mode`, set with `fchmod` so the umask cannot widen
/// or narrow it.
pub(crate) fn open(path: &Path, create: bool, mode: u32, what: &str) -> Result<OwnedFd> {
    let mut flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    if create {
        flags |= OFlags::CREATE | OFlags::EXCL;
    }
    let fd = fs::open(path, flags, Mode::from_raw_mode(mode & 0o777)).map_err(|e| match e {
        Errno::EXIST => Error::AlreadyExists(what.to_owned()),
        Errno::NOENT => Error::NotFound(what.to_owned()),
        // O_NOFOLLOW on a symlink gives ELOOP; on a fifo or device, RDWR may block or
        // succeed, which the fstat check below refuses.
        Errno::LOOP | Errno::ISDIR | Errno::NXIO => Error::NotRegularFile(what.to_owned()),
        Errno::NOSPC => Error::NoSpace {
            requested: 0,
            available: 0,
        },
        e => Error::os(
            if create {
                "open(O_CREAT|O_EXCL)"
            } else {
                "open"
            },
            e,
        ),
    })?;
    if create {
        if let Err(e) = fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777)) {
            let _ = fs::unlink(path); // we just created it exclusively
            return Err(Error::os("fchmod", e));
        }
    }
    Ok(fd)
}

/// Refuses what is not a regular file, what another uid owns and what group or
/// others may write, unless allowed.
pub(crate) fn check_object(
    fd: BorrowedFd<'_>,
    what: &str,
    allow_foreign_owner: bool,
    allow_shared_write: bool,
) -> Result<fs::Stat> {
    let st = fs::fstat(fd).map_err(Error::at("fstat"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::NotRegularFile(what.to_owned()));
    }
    let me = rustix::process::geteuid().as_raw();
    if !allow_foreign_owner && st.st_uid != me {
        return Err(Error::ForeignOwner {
            found: st.st_uid,
            expected: me,
        });
    }
    if !allow_shared_write && st.st_mode & 0o022 != 0 {
        return Err(Error::InsecureMode {
            mode: st.st_mode & 0o7777,
        });
    }
    Ok(st)
}

/// Current size of the object.
pub(crate) fn size(fd: BorrowedFd<'_>) -> Result<u64> {
    Ok(fs::fstat(fd).map_err(Error::at("fstat"))?.st_size as u64)
}

/// Identity (device, inode) and link count.
pub(crate) fn identity(fd: BorrowedFd<'_>) -> Result<(Identity, u64)> {
    let st = fs::fstat(fd).map_err(Error::at("fstat"))?;
    Ok((
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
        },
        st.st_nlink,
    ))
}

/// Sets the (sparse) size: reserves the address range, allocates nothing.
pub(crate) fn set_size(fd: BorrowedFd<'_>, len: u64) -> Result<()> {
    fs::ftruncate(fd, len).map_err(|e| nospace_or(fd, e, len, "ftruncate"))
}

/// Allocates backing store for `[0, len)` so that touching it can never SIGBUS.
pub(crate) fn commit(fd: BorrowedFd<'_>, from: u64, to: u64) -> Result<()> {
    loop {
        match fs::fallocate(fd, FallocateFlags::KEEP_SIZE, from, to - from) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(nospace_or(fd, e, to - from, "fallocate")),
        }
    }
}

fn nospace_or(fd: BorrowedFd<'_>, e: Errno, requested: u64, op: &'static str) -> Error {
    if e == Errno::NOSPC || e == Errno::FBIG {
        let available = fs::fstatvfs(fd)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(0);
        Error::NoSpace {
            requested,
            available,
        }
    } else {
        Error::os(op, e)
    }
}

/// Maps `[0, len)` of `fd` shared, read-write.
pub(crate) fn map(fd: BorrowedFd<'_>, len: u64) -> Result<Mapping> {
    let len = usize::try_from(len).map_err(|_| Error::InvalidSize {
        size: len,
        reason: "larger than the address space",
    })?;
    // SAFETY: a fresh mapping (null hint) of a descriptor we hold open; no existing
    // memory is affected. Ownership goes to the Mapping, which munmaps it.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            fd,
            0,
        )
    }
    .map_err(Error::at("mmap"))?;
    let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::os("mmap", Errno::FAULT))?;
    // SAFETY: just mapped with munmap as its release, `len` bytes.
    Ok(unsafe { Mapping::new(ptr, len, Unmap::Munmap) })
}

/// Maps `fd` again over exactly the range of `map`, in place: the same object
/// through another open file description, so every byte keeps its address and
/// value, and the old description loses the mapping's reference to it. The new view
/// is made elsewhere first and then moved over the old one with `mremap`, which
/// replaces it atomically (a failing `MAP_FIXED` could leave a hole instead).
pub(crate) fn remap_in_place(fd: BorrowedFd<'_>, map: &Mapping) -> Result<()> {
    let fresh = self::map(fd, map.len() as u64)?;
    // SAFETY: moving our own `fresh` view (same object, same offset, same length)
    // over `map`'s range replaces it atomically: references into `map` stay valid
    // with the same contents; `map` keeps owning the range; `fresh` is forgotten.
    unsafe {
        rustix::mm::mremap_fixed(
            fresh.ptr().as_ptr().cast(),
            fresh.len(),
            map.len(),
            rustix::mm::MremapFlags::MAYMOVE,
            map.ptr().as_ptr().cast(),
        )
    }
    .map_err(Error::at("mremap(MREMAP_FIXED)"))?;
    std::mem::forget(fresh);
    Ok(())
}

/// Reads the 8 magic bytes at offset 0 without mapping (zeros if shorter).
pub(crate) fn read_magic(fd: BorrowedFd<'_>) -> Result<[u8; 8]> {
    let mut buf = [0u8; 8];
    let n = rustix::io::pread(fd, &mut buf, 0).map_err(Error::at("pread"))?;
    Ok(if n == 8 { buf } else { [0; 8] })
}

/// Writes the 8 magic bytes at offset 0 (the in-place creator's first write, so a
/// half-made object is recognisably ours).
pub(crate) fn write_magic(fd: BorrowedFd<'_>, magic: [u8; 8]) -> Result<()> {
    let n = rustix::io::pwrite(fd, &magic, 0).map_err(|e| nospace_or(fd, e, 8, "pwrite"))?;
    if n != 8 {
        return Err(Error::os("pwrite", Errno::IO));
    }
    Ok(())
}

/// Reads the 4-byte state word at offset 8 without mapping (for reclaim checks).
pub(crate) fn read_state(fd: BorrowedFd<'_>) -> Result<u32> {
    let mut buf = [0u8; 4];
    let n = rustix::io::pread(fd, &mut buf, 8).map_err(Error::at("pread"))?;
    Ok(if n == 4 { u32::from_ne_bytes(buf) } else { 0 })
}

/// Unlinks `path` only if it still names the object `id`.
pub(crate) fn unlink_if_same(path: &Path, id: Identity) -> Result<bool> {
    match fs::lstat(path) {
        Ok(st) if st.st_dev == id.dev && st.st_ino == id.ino => match fs::unlink(path) {
            Ok(()) | Err(Errno::NOENT) => Ok(true),
            Err(e) => Err(Error::os("unlink", e)),
        },
        Ok(_) | Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(Error::os("lstat", e)),
    }
}

/// Unlinks `path`.
pub(crate) fn unlink(path: &Path, what: &str) -> Result<()> {
    fs::unlink(path).map_err(|e| match e {
        Errno::NOENT => Error::NotFound(what.to_owned()),
        e => Error::os("unlink", e),
    })
}

/// Points the descriptor number `fd` at `/dev/null`: the number stays valid (its
/// owner closes it as usual) but no longer refers to the object's open file
/// description, so it holds none of that description's OFD locks alive. For a
/// handle inherited across `fork` that the child cannot drop.
pub(crate) fn disown(fd: BorrowedFd<'_>) -> Result<()> {
    use std::os::fd::{AsRawFd, IntoRawFd};
    let null = fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(Error::at("open /dev/null"))?;
    let null = null.into_raw_fd();
    // SAFETY: dup3 only changes what the number `fd` (owned by a live OwnedFd,
    // which keeps ownership of the number) refers to; `null` is ours and closed
    // right after.
    let r = unsafe { libc::dup3(null, fd.as_raw_fd(), libc::O_CLOEXEC) };
    let err = std::io::Error::last_os_error();
    // SAFETY: `null` is a descriptor we opened and nothing else owns.
    unsafe { libc::close(null) };
    if r < 0 {
        return Err(Error::os(
            "dup3",
            Errno::from_io_error(&err).unwrap_or(Errno::IO),
        ));
    }
    Ok(())
}

/// A new open file description for the same object (for a new handle's locks).
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    fs::open(path.as_str(), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(Error::at("reopen /proc/self/fd"))
}

/// An unnamed regular file in `dir` (`O_TMPFILE`) with exactly `mode`, or `None`
/// if the file system does not support unnamed files.
pub(crate) fn open_unnamed(dir: &Path, mode: u32) -> Result<Option<OwnedFd>> {
    match fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode & 0o777),
    ) {
        Ok(fd) => {
            fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777)).map_err(Error::at("fchmod"))?;
            Ok(Some(fd))
        }
        Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => Ok(None),
        Err(Errno::NOENT) => Err(Error::NotFound(dir.display().to_string())),
        Err(Errno::NOSPC) => Err(Error::NoSpace {
            requested: 0,
            available: 0,
        }),
        Err(e) => Err(Error::os("open(O_TMPFILE)", e)),
    }
}

/// Gives the unnamed file `fd` the name `path`, atomically: fails with
/// [`Error::AlreadyExists`] if anything (a symlink included) has that name.
pub(crate) fn link_unnamed(fd: BorrowedFd<'_>, path: &Path, what: &str) -> Result<()> {
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    fs::linkat(
        fs::CWD,
        proc_path.as_str(),
        fs::CWD,
        path,
        fs::AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(|e| match e {
        Errno::EXIST => Error::AlreadyExists(what.to_owned()),
        // ENOENT here means /proc is missing (or the directory vanished), not that
        // our segment was reclaimed: report it as the OS error it is.
        Errno::NOSPC => Error::NoSpace {
            requested: 0,
            available: 0,
        },
        e => Error::os("linkat(/proc/self/fd)", e),
    })
}
