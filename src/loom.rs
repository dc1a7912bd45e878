//! The one door for atomics, `UnsafeCell`, spinning and futex calls.
//!
//! Everything in shmkit that synchronises goes through this module, so that the
//! same code runs on std in production and on [loom] in the model tests
//! (`RUSTFLAGS="--cfg shmkit_loom"`). `clippy.toml` forbids the std atomics and
//! `UnsafeCell` everywhere else.
//!
//! Under loom the futex is a stand-in with two modes: by default `futex_wait`
//! re-checks the word and yields and `futex_wake` does nothing (models with dying
//! threads, whose real waiters rely on timeout slices); after
//! `futex_model::set_blocking` (loom builds only) a waiter sleeps until woken,
//! so a lost wake-up is a deadlock that loom reports.
//!
//! [loom]: https://docs.rs/loom
#![allow(clippy::disallowed_types)]

use std::time::Duration;

pub use std::sync::atomic::Ordering;

#[cfg(shmkit_loom)]
use loom::sync::atomic as imp;
#[cfg(not(shmkit_loom))]
use std::sync::atomic as imp;

macro_rules! atomic {
    ($name:ident, $int:ty) => {
        /// An atomic integer that is std's in production and loom's under `cfg(shmkit_loom)`.
        ///
        /// `#[repr(transparent)]` over the std type, so it has the same size,
        /// alignment and bit validity (production layout asserts hold).
        #[repr(transparent)]
        #[derive(Debug, Default)]
        pub struct $name(imp::$name);

        #[allow(dead_code, reason = "the full atomic API, for every layer")]
        impl $name {
            /// A new atomic with value `v`.
            #[cfg(not(shmkit_loom))]
            pub const fn new(v: $int) -> Self {
                Self(imp::$name::new(v))
            }
            /// A new atomic with value `v`.
            #[cfg(shmkit_loom)]
            pub fn new(v: $int) -> Self {
                Self(imp::$name::new(v))
            }
            /// Loads the value.
            #[inline]
            pub fn load(&self, order: Ordering) -> $int {
                self.0.load(order)
            }
            /// Stores a value.
            #[inline]
            pub fn store(&self, v: $int, order: Ordering) {
                self.0.store(v, order)
            }
            /// Swaps in a value, returning the old one.
            #[inline]
            pub fn swap(&self, v: $int, order: Ordering) -> $int {
                self.0.swap(v, order)
            }
            /// Compare-and-swap.
            ///
            /// # Errors
            ///
            /// The current value when it was not `current`.
            #[inline]
            pub fn compare_exchange(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int> {
                self.0.compare_exchange(current, new, success, failure)
            }
            /// Weak compare-and-swap (may fail spuriously).
            ///
            /// # Errors
            ///
            /// The current value when it was not `current`, or spuriously.
            #[inline]
            pub fn compare_exchange_weak(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int> {
                self.0.compare_exchange_weak(current, new, success, failure)
            }
            /// Adds, returning the old value.
            #[inline]
            pub fn fetch_add(&self, v: $int, order: Ordering) -> $int {
                self.0.fetch_add(v, order)
            }
            /// Subtracts, returning the old value.
            #[inline]
            pub fn fetch_sub(&self, v: $int, order: Ordering) -> $int {
                self.0.fetch_sub(v, order)
            }
            /// Bitwise or, returning the old value.
            #[inline]
            pub fn fetch_or(&self, v: $int, order: Ordering) -> $int {
                self.0.fetch_or(v, order)
            }
            /// Bitwise and, returning the old value.
            #[inline]
            pub fn fetch_and(&self, v: $int, order: Ordering) -> $int {
                self.0.fetch_and(v, order)
            }
            /// Applies `f` until it returns `None` or the CAS succeeds.
            ///
            /// # Errors
            ///
            /// The last value seen, when `f` returned `None`.
            #[inline]
            pub fn fetch_update(
                &self,
                set: Ordering,
                fetch: Ordering,
                f: impl FnMut($int) -> Option<$int>,
            ) -> Result<$int, $int> {
                self.0.fetch_update(set, fetch, f)
            }
            /// Maximum, returning the old value.
            #[inline]
            pub fn fetch_max(&self, v: $int, order: Ordering) -> $int {
                self.0.fetch_max(v, order)
            }
        }
    };
}

atomic!(AtomicU32, u32);
atomic!(AtomicU64, u64);

/// An `UnsafeCell` with loom's closure API (`with`, `with_mut`), so loom can check
/// every access to data that atomics publish.
#[cfg(not(shmkit_loom))]
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(shmkit_loom))]
#[allow(dead_code, reason = "for the queue and map layers")]
impl<T> UnsafeCell<T> {
    /// A new cell.
    pub const fn new(v: T) -> Self {
        Self(std::cell::UnsafeCell::new(v))
    }
    /// Runs `f` with a shared pointer to the contents.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    /// Runs `f` with a mutable pointer to the contents.
    #[inline]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(shmkit_loom)]
pub use loom::cell::UnsafeCell;

/// A fence (std's or loom's).
#[inline]
#[allow(dead_code, reason = "for the lock and queue layers")]
pub fn fence(order: Ordering) {
    imp::fence(order)
}

#[cfg(shmkit_loom)]
pub(crate) use loom::sync::Arc;
#[cfg(not(shmkit_loom))]
pub(crate) use std::sync::Arc;

/// A hint that we are in a spin loop.
#[inline]
#[allow(dead_code, reason = "for the lock and queue layers")]
pub fn spin_loop() {
    #[cfg(not(shmkit_loom))]
    std::hint::spin_loop();
    #[cfg(shmkit_loom)]
    loom::thread::yield_now();
}

/// Give the CPU away for a moment (or, under loom, let another thread run).
#[inline]
#[allow(dead_code, reason = "for the lock and queue layers")]
pub fn yield_now() {
    #[cfg(not(shmkit_loom))]
    std::thread::yield_now();
    #[cfg(shmkit_loom)]
    loom::thread::yield_now();
}

/// Sleep on `word` while it still holds `expected`, for at most `timeout`.
///
/// Uses the *shared* futex (no `FUTEX_PRIVATE_FLAG`), so a wake from another
/// process reaches us. Spurious returns are allowed: callers re-check their
/// condition in a loop.
#[cfg(all(not(shmkit_loom), not(miri)))]
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    use rustix::thread::futex;
    let ts = timeout.map(|t| rustix::time::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    // EAGAIN (value changed), ETIMEDOUT and EINTR all mean "re-check", which
    // every caller does; nothing else can fail for a valid, aligned word.
    let _ = futex::wait(&word.0, futex::Flags::empty(), expected, ts.as_ref());
}

/// Wake up to `count` sleepers on `word`, in any process; returns how many
/// were woken (0 if the call failed).
#[cfg(all(not(shmkit_loom), not(miri)))]
pub fn futex_wake(word: &AtomicU32, count: u32) -> u32 {
    use rustix::thread::futex;
    // FUTEX_WAKE reads its count as a C int: u32::MAX would be -1, which wakes
    // exactly one sleeper; "all" is i32::MAX.
    let count = count.min(i32::MAX as u32);
    // The only failure for a valid, aligned word is EFAULT, impossible for a
    // reference; a failed wake cannot corrupt anything, waiters time out.
    futex::wake(&word.0, futex::Flags::empty(), count).map_or(0, |n| n as u32)
}

// Under miri the same two futex calls go through `libc::syscall`: rustix 1's
// wrappers pass FUTEX_WAKE's unused `val2` argument through an integer-to-pointer
// cast (`futex_val2` in its libc backend), which miri's strict-provenance mode
// (`-Zmiri-strict-provenance`, what .ci/run uses) refuses; with these, every
// pointer in the crate is checked under strict provenance. Same arguments, same
// semantics, same (ignored) errors as the rustix calls above.

/// [`futex_wait`] for miri (see the comment above).
#[cfg(all(not(shmkit_loom), miri))]
#[allow(unsafe_code)]
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long, // < 10^9
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a live, aligned u32 (a reference), with a timeout that
    // is null or points to a timespec alive for the call.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.0.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
        )
    };
}

