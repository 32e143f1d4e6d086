//! The video pipeline on real footage with the real model: detections, stable track ids, a
//! zone rule raising exactly the expected alert through the real alert lifecycle (SQLite
//! store + outbox) with a decodable snapshot and a clip ffprobe reads, and corrupt input
//! counted without a panic.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use edge_config::{Camera, Config};
use gateway::alerts::task::AlertInput;
use gateway::alerts::{AlertStore, EventKind, Lifecycle, Source};
use gateway::video::capture::{self, CaptureOptions, Pace};
use gateway::video::detect::{DetectError, Detection, Detector, InputSpec, OrtDetector, Prepared};
use gateway::video::{
    CameraJobs, FrameReport, Outputs, PipelineOptions, SharedDetector, StatsSnapshot,
};
use tokio_util::sync::CancellationToken;

#[path = "support/blind.rs"]
mod blind;
use blind::{blind, Blind};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn footage(name: &str) -> PathBuf {
    root().join("vendor/footage").join(name)
}

/// One real detector for the whole test binary (ONNX Runtime allows one environment).
fn detector() -> SharedDetector {
    static DETECTOR: OnceLock<SharedDetector> = OnceLock::new();
    DETECTOR
        .get_or_init(|| {
            let env = gateway::video::detect::runtime(Some(
                &root().join("vendor/onnxruntime/libonnxruntime.so"),
            ))
            .expect("ONNX Runtime (./x deps)");
            let d = OrtDetector::load(&env, &root().join("models/yolox_nano.onnx"), 2)
                .expect("model (./x deps)");
            Arc::new(Mutex::new(Box::new(d) as Box<dyn Detector>))
        })
        .clone()
}

fn config(cameras_toml: &str) -> Config {
    let text = format!(
        r#"
[site]
id = "t1"
name = "Test compound"
kind = "compound"

[[locations.areas]]
id = "lobby"
name = "1号楼大堂"
kind = "lobby"

{cameras_toml}
"#
    );
    edge_config::parse(&text, "test.toml", &root()).unwrap_or_else(|e| panic!("{e}"))
}

fn options(max_seconds: f64, evidence: Option<PathBuf>) -> PipelineOptions {
    PipelineOptions {
        capture: CaptureOptions {
            pace: Pace::AsFastAsAnalysed,
            loop_files: false,
            max_seconds: Some(max_seconds),
            ..CaptureOptions::default()
        },
        evidence_dir: evidence,
        ..PipelineOptions::default()
    }
}

/// Runs one camera to the end; returns its per-frame reports and counters.
fn run(
    camera: &Camera,
    config: &Config,
    detector: SharedDetector,
    alerts: Option<gateway::alerts::AlertBus>,
    options: PipelineOptions,
) -> (Vec<FrameReport>, StatsSnapshot) {
    capture::init_ffmpeg().unwrap();
    let (tx, rx) = crossbeam_channel::bounded(4);
    let collector = std::thread::spawn(move || rx.iter().collect::<Vec<FrameReport>>());
    let jobs = CameraJobs::new(
        camera,
        config,
        detector,
        Outputs {
            alerts,
            reports: Some(tx),
        },
        options,
    )
    .unwrap();
    let stats = jobs.run(CancellationToken::new()).unwrap();
    (collector.join().unwrap(), stats)
}

fn camera_toml(url: &Path, fps: f64, extra: &str) -> String {
    format!(
        r#"
[[cameras]]
id = "cam-lobby"
url = "{}"
location = {{ area = "lobby" }}
analyse_fps = {fps}
{extra}
"#,
        url.display()
    )
}

