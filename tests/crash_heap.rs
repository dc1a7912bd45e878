//! Real processes killed with SIGKILL while they allocate, free and hand off blocks
//! of the shared heap: whatever a death leaves, `reclaim_dead` must give back
//! everything the dead held privately, `verify` must find nothing wrong, and no
//! block may ever be handed out twice.
//!
//! The parent creates a 64 MiB POSIX segment, attaches a [`Heap`] and allocates a
//! *control block* in it (published, so it is nobody's private block) holding: a
//! stop flag, a global serial counter, shared counters, per worker index a
//! heartbeat, a "doing" word and two hand-off records, and the *mailbox*: an array
//! of [`MAILBOX`] words, each empty (0) or the key (serial and offset) of a
//! published block. [`WORKERS`] worker processes (this test binary, re-executed, at
//! nice 10) open the segment by name, attach, and find the control block by its
//! offset (an environment variable). Each loops on random operations:
//!
//! - **alloc** a block (sizes log-uniform 8 B – 64 KiB, plus 1 % of 1 – 3 MiB; a
//!   tenth with an alignment up to 4096) and **stamp** it: its serial (unique, from
//!   the shared counter) and a checksum binding serial, offset and usable size in
//!   the first 16 bytes, and words derived from it in the middle and at the end.
//!   The worker keeps it (at most [`MAX_LOCAL`] blocks);
//! - **free** one of its blocks, after checking its stamp;
//! - **send**: take a new or kept block, pick an empty mailbox slot, record the
//!   block's key in its `sending` record, `publish` the block (before linking it,
//!   as the ownership rules require), CAS the key into the slot (if every slot got
//!   taken meanwhile, `adopt` it back), clear the record;
//! - **receive**: find a full slot, record its key in the `receiving` record, CAS
//!   the slot to 0, `adopt` the block (it must succeed: the block was published and
//!   only we took it out), clear the record, check the stamp against the key's
//!   serial, then free the block or keep it;
//! - **realloc** a kept block (stamp checked before, the serial must move along,
//!   then a new stamp), check a kept block's stamp, `flush` (one time in 2 000);
//!   and every 0.1 – 1 s a pass of `trim` or `reclaim_dead` (by time, so that debug
//!   and release builds see them about as often), so that victims also die inside
//!   those.
//!
//! A stamp that does not match (someone else wrote into a block we hold: a double
//! allocation, or a block freed under us), an alloc returning a block we hold, or
//! an unexpected error from the heap is reported loudly: the worker prints a
//! `SHMKIT:FAIL` line and exits with code [`EXIT_STAMP`] or [`EXIT_HEAP_ERROR`],
//! which fails the test.
//!
//! Every 50 – 200 ms the parent SIGKILLs a random worker, reaps it, reads what it
//! was doing and its hand-off records (then clears them) and starts a
//! replacement. One round in [`RECLAIMER_KILL_EVERY`], it then asks another worker
//! for a `reclaim_dead` pass (which finds the victim's blocks) and kills that one
//! too, at a random moment of the pass: a survivor that dies while reclaiming. Then
//! the parent — a survivor, while the other workers keep running — frees the dead
//! registry slots and runs `reclaim_dead` (every owner it reclaims from must be a
//! killed worker) and `verify`, which must be clean and quiescent, with no dead
//! owner left holding owned or cached bytes. Every live worker's heartbeat must
//! move each round (one that does not is a hang, named with what it was doing), and
//! a watchdog aborts the test if no round completes for a minute or the run
//! exceeds its bound.
//!
//! At the end the workers are stopped gracefully (they check and free their blocks
//! and drop their handles): a last `reclaim_dead` must find nothing. The parent
//! drains the mailbox (adopt, check the stamp, free). What is still `Shared` then
//! can only be a block whose hand-off a kill interrupted between `publish` and the
//! link (sender) or between the unlink and `adopt` (receiver): the ownership rules
//! accept that leak ("leaks, never frees a live block"). Each must be named by a
//! dead worker's record (key and stamp matching), and together with the control
//! block they must account for every shared byte left, exactly. The parent adopts,
//! checks and frees them, frees the control block, and the heap must be back to its
//! starting `used` bytes, with no shared bytes, no owner holding anything, and
//! `verify` clean.
//!
//! `cargo test` runs [`DEFAULT_ROUNDS`] rounds (one kill each, two in the rounds
//! that kill a reclaimer); set `SHMKIT_CRASH_ROUNDS` for long runs, e.g.
//! `SHMKIT_CRASH_ROUNDS=10000 cargo test --release --test crash_heap -- --nocapture`.
//!
//! The test binary re-executes itself: `child_main` (ignored) reads its role from
//! `SHMKIT_CHILD_ROLE`, the segment name from `SHMKIT_CHILD_TARGET`, the control
//! block's offset from `SHMKIT_HEAP_CONTROL` and its worker index from
//! `SHMKIT_HEAP_WORKER`. A worker leaves at once when its stdin reaches end-of-file
//! (the parent is gone), so none outlives the test binary.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::child::{ROLE, TARGET, env_u64, say};
use common::crash::{self, Rng, WorkerProcess, mix};
use common::{PATIENCE, shm_path};
use shmkit::alloc::{BlockState, Heap, Report};
use shmkit::{Error, OwnerTag, SegmentOptions};

const CONTROL: &str = "SHMKIT_HEAP_CONTROL";
const INDEX: &str = "SHMKIT_HEAP_WORKER";

/// Rounds (kills) under plain `cargo test`.
const DEFAULT_ROUNDS: u64 = 200;
const WORKERS: usize = 4;
const SEGMENT_SIZE: u64 = 64 << 20;
/// Registry slots: us, the workers, a replacement and the dead awaiting reclaim.
const SLOTS: u32 = 16;
/// Mailbox slots.
const MAILBOX: usize = 32;
/// Blocks a worker keeps at most.
const MAX_LOCAL: usize = 48;
/// Each worker runs `trim` or `reclaim_dead` once every `RARE_MS.0..RARE_MS.1`
/// milliseconds.
const RARE_MS: (u64, u64) = (100, 1000);
/// One round in `RECLAIMER_KILL_EVERY` also kills the survivor that reclaims the
/// victim's blocks, inside its `reclaim_dead`.
const RECLAIMER_KILL_EVERY: u64 = 4;
/// The parent kills a worker every `KILL_MS.0..=KILL_MS.1` milliseconds.
const KILL_MS: (u64, u64) = (50, 200);
/// A worker's exit code for a stamp mismatch (a double allocation, or a block
/// freed or overwritten under its holder).
const EXIT_STAMP: i32 = 86;
/// A worker's exit code for an unexpected heap error.
const EXIT_HEAP_ERROR: i32 = 87;
/// The watchdog aborts if no round completes for a minute, or if the test runs
/// longer than this plus a second per round.
const BASE_BOUND: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------
// The control block, in the heap.
// ---------------------------------------------------------------------------------

