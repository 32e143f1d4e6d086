//! Live view: a camera's own packets remuxed, never re-encoded, to fragmented MP4 for the
//! console's browsers (Media Source Extensions), as Frigate and go2rtc do.
//!
//! ```text
//! capture / main-stream thread                       console (one task per viewer)
//! read ─▶ ClipRecorder::push ─▶ LiveTap ─▶ LiveFeed ─┬─ backlog: init + fragments since the
//!         (the clip ring)       (FFmpeg mp4 muxer,   │  last keyframe (under a lock)
//!                                only while watched) └─ broadcast of later fragments ─▶ Viewer ─▶ WebSocket
//! ```
//!
//! One demux (the pipeline's own) and one muxer per stream, whatever the number of viewers:
//! a viewer adds a subscription, not work on the camera thread. The muxer runs only while
//! someone watches; a first viewer gets the clip ring's latest GOP at once (the picture
//! starts on a keyframe without waiting for the next one), then every frame as its own
//! fragment (`frag_every_frame`: a fragment leaves when the next frame arrives, one frame
//! interval of latency — the muxer takes a frame's duration from the next timestamp; a
//! guessed duration that came out long would make it rewrite that next timestamp). The
//! camera thread never waits for a viewer: the broadcast drops
//! what a slow viewer has not taken ([`FEED_CAPACITY`]); that viewer then skips to the next
//! keyframe ([`Viewer::next`]). The console drops a viewer whose socket does not drain.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ffmpeg::{codec, format, Packet, Rational};
use ffmpeg_next as ffmpeg;
use tokio::sync::broadcast;

use super::evidence::{add_remux_stream, mp4_capable, rebased};
use super::worth_logging;

/// Errors of the live remuxer (counted and logged; the muxer restarts at the next keyframe).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("FFmpeg: {0}")]
    Ffmpeg(#[from] ffmpeg::Error),
    #[error("the mp4 muxer wrote no init segment with a codec configuration")]
    NoInit,
    #[error("a packet without timestamps")]
    Untimed,
}

/// Live fragments a viewer may fall behind before it skips to the next keyframe (2.5 s at
/// 25 fps). The broadcast keeps this many fragments while the stream is watched.
pub const FEED_CAPACITY: usize = 64;

/// The init segment of a muxer session: what a browser needs before any fragment.
#[derive(Debug)]
pub struct Init {
    /// Increases with every muxer start of the feed.
    pub session: u64,
    /// The MSE type, e.g. `video/mp4; codecs="avc1.42C01E"`.
    pub mime: String,
    /// `h264` or `hevc` (FFmpeg's name).
    pub codec: String,
    pub width: u32,
    pub height: u32,
    /// `ftyp` + `moov`.
    pub data: Bytes,
}

/// One `moof` + `mdat` (one frame).
#[derive(Debug, Clone)]
pub struct Fragment {
    pub session: u64,
    /// Increases by one per fragment within the feed (across sessions).
    pub seq: u64,
    /// Starts with a keyframe: a viewer that lost fragments can resume here.
    pub key: bool,
    pub data: Bytes,
}

/// What the broadcast carries.
#[derive(Debug, Clone)]
enum LiveMsg {
    /// A muxer session started: its init and backlog are in the feed's state.
    Start(u64),
    Fragment(Fragment),
    /// The stream's codec does not go in MP4.
    Unsupported(String),
}

/// What a viewer sends on, in order.
#[derive(Debug, Clone)]
pub enum LiveItem {
    /// (Re)start the player with this init segment; fragments follow.
    Init(Arc<Init>),
    Fragment(Bytes),
    /// The stream cannot be played in a browser (its codec, e.g. `mjpeg`).
    Unsupported(String),
}

/// The feed's shared state: the current session's start and backlog, and the broadcast.
struct FeedState {
    tx: broadcast::Sender<LiveMsg>,
    init: Option<Arc<Init>>,
    /// Fragments since the latest keyframe of this session (a new viewer starts with them).
    gop: Vec<Fragment>,
    unsupported: Option<String>,
    next_session: u64,
    next_seq: u64,
}

