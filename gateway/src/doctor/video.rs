//! ONNX Runtime and the model, loaded as the video pipeline loads them; each enabled camera
//! opened as capture opens it, until its first decoded frame (a camera with a `sub_url`:
//! both its streams, each its own line). URLs are shown with the password as `***`.

use std::path::Path;
use std::time::{Duration, Instant};

use edge_config::{Camera, CameraSource, Config};
use ffmpeg::{codec, format, media, Packet};
use ffmpeg_next as ffmpeg;

use super::report::Check;
use super::DoctorError;
use crate::video::capture::{self, CaptureError};
use crate::video::detect::{self, DetectError, Detector, OrtDetector};

/// The ONNX Runtime + model check; skipped when no camera is enabled (the model is then
/// never loaded). Blocks for the model's load and warm-up (about a second).
pub fn onnxruntime_check(config: &Config) -> Check {
    const NAME: &str = "onnxruntime";
    if !config.cameras.iter().any(|c| c.enabled) {
        return Check::skipped(NAME, "no camera enabled: the detector is not loaded");
    }
    let d = &config.detector;
    let library = detect::onnxruntime_candidates(d.onnxruntime.as_deref())
        .into_iter()
        .find(|p| p.is_file());
    let started = Instant::now();
    match OrtDetector::from_config(d) {
        Ok(detector) => {
            let spec = detector.input_spec();
            let version = ort_version(library.as_deref());
            let library = library.map_or_else(|| "?".into(), |p| p.display().to_string());
            Check::ok(
                NAME,
                format!(
                    "ONNX Runtime {version} ({library}); model {} loaded, input {}×{}, warm-up in {} ms",
                    detect::resolve_model(&d.model_path()).display(),
                    spec.width,
                    spec.height,
                    started.elapsed().as_millis()
                ),
            )
        }
        Err(e) => detector_failure(NAME, e, &d.model_path()),
    }
}

fn detector_failure(name: &str, e: DetectError, model: &Path) -> Check {
    let fix = match &e {
        DetectError::Runtime(_) => "install ONNX Runtime ≥ 1.31 (`./x deps` fetches it into \
             vendor/onnxruntime/), or set [detector] onnxruntime = \"/path/to/libonnxruntime.so\""
            .to_owned(),
        DetectError::Model { .. } => format!(
            "put the model at {} (`./x deps` fetches yolox_nano.onnx), or set [detector] \
             models_dir / model to where it is",
            model.display()
        ),
        DetectError::Inference(_) | DetectError::Output(_) => format!(
            "{} is not a YOLOX model with a 416×416 input: use models/yolox_nano.onnx",
            model.display()
        ),
    };
    Check::fail(name, e.to_string(), fix)
}

/// The library's version: from its file name once links are resolved
/// (`libonnxruntime.so.1.32.0`), else from ONNX Runtime's build string
/// (`git-branch=rel-1.32.0, …`), else "version unknown".
fn ort_version(library: Option<&Path>) -> String {
    let from_name = library
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            let version = name.split_once(".so.")?.1.to_owned();
            version
                .starts_with(|c: char| c.is_ascii_digit())
                .then_some(version)
        });
    from_name
        .or_else(|| {
            ort::info()
                .split(|c: char| c == ',' || c.is_whitespace())
                .find_map(|part| part.strip_prefix("git-branch=rel-"))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "version unknown".into())
}

/// What a camera's first frame showed.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub codec: &'static str,
    pub width: u32,
    pub height: u32,
    /// The stream's average frame rate, when it declares one.
    pub fps: Option<f64>,
    pub first_frame: Duration,
}

