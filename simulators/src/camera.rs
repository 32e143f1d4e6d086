//! `sim camera`: footage served as live RTSP cameras by GStreamer's RTSP server
//! (`libgstrtspserver-1.0`, bound with the `gstreamer-rtsp-server` crate).
//!
//! Every mount re-encodes its file to H.264 (x264enc, `tune=zerolatency`, a keyframe every
//! second, `rtph264pay`) or H.265 (x265enc, the same settings, `rtph265pay`), whatever the
//! footage's own codec (vtest.avi is DivX 3, bikes.mp4 H.264), optionally scaled down, so a
//! client such as the gateway's FFmpeg reader sees what an IP camera sends.
//!
//! An installer's camera (Hikvision, Dahua) serves two streams of one picture: the main
//! stream in H.265 at full size and a sub-stream in H.264, smaller, for analysis and
//! previews, behind RTSP digest authentication. [`Mount::dual`] gives that pair of mounts
//! (Hikvision's paths, `/Streaming/Channels/101` and `/102`), fed by one decoder, and
//! [`CameraOptions::auth`] makes every mount require a digest login (the password is never
//! printed or logged).
//!
//! ```text
//!  looping (the default):
//!   filesrc ─ decodebin ─ videoconvert ─ videorate ─ intervideosink     one per mount, always
//!        ▲ seek to 0 at EOS                               │ channel        playing (real time)
//!                                                         ▼
//!   RTSP media (shared by every client): intervideosrc [─ videoscale] ─ x264enc ─ rtph264pay
//!                                    (or for H.265)                    ─ x265enc ─ rtph265pay
//!   every mount of the same footage reads the same channel (main and sub of one camera)
//!
//!  once (`looping = false`): every client gets its own pipeline from the start of the file
//!   filesrc ─ decodebin ─ videoconvert ─ videorate ─ x264enc ─ rtph264pay name=pay0  → EOS
//! ```
//!
//! A looping mount behaves like a real camera: it runs whether anyone watches or not, every
//! client joins the same live picture, and the clip restarts at its end without the stream
//! noticing (the RTSP side keeps its own clock). The server runs on its own thread with its
//! own GLib main context; [`CameraServer`] stops everything when dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use gstreamer_rtsp_server::gst::prelude::*;
use gstreamer_rtsp_server::prelude::*;
use gstreamer_rtsp_server::{
    glib, gst, gst_rtsp, RTSPAuth, RTSPFilterResult, RTSPMediaFactory, RTSPServer, RTSPToken,
};

/// Errors of the camera simulator.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error("GStreamer is not available: {0}; install it with `./x deps`")]
    Init(glib::Error),
    #[error("no footage to serve: give at least one file")]
    NoMounts,
    #[error("mount path {0:?} must start with '/' and contain only letters, digits, '-', '_', '.' and '/'")]
    BadPath(String),
    #[error("mount path {0} is used twice")]
    DuplicatePath(String),
    #[error("cannot read footage {path}: {source}")]
    Footage {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a GStreamer element is missing ({0}); install the GStreamer plugins with `./x deps`")]
    Pipeline(String),
    #[error("cannot play {path}: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("cannot listen on {address}:{port} for RTSP: {reason}")]
    Listen {
        address: String,
        port: u16,
        reason: String,
    },
    #[error("frames per second must be between 1 and 60, not {0}")]
    BadFps(u32),
    #[error("mount {path}: a scaled width must be even and between 16 and 4096, not {width}")]
    BadWidth { path: String, width: u32 },
    #[error("RTSP authentication needs a user name without ':' and a non-empty password")]
    BadAuth,
    #[error("pass-through serves looping mounts only")]
    PassthroughOnce,
    #[error("cannot pass {path} through: {reason}")]
    NotEncoded { path: PathBuf, reason: String },
}

/// How a mount is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// H.264 constrained baseline (x264enc, `rtph264pay`).
    #[default]
    H264,
    /// H.265 main (x265enc, `rtph265pay`), as a camera's main stream.
    H265,
}

impl Codec {
    /// `H.264` / `H.265`.
    pub fn label(self) -> &'static str {
        match self {
            Codec::H264 => "H.264",
            Codec::H265 => "H.265",
        }
    }
}

