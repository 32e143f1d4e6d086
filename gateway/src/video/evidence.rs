//! Evidence: a JPEG snapshot with boxes and labels per video alert (FFmpeg's mjpeg encoder),
//! and an event clip from a few seconds before to a few seconds after, remuxed from the
//! camera's original packets without re-encoding — as fragmented MP4 (`moov` first, so a
//! browser or phone plays it as it downloads; HEVC tagged `hvc1` as Safari wants) when the
//! codec goes in MP4 (H.264, H.265, MPEG-4, AV1, VP9), else Matroska. The capture thread keeps a ring of packets
//! starting at a keyframe, so a clip always starts decodable. Files are written under a
//! temporary name and renamed, so a reader never sees half a file. Retention prunes by age,
//! then oldest first down to a size budget.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::{codec, encoder, format, Packet, Rational};
use ffmpeg_next as ffmpeg;

use super::detect::BoxF;
use super::{worth_logging, BgrImage};

/// Errors writing evidence (logged and counted; the alert is raised regardless).
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("FFmpeg: {0}")]
    Ffmpeg(#[from] ffmpeg::Error),
    #[error("this FFmpeg has no {0} encoder")]
    NoEncoder(&'static str),
    #[error("no packets for the clip")]
    Empty,
}

/// One box to draw.
#[derive(Debug, Clone)]
pub struct Mark {
    pub bbox: BoxF,
    pub label: String,
    /// Drawn in red (the object that triggered the alert).
    pub highlight: bool,
}

/// Writes `image` with `marks` as a JPEG at `path`.
pub fn snapshot(image: &BgrImage, marks: &[Mark], path: &Path) -> Result<(), EvidenceError> {
    let mut canvas = image.clone();
    for m in marks {
        draw(&mut canvas, m);
    }
    let jpeg = encode_jpeg(&canvas)?;
    write_atomically(path, &jpeg)
}

/// Encodes a BGR image with FFmpeg's mjpeg encoder.
pub fn encode_jpeg(image: &BgrImage) -> Result<Vec<u8>, EvidenceError> {
    // 4:2:0 wants even sizes: drop a last odd row/column.
    let (w, h) = (image.width & !1, image.height & !1);
    if w == 0 || h == 0 {
        return Err(EvidenceError::Ffmpeg(ffmpeg::Error::InvalidData));
    }
    let mut src = ffmpeg::frame::Video::new(Pixel::BGR24, w, h);
    let stride = src.stride(0);
    let row = w as usize * 3;
    {
        let dst = src.data_mut(0);
        for y in 0..h as usize {
            let from = y * image.width as usize * 3;
            dst[y * stride..y * stride + row].copy_from_slice(&image.data[from..from + row]);
        }
    }
    let mut yuv = ffmpeg::frame::Video::empty();
    scaling::Context::get(
        Pixel::BGR24,
        w,
        h,
        Pixel::YUVJ420P,
        w,
        h,
        scaling::Flags::BILINEAR,
    )?
    .run(&src, &mut yuv)?;
    let codec = encoder::find(codec::Id::MJPEG).ok_or(EvidenceError::NoEncoder("mjpeg"))?;
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()?;
    enc.set_width(w);
    enc.set_height(h);
    enc.set_format(Pixel::YUVJ420P);
    enc.set_time_base(Rational(1, 25));
    enc.set_flags(codec::Flags::QSCALE);
    // qscale 3 (like `ffmpeg -q:v 3`): FF_QP2LAMBDA = 118.
    let lambda = 3 * 118;
    enc.set_quality(lambda);
    let mut enc = enc.open_as(codec)?;
    yuv.set_pts(Some(0));
    // SAFETY: `yuv` owns a valid AVFrame; `quality` is a plain int field the encoder reads
    // for fixed-quality encoding (ffmpeg-next has no setter for it).
    unsafe {
        (*yuv.as_mut_ptr()).quality = lambda as i32;
    }
    enc.send_frame(&yuv)?;
    enc.send_eof()?;
    let mut packet = Packet::empty();
    enc.receive_packet(&mut packet)?;
    packet
        .data()
        .map(<[u8]>::to_vec)
        .ok_or(EvidenceError::Empty)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), EvidenceError> {
    let io = |error| EvidenceError::Io {
        path: path.to_path_buf(),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = partial(path);
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// `dir/.name.partial.ext`: same extension, so FFmpeg still picks the muxer from it.
fn partial(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, ext) = name.rsplit_once('.').unwrap_or((&name, "bin"));
    path.with_file_name(format!(".{stem}.partial.{ext}"))
}

fn colour(m: &Mark) -> [u8; 3] {
    if m.highlight {
        [0, 0, 255]
    } else if m.label.starts_with("person") {
        [0, 200, 0]
    } else {
        [0, 165, 255]
    }
}

fn draw(img: &mut BgrImage, m: &Mark) {
    let c = colour(m);
    let thick = (img.width / 320).max(2) as i32;
    let (x1, y1, x2, y2) = (
        m.bbox.x1 as i32,
        m.bbox.y1 as i32,
        m.bbox.x2 as i32,
        m.bbox.y2 as i32,
    );
    fill(img, x1, y1, x2, y1 + thick, c);
    fill(img, x1, y2 - thick, x2, y2, c);
    fill(img, x1, y1, x1 + thick, y2, c);
    fill(img, x2 - thick, y1, x2, y2, c);
    let scale = (img.height / 240).max(2) as i32;
    let text: Vec<char> = m.label.to_uppercase().chars().collect();
    let tw = text.len() as i32 * 4 * scale + scale;
    let th = 7 * scale;
    let ty = if y1 - th >= 0 { y1 - th } else { y1 };
    fill(img, x1, ty, x1 + tw, ty + th, c);
    for (i, ch) in text.iter().enumerate() {
        let glyph = glyph(*ch);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    let px = x1 + scale + (i as i32 * 4 + col) * scale;
                    let py = ty + scale + row as i32 * scale;
                    fill(img, px, py, px + scale, py + scale, [0, 0, 0]);
                }
            }
        }
    }
}

