//! Issue 10, items 1 and 4: a damaged heap header never makes a newcomer rebuild
//! the heap over live data, and a published named segment whose state word was
//! overwritten is `Corrupt`, never reclaimed or replaced.

use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmkit::alloc::Heap;
use shmkit::{Error, SegmentOptions};

use crate::common::{LineChild, PATIENCE, self_test_command, shm_path};

const ROLE: &str = "SHMKIT_HOSTILE_REGION_ROLE";
const NAME: &str = "SHMKIT_HOSTILE_REGION_NAME";
const AT: &str = "SHMKIT_HOSTILE_REGION_AT";
const VALUE: &str = "SHMKIT_HOSTILE_REGION_VALUE";
const OUT: &str = "SHMKIT-HOSTILE-REGION";

/// Offset of the segment header's state word.
const SEGMENT_STATE: u64 = 8;

/// Runs a child that does `role` on segment `name` (word at `at`, `value`) and
/// returns its one-line answer.
fn peer(role: &str, name: &str, at: u64, value: u64) -> String {
    let mut cmd = self_test_command("region::child_main");
    cmd.env(ROLE, role)
        .env(NAME, name)
        .env(AT, at.to_string())
        .env(VALUE, value.to_string());
    let mut c = LineChild::spawn(cmd, Stdio::null());
    let out = c
        .next_after(OUT, PATIENCE)
        .unwrap_or_else(|e| panic!("peer {role} said nothing: {e:?}"));
    let st = c.wait_for_exit(PATIENCE).expect("peer exits");
    assert!(st.success(), "peer {role} failed: {st:?}");
    out.trim().to_owned()
}

struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = SegmentOptions::posix(&self.0).remove();
    }
}

/// Process A holds 5 live blocks; a peer sets the heap's state word to each of
/// the values the adversarial run used; process B's attach is `Corrupt` every
/// time (never a fresh heap), A's blocks keep their bytes, and A's `verify`
/// reports the damage.
#[test]
fn a_damaged_heap_state_word_is_corrupt_for_newcomers_and_never_rebuilt() {
    let name = shmkit::unique_name("hostile-heap-").unwrap();
    let _u = Unlink(name.clone());
    let seg = SegmentOptions::posix(&name).create().unwrap();
    let heap = Heap::attach(&seg).unwrap();
    let live: Vec<u64> = (0..5)
        .map(|_| heap.alloc(12 << 10, 64).unwrap().get())
        .collect();
    for (i, &b) in live.iter().enumerate() {
        // SAFETY: our own private blocks of 12 KiB.
        unsafe {
            heap.ptr(b)
                .unwrap()
                .as_ptr()
                .write_bytes(0xa0 + i as u8, 12 << 10)
        };
    }
    let state_at = seg.heap_offset().unwrap();
    // SAFETY: the heap header's first word, inside our mapping and 8-aligned.
    let state = unsafe { &*seg.as_ptr().add(state_at as usize).cast::<AtomicU64>() };
    let ready = state.load(Ordering::Relaxed);
    for value in [0, ready ^ (1 << 63), 1 << 63, ready ^ 1, u64::MAX] {
        assert_eq!(peer("store", &name, state_at, value), "stored");
        let out = peer("attach", &name, 0, 0);
        assert!(
            out.starts_with("Corrupt") && out.contains("heap header"),
            "state {value:#x}: the newcomer said {out}"
        );
        let report = heap.verify();
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.what == "heap header overwritten"),
            "state {value:#x}: verify did not notice: {report}"
        );
        state.store(ready, Ordering::Relaxed); // repair, for the next value
    }
    for (i, &b) in live.iter().enumerate() {
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(heap.ptr(b).unwrap().as_ptr(), 12 << 10) };
        assert!(
            bytes.iter().all(|&x| x == 0xa0 + i as u8),
            "block {i} clobbered"
        );
    }
    assert!(heap.verify().is_clean(), "repaired: clean again");
    assert_eq!(peer("attach", &name, 0, 0), "attached");
}

/// The bit-flip sweep of the adversarial run, over a saved image: every single
/// bit flipped in the heap header's state, magic, version and layout words makes
/// `Heap::attach` fail with `Corrupt`; none builds a heap.
#[test]
fn every_bit_flip_of_the_heap_header_words_is_corrupt_on_attach() {
    let seg = SegmentOptions::heap().max_size(2 << 20).create().unwrap();
    drop(Heap::attach(&seg).unwrap());
    let image_len = seg.committed() as usize;
    // SAFETY: the committed prefix of our own mapping; nobody writes it meanwhile.
    let image = unsafe { std::slice::from_raw_parts(seg.as_ptr(), image_len) }.to_vec();
    let heap_at = seg.heap_offset().unwrap() as usize;
    let mut image = image;
    image.resize(seg.max_size() as usize, 0);
    // The state word, then (the body being cache-line aligned, at +64) magic,
    // version and the 5 layout words.
    let magic = u64::from_le_bytes(*b"SHMKHEAP");
    assert_eq!(
        image[heap_at + 64..heap_at + 72],
        magic.to_ne_bytes(),
        "heap magic at +64"
    );
    let words: Vec<usize> = [0].into_iter().chain((0..7).map(|i| 64 + 8 * i)).collect();
    let mut tried = 0;
    for (w, &word_at) in words.iter().enumerate() {
        for bit in 0..64 {
            let mut img = image.clone();
            let at = heap_at + word_at + bit / 8;
            img[at] ^= 1 << (bit % 8);
            let copy = SegmentOptions::heap().open_image(&img).unwrap();
            match Heap::attach(&copy) {
                Err(Error::Corrupt { what, .. }) => assert_eq!(what, "heap header"),
                other => panic!("word {w} bit {bit}: {other:?}"),
            }
            tried += 1;
        }
    }
    assert_eq!(tried, 512);
    // The undamaged image attaches.
    let copy = SegmentOptions::heap().open_image(&image).unwrap();
    assert!(Heap::attach(&copy).unwrap().verify().is_clean());
}