/// The login every mount requires (RTSP digest authentication). `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// One stream: an RTSP path, the file it shows, its codec and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `/cam0`, `/lobby`, …
    pub path: String,
    pub footage: PathBuf,
    /// H.264 unless said otherwise.
    pub codec: Codec,
    /// Scale the picture down to this width (even; the height keeps the aspect ratio);
    /// `None` = the footage's size. Looping mounts only.
    pub width: Option<u32>,
    /// Pass-through mounts: start this many milliseconds into the footage (cameras of one
    /// file are then not in lockstep).
    pub offset_ms: u64,
}

impl Mount {
    /// An H.264 mount at the footage's size.
    pub fn new(path: &str, footage: impl Into<PathBuf>) -> Mount {
        Mount {
            path: path.to_owned(),
            footage: footage.into(),
            codec: Codec::H264,
            width: None,
            offset_ms: 0,
        }
    }

    /// This mount encoded with `codec`.
    pub fn with_codec(mut self, codec: Codec) -> Mount {
        self.codec = codec;
        self
    }

    /// This mount scaled down to `width`.
    pub fn scaled_to(mut self, width: u32) -> Mount {
        self.width = Some(width);
        self
    }

    /// Camera `channel` (1, 2, …) as an installer's camera serves it, one picture on two
    /// mounts: the main stream in H.265 at full size on `/Streaming/Channels/{channel}01`
    /// and the sub-stream in H.264, `sub_width` wide, on `/Streaming/Channels/{channel}02`
    /// (Hikvision's paths).
    pub fn dual(channel: u32, footage: impl Into<PathBuf>, sub_width: u32) -> [Mount; 2] {
        let footage = footage.into();
        [
            Mount::new(&format!("/Streaming/Channels/{channel}01"), footage.clone())
                .with_codec(Codec::H265),
            Mount::new(&format!("/Streaming/Channels/{channel}02"), footage).scaled_to(sub_width),
        ]
    }

    /// `/cam0`, `/cam1`, … for a list of files.
    pub fn numbered(files: &[PathBuf]) -> Vec<Mount> {
        files
            .iter()
            .enumerate()
            .map(|(i, f)| Mount::new(&format!("/cam{i}"), f))
            .collect()
    }

    /// Parses `/PATH=FILE` (the path's leading `/` may be left out).
    pub fn parse(spec: &str) -> Option<Mount> {
        let (path, file) = spec.split_once('=')?;
        let path = path.trim();
        if path.is_empty() || file.is_empty() {
            return None;
        }
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Some(Mount::new(&path, file))
    }
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct CameraOptions {
    pub mounts: Vec<Mount>,
    /// Listen address. Default `127.0.0.1`.
    pub address: String,
    /// RTSP port; 0 binds a free one (see [`CameraServer::port`]).
    pub port: u16,
    /// Restart every clip at its end (a live camera). Default true.
    pub looping: bool,
    /// Frames per second of the stream (the footage is resampled); keyframes come once a
    /// second. Default 15.
    pub fps: u32,
    /// Require this login (RTSP digest authentication) on every mount; `None` = open.
    pub auth: Option<Auth>,
    /// Serve already-encoded footage (H.264 / H.265 in MP4, Matroska or MPEG-TS) as it is:
    /// demuxed, parsed and payloaded, never decoded or re-encoded (looping mounts only).
    /// The stream keeps the file's own size, codec, frame rate and GOP; `codec`, `width`
    /// and `fps` do not apply. Costs next to nothing, so a benchmark's load generator does
    /// not compete with what it measures.
    pub passthrough: bool,
}

impl CameraOptions {
    pub fn new(mounts: Vec<Mount>, port: u16) -> CameraOptions {
        CameraOptions {
            mounts,
            address: "127.0.0.1".to_owned(),
            port,
            looping: true,
            fps: 15,
            auth: None,
            passthrough: false,
        }
    }
}

/// A mount being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub path: String,
    pub footage: PathBuf,
    /// `rtsp://ADDRESS:PORT/PATH`, without credentials.
    pub url: String,
    /// The picture size as streamed (looping mounts; `None` for play-once mounts, probed
    /// per client).
    pub size: Option<(i32, i32)>,
    pub codec: Codec,
}