/// The words of one worker index (the replacement of a killed worker reuses them,
/// after the parent has read and cleared them).
#[repr(C)]
struct WorkerWords {
    /// Loop iterations: a worker whose heartbeat does not move is stuck.
    beat: AtomicU64,
    /// What it is doing (one of [`DOING`]), read once it is dead.
    doing: AtomicU64,
    /// Key of the block being sent: set before `publish`, cleared once linked (or
    /// adopted back).
    sending: AtomicU64,
    /// Key of the block being received: set before the unlinking CAS, cleared once
    /// adopted.
    receiving: AtomicU64,
    /// Set by the parent: run `reclaim_dead` now (the worker clears it).
    request: AtomicU64,
    /// `reclaim_dead` passes begun by the worker.
    passes: AtomicU64,
}

/// Shared counters (approximate: a worker killed between an operation and its
/// count misses one).
const ALLOCS: usize = 0;
const FREES: usize = 1;
/// Allocations of 1 MiB or more.
const BIG_ALLOCS: usize = 2;
/// Blocks linked into the mailbox.
const SENT: usize = 3;
/// Blocks taken out of the mailbox and adopted.
const RECEIVED: usize = 4;
/// Sends whose slot got taken: the block was adopted back.
const BOUNCED: usize = 5;
const REALLOCS: usize = 6;
/// Allocations refused with `OutOfMemory` (the worker frees half its blocks).
const OOM: usize = 7;
const W_RECLAIMS: usize = 8;
const W_RECLAIM_BLOCKS: usize = 9;
const W_RECLAIM_BYTES: usize = 10;
const W_TRIMS: usize = 11;
const W_TRIM_PAGES: usize = 12;
const FLUSHES: usize = 13;
const STAMP_CHECKS: usize = 14;
/// Failures reported by workers (must stay 0).
const FAILURES: usize = 15;
/// Completed `reclaim_dead` passes by workers that returned blocks, and the
/// nanoseconds they took.
const W_BUSY_RECLAIMS: usize = 16;
const W_BUSY_RECLAIM_NS: usize = 17;
const COUNTERS: usize = 18;

#[repr(C)]
struct Control {
    /// Non-zero: workers free their blocks and leave.
    stop: AtomicU64,
    /// The last serial handed out (serials start at 1).
    serial: AtomicU64,
    counters: [AtomicU64; COUNTERS],
    workers: [WorkerWords; WORKERS],
    /// 0 or the key of a published block.
    mailbox: [AtomicU64; MAILBOX],
}

fn zero() -> AtomicU64 {
    AtomicU64::new(0)
}

impl Control {
    fn new() -> Self {
        Control {
            stop: zero(),
            serial: zero(),
            counters: std::array::from_fn(|_| zero()),
            workers: std::array::from_fn(|_| WorkerWords {
                beat: zero(),
                doing: zero(),
                sending: zero(),
                receiving: zero(),
                request: zero(),
                passes: zero(),
            }),
            mailbox: std::array::from_fn(|_| zero()),
        }
    }

    fn count(&self, c: usize) {
        self.counters[c].fetch_add(1, Ordering::Relaxed);
    }

    fn add(&self, c: usize, n: u64) {
        self.counters[c].fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self, c: usize) -> u64 {
        self.counters[c].load(Ordering::Relaxed)
    }
}

/// The control block at `off`, which must stay allocated while the reference is
/// used (the parent frees it only after every worker has left).
fn control(heap: &Heap, off: u64) -> &Control {
    let size = heap
        .usable_size(off)
        .expect("the control block is allocated");
    assert!(
        size >= size_of::<Control>() as u64,
        "control block too small"
    );
    let p = heap
        .ptr(off)
        .expect("the control block is allocated")
        .as_ptr();
    assert_eq!(
        p.align_offset(align_of::<Control>()),
        0,
        "control block alignment"
    );
    // SAFETY: the block is allocated (checked above), large and aligned enough, was
    // initialised by the parent before any worker learned its offset, and holds
    // only atomics (any bit pattern is valid, shared access is fine). It is freed
    // only after every worker has left.
    unsafe { &*p.cast::<Control>() }
}

/// What a worker is doing, by value of its `doing` word.
const IDLE: u64 = 0;
const ALLOCATING: u64 = 1;
const FREEING: u64 = 2;
/// From recording the key to linking it (the publish → link window inside).
const SENDING: u64 = 3;
/// From recording the key to adopting the block (the unlink → adopt window).
const RECEIVING: u64 = 4;
const REALLOCATING: u64 = 5;
const FLUSHING: u64 = 6;
const TRIMMING: u64 = 7;
const RECLAIMING: u64 = 8;
/// Freeing its blocks after the stop flag (never killed then).
const STOPPING: u64 = 9;
const DOING: [&str; 10] = [
    "idle or stamping",
    "in alloc",
    "in free",
    "sending",
    "receiving",
    "in realloc",
    "in flush",
    "in trim",
    "in reclaim_dead",
    "stopping",
];

// ---------------------------------------------------------------------------------
// Blocks, keys and stamps.
// ---------------------------------------------------------------------------------

/// A block a worker holds, as it stamped it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Block {
    off: u64,
    serial: u64,
    usable: u64,
}

/// Bits of a key holding `offset / 16` (offsets up to 256 MiB).
const KEY_OFF_BITS: u32 = 24;

