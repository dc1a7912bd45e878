//! Peers that shmkit does not depend on, measured in the same run as shmkit:
//! uncontended lock+unlock of raw_sync's process-shared mutex against shmkit's
//! robust Mutex, in the same shared mapping.
//!
//! `cargo run --release` in `peers/`. Prints medians of 31 batches and the ratio.
//! (raw_sync is a peer, not a dependency: it has no robust mutex and miri reports
//! UB in its initialisation; see TOOLING.md.)

use std::time::Instant;

use raw_sync::locks::{LockInit, Mutex as RawMutex};
use shmkit::sync::Mutex;
use shmkit::{Offset, SegmentOptions};

const BATCH: u32 = 2_000_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ns_per_op(mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..BATCH {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(BATCH)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seg = SegmentOptions::anonymous()
        .max_size(1 << 20)
        .committed(64 << 10)
        .create()?;
    let base = seg.user_offset();
    // SAFETY: nothing else uses these offsets.
    let ours = unsafe { seg.place(Offset::<Mutex<u64>>::new(base), Mutex::new(0))? };
    let raw_at = seg.resolve_ptr(Offset::<[u8; 1024]>::new(base + 4096))?;
    // SAFETY: raw_sync's contract: a writable region large enough for the lock and
    // its data, owned by us for the program's life.
    let (raw, _) =
        unsafe { RawMutex::new(raw_at.as_ptr().cast(), raw_at.as_ptr().cast::<u8>().add(64)) }
            .map_err(|e| format!("raw_sync: {e}"))?;

    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..31 {
        // A B A B: alternate so that noise hits both alike.
        a.push(ns_per_op(|| *ours.lock(&seg).unwrap() += 1));
        b.push(ns_per_op(|| {
            let g = raw.lock().unwrap();
            drop(g);
        }));
    }
    let (ma, mb) = (median(a), median(b));
    println!("uncontended lock+unlock, median of 31 batches of {BATCH}:");
    println!("  shmkit Mutex      {ma:7.2} ns");
    println!("  raw_sync Mutex    {mb:7.2} ns");
    println!("  ratio shmkit/raw_sync = {:.2}", ma / mb);
    Ok(())
}
