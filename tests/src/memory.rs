//! The demo compound as the demo runs it, for memory measurements: a real mosquitto as the
//! platform, `sim camera` serving the footage on the four cameras' RTSP mounts (15 fps,
//! H.264, a keyframe a second), the gateway on `edge-config/examples/demo.toml` (every
//! listener on a free port), `sim sensors --scenario normal` playing every device; and what
//! Linux says about a process's memory (`/proc/PID/status`, `/proc/PID/smaps`, its threads).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use simulators::process::{self, ChildGuard};
use simulators::upstream::{Mosquitto, UpstreamOptions};

use crate::{bin, demo_config_on_free_ports, workspace_root, Gateway};

/// The demo's camera mounts (as `./x demo` serves them): path and footage file.
pub const DEMO_MOUNTS: [(&str, &str); 4] = [
    ("lobby", "vtest.avi"),
    ("elevator", "bikes.mp4"),
    ("shed", "bikes.mp4"),
    ("gate", "vtest.avi"),
];

/// The demo compound running: platform, cameras, gateway, sensors. Everything stops on drop.
pub struct DemoSite {
    pub gateway: Gateway,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    /// The cameras left enabled (the first `cameras` of the demo's four).
    pub cameras: usize,
    _sensors: ChildGuard,
    _camera: ChildGuard,
    _upstream: Mosquitto,
    _dir: tempfile::TempDir,
}

