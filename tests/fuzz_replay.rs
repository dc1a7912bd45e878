//! Replays the fuzz corpora under `cargo test`, and runs deterministic sweeps
//! through the same entry points: single-byte corruptions of a valid segment image,
//! and bad values in every word of a small heap's metadata.
//!
//! Under miri (`MIRIFLAGS="-Zmiri-permissive-provenance -Zmiri-disable-isolation"
//! cargo +nightly miri test --test fuzz_replay`) only a few corpus files and a
//! sample of the sweeps run.

use std::path::Path;

use shmkit::SegmentOptions;

/// Every file in `fuzz/corpus/<target>`.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Heap corpus files replayed under miri, where a heap case takes a minute or more
/// (every `verify` and `reclaim_dead` walks each block of each span): one per
/// target keeps CI's miri step inside its budget (the whole corpus replays
/// natively, in `cargo test` and under libFuzzer).
const MIRI_CASES: usize = 1;
/// Under miri, the heap cases replayed are those nearest this many bytes (a few
/// operations each).
const MIRI_LEN: usize = 48;

/// A heap target's corpus: all of it, or under miri the [`MIRI_CASES`] files
/// nearest [`MIRI_LEN`] bytes.
fn heap_corpus(target: &str) -> Vec<Vec<u8>> {
    let mut cases = corpus(target);
    assert!(!cases.is_empty(), "the {target} corpus is empty");
    if cfg!(miri) {
        cases.sort_by(|a, b| (a.len().abs_diff(MIRI_LEN), a).cmp(&(b.len().abs_diff(MIRI_LEN), b)));
        cases.truncate(MIRI_CASES);
    }
    cases
}

/// The bytes of a fresh, valid heap segment with `slots` registry slots.
fn valid_image(slots: u32, max: u64) -> Vec<u8> {
    let seg = SegmentOptions::heap()
        .no_heap()
        .registry_slots(slots)
        .max_size(max)
        .committed(max)
        .create()
        .unwrap();
    // SAFETY: the heap region is max_size bytes, all committed, alive while `seg` is.
    unsafe { std::slice::from_raw_parts(seg.as_ptr(), max as usize) }.to_vec()
}

#[test]
fn the_open_segment_corpus_replays_cleanly() {
    let cases = corpus("open_segment");
    assert!(!cases.is_empty(), "the corpus is empty");
    for case in &cases {
        shmkit::fuzzing::open_segment(case);
    }
}

#[test]
fn a_valid_image_opens_and_every_single_byte_corruption_of_its_header_is_handled() {
    let img = valid_image(4, 16384);
    assert!(SegmentOptions::heap().open_image(&img).is_ok());
    shmkit::fuzzing::open_segment(&img);
    let header_len = if cfg!(miri) { 24 } else { 200 };
    for at in 0..header_len {
        for v in [0u8, 1, 0x80, 0xff] {
            let mut bad = img.clone();
            bad[at] = v;
            shmkit::fuzzing::open_segment(&bad);
        }
    }
}

#[test]
fn a_registry_full_of_garbage_is_reclaimed() {
    let mut img = valid_image(4, 16384);
    for b in &mut img[4096..4096 + 4 * 64] {
        *b = 0xa5;
    }
    shmkit::fuzzing::open_segment(&img);
}

#[test]
fn the_heap_ops_corpus_replays_cleanly() {
    let mut cases = heap_corpus("heap_ops");
    if cfg!(miri) {
        // The shortest case of 8 bytes or more: a 48-byte one costs miri about
        // six minutes (its blocks are large and stamped byte by byte); the rest
        // run natively.
        cases = corpus("heap_ops");
        cases.sort_by_key(|c| (c.len(), c.clone()));
        cases.retain(|c| c.len() >= 8); // a few operations at least
        cases.truncate(MIRI_CASES);
    }
    for case in &cases {
        shmkit::fuzzing::heap_ops(case);
    }
}

#[test]
fn the_heap_corrupt_corpus_replays_cleanly() {
    for case in &heap_corpus("heap_corrupt") {
        shmkit::fuzzing::heap_corrupt(case);
    }
}

