//! Security properties of making and opening segments, for every named kind:
//!
//! - a created object has exactly the requested mode (default `0600`), whatever the
//!   umask (set in a re-executed child, since the umask is process-wide);
//! - a symlink (or any non-regular file) planted at a segment's name is never
//!   followed, opened or written;
//! - an object owned by another uid, or writable by group or others, is refused
//!   unless the caller opts in;
//! - generated names are unique and unguessable, and bad names are refused.
//!
//! These tests run as root (as CI does): `chown` to a foreign uid needs it.
#![cfg(not(miri))]

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{DONE_MARKER, TempDir, euid, reopen, shm_path, sysv_lock_path};
use shmkit::{Error, SegmentOptions};

/// Environment variable naming the role of a re-executed child.
const ROLE_VAR: &str = "SHMKIT_SECURITY_ROLE";
/// Environment variable carrying the umask (octal) for the `umask` role.
const UMASK_VAR: &str = "SHMKIT_SECURITY_UMASK";
/// Watchdog for a child: far beyond what it needs, so only a hang trips it.
const CHILD_WATCHDOG: Duration = Duration::from_secs(120);
/// A uid nobody on the test machine is expected to have.
const FOREIGN_UID: u32 = 12345;
/// Contents of the file a planted symlink points at.
const PRECIOUS: &[u8] = b"precious contents that no segment call may touch\n";
const SEG_SIZE: u64 = 1 << 20;

// ---------------------------------------------------------------------------------
// Helpers: names, guards that clean up, child processes.
// ---------------------------------------------------------------------------------

fn name() -> String {
    shmkit::unique_name("sec-").expect("unique_name")
}

/// Removes a path (file, symlink, fifo or empty directory) on drop, ignoring
/// `NotFound`: whatever a test planted or made disappears even if it panics.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.0) {
            Ok(m) if m.is_dir() => {
                let _ = fs::remove_dir(&self.0);
            }
            Ok(_) => {
                let _ = fs::remove_file(&self.0);
            }
            Err(_) => {}
        }
    }
}

/// Removes a System V segment (and its companion lock file) on drop.
struct SysvGuard(i32);

impl Drop for SysvGuard {
    fn drop(&mut self) {
        let _ = SegmentOptions::sysv_id(self.0).remove();
        let _ = fs::remove_file(sysv_lock_path(self.0));
    }
}

/// `shmctl(IPC_STAT)`.
fn sysv_stat(id: i32) -> libc::shmid_ds {
    // SAFETY: shmid_ds is a plain C struct of integers; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, exclusively borrowed shmid_ds that IPC_STAT fills.
    let r = unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) };
    assert_eq!(
        r,
        0,
        "shmctl(IPC_STAT, {id}): {}",
        std::io::Error::last_os_error()
    );
    ds
}

/// `shmctl(IPC_SET)` with the uid and mode given (the rest as IPC_STAT says).
fn sysv_set(id: i32, uid: u32, mode: u32) {
    let mut ds = sysv_stat(id);
    ds.shm_perm.uid = uid;
    ds.shm_perm.mode = mode as _;
    // SAFETY: `ds` is a valid shmid_ds filled by IPC_STAT; IPC_SET only reads it.
    let r = unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) };
    assert_eq!(
        r,
        0,
        "shmctl(IPC_SET, {id}): {}",
        std::io::Error::last_os_error()
    );
}

/// Runs `child_main` in a fresh copy of this test binary with `role` and `env`, and
/// asserts that it succeeded (exited 0, not killed by a signal).
fn run_child(role: &str, env: &[(&str, String)]) {
    let (status, output) = common::run_child_main(ROLE_VAR, role, env, CHILD_WATCHDOG);
    assert_eq!(
        status.signal(),
        None,
        "child {role} was killed by a signal\n{output}"
    );
    assert!(status.success(), "child {role} failed: {status}\n{output}");
    assert!(
        output.contains(&format!("{DONE_MARKER} {role}\n")),
        "child {role} exited 0 without finishing its role\n{output}"
    );
    eprintln!("{output}");
}

