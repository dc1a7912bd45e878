//! Position-independent references into a segment.

mod offset;
mod tagged;

pub use offset::Offset;
pub use tagged::{AtomicTagged, Tagged};
