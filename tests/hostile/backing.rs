//! A peer that lies about the committed size (issue 10, item 5).
//!
//! A peer writes `committed = max_size` into the header (offset 16) of a segment
//! whose store cannot hold that much. A victim that trusted the value would touch
//! unbacked pages and die of SIGBUS; instead every process backs what it uses
//! itself (`fallocate` over each growth it observes), so the lie becomes
//! [`Error::NoSpace`], or real backing where the store can hold it.
//!
//! The full-store cases run like `tests/nospace.rs`: in a re-executed child inside a
//! private mount namespace with a 16 MiB tmpfs over `/dev/shm` (root, util-linux
//! `unshare` and `mount`; without them they fail loudly rather than pass). That
//! child is the liar; it runs the victims as its own children (in the same
//! namespace) and asserts that they exited normally, not by a signal.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

use crate::common::child::{PREFIX, say};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::{self, CapturedChild, DONE_MARKER, LineChild, ONE_IGNORED_TEST, PATIENCE};
use shmkit::alloc::Heap;
use shmkit::{Error, PAGE_SIZE, Segment, SegmentOptions};

/// The ignored test that is this module's child entry point.
const CHILD: &str = "backing::child_main";
/// Environment of a child: its role, the kind of segment and where it is.
const ROLE: &str = "SHMKIT_BACKING_ROLE";
const KIND: &str = "SHMKIT_BACKING_KIND";
const WHERE: &str = "SHMKIT_BACKING_WHERE";

/// Size of the private tmpfs mounted over `/dev/shm`.
const TMPFS_SIZE: u64 = 16 << 20;
/// Address space of the segment: four times the tmpfs.
const MAX_SIZE: u64 = 64 << 20;
/// What the liar leaves free of the tmpfs before lying.
const LEFT_FREE: u64 = 3 << 20;
/// The victims' allocation size.
const BLOCK: usize = 16 << 10;
/// Offset of `committed` in the segment header.
const COMMITTED_AT: usize = 16;
/// Watchdog on the namespace child: far beyond what it needs.
const WATCHDOG: Duration = Duration::from_secs(180);
/// The first line of the shell run by `unshare`; exit code 97 says it failed.
const MOUNT_TMPFS: &str = "mount -t tmpfs -o size=16m tmpfs /dev/shm || exit 97";

// ---------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------

/// Writes `value` into the header's `committed` word, as a lying peer does.
fn lie(seg: &Segment, value: u64) {
    // SAFETY: every segment starts with its header page; `committed` is the 8-byte
    // aligned word at offset 16, only ever accessed as an atomic u64.
    let word = unsafe { &*seg.as_ptr().add(COMMITTED_AT).cast::<AtomicU64>() };
    word.store(value, Ordering::Release);
}

/// Bytes the object behind `seg`'s descriptor really has allocated.
fn allocated(seg: &Segment) -> u64 {
    let st = rustix::fs::fstat(seg.as_fd().expect("fd")).expect("fstat");
    st.st_blocks as u64 * 512
}

/// The word at offset `off` of the mapping, anywhere below the committed size
/// (the heap's pages included: these tests only touch pages to prove they are
/// backed, with atomic operations that leave the value as it is, or in a segment
/// without a heap).
fn word_at(seg: &Segment, off: u64) -> &AtomicU64 {
    assert!(off % 8 == 0 && off + 8 <= seg.committed(), "{off:#x}");
    // SAFETY: 8-aligned and inside the committed part of the mapping, which `seg`
    // keeps mapped for the returned lifetime; an AtomicU64 is valid for any bits,
    // and these tests access the words only atomically.
    unsafe { &*seg.as_ptr().add(off as usize).cast::<AtomicU64>() }
}

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} not set"))
}

fn error_kind(e: &Error) -> String {
    match e {
        Error::NoSpace { .. } => "NoSpace".into(),
        Error::OutOfMemory { .. } => "OutOfMemory".into(),
        e => format!("other:{e:?}").replace(' ', "_"),
    }
}

