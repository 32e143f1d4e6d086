//! Capture: opens a camera (`rtsp://` over TCP, `http(s)://`, files and still images) with
//! FFmpeg, decodes the video stream, samples it to the analysis rate, converts the kept
//! frames with swscale (full-size BGR for the detector and evidence, a small grey image for
//! motion) and hands them on. A watchdog reconnects with backoff when the stream fails,
//! stalls or ends, and reports the camera down / up. While the sink says the camera is idle
//! the decoder skips frames ([`DecodeMode`]).
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
use ffmpeg::{format, media, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;
use tokio_util::sync::CancellationToken;

use super::evidence::ClipRecorder;
use super::hwdec;
use super::picture::{self, Picture, PictureError};
use super::{worth_logging, CameraStats, GreyImage};

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
    #[error(transparent)]
    Picture(#[from] PictureError),
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
    /// No packet for this long = stalled: reconnect. Also the analysis liveness bound
    /// (raised to five analysis intervals if that is longer): frames decoded for this long
    /// while the analysis finishes none of them = the camera is down ([`NOT_ANALYSED`]).
    pub stall_timeout: Duration,
    /// First and longest wait between reconnection attempts.
    pub backoff: (Duration, Duration),
    /// Width of the grey motion image.
    pub motion_width: u32,
    /// What the decoder decodes while the camera is idle ([`CaptureSink::idle`]).
    pub idle_decode: DecodeMode,
    /// Skip H.264/H.265 deblocking (`skip_loop_filter = AVDISCARD_ALL`): measured 16 %
    /// (H.264) and 8 % (H.265) less decode time at 1080p, at the price of blockier
    /// pictures (for the detector and the analysed stream's snapshots). Off by default.
    pub skip_loop_filter: bool,
    /// Hardware decoding of the analysed stream ([`hwdec`]; software by default).
    pub hwaccel: hwdec::HwRequest,
}

/// What the decoder decodes (FFmpeg's `AVCodecContext.skip_frame`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeMode {
    /// Every frame.
    All,
    /// Reference frames only (`AVDISCARD_NONREF`): nothing is lost for the analysis (it
    /// samples frames anyway), but streams without B-frames or temporal layers — most IP
    /// cameras — have no non-reference frames, so it saves nothing there.
    #[default]
    NonRef,
    /// Keyframes only (`AVDISCARD_NONKEY`): about a fifth of the decode cost of a 2 s GOP,
    /// but something that appears is seen at the next keyframe (up to one GOP later), and
    /// an object crossing the view within one GOP can be missed.
    KeyFrames,
}

impl DecodeMode {
    /// The gauge value of [`CameraStats::decode_mode`].
    pub fn gauge(self) -> u64 {
        match self {
            DecodeMode::All => 0,
            DecodeMode::NonRef => 1,
            DecodeMode::KeyFrames => 2,
        }
    }

    fn discard(self) -> ffmpeg::Discard {
        match self {
            DecodeMode::All => ffmpeg::Discard::Default,
            DecodeMode::NonRef => ffmpeg::Discard::NonReference,
            DecodeMode::KeyFrames => ffmpeg::Discard::NonKey,
        }
    }

    /// `all`, `nonref` or `key` (the `SHOUWANG_IDLE_DECODE` values).
    pub fn parse(s: &str) -> Option<DecodeMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "all" | "off" => Some(DecodeMode::All),
            "nonref" => Some(DecodeMode::NonRef),
            "key" | "keyframes" | "nonkey" => Some(DecodeMode::KeyFrames),
            _ => None,
        }
    }
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
            idle_decode: DecodeMode::default(),
            skip_loop_filter: false,
            hwaccel: hwdec::HwRequest::default(),
        }
    }
}

/// One sampled, converted frame.
pub struct Captured {
    pub seq: u64,
    /// Camera clock, seconds: media time for files (continuing across loops and timestamp
    /// discontinuities), wall time since the pipeline started for streams.
    pub t: f64,
    /// When the frame was captured: it left the decoder (files paced in real time: when it
    /// was due). Detection latency is measured from here.
    pub at: Instant,
    /// The decoded frame itself (no conversion: see [`super::picture`]).
    pub picture: Picture,
    pub grey: GreyImage,
}

