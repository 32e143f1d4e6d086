//! Video pipeline benchmark: `cargo bench -p gateway --bench video_pipeline`.
//!
//! On the same frames (the first 20 s of vtest.avi, every frame, 768×576):
//! - raw ONNX Runtime inference frames/s (pre-letterboxed tensors, `Session::run` only);
//! - the whole pipeline's frames/s (decode + motion + letterbox + detect + track + zones),
//!   detector on every frame;
//! - CPU time on a static scene (one vtest frame repeated for 20 s) with motion gating on
//!   vs off;
//! - the peer, in the same run: a Frigate-style Python pipeline (`benches/peers/frigate_style.py`:
//!   ffmpeg subprocess + numpy + onnxruntime's Python package, same model, same threads, the
//!   detector on every frame), and the whole pipeline's ratio to it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gateway::video::capture::{self, CaptureOptions, CaptureSink, Captured, Pace};
use gateway::video::detect::{self, Detector, OrtDetector};
use gateway::video::evidence::ClipRecorder;
use gateway::video::{
    CameraJobs, CameraStats, Outputs, PipelineOptions, SharedDetector, StatsSnapshot,
};
use tokio_util::sync::CancellationToken;

const SECONDS: f64 = 20.0;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Process CPU time (user + system), seconds, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

struct Collect(Vec<gateway::video::BgrImage>);

impl CaptureSink for Collect {
    fn ready(&mut self) -> bool {
        true
    }
    fn frame(&mut self, frame: Captured) -> bool {
        self.0.push(
            frame
                .picture
                .bgr()
                .expect("a decoded frame converts to BGR"),
        );
        true
    }
    fn status(&mut self, _down: Option<String>) {}
    fn poll_clips(&mut self, _recorder: &mut ClipRecorder, _t: f64) {}
}

fn config(url: &Path, fps: f64) -> edge_config::Config {
    let text = format!(
        "[site]\nid = \"bench\"\nname = \"bench\"\nkind = \"compound\"\n[[locations.areas]]\nid = \"a\"\nname = \"A\"\nkind = \"lobby\"\n[[cameras]]\nid = \"cam\"\nurl = \"{}\"\nlocation = {{ area = \"a\" }}\nanalyse_fps = {fps}\n",
        url.display()
    );
    edge_config::parse(&text, "bench.toml", &root()).unwrap_or_else(|e| panic!("{e}"))
}

fn pipeline(url: &Path, detector: SharedDetector, gating: bool) -> (StatsSnapshot, f64, f64) {
    let cfg = config(url, 10.0);
    let options = PipelineOptions {
        capture: CaptureOptions {
            pace: Pace::AsFastAsAnalysed,
            loop_files: false,
            max_seconds: Some(SECONDS - 0.05),
            ..CaptureOptions::default()
        },
        motion_gating: gating,
        ..PipelineOptions::default()
    };
    let jobs = CameraJobs::new(
        &cfg.cameras[0],
        &cfg,
        detector,
        Outputs {
            alerts: None,
            reports: None,
        },
        options,
    )
    .unwrap();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let stats = jobs.run(CancellationToken::new()).unwrap();
    (stats, t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0)
}

/// The Frigate-style Python peer on the first [`SECONDS`] of `video`: frames/s, or why it
/// could not run (its packages come from `./x deps`).
fn python_peer(video: &Path, threads: usize) -> Result<f64, String> {
    let script = root().join("gateway/benches/peers/frigate_style.py");
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let out = Command::new(python)
        .arg(&script)
        .arg(video)
        .arg(SECONDS.to_string())
        .arg(root().join("models/yolox_nano.onnx"))
        .arg(threads.to_string())
        .env("PYTHONPATH", root().join("vendor/python"))
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let (frames, secs) = (
        v["frames"].as_f64().unwrap_or(0.0),
        v["seconds"].as_f64().unwrap_or(0.0),
    );
    if frames < 1.0 || secs <= 0.0 {
        return Err(format!("the peer analysed nothing: {v}"));
    }
    Ok(frames / secs)
}