/// The live feed of one camera stream, shared by its capture thread (the [`LiveTap`]) and
/// the console's viewers.
pub struct LiveFeed {
    /// Locked briefly by the capture thread per fragment and by a viewer joining or
    /// resyncing: a joiner's snapshot and its subscription are taken together, so it misses
    /// nothing and sees nothing twice (sequence numbers remove the overlap).
    state: Mutex<FeedState>,
    /// Viewers now (the tap muxes only while there is one); a gauge for the status.
    viewers: AtomicUsize,
    /// Fragments produced.
    pub fragments: AtomicU64,
    /// Muxer sessions started.
    pub starts: AtomicU64,
    /// Times a viewer fell behind by more than [`FEED_CAPACITY`] and skipped ahead.
    pub skips: AtomicU64,
    /// Muxer errors.
    pub errors: AtomicU64,
    /// Viewers the console dropped because their socket did not drain.
    pub dropped: AtomicU64,
}

impl Default for LiveFeed {
    fn default() -> Self {
        LiveFeed {
            state: Mutex::new(FeedState {
                tx: broadcast::channel(FEED_CAPACITY).0,
                init: None,
                gop: Vec::new(),
                unsupported: None,
                next_session: 1,
                next_seq: 1,
            }),
            viewers: AtomicUsize::new(0),
            fragments: AtomicU64::new(0),
            starts: AtomicU64::new(0),
            skips: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for LiveFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFeed")
            .field("viewers", &self.viewers())
            .finish_non_exhaustive()
    }
}

impl LiveFeed {
    /// Viewers now.
    pub fn viewers(&self) -> usize {
        self.viewers.load(Ordering::Relaxed)
    }

