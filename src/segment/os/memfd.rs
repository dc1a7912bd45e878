//! memfd segments: anonymous, passed to other processes as a descriptor over a Unix
//! socket (`SCM_RIGHTS`) or inherited across `fork`.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::error::{Error, Result};

/// Seals every shmkit memfd carries once sized: its size can never change again, so
/// no peer can truncate it under a mapping (which would SIGBUS the others).
pub(crate) const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A new memfd that allows sealing.
pub(crate) fn create(debug_name: &str) -> Result<OwnedFd> {
    rustix::fs::memfd_create(debug_name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(Error::at("memfd_create"))
}

/// Adds [`REQUIRED_SEALS`].
pub(crate) fn seal(fd: BorrowedFd<'_>) -> Result<()> {
    rustix::fs::fcntl_add_seals(fd, REQUIRED_SEALS).map_err(Error::at("fcntl(F_ADD_SEALS)"))
}

/// Checks that `fd` is a memfd carrying [`REQUIRED_SEALS`].
pub(crate) fn check_seals(fd: BorrowedFd<'_>) -> Result<()> {
    let found = rustix::fs::fcntl_get_seals(fd).map_err(|e| match e {
        rustix::io::Errno::INVAL => Error::SealsMissing {
            found: 0,
            required: REQUIRED_SEALS.bits(),
        },
        e => Error::os("fcntl(F_GET_SEALS)", e),
    })?;
    if !found.contains(REQUIRED_SEALS) {
        return Err(Error::SealsMissing {
            found: found.bits(),
            required: REQUIRED_SEALS.bits(),
        });
    }
    Ok(())
}

/// Sends `fd` over the connected Unix socket `sock`, with one byte of payload.
pub(crate) fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(Error::InvalidArgument(
            "SCM_RIGHTS control buffer too small",
        ));
    }
    let payload = [b'S'];
    loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(&payload)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::os("sendmsg(SCM_RIGHTS)", e)),
        }
    }
}

/// Receives one descriptor sent by [`send_fd`].
pub(crate) fn recv_fd(sock: BorrowedFd<'_>) -> Result<OwnedFd> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut payload = [0u8; 1];
    let msg = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut payload)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::os("recvmsg(SCM_RIGHTS)", e)),
        }
    };
    if msg.bytes == 0 {
        return Err(Error::InvalidArgument(
            "socket closed before a descriptor arrived",
        ));
    }
    let mut received = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for fd in fds {
                // Keep the first, close any extra a peer sent.
                if received.is_none() {
                    received = Some(fd);
                }
            }
        }
    }
    received.ok_or(Error::InvalidArgument("message carried no descriptor"))
}
