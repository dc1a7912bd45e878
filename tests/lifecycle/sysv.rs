//! System V leftovers (issue 9, item 3): an open that fails creates nothing that
//! outlives it; `SegmentOptions::remove` never removes a foreign segment but deletes
//! our own lock file whatever the segment's state; `Segment::remove_now` takes the
//! name away at once while every attached process keeps a working mapping, and a
//! lock file that a live process of ours uses is never deleted under it.
//!
//! Children are this test binary re-executed (`sysv::child_main`, role in
//! `SHMKIT_LIFECYCLE_ROLE`); they answer on stdout lines starting with `SHMKIT:`,
//! and leave at end-of-file on stdin, so none outlives the test.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

use crate::common::child::{PREFIX, say, wait_for_eof};
use std::io::{BufRead, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::common::{self, LineChild, PATIENCE, TempDir, eventually, sysv_lock_path};
use shmkit::{Error, Offset, Segment, SegmentOptions, SlotState};

/// Environment variables of a child: its role, the segment id, the parent's slot.
const ROLE: &str = "SHMKIT_LIFECYCLE_ROLE";
const ID: &str = "SHMKIT_LIFECYCLE_SYSV_ID";
const PARENT_SLOT: &str = "SHMKIT_LIFECYCLE_PARENT_SLOT";
/// Size of the foreign segments.
const FOREIGN_SIZE: usize = 64 << 10;

// ---------------------------------------------------------------------------------
// Helpers: raw System V calls, guards, children.
// ---------------------------------------------------------------------------------

/// `IPC_STAT` of `id`, `None` if no segment has that id.
fn raw_stat(id: i32) -> Option<libc::shmid_ds> {
    // SAFETY: shmid_ds is a plain C struct for which all-zero is valid.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, exclusively borrowed shmid_ds.
    let r = unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) };
    (r == 0).then_some(ds)
}

/// Whether a segment has id `id`.
fn exists(id: i32) -> bool {
    raw_stat(id).is_some()
}

/// Whether segment `id` exists and is marked for removal (`SHM_DEST`).
fn marked_for_removal(id: i32) -> bool {
    raw_stat(id).is_some_and(|ds| u32::from(ds.shm_perm.mode) & 0o1000 != 0)
}

/// `ipcrm`: removes segment `id` outside shmkit.
fn raw_remove(id: i32) {
    // SAFETY: IPC_RMID ignores the buffer; null is allowed.
    let r = unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    assert_eq!(r, 0, "IPC_RMID {id}: {}", std::io::Error::last_os_error());
}

/// Another program's segment, made with a raw `shmget` and filled with one byte;
/// removed on drop, with anything left at its lock-file path.
struct Foreign(i32);

impl Foreign {
    fn new(fill: u8) -> Self {
        // SAFETY: shmget takes plain integers.
        let id = unsafe { libc::shmget(libc::IPC_PRIVATE, FOREIGN_SIZE, libc::IPC_CREAT | 0o600) };
        assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
        let seg = Foreign(id);
        seg.with_bytes(|b| b.fill(fill));
        seg
    }

    /// Runs `f` on the segment's bytes, attached for the call.
    fn with_bytes<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        // SAFETY: a fresh attach at an address of the kernel's choosing.
        let p = unsafe { libc::shmat(self.0, std::ptr::null(), 0) };
        assert_ne!(p as isize, -1, "shmat: {}", std::io::Error::last_os_error());
        // SAFETY: FOREIGN_SIZE bytes are attached at `p` until the shmdt below;
        // this test's private segment, which nothing else writes meanwhile.
        let r = f(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), FOREIGN_SIZE) });
        // SAFETY: detaches what was attached above; the slice is gone.
        unsafe { libc::shmdt(p) };
        r
    }

    fn all(&self, fill: u8) -> bool {
        self.with_bytes(|b| b.iter().all(|&x| x == fill))
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID ignores the buffer; null is allowed.
        unsafe { libc::shmctl(self.0, libc::IPC_RMID, std::ptr::null_mut()) };
        let _ = std::fs::remove_file(sysv_lock_path(self.0));
    }
}