fn fill(img: &mut BgrImage, x1: i32, y1: i32, x2: i32, y2: i32, c: [u8; 3]) {
    let (w, h) = (img.width as i32, img.height as i32);
    let (x1, x2) = (x1.clamp(0, w), x2.clamp(0, w));
    let (y1, y2) = (y1.clamp(0, h), y2.clamp(0, h));
    for y in y1..y2 {
        for x in x1..x2 {
            let i = (y as usize * img.width as usize + x as usize) * 3;
            img.data[i..i + 3].copy_from_slice(&c);
        }
    }
}

/// A 3×5 pixel font for labels (upper case, digits, a little punctuation).
fn glyph(c: char) -> [u8; 5] {
    match c {
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [6, 1, 2, 4, 7],
        '3' => [6, 1, 2, 1, 6],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 6, 1, 6],
        '6' => [3, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 6],
        '.' => [0, 0, 0, 0, 2],
        '#' => [5, 7, 5, 7, 5],
        '-' => [0, 0, 7, 0, 0],
        ':' => [0, 2, 0, 2, 0],
        _ => [0; 5],
    }
}

/// Whether a stream of `codec` can be remuxed into MP4 (what browsers and phones play).
pub fn mp4_capable(codec: codec::Id) -> bool {
    use codec::Id;
    matches!(codec, Id::H264 | Id::HEVC | Id::MPEG4 | Id::AV1 | Id::VP9)
}

/// The clip file for `base`: `.mp4` when the stream goes in MP4, else `.mkv`.
pub fn clip_path(base: &Path, mp4: bool) -> PathBuf {
    base.with_extension(if mp4 { "mp4" } else { "mkv" })
}