/// The mailbox word of a block: its serial and offset (unique per block
/// incarnation, so a slot never goes A → B → A).
fn key(b: &Block) -> u64 {
    assert!(
        b.off % 16 == 0 && b.off >> 4 < 1 << KEY_OFF_BITS && b.serial < 1 << (64 - KEY_OFF_BITS),
        "block {b:?} does not fit a key"
    );
    b.serial << KEY_OFF_BITS | b.off >> 4
}

fn key_off(k: u64) -> u64 {
    (k & ((1 << KEY_OFF_BITS) - 1)) << 4
}

fn key_serial(k: u64) -> u64 {
    k >> KEY_OFF_BITS
}

/// The stamp of a block: (byte offset in the block, word) pairs. The serial and a
/// checksum of (serial, offset, usable size) lead; blocks of 32 bytes or more end
/// with a word derived from it, and blocks of 64 or more carry one in the middle.
fn stamp_words(b: &Block) -> impl Iterator<Item = (u64, u64)> {
    let check = mix(b.serial ^ b.off.rotate_left(21) ^ b.usable.rotate_left(43));
    let n = match b.usable {
        0..32 => 2,
        32..64 => 3,
        _ => 4,
    };
    [
        (0, b.serial),
        (8, check),
        (b.usable.saturating_sub(8), mix(check ^ 2)),
        ((b.usable / 2) & !7, mix(check ^ 1)),
    ]
    .into_iter()
    .take(n)
}

/// Word `at` bytes into the block whose address is `base`.
///
/// # Safety
///
/// `base` must point to an allocated block (in the segment mapping, which outlives
/// the reference) of more than `at + 8` bytes, with `at` a multiple of 8.
unsafe fn word_at<'a>(base: std::ptr::NonNull<u8>, at: u64) -> &'a AtomicU64 {
    // SAFETY: the caller's contract: in bounds and 8-aligned (blocks are 16-aligned);
    // the mapping is shared memory that other processes may write: only atomic
    // accesses through this reference.
    unsafe { &*base.as_ptr().add(at as usize).cast::<AtomicU64>() }
}

/// Stamps a block we just allocated (`b.usable` is its usable size).
fn write_stamp(heap: &Heap, b: &Block) -> Result<(), String> {
    let base = heap
        .ptr(b.off)
        .map_err(|e| format!("block {b:?} just allocated: ptr: {e}"))?;
    for (at, v) in stamp_words(b) {
        // SAFETY: we just allocated the block, `usable` bytes long (usable_size
        // said so); every stamp word lies inside it, 8-aligned.
        unsafe { word_at(base, at) }.store(v, Ordering::Relaxed);
    }
    Ok(())
}

/// Checks the stamp of a block we hold (or are about to free): it must still be
/// allocated, of the same usable size, and carry exactly the words we wrote.
fn check_stamp(heap: &Heap, b: &Block) -> Result<(), String> {
    let state = heap.state(b.off);
    let size = heap.usable_size(b.off);
    if size.as_ref().ok() != Some(&b.usable) {
        return Err(format!(
            "block {:#x} (serial {}, {} bytes) held by us is no longer ours: state {state:?}, \
             usable size {size:?}",
            b.off, b.serial, b.usable
        ));
    }
    let base = heap
        .ptr(b.off)
        .map_err(|e| format!("block {b:?}: ptr: {e}"))?;
    let mut bad = Vec::new();
    for (at, want) in stamp_words(b) {
        // SAFETY: the block is allocated (checked just now) and `usable` bytes long;
        // every stamp word lies inside it, 8-aligned.
        let got = unsafe { word_at(base, at) }.load(Ordering::Relaxed);
        if got != want {
            bad.push(format!("+{at}: {got:#018x}, wanted {want:#018x}"));
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    // SAFETY: as above (word 0 is always a stamp word).
    let found = unsafe { word_at(base, 0) }.load(Ordering::Relaxed);
    Err(format!(
        "stamp of block {:#x} (serial {}, {} bytes, state {state:?}) overwritten: {}; \
         word 0 names serial {found}",
        b.off,
        b.serial,
        b.usable,
        bad.join(", ")
    ))
}

// ---------------------------------------------------------------------------------
// Randomness.
// ---------------------------------------------------------------------------------

/// Request shapes drawn from the generator.
trait RequestShape {
    fn size(&mut self) -> usize;
    fn align(&mut self) -> usize;
}

impl RequestShape for Rng {
    /// A request size: log-uniform 8 B – 64 KiB, or 1 – 3 MiB one time in 100.
    fn size(&mut self) -> usize {
        if self.below(100) == 0 {
            (1 << 20) + self.below(2 << 20) as usize
        } else {
            let s = 8.0 * 8192f64.powf(self.unit());
            (s as usize).clamp(8, 64 << 10)
        }
    }

    /// An alignment: 8, or one time in ten a power of two up to 4096.
    fn align(&mut self) -> usize {
        if self.below(10) == 0 {
            1 << self.below(13)
        } else {
            8
        }
    }
}

// ---------------------------------------------------------------------------------
// The worker side.
// ---------------------------------------------------------------------------------

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return; // run by hand with --ignored: nothing to do
    };
    match role.as_str() {
        "heap-worker" => worker_main(),
        other => panic!("unknown child role {other:?}"),
    }
}

fn worker_main() {
    let name = std::env::var(TARGET).expect("SHMKIT_CHILD_TARGET");
    let index = env_u64(INDEX) as usize;
    let seg = SegmentOptions::posix(&name)
        .open()
        .unwrap_or_else(|e| panic!("worker: open {name}: {e:?}"));
    let heap = Heap::attach(&seg).unwrap_or_else(|e| panic!("worker: attach: {e:?}"));
    let ctl = control(&heap, env_u64(CONTROL));
    // Below the parent, so that four busy workers on a small machine do not starve
    // the survivor's reclaim, verify and heartbeat checks (nor the machine's other
    // users).
    let _ = rustix::process::nice(10);
    common::child::leave_when_the_parent_goes();
    let mut rng = Rng::seeded(index as u64 + 1);
    let next_rare = Instant::now() + Duration::from_millis(rng.below(RARE_MS.1));
    let mut w = Worker {
        heap: &heap,
        ctl,
        me: &ctl.workers[index],
        index,
        rng,
        local: Vec::new(),
        next_rare,
    };
    say(format!("ready {} {}", seg.slot(), seg.owner_tag().bits()));
    w.run();
    drop(w);
    drop(heap); // gives the cache back
    say("done");
}