/// Opens `source` as capture does and decodes until the first frame; everything, the open
/// included, ends by `timeout` (FFmpeg's interrupt callback aborts a blocking read).
pub fn probe(source: &CameraSource, timeout: Duration) -> Result<Probe, DoctorError> {
    capture::init_ffmpeg()?;
    let started = Instant::now();
    let deadline = started + timeout;
    let (target, dict) = capture::input_options(source, timeout);
    let interrupt = move || Instant::now() > deadline;
    let mut input =
        format::input_with_interrupt_and_dictionary(&target, interrupt, dict).map_err(|error| {
            // Out of time, whatever FFmpeg makes of it (a silent server reads as invalid data).
            if started.elapsed() >= timeout.mul_f32(0.9) || matches!(error, ffmpeg::Error::Exit) {
                return DoctorError::NoAnswer(timeout);
            }
            DoctorError::Capture(CaptureError::Open {
                source_name: capture::name(source),
                error,
            })
        })?;
    let stream = input
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| CaptureError::NoVideo(capture::name(source)))?;
    let (index, rate) = (stream.index(), stream.avg_frame_rate());
    let context = codec::context::Context::from_parameters(stream.parameters())
        .map_err(CaptureError::Decoder)?;
    let mut decoder = context.decoder().video().map_err(CaptureError::Decoder)?;
    let mut frame = ffmpeg::frame::Video::empty();
    while decoder.receive_frame(&mut frame).is_err() {
        if Instant::now() > deadline {
            return Err(DoctorError::NoPicture(timeout));
        }
        let mut packet = Packet::empty();
        match packet.read(&mut input) {
            Ok(()) if packet.stream() == index => {
                // A damaged packet is skipped like capture skips it; the next may decode.
                let _ = decoder.send_packet(&packet);
            }
            Ok(()) | Err(ffmpeg::Error::InvalidData) => {}
            Err(ffmpeg::Error::Eof) => {
                return Err(CaptureError::NoVideo(capture::name(source)).into())
            }
            Err(_) if Instant::now() > deadline => return Err(DoctorError::NoPicture(timeout)),
            Err(e) => return Err(CaptureError::Read(e).into()),
        }
    }
    let fps = (rate.numerator() > 0 && rate.denominator() > 0).then(|| f64::from(rate));
    Ok(Probe {
        codec: decoder.id().name(),
        width: frame.width(),
        height: frame.height(),
        fps,
        first_frame: started.elapsed(),
    })
}

/// Which of a camera's streams a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `url` (the only stream of a camera without `sub_url`).
    Main,
    /// `sub_url`, the analysed sub-stream.
    Sub,
}

impl Stream {
    fn check_name(self, camera: &Camera) -> String {
        match (self, camera.sub_url.is_some()) {
            (Stream::Main, false) => format!("camera {}", camera.id),
            (Stream::Main, true) => format!("camera {} main stream", camera.id),
            (Stream::Sub, _) => format!("camera {} sub-stream", camera.id),
        }
    }

    fn source(self, camera: &Camera) -> CameraSource {
        match self {
            Stream::Main => camera.source(),
            Stream::Sub => camera.analysis_source(),
        }
    }
}

/// The report line of one of a camera's streams from its probe.
pub fn stream_check(camera: &Camera, stream: Stream, result: Result<Probe, DoctorError>) -> Check {
    let name = stream.check_name(camera);
    let url = capture::name(&stream.source(camera));
    match result {
        Ok(p) => {
            let fps = p
                .fps
                .map_or_else(|| "fps unknown".into(), |f| format!("{f:.1} fps"));
            Check::ok(
                name,
                format!(
                    "{url}: {} {}×{}, {fps}, first frame in {} ms",
                    p.codec,
                    p.width,
                    p.height,
                    p.first_frame.as_millis()
                ),
            )
        }
        Err(e) => {
            let fix = camera_fix(&e, &url);
            Check::fail(name, format!("{url}: {}", camera_error(&e)), fix)
        }
    }
}

/// The error without its repeated URL (`cannot open URL: …` → `…`).
fn camera_error(e: &DoctorError) -> String {
    match e {
        DoctorError::Capture(CaptureError::Open { error, .. }) => error.to_string(),
        other => other.to_string(),
    }
}

/// What an installer does about a camera that gave no frame.
pub fn camera_fix(e: &DoctorError, url: &str) -> String {
    let test = if url.starts_with("rtsp") {
        format!("test with `ffprobe -rtsp_transport tcp {url}`")
    } else {
        format!("test with `ffprobe {url}`")
    };
    let what = match e {
        DoctorError::NoAnswer(_) => "the camera does not answer: check its power, cable and IP \
             address (`ping` it), and that no firewall drops its stream"
            .to_owned(),
        DoctorError::NoPicture(_) => "the stream opened but sent no picture: check the camera's \
             encoder settings (H.264/H.265) and the bandwidth"
            .to_owned(),
        DoctorError::Capture(CaptureError::Open { error, .. }) => open_fix(error, url),
        DoctorError::Capture(CaptureError::NoVideo(_)) => {
            "the source has no video stream: point the url at the camera's video stream".to_owned()
        }
        DoctorError::Capture(CaptureError::Decoder(_)) => {
            "this FFmpeg cannot decode the camera's codec: set the camera to H.264 or H.265"
                .to_owned()
        }
        _ => "check the camera and its url".to_owned(),
    };
    format!("{what}; {test}")
}