/// A live POSIX segment whose state word a peer sets to 0 or 1: `open` says
/// `Corrupt { what: "segment state" }` within a bounded time, `open_or_create`
/// refuses too, and the name still points at the live segment with its data.
#[test]
fn a_published_segment_with_a_forged_state_is_corrupt_and_never_replaced() {
    let name = shmkit::unique_name("hostile-state-").unwrap();
    let _u = Unlink(name.clone());
    let seg = SegmentOptions::posix(&name).create().unwrap();
    let heap = Heap::attach(&seg).unwrap();
    let keep = heap.alloc(64, 8).unwrap().get();
    // SAFETY: our own block.
    unsafe { heap.ptr(keep).unwrap().as_ptr().write_bytes(0x77, 64) };
    let ino = std::fs::metadata(shm_path(&name)).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    // SAFETY: the segment header's state word (offset 8, 4-aligned, in the mapping).
    let state = unsafe { &*seg.as_ptr().add(SEGMENT_STATE as usize).cast::<AtomicU32>() };
    let ready = state.load(Ordering::Relaxed);
    for forged in [0u32, 1] {
        assert_eq!(
            peer("store32", &name, SEGMENT_STATE, u64::from(forged)),
            "stored"
        );
        let t = Instant::now();
        match SegmentOptions::posix(&name).open() {
            Err(Error::Corrupt { what, .. }) => assert_eq!(what, "segment state"),
            other => panic!("open with state {forged}: {other:?}"),
        }
        match SegmentOptions::posix(&name).open_or_create() {
            Err(Error::Corrupt { what, .. }) => assert_eq!(what, "segment state"),
            other => panic!("open_or_create with state {forged}: {other:?}"),
        }
        match SegmentOptions::posix(&name)
            .replace_stale(true)
            .open_or_create()
        {
            Err(Error::Corrupt { what, .. }) => assert_eq!(what, "segment state"),
            Err(Error::InUse { .. }) => {}
            other => panic!("replace_stale with state {forged}: {other:?}"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "took {:?}",
            t.elapsed()
        );
        let now = std::fs::metadata(shm_path(&name)).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino()
        });
        assert_eq!(
            now.ok(),
            ino.as_ref().ok().copied(),
            "the name was replaced"
        );
        state.store(ready, Ordering::Relaxed);
    }
    // SAFETY: our block, untouched by anyone else.
    let bytes = unsafe { std::slice::from_raw_parts(heap.ptr(keep).unwrap().as_ptr(), 64) };
    assert!(bytes.iter().all(|&b| b == 0x77));
    assert!(
        SegmentOptions::posix(&name).open().is_ok(),
        "repaired: opens again"
    );
}

/// The same with nobody attached any more (a persisted segment): the complete,
/// checksummed header is the evidence; the data is kept.
#[test]
fn a_persisted_segment_with_a_forged_state_is_corrupt_not_reclaimed() {
    let name = shmkit::unique_name("hostile-persisted-").unwrap();
    let _u = Unlink(name.clone());
    let mut seg = SegmentOptions::posix(&name).create().unwrap();
    seg.persist();
    drop(seg);
    let path = shm_path(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&0u32.to_ne_bytes());
    std::fs::write(&path, &bytes).unwrap();
    match SegmentOptions::posix(&name).open_or_create() {
        Err(Error::Corrupt { what, .. }) => assert_eq!(what, "segment state"),
        other => panic!("{other:?}"),
    }
    assert!(path.exists(), "not removed");
}

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let name = std::env::var(NAME).unwrap();
    let at: u64 = std::env::var(AT).unwrap().parse().unwrap();
    let value: u64 = std::env::var(VALUE).unwrap().parse().unwrap();
    let seg = SegmentOptions::posix(&name).open().unwrap();
    let out = match role.as_str() {
        "store" => {
            // SAFETY: a stray write of a misbehaving peer: an 8-aligned word of
            // the mapping, stored atomically.
            unsafe {
                (*seg.as_ptr().add(at as usize).cast::<AtomicU64>()).store(value, Ordering::SeqCst)
            };
            "stored".to_owned()
        }
        "store32" => {
            // SAFETY: as above, a 4-aligned word.
            unsafe {
                (*seg.as_ptr().add(at as usize).cast::<AtomicU32>())
                    .store(value as u32, Ordering::SeqCst)
            };
            "stored".to_owned()
        }
        "attach" => match Heap::attach(&seg) {
            Ok(_) => "attached".to_owned(),
            Err(e) => format!("{e:?}").replace('\n', " "),
        },
        r => panic!("unknown role {r}"),
    };
    println!("{OUT} {out}");
}
