//! Real processes around one segment: creators racing, creators killed half-way
//! through initialisation, and the registry's verdict on processes that were killed,
//! stopped, left as zombies, had their pid reused, or left a forked child behind.
//!
//! The test binary re-executes itself: `child_main` (ignored, so it only runs when
//! asked for) reads its role from `SHMKIT_CHILD_ROLE` and its segment from
//! `SHMKIT_CHILD_TARGET`. Children answer on stdout with lines starting with
//! `SHMKIT:`, and wait on stdin: a child whose parent dies sees end-of-file and
//! leaves, so nothing outlives the test binary.
#![cfg(not(miri))]
#![allow(clippy::disallowed_types)]

mod common;

use common::child::{PREFIX, ROLE, TARGET, say, wait_for_eof};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{LineChild, PATIENCE, poll, shm_path, sysv_lock_path};
use shmkit::{Error, Offset, Opened, Segment, SegmentOptions, SlotState};

const CELL: &str = "SHMKIT_CHILD_CELL";

/// A test still running after this long is hung: the watchdog aborts the binary.
const WATCHDOG: Duration = Duration::from_secs(100);

/// Processes racing `open_or_create` in one round.
const RACERS: usize = 10;
/// Children per registry case, and how often each verdict is asked for.
const CHILDREN: usize = 24;
const ROUNDS: usize = 50;
/// Verdicts each registry case must check at least.
const MIN_CHECKS: usize = 1000;

/// Registry layout (format version 1): slots start after the 4 KiB header.
const REGISTRY_OFFSET: u64 = 4096;
const SLOT_SIZE: u64 = 64;
const SLOT_PID: u64 = 8;
const SLOT_START_TIME: u64 = 16;

// ---------------------------------------------------------------------------------
// Helpers: watchdog, segments under test, child processes.
// ---------------------------------------------------------------------------------

/// Aborts the whole test binary if not dropped within [`WATCHDOG`].
fn watchdog(test: &'static str) -> common::Watchdog {
    common::watchdog(test, WATCHDOG)
}

/// A segment name or key made for one test, removed when dropped.
#[derive(Debug)]
enum Target {
    Posix(String),
    SysV(i32),
}

impl Target {
    fn posix() -> Self {
        Target::Posix(shmkit::unique_name("mp-").unwrap())
    }

    /// A random System V key nobody uses.
    fn sysv() -> Self {
        for _ in 0..16 {
            let hex = shmkit::unique_name("k").unwrap();
            let key =
                (u32::from_str_radix(&hex[hex.len() - 8..], 16).unwrap() & 0x7fff_ffff) as i32;
            let target = Target::SysV(key);
            if key != 0 && !target.exists() {
                return target;
            }
            std::mem::forget(target); // someone else's key: do not remove it
        }
        panic!("no free System V key found");
    }

    fn options(&self) -> SegmentOptions {
        match self {
            Target::Posix(name) => SegmentOptions::posix(name).no_heap(),
            Target::SysV(key) => SegmentOptions::sysv(*key).no_heap(),
        }
    }

    /// How a child is told about it (see [`options_from_env`]).
    fn env(&self) -> String {
        match self {
            Target::Posix(name) => format!("posix:{name}"),
            Target::SysV(key) => format!("sysv:{key}"),
        }
    }