/// The entry point of re-executed children; does nothing when run without a role.
#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    match role.as_str() {
        "umask" => child_modes_under_umask(),
        other => panic!("unknown child role {other:?}"),
    }
    println!("{DONE_MARKER} {role}");
}

// ---------------------------------------------------------------------------------
// 1. Exact modes whatever the umask.
// ---------------------------------------------------------------------------------

/// The named and descriptor kinds checked for modes.
#[derive(Copy, Clone, Debug)]
enum Kind {
    Posix,
    File,
    Memfd,
    SysV,
}

const KINDS: [Kind; 4] = [Kind::Posix, Kind::File, Kind::Memfd, Kind::SysV];

/// In a child: sets the umask, creates one segment of each kind with the default
/// and with an explicit mode, and checks the object's permission bits.
fn child_modes_under_umask() {
    let raw = std::env::var(UMASK_VAR).expect("umask variable");
    let mask = u32::from_str_radix(&raw, 8).expect("octal umask");
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
    // Read it back (umask has no getter: set it again and restore).
    let now = rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
    assert_eq!(now.as_raw_mode() & 0o777, mask, "umask did not take");

    let dir = TempDir::new();
    let mut wrong = Vec::new();
    for kind in KINDS {
        for (requested, expected) in [(None, 0o600), (Some(0o640), 0o640)] {
            check_created_mode(kind, &dir, requested, expected, mask, &mut wrong);
        }
    }
    assert!(wrong.is_empty(), "wrong modes:\n{}", wrong.join("\n"));
}

/// Records a mismatch instead of panicking, so that every kind is checked.
fn check_mode(found: u32, expected: u32, what: &str, wrong: &mut Vec<String>) {
    if found != expected {
        wrong.push(format!("{what}: mode {found:04o}, expected {expected:04o}"));
    }
}

fn check_created_mode(
    kind: Kind,
    dir: &TempDir,
    requested: Option<u32>,
    expected: u32,
    mask: u32,
    wrong: &mut Vec<String>,
) {
    let asked = requested.map_or_else(|| "default".to_owned(), |m| format!("{m:04o}"));
    let ctx = format!("{kind:?} created with mode {asked} under umask {mask:03o}");
    let with_mode = |o: SegmentOptions| match requested {
        Some(m) => o.mode(m).max_size(SEG_SIZE),
        None => o.max_size(SEG_SIZE),
    };
    match kind {
        Kind::Posix | Kind::File => {
            let (opts, path) = match kind {
                Kind::Posix => {
                    let n = name();
                    (SegmentOptions::posix(&n), shm_path(&n))
                }
                _ => {
                    let p = dir.join(&format!("{}.seg", name()));
                    (SegmentOptions::file(&p), p)
                }
            };
            let seg = with_mode(opts.clone()).create().expect(&ctx);
            let _remove = RemoveOnDrop(path.clone());
            let md = fs::symlink_metadata(&path).expect(&ctx);
            assert!(md.file_type().is_file(), "{ctx}: not a regular file");
            check_mode(md.mode() & 0o7777, expected, &ctx, wrong);
            assert_eq!(md.uid(), euid(), "{ctx}: owner");
            // A peer can open it (0600 and 0640 are not shared-writable).
            let peer = opts.open().expect(&ctx);
            assert_eq!(peer.seed(), seg.seed(), "{ctx}: reopen");
            drop(peer);
            drop(seg);
            assert!(
                fs::symlink_metadata(&path).is_err(),
                "{ctx}: creator's drop left {}",
                path.display()
            );
        }
        Kind::Memfd => {
            let seg = with_mode(SegmentOptions::memfd()).create().expect(&ctx);
            let fd = seg.as_fd().expect("memfd segment has a descriptor");
            let st = rustix::fs::fstat(fd).expect("fstat");
            check_mode(st.st_mode & 0o7777, expected, &ctx, wrong);
            assert_eq!(st.st_uid, euid(), "{ctx}: owner");
            // As a peer would: a new open of the same memfd.
            let peer = SegmentOptions::memfd()
                .open_fd(reopen(fd))
                .expect("open_fd of a fresh memfd");
            assert_eq!(peer.seed(), seg.seed(), "{ctx}: reopen");
        }
        Kind::SysV => {
            let seg = with_mode(SegmentOptions::sysv_private())
                .create()
                .expect(&ctx);
            let id = seg.sysv_id().expect("System V segment has an id");
            let _guard = SysvGuard(id);
            let ds = sysv_stat(id);
            check_mode(u32::from(ds.shm_perm.mode) & 0o777, expected, &ctx, wrong);
            assert_eq!(ds.shm_perm.uid, euid(), "{ctx}: owner");
            assert_eq!(ds.shm_perm.cuid, euid(), "{ctx}: creator");
            // The companion lock file carries exactly the segment's read/write bits,
            // so whoever may write the segment may take its liveness locks.
            let lock = sysv_lock_path(id);
            let md = fs::symlink_metadata(&lock).expect("lock file exists");
            assert!(md.file_type().is_file(), "{ctx}: lock file not regular");
            check_mode(
                md.mode() & 0o7777,
                expected & 0o666,
                &format!("{ctx}: its lock file {}", lock.display()),
                wrong,
            );
            let peer = SegmentOptions::sysv_id(id).open().expect(&ctx);
            assert_eq!(peer.seed(), seg.seed(), "{ctx}: reopen");
        }
    }
}

