//! What `/proc` says about a process: its start time and whether it is a zombie.

/// `/proc/<pid>/stat` facts used to tell a process from a reuse of its pid.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// The one-letter state (`R`, `S`, `D`, `T`, `Z`, `X`, ...).
    pub state: u8,
    /// Start time in clock ticks after boot (field 22).
    pub start_time: u64,
}

/// Reads `/proc/<pid>/stat`; `None` if the process does not exist (or /proc is
/// unreadable).
pub(crate) fn stat(pid: u32) -> Option<ProcStat> {
    if cfg!(miri) {
        return None; // /proc is outside miri's abstract machine
    }
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
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
    stat(rustix::process::getpid().as_raw_nonzero().get() as u32).map_or(0, |s| s.start_time)
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
        let s = stat(self_pid()).unwrap();
        assert_eq!(s.start_time, self_start_time());
    }
}
