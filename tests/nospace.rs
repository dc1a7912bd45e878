//! A full backing store is an error, never a SIGBUS; and a memfd segment cannot be
//! resized under its peers.
//!
//! The full-store tests run in a re-executed child inside a private mount namespace
//! with a 16 MiB tmpfs mounted over `/dev/shm`, so the real `/dev/shm` is never
//! filled:
//!
//! ```text
//! unshare -m --propagation private sh -c \
//!     'mount -t tmpfs -o size=16m tmpfs /dev/shm && exec "$0" child_main ...' <test exe>
//! ```
//!
//! They need root (as CI has) and util-linux's `unshare` and `mount`; without them
//! they fail loudly rather than pass silently.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

mod common;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{
    CHILD_MAIN, CapturedChild, DONE_MARKER, ONE_IGNORED_TEST, TempDir, euid, open_rw, reopen,
};
use rustix::fs::{FallocateFlags, MemfdFlags, Mode, SealFlags};
use rustix::io::Errno;
use shmkit::{Error, Offset, PAGE_SIZE, Segment, SegmentOptions};

/// Environment variable naming the role of a re-executed child.
const ROLE_VAR: &str = "SHMKIT_NOSPACE_ROLE";
/// Which kind of named segment the child works on: `posix` or `file`.
const KIND_VAR: &str = "SHMKIT_NOSPACE_KIND";
/// For the memfd peer: the path to open (`/proc/<parent>/fd/<n>`), the segment's
/// seed, its size, and the value the parent stored at the user offset.
const FD_PATH_VAR: &str = "SHMKIT_NOSPACE_FD_PATH";
const SEED_VAR: &str = "SHMKIT_NOSPACE_SEED";
const SIZE_VAR: &str = "SHMKIT_NOSPACE_SIZE";
const VALUE_VAR: &str = "SHMKIT_NOSPACE_VALUE";

/// Size of the private tmpfs mounted over `/dev/shm` in the child.
const TMPFS_SIZE: u64 = 16 << 20;
/// Address space reserved by the segments that fill it: larger than the tmpfs.
const MAX_SIZE: u64 = 64 << 20;
/// Watchdog for a child: far beyond what it needs, so only a hang trips it.
const CHILD_WATCHDOG: Duration = Duration::from_secs(180);
/// The first line of the shell run by `unshare`: mount the small tmpfs. Exit code 97
/// says the mount failed.
const MOUNT_TMPFS: &str = "mount -t tmpfs -o size=16m tmpfs /dev/shm || exit 97";

// ---------------------------------------------------------------------------------
// Children: spawn, bound, reap.
// ---------------------------------------------------------------------------------

/// Prints a message nobody can miss, then fails the test.
fn loud_failure(msg: &str) -> ! {
    let bar = "!".repeat(78);
    eprintln!(
        "\n{bar}\n!!! shmkit tests/nospace.rs CANNOT RUN: {msg}\n\
         !!! These tests need root, util-linux `unshare` and `mount` (CI has all three).\n\
         !!! They fail rather than pass without having checked anything.\n{bar}\n"
    );
    panic!("nospace tests cannot run: {msg}");
}

/// Asserts that the child exited 0 and was not killed by a signal (a SIGBUS from
/// touching unbacked memory would show up here).
fn assert_child_succeeded(status: ExitStatus, output: &str, role: &str, what: &str) {
    if let Some(sig) = status.signal() {
        let why = if sig == libc::SIGBUS {
            " (SIGBUS: memory was touched that the backing store could not supply)"
        } else {
            ""
        };
        panic!("{what}: child killed by signal {sig}{why}\n{output}");
    }
    assert!(status.success(), "{what}: child failed: {status}\n{output}");
    assert!(
        output.contains(&format!("{DONE_MARKER} {role}\n")),
        "{what}: the child exited 0 without finishing its role\n{output}"
    );
    eprintln!("{output}");
}

