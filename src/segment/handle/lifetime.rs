//! How long a segment lives: keeping it past the last handle, removing it now,
//! detaching.

use std::sync::Arc as StdArc;

use crate::error::{Error, Result};
use crate::loom::Ordering;
use crate::segment::names;
use crate::segment::options::Spec;
use crate::segment::os::{fd, sysv};
use crate::segment::store::Store;

use super::Segment;

impl Segment {
    /// Keeps a created named segment after this handle is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// let name = shmkit::unique_name("doc-persist-")?;
    /// let mut seg = shmkit::SegmentOptions::posix(&name).create()?;
    /// seg.persist();
    /// drop(seg);
    /// assert!(shmkit::SegmentOptions::posix(&name).open().is_ok());
    /// shmkit::SegmentOptions::posix(&name).remove()?;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn persist(&mut self) {
        self.inner.persist.store(1, Ordering::Relaxed);
    }

    /// Removes the segment's name *now* and stays attached: "remove now, stay
    /// attached".
    ///
    /// From this call on, opening the name (POSIX name, file path, System V key or
    /// id) fails with [`Error::NotFound`], and a POSIX or file name can be created
    /// anew. Every handle already attached (this one, its clones, other handles and
    /// other processes') keeps a fully working mapping until it detaches; the memory
    /// goes away with the last detach, however that process ends (a POSIX or file
    /// object is unlinked and lives while mapped; a System V segment is marked with
    /// `shmctl(IPC_RMID)`, which Linux applies at its last `shmdt`). So nothing is
    /// leaked when every process is then killed: what a fuzzing harness wants once
    /// its targets have attached (or right after creating a segment that its forked
    /// children inherit), since a SIGKILLed parent never runs its cleanup. A System
    /// V segment's companion lock file goes with the last handle's detach.
    ///
    /// A POSIX or file name is removed only while it still names this segment.
    /// Dropping the creating handle afterwards removes nothing more.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the name is already removed (or names another object
    /// now); [`Error::InvalidArgument`] for kinds without a name (memfd, anonymous,
    /// heap); [`Error::ForkedHandle`] in a forked child that has not called
    /// [`after_fork`](Self::after_fork); [`Error::Os`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shmkit::{Error, SegmentOptions};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// let seg = SegmentOptions::sysv_private().max_size(1 << 20).create()?;
    /// let word = seg.find_or_create::<AtomicU64>("word", ())?;
    /// let id = seg.sysv_id().unwrap();
    /// seg.remove_now()?;
    /// assert!(matches!(SegmentOptions::sysv_id(id).open(), Err(Error::NotFound(_))));
    /// // Still attached, still usable, until the last handle detaches.
    /// word.store(7, Ordering::Relaxed);
    /// assert_eq!(word.load(Ordering::Relaxed), 7);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn remove_now(&self) -> Result<()> {
        self.check_pid()?;
        match (&self.inner.spec, &self.inner.store) {
            (_, Store::SysV { id, .. }) => {
                if sysv::stat(*id)?.dest {
                    return Err(Error::NotFound(format!(
                        "System V segment id {id} (already removed)"
                    )));
                }
                sysv::remove(*id)
            }
            (Spec::Posix(name), _) => self.unlink_own(&fd::shm_path(names::validate(name)?), name),
            (Spec::File(path), _) => self.unlink_own(path, &path.display().to_string()),
            _ => Err(Error::InvalidArgument(
                "this kind of segment has no name to remove",
            )),
        }
    }

    /// Unlinks `path` if it still names this handle's object.
    pub(super) fn unlink_own(&self, path: &std::path::Path, what: &str) -> Result<()> {
        let gone = || Error::NotFound(format!("{what} (no longer names this segment)"));
        let ident = self.inner.ident.ok_or_else(gone)?;
        if fd::unlink_if_same(path, ident)? {
            Ok(())
        } else {
            Err(gone())
        }
    }

    /// Detaches explicitly (as dropping the last clone does), reporting whether the
    /// slot was released by this call: `false` if it was no longer ours, or if other
    /// clones of this attachment (in heaps, object handles) still hold it, which
    /// then detach when the last of them is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let peer = seg.try_clone()?;
    /// assert!(peer.detach());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn detach(self) -> bool {
        match StdArc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                let ours = inner.release_slot();
                drop(inner);
                ours
            }
            // Other clones keep the attachment (and the slot).
            Err(_) => false,
        }
    }
}