struct Worker<'h> {
    heap: &'h Heap,
    ctl: &'h Control,
    me: &'h WorkerWords,
    index: usize,
    rng: Rng,
    /// The blocks we hold.
    local: Vec<Block>,
    /// When to run the next [`rare`](Self::rare) operation.
    next_rare: Instant,
}

impl Worker<'_> {
    /// Says what went wrong and exits with `code`: the parent fails the test.
    fn fail(&self, code: i32, what: impl std::fmt::Display) -> ! {
        self.ctl.count(FAILURES);
        let msg = format!("worker {} (pid {}): {what}", self.index, std::process::id());
        eprintln!("crash_heap: {msg}");
        say(format!("FAIL {msg}"));
        std::process::exit(code);
    }

    fn doing(&self, what: u64) {
        self.me.doing.store(what, Ordering::Relaxed);
    }

    fn check(&self, b: &Block, when: &str) {
        self.ctl.count(STAMP_CHECKS);
        if let Err(e) = check_stamp(self.heap, b) {
            self.fail(EXIT_STAMP, format_args!("{when}: {e}"));
        }
    }

    fn run(&mut self) {
        loop {
            self.me.beat.fetch_add(1, Ordering::Relaxed);
            if self.ctl.stop.load(Ordering::Acquire) != 0 {
                break;
            }
            if self.me.request.load(Ordering::Relaxed) != 0 {
                self.me.request.store(0, Ordering::Relaxed);
                self.reclaim();
            }
            match self.rng.below(100_000) {
                0..40_000 => {
                    if self.local.len() < MAX_LOCAL {
                        if let Some(b) = self.alloc() {
                            self.local.push(b);
                        }
                    } else {
                        self.free_one();
                    }
                }
                40_000..65_000 => self.free_one(),
                65_000..80_000 => self.send(),
                80_000..95_000 => self.receive(),
                95_000..98_000 => self.realloc_one(),
                98_000..99_950 => {
                    if !self.local.is_empty() {
                        let i = self.rng.below(self.local.len() as u64) as usize;
                        let b = self.local[i];
                        self.check(&b, "a kept block");
                    }
                }
                99_950.. => {
                    self.doing(FLUSHING);
                    if let Err(e) = self.heap.flush() {
                        self.fail(EXIT_HEAP_ERROR, format_args!("flush: {e}"));
                    }
                    self.ctl.count(FLUSHES);
                    self.doing(IDLE);
                }
            }
            if self.rng.below(64) == 0 && Instant::now() >= self.next_rare {
                self.next_rare = Instant::now()
                    + Duration::from_millis(RARE_MS.0 + self.rng.below(RARE_MS.1 - RARE_MS.0));
                self.rare();
            }
        }
        self.doing(STOPPING);
        while let Some(b) = self.local.pop() {
            self.free(b);
        }
        self.doing(IDLE);
    }

    /// A pass of `trim` or `reclaim_dead` (each holds the transfer lock in write
    /// mode, pausing every other process's cache transfers): by time, not by
    /// iteration, so that debug and release builds see them about as often.
    fn rare(&mut self) {
        if self.rng.below(2) == 0 {
            self.doing(TRIMMING);
            match self.heap.trim() {
                Ok(pages) => {
                    self.ctl.count(W_TRIMS);
                    self.ctl.add(W_TRIM_PAGES, pages);
                }
                Err(e) => self.fail(EXIT_HEAP_ERROR, format_args!("trim: {e}")),
            }
            self.doing(IDLE);
        } else {
            self.reclaim();
        }
    }

    /// A pass of `reclaim_dead`.
    fn reclaim(&self) {
        self.me.passes.fetch_add(1, Ordering::Relaxed);
        self.doing(RECLAIMING);
        let t = Instant::now();
        match self.heap.reclaim_dead() {
            Ok(r) => {
                self.doing(IDLE);
                if r.blocks > 0 {
                    self.ctl
                        .add(W_BUSY_RECLAIM_NS, t.elapsed().as_nanos() as u64);
                    self.ctl.count(W_BUSY_RECLAIMS);
                }
                self.ctl.count(W_RECLAIMS);
                self.ctl.add(W_RECLAIM_BLOCKS, r.blocks);
                self.ctl.add(W_RECLAIM_BYTES, r.bytes);
            }
            Err(e) => self.fail(EXIT_HEAP_ERROR, format_args!("reclaim_dead: {e}")),
        }
    }

    /// Allocates and stamps a block; `None` if the heap is full (we then free half
    /// of what we hold).
    fn alloc(&mut self) -> Option<Block> {
        let (size, align) = (self.rng.size(), self.rng.align());
        self.doing(ALLOCATING);
        let r = self.heap.alloc(size, align);
        self.doing(IDLE);
        let off = match r {
            Ok(off) => off.get(),
            Err(Error::OutOfMemory { .. }) => {
                self.ctl.count(OOM);
                for _ in 0..self.local.len() / 2 {
                    self.free_one();
                }
                return None;
            }
            Err(e) => self.fail(EXIT_HEAP_ERROR, format_args!("alloc({size}, {align}): {e}")),
        };
        self.ctl.count(ALLOCS);
        if size >= 1 << 20 {
            self.ctl.count(BIG_ALLOCS);
        }
        if off % align as u64 != 0 {
            self.fail(
                EXIT_HEAP_ERROR,
                format_args!("alloc({size}, {align}) returned the misaligned {off:#x}"),
            );
        }
        if let Some(b) = self.local.iter().find(|b| b.off == off) {
            self.fail(
                EXIT_STAMP,
                format_args!("alloc({size}, {align}) returned {off:#x}, which we hold: {b:?}"),
            );
        }
        let usable = match self.heap.usable_size(off) {
            Ok(u) if u >= size as u64 => u,
            other => self.fail(
                EXIT_HEAP_ERROR,
                format_args!("alloc({size}, {align}) = {off:#x}: usable size {other:?}"),
            ),
        };
        let serial = self.ctl.serial.fetch_add(1, Ordering::Relaxed) + 1;
        let b = Block {
            off,
            serial,
            usable,
        };
        if let Err(e) = write_stamp(self.heap, &b) {
            self.fail(EXIT_HEAP_ERROR, e);
        }
        Some(b)
    }

    /// Checks the stamp, then frees.
    fn free(&self, b: Block) {
        self.check(&b, "before free");
        self.doing(FREEING);
        if let Err(e) = self.heap.free(b.off) {
            self.fail(EXIT_STAMP, format_args!("free of our block {b:?}: {e}"));
        }
        self.doing(IDLE);
        self.ctl.count(FREES);
    }

    fn free_one(&mut self) {
        if self.local.is_empty() {
            return;
        }
        let i = self.rng.below(self.local.len() as u64) as usize;
        let b = self.local.swap_remove(i);
        self.free(b);
    }

    /// Publishes a block (new, or one we hold) and links it into an empty mailbox
    /// slot.
    fn send(&mut self) {
        let start = self.rng.below(MAILBOX as u64) as usize;
        let Some(first) = (0..MAILBOX)
            .map(|j| (start + j) % MAILBOX)
            .find(|&i| self.ctl.mailbox[i].load(Ordering::Relaxed) == 0)
        else {
            return; // full
        };
        let b = if self.local.is_empty() || self.rng.below(10) < 7 {
            match self.alloc() {
                Some(b) => b,
                None => return,
            }
        } else {
            let i = self.rng.below(self.local.len() as u64) as usize;
            let b = self.local.swap_remove(i);
            self.check(&b, "before sending");
            b
        };
        let k = key(&b);
        // The record first: if we die from here until the key is linked, the parent
        // knows which block a death may have leaked.
        self.me.sending.store(k, Ordering::Relaxed);
        self.doing(SENDING);
        if let Err(e) = self.heap.publish(b.off) {
            self.fail(
                EXIT_HEAP_ERROR,
                format_args!("publish of our block {b:?}: {e}"),
            );
        }
        // SYNC: Release: the stamp (and the publish) happen before a receiver that
        // reads the key with Acquire adopts the block.
        let linked = (0..MAILBOX).map(|j| (first + j) % MAILBOX).any(|i| {
            self.ctl.mailbox[i]
                .compare_exchange(0, k, Ordering::Release, Ordering::Relaxed)
                .is_ok()
        });
        if !linked {
            // Every slot was taken meanwhile: take the block back.
            if let Err(e) = self.heap.adopt(b.off) {
                self.fail(EXIT_HEAP_ERROR, format_args!("adopt back of {b:?}: {e}"));
            }
            self.me.sending.store(0, Ordering::Relaxed);
            self.doing(IDLE);
            self.ctl.count(BOUNCED);
            self.local.push(b);
            if self.local.len() > MAX_LOCAL {
                self.free_one();
            }
            return;
        }
        self.me.sending.store(0, Ordering::Relaxed);
        self.doing(IDLE);
        self.ctl.count(SENT);
    }

    /// Takes a block out of the mailbox, adopts it, checks it, frees or keeps it.
    fn receive(&mut self) {
        let start = self.rng.below(MAILBOX as u64) as usize;
        for i in (0..MAILBOX).map(|j| (start + j) % MAILBOX) {
            // SYNC: Acquire pairs with the sender's Release CAS.
            let k = self.ctl.mailbox[i].load(Ordering::Acquire);
            if k == 0 {
                continue;
            }
            self.me.receiving.store(k, Ordering::Relaxed);
            self.doing(RECEIVING);
            if self.ctl.mailbox[i]
                .compare_exchange(k, 0, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue; // another receiver took it
            }
            let off = key_off(k);
            if let Err(e) = self.heap.adopt(off) {
                let state = self.heap.state(off);
                self.fail(
                    EXIT_STAMP,
                    format_args!(
                        "adopt of {off:#x} (serial {}) taken from the mailbox: {e} (state {state:?})",
                        key_serial(k)
                    ),
                );
            }
            self.me.receiving.store(0, Ordering::Relaxed);
            self.doing(IDLE);
            let usable = match self.heap.usable_size(off) {
                Ok(u) => u,
                Err(e) => self.fail(EXIT_STAMP, format_args!("adopted {off:#x}: {e}")),
            };
            let b = Block {
                off,
                serial: key_serial(k),
                usable,
            };
            self.check(&b, "a block received");
            self.ctl.count(RECEIVED);
            if self.local.len() < MAX_LOCAL && self.rng.below(2) == 0 {
                self.local.push(b);
            } else {
                self.free(b);
            }
            return;
        }
        self.me.receiving.store(0, Ordering::Relaxed);
        self.doing(IDLE);
    }

    /// Reallocates a block we hold to a new random size: the serial must come
    /// along (it is in the first 8 bytes, which every size keeps), then it is
    /// stamped anew.
    fn realloc_one(&mut self) {
        if self.local.is_empty() {
            return;
        }
        let i = self.rng.below(self.local.len() as u64) as usize;
        let old = self.local[i];
        self.check(&old, "before realloc");
        let size = self.rng.size();
        self.doing(REALLOCATING);
        let r = self.heap.realloc(old.off, size, 8);
        self.doing(IDLE);
        let off = match r {
            Ok(off) => off.get(),
            Err(Error::OutOfMemory { .. }) => {
                self.ctl.count(OOM);
                return; // the old block is untouched
            }
            Err(e) => self.fail(
                EXIT_HEAP_ERROR,
                format_args!("realloc({old:?}, {size}): {e}"),
            ),
        };
        self.ctl.count(REALLOCS);
        if off != old.off && self.local.iter().any(|b| b.off == off) {
            self.fail(
                EXIT_STAMP,
                format_args!("realloc({old:?}, {size}) returned {off:#x}, which we hold"),
            );
        }
        let usable = match self.heap.usable_size(off) {
            Ok(u) if u >= size as u64 => u,
            other => self.fail(
                EXIT_HEAP_ERROR,
                format_args!("realloc({old:?}, {size}) = {off:#x}: usable size {other:?}"),
            ),
        };
        let base = match self.heap.ptr(off) {
            Ok(p) => p,
            Err(e) => self.fail(EXIT_HEAP_ERROR, format_args!("realloc: ptr({off:#x}): {e}")),
        };
        // SAFETY: realloc just gave us the block, `usable` (at least 16) bytes long.
        let moved = unsafe { word_at(base, 0) }.load(Ordering::Relaxed);
        if moved != old.serial {
            self.fail(
                EXIT_STAMP,
                format_args!(
                    "realloc({old:?}, {size}) = {off:#x}: word 0 is {moved:#x}, not the serial"
                ),
            );
        }
        let serial = self.ctl.serial.fetch_add(1, Ordering::Relaxed) + 1;
        let b = Block {
            off,
            serial,
            usable,
        };
        if let Err(e) = write_stamp(self.heap, &b) {
            self.fail(EXIT_HEAP_ERROR, e);
        }
        self.local[i] = b;
    }
}

