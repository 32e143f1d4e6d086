//! An analysed frame's picture as the decoder gave it, and the detector input made from it.
//!
//! A camera's frames used to be converted to full-size BGR on the capture thread (6 MB per
//! 1080p frame, ~1.1 ms of swscale plus a copy), then shrunk to the model's input by a
//! bilinear pass over that BGR image. Only evidence (a snapshot per alert) needs the full
//! picture. So a sampled frame now travels as a [`Picture`]: a new reference to the decoder's
//! own frame (YUV, no pixel copied); [`Letterbox`] makes the detector input from it with one
//! swscale call straight to the model's size (cropping a motion region first, by moving the
//! frame's data pointers), and [`Picture::bgr`] converts the whole picture only when evidence
//! asks for it. Measured with 8 × 1080p cameras (issue 18, README): the capture threads'
//! conversions fell from ~10 % of a core to ~2 %.

use ffmpeg::ffi;
use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

use super::detect::{InputShape, InputSpec, Prepared, Region};
use super::BgrImage;

/// Why a picture could not be shared, cropped or converted.
#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    #[error("empty frame ({0}x{1})")]
    Empty(u32, u32),
    #[error("cannot reference the decoded frame: {0}")]
    Reference(ffmpeg::Error),
    #[error("cannot crop the frame to {0:?}: {1}")]
    Crop(Region, ffmpeg::Error),
    #[error("cannot scale the frame: {0}")]
    Scale(ffmpeg::Error),
}

/// A decoded frame shared with the decoder (reference-counted buffers, read only).
pub struct Picture {
    frame: ffmpeg::frame::Video,
}

impl std::fmt::Debug for Picture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Picture({}x{})", self.width(), self.height())
    }
}

impl Picture {
    /// A new reference to `frame`'s buffers (no pixel copied).
    pub fn share(frame: &ffmpeg::frame::Video) -> Result<Picture, PictureError> {
        if frame.width() == 0 || frame.height() == 0 {
            return Err(PictureError::Empty(frame.width(), frame.height()));
        }
        Ok(Picture {
            frame: reference(frame).map_err(PictureError::Reference)?,
        })
    }

    pub fn width(&self) -> u32 {
        self.frame.width()
    }

    pub fn height(&self) -> u32 {
        self.frame.height()
    }

    /// The whole picture in BGR (evidence), converted now.
    pub fn bgr(&self) -> Result<BgrImage, PictureError> {
        bgr_image(&self.frame)
    }

    /// The picture cropped to `r` (already clamped to the picture): a new reference whose
    /// data pointers start at `r`.
    fn cropped(&self, r: Region) -> Result<ffmpeg::frame::Video, PictureError> {
        let crop_err = |e| PictureError::Crop(r, e);
        let mut out = reference(&self.frame).map_err(crop_err)?;
        let (w, h) = (self.width(), self.height());
        // SAFETY: `out` is a valid frame holding its own references to the buffers;
        // av_frame_apply_cropping only moves its data pointers and shrinks its size within
        // them, after checking the crop fits (r was clamped to the picture).
        let ret = unsafe {
            let p = out.as_mut_ptr();
            (*p).crop_left = r.x as usize;
            (*p).crop_top = r.y as usize;
            (*p).crop_right = w.saturating_sub(r.x + r.width) as usize;
            (*p).crop_bottom = h.saturating_sub(r.y + r.height) as usize;
            ffi::av_frame_apply_cropping(p, ffi::AV_FRAME_CROP_UNALIGNED as i32)
        };
        if ret < 0 {
            return Err(crop_err(ffmpeg::Error::from(ret)));
        }
        Ok(out)
    }
}

/// A decoded frame as a full-size BGR image (evidence).
pub(super) fn bgr_image(frame: &ffmpeg::frame::Video) -> Result<BgrImage, PictureError> {
    let (w, h) = (frame.width(), frame.height());
    if w == 0 || h == 0 {
        return Err(PictureError::Empty(w, h));
    }
    let mut out = ffmpeg::frame::Video::empty();
    scaling::Context::get(
        frame.format(),
        w,
        h,
        Pixel::BGR24,
        w,
        h,
        scaling::Flags::BILINEAR,
    )
    .and_then(|mut ctx| ctx.run(frame, &mut out))
    .map_err(PictureError::Scale)?;
    Ok(BgrImage {
        width: w,
        height: h,
        data: tight(&out, w as usize * 3, h as usize),
    })
}

