//! Issue 9, item 2: a POSIX server SIGKILLed leaves its segment behind; restarting
//! it with `create` must be possible on request (`replace_stale`), never at the
//! expense of a live process.

use shmkit::alloc::Heap;
use shmkit::{Error, Opened, SegmentOptions};

use super::{OUT, Role, segment_name, spawn};
use crate::common::{PATIENCE, shm_path};

fn seed_of(out: &str) -> u64 {
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a seed: {out:?}"))
}

/// Removes the name at the end of a test, whatever happened.
struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = SegmentOptions::posix(&self.0).remove();
    }
}

/// The report: a SIGKILLed server leaves its segment; `create` says
/// `AlreadyExists`; with `replace_stale` it replaces it, and the new segment is
/// a different, fresh one.
#[test]
fn a_killed_creators_segment_is_replaced_on_request() {
    let name = segment_name("killed");
    let _u = Unlink(name.clone());
    let mut server = spawn(Role::CreateAndWait, &name, "");
    let old_seed = seed_of(&server.next_after(OUT, PATIENCE).expect("server up"));
    server.kill().unwrap();
    server
        .wait_for_exit(PATIENCE)
        .expect("killed server reaped");
    assert!(
        shm_path(&name).exists(),
        "the killed server's segment is left behind"
    );

    assert!(matches!(
        SegmentOptions::posix(&name).create(),
        Err(Error::AlreadyExists(_))
    ));
    let seg = SegmentOptions::posix(&name)
        .replace_stale(true)
        .create()
        .expect("replace the stale segment");
    assert_ne!(seg.seed(), old_seed, "a new segment, not the old one");
    let heap = Heap::attach(&seg).unwrap();
    let s = heap.stats().unwrap();
    let owned: u64 = s.owners.iter().map(|o| o.owned_blocks).sum();
    assert_eq!(owned, 0, "a fresh heap, not the dead server's");
    // And the restart is visible to others under the name.
    let peer = SegmentOptions::posix(&name).open().unwrap();
    assert_eq!(peer.seed(), seg.seed());
}

/// `open_or_create` with `replace_stale`: a dead run's segment is replaced
/// (`Replaced`), a live one is opened (`Existing`).
#[test]
fn open_or_create_replaces_a_dead_segment_and_opens_a_live_one() {
    let name = segment_name("ooc");
    let _u = Unlink(name.clone());
    let mut server = spawn(Role::CreateAndWait, &name, "");
    let old_seed = seed_of(&server.next_after(OUT, PATIENCE).expect("server up"));

    // Live: opened, same segment.
    let (seg, how) = SegmentOptions::posix(&name)
        .replace_stale(true)
        .open_or_create()
        .unwrap();
    assert_eq!((how, seg.seed()), (Opened::Existing, old_seed));
    drop(seg);

    server.kill().unwrap();
    server
        .wait_for_exit(PATIENCE)
        .expect("killed server reaped");
    let (seg, how) = SegmentOptions::posix(&name)
        .replace_stale(true)
        .open_or_create()
        .unwrap();
    assert_eq!(how, Opened::Replaced);
    assert_ne!(seg.seed(), old_seed);
    // Without the option, the stale one would have been opened.
}

/// A segment with one live process is never replaced: `InUse` names it, and the
/// live process's segment is still the one under the name.
#[test]
fn a_segment_with_one_live_process_is_never_replaced() {
    let name = segment_name("live");
    let _u = Unlink(name.clone());
    let mut server = spawn(Role::CreateAndWait, &name, "");
    let seed = seed_of(&server.next_after(OUT, PATIENCE).expect("server up"));
    // A second live process attached too.
    let mut reader = spawn(Role::OpenAndWait, &name, "");
    assert_eq!(seed_of(&reader.next_after(OUT, PATIENCE).unwrap()), seed);
    // Kill the creator: the reader is still alive and attached.
    server.kill().unwrap();
    server.wait_for_exit(PATIENCE).expect("reaped");
    match SegmentOptions::posix(&name).replace_stale(true).create() {
        Err(Error::InUse { live, .. }) => assert_eq!(live, 1),
        other => panic!("expected InUse, got {other:?}"),
    }
    let seg = SegmentOptions::posix(&name).open().unwrap();
    assert_eq!(seg.seed(), seed, "still the live segment");
    drop(seg);
    reader.close_stdin();
    reader.wait_for_exit(PATIENCE).expect("reader exits");
    // Now everyone is gone: replaced.
    let seg = SegmentOptions::posix(&name)
        .replace_stale(true)
        .create()
        .unwrap();
    assert_ne!(seg.seed(), seed);
}