fn modes_are_exact_under_umask(mask: u32) {
    run_child("umask", &[(UMASK_VAR, format!("{mask:o}"))]);
}

#[test]
fn created_objects_get_exactly_the_requested_mode_under_umask_000() {
    modes_are_exact_under_umask(0o000);
}

#[test]
fn created_objects_get_exactly_the_requested_mode_under_umask_077() {
    modes_are_exact_under_umask(0o077);
}

#[test]
fn created_objects_get_exactly_the_requested_mode_under_umask_777() {
    modes_are_exact_under_umask(0o777);
}

// ---------------------------------------------------------------------------------
// 2. Symlinks and other non-regular files at a name are never followed.
// ---------------------------------------------------------------------------------

/// Asserts that `target` still holds exactly [`PRECIOUS`] and that `link` is still a
/// symlink to it.
fn assert_untouched(target: &Path, link: &Path, ctx: &str) {
    let md = fs::symlink_metadata(target).expect("target still exists");
    assert_eq!(
        md.len(),
        PRECIOUS.len() as u64,
        "{ctx}: target size changed"
    );
    assert_eq!(
        fs::read(target).expect("read target"),
        PRECIOUS,
        "{ctx}: target contents changed"
    );
    assert_eq!(md.mode() & 0o7777, 0o644, "{ctx}: target mode changed");
    assert_eq!(md.nlink(), 1, "{ctx}: target gained a link");
    let lmd = fs::symlink_metadata(link).expect("link still exists");
    assert!(lmd.file_type().is_symlink(), "{ctx}: link was replaced");
    assert_eq!(fs::read_link(link).expect("readlink"), target);
}

fn plant_target(dir: &TempDir) -> PathBuf {
    let target = dir.join("target");
    fs::write(&target, PRECIOUS).expect("write target");
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).expect("chmod target");
    target
}