#[test]
fn persons_walking_in_vtest_are_detected_with_stable_track_ids() {
    let cfg = config(&camera_toml(&footage("vtest.avi"), 5.0, ""));
    let (reports, stats) = run(&cfg.cameras[0], &cfg, detector(), None, options(12.0, None));
    assert!(
        reports.len() >= 55,
        "about 60 frames at 5 fps over 12 s, got {}",
        reports.len()
    );
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.errors, 0);
    let with_person = reports
        .iter()
        .filter(|r| {
            r.objects
                .iter()
                .any(|o| o.class == "person" && o.score >= 0.5)
        })
        .count();
    assert!(
        with_person * 10 >= reports.len() * 9,
        "a person in nearly every frame: {with_person}/{}",
        reports.len()
    );
    // Track ids are stable: the longest-lived tracks span many consecutive frames.
    let mut frames_per_track: HashMap<u64, usize> = HashMap::new();
    for r in &reports {
        for o in &r.objects {
            if let (Some(id), "person") = (o.track, o.class) {
                *frames_per_track.entry(id).or_default() += 1;
            }
        }
    }
    let long_lived = frames_per_track.values().filter(|&&n| n >= 20).count();
    assert!(
        long_lived >= 3,
        "at least three persons keep their id for 4 s or more: {frames_per_track:?}"
    );
    // Ids are not reused within a frame.
    for r in &reports {
        let ids: Vec<u64> = r.objects.iter().filter_map(|o| o.track).collect();
        let unique: HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(ids.len(), unique.len(), "frame {}", r.seq);
    }
}

#[test]
fn cyclists_in_bikes_mp4_are_detected_as_bicycles_or_motorcycles_and_tracked() {
    let cfg = config(&camera_toml(&footage("bikes.mp4"), 5.0, ""));
    let (reports, stats) = run(&cfg.cameras[0], &cfg, detector(), None, options(20.0, None));
    assert_eq!(
        (stats.analysed, stats.errors),
        (50, 0),
        "10 s at 5 fps: {stats:?}"
    );
    let two_wheelers: Vec<_> = reports
        .iter()
        .flat_map(|r| r.objects.iter())
        .filter(|o| (o.class == "bicycle" || o.class == "motorcycle") && o.score >= 0.6)
        .collect();
    assert!(
        two_wheelers.len() >= 10,
        "confident bicycles/motorcycles: {}",
        two_wheelers.len()
    );
    let mut per_track: HashMap<u64, usize> = HashMap::new();
    for o in &two_wheelers {
        if let Some(id) = o.track {
            *per_track.entry(id).or_default() += 1;
        }
    }
    assert!(
        per_track.values().any(|&n| n >= 5),
        "one bicycle keeps its id over 5 frames: {per_track:?}"
    );
}

/// Runs the real alert task (lifecycle + SQLite store + outbox) on a thread.
struct AlertTask {
    tx: tokio::sync::mpsc::Sender<AlertInput>,
    stop: tokio_util::sync::CancellationToken,
    events: tokio::sync::broadcast::Receiver<gateway::alerts::Alert>,
    thread: std::thread::JoinHandle<()>,
    db: PathBuf,
}

impl AlertTask {
    fn start(config: &Config, dir: &Path) -> Self {
        let db = dir.join("gateway.db");
        let lifecycle =
            Lifecycle::new(Arc::new(config.clone()), AlertStore::open(&db).unwrap()).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (events_tx, events) = tokio::sync::broadcast::channel(256);
        let stop = tokio_util::sync::CancellationToken::new();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let task =
                    gateway::alerts::task::AlertTask::new(lifecycle, events_tx, Default::default());
                gateway::alerts::task::run(task, &mut { rx }, &stop)
            }
        });
        AlertTask {
            tx,
            stop,
            events,
            thread,
            db,
        }
    }

    /// Stops the task (it drains what the pipeline queued) and returns every event.
    fn finish(mut self) -> (Vec<gateway::alerts::Alert>, i64) {
        self.stop.cancel();
        self.thread.join().unwrap();
        drop(self.tx);
        let mut out = Vec::new();
        while let Ok(a) = self.events.try_recv() {
            out.push(a);
        }
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        let outbox: i64 = conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .unwrap();
        (out, outbox)
    }
}

