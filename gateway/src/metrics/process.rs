//! The process's own resources, read from `/proc/self` at scrape time (Linux only; elsewhere
//! these metrics are absent): resident memory, CPU time, open and allowed file descriptors.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::encode::Out;

/// What `/proc/self` says about this process right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
}

/// Collects [`ProcessSample`] on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut out = Out(encoder);
        if let Some(s) = sample() {
            out.gauge(
                "shouwang_process_resident_memory_bytes",
                "Resident memory of the gateway process, bytes.",
                s.resident_bytes as f64,
            )?;
            out.counter_f64(
                "shouwang_process_cpu_seconds",
                "CPU time (user + system) the gateway process has used, seconds.",
                s.cpu_seconds,
            )?;
            out.gauge(
                "shouwang_process_open_fds",
                "File descriptors the gateway process holds open.",
                s.open_fds as f64,
            )?;
        }
        out.gauge(
            "shouwang_process_max_fds",
            "The gateway process's open-file limit (RLIMIT_NOFILE, soft).",
            crate::os::fd_limit() as f64,
        )
    }
}

/// This process's sample, or `None` where `/proc` is not Linux's (or unreadable).
pub fn sample() -> Option<ProcessSample> {
    #[cfg(target_os = "linux")]
    {
        linux::sample()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::ProcessSample;

    pub(super) fn sample() -> Option<ProcessSample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Some(ProcessSample {
            resident_bytes: resident_pages(&statm)?.saturating_mul(sysconf(libc::_SC_PAGESIZE)?),
            cpu_seconds: cpu_ticks(&stat)? as f64 / sysconf(libc::_SC_CLK_TCK)? as f64,
            // The directory handle read_dir held is counted too, as every exporter does.
            open_fds: open_fds.saturating_sub(1),
        })
    }

    /// `utime + stime` (fields 14 and 15) of `/proc/self/stat`. The command name (field 2)
    /// may hold spaces and parentheses, so fields are counted after its last `)`.
    pub(super) fn cpu_ticks(stat: &str) -> Option<u64> {
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(utime.saturating_add(stime))
    }

    /// The second field of `/proc/self/statm`: resident pages.
    pub(super) fn resident_pages(statm: &str) -> Option<u64> {
        statm.split_whitespace().nth(1)?.parse().ok()
    }

    fn sysconf(name: libc::c_int) -> Option<u64> {
        // SAFETY: sysconf reads a configuration value; it has no memory-safety preconditions.
        let v = unsafe { libc::sysconf(name) };
        u64::try_from(v).ok().filter(|v| *v > 0)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::linux::{cpu_ticks, resident_pages};
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (gate way) (x)) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    250 75 0 0 20 0 9 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(resident_pages("5000 1234 300 10 0 900 0\n"), Some(1234));
        assert_eq!(resident_pages(""), None);
    }

    #[test]
    fn this_process_has_memory_cpu_time_and_descriptors() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let first = sample().expect("/proc/self is readable on Linux");
        assert!(first.resident_bytes > 1024 * 1024, "{first:?}");
        assert!(first.open_fds >= 1, "the open file at least: {first:?}");
        drop(file);
        // CPU time moves in clock ticks (10 ms): work until it has.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        while sample().unwrap().cpu_seconds <= first.cpu_seconds {
            assert!(std::time::Instant::now() < deadline, "CPU time never moved");
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
    }
}