// ---------------------------------------------------------------------------------
// The parent side.
// ---------------------------------------------------------------------------------

/// What the workers' own exit codes mean.
const EXITS: &[(i32, &str)] = &[
    (
        EXIT_STAMP,
        "a stamp mismatch (double allocation or block lost)",
    ),
    (EXIT_HEAP_ERROR, "an unexpected heap error"),
];

/// Starts worker `index`.
fn spawn_worker(name: &str, ctl_off: u64, index: usize) -> WorkerProcess {
    let mut cmd = common::child_main_command();
    cmd.env(ROLE, "heap-worker")
        .env(TARGET, name)
        .env(CONTROL, ctl_off.to_string())
        .env(INDEX, index.to_string());
    WorkerProcess::spawn(cmd, index, EXITS)
}

/// Waits (bounded) until the worker has attached and found the control block.
fn wait_ready(w: &mut WorkerProcess, ctl: &Control) {
    let index = w.index;
    w.wait_ready(|| ctl.workers[index].beat.load(Ordering::Relaxed));
}

/// Fails if the worker exited on its own (it only leaves when killed or stopped),
/// or if its heartbeat does not move for [`PATIENCE`] (a hang).
fn assert_progress(w: &mut WorkerProcess, ctl: &Control) {
    let index = w.index;
    w.assert_progress(
        || ctl.workers[index].beat.load(Ordering::Relaxed),
        || {
            DOING
                .get(ctl.workers[index].doing.load(Ordering::Relaxed) as usize)
                .unwrap_or(&"?")
                .to_string()
        },
    );
}