/// Create, open and open_or_create all refuse a symlink at the name, and leave its
/// target alone.
fn symlink_is_refused(opts: &SegmentOptions, link: &Path, target: &Path, ctx: &str) {
    let opts = opts.clone().max_size(SEG_SIZE);
    match opts.create() {
        Err(Error::AlreadyExists(_)) => {}
        other => panic!("{ctx}: create over a symlink gave {other:?}"),
    }
    assert_untouched(target, link, ctx);
    match opts.open() {
        Err(Error::NotRegularFile(_)) => {}
        other => panic!("{ctx}: open of a symlink gave {other:?}"),
    }
    assert_untouched(target, link, ctx);
    match opts.open_or_create() {
        Err(Error::NotRegularFile(_)) => {}
        Err(e) => panic!("{ctx}: open_or_create over a symlink gave {e:?}"),
        Ok((_, how)) => panic!("{ctx}: open_or_create over a symlink succeeded ({how:?})"),
    }
    assert_untouched(target, link, ctx);
}

#[test]
fn a_symlink_at_a_posix_name_is_neither_followed_nor_written() {
    let dir = TempDir::new();
    let target = plant_target(&dir);
    let n = name();
    let link = RemoveOnDrop(shm_path(&n));
    symlink(&target, &link.0).expect("plant symlink");
    symlink_is_refused(&SegmentOptions::posix(&n), &link.0, &target, "posix");
    // With the POSIX leading slash too.
    symlink_is_refused(
        &SegmentOptions::posix(&format!("/{n}")),
        &link.0,
        &target,
        "posix with leading /",
    );
}

#[test]
fn a_symlink_at_a_file_path_is_neither_followed_nor_written() {
    let dir = TempDir::new();
    let target = plant_target(&dir);
    let path = dir.join("segment.shm");
    symlink(&target, &path).expect("plant symlink");
    symlink_is_refused(&SegmentOptions::file(&path), &path, &target, "file");
}

#[test]
fn a_dangling_symlink_at_a_name_is_not_followed_to_create_its_target() {
    let dir = TempDir::new();
    let target = dir.join("would-be-created");
    let n = name();
    let link = RemoveOnDrop(shm_path(&n));
    symlink(&target, &link.0).expect("plant symlink");
    let file_link = dir.join("segment.shm");
    symlink(&target, &file_link).expect("plant symlink");
    for (opts, link) in [
        (SegmentOptions::posix(&n), link.0.as_path()),
        (SegmentOptions::file(&file_link), file_link.as_path()),
    ] {
        let opts = opts.max_size(SEG_SIZE);
        let ctx = format!("{:?} via {}", opts.kind(), link.display());
        assert!(
            matches!(opts.create(), Err(Error::AlreadyExists(_))),
            "{ctx}: create"
        );
        assert!(
            matches!(opts.open(), Err(Error::NotRegularFile(_))),
            "{ctx}: open"
        );
        assert!(
            matches!(opts.open_or_create(), Err(Error::NotRegularFile(_))),
            "{ctx}: open_or_create"
        );
        assert!(
            fs::symlink_metadata(&target).is_err(),
            "{ctx}: the symlink's target was created"
        );
        assert!(
            fs::symlink_metadata(link)
                .expect("link still there")
                .file_type()
                .is_symlink()
        );
    }
}

#[test]
fn a_symlink_to_another_segment_is_not_opened_as_that_segment() {
    let real = name();
    let seg = SegmentOptions::posix(&real)
        .max_size(SEG_SIZE)
        .create()
        .expect("create the real segment");
    let _real_cleanup = RemoveOnDrop(shm_path(&real));
    let alias = name();
    let link = RemoveOnDrop(shm_path(&alias));
    symlink(shm_path(&real), &link.0).expect("plant symlink");
    let opts = SegmentOptions::posix(&alias);
    assert!(matches!(opts.open(), Err(Error::NotRegularFile(_))));
    assert!(matches!(
        opts.open_or_create(),
        Err(Error::NotRegularFile(_))
    ));
    // Removing the alias removes the link, never the segment it points at.
    opts.remove().expect("remove the alias");
    assert!(fs::symlink_metadata(&link.0).is_err());
    let peer = SegmentOptions::posix(&real)
        .open()
        .expect("the real one is intact");
    assert_eq!(peer.seed(), seg.seed());
}

