//! The video pipeline: one per camera, two threads joined by typed bounded channels.
//!
//! ```text
//! capture thread (Inputs stage)                    analysis thread (Processing stage)
//! capture → motion → letterbox ─(Frame, cap. 1)─▶ detect → track → zones → evidence ─(AlertInput)─▶ alerts
//!    ▲  packet ring for clips    ◀─(ClipRequest)──────────────────────────┘
//!    │   └─ live tap (fMP4, only while watched) ─▶ LiveFeed ─▶ console viewers
//!    └─ watchdog: reconnect with backoff, camera_down / resolved ─(AlertInput)─▶ alerts
//! sensor alarms (committed) ─▶ linked ─(LinkedRequest)─▶ analysis: evidence at its next frame
//! ```
//!
//! A camera with a `sub_url` is analysed on its sub-stream while a third thread reads its
//! main stream for evidence (see [`main_stream`]): clips from the main stream's packets,
//! snapshots decoded from it on demand with the boxes scaled up. Both streams' outages go
//! into the camera's one `camera_down` alert through [`HealthReporter`].
//!
//! Frames are dropped (and counted) at capture when the analysis is still busy — never
//! queued without bound. The capture watchdog also watches the analysis: a camera decoded
//! but not analysed is reported down like a dead stream (see [`CameraStats`]). The detector
//! (model loaded once, warmed up) is shared by all cameras behind a mutex; pre-processing
//! runs on each camera's capture thread, outside the lock.
//! Motion gates the detector: it runs only when something moves, on the moving region, plus
//! a periodic full-frame pass.
//!
//! Many cameras on one box (issue 18, `cargo bench -p e2e --bench cameras_per_box`):
//! - an idle camera (no motion for [`IDLE_AFTER_S`], no track alive) lets its decoder skip
//!   frames ([`capture::DecodeMode`]: non-reference frames by default, keyframes only with
//!   `SHOUWANG_IDLE_DECODE=key`); the first frame that shows motion switches it back before
//!   the next packet is decoded;
//! - cameras take turns at the shared detector in the order they asked
//!   ([`schedule::Turnstile`]; the model's batch is fixed at 1, so no batching), and a live
//!   frame that waited longer than [`PipelineOptions::max_frame_age`] is dropped and counted
//!   instead of detected late;
//! - each camera measures its detection latency, capture → detections available, in a
//!   bounded histogram ([`latency`]), shown in `status.json`;
//! - a sampled frame travels as a new reference to the decoder's own picture
//!   ([`picture`]): the detector input is made from it by one swscale call, BGR only for
//!   evidence, and the input's buffer returns to the capture thread ([`spares`]);
//! - the detector runs on rectangles (a 16:9 frame on 416 × 256, not 416 × 416) when the
//!   model's graph allows it ([`onnx_shape`]);
//! - a camera may decode on hardware (VAAPI, V4L2 M2M), falling back to software ([`hwdec`]).

pub mod capture;
pub mod detect;
pub mod detect_cli;
pub mod evidence;
pub mod hwdec;
pub mod latency;
pub mod linked;
pub mod live;
pub mod main_stream;
pub mod motion;
pub mod onnx_shape;
pub mod picture;
pub mod schedule;
pub mod spares;
pub mod track;
pub mod zones;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use edge_config::{AlertKind, Camera, CameraRuleKind, Config, Level};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::alerts::task::{AlertInput, Trigger};
use crate::alerts::AlertBus;
use crate::alerts::{Location, Source};
use crate::shutdown::{Lifecycle as Stages, Stage};
use crate::supervise::Severity;
use capture::{CaptureError, CaptureOptions, CaptureSink, Captured, Pace};
use detect::{DetectError, Detector, InputShape, InputSpec, OrtDetector, Prepared};
use evidence::{ClipRecorder, ClipRequest, Mark};
use main_stream::{Evidence, MainStream, SnapshotRequest};
use motion::MotionDetector;
use track::{Tracker, TrackerOptions};
use zones::{RuleEdge, ZoneError, ZoneRules};

/// Errors starting the video pipeline.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// No detector: the camera pipeline is unavailable (sensors keep working).
    #[error("video pipeline unavailable: {0}")]
    Detector(#[from] DetectError),
    #[error("video pipeline unavailable: {0}")]
    Capture(#[from] CaptureError),
    #[error("camera {camera}: {error}")]
    Zones { camera: String, error: ZoneError },
    #[error("cannot start a camera thread: {0}")]
    Thread(std::io::Error),
}

/// A BGR24 image, rows packed without padding.
#[derive(Debug, Clone)]
pub struct BgrImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// An 8-bit grey image (for motion), rows packed.
#[derive(Debug, Clone)]
pub struct GreyImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Per-camera counters, shared by its two threads and readable by the console.
///
/// Liveness: `decoded` says the camera is seen, `analysed` that it is watched. A camera whose
/// `decoded` keeps rising while `analysed` stands still for the capture's stall timeout is
/// reported down (`camera_down`, reason [`capture::NOT_ANALYSED`]) until `analysed` moves.
#[derive(Debug, Default)]
pub struct CameraStats {
    /// Frames decoded (every frame of the stream).
    pub decoded: AtomicU64,
    /// Frames whose analysis finished: the detector ran on it, or motion gating had decided
    /// no detection was needed (a frame whose inference failed counts in `errors` instead).
    pub analysed: AtomicU64,
    /// Analysed frames the detector ran on (the rest had no motion).
    pub detected: AtomicU64,
    /// Sampled frames dropped because the analysis was busy.
    pub dropped: AtomicU64,
    /// Video packets sent to the decoder (with [`Self::decoded`]: how many frames the idle
    /// decode mode left undecoded).
    pub packets: AtomicU64,
    /// Gauge: the decoder's mode now ([`capture::DecodeMode`] as 0 every frame, 1 reference
    /// frames only, 2 keyframes only).
    pub decode_mode: AtomicU64,
    /// Gauge: tracks alive after the latest analysed frame (confirmed or not); the capture
    /// thread keeps decoding every frame while any is.
    pub tracks: AtomicU64,
    /// Frame capture → detections available, for frames the detector ran on.
    pub latency: latency::LatencyHistogram,
    /// Open, read, decode, conversion, inference and evidence errors.
    pub errors: AtomicU64,
    /// Reconnection attempts.
    pub reconnects: AtomicU64,
    /// Rule triggers sent to the alert lifecycle.
    pub alerts: AtomicU64,
    /// Media timestamp jumps (back, or far ahead) between consecutive decoded frames; the
    /// camera clock is re-based at each, so the analysis goes on.
    pub discontinuities: AtomicU64,
    /// Times the camera went blind: frames decoded, none analysed, for the stall timeout.
    pub analysis_stalls: AtomicU64,
    /// Packets read from the main stream kept for evidence (cameras with a `sub_url`,
    /// whose `decoded` counts the analysed sub-stream).
    pub main_packets: AtomicU64,
    /// Gauge: confirmed person tracks in view after the latest analysed frame (Home
    /// Assistant's per-camera count).
    pub persons_in_view: AtomicU64,
    /// Gauge: confirmed bicycle/motorcycle (e-bike) tracks in view after the latest
    /// analysed frame.
    pub two_wheelers_in_view: AtomicU64,
    /// Gauge: bytes of packets in the analysed stream's clip ring (at most its budget, see
    /// [`evidence::ring_budget`]).
    pub clip_ring_bytes: AtomicU64,
    /// Gauge: bytes of packets in the main stream's clip ring (cameras with a `sub_url`).
    pub main_ring_bytes: AtomicU64,
    /// The live view of the camera's streams, fed by its capture threads and watched through
    /// the console; here because these counters are what the console already holds of each
    /// camera, and they outlive a camera's restarts, so a viewer stays connected across one.
    pub live: CameraLive,
    /// The decoder of the analysed stream (hardware or software, and why it fell back),
    /// kept here because it outlives the capture's sessions and the camera's restarts.
    pub decoder: hwdec::DecoderState,
}

/// A camera's live feeds: the analysed stream's and, with a `sub_url`, the main stream's.
#[derive(Debug, Default)]
pub struct CameraLive {
    pub analysed: Arc<live::LiveFeed>,
    pub main: Arc<live::LiveFeed>,
}

impl CameraLive {
    fn feeds(&self) -> [&live::LiveFeed; 2] {
        [&self.analysed, &self.main]
    }
}

/// Each analysed camera's id and counters.
pub type Cameras = Vec<(String, Arc<CameraStats>)>;

/// Where the cameras' counters are published once the cameras run (they start after the
/// stages that report them), and again whenever a reload changes the cameras.
pub type CameraSlot = Arc<CameraList>;

/// The running cameras' ids and counters, replaced whole when the set changes.
#[derive(Debug, Default)]
pub struct CameraList(std::sync::RwLock<Option<Cameras>>);

impl CameraList {
    /// The cameras running now; `None` before any camera was started.
    pub fn get(&self) -> Option<Cameras> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes the cameras running now.
    pub fn set(&self, cameras: Cameras) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(cameras);
    }
}