/// A running RTSP server; stops (and disconnects its clients) when dropped.
pub struct CameraServer {
    /// The port it listens on.
    pub port: u16,
    pub mounts: Vec<Served>,
    server: RTSPServer,
    context: glib::MainContext,
    main_loop: glib::MainLoop,
    source: Option<glib::SourceId>,
    thread: Option<JoinHandle<()>>,
    producers: Vec<Producer>,
}

impl CameraServer {
    /// The URL of every mount, in order.
    pub fn urls(&self) -> Vec<String> {
        self.mounts.iter().map(|m| m.url.clone()).collect()
    }

    /// The URL of the mount at `path` (e.g. `/cam0`).
    pub fn url(&self, path: &str) -> Option<&str> {
        self.mounts
            .iter()
            .find(|m| m.path == path)
            .map(|m| m.url.as_str())
    }

    /// Stops now (the same as dropping it).
    pub fn stop(self) {}
}

impl Drop for CameraServer {
    fn drop(&mut self) {
        self.server
            .client_filter(Some(&mut |_, _| RTSPFilterResult::Remove));
        if let Some(source) = self
            .source
            .take()
            .and_then(|id| self.context.find_source_by_id(&id))
        {
            source.destroy();
        }
        self.main_loop.quit();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for p in &mut self.producers {
            p.stop();
        }
    }
}

/// Serves `mounts` on 127.0.0.1:`port` (0 = a free port), looping, 15 fps.
pub fn serve(mounts: Vec<Mount>, port: u16) -> Result<CameraServer, CameraError> {
    serve_with(&CameraOptions::new(mounts, port))
}

/// Serves as `options` say.
pub fn serve_with(options: &CameraOptions) -> Result<CameraServer, CameraError> {
    gst::init().map_err(CameraError::Init)?;
    check(options)?;
    let server = RTSPServer::new();
    server.set_address(&options.address);
    server.set_service(&options.port.to_string());
    if let Some(auth) = &options.auth {
        server.set_auth(Some(&digest_auth(auth)));
    }
    let points = server
        .mount_points()
        .ok_or_else(|| CameraError::Pipeline("RTSP mount points".to_owned()))?;
    let mut producers: Vec<Producer> = Vec::new();
    let mut served = Vec::new();
    for m in &options.mounts {
        let (factory, size) = factory(m, options, &mut producers)?;
        if options.auth.is_some() {
            factory.add_role_from_structure(&camera_role());
        }
        points.add_factory(&m.path, factory);
        served.push((m, size));
    }
    let running = MainLoop::start(&server, options)?;
    let host = if options.address == "0.0.0.0" {
        "127.0.0.1"
    } else {
        options.address.as_str()
    };
    let port = running.port;
    let mounts = served
        .into_iter()
        .map(|(m, size)| Served {
            path: m.path.clone(),
            footage: m.footage.clone(),
            url: format!("rtsp://{host}:{port}{}", m.path),
            size,
            codec: m.codec,
        })
        .collect();
    Ok(CameraServer {
        port,
        mounts,
        server,
        context: running.context,
        main_loop: running.main_loop,
        source: Some(running.source),
        thread: Some(running.thread),
        producers,
    })
}

/// The role a logged-in client gets, and the only one allowed to see and play the mounts.
const ROLE: &str = "camera-user";

/// Digest authentication with one login; anyone else gets `401 Unauthorized` and a digest
/// challenge, as an IP camera answers.
fn digest_auth(auth: &Auth) -> RTSPAuth {
    let rtsp_auth = RTSPAuth::new();
    rtsp_auth.set_supported_methods(gst_rtsp::RTSPAuthMethod::Digest);
    rtsp_auth.set_realm(Some("IP Camera"));
    let token = RTSPToken::builder()
        .field(gstreamer_rtsp_server::RTSP_TOKEN_MEDIA_FACTORY_ROLE, ROLE)
        .build();
    rtsp_auth.add_digest(&auth.user, &auth.password, &token);
    rtsp_auth
}