/// Asks the capture thread for a clip around now, written to `path` (`.mp4` or `.mkv`, see
/// [`clip_path`]).
#[derive(Debug, Clone)]
pub struct ClipRequest {
    pub path: PathBuf,
}

struct Pending {
    path: PathBuf,
    until: f64,
    packets: Vec<Packet>,
    /// Bytes of `packets`: a clip whose timestamps stop advancing is written once it holds
    /// twice the ring's budget, instead of growing until they move again.
    bytes: usize,
}

/// The longest keyframe interval a ring is sized for: it holds `pre_s` plus up to one GOP
/// (the ring starts at a keyframe, so a clip always starts decodable).
pub const RING_GOP_S: f64 = 4.0;
/// The bitrate a ring is sized for when its stream declares none: a 4K camera's main stream
/// at a high quality (16 Mbit/s).
pub const ASSUMED_MAX_BITRATE: u64 = 16_000_000;
/// The smallest ring budget, whatever the stream declares (a keyframe of a still scene can
/// be larger than a low declared bitrate suggests).
pub const MIN_RING_BYTES: usize = 1 << 20;
/// The largest ring budget.
pub const MAX_RING_BYTES: usize = 64 << 20;

/// The byte budget of a clip ring: `pre_s` plus one GOP ([`RING_GOP_S`]) of a stream at
/// `bitrate` bits per second, twice over (keyframe bursts, variable bitrate), within
/// [`MIN_RING_BYTES`]..=[`MAX_RING_BYTES`]. The ring holds what the time bound keeps; this
/// budget is what it may never exceed.
pub fn ring_budget(pre_s: f64, bitrate: u64) -> usize {
    let seconds = pre_s.max(0.0) + RING_GOP_S;
    let bytes = bitrate as f64 / 8.0 * seconds * 2.0;
    (bytes as usize).clamp(MIN_RING_BYTES, MAX_RING_BYTES)
}

/// A new reference to `packet`'s data (FFmpeg's reference count), not a copy:
/// ffmpeg-next's `clone` copies the data (`av_packet_make_writable`), which a ring and its
/// clips have no need for — nothing writes into a packet once read.
pub fn share(packet: &Packet) -> Packet {
    use ffmpeg::packet::{Mut as _, Ref as _};
    let mut out = Packet::empty();
    // SAFETY: both are valid AVPackets owned by ffmpeg-next wrappers; `av_packet_ref` makes
    // `out` a new reference to `packet`'s buffer (copying the data only when it is not
    // reference-counted) and copies its properties; `out`'s Drop unreferences it.
    let rc = unsafe { ffmpeg::ffi::av_packet_ref(out.as_mut_ptr(), packet.as_ptr()) };
    if rc < 0 {
        return packet.clone();
    }
    out
}

/// The capture thread's packet ring and the clips being collected.
pub struct ClipRecorder {
    pre_s: f64,
    post_s: f64,
    /// The byte budget of the ring for a stream that declares no bitrate (the ceiling).
    max_ring_bytes: usize,
    /// The budget of the current session: [`ring_budget`] of its declared bitrate, at most
    /// `max_ring_bytes`.
    budget: usize,
    session: Option<(codec::Parameters, Rational)>,
    /// (packet, media seconds); starts at a keyframe once one was seen.
    ring: VecDeque<(Packet, f64)>,
    ring_bytes: usize,
    /// Media time of the last packet of this session (`None`: none yet).
    last_t: Option<f64>,
    pending: Vec<Pending>,
    /// Whether the current session's codec goes in MP4: read by the analysis thread when it
    /// names a clip (it asks before the clip is written).
    mp4: Arc<AtomicBool>,
    /// Clips written and failed, for the camera's counters.
    pub written: u64,
    pub failed: u64,
    /// Times the ring was emptied because one GOP alone was over the budget (a stream
    /// without keyframes for that long); it starts again at the next keyframe.
    pub overflows: u64,
}

