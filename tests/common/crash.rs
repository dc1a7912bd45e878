//! The parent side of the kill -9 crash tests (`crash_heap`, `crash_directory`,
//! `crash_sync`): the number of rounds, a small generator for timing, and the
//! parent's handle on a worker process (spawn, readiness, heartbeat, SIGKILL and
//! reap, failure reports). The worker side's protocol is [`super::child`].

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use shmkit::OwnerTag;

use super::child::{FAIL_MARK, PREFIX};
use super::{LineChild, PATIENCE, StallWatchdog};

/// How many rounds (kills) to run instead of the test's default.
pub const ROUNDS_VAR: &str = "SHMKIT_CRASH_ROUNDS";

/// The rounds to run: `SHMKIT_CRASH_ROUNDS` if set, else `default`.
pub fn rounds(default: u64) -> u64 {
    match std::env::var(ROUNDS_VAR) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{ROUNDS_VAR}={v:?}: {e}")),
        Err(_) => default,
    }
}

/// splitmix64's finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small non-cryptographic generator (splitmix64): timing, not secrets.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the clock, the pid and `salt`.
    pub fn seeded(salt: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng(nanos ^ (u64::from(std::process::id()) << 32) ^ salt.wrapping_mul(0x9e37_79b9))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Spins for `us` microseconds.
pub fn spin_us(us: u64) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_micros(us) {
        std::hint::spin_loop();
    }
}

/// Parent side: a worker process, killed and reaped when dropped.
pub struct WorkerProcess {
    child: LineChild,
    /// Its index among the test's workers (its replacement reuses it).
    pub index: usize,
    /// Its owner tag, once ready.
    pub tag: Option<OwnerTag>,
    /// Its heartbeat when last seen.
    beat: u64,
    /// What the test's own exit codes mean, for failure reports.
    exits: &'static [(i32, &'static str)],
}

impl WorkerProcess {
    /// Spawns `cmd` (a [`super::child_main_command`] with the test's variables
    /// set) as worker `index`, with a piped stdin: closed when the parent dies,
    /// which tells the worker to leave.
    pub fn spawn(cmd: Command, index: usize, exits: &'static [(i32, &'static str)]) -> Self {
        WorkerProcess {
            child: LineChild::spawn(cmd, Stdio::piped()),
            index,
            tag: None,
            beat: 0,
            exits,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The next line after `marker` (bounded by `patience`).
    pub fn next_after(
        &self,
        marker: &str,
        patience: Duration,
    ) -> Result<String, std::sync::mpsc::RecvTimeoutError> {
        self.child.next_after(marker, patience)
    }

    /// Waits for the worker's exit (bounded by `patience`).
    pub fn wait_for_exit(&mut self, patience: Duration) -> Option<ExitStatus> {
        self.child.wait_for_exit(patience)
    }

    /// Closes its stdin: the worker leaves.
    pub fn close_stdin(&mut self) {
        self.child.close_stdin();
    }

    /// What a worker that exited on its own said, with its status.
    pub fn failure(&self, st: ExitStatus) -> String {
        let why = st
            .code()
            .and_then(|c| self.exits.iter().find(|&&(code, _)| code == c))
            .map_or("an unexpected exit", |&(_, why)| why);
        let said = self
            .child
            .next_after(FAIL_MARK, Duration::from_secs(2))
            .unwrap_or_else(|e| format!("(no FAIL line: {e})"));
        format!(
            "worker {} (pid {}) exited on its own ({st}): {why}: {said}",
            self.index,
            self.pid()
        )
    }

    /// Waits (bounded) for the worker's `ready ... <owner tag>` line and records
    /// the tag and then the heartbeat (`beat`); returns the line's words between
    /// `ready` and the tag.
    pub fn wait_ready(&mut self, beat: impl Fn() -> u64) -> Vec<String> {
        let said = match self.child.next_after(PREFIX, PATIENCE) {
            Ok(s) => s,
            Err(e) => match self.child.wait_for_exit(Duration::ZERO) {
                Some(st) => panic!("{}", self.failure(st)),
                None => panic!("worker {} never became ready: {e}", self.pid()),
            },
        };
        let mut words: Vec<String> = said.split_whitespace().map(String::from).collect();
        let tag = match words.pop() {
            Some(tag) if words.first().map(String::as_str) == Some("ready") => tag,
            _ => panic!("worker {}: {said:?}", self.pid()),
        };
        let bits: u64 = tag.parse().unwrap_or_else(|e| panic!("{said:?}: {e}"));
        self.tag = Some(OwnerTag::from_word(bits));
        self.beat = beat();
        words.split_off(1)
    }

    /// Fails if the worker exited on its own (it only leaves when killed or
    /// stopped), or if its heartbeat (`beat`) does not move for [`PATIENCE`] (a
    /// hang; `doing` says what it was doing).
    pub fn assert_progress(&mut self, beat: impl Fn() -> u64, doing: impl Fn() -> String) {
        if let Some(st) = self.child.wait_for_exit(Duration::ZERO) {
            panic!("{}", self.failure(st));
        }
        let last = self.beat;
        let now = super::poll(PATIENCE, Duration::from_millis(1), || {
            let now = beat();
            (now != last).then_some(now)
        });
        self.beat = now.unwrap_or_else(|| {
            panic!(
                "worker {} (pid {}) is stuck {} for {PATIENCE:?} (a hang)",
                self.index,
                self.pid(),
                doing()
            )
        });
    }

    /// SIGKILL, reap (bounded); fails unless SIGKILL is what ended it. Returns
    /// its owner tag.
    pub fn kill(&mut self) -> Option<OwnerTag> {
        let _ = self.child.kill();
        let pid = self.pid();
        let st = self
            .child
            .wait_for_exit(PATIENCE)
            .unwrap_or_else(|| panic!("worker {pid} not reaped after SIGKILL"));
        if st.signal() != Some(libc::SIGKILL) {
            panic!("{}", self.failure(st));
        }
        self.tag
    }
}

/// The watchdog of a crash test of `rounds` rounds on the POSIX segment `name`:
/// aborts (after removing the segment) if no round completes for a minute, or if
/// the test runs past `base` plus a second per round.
pub fn watchdog(test: &'static str, name: &str, rounds: u64, base: Duration) -> StallWatchdog {
    let name = name.to_owned();
    StallWatchdog::new(
        test,
        Duration::from_secs(60),
        base + Duration::from_secs(1) * u32::try_from(rounds).unwrap_or(u32::MAX),
        move || {
            let _ = shmkit::SegmentOptions::posix(&name).remove();
        },
    )
}
