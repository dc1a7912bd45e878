//! Segments of every kind: create, open from a second process, grow, remove; and
//! every error case a caller or a corrupt segment can cause.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

mod common;

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{LineChild, PATIENCE, eventually};
use shmkit::{Error, Offset, Opened, Segment, SegmentKind, SegmentOptions, SlotState};

const ROLE: &str = "SHMKIT_SEGMENT_TEST_ROLE";
const ARG: &str = "SHMKIT_SEGMENT_TEST_ARG";
const MAGIC: u64 = 0x0005_eed0_f5e9_u64;

/// A child process of this test binary that is killed and reaped on drop.
struct ChildGuard(LineChild);

impl ChildGuard {
    fn spawn(role: &str, arg: &str, stdin: Stdio) -> Self {
        let mut cmd = common::child_main_command();
        cmd.env(ROLE, role).env(ARG, arg);
        Self(LineChild::spawn(cmd, stdin))
    }

    /// The next line the child printed that holds `prefix`: what follows it, trimmed
    /// (bounded wait).
    fn expect(&self, prefix: &str) -> String {
        match self.0.next_after(prefix, PATIENCE) {
            Ok(rest) => rest.trim().to_owned(),
            Err(e) => panic!("child did not print {prefix:?}: {e}"),
        }
    }

    /// Waits (bounded) for a successful exit.
    fn finish(mut self) {
        let Some(st) = self.0.wait_for_exit(PATIENCE) else {
            panic!("child hung")
        };
        assert!(st.success(), "child failed: {st:?}");
    }
}

fn counter(seg: &Segment) -> &AtomicU64 {
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.resolve(Offset::<AtomicU64>::new(seg.user_offset())) }.unwrap()
}

/// The peer side of every kind: check the parent's value, answer, watch growth.
fn peer(seg: Segment) {
    assert_eq!(counter(&seg).load(Ordering::Acquire), MAGIC);
    let parent = seg
        .slot_list()
        .unwrap()
        .into_iter()
        .find(|s| !s.own)
        .unwrap();
    assert_eq!(parent.state, SlotState::Alive);
    println!("slot {}", seg.slot());
    println!("committed {}", seg.committed());
    counter(&seg).store(MAGIC + 1, Ordering::Release);
    // The parent grows the segment; we see it without remapping.
    eventually("growth", || seg.committed() >= 1 << 20);
    let last = Offset::<AtomicU64>::new((1 << 20) - 8);
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.resolve(last) }
        .unwrap()
        .store(42, Ordering::Release);
    println!("grown {}", seg.committed());
    counter(&seg).store(MAGIC + 2, Ordering::Release);
    eventually("parent done", || {
        counter(&seg).load(Ordering::Acquire) == MAGIC + 3
    });
}

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let arg = std::env::var(ARG).unwrap_or_default();
    let seg = match role.as_str() {
        "posix" => SegmentOptions::posix(&arg).no_heap().open().unwrap(),
        "file" => SegmentOptions::file(&arg).no_heap().open().unwrap(),
        "sysv" => Segment::sysv_from_env(ARG).unwrap(),
        "memfd" => {
            let stdin = std::io::stdin();
            let fd = shmkit::recv_fd(&stdin.as_fd()).unwrap();
            SegmentOptions::memfd().no_heap().open_fd(fd).unwrap()
        }
        "file-reopen" => {
            // The creator has exited: the contents persisted.
            let seg = SegmentOptions::file(&arg).no_heap().open().unwrap();
            assert_eq!(counter(&seg).load(Ordering::Acquire), MAGIC);
            println!("persisted ok");
            return;
        }
        "file-create-persist" => {
            let mut seg = SegmentOptions::file(&arg)
                .no_heap()
                .max_size(1 << 20)
                .committed(64 << 10)
                .create()
                .unwrap();
            counter(&seg).store(MAGIC, Ordering::Release);
            seg.persist();
            println!("created");
            return;
        }
        other => panic!("unknown role {other}"),
    };
    peer(seg);
}

