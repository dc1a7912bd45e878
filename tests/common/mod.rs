//! Helpers shared by the integration tests that re-execute their own binary as a
//! child process (`segment`, `multiprocess`, `security`, `nospace`): building the
//! child's command line, child guards that kill and reap on drop, bounded waits and
//! polling, and a few paths and file-system guards.
//!
//! Every bound here is a hang detector, not a speed limit: where the copies this
//! module replaces differed, the longer bound was kept.

// Each test binary compiles its own copy of this module and uses only a subset of
// it, so items unused by one binary are not dead code.
#![allow(dead_code)]

pub mod child;
pub mod crash;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// Bounded waiting.
// ---------------------------------------------------------------------------------

/// Bound on waiting for a child's line, exit or state change, or for a condition to
/// hold (a hang, not a speed limit).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Calls `f` until it returns `Some` (that value is returned), sleeping `every`
/// between calls; `None` once `patience` has passed without it.
pub fn poll<T>(patience: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Waits (bounded by [`PATIENCE`]) until `f` holds.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let held = poll(PATIENCE, Duration::from_millis(1), || f().then_some(()));
    assert!(held.is_some(), "timed out waiting for {what}");
}

/// SIGKILL (std does not signal a child it has already reaped; SIGKILL ends a
/// stopped one too), then [`reap_quietly`].
fn kill_and_reap_quietly(child: &mut Child) {
    let _ = child.kill();
    reap_quietly(child);
}

/// Reaps `child`, waiting at most [`PATIENCE`] so that a drop never hangs; says so
/// on stderr if it could not.
fn reap_quietly(child: &mut Child) {
    let reaped = poll(PATIENCE, Duration::from_millis(2), || {
        match child.try_wait() {
            Ok(None) => None,
            Ok(Some(_)) | Err(_) => Some(()),
        }
    });
    if reaped.is_none() {
        eprintln!("child {} could not be reaped", child.id());
    }
}

// ---------------------------------------------------------------------------------
// Watchdogs: a hang fails the binary instead of stalling CI.
// ---------------------------------------------------------------------------------

/// Aborts the whole test binary if not dropped within its bound: a hang detector,
/// not a speed limit. Inert under miri, where a thread left running at exit is an
/// error (the miri runs are bounded by their op counts).
pub struct Watchdog {
    _disarm: Option<mpsc::Sender<()>>,
}

/// A [`Watchdog`] for the test `test`, armed for `bound`.
pub fn watchdog(test: &'static str, bound: Duration) -> Watchdog {
    if cfg!(miri) {
        return Watchdog { _disarm: None };
    }
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(bound) {
            eprintln!("watchdog: {test} still running after {bound:?}: aborting");
            std::process::abort();
        }
    });
    Watchdog { _disarm: Some(tx) }
}

/// A watchdog for a crash test made of rounds: aborts the test binary (after
/// running its `cleanup`) if no round completes for `stall`, or if the test runs
/// past `bound`. The test reports progress with [`StallWatchdog::tick`].
#[allow(clippy::disallowed_types)] // test-side progress counter, not shared memory
pub struct StallWatchdog {
    progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _disarm: mpsc::Sender<()>,
}

#[allow(clippy::disallowed_types)]
impl StallWatchdog {
    /// Arms it for the test `test`; `cleanup` runs just before the abort (removing
    /// the test's named segment, say).
    pub fn new(
        test: &'static str,
        stall: Duration,
        bound: Duration,
        cleanup: impl FnOnce() + Send + 'static,
    ) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let progress = std::sync::Arc::new(AtomicU64::new(0));
        let seen = progress.clone();
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let start = Instant::now();
            let (mut last, mut since) = (0, Instant::now());
            loop {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return, // disarmed
                }
                let now = seen.load(Ordering::Relaxed);
                if now != last {
                    (last, since) = (now, Instant::now());
                }
                let why = if since.elapsed() > stall {
                    format!("no round completed for {stall:?} (last round {last})")
                } else if start.elapsed() > bound {
                    format!("still running after {bound:?} (round {last})")
                } else {
                    continue;
                };
                eprintln!("watchdog: {test} hung: {why}: aborting");
                cleanup();
                std::process::abort();
            }
        });
        StallWatchdog {
            progress,
            _disarm: tx,
        }
    }

    /// Records that round `round` completed.
    pub fn tick(&self, round: u64) {
        self.progress
            .store(round, std::sync::atomic::Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------
// Re-executing this test binary.
// ---------------------------------------------------------------------------------

/// The name of the ignored test that is a test binary's child entry point.
pub const CHILD_MAIN: &str = "child_main";

/// libtest arguments that run exactly the one (ignored) test named before them,
/// alone, with its output passed through.
pub const ONE_IGNORED_TEST: [&str; 4] = ["--exact", "--ignored", "--nocapture", "--test-threads=1"];

/// A command running only the ignored test `test` of this very test binary.
pub fn self_test_command(test: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.arg(test).args(ONE_IGNORED_TEST);
    cmd
}

/// A command running this test binary's [`CHILD_MAIN`] entry point.
pub fn child_main_command() -> Command {
    self_test_command(CHILD_MAIN)
}

/// Printed by a child that finished its role: proof that it ran at all (a child
/// whose test filter matched nothing would also exit 0).
pub const DONE_MARKER: &str = "SHMKIT-CHILD-DONE";

/// A child whose stdout is read line by line as it runs; killed and reaped on drop.
pub struct LineChild {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl LineChild {
    /// Spawns `cmd` with `stdin`, stdout read by a thread, stderr inherited.
    pub fn spawn(mut cmd: Command, stdin: Stdio) -> Self {
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the test binary");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What follows `marker` in the next line that holds it (lines without it are
    /// skipped), waiting at most `patience` in all. `marker` is searched anywhere in
    /// the line: libtest may print "test child_main ... " before the child's output.
    pub fn next_after(&self, marker: &str, patience: Duration) -> Result<String, RecvTimeoutError> {
        let deadline = Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left)?;
            if let Some(at) = line.find(marker) {
                return Ok(line[at + marker.len()..].to_owned());
            }
        }
    }

    /// The child's stdin, if it was piped and is still open.
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }

    /// Closes the child's stdin (end-of-file for the child).
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// SIGKILL, without reaping.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()
    }

    /// Waits at most `patience` for the child to exit, and reaps it; `None` if it is
    /// still running.
    pub fn wait_for_exit(&mut self, patience: Duration) -> Option<ExitStatus> {
        poll(patience, Duration::from_millis(2), || {
            self.child.try_wait().unwrap()
        })
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        self.close_stdin();
        reap_quietly(&mut self.child);
    }
}