/// A copy of [`CameraStats`] at one moment (readable back, e.g. from a status file; fields
/// missing in older files read as 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsSnapshot {
    pub decoded: u64,
    pub analysed: u64,
    pub detected: u64,
    pub dropped: u64,
    pub packets: u64,
    pub decode_mode: u64,
    pub errors: u64,
    pub reconnects: u64,
    pub alerts: u64,
    pub discontinuities: u64,
    pub analysis_stalls: u64,
    pub main_packets: u64,
    pub clip_ring_bytes: u64,
    pub main_ring_bytes: u64,
    /// Live view: viewers now, fragments remuxed, viewers that fell behind and skipped ahead,
    /// viewers dropped for not reading.
    pub live_viewers: u64,
    pub live_fragments: u64,
    pub live_skips: u64,
    pub live_dropped: u64,
    /// Live remux errors (each restarts the live view at the next keyframe).
    pub live_errors: u64,
    /// Detection latency (frame capture → detections available): counts per bucket of
    /// [`latency::BOUNDS_MS`] (the last bucket: slower), and p50 / p99 since start, ms.
    pub latency_buckets: [u64; latency::BUCKETS],
    pub latency_p50_ms: u64,
    pub latency_p99_ms: u64,
    /// The analysed stream's decoder: hardware or software, and why it fell back.
    pub decoder: hwdec::DecoderStatus,
}

impl CameraStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let buckets = self.latency.counts();
        let ms = |q| latency::quantile_ms(&buckets, q).map_or(0, |v| v.round() as u64);
        StatsSnapshot {
            decoded: g(&self.decoded),
            analysed: g(&self.analysed),
            detected: g(&self.detected),
            dropped: g(&self.dropped),
            packets: g(&self.packets),
            decode_mode: g(&self.decode_mode),
            errors: g(&self.errors),
            reconnects: g(&self.reconnects),
            alerts: g(&self.alerts),
            discontinuities: g(&self.discontinuities),
            analysis_stalls: g(&self.analysis_stalls),
            main_packets: g(&self.main_packets),
            clip_ring_bytes: g(&self.clip_ring_bytes),
            main_ring_bytes: g(&self.main_ring_bytes),
            live_viewers: self.live.feeds().iter().map(|f| f.viewers() as u64).sum(),
            live_fragments: self.live.feeds().iter().map(|f| g(&f.fragments)).sum(),
            live_skips: self.live.feeds().iter().map(|f| g(&f.skips)).sum(),
            live_dropped: self.live.feeds().iter().map(|f| g(&f.dropped)).sum(),
            live_errors: self.live.feeds().iter().map(|f| g(&f.errors)).sum(),
            latency_buckets: buckets,
            latency_p50_ms: ms(0.5),
            latency_p99_ms: ms(0.99),
            decoder: self.decoder.status(),
        }
    }
}

/// Which of a camera's streams a health change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRole {
    /// The analysed stream (`sub_url`, or `url` when there is no sub-stream).
    Analysed,
    /// The main stream read for evidence (cameras with a `sub_url`).
    Main,
}

/// The one `camera_down` alert of a camera, fed by its analysed stream's capture (stream
/// failures and the analysis liveness check) and, with a `sub_url`, by its main-stream
/// reader: down while either is, the reason naming the stream; resolved when both are well.
pub struct HealthReporter {
    camera: String,
    location: Location,
    alerts: Option<AlertBus>,
    /// The camera has a separate main stream: reasons say "sub-stream:" / "main stream:".
    separate: bool,
    /// Both streams' reasons and the one last reported, behind one lock held while the
    /// alert is sent: two threads change it, and sending under the lock keeps the order of
    /// camera_down raises and resolves the order of the changes.
    state: Mutex<HealthState>,
}

#[derive(Default)]
struct HealthState {
    analysed: Option<String>,
    main: Option<String>,
    reported: Option<String>,
}

impl HealthReporter {
    pub fn new(camera: &Camera, config: &Config, alerts: Option<AlertBus>) -> Self {
        HealthReporter {
            camera: camera.id.clone(),
            location: Location::resolve(config, &camera.location),
            alerts,
            separate: camera.sub_url.is_some(),
            state: Mutex::new(HealthState::default()),
        }
    }

    /// `role` went down (`Some(reason)`) or came back (`None`); the alert hears changes of
    /// the camera's combined reason only.
    pub fn set(&self, role: StreamRole, down: Option<String>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match role {
            StreamRole::Analysed => st.analysed = down,
            StreamRole::Main => st.main = down,
        }
        let now = self.reason(&st);
        if now == st.reported {
            return;
        }
        st.reported = now.clone();
        tracing::warn!(camera = %self.camera, down = now.is_some(), reason = now.as_deref().unwrap_or("recovered"), "camera status");
        let readings = match &now {
            Some(reason) => serde_json::json!({ "reason": reason }),
            None => serde_json::json!({ "recovered": true }),
        };
        send_alert(
            &self.alerts,
            camera_input(
                &self.camera,
                AlertKind::CameraDown,
                Level::Yellow,
                &self.location,
                now.is_some(),
                readings,
            ),
        );
    }

    /// Whether `role` is not reported down.
    pub fn is_up(&self, role: StreamRole) -> bool {
        self.state.lock().is_ok_and(|st| match role {
            StreamRole::Analysed => st.analysed.is_none(),
            StreamRole::Main => st.main.is_none(),
        })
    }