/// The options of the segment a child works on.
fn options(kind: &str, place: &str) -> SegmentOptions {
    match kind {
        "posix" => SegmentOptions::posix(place),
        "file" => SegmentOptions::file(place),
        other => panic!("unknown kind {other:?}"),
    }
}

/// Prints a message nobody can miss, then fails the test.
fn loud_failure(msg: &str) -> ! {
    let bar = "!".repeat(78);
    eprintln!(
        "\n{bar}\n!!! shmkit tests/hostile/backing.rs CANNOT RUN: {msg}\n\
         !!! These tests need root, util-linux `unshare` and `mount`.\n\
         !!! They fail rather than pass without having checked anything.\n{bar}\n"
    );
    panic!("backing tests cannot run: {msg}");
}

/// Asserts that a child exited 0, not by a signal (a SIGBUS from touching memory
/// the store could not supply would show here).
fn assert_exited_normally(status: ExitStatus, output: &str, what: &str) {
    if let Some(sig) = status.signal() {
        let why = if sig == libc::SIGBUS {
            " (SIGBUS: it touched memory the store could not supply)"
        } else {
            ""
        };
        panic!("{what}: killed by signal {sig}{why}\n{output}");
    }
    assert!(status.success(), "{what}: failed: {status}\n{output}");
}

/// Runs the liar (`role`) in a private mount namespace whose `/dev/shm` is a fresh
/// 16 MiB tmpfs.
fn run_in_private_tmpfs(role: &str, kind: &str) {
    if common::euid() != 0 {
        loud_failure("not running as root: cannot make a mount namespace or mount tmpfs");
    }
    let exe = std::env::current_exe().expect("current_exe");
    let script = format!(
        "{MOUNT_TMPFS}\nexec \"$0\" {CHILD} {}",
        ONE_IGNORED_TEST.join(" ")
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script])
        .arg(&exe)
        .env(ROLE, role)
        .env(KIND, kind);
    let child = match CapturedChild::spawn(cmd) {
        Ok(c) => c,
        Err(e) => loud_failure(&format!("cannot run `unshare`: {e}")),
    };
    let (status, output) = child.wait(WATCHDOG);
    let what = format!("{role} ({kind}) in a private 16 MiB /dev/shm");
    match status.code() {
        Some(97) => loud_failure(&format!("`mount -t tmpfs` failed\n{output}")),
        Some(127) => loud_failure(&format!("`sh` or `mount` not found\n{output}")),
        Some(1) => loud_failure(&format!("`unshare -m` failed\n{output}")),
        _ => {}
    }
    assert_exited_normally(status, &output, &what);
    assert!(
        output.contains(&format!("{DONE_MARKER} {role}\n")),
        "{what}: exited 0 without finishing its role\n{output}"
    );
    eprintln!("{output}");
}

/// The entry point of re-executed children; does nothing when run without a role.
#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "liar" => liar(&env(KIND)),
        "victim" => victim(&env(KIND), &env(WHERE)),
        "late-victim" => late_victim(&env(KIND), &env(WHERE)),
        other => panic!("unknown child role {other:?}"),
    }
    println!("{DONE_MARKER} {role}");
}

// ---------------------------------------------------------------------------------
// Inside the namespace.
// ---------------------------------------------------------------------------------

fn statvfs_free() -> u64 {
    let st = rustix::fs::statvfs("/dev/shm").expect("statvfs /dev/shm");
    st.f_bavail * st.f_frsize
}

/// Refuses to go on unless `/dev/shm` is the fresh private tmpfs: the liar fills
/// it, which must never happen to the real one.
fn assert_private_tmpfs() {
    let st = rustix::fs::statvfs("/dev/shm").expect("statvfs /dev/shm");
    assert_eq!(
        st.f_blocks * st.f_frsize,
        TMPFS_SIZE,
        "/dev/shm is not the private 16 MiB tmpfs: refusing to fill it"
    );
    assert_eq!(st.f_bfree, st.f_blocks, "the private tmpfs is not empty");
}

