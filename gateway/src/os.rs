//! Process-wide settings made once at start-up: a private umask (every file the gateway
//! creates — database, status, evidence, QR codes — is its owner's alone) and the open
//! file limit raised to its hard limit (the broker, the console and SQLite share it).

/// The open-file limit as found and as set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now (the hard limit, unless raising it failed).
    pub now: u64,
}

/// Files created from now on are readable and writable by their owner only (0600, and
/// 0700 for directories), whatever umask the service manager or shell gave.
pub fn private_umask() {
    // SAFETY: umask(2) only swaps the process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Raises `RLIMIT_NOFILE`'s soft limit to the hard limit (the usual soft limit of 1,024
/// is small for a broker plus a web console); returns what it was and what it is.
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a valid, exclusively borrowed struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let before = limit.rlim_cur;
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(FdLimit {
            before,
            now: limit.rlim_cur,
        })
    }
}

/// The current soft open-file limit (1,024 if it cannot be read).
pub fn fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes a valid, exclusively borrowed struct.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if ok {
        limit.rlim_cur
    } else {
        1024
    }
}

/// Sets `path`'s permission bits to `mode` (e.g. an existing data directory created
/// world-readable by an older version).
pub fn restrict(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() {
        let limit = raise_fd_limit().unwrap();
        assert!(limit.now >= limit.before);
        assert_eq!(fd_limit(), limit.now);
    }
}