    fn reason(&self, st: &HealthState) -> Option<String> {
        if !self.separate {
            return st.analysed.clone();
        }
        let sub = st.analysed.as_ref().map(|r| format!("sub-stream: {r}"));
        let main = st
            .main
            .as_ref()
            .map(|r| format!("main stream: {r} (analysis goes on; evidence from the sub-stream)"));
        match (sub, main) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        }
    }
}

/// The detector shared by every camera of the gateway.
pub type SharedDetector = Arc<Mutex<Box<dyn Detector>>>;

/// A frame on its way from capture to analysis.
pub struct Frame {
    pub seq: u64,
    pub t: f64,
    /// When it was captured ([`Captured::at`]).
    pub at: Instant,
    /// The decoded frame, converted to BGR only for evidence ([`picture`]).
    pub picture: picture::Picture,
    /// The detector input, or `None` when motion gating skipped this frame.
    pub input: Option<Prepared>,
}

/// What the analysis saw on one frame (printed by `gateway detect`, checked by tests).
#[derive(Debug, Clone, Serialize)]
pub struct FrameReport {
    pub seq: u64,
    /// Camera seconds.
    pub t: f64,
    pub width: u32,
    pub height: u32,
    /// Whether the detector ran on this frame.
    pub detected: bool,
    pub objects: Vec<ObjectReport>,
}

/// One detection of a frame.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectReport {
    pub class: &'static str,
    pub score: f32,
    /// `[x1, y1, x2, y2]` in source pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub track: Option<u64>,
    pub zones: Vec<String>,
}

/// How a camera pipeline runs.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub capture: CaptureOptions,
    /// Run the detector only on motion (plus the periodic pass); `false` = every frame.
    pub motion_gating: bool,
    /// Full-frame detector pass at least this often (camera seconds).
    pub full_pass_every_s: f64,
    /// Event clips: seconds before / after the trigger.
    pub clip_pre_s: f64,
    pub clip_post_s: f64,
    /// Where snapshots and clips go (`<dir>/<camera>/…`); `None` = no evidence.
    pub evidence_dir: Option<PathBuf>,
    /// Evidence retention: maximum age and total size.
    pub retention_age: Duration,
    pub retention_bytes: u64,
    /// Detections below this score are left out of [`FrameReport`]s.
    pub report_min_score: f32,
    /// Write the latest frame with reported detections, boxes drawn, to this JPEG (the CLI).
    pub annotate: Option<PathBuf>,
    pub tracker: TrackerOptions,
    /// Where the camera's queue for sensor-linked evidence requests is registered (see
    /// [`linked`]); `None` = no such requests (the CLI, tests).
    pub linked: Option<linked::Registry>,
    /// A live frame that waited longer than this for the shared detector is dropped (and
    /// counted) instead of detected: the detection latency stays bounded however many
    /// cameras share the detector. `None` = never. Default 0.5 s: half of the 1 s latency
    /// goal, the other half left to the inference itself on a busy box.
    pub max_frame_age: Option<Duration>,
    /// The cameras' turns at the shared detector, in the order they asked (shared by every
    /// camera started with clones of these options).
    pub turns: Arc<schedule::Turnstile>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            capture: CaptureOptions::default(),
            motion_gating: true,
            full_pass_every_s: 5.0,
            clip_pre_s: 5.0,
            clip_post_s: 5.0,
            evidence_dir: None,
            retention_age: Duration::from_secs(30 * 24 * 3600),
            retention_bytes: 256 << 20,
            report_min_score: 0.3,
            annotate: None,
            tracker: TrackerOptions::default(),
            linked: None,
            max_frame_age: Some(Duration::from_millis(500)),
            turns: Arc::default(),
        }
    }
}

/// Where a camera pipeline's results go.
#[derive(Clone)]
pub struct Outputs {
    /// Rule edges and camera down/up, as alert inputs.
    pub alerts: Option<AlertBus>,
    /// Per-frame reports (the CLI, tests); a bounded channel: the analysis waits for it.
    pub reports: Option<Sender<FrameReport>>,
}

/// The two halves of one camera pipeline, ready to run on their threads.
pub struct CameraJobs {
    pub stats: Arc<CameraStats>,
    capture: CaptureJob,
    analysis: AnalysisJob,
    /// The main-stream reader of a camera with a `sub_url`.
    main: Option<MainStream>,
}

impl CameraJobs {
    /// Prepares a camera: zones, tracker, channels. Nothing runs yet.
    pub fn new(
        camera: &Camera,
        config: &Config,
        detector: SharedDetector,
        outputs: Outputs,
        options: PipelineOptions,
    ) -> Result<Self, VideoError> {
        let stats = Arc::new(CameraStats::default());
        Self::with_stats(camera, config, detector, outputs, options, stats)
    }

    /// [`Self::new`] counting into existing `stats` (a camera restarted by its supervisor
    /// keeps its counters).
    pub fn with_stats(
        camera: &Camera,
        config: &Config,
        detector: SharedDetector,
        outputs: Outputs,
        options: PipelineOptions,
        stats: Arc<CameraStats>,
    ) -> Result<Self, VideoError> {
        let zones = ZoneRules::new(camera, options.tracker.min_hits).map_err(|error| {
            VideoError::Zones {
                camera: camera.id.clone(),
                error,
            }
        })?;
        let spec = detector
            .lock()
            .map(|d| d.input_spec())
            .unwrap_or(InputSpec {
                width: 416,
                height: 416,
                pad: 114.0,
                shape: InputShape::Fixed,
            });
        let (frame_tx, frame_rx) = crossbeam_channel::bounded::<Frame>(1);
        let spares = spares::Spares::default();
        let (clip_tx, clip_rx) = crossbeam_channel::bounded::<ClipRequest>(8);
        let (linked_tx, linked_rx) = crossbeam_channel::bounded(linked::QUEUE);
        if let Some(registry) = &options.linked {
            registry.register(&camera.id, linked_tx);
        }
        let mut capture_options = options.capture.clone();
        capture_options.analyse_fps = camera.analyse_fps;
        capture_options.hwaccel = hwdec::HwRequest::for_camera(camera);
        let health = Arc::new(HealthReporter::new(camera, config, outputs.alerts.clone()));
        let (main, main_link) =
            MainStream::for_camera(camera, &options, &capture_options, &health, &stats);
        let recorder = ClipRecorder::for_clips(options.clip_pre_s, options.clip_post_s)
            .with_live(stats.live.analysed.clone());
        let clip_mp4 = recorder.mp4_hint();
        let capture = CaptureJob {
            source: camera.analysis_source(),
            options: capture_options,
            stats: stats.clone(),
            recorder,
            sink: CaptureStage {
                frames: frame_tx,
                clips: clip_rx,
                health,
                motion: MotionDetector::new(
                    &camera
                        .masks
                        .iter()
                        .map(|m| m.polygon.clone())
                        .collect::<Vec<_>>(),
                ),
                spec,
                gating: options.motion_gating,
                full_pass_every_s: options.full_pass_every_s,
                last_full: None,
                blocking: options.capture.pace == Pace::AsFastAsAnalysed
                    && matches!(camera.analysis_source(), edge_config::CameraSource::File(_)),
                cancel: CancellationToken::new(),
                stats: stats.clone(),
                still_since: None,
                last_t: 0.0,
                spares: spares.clone(),
                letterbox: picture::Letterbox::default(),
            },
        };
        let analysis = AnalysisJob {
            camera: camera.id.clone(),
            location: Location::resolve(config, &camera.location),
            tz: config.site.tz(),
            frames: frame_rx,
            clips: clip_tx,
            clip_mp4,
            linked: linked_rx,
            main: main_link,
            detector,
            tracker: Tracker::new(options.tracker),
            zones,
            outputs,
            stats: stats.clone(),
            options,
            last_prune: None,
            spares,
        };
        Ok(CameraJobs {
            stats,
            capture,
            analysis,
            main,
        })
    }

