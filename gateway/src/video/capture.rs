//! Capture: opens a camera (`rtsp://` over TCP, `http(s)://`, files and still images) with
//! FFmpeg, decodes the video stream, samples it to the analysis rate, converts the kept
//! frames with swscale (full-size BGR for the detector and evidence, a small grey image for
//! motion) and hands them on. A watchdog reconnects with backoff when the stream fails,
//! stalls or ends, and reports the camera down / up.
//!
//! The loop runs on its own thread because every FFmpeg call blocks; an interrupt callback
//! aborts a blocking read when the stream stalls or the gateway stops.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_config::CameraSource;
use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::{codec, format, media, Dictionary, Packet};
use ffmpeg_next as ffmpeg;
use tokio_util::sync::CancellationToken;

use super::evidence::ClipRecorder;
use super::{BgrImage, CameraStats, GreyImage};

/// Errors of one capture session (each is counted and logged, then retried or ended).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot initialise FFmpeg: {0}")]
    Init(ffmpeg::Error),
    #[error("cannot open {source_name}: {error}")]
    Open {
        source_name: String,
        error: ffmpeg::Error,
    },
    #[error("{0}: no video stream")]
    NoVideo(String),
    #[error("no decoder for the video stream: {0}")]
    Decoder(ffmpeg::Error),
    #[error("read: {0}")]
    Read(ffmpeg::Error),
    #[error("no packet for {0:?}: stream stalled")]
    Stalled(Duration),
    #[error("colour conversion: {0}")]
    Scale(ffmpeg::Error),
}

/// How a file source is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Like a live camera: files play at their native rate and frames are dropped (and
    /// counted) when the analysis lags. Network streams are always paced this way.
    Realtime,
    /// As fast as the analysis consumes, nothing dropped (tests, benchmarks, the CLI).
    AsFastAsAnalysed,
}

/// Capture settings.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Frames kept per second of video.
    pub analyse_fps: f64,
    pub pace: Pace,
    /// Replay a file from the start when it ends (the demo's cameras are files).
    pub loop_files: bool,
    /// Stop after this many seconds of video (tests keep runs short).
    pub max_seconds: Option<f64>,
    /// No packet for this long = stalled: reconnect.
    pub stall_timeout: Duration,
    /// First and longest wait between reconnection attempts.
    pub backoff: (Duration, Duration),
    /// Width of the grey motion image.
    pub motion_width: u32,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            analyse_fps: 5.0,
            pace: Pace::Realtime,
            loop_files: true,
            max_seconds: None,
            stall_timeout: Duration::from_secs(10),
            backoff: (Duration::from_secs(1), Duration::from_secs(30)),
            motion_width: 160,
        }
    }
}

/// One sampled, converted frame.
pub struct Captured {
    pub seq: u64,
    /// Camera clock, seconds: media time for files (continuing across loops), wall time since
    /// the pipeline started for streams.
    pub t: f64,
    pub image: BgrImage,
    pub grey: GreyImage,
}

/// What the capture loop tells the rest of the pipeline.
pub trait CaptureSink {
    /// Whether a frame handed over now would be taken; `false` = drop it without converting.
    fn ready(&mut self) -> bool;
    /// A converted frame; returns `false` when the pipeline is gone (stop capturing).
    fn frame(&mut self, frame: Captured) -> bool;
    /// The camera went down (`Some(reason)`) or came back (`None`).
    fn status(&mut self, down: Option<String>);
    /// Called for every packet, so clip requests are served between packets.
    fn poll_clips(&mut self, recorder: &mut ClipRecorder, t: f64);
}

/// Initialises FFmpeg once (idempotent). Its own stderr logging is limited to fatal errors:
/// it would break JSON log lines, and every error it reports reaches us as a return value
/// or frame flag, which is counted and logged through `tracing`.
pub fn init_ffmpeg() -> Result<(), CaptureError> {
    ffmpeg::init().map_err(CaptureError::Init)?;
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
    Ok(())
}