/// Bad input: a registry whose words claim live processes that are dead does not
/// stop the replacement (only the kernel's locks count), and a file at the name
/// that is not a shmkit segment is never replaced.
#[test]
fn registry_words_are_not_evidence_and_foreign_objects_are_never_replaced() {
    let name = segment_name("liar");
    let _u = Unlink(name.clone());
    let mut server = spawn(Role::CreateAndWait, &name, "");
    let _ = server.next_after(OUT, PATIENCE).expect("server up");
    server.kill().unwrap();
    server.wait_for_exit(PATIENCE).expect("reaped");
    // The dead server's registry slot word still says ACTIVE (it never detached).
    let seg = SegmentOptions::posix(&name)
        .replace_stale(true)
        .create()
        .expect("a dead registry entry is no evidence of life");
    drop(seg);

    let foreign = segment_name("foreign");
    let _f = Unlink(foreign.clone());
    std::fs::write(shm_path(&foreign), vec![0x5a; 8192]).unwrap();
    let r = SegmentOptions::posix(&foreign).replace_stale(true).create();
    assert!(matches!(r, Err(Error::BadMagic { .. })), "{r:?}");
    assert_eq!(std::fs::read(shm_path(&foreign)).unwrap(), vec![0x5a; 8192]);
}

/// The children of the tests above: print the seed, hold the segment.
pub fn run(role: Role, name: &str, _arg: &str) -> String {
    match role {
        Role::CreateAndWait => {
            let seg = SegmentOptions::posix(name).create().unwrap();
            let heap = Heap::attach(&seg).unwrap();
            let _live = heap.alloc(1000, 8).unwrap().get();
            let seed = seg.seed();
            // Leaked on purpose: the parent kills us while we hold them.
            std::mem::forget(heap);
            std::mem::forget(seg);
            seed.to_string()
        }
        Role::OpenAndWait => {
            let seg = SegmentOptions::posix(name).open().unwrap();
            let seed = seg.seed();
            std::mem::forget(seg); // held until this process exits
            seed.to_string()
        }
        _ => unreachable!("not a stale role"),
    }
}

/// Review regression: `InUse { live }` counts every live attachment, also when a
/// freed slot is reused (the kernel lists locks by owner, not by offset).
#[test]
fn the_live_count_of_in_use_is_exact() {
    let name = segment_name("count");
    let _u = Unlink(name.clone());
    let mut c = SegmentOptions::posix(&name).create().unwrap(); // slot 0
    c.persist();
    let a = SegmentOptions::posix(&name).open().unwrap(); // slot 1
    let b = SegmentOptions::posix(&name).open().unwrap(); // slot 2
    drop(c); // slot 0 free, the name kept
    let d = SegmentOptions::posix(&name).open().unwrap(); // slot 0 again
    match SegmentOptions::posix(&name).replace_stale(true).create() {
        Err(Error::InUse { live, .. }) => assert_eq!(live, 3),
        other => panic!("{other:?}"),
    }
    drop((a, b, d));
}

/// Review regression: adjacent slot locks held by one open file description (the
/// kernel merges them into one range) made the live-lock walk spin under the init
/// lock; now the verdict is one probe and `create` answers at once.
#[test]
fn adjacent_slot_locks_of_one_description_do_not_hang_replace_stale() {
    use std::os::fd::AsRawFd;
    let name = segment_name("merged");
    let _u = Unlink(name.clone());
    let mut c = SegmentOptions::posix(&name).create().unwrap();
    c.persist();
    drop(c); // stale: nobody attached
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(&name))
        .unwrap();
    // SAFETY: libc::flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = (1i64 << 40) + 1; // the locks of slots 0 and 1, as one range
    fl.l_len = 2;
    // SAFETY: a valid descriptor and an exclusively borrowed flock.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    assert_eq!(r, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let n = name.clone();
    std::thread::spawn(move || {
        let r = SegmentOptions::posix(&n).replace_stale(true).create();
        let _ = tx.send(format!("{:?}", r.map(drop)));
    });
    let first = rx.recv_timeout(PATIENCE);
    drop(f);
    let first = first.expect("replace_stale create answers while the locks are held");
    assert!(first.contains("InUse"), "{first}");
}

/// Review regression: two processes starting a server with `open_or_create` and
/// `replace_stale` on one System V key, over and over: every call ends in
/// `Created`, `Existing` or `Replaced`, never a spurious `BadMagic` (a creator
/// not yet past its magic) or `NotFound` (a segment removed between two steps).
#[test]
fn racing_open_or_create_with_replace_stale_never_fails() {
    use std::sync::{Arc, Barrier, Mutex};
    let hex = shmkit::unique_name("k").unwrap();
    let key = (u32::from_str_radix(&hex[hex.len() - 8..], 16).unwrap() & 0x7fff_ffff) as i32;
    let errors = Arc::new(Mutex::new(Vec::new()));
    let start = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (errors, start) = (errors.clone(), start.clone());
            std::thread::spawn(move || {
                for _ in 0..200 {
                    start.wait();
                    let r = SegmentOptions::sysv(key)
                        .replace_stale(true)
                        .open_or_create();
                    match r {
                        Ok((seg, _)) => drop(seg),
                        Err(e) => errors.lock().unwrap().push(format!("{e:?}")),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let _ = SegmentOptions::sysv(key).remove();
    let e = errors.lock().unwrap();
    assert!(
        e.is_empty(),
        "{} errors, e.g. {:?}",
        e.len(),
        &e[..e.len().min(5)]
    );
}