fn ffprobe(path: &Path, entries: &str) -> String {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            entries,
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe is installed");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn an_ebike_entering_the_lobby_raises_exactly_one_alert_with_a_snapshot_and_a_clip() {
    let rules = r#"
[[cameras.zones]]
id = "lobby-door"
polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
[[cameras.rules]]
kind = "ebike_entry"
zone = "lobby-door"
min_score = 0.6
min_area = 0.01
[[cameras.rules]]
kind = "crowd"
zone = "lobby-door"
min_persons = 8
min_duration_s = 2
"#;
    let cfg = config(&camera_toml(&footage("bikes.mp4"), 5.0, rules));
    let dir = tempfile::tempdir().unwrap();
    let evidence = dir.path().join("evidence");
    let task = AlertTask::start(&cfg, dir.path());
    let (_, stats) = run(
        &cfg.cameras[0],
        &cfg,
        detector(),
        Some(gateway::alerts::AlertBus::new(task.tx.clone())),
        options(20.0, Some(evidence.clone())),
    );
    let (events, outbox_rows) = task.finish();

    let ids: HashSet<&str> = events.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), 1, "exactly one alert: {events:#?}");
    let first = &events[0];
    assert_eq!(first.event, EventKind::Raised);
    assert_eq!(first.kind, edge_config::AlertKind::EbikeEntry);
    assert_eq!(first.level, edge_config::Level::Orange);
    assert_eq!(first.source, Source::Camera("cam-lobby".into()));
    assert_eq!(first.location.label, "1号楼大堂");
    assert!(
        events.iter().skip(1).all(|a| a.event == EventKind::Updated),
        "later e-bikes update it"
    );
    assert_eq!(stats.alerts as usize, events.len());
    assert_eq!(
        outbox_rows as usize,
        events.len(),
        "every event went to the outbox"
    );

    let readings = &first.readings;
    assert_eq!(readings["rule"], "ebike_entry");
    assert_eq!(readings["zone"], "lobby-door");
    let class = readings["objects"][0]["class"].as_str().unwrap();
    assert!(class == "bicycle" || class == "motorcycle", "{readings}");
    let snapshot = PathBuf::from(readings["snapshot"].as_str().expect("snapshot path"));
    let clip = PathBuf::from(readings["clip"].as_str().expect("clip path"));
    assert!(snapshot.starts_with(&evidence) && clip.starts_with(&evidence));
    assert_eq!(
        ffprobe(&snapshot, "stream=codec_name,width,height"),
        "mjpeg,640,272"
    );
    let clip_info = ffprobe(&clip, "stream=codec_name,nb_read_frames");
    let (codec, frames) = clip_info.split_once(',').unwrap();
    assert_eq!(codec, "h264");
    let frames: u32 = frames.parse().unwrap();
    assert!(
        frames >= 50,
        "a few seconds before and after the trigger: {frames} frames"
    );
}

fn run_blind(path: &Path) -> StatsSnapshot {
    let cfg = config(&camera_toml(path, 5.0, ""));
    let mut o = options(1000.0, None);
    o.capture.max_seconds = None;
    run(&cfg.cameras[0], &cfg, blind(Duration::ZERO), None, o).1
}

#[test]
fn random_bytes_are_an_error_that_is_counted_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.mp4");
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, noise).unwrap();
    let stats = run_blind(&path);
    assert_eq!(stats.decoded, 0);
    assert!(stats.errors >= 1, "{stats:?}");
}

#[test]
fn a_truncated_mp4_without_its_index_is_an_error_that_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.mp4");
    let bytes = std::fs::read(footage("bikes.mp4")).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let stats = run_blind(&path);
    assert_eq!(stats.decoded, 0);
    assert!(stats.errors >= 1, "{stats:?}");
}

