//! Property: `Offset` resolution never yields an out-of-bounds or misaligned
//! reference, for any region size, offset and type; and it resolves every offset
//! that is in the user region, aligned and non-null.

use proptest::prelude::*;
use shmkit::{Error, Offset, PAGE_SIZE, Segment, SegmentOptions, ShmSafe};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(miri) { 8 } else { 512 },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Resolves `raw` as a `T` and checks the verdict against the rules.
fn check<T: ShmSafe>(seg: &Segment, raw: u64) -> Result<(), TestCaseError> {
    let committed = seg.committed();
    let size = size_of::<T>() as u64;
    let align = align_of::<T>() as u64;
    let valid = raw >= seg.user_offset()
        && raw % align == 0
        && raw.checked_add(size).is_some_and(|e| e <= committed);
    match seg.resolve_ptr(Offset::<T>::new(raw)) {
        Ok(r) => {
            let addr = r.as_ptr() as usize;
            let base = seg.as_ptr() as usize;
            prop_assert!(valid, "resolved an invalid offset {raw:#x}");
            prop_assert_eq!(addr - base, raw as usize);
            prop_assert!(addr + size as usize <= base + committed as usize);
            prop_assert_eq!(addr % align as usize, 0);
            prop_assert!(addr >= base + seg.user_offset() as usize);
        }
        Err(Error::BadOffset { offset, .. }) => {
            prop_assert!(!valid, "refused a valid offset {raw:#x}");
            prop_assert_eq!(offset, raw);
        }
        Err(e) => prop_assert!(false, "unexpected error {e:?}"),
    }
    Ok(())
}

fn offsets(committed: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        0..committed + 64,
        (committed - 64)..committed + 64,
        any::<u64>(),
        (u64::MAX - 64)..=u64::MAX,
    ]
}

fn region() -> impl Strategy<Value = u64> {
    // Committed pages: the header and registry take 3 pages at 128 slots; use few
    // slots so that small regions are possible.
    (3u64..64).prop_map(|pages| pages * PAGE_SIZE)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn resolution_is_always_in_bounds_and_aligned(
        committed in region(),
        picks in proptest::collection::vec((any::<u8>(), any::<u64>()), 1..16),
        raws in region().prop_flat_map(|c| proptest::collection::vec(offsets(c), 16)),
    ) {
        let seg = SegmentOptions::heap().no_heap()
            .registry_slots(4)
            .max_size(64 * PAGE_SIZE)
            .committed(committed)
            .create()
            .unwrap();
        prop_assert_eq!(seg.committed(), committed.max(seg.user_offset()));
        for (i, raw) in raws.iter().enumerate() {
            let (ty, _) = picks[i % picks.len()];
            match ty % 8 {
                0 => check::<u8>(&seg, *raw)?,
                1 => check::<u16>(&seg, *raw)?,
                2 => check::<u32>(&seg, *raw)?,
                3 => check::<u64>(&seg, *raw)?,
                4 => check::<u128>(&seg, *raw)?,
                5 => check::<[u8; 3]>(&seg, *raw)?,
                6 => check::<[u64; 5]>(&seg, *raw)?,
                _ => check::<[u32; 1000]>(&seg, *raw)?,
            }
        }
    }

    #[test]
    fn check_agrees_with_the_rules_for_any_range(
        raw in any::<u64>(),
        lo in prop_oneof![Just(0u64), any::<u64>()],
        len in any::<u64>(),
    ) {
        let valid = raw != 0
            && raw >= lo
            && raw % 8 == 0
            && raw.checked_add(24).is_some_and(|e| e <= len);
        match Offset::<[u64; 3]>::new(raw).check(lo, len) {
            Ok(at) => {
                prop_assert!(valid);
                prop_assert_eq!(at as u64, raw);
            }
            Err(_) => prop_assert!(!valid),
        }
    }
}