/// One of our segments, removed (with its lock file) on drop whatever the test did.
struct Ours(i32);

impl Drop for Ours {
    fn drop(&mut self) {
        let _ = SegmentOptions::sysv_id(self.0).remove();
        let _ = std::fs::remove_file(sysv_lock_path(self.0));
    }
}

/// A persisted private segment with no handle left: its id.
fn persisted_segment(slots: u32) -> i32 {
    let mut seg = SegmentOptions::sysv_private()
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .registry_slots(slots)
        .create()
        .expect("create");
    seg.persist();
    seg.sysv_id().expect("a System V id")
}

/// A System V key that names no segment.
fn unused_key() -> i32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) & 0xff;
        let key = (0x3c00_0000 | ((std::process::id() & 0xffff) << 8) | n) as i32;
        // SAFETY: shmget takes plain integers.
        if unsafe { libc::shmget(key, 0, 0) } < 0 {
            return key;
        }
    }
}

/// The word at `at` bytes into the user region.
fn word(seg: &Segment, at: u64) -> &AtomicU64 {
    // SAFETY: these tests view each offset of the user region as an AtomicU64 only.
    unsafe { seg.resolve(Offset::<AtomicU64>::new(seg.user_offset() + at)) }.expect("resolve")
}

fn inode(path: &Path) -> u64 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

/// A child running `role`, its stdin piped (end-of-file tells it to leave).
fn spawn(role: &str, env: &[(&str, String)]) -> LineChild {
    let mut cmd = common::self_test_command("sysv::child_main");
    cmd.env(ROLE, role);
    for (k, v) in env {
        cmd.env(k, v);
    }
    LineChild::spawn(cmd, Stdio::piped())
}

/// The child's next line after [`PREFIX`].
fn hear(child: &LineChild) -> String {
    child
        .next_after(PREFIX, PATIENCE)
        .unwrap_or_else(|e| panic!("child {}: no line: {e:?}", child.pid()))
}

/// Closes the child's stdin and asserts that it then exits 0, not by a signal.
fn finish(mut child: LineChild) {
    child.close_stdin();
    let status = child
        .wait_for_exit(PATIENCE)
        .unwrap_or_else(|| panic!("child {} did not exit", child.pid()));
    assert_eq!(status.signal(), None, "child killed: {status}");
    assert!(status.success(), "child failed: {status}");
}

// ---------------------------------------------------------------------------------
// Children.
// ---------------------------------------------------------------------------------

fn env_num<T: std::str::FromStr>(var: &str) -> T {
    let v = std::env::var(var).unwrap_or_else(|_| panic!("{var} not set"));
    v.parse()
        .unwrap_or_else(|_| panic!("{var}={v:?} is not a number"))
}

/// The entry point of re-executed children; does nothing when run without a role.
#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "attach" => child_attach(),
        "create-remove-now" => child_create_remove_now(),
        other => panic!("unknown child role {other:?}"),
    }
}

/// Attach to segment `ID`, mark word 8, say "ready <slot>"; at a line on stdin,
/// report what the segment looks like from here, then stay until end-of-file.
fn child_attach() {
    let id: i32 = env_num(ID);
    let seg = SegmentOptions::sysv_id(id).open().expect("child opens");
    word(&seg, 8).store(0x1111, Ordering::Relaxed);
    say(format!("ready {}", seg.slot()));
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).unwrap_or(0) == 0 {
        return; // end-of-file: just leave
    }
    let saw = word(&seg, 0).load(Ordering::Relaxed);
    word(&seg, 8).store(0x3333, Ordering::Relaxed);
    let reopen = match SegmentOptions::sysv_id(id).open() {
        Err(Error::NotFound(_)) => "not-found".to_owned(),
        Ok(_) => "opened".to_owned(),
        Err(e) => format!("error:{e:?}"),
    };
    let parent = match seg.slot_info(env_num(PARENT_SLOT)) {
        Ok(info) => format!("{:?}", info.state),
        Err(e) => format!("error:{e:?}"),
    };
    say(format!("after {saw:#x} {reopen} {parent}"));
    wait_for_eof();
}