/// The directory_corrupt corpus: all of it, or under miri the [`MIRI_CASES`]
/// files nearest [`MIRI_LEN`] bytes among those whose setup is the small one
/// (first byte, the knobs: no 40 extra objects, which cost miri minutes).
#[cfg(not(shmkit_loom))] // the directory is not built under loom
fn directory_corpus() -> Vec<Vec<u8>> {
    let mut cases = corpus("directory_corrupt");
    assert!(!cases.is_empty(), "the directory_corrupt corpus is empty");
    if cfg!(miri) {
        cases.retain(|c| c.first().is_some_and(|k| k & 2 == 0));
        cases.sort_by(|a, b| (a.len().abs_diff(MIRI_LEN), a).cmp(&(b.len().abs_diff(MIRI_LEN), b)));
        cases.truncate(MIRI_CASES);
    }
    cases
}

/// The queue_corrupt corpus: all of it, or under miri the [`MIRI_CASES`] files
/// nearest [`MIRI_LEN`] bytes.
#[cfg(not(shmkit_loom))] // queues are made through the directory
#[test]
fn the_queue_corrupt_corpus_replays_cleanly() {
    let mut cases = corpus("queue_corrupt");
    assert!(!cases.is_empty(), "the queue_corrupt corpus is empty");
    if cfg!(miri) {
        cases.sort_by(|a, b| (a.len().abs_diff(MIRI_LEN), a).cmp(&(b.len().abs_diff(MIRI_LEN), b)));
        cases.truncate(MIRI_CASES);
    }
    for case in &cases {
        shmkit::fuzzing::queue_corrupt(case);
    }
}

#[cfg(not(shmkit_loom))] // the directory is not built under loom
#[test]
fn the_directory_corrupt_corpus_replays_cleanly() {
    for case in &directory_corpus() {
        shmkit::fuzzing::directory_corrupt(case);
    }
}

#[cfg(not(shmkit_loom))] // the directory is not built under loom
#[test]
#[cfg_attr(
    miri,
    ignore = "the corpus replay runs the small setup under miri; this adds minutes"
)]
fn directory_corrupt_runs_every_setup_with_a_single_overwrite() {
    // Knobs: the overflow holder block or not, a grown table, a reclaim before.
    for k in [0, 1, 2, 4, 7] {
        shmkit::fuzzing::directory_corrupt(&[k]);
    }
}

#[test]
fn heap_ops_without_operations_leaves_a_clean_heap() {
    shmkit::fuzzing::heap_ops(&[]);
}

/// Values the sweep writes (kinds of `shmkit::fuzzing::heap_corrupt_word`): 0,
/// `u64::MAX`, `1 << 63`, and a valid-looking block offset.
const SWEEP_VALUES: [u8; 4] = [1, 2, 3, 10];

#[test]
fn every_heap_metadata_word_overwritten_with_a_bad_value_is_handled() {
    if cfg!(miri) {
        // A sample: a page descriptor pointing at a block (the page tables come
        // after the header's words). Each word costs miri about two minutes; the
        // whole sweep runs natively.
        assert!(shmkit::fuzzing::heap_corrupt_word(150, 10));
        return;
    }
    let mut word = 0;
    while SWEEP_VALUES
        .iter()
        .all(|&kind| shmkit::fuzzing::heap_corrupt_word(word, kind))
    {
        word += 1;
    }
    assert!(word > 150, "only {word} metadata words to sweep");
}

/// Regression (found by the heap_ops model): `realloc` of a dead handle's block on a
/// full heap used to reclaim that very block while allocating, copy it onto itself
/// and return a freed block. It now takes the block over first.
#[test]
fn realloc_of_a_dead_handles_block_on_a_full_heap_never_returns_a_free_block() {
    let (r, state) = shmkit::fuzzing::heap_realloc_of_a_reclaimed_block();
    match r {
        Ok(new) => assert!(
            matches!(state, Some(Ok(shmkit::alloc::BlockState::Owned(_)))),
            "realloc returned {new:#x}, whose state is {state:?}"
        ),
        Err(e) => assert!(
            matches!(
                e,
                shmkit::Error::OutOfMemory { .. } | shmkit::Error::BadBlock { .. }
            ),
            "{e}"
        ),
    }
}

