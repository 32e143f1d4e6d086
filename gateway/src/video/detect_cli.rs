//! `gateway detect`: the installer's tool. Runs the detector (and tracker, and optionally a
//! configured camera's zones) on an image, a clip or a live stream and prints the detections
//! of every analysed frame: class, score, box, track id, zones; then the camera's counters
//! (frames decoded and analysed, timestamp discontinuities, …).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};
use clap::Args;
use edge_config::{Camera, Config};
use tokio_util::sync::CancellationToken;

use super::capture::{self, CaptureOptions, Pace};
use super::detect::OrtDetector;
use super::{CameraJobs, FrameReport, Outputs, PipelineOptions, SharedDetector, StatsSnapshot};

/// Arguments of `gateway detect`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  gateway detect --input vendor/footage/vtest.avi --max-seconds 5
  gateway detect --input photo.jpg --annotate /tmp/out.jpg
  gateway detect --input rtsp://10.0.0.5/stream1 --zones-from /etc/shouwang/gateway.toml --camera cam-b1-lobby --json")]
pub struct DetectArgs {
    /// An image (JPEG/PNG), a video file, or an `rtsp://` / `http://` URL.
    #[arg(long)]
    pub input: String,
    /// Model name (`<models-dir>/<NAME>.onnx`); default from the config or `yolox_nano`.
    #[arg(long)]
    pub model: Option<String>,
    /// Directory of the model files; default from the config or `models`.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Path of libonnxruntime.so; default from the config or the standard search.
    #[arg(long)]
    pub onnxruntime: Option<PathBuf>,
    /// Take zones, masks, rules and analysis rate from this gateway configuration…
    #[arg(long, requires = "camera")]
    pub zones_from: Option<PathBuf>,
    /// …for this camera id.
    #[arg(long, requires = "zones_from")]
    pub camera: Option<String>,
    /// Frames analysed per second of video (default: the camera's, else 5).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Stop after this many seconds of video.
    #[arg(long)]
    pub max_seconds: Option<f64>,
    /// Print detections at or above this score.
    #[arg(long, default_value_t = 0.3)]
    pub min_score: f32,
    /// Gate the detector on motion as the daemon does (default: detect on every frame).
    #[arg(long)]
    pub motion: bool,
    /// One JSON object per frame instead of text, then one `{"stats": {…}}` with the
    /// camera's counters (decoded, analysed, discontinuities, …).
    #[arg(long)]
    pub json: bool,
    /// Write the last frame with detections, boxes drawn, to this JPEG.
    #[arg(long)]
    pub annotate: Option<PathBuf>,
}

const MINIMAL_CONFIG: &str =
    "[site]\nid = \"detect\"\nname = \"gateway detect\"\nkind = \"compound\"\n";

/// Runs `gateway detect`.
pub fn run(args: &DetectArgs) -> anyhow::Result<()> {
    let (config, camera) = camera_of(args)?;
    capture::init_ffmpeg()?;
    let detector = OrtDetector::from_config(&detector_config(&config, args))?;
    let detector: SharedDetector = Arc::new(Mutex::new(Box::new(detector)));
    let (tx, rx) = crossbeam_channel::bounded::<FrameReport>(16);
    let options = PipelineOptions {
        capture: CaptureOptions {
            pace: Pace::AsFastAsAnalysed,
            loop_files: false,
            max_seconds: args.max_seconds,
            ..CaptureOptions::default()
        },
        motion_gating: args.motion,
        annotate: args.annotate.clone(),
        report_min_score: args.min_score,
        ..PipelineOptions::default()
    };
    let outputs = Outputs {
        alerts: None,
        reports: Some(tx),
    };
    let jobs = CameraJobs::new(&camera, &Config::clone(&config), detector, outputs, options)?;
    let json = args.json;
    let printer = std::thread::spawn(move || print_reports(rx, json));
    let stats = jobs.run(CancellationToken::new())?;
    let frames = printer.join().unwrap_or(0);
    if json {
        println!("{}", serde_json::json!({ "stats": stats }));
    }
    eprintln!("{}", summary(frames, &stats));
    if frames == 0 {
        bail!(
            "no frame could be read from {} (see the log above)",
            edge_config::redact_url(&args.input)
        );
    }
    if let Some(path) = &args.annotate {
        eprintln!("annotated frame: {}", path.display());
    }
    Ok(())
}

/// The camera to analyse: from `--zones-from FILE --camera ID`, or a bare one on `--input`.
fn camera_of(args: &DetectArgs) -> anyhow::Result<(Config, Camera)> {
    let (config, mut camera) = match (&args.zones_from, &args.camera) {
        (Some(file), Some(id)) => {
            let config = edge_config::load(file)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("loading {}", file.display()))?;
            let Some(camera) = config.cameras.iter().find(|c| c.id == *id).cloned() else {
                bail!("{}: no camera with id {id:?}", file.display());
            };
            (config, camera)
        }
        _ => {
            let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
            let config = edge_config::parse(MINIMAL_CONFIG, "<detect>", &cwd)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let camera: Camera = serde_json::from_value(serde_json::json!({
                "id": "detect", "url": args.input, "location": { "area": "detect" },
            }))?;
            (config, camera)
        }
    };
    camera.url = args.input.clone();
    // `--input` is the one stream analysed (the camera's login, if configured, still applies).
    camera.sub_url = None;
    if let Some(fps) = args.fps {
        camera.analyse_fps = fps;
    }
    Ok((config, camera))
}

/// The configuration's detector with the command line's overrides.
fn detector_config(config: &Config, args: &DetectArgs) -> edge_config::Detector {
    let mut d = config.detector.clone();
    if let Some(m) = &args.model {
        d.model = m.clone();
    }
    if let Some(dir) = &args.models_dir {
        d.models_dir = dir.clone();
    }
    if let Some(o) = &args.onnxruntime {
        d.onnxruntime = Some(o.clone());
    }
    d
}

/// Prints each frame report (JSON lines or text) until the pipeline ends; returns how many.
fn print_reports(rx: crossbeam_channel::Receiver<FrameReport>, json: bool) -> u64 {
    let mut frames = 0u64;
    for report in rx {
        frames += 1;
        if json {
            match serde_json::to_string(&report) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("cannot encode frame {}: {e}", report.seq),
            }
        } else {
            println!("{}", text(&report));
        }
    }
    frames
}

/// The counters after a run, e.g. `20 frame(s) reported; decoded 100, analysed 20, …`.
fn summary(frames: u64, s: &StatsSnapshot) -> String {
    format!(
        "{frames} frame(s) reported; decoded {}, analysed {}, detector runs {}, dropped {}, \
         timestamp discontinuities {}, analysis stalls {}, errors {}",
        s.decoded,
        s.analysed,
        s.detected,
        s.dropped,
        s.discontinuities,
        s.analysis_stalls,
        s.errors
    )
}

/// `frame 12 t=2.40s  person 0.87 [10,20,50,120] #3 zones=door; …`
fn text(r: &FrameReport) -> String {
    let mut s = format!("frame {} t={:.2}s", r.seq, r.t);
    if !r.detected {
        s.push_str("  (no motion)");
    }
    for o in &r.objects {
        let b = o.bbox;
        s.push_str(&format!(
            "  {} {:.2} [{:.0},{:.0},{:.0},{:.0}]",
            o.class, o.score, b[0], b[1], b[2], b[3]
        ));
        if let Some(id) = o.track {
            s.push_str(&format!(" #{id}"));
        }
        if !o.zones.is_empty() {
            s.push_str(&format!(" zones={}", o.zones.join(",")));
        }
        s.push(';');
    }
    s
}