/// Create a private segment, remove it at once and stay attached until killed.
fn child_create_remove_now() {
    let seg = SegmentOptions::sysv_private()
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .create()
        .expect("create");
    seg.remove_now().expect("remove_now");
    word(&seg, 0).store(1, Ordering::Relaxed);
    say(format!("created {}", seg.sysv_id().expect("id")));
    wait_for_eof();
}

// ---------------------------------------------------------------------------------
// A failed open leaves nothing.
// ---------------------------------------------------------------------------------

#[test]
fn a_failed_open_of_a_foreign_segment_leaves_no_lock_file() {
    // Another program's bytes, and a zeroed segment as AFL++ makes them.
    for fill in [0x5a_u8, 0] {
        let seg = Foreign::new(fill);
        let lock = sysv_lock_path(seg.0);
        assert!(!lock.exists(), "{fill:#x}: a lock file before any open");
        for attempt in 0..2 {
            match SegmentOptions::sysv_id(seg.0).open() {
                Err(Error::BadMagic { found }) => assert_eq!(found, [fill; 8]),
                other => panic!("{fill:#x}: open gave {other:?}, not BadMagic"),
            }
            assert!(
                !lock.exists(),
                "{fill:#x}: open {attempt} left {}",
                lock.display()
            );
        }
        assert!(
            seg.all(fill),
            "{fill:#x}: the open changed the foreign bytes"
        );
        assert!(
            exists(seg.0) && !marked_for_removal(seg.0),
            "{fill:#x}: the open removed the foreign segment"
        );
    }
}

#[test]
fn a_failed_open_never_deletes_the_lock_file_a_live_process_uses() {
    // One slot, taken by a child: every open here fails after making its way to the
    // lock file, which the child holds (its presence and slot locks).
    let id = persisted_segment(1);
    let _guard = Ours(id);
    let lock = sysv_lock_path(id);
    let ino = inode(&lock);
    let child = spawn("attach", &[(ID, id.to_string()), (PARENT_SLOT, "0".into())]);
    assert!(hear(&child).starts_with("ready "));
    for attempt in 0..3 {
        match SegmentOptions::sysv_id(id).open() {
            Err(Error::RegistryFull { slots: 1 }) => {}
            other => panic!("open {attempt} gave {other:?}, not RegistryFull"),
        }
        assert_eq!(
            inode(&lock),
            ino,
            "open {attempt}: the lock file in use was deleted or replaced"
        );
    }
    finish(child);
    // The child's detach freed the slot through that same file: it is ours again.
    let seg = SegmentOptions::sysv_id(id)
        .open()
        .expect("open after the child left");
    assert_eq!(seg.slot(), 0);
    assert_eq!(inode(&lock), ino);
}

// ---------------------------------------------------------------------------------
// `SegmentOptions::remove` of a System V segment.
// ---------------------------------------------------------------------------------

#[test]
fn remove_leaves_a_foreign_segment_alone_but_deletes_our_lock_file_of_its_id() {
    for fill in [0xa7_u8, 0] {
        let seg = Foreign::new(fill);
        let lock = sysv_lock_path(seg.0);
        // A lock file of ours at its id, as a killed holder of an earlier segment
        // with this id, or a failed open of an earlier version, left it.
        std::fs::write(&lock, b"").expect("plant lock file");
        std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o600)).unwrap();
        for attempt in 0..2 {
            match SegmentOptions::sysv_id(seg.0).remove() {
                Err(Error::BadMagic { found }) => assert_eq!(found, [fill; 8]),
                other => panic!("{fill:#x}: remove {attempt} gave {other:?}, not BadMagic"),
            }
            assert!(!lock.exists(), "{fill:#x}: our lock file was kept");
            assert!(
                exists(seg.0) && !marked_for_removal(seg.0),
                "{fill:#x}: remove {attempt} removed a foreign segment"
            );
            assert!(seg.all(fill), "{fill:#x}: remove changed the foreign bytes");
        }
    }
}