    /// Runs both halves to the end on this thread and a helper thread (tests, CLI, bench):
    /// until the input ends (files without looping), or `cancel`.
    pub fn run(self, cancel: CancellationToken) -> Result<StatsSnapshot, VideoError> {
        let CameraJobs {
            stats,
            capture,
            analysis,
            main,
        } = self;
        // The capture (and main-stream) threads stop with the analysis, even when the
        // analysis panicked.
        let token = cancel.child_token();
        let stop = token.clone();
        let main = match main {
            Some(reader) => {
                let token = token.clone();
                let handle = std::thread::Builder::new()
                    .name("video-main-stream".into())
                    .spawn(move || reader.run(token));
                match handle {
                    Ok(h) => Some(h),
                    Err(e) => {
                        stop.cancel();
                        return Err(VideoError::Thread(e));
                    }
                }
            }
            None => None,
        };
        let handle = std::thread::Builder::new()
            .name("video-capture".into())
            .spawn(move || capture.run(token));
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                stop.cancel();
                return Err(VideoError::Thread(e));
            }
        };
        let analysed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| analysis.run()));
        stop.cancel();
        let captured = handle.join();
        let main = main.map_or(Ok(()), |h| h.join());
        if let Err(panic) = analysed.and(captured).and(main) {
            std::panic::resume_unwind(panic);
        }
        Ok(stats.snapshot())
    }
}

/// The analysis' link to a main-stream reader: its requests, and whether it has a picture.
/// The main-stream reader's requests, whether it has a picture, and whether its clips are
/// MP4.
type MainLink = (Sender<Evidence>, Arc<AtomicBool>, Arc<AtomicBool>);

impl MainStream {
    /// The main-stream reader of a camera with a `sub_url`, and the analysis' link to it
    /// (its requests, whether it has a picture); `None` for a camera of one stream.
    fn for_camera(
        camera: &Camera,
        options: &PipelineOptions,
        capture: &CaptureOptions,
        health: &Arc<HealthReporter>,
        stats: &Arc<CameraStats>,
    ) -> (Option<MainStream>, Option<MainLink>) {
        let Some(source) = camera.evidence_source() else {
            return (None, None);
        };
        let (tx, rx) = crossbeam_channel::bounded::<Evidence>(8);
        let ready = Arc::new(AtomicBool::new(false));
        let recorder = ClipRecorder::for_clips(options.clip_pre_s, options.clip_post_s)
            .with_live(stats.live.main.clone());
        let mp4 = recorder.mp4_hint();
        let reader = MainStream {
            source,
            options: capture.clone(),
            recorder,
            requests: rx,
            ready: ready.clone(),
            health: health.clone(),
            stats: stats.clone(),
        };
        (Some(reader), Some((tx, ready, mp4)))
    }
}

struct CaptureJob {
    source: edge_config::CameraSource,
    options: CaptureOptions,
    stats: Arc<CameraStats>,
    recorder: ClipRecorder,
    sink: CaptureStage,
}

impl CaptureJob {
    fn run(mut self, cancel: CancellationToken) {
        self.sink.cancel = cancel.clone();
        capture::run(
            &self.source,
            &self.options,
            &self.stats,
            &mut self.recorder,
            &mut self.sink,
            &cancel,
        );
        self.recorder.end_session();
        self.stats
            .errors
            .fetch_add(self.recorder.failed, Ordering::Relaxed);
        tracing::info!(camera = %self.sink.health.camera, stats = ?self.stats.snapshot(), "capture stopped");
    }
}

/// The capture thread's side: motion gating, letterbox, hand-over, camera status.
struct CaptureStage {
    frames: Sender<Frame>,
    clips: Receiver<ClipRequest>,
    /// The camera's `camera_down`, shared with its main-stream reader.
    health: Arc<HealthReporter>,
    motion: MotionDetector,
    spec: InputSpec,
    gating: bool,
    full_pass_every_s: f64,
    last_full: Option<f64>,
    /// Files analysed as fast as possible wait for the analysis instead of dropping frames
    /// (deterministic tests and benchmarks); live sources never wait.
    blocking: bool,
    cancel: CancellationToken,
    /// The camera's counters: the analysis' track gauge tells whether the camera is idle.
    stats: Arc<CameraStats>,
    /// Camera time since which motion saw nothing (`None`: it saw something last).
    still_since: Option<f64>,
    /// Camera time of the latest frame handed over.
    last_t: f64,
    /// Detector inputs the analysis is done with: the next input is made into them.
    spares: spares::Spares,
    /// Makes the detector input straight from the decoded frame (its swscale context).
    letterbox: picture::Letterbox,
}

impl CaptureStage {
    /// The detector input for `region` of the picture (all of it when `None`); a failure is
    /// counted and logged, and the frame goes on without detection.
    fn prepare(
        &mut self,
        picture: &picture::Picture,
        region: Option<detect::Region>,
    ) -> Option<Prepared> {
        let buffer = self.spares.tensor();
        match self.letterbox.prepare(picture, region, self.spec, buffer) {
            Ok(p) => Some(p),
            Err(e) => {
                let n = self.stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
                if worth_logging(n) {
                    tracing::warn!(error = %e, errors = n, "detector input not made");
                }
                None
            }
        }
    }
}

/// Camera seconds without motion (and without tracks) before a camera counts as idle and
/// its decoder may skip frames ([`capture::CaptureOptions::idle_decode`]).
pub const IDLE_AFTER_S: f64 = 2.0;

impl CaptureSink for CaptureStage {
    fn ready(&mut self) -> bool {
        self.blocking || !self.frames.is_full()
    }

