//! Noticing `fork` without a syscall on the hot path: a process-wide generation
//! counter that a `pthread_atfork` child handler bumps. A handle records the
//! generation it was made in; a forked child sees a different one and knows that
//! its inherited handle must go through `after_fork` before it may act for itself.
#![allow(unsafe_code)]
#![allow(clippy::disallowed_types)] // process-local, never in a segment nor in a loom model

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

extern "C" fn in_child() {
    // Async-signal-safe: one atomic increment.
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The current fork generation (registering the handler on first use).
pub(crate) fn generation() -> u64 {
    #[cfg(not(miri))]
    REGISTER.call_once(|| {
        // SAFETY: registers a child handler that only increments an atomic, which
        // is async-signal-safe as a post-fork child handler must be. A failure
        // (ENOMEM) leaves fork unnoticed here; the pid checks still catch it.
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
    });
    #[cfg(miri)]
    REGISTER.call_once(|| {});
    GENERATION.load(Ordering::Relaxed)
}

/// The current generation, cheaply (the handler is registered by then).
#[inline]
pub(crate) fn current() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}