/// The parent side: publish a value, let a second process open and answer, grow.
fn share_with_child(seg: &Segment, child: ChildGuard) {
    eventually("child attach", || {
        seg.slot_list()
            .unwrap()
            .iter()
            .any(|s| !s.own && s.state == SlotState::Alive)
    });
    let child_slot: u32 = child.expect("slot ").parse().unwrap();
    assert!(seg.is_alive(child_slot).unwrap());
    assert_eq!(
        child.expect("committed ").parse::<u64>().unwrap(),
        seg.committed()
    );
    eventually("child answer", || {
        counter(seg).load(Ordering::Acquire) == MAGIC + 1
    });
    seg.commit(1 << 20).unwrap();
    assert_eq!(child.expect("grown ").parse::<u64>().unwrap(), 1 << 20);
    eventually("child wrote the grown region", || {
        counter(seg).load(Ordering::Acquire) == MAGIC + 2
    });
    let last = Offset::<AtomicU64>::new((1 << 20) - 8);
    // SAFETY: this test views each offset as one type only.
    let last = unsafe { seg.resolve(last) }.unwrap();
    assert_eq!(last.load(Ordering::Acquire), 42);
    counter(seg).store(MAGIC + 3, Ordering::Release);
    child.finish();
    // The child detached on exit: its slot is free again.
    eventually("child detach", || {
        seg.slot_info(child_slot).unwrap().state == SlotState::Free
    });
}

fn small(opts: SegmentOptions) -> SegmentOptions {
    opts.max_size(2 << 20).committed(64 << 10)
}

#[test]
fn a_posix_segment_is_shared_grown_and_removed() {
    let name = shmkit::unique_name("seg-posix-").unwrap();
    let seg = small(SegmentOptions::posix(&name).no_heap())
        .create()
        .unwrap();
    assert_eq!(seg.kind(), SegmentKind::Posix);
    counter(&seg).store(MAGIC, Ordering::Release);
    share_with_child(&seg, ChildGuard::spawn("posix", &name, Stdio::null()));
    // remove: the name goes, the open handle keeps working.
    SegmentOptions::posix(&name).no_heap().remove().unwrap();
    assert!(matches!(
        SegmentOptions::posix(&name).no_heap().open(),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        SegmentOptions::posix(&name).no_heap().remove(),
        Err(Error::NotFound(_))
    ));
    assert_eq!(counter(&seg).load(Ordering::Acquire), MAGIC + 3);
}

#[test]
fn a_file_segment_is_shared_and_persists_after_every_process_exits() {
    let dir = std::env::temp_dir();
    let path = dir.join(shmkit::unique_name("seg-file-").unwrap());
    let seg = small(SegmentOptions::file(&path).no_heap())
        .create()
        .unwrap();
    assert_eq!(seg.kind(), SegmentKind::File);
    counter(&seg).store(MAGIC, Ordering::Release);
    share_with_child(
        &seg,
        ChildGuard::spawn("file", path.to_str().unwrap(), Stdio::null()),
    );
    drop(seg);
    assert!(
        !path.exists(),
        "a created, unpersisted file is removed on drop"
    );

    // Persistence: a child creates and exits; another reopens with the contents.
    let p = path.to_str().unwrap();
    let c = ChildGuard::spawn("file-create-persist", p, Stdio::null());
    c.expect("created");
    c.finish();
    let c = ChildGuard::spawn("file-reopen", p, Stdio::null());
    c.expect("persisted ok");
    c.finish();
    SegmentOptions::file(&path).no_heap().remove().unwrap();
    assert!(!path.exists());
}

#[test]
fn a_memfd_segment_is_passed_over_a_unix_socket() {
    let seg = small(SegmentOptions::memfd().no_heap()).create().unwrap();
    assert_eq!(seg.kind(), SegmentKind::Memfd);
    counter(&seg).store(MAGIC, Ordering::Release);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let child = ChildGuard::spawn("memfd", "", Stdio::from(OwnedFd::from(theirs)));
    seg.send_fd(&ours).unwrap();
    share_with_child(&seg, child);
}