/// Copies plane 0 without its row padding.
pub(super) fn tight(frame: &ffmpeg::frame::Video, row: usize, rows: usize) -> Vec<u8> {
    let stride = frame.stride(0);
    let data = frame.data(0);
    if stride == row {
        // Packed already (a 1080p BGR row is 5760 bytes, a multiple of FFmpeg's alignment):
        // one copy instead of one per row.
        return data[..row * rows].to_vec();
    }
    let mut out = Vec::with_capacity(row * rows);
    for y in 0..rows {
        out.extend_from_slice(&data[y * stride..y * stride + row]);
    }
    out
}

/// A new frame referencing `frame`'s buffers.
fn reference(frame: &ffmpeg::frame::Video) -> Result<ffmpeg::frame::Video, ffmpeg::Error> {
    let mut out = ffmpeg::frame::Video::empty();
    // SAFETY: both frames are valid AVFrames; `out` is freshly allocated and empty, as
    // av_frame_ref requires of its destination; on failure it leaves `out` empty.
    let ret = unsafe { ffi::av_frame_ref(out.as_mut_ptr(), frame.as_ptr()) };
    if ret < 0 {
        return Err(ffmpeg::Error::from(ret));
    }
    Ok(out)
}

/// Makes detector inputs from pictures, one camera's: keeps its swscale context (rebuilt
/// when the source format or size, or the output size, changes) and its small BGR output.
#[derive(Default)]
pub struct Letterbox {
    key: Option<(Pixel, u32, u32, u32, u32)>,
    scaler: Option<scaling::Context>,
    small: Option<ffmpeg::frame::Video>,
}

impl Letterbox {
    /// The same input as [`super::detect::letterbox`] on the picture's BGR conversion (aspect
    /// kept, placed top-left, padded with `spec.pad`), made with one swscale call from the
    /// decoded frame into `buffer` (a spare from an earlier frame).
    pub fn prepare(
        &mut self,
        picture: &Picture,
        region: Option<Region>,
        spec: InputSpec,
        buffer: Vec<f32>,
    ) -> Result<Prepared, PictureError> {
        let (w, h) = (picture.width(), picture.height());
        let r = clamp(region, w, h);
        let ratio = (spec.width as f32 / r.width as f32).min(spec.height as f32 / r.height as f32);
        let nw = ((r.width as f32 * ratio).round() as u32).clamp(1, spec.width);
        let nh = ((r.height as f32 * ratio).round() as u32).clamp(1, spec.height);
        let (tw, th) = match spec.shape {
            InputShape::Fixed => (spec.width, spec.height),
            InputShape::Rect { multiple } => {
                let m = multiple.max(1);
                (
                    nw.next_multiple_of(m).min(spec.width),
                    nh.next_multiple_of(m).min(spec.height),
                )
            }
        };
        let tensor = self.swscale(picture, r, (nw, nh), (tw, th), spec.pad, buffer)?;
        Ok(Prepared {
            tensor,
            spec: InputSpec {
                width: tw,
                height: th,
                ..spec
            },
            ratio,
            origin: (r.x as f32, r.y as f32),
        })
    }

    /// The input made by swscale: the region cropped, scaled to `n` BGR, placed top-left in
    /// a `t`-sized tensor.
    fn swscale(
        &mut self,
        picture: &Picture,
        r: Region,
        n: (u32, u32),
        t: (u32, u32),
        pad: f32,
        buffer: Vec<f32>,
    ) -> Result<Vec<f32>, PictureError> {
        let whole = r.width == picture.width() && r.height == picture.height();
        let cropped;
        let source = if whole {
            &picture.frame
        } else {
            cropped = picture.cropped(r)?;
            &cropped
        };
        let small = self.scale(source, n.0, n.1)?;
        Ok(planar(small, n, t, pad, buffer))
    }

    /// `source` scaled to `nw × nh` BGR.
    fn scale(
        &mut self,
        source: &ffmpeg::frame::Video,
        nw: u32,
        nh: u32,
    ) -> Result<&ffmpeg::frame::Video, PictureError> {
        let key = (source.format(), source.width(), source.height(), nw, nh);
        if self.key != Some(key) {
            let ctx = scaling::Context::get(
                key.0,
                key.1,
                key.2,
                Pixel::BGR24,
                nw,
                nh,
                scaling::Flags::FAST_BILINEAR,
            )
            .map_err(PictureError::Scale)?;
            self.scaler = Some(ctx);
            self.key = Some(key);
            // swscale refuses an output frame of another size.
            self.small = None;
        }
        let small = self.small.get_or_insert_with(ffmpeg::frame::Video::empty);
        let Some(scaler) = self.scaler.as_mut() else {
            return Err(PictureError::Scale(ffmpeg::Error::Bug));
        };
        scaler.run(source, small).map_err(PictureError::Scale)?;
        Ok(small)
    }
}

