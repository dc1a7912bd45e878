//! [`ShmString`]: UTF-8 text in the shared heap.

use crate::{Error, Offset, Result};

use super::vec::{ShmVec, VecHeader};
use crate::alloc::Heap;

/// The header block of a [`ShmString`] in the segment (laid out as a
/// `ShmVec<u8>`'s): what the typed offset from [`ShmString::into_shared`] points
/// at.
pub type StringHeader = VecHeader<Utf8>;

/// Marks a [`StringHeader`]'s bytes as text (checked to be UTF-8 on every read).
#[derive(Debug)]
pub enum Utf8 {}

/// A growable UTF-8 string in the shared heap (a [`ShmVec<u8>`] underneath). Its
/// bytes live in shared memory, so reading it back checks they are still UTF-8.
///
/// # Examples
///
/// ```
/// use shmkit::{SegmentOptions, alloc::Heap, containers::ShmString};
/// let seg = SegmentOptions::heap().create()?;
/// let heap = Heap::attach(&seg)?;
/// let mut s = ShmString::from_str(&heap, "hello")?;
/// s.push_str(", world")?;
/// assert_eq!(s.to_string()?, "hello, world");
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug)]
pub struct ShmString<'h> {
    bytes: ShmVec<'h, u8>,
}

impl<'h> ShmString<'h> {
    /// An empty string.
    ///
    /// # Errors
    ///
    /// As [`Heap::alloc`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// assert!(shmkit::containers::ShmString::new(&heap)?.is_empty());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn new(heap: &'h Heap) -> Result<Self> {
        Ok(Self {
            bytes: ShmVec::new(heap)?,
        })
    }

    /// A copy of `s`.
    ///
    /// # Errors
    ///
    /// As [`Heap::alloc`].
    ///
    /// # Examples
    ///
    /// See [`ShmString`].
    #[allow(clippy::should_implement_trait)] // fallible and heap-bound, unlike FromStr
    pub fn from_str(heap: &'h Heap, s: &str) -> Result<Self> {
        let mut out = Self::new(heap)?;
        out.push_str(s)?;
        Ok(out)
    }

    /// Appends `s`.
    ///
    /// # Errors
    ///
    /// As [`Heap::alloc`].
    ///
    /// # Examples
    ///
    /// See [`ShmString`].
    pub fn push_str(&mut self, s: &str) -> Result<()> {
        self.bytes.extend_from_slice(s.as_bytes())
    }

    /// Length in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// assert_eq!(shmkit::containers::ShmString::from_str(&heap, "hé")?.len(), 3);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it is empty.
    ///
    /// # Examples
    ///
    /// See [`new`](Self::new).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Removes all text.
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let mut s = shmkit::containers::ShmString::from_str(&heap, "x")?;
    /// s.clear();
    /// assert!(s.is_empty());
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// A copy of the text.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the bytes in the segment are not UTF-8 (a peer wrote
    /// into them).
    ///
    /// # Examples
    ///
    /// See [`ShmString`].
    #[allow(clippy::inherent_to_string_shadow_display)] // fallible, no Display
    pub fn to_string(&self) -> Result<String> {
        String::from_utf8(self.bytes.to_vec())
            .map_err(|e| Error::corrupt("ShmString", format!("not UTF-8: {e}")))
    }

    /// The header's offset (see [`ShmVec::offset`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// assert!(shmkit::containers::ShmString::new(&heap)?.offset().get() > 0);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn offset(&self) -> Offset<StringHeader> {
        self.bytes.offset().cast()
    }

    /// Publishes it for another process (see [`ShmVec::into_shared`]).
    ///
    /// # Errors
    ///
    /// As [`ShmVec::into_shared`].
    ///
    /// # Examples
    ///
    /// ```
    /// let seg = shmkit::SegmentOptions::heap().create()?;
    /// let heap = shmkit::alloc::Heap::attach(&seg)?;
    /// let off = shmkit::containers::ShmString::from_str(&heap, "hi")?.into_shared()?;
    /// let s = shmkit::containers::ShmString::from_shared(&heap, off)?;
    /// assert_eq!(s.to_string()?, "hi");
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn into_shared(self) -> Result<Offset<StringHeader>> {
        Ok(self.bytes.into_shared()?.cast())
    }

    /// Takes over a published string (see [`ShmVec::from_shared`]).
    ///
    /// # Errors
    ///
    /// As [`ShmVec::from_shared`].
    ///
    /// # Examples
    ///
    /// See [`into_shared`](Self::into_shared).
    pub fn from_shared(heap: &'h Heap, header: Offset<StringHeader>) -> Result<Self> {
        Ok(Self {
            bytes: ShmVec::from_shared(heap, header.cast())?,
        })
    }
}