/// A child whose stdout and stderr are collected whole; killed and reaped if the
/// test ends before it does.
pub struct CapturedChild {
    child: Option<Child>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

fn drain(r: Option<impl Read + Send + 'static>) -> Option<JoinHandle<String>> {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    })
}

impl CapturedChild {
    /// Spawns `cmd` with stdin from `/dev/null` and its output captured.
    pub fn spawn(mut cmd: Command) -> std::io::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Ok(CapturedChild {
            child: Some(child),
            stdout,
            stderr,
        })
    }

    /// Waits (polling, bounded by `watchdog`) and returns the status and output.
    pub fn wait(mut self, watchdog: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("waited once");
        let status = poll(watchdog, Duration::from_millis(10), || {
            child.try_wait().expect("try_wait")
        });
        let Some(status) = status else {
            kill_and_reap_quietly(&mut child);
            panic!(
                "child {} still running after {watchdog:?}: killed",
                child.id()
            );
        };
        let out = self.stdout.take().map(|h| h.join().unwrap_or_default());
        let err = self.stderr.take().map(|h| h.join().unwrap_or_default());
        let output = format!(
            "--- child stdout ---\n{}\n--- child stderr ---\n{}",
            out.unwrap_or_default(),
            err.unwrap_or_default()
        );
        (status, output)
    }
}

impl Drop for CapturedChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap_quietly(&mut c);
        }
    }
}

/// Runs [`CHILD_MAIN`] in a fresh copy of this test binary with `role_var` set to
/// `role` and the variables `env`, and returns its status and output once it exits
/// (bounded by `watchdog`).
pub fn run_child_main(
    role_var: &str,
    role: &str,
    env: &[(&str, String)],
    watchdog: Duration,
) -> (ExitStatus, String) {
    let mut cmd = child_main_command();
    cmd.env(role_var, role);
    for (k, v) in env {
        cmd.env(k, v);
    }
    CapturedChild::spawn(cmd)
        .expect("spawn child")
        .wait(watchdog)
}

// ---------------------------------------------------------------------------------
// Paths, descriptors and guards.
// ---------------------------------------------------------------------------------

/// Where a POSIX shared memory object named `name` lives.
pub fn shm_path(name: &str) -> PathBuf {
    Path::new("/dev/shm").join(name)
}

/// The companion lock file of System V segment `id`.
pub fn sysv_lock_path(id: i32) -> PathBuf {
    PathBuf::from(format!("/dev/shm/.shmkit-sysv-{id}.lock"))
}

pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Opens `path` read-write (close-on-exec).
pub fn open_rw(path: &str) -> OwnedFd {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .unwrap_or_else(|e| panic!("open {path}: {e}"))
}

/// A new open file description of `fd`, as a peer gets by opening
/// `/proc/<pid>/fd/<n>`.
pub fn reopen(fd: BorrowedFd<'_>) -> OwnedFd {
    open_rw(&format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// A private directory under the system temp dir, removed with its contents on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(shmkit::unique_name("shmkit-test-").expect("name"));
        std::fs::create_dir(&dir).expect("create temp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .expect("chmod temp dir");
        TempDir(dir)
    }

    pub fn join(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