    /// Whether anything is left under the name or key.
    fn exists(&self) -> bool {
        match self {
            Target::Posix(name) => shm_path(name).symlink_metadata().is_ok(),
            Target::SysV(key) => {
                // SAFETY: shmget with size 0 and no flags only looks the key up.
                unsafe { libc::shmget(*key, 0, 0) >= 0 }
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // The creator's handle normally removed it already: NotFound is the rule.
        for _ in 0..4 {
            if self.options().remove().is_err() {
                break;
            }
        }
    }
}

/// A child process of this test binary, killed and reaped when dropped.
struct ChildProc(LineChild);

impl ChildProc {
    fn spawn(role: &str, target: &Target, extra: &[(&str, String)]) -> Self {
        let mut cmd = common::child_main_command();
        cmd.env(ROLE, role).env(TARGET, target.env());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Self(LineChild::spawn(cmd, Stdio::piped()))
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// The words after `tag` in the next line the child says (bounded wait).
    fn line(&self, tag: &str) -> Vec<String> {
        let said = match self.0.next_after(PREFIX, PATIENCE) {
            Ok(l) => l,
            Err(e) => panic!("child {} did not say {tag:?}: {e}", self.pid()),
        };
        let mut words = said.split_whitespace().map(str::to_owned);
        match words.next() {
            Some(t) if t == tag => words.collect(),
            _ => panic!("child {} said {said:?}, expected {tag:?}", self.pid()),
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.0.stdin().expect("stdin still open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// End-of-file on the child's stdin: "you may go now".
    fn close_stdin(&mut self) {
        self.0.close_stdin();
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill takes plain integers and touches no memory. (The child is not
        // reaped before `kill_and_reap`/`wait_exit`, so the pid is still its own.)
        let r = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits (bounded) for the child to exit, and reaps it.
    fn wait_exit(&mut self) -> ExitStatus {
        self.0
            .wait_for_exit(PATIENCE)
            .unwrap_or_else(|| panic!("child {} did not exit", self.pid()))
    }

    /// SIGKILL, then reap.
    fn kill_and_reap(&mut self) -> ExitStatus {
        self.0.kill().unwrap();
        self.wait_exit()
    }
}

/// A grandchild (forked by a child), killed and reaped when dropped. This process
/// is a child subreaper, so the grandchild becomes ours once its parent has exited.
struct Grandchild {
    pid: libc::pid_t,
    reaped: bool,
}

impl Grandchild {
    fn kill_and_reap(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: kill takes plain integers and touches no memory. (Not reaped yet,
        // so the pid is still the grandchild's, alive or a zombie.)
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let pid = self.pid;
        let reaped = poll(PATIENCE, Duration::from_millis(2), || {
            let mut status = 0;
            // SAFETY: waitpid on one pid with a valid status pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            // ECHILD: not (yet) ours; done once /proc no longer has it.
            (r == pid || (r < 0 && proc_stat(pid as u32).is_none())).then_some(())
        });
        if reaped.is_some() {
            self.reaped = true;
        } else {
            eprintln!("grandchild {} could not be reaped", self.pid);
        }
    }
}

impl Drop for Grandchild {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Makes orphaned descendants (grandchildren whose parent died) children of this
/// process, so that tests can reap them.
fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes integers only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
}

/// `(state letter, start time)` from `/proc/<pid>/stat`; `None` if there is no such
/// process. Fields are counted from the last `)`: the command name may hold spaces.
fn proc_stat(pid: u32) -> Option<(u8, u64)> {
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?; // field 3
    let start_time = fields.nth(22 - 4)?.parse().ok()?; // field 22
    Some((state, start_time))
}

/// Waits (bounded) until `pid`'s /proc state is `want`.
fn wait_for_state(pid: u32, want: u8) {
    let mut now = None;
    let reached = poll(PATIENCE, Duration::from_millis(1), || {
        now = proc_stat(pid).map(|s| s.0);
        // A zombie leader is not yet a dead process while its other threads are
        // still exiting (the library rightly calls that alive): wait for them all.
        let settled = want != b'Z' || all_threads_exited(pid);
        (now == Some(want) && settled).then_some(())
    });
    assert!(
        reached.is_some(),
        "process {pid} never reached state {:?} (last {:?})",
        want as char,
        now.map(char::from)
    );
}

/// Whether every thread of `pid` is a zombie or gone.
fn all_threads_exited(pid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    dir.filter_map(Result::ok).all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|text| {
                let after = text.rfind(')')?;
                text[after + 1..]
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
            })
            .is_none_or(|st| st == "Z" || st == "X")
    })
}

fn num<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap_or_else(|e| panic!("{s:?}: {e:?}"))
}

/// A parent-made POSIX segment for the registry cases.
fn registry_segment(target: &Target) -> Segment {
    target
        .options()
        .max_size(1 << 20)
        .committed(64 << 10)
        .registry_slots(64)
        .create()
        .unwrap()
}

/// A child attached to the test's segment, and the slot it reported.
struct Attached {
    proc: ChildProc,
    slot: u32,
    pid: u32,
}

/// Spawns `n` children with `role` (all at once, then reads their reports) and checks
/// that the registry knows each of them (as alive, unless they left already).
fn spawn_attached(seg: &Segment, target: &Target, role: &str, n: usize) -> Vec<Attached> {
    let procs: Vec<ChildProc> = (0..n)
        .map(|_| ChildProc::spawn(role, target, &[]))
        .collect();
    procs
        .into_iter()
        .map(|proc| {
            let w = proc.line("attached");
            let (slot, pid) = (num(&w[0]), num(&w[1]));
            assert_eq!(pid, proc.pid());
            let info = seg.slot_info(slot).unwrap();
            assert_eq!(info.pid, pid);
            // An "attach-exit" child may be gone already.
            if role != "attach-exit" {
                assert_eq!(info.state, SlotState::Alive);
            }
            Attached { proc, slot, pid }
        })
        .collect()
}

/// Counts verdicts, and the wrong ones, per kind of subject.
#[derive(Default)]
struct Tally {
    checks: BTreeMap<&'static str, usize>,
    wrong: usize,
    examples: Vec<String>,
}

impl Tally {
    fn check(&mut self, seg: &Segment, slot: u32, want: SlotState, what: &'static str) {
        *self.checks.entry(what).or_default() += 1;
        let info = seg.slot_info(slot);
        let alive = seg.is_alive(slot);
        let right = matches!(&info, Ok(i) if i.state == want)
            && matches!(alive, Ok(a) if a == (want == SlotState::Alive));
        if !right {
            self.wrong += 1;
            if self.examples.len() < 10 {
                self.examples.push(format!(
                    "{what}: slot {slot}: wanted {want:?}, got {info:?} / is_alive {alive:?}"
                ));
            }
        }
    }

    /// No wrong verdict, and at least [`MIN_CHECKS`] about `what`.
    fn assert_all_right(&self, what: &str) {
        assert_eq!(
            self.wrong, 0,
            "{} wrong verdicts out of {:?}, e.g. {:#?}",
            self.wrong, self.checks, self.examples
        );
        let n = self.checks.get(what).copied().unwrap_or(0);
        assert!(n >= MIN_CHECKS, "only {n} checks of {what}");
    }
}

/// `reclaim_dead` frees exactly `dead`, and the `live` slots (and ours) stay alive.
fn assert_reclaims_exactly(seg: &Segment, dead: &[u32], live: &[u32]) {
    let freed: BTreeSet<u32> = seg.reclaim_dead().unwrap().into_iter().collect();
    let want: BTreeSet<u32> = dead.iter().copied().collect();
    assert_eq!(freed, want, "reclaim_dead freed the wrong slots");
    for &s in dead {
        assert_eq!(seg.slot_info(s).unwrap().state, SlotState::Free, "slot {s}");
    }
    for &s in live.iter().chain([seg.slot()].iter()) {
        assert!(seg.is_alive(s).unwrap(), "live slot {s} did not stay alive");
    }
}

/// `slots`, the lowest free slots, are the ones new handles claim: nothing holds
/// their liveness locks any more.
fn assert_claimed_again(seg: &Segment, slots: &[u32]) {
    let clones: Vec<Segment> = slots
        .iter()
        .map(|_| seg.try_clone())
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("claiming {} slots again: {e:?}", slots.len()));
    let got: BTreeSet<u32> = clones.iter().map(Segment::slot).collect();
    let want: BTreeSet<u32> = slots.iter().copied().collect();
    assert_eq!(got, want, "freed slots are not claimable again");
}

/// An atomic field of slot `slot` of the registry. The registry lies below the
/// user region, which `Segment::resolve` (rightly) refuses to hand out, so the
/// test reaches it through the base pointer.
fn slot_field<T: shmkit::ShmShared>(seg: &Segment, slot: u32, field: u64) -> &T {
    let off = REGISTRY_OFFSET + SLOT_SIZE * u64::from(slot) + field;
    assert!(off + size_of::<T>() as u64 <= seg.user_offset());
    assert_eq!(off % align_of::<T>() as u64, 0);
    // SAFETY: the offset lies inside the registry (checked above), which is mapped
    // and committed for the segment's lifetime, aligned for T; T is an atomic, so
    // concurrent writes by the library or peers are not data races; the reference
    // borrows `seg`, which keeps the mapping alive.
    unsafe { &*seg.as_ptr().add(off as usize).cast::<T>() }
}

/// The per-child cell at the start of the user area, where grandchildren report.
fn cell(seg: &Segment, index: u64) -> &AtomicU64 {
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.resolve(Offset::<AtomicU64>::new(seg.user_offset() + 8 * index)) }.unwrap()
}

// ---------------------------------------------------------------------------------
// The child side.
// ---------------------------------------------------------------------------------

#[test]
#[ignore = "child entry point"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return; // run by hand with --ignored: nothing to do
    };
    match role.as_str() {
        "race" => child_race(),
        "init-hang" => child_init_hang(),
        "attach-wait" | "attach-exit" | "attach-fork" | "attach-fork-after" => child_attach(&role),
        other => panic!("unknown child role {other:?}"),
    }
}

fn options_from_env() -> SegmentOptions {
    let t = std::env::var(TARGET).expect("SHMKIT_CHILD_TARGET");
    match t.split_once(':') {
        Some(("posix", name)) => SegmentOptions::posix(name).no_heap(),
        Some(("sysv", key)) => SegmentOptions::sysv(num(key)).no_heap(),
        _ => panic!("bad target {t:?}"),
    }
}

/// Warm up, wait for "go", race `open_or_create`, report, stay attached until EOF.
fn child_race() {
    let opts = options_from_env();
    say("ready");
    let mut go = String::new();
    if std::io::stdin().read_line(&mut go).unwrap_or(0) == 0 {
        return;
    }
    let (seg, how) = match opts.open_or_create() {
        Ok(r) => r,
        Err(e) => return say(format!("error open_or_create: {e:?}")),
    };
    let how = match how {
        Opened::Created => "created",
        Opened::Existing => "existing",
        Opened::Replaced => "replaced",
    };
    say(format!(
        "result {how} {} {} {} {} {}",
        seg.seed(),
        seg.creator_pid(),
        seg.slot(),
        std::process::id(),
        seg.sysv_id().unwrap_or(-1),
    ));
    wait_for_eof();
    drop(seg);
}

/// The init hook: tell the parent we are half-way, then hang (until killed).
fn hang_in_init() {
    say("in-init");
    wait_for_eof();
    std::process::exit(3);
}

fn child_init_hang() {
    let r = options_from_env().init_hook(hang_in_init).create();
    say(format!("error init returned: {:?}", r.map(|s| s.seed())));
}

fn child_attach(role: &str) {
    let mut seg = match options_from_env().open() {
        Ok(s) => s,
        Err(e) => return say(format!("error open: {e:?}")),
    };
    let me = std::process::id();
    match role {
        "attach-wait" => {
            say(format!("attached {} {me}", seg.slot()));
            wait_for_eof();
        }
        "attach-exit" => {
            say(format!("attached {} {me}", seg.slot()));
            // Leave without detaching: the handle is never dropped.
            std::process::exit(0);
        }
        _ => {
            let after_fork = role == "attach-fork-after";
            let index: u64 = std::env::var(CELL).map_or(0, |v| num(&v));
            let cell = Offset::<AtomicU64>::new(seg.user_offset() + 8 * index);
            // SAFETY: fork has no memory-safety preconditions. The grandchild runs
            // on a copy of this thread only; without `after_fork` it makes only
            // async-signal-safe calls (read, _exit); with it, it relies on glibc's
            // fork handlers, which leave malloc usable in the child.
            let gpid = unsafe { libc::fork() };
            if gpid == 0 {
                if after_fork {
                    let report = match seg.after_fork() {
                        Ok(()) => u64::from(seg.slot()) + 1,
                        Err(_) => u64::MAX,
                    };
                    // SAFETY: this test views each offset as one type only.
                    if let Ok(c) = unsafe { seg.resolve(cell) } {
                        c.store(report, Ordering::Release);
                    }
                }
                let mut b = [0u8; 1];
                // Sleep until killed, or until the parent's end of stdin closes.
                // SAFETY: reading into a live local buffer of the length given.
                while unsafe { libc::read(0, b.as_mut_ptr().cast(), 1) } > 0 {}
                // SAFETY: leave at once, running none of the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            assert!(gpid > 0, "fork failed");
            say(format!("attached {} {me} {gpid}", seg.slot()));
            wait_for_eof();
            // Never release the slot: the grandchild shares its lock description.
            std::process::exit(0);
        }
    }
    drop(seg);
}

// ---------------------------------------------------------------------------------
// 1. Racing creators.
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct RaceResult {
    created: bool,
    seed: u64,
    creator_pid: u32,
    slot: u32,
    pid: u32,
    sysv_id: i32,
}

/// `RACERS` processes race `open_or_create` on `target`: exactly one creates, all
/// share one Ready segment; it is gone once they have all left.
fn race_round(target: &Target) {
    let mut racers: Vec<ChildProc> = (0..RACERS)
        .map(|_| ChildProc::spawn("race", target, &[]))
        .collect();
    for r in &racers {
        r.line("ready");
    }
    for r in &mut racers {
        r.send("go");
    }
    let results: Vec<RaceResult> = racers
        .iter()
        .map(|r| {
            let w = r.line("result");
            let res = RaceResult {
                created: match w[0].as_str() {
                    "created" => true,
                    "existing" => false,
                    other => panic!("bad result {other:?}"),
                },
                seed: num(&w[1]),
                creator_pid: num(&w[2]),
                slot: num(&w[3]),
                pid: num(&w[4]),
                sysv_id: num(&w[5]),
            };
            assert_eq!(res.pid, r.pid());
            res
        })
        .collect();
    let creators: Vec<&RaceResult> = results.iter().filter(|r| r.created).collect();
    assert_eq!(creators.len(), 1, "{target:?}: {results:#?}");
    let c = creators[0];
    assert_eq!(c.creator_pid, c.pid, "{results:#?}");
    for r in &results {
        assert_eq!(
            (r.seed, r.creator_pid, r.sysv_id),
            (c.seed, c.creator_pid, c.sysv_id),
            "{target:?}: {results:#?}"
        );
    }
    let slots: BTreeSet<u32> = results.iter().map(|r| r.slot).collect();
    assert_eq!(slots.len(), RACERS, "two racers share a slot: {results:#?}");
    {
        let peer = target.options().open().unwrap();
        assert_eq!((peer.seed(), peer.creator_pid()), (c.seed, c.creator_pid));
        assert_eq!(peer.sysv_id().unwrap_or(-1), c.sysv_id);
        for r in &results {
            let info = peer.slot_info(r.slot).unwrap();
            assert_eq!((info.state, info.pid), (SlotState::Alive, r.pid));
        }
    }
    for r in &mut racers {
        r.close_stdin();
    }
    for r in &mut racers {
        let st = r.wait_exit();
        assert!(st.success(), "racer {} exited with {st:?}", r.pid());
    }
    // The creator's handle removed the segment when it was dropped.
    assert!(!target.exists(), "{target:?} left behind");
    assert!(matches!(target.options().open(), Err(Error::NotFound(_))));
    if c.sysv_id >= 0 {
        assert!(!sysv_lock_path(c.sysv_id).exists(), "lock file left behind");
    }
}

#[test]
fn racing_creators_of_a_posix_name_agree_on_exactly_one_creator() {
    let _dog = watchdog("racing_creators_of_a_posix_name_agree_on_exactly_one_creator");
    for _ in 0..5 {
        race_round(&Target::posix());
    }
}

#[test]
fn racing_creators_of_a_sysv_key_agree_on_exactly_one_creator() {
    let _dog = watchdog("racing_creators_of_a_sysv_key_agree_on_exactly_one_creator");
    for _ in 0..2 {
        let target = Target::sysv();
        race_round(&target);
        assert!(matches!(target.options().remove(), Err(Error::NotFound(_))));
    }
}

// ---------------------------------------------------------------------------------
// 2. A creator killed during initialisation.
// ---------------------------------------------------------------------------------

/// Spawns a creator that hangs in the init hook, and waits until it is there.
fn hung_creator(target: &Target) -> ChildProc {
    let c = ChildProc::spawn("init-hang", target, &[]);
    c.line("in-init");
    c
}

#[test]
fn a_posix_creator_killed_during_init_leaves_nothing_behind() {
    let _dog = watchdog("a_posix_creator_killed_during_init_leaves_nothing_behind");
    let target = Target::posix();
    let mut creator = hung_creator(&target);
    // Being built unnamed, the segment is invisible while it is half-made...
    assert!(!target.exists());
    assert!(matches!(target.options().open(), Err(Error::NotFound(_))));
    assert!(creator.kill_and_reap().code().is_none());
    // ...and nothing remains once its creator is dead.
    assert!(!target.exists(), "a half-made segment was left in /dev/shm");
    let t = Instant::now();
    let r = target.options().open();
    assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let (seg, how) = target.options().open_or_create().unwrap();
    assert_eq!(how, Opened::Created);
    assert_eq!(seg.creator_pid(), std::process::id());
    assert!(seg.is_alive(seg.slot()).unwrap());
    let peer = target.options().open().unwrap();
    assert_eq!(peer.seed(), seg.seed());
    drop(peer);
    drop(seg);
    assert!(!target.exists());
}

#[test]
fn a_sysv_creator_killed_during_init_is_reported_dead_and_reclaimed() {
    let _dog = watchdog("a_sysv_creator_killed_during_init_is_reported_dead_and_reclaimed");
    let target = Target::sysv();
    let Target::SysV(key) = target else {
        unreachable!()
    };
    let mut creator = hung_creator(&target);
    // SAFETY: shmget with size 0 and no flags only looks the key up.
    let half_id = unsafe { libc::shmget(key, 0, 0) };
    assert!(half_id >= 0, "the half-made segment is not under its key");
    // While its creator lives, a half-made segment is not ready, and not dead.
    let r = target
        .options()
        .open_timeout(Duration::from_millis(300))
        .open();
    assert!(matches!(r, Err(Error::NotReady { .. })), "{r:?}");
    assert!(creator.kill_and_reap().code().is_none());
    // Dead now: `open` says so (with the default timeout), and in bounded time.
    let t = Instant::now();
    let r = target.options().open();
    let waited = t.elapsed();
    assert!(matches!(r, Err(Error::CreatorDied { .. })), "{r:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // open_or_create reclaims it and makes a new, Ready one.
    let (seg, how) = target.options().open_or_create().unwrap();
    assert_eq!(how, Opened::Created);
    assert_eq!(seg.creator_pid(), std::process::id());
    assert!(seg.is_alive(seg.slot()).unwrap());
    let new_id = seg.sysv_id().unwrap();
    if new_id != half_id {
        assert!(
            !sysv_lock_path(half_id).exists(),
            "the reclaimed segment's lock file was left behind"
        );
    }
    let peer = target.options().open().unwrap();
    assert_eq!(peer.seed(), seg.seed());
    drop(peer);
    drop(seg);
    assert!(matches!(target.options().remove(), Err(Error::NotFound(_))));
    assert!(!target.exists());
    assert!(!sysv_lock_path(new_id).exists(), "lock file left behind");
}

// ---------------------------------------------------------------------------------
// 3. Registry verdicts on real processes.
// ---------------------------------------------------------------------------------

#[test]
fn a_sigkilled_child_is_dead() {
    let _dog = watchdog("a_sigkilled_child_is_dead");
    let target = Target::posix();
    let seg = registry_segment(&target);
    let mut victims = spawn_attached(&seg, &target, "attach-wait", CHILDREN);
    let controls = spawn_attached(&seg, &target, "attach-wait", 2);
    for v in &mut victims {
        v.proc.kill_and_reap();
    }
    let mut tally = Tally::default();
    for _ in 0..ROUNDS {
        for v in &victims {
            tally.check(&seg, v.slot, SlotState::Dead, "killed");
        }
        for c in &controls {
            tally.check(&seg, c.slot, SlotState::Alive, "control");
        }
    }
    tally.assert_all_right("killed");
    let dead: Vec<u32> = victims.iter().map(|v| v.slot).collect();
    let live: Vec<u32> = controls.iter().map(|c| c.slot).collect();
    assert_reclaims_exactly(&seg, &dead, &live);
}

#[test]
fn a_sigstopped_child_is_alive() {
    let _dog = watchdog("a_sigstopped_child_is_alive");
    let target = Target::posix();
    let seg = registry_segment(&target);
    let mut stopped = spawn_attached(&seg, &target, "attach-wait", CHILDREN);
    for s in &stopped {
        s.proc.signal(libc::SIGSTOP);
    }
    for s in &stopped {
        wait_for_state(s.pid, b'T');
    }
    let mut tally = Tally::default();
    for _ in 0..ROUNDS {
        for s in &stopped {
            tally.check(&seg, s.slot, SlotState::Alive, "stopped");
        }
    }
    for s in &stopped {
        assert_eq!(proc_stat(s.pid).map(|p| p.0), Some(b'T'), "{}", s.pid);
    }
    tally.assert_all_right("stopped");
    let slots: Vec<u32> = stopped.iter().map(|s| s.slot).collect();
    assert_reclaims_exactly(&seg, &[], &slots);
    for s in &mut stopped {
        s.proc.signal(libc::SIGCONT);
        s.proc.kill_and_reap();
    }
    assert_reclaims_exactly(&seg, &slots, &[]);
}

#[test]
fn a_zombie_is_dead() {
    let _dog = watchdog("a_zombie_is_dead");
    let target = Target::posix();
    let seg = registry_segment(&target);
    let mut zombies = spawn_attached(&seg, &target, "attach-exit", CHILDREN);
    let controls = spawn_attached(&seg, &target, "attach-wait", 2);
    // They exit without detaching; nobody reaps them until the checks are done.
    for z in &zombies {
        wait_for_state(z.pid, b'Z');
    }
    let mut tally = Tally::default();
    for _ in 0..ROUNDS {
        for z in &zombies {
            tally.check(&seg, z.slot, SlotState::Dead, "zombie");
        }
        for c in &controls {
            tally.check(&seg, c.slot, SlotState::Alive, "control");
        }
    }
    for z in &zombies {
        assert_eq!(proc_stat(z.pid).map(|p| p.0), Some(b'Z'), "{}", z.pid);
    }
    tally.assert_all_right("zombie");
    let dead: Vec<u32> = zombies.iter().map(|z| z.slot).collect();
    let live: Vec<u32> = controls.iter().map(|c| c.slot).collect();
    assert_reclaims_exactly(&seg, &dead, &live);
    for z in &mut zombies {
        let st = z.proc.wait_exit();
        assert_eq!(st.code(), Some(0), "{}", z.pid);
    }
}

#[test]
fn a_slot_whose_pid_was_reused_by_a_live_process_is_dead() {
    let _dog = watchdog("a_slot_whose_pid_was_reused_by_a_live_process_is_dead");
    let target = Target::posix();
    let seg = registry_segment(&target);
    let mut victims = spawn_attached(&seg, &target, "attach-wait", CHILDREN);
    let donors = spawn_attached(&seg, &target, "attach-wait", 4);
    // The registry records what /proc says (checks this test's idea of the layout).
    for d in &donors {
        let start = proc_stat(d.pid).unwrap().1;
        let pid = slot_field::<AtomicU32>(&seg, d.slot, SLOT_PID);
        let st = slot_field::<AtomicU64>(&seg, d.slot, SLOT_START_TIME);
        assert_eq!(
            (pid.load(Ordering::Relaxed), st.load(Ordering::Relaxed)),
            (d.pid, start)
        );
    }
    for v in &mut victims {
        v.proc.kill_and_reap();
    }
    // Each dead victim's slot now names a live process, as if its pid were reused.
    for (v, d) in victims.iter().zip(donors.iter().cycle()) {
        let start = proc_stat(d.pid).unwrap().1;
        let pid = slot_field::<AtomicU32>(&seg, v.slot, SLOT_PID);
        assert_eq!(pid.load(Ordering::Relaxed), v.pid);
        pid.store(d.pid, Ordering::Relaxed);
        slot_field::<AtomicU64>(&seg, v.slot, SLOT_START_TIME).store(start, Ordering::Relaxed);
        assert_eq!(seg.slot_info(v.slot).unwrap().pid, d.pid);
    }
    let mut tally = Tally::default();
    for _ in 0..ROUNDS {
        for v in &victims {
            tally.check(&seg, v.slot, SlotState::Dead, "reused");
        }
        for d in &donors {
            tally.check(&seg, d.slot, SlotState::Alive, "donor");
        }
    }
    tally.assert_all_right("reused");
    let dead: Vec<u32> = victims.iter().map(|v| v.slot).collect();
    let live: Vec<u32> = donors.iter().map(|d| d.slot).collect();
    assert_reclaims_exactly(&seg, &dead, &live);
}

/// A child that attached and forked a grandchild; the grandchild is dropped (killed
/// and reaped) after the child.
struct Family {
    child: Attached,
    grandchild: Grandchild,
    /// The grandchild's own slot, if it called `after_fork`.
    grandchild_slot: Option<u32>,
}

fn spawn_families(seg: &Segment, target: &Target, after_fork: bool) -> Vec<Family> {
    let role = if after_fork {
        "attach-fork-after"
    } else {
        "attach-fork"
    };
    let procs: Vec<ChildProc> = (0..CHILDREN)
        .map(|i| ChildProc::spawn(role, target, &[(CELL, i.to_string())]))
        .collect();
    let mut families: Vec<Family> = procs
        .into_iter()
        .map(|proc| {
            let w = proc.line("attached");
            let (slot, pid, gpid): (u32, u32, libc::pid_t) = (num(&w[0]), num(&w[1]), num(&w[2]));
            assert_eq!(pid, proc.pid());
            Family {
                child: Attached { proc, slot, pid },
                grandchild: Grandchild {
                    pid: gpid,
                    reaped: false,
                },
                grandchild_slot: None,
            }
        })
        .collect();
    for (i, f) in families.iter_mut().enumerate() {
        assert!(seg.is_alive(f.child.slot).unwrap());
        if after_fork {
            let report = poll(PATIENCE, Duration::from_millis(1), || {
                let v = cell(seg, i as u64).load(Ordering::Acquire);
                (v != 0).then_some(v)
            })
            .unwrap_or_else(|| panic!("grandchild {i} never reported"));
            assert_ne!(report, u64::MAX, "after_fork failed in grandchild {i}");
            let gslot = (report - 1) as u32;
            let info = seg.slot_info(gslot).unwrap();
            assert_eq!(
                (info.state, info.pid),
                (SlotState::Alive, f.grandchild.pid as u32)
            );
            f.grandchild_slot = Some(gslot);
        }
    }
    families
}

/// One round of verdicts: each child is dead, each grandchild runs (and is alive in
/// its own slot if it has one).
fn check_families(seg: &Segment, families: &[Family], tally: &mut Tally) {
    for f in families {
        tally.check(seg, f.child.slot, SlotState::Dead, "parent died");
        let gstate = proc_stat(f.grandchild.pid as u32).map(|s| s.0);
        assert!(
            matches!(gstate, Some(s) if s != b'Z' && s != b'X'),
            "grandchild {} is not running: {gstate:?}",
            f.grandchild.pid
        );
        if let Some(g) = f.grandchild_slot {
            tally.check(seg, g, SlotState::Alive, "grandchild");
        }
    }
}

/// Kills every child (not its grandchild), and checks the verdicts on the children's
/// slots while they are zombies and after they are reaped.
fn kill_children_and_check(seg: &Segment, families: &mut [Family]) -> Tally {
    let mut tally = Tally::default();
    for f in families.iter() {
        f.child.proc.signal(libc::SIGKILL);
    }
    for f in families.iter() {
        wait_for_state(f.child.pid, b'Z');
    }
    for _ in 0..ROUNDS / 2 {
        check_families(seg, families, &mut tally);
    }
    for f in families.iter_mut() {
        f.child.proc.wait_exit();
    }
    for _ in 0..ROUNDS - ROUNDS / 2 {
        check_families(seg, families, &mut tally);
    }
    tally
}

#[test]
fn a_process_whose_forked_child_outlives_it_is_dead() {
    let _dog = watchdog("a_process_whose_forked_child_outlives_it_is_dead");
    become_subreaper();
    let target = Target::posix();
    let seg = registry_segment(&target);
    let mut families = spawn_families(&seg, &target, false);
    // The grandchildren share the children's lock descriptions, so the locks stay
    // held after the children die: only the pid and start time tell.
    let tally = kill_children_and_check(&seg, &mut families);
    tally.assert_all_right("parent died");
    // Dead, so reclaim_dead frees them (as SlotState::Dead promises), although the
    // grandchildren still hold the locks.
    let dead: Vec<u32> = families.iter().map(|f| f.child.slot).collect();
    assert_reclaims_exactly(&seg, &dead, &[]);
    // Once the grandchildren are gone too, the slots can be claimed again.
    for f in &mut families {
        f.grandchild.kill_and_reap();
    }
    assert_claimed_again(&seg, &dead);
}

#[test]
fn a_forked_child_that_called_after_fork_outlives_its_dead_parent_in_its_own_slot() {
    let _dog =
        watchdog("a_forked_child_that_called_after_fork_outlives_its_dead_parent_in_its_own_slot");
    become_subreaper();
    let target = Target::posix();
    let seg = registry_segment(&target);
    let mut families = spawn_families(&seg, &target, true);
    let tally = kill_children_and_check(&seg, &mut families);
    tally.assert_all_right("parent died");
    tally.assert_all_right("grandchild");
    let dead: Vec<u32> = families.iter().map(|f| f.child.slot).collect();
    let live: Vec<u32> = families.iter().filter_map(|f| f.grandchild_slot).collect();
    assert_reclaims_exactly(&seg, &dead, &live);
    // after_fork left the dead parents' lock descriptions to them alone (its
    // inherited mapping included: a MAP_SHARED mapping holds a reference to the
    // description it was made through, and OFD locks live as long as that), so
    // their slots can be claimed again while the grandchildren live on.
    assert_claimed_again(&seg, &dead);
    for f in &mut families {
        f.grandchild.kill_and_reap();
    }
    for &g in &live {
        assert_eq!(seg.slot_info(g).unwrap().state, SlotState::Dead);
    }
    assert_reclaims_exactly(&seg, &live, &[]);
}
