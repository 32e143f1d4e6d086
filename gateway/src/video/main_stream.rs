//! The main stream of a camera analysed on its sub-stream (`sub_url`): read on a thread of
//! its own, its packets kept in a clip ring, never decoded except on demand: a snapshot
//! decodes the ring's last GOP (at most a second or two at a keyframe a second) to the
//! latest frame and draws the analysis' boxes scaled from the sub-stream's size to its own.
//!
//! ```text
//! main stream ─ read ─▶ ClipRecorder (ring) ◀── Evidence::Clip ──────┐
//!                        └─ last GOP ─ decode ◀── Evidence::Snapshot ─┤ analysis thread
//!                                                                      │
//! camera_down ◀── CameraHealth (shared with the sub-stream's capture) ◀┘
//! ```
//!
//! While the main stream is down the camera is reported down ("main stream: …"), the
//! analysis goes on on the sub-stream, and evidence comes from the sub-stream (see
//! [`MainStream::ready`]); a request that reaches this thread while it has no picture is
//! served from the sub-stream frame it carries.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use edge_config::CameraSource;
use ffmpeg::{codec, media};
use ffmpeg_next as ffmpeg;
use tokio_util::sync::CancellationToken;

use super::capture::{self, Activity, CaptureError, CaptureOptions, Next};
use super::evidence::{self, ClipRecorder, ClipRequest, Mark};
use super::picture;
use super::{BgrImage, CameraStats, HealthReporter, StreamRole};

/// A snapshot of the main stream for a rule that triggered on the sub-stream.
pub struct SnapshotRequest {
    pub path: PathBuf,
    /// Boxes in the analysed (sub-stream) frame's pixels.
    pub marks: Vec<Mark>,
    /// The analysed frame: its size scales the boxes; it is the snapshot when the main
    /// stream has no picture.
    pub analysed: BgrImage,
}

/// What the analysis asks of the main stream.
pub enum Evidence {
    Clip(ClipRequest),
    Snapshot(SnapshotRequest),
}

/// The main-stream reader of one camera.
pub struct MainStream {
    pub source: CameraSource,
    pub options: CaptureOptions,
    pub recorder: ClipRecorder,
    /// Bounded (8): the analysis never waits on this thread; a request that finds it full
    /// is served from the analysed stream instead.
    pub requests: Receiver<Evidence>,
    /// Whether the ring holds a keyframe of a live session, i.e. evidence can come from
    /// the main stream. Written here, read by the analysis thread to route its requests;
    /// atomic because the two threads share it without a lock (a stale read only sends one
    /// request to the stream that just went down, which then serves it from the sub-stream
    /// frame it carries).
    pub ready: Arc<AtomicBool>,
    pub health: Arc<HealthReporter>,
    pub stats: Arc<CameraStats>,
}

/// Why a main-stream session ended.
enum End {
    Cancelled,
    Eof,
}