    fn frame(&mut self, c: Captured) -> bool {
        let motion = self.motion.update(&c.grey);
        self.last_t = c.t;
        self.still_since = match motion {
            Some(_) => None,
            None => self.still_since.or(Some(c.t)),
        };
        let full_due = self
            .last_full
            .is_none_or(|last| c.t - last >= self.full_pass_every_s);
        let input = if !self.gating || full_due {
            self.last_full = Some(c.t);
            self.prepare(&c.picture, None)
        } else {
            motion.and_then(|m| {
                let region = motion::region_for(
                    &m,
                    c.picture.width(),
                    c.picture.height(),
                    (self.spec.width, self.spec.height),
                );
                if region.is_none() {
                    self.last_full = Some(c.t);
                }
                self.prepare(&c.picture, region)
            })
        };
        let mut frame = Frame {
            seq: c.seq,
            t: c.t,
            at: c.at,
            picture: c.picture,
            input,
        };
        loop {
            match self.frames.send_timeout(frame, Duration::from_millis(100)) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(f)) => {
                    if self.cancel.is_cancelled() {
                        return false;
                    }
                    frame = f;
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }

    fn status(&mut self, down: Option<String>) {
        self.health.set(StreamRole::Analysed, down);
    }

    fn poll_clips(&mut self, recorder: &mut ClipRecorder, _t: f64) {
        while let Ok(req) = self.clips.try_recv() {
            recorder.request(req);
        }
    }

    fn idle(&self) -> bool {
        self.gating
            && self
                .still_since
                .is_some_and(|since| self.last_t - since >= IDLE_AFTER_S)
            && self.stats.tracks.load(Ordering::Relaxed) == 0
    }
}

fn send_alert(alerts: &Option<AlertBus>, input: AlertInput) {
    if let Some(tx) = alerts {
        // Only fails when the alert task is gone (shutdown): nothing left to tell.
        let _ = tx.blocking_send(input);
    }
}

/// A camera edge as an alert input: `active` raises (or updates) the alert of
/// (`camera:ID`, kind), otherwise resolves it.
fn camera_input(
    camera: &str,
    kind: AlertKind,
    level: Level,
    location: &Location,
    active: bool,
    readings: serde_json::Value,
) -> AlertInput {
    let source = Source::Camera(camera.to_owned());
    let trigger = if active {
        Trigger::Raise {
            source,
            location: location.clone(),
            kind,
            level,
            readings,
        }
    } else {
        Trigger::ResolveSource {
            source,
            kind,
            by: "auto".into(),
        }
    };
    trigger.into()
}

fn alert_kind(kind: CameraRuleKind) -> AlertKind {
    match kind {
        CameraRuleKind::EbikeEntry => AlertKind::EbikeEntry,
        CameraRuleKind::Crowd => AlertKind::Crowd,
        CameraRuleKind::Intrusion => AlertKind::Intrusion,
        CameraRuleKind::Loitering => AlertKind::Loitering,
    }
}

struct AnalysisJob {
    camera: String,
    location: Location,
    tz: chrono_tz::Tz,
    frames: Receiver<Frame>,
    clips: Sender<ClipRequest>,
    /// Whether the analysed stream's clips are MP4 (its codec, set by the capture thread).
    clip_mp4: Arc<AtomicBool>,
    /// Sensor-linked evidence requests, served at the next analysed frame (never waited
    /// for: a camera without frames leaves them to their asker's timeout).
    linked: Receiver<linked::LinkedRequest>,
    /// The main-stream reader's requests and whether it has a picture (cameras with a
    /// `sub_url`); evidence comes from the analysed stream otherwise.
    main: Option<MainLink>,
    detector: SharedDetector,
    tracker: Tracker,
    zones: ZoneRules,
    outputs: Outputs,
    stats: Arc<CameraStats>,
    options: PipelineOptions,
    last_prune: Option<Instant>,
    /// Where each analysed frame's buffers go back to the capture thread.
    spares: spares::Spares,
}

impl AnalysisJob {
    /// Drains frames until the capture side has stopped.
    fn run(mut self) {
        loop {
            match self.frames.recv_timeout(Duration::from_millis(500)) {
                Ok(frame) => self.analyse(frame),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        tracing::info!(camera = %self.camera, stats = ?self.stats.snapshot(), "analysis stopped");
    }

    fn analyse(&mut self, frame: Frame) {
        let (w, h) = (frame.picture.width(), frame.picture.height());
        let detections = frame
            .input
            .as_ref()
            .and_then(|input| self.infer(input, frame.at));
        if detections.is_some() {
            self.stats.latency.record(frame.at.elapsed());
        }
        if frame.input.is_none() || detections.is_some() {
            self.stats.analysed.fetch_add(1, Ordering::Relaxed);
        }
        let mut report_objects = Vec::new();
        match &detections {
            Some(dets) => {
                self.stats.detected.fetch_add(1, Ordering::Relaxed);
                let dets: Vec<_> = dets
                    .iter()
                    .filter(|d| !self.zones.masked(&d.bbox, w, h))
                    .cloned()
                    .collect();
                let ids = self.tracker.update(frame.t, &dets);
                if self.outputs.reports.is_some() || self.options.annotate.is_some() {
                    for (d, id) in dets.iter().zip(ids) {
                        if d.score >= self.options.report_min_score {
                            report_objects.push(ObjectReport {
                                class: d.label(),
                                score: d.score,
                                bbox: [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2],
                                track: id,
                                zones: self.zones.zones_at(&d.bbox, w, h),
                            });
                        }
                    }
                }
            }
            None => self.tracker.coast(frame.t),
        }
        self.count_in_view();
        let local = Utc::now().with_timezone(&self.tz).time();
        let edges = self
            .zones
            .update(frame.t, local, self.tracker.tracks(), w, h);
        for edge in edges {
            self.on_edge(&edge, &frame);
        }
        if let (Some(path), false) = (&self.options.annotate, report_objects.is_empty()) {
            let marks: Vec<Mark> = report_objects
                .iter()
                .map(|o| Mark {
                    bbox: detect::BoxF {
                        x1: o.bbox[0],
                        y1: o.bbox[1],
                        x2: o.bbox[2],
                        y2: o.bbox[3],
                    },
                    label: match o.track {
                        Some(id) => format!("{} {:.2} #{id}", o.class, o.score),
                        None => format!("{} {:.2}", o.class, o.score),
                    },
                    highlight: false,
                })
                .collect();
            let written = frame
                .picture
                .bgr()
                .map_err(|e| e.to_string())
                .and_then(|image| {
                    evidence::snapshot(&image, &marks, path).map_err(|e| e.to_string())
                });
            if let Err(e) = written {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "annotated frame not written");
            }
        }
        if let Some(tx) = &self.outputs.reports {
            let report = FrameReport {
                seq: frame.seq,
                t: frame.t,
                width: w,
                height: h,
                detected: detections.is_some(),
                objects: report_objects,
            };
            let _ = tx.send(report);
        }
        self.serve_linked(&frame);
        self.prune();
        self.spares.give(frame);
    }

    /// Answers the sensor-linked evidence requests waiting: a snapshot of this frame (no
    /// boxes) and a clip, like a rule's own evidence.
    fn serve_linked(&mut self, frame: &Frame) {
        while let Ok(req) = self.linked.try_recv() {
            if Instant::now() > req.deadline {
                continue;
            }
            let gathered = match self.options.evidence_dir.clone() {
                Some(dir) => {
                    let base = self.evidence_base(&dir, &format!("linked-{}", req.name));
                    self.gather_evidence(&base, Vec::new(), frame)
                }
                None => linked::Gathered::default(),
            };
            tracing::info!(camera = %self.camera, request = %req.name, snapshot = ?gathered.snapshot, "linked evidence recorded");
            // The asker may have given up: the files stay with the camera's evidence.
            let _ = req.reply.send(gathered);
        }
    }

    /// Updates the in-view gauges from the confirmed tracks (COCO 0 person; 1 bicycle and
    /// 3 motorcycle, which the tracker groups as one).
    fn count_in_view(&self) {
        let min_hits = self.tracker.options().min_hits;
        let (mut persons, mut two_wheelers) = (0, 0);
        for t in self
            .tracker
            .tracks()
            .iter()
            .filter(|t| t.confirmed(min_hits))
        {
            match t.class {
                0 => persons += 1,
                1 | 3 => two_wheelers += 1,
                _ => {}
            }
        }
        self.stats.persons_in_view.store(persons, Ordering::Relaxed);
        let alive = self.tracker.tracks().len() as u64;
        self.stats.tracks.store(alive, Ordering::Relaxed);
        let two = &self.stats.two_wheelers_in_view;
        two.store(two_wheelers, Ordering::Relaxed);
    }

    /// Runs the shared detector on a frame captured at `at`; a failure is counted and
    /// logged (rate-limited), `None`. A live frame that waited for the detector longer than
    /// [`PipelineOptions::max_frame_age`] is not run: it is counted in `dropped` (`None`) —
    /// with many cameras on one detector, latency stays bounded and the detector spends its
    /// time on fresh frames.
    fn infer(&self, input: &Prepared, at: Instant) -> Option<Vec<detect::Detection>> {
        let _turn = self.options.turns.enter();
        let result = match self.detector.lock() {
            Ok(_) if self.stale(at) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Ok(mut d) => d.infer(input),
            Err(_) => Err(DetectError::Inference("detector lock poisoned".into())),
        };
        match result {
            Ok(d) => Some(d),
            Err(e) => {
                let n = self.stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
                if worth_logging(n) {
                    tracing::warn!(camera = %self.camera, error = %e, errors = n, "detection failed");
                }
                None
            }
        }
    }

    /// Whether a frame captured at `at` is too old to be worth detecting (live sources only:
    /// files analysed as fast as possible never drop).
    fn stale(&self, at: Instant) -> bool {
        self.options.capture.pace == Pace::Realtime
            && self
                .options
                .max_frame_age
                .is_some_and(|max| at.elapsed() > max)
    }

    fn on_edge(&mut self, edge: &RuleEdge, frame: &Frame) {
        let kind = alert_kind(edge.kind);
        if !edge.active {
            tracing::info!(camera = %self.camera, kind = %kind, "camera rule cleared");
            send_alert(
                &self.outputs.alerts,
                camera_input(
                    &self.camera,
                    kind,
                    edge.level,
                    &self.location,
                    false,
                    serde_json::Value::Null,
                ),
            );
            return;
        }
        self.stats.alerts.fetch_add(1, Ordering::Relaxed);
        let objects: Vec<serde_json::Value> = self
            .tracker
            .tracks()
            .iter()
            .filter(|tr| edge.tracks.contains(&tr.id))
            .map(|tr| {
                serde_json::json!({
                    "track": tr.id,
                    "class": detect::LABELS.get(tr.class).copied().unwrap_or("?"),
                    "score": (tr.best_score * 100.0).round() / 100.0,
                    "box": [tr.bbox.x1.round(), tr.bbox.y1.round(), tr.bbox.x2.round(), tr.bbox.y2.round()],
                })
            })
            .collect();
        let mut readings = serde_json::json!({
            "rule": edge.kind.as_str(),
            "zone": edge.zone,
            "camera_time_s": (frame.t * 100.0).round() / 100.0,
            "objects": objects,
        });
        if let Some(dir) = self.options.evidence_dir.clone() {
            self.record_evidence(&dir, edge, frame, &mut readings);
        }
        tracing::info!(camera = %self.camera, kind = %kind, zone = %edge.zone, tracks = ?edge.tracks, "camera rule triggered");
        send_alert(
            &self.outputs.alerts,
            camera_input(
                &self.camera,
                kind,
                edge.level,
                &self.location,
                true,
                readings,
            ),
        );
    }

    /// A snapshot with boxes and an event clip for a triggered rule; their paths go into
    /// `readings`.
    fn record_evidence(
        &mut self,
        dir: &std::path::Path,
        edge: &RuleEdge,
        frame: &Frame,
        readings: &mut serde_json::Value,
    ) {
        let base = self.evidence_base(dir, &format!("{}-{}", edge.kind.as_str(), frame.seq));
        let min_hits = self.tracker.options().min_hits;
        let marks = evidence_marks(edge, self.tracker.tracks(), min_hits);
        let got = self.gather_evidence(&base, marks, frame);
        if let Some(stream) = got.stream {
            readings["evidence_stream"] = serde_json::json!(stream);
        }
        if let Some(jpg) = got.snapshot {
            readings["snapshot"] = serde_json::json!(jpg);
        }
        if let Some(clip) = got.clip {
            readings["clip"] = serde_json::json!(clip);
        }
    }

    /// `<dir>/<camera>/<time>-<what>`: the evidence files' path without extension. No `.`
    /// in it: the extension is set on it (a `.` in the milliseconds made two alerts of the
    /// same second share one file name).
    fn evidence_base(&self, dir: &std::path::Path, what: &str) -> PathBuf {
        let stamp = Utc::now().format("%Y%m%dT%H%M%S-%3f");
        dir.join(sanitize(&self.camera))
            .join(format!("{stamp}-{}", sanitize(what)))
    }

    /// A snapshot of `frame` with `marks` and an event clip at `base`: what was written or
    /// asked for.
    fn gather_evidence(
        &mut self,
        base: &std::path::Path,
        marks: Vec<Mark>,
        frame: &Frame,
    ) -> linked::Gathered {
        let mut got = linked::Gathered::default();
        let jpg = base.with_extension("jpg");
        // A camera with a sub-stream takes its evidence from the main stream while that
        // has a picture, else from the analysed frame and stream.
        let main = self
            .main
            .as_ref()
            .filter(|(_, ready, _)| ready.load(Ordering::Relaxed))
            .map(|(tx, _, mp4)| (tx.clone(), mp4.load(Ordering::Relaxed)));
        if self.main.is_some() {
            got.stream = Some(if main.is_some() { "main" } else { "sub" });
        }
        match frame.picture.bgr() {
            Ok(analysed) => {
                let request = SnapshotRequest {
                    path: jpg.clone(),
                    marks,
                    analysed,
                };
                if self.snapshot(main.as_ref().map(|(tx, _)| tx), request) {
                    got.snapshot = Some(jpg);
                }
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(camera = %self.camera, error = %e, "snapshot failed");
            }
        }
        let analysed_clip = evidence::clip_path(base, self.clip_mp4.load(Ordering::Relaxed));
        let sent = match &main {
            Some((tx, mp4)) => {
                let path = evidence::clip_path(base, *mp4);
                match tx.try_send(Evidence::Clip(ClipRequest { path: path.clone() })) {
                    Ok(()) => Ok(path),
                    Err(_) => self.send_clip(analysed_clip),
                }
            }
            None => self.send_clip(analysed_clip),
        };
        match sent {
            Ok(path) => got.clip = Some(path),
            Err(_) => {
                tracing::warn!(camera = %self.camera, "clip request dropped (capture busy or stopped)")
            }
        }
        got
    }

    /// Asks the capture thread for a clip at `path`; the path once asked.
    fn send_clip(&self, path: PathBuf) -> Result<PathBuf, ()> {
        self.clips
            .try_send(ClipRequest { path: path.clone() })
            .map(|()| path)
            .map_err(|_| ())
    }

    /// A snapshot: asked of the main-stream reader (`main`), else (or when it is busy)
    /// written here from the analysed frame; whether one is (being) written.
    fn snapshot(&self, main: Option<&Sender<Evidence>>, req: SnapshotRequest) -> bool {
        let Some(tx) = main else {
            return self.local_snapshot(req);
        };
        match tx.try_send(Evidence::Snapshot(req)) {
            Ok(()) => true,
            Err(e) => match e.into_inner() {
                Evidence::Snapshot(req) => self.local_snapshot(req),
                Evidence::Clip(_) => false,
            },
        }
    }

    fn local_snapshot(&self, req: SnapshotRequest) -> bool {
        match evidence::snapshot(&req.analysed, &req.marks, &req.path) {
            Ok(()) => true,
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(camera = %self.camera, error = %e, "snapshot failed");
                false
            }
        }
    }