/// Regression (found by the heap_corrupt fuzzer): heap calls waited for the page
/// lock and the transfer lock without a deadline, so a lock word that names a live
/// process (a stray write, a buggy peer) hung them for good. They now give up with
/// `LockTimeout` (a live holder, as far as anyone can tell) after the heap's lock
/// timeout (5 s of real time: not under miri, where setting the case up alone
/// takes longer than the test allows).
#[test]
#[cfg_attr(miri, ignore = "waits out the heap's 5 s lock timeout in real time")]
fn a_heap_lock_forged_to_name_a_live_handle_does_not_hang() {
    // Both cases at once: about one lock timeout in all.
    let waits: Vec<_> = (0..2)
        .map(|which| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(shmkit::fuzzing::heap_lock_forgery(which));
            });
            rx
        })
        .collect();
    for (which, rx) in waits.into_iter().enumerate() {
        match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(Err(shmkit::Error::LockTimeout { .. })) => {}
            Ok(other) => panic!("case {which}: {other:?}"),
            Err(_) => panic!("case {which}: still waiting after 30 s"),
        }
    }
}

/// Regenerates the seed corpus (run by hand after a format change).
#[test]
#[ignore = "writes fuzz/corpus/open_segment seeds"]
fn write_seed_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/open_segment");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("seed-valid-1slot"), valid_image(1, 8192)).unwrap();
    std::fs::write(dir.join("seed-valid-4slots"), valid_image(4, 16384)).unwrap();
    std::fs::write(dir.join("seed-zeros"), vec![0u8; 8192]).unwrap();
    std::fs::write(dir.join("seed-short"), b"SHMKIT\x00\x01").unwrap();
    std::fs::write(dir.join("seed-empty"), b"").unwrap();
}

/// Regression (found by the directory_corrupt harness; the linked and used
/// counts saturate now, the generation does not, and the harness keeps its
/// overwrites of it small): the directory did unchecked arithmetic on its root's
/// counters, which any process can write. A linked count of 0 with an entry
/// linked made `remove` underflow it, a used count near `u64::MAX` overflowed
/// `make_room`, and a generation of `u64::MAX` still overflows
/// `generation += 1`: a panic in debug builds (an abort if a handle drops while
/// it unwinds: its release re-enters the directory), a wrapped counter in
/// release ones. Each should be a corruption error, or saturate.
#[cfg(not(shmkit_loom))] // the directory is not built under loom
#[test]
fn a_corrupt_directory_counter_is_an_error_not_a_panic() {
    let panicked: Vec<_> = [(0, 0), (1, u64::MAX), (1, 1 << 62), (2, u64::MAX)]
        .into_iter()
        .filter(|&(which, value)| {
            std::panic::catch_unwind(|| shmkit::fuzzing::directory_root_counter(which, value))
                .is_err()
        })
        .collect();
    assert!(
        panicked.is_empty(),
        "(counter, value) whose calls panicked: {panicked:x?}"
    );
}

/// Regression (found while writing the directory_corrupt harness; fixed by the
/// stamped owner words the journal now records): the journal's recovery freed
/// whatever block its words named. A journal that said "link" for a removed
/// entry still held, "unlink" for a linked, held one, or "table" for any entry (as
/// a stray write, or a peer, could leave it) made the next directory call free an
/// object that live handles still used.
#[cfg(not(shmkit_loom))] // the directory is not built under loom
#[test]
fn a_journal_naming_a_held_entry_does_not_free_it() {
    // (operation, entry): 1 link, 2 unlink, 4 table; 0 the linked `a`, 1 the
    // removed `gone`, both held.
    let freed: Vec<_> = [(1, 1), (2, 0), (2, 1), (4, 0), (4, 1)]
        .into_iter()
        .filter(|&(op, which)| !shmkit::fuzzing::directory_journal_names_a_held_entry(op, which))
        .collect();
    assert!(
        freed.is_empty(),
        "(operation, entry) that freed a held entry: {freed:?}"
    );
}
