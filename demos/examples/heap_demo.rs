//! The shared heap across real processes, one of them killed with SIGKILL.
//!
//! ```text
//! cargo run --release --example heap_demo
//! ```
//!
//! The parent creates a named POSIX segment and a heap in it, and a mailbox named
//! "mailbox" (64 atomic slots, an object of the segment's directory). It
//! re-executes this binary as worker processes that open the segment by name, find
//! the mailbox by name (type-checked) and, for a second, allocate strings,
//! publish them and post their offsets to the mailbox, and take other workers'
//! strings out, check them and free them (cross-process free). One more worker
//! allocates a few megabytes privately and is killed with SIGKILL while holding
//! them. The parent then shows the owners the heap sees, reclaims the dead one's
//! blocks, verifies the heap, drains the mailbox and checks that every byte is
//! back.
#![allow(clippy::disallowed_types)] // std atomics are fine in an example's own data

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmkit::{Offset, SegmentOptions};
use shmkit::{alloc::Heap, containers::ShmString};

const TRADERS: usize = 3;
const SLOTS: usize = 64;
type Mailbox = [AtomicU64; SLOTS];

fn trader(name: &str) -> shmkit::Result<()> {
    let seg = SegmentOptions::posix(name).open()?;
    let heap = Heap::attach(&seg)?;
    let boxed = seg.find::<Mailbox>("mailbox")?;
    let me = std::process::id();
    let (mut sent, mut received) = (0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(1);
    let mut i = 0usize;
    while Instant::now() < end {
        i = (i + 7) % SLOTS;
        // Post: allocate, publish (before linking!), then link into the mailbox.
        let mut s = ShmString::from_str(&heap, "order ")?;
        s.push_str(&format!("{sent} from {me}"))?;
        let off = s.into_shared()?;
        if boxed[i]
            .compare_exchange(0, off.get(), Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            sent += 1;
        } else {
            ShmString::from_shared(&heap, off)?; // take it back and drop it
        }
        // Take: unlink, adopt, check, free (the block may be another process's).
        let j = (i + SLOTS / 2) % SLOTS;
        let got = boxed[j].swap(0, Ordering::Acquire);
        if got != 0 {
            let text = ShmString::from_shared(&heap, Offset::new(got))?.to_string()?;
            assert!(text.starts_with("order "), "corrupt message {text:?}");
            received += 1;
        }
    }
    println!("trader {me}: sent {sent}, received {received}");
    Ok(())
}

fn hoarder(name: &str) -> shmkit::Result<()> {
    let seg = SegmentOptions::posix(name).open()?;
    let heap = Heap::attach(&seg)?;
    let mut held = 0u64;
    for k in 0..2000u64 {
        let size = 64 + (k * 997) % 8000;
        heap.alloc(size as usize, 8)?.get();
        held += size;
    }
    heap.alloc(1 << 20, 4096)?.get(); // and one large block
    println!(
        "hoarder {} asked for {} B in 2001 blocks; waiting to be killed",
        std::process::id(),
        held + (1 << 20)
    );
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Kills and reaps a child on drop, so the demo never leaves processes behind.
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Result<(Reaped, String), Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut reader = BufReader::new(out);
    if args[0] == "hoarder" {
        reader.read_line(&mut line)?;
    }
    // Keep the pipe open in a thread so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        for l in reader.lines().map_while(Result::ok) {
            println!("  {l}");
        }
    });
    Ok((Reaped(child), line))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("trader") => return Ok(trader(&args[2])?),
        Some("hoarder") => return Ok(hoarder(&args[2])?),
        _ => {}
    }

    let name = shmkit::unique_name("shmkit-heap-demo-")?;
    let seg = SegmentOptions::posix(&name)
        .max_size(64 << 20)
        .committed(1 << 20)
        .create()?;
    let heap = Heap::attach(&seg)?;
    let mailbox = seg.create::<Mailbox>("mailbox", ())?;
    let baseline = heap.stats()?.used;
    println!(
        "heap in /dev/shm/{name}: {} B committed; {:?} at offset {:#x}",
        seg.committed(),
        mailbox.name(),
        mailbox.offset().get()
    );

    let (mut hoarder, line) = spawn(&["hoarder", &name])?;
    print!("  {line}");
    let mut traders = Vec::new();
    for _ in 0..TRADERS {
        traders.push(spawn(&["trader", &name])?.0);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (k, t) in traders.iter_mut().enumerate() {
        loop {
            if let Some(st) = t.0.try_wait()? {
                if !st.success() {
                    return Err(format!("trader {k} failed: {st}").into());
                }
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("trader {k} hung").into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    println!("killing the hoarder (pid {}) with SIGKILL", hoarder.0.id());
    hoarder.0.kill()?;
    hoarder.0.wait()?;
    let show = |title: &str| -> shmkit::Result<()> {
        let st = heap.stats()?;
        println!(
            "{title}: used {} B, free {} B, metadata {} B of {} B committed",
            st.used, st.free, st.metadata, st.committed
        );
        for o in &st.owners {
            println!(
                "  owner slot {:>3}: {:>5} blocks ({:>8} B) owned, {:>5} blocks ({:>7} B) cached, {}",
                o.owner.slot(),
                o.owned_blocks,
                o.owned_bytes,
                o.cached_blocks,
                o.cached_bytes,
                if o.alive { "alive" } else { "DEAD" }
            );
        }
        Ok(())
    };
    show("before reclaim")?;
    println!(
        "  (owned: blocks in use, counted at their size class, so a request rounded up to\n   \
         its class counts more than was asked for; cached: free blocks a process keeps\n   \
         for its next allocations until it flushes them back; a dead process's are both\n   \
         stranded until reclaimed)"
    );
    let r = heap.reclaim_dead()?;
    println!(
        "reclaim_dead: {} blocks, {} B back from {} dead owner(s) (its owned and its cached blocks)",
        r.blocks,
        r.bytes,
        r.owners.len()
    );
    let report = heap.verify();
    print!("verify: {report}");
    if !report.is_clean() {
        return Err("heap verification failed".into());
    }

    // Drain what the traders left in the mailbox (published strings).
    let mut drained = 0;
    for slot in mailbox.iter() {
        let off = slot.swap(0, Ordering::Acquire);
        if off != 0 {
            ShmString::from_shared(&heap, Offset::new(off))?;
            drained += 1;
        }
    }
    heap.flush()?;
    show(&format!("after draining {drained} messages"))?;
    let used = heap.stats()?.used;
    if used != baseline {
        return Err(format!("{} bytes leaked", used - baseline).into());
    }
    println!("ok: no byte lost; the killed process's blocks came back");
    Ok(())
}