/// Counts accumulated by the parent.
#[derive(Default, Debug)]
struct Tally {
    kills: u64,
    died_doing: [u64; DOING.len()],
    /// Kills after which the parent's reclaim returned something of the victim.
    victim_reclaimed: u64,
    reclaimed_blocks: u64,
    reclaimed_bytes: u64,
    reclaimed_unlisted: u64,
    verifications: u64,
    verify_time: Duration,
    slowest_verify: Duration,
    /// Most used bytes seen by a verification.
    peak_used: u64,
    /// Keys in the hand-off records of killed workers.
    suspects: Vec<u64>,
    /// The owner tags of the killed workers.
    killed: HashSet<OwnerTag>,
    /// Kills of a worker asked to run `reclaim_dead` right after another kill.
    reclaimer_kills: u64,
}

impl Tally {
    fn deaths(&self) -> String {
        let parts: Vec<String> = DOING
            .iter()
            .zip(self.died_doing)
            .filter(|&(_, n)| n > 0)
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        parts.join(", ")
    }
}

/// Kills worker `v` (SIGKILL, reaped), reads and clears what it was doing and its
/// hand-off records, and starts its replacement (which reuses the words only
/// after that).
fn kill_and_replace(
    workers: &mut [WorkerProcess],
    v: usize,
    ctl: &Control,
    name: &str,
    ctl_off: u64,
    tally: &mut Tally,
) -> Victim {
    let tag = workers[v].kill();
    let words = &ctl.workers[v];
    let doing = words.doing.swap(IDLE, Ordering::Relaxed) as usize;
    tally.died_doing[doing.min(DOING.len() - 1)] += 1;
    for rec in [&words.sending, &words.receiving] {
        let k = rec.swap(0, Ordering::Relaxed);
        if k != 0 {
            tally.suspects.push(k);
        }
    }
    words.request.store(0, Ordering::Relaxed);
    workers[v] = spawn_worker(name, ctl_off, v);
    tally.kills += 1;
    if let Some(t) = tag {
        tally.killed.insert(t);
    }
    Victim {
        tag,
        doing: DOING[doing.min(DOING.len() - 1)],
    }
}

/// What [`kill_and_replace`] learned of a victim.
struct Victim {
    tag: Option<OwnerTag>,
    /// What it was doing.
    doing: &'static str,
}

