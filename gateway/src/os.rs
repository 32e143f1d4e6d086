//! Process-wide settings made once at start-up: a private umask (every file the gateway
//! creates — database, status, evidence, QR codes — is its owner's alone) and the open
//! file limit raised to its hard limit (the broker, the console and SQLite share it); glibc's
//! allocator bounded ([`bound_malloc`]).

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

/// Large blocks (128 KiB and more: decoded and converted frames, detector inputs) are
/// given back to the system when freed, in at most two malloc arenas.
pub const MMAP_THRESHOLD: i32 = 128 << 10;
/// See [`MMAP_THRESHOLD`].
pub const ARENA_MAX: i32 = 2;

/// The environment variable that chooses the allocator settings at start-up
/// ([`MallocMode`]): unset or `bounded` (the default), or `glibc` for glibc's own defaults
/// (which then still honour `GLIBC_TUNABLES` and `MALLOC_ARENA_MAX`), so the two can be
/// compared — memory and CPU per frame — on the same build.
pub const MALLOC_ENV: &str = "SHOUWANG_MALLOC";

/// How [`bound_malloc`] sets up glibc's allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MallocMode {
    /// [`MMAP_THRESHOLD`] and [`ARENA_MAX`] (the default).
    Bounded,
    /// glibc left as it starts: a dynamic mmap threshold, 8 arenas per core, and whatever
    /// `GLIBC_TUNABLES` / `MALLOC_*` variables say.
    Glibc,
}

impl MallocMode {
    /// The mode [`MALLOC_ENV`] names (`None` for an unknown value).
    pub fn parse(value: Option<&str>) -> Option<MallocMode> {
        match value.map(str::trim) {
            None | Some("") | Some("bounded") => Some(MallocMode::Bounded),
            Some("glibc") => Some(MallocMode::Glibc),
            Some(_) => None,
        }
    }

    /// The mode this process was started with; an unknown value falls back to the default.
    pub fn from_env() -> Result<MallocMode, String> {
        let value = std::env::var(MALLOC_ENV).ok();
        MallocMode::parse(value.as_deref()).ok_or_else(|| value.unwrap_or_default())
    }
}

/// Bounds glibc's allocator for a long-running process whose threads pass large buffers
/// to each other (a camera's frames are allocated on its capture thread and freed on its
/// analysis thread): a fixed mmap threshold ([`MMAP_THRESHOLD`]; glibc's default raises it
/// to the largest block freed so far, up to 32 MiB, after which every frame lands in an
/// arena heap that fragments and is rarely trimmed) and at most [`ARENA_MAX`] arenas (the
/// default is 8 per core, one per busy thread, each keeping its own free memory).
/// Measured on the demo compound (4 cameras): 151 → 123 MB RSS (README, "Memory").
/// [`MallocMode::Glibc`] leaves glibc as it is. Returns whether glibc took both settings
/// (always `true` for [`MallocMode::Glibc`]).
pub fn bound_malloc(mode: MallocMode) -> bool {
    if mode == MallocMode::Glibc {
        return true;
    }
    // SAFETY: mallopt(3) only changes the allocator's tunables; it is safe to call at any
    // time, from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) == 1
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
    fn the_allocator_mode_is_bounded_unless_glibc_is_asked_for() {
        assert_eq!(MallocMode::parse(None), Some(MallocMode::Bounded));
        assert_eq!(MallocMode::parse(Some("")), Some(MallocMode::Bounded));
        assert_eq!(
            MallocMode::parse(Some("bounded")),
            Some(MallocMode::Bounded)
        );
        assert_eq!(MallocMode::parse(Some(" glibc ")), Some(MallocMode::Glibc));
        assert_eq!(MallocMode::parse(Some("jemalloc")), None);
        assert!(bound_malloc(MallocMode::Glibc));
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() {
        let limit = raise_fd_limit().unwrap();
        assert!(limit.now >= limit.before);
        assert_eq!(fd_limit(), limit.now);
    }
}