    /// A new viewer, unless `max` already watch (`None`).
    pub fn watch(self: &Arc<Self>, max: usize) -> Option<Viewer> {
        self.viewers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        let rx = match self.state.lock() {
            Ok(st) => st.tx.subscribe(),
            Err(_) => {
                self.viewers.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
        };
        let mut viewer = Viewer {
            feed: self.clone(),
            rx,
            session: 0,
            last_seq: 0,
            need_key: true,
            pending: VecDeque::new(),
        };
        viewer.resync();
        Some(viewer)
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, FeedState>> {
        self.state.lock().ok()
    }

    /// A muxer session starts with `init` and the backlog `fragments` (data, key): they
    /// become the state new viewers start from; watching viewers are told to resync.
    fn begin(&self, mut init: Init, fragments: Vec<(Bytes, bool)>) -> Option<u64> {
        let mut st = self.lock()?;
        let session = st.next_session;
        st.next_session += 1;
        init.session = session;
        st.init = Some(Arc::new(init));
        st.unsupported = None;
        st.gop.clear();
        for (data, key) in fragments {
            let f = st.fragment(session, data, key);
            st.keep(f);
        }
        self.starts.fetch_add(1, Ordering::Relaxed);
        let _ = st.tx.send(LiveMsg::Start(session));
        Some(session)
    }

    /// A live fragment of `session`.
    fn publish(&self, session: u64, data: Bytes, key: bool) {
        let Some(mut st) = self.lock() else { return };
        let f = st.fragment(session, data, key);
        st.keep(f.clone());
        self.fragments.fetch_add(1, Ordering::Relaxed);
        // Never waits: a viewer that has not taken FEED_CAPACITY fragments loses the oldest.
        let _ = st.tx.send(LiveMsg::Fragment(f));
    }

    /// Nobody watches or the stream ended: the backlog goes, and so does the broadcast's
    /// memory of past fragments when no viewer is subscribed.
    fn idle(&self) {
        let Some(mut st) = self.lock() else { return };
        st.init = None;
        st.gop.clear();
        st.unsupported = None;
        if st.tx.receiver_count() == 0 {
            st.tx = broadcast::channel(FEED_CAPACITY).0;
        }
    }

    fn unsupported(&self, codec: String) {
        let Some(mut st) = self.lock() else { return };
        if st.unsupported.as_deref() != Some(codec.as_str()) {
            st.init = None;
            st.gop.clear();
            st.unsupported = Some(codec.clone());
            let _ = st.tx.send(LiveMsg::Unsupported(codec));
        }
    }
}

impl FeedState {
    fn fragment(&mut self, session: u64, data: Bytes, key: bool) -> Fragment {
        let seq = self.next_seq;
        self.next_seq += 1;
        Fragment {
            session,
            seq,
            key,
            data,
        }
    }

    /// Keeps `f` in the backlog (which restarts at each keyframe).
    fn keep(&mut self, f: Fragment) {
        if f.key {
            self.gop.clear();
        }
        if f.key || !self.gop.is_empty() {
            self.gop.push(f);
        }
    }
}

/// One viewer of a feed: the feed's backlog, then its live fragments, skipping to the next
/// keyframe after falling behind. Counted in [`LiveFeed::viewers`] until dropped.
pub struct Viewer {
    feed: Arc<LiveFeed>,
    rx: broadcast::Receiver<LiveMsg>,
    /// The session whose init was sent (0: none yet).
    session: u64,
    /// The last fragment sent (fragments at or before it are not sent again).
    last_seq: u64,
    /// Fragments were lost: send nothing until a keyframe.
    need_key: bool,
    pending: VecDeque<LiveItem>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.feed.viewers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Viewer {
    /// The next item to send; `None` when the feed is gone. Cancel-safe (nothing is lost
    /// when the future is dropped before it completes).
    pub async fn next(&mut self) -> Option<LiveItem> {
        use broadcast::error::RecvError;
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            match self.rx.recv().await {
                Ok(LiveMsg::Start(s)) if s > self.session => self.resync(),
                Ok(LiveMsg::Start(_)) => {}
                Ok(LiveMsg::Unsupported(codec)) => {
                    self.session = 0;
                    return Some(LiveItem::Unsupported(codec));
                }
                Ok(LiveMsg::Fragment(f)) => {
                    if let Some(data) = self.take(f) {
                        return Some(LiveItem::Fragment(data));
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    self.feed.skips.fetch_add(1, Ordering::Relaxed);
                    self.need_key = true;
                    // A session start may be among what was lost.
                    self.resync();
                    if self.pending.is_empty() {
                        self.resume_from_backlog();
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Whether a live fragment is sent: this session's, new, and decodable from here.
    fn take(&mut self, f: Fragment) -> Option<Bytes> {
        if f.session != self.session || f.seq <= self.last_seq {
            return None;
        }
        if self.need_key && !f.key {
            return None;
        }
        self.need_key = false;
        self.last_seq = f.seq;
        Some(f.data)
    }

    /// Starts over from the feed's state: its init and backlog when a newer session runs.
    fn resync(&mut self) {
        let Some(st) = self.feed.lock() else { return };
        if let Some(codec) = &st.unsupported {
            self.pending.push_back(LiveItem::Unsupported(codec.clone()));
            return;
        }
        let Some(init) = st.init.clone().filter(|i| i.session > self.session) else {
            return;
        };
        self.session = init.session;
        self.need_key = false;
        self.pending.clear();
        self.pending.push_back(LiveItem::Init(init));
        for f in st.gop.iter().filter(|f| f.session == self.session) {
            self.last_seq = f.seq;
            self.pending.push_back(LiveItem::Fragment(f.data.clone()));
        }
    }

    /// After a lag: if the backlog's keyframe is newer than what was sent, resume there
    /// (no wait for the next keyframe), else wait for it.
    fn resume_from_backlog(&mut self) {
        let Some(st) = self.feed.lock() else { return };
        let newer = st
            .gop
            .first()
            .is_some_and(|f| f.session == self.session && f.seq > self.last_seq);
        if !newer {
            return;
        }
        self.need_key = false;
        for f in &st.gop {
            self.last_seq = f.seq;
            self.pending.push_back(LiveItem::Fragment(f.data.clone()));
        }
    }
}

/// The capture thread's side of a feed: muxes the stream's packets while someone watches.
pub struct LiveTap {
    feed: Arc<LiveFeed>,
    /// The current stream's parameters and time base.
    stream: Option<(codec::Parameters, Rational)>,
    muxer: Option<(Muxer, u64)>,
    /// After a muxer error: start again only at a keyframe (not from the ring, which holds
    /// the packet that failed).
    wait_key: bool,
    /// Viewers were told this session's codec cannot be played (told once per session).
    told_unsupported: bool,
}

impl LiveTap {
    pub fn new(feed: Arc<LiveFeed>) -> Self {
        LiveTap {
            feed,
            stream: None,
            muxer: None,
            wait_key: false,
            told_unsupported: false,
        }
    }

    /// A new stream session (its codec may differ): the next packet starts a new muxer.
    pub fn start_session(&mut self, params: &codec::Parameters, time_base: Rational) {
        self.restart();
        self.stream = Some((params.clone(), time_base));
        self.wait_key = false;
        self.told_unsupported = false;
    }

    /// The stream ended or its timestamps went back: the muxer (which refuses decreasing
    /// timestamps) starts again from the ring's next keyframe; viewers get a new session.
    pub fn restart(&mut self) {
        self.muxer = None;
        self.told_unsupported = false;
        self.feed.idle();
    }

    /// Nobody watches: the muxer goes (a no-op on the packet path when none runs).
    fn stop(&mut self) {
        if self.muxer.take().is_some() {
            self.feed.idle();
        }
    }

    /// A packet of the stream, already in the clip ring; `ring_gop` gives the ring's packets
    /// from its latest keyframe (this one included) for a muxer that starts now.
    pub fn on_packet(&mut self, packet: &Packet, ring_gop: impl FnOnce() -> Vec<Packet>) {
        if self.feed.viewers() == 0 {
            self.stop();
            return;
        }
        if let Some((muxer, session)) = self.muxer.as_mut() {
            let session = *session;
            match muxer.write(packet) {
                Ok(Some((data, key))) => self.feed.publish(session, data, key),
                Ok(None) => {}
                Err(e) => self.failed(&e),
            }
            return;
        }
        let Some((params, tb)) = self.stream.as_ref() else {
            return;
        };
        if !mp4_capable(params.id()) {
            if !self.told_unsupported {
                self.told_unsupported = true;
                self.feed.unsupported(codec_name(params.id()));
            }
            return;
        }
        if self.wait_key && !packet.is_key() {
            return;
        }
        let packets = ring_gop();
        if packets.is_empty() {
            return;
        }
        match start(&self.feed, params, *tb, &packets) {
            Ok(started) => {
                self.wait_key = false;
                self.muxer = Some(started);
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, e: &LiveError) {
        let n = self.feed.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if worth_logging(n) {
            tracing::warn!(error = %e, errors = n, "live view remux failed; restarting at the next keyframe");
        }
        self.stop();
        self.wait_key = true;
    }
}

/// A muxer over `packets` (from a keyframe), its session begun on `feed`.
fn start(
    feed: &LiveFeed,
    params: &codec::Parameters,
    tb: Rational,
    packets: &[Packet],
) -> Result<(Muxer, u64), LiveError> {
    let (mut muxer, init) = Muxer::new(params, tb)?;
    let mut backlog = Vec::with_capacity(packets.len());
    for p in packets {
        if let Some(fragment) = muxer.write(p)? {
            backlog.push(fragment);
        }
    }
    let session = feed.begin(init, backlog).ok_or(LiveError::NoInit)?;
    Ok((muxer, session))
}

/// FFmpeg's name of a codec (`h264`, `hevc`, `mjpeg`, …).
fn codec_name(id: codec::Id) -> String {
    ffmpeg::decoder::find(id)
        .map(|c| c.name().to_owned())
        .unwrap_or_else(|| format!("{id:?}").to_lowercase())
}

/// Where the muxer's output collects between two reads (the muxer's own thread only; a
/// mutex because FFmpeg's custom I/O wants a `Send` writer).
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut v) => {
                v.extend_from_slice(buf);
                Ok(buf.len())
            }
            Err(_) => Err(std::io::Error::other("live sink poisoned")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn take(&self) -> Bytes {
        self.0
            .lock()
            .map(|mut v| Bytes::from(std::mem::take(&mut *v)))
            .unwrap_or_default()
    }
}

/// FFmpeg's mp4 muxer writing fragmented MP4 into memory (no file, no re-encoding).
pub struct Muxer {
    out: format::context::Output,
    sink: Sink,
    tb_in: Rational,
    tb_out: Rational,
    /// The first packet's timestamp: the session's media time starts at zero.
    first: Option<i64>,
    /// Whether the last packet written (whose fragment the next write emits) was a keyframe.
    prev_key: bool,
}

impl Muxer {
    /// A muxer for a stream of `params` in time base `tb`, and its init segment (with a
    /// placeholder session, set by the feed).
    pub fn new(params: &codec::Parameters, tb: Rational) -> Result<(Muxer, Init), LiveError> {
        let sink = Sink::default();
        let io = format::context::StreamIo::from_write(sink.clone())?;
        let mut out = format::output_to_stream(io, None, Some("mp4"))?;
        add_remux_stream(&mut out, params, tb, true)?;
        let mut opts = ffmpeg::Dictionary::new();
        // Every frame its own fragment; moov first and empty (MSE init segment); offsets
        // relative to each moof, as MSE requires.
        opts.set("movflags", "+frag_every_frame+empty_moov+default_base_moof");
        // Each write reaches the sink at once (not when FFmpeg's I/O buffer fills).
        opts.set("flush_packets", "1");
        out.write_header_with(opts)?;
        let tb_out = out.stream(0).map(|s| s.time_base()).unwrap_or(tb);
        let data = sink.take();
        let mime = mse_codecs(&data).ok_or(LiveError::NoInit)?;
        // SAFETY: `params` wraps a valid AVCodecParameters; width and height are plain
        // fields (ffmpeg-next has no getters on Parameters for them).
        let (width, height) = unsafe {
            let p = params.as_ptr();
            ((*p).width.max(0) as u32, (*p).height.max(0) as u32)
        };
        let init = Init {
            session: 0,
            mime: format!("video/mp4; codecs=\"{mime}\""),
            codec: codec_name(params.id()),
            width,
            height,
            data,
        };
        let muxer = Muxer {
            out,
            sink,
            tb_in: tb,
            tb_out,
            first: None,
            prev_key: false,
        };
        Ok((muxer, init))
    }

    /// Writes one packet; returns the fragment this completed (the previous packet's, and
    /// whether it starts with a keyframe), if any.
    pub fn write(&mut self, packet: &Packet) -> Result<Option<(Bytes, bool)>, LiveError> {
        let ts = packet.dts().or(packet.pts()).ok_or(LiveError::Untimed)?;
        let first = *self.first.get_or_insert(ts);
        rebased(packet, first, self.tb_in, self.tb_out).write(&mut self.out)?;
        let data = self.sink.take();
        let key = std::mem::replace(&mut self.prev_key, packet.is_key());
        Ok((!data.is_empty()).then_some((data, key)))
    }
}

/// The RFC 6381 codec of an init segment, from its `avcC` (`avc1.PPCCLL`) or `hvcC`
/// (`hvc1.…`, ISO/IEC 14496-15 annex E) box; `None` without either.
pub fn mse_codecs(init: &[u8]) -> Option<String> {
    let find = |tag: &[u8]| init.windows(4).position(|w| w == tag).map(|i| i + 4);
    if let Some(at) = find(b"avcC") {
        let b = init.get(at..at + 4)?;
        return Some(format!("avc1.{:02X}{:02X}{:02X}", b[1], b[2], b[3]));
    }
    let at = find(b"hvcC")?;
    let b = init.get(at..at + 13)?;
    let space = ["", "A", "B", "C"][usize::from(b[1] >> 6)];
    let tier = if b[1] & 0x20 != 0 { "H" } else { "L" };
    let profile = b[1] & 0x1f;
    let compat = u32::from_be_bytes([b[2], b[3], b[4], b[5]]).reverse_bits();
    let mut constraints: Vec<u8> = b[6..12].to_vec();
    while constraints.len() > 1 && constraints.last() == Some(&0) {
        constraints.pop();
    }
    let constraints: Vec<String> = constraints.iter().map(|c| format!("{c:X}")).collect();
    Some(format!(
        "hvc1.{space}{profile}.{compat:X}.{tier}{}.{}",
        b[12],
        constraints.join(".")
    ))
}

#[cfg(test)]
mod tests;