/// What the capture loop tells the rest of the pipeline.
pub trait CaptureSink {
    /// Whether a frame handed over now would be taken; `false` = drop it without converting.
    fn ready(&mut self) -> bool;
    /// A converted frame; returns `false` when the pipeline is gone (stop capturing).
    fn frame(&mut self, frame: Captured) -> bool;
    /// The camera went down (`Some(reason)`: its stream failed, or it is decoded but not
    /// analysed), its reason changed, or it came back (`None`).
    fn status(&mut self, down: Option<String>);
    /// Called for every packet, so clip requests are served between packets.
    fn poll_clips(&mut self, recorder: &mut ClipRecorder, t: f64);
    /// Whether nothing moves and nothing is tracked: the decoder may skip frames
    /// ([`CaptureOptions::idle_decode`]) until this turns `false`.
    fn idle(&self) -> bool {
        false
    }
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
    /// The hardware decoder failed: the next session, at once, decodes in software.
    HwFallback,
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
    let mut run = Run {
        source,
        options,
        stats,
        sink,
        cancel,
        clock: Clock::new(matches!(source, CameraSource::File(_))),
        seq: 0,
        health: Health::default(),
        liveness: Liveness::new(options),
    };
    let mut backoff = options.backoff.0;
    loop {
        let end = run.session(recorder).unwrap_or_else(End::Failed);
        recorder.end_session();
        match end {
            End::Cancelled | End::SinkGone | End::Limit => return,
            End::HwFallback => continue,
            End::Eof if run.clock.file => {
                if !options.loop_files || run.seq == 0 {
                    // A file that ends (or never yields a frame) is not a camera outage.
                    return;
                }
                continue;
            }
            End::Eof => {
                tracing::warn!(source = %name(source), "stream ended; reconnecting");
                run.health
                    .stream_down("stream ended".into(), &mut *run.sink);
            }
            End::Failed(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %name(source), error = %e, retry_in = ?backoff, "capture failed");
                if run.clock.file && !options.loop_files {
                    return;
                }
                run.health.stream_down(e.to_string(), &mut *run.sink);
            }
        }
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        if sleep_cancellable(backoff, cancel) {
            return;
        }
        backoff = (backoff * 2).min(options.backoff.1);
        if run.health.stream.is_none() {
            backoff = options.backoff.0;
        }
    }
}

/// A capture run: what outlives its sessions (reconnects, file loops).
struct Run<'a> {
    source: &'a CameraSource,
    options: &'a CaptureOptions,
    stats: &'a CameraStats,
    sink: &'a mut dyn CaptureSink,
    cancel: &'a CancellationToken,
    clock: Clock,
    /// Frames handed to the sink so far.
    seq: u64,
    health: Health,
    liveness: Liveness,
}

/// What a session's frames need besides the run.
struct SessionState {
    time_base: Rational,
    /// Media seconds between frames (from the stream's frame rate; 25 fps when unknown).
    frame_step: f64,
    pacer: Pacer,
    converter: Converter,
    /// Real-time pacing of files: wall time at the open, camera time of the first frame.
    wall_start: Instant,
    origin: Option<f64>,
}

/// What reading one packet gave.
enum Read {
    /// A video packet went to the decoder: collect its frames.
    Video,
    /// Another stream's packet, or a corrupt one (counted): read on.
    Other,
    /// The input ended: drain the decoder.
    Eof,
    Cancelled,
}