/// Waits `d`: sleeps but for the last 200 us, which it spins (`sleep` is too
/// coarse for microseconds).
fn spin_for(d: Duration) {
    let t = Instant::now();
    if let Some(nap) = d.checked_sub(Duration::from_micros(200)) {
        std::thread::sleep(nap);
    }
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Runs `verify` and fails unless it is clean and quiescent and no dead owner holds
/// anything. Returns the report.
fn verify_clean(heap: &Heap, tally: &mut Tally, when: &str) -> Report {
    let t = Instant::now();
    let report = heap.verify();
    let took = t.elapsed();
    tally.verifications += 1;
    tally.verify_time += took;
    tally.slowest_verify = tally.slowest_verify.max(took);
    tally.peak_used = tally.peak_used.max(report.stats.used);
    assert!(
        report.is_clean(),
        "{when}: verify found violations:\n{report}"
    );
    assert!(
        report.quiescent,
        "{when}: verify could not take the heap locks within 2 s (a hang?):\n{report}"
    );
    let dead: Vec<_> = report
        .stats
        .owners
        .iter()
        .filter(|o| !o.alive && (o.owned_bytes > 0 || o.cached_bytes > 0))
        .collect();
    assert!(
        dead.is_empty(),
        "{when}: dead owners still hold blocks after reclaim_dead: {dead:#?}"
    );
    report
}

/// Takes `k`'s block back from the shared state (adopt), checks its stamp and
/// frees it. Returns its usable size.
fn adopt_check_free(heap: &Heap, k: u64, what: &str) -> u64 {
    let off = key_off(k);
    heap.adopt(off)
        .unwrap_or_else(|e| panic!("{what}: adopt {off:#x} (serial {}): {e}", key_serial(k)));
    let usable = heap.usable_size(off).expect("an adopted block");
    let b = Block {
        off,
        serial: key_serial(k),
        usable,
    };
    if let Err(e) = check_stamp(heap, &b) {
        panic!("{what}: {e}");
    }
    heap.free(off)
        .unwrap_or_else(|e| panic!("{what}: free {off:#x}: {e}"));
    usable
}

#[test]
fn killed_heap_users_leak_nothing_and_never_share_a_block() {
    let rounds = crash::rounds(DEFAULT_ROUNDS);
    let name = shmkit::unique_name("crash-heap-").unwrap();
    let dog = crash::watchdog("crash_heap", &name, rounds, BASE_BOUND);
    let started = Instant::now();
    let seg = SegmentOptions::posix(&name)
        .max_size(SEGMENT_SIZE)
        .registry_slots(SLOTS)
        .create()
        .unwrap();
    let heap = Heap::attach(&seg).unwrap();
    let start = heap.verify();
    assert!(start.is_clean(), "a new heap:\n{start}");
    let used_at_start = start.stats.used;

    // The control block: allocated, initialised, published (it belongs to no
    // process), and only then named to the workers.
    let ctl_off = heap
        .alloc(size_of::<Control>(), align_of::<Control>().max(64))
        .unwrap()
        .get();
    let ctl_usable = heap.usable_size(ctl_off).unwrap();
    let p = heap.ptr(ctl_off).unwrap().as_ptr();
    assert_eq!(p.align_offset(align_of::<Control>()), 0);
    // SAFETY: we own the block, it is large enough and aligned (checked), and
    // nobody else knows its offset yet.
    unsafe { p.cast::<Control>().write(Control::new()) };
    heap.publish(ctl_off).unwrap();
    let ctl = control(&heap, ctl_off);

    let mut tally = Tally::default();
    let mut workers: Vec<WorkerProcess> = (0..WORKERS)
        .map(|i| spawn_worker(&name, ctl_off, i))
        .collect();
    for w in &mut workers {
        wait_ready(w, ctl);
    }
    let mut rng = Rng::seeded(0);
    let mut last_note = Instant::now();
    for round in 1..=rounds {
        std::thread::sleep(Duration::from_millis(
            KILL_MS.0 + rng.below(KILL_MS.1 - KILL_MS.0 + 1),
        ));
        let v = rng.below(WORKERS as u64) as usize;
        let first = kill_and_replace(&mut workers, v, ctl, &name, ctl_off, &mut tally);
        let mut when = format!("round {round} (worker {v} killed {}", first.doing);
        let mut victims = vec![first.tag];
        if rng.below(RECLAIMER_KILL_EVERY) == 0 {
            // The survivor that reclaims the victim's blocks dies too, at a random
            // moment of its pass: ask another worker for a pass, wait until it has
            // begun, and kill it within about the time a pass takes.
            let b = (v + 1 + rng.below(WORKERS as u64 - 1) as usize) % WORKERS;
            let words = &ctl.workers[b];
            let passes = words.passes.load(Ordering::Relaxed);
            words.request.store(1, Ordering::Relaxed);
            let begun = common::poll(PATIENCE, Duration::from_micros(20), || {
                (words.passes.load(Ordering::Relaxed) != passes).then_some(())
            });
            if begun.is_none() {
                let d = words.doing.load(Ordering::Relaxed) as usize;
                panic!(
                    "{when}): worker {b} did not begin the reclaim_dead asked for within \
                     {PATIENCE:?}: stuck {} (a hang)",
                    DOING.get(d).unwrap_or(&"?")
                );
            }
            // A random moment of the pass, as far as the mean length of a pass
            // that reclaimed something tells.
            let mean = match ctl.get(W_BUSY_RECLAIMS) {
                0 => 2_000_000,
                n => ctl.get(W_BUSY_RECLAIM_NS) / n,
            };
            spin_for(Duration::from_nanos(rng.below(mean + mean / 4 + 1)));
            let second = kill_and_replace(&mut workers, b, ctl, &name, ctl_off, &mut tally);
            victims.push(second.tag);
            tally.reclaimer_kills += 1;
            when += &format!(
                ", then worker {b}, asked to reclaim, killed {}",
                second.doing
            );
        }
        when += ")";

        // A worker that found something wrong has left on its own: say what it
        // found before anything else (its blocks would puzzle the checks below).
        for w in workers.iter_mut() {
            if let Some(st) = w.wait_for_exit(Duration::ZERO) {
                panic!("{when}: {}", w.failure(st));
            }
        }
        let failures = ctl.get(FAILURES);
        assert_eq!(failures, 0, "{when}: workers reported failures (see above)");

        // A survivor's duty: free the dead registry slots, reclaim, verify; while
        // the other workers keep running and the replacement starts.
        seg.reclaim_dead().expect("registry reclaim_dead");
        let r = heap
            .reclaim_dead()
            .unwrap_or_else(|e| panic!("{when}: reclaim_dead: {e}"));
        let strangers: Vec<_> = r
            .owners
            .iter()
            .filter(|t| !tally.killed.contains(t))
            .collect();
        assert!(
            strangers.is_empty(),
            "{when}: reclaim_dead took blocks of owners never killed (live ones?): \
             {strangers:?} ({r:?})"
        );
        tally.victim_reclaimed += victims
            .iter()
            .filter(|t| t.is_some_and(|t| r.owners.contains(&t)))
            .count() as u64;
        tally.reclaimed_blocks += r.blocks;
        tally.reclaimed_bytes += r.bytes;
        tally.reclaimed_unlisted += r.unlisted;
        verify_clean(&heap, &mut tally, &when);
        let failures = ctl.get(FAILURES);
        assert_eq!(failures, 0, "{when}: workers reported failures (see above)");

        for w in workers.iter_mut().filter(|w| w.tag.is_none()) {
            wait_ready(w, ctl);
        }
        for w in &mut workers {
            assert_progress(w, ctl);
        }
        dog.tick(round);
        if last_note.elapsed() > Duration::from_secs(30) {
            last_note = Instant::now();
            eprintln!(
                "crash_heap: round {round}/{rounds}, {:.0} s, {} blocks reclaimed",
                started.elapsed().as_secs_f64(),
                tally.reclaimed_blocks
            );
        }
    }

    // The end: every worker frees what it holds and leaves.
    for w in &mut workers {
        assert_progress(w, ctl);
    }
    ctl.stop.store(1, Ordering::Release);
    for mut w in workers.drain(..) {
        let st = w.wait_for_exit(PATIENCE).unwrap_or_else(|| {
            let d = ctl.workers[w.index].doing.load(Ordering::Relaxed) as usize;
            panic!(
                "worker {} (pid {}) did not stop within {PATIENCE:?} (a hang), {}",
                w.index,
                w.pid(),
                DOING.get(d).unwrap_or(&"?")
            )
        });
        assert!(st.success(), "{}", w.failure(st));
    }
    assert_eq!(
        ctl.get(FAILURES),
        0,
        "workers reported failures (see above)"
    );
    seg.reclaim_dead().expect("registry reclaim_dead");
    let r = heap.reclaim_dead().expect("final reclaim_dead");
    assert_eq!(
        (r.blocks, r.bytes, r.unlisted),
        (0, 0, 0),
        "workers that left gracefully left blocks to reclaim: {r:?}"
    );
    verify_clean(&heap, &mut tally, "after the workers left");

    // Drain the mailbox.
    let mut drained = 0u64;
    for slot in &ctl.mailbox {
        let k = slot.swap(0, Ordering::Acquire);
        if k != 0 {
            adopt_check_free(&heap, k, "draining the mailbox");
            drained += 1;
        }
    }

    // What is still shared: the control block, and blocks whose hand-off a kill
    // interrupted, each named by a dead worker's record.
    let suspects: BTreeSet<u64> = tally.suspects.iter().copied().collect();
    let mut leaked: Vec<(u64, u64)> = Vec::new(); // (key, usable)
    for &k in &suspects {
        let off = key_off(k);
        if heap.state(off).ok() != Some(BlockState::Shared) {
            continue;
        }
        let usable = heap.usable_size(off).unwrap();
        let b = Block {
            off,
            serial: key_serial(k),
            usable,
        };
        if check_stamp(&heap, &b).is_ok() {
            leaked.push((k, usable));
        }
    }
    let leaked_bytes: u64 = leaked.iter().map(|&(_, u)| u).sum();
    let shared = heap.stats().unwrap().shared;
    assert_eq!(
        shared,
        ctl_usable + leaked_bytes,
        "shared bytes left after the workers left and the mailbox was drained: {shared}; \
         the control block ({ctl_usable}) and {} blocks leaked by interrupted hand-offs \
         ({leaked_bytes} bytes) explain only {}: {} shared bytes leaked by nobody's death",
        leaked.len(),
        ctl_usable + leaked_bytes,
        shared as i128 - (ctl_usable + leaked_bytes) as i128
    );
    for &(k, _) in &leaked {
        adopt_check_free(
            &heap,
            k,
            "freeing a block leaked by an interrupted hand-off",
        );
    }

    // The figures, then the control block goes.
    let c = |i| ctl.get(i);
    let summary = format!(
        "crash_heap: {} kills ({} of a worker asked to reclaim) in {:.1} s ({}); {} allocs ({} of 1 MiB+), {} frees, \
         {} reallocs, {} OOM; {} blocks sent, {} received, {} bounced, {} drained at the \
         end; {} stamp checks; reclaim_dead by the parent: {} blocks, {} bytes ({} \
         unlisted), a victim's blocks {} times; by workers: {} passes, {} blocks, \
         {} bytes; {} trims ({} pages), {} flushes; {} verifications ({:.1} ms mean, \
         {:.1} ms max), peak used {} KiB; hand-offs cut by a kill: {} suspects, {} blocks \
         leaked ({} bytes), reclaimed at the end",
        tally.kills,
        tally.reclaimer_kills,
        started.elapsed().as_secs_f64(),
        tally.deaths(),
        c(ALLOCS),
        c(BIG_ALLOCS),
        c(FREES),
        c(REALLOCS),
        c(OOM),
        c(SENT),
        c(RECEIVED),
        c(BOUNCED),
        drained,
        c(STAMP_CHECKS),
        tally.reclaimed_blocks,
        tally.reclaimed_bytes,
        tally.reclaimed_unlisted,
        tally.victim_reclaimed,
        c(W_RECLAIMS),
        c(W_RECLAIM_BLOCKS),
        c(W_RECLAIM_BYTES),
        c(W_TRIMS),
        c(W_TRIM_PAGES),
        c(FLUSHES),
        tally.verifications,
        tally.verify_time.as_secs_f64() * 1e3 / tally.verifications.max(1) as f64,
        tally.slowest_verify.as_secs_f64() * 1e3,
        tally.peak_used >> 10,
        suspects.len(),
        leaked.len(),
        leaked_bytes,
    );
    let received = c(RECEIVED);
    // `ctl` must not be used from here on.
    heap.adopt(ctl_off).unwrap();
    heap.free(ctl_off).unwrap();
    heap.flush().unwrap();

    // Back to the start: nothing used, nothing shared, nobody holding anything.
    let end = verify_clean(&heap, &mut tally, "the end");
    assert_eq!(
        end.stats.used, used_at_start,
        "used bytes did not return to their start value:\n{end}"
    );
    assert_eq!(end.stats.shared, 0, "shared bytes left:\n{end}");
    let holding: Vec<_> = end
        .stats
        .owners
        .iter()
        .filter(|o| o.owned_bytes > 0 || o.cached_bytes > 0)
        .collect();
    assert!(
        holding.is_empty(),
        "owners still holding blocks: {holding:#?}"
    );
    println!("{summary}");
    assert!(
        tally.reclaimed_blocks > 0 || rounds == 0,
        "no block reclaimed in {} kills: the test tested nothing",
        tally.kills
    );
    assert!(
        received > 0 || rounds == 0,
        "no block handed off: the test tested nothing"
    );

    drop(heap);
    drop(seg);
    drop(dog);
    assert!(!shm_path(&name).exists(), "segment {name} left behind");
}