/// Runs `child_main` with `role` in a private mount namespace whose `/dev/shm` is a
/// fresh 16 MiB tmpfs.
fn run_in_private_tmpfs(role: &str, kind: &str) {
    if euid() != 0 {
        loud_failure("not running as root: cannot make a mount namespace or mount tmpfs");
    }
    let exe = std::env::current_exe().expect("current_exe");
    // Mount the small tmpfs, then become the test child ("$0" is the test binary).
    let script = format!(
        "{MOUNT_TMPFS}\nexec \"$0\" {CHILD_MAIN} {}",
        ONE_IGNORED_TEST.join(" ")
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script])
        .arg(&exe)
        .env(ROLE_VAR, role)
        .env(KIND_VAR, kind);
    let child = match CapturedChild::spawn(cmd) {
        Ok(c) => c,
        Err(e) => loud_failure(&format!("cannot run `unshare`: {e}")),
    };
    let (status, output) = child.wait(CHILD_WATCHDOG);
    let what = format!("{role} ({kind}) in a private 16 MiB /dev/shm");
    match status.code() {
        Some(97) => loud_failure(&format!("`mount -t tmpfs` failed\n{output}")),
        Some(127) => loud_failure(&format!("`sh` or `mount` not found\n{output}")),
        // unshare's own failure (e.g. EPERM without CAP_SYS_ADMIN); 101 is a test
        // failure in the child, reported below.
        Some(1) => loud_failure(&format!("`unshare -m` failed\n{output}")),
        _ => assert_child_succeeded(status, &output, role, &what),
    }
}

/// Runs `child_main` with `role` as a plain child (no namespace).
fn run_child(role: &str, env: &[(&str, String)]) {
    let (status, output) = common::run_child_main(ROLE_VAR, role, env, CHILD_WATCHDOG);
    assert_child_succeeded(status, &output, role, role);
}

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} not set"))
}

/// The entry point of re-executed children; does nothing when run without a role.
#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    match role.as_str() {
        "create-too-big" => {
            assert_private_tmpfs();
            create_too_big(&env(KIND_VAR));
        }
        "grow-until-full" => {
            assert_private_tmpfs();
            grow_until_full(&env(KIND_VAR));
        }
        "memfd-peer" => memfd_peer(),
        other => panic!("unknown child role {other:?}"),
    }
    println!("{DONE_MARKER} {role}");
}

// ---------------------------------------------------------------------------------
// Inside the namespace.
// ---------------------------------------------------------------------------------

/// Refuses to go on unless `/dev/shm` is the fresh 16 MiB tmpfs: these children fill
/// it, which must never happen to the real one.
fn assert_private_tmpfs() {
    let st = rustix::fs::statvfs("/dev/shm").expect("statvfs /dev/shm");
    let total = st.f_blocks * st.f_frsize;
    assert_eq!(
        total, TMPFS_SIZE,
        "/dev/shm is {total} bytes, not the private 16 MiB tmpfs: refusing to fill it"
    );
    assert_eq!(st.f_bfree, st.f_blocks, "the private tmpfs is not empty");
}