impl ClipRecorder {
    /// Clips cover `pre_s` before to `post_s` after a request; the ring holds at most
    /// `max_ring_bytes` (whole GOPs are dropped beyond it).
    pub fn new(pre_s: f64, post_s: f64, max_ring_bytes: usize) -> Self {
        ClipRecorder {
            pre_s,
            post_s,
            max_ring_bytes,
            budget: max_ring_bytes,
            session: None,
            ring: VecDeque::new(),
            ring_bytes: 0,
            last_t: None,
            pending: Vec::new(),
            mp4: Arc::new(AtomicBool::new(true)),
            written: 0,
            failed: 0,
            overflows: 0,
        }
    }

    /// A recorder whose ring is sized by [`ring_budget`]: for the stream's declared bitrate,
    /// else for [`ASSUMED_MAX_BITRATE`].
    pub fn for_clips(pre_s: f64, post_s: f64) -> Self {
        Self::new(pre_s, post_s, ring_budget(pre_s, ASSUMED_MAX_BITRATE))
    }

    /// The current session's ring budget, in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes in the ring now.
    pub fn ring_bytes(&self) -> usize {
        self.ring_bytes
    }

    /// Whether this recorder's clips are MP4 (its current stream's codec), shared.
    pub fn mp4_hint(&self) -> Arc<AtomicBool> {
        self.mp4.clone()
    }

    /// A new stream was opened: its packets now fill the ring.
    pub fn start_session(&mut self, params: codec::Parameters, time_base: Rational) {
        self.end_session();
        self.mp4.store(mp4_capable(params.id()), Ordering::Relaxed);
        // SAFETY: `params` wraps a valid AVCodecParameters; `bit_rate` is a plain field
        // (ffmpeg-next has no getter for it). 0 = not declared.
        let declared = unsafe { (*params.as_ptr()).bit_rate };
        self.budget = match u64::try_from(declared) {
            Ok(bps) if bps > 0 => ring_budget(self.pre_s, bps).min(self.max_ring_bytes),
            _ => self.max_ring_bytes,
        };
        self.session = Some((params, time_base));
        self.last_t = None;
    }

