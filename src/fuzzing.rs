//! Fuzz entry points, shared by `fuzz/fuzz_targets/*` and the corpus replay tests.

#![allow(unsafe_code)] // one read of a segment image nothing else views

use crate::{Offset, SegmentOptions};

/// Largest image a fuzz case maps (keeps runs fast; larger inputs are truncated).
pub const MAX_IMAGE: usize = 1 << 20;

/// Arbitrary bytes as a segment image: opening must return `Ok` or a typed error,
/// never panic, crash or hang; whatever opens must then be usable.
///
/// # Panics
///
/// Only if the library breaks its own promises (that is the bug a fuzzer finds).
pub fn open_segment(data: &[u8]) {
    let data = &data[..data.len().min(MAX_IMAGE)];
    open_one(data);
    // Again with a consistent fingerprint and checksum, so the fuzzer also reaches
    // the field checks and the registry behind them.
    let mut repaired = data.to_vec();
    crate::segment::repair_header(&mut repaired);
    if repaired != data {
        open_one(&repaired);
    }
}

fn open_one(data: &[u8]) {
    let Ok(seg) = SegmentOptions::heap().open_image(data) else {
        return;
    };
    let committed = seg.committed();
    assert!(committed >= seg.user_offset() && committed <= seg.max_size());
    assert!(seg.is_alive(seg.slot()).expect("own slot"));
    let list = seg.slot_list().expect("heap locks never fail");
    assert!(list.iter().any(|s| s.own));
    // Every slot the image claimed is held by nobody here: all dead, all freed.
    let freed = seg.reclaim_dead().expect("heap locks never fail");
    assert_eq!(freed.len() + 1, list.len(), "{list:?}");
    // SAFETY: nothing else in this process views this segment.
    if let Ok(v) = unsafe { seg.read(Offset::<u64>::new(committed - 8)) } {
        let _ = std::hint::black_box(v);
    }
    match seg.try_clone() {
        Ok(peer) => assert!(peer.is_alive(seg.slot()).expect("probe")),
        Err(crate::Error::RegistryFull { slots: 1 }) => {}
        Err(e) => panic!("a second handle must attach: {e}"),
    }
}