/// The permissions of [`ROLE`] on a mount: see it and have its media built.
fn camera_role() -> gst::Structure {
    gst::Structure::builder(ROLE)
        .field(gstreamer_rtsp_server::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
        .field(
            gstreamer_rtsp_server::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT,
            true,
        )
        .build()
}

/// Options that can be served: mounts with valid, distinct paths, readable footage and
/// sane widths, a frame rate of 1–60, a usable login.
fn check(options: &CameraOptions) -> Result<(), CameraError> {
    if options.mounts.is_empty() {
        return Err(CameraError::NoMounts);
    }
    if options.passthrough && !options.looping {
        return Err(CameraError::PassthroughOnce);
    }
    if !(1..=60).contains(&options.fps) {
        return Err(CameraError::BadFps(options.fps));
    }
    if let Some(auth) = &options.auth {
        if auth.user.is_empty() || auth.user.contains(':') || auth.password.is_empty() {
            return Err(CameraError::BadAuth);
        }
    }
    for (i, m) in options.mounts.iter().enumerate() {
        let valid = m.path.len() > 1
            && m.path.starts_with('/')
            && m.path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !valid {
            return Err(CameraError::BadPath(m.path.clone()));
        }
        if options.mounts[..i].iter().any(|o| o.path == m.path) {
            return Err(CameraError::DuplicatePath(m.path.clone()));
        }
        if let Some(width) = m.width {
            if width % 2 != 0 || !(16..=4096).contains(&width) {
                return Err(CameraError::BadWidth {
                    path: m.path.clone(),
                    width,
                });
            }
        }
        std::fs::File::open(&m.footage).map_err(|source| CameraError::Footage {
            path: m.footage.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The media factory of one mount and its picture size: looping, every client sees one
/// shared live stream fed by the footage's [`Producer`] (started here unless another mount
/// of the same footage did, kept in `producers`); otherwise each client gets the file from
/// its start.
fn factory(
    m: &Mount,
    options: &CameraOptions,
    producers: &mut Vec<Producer>,
) -> Result<(RTSPMediaFactory, Option<(i32, i32)>), CameraError> {
    let factory = RTSPMediaFactory::new();
    if !options.looping {
        factory.set_launch(&format!(
            "( filesrc location={file} ! decodebin ! videoconvert ! videorate \
             ! video/x-raw,format=I420,framerate={fps}/1 {scale} ! {encode} )",
            file = quoted(&m.footage),
            fps = options.fps,
            scale = m
                .width
                .map(|w| format!("! videoscale ! video/x-raw,width={w}"))
                .unwrap_or_default(),
            encode = encoder(m.codec, options.fps),
        ));
        factory.set_shared(false);
        return Ok((factory, None));
    }
    if options.passthrough {
        return passthrough_factory(m, producers);
    }
    let producer = match producers
        .iter()
        .position(|p| p.footage == m.footage && p.relay.is_none())
    {
        Some(i) => &producers[i],
        None => {
            producers.push(Producer::start(&m.footage, options.fps)?);
            &producers[producers.len() - 1]
        }
    };
    let (w, h) = producer.size;
    let size = scaled(producer.size, m.width);
    let scale = if size == (w, h) {
        String::new()
    } else {
        format!(
            "! videoscale ! video/x-raw,width={},height={} ",
            size.0, size.1
        )
    };
    factory.set_launch(&format!(
        "( intervideosrc channel={channel} timeout=5000000000 \
         ! video/x-raw,format=I420,width={w},height={h},framerate={fps}/1 \
         {scale}! {encode} )",
        channel = producer.channel,
        fps = options.fps,
        encode = encoder(m.codec, options.fps),
    ));
    factory.set_shared(true);
    Ok((factory, Some(size)))
}

/// The media factory of a pass-through mount: its own [`Producer`] (its own start offset)
/// relays the file's parsed access units into each media's `appsrc`, timestamped anew on
/// arrival, and the payloader for the file's codec sends them.
fn passthrough_factory(
    m: &Mount,
    producers: &mut Vec<Producer>,
) -> Result<(RTSPMediaFactory, Option<(i32, i32)>), CameraError> {
    let producer = Producer::relay(&m.footage, m.offset_ms as f64 / 1000.0)?;
    let (Some(relay), Some(caps)) = (producer.relay.clone(), producer.caps.clone()) else {
        return Err(CameraError::Pipeline("pass-through relay".to_owned()));
    };
    let payloader = match caps.structure(0).map(|s| s.name().as_str()) {
        Some("video/x-h264") => "rtph264pay",
        Some("video/x-h265") => "rtph265pay",
        other => {
            return Err(CameraError::NotEncoded {
                path: m.footage.clone(),
                reason: format!("{other:?} is not H.264 or H.265"),
            })
        }
    };
    let factory = RTSPMediaFactory::new();
    factory.set_launch(&format!(
        "( appsrc name=relay is-live=true format=time do-timestamp=true \
         max-bytes=8000000 leaky-type=downstream ! {payloader} name=pay0 pt=96 \
         config-interval=-1 )"
    ));
    factory.set_shared(true);
    factory.connect_media_configure(move |_, media| {
        let src = media
            .element()
            .downcast::<gst::Bin>()
            .ok()
            .and_then(|bin| bin.by_name("relay"));
        if let Some(src) = src {
            src.set_property("caps", &caps);
            relay.add(&src);
        }
    });
    let size = producer.size;
    producers.push(producer);
    Ok((factory, Some(size)))
}

/// Where a pass-through producer's access units go: every live media's `appsrc`.
#[derive(Default)]
struct Relay {
    /// Weak: a media that is gone drops out on the next push. A mutex because media are
    /// configured on the RTSP thread while the producer pushes from its streaming thread.
    sources: std::sync::Mutex<Vec<glib::WeakRef<gst::Element>>>,
}

impl Relay {
    fn add(&self, src: &gst::Element) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.push(src.downgrade());
        }
    }

    /// Pushes a copy of `buffer` without timestamps (the `appsrc` stamps its arrival, so a
    /// loop back to the file's start does not send time back) to every live source.
    fn push(&self, buffer: &gst::Buffer) {
        let Ok(mut sources) = self.sources.lock() else {
            return;
        };
        let mut copy = buffer.copy();
        {
            let b = copy.make_mut();
            b.set_pts(gst::ClockTime::NONE);
            b.set_dts(gst::ClockTime::NONE);
        }
        sources.retain(|weak| match weak.upgrade() {
            Some(src) => {
                let _ = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&copy]);
                true
            }
            None => false,
        });
    }
}

/// The size of a `size` picture scaled to `width` (even height, aspect kept); never larger.
fn scaled(size: (i32, i32), width: Option<u32>) -> (i32, i32) {
    match width {
        Some(w) if (w as i32) < size.0 => {
            let w = w as i32;
            let h = ((i64::from(size.1) * i64::from(w) / i64::from(size.0)) as i32 / 2 * 2).max(2);
            (w, h)
        }
        _ => size,
    }
}

/// The RTSP server attached to a GLib main loop of its own, run on a named thread.
struct MainLoop {
    context: glib::MainContext,
    main_loop: glib::MainLoop,
    source: glib::SourceId,
    thread: JoinHandle<()>,
    /// The port the server is bound to (the requested one, or the free one it got for 0).
    port: u16,
}

impl MainLoop {
    fn start(server: &RTSPServer, options: &CameraOptions) -> Result<Self, CameraError> {
        let listen = |reason: String| CameraError::Listen {
            address: options.address.clone(),
            port: options.port,
            reason,
        };
        let context = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let source = server
            .attach(Some(&context))
            .map_err(|e| listen(e.to_string()))?;
        let port =
            u16::try_from(server.bound_port()).map_err(|_| listen("no bound port".to_owned()))?;
        let (running, owned) = (main_loop.clone(), context.clone());
        let thread = std::thread::Builder::new()
            .name("sim-camera-rtsp".to_owned())
            .spawn(move || {
                let _ = owned.with_thread_default(|| running.run());
            })
            .map_err(|e| CameraError::Pipeline(format!("RTSP thread: {e}")))?;
        Ok(MainLoop {
            context,
            main_loop,
            source,
            thread,
            port,
        })
    }
}

/// H.264 or H.265 for live viewing: no B-frames, a keyframe (with the parameter sets)
/// every second.
fn encoder(codec: Codec, fps: u32) -> String {
    match codec {
        Codec::H264 => format!(
            "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=2048 \
             threads=1 ! video/x-h264,profile=constrained-baseline \
             ! rtph264pay name=pay0 pt=96 config-interval=-1"
        ),
        Codec::H265 => format!(
            "x265enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=2048 \
             option-string=\"pools=1:frame-threads=1:log-level=error\" \
             ! video/x-h265,profile=main ! rtph265pay name=pay0 pt=96 config-interval=-1"
        ),
    }
}

/// A file path as a quoted gst-launch value.
fn quoted(path: &Path) -> String {
    let s = path.to_string_lossy();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A looping decoder feeding an `intervideosink` channel in real time.
struct Producer {
    footage: PathBuf,
    channel: String,
    size: (i32, i32),
    /// Pass-through producers: where the access units go, and their caps.
    relay: Option<Arc<Relay>>,
    caps: Option<gst::Caps>,
    pipeline: gst::Pipeline,
    stopping: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl Producer {
    fn start(footage: &Path, fps: u32) -> Result<Producer, CameraError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let channel = format!(
            "sim-camera-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Producer::launch(
            footage,
            &format!(
                "filesrc name=src ! decodebin ! videoconvert ! videorate \
                 ! video/x-raw,format=I420,framerate={fps}/1 \
                 ! intervideosink name=sink channel={channel}"
            ),
            channel,
            None,
            0.0,
        )
    }

    /// A pass-through producer: the file demuxed and parsed (never decoded) into an
    /// `appsink` that keeps real time, from `offset_s` seconds in, looping.
    fn relay(footage: &Path, offset_s: f64) -> Result<Producer, CameraError> {
        let relay = Arc::new(Relay::default());
        Producer::launch(
            footage,
            "filesrc name=src ! parsebin ! appsink name=sink sync=true emit-signals=true \
             max-buffers=4",
            String::new(),
            Some(relay),
            offset_s,
        )
    }

    /// Prerolls `launch` (a `filesrc name=src` … `name=sink` pipeline) on `footage`, seeks
    /// to `offset_s`, plays it and loops it at its end.
    fn launch(
        footage: &Path,
        launch: &str,
        channel: String,
        relay: Option<Arc<Relay>>,
        offset_s: f64,
    ) -> Result<Producer, CameraError> {
        let pipeline = gst::parse::launch(launch)
            .map_err(|e| CameraError::Pipeline(e.to_string()))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| CameraError::Pipeline("not a pipeline".to_owned()))?;
        let decode_error = |reason: String| CameraError::Decode {
            path: footage.to_owned(),
            reason,
        };
        let src = pipeline
            .by_name("src")
            .ok_or_else(|| CameraError::Pipeline("filesrc".to_owned()))?;
        src.set_property("location", footage.to_string_lossy().as_ref());
        // Preroll to learn the picture size before the RTSP side is described.
        let fail = |pipeline: &gst::Pipeline, reason: String| {
            let _ = pipeline.set_state(gst::State::Null);
            Err(decode_error(reason))
        };
        if let Err(e) = pipeline.set_state(gst::State::Paused) {
            return fail(&pipeline, bus_error(&pipeline).unwrap_or(e.to_string()));
        }
        let (result, _, _) = pipeline.state(gst::ClockTime::from_seconds(10));
        if result.is_err() {
            return fail(
                &pipeline,
                bus_error(&pipeline).unwrap_or_else(|| "it does not preroll".to_owned()),
            );
        }
        let sink = pipeline.by_name("sink");
        let caps = sink
            .as_ref()
            .and_then(|s| s.static_pad("sink"))
            .and_then(|p| p.current_caps());
        let size = caps
            .as_ref()
            .and_then(|c| c.structure(0))
            .and_then(|s| Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?)));
        let Some(size) = size else {
            return fail(&pipeline, "no video stream".to_owned());
        };
        if offset_s > 0.0 {
            let at = gst::ClockTime::from_nseconds((offset_s * 1e9) as u64);
            if let Err(e) =
                pipeline.seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT, at)
            {
                return fail(&pipeline, format!("cannot start {offset_s} s in: {e}"));
            }
            let _ = pipeline.state(gst::ClockTime::from_seconds(10));
        }
        if let (Some(relay), Some(sink)) = (&relay, &sink) {
            let relay = relay.clone();
            sink.connect("new-sample", false, move |args| {
                let sample = args
                    .first()
                    .and_then(|v| v.get::<gst::Element>().ok())
                    .and_then(|s| s.emit_by_name::<Option<gst::Sample>>("pull-sample", &[]));
                if let Some(buffer) = sample.as_ref().and_then(|s| s.buffer_owned()) {
                    relay.push(&buffer);
                }
                Some(gst::FlowReturn::Ok.to_value())
            });
        }
        if pipeline.set_state(gst::State::Playing).is_err() {
            return fail(
                &pipeline,
                bus_error(&pipeline).unwrap_or_else(|| "it does not play".to_owned()),
            );
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (pipeline, stopping) = (pipeline.clone(), stopping.clone());
            let name = footage.display().to_string();
            std::thread::Builder::new()
                .name("sim-camera-loop".to_owned())
                .spawn(move || loop_at_eos(&pipeline, &stopping, &name))
                .map_err(|e| CameraError::Pipeline(format!("loop thread: {e}")))?
        };
        Ok(Producer {
            footage: footage.to_owned(),
            channel,
            size,
            relay,
            caps,
            pipeline,
            stopping,
            watcher: Some(watcher),
        })
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// The first error message waiting on the pipeline's bus.
fn bus_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(e) = msg.view() {
            return Some(e.error().to_string());
        }
    }
    None
}