    /// The stream ended: pending clips are written with what they have.
    pub fn end_session(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            self.finish(p);
        }
        self.ring.clear();
        self.ring_bytes = 0;
    }

    /// Adds a packet of the video stream at media time `t` (seconds; `None` = untimed).
    pub fn push(&mut self, packet: &Packet, t: Option<f64>) {
        if self.session.is_none() {
            return;
        }
        let t = t.or(self.last_t).unwrap_or(0.0);
        if let Some(last) = self.last_t.filter(|&last| t < last) {
            // The timestamps went back (an encoder restart): one clip cannot span that (the
            // muxer refuses decreasing timestamps) and pending clips would wait until the new
            // timestamps catch up with the old ones. Finish them now, restart the ring.
            tracing::info!(
                from_s = last,
                to_s = t,
                clips = self.pending.len(),
                "packet timestamps went back; clip ring restarted"
            );
            self.end_session();
        }
        self.last_t = Some(t);
        if self.ring.is_empty() && !packet.is_key() {
            return;
        }
        self.ring.push_back((share(packet), t));
        self.ring_bytes += packet.size();
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            p.packets.push(share(packet));
            p.bytes += packet.size();
            if t >= p.until || p.bytes > 2 * self.budget {
                let p = self.pending.swap_remove(i);
                self.finish(p);
            } else {
                i += 1;
            }
        }
        self.trim(t);
    }

    /// Drops GOPs that are entirely older than `pre_s` (or over the byte budget); a single
    /// GOP over the budget empties the ring (its keyframe cannot go alone).
    fn trim(&mut self, now: f64) {
        loop {
            let next_key = self
                .ring
                .iter()
                .skip(1)
                .position(|(p, _)| p.is_key())
                .map(|i| i + 1);
            let Some(k) = next_key else {
                if self.ring_bytes > self.budget {
                    self.overflows += 1;
                    if worth_logging(self.overflows) {
                        tracing::warn!(bytes = self.ring_bytes, budget = self.budget, overflows = self.overflows, "one GOP over the clip ring's budget: ring emptied until the next keyframe");
                    }
                    self.ring.clear();
                    self.ring_bytes = 0;
                }
                return;
            };
            let old = self.ring[k].1 <= now - self.pre_s;
            if !old && self.ring_bytes <= self.budget {
                return;
            }
            for (p, _) in self.ring.drain(..k) {
                self.ring_bytes -= p.size();
            }
        }
    }

    /// The packets from the ring's last keyframe on (what decodes to the latest frame) and
    /// the stream's parameters; `None` before a keyframe of this session.
    pub fn latest_gop(&self) -> Option<(&codec::Parameters, Vec<Packet>)> {
        let (params, _) = self.session.as_ref()?;
        let key = self.ring.iter().rposition(|(p, _)| p.is_key())?;
        Some((
            params,
            self.ring.iter().skip(key).map(|(p, _)| share(p)).collect(),
        ))
    }

    /// Whether this session's ring holds a keyframe (a clip or snapshot can start).
    pub fn has_keyframe(&self) -> bool {
        self.session.is_some() && !self.ring.is_empty()
    }

    /// Starts collecting a clip: the ring (from its keyframe) plus `post_s` more seconds.
    pub fn request(&mut self, req: ClipRequest) {
        let packets: Vec<Packet> = self.ring.iter().map(|(p, _)| share(p)).collect();
        self.pending.push(Pending {
            path: req.path,
            until: self.last_t.unwrap_or(0.0) + self.post_s,
            packets,
            bytes: self.ring_bytes,
        });
    }

    fn finish(&mut self, p: Pending) {
        let Some((params, tb)) = self.session.as_ref() else {
            return;
        };
        match write_clip(&p.path, params, *tb, &p.packets) {
            Ok(()) => {
                self.written += 1;
                tracing::info!(path = %p.path.display(), packets = p.packets.len(), "event clip written");
            }
            Err(e) => {
                self.failed += 1;
                tracing::warn!(path = %p.path.display(), error = %e, "event clip failed");
            }
        }
    }
}

/// Remuxes `packets` (time base `tb`) into a new file, timestamps starting at zero.
pub fn write_clip(
    path: &Path,
    params: &codec::Parameters,
    tb: Rational,
    packets: &[Packet],
) -> Result<(), EvidenceError> {
    let first = packets
        .iter()
        .filter_map(|p| p.dts().or(p.pts()))
        .min()
        .ok_or(EvidenceError::Empty)?;
    let io = |error| EvidenceError::Io {
        path: path.to_path_buf(),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = partial(path);
    let mp4 = path.extension().is_some_and(|e| e == "mp4");
    let mut out = format::output(&tmp)?;
    {
        let mut stream = out.add_stream(encoder::find(codec::Id::None))?;
        stream.set_parameters(params.clone());
        // `hvc1` (parameter sets in the sample entry) is the HEVC tag Apple's players
        // require in MP4; Chromium plays both. Any other: the muxer chooses.
        let tag = match (mp4, params.id()) {
            (true, codec::Id::HEVC) => u32::from_le_bytes(*b"hvc1"),
            _ => 0,
        };
        // SAFETY: the stream's codecpar was just allocated by FFmpeg; clearing (or setting)
        // the codec tag is the standard remux recipe.
        unsafe {
            (*stream.parameters().as_mut_ptr()).codec_tag = tag;
        }
        stream.set_time_base(tb);
    }
    if mp4 {
        let mut opts = ffmpeg::Dictionary::new();
        opts.set("movflags", "+frag_keyframe+empty_moov+default_base_moof");
        out.write_header_with(opts)?;
    } else {
        out.write_header()?;
    }
    let out_tb = out.stream(0).map(|s| s.time_base()).unwrap_or(tb);
    for p in packets {
        let mut q = share(p);
        let dts = p.dts().map(|v| v - first);
        let pts = p.pts().map(|v| v - first).or(dts);
        q.set_dts(dts);
        q.set_pts(pts);
        q.rescale_ts(tb, out_tb);
        q.set_position(-1);
        q.set_stream(0);
        q.write_interleaved(&mut out)?;
    }
    out.write_trailer()?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(io)
}

/// What one retention pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub files: u64,
    pub bytes: u64,
}