impl MainStream {
    /// Reads the main stream until `cancel`, reconnecting with backoff; every outage is
    /// reported through the camera's health.
    pub fn run(mut self, cancel: CancellationToken) {
        let mut backoff = self.options.backoff.0;
        loop {
            let end = self.session(&cancel);
            self.ready.store(false, Ordering::Relaxed);
            self.recorder.end_session();
            let reason = match end {
                Ok(End::Cancelled) => return,
                Ok(End::Eof) => "stream ended".to_owned(),
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    e.to_string()
                }
            };
            let was_up = self.health.is_up(StreamRole::Main);
            tracing::warn!(source = %capture::name(&self.source), error = %reason, retry_in = ?backoff, "main stream failed");
            self.health.set(StreamRole::Main, Some(reason));
            if was_up {
                backoff = self.options.backoff.0;
            }
            if self.wait(backoff, &cancel) {
                return;
            }
            backoff = (backoff * 2).min(self.options.backoff.1);
        }
    }

    /// Waits `d` (serving requests from the sub-stream frames meanwhile); true if cancelled.
    fn wait(&mut self, d: Duration, cancel: &CancellationToken) -> bool {
        let until = std::time::Instant::now() + d;
        while std::time::Instant::now() < until {
            if cancel.is_cancelled() {
                return true;
            }
            self.serve_requests();
            let left = until.saturating_duration_since(std::time::Instant::now());
            capture::sleep_cancellable(left.min(Duration::from_millis(100)), cancel);
        }
        cancel.is_cancelled()
    }

    fn session(&mut self, cancel: &CancellationToken) -> Result<End, CaptureError> {
        let activity = Activity::new();
        let mut input = capture::open(&self.source, &self.options, &activity, cancel.clone())?;
        let stream = input
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| CaptureError::NoVideo(capture::name(&self.source)))?;
        let (index, time_base) = (stream.index(), stream.time_base());
        self.recorder.start_session(stream.parameters(), time_base);
        tracing::info!(source = %capture::name(&self.source), codec = ?stream.parameters().id(), "main stream opened");
        loop {
            if cancel.is_cancelled() {
                return Ok(End::Cancelled);
            }
            let stall = self.options.stall_timeout;
            let packet = match capture::next_packet(&mut input, &activity, stall, cancel)? {
                Next::Packet(p) => p,
                Next::Eof => return Ok(End::Eof),
                Next::Cancelled => return Ok(End::Cancelled),
                Next::Corrupt => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            if packet.stream() != index {
                continue;
            }
            self.stats.main_packets.fetch_add(1, Ordering::Relaxed);
            let t = packet
                .dts()
                .or(packet.pts())
                .map(|ts| ts as f64 * f64::from(time_base));
            self.recorder.push(&packet, t);
            let ring = self.recorder.ring_bytes() as u64;
            self.stats.main_ring_bytes.store(ring, Ordering::Relaxed);
            if !self.ready.load(Ordering::Relaxed) && self.recorder.has_keyframe() {
                self.ready.store(true, Ordering::Relaxed);
                self.health.set(StreamRole::Main, None);
            }
            self.serve_requests();
        }
    }

    /// Serves every waiting request: clips from the ring, snapshots decoded from its last
    /// GOP (or the sub-stream frame when there is no picture).
    fn serve_requests(&mut self) {
        while let Ok(req) = self.requests.try_recv() {
            match req {
                Evidence::Clip(clip) => {
                    if !self.recorder.has_keyframe() {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(source = %capture::name(&self.source), path = %clip.path.display(), "main stream down: no clip");
                    }
                    self.recorder.request(clip);
                }
                Evidence::Snapshot(snap) => self.snapshot(snap),
            }
        }
    }

    fn snapshot(&mut self, req: SnapshotRequest) {
        let main = self.latest_frame();
        let written = match &main {
            Ok(image) => {
                let marks = scale_marks(&req.marks, &req.analysed, image);
                evidence::snapshot(image, &marks, &req.path)
            }
            Err(e) => {
                tracing::warn!(source = %capture::name(&self.source), error = %e, "no main-stream picture: snapshot from the sub-stream");
                evidence::snapshot(&req.analysed, &req.marks, &req.path)
            }
        };
        if let Err(e) = written {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(path = %req.path.display(), error = %e, "snapshot failed");
        }
    }

    /// The latest frame of the main stream: the ring's last GOP decoded.
    fn latest_frame(&self) -> Result<BgrImage, CaptureError> {
        let (params, packets) = self
            .recorder
            .latest_gop()
            .ok_or_else(|| CaptureError::NoVideo("main stream (no keyframe yet)".into()))?;
        let context = codec::context::Context::from_parameters(params.clone())
            .map_err(CaptureError::Decoder)?;
        let mut decoder = context.decoder().video().map_err(CaptureError::Decoder)?;
        let (mut frame, mut last) = (ffmpeg::frame::Video::empty(), ffmpeg::frame::Video::empty());
        let mut any = false;
        for p in packets.iter().map(Some).chain([None]) {
            let sent = match p {
                Some(p) => decoder.send_packet(p),
                None => decoder.send_eof(),
            };
            if sent.is_err() {
                continue;
            }
            // Only the last frame is converted: the others are decoded to get there.
            while decoder.receive_frame(&mut frame).is_ok() {
                std::mem::swap(&mut frame, &mut last);
                any = true;
            }
        }
        if !any {
            return Err(CaptureError::NoVideo(
                "main stream (nothing decoded)".into(),
            ));
        }
        Ok(picture::bgr_image(&last)?)
    }
}

/// Boxes of a `from`-sized frame in the pixels of a `to`-sized frame of the same picture.
pub fn scale_marks(marks: &[Mark], from: &BgrImage, to: &BgrImage) -> Vec<Mark> {
    let sx = to.width as f32 / from.width.max(1) as f32;
    let sy = to.height as f32 / from.height.max(1) as f32;
    marks
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.bbox.x1 *= sx;
            m.bbox.x2 *= sx;
            m.bbox.y1 *= sy;
            m.bbox.y2 *= sy;
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::detect::BoxF;

    #[test]
    fn boxes_of_the_sub_stream_are_scaled_to_the_main_stream() {
        let image = |w, h| BgrImage {
            width: w,
            height: h,
            data: Vec::new(),
        };
        let mark = Mark {
            bbox: BoxF {
                x1: 64.0,
                y1: 48.0,
                x2: 320.0,
                y2: 240.0,
            },
            label: "person".into(),
            highlight: true,
        };
        let scaled = scale_marks(&[mark], &image(640, 480), &image(1920, 1080));
        let b = scaled[0].bbox;
        assert_eq!((b.x1, b.y1, b.x2, b.y2), (192.0, 108.0, 960.0, 540.0));
        assert!(scaled[0].highlight);
    }
}