fn free_bytes() -> u64 {
    let st = rustix::fs::statvfs("/dev/shm").expect("statvfs /dev/shm");
    st.f_bfree * st.f_frsize
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// A named segment to make in the private tmpfs: its options, the directory its name
/// lives in, and (for files) a directory to remove at the end.
struct Target {
    opts: SegmentOptions,
    dir: PathBuf,
    own_dir: Option<PathBuf>,
}

impl Target {
    fn new(kind: &str) -> Self {
        match kind {
            "posix" => Target {
                opts: SegmentOptions::posix(&shmkit::unique_name("nospace-").expect("name"))
                    .no_heap(),
                dir: PathBuf::from("/dev/shm"),
                own_dir: None,
            },
            "file" => {
                let dir = Path::new("/dev/shm").join(shmkit::unique_name("nospace-dir-").unwrap());
                std::fs::create_dir(&dir).expect("mkdir in the tmpfs");
                let path = dir.join(format!("{}.seg", shmkit::unique_name("f-").unwrap()));
                Target {
                    opts: SegmentOptions::file(path).no_heap(),
                    dir: dir.clone(),
                    own_dir: Some(dir),
                }
            }
            other => panic!("unknown kind {other:?}"),
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.opts.remove();
        if let Some(d) = &self.own_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// What page `off` holds in generation `generation`.
fn marker(off: u64, generation: u64) -> u64 {
    off ^ (generation << 56) ^ 0x00a5_5a00_0000_0000
}

/// Writes every page of `[from, to)` (at each page's first word).
fn fill(seg: &Segment, from: u64, to: u64, generation: u64) {
    let mut off = from;
    while off < to {
        // SAFETY: this test views each offset as one type only.
        let word = unsafe { seg.resolve(Offset::<AtomicU64>::new(off)) }
            .unwrap_or_else(|e| panic!("resolve committed page {off:#x}: {e}"));
        word.store(marker(off, generation), Ordering::Relaxed);
        off += PAGE_SIZE;
    }
}

/// Checks every page of `[from, to)` written by [`fill`].
fn verify(seg: &Segment, from: u64, to: u64, generation: u64) {
    let mut off = from;
    while off < to {
        // SAFETY: this test views each offset as one type only.
        let word = unsafe { seg.resolve(Offset::<AtomicU64>::new(off)) }
            .unwrap_or_else(|e| panic!("resolve committed page {off:#x}: {e}"));
        assert_eq!(
            word.load(Ordering::Relaxed),
            marker(off, generation),
            "page {off:#x}"
        );
        off += PAGE_SIZE;
    }
}

/// (a) Creating a segment whose committed size exceeds the store is `NoSpace`, not
/// a SIGBUS, and leaves nothing behind.
fn create_too_big(kind: &str) {
    let t = Target::new(kind);
    let before = list(&t.dir);
    let free = free_bytes();
    let opts = t.opts.clone().max_size(MAX_SIZE).committed(32 << 20);
    for what in ["create", "open_or_create"] {
        let r = match what {
            "create" => opts.create().map(drop),
            _ => opts.open_or_create().map(drop),
        };
        match r {
            Err(Error::NoSpace {
                requested,
                available,
            }) => {
                assert_eq!(requested, 32 << 20, "{kind} {what}: requested");
                assert!(
                    available < requested,
                    "{kind} {what}: {available} bytes available, {requested} requested"
                );
            }
            other => panic!("{kind} {what}: expected NoSpace, got {other:?}"),
        }
        assert_eq!(list(&t.dir), before, "{kind} {what} left something behind");
        assert_eq!(free_bytes(), free, "{kind} {what} kept space allocated");
    }
    assert!(
        matches!(t.opts.open(), Err(Error::NotFound(_))),
        "{kind}: a failed create left a name to open"
    );

    // A segment that fits is made there all the same, and all of it is usable.
    let seg = t
        .opts
        .clone()
        .max_size(MAX_SIZE)
        .committed(8 << 20)
        .create()
        .expect("a segment that fits");
    assert_eq!(seg.committed(), 8 << 20);
    fill(&seg, seg.user_offset(), seg.committed(), 1);
    verify(&seg, seg.user_offset(), seg.committed(), 1);
    drop(seg);
    assert_eq!(list(&t.dir), before, "{kind}: the creator's drop left it");
    assert_eq!(free_bytes(), free, "{kind}: space not given back");
}

/// (b, c) A segment grows page by page up to the store's limit, every committed page
/// written; growing further is `NoSpace`, not a SIGBUS, and changes nothing.
fn grow_until_full(kind: &str) {
    let t = Target::new(kind);
    let before = list(&t.dir);
    let free = free_bytes();
    let seg = t
        .opts
        .clone()
        .max_size(MAX_SIZE)
        .create()
        .expect("create small");
    let peer = t.opts.open().expect("open a peer");
    let user = seg.user_offset();
    assert!(seg.committed() < 1 << 20, "starts small");
    fill(&seg, user, seg.committed(), 1);

    // 1 MiB steps until one fails, then page steps until one fails.
    let mut step = 1 << 20;
    let mut steps = 0u32;
    loop {
        let cur = seg.committed();
        match seg.commit(cur + step) {
            Ok(c) => {
                assert!(c >= cur + step, "commit returned {c} for {}", cur + step);
                assert_eq!(seg.committed(), c);
                fill(&seg, cur, c, 1);
                steps += 1;
            }
            Err(Error::NoSpace {
                requested,
                available,
            }) => {
                assert_eq!(seg.committed(), cur, "a failed commit changed committed");
                assert!(
                    requested > 0 && available < requested,
                    "{requested} {available}"
                );
                if step == PAGE_SIZE {
                    break;
                }
                step = PAGE_SIZE;
            }
            Err(e) => panic!("{kind}: commit({}) gave {e:?}, not NoSpace", cur + step),
        }
    }
    let full = seg.committed();
    eprintln!("{kind}: committed {full} bytes of a {TMPFS_SIZE}-byte tmpfs in {steps} steps");
    assert!(
        full > TMPFS_SIZE - (1 << 20) && full <= TMPFS_SIZE,
        "{kind}: filled only {full} bytes"
    );

    // Further growth, by either handle and by any amount, is NoSpace and changes
    // nothing.
    for want in [full + PAGE_SIZE, full + (1 << 20), 32 << 20, MAX_SIZE] {
        for (who, s) in [("creator", &seg), ("peer", &peer)] {
            match s.commit(want) {
                Err(Error::NoSpace { .. }) => {}
                other => panic!("{kind}: {who} commit({want}) gave {other:?}, not NoSpace"),
            }
            assert_eq!(s.committed(), full, "{kind}: {who} after a failed commit");
        }
    }
    assert_eq!(
        seg.commit(full)
            .expect("a commit within the committed size"),
        full
    );
    // Beyond max_size is a size error, not a space error.
    assert!(matches!(
        seg.commit(MAX_SIZE + PAGE_SIZE),
        Err(Error::InvalidSize { .. })
    ));

    // Everything written is still there, seen by the peer, and still writable.
    assert_eq!(peer.committed(), full);
    verify(&peer, user, full, 1);
    fill(&peer, user, full, 2);
    verify(&seg, user, full, 2);

    drop(peer);
    drop(seg);
    assert_eq!(list(&t.dir), before, "{kind}: the creator's drop left it");
    assert_eq!(free_bytes(), free, "{kind}: space not given back");
}

#[test]
fn creating_a_posix_segment_larger_than_dev_shm_is_no_space_and_leaves_nothing() {
    run_in_private_tmpfs("create-too-big", "posix");
}

#[test]
fn creating_a_file_segment_larger_than_its_file_system_is_no_space_and_leaves_nothing() {
    run_in_private_tmpfs("create-too-big", "file");
}

#[test]
fn a_posix_segment_grows_to_the_limit_of_dev_shm_and_then_reports_no_space() {
    run_in_private_tmpfs("grow-until-full", "posix");
}

#[test]
fn a_file_segment_grows_to_the_limit_of_its_file_system_and_then_reports_no_space() {
    run_in_private_tmpfs("grow-until-full", "file");
}

// ---------------------------------------------------------------------------------
// (d) Sealed memfds.
// ---------------------------------------------------------------------------------

fn required_seals() -> SealFlags {
    SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL
}

/// Whatever a holder of `fd` (opened read-write) tries, the object stays `size`
/// bytes and its seals stay as they are.
fn assert_cannot_resize(fd: BorrowedFd<'_>, size: u64) {
    let seals = rustix::fs::fcntl_get_seals(fd).expect("F_GET_SEALS");
    assert!(
        seals.contains(required_seals()),
        "seals {seals:?} lack {:?}",
        required_seals()
    );
    for len in [
        0,
        PAGE_SIZE,
        size / 2,
        size - PAGE_SIZE,
        size + PAGE_SIZE,
        size * 2,
    ] {
        assert_eq!(
            rustix::fs::ftruncate(fd, len),
            Err(Errno::PERM),
            "ftruncate({len}) of a {size}-byte sealed memfd"
        );
    }
    // Growing by fallocate or by writing past the end is sealed off as well.
    assert_eq!(
        rustix::fs::fallocate(fd, FallocateFlags::empty(), size, PAGE_SIZE),
        Err(Errno::PERM),
        "fallocate past the end"
    );
    assert_eq!(
        rustix::io::pwrite(fd, b"x", size),
        Err(Errno::PERM),
        "pwrite past the end"
    );
    // F_SEAL_SEAL: the seal set is frozen. Linux has no way to remove a seal, and
    // no further seal (not even one already held) can be added.
    for extra in [
        SealFlags::WRITE,
        SealFlags::FUTURE_WRITE,
        SealFlags::SHRINK,
        SealFlags::GROW,
        SealFlags::SEAL,
    ] {
        assert_eq!(
            rustix::fs::fcntl_add_seals(fd, extra),
            Err(Errno::PERM),
            "F_ADD_SEALS {extra:?}"
        );
    }
    assert_eq!(rustix::fs::fcntl_get_seals(fd).expect("F_GET_SEALS"), seals);
    // Seals belong to the object: a fresh open sees the same ones.
    let again = reopen(fd);
    assert_eq!(
        rustix::fs::fcntl_get_seals(&again).expect("F_GET_SEALS"),
        seals
    );
    assert_eq!(rustix::fs::fstat(fd).expect("fstat").st_size as u64, size);
}

/// In a child: opens the parent's memfd through `/proc/<parent>/fd/<n>` and tries
/// to resize it; then attaches to it as a segment.
fn memfd_peer() {
    let path = env(FD_PATH_VAR);
    let size: u64 = env(SIZE_VAR).parse().expect("size");
    let seed: u64 = env(SEED_VAR).parse().expect("seed");
    let value: u64 = env(VALUE_VAR).parse().expect("value");
    let fd = open_rw(&path);
    assert_cannot_resize(fd.as_fd(), size);
    let seg = SegmentOptions::memfd()
        .no_heap()
        .open_fd(fd)
        .expect("the peer attaches");
    assert_eq!(seg.seed(), seed);
    assert_eq!(seg.max_size(), size);
    // SAFETY: this test views each offset as one type only.
    let word =
        unsafe { seg.resolve(Offset::<AtomicU64>::new(seg.user_offset())) }.expect("resolve");
    assert_eq!(word.load(Ordering::Relaxed), value);
    word.store(value + 1, Ordering::Relaxed);
}

fn sealed_segment() -> (Segment, u64) {
    let seg = SegmentOptions::memfd()
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .create()
        .expect("create memfd");
    let value = 0x5ea1_ed00_0000_0001;
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.resolve(Offset::<AtomicU64>::new(seg.user_offset())) }
        .expect("resolve")
        .store(value, Ordering::Relaxed);
    (seg, value)
}

#[test]
fn a_sealed_memfd_cannot_be_resized_by_a_peer_process() {
    let (seg, value) = sealed_segment();
    let fd = seg.as_fd().expect("fd");
    let path = format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd());
    run_child(
        "memfd-peer",
        &[
            (FD_PATH_VAR, path),
            (SIZE_VAR, seg.max_size().to_string()),
            (SEED_VAR, seg.seed().to_string()),
            (VALUE_VAR, value.to_string()),
        ],
    );
    // Still whole, and the peer's write arrived.
    assert_eq!(
        rustix::fs::fstat(fd).expect("fstat").st_size as u64,
        seg.max_size()
    );
    // SAFETY: this test views each offset as one type only.
    let word =
        unsafe { seg.resolve(Offset::<AtomicU64>::new(seg.user_offset())) }.expect("resolve");
    assert_eq!(word.load(Ordering::Relaxed), value + 1);
}

#[test]
fn a_sealed_memfd_received_over_a_socket_cannot_be_resized() {
    let (seg, value) = sealed_segment();
    let (a, b) = UnixStream::pair().expect("socketpair");
    seg.send_fd(&a).expect("send_fd");
    let received = shmkit::recv_fd(&b).expect("recv_fd");
    // The received descriptor shares the sender's open file description; a reopen
    // through /proc is a new one. Neither can resize it.
    assert_cannot_resize(received.as_fd(), seg.max_size());
    assert_cannot_resize(reopen(received.as_fd()).as_fd(), seg.max_size());
    let peer = SegmentOptions::memfd()
        .no_heap()
        .open_fd(received)
        .expect("open_fd");
    assert_eq!(peer.seed(), seg.seed());
    // SAFETY: this test views each offset as one type only.
    let word =
        unsafe { peer.resolve(Offset::<AtomicU64>::new(peer.user_offset())) }.expect("resolve");
    assert_eq!(word.load(Ordering::Relaxed), value);
    // The whole committed range is still readable and writable by both.
    fill(&peer, peer.user_offset(), peer.committed(), 3);
    verify(&seg, seg.user_offset(), seg.committed(), 3);
}

/// A memfd (made with `flags`, then sealed with `seals`) holding a copy of a real
/// segment's committed bytes, so that only its seals can make `open_fd` refuse it.
fn copy_into_memfd(seg: &Segment, flags: MemfdFlags, seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create("shmkit-test-unsealed", flags | MemfdFlags::CLOEXEC)
        .expect("memfd_create");
    rustix::fs::ftruncate(&fd, seg.max_size()).expect("ftruncate");
    // memfd_create makes mode 0777, which open_fd would refuse as shared-writable.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600)).expect("fchmod");
    let src = seg.as_fd().expect("fd");
    let mut buf = vec![0u8; seg.committed() as usize];
    let n = rustix::io::pread(src, &mut buf, 0).expect("pread");
    assert_eq!(n, buf.len());
    let n = rustix::io::pwrite(&fd, &buf, 0).expect("pwrite");
    assert_eq!(n, buf.len());
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).expect("F_ADD_SEALS");
    }
    fd
}

