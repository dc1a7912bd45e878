//! A segment shared by several real processes, one of which is killed with
//! SIGKILL: the registry tells the dead from the living and reclaims the slot.
//!
//! ```text
//! cargo run --release --example registry_demo
//! ```
//!
//! The parent creates a named POSIX segment and re-executes this binary as worker
//! processes. Each worker opens the segment by name, takes a registry slot, finds
//! the shared counter by name and adds to it. The parent SIGKILLs one worker mid-run, shows the registry
//! verdicts, reclaims the dead slot and checks the counter.
#![allow(clippy::disallowed_types)] // std atomics are fine in an example's own data

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmkit::{Segment, SegmentOptions, Shared, SlotState};

const WORKERS: usize = 4;
const ADDS_PER_WORKER: u64 = 1_000_000;

/// The shared words, found by name (the parent creates them, type-checked on
/// every find).
fn counter(seg: &Segment) -> shmkit::Result<Shared<AtomicU64>> {
    seg.find_or_create("counter", ())
}
fn done(seg: &Segment) -> shmkit::Result<Shared<AtomicU64>> {
    seg.find_or_create("done", ())
}

fn worker(name: &str, forever: bool) -> shmkit::Result<()> {
    let seg = SegmentOptions::posix(name).open()?;
    println!("slot {} pid {}", seg.slot(), std::process::id());
    let c = counter(&seg)?;
    for _ in 0..ADDS_PER_WORKER {
        c.fetch_add(1, Ordering::Relaxed);
    }
    // SYNC: Release pairs with the parent's Acquire load of `done`: our adds are
    // visible once it sees our increment.
    done(&seg)?.fetch_add(1, Ordering::Release);
    if forever {
        // This one waits to be killed, still attached.
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    Ok(())
}

/// Kills and reaps a child on drop, so the demo never leaves processes behind.
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "worker" {
        worker(&args[2], args[3] == "forever")?;
        return Ok(());
    }

    let name = shmkit::unique_name("shmkit-demo-")?;
    let seg = SegmentOptions::posix(&name)
        .max_size(16 << 20)
        .committed(64 << 10)
        .create()?;
    println!(
        "created /dev/shm/{name}: max {} B, committed {} B, parent slot {}",
        seg.max_size(),
        seg.committed(),
        seg.slot()
    );
    let (total, finished) = (counter(&seg)?, done(&seg)?);
    println!(
        "objects by name: {:?}",
        seg.directory()
            .list()?
            .iter()
            .map(|o| format!("{} ({})", o.name, o.identity.name))
            .collect::<Vec<_>>()
    );

    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut slots = Vec::new();
    for i in 0..WORKERS {
        let mode = if i == 0 { "forever" } else { "finish" };
        let mut child = Command::new(&exe)
            .args(["worker", &name, mode])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
        let slot: u32 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("worker did not report its slot")?;
        // A worker that finished and detached frees its slot: the next one may
        // take the same slot (with a new incarnation).
        let reuse = if slots.contains(&slot) {
            " (reused: an earlier worker finished and detached, freeing it)"
        } else {
            ""
        };
        println!(
            "worker {i} (pid {}) attached at slot {slot}{reuse}",
            child.id()
        );
        slots.push(slot);
        children.push(Reaped(child));
    }

    // Wait (bounded) for the finishing workers, then kill the one that waits.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, c) in children.iter_mut().enumerate().skip(1) {
        loop {
            if let Some(st) = c.0.try_wait()? {
                if !st.success() {
                    return Err(format!("worker {i} failed: {st}").into());
                }
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("worker {i} hung").into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    while finished.load(Ordering::Acquire) < WORKERS as u64 {
        if Instant::now() > deadline {
            return Err("worker 0 did not finish its adds".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "killing worker 0 (pid {}) with SIGKILL while it is attached",
        children[0].0.id()
    );
    children[0].0.kill()?;
    children[0].0.wait()?;

    println!("\nregistry as the parent sees it:");
    for s in seg.slot_list()? {
        println!(
            "  slot {:>3}  pid {:>7}  {:?}{}",
            s.index,
            s.pid,
            s.state,
            if s.own { "  (us)" } else { "" }
        );
    }
    if seg.slot_info(slots[0])?.state != SlotState::Dead {
        return Err("the killed worker's slot is not judged dead".into());
    }
    let freed = seg.reclaim_dead()?;
    println!("reclaimed dead slots: {freed:?}");
    if freed != vec![slots[0]] {
        return Err(format!("expected to reclaim exactly slot {}", slots[0]).into());
    }

    // The killed worker had finished its adds before waiting to be killed.
    let total = total.load(Ordering::Acquire);
    println!(
        "shared counter: {total} (expected {})",
        WORKERS as u64 * ADDS_PER_WORKER
    );
    if total != WORKERS as u64 * ADDS_PER_WORKER {
        return Err("lost updates".into());
    }
    println!(
        "ok: {WORKERS} processes shared one segment; the killed one was detected and reclaimed"
    );
    Ok(())
}