#[test]
fn a_sysv_segment_is_opened_by_an_id_in_the_environment() {
    let seg = small(SegmentOptions::sysv_private().no_heap())
        .create()
        .unwrap();
    assert_eq!(seg.kind(), SegmentKind::SysV);
    let id = seg.sysv_id().unwrap();
    counter(&seg).store(MAGIC, Ordering::Release);
    share_with_child(
        &seg,
        ChildGuard::spawn("sysv", &id.to_string(), Stdio::null()),
    );
    drop(seg);
    // The creator's drop removed it.
    assert!(matches!(
        SegmentOptions::sysv_id(id).no_heap().open(),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn a_sysv_segment_is_created_and_removed_by_key() {
    let key = 0x5100_0000 | (std::process::id() as i32 & 0xffff);
    let _ = SegmentOptions::sysv(key).no_heap().remove();
    let mut seg = small(SegmentOptions::sysv(key).no_heap()).create().unwrap();
    seg.persist();
    let peer = SegmentOptions::sysv(key).no_heap().open().unwrap();
    assert_eq!(peer.seed(), seg.seed());
    assert!(matches!(
        small(SegmentOptions::sysv(key).no_heap()).create(),
        Err(Error::AlreadyExists(_))
    ));
    let (again, how) = small(SegmentOptions::sysv(key).no_heap())
        .open_or_create()
        .unwrap();
    assert_eq!(how, Opened::Existing);
    drop(again);
    SegmentOptions::sysv(key).no_heap().remove().unwrap();
    assert!(matches!(
        SegmentOptions::sysv(key).no_heap().open(),
        Err(Error::NotFound(_))
    ));
    // Attached handles keep working after removal.
    assert!(peer.is_alive(seg.slot()).unwrap());
}

#[test]
fn an_anonymous_segment_is_shared_with_a_forked_child() {
    let seg = small(SegmentOptions::anonymous().no_heap())
        .create()
        .unwrap();
    assert_eq!(seg.kind(), SegmentKind::Anonymous);
    counter(&seg).store(MAGIC, Ordering::Release);
    // Prepare everything the child needs before fork: it only touches atomics and
    // makes raw syscalls, then leaves with _exit.
    let c = counter(&seg) as *const AtomicU64 as usize;
    // SAFETY: the child only uses atomics on the MAP_SHARED mapping (alive in the
    // child too) and async-signal-safe calls, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: `c` points into the shared mapping inherited across fork.
        let c = unsafe { &*(c as *const AtomicU64) };
        let ok = c.compare_exchange(MAGIC, MAGIC + 1, Ordering::AcqRel, Ordering::Acquire);
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(if ok.is_ok() { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert_eq!(counter(&seg).load(Ordering::Acquire), MAGIC + 1);
    let grown = seg.commit(1 << 20).unwrap();
    assert_eq!(grown, 1 << 20);
}

// ---------------------------------------------------------------- error cases

#[test]
fn bad_sizes_are_refused_with_the_reason() {
    let cases: [(SegmentOptions, &str); 7] = [
        (
            SegmentOptions::heap().no_heap().max_size(0),
            "max_size is 0",
        ),
        (
            SegmentOptions::heap().no_heap().max_size(12345),
            "not a multiple",
        ),
        (
            SegmentOptions::heap().no_heap().max_size(1 << 50),
            "exceeds 64 GiB",
        ),
        (
            SegmentOptions::heap().no_heap().max_size(4096),
            "cannot hold",
        ),
        (
            SegmentOptions::heap()
                .no_heap()
                .max_size(1 << 20)
                .committed(2 << 20),
            "exceeds max_size",
        ),
        (
            SegmentOptions::heap()
                .no_heap()
                .max_size(1 << 20)
                .committed(5000),
            "not a multiple",
        ),
        (SegmentOptions::memfd().no_heap().max_size(!4095), "exceeds"),
    ];
    for (opts, why) in cases {
        match opts.create() {
            Err(Error::InvalidSize { reason, .. }) => assert!(reason.contains(why), "{reason}"),
            other => panic!("{opts:?}: expected InvalidSize({why}), got {other:?}"),
        }
    }
    assert!(matches!(
        SegmentOptions::heap().no_heap().registry_slots(0).create(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        SegmentOptions::heap()
            .no_heap()
            .registry_slots(1 << 20)
            .create(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        SegmentOptions::memfd().no_heap().mode(0o4600).create(),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn growth_beyond_the_maximum_is_refused_and_changes_nothing() {
    let seg = small(SegmentOptions::memfd().no_heap()).create().unwrap();
    let before = seg.committed();
    assert!(matches!(
        seg.commit(3 << 20),
        Err(Error::InvalidSize { .. })
    ));
    assert!(matches!(
        seg.commit(u64::MAX),
        Err(Error::InvalidSize { .. })
    ));
    assert_eq!(seg.committed(), before);
    assert_eq!(seg.commit(10).unwrap(), before, "shrinking is a no-op");
    assert_eq!(seg.commit(2 << 20).unwrap(), 2 << 20);
}

#[test]
fn opening_what_does_not_exist_is_not_found() {
    let name = shmkit::unique_name("seg-none-").unwrap();
    assert!(matches!(
        SegmentOptions::posix(&name).no_heap().open(),
        Err(Error::NotFound(_))
    ));
    let path = std::env::temp_dir().join(&name);
    assert!(matches!(
        SegmentOptions::file(&path).no_heap().open(),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        SegmentOptions::sysv_id(i32::MAX).no_heap().open(),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        SegmentOptions::sysv(0x7eed_0001).no_heap().open(),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        SegmentOptions::file("/nonexistent-dir/x")
            .no_heap()
            .create(),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn creating_what_exists_is_already_exists() {
    let name = shmkit::unique_name("seg-dup-").unwrap();
    let _a = small(SegmentOptions::posix(&name).no_heap())
        .create()
        .unwrap();
    assert!(matches!(
        small(SegmentOptions::posix(&name).no_heap()).create(),
        Err(Error::AlreadyExists(_))
    ));
    let path = std::env::temp_dir().join(&name);
    let _f = small(SegmentOptions::file(&path).no_heap())
        .create()
        .unwrap();
    assert!(matches!(
        small(SegmentOptions::file(&path).no_heap()).create(),
        Err(Error::AlreadyExists(_))
    ));
}

#[test]
fn kinds_without_a_name_refuse_name_operations() {
    for opts in [
        SegmentOptions::memfd().no_heap(),
        SegmentOptions::anonymous().no_heap(),
        SegmentOptions::heap().no_heap(),
        SegmentOptions::sysv_private().no_heap(),
    ] {
        assert!(
            matches!(opts.open(), Err(Error::InvalidArgument(_))),
            "{opts:?}"
        );
        assert!(
            matches!(opts.remove(), Err(Error::InvalidArgument(_))),
            "{opts:?}"
        );
    }
    assert!(matches!(
        SegmentOptions::sysv_id(1).no_heap().create(),
        Err(Error::InvalidArgument(_))
    ));
    let heap = SegmentOptions::heap().no_heap().create().unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    assert!(matches!(heap.send_fd(&a), Err(Error::InvalidArgument(_))));
}

#[test]
fn bad_environment_values_are_bad_env() {
    // Each variable is private to this test.
    let var = "SHMKIT_SEGMENT_TEST_BAD_ENV";
    for (value, what) in [
        (None, "unset"),
        (Some("abc"), "not an id"),
        (Some("-1"), "negative"),
        (Some("99999999999"), "not an id"),
        (Some(""), "not an id"),
    ] {
        let out = common::self_test_command("env_child")
            .env_remove(var)
            .envs(value.map(|v| (var, v)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
#[ignore = "child entry point"]
fn env_child() {
    let var = "SHMKIT_SEGMENT_TEST_BAD_ENV";
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    match Segment::sysv_from_env(var) {
        Err(Error::BadEnv { var: v, reason }) => {
            assert_eq!(v, var);
            println!("BadEnv: {reason}");
        }
        other => panic!("expected BadEnv, got {other:?}"),
    }
}

#[test]
fn a_received_descriptor_without_seals_is_refused() {
    let (a, b) = UnixStream::pair().unwrap();
    // A plain file is not a sealed memfd.
    let f = std::fs::File::open("/proc/self/exe").unwrap();
    let fd: OwnedFd = f.into();
    drop(a);
    assert!(matches!(
        SegmentOptions::memfd().no_heap().open_fd(fd),
        Err(Error::SealsMissing { .. })
    ));
    drop(b);
}

// ------------------------------------------------------- corrupt segments

/// FNV-1a, as the header checksum uses (to forge consistent headers).
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Field offsets in the header (format version 1).
const FIELDS: u64 = 24;
const CHECKSUM: u64 = 160;

/// Recomputes the checksum of a header image (magic, version, fields).
fn fix_checksum(img: &mut [u8]) {
    let mut h = fnv(0xcbf2_9ce4_8422_2325, &img[0..8]);
    h = fnv(h, &img[12..16]);
    let f = &img[FIELDS as usize..CHECKSUM as usize];
    // u32 fields are hashed widened to u64.
    let words: [(usize, usize); 19] = [
        (0, 8),
        (8, 8),
        (16, 8),
        (24, 8),
        (32, 4),
        (36, 4),
        (40, 8),
        (48, 8),
        (56, 8),
        (64, 8),
        (72, 4),
        (76, 4),
        (80, 8),
        (88, 8),
        (96, 8),
        (104, 8),
        (112, 8),
        (120, 8),
        (128, 8),
    ];
    for (off, len) in words {
        let mut v = [0u8; 8];
        v[..len].copy_from_slice(&f[off..off + len]);
        h = fnv(h, &v);
    }
    img[CHECKSUM as usize..CHECKSUM as usize + 8].copy_from_slice(&h.to_ne_bytes());
}

/// A persisted posix segment's bytes, modified by `edit`, written back; then open.
fn open_after(edit: impl FnOnce(&mut Vec<u8>)) -> shmkit::Result<Segment> {
    let name = shmkit::unique_name("seg-corrupt-").unwrap();
    let mut seg = small(SegmentOptions::posix(&name).no_heap())
        .create()
        .unwrap();
    seg.persist();
    drop(seg);
    let path = format!("/dev/shm/{name}");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut img = vec![0u8; 4096];
    file.read_exact_at(&mut img, 0).unwrap();
    edit(&mut img);
    file.write_all_at(&img, 0).unwrap();
    let r = SegmentOptions::posix(&name)
        .no_heap()
        .open_timeout(Duration::from_millis(300))
        .open();
    SegmentOptions::posix(&name).no_heap().remove().unwrap();
    r
}

fn put(img: &mut [u8], off: u64, bytes: &[u8]) {
    img[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
}

#[test]
fn an_intact_image_opens() {
    assert!(open_after(|_| {}).is_ok());
    assert!(
        open_after(|i| fix_checksum(i)).is_ok(),
        "the forged checksum matches"
    );
}

#[test]
fn a_corrupt_header_is_a_typed_error_naming_the_cause() {
    let e = open_after(|i| put(i, 0, b"NOTSHMKT")).unwrap_err();
    assert!(matches!(e, Error::BadMagic { .. }), "{e:?}");
    let e = open_after(|i| put(i, 12, &7u32.to_ne_bytes())).unwrap_err();
    assert!(
        matches!(
            e,
            Error::VersionMismatch {
                found: 7,
                expected: 2
            }
        ),
        "{e:?}"
    );
    let e = open_after(|i| i[48] ^= 1).unwrap_err();
    assert!(matches!(e, Error::ChecksumMismatch { .. }), "{e:?}");
    let e = open_after(|i| {
        i[FIELDS as usize] ^= 1;
        fix_checksum(i);
    })
    .unwrap_err();
    assert!(matches!(e, Error::FingerprintMismatch { .. }), "{e:?}");
    let e = open_after(|i| put(i, 8, &9u32.to_ne_bytes())).unwrap_err();
    assert!(matches!(e, Error::Corrupt { what: "state", .. }), "{e:?}");
    let e = open_after(|i| put(i, 8, &3u32.to_ne_bytes() /* init::POISONED */)).unwrap_err();
    assert!(matches!(e, Error::Poisoned), "{e:?}");
    // A consistent checksum over impossible fields.
    for (off, value, what) in [
        (40u64, 1u64 << 40, "max_size"),  // max_size != object size
        (32, 8192, "header_size"),        // header_size
        (88, 3, "registry_offset"),       // registry_offset misaligned
        (88, 1 << 30, "registry_offset"), // registry beyond user_offset
        (104, 1 << 40, "user_offset"),    // user_offset beyond max
    ] {
        let e = open_after(|i| {
            put(i, FIELDS + off - 24, &value.to_ne_bytes());
            fix_checksum(i);
        })
        .unwrap_err();
        assert!(
            matches!(&e, Error::Corrupt { what: w, .. } if *w == what),
            "{what}: {e:?}"
        );
    }
    let e = open_after(|i| {
        put(i, FIELDS + 72, &0u32.to_ne_bytes()); // registry_slots = 0
        fix_checksum(i);
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Corrupt {
                what: "registry_slots",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_corrupt_committed_size_is_clamped_not_trusted() {
    let seg = open_after(|i| put(i, 16, &u64::MAX.to_ne_bytes())).unwrap();
    assert_eq!(seg.committed(), seg.user_offset());
    let seg = open_after(|i| put(i, 16, &12345u64.to_ne_bytes())).unwrap();
    assert_eq!(seg.committed(), seg.user_offset());
}

#[test]
fn foreign_files_are_refused_and_never_reclaimed() {
    let dir = std::env::temp_dir();
    // Not page-aligned in size.
    let p = dir.join(shmkit::unique_name("seg-odd-").unwrap());
    std::fs::write(&p, vec![7u8; 5000]).unwrap();
    let e = SegmentOptions::file(&p).no_heap().open().unwrap_err();
    assert!(matches!(e, Error::Corrupt { what: "size", .. }), "{e:?}");
    // Shorter than a header, without our magic.
    std::fs::write(&p, vec![7u8; 100]).unwrap();
    let e = SegmentOptions::file(&p).no_heap().open().unwrap_err();
    assert!(matches!(e, Error::Corrupt { what: "size", .. }), "{e:?}");
    // Page-aligned garbage: not ours, refused at once.
    std::fs::write(&p, vec![0xa5u8; 8192]).unwrap();
    let e = SegmentOptions::file(&p).no_heap().open().unwrap_err();
    assert!(
        matches!(e, Error::BadMagic { found } if found == [0xa5; 8]),
        "{e:?}"
    );
    // All zeros and nobody initialising it: never initialised, so not provably a
    // shmkit segment.
    std::fs::write(&p, vec![0u8; 8192]).unwrap();
    let t = Instant::now();
    let e = SegmentOptions::file(&p)
        .no_heap()
        .open_timeout(Duration::from_millis(500))
        .open()
        .unwrap_err();
    assert!(
        matches!(e, Error::BadMagic { found } if found == [0; 8]),
        "{e:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    // Empty: nobody ever sized it.
    std::fs::write(&p, b"").unwrap();
    let e = SegmentOptions::file(&p)
        .no_heap()
        .open_timeout(Duration::from_millis(500))
        .open()
        .unwrap_err();
    assert!(
        matches!(e, Error::BadMagic { found } if found == [0; 8]),
        "{e:?}"
    );
    // open_or_create never deletes what is not provably a half-made segment of
    // ours: the user's files survive, and the error names the cause.
    for contents in [vec![0u8; 8192], Vec::new(), vec![0xa5u8; 8192]] {
        std::fs::write(&p, &contents).unwrap();
        let e = small(SegmentOptions::file(&p).no_heap())
            .open_or_create()
            .unwrap_err();
        assert!(matches!(e, Error::BadMagic { .. }), "{e:?}");
        assert_eq!(std::fs::read(&p).unwrap(), contents);
    }
    // Our magic, not Ready, nobody holding the init lock: a creator died mid-way.
    // open reports it; open_or_create reclaims it and creates a real segment.
    let mut half = vec![0u8; 8192];
    half[..8].copy_from_slice(b"SHMKIT\x00\x01");
    half[8] = 1; // Initializing
    std::fs::write(&p, &half).unwrap();
    let e = SegmentOptions::file(&p).no_heap().open().unwrap_err();
    assert!(matches!(e, Error::CreatorDied { state: 1 }), "{e:?}");
    let (seg, how) = small(SegmentOptions::file(&p).no_heap())
        .open_or_create()
        .unwrap();
    assert_eq!(how, Opened::Created);
    drop(seg);
    assert!(!p.exists());
    // The same with only the magic written (the in-place creator's first write).
    std::fs::write(&p, b"SHMKIT\x00\x01").unwrap();
    let e = SegmentOptions::file(&p).no_heap().open().unwrap_err();
    assert!(matches!(e, Error::CreatorDied { state: 0 }), "{e:?}");
    let (seg, how) = small(SegmentOptions::file(&p).no_heap())
        .open_or_create()
        .unwrap();
    assert_eq!(how, Opened::Created);
    drop(seg);
    // A directory is not a segment.
    let e = SegmentOptions::file(&dir).no_heap().open().unwrap_err();
    assert!(
        matches!(e, Error::NotRegularFile(_) | Error::Os { .. }),
        "{e:?}"
    );
}

#[test]
fn a_huge_open_timeout_means_no_deadline_not_a_panic() {
    let p = std::env::temp_dir().join(shmkit::unique_name("seg-forever-").unwrap());
    std::fs::write(&p, vec![0u8; 8192]).unwrap();
    // Nobody holds the init lock: the grace period ends the wait, not a deadline.
    let e = SegmentOptions::file(&p)
        .no_heap()
        .open_timeout(Duration::MAX)
        .open()
        .unwrap_err();
    assert!(matches!(e, Error::BadMagic { .. }), "{e:?}");
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn a_file_segment_writes_its_contents_through() {
    // The mapping is MAP_SHARED: what one handle writes, the file holds.
    let path = std::env::temp_dir().join(shmkit::unique_name("seg-wt-").unwrap());
    let seg = small(SegmentOptions::file(&path).no_heap())
        .create()
        .unwrap();
    counter(&seg).store(MAGIC, Ordering::Release);
    let mut f = std::fs::File::open(&path).unwrap();
    let mut buf = [0u8; 8];
    f.read_exact_at(&mut buf, seg.user_offset()).unwrap();
    assert_eq!(u64::from_ne_bytes(buf), MAGIC);
    f.flush().unwrap();
}