    /// Evidence retention, at most once a minute.
    fn prune(&mut self) {
        let Some(dir) = &self.options.evidence_dir else {
            return;
        };
        if self
            .last_prune
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.last_prune = Some(Instant::now());
        match evidence::prune(
            dir,
            self.options.retention_age,
            self.options.retention_bytes,
        ) {
            Ok(p) if p.files > 0 => {
                tracing::info!(files = p.files, bytes = p.bytes, "evidence pruned")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "evidence retention failed"),
        }
    }
}

/// Whether the `n`th occurrence of a repeated per-frame problem is logged: the first few,
/// then one in a hundred (a broken stream or runtime must not flood the log; the counters
/// have every one).
/// The boxes of an alert's snapshot: the confirmed objects the triggering rule would count
/// (its `min_score`), the ones that triggered it highlighted; a low-score detection the rule
/// ignores is not drawn, so the picture reads at a glance.
fn evidence_marks(edge: &RuleEdge, tracks: &[track::Track], min_hits: u32) -> Vec<Mark> {
    tracks
        .iter()
        .filter(|tr| tr.confirmed(min_hits))
        .filter(|tr| tr.best_score >= edge.min_score || edge.tracks.contains(&tr.id))
        .map(|tr| Mark {
            bbox: tr.bbox,
            label: format!(
                "{} {:.2} #{}",
                detect::LABELS.get(tr.class).copied().unwrap_or("?"),
                tr.score,
                tr.id
            ),
            highlight: edge.tracks.contains(&tr.id),
        })
        .collect()
}

fn worth_logging(n: u64) -> bool {
    n <= 5 || n.is_multiple_of(100)
}

/// A camera id as a directory name.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The running cameras, for the daemon and console.
pub struct VideoHandle {
    /// `(camera id, counters)` of every camera running at start.
    pub cameras: Vec<(String, Arc<CameraStats>)>,
    /// Starts and stops cameras when a reload changes them (`None`: no camera runs).
    pub control: Option<Arc<VideoControl>>,
    /// The running cameras' queues for sensor-linked evidence (see [`linked`]).
    pub linked: linked::Registry,
}

/// Loads the detector once and starts every enabled camera: capture threads in the Inputs
/// stage, analysis threads in the Processing stage. Evidence goes to `<data_dir>/evidence`
/// (a quarter of `storage.quota_mb`, 30 days). With no enabled camera nothing is loaded.
/// A missing ONNX Runtime or model is an error here (the caller logs it and runs without
/// cameras), never a panic.
pub fn spawn(
    config: Arc<Config>,
    stages: &Stages,
    alerts: AlertBus,
    data_dir: &Path,
) -> Result<VideoHandle, VideoError> {
    if config.cameras.iter().all(|c| !c.enabled) {
        return Ok(VideoHandle {
            cameras: Vec::new(),
            control: None,
            linked: linked::Registry::default(),
        });
    }
    capture::init_ffmpeg()?;
    let detector: SharedDetector = Arc::new(Mutex::new(Box::new(OrtDetector::from_config(
        &config.detector,
    )?)));
    let registry = linked::Registry::default();
    let options = PipelineOptions {
        capture: CaptureOptions {
            idle_decode: idle_decode_from_env(),
            skip_loop_filter: std::env::var(SKIP_LOOP_FILTER_ENV).is_ok_and(|v| v == "1"),
            ..CaptureOptions::default()
        },
        evidence_dir: Some(data_dir.join("evidence")),
        linked: Some(registry.clone()),
        retention_bytes: config.storage.quota_mb.saturating_mul(1 << 20) / 4,
        ..PipelineOptions::default()
    };
    let control = VideoControl {
        stages: stages.clone(),
        detector,
        options,
        alerts,
        running: Mutex::new(Vec::new()),
        published: std::sync::OnceLock::new(),
    };
    for camera in config.cameras.iter().filter(|c| c.enabled) {
        control.start(camera, &config)?;
    }
    Ok(VideoHandle {
        cameras: control.cameras(),
        control: Some(Arc::new(control)),
        linked: registry,
    })
}

/// The environment variable that chooses what an idle camera's decoder decodes: `all`,
/// `nonref` (the default) or `key` (see [`capture::DecodeMode`]); for measurements.
pub const IDLE_DECODE_ENV: &str = "SHOUWANG_IDLE_DECODE";

/// `1` turns [`capture::CaptureOptions::skip_loop_filter`] on; for measurements.
pub const SKIP_LOOP_FILTER_ENV: &str = "SHOUWANG_SKIP_LOOP_FILTER";

/// [`IDLE_DECODE_ENV`], or the default when unset; an unknown value is logged and ignored.
fn idle_decode_from_env() -> capture::DecodeMode {
    let Ok(value) = std::env::var(IDLE_DECODE_ENV) else {
        return capture::DecodeMode::default();
    };
    capture::DecodeMode::parse(&value).unwrap_or_else(|| {
        tracing::warn!(%value, "{IDLE_DECODE_ENV} is all, nonref or key; using the default");
        capture::DecodeMode::default()
    })
}

/// The camera pipelines of one gateway: what starts one, and the ones running.
pub struct VideoControl {
    stages: Stages,
    /// One model for every camera (loaded once; inference is serialised by its lock).
    detector: SharedDetector,
    options: PipelineOptions,
    alerts: AlertBus,
    /// Running cameras with the token that retires each. A std mutex: held only to push,
    /// remove or copy entries, by the reload task and start-up.
    running: Mutex<Vec<RunningCamera>>,
    /// Where the list is published for status, metrics and Home Assistant.
    published: std::sync::OnceLock<CameraSlot>,
}

/// One running camera: its configuration (to tell a change), counters, and retirement.
struct RunningCamera {
    camera: Camera,
    stats: Arc<CameraStats>,
    retire: tokio_util::sync::CancellationToken,
}

impl VideoControl {
    /// The running cameras' ids and counters.
    pub fn cameras(&self) -> Cameras {
        self.lock()
            .iter()
            .map(|r| (r.camera.id.clone(), r.stats.clone()))
            .collect()
    }

