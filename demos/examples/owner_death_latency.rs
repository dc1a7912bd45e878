//! How long after a holder is SIGKILLed does a waiter get `OwnerDied`?
//!
//! ```text
//! cargo run --release --example owner_death_latency [TRIALS]
//! ```
//!
//! The parent places a `Mutex` in a named POSIX segment. Each trial starts a fresh
//! child (this binary again), which opens the segment, locks the mutex and says so;
//! a thread of the parent then waits in `lock`, the main thread SIGKILLs the child
//! and notes the time, and the waiting thread notes when `lock` returns
//! `OwnerDied`. The latency is the difference. Child start-up, the repair and
//! reaping stay outside the timed interval. Prints p50, p99 and max over `TRIALS`
//! trials (default 1000; the target is p99 <= 10 ms).
//!
//! Nobody wakes the waiter when the holder dies: it sleeps in 2 ms slices and asks
//! the registry between them, and the registry knows only once the kernel has
//! released the dead process's liveness lock (as it tears the process down). The
//! latency is that teardown plus at most one slice plus the liveness check.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shmkit::SegmentOptions;
use shmkit::sync::{LockError, Mutex};

/// Set in a child: the segment's name.
const CHILD_VAR: &str = "SHMKIT_LATENCY_CHILD";
/// The child's "I hold it" line.
const LOCKED: &str = "locked";
/// Bound on a child's start-up (a hang, not a speed limit).
const PATIENCE: Duration = Duration::from_secs(30);

/// The child: lock, say so, then hold the lock until killed (or until our stdin
/// closes, when the parent is gone).
fn child(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let seg = SegmentOptions::posix(name).open()?;
    let m = seg.find::<Mutex<u64>>("m")?;
    let _held = match m.raw().lock(&seg) {
        Ok(g) => g,
        Err(LockError::OwnerDied(mut g)) => {
            g.make_consistent();
            g
        }
        Err(e) => return Err(format!("child: lock: {e:?}").into()),
    };
    println!("{LOCKED}");
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    std::process::exit(0);
}

/// Kills and reaps a child on drop, so the program never leaves processes behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a child and waits (bounded) until it holds the mutex.
fn start_holder(name: &str) -> Result<Reaped, Box<dyn std::error::Error>> {
    let mut child = Reaped(
        Command::new(std::env::current_exe()?)
            .env(CHILD_VAR, name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let out = child.0.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(line) if line.trim() == LOCKED => Ok(child),
        Ok(line) => Err(format!("child said {line:?}").into()),
        Err(e) => Err(format!("child did not lock within {PATIENCE:?}: {e}").into()),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(name) = std::env::var(CHILD_VAR) {
        return child(&name);
    }
    let trials: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|e| format!("TRIALS {a:?}: {e}"))?,
        None => 1000,
    };
    if trials == 0 {
        return Err("TRIALS must be at least 1".into());
    }
    let name = shmkit::unique_name("owner-death-latency-")?;
    let seg = SegmentOptions::posix(&name)
        .max_size(1 << 20)
        .committed(64 << 10)
        .create()?;
    let m = seg.create::<Mutex<u64>>("m", ())?;
    let m = m.raw();

    let started = Instant::now();
    let mut latencies = Vec::with_capacity(trials);
    for trial in 0..trials {
        let mut holder = start_holder(&name)?;
        let waited = std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let r = m.lock(&seg);
                let returned = Instant::now();
                match r {
                    Err(LockError::OwnerDied(mut g)) => {
                        *g += 1; // the "repair"
                        g.make_consistent();
                        Ok(returned)
                    }
                    Ok(_) => Err("lock returned Ok: the dead holder went unnoticed".to_owned()),
                    Err(e) => Err(format!("lock returned {e:?}")),
                }
            });
            // Let the waiter spin out and go to sleep on the futex, at a random
            // phase of its 2 ms slice.
            std::thread::sleep(Duration::from_micros(3000 + (trial as u64 * 7919) % 2000));
            let killed = Instant::now();
            let k = holder.0.kill();
            let returned = waiter.join().map_err(|_| "waiter panicked".to_owned())?;
            k.map_err(|e| format!("kill: {e}"))?;
            returned.map(|r| r.saturating_duration_since(killed))
        })?;
        latencies.push(waited);
        holder.0.wait()?;
        drop(holder);
        // Free the dead children's registry slots (outside the timed interval).
        seg.reclaim_dead()?;
    }
    let total = started.elapsed();
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / trials as u32;
    println!(
        "owner death -> OwnerDied over {trials} trials: p50 {:.0} us, p99 {:.0} us, \
         max {:.0} us (min {:.0} us, mean {:.0} us); {:.1} s in all",
        us(percentile(&latencies, 50.0)),
        us(percentile(&latencies, 99.0)),
        us(latencies[trials - 1]),
        us(latencies[0]),
        us(mean),
        total.as_secs_f64()
    );
    assert_eq!(*m.lock(&seg).map_err(|e| format!("{e:?}"))?, trials as u64);
    Ok(())
}
