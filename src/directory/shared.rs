//! [`Shared<T>`]: a handle on an object found by name.
#![allow(unsafe_code)]

use std::fmt;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;

use super::entry::{self, REMOVED};
use super::table::Locked;
use crate::alloc::Heap;
use crate::object::ShmObject;
use crate::segment::Segment;
use crate::{Offset, Result};

/// A handle on an object of a segment's directory, found or created by name
/// ([`Segment::find_or_create`]). It derefs to `&T` and carries its segment, so
/// `counter.lock()` or `queue.push(x)` need no context argument.
///
/// A handle **owns** what it needs (a clone of the [`Segment`]), so it can live in a
/// struct of the user's next to the segment, be sent to other threads (it is
/// `Send + Sync` where `T` is) and be cloned cheaply.
///
/// # Lifetime of the object
///
/// Dropping a handle frees nothing that was not removed: objects live until
/// [`Directory::remove`](super::Directory::remove)d. The directory records which
/// processes (attachments) hold handles, so a `remove` while others hold handles
/// only takes the name away (it can be created anew at once); the memory is freed
/// when the last holder drops its last handle, or dies (its hold is then reclaimed
/// with [`Directory::reclaim`](super::Directory::reclaim) or by the next directory
/// change that looks at the entry).
///
/// # Examples
///
/// ```
/// use shmkit::{SegmentOptions, Shared};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// struct Client {
///     seg: shmkit::Segment,
///     hits: Shared<AtomicU64>,
/// }
/// let seg = SegmentOptions::heap().create()?;
/// let hits = seg.find_or_create::<AtomicU64>("hits", ())?;
/// let c = Client { seg: seg.clone(), hits };
/// c.hits.fetch_add(1, Ordering::Relaxed);
/// assert_eq!(c.seg.find::<AtomicU64>("hits")?.load(Ordering::Relaxed), 1);
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct Shared<T: ShmObject> {
    seg: Segment,
    entry: u64,
    ptr: NonNull<T>,
    config: T::Config,
    name: Arc<str>,
}

// SAFETY: the handle is a shared reference to a `T` (ShmShared: Sync) plus a
// Segment (Send + Sync); sending or sharing it is sending or sharing `&T`.
unsafe impl<T: ShmObject + Sync> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: ShmObject + Sync> Sync for Shared<T> {}

impl<T: ShmObject> Shared<T> {
    /// A handle on the checked entry at `entry`, whose object is at `ptr`; the
    /// caller has recorded this attachment's hold.
    pub(super) fn new(
        seg: &Segment,
        entry: u64,
        ptr: NonNull<T>,
        config: T::Config,
        name: &str,
    ) -> Self {
        Shared {
            seg: seg.clone(),
            entry,
            ptr,
            config,
            name: name.into(),
        }
    }

    /// The segment the object lives in.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let e = seg.find_or_create::<shmkit::sync::Event>("e", shmkit::sync::EventKind::AutoReset)?;
    /// assert_eq!(e.segment().slot(), seg.slot());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn segment(&self) -> &Segment {
        &self.seg
    }

    /// The object's name.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let c = seg.find_or_create::<shmkit::sync::Condvar>("ready", ())?;
    /// assert_eq!(c.name(), "ready");
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration the object was built with.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let s = seg.find_or_create::<shmkit::sync::Semaphore>("slots", 4)?;
    /// assert_eq!(*s.config(), 4);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn config(&self) -> &T::Config {
        &self.config
    }

    /// The object's offset in the segment (the same in every process).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::AtomicU32;
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let a = seg.find_or_create::<AtomicU32>("a", ())?;
    /// assert_eq!(seg.find::<AtomicU32>("a")?.offset(), a.offset());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn offset(&self) -> Offset<T> {
        let base = self.seg.as_ptr() as usize;
        Offset::new((self.ptr.as_ptr() as usize - base) as u64)
    }

    /// The object, for calls that take a context explicitly (the low-level
    /// `lock(cx)` forms).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let m = seg.find_or_create::<shmkit::sync::Mutex<u32>>("m", ())?;
    /// *m.raw().lock(m.segment()).unwrap() = 3;
    /// assert_eq!(*m.lock().unwrap(), 3);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn raw(&self) -> &T {
        self
    }

    /// The object's pointer, with the provenance of the whole block (objects
    /// larger than their type reach past `&T` through it).
    pub(crate) fn as_non_null(&self) -> NonNull<T> {
        self.ptr
    }

    /// Gives up this attachment's hold on the entry (the last handle's drop).
    fn release_hold(&self) -> Result<()> {
        let me = self.seg.owner_tag();
        {
            let mut local = self.seg.local().lock().unwrap_or_else(|e| e.into_inner());
            match local.holds.get_mut(&self.entry) {
                Some(c) if *c > 1 => {
                    *c -= 1;
                    return Ok(());
                }
                Some(_) => {}
                None => return Ok(()),
            }
        }
        let heap = Heap::attach(&self.seg)?;
        let mut d = Locked::lock(&heap)?;
        {
            let mut local = self.seg.local().lock().unwrap_or_else(|e| e.into_inner());
            let Some(c) = local.holds.get_mut(&self.entry) else {
                return Ok(());
            };
            *c -= 1;
            if *c > 0 {
                return Ok(());
            }
            local.holds.remove(&self.entry);
        }
        let mut e = entry::read(&heap, self.entry)?;
        d.remove_holder(&mut e, me)?;
        if e.head.state == REMOVED && d.live_holders(&e)? == 0 {
            d.unlink_removed(e.off)?;
        }
        Ok(())
    }
}

impl<T: ShmObject> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // The block stays allocated while this attachment holds the entry, which it
        // does for as long as any of its handles lives.
        // SAFETY: `ptr` was checked (inside its entry's live block, aligned, the
        // entry's identity T's) at the handle's making; T: ShmShared.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ShmObject> Clone for Shared<T> {
    fn clone(&self) -> Self {
        let mut local = self.seg.local().lock().unwrap_or_else(|e| e.into_inner());
        *local.holds.entry(self.entry).or_insert(0) += 1;
        drop(local);
        Shared {
            seg: self.seg.clone(),
            entry: self.entry,
            ptr: self.ptr,
            config: self.config,
            name: self.name.clone(),
        }
    }
}

impl<T: ShmObject> Drop for Shared<T> {
    fn drop(&mut self) {
        if super::crash::dead() {
            return; // a dead process releases nothing
        }
        // An error leaves our hold recorded: the object then lives until this
        // attachment ends (its hold is a dead one's from then on), never less.
        let _ = self.release_hold();
    }
}

impl<T: ShmObject> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("type", &T::type_name())
            .field("offset", &self.offset().get())
            .field("config", &self.config)
            .finish()
    }
}
