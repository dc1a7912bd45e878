//! The operating-system door: every syscall that makes, maps, sizes or removes a
//! segment lives below this module.
//!
//! One implementation per kind of segment. Linux only: other targets fail to compile
//! with a message from the crate root.

pub(crate) mod fd;
pub(crate) mod fork;
pub(crate) mod heap;
pub(crate) mod memfd;
pub(crate) mod sysv;