/// What to do when FFmpeg could not open the camera's url.
fn open_fix(error: &ffmpeg::Error, url: &str) -> String {
    use ffmpeg::Error as F;
    let protocol = if url.starts_with("rtsp") {
        "RTSP"
    } else {
        "its stream"
    };
    let login = "the camera refused the login: set the camera's username and password (or \
         write them in the url, rtsp://USER:PASSWORD@host/…, the password percent-encoded)";
    match error {
        F::Other { errno } if *errno == libc::ECONNREFUSED => {
            format!("check the camera's address and that {protocol} is on")
        }
        F::Other { errno }
            if [libc::ETIMEDOUT, libc::EHOSTUNREACH, libc::ENETUNREACH].contains(errno) =>
        {
            "the camera does not answer: check its power, cable and IP address (`ping` it)"
                .to_owned()
        }
        F::HttpUnauthorized | F::HttpForbidden => login.to_owned(),
        F::Other { errno } if *errno == libc::EACCES => login.to_owned(),
        F::HttpNotFound | F::StreamNotFound => "the camera answers but has no stream at this \
             path: take the stream path from the camera's manual or web page"
            .to_owned(),
        F::Other { errno } if *errno == libc::ENOENT => "no such file: check the url".to_owned(),
        _ => "check the camera's url".to_owned(),
    }
}

/// Probes every camera's streams at once, each on a blocking thread, all within `timeout`
/// and a few seconds' grace; a disabled camera is skipped.
pub async fn camera_checks(config: &Config, timeout: Duration) -> Vec<Check> {
    let probes: Vec<_> = config
        .cameras
        .iter()
        .flat_map(|camera| {
            let streams: &[Stream] = match (camera.enabled, camera.sub_url.is_some()) {
                (false, _) => &[],
                (true, false) => &[Stream::Main],
                (true, true) => &[Stream::Main, Stream::Sub],
            };
            let probes: Vec<_> = streams
                .iter()
                .map(|&stream| {
                    let source = stream.source(camera);
                    let handle = tokio::task::spawn_blocking(move || probe(&source, timeout));
                    (camera, Some((stream, handle)))
                })
                .collect();
            if camera.enabled {
                probes
            } else {
                vec![(camera, None)]
            }
        })
        .collect();
    let until = tokio::time::Instant::now() + timeout + Duration::from_secs(5);
    let mut checks = Vec::new();
    for (camera, probe) in probes {
        let Some((stream, handle)) = probe else {
            let name = format!("camera {}", camera.id);
            checks.push(Check::skipped(name, "disabled (enabled = false)"));
            continue;
        };
        checks.push(match tokio::time::timeout_at(until, handle).await {
            Ok(Ok(result)) => stream_check(camera, stream, result),
            Ok(Err(e)) => Check::fail(
                stream.check_name(camera),
                format!("the probe failed: {e}"),
                "test the camera with `ffprobe -rtsp_transport tcp URL` and report this failure",
            ),
            Err(_) => stream_check(camera, stream, Err(DoctorError::NoAnswer(timeout))),
        });
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::State;

    #[test]
    fn a_camera_that_accepts_but_never_answers_fails_within_its_timeout() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "rtsp://127.0.0.1:{}/live",
            silent.local_addr().unwrap().port()
        );
        let started = Instant::now();
        let result = probe(&CameraSource::Stream(url.clone()), Duration::from_secs(1));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "bounded by its timeout: {:?}",
            started.elapsed()
        );
        let camera: Camera = serde_json::from_value(serde_json::json!({
            "id": "cam-silent", "url": url, "location": { "area": "a" },
        }))
        .unwrap();
        let check = stream_check(&camera, Stream::Main, result);
        assert_eq!(check.state, State::Fail, "{check:?}");
        assert_eq!(check.finding, format!("{url}: no answer within 1 s"));
        let fix = check.fix.as_deref().unwrap();
        assert!(fix.starts_with("the camera does not answer"), "{check:?}");
        assert!(
            fix.ends_with(&format!("`ffprobe -rtsp_transport tcp {url}`")),
            "{fix}"
        );
    }

    #[test]
    fn credentials_in_a_camera_url_stay_out_of_the_report() {
        let camera: Camera = serde_json::from_value(serde_json::json!({
            "id": "cam-door", "url": "rtsp://admin:s3cret@127.0.0.1:9/door",
            "location": { "area": "a" },
        }))
        .unwrap();
        let refused = CaptureError::Open {
            source_name: String::new(),
            error: ffmpeg::Error::Other {
                errno: libc::ECONNREFUSED,
            },
        };
        let check = stream_check(&camera, Stream::Main, Err(refused.into()));
        let text = format!("{check:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            check
                .finding
                .starts_with("rtsp://admin:***@127.0.0.1:9/door: "),
            "{text}"
        );
        assert!(check.fix.unwrap().contains("that RTSP is on"));
    }
}
