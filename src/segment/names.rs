//! Names of shared-memory objects: validation and unpredictable generation.

use crate::error::{Error, Result};

/// Longest object name (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Checks a POSIX shm object name: one path component (an optional leading `/` is
/// accepted and dropped), at most 255 bytes, not `.` or `..`, no NUL, no `/` inside.
///
/// # Errors
///
/// [`Error::InvalidName`] naming the rule that was broken.
pub(crate) fn validate(name: &str) -> Result<&str> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    let bare = name.strip_prefix('/').unwrap_or(name);
    if bare.is_empty() {
        return bad("empty");
    }
    if bare.len() > MAX_NAME_LEN {
        return bad("longer than 255 bytes");
    }
    if bare == "." || bare == ".." {
        return bad("`.` and `..` are not object names");
    }
    if bare.contains('/') {
        return bad("contains `/` after the first character");
    }
    if bare.contains('\0') {
        return bad("contains a NUL byte");
    }
    Ok(bare)
}

/// A name nobody can guess: `prefix` followed by 128 random bits in hex (32
/// characters), from the kernel's CSPRNG.
///
/// Use it for segments whose name is handed to children out of band (arguments,
/// environment, a socket), so that no other local user can pre-create or squat it.
///
/// # Errors
///
/// [`Error::InvalidName`] if `prefix` is not a valid name start (contains `/` or NUL,
/// or is too long); [`Error::Os`] if the kernel's random source fails.
///
/// # Examples
///
/// ```
/// let a = shmkit::unique_name("myapp-")?;
/// let b = shmkit::unique_name("myapp-")?;
/// assert!(a.starts_with("myapp-") && a.len() == 6 + 32);
/// assert_ne!(a, b);
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn unique_name(prefix: &str) -> Result<String> {
    if prefix.contains('/') {
        return Err(Error::InvalidName {
            name: prefix.to_owned(),
            reason: "a name prefix may not contain `/`",
        });
    }
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes)?;
    let mut name = String::with_capacity(prefix.len() + 32);
    name.push_str(prefix);
    for b in bytes {
        use std::fmt::Write;
        let _ = write!(name, "{b:02x}");
    }
    validate(&name)?;
    Ok(name)
}

/// Fills `buf` from the kernel's CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::os("getrandom", e)),
        }
    }
    Ok(())
}

/// A random u64.
pub(crate) fn random_u64() -> Result<u64> {
    let mut b = [0u8; 8];
    fill_random(&mut b)?;
    Ok(u64::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate("ok-name").is_ok());
        assert_eq!(validate("/ok").unwrap(), "ok");
        for bad in ["", "/", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            assert!(
                matches!(validate(bad), Err(Error::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }
}
