//! Cameras per box (issue 18): N real 1080p cameras analysed by one gateway.
//!
//! The footage is real footage scaled up — OpenCV's `vtest.avi` (768×576, people walking)
//! at 1920×1080, 15 fps — encoded ONCE with the `ffmpeg` CLI as an IP camera sends it (GOP
//! 2 s = 30 frames, no B-frames, ~4 Mbit/s; libx264 or libx265) into a cache under
//! `target/cams-footage/`, and served by `sim camera --passthrough`: demuxed and payloaded,
//! never re-encoded, so the load generator costs next to nothing. A static scene (an empty
//! patch of grass from vtest's first frame, looped) shows what an idle camera costs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use simulators::process::{self, ChildGuard};

use crate::{bin, workspace_root, write_config, Gateway};

/// What the cameras show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scene {
    /// vtest.avi: people walking all the time.
    Walking,
    /// One empty frame (grass), nothing moves.
    Static,
}

impl Scene {
    pub fn parse(s: &str) -> Option<Scene> {
        match s.trim() {
            "walk" | "walking" => Some(Scene::Walking),
            "static" => Some(Scene::Static),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Scene::Walking => "walk",
            Scene::Static => "static",
        }
    }
}

/// `h264` or `h265`: the encoder, its options, the cache file's name.
fn encoder(codec: &str) -> (&'static str, Vec<&'static str>) {
    match codec {
        "h265" => (
            "libx265",
            vec![
                "-preset",
                "superfast",
                "-tag:v",
                "hvc1",
                "-x265-params",
                "bframes=0:keyint=30:min-keyint=30:scenecut=0:log-level=error",
            ],
        ),
        _ => (
            "libx264",
            vec![
                "-preset",
                "veryfast",
                "-profile:v",
                "main",
                "-bf",
                "0",
                "-g",
                "30",
                "-keyint_min",
                "30",
                "-sc_threshold",
                "0",
            ],
        ),
    }
}

/// The cached 1080p15 encoding of `scene` in `codec` (`h264`/`h265`) under `target_dir`,
/// made with the `ffmpeg` CLI when missing (a minute or two once; reused afterwards).
pub fn encoded_footage(target_dir: &Path, scene: Scene, codec: &str) -> PathBuf {
    let dir = target_dir.join("cams-footage");
    std::fs::create_dir_all(&dir).expect("create footage cache");
    let name = match scene {
        Scene::Walking => format!("vtest-1080p15-{codec}.mp4"),
        Scene::Static => format!("still-1080p15-{codec}.mp4"),
    };
    let path = dir.join(name);
    if path.exists() {
        return path;
    }
    let vtest = workspace_root().join("vendor/footage/vtest.avi");
    assert!(vtest.exists(), "run ./x deps to fetch the footage");
    let (lib, options) = encoder(codec);
    let tmp = path.with_extension("tmp.mp4");
    let mut ffmpeg = Command::new("ffmpeg");
    ffmpeg.args(["-hide_banner", "-loglevel", "error", "-y"]);
    match scene {
        Scene::Walking => ffmpeg
            .arg("-i")
            .arg(&vtest)
            .args(["-vf", "scale=1920:1080:flags=bicubic,fps=15"]),
        // The grass at the bottom left of the first frame: nothing the detector knows.
        Scene::Static => ffmpeg.arg("-i").arg(&vtest).args([
            "-vf",
            "trim=end_frame=1,crop=480:270:0:306,scale=1920:1080:flags=bicubic,loop=loop=899:size=1,setpts=N/15/TB",
            "-r",
            "15",
        ]),
    };
    let status = ffmpeg
        .args(["-an", "-c:v", lib])
        .args(options)
        .args(["-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M"])
        .args(["-movflags", "+faststart"])
        .arg(&tmp)
        .status()
        .expect("run ffmpeg (apt install ffmpeg)");
    assert!(
        status.success(),
        "ffmpeg could not encode {}",
        path.display()
    );
    std::fs::rename(&tmp, &path).expect("keep the encoded footage");
    path
}

/// `sim camera --passthrough` serving `footage` on `/cam0` … `/cam{n-1}`, each `stagger`
/// seconds further into the file, stopped on drop.
pub fn serve(footage: &Path, n: usize, stagger_s: f64) -> (ChildGuard, u16) {
    let port = process::free_port().expect("free port");
    let mut sim = Command::new(bin("sim"));
    sim.args([
        "camera",
        "--loop",
        "--passthrough",
        "--port",
        &port.to_string(),
    ])
    .args(["--stagger", &format!("{stagger_s:.2}")]);
    for _ in 0..n {
        sim.arg("--footage").arg(footage);
    }
    let camera = crate::sim::spawn_camera_within(sim, port, Duration::from_secs(60));
    (camera, port)
}

/// A gateway configuration in `dir` analysing `/cam0` … `/cam{n-1}` on `port` at
/// `analyse_fps`, with an intrusion rule on the whole picture (so tracks and zones run).
pub fn config(dir: &Path, port: u16, n: usize, analyse_fps: f64) -> PathBuf {
    let models = workspace_root().join("models");
    let mut body = format!(
        "[detector]\nmodels_dir = \"{}\"\nintra_threads = 1\n\n\
         [[locations.areas]]\nid = \"plaza\"\nname = \"plaza\"\nkind = \"other\"\n",
        models.display()
    );
    for i in 0..n {
        body.push_str(&format!(
            "\n[[cameras]]\nid = \"cam{i}\"\nurl = \"rtsp://127.0.0.1:{port}/cam{i}\"\n\
             location = {{ area = \"plaza\" }}\nanalyse_fps = {analyse_fps}\n\
             [[cameras.zones]]\nid = \"all\"\n\
             polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]\n\
             [[cameras.rules]]\nkind = \"intrusion\"\nzone = \"all\"\n\
             window = {{ from = \"00:00\", to = \"00:00\" }}\nlevel = \"yellow\"\n"
        ));
    }
    write_config(dir, &body)
}

/// Starts the gateway binary `gateway` on `config` with its data in `data_dir`.
pub fn start_gateway(gateway: &Path, config: &Path, data_dir: &Path) -> Gateway {
    let mut command = Command::new(gateway);
    command
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir);
    let mut gw = Gateway::spawn(command);
    gw.wait_ready();
    gw
}

/// `status.json` of the gateway whose data directory is `data_dir` (`null` if unreadable).
pub fn status(data_dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(data_dir.join("status.json")).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_default()
}

/// User + system CPU time of `pid` so far (`/proc/PID/stat`), zero when it is gone.
pub fn cpu_time(pid: u32) -> Duration {
    stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// User + system CPU time of the threads of `pid` so far, summed by thread name
/// (`/proc/PID/task/*/stat`; a thread that ended is not counted).
pub fn cpu_by_thread(pid: u32) -> std::collections::BTreeMap<String, Duration> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        *out.entry(name.trim().to_owned()).or_insert(Duration::ZERO) += stat_cpu(&stat);
    }
    out
}

/// utime + stime of a `/proc/…/stat` line.
fn stat_cpu(stat: &str) -> Duration {
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line: indexes 11 and 12 after the ')'.
    let total = ticks(11) + ticks(12);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(total as f64 / hz)
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_1min() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}
