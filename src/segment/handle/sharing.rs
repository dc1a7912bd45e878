//! Sharing a segment beyond this handle: its descriptor (and passing it over a
//! Unix socket), second attachments, and handles after `fork`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc as StdArc;

use crate::error::{Error, Result};
use crate::loom::{AtomicU64, Ordering};
use crate::segment::options::Spec;
use crate::segment::os::{fd, memfd};
use crate::segment::proc;
use crate::segment::store::Store;

use super::{Inner, Segment};

impl Segment {
    /// The descriptor of a descriptor-backed segment (posix, file, memfd, anonymous).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::memfd().create()?;
    /// assert!(seg.as_fd().is_some());
    /// assert!(shmkit::SegmentOptions::heap().create()?.as_fd().is_none());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.inner.store {
            Store::Fd(f) => Some(f.as_fd()),
            _ => None,
        }
    }

    /// Sends a memfd or anonymous segment's descriptor over a connected Unix socket.
    ///
    /// # Errors
    ///
    /// [`Error::ForkedHandle`] in a forked child that has not called
    /// [`after_fork`](Self::after_fork).
    /// [`Error::InvalidArgument`] for other kinds; [`Error::Os`] if `sendmsg` fails.
    ///
    /// # Examples
    ///
    /// See [`SegmentOptions::open_fd`](crate::SegmentOptions::open_fd).
    pub fn send_fd(&self, socket: &impl AsFd) -> Result<()> {
        self.check_pid()?;
        match (&self.inner.spec, &self.inner.store) {
            (Spec::Memfd | Spec::Anonymous, Store::Fd(f)) => {
                // A fresh description: ours carries our liveness locks, which must
                // not live on in a message in flight or in the receiver.
                let fresh = fd::reopen(f.as_fd())?;
                memfd::send_fd(socket.as_fd(), fresh.as_fd())
            }
            _ => Err(Error::InvalidArgument(
                "only memfd segments are sent as descriptors",
            )),
        }
    }

    /// A second handle on the same segment in this process, with its own registry
    /// slot (and, for descriptor-backed kinds, its own open file description).
    ///
    /// # Errors
    ///
    /// [`Error::RegistryFull`], [`Error::Os`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::memfd().create()?;
    /// let other = seg.try_clone()?;
    /// std::thread::spawn(move || assert!(other.committed() > 0)).join().unwrap();
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn try_clone(&self) -> Result<Segment> {
        self.check_pid()?;
        let store = self.inner.store.duplicate()?;
        Segment::attach(
            self.inner.map.clone(),
            store,
            self.inner.spec.clone(),
            self.inner.ident,
            self.inner.fields,
            false,
        )
    }

    /// Makes a handle inherited across `fork` usable in the child: gives the child
    /// its own open file description (so the parent's liveness locks are not shared
    /// any more) and its own registry slot. A no-op in the process that made the
    /// handle. The child never removes the segment on drop.
    ///
    /// Other clones of the inherited attachment (heaps and object handles made
    /// before the fork, or held by threads the child does not have) are left
    /// acting for nobody: their lock calls say `NotAttached`. Find the objects
    /// again through this handle after the call.
    ///
    /// # Errors
    ///
    /// [`Error::RegistryFull`], [`Error::Os`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let mut seg = shmkit::SegmentOptions::anonymous().create()?;
    /// // SAFETY: the child only calls after_fork and exits.
    /// if unsafe { libc::fork() } == 0 {
    ///     seg.after_fork()?;      // now the child has its own slot
    ///     std::process::exit(0);
    /// }
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn after_fork(&mut self) -> Result<()> {
        if self.inner.pid == proc::self_pid() {
            return Ok(());
        }
        if self.inner.disowned.load(Ordering::Relaxed) != 0 {
            return Err(Error::InvalidArgument(
                "another handle's after_fork already took this attachment over in this \
                 process: use that handle (or clone it)",
            ));
        }
        if matches!(self.inner.store, Store::Heap { .. }) {
            return Err(Error::Unsupported(
                "a heap-backed segment is not shared across fork",
            ));
        }
        if StdArc::strong_count(&self.inner) != 1 {
            return self.after_fork_shared();
        }
        let inner = self.inner_mut();
        let store = inner.store.duplicate()?;
        // The inherited mapping was made through the parent's open file description
        // and holds a reference to it, which would keep the parent's OFD locks (its
        // slot's liveness lock) held for as long as we live, descriptor closed or
        // not: map the same range again, in place, through our own description.
        if let Store::Fd(f) = &store {
            fd::remap_in_place(f.as_fd(), &inner.map)?;
        }
        // Our copy of the inherited descriptor goes once our own claim holds: until
        // then it keeps the parent's open file description (and a dead parent's
        // slot lock) in place, so that the kernel never shows the segment as
        // unattached in between (a `replace_stale` could take it then). Closing it
        // leaves the parent's description to the parent alone.
        let old = std::mem::replace(&mut inner.store, store);
        // The parent's slot is the parent's: forget it before anything can fail, so
        // that our Drop never releases it. Until our own claim succeeds the handle
        // names nobody (locks refuse it) and still fails the pid check.
        inner.slot = u32::MAX;
        inner.incarnation = 0;
        inner.created = false;
        inner.persist.store(1, Ordering::Relaxed);
        // The parent's holds on directory objects are the parent's.
        *inner.local.get_mut().unwrap_or_else(|e| e.into_inner()) = Default::default();
        // So are the locks its threads held (no guard of ours can borrow this
        // record now: we hold the only handle, mutably).
        inner.held = crate::segment::owner::held_record(&inner.map);
        let claimed = self.claim_slot();
        drop(old);
        claimed?;
        let inner = self.inner_mut();
        inner.pid = proc::self_pid();
        inner.fork_gen = crate::segment::os::fork::generation();
        Ok(())
    }

    /// `after_fork` while other clones of the inherited attachment exist (heaps and
    /// object handles made before the fork, or held by threads that do not exist
    /// in the child): they keep the inherited attachment, acting for nobody; this
    /// handle gets a new one.
    #[cold]
    pub(super) fn after_fork_shared(&mut self) -> Result<()> {
        let old = &self.inner;
        let store = old.store.duplicate()?;
        if let Store::Fd(f) = &store {
            fd::remap_in_place(f.as_fd(), &old.map)?;
        }
        let mut seg = Segment {
            inner: StdArc::new(Inner {
                map: old.map.clone(),
                store,
                spec: old.spec.clone(),
                ident: old.ident,
                fields: old.fields,
                slot: u32::MAX,
                incarnation: 0,
                pid: proc::self_pid(),
                created: false,
                persist: crate::loom::AtomicU32::new(1),
                crashed: crate::loom::AtomicU32::new(0),
                fork_gen: crate::segment::os::fork::generation(),
                disowned: crate::loom::AtomicU32::new(0),
                local: std::sync::Mutex::new(crate::segment::Local::default()),
                // The same mapping of the same object: what it backed is backed.
                ensured: AtomicU64::new(old.ensured.load(Ordering::Acquire)),
                refused: AtomicU64::new(old.refused.load(Ordering::Relaxed)),
                held: crate::segment::owner::held_record(&old.map),
            }),
        };
        seg.claim_slot()?;
        // Only now (our own slot is claimed, through our own descriptor): the
        // inherited descriptor would keep the parent's open file description
        // (its liveness locks) alive for as long as a stale clone lives here.
        self.inner.disowned.store(1, Ordering::Relaxed);
        self.inner.store.disown()?;
        *self = seg;
        Ok(())
    }

    /// Refuses identity-bearing operations on a handle inherited across `fork`
    /// until the child called [`after_fork`](Self::after_fork).
    pub(super) fn check_pid(&self) -> Result<()> {
        if self.inner.pid != proc::self_pid() {
            return Err(Error::ForkedHandle {
                parent: self.inner.pid,
            });
        }
        Ok(())
    }
}

/// Receives a segment descriptor sent with [`Segment::send_fd`]; open it with
/// [`SegmentOptions::open_fd`](crate::SegmentOptions::open_fd).
///
/// # Errors
///
/// [`Error::Os`] if `recvmsg` fails; [`Error::InvalidArgument`] if the message
/// carried no descriptor or the socket closed.
///
/// # Examples
///
/// See [`SegmentOptions::open_fd`](crate::SegmentOptions::open_fd).
pub fn recv_fd(socket: &impl AsFd) -> Result<OwnedFd> {
    memfd::recv_fd(socket.as_fd())
}