/// Deletes evidence older than `max_age`, then the oldest files until the directory tree
/// holds at most `max_bytes`.
pub fn prune(dir: &Path, max_age: Duration, max_bytes: u64) -> Result<Pruned, EvidenceError> {
    let io = |error| EvidenceError::Io {
        path: dir.to_path_buf(),
        error,
    };
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                files.push((
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                    entry.path(),
                ));
            }
        }
    }
    files.sort();
    let now = SystemTime::now();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    let mut pruned = Pruned::default();
    for (modified, len, path) in files {
        let expired = now.duration_since(modified).is_ok_and(|age| age > max_age);
        if !expired && total <= max_bytes {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
            pruned.files += 1;
            pruned.bytes += len;
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_removes_the_oldest_files_beyond_the_size_budget() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let p = dir.path().join("cam").join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let t = SystemTime::now() - Duration::from_secs(100 - i as u64 * 10);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        let pruned = prune(dir.path(), Duration::from_secs(3600), 200).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                files: 1,
                bytes: 100
            }
        );
        assert!(!dir.path().join("cam/a").exists());
        assert!(dir.path().join("cam/c").exists());
        let pruned = prune(dir.path(), Duration::from_secs(85), 1000).unwrap();
        assert_eq!(pruned.files, 1, "b is older than 85 s");
    }

    #[test]
    fn a_ring_budget_is_pre_s_plus_a_gop_of_the_stream_twice_over_within_bounds() {
        // The demo's 2 Mbit/s H.264, 5 s before: (5 + 4) s × 250 kB/s × 2 = 4.5 MB.
        assert_eq!(ring_budget(5.0, 2_000_000), 4_500_000);
        // No bitrate declared: sized for a 16 Mbit/s 4K main stream.
        assert_eq!(ring_budget(5.0, ASSUMED_MAX_BITRATE), 36_000_000);
        assert_eq!(ring_budget(5.0, 10_000), MIN_RING_BYTES);
        assert_eq!(ring_budget(30.0, 200_000_000), MAX_RING_BYTES);
        let recorder = ClipRecorder::for_clips(5.0, 5.0);
        assert_eq!(recorder.budget(), 36_000_000);
    }

    /// A recorder in a session of a stream with no declared bitrate.
    fn recording(pre_s: f64, max_ring_bytes: usize) -> ClipRecorder {
        let mut recorder = ClipRecorder::new(pre_s, 1.0, max_ring_bytes);
        recorder.start_session(codec::Parameters::new(), Rational(1, 90_000));
        recorder
    }

    /// A packet of `size` bytes, a keyframe or not.
    fn packet(size: usize, key: bool) -> Packet {
        let mut p = Packet::copy(&vec![0u8; size]);
        if key {
            p.set_flags(ffmpeg::packet::Flags::KEY);
        }
        p
    }

    #[test]
    fn the_ring_of_a_15_fps_stream_covers_pre_s_and_at_most_one_gop_more() {
        // 15 fps, a keyframe a second, ~2 Mbit/s (a 40 kB keyframe, 15 kB otherwise).
        let mut recorder = recording(5.0, ring_budget(5.0, ASSUMED_MAX_BITRATE));
        for i in 0..30 * 15 {
            let key = i % 15 == 0;
            recorder.push(
                &packet(if key { 40_000 } else { 15_000 }, key),
                Some(i as f64 / 15.0),
            );
        }
        let now = recorder.last_t.unwrap();
        let oldest = recorder.ring.front().unwrap().1;
        assert!(now - oldest >= 5.0, "covers pre_s: {oldest}..{now}");
        assert!(now - oldest < 6.0, "at most one GOP more: {oldest}..{now}");
        assert!(recorder.ring.front().unwrap().0.is_key());
        assert!(
            recorder.ring_bytes() < 1_700_000,
            "{}",
            recorder.ring_bytes()
        );
    }

    #[test]
    fn a_stream_without_keyframes_cannot_grow_the_ring_past_its_budget() {
        let mut recorder = recording(5.0, MIN_RING_BYTES);
        recorder.push(&packet(40_000, true), Some(0.0));
        for i in 1..200 {
            recorder.push(&packet(15_000, false), Some(f64::from(i) / 15.0));
            assert!(recorder.ring_bytes() <= MIN_RING_BYTES);
        }
        assert!(recorder.overflows >= 1);
        assert!(recorder.ring.is_empty(), "waits for the next keyframe");
        recorder.push(&packet(40_000, true), Some(14.0));
        assert_eq!(recorder.ring.len(), 1, "starts again at a keyframe");
    }

    #[test]
    fn a_clip_and_the_ring_share_their_packets_data() {
        let mut recorder = recording(5.0, MIN_RING_BYTES);
        recorder.push(&packet(1_000, true), Some(0.0));
        recorder.request(ClipRequest {
            path: PathBuf::from("/nonexistent/clip.mkv"),
        });
        let ring = recorder.ring[0].0.data().unwrap().as_ptr();
        let clip = recorder.pending[0].packets[0].data().unwrap().as_ptr();
        assert_eq!(ring, clip, "one buffer, two references");
        assert_eq!(recorder.pending[0].bytes, 1_000);
    }

    #[test]
    fn a_snapshot_is_a_jpeg() {
        ffmpeg::init().unwrap();
        let img = BgrImage {
            width: 64,
            height: 48,
            data: vec![128; 64 * 48 * 3],
        };
        let mark = Mark {
            bbox: BoxF {
                x1: 5.0,
                y1: 20.0,
                x2: 40.0,
                y2: 45.0,
            },
            label: "person 0.9 #1".into(),
            highlight: true,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jpg");
        snapshot(&img, &[mark], &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF]);
    }

    /// Two 1-second MPEG-TS segments, each with timestamps from zero, joined byte-wise.
    fn restarted_encoder_clip(dir: &Path) -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut joined = Vec::new();
        for i in 0..2 {
            let segment = dir.join(format!("segment{i}.ts"));
            let status = std::process::Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-i"])
                .arg(root.join("vendor/footage/bikes.mp4"))
                .args([
                    "-t", "1", "-an", "-c:v", "mpeg4", "-g", "10", "-f", "mpegts",
                ])
                .args(["-mpegts_copyts", "1", "-output_ts_offset", "0"])
                .arg(&segment)
                .status()
                .expect("ffmpeg is installed");
            assert!(status.success());
            joined.extend(std::fs::read(&segment).unwrap());
        }
        let path = dir.join("restarted.ts");
        std::fs::write(&path, joined).unwrap();
        path
    }

    /// ffprobe's `format_name` and codec of a file.
    fn probe(path: &Path) -> String {
        let out = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=format_name:stream=codec_name",
            ])
            .args(["-of", "csv=p=0"])
            .arg(path)
            .output()
            .expect("ffprobe is installed");
        assert!(out.status.success(), "ffprobe refused {}", path.display());
        String::from_utf8_lossy(&out.stdout).replace('\n', " ")
    }

    /// Remuxes the first `seconds` of `input` through a recorder into a clip named for the
    /// recorder's codec; returns its path.
    fn clip_of(input: &Path, dir: &Path, seconds: f64) -> PathBuf {
        let mut input = format::input(&input).unwrap();
        let stream = input.streams().best(ffmpeg::media::Type::Video).unwrap();
        let (index, tb) = (stream.index(), stream.time_base());
        let mut recorder = ClipRecorder::new(5.0, 0.5, 64 << 20);
        recorder.start_session(stream.parameters(), tb);
        let path = clip_path(
            &dir.join("clip"),
            recorder.mp4_hint().load(Ordering::Relaxed),
        );
        for (s, packet) in input.packets() {
            if s.index() != index {
                continue;
            }
            let t = packet.dts().map(|ts| ts as f64 * f64::from(tb));
            recorder.push(&packet, t);
            if t.is_some_and(|t| t >= seconds) && recorder.pending.is_empty() && !path.exists() {
                recorder.request(ClipRequest { path: path.clone() });
            }
        }
        recorder.end_session();
        path
    }

    #[test]
    fn an_h264_clip_is_a_fragmented_mp4_with_its_moov_first_and_divx_stays_matroska() {
        crate::video::capture::init_ffmpeg().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vendor/footage");
        let dir = tempfile::tempdir().unwrap();
        let mp4 = clip_of(&root.join("bikes.mp4"), dir.path(), 1.0);
        assert_eq!(mp4.extension().unwrap(), "mp4");
        let probed = probe(&mp4);
        assert!(
            probed.contains("h264") && probed.contains("mp4"),
            "{probed}"
        );
        let bytes = std::fs::read(&mp4).unwrap();
        let at = |tag: &[u8]| bytes.windows(4).position(|w| w == tag);
        assert_eq!(at(b"ftyp"), Some(4), "an MP4 starts with ftyp");
        assert!(at(b"moov") < at(b"moof"), "moov first, then fragments");
        // vtest.avi is DivX 3 (msmpeg4v3): not for MP4, so Matroska.
        let sub = tempfile::tempdir().unwrap();
        let mkv = clip_of(&root.join("vtest.avi"), sub.path(), 1.0);
        assert_eq!(mkv.extension().unwrap(), "mkv");
        assert!(probe(&mkv).contains("matroska"));
    }

    #[test]
    fn a_pending_clip_ends_where_the_timestamps_jump_back_and_is_written() {
        crate::video::capture::init_ffmpeg().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut input = format::input(&restarted_encoder_clip(dir.path())).unwrap();
        let stream = input.streams().best(ffmpeg::media::Type::Video).unwrap();
        let (index, tb) = (stream.index(), stream.time_base());
        let mut recorder = ClipRecorder::new(5.0, 5.0, 64 << 20);
        recorder.start_session(stream.parameters(), tb);
        let clip = dir.path().join("clip.mkv");
        let mut last = f64::MIN;
        for (s, packet) in input.packets() {
            let t = packet.dts().map(|ts| ts as f64 * f64::from(tb));
            if s.index() != index {
                continue;
            }
            if let Some(t) = t {
                if t < last {
                    // The first packet after the jump: the clip is written before it.
                    assert_eq!(recorder.pending.len(), 1, "the clip waits for more");
                    recorder.push(&packet, Some(t));
                    assert!(recorder.pending.is_empty(), "the clip ended at the jump");
                    assert_eq!((recorder.written, recorder.failed), (1, 0));
                    assert_eq!(recorder.ring.len(), 1, "the ring restarts at a keyframe");
                    return;
                }
                last = t;
            }
            recorder.push(&packet, t);
            if t.is_some_and(|t| t >= 0.5) && recorder.pending.is_empty() && !clip.exists() {
                recorder.request(ClipRequest { path: clip.clone() });
            }
        }
        panic!("the timestamps never went back");
    }
}