/// Why a session ended.
enum End {
    Eof,
    Cancelled,
    SinkGone,
    Limit,
    Failed(CaptureError),
}

/// Runs capture until cancelled, the sink is gone, or (files without looping) the end.
pub fn run(
    source: &CameraSource,
    options: &CaptureOptions,
    stats: &CameraStats,
    recorder: &mut ClipRecorder,
    sink: &mut dyn CaptureSink,
    cancel: &CancellationToken,
) {
    let started = Instant::now();
    let mut backoff = options.backoff.0;
    let mut down = false;
    let mut clock = Clock {
        offset: 0.0,
        last: 0.0,
        started,
        file: matches!(source, CameraSource::File(_)),
    };
    let mut seq = 0u64;
    loop {
        let end = match session(
            source, options, stats, recorder, sink, cancel, &mut clock, &mut seq, &mut down,
        ) {
            Ok(end) => end,
            Err(e) => End::Failed(e),
        };
        recorder.end_session();
        match end {
            End::Cancelled | End::SinkGone | End::Limit => return,
            End::Eof if clock.file => {
                if !options.loop_files || seq == 0 {
                    // A file that ends (or never yields a frame) is not a camera outage.
                    return;
                }
                clock.offset = clock.last + 1.0 / options.analyse_fps.max(0.1);
                continue;
            }
            End::Eof => {
                tracing::warn!(source = %name(source), "stream ended; reconnecting");
                if !down {
                    down = true;
                    sink.status(Some("stream ended".into()));
                }
            }
            End::Failed(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %name(source), error = %e, retry_in = ?backoff, "capture failed");
                if clock.file && !options.loop_files {
                    return;
                }
                if !down {
                    down = true;
                    sink.status(Some(e.to_string()));
                }
            }
        }
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        if sleep_cancellable(backoff, cancel) {
            return;
        }
        backoff = (backoff * 2).min(options.backoff.1);
        if !down {
            backoff = options.backoff.0;
        }
    }
}

/// The camera clock (see [`Captured::t`]).
struct Clock {
    offset: f64,
    last: f64,
    started: Instant,
    file: bool,
}

fn name(source: &CameraSource) -> String {
    match source {
        CameraSource::Stream(url) => redact_url(url),
        CameraSource::File(p) => p.display().to_string(),
    }
}

/// `rtsp://user:pass@host/…` → `rtsp://***@host/…` for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(a)) if a > s => format!("{}***{}", &url[..s + 3], &url[a..]),
        _ => url.to_owned(),
    }
}

fn sleep_cancellable(d: Duration, cancel: &CancellationToken) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if cancel.is_cancelled() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
    cancel.is_cancelled()
}

/// Milliseconds since `epoch`, for the interrupt callback's stall check.
fn ms_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

