//! What `/proc` says about a process: its start time and whether it is a zombie.

/// `/proc/<pid>/stat` facts used to tell a process from a reuse of its pid.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// The one-letter state (`R`, `S`, `D`, `T`, `Z`, `X`, ...).
    pub state: u8,
    /// Start time in clock ticks after boot (field 22).
    pub start_time: u64,
}

/// What `/proc` says about a pid.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The process exists.
    Present(ProcStat),
    /// No such process (`ENOENT`/`ESRCH`), or it vanished while we read.
    Gone,
    /// /proc could not tell (unreadable, hidden, unparsable, or not our pid
    /// namespace's /proc): callers must not conclude anything.
    Unknown,
}

/// Looks `pid` up in `/proc`.
pub(crate) fn lookup(pid: u32) -> Lookup {
    if cfg!(miri) || pid == 0 || !proc_is_ours() {
        return Lookup::Unknown; // /proc is outside miri's abstract machine
    }
    match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(text) => parse_stat(&text).map_or(Lookup::Unknown, Lookup::Present),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => Lookup::Gone,
        Err(_) => Lookup::Unknown,
    }
}

/// Whether a zombie-looking `pid` still has a live thread (its leader exited with
/// `pthread_exit` while other threads run): then the process is alive.
pub(crate) fn has_live_threads(pid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str() != Some(&pid.to_string()))
        .any(|e| {
            std::fs::read(e.path().join("stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
                .is_some_and(|st| st.state != b'Z' && st.state != b'X')
        })
}

/// Whether the mounted `/proc` belongs to our pid namespace (after `unshare -p`
/// without remounting it, `/proc/<pid>` names other processes). Computed once.
fn proc_is_ours() -> bool {
    static OURS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OURS.get_or_init(|| {
        std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| t.split_ascii_whitespace().next()?.parse::<u32>().ok())
            == Some(self_pid())
    })
}

/// Parses the contents of a `/proc/<pid>/stat` file. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &[u8]) -> Option<ProcStat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    // Fields after the name start at field 3 (state); start time is field 22.
    let state = *fields.next()?.as_bytes().first()?;
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// Our own start time, 0 if /proc is unavailable.
pub(crate) fn self_start_time() -> u64 {
    if cfg!(miri) {
        return 0;
    }
    std::fs::read("/proc/self/stat")
        .ok()
        .and_then(|t| parse_stat(&t))
        .map_or(0, |s| s.start_time)
}

/// The inode of our pid namespace, 0 if unknown.
pub(crate) fn self_pidns() -> u64 {
    if cfg!(miri) {
        return 0; // miri cannot stat
    }
    rustix::fs::stat("/proc/self/ns/pid").map_or(0, |s| s.st_ino)
}

/// Our pid.
pub(crate) fn self_pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_spaces_and_parentheses_parses() {
        let line =
            b"42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, b'S');
        assert_eq!(s.start_time, 987654);
    }

    #[test]
    fn garbage_does_not_parse() {
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b"1 (x) R 1 2"), None);
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot read /proc")]
    fn our_own_stat_is_running() {
        let Lookup::Present(s) = lookup(self_pid()) else {
            panic!("we are not in /proc");
        };
        assert_eq!(s.start_time, self_start_time());
        assert_ne!(s.start_time, 0);
        assert_eq!(lookup(u32::MAX - 1), Lookup::Gone);
        assert!(!has_live_threads(u32::MAX - 1));
    }
}