impl DemoSite {
    /// Starts the demo with its first `cameras` cameras enabled (0–4) using the gateway
    /// binary `gateway`, and waits until the sensors play.
    pub fn start(gateway: &Path, cameras: usize) -> DemoSite {
        let dir = tempfile::tempdir().expect("temp dir");
        let upstream = simulators::upstream::start(&UpstreamOptions {
            dir: dir.path().join("upstream"),
            port: 0,
            tls_port: None,
        })
        .expect("mosquitto (./x deps)");
        let rtsp = process::free_port().expect("free port");
        let camera = start_cameras(rtsp);
        let config = demo_config(dir.path(), rtsp, upstream.port, cameras);
        let data_dir = dir.path().join("data");
        let mut command = Command::new(gateway);
        command
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data_dir);
        let mut gw = Gateway::spawn(command);
        let broker = gw.wait_ready();
        let sensors = ChildGuard(
            Command::new(bin("sim"))
                .args(["sensors", "--broker", &broker.to_string(), "--config"])
                .arg(&config)
                .args(["--scenario", "normal"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start sim sensors"),
        );
        DemoSite {
            gateway: gw,
            data_dir,
            config,
            cameras,
            _sensors: sensors,
            _camera: camera,
            _upstream: upstream,
            _dir: dir,
        }
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.gateway.pid()
    }

    /// Each camera's `decoded` and `analysed` counters from the gateway's `status.json`.
    pub fn camera_counters(&self) -> Vec<(String, u64, u64)> {
        let status = self.status();
        let Some(cameras) = status["cameras"].as_object() else {
            return Vec::new();
        };
        cameras
            .iter()
            .map(|(id, c)| {
                (
                    id.clone(),
                    c["decoded"].as_u64().unwrap_or(0),
                    c["analysed"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// `status.json` as the gateway wrote it last (`null` when unreadable).
    pub fn status(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.data_dir.join("status.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }
}

/// `sim camera` serving [`DEMO_MOUNTS`] on `port`, looping, stopped on drop.
fn start_cameras(port: u16) -> ChildGuard {
    let footage = workspace_root().join("vendor/footage");
    assert!(
        footage.join("vtest.avi").exists(),
        "run ./x deps to fetch the footage"
    );
    let mut command = Command::new(bin("sim"));
    command.args(["camera", "--loop", "--port", &port.to_string()]);
    for (mount, file) in DEMO_MOUNTS {
        command
            .arg("--mount")
            .arg(format!("/{mount}={}", footage.join(file).display()));
    }
    let mut camera = ChildGuard(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sim camera"),
    );
    let refused = process::wait_listening(&[port], Duration::from_secs(30), || {
        process::is_running(&mut camera.0)
    });
    assert!(refused.is_none(), "sim camera did not listen on {port}");
    camera
}

/// The demo configuration in `dir` with every listener on a free port, the cameras on
/// `rtsp`, the uplink to `uplink`, and only the first `cameras` cameras enabled.
fn demo_config(dir: &Path, rtsp: u16, uplink: u16, cameras: usize) -> PathBuf {
    let path = demo_config_on_free_ports(dir);
    let text = std::fs::read_to_string(&path).expect("read demo copy");
    let mut out = String::new();
    let mut seen = 0;
    for line in text.lines() {
        let line = line
            .replace(
                "rtsp://127.0.0.1:8554/",
                &format!("rtsp://127.0.0.1:{rtsp}/"),
            )
            .replace("port = 1884", &format!("port = {uplink}"));
        out.push_str(&line);
        out.push('\n');
        if line.starts_with("url = \"rtsp://") {
            seen += 1;
            if seen > cameras {
                out.push_str("enabled = false\n");
            }
        }
    }
    assert_eq!(seen, DEMO_MOUNTS.len(), "the demo has four cameras");
    std::fs::write(&path, out).expect("write demo copy");
    path
}

/// `VmRSS` of `pid` in KiB (0 when the process is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

/// `VmHWM` (peak RSS) of `pid` in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of one kind of mapping, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resident {
    /// Resident pages of the mappings (`Rss`).
    pub rss: u64,
    /// Of which anonymous (`Anonymous`: the heap, stacks, a library's written data).
    pub anon: u64,
    /// Mappings counted.
    pub mappings: u64,
}

/// `/proc/PID/smaps` summed by kind of mapping (see [`kind_of`]).
pub fn smaps_by_kind(pid: u32) -> BTreeMap<String, Resident> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut out: BTreeMap<String, Resident> = BTreeMap::new();
    let mut current: Option<String> = None;
    // The previous mapping: its end and whether it was an inaccessible anonymous one.
    let mut previous = (0u64, false);
    for line in text.lines() {
        if let Some(header) = Mapping::parse(line) {
            let guard_below = previous.0 == header.start && previous.1;
            let kind = kind_of(&header, &exe, guard_below);
            out.entry(kind.clone()).or_default().mappings += 1;
            previous = (
                header.end,
                header.path.is_empty() && header.perms.starts_with("---"),
            );
            current = Some(kind);
            continue;
        }
        let Some(kind) = &current else { continue };
        let kib = || {
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let entry = out.entry(kind.clone()).or_default();
        if line.starts_with("Rss:") {
            entry.rss += kib();
        } else if line.starts_with("Anonymous:") {
            entry.anon += kib();
        }
    }
    out
}

/// Resident KiB of each mapped file of `pid` (libraries, the executable), largest first.
pub fn files_by_rss(pid: u32) -> Vec<(String, Resident)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by_path: BTreeMap<String, Resident> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(m) = Mapping::parse(line) {
            current = m.path.starts_with('/').then_some(m.path);
            if let Some(path) = &current {
                by_path.entry(path.clone()).or_default().mappings += 1;
            }
            continue;
        }
        let (Some(path), Some(value)) = (&current, line.split_whitespace().nth(1)) else {
            continue;
        };
        let kib = value.parse::<u64>().unwrap_or(0);
        let entry = by_path.entry(path.clone()).or_default();
        if line.starts_with("Rss:") {
            entry.rss += kib;
        } else if line.starts_with("Anonymous:") {
            entry.anon += kib;
        }
    }
    let mut out: Vec<_> = by_path.into_iter().collect();
    out.sort_by_key(|(_, r)| std::cmp::Reverse(r.rss));
    out
}

/// The header line of one mapping in `/proc/PID/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub path: String,
}

impl Mapping {
    /// "start-end perms offset dev inode [path]", or `None` for a field line.
    pub fn parse(line: &str) -> Option<Mapping> {
        let fields: Vec<&str> = line.splitn(6, char::is_whitespace).collect();
        let (range, perms) = (fields.first()?, fields.get(1)?);
        let (start, end) = range.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        Some(Mapping {
            start,
            end,
            perms: (*perms).to_owned(),
            path: fields.get(5).map_or("", |p| p.trim()).to_owned(),
        })
    }
}

/// glibc's thread arenas live in heaps aligned to their 64 MiB maximum size.
const ARENA_HEAP_ALIGN: u64 = 64 << 20;

/// The kind of a mapping (`exe` is the process's executable; `guard_below`: an inaccessible
/// anonymous mapping ends where this one starts). Anonymous mappings are told apart by
/// shape: glibc's thread arenas start on a 64 MiB boundary (their resident part is what
/// threads other than the main one malloc'd), a thread stack sits on its guard page, the
/// rest are allocations big enough for glibc to `mmap` them on their own.
pub fn kind_of(m: &Mapping, exe: &str, guard_below: bool) -> String {
    let kind = match m.path.as_str() {
        "[heap]" => "heap: main arena (brk)",
        "[stack]" => "main thread stack",
        p if p.starts_with('[') => "kernel ([vdso], [vvar], ...)",
        "" if m.start.is_multiple_of(ARENA_HEAP_ALIGN) => "heap: malloc thread arenas",
        "" if guard_below => "thread stacks",
        "" => "anon: large mmap'd allocations",
        p if p == exe => "gateway executable",
        p if p.contains("libonnxruntime") => "ONNX Runtime library",
        p if ["libav", "libsw", "libx26", "libdav1d", "libvpx", "libaom"]
            .iter()
            .any(|l| p.contains(l)) =>
        {
            "FFmpeg libraries (and their codecs)"
        }
        p if p.ends_with(".db") || p.ends_with("-shm") || p.ends_with("-wal") => "SQLite files",
        p if is_runtime_library(p) => "C and C++ runtime (libc, libm, libstdc++, ...)",
        // The gateway links FFmpeg, the C runtime and (at run time) ONNX Runtime, which needs
        // only the C and C++ runtime: every other library is there because Debian's FFmpeg
        // links it (codecs, TLS, fonts, XML, ...), mapped and relocated even if never called.
        p if p.contains(".so") => "libraries Debian's FFmpeg links",
        _ => "other files",
    };
    kind.to_owned()
}

/// The C and C++ runtime libraries (what the gateway and ONNX Runtime link besides FFmpeg).
fn is_runtime_library(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    [
        "libc.so",
        "libm.so",
        "libdl.so",
        "libpthread.so",
        "librt.so",
        "libgcc_s.so",
        "libstdc++.so",
        "ld-linux",
    ]
    .iter()
    .any(|l| name.starts_with(l))
}

/// The process's threads, counted by name (`/proc/PID/task/*/comm`).
pub fn threads_by_name(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        *out.entry(name.trim().to_owned()).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(start: u64, path: &str) -> Mapping {
        Mapping {
            start,
            end: start + 4096,
            perms: "rw-p".into(),
            path: path.into(),
        }
    }

    #[test]
    fn mappings_are_told_apart_by_path_and_shape() {
        let exe = "/opt/shouwang/gateway";
        let kind = |m: &Mapping, guard| kind_of(m, exe, guard);
        assert_eq!(kind(&mapping(0x1000, exe), false), "gateway executable");
        let ort = mapping(0x1000, "/usr/lib/libonnxruntime.so.1.32.0");
        assert_eq!(kind(&ort, false), "ONNX Runtime library");
        let avcodec = mapping(0x1000, "/usr/lib/x86_64-linux-gnu/libavcodec.so.59");
        assert_eq!(kind(&avcodec, false), "FFmpeg libraries (and their codecs)");
        let libc = mapping(0x1000, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(
            kind(&libc, false),
            "C and C++ runtime (libc, libm, libstdc++, ...)"
        );
        let rsvg = mapping(0x1000, "/usr/lib/x86_64-linux-gnu/librsvg-2.so.2.48.0");
        assert_eq!(kind(&rsvg, false), "libraries Debian's FFmpeg links");
        let arena = mapping(0x7f00_0000_0000 + 3 * ARENA_HEAP_ALIGN, "");
        assert_eq!(kind(&arena, false), "heap: malloc thread arenas");
        assert_eq!(kind(&mapping(0x7f00_0000_1000, ""), true), "thread stacks");
        let big = mapping(0x7f00_0000_1000, "");
        assert_eq!(kind(&big, false), "anon: large mmap'd allocations");
        assert_eq!(
            kind(&mapping(0x1000, "[heap]"), false),
            "heap: main arena (brk)"
        );
        let line = "7f12a0000000-7f12a4000000 rw-p 00000000 00:00 0 ";
        assert_eq!(
            Mapping::parse(line).map(|m| (m.start, m.end, m.path)),
            Some((0x7f12_a000_0000, 0x7f12_a400_0000, String::new()))
        );
        assert_eq!(Mapping::parse("Rss:                 120 kB"), None);
    }

    #[test]
    fn this_process_has_a_resident_size_and_mappings() {
        let pid = std::process::id();
        // The peak read after the current size is at least that size (the other order
        // races with this process's own growth).
        let rss = rss_kib(pid);
        assert!(rss > 0);
        assert!(peak_rss_kib(pid) >= rss);
        let kinds = smaps_by_kind(pid);
        let total: u64 = kinds.values().map(|r| r.rss).sum();
        assert!(total > 0, "{kinds:?}");
        assert!(threads_by_name(pid).values().sum::<u64>() >= 1);
    }
}
