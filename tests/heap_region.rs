//! The heap-backed region: segments laid out in process memory, shared by threads.
//! These run under miri too (`cargo +nightly miri test --test heap_region`).
#![allow(clippy::disallowed_types)]

use std::sync::atomic::{AtomicU64, Ordering};

use shmkit::{Error, Offset, Segment, SegmentKind, SegmentOptions, SlotState};

fn counter(seg: &Segment) -> &AtomicU64 {
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.resolve(Offset::<AtomicU64>::new(seg.user_offset())) }.unwrap()
}

fn small(opts: SegmentOptions) -> SegmentOptions {
    opts.max_size(2 << 20).committed(64 << 10)
}

#[test]
fn a_heap_segment_is_shared_between_handles_and_threads() {
    let seg = small(SegmentOptions::heap().no_heap()).create().unwrap();
    assert_eq!(seg.kind(), SegmentKind::Heap);
    let clones: Vec<Segment> = (0..4).map(|_| seg.try_clone().unwrap()).collect();
    std::thread::scope(|s| {
        for c in &clones {
            s.spawn(|| {
                for _ in 0..if cfg!(miri) { 50 } else { 1000 } {
                    counter(c).fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let per = if cfg!(miri) { 50 } else { 1000 };
    assert_eq!(counter(&seg).load(Ordering::Relaxed), 4 * per);
    seg.commit(1 << 20).unwrap();
    assert_eq!(clones[0].committed(), 1 << 20);
    let slots: Vec<u32> = clones.iter().map(Segment::slot).collect();
    for (c, s) in clones.into_iter().zip(&slots) {
        assert!(seg.is_alive(*s).unwrap());
        c.simulate_crash();
        assert_eq!(seg.slot_info(*s).unwrap().state, SlotState::Dead);
    }
    let mut freed = seg.reclaim_dead().unwrap();
    freed.sort_unstable();
    assert_eq!(freed, slots);
}

#[test]
fn a_full_registry_is_registry_full_until_a_slot_is_reclaimed() {
    let seg = SegmentOptions::heap()
        .no_heap()
        .registry_slots(3)
        .create()
        .unwrap();
    let a = seg.try_clone().unwrap();
    let b = seg.try_clone().unwrap();
    assert!(matches!(
        seg.try_clone(),
        Err(Error::RegistryFull { slots: 3 })
    ));
    let b_slot = b.slot();
    b.simulate_crash();
    // Attaching reclaims the dead slot.
    let c = seg.try_clone().unwrap();
    assert_eq!(c.slot(), b_slot);
    assert!(a.detach());
    let _d = seg.try_clone().unwrap();
}

#[test]
fn offsets_that_do_not_resolve_are_refused() {
    let seg = small(SegmentOptions::heap().no_heap()).create().unwrap();
    let end = seg.committed();
    // SAFETY: this test views each offset as one type only.
    let bad = |off: u64| match unsafe { seg.read(Offset::<u64>::new(off)) } {
        Err(Error::BadOffset { reason, .. }) => reason,
        other => panic!("{off:#x}: {other:?}"),
    };
    assert_eq!(bad(0), "null");
    assert_eq!(bad(seg.user_offset() + 4), "misaligned");
    assert_eq!(bad(end), "out of bounds");
    assert_eq!(bad(end - 4), "misaligned");
    assert_eq!(bad(u64::MAX - 7), "out of bounds");
    // The header and registry are not user memory.
    assert_eq!(bad(8), "below the user region");
    assert_eq!(bad(seg.user_offset() - 8), "below the user region");
    // SAFETY: this test views each offset as one type only.
    assert!(unsafe { seg.read(Offset::<u64>::new(end - 8)) }.is_ok());
    // SAFETY: this test views each offset as one type only.
    assert!(unsafe { seg.resolve(Offset::<AtomicU64>::new(end - 8)) }.is_ok());
    // SAFETY: this test views each offset as one type only.
    assert!(unsafe { seg.resolve(Offset::<AtomicU64>::new(16)) }.is_err());
    // Past committed but inside max_size: refused until committed.
    let beyond = Offset::<u64>::new(end + 64);
    // SAFETY: this test views each offset as one type only.
    assert!(unsafe { seg.write(beyond, 1) }.is_err());
    seg.commit(end + 4096).unwrap();
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.write(beyond, 1) }.unwrap();
    // SAFETY: this test views each offset as one type only.
    assert_eq!(unsafe { seg.read(beyond) }.unwrap(), 1);
}

#[test]
fn a_heap_image_round_trips_through_open_image() {
    let seg = small(SegmentOptions::heap().no_heap()).create().unwrap();
    counter(&seg).store(77, Ordering::Release);
    let len = seg.committed() as usize;
    // SAFETY: the committed region is `len` bytes, alive while `seg` is.
    let image = unsafe { std::slice::from_raw_parts(seg.as_ptr(), len) }.to_vec();
    // The image is shorter than max_size: refused, naming the field.
    let e = SegmentOptions::heap()
        .no_heap()
        .open_image(&image)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Corrupt {
                what: "max_size",
                ..
            }
        ),
        "{e:?}"
    );
    let full = SegmentOptions::heap()
        .no_heap()
        .max_size(64 << 10)
        .committed(64 << 10)
        .create()
        .unwrap();
    counter(&full).store(78, Ordering::Release);
    // SAFETY: as above, the whole region is committed.
    let image = unsafe { std::slice::from_raw_parts(full.as_ptr(), 64 << 10) }.to_vec();
    let copy = SegmentOptions::heap().no_heap().open_image(&image).unwrap();
    assert_eq!(copy.seed(), full.seed());
    assert_eq!(counter(&copy).load(Ordering::Acquire), 78);
    // The copy's registry holds the original's slot, which nobody there holds.
    assert_eq!(copy.slot_info(full.slot()).unwrap().state, SlotState::Dead);
}