    /// Publishes the running cameras to `slot` now and after every reload.
    pub fn publish_to(&self, slot: CameraSlot) {
        slot.set(self.cameras());
        let _ = self.published.set(slot);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RunningCamera>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the enabled cameras of a reloaded `config`: a running camera that is gone,
    /// disabled or configured differently stops; one not running starts; every other camera
    /// runs on untouched (same pipeline, same counters). Returns notes for the reload's
    /// outcome (a camera that failed to start).
    pub fn reconfigure(&self, config: &Arc<Config>) -> Vec<String> {
        let wanted: Vec<&Camera> = config.cameras.iter().filter(|c| c.enabled).collect();
        let same = |a: &Camera, b: &Camera| {
            serde_json::to_value(a)
                .ok()
                .zip(serde_json::to_value(b).ok())
                .is_some_and(|(a, b)| a == b)
        };
        let mut running = self.lock();
        running.retain(|r| {
            let keep = wanted.iter().any(|c| same(c, &r.camera));
            if !keep {
                tracing::info!(camera = %r.camera.id, "camera stopped by a reload");
                r.retire.cancel();
            }
            keep
        });
        let start: Vec<&Camera> = wanted
            .into_iter()
            .filter(|c| !running.iter().any(|r| r.camera.id == c.id))
            .collect();
        drop(running);
        let mut notes = Vec::new();
        for camera in start {
            if let Err(e) = self.start(camera, config) {
                notes.push(format!("camera {} did not start: {e}", camera.id));
            }
        }
        if let Some(slot) = self.published.get() {
            slot.set(self.cameras());
        }
        notes
    }

    /// Starts `camera`, supervised: a camera whose capture or analysis ends or panics
    /// outside shutdown is a fault, and starts again with its counters.
    fn start(&self, camera: &Camera, config: &Arc<Config>) -> Result<(), VideoError> {
        let outputs = Outputs {
            alerts: Some(self.alerts.clone()),
            reports: None,
        };
        let jobs = CameraJobs::new(
            camera,
            config,
            self.detector.clone(),
            outputs.clone(),
            self.options.clone(),
        )?;
        let stats = jobs.stats.clone();
        tracing::info!(camera = %camera.id, url = %camera.shown_url(), sub_url = camera.sub_url.as_deref().map(edge_config::redact_url), fps = camera.analyse_fps, "camera started");
        let mut first = Some(jobs);
        let (cam, config, detector, options) = (
            camera.clone(),
            config.clone(),
            self.detector.clone(),
            self.options.clone(),
        );
        let run_stats = stats.clone();
        let name = format!("camera:{}", camera.id);
        let retire =
            self.stages
                .supervise_blocking(Stage::Inputs, name, Severity::Degraded, move |token| {
                    let jobs = match first.take() {
                        Some(jobs) => jobs,
                        None => CameraJobs::with_stats(
                            &cam,
                            &config,
                            detector.clone(),
                            outputs.clone(),
                            options.clone(),
                            run_stats.clone(),
                        )
                        .map_err(|e| e.to_string())?,
                    };
                    jobs.run(token).map(drop).map_err(|e| e.to_string())
                });
        self.lock().push(RunningCamera {
            camera: camera.clone(),
            stats,
            retire,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_snapshot_draws_only_what_the_rule_counts_and_highlights_the_trigger() {
        let mut tracker = Tracker::new(TrackerOptions::default());
        let det = |class, score, x: f32| detect::Detection {
            class,
            score,
            bbox: detect::BoxF {
                x1: x,
                y1: 100.0,
                x2: x + 60.0,
                y2: 220.0,
            },
        };
        // An e-bike (motorcycle 0.82), a person (0.55) and a dubious bicycle (0.47), for
        // long enough to be confirmed; the rule counts from 0.5.
        let frame = [det(3, 0.82, 10.0), det(0, 0.55, 200.0), det(1, 0.47, 400.0)];
        for i in 0..6 {
            tracker.update(f64::from(i) * 0.2, &frame);
        }
        let bike = tracker.tracks().iter().find(|t| t.class == 3).unwrap().id;
        let edge = RuleEdge {
            kind: CameraRuleKind::EbikeEntry,
            zone: "lift".into(),
            level: Level::Orange,
            active: true,
            tracks: vec![bike],
            min_score: 0.5,
        };
        let min_hits = tracker.options().min_hits;
        let marks = evidence_marks(&edge, tracker.tracks(), min_hits);
        let drawn: Vec<(&str, bool)> = marks
            .iter()
            .map(|m| (m.label.split(' ').next().unwrap_or(""), m.highlight))
            .collect();
        assert_eq!(drawn.len(), 2, "{drawn:?}");
        assert!(drawn.contains(&("motorcycle", true)), "{drawn:?}");
        assert!(drawn.contains(&("person", false)), "{drawn:?}");
    }

    fn reporter(separate: bool) -> HealthReporter {
        HealthReporter {
            camera: "cam-gate".into(),
            location: Location::default(),
            alerts: None,
            separate,
            state: Mutex::new(HealthState::default()),
        }
    }

    fn reported(r: &HealthReporter) -> Option<String> {
        r.state.lock().unwrap().reported.clone()
    }

    #[test]
    fn a_camera_is_down_while_either_stream_is_and_up_when_both_are() {
        let r = reporter(true);
        r.set(StreamRole::Main, Some("Server returned 401".into()));
        assert_eq!(
            reported(&r).as_deref(),
            Some(
                "main stream: Server returned 401 (analysis goes on; evidence from the sub-stream)"
            )
        );
        assert!(!r.is_up(StreamRole::Main) && r.is_up(StreamRole::Analysed));
        r.set(StreamRole::Analysed, Some("stalled".into()));
        assert!(reported(&r)
            .unwrap()
            .starts_with("sub-stream: stalled; main stream: "));
        r.set(StreamRole::Main, None);
        assert_eq!(reported(&r).as_deref(), Some("sub-stream: stalled"));
        r.set(StreamRole::Analysed, None);
        assert_eq!(reported(&r), None, "resolved once both are well");
        // A camera with one stream keeps its reasons as they are.
        let single = reporter(false);
        single.set(StreamRole::Analysed, Some("stalled".into()));
        assert_eq!(reported(&single).as_deref(), Some("stalled"));
    }

    #[test]
    fn camera_stats_show_decoded_analysed_and_discontinuities_and_read_older_snapshots() {
        let stats = CameraStats::default();
        stats.decoded.store(100, Ordering::Relaxed);
        stats.analysed.store(20, Ordering::Relaxed);
        stats.discontinuities.store(1, Ordering::Relaxed);
        let json = serde_json::to_value(stats.snapshot()).unwrap();
        assert_eq!(
            (
                &json["decoded"],
                &json["analysed"],
                &json["discontinuities"],
                &json["analysis_stalls"]
            ),
            (&100.into(), &20.into(), &1.into(), &0.into())
        );
        let old: StatsSnapshot =
            serde_json::from_str(r#"{"decoded":5,"analysed":1,"dropped":2}"#).unwrap();
        assert_eq!((old.decoded, old.discontinuities), (5, 0));
    }
}