#[test]
fn remove_deletes_our_segment_and_its_lock_file_by_id_and_by_key() {
    let id = persisted_segment(4);
    let _guard = Ours(id);
    let lock = sysv_lock_path(id);
    assert!(lock.exists(), "a persisted segment keeps its lock file");
    SegmentOptions::sysv_id(id).remove().expect("remove by id");
    assert!(!exists(id), "the segment is still there");
    assert!(!lock.exists(), "its lock file is still there");
    assert!(matches!(
        SegmentOptions::sysv_id(id).remove(),
        Err(Error::NotFound(_))
    ));

    let key = unused_key();
    let mut seg = SegmentOptions::sysv(key)
        .no_heap()
        .max_size(1 << 20)
        .create()
        .expect("create by key");
    let id = seg.sysv_id().expect("id");
    let _guard = Ours(id);
    seg.persist();
    drop(seg);
    let lock = sysv_lock_path(id);
    assert!(lock.exists());
    SegmentOptions::sysv(key)
        .no_heap()
        .remove()
        .expect("remove by key");
    assert!(!exists(id));
    assert!(!lock.exists());
    assert!(matches!(
        SegmentOptions::sysv(key).no_heap().remove(),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn remove_deletes_the_lock_file_of_a_segment_already_gone() {
    let id = persisted_segment(4);
    let _guard = Ours(id);
    let lock = sysv_lock_path(id);
    // Removed outside shmkit with nobody attached: nobody was left to delete it.
    raw_remove(id);
    assert!(!exists(id));
    assert!(lock.exists());
    SegmentOptions::sysv_id(id)
        .remove()
        .expect("remove cleans the lock file of a segment already gone");
    assert!(!lock.exists());
    assert!(matches!(
        SegmentOptions::sysv_id(id).remove(),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn a_removed_segment_keeps_its_lock_file_while_attached_and_the_last_detach_deletes_it() {
    let seg = SegmentOptions::sysv_private()
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .create()
        .expect("create");
    let id = seg.sysv_id().expect("id");
    let _guard = Ours(id);
    let peer = SegmentOptions::sysv_id(id).open().expect("open");
    let lock = sysv_lock_path(id);
    let ino = inode(&lock);

    SegmentOptions::sysv_id(id).remove().expect("remove");
    assert!(marked_for_removal(id));
    assert_eq!(inode(&lock), ino, "deleted under two live handles");
    assert!(matches!(
        SegmentOptions::sysv_id(id).open(),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        SegmentOptions::sysv_id(id).remove(),
        Err(Error::NotFound(_))
    ));
    assert_eq!(inode(&lock), ino, "a second remove deleted it");
    // Both still see each other alive (one lock file), and share the memory.
    assert_eq!(seg.slot_info(peer.slot()).unwrap().state, SlotState::Alive);
    assert_eq!(peer.slot_info(seg.slot()).unwrap().state, SlotState::Alive);
    word(&seg, 0).store(42, Ordering::Relaxed);
    assert_eq!(word(&peer, 0).load(Ordering::Relaxed), 42);

    drop(seg); // the creator: its drop removes nothing more while the peer is there
    assert_eq!(inode(&lock), ino);
    assert!(marked_for_removal(id));
    word(&peer, 8).store(43, Ordering::Relaxed);
    drop(peer);
    assert!(!exists(id), "the last detach did not destroy it");
    assert!(!lock.exists(), "the last detach left the lock file");
}

// ---------------------------------------------------------------------------------
// `Segment::remove_now`: remove now, stay attached.
// ---------------------------------------------------------------------------------

#[test]
fn remove_now_leaves_every_attached_process_a_working_mapping() {
    let seg = SegmentOptions::sysv_private()
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .create()
        .expect("create");
    let id = seg.sysv_id().expect("id");
    let _guard = Ours(id);
    let mut child = spawn(
        "attach",
        &[(ID, id.to_string()), (PARENT_SLOT, seg.slot().to_string())],
    );
    assert!(hear(&child).starts_with("ready "));
    assert_eq!(word(&seg, 8).load(Ordering::Relaxed), 0x1111);

    seg.remove_now().expect("remove_now");
    assert!(marked_for_removal(id));
    assert!(matches!(
        SegmentOptions::sysv_id(id).open(),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(seg.remove_now(), Err(Error::NotFound(_))));
    assert!(sysv_lock_path(id).exists(), "deleted while in use");

    // Both processes go on using it after the removal.
    word(&seg, 0).store(0x2222, Ordering::Relaxed);
    writeln!(child.stdin().expect("stdin"), "go").expect("write to child");
    assert_eq!(hear(&child), "after 0x2222 not-found Alive");
    assert_eq!(word(&seg, 8).load(Ordering::Relaxed), 0x3333);
    finish(child);
    word(&seg, 16).store(0x4444, Ordering::Relaxed);
    assert_eq!(word(&seg, 16).load(Ordering::Relaxed), 0x4444);
    assert!(exists(id), "destroyed while attached");

    drop(seg);
    assert!(!exists(id), "the last detach did not destroy it");
    assert!(
        !sysv_lock_path(id).exists(),
        "the last detach left the lock file"
    );
}

#[test]
fn a_killed_process_leaks_no_segment_after_remove_now() {
    let mut child = spawn("create-remove-now", &[]);
    let line = hear(&child);
    let id: i32 = line
        .strip_prefix("created ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("child said {line:?}"));
    let _guard = Ours(id);
    assert!(
        marked_for_removal(id),
        "removed, still attached by the child"
    );
    child.kill().expect("SIGKILL");
    let status = child.wait_for_exit(PATIENCE).expect("the child exits");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    eventually("the kernel to destroy the segment", || !exists(id));
    // A killed process deletes nothing: its lock file is what is left, and
    // `remove` cleans it.
    let lock = sysv_lock_path(id);
    assert!(lock.exists());
    SegmentOptions::sysv_id(id)
        .remove()
        .expect("remove cleans the lock file");
    assert!(!lock.exists());
}

#[test]
fn remove_now_of_a_posix_or_file_segment_takes_the_name_and_keeps_the_mapping() {
    let dir = TempDir::new();
    let kinds = [
        SegmentOptions::posix(&shmkit::unique_name("lc-posix-").unwrap()).no_heap(),
        SegmentOptions::file(dir.join("seg")).no_heap(),
    ];
    for opts in kinds {
        for who in ["creator", "peer"] {
            let ctx = format!("{:?} by the {who}", opts.kind());
            let seg = opts
                .clone()
                .max_size(1 << 20)
                .committed(64 << 10)
                .create()
                .expect(&ctx);
            let peer = opts.open().expect(&ctx);
            let remover = if who == "creator" { &seg } else { &peer };
            remover.remove_now().expect(&ctx);
            assert!(
                matches!(opts.open(), Err(Error::NotFound(_))),
                "{ctx}: the name still opens"
            );
            assert!(matches!(seg.remove_now(), Err(Error::NotFound(_))), "{ctx}");
            assert!(
                matches!(peer.remove_now(), Err(Error::NotFound(_))),
                "{ctx}"
            );
            word(&seg, 0).store(5, Ordering::Relaxed);
            assert_eq!(word(&peer, 0).load(Ordering::Relaxed), 5, "{ctx}");
            // The name is free: a new segment takes it, and neither old handle's
            // drop removes the newcomer.
            let again = opts.create().expect(&ctx);
            assert_ne!(again.seed(), seg.seed());
            assert!(
                matches!(seg.remove_now(), Err(Error::NotFound(_))),
                "{ctx}: removed the newcomer"
            );
            drop(seg);
            drop(peer);
            assert_eq!(opts.open().expect(&ctx).seed(), again.seed(), "{ctx}");
        }
    }
    for opts in [
        SegmentOptions::memfd().no_heap(),
        SegmentOptions::anonymous().no_heap(),
        SegmentOptions::heap().no_heap(),
    ] {
        let seg = opts.create().expect("create");
        assert!(
            matches!(seg.remove_now(), Err(Error::InvalidArgument(_))),
            "{:?} has no name to remove",
            opts.kind()
        );
    }
}