#[test]
fn a_fifo_or_directory_at_a_name_is_refused() {
    // A fifo: O_RDWR opens it without blocking, so the type check must catch it.
    let fifo_name = name();
    let fifo = RemoveOnDrop(shm_path(&fifo_name));
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo.0,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    let dir_name = name();
    let dir = RemoveOnDrop(shm_path(&dir_name));
    fs::create_dir(&dir.0).expect("mkdir");
    for (n, path) in [(&fifo_name, &fifo.0), (&dir_name, &dir.0)] {
        let opts = SegmentOptions::posix(n).max_size(SEG_SIZE);
        let ctx = path.display().to_string();
        match opts.open() {
            Err(Error::NotRegularFile(_)) => {}
            other => panic!("{ctx}: open gave {other:?}"),
        }
        assert!(
            matches!(opts.create(), Err(Error::AlreadyExists(_))),
            "{ctx}: create"
        );
        match opts.open_or_create() {
            Err(Error::NotRegularFile(_)) => {}
            Err(e) => panic!("{ctx}: open_or_create gave {e:?}"),
            Ok(_) => panic!("{ctx}: open_or_create succeeded"),
        }
    }
    assert!(
        fs::symlink_metadata(&fifo.0)
            .expect("fifo")
            .file_type()
            .is_fifo()
    );
    assert!(fs::symlink_metadata(&dir.0).expect("dir").is_dir());
}

#[test]
fn a_symlink_at_a_system_v_lock_file_is_refused() {
    let dir = TempDir::new();
    let target = plant_target(&dir);
    let mut seg = SegmentOptions::sysv_private()
        .max_size(SEG_SIZE)
        .create()
        .expect("create System V segment");
    let id = seg.sysv_id().expect("id");
    let _guard = SysvGuard(id);
    seg.persist();
    drop(seg);
    // Replace the companion lock file with a symlink to the precious file.
    let lock = sysv_lock_path(id);
    fs::remove_file(&lock).expect("remove lock file");
    symlink(&target, &lock).expect("plant symlink");
    match SegmentOptions::sysv_id(id).open() {
        Err(Error::NotRegularFile(_)) => {}
        other => panic!("open with a symlinked lock file gave {other:?}"),
    }
    assert_untouched(&target, &lock, "System V lock file");
    // The same for a dangling symlink: its target is not created.
    fs::remove_file(&lock).expect("remove symlink");
    let nowhere = dir.join("nowhere");
    symlink(&nowhere, &lock).expect("plant dangling symlink");
    match SegmentOptions::sysv_id(id).open() {
        Err(Error::NotRegularFile(_)) => {}
        other => panic!("open with a dangling symlinked lock file gave {other:?}"),
    }
    assert!(fs::symlink_metadata(&nowhere).is_err(), "target created");
}

// ---------------------------------------------------------------------------------
// 3. Foreign owners and shared-writable modes are refused unless allowed.
// ---------------------------------------------------------------------------------

fn assert_foreign(r: shmkit::Result<shmkit::Segment>, ctx: &str) {
    match r {
        Err(Error::ForeignOwner { found, expected }) => {
            assert_eq!(found, FOREIGN_UID, "{ctx}");
            assert_eq!(expected, euid(), "{ctx}");
        }
        other => panic!("{ctx}: expected ForeignOwner, got {other:?}"),
    }
}

fn assert_insecure(r: shmkit::Result<shmkit::Segment>, mode: u32, ctx: &str) {
    match r {
        Err(Error::InsecureMode { mode: found }) => assert_eq!(found, mode, "{ctx}"),
        other => panic!("{ctx}: expected InsecureMode {mode:o}, got {other:?}"),
    }
}

