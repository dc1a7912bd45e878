//! Replays the fuzz corpora under `cargo test`, and runs a deterministic sweep of
//! single-byte corruptions of a valid image through the same entry point.

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

/// The bytes of a fresh, valid heap segment with `slots` registry slots.
fn valid_image(slots: u32, max: u64) -> Vec<u8> {
    let seg = SegmentOptions::heap()
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