// SAFETY: ffmpeg-next leaves `scaling::Context` !Send because it holds a raw SwsContext
// pointer, but an SwsContext has no thread affinity: it may be used from any thread, one
// at a time. A `Letterbox` is owned by one camera's capture stage, built on the thread
// that starts the camera and then moved to (and only used on) its capture thread, through
// `&mut self`: never shared.
unsafe impl Send for Letterbox {}

/// The region to letterbox, inside the picture and at least one pixel.
fn clamp(region: Option<Region>, w: u32, h: u32) -> Region {
    let r = region.unwrap_or(Region {
        x: 0,
        y: 0,
        width: w,
        height: h,
    });
    let x = r.x.min(w - 1);
    let y = r.y.min(h - 1);
    Region {
        x,
        y,
        width: r.width.clamp(1, w - x),
        height: r.height.clamp(1, h - y),
    }
}

/// A `n.0 × n.1` BGR frame into the top-left of a `t.0 × t.1` NCHW tensor padded with `pad`.
fn planar(
    small: &ffmpeg::frame::Video,
    n: (u32, u32),
    t: (u32, u32),
    pad: f32,
    mut tensor: Vec<f32>,
) -> Vec<f32> {
    let (nw, nh) = (n.0 as usize, n.1 as usize);
    let (tw, th) = (t.0 as usize, t.1 as usize);
    let plane = tw * th;
    tensor.clear();
    tensor.resize(3 * plane, pad);
    let (stride, data) = (small.stride(0), small.data(0));
    let (plane_b, rest) = tensor.split_at_mut(plane);
    let (plane_g, plane_r) = rest.split_at_mut(plane);
    for y in 0..nh {
        let row = &data[y * stride..y * stride + nw * 3];
        let out = y * tw..y * tw + nw;
        for (((b, g), r), px) in plane_b[out.clone()]
            .iter_mut()
            .zip(&mut plane_g[out.clone()])
            .zip(&mut plane_r[out])
            .zip(row.chunks_exact(3))
        {
            *b = f32::from(px[0]);
            *g = f32::from(px[1]);
            *r = f32::from(px[2]);
        }
    }
    tensor
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::video::detect;

    /// A `w × h` picture (see [`frame`]).
    pub(in crate::video) fn picture(w: u32, h: u32) -> Picture {
        Picture::share(&frame(w, h)).unwrap()
    }

    /// A `w × h` YUV 4:2:0 frame: left half dark, right half bright, from swscale.
    fn frame(w: u32, h: u32) -> ffmpeg::frame::Video {
        frame_in(Pixel::YUV420P, w, h, [[40, 40, 40], [200, 200, 200]])
    }

    /// A `w × h` frame in `format`, its left half BGR `halves[0]`, its right half
    /// `halves[1]`, converted by swscale.
    fn frame_in(format: Pixel, w: u32, h: u32, halves: [[u8; 3]; 2]) -> ffmpeg::frame::Video {
        ffmpeg::init().unwrap();
        let mut bgr = ffmpeg::frame::Video::new(Pixel::BGR24, w, h);
        let stride = bgr.stride(0);
        for y in 0..h as usize {
            for x in 0..w as usize {
                let px = halves[usize::from(x >= w as usize / 2)];
                bgr.data_mut(0)[y * stride + x * 3..][..3].copy_from_slice(&px);
            }
        }
        let mut out = ffmpeg::frame::Video::empty();
        scaling::Context::get(Pixel::BGR24, w, h, format, w, h, scaling::Flags::BILINEAR)
            .unwrap()
            .run(&bgr, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn every_pixel_format_letterboxes_to_the_colours_of_its_bgr_conversion() {
        let colours = [[30, 60, 200], [200, 120, 40]];
        for format in [
            Pixel::YUV420P,
            Pixel::YUVJ420P,
            Pixel::NV12,
            Pixel::YUV422P,
            Pixel::YUV444P,
        ] {
            let picture = Picture::share(&frame_in(format, 320, 180, colours)).unwrap();
            let bgr = picture.bgr().unwrap();
            let spec = spec(InputShape::Rect { multiple: 32 });
            let p = Letterbox::default()
                .prepare(&picture, None, spec, Vec::new())
                .unwrap();
            let q = detect::letterbox(&bgr, None, spec);
            assert_eq!((p.spec, p.ratio), (q.spec, q.ratio), "{format:?}");
            let (tw, plane) = (p.spec.width as usize, p.tensor.len() / 3);
            for (y, x) in [(5, 4), (20, 10), (5, 60), (30, 55)] {
                for c in 0..3 {
                    let (a, b) = (
                        p.tensor[c * plane + y * tw + x],
                        q.tensor[c * plane + y * tw + x],
                    );
                    assert!(
                        (a - b).abs() <= 6.0,
                        "{format:?} ({y}, {x}) channel {c}: {a} vs {b}"
                    );
                }
            }
            // Cropped regions too, left half and right half.
            for (x, want) in [(10, colours[0]), (200, colours[1])] {
                let r = Region {
                    x,
                    y: 11,
                    width: 101,
                    height: 99,
                };
                let p = Letterbox::default()
                    .prepare(&picture, Some(r), spec, Vec::new())
                    .unwrap();
                let plane = p.tensor.len() / 3;
                let tw = p.spec.width as usize;
                for (c, want) in want.iter().enumerate() {
                    let got = p.tensor[c * plane + 20 * tw + 30];
                    assert!(
                        (got - f32::from(*want)).abs() <= 8.0,
                        "{format:?} region at {x}, channel {c}: {got} vs {want}"
                    );
                }
            }
        }
    }

    fn spec(shape: InputShape) -> InputSpec {
        InputSpec {
            width: 64,
            height: 64,
            pad: 114.0,
            shape,
        }
    }

    #[test]
    fn a_picture_letterboxes_like_its_bgr_conversion_with_the_same_shape_and_scale() {
        let picture = Picture::share(&frame(320, 180)).unwrap();
        let bgr = picture.bgr().unwrap();
        assert_eq!((bgr.width, bgr.height), (320, 180));
        for shape in [InputShape::Fixed, InputShape::Rect { multiple: 32 }] {
            let mut lb = Letterbox::default();
            let p = lb.prepare(&picture, None, spec(shape), Vec::new()).unwrap();
            let q = detect::letterbox(&bgr, None, spec(shape));
            assert_eq!(p.spec, q.spec, "{shape:?}");
            assert_eq!((p.ratio, p.origin), (q.ratio, q.origin));
            assert_eq!(p.tensor.len(), q.tensor.len());
            // Same picture: far from the edge between the halves, the values agree.
            let tw = p.spec.width as usize;
            for (y, x) in [(5, 4), (20, 10), (5, 60), (30, 55)] {
                let (a, b) = (p.tensor[y * tw + x], q.tensor[y * tw + x]);
                assert!((a - b).abs() <= 4.0, "{shape:?} ({y}, {x}): {a} vs {b}");
            }
            // 180 × 64/320 = 36 rows of picture; then padding.
            assert_eq!(p.tensor[36 * tw + 3], 114.0);
        }
    }

    #[test]
    fn a_region_is_cropped_from_the_decoded_frame_before_scaling() {
        let picture = Picture::share(&frame(320, 180)).unwrap();
        let mut lb = Letterbox::default();
        let right = Region {
            x: 200,
            y: 20,
            width: 100,
            height: 100,
        };
        let p = lb
            .prepare(&picture, Some(right), spec(InputShape::Fixed), Vec::new())
            .unwrap();
        assert_eq!(p.origin, (200.0, 20.0));
        assert!((p.ratio - 0.64).abs() < 1e-6);
        assert!(
            p.tensor[..64].iter().all(|v| (v - 200.0).abs() <= 4.0),
            "bright half only"
        );
        let left = Region { x: 10, ..right };
        let p = lb
            .prepare(&picture, Some(left), spec(InputShape::Fixed), p.tensor)
            .unwrap();
        assert!(
            p.tensor[..64].iter().all(|v| (v - 40.0).abs() <= 4.0),
            "dark half only"
        );
        // Regions of other sizes, one after the other (one swscale context at a time).
        for (x, y, width, height) in [(1, 1, 63, 63), (100, 100, 65, 33), (255, 175, 65, 65)] {
            let r = Region {
                x,
                y,
                width,
                height,
            };
            let p = lb.prepare(&picture, Some(r), spec(InputShape::Fixed), Vec::new());
            assert!(p.is_ok(), "{r:?}: {p:?}");
        }
        // A region beyond the picture is clamped, not an error.
        let out = Region {
            x: 5000,
            y: 5000,
            width: 100,
            height: 100,
        };
        assert!(lb
            .prepare(&picture, Some(out), spec(InputShape::Fixed), Vec::new())
            .is_ok());
    }

    #[test]
    fn an_empty_frame_is_an_error_not_a_panic() {
        ffmpeg::init().unwrap();
        let empty = ffmpeg::frame::Video::empty();
        assert!(matches!(
            Picture::share(&empty),
            Err(PictureError::Empty(0, 0))
        ));
    }
}