/// Runs the ownership and mode checks on a named object at `path`.
fn foreign_and_shared_objects_are_refused(opts: &SegmentOptions, path: &Path) {
    let mut seg = opts.clone().max_size(SEG_SIZE).create().expect("create");
    seg.persist();
    let seed = seg.seed();
    drop(seg);
    let _cleanup = RemoveOnDrop(path.to_owned());
    let ctx = path.display().to_string();

    // Foreign owner.
    std::os::unix::fs::chown(path, Some(FOREIGN_UID), None).expect("chown");
    assert_foreign(opts.open(), &ctx);
    assert_foreign(opts.open_or_create().map(|(s, _)| s), &ctx);
    let s = opts
        .clone()
        .allow_foreign_owner(true)
        .open()
        .expect("allow_foreign_owner opens it");
    assert_eq!(s.seed(), seed);
    drop(s);
    // Foreign and group-writable: allowing one is not allowing the other.
    fs::set_permissions(path, fs::Permissions::from_mode(0o620)).expect("chmod");
    assert_insecure(opts.clone().allow_foreign_owner(true).open(), 0o620, &ctx);
    assert_foreign(opts.clone().allow_shared_write(true).open(), &ctx);
    opts.clone()
        .allow_foreign_owner(true)
        .allow_shared_write(true)
        .open()
        .expect("both allowed");
    std::os::unix::fs::chown(path, Some(euid()), None).expect("chown back");

    // Writable by group or by others.
    for mode in [0o620, 0o602, 0o660, 0o666, 0o622] {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
        assert_insecure(opts.open(), mode, &format!("{ctx} mode {mode:o}"));
        assert_insecure(
            opts.open_or_create().map(|(s, _)| s),
            mode,
            &format!("{ctx} mode {mode:o} open_or_create"),
        );
        let s = opts
            .clone()
            .allow_shared_write(true)
            .open()
            .expect("allow_shared_write opens it");
        assert_eq!(s.seed(), seed);
    }
    // Readable (not writable) by others is not refused.
    for mode in [0o640, 0o644, 0o600] {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
        let s = opts
            .open()
            .unwrap_or_else(|e| panic!("{ctx} mode {mode:o}: {e}"));
        assert_eq!(s.seed(), seed);
    }
}

#[test]
fn a_posix_object_of_another_owner_or_shared_writable_is_refused_unless_allowed() {
    let n = name();
    foreign_and_shared_objects_are_refused(&SegmentOptions::posix(&n), &shm_path(&n));
}

#[test]
fn a_file_of_another_owner_or_shared_writable_is_refused_unless_allowed() {
    let dir = TempDir::new();
    let path = dir.join("segment.shm");
    foreign_and_shared_objects_are_refused(&SegmentOptions::file(&path), &path);
}

#[test]
fn a_memfd_of_another_owner_or_shared_writable_is_refused_unless_allowed() {
    let seg = SegmentOptions::memfd()
        .max_size(SEG_SIZE)
        .create()
        .expect("create");
    let fd = seg.as_fd().expect("fd");
    rustix::fs::fchown(fd, Some(rustix::process::Uid::from_raw(FOREIGN_UID)), None)
        .expect("fchown");
    assert_foreign(SegmentOptions::memfd().open_fd(reopen(fd)), "memfd");
    let peer = SegmentOptions::memfd()
        .allow_foreign_owner(true)
        .open_fd(reopen(fd))
        .expect("allow_foreign_owner opens it");
    assert_eq!(peer.seed(), seg.seed());
    drop(peer);
    rustix::fs::fchown(fd, Some(rustix::process::Uid::from_raw(euid())), None)
        .expect("fchown back");
    for mode in [0o620, 0o602] {
        rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(mode)).expect("fchmod");
        assert_insecure(SegmentOptions::memfd().open_fd(reopen(fd)), mode, "memfd");
        SegmentOptions::memfd()
            .allow_shared_write(true)
            .open_fd(reopen(fd))
            .expect("allow_shared_write opens it");
    }
}