#[test]
fn a_truncated_and_damaged_avi_decodes_what_it_can_and_counts_the_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.avi");
    let mut bytes = std::fs::read(footage("vtest.avi")).unwrap();
    bytes.truncate(2_000_000);
    // Overwrite a stretch in the middle with garbage.
    for (i, b) in bytes[1_000_000..1_100_000].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[1];
    }
    std::fs::write(&path, &bytes).unwrap();
    let stats = run_blind(&path);
    assert!(stats.decoded > 20 && stats.decoded < 795, "{stats:?}");
    assert!(stats.errors >= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_spawn_analyses_a_file_camera_in_real_time_and_stops_on_shutdown() {
    let mut cfg = config(&camera_toml(&footage("vtest.avi"), 2.0, ""));
    cfg.detector.onnxruntime = Some(root().join("vendor/onnxruntime/libonnxruntime.so"));
    cfg.detector.models_dir = root().join("models");
    // Share the already-loaded runtime (one per process).
    let _ = detector();
    let dir = tempfile::tempdir().unwrap();
    let stages = gateway::shutdown::Lifecycle::new();
    let (tx, _rx) = tokio::sync::mpsc::channel(64);
    let handle = gateway::video::spawn(
        Arc::new(cfg),
        &stages,
        gateway::alerts::AlertBus::new(tx),
        dir.path(),
    )
    .expect("video pipeline starts");
    let started = std::time::Instant::now();
    // Real time is the scenario: a file camera plays at its own 10 fps, analysed at 2 fps,
    // not flat out. Wait until 4 frames were analysed, then judge the counts against the time
    // that passed: at most 1 s late to start, at most 1.5 s of frames ahead (over a window
    // of 3 s, that is 20..=45 decoded and 4..=8 analysed).
    let camera = &handle.cameras[0].1;
    while camera.snapshot().analysed < 4 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "not 4 frames analysed in 20 s: {:?}",
            camera.snapshot()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let window = started.elapsed().as_secs_f64();
    let report = stages.shutdown(std::time::Duration::from_secs(4)).await;
    assert!(report.clean(), "{report:?}");
    let stats = camera.snapshot();
    let in_real_time = |n: u64, fps: f64, ahead: f64| {
        (fps * (window - 1.0)..=fps * window + ahead).contains(&(n as f64))
    };
    assert!(
        in_real_time(stats.decoded, 10.0, 15.0),
        "{window:.2} s: {stats:?}"
    );
    assert!(
        in_real_time(stats.analysed, 2.0, 2.0),
        "{window:.2} s: {stats:?}"
    );
    assert_eq!(stats.errors, 0);
}

#[derive(clap::Parser)]
struct DetectCommand {
    #[command(flatten)]
    args: gateway::video::detect_cli::DetectArgs,
}

#[test]
fn gateway_detect_runs_on_a_png_image_and_writes_the_annotated_frame() {
    use clap::Parser;
    let _ = detector();
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("frame.png");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-ss", "5", "-i"])
        .arg(footage("vtest.avi"))
        .args(["-frames:v", "1"])
        .arg(&png)
        .status()
        .unwrap();
    assert!(status.success());
    let out = dir.path().join("annotated.jpg");
    let root = root();
    let cmd = DetectCommand::parse_from([
        "detect".as_ref(),
        "--input".as_ref(),
        png.as_os_str(),
        "--models-dir".as_ref(),
        root.join("models").as_os_str(),
        "--onnxruntime".as_ref(),
        root.join("vendor/onnxruntime/libonnxruntime.so")
            .as_os_str(),
        "--annotate".as_ref(),
        out.as_os_str(),
    ]);
    gateway::video::detect_cli::run(&cmd.args).unwrap();
    assert_eq!(
        ffprobe(&out, "stream=codec_name,width,height"),
        "mjpeg,768,576"
    );
    let missing = DetectCommand::parse_from(["detect", "--input", "/nonexistent.mp4"]);
    assert!(
        gateway::video::detect_cli::run(&missing.args).is_err(),
        "an unreadable input is an error, not a panic"
    );
}

/// A detector whose inference fails for its first `failures` frames (a hung or broken
/// runtime), then sees nothing: the camera is decoded all along but analysed only later.
struct FailsAtFirst {
    failures: u32,
}

impl Detector for FailsAtFirst {
    fn name(&self) -> &str {
        "fails-at-first"
    }
    fn input_spec(&self) -> InputSpec {
        Blind {
            cost: Duration::ZERO,
        }
        .input_spec()
    }
    fn infer(&mut self, _input: &Prepared) -> Result<Vec<Detection>, DetectError> {
        if self.failures > 0 {
            self.failures -= 1;
            return Err(DetectError::Inference("runtime wedged".into()));
        }
        Ok(Vec::new())
    }
}

#[test]
fn a_camera_decoded_but_not_analysed_raises_camera_down_until_analysis_resumes() {
    let cfg = config(&camera_toml(&footage("bikes.mp4"), 5.0, ""));
    let dir = tempfile::tempdir().unwrap();
    let task = AlertTask::start(&cfg, dir.path());
    let mut o = options(1000.0, None);
    // Detect on every sampled frame; blind after 3 s of frames decoded but none analysed
    // (camera time: the file is read as fast as it is analysed).
    o.motion_gating = false;
    o.capture.stall_timeout = std::time::Duration::from_secs(3);
    // 25 failed frames at 5 frames/s: 5 s of camera time without analysis, then 5 s with.
    let detector: SharedDetector = Arc::new(Mutex::new(Box::new(FailsAtFirst { failures: 25 })));
    let (reports, stats) = run(
        &cfg.cameras[0],
        &cfg,
        detector,
        Some(gateway::alerts::AlertBus::new(task.tx.clone())),
        o,
    );
    let (events, _) = task.finish();

    let down: Vec<_> = events
        .iter()
        .filter(|a| a.kind == edge_config::AlertKind::CameraDown)
        .collect();
    assert_eq!(
        down.iter().map(|a| a.event).collect::<Vec<_>>(),
        [EventKind::Raised, EventKind::Resolved],
        "raised once, resolved once: {down:#?}"
    );
    assert_eq!(down[0].source, Source::Camera("cam-lobby".into()));
    assert_eq!(
        down[0].readings["reason"],
        "frames decoded but not analysed"
    );
    assert_eq!(down[0].id, down[1].id);
    assert_eq!(reports.len(), 50, "10 s at 5 fps reached the analysis");
    assert_eq!(
        (
            stats.decoded,
            stats.analysed,
            stats.errors,
            stats.analysis_stalls
        ),
        (250, 25, 25, 1),
        "{stats:?}"
    );
}

/// One frame of `clip` at `at` seconds as a BGR image, decoded by the ffmpeg CLI.
fn bgr_frame(clip: &Path, at: f64, width: u32, height: u32) -> gateway::video::BgrImage {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-ss", &at.to_string(), "-i"])
        .arg(clip)
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"])
        .output()
        .expect("ffmpeg is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), (width * height * 3) as usize);
    gateway::video::BgrImage {
        width,
        height,
        data: out.stdout,
    }
}

/// Issue 18, rectangle inference: a frame wider than tall runs on a rectangle whose sides
/// are multiples of 32 (bikes.mp4 2.35:1 → 416 × 192, vtest 4:3 → 416 × 320) instead of
/// the model's 416 × 416 square, and finds the same objects, at the same places, with the
/// same scores (within what the missing padding changes).
#[test]
fn wide_frames_run_on_a_rectangle_and_find_what_the_square_input_finds() {
    let env =
        gateway::video::detect::runtime(Some(&root().join("vendor/onnxruntime/libonnxruntime.so")))
            .expect("ONNX Runtime (./x deps)");
    let model = root().join("models/yolox_nano.onnx");
    let mut rect = OrtDetector::load_as(&env, &model, 1, true).unwrap();
    let mut square = OrtDetector::load_as(&env, &model, 1, false).unwrap();
    assert!(
        rect.runs_on_rectangles(),
        "yolox_nano's graph is size-agnostic"
    );
    assert!(!square.runs_on_rectangles());
    let mut compared = 0;
    for (clip, at, size, rect_side) in [
        ("bikes.mp4", 1.0, (640, 272), (416, 192)),
        ("bikes.mp4", 4.0, (640, 272), (416, 192)),
        ("bikes.mp4", 7.0, (640, 272), (416, 192)),
        ("vtest.avi", 5.0, (768, 576), (416, 320)),
        ("vtest.avi", 40.0, (768, 576), (416, 320)),
    ] {
        let image = bgr_frame(&footage(clip), at, size.0, size.1);
        let p = gateway::video::detect::letterbox(&image, None, rect.input_spec());
        assert_eq!((p.spec.width, p.spec.height), rect_side, "{clip}");
        let confident = |d: &Vec<Detection>| -> Vec<Detection> {
            d.iter().filter(|d| d.score >= 0.4).cloned().collect()
        };
        let on_rect = rect.detect(&image, None).unwrap();
        let on_square = square.detect(&image, None).unwrap();
        compared += confident(&on_square).len();
        for (a, b, which) in [
            (&on_square, &on_rect, "square → rectangle"),
            (&on_rect, &on_square, "rectangle → square"),
        ] {
            for d in confident(a) {
                let twin = b
                    .iter()
                    .filter(|e| e.class == d.class)
                    .max_by(|x, y| x.bbox.iou(&d.bbox).total_cmp(&y.bbox.iou(&d.bbox)));
                let found = twin.is_some_and(|e| {
                    e.bbox.iou(&d.bbox) >= 0.8 && (e.score - d.score).abs() <= 0.15
                });
                assert!(found, "{clip} {which}: {d:?} has no twin in {b:?}");
            }
        }
    }
    assert!(
        compared >= 8,
        "the frames have objects to compare ({compared})"
    );
}
