//! `sim camera`: footage served as live RTSP cameras by GStreamer's RTSP server
//! (`libgstrtspserver-1.0`, bound with the `gstreamer-rtsp-server` crate).
//!
//! Every mount re-encodes its file to H.264 (x264enc, `tune=zerolatency`, a keyframe every
//! second) packetised by `rtph264pay`, whatever the footage's own codec (vtest.avi is DivX 3,
//! bikes.mp4 H.264), so a client such as the gateway's FFmpeg reader sees what an IP camera
//! sends.
//!
//! ```text
//!  looping (the default):
//!   filesrc ─ decodebin ─ videoconvert ─ videorate ─ intervideosink     one per mount, always
//!        ▲ seek to 0 at EOS                               │ channel        playing (real time)
//!                                                         ▼
//!   RTSP media (shared by every client): intervideosrc ─ x264enc ─ rtph264pay name=pay0
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
use gstreamer_rtsp_server::{glib, gst, RTSPFilterResult, RTSPMediaFactory, RTSPServer};

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
}

/// One camera: an RTSP path and the file it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `/cam0`, `/lobby`, …
    pub path: String,
    pub footage: PathBuf,
}

impl Mount {
    pub fn new(path: &str, footage: impl Into<PathBuf>) -> Mount {
        Mount {
            path: path.to_owned(),
            footage: footage.into(),
        }
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
}

impl CameraOptions {
    pub fn new(mounts: Vec<Mount>, port: u16) -> CameraOptions {
        CameraOptions {
            mounts,
            address: "127.0.0.1".to_owned(),
            port,
            looping: true,
            fps: 15,
        }
    }
}

/// A mount being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub path: String,
    pub footage: PathBuf,
    /// `rtsp://ADDRESS:PORT/PATH`.
    pub url: String,
    /// The picture size (looping mounts; `None` for play-once mounts, probed per client).
    pub size: Option<(i32, i32)>,
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
    let points = server
        .mount_points()
        .ok_or_else(|| CameraError::Pipeline("RTSP mount points".to_owned()))?;
    let mut producers = Vec::new();
    let mut served = Vec::new();
    for m in &options.mounts {
        let (factory, producer) = factory(m, options)?;
        points.add_factory(&m.path, factory);
        served.push((m, producer.as_ref().map(|p| p.size)));
        producers.extend(producer);
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

/// Options that can be served: mounts with valid, distinct paths and readable footage, a
/// frame rate of 1–60.
fn check(options: &CameraOptions) -> Result<(), CameraError> {
    if options.mounts.is_empty() {
        return Err(CameraError::NoMounts);
    }
    if !(1..=60).contains(&options.fps) {
        return Err(CameraError::BadFps(options.fps));
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
        std::fs::File::open(&m.footage).map_err(|source| CameraError::Footage {
            path: m.footage.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The media factory of one mount: looping, every client sees one shared live stream fed
/// by a [`Producer`] (returned too); otherwise each client gets the file from its start.
fn factory(
    m: &Mount,
    options: &CameraOptions,
) -> Result<(RTSPMediaFactory, Option<Producer>), CameraError> {
    let factory = RTSPMediaFactory::new();
    if !options.looping {
        factory.set_launch(&format!(
            "( filesrc location={file} ! decodebin ! videoconvert ! videorate \
             ! video/x-raw,format=I420,framerate={fps}/1 ! {encode} )",
            file = quoted(&m.footage),
            fps = options.fps,
            encode = encoder(options.fps),
        ));
        factory.set_shared(false);
        return Ok((factory, None));
    }
    let producer = Producer::start(&m.footage, options.fps)?;
    factory.set_launch(&format!(
        "( intervideosrc channel={channel} timeout=5000000000 \
         ! video/x-raw,format=I420,width={w},height={h},framerate={fps}/1 \
         ! {encode} )",
        channel = producer.channel,
        w = producer.size.0,
        h = producer.size.1,
        fps = options.fps,
        encode = encoder(options.fps),
    ));
    factory.set_shared(true);
    Ok((factory, Some(producer)))
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

/// H.264 for live viewing: no B-frames, a keyframe (with SPS/PPS) every second.
fn encoder(fps: u32) -> String {
    format!(
        "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=2048 threads=1 \
         ! video/x-h264,profile=constrained-baseline \
         ! rtph264pay name=pay0 pt=96 config-interval=-1"
    )
}

/// A file path as a quoted gst-launch value.
fn quoted(path: &Path) -> String {
    let s = path.to_string_lossy();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A looping decoder feeding an `intervideosink` channel in real time.
struct Producer {
    channel: String,
    size: (i32, i32),
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
        let pipeline = gst::parse::launch(&format!(
            "filesrc name=src ! decodebin ! videoconvert ! videorate \
             ! video/x-raw,format=I420,framerate={fps}/1 \
             ! intervideosink name=sink channel={channel}"
        ))
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
        let caps = pipeline
            .by_name("sink")
            .and_then(|s| s.static_pad("sink"))
            .and_then(|p| p.current_caps());
        let size = caps
            .as_ref()
            .and_then(|c| c.structure(0))
            .and_then(|s| Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?)));
        let Some(size) = size else {
            return fail(&pipeline, "no video stream".to_owned());
        };
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
            channel,
            size,
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
    fn file_paths_are_quoted_for_gst_launch() {
        assert_eq!(quoted(Path::new("/a b/\"c\".mp4")), r#""/a b/\"c\".mp4""#);
    }
}