/// Allocates `BLOCK`-byte blocks, writing every byte of each, until the heap says
/// no; returns how many it got and the error.
fn allocate_until_refused(heap: &Heap) -> (u64, Error) {
    let mut n = 0u64;
    loop {
        match heap.alloc(BLOCK, 16) {
            Ok(off) => {
                let p = heap.ptr(off).expect("ptr of a fresh block");
                // SAFETY: a block of BLOCK bytes this process was just given and
                // nobody else uses; inside the committed heap (`ptr` checked).
                unsafe { std::ptr::write_bytes(p.as_ptr(), 0xb5, BLOCK) };
                n += 1;
            }
            Err(e) => return (n, e),
        }
        assert!(
            n * BLOCK as u64 <= MAX_SIZE,
            "allocated more than the segment holds"
        );
    }
}

/// The victim: opens the segment and its heap while the committed size is honest,
/// says "ready", and at a line on stdin (sent after the lie) allocates until the
/// heap refuses; reports `result <blocks> <error> <committed>`.
fn victim(kind: &str, place: &str) {
    let seg = options(kind, place).open().expect("victim opens");
    let heap = Heap::attach(&seg).expect("victim attaches the heap");
    say("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("stdin");
    assert_eq!(line.trim(), "go", "the liar did not say go");
    let (n, e) = allocate_until_refused(&heap);
    // Whatever was reported committed is backed: every page of it can be written.
    let committed = seg.committed();
    let mut off = seg.user_offset();
    while off < committed {
        // A write that changes nothing (the heap's blocks are in these pages).
        word_at(&seg, off).fetch_or(0, Ordering::Relaxed);
        off += PAGE_SIZE;
    }
    let grow = match seg.commit(MAX_SIZE) {
        Ok(c) => format!("grew:{c}"),
        Err(e) => error_kind(&e),
    };
    say(format!("result {n} {} {committed} {grow}", error_kind(&e)));
}

/// A victim that arrives after the lie: its open backs what the header claims, and
/// fails.
fn late_victim(kind: &str, place: &str) {
    match options(kind, place).open() {
        Err(e) => say(format!("open {}", error_kind(&e))),
        Ok(seg) => {
            let heap = Heap::attach(&seg).expect("late victim attaches the heap");
            let (n, e) = allocate_until_refused(&heap);
            say(format!("opened {n} {}", error_kind(&e)));
        }
    }
}

/// Runs `role` as a child of this process (in its namespace).
fn spawn_victim(role: &str, kind: &str, place: &str) -> LineChild {
    let mut cmd = common::self_test_command(CHILD);
    cmd.env(ROLE, role).env(KIND, kind).env(WHERE, place);
    LineChild::spawn(cmd, Stdio::piped())
}

/// The victim's next line; if it has none, how it ended (a signal first).
fn hear(child: &mut LineChild, what: &str) -> String {
    match child.next_after(PREFIX, PATIENCE) {
        Ok(line) => line,
        Err(e) => {
            if let Some(status) = child.wait_for_exit(PATIENCE) {
                assert_exited_normally(status, "(output above)", what);
            }
            panic!("{what} {}: no line: {e:?}", child.pid())
        }
    }
}

fn reap(mut child: LineChild, what: &str) {
    child.close_stdin();
    let status = child
        .wait_for_exit(PATIENCE)
        .unwrap_or_else(|| panic!("{what}: did not exit"));
    assert_exited_normally(status, "(output above)", what);
}

/// Fills the tmpfs until `LEFT_FREE` bytes are left, with a file that is removed
/// on drop.
struct Filler(PathBuf);

impl Filler {
    fn new() -> Self {
        let path = Path::new("/dev/shm").join(format!("filler-{}", std::process::id()));
        let file = std::fs::File::create(&path).expect("create filler");
        let len = statvfs_free()
            .checked_sub(LEFT_FREE)
            .expect("the tmpfs has room for the filler");
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len)
            .expect("fallocate filler");
        Filler(path)
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The liar: makes a segment and its heap, lets a victim attach, fills the store
/// until 3 MiB are left, writes `committed = max_size`, and lets the victim
/// allocate; then a late victim opens.
fn liar(kind: &str) {
    assert_private_tmpfs();
    let (opts, place, dir) = match kind {
        "posix" => {
            let name = shmkit::unique_name("backing-").expect("name");
            (SegmentOptions::posix(&name), name, None)
        }
        "file" => {
            let dir = Path::new("/dev/shm").join(shmkit::unique_name("backing-dir-").unwrap());
            std::fs::create_dir(&dir).expect("mkdir in the tmpfs");
            let path = dir.join("seg");
            let place = path.display().to_string();
            (SegmentOptions::file(path), place, Some(dir))
        }
        other => panic!("unknown kind {other:?}"),
    };
    let seg = opts.max_size(MAX_SIZE).create().expect("create");
    let heap = Heap::attach(&seg).expect("build the heap");
    let honest = seg.committed();

    let mut victim = spawn_victim("victim", kind, &place);
    assert_eq!(hear(&mut victim, "the victim"), "ready");
    let filler = Filler::new();
    lie(&seg, MAX_SIZE);
    writeln!(victim.stdin().expect("victim stdin"), "go").expect("tell the victim");
    let result = hear(&mut victim, "the victim");
    eprintln!("{kind} victim: {result}");
    reap(victim, "the victim");
    let w: Vec<&str> = result.split(' ').collect();
    assert_eq!(w.len(), 5, "victim said {result:?}");
    assert_eq!(w[0], "result");
    let blocks: u64 = w[1].parse().expect("block count");
    let committed: u64 = w[3].parse().expect("committed");
    assert!(
        w[2] == "NoSpace" || w[2] == "OutOfMemory",
        "the victim's allocation failed with {}, not NoSpace or OutOfMemory",
        w[2]
    );
    assert_eq!(w[4], "NoSpace", "growing past the store: {}", w[4]);
    assert!(blocks > 0, "the victim could allocate nothing");
    assert!(
        committed >= honest && committed < TMPFS_SIZE,
        "the victim reports {committed} committed ({honest} before the lie)"
    );

    // A victim arriving after the lie: its open backs what the header claims.
    let mut late = spawn_victim("late-victim", kind, &place);
    let said = hear(&mut late, "the late victim");
    eprintln!("{kind} late victim: {said}");
    reap(late, "the late victim");
    assert_eq!(said, "open NoSpace", "late victim");

    // The liar itself is no better off: it too reports only what it backed.
    assert!(seg.committed() < MAX_SIZE);
    match allocate_until_refused(&heap) {
        (_, Error::NoSpace { .. } | Error::OutOfMemory { .. }) => {}
        (_, e) => panic!("the liar's own allocation failed with {e:?}"),
    }
    drop(filler);
    drop(heap);
    drop(seg);
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

// ---------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------

#[test]
fn a_victim_of_a_lie_about_the_committed_size_of_a_posix_segment_gets_no_space_not_sigbus() {
    run_in_private_tmpfs("liar", "posix");
}

#[test]
fn a_victim_of_a_lie_about_the_committed_size_of_a_file_segment_gets_no_space_not_sigbus() {
    run_in_private_tmpfs("liar", "file");
}

#[test]
fn a_lie_the_store_can_hold_becomes_real_backing() {
    let name = shmkit::unique_name("backing-real-").expect("name");
    for opts in [SegmentOptions::memfd(), SegmentOptions::posix(&name)] {
        let seg = opts
            .no_heap()
            .max_size(8 << 20)
            .committed(64 << 10)
            .create()
            .expect("create");
        let peer = seg.try_clone().expect("a second attachment");
        assert!(allocated(&seg) < 1 << 20, "{:?}: starts small", seg.kind());
        lie(&seg, 8 << 20);
        // The peer observes the growth and backs it before reporting it.
        assert_eq!(peer.committed(), 8 << 20, "{:?}", seg.kind());
        assert!(
            allocated(&peer) >= 8 << 20,
            "{:?}: {} bytes allocated after the peer saw 8 MiB committed",
            seg.kind(),
            allocated(&peer)
        );
        // So every page of it can be touched.
        let mut off = peer.user_offset();
        while off < peer.committed() {
            word_at(&peer, off).store(off, Ordering::Relaxed);
            off += PAGE_SIZE;
        }
        assert_eq!(word_at(&seg, 4 << 20).load(Ordering::Relaxed), 4 << 20);
    }
}