fn main() {
    let vtest = root().join("vendor/footage/vtest.avi");
    capture::init_ffmpeg().unwrap();
    let threads: usize = std::env::var("INTRA_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        // The gateway's own default (`[detector] intra_threads`).
        .unwrap_or(edge_config::Detector::default().intra_threads as usize);
    let env = detect::runtime(Some(&root().join("vendor/onnxruntime/libonnxruntime.so")))
        .expect("ONNX Runtime (./x deps)");
    let mut raw =
        OrtDetector::load(&env, &root().join("models/yolox_nano.onnx"), threads).expect("model");

    // The frames: first 20 s of vtest.avi, every frame.
    let mut sink = Collect(Vec::new());
    let options = CaptureOptions {
        analyse_fps: 10.0,
        pace: Pace::AsFastAsAnalysed,
        loop_files: false,
        max_seconds: Some(SECONDS - 0.05),
        ..CaptureOptions::default()
    };
    let stats = CameraStats::default();
    let mut recorder = ClipRecorder::new(0.0, 0.0, 1 << 20);
    capture::run(
        &edge_config::CameraSource::File(vtest.clone()),
        &options,
        &stats,
        &mut recorder,
        &mut sink,
        &CancellationToken::new(),
    );
    let frames = sink.0;
    let t0 = Instant::now();
    let prepared: Vec<_> = frames
        .iter()
        .map(|f| detect::letterbox(f, None, raw.input_spec()))
        .collect();
    let letterbox_ms = t0.elapsed().as_secs_f64() * 1000.0 / frames.len() as f64;
    // Capture alone: decode + sample + swscale (BGR + grey), same frames.
    let mut sink = Collect(Vec::new());
    let t0 = Instant::now();
    capture::run(
        &edge_config::CameraSource::File(vtest.clone()),
        &options,
        &stats,
        &mut recorder,
        &mut sink,
        &CancellationToken::new(),
    );
    let capture_ms = t0.elapsed().as_secs_f64() * 1000.0 / sink.0.len() as f64;

    // Raw inference.
    let t0 = Instant::now();
    for p in &prepared {
        raw.run_raw(p).expect("inference");
    }
    let raw_fps = prepared.len() as f64 / t0.elapsed().as_secs_f64();

    // Whole pipeline, detector on every frame.
    let shared: SharedDetector = Arc::new(Mutex::new(Box::new(raw)));
    let (s, wall, _) = pipeline(&vtest, shared.clone(), false);
    let pipe_fps = s.analysed as f64 / wall;

    let peer_fps = python_peer(&vtest, threads);

    // Static scene: one frame of vtest repeated.
    let dir = tempfile::tempdir().unwrap();
    let still = dir.path().join("still.png");
    let clip = dir.path().join("static.avi");
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&vtest)
        .args(["-frames:v", "1"])
        .arg(&still)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-loop", "1", "-framerate", "10", "-i"])
            .arg(&still)
            .args(["-t", "20", "-c:v", "mpeg4", "-q:v", "3", "-g", "50"])
            .arg(&clip)
            .status()
            .is_ok_and(|s| s.success());
    assert!(ok, "the ffmpeg CLI could not make the static clip");
    let (on, on_wall, on_cpu) = pipeline(&clip, shared.clone(), true);
    let (off, off_wall, off_cpu) = pipeline(&clip, shared, false);

    println!("video pipeline benchmark: vtest.avi 768x576, first {SECONDS} s, every frame ({} frames), intra_threads {threads}", frames.len());
    println!("  capture (decode+swscale) {capture_ms:5.2} ms/frame, letterbox {letterbox_ms:5.2} ms/frame");
    println!("  raw ORT inference      {raw_fps:7.1} frames/s");
    println!("  whole pipeline         {pipe_fps:7.1} frames/s  ({:.2} x raw; decode+motion+letterbox+detect+track+zones)", pipe_fps / raw_fps);
    match &peer_fps {
        Ok(fps) => println!("  Frigate-style Python   {fps:7.1} frames/s  (whole pipeline = {:.2} x the peer; ffmpeg subprocess + numpy + onnxruntime, {threads} threads)", pipe_fps / fps),
        Err(e) => println!("  Frigate-style Python   not measured: {e}"),
    }
    println!("static scene, 20 s at 10 fps analysed as fast as possible:");
    println!(
        "  motion gating on       detector runs {:3}/{:3}, CPU {on_cpu:5.2} s, wall {on_wall:5.2} s -> {:4.1} % of one core in real time",
        on.detected, on.analysed, on_cpu / SECONDS * 100.0
    );
    println!(
        "  motion gating off      detector runs {:3}/{:3}, CPU {off_cpu:5.2} s, wall {off_wall:5.2} s -> {:4.1} % of one core in real time",
        off.detected, off.analysed, off_cpu / SECONDS * 100.0
    );
}