/// [`futex_wake`] for miri (see the comment above).
#[cfg(all(not(shmkit_loom), miri))]
#[allow(unsafe_code)]
pub fn futex_wake(word: &AtomicU32, count: u32) -> u32 {
    let count = count.min(i32::MAX as u32) as i32;
    // SAFETY: FUTEX_WAKE on a live, aligned u32 (a reference).
    let r = unsafe { libc::syscall(libc::SYS_futex, word.0.as_ptr(), libc::FUTEX_WAKE, count) };
    u32::try_from(r).unwrap_or(0)
}

/// Loom stand-in: re-check, then yield (or, in the blocking model, sleep until
/// woken; see [`futex_model`]).
#[cfg(shmkit_loom)]
pub fn futex_wait(word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
    if futex_model::blocking() {
        futex_model::wait(word, expected);
    } else if word.load(Ordering::Acquire) == expected {
        loom::thread::yield_now();
    }
}

/// Loom stand-in: waking is implicit in `futex_wait`'s yield (or, in the blocking
/// model, wakes every sleeper on the word).
#[cfg(shmkit_loom)]
pub fn futex_wake(word: &AtomicU32, _count: u32) -> u32 {
    if futex_model::blocking() {
        futex_model::wake(word);
    }
    0 // the model does not count
}