fn open(
    source: &CameraSource,
    options: &CaptureOptions,
    activity: Arc<AtomicU64>,
    epoch: Instant,
    cancel: CancellationToken,
) -> Result<format::context::Input, CaptureError> {
    let mut dict = Dictionary::new();
    let target: PathBuf = match source {
        CameraSource::Stream(url) => {
            let micros = options.stall_timeout.as_micros().to_string();
            if url.starts_with("rtsp") {
                dict.set("rtsp_transport", "tcp");
                // FFmpeg 5: socket I/O timeout of the RTSP demuxer, in microseconds.
                dict.set("timeout", &micros);
            } else {
                dict.set("rw_timeout", &micros);
            }
            PathBuf::from(url)
        }
        CameraSource::File(p) => p.clone(),
    };
    let stall_ms = options.stall_timeout.as_millis() as u64;
    activity.store(ms_since(epoch), Ordering::Relaxed);
    let interrupt = move || {
        cancel.is_cancelled()
            || ms_since(epoch).saturating_sub(activity.load(Ordering::Relaxed)) > stall_ms
    };
    format::input_with_interrupt_and_dictionary(&target, interrupt, dict).map_err(|error| {
        CaptureError::Open {
            source_name: name(source),
            error,
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn session(
    source: &CameraSource,
    options: &CaptureOptions,
    stats: &CameraStats,
    recorder: &mut ClipRecorder,
    sink: &mut dyn CaptureSink,
    cancel: &CancellationToken,
    clock: &mut Clock,
    seq: &mut u64,
    down: &mut bool,
) -> Result<End, CaptureError> {
    let epoch = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let mut input = open(source, options, activity.clone(), epoch, cancel.clone())?;
    let stream = input
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| CaptureError::NoVideo(name(source)))?;
    let index = stream.index();
    let time_base = stream.time_base();
    let params = stream.parameters();
    let rate = stream.avg_frame_rate();
    let context =
        codec::context::Context::from_parameters(params.clone()).map_err(CaptureError::Decoder)?;
    let mut decoder = context.decoder().video().map_err(CaptureError::Decoder)?;
    recorder.start_session(params, time_base);
    let mut converter = Converter::default();
    let interval = 1.0 / options.analyse_fps.clamp(0.1, 30.0);
    let frame_step = if rate.numerator() > 0 && rate.denominator() > 0 {
        f64::from(rate.invert())
    } else {
        0.04
    };
    let mut next_t = f64::MIN;
    let mut last_media_t: Option<f64> = None;
    let wall_start = Instant::now();
    let mut media_start: Option<f64> = None;
    let mut decoded = ffmpeg::frame::Video::empty();
    let mut eof = false;
    tracing::info!(source = %name(source), codec = ?decoder.id(), width = decoder.width(), height = decoder.height(), "camera opened");

    loop {
        if cancel.is_cancelled() {
            return Ok(End::Cancelled);
        }
        if !eof {
            let mut packet = Packet::empty();
            match packet.read(&mut input) {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => {
                    eof = true;
                    let _ = decoder.send_eof();
                }
                Err(ffmpeg::Error::InvalidData) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(source = %name(source), "corrupt packet skipped");
                    continue;
                }
                Err(e) => {
                    if cancel.is_cancelled() {
                        return Ok(End::Cancelled);
                    }
                    let idle = ms_since(epoch).saturating_sub(activity.load(Ordering::Relaxed));
                    if idle > options.stall_timeout.as_millis() as u64 {
                        return Err(CaptureError::Stalled(options.stall_timeout));
                    }
                    return Err(CaptureError::Read(e));
                }
            }
            activity.store(ms_since(epoch), Ordering::Relaxed);
            if eof {
                // fall through to drain the decoder
            } else if packet.stream() == index {
                let pt = packet
                    .dts()
                    .or(packet.pts())
                    .map(|ts| ts as f64 * f64::from(time_base));
                recorder.push(&packet, pt.unwrap_or(clock.last - clock.offset));
                sink.poll_clips(recorder, clock.last);
                if let Err(e) = decoder.send_packet(&packet) {
                    count_decode_error(stats, source, &e);
                }
            } else {
                continue;
            }
        }
        loop {
            match decoder.receive_frame(&mut decoded) {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => return Ok(End::Eof),
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {
                    break
                }
                Err(e) => {
                    count_decode_error(stats, source, &e);
                    break;
                }
            }
            stats.decoded.fetch_add(1, Ordering::Relaxed);
            if decoded.is_corrupt() || decoded.has_decode_errors() {
                // The decoder concealed damage (FFmpeg says so only in its own log).
                count_decode_error(stats, source, &ffmpeg::Error::InvalidData);
            }
            if *down {
                *down = false;
                tracing::info!(source = %name(source), "camera back");
                sink.status(None);
            }
            let media_t = decoded
                .timestamp()
                .map(|ts| ts as f64 * f64::from(time_base))
                .or_else(|| last_media_t.map(|t| t + frame_step))
                .unwrap_or(0.0);
            last_media_t = Some(media_t);
            let t = if clock.file {
                let start = *media_start.get_or_insert(media_t);
                clock.offset + (media_t - start).max(0.0)
            } else {
                clock.started.elapsed().as_secs_f64()
            };
            if t + 1e-6 < next_t {
                continue;
            }
            next_t = if t - next_t > interval {
                t + interval
            } else {
                next_t + interval
            };
            clock.last = t;
            if let Some(limit) = options.max_seconds {
                if t > limit {
                    return Ok(End::Limit);
                }
            }
            if clock.file && options.pace == Pace::Realtime {
                let due = wall_start + Duration::from_secs_f64((t - clock.offset).max(0.0));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    if sleep_cancellable(wait, cancel) {
                        return Ok(End::Cancelled);
                    }
                }
            }
            if !sink.ready() {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (image, grey) = match converter.convert(&decoded, options.motion_width) {
                Ok(x) => x,
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(source = %name(source), error = %e, "frame conversion failed");
                    continue;
                }
            };
            *seq += 1;
            if !sink.frame(Captured {
                seq: *seq,
                t,
                image,
                grey,
            }) {
                return Ok(End::SinkGone);
            }
        }
        if eof {
            return Ok(End::Eof);
        }
    }
}

fn count_decode_error(stats: &CameraStats, source: &CameraSource, e: &ffmpeg::Error) {
    let n = stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
    // Log the first few, then one in a hundred: a broken stream must not flood the log.
    if n <= 5 || n.is_multiple_of(100) {
        tracing::warn!(source = %name(source), error = %e, errors = n, "decode error");
    }
}

/// swscale contexts, rebuilt when the decoded size or format changes.
#[derive(Default)]
struct Converter {
    key: Option<(Pixel, u32, u32, u32)>,
    bgr: Option<scaling::Context>,
    grey: Option<scaling::Context>,
    grey_size: (u32, u32),
}

impl Converter {
    fn convert(
        &mut self,
        frame: &ffmpeg::frame::Video,
        motion_width: u32,
    ) -> Result<(BgrImage, GreyImage), CaptureError> {
        let (w, h, f) = (frame.width(), frame.height(), frame.format());
        if w == 0 || h == 0 {
            return Err(CaptureError::Scale(ffmpeg::Error::InvalidData));
        }
        let key = (f, w, h, motion_width);
        if self.key != Some(key) {
            let gw = motion_width.clamp(16, w.max(16));
            let gh = ((h as u64 * gw as u64 / w as u64) as u32).max(8);
            self.bgr = Some(
                scaling::Context::get(f, w, h, Pixel::BGR24, w, h, scaling::Flags::BILINEAR)
                    .map_err(CaptureError::Scale)?,
            );
            self.grey = Some(
                scaling::Context::get(f, w, h, Pixel::GRAY8, gw, gh, scaling::Flags::AREA)
                    .map_err(CaptureError::Scale)?,
            );
            self.grey_size = (gw, gh);
            self.key = Some(key);
        }
        let (Some(bgr), Some(grey)) = (self.bgr.as_mut(), self.grey.as_mut()) else {
            return Err(CaptureError::Scale(ffmpeg::Error::Bug));
        };
        let mut out = ffmpeg::frame::Video::empty();
        bgr.run(frame, &mut out).map_err(CaptureError::Scale)?;
        let image = BgrImage {
            width: w,
            height: h,
            data: tight(&out, w as usize * 3, h as usize),
        };
        let mut small = ffmpeg::frame::Video::empty();
        grey.run(frame, &mut small).map_err(CaptureError::Scale)?;
        let (gw, gh) = self.grey_size;
        let grey = GreyImage {
            width: gw,
            height: gh,
            data: tight(&small, gw as usize, gh as usize),
        };
        Ok((image, grey))
    }
}

/// Copies plane 0 without its row padding.
fn tight(frame: &ffmpeg::frame::Video, row: usize, rows: usize) -> Vec<u8> {
    let stride = frame.stride(0);
    let data = frame.data(0);
    let mut out = Vec::with_capacity(row * rows);
    for y in 0..rows {
        out.extend_from_slice(&data[y * stride..y * stride + row]);
    }
    out
}
