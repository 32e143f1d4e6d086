//! Hardware decoding (issue 18) on a box without the hardware: a camera configured for
//! VAAPI, V4L2 M2M or `auto` still has its real RTSP stream (GStreamer's RTSP server,
//! `sim camera`) analysed, decoded in software, and its status (`status.json`'s
//! `cameras.<id>.decoder`) says so and why.
//!
//! This machine has no /dev/dri and no V4L2 M2M device: the hardware path cannot succeed
//! here, so these tests check the fallback for real (FFmpeg's own device creation and
//! decoder opening fail); on a box with the hardware, they check only that frames are
//! analysed whichever decoder runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edge_config::{Config, HwAccel};
use gateway::video::capture::{self, CaptureOptions};
use gateway::video::hwdec::Backend;
use gateway::video::{CameraJobs, Outputs, PipelineOptions, SharedDetector, StatsSnapshot};
use simulators::camera::{serve, CameraServer, Mount};
use tokio_util::sync::CancellationToken;

#[path = "support/blind.rs"]
mod blind;

/// Frames a camera must have analysed for the test to count it as watched.
const ANALYSED: u64 = 5;

fn footage(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vendor/footage")
        .join(name)
}

/// A real RTSP camera (H.264, 320 px wide) on a free loopback port.
fn rtsp_camera() -> (CameraServer, String) {
    let mount = Mount::new("/cam0", footage("vtest.avi")).scaled_to(320);
    let server = serve(vec![mount], 0).expect("GStreamer RTSP server (./x deps)");
    let url = server.url("/cam0").expect("mounted").to_owned();
    (server, url)
}

fn config(url: &str, hwaccel: &str) -> Config {
    let text = format!(
        "[site]\nid = \"t1\"\nname = \"Test\"\nkind = \"compound\"\n\n\
         [[locations.areas]]\nid = \"lobby\"\nname = \"lobby\"\nkind = \"lobby\"\n\n\
         [[cameras]]\nid = \"cam-lobby\"\nurl = \"{url}\"\nlocation = {{ area = \"lobby\" }}\n\
         analyse_fps = 5\n{hwaccel}\n"
    );
    edge_config::parse(&text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the configured camera on its live stream until it has analysed [`ANALYSED`]
/// frames (or a minute passed), then stops it; returns its counters.
fn analyse(config: &Config) -> StatsSnapshot {
    capture::init_ffmpeg().unwrap();
    let detector: SharedDetector = blind::blind(Duration::ZERO);
    let outputs = Outputs {
        alerts: None,
        reports: None,
    };
    let options = PipelineOptions {
        capture: CaptureOptions::default(),
        ..PipelineOptions::default()
    };
    let jobs = CameraJobs::new(&config.cameras[0], config, detector, outputs, options).unwrap();
    let stats = jobs.stats.clone();
    let cancel = CancellationToken::new();
    let run = std::thread::spawn({
        let cancel = cancel.clone();
        move || jobs.run(cancel)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.analysed.load(Ordering::Relaxed) < ANALYSED && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    cancel.cancel();
    run.join().expect("camera threads").expect("camera ran")
}

/// Whether this box has neither a DRM render node nor any V4L2 device.
fn no_video_hardware() -> bool {
    let video = std::fs::read_dir("/dev").is_ok_and(|d| {
        d.filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("video"))
    });
    !video && !Path::new(HwAccel::DEFAULT_VAAPI_DEVICE).exists()
}

/// Frames analysed, decoded in software after one fallback whose reason contains every
/// part of `reason`; the same as `status.json` shows it.
fn assert_software_because(stats: &StatsSnapshot, requested: HwAccel, reason: &[&str]) {
    assert!(stats.analysed >= ANALYSED, "analysed: {stats:?}");
    let d = &stats.decoder;
    assert_eq!(
        (d.requested, d.in_use),
        (requested, Backend::Software),
        "{d:?}"
    );
    assert_eq!(d.fallbacks, 1, "one fallback, not one per session: {d:?}");
    let why = d.fallback.as_deref().unwrap_or_default();
    for part in reason {
        assert!(why.contains(part), "{part:?} not in the reason {why:?}");
    }
    let json = serde_json::to_value(stats).unwrap();
    assert_eq!(json["decoder"]["in_use"], "software", "{json}");
    assert_eq!(json["decoder"]["requested"], requested.as_str(), "{json}");
    assert_eq!(json["decoder"]["fallback"], why, "{json}");
}

#[test]
fn a_vaapi_camera_on_a_device_that_is_no_gpu_is_analysed_in_software_and_says_why() {
    // /dev/null exists but is no VA display: FFmpeg's own device creation fails.
    let (_server, url) = rtsp_camera();
    let stats = analyse(&config(
        &url,
        "hwaccel = \"vaapi\"\nhwaccel_device = \"/dev/null\"",
    ));
    assert_software_because(
        &stats,
        HwAccel::Vaapi,
        &["vaapi: cannot open device /dev/null"],
    );
}

#[test]
fn a_missing_vaapi_device_is_named_in_the_fallback_reason() {
    let (_server, url) = rtsp_camera();
    let stats = analyse(&config(
        &url,
        "hwaccel = \"vaapi\"\nhwaccel_device = \"/dev/dri/renderD199\"",
    ));
    assert_software_because(
        &stats,
        HwAccel::Vaapi,
        &["vaapi: device /dev/dri/renderD199 does not exist"],
    );
}

#[test]
fn a_v4l2m2m_camera_is_analysed_whatever_the_box_has() {
    let (_server, url) = rtsp_camera();
    let stats = analyse(&config(&url, "hwaccel = \"v4l2m2m\""));
    if no_video_hardware() {
        assert_software_because(
            &stats,
            HwAccel::V4l2m2m,
            &["v4l2m2m: cannot open the h264_v4l2m2m decoder: no /dev/video* device"],
        );
    } else {
        assert!(stats.analysed >= ANALYSED, "{stats:?}");
    }
}

#[test]
fn an_auto_camera_tries_vaapi_then_v4l2m2m_and_is_analysed_in_software_without_them() {
    let (_server, url) = rtsp_camera();
    let stats = analyse(&config(&url, "hwaccel = \"auto\""));
    if no_video_hardware() {
        assert_software_because(
            &stats,
            HwAccel::Auto,
            &[
                "vaapi: device /dev/dri/renderD128 does not exist; ",
                "v4l2m2m: cannot open the h264_v4l2m2m decoder: no /dev/video* device",
            ],
        );
    } else {
        assert!(stats.analysed >= ANALYSED, "{stats:?}");
    }
}

#[test]
fn a_camera_without_hwaccel_decodes_in_software_with_no_fallback() {
    let (_server, url) = rtsp_camera();
    let stats = analyse(&config(&url, ""));
    assert!(stats.analysed >= ANALYSED, "{stats:?}");
    assert_eq!(stats.decoder, Default::default(), "{stats:?}");
    let json = serde_json::to_value(&stats).unwrap();
    assert!(json["decoder"].get("fallback").is_none(), "{json}");
}