/// The blocking futex model for loom: a waiter sleeps (ignoring its timeout) until
/// a wake on its word, so a lost wake-up becomes a deadlock that loom reports.
/// Only for models where nobody dies: real waiters rely on their timeout slices
/// to notice dead holders. Switched on per test binary with [`futex_model::set_blocking`].
#[cfg(shmkit_loom)]
pub mod futex_model {
    #![allow(clippy::disallowed_types)]
    use std::collections::HashMap;

    static BLOCKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    struct Table {
        generations: loom::sync::Mutex<HashMap<usize, u64>>,
        woken: loom::sync::Condvar,
    }

    loom::lazy_static! {
        static ref TABLE: Table = Table {
            generations: loom::sync::Mutex::new(HashMap::new()),
            woken: loom::sync::Condvar::new(),
        };
    }

    /// Turns the blocking model on or off for this test binary.
    pub fn set_blocking(on: bool) {
        BLOCKING.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn blocking() -> bool {
        BLOCKING.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn key(word: &super::AtomicU32) -> usize {
        word as *const super::AtomicU32 as usize
    }

    pub(crate) fn wait(word: &super::AtomicU32, expected: u32) {
        let mut g = TABLE.generations.lock().unwrap();
        // The table lock makes check-and-sleep atomic against `wake`, as the
        // kernel's futex bucket lock does.
        if word.load(super::Ordering::SeqCst) != expected {
            return;
        }
        let start = g.get(&key(word)).copied().unwrap_or(0);
        while g.get(&key(word)).copied().unwrap_or(0) == start {
            g = TABLE.woken.wait(g).unwrap();
        }
    }

    pub(crate) fn wake(word: &super::AtomicU32) {
        let mut g = TABLE.generations.lock().unwrap();
        *g.entry(key(word)).or_insert(0) += 1;
        TABLE.woken.notify_all();
    }
}

/// A number no other call in this process returns (for identities only: it
/// synchronises nothing, so loom need not model it and a plain std counter serves
/// in both builds).
pub fn unique_id() -> u64 {
    static NEXT: imp_std::AtomicU64 = imp_std::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// std's atomics in both builds (for [`unique_id`] only).
use std::sync::atomic as imp_std;

/// A point where a loom model may stop the calling thread as if its process were
/// killed there (see `crash` under loom). Always false outside loom (compiled away).
#[cfg(not(shmkit_loom))]
#[inline(always)]
pub fn crash_point() -> bool {
    false
}

/// A point where a loom model may stop the calling thread as if its process were
/// killed there (see [`crash`]).
#[cfg(shmkit_loom)]
pub fn crash_point() -> bool {
    crash::hit()
}

/// Simulated kill -9 for loom models: a thread arms a budget of crash points; the
/// point that exhausts it (and every later one) says "dead", and the code under
/// test returns at once, leaving shared memory as a killed process would (guards
/// it holds are forgotten, not released).
#[cfg(shmkit_loom)]
pub mod crash {
    use std::cell::Cell;

    loom::thread_local! {
        static BUDGET: Cell<Option<u32>> = Cell::new(None);
    }

    /// The calling thread dies at its `n`-th crash point from now (0: the next).
    pub fn arm(n: u32) {
        BUDGET.with(|b| b.set(Some(n)));
    }

    /// Whether the calling thread has died.
    pub fn dead() -> bool {
        BUDGET.with(|b| b.get() == Some(u32::MAX))
    }

    pub(crate) fn hit() -> bool {
        BUDGET.with(|b| match b.get() {
            None => false,
            Some(0) | Some(u32::MAX) => {
                b.set(Some(u32::MAX));
                true
            }
            Some(n) => {
                b.set(Some(n - 1));
                false
            }
        })
    }
}