#[test]
fn a_system_v_segment_of_another_owner_or_shared_writable_is_refused_unless_allowed() {
    let mut seg = SegmentOptions::sysv_private()
        .max_size(SEG_SIZE)
        .create()
        .expect("create");
    let id = seg.sysv_id().expect("id");
    let _guard = SysvGuard(id);
    seg.persist();
    let seed = seg.seed();
    drop(seg);
    let opts = SegmentOptions::sysv_id(id);

    sysv_set(id, FOREIGN_UID, 0o600);
    assert_foreign(opts.open(), "System V");
    let s = opts
        .clone()
        .allow_foreign_owner(true)
        .open()
        .expect("allow_foreign_owner opens it");
    assert_eq!(s.seed(), seed);
    drop(s);

    for mode in [0o620, 0o602] {
        sysv_set(id, euid(), mode);
        assert_insecure(opts.open(), mode, "System V");
        let s = opts
            .clone()
            .allow_shared_write(true)
            .open()
            .expect("allow_shared_write opens it");
        assert_eq!(s.seed(), seed);
    }
    sysv_set(id, euid(), 0o640);
    opts.open().expect("group-readable is accepted");
}

// ---------------------------------------------------------------------------------
// 4. Names.
// ---------------------------------------------------------------------------------

#[test]
fn generated_names_are_unique_prefixed_and_carry_128_random_bits() {
    let prefix = "sec-";
    let mut seen = HashSet::new();
    for _ in 0..1000 {
        let n = shmkit::unique_name(prefix).expect("unique_name");
        let rest = n.strip_prefix(prefix).expect("starts with the prefix");
        assert_eq!(rest.len(), 32, "{n}");
        assert!(
            rest.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{n}: not lowercase hex"
        );
        assert!(seen.insert(n.clone()), "{n} generated twice");
    }
    // An empty prefix works; the longest prefix that still fits 255 bytes works.
    assert_eq!(shmkit::unique_name("").expect("empty prefix").len(), 32);
    let long = "p".repeat(shmkit::MAX_NAME_LEN - 32);
    let n = shmkit::unique_name(&long).expect("longest prefix");
    assert_eq!(n.len(), shmkit::MAX_NAME_LEN);
    // ... and names that long really make segments.
    let seg = SegmentOptions::posix(&n)
        .max_size(SEG_SIZE)
        .create()
        .expect("255-byte name");
    let _cleanup = RemoveOnDrop(shm_path(&n));
    SegmentOptions::posix(&n)
        .open()
        .expect("open 255-byte name");
    drop(seg);
}

#[test]
fn invalid_name_prefixes_are_rejected() {
    let too_long = "p".repeat(shmkit::MAX_NAME_LEN - 31);
    for prefix in ["a/b-", "sec/", "a/", "..//", "nul\0-", too_long.as_str()] {
        match shmkit::unique_name(prefix) {
            Err(Error::InvalidName { .. }) => {}
            other => panic!("prefix {prefix:?}: expected InvalidName, got {other:?}"),
        }
    }
}

#[test]
fn invalid_posix_names_are_rejected_by_create_open_and_remove() {
    let too_long = "x".repeat(shmkit::MAX_NAME_LEN + 1);
    let slash_too_long = format!("/{too_long}");
    let bad = [
        "",
        "/",
        ".",
        "..",
        "/.",
        "/..",
        "a/b",
        "/a/b",
        "a/",
        "../etc",
        "a\0b",
        "\0",
        too_long.as_str(),
        slash_too_long.as_str(),
    ];
    for n in bad {
        let opts = SegmentOptions::posix(n).max_size(SEG_SIZE);
        let expect_invalid = |what: &str, r: Result<(), Error>| match r {
            Err(Error::InvalidName { name, .. }) => assert_eq!(name, n, "{what} {n:?}"),
            other => panic!("{what} {n:?}: expected InvalidName, got {other:?}"),
        };
        expect_invalid("create", opts.create().map(drop));
        expect_invalid("open", opts.open().map(drop));
        expect_invalid("open_or_create", opts.open_or_create().map(drop));
        expect_invalid("remove", opts.remove());
    }
}