/// When the input last delivered something, for the stall check (shared with FFmpeg's
/// interrupt callback, which runs inside its blocking reads).
pub(super) struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch`; atomic because the interrupt callback reads it from
    /// inside FFmpeg while this thread is blocked in a read.
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
    pub(super) fn touch(&self) {
        self.last_ms.store(ms_since(self.epoch), Ordering::Relaxed);
    }
    pub(super) fn idle_ms(&self) -> u64 {
        ms_since(self.epoch).saturating_sub(self.last_ms.load(Ordering::Relaxed))
    }
}

impl Run<'_> {
    /// One session: open the source, decode until it ends, fails or the run stops.
    fn session(&mut self, recorder: &mut ClipRecorder) -> Result<End, CaptureError> {
        let activity = Activity::new();
        let mut input = open(self.source, self.options, &activity, self.cancel.clone())?;
        let stream = input
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| CaptureError::NoVideo(name(self.source)))?;
        let (index, time_base, rate) =
            (stream.index(), stream.time_base(), stream.avg_frame_rate());
        let params = stream.parameters();
        let hwdec::Opened {
            mut decoder,
            mut frames,
        } = hwdec::open(
            &params,
            &self.options.hwaccel,
            &self.stats.decoder,
            name(self.source),
        )
        .map_err(CaptureError::Decoder)?;
        if self.options.skip_loop_filter {
            decoder.skip_loop_filter(ffmpeg::Discard::All);
        }
        recorder.start_session(params, time_base);
        let pacer = Pacer::new(self.options.analyse_fps);
        self.clock.new_session(pacer.interval);
        self.liveness.new_session();
        let mut state = SessionState {
            time_base,
            frame_step: if rate.numerator() > 0 && rate.denominator() > 0 {
                f64::from(rate.invert())
            } else {
                0.04
            },
            pacer,
            converter: Converter::default(),
            wall_start: Instant::now(),
            origin: None,
        };
        tracing::info!(source = %name(self.source), codec = ?decoder.id(), width = decoder.width(), height = decoder.height(), "camera opened");
        let mut decoded = ffmpeg::frame::Video::empty();
        let mut mode = DecodeMode::All;
        self.stats
            .decode_mode
            .store(mode.gauge(), Ordering::Relaxed);
        let mut eof = false;
        loop {
            if self.cancel.is_cancelled() {
                return Ok(End::Cancelled);
            }
            if !eof {
                let packet = self.read(
                    &mut input,
                    &mut decoder,
                    recorder,
                    (index, time_base),
                    &activity,
                )?;
                match packet {
                    Read::Video => {}
                    Read::Other => continue,
                    Read::Eof => eof = true,
                    Read::Cancelled => return Ok(End::Cancelled),
                }
            }
            let decoding = (&mut decoder, &mut frames, &mut decoded);
            if let Some(end) = self.receive(decoding, &mut mode, &mut state) {
                return Ok(end);
            }
            if eof {
                return Ok(End::Eof);
            }
        }
    }

    /// Takes every frame the decoder has ready (in system memory) to [`Self::frame`];
    /// `Some` ends the session, also when its hardware decoder gives up.
    fn receive(
        &mut self,
        (decoder, frames, decoded): (
            &mut ffmpeg::decoder::Video,
            &mut hwdec::SystemFrames,
            &mut ffmpeg::frame::Video,
        ),
        mode: &mut DecodeMode,
        state: &mut SessionState,
    ) -> Option<End> {
        loop {
            match decoder.receive_frame(decoded) {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => return Some(End::Eof),
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {
                    break
                }
                Err(e) => {
                    count_decode_error(self.stats, self.source, &e);
                    break;
                }
            }
            let frame = match frames.system(decoded, &self.stats.decoder) {
                Ok(frame) => frame,
                Err(e) => {
                    count_decode_error(self.stats, self.source, &e);
                    continue;
                }
            };
            if let Some(end) = self.frame(frame, state) {
                return Some(end);
            }
            self.decode_mode(decoder, mode);
        }
        frames
            .give_up(&self.stats.decoder)
            .then_some(End::HwFallback)
    }

    /// Switches the decoder to [`CaptureOptions::idle_decode`] while the sink is idle, back
    /// to every frame as soon as it is not. Called after each decoded frame: a frame that
    /// shows motion switches the decoder back before the next packet is sent, so with
    /// keyframes only the switch happens on a keyframe and the next frames have their
    /// references.
    fn decode_mode(&mut self, decoder: &mut ffmpeg::decoder::Video, mode: &mut DecodeMode) {
        let want = if self.sink.idle() {
            self.options.idle_decode
        } else {
            DecodeMode::All
        };
        if want != *mode {
            decoder.skip_frame(want.discard());
            *mode = want;
            self.stats
                .decode_mode
                .store(want.gauge(), Ordering::Relaxed);
            tracing::debug!(source = %name(self.source), mode = ?want, "decode mode");
        }
    }

    /// Reads one packet; a video packet goes to the clip ring and the decoder.
    fn read(
        &mut self,
        input: &mut format::context::Input,
        decoder: &mut ffmpeg::decoder::Video,
        recorder: &mut ClipRecorder,
        (index, time_base): (usize, Rational),
        activity: &Activity,
    ) -> Result<Read, CaptureError> {
        let packet = match next_packet(input, activity, self.options.stall_timeout, self.cancel)? {
            Next::Packet(p) => p,
            Next::Eof => {
                let _ = decoder.send_eof();
                return Ok(Read::Eof);
            }
            Next::Corrupt => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(source = %name(self.source), "corrupt packet skipped");
                return Ok(Read::Other);
            }
            Next::Cancelled => return Ok(Read::Cancelled),
        };
        if packet.stream() != index {
            return Ok(Read::Other);
        }
        let pt = packet
            .dts()
            .or(packet.pts())
            .map(|ts| ts as f64 * f64::from(time_base));
        recorder.push(&packet, pt.or(self.clock.last_media));
        let ring = recorder.ring_bytes() as u64;
        self.stats.clip_ring_bytes.store(ring, Ordering::Relaxed);
        self.sink
            .poll_clips(recorder, self.clock.last.unwrap_or(0.0));
        self.stats.packets.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = decoder.send_packet(&packet) {
            count_decode_error(self.stats, self.source, &e);
        }
        Ok(Read::Video)
    }

    /// One decoded frame: counters, camera clock, analysis liveness, sampling, hand-over.
    fn frame(&mut self, decoded: &ffmpeg::frame::Video, s: &mut SessionState) -> Option<End> {
        self.stats.decoded.fetch_add(1, Ordering::Relaxed);
        if decoded.is_corrupt() || decoded.has_decode_errors() {
            // The decoder concealed damage (FFmpeg says so only in its own log).
            count_decode_error(self.stats, self.source, &ffmpeg::Error::InvalidData);
        }
        self.health.stream_up(self.source, &mut *self.sink);
        let t = self.camera_time(decoded, s);
        let analysed = self.stats.analysed.load(Ordering::Relaxed);
        if let Some(blind) = self.liveness.on_decoded(analysed, t, Instant::now()) {
            let (source, decoded) = (
                name(self.source),
                self.stats.decoded.load(Ordering::Relaxed),
            );
            if blind {
                self.stats.analysis_stalls.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%source, decoded, analysed, bound = ?self.liveness.bound, "{NOT_ANALYSED}");
            } else {
                tracing::info!(%source, decoded, analysed, "analysis resumed");
            }
            self.health.analysis(blind, &mut *self.sink);
        }
        if !s.pacer.keep(t) {
            return None;
        }
        if self.options.max_seconds.is_some_and(|limit| t > limit) {
            return Some(End::Limit);
        }
        if self.clock.file && self.options.pace == Pace::Realtime {
            let origin = *s.origin.get_or_insert(t);
            let due = s.wall_start + Duration::from_secs_f64((t - origin).max(0.0));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                if sleep_cancellable(wait, self.cancel) {
                    return Some(End::Cancelled);
                }
            }
        }
        let at = Instant::now();
        if !self.sink.ready() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let (picture, grey) = match s.converter.convert(decoded, self.options.motion_width) {
            Ok(x) => x,
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %name(self.source), error = %e, "frame conversion failed");
                return None;
            }
        };
        self.seq += 1;
        let frame = Captured {
            seq: self.seq,
            t,
            at,
            picture,
            grey,
        };
        (!self.sink.frame(frame)).then_some(End::SinkGone)
    }

    /// The camera time of a decoded frame; a timestamp discontinuity is counted and logged.
    fn camera_time(&mut self, decoded: &ffmpeg::frame::Video, s: &SessionState) -> f64 {
        let media_t = decoded
            .timestamp()
            .map(|ts| ts as f64 * f64::from(s.time_base))
            .or_else(|| self.clock.last_media.map(|t| t + s.frame_step))
            .unwrap_or(0.0);
        let (t, jump) = self.clock.at(media_t, s.frame_step);
        if let Some(jump) = jump {
            let n = self.stats.discontinuities.fetch_add(1, Ordering::Relaxed) + 1;
            if worth_logging(n) {
                tracing::warn!(source = %name(self.source), from_s = jump.from, to_s = jump.to, camera_s = t, discontinuities = n, "media timestamps jumped; camera clock re-based");
            }
        }
        t
    }
}

/// Forward jumps of the media timestamps wider than this many frame intervals, and than
/// [`FORWARD_JUMP_MIN_S`], are discontinuities (an encoder restart, a recording gap), not a
/// few lost frames.
const FORWARD_JUMP_FRAMES: f64 = 10.0;
/// See [`FORWARD_JUMP_FRAMES`]; also covers cameras whose advertised frame rate is wrong.
const FORWARD_JUMP_MIN_S: f64 = 2.0;

/// A jump of the media timestamps between two consecutive decoded frames.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Jump {
    from: f64,
    to: f64,
}

/// Whether media time going from `last` to `next` is a discontinuity: back by more than
/// half a frame, or ahead by far more than a frame.
fn discontinuity(last: f64, next: f64, frame_step: f64) -> Option<Jump> {
    let ahead = (FORWARD_JUMP_FRAMES * frame_step).max(FORWARD_JUMP_MIN_S);
    (next < last - frame_step / 2.0 || next - last > ahead).then_some(Jump {
        from: last,
        to: next,
    })
}

/// The camera clock (see [`Captured::t`]), which the analysis rate limiter and real-time
/// pacing run on. Files follow their media timestamps, re-based at every new session (loop,
/// reconnect) and at every timestamp discontinuity (an encoder restart sends them back to
/// zero; a gap sends them far ahead): camera time never goes back and never leaps, so the
/// pacing never waits for timestamps to catch up with old ones. Streams run on wall time
/// since the run started; their discontinuities are counted all the same.
struct Clock {
    file: bool,
    started: Instant,
    /// Camera time of the last decoded frame.
    last: Option<f64>,
    /// Camera time at `media_start`.
    offset: f64,
    /// Media time the clock was last re-based at (this session).
    media_start: Option<f64>,
    /// Media time of the last decoded frame (this session).
    last_media: Option<f64>,
}

impl Clock {
    fn new(file: bool) -> Self {
        Clock {
            file,
            started: Instant::now(),
            last: None,
            offset: 0.0,
            media_start: None,
            last_media: None,
        }
    }

    /// A new session's timestamps start afresh (not a discontinuity); a file's camera time
    /// goes on `gap` after the last frame.
    fn new_session(&mut self, gap: f64) {
        if let Some(last) = self.last {
            self.offset = last + gap;
        }
        self.media_start = None;
        self.last_media = None;
    }

    /// The camera time of a frame at media time `media_t`, and the discontinuity crossed.
    fn at(&mut self, media_t: f64, frame_step: f64) -> (f64, Option<Jump>) {
        let jump = self
            .last_media
            .and_then(|last| discontinuity(last, media_t, frame_step));
        self.last_media = Some(media_t);
        let t = if self.file {
            if let (Some(_), Some(last)) = (jump, self.last) {
                self.offset = last + frame_step;
                self.media_start = Some(media_t);
            }
            let start = *self.media_start.get_or_insert(media_t);
            self.offset + (media_t - start)
        } else {
            self.started.elapsed().as_secs_f64()
        };
        let t = self.last.map_or(t, |last| t.max(last));
        self.last = Some(t);
        (t, jump)
    }
}

/// The analysis rate limiter: keeps one frame per `interval` seconds of camera time.
struct Pacer {
    interval: f64,
    next_t: f64,
}

impl Pacer {
    fn new(analyse_fps: f64) -> Self {
        Pacer {
            interval: 1.0 / analyse_fps.clamp(0.1, 30.0),
            next_t: f64::MIN,
        }
    }

    /// Whether the frame at camera time `t` goes to the analysis.
    fn keep(&mut self, t: f64) -> bool {
        if t + 1e-6 < self.next_t {
            return false;
        }
        self.next_t = if t - self.next_t > self.interval {
            t + self.interval
        } else {
            self.next_t + self.interval
        };
        true
    }
}

/// The analysis liveness check: a camera whose frames keep being decoded while its analysis
/// finishes none of them (`CameraStats::analysed` stands still) for `bound` — wall time or
/// camera time, whichever passes first — is blind, and reported down like a dead stream.
struct Liveness {
    /// [`CaptureOptions::stall_timeout`], at least five analysis intervals.
    bound: Duration,
    /// `analysed` when it last moved.
    analysed: u64,
    /// Wall and camera time of the first frame decoded since then (this session).
    since: Option<(Instant, f64)>,
    blind: bool,
}

impl Liveness {
    fn new(options: &CaptureOptions) -> Self {
        let intervals = Duration::from_secs_f64(5.0 / options.analyse_fps.clamp(0.1, 30.0));
        Liveness {
            bound: options.stall_timeout.max(intervals),
            analysed: 0,
            since: None,
            blind: false,
        }
    }

    /// A new session: time the analysis from its first decoded frame.
    fn new_session(&mut self) {
        self.since = None;
    }

    /// A frame at camera time `t` was decoded while `analysed` frames had been analysed;
    /// returns `Some(blind)` when the camera went blind or recovered.
    fn on_decoded(&mut self, analysed: u64, t: f64, now: Instant) -> Option<bool> {
        if analysed != self.analysed {
            self.analysed = analysed;
            self.since = Some((now, t));
            let recovered = std::mem::take(&mut self.blind);
            return recovered.then_some(false);
        }
        let (wall, camera) = *self.since.get_or_insert((now, t));
        let late = now.duration_since(wall) > self.bound || t - camera > self.bound.as_secs_f64();
        if late && !self.blind {
            self.blind = true;
            return Some(true);
        }
        None
    }
}

/// The reason `camera_down` gives when the camera is decoded but not analysed.
pub const NOT_ANALYSED: &str = "frames decoded but not analysed";

/// What the camera's `camera_down` alert says, from its two watchdogs: the stream's (open,
/// read, stall, end; the first reason of an outage stands) and the analysis liveness check
/// ([`NOT_ANALYSED`]). The stream's reason comes first; the sink hears only changes.
#[derive(Default)]
struct Health {
    stream: Option<String>,
    blind: bool,
    reported: Option<String>,
}

impl Health {
    fn stream_down(&mut self, reason: String, sink: &mut dyn CaptureSink) {
        if self.stream.is_none() {
            self.stream = Some(reason);
            self.publish(sink);
        }
    }

    fn stream_up(&mut self, source: &CameraSource, sink: &mut dyn CaptureSink) {
        if self.stream.take().is_some() {
            tracing::info!(source = %name(source), "camera back");
            self.publish(sink);
        }
    }

    fn analysis(&mut self, blind: bool, sink: &mut dyn CaptureSink) {
        self.blind = blind;
        self.publish(sink);
    }

    fn publish(&mut self, sink: &mut dyn CaptureSink) {
        let now = self
            .stream
            .clone()
            .or_else(|| self.blind.then(|| NOT_ANALYSED.to_owned()));
        if now != self.reported {
            self.reported = now.clone();
            sink.status(now);
        }
    }
}

/// A source as shown in logs, errors and reports: a stream's URL with its password
/// replaced by `***` ([`edge_config::redact_url`], the one redaction of camera URLs).
pub(crate) fn name(source: &CameraSource) -> String {
    match source {
        CameraSource::Stream(url) => edge_config::redact_url(url),
        CameraSource::File(p) => p.display().to_string(),
    }
}

/// What reading the next packet of an input gave.
pub(super) enum Next {
    Packet(Packet),
    /// A corrupt packet (skipped; the caller counts it).
    Corrupt,
    Eof,
    Cancelled,
}

/// Reads the next packet of `input`: a failed read is the end of the session, a stall
/// (nothing for `stall_timeout`, FFmpeg's interrupt callback having aborted the read) or an
/// error; shared by the analysed stream's capture and the main-stream reader.
pub(super) fn next_packet(
    input: &mut format::context::Input,
    activity: &Activity,
    stall_timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Next, CaptureError> {
    let mut packet = Packet::empty();
    match packet.read(input) {
        Ok(()) => {}
        Err(ffmpeg::Error::Eof) => {
            activity.touch();
            return Ok(Next::Eof);
        }
        Err(ffmpeg::Error::InvalidData) => return Ok(Next::Corrupt),
        Err(_) if cancel.is_cancelled() => return Ok(Next::Cancelled),
        Err(_) if activity.idle_ms() > stall_timeout.as_millis() as u64 => {
            return Err(CaptureError::Stalled(stall_timeout))
        }
        Err(e) => return Err(CaptureError::Read(e)),
    }
    activity.touch();
    Ok(Next::Packet(packet))
}

pub(super) fn sleep_cancellable(d: Duration, cancel: &CancellationToken) -> bool {
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

/// What FFmpeg opens for `source` and how: RTSP over TCP with a socket I/O timeout, other
/// streams with a read/write timeout (both `timeout`, in FFmpeg's microseconds). Shared with
/// `gateway doctor`, so the installer's check opens a camera exactly as the pipeline does.
pub(crate) fn input_options(
    source: &CameraSource,
    timeout: Duration,
) -> (PathBuf, Dictionary<'static>) {
    let mut dict = Dictionary::new();
    let target: PathBuf = match source {
        CameraSource::Stream(url) => {
            let micros = timeout.as_micros().to_string();
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
    (target, dict)
}

pub(super) fn open(
    source: &CameraSource,
    options: &CaptureOptions,
    activity: &Activity,
    cancel: CancellationToken,
) -> Result<format::context::Input, CaptureError> {
    let (target, dict) = input_options(source, options.stall_timeout);
    let stall_ms = options.stall_timeout.as_millis() as u64;
    activity.touch();
    let (epoch, last_ms) = (activity.epoch, activity.last_ms.clone());
    let interrupt = move || {
        cancel.is_cancelled()
            || ms_since(epoch).saturating_sub(last_ms.load(Ordering::Relaxed)) > stall_ms
    };
    format::input_with_interrupt_and_dictionary(&target, interrupt, dict).map_err(|error| {
        CaptureError::Open {
            source_name: name(source),
            error,
        }
    })
}

fn count_decode_error(stats: &CameraStats, source: &CameraSource, e: &ffmpeg::Error) {
    stats.decoder.decode_error();
    let n = stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
    if worth_logging(n) {
        tracing::warn!(source = %name(source), error = %e, errors = n, "decode error");
    }
}

/// The motion image's swscale context and output frame, rebuilt when the decoded size or
/// format changes. The full picture is not converted here ([`super::picture`]).
#[derive(Default)]
struct Converter {
    key: Option<(Pixel, u32, u32, u32)>,
    grey: Option<scaling::Context>,
    grey_size: (u32, u32),
    /// The conversion's output frame, kept from frame to frame (swscale allocates an empty
    /// one at each call).
    small: Option<ffmpeg::frame::Video>,
}

impl Converter {
    /// The frame shared as a [`Picture`] and its small grey image for motion.
    fn convert(
        &mut self,
        frame: &ffmpeg::frame::Video,
        motion_width: u32,
    ) -> Result<(Picture, GreyImage), CaptureError> {
        let picture = Picture::share(frame)?;
        let (w, h, f) = (frame.width(), frame.height(), frame.format());
        let key = (f, w, h, motion_width);
        if self.key != Some(key) {
            let gw = motion_width.clamp(16, w.max(16));
            let gh = ((h as u64 * gw as u64 / w as u64) as u32).max(8);
            self.grey = Some(
                scaling::Context::get(f, w, h, Pixel::GRAY8, gw, gh, scaling::Flags::AREA)
                    .map_err(CaptureError::Scale)?,
            );
            self.grey_size = (gw, gh);
            self.key = Some(key);
            self.small = None;
        }
        let Some(grey) = self.grey.as_mut() else {
            return Err(CaptureError::Scale(ffmpeg::Error::Bug));
        };
        let small = self.small.get_or_insert_with(ffmpeg::frame::Video::empty);
        grey.run(frame, small).map_err(CaptureError::Scale)?;
        let (gw, gh) = self.grey_size;
        let grey = GreyImage {
            width: gw,
            height: gh,
            data: picture::tight(small, gw as usize, gh as usize),
        };
        Ok((picture, grey))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds media times at 25 fps through a file clock and the pacer at 5 fps.
    fn play(clock: &mut Clock, pacer: &mut Pacer, media: &[f64]) -> Vec<f64> {
        media
            .iter()
            .filter_map(|&m| {
                let (t, _) = clock.at(m, 0.04);
                pacer.keep(t).then_some(t)
            })
            .collect()
    }

    fn segment(from: f64, frames: usize) -> Vec<f64> {
        (0..frames).map(|i| from + i as f64 * 0.04).collect()
    }

    #[test]
    fn timestamps_that_jump_back_are_rebased_and_the_pacing_goes_on() {
        let mut clock = Clock::new(true);
        let mut pacer = Pacer::new(5.0);
        let mut media = segment(0.0, 50);
        media.extend(segment(0.0, 50));
        let kept = play(&mut clock, &mut pacer, &media);
        assert_eq!(kept.len(), 20, "{kept:?}");
        assert!(kept.windows(2).all(|w| w[1] > w[0]), "{kept:?}");
        assert!(
            (kept[10] - 2.0).abs() < 1e-9,
            "continues after 1.96: {kept:?}"
        );
    }

    #[test]
    fn a_far_forward_jump_is_rebased_but_a_few_lost_frames_are_not() {
        let mut clock = Clock::new(true);
        let (t, jump) = clock.at(10.0, 0.04);
        assert_eq!((t, jump), (0.0, None));
        // Five frames lost: camera time keeps the gap.
        assert_eq!(clock.at(10.24, 0.04).1, None);
        assert!((clock.last.unwrap() - 0.24).abs() < 1e-9);
        // An hour ahead: re-based one frame on.
        let (t, jump) = clock.at(3610.24, 0.04);
        assert_eq!(
            jump,
            Some(Jump {
                from: 10.24,
                to: 3610.24
            })
        );
        assert!((t - 0.28).abs() < 1e-9, "{t}");
        // A stream counts the jump but keeps its wall clock.
        let mut stream = Clock::new(false);
        stream.at(5.0, 0.04);
        assert!(stream.at(0.0, 0.04).1.is_some());
    }

    #[test]
    fn a_new_session_starts_its_timestamps_afresh_without_a_discontinuity() {
        let mut clock = Clock::new(true);
        clock.new_session(0.2);
        for m in segment(1.4, 50) {
            assert_eq!(clock.at(m, 0.04).1, None);
        }
        clock.new_session(0.2);
        let (t, jump) = clock.at(1.4, 0.04);
        assert_eq!(jump, None);
        assert!((t - 2.16).abs() < 1e-9, "one interval after 1.96: {t}");
    }

    #[test]
    fn liveness_goes_blind_after_its_bound_of_camera_or_wall_time_and_recovers_on_analysis() {
        let options = CaptureOptions {
            stall_timeout: Duration::from_secs(2),
            ..CaptureOptions::default()
        };
        let now = Instant::now();
        let mut live = Liveness::new(&options);
        assert_eq!(live.bound, Duration::from_secs(2));
        assert_eq!(live.on_decoded(0, 0.0, now), None);
        assert_eq!(live.on_decoded(1, 0.2, now), None, "progress");
        assert_eq!(live.on_decoded(1, 2.2, now), None, "exactly the bound");
        assert_eq!(live.on_decoded(1, 2.3, now), Some(true), "camera time");
        assert_eq!(live.on_decoded(1, 9.0, now), None, "reported once");
        assert_eq!(
            live.on_decoded(2, 9.2, now),
            Some(false),
            "analysis resumed"
        );
        let later = now + Duration::from_secs(3);
        assert_eq!(live.on_decoded(2, 9.3, later), Some(true), "wall time");
        // A new session times from its first frame, whatever its clock says.
        live.new_session();
        assert_eq!(live.on_decoded(3, 0.0, later), Some(false));
        // Slow analysis rates stretch the bound: five intervals at 1 frame/s.
        let slow = Liveness::new(&CaptureOptions {
            analyse_fps: 1.0,
            ..options
        });
        assert_eq!(slow.bound, Duration::from_secs(5));
    }

    #[derive(Default)]
    struct Statuses(Vec<Option<String>>);

    impl CaptureSink for Statuses {
        fn ready(&mut self) -> bool {
            true
        }
        fn frame(&mut self, _frame: Captured) -> bool {
            true
        }
        fn status(&mut self, down: Option<String>) {
            self.0.push(down);
        }
        fn poll_clips(&mut self, _recorder: &mut ClipRecorder, _t: f64) {}
    }

    #[test]
    fn camera_down_says_the_stream_reason_first_and_resolves_when_stream_and_analysis_are_well() {
        let source = CameraSource::File("cam.ts".into());
        let mut sink = Statuses::default();
        let mut health = Health::default();
        health.analysis(true, &mut sink);
        health.stream_down("stalled".into(), &mut sink);
        health.stream_down("refused".into(), &mut sink);
        health.stream_up(&source, &mut sink);
        health.stream_up(&source, &mut sink);
        health.analysis(false, &mut sink);
        health.analysis(false, &mut sink);
        let s = |r: &str| Some(r.to_owned());
        assert_eq!(
            sink.0,
            [s(NOT_ANALYSED), s("stalled"), s(NOT_ANALYSED), None],
            "only changes are reported"
        );
    }
}