#[test]
fn an_unsealed_or_partly_sealed_memfd_is_refused() {
    let (seg, _) = sealed_segment();
    // The copy is accepted when sealed as shmkit seals: only the seals differ below.
    let good = copy_into_memfd(&seg, MemfdFlags::ALLOW_SEALING, required_seals());
    SegmentOptions::memfd()
        .no_heap()
        .open_fd(good)
        .expect("a properly sealed copy opens");

    let cases = [
        ("no seals", MemfdFlags::ALLOW_SEALING, SealFlags::empty()),
        // Without ALLOW_SEALING a memfd reports only F_SEAL_SEAL.
        (
            "sealing not allowed",
            MemfdFlags::empty(),
            SealFlags::empty(),
        ),
        (
            "no F_SEAL_SEAL",
            MemfdFlags::ALLOW_SEALING,
            SealFlags::SHRINK | SealFlags::GROW,
        ),
        (
            "no F_SEAL_GROW",
            MemfdFlags::ALLOW_SEALING,
            SealFlags::SHRINK | SealFlags::SEAL,
        ),
        (
            "no F_SEAL_SHRINK",
            MemfdFlags::ALLOW_SEALING,
            SealFlags::GROW | SealFlags::SEAL,
        ),
    ];
    for (what, flags, seals) in cases {
        let fd = copy_into_memfd(&seg, flags, seals);
        let have = rustix::fs::fcntl_get_seals(&fd).expect("F_GET_SEALS");
        match SegmentOptions::memfd().no_heap().open_fd(fd) {
            Err(Error::SealsMissing { found, required }) => {
                assert_eq!(found, have.bits(), "{what}");
                assert_eq!(required, required_seals().bits(), "{what}");
            }
            other => panic!("{what}: expected SealsMissing, got {other:?}"),
        }
    }

    // A descriptor that is not a memfd at all (a regular file) is refused the same way.
    let dir = TempDir::new();
    let path = dir.join("plain");
    std::fs::write(&path, vec![0u8; PAGE_SIZE as usize]).expect("write");
    let plain: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open")
        .into();
    match SegmentOptions::memfd().no_heap().open_fd(plain) {
        Err(Error::SealsMissing { .. }) => {}
        other => panic!("a regular file: expected SealsMissing, got {other:?}"),
    }
}