/// Restarts the clip at its end until `stopping`.
fn loop_at_eos(pipeline: &gst::Pipeline, stopping: &AtomicBool, name: &str) {
    let Some(bus) = pipeline.bus() else { return };
    while !stopping.load(Ordering::Relaxed) {
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(100),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => {
                if let Err(e) = pipeline.seek_simple(
                    gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                    gst::ClockTime::ZERO,
                ) {
                    tracing::warn!(footage = name, error = %e, "cannot restart the clip");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            gst::MessageView::Error(e) => {
                tracing::warn!(footage = name, error = %e.error(), "camera footage failed");
                std::thread::sleep(Duration::from_secs(1));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_specs_parse_path_and_file() {
        assert_eq!(
            Mount::parse("/lobby=a.avi"),
            Some(Mount::new("/lobby", "a.avi"))
        );
        assert_eq!(Mount::parse("gate=b.mp4").unwrap().path, "/gate");
        assert_eq!(Mount::parse("nofile="), None);
        assert_eq!(Mount::parse("just-a-file.mp4"), None);
        let numbered = Mount::numbered(&["a.avi".into(), "b.mp4".into()]);
        assert_eq!(
            numbered.iter().map(|m| m.path.as_str()).collect::<Vec<_>>(),
            ["/cam0", "/cam1"]
        );
    }

    #[test]
    fn bad_mounts_are_refused_before_anything_starts() {
        assert!(matches!(serve(vec![], 0), Err(CameraError::NoMounts)));
        let err = serve(vec![Mount::new("/cam0", "/no/such/file.avi")], 0).err();
        assert!(matches!(err, Some(CameraError::Footage { .. })), "{err:?}");
        let err = serve(vec![Mount::new("/cam 0", "/etc/hostname")], 0).err();
        assert!(matches!(err, Some(CameraError::BadPath(_))), "{err:?}");
    }

    #[test]
    fn a_file_that_is_not_video_cannot_be_served() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.mp4");
        std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
        let err = serve(vec![Mount::new("/cam0", &junk)], 0).err();
        assert!(matches!(err, Some(CameraError::Decode { .. })), "{err:?}");
    }

    #[test]
    fn passthrough_serves_only_h264_or_h265_footage_and_only_looping() {
        let vtest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vendor/footage/vtest.avi");
        let mut options = CameraOptions::new(vec![Mount::new("/cam0", &vtest)], 0);
        options.passthrough = true;
        // vtest.avi is DivX 3: it can only be served re-encoded.
        let err = serve_with(&options).err();
        assert!(
            matches!(err, Some(CameraError::NotEncoded { .. })),
            "{err:?}"
        );
        options.looping = false;
        let err = serve_with(&options).err();
        assert!(matches!(err, Some(CameraError::PassthroughOnce)), "{err:?}");
    }

    #[test]
    fn file_paths_are_quoted_for_gst_launch() {
        assert_eq!(quoted(Path::new("/a b/\"c\".mp4")), r#""/a b/\"c\".mp4""#);
    }
}
