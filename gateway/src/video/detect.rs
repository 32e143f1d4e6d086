//! Detect: the object detector behind a [`Detector`] trait, and its ONNX Runtime backend.
//!
//! Pre-processing (letterbox) is a free function, [`letterbox`], so it can run on the
//! capture thread while the detector (shared by every camera, model loaded once) is busy
//! with another frame; [`Detector::infer`] only runs the model and decodes its output.
//!
//! A model whose graph takes any size (YOLOX) runs on rectangles: [`InputShape::Rect`] pads a
//! 16:9 frame only to the next multiple of 32 (416 × 256 instead of 416 × 416), 37 % less
//! inference for the same pixels ([`super::onnx_shape`]; measured in the README, issue 18).
//!
//! ONNX Runtime is a shared library loaded at run time with `ort::init_from` (never
//! `ort::init()`, which panics when the library is missing): a gateway without it still
//! starts, and its camera pipeline reports itself unavailable with [`DetectError::Runtime`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use super::{onnx_shape, BgrImage};

/// The 80 COCO class names, in the model's output order.
pub use edge_config::COCO_CLASSES as LABELS;

/// Candidate boxes below this score are discarded before NMS. Low enough for the tracker's
/// second (low-score) association pass; rules apply their own `min_score`.
pub const CANDIDATE_SCORE: f32 = 0.1;
/// Class-aware NMS overlap for YOLOX (models/yolox_nano.toml `nms_iou`).
pub const NMS_IOU: f32 = 0.45;

/// Errors of the detector.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The ONNX Runtime library could not be found or loaded.
    #[error("ONNX Runtime unavailable: {0}")]
    Runtime(String),
    /// The model file is missing or ONNX Runtime refused it.
    #[error("model {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    /// Inference failed on one frame.
    #[error("inference: {0}")]
    Inference(String),
    /// The model's output does not have the expected shape.
    #[error("unexpected model output: {0}")]
    Output(String),
}

/// An axis-aligned box in source-image pixels.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BoxF {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BoxF {
    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }
    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }
    /// Intersection over union.
    pub fn iou(&self, o: &BoxF) -> f32 {
        let w = (self.x2.min(o.x2) - self.x1.max(o.x1)).max(0.0);
        let h = (self.y2.min(o.y2) - self.y1.max(o.y1)).max(0.0);
        let inter = w * h;
        let union = self.area() + o.area() - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }
    /// Bottom centre (where a person stands), the point tested against zones and masks.
    pub fn foot(&self) -> (f32, f32) {
        ((self.x1 + self.x2) / 2.0, self.y2)
    }
    /// Shifted by (dx, dy).
    pub fn shifted(&self, dx: f32, dy: f32) -> BoxF {
        BoxF {
            x1: self.x1 + dx,
            y1: self.y1 + dy,
            x2: self.x2 + dx,
            y2: self.y2 + dy,
        }
    }
}

/// One detected object.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Detection {
    /// COCO class index (0 person, 1 bicycle, 3 motorcycle, …).
    pub class: usize,
    pub score: f32,
    pub bbox: BoxF,
}

impl Detection {
    /// The class name.
    pub fn label(&self) -> &'static str {
        LABELS.get(self.class).copied().unwrap_or("?")
    }
}

/// A rectangle of the source image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// What a detector wants as input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputSpec {
    /// The input's width (its largest, for [`InputShape::Rect`]).
    pub width: u32,
    /// The input's height (its largest, for [`InputShape::Rect`]).
    pub height: u32,
    /// Padding value of the letterbox.
    pub pad: f32,
    pub shape: InputShape,
}

/// Which input sizes a model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputShape {
    /// Exactly [`InputSpec::width`] × [`InputSpec::height`]: padding fills the rest.
    Fixed,
    /// Any size up to that whose sides are multiples of `multiple` (the model's largest
    /// stride): the letterbox pads only to the next multiple.
    Rect { multiple: u32 },
}

/// A letterboxed input tensor (NCHW, BGR, raw 0..255) and how to map boxes back.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub tensor: Vec<f32>,
    pub spec: InputSpec,
    /// Model pixels per source pixel.
    pub ratio: f32,
    /// Top-left of the letterboxed region in the source image.
    pub origin: (f32, f32),
}

/// An object detector. Implementations are driven from one thread at a time (the pipeline
/// shares one behind a mutex), so `infer` takes `&mut self`.
pub trait Detector: Send {
    /// Short name for logs, e.g. `yolox_nano`.
    fn name(&self) -> &str;
    /// The input the model wants; [`letterbox`] prepares it.
    fn input_spec(&self) -> InputSpec;
    /// Runs the model on a prepared input; boxes come back in source-image pixels, after NMS.
    fn infer(&mut self, input: &Prepared) -> Result<Vec<Detection>, DetectError>;
    /// Letterbox + infer on a region of `image` (the whole image when `None`).
    fn detect(
        &mut self,
        image: &BgrImage,
        region: Option<Region>,
    ) -> Result<Vec<Detection>, DetectError> {
        let prepared = letterbox(image, region, self.input_spec());
        self.infer(&prepared)
    }
}

/// Aspect-preserving bilinear resize of `region` of `image` into the model input, placed at
/// the top-left and padded (the YOLOX convention, models/yolox_nano.toml).
pub fn letterbox(image: &BgrImage, region: Option<Region>, spec: InputSpec) -> Prepared {
    letterbox_into(image, region, spec, Vec::new())
}

/// [`letterbox`] into `buffer` (a spare from an earlier frame: no allocation when it is
/// large enough).
pub fn letterbox_into(
    image: &BgrImage,
    region: Option<Region>,
    spec: InputSpec,
    buffer: Vec<f32>,
) -> Prepared {
    let full = Region {
        x: 0,
        y: 0,
        width: image.width,
        height: image.height,
    };
    let r = clamp_region(region.unwrap_or(full), image);
    let (tw, th) = (spec.width as usize, spec.height as usize);
    let ratio = (spec.width as f32 / r.width.max(1) as f32)
        .min(spec.height as f32 / r.height.max(1) as f32);
    let nw = ((r.width as f32 * ratio).round() as usize).clamp(1, tw);
    let nh = ((r.height as f32 * ratio).round() as usize).clamp(1, th);
    let (tw, th) = match spec.shape {
        InputShape::Fixed => (tw, th),
        InputShape::Rect { multiple } => {
            let m = multiple.max(1) as usize;
            (
                nw.next_multiple_of(m).min(tw),
                nh.next_multiple_of(m).min(th),
            )
        }
    };
    let plane = tw * th;
    let mut tensor = buffer;
    tensor.clear();
    tensor.resize(3 * plane, spec.pad);
    let stride = image.width as usize * 3;
    let (x_max, y_max) = ((r.x + r.width - 1) as f32, (r.y + r.height - 1) as f32);
    let xs = horizontal_taps(&r, ratio, nw, x_max);
    let data = &image.data;
    // Separable: interpolate the two source rows horizontally (cached: neighbouring output
    // rows often share them), then blend vertically into the three planes.
    let horizontal = |row: usize, out: &mut Vec<[f32; 3]>| {
        interpolate_row(&data[row * stride..][..stride], &xs, out)
    };
    let (mut top, mut bottom) = (Vec::with_capacity(nw), Vec::with_capacity(nw));
    let mut cached: (Option<usize>, Option<usize>) = (None, None);
    let (plane_b, rest) = tensor.split_at_mut(plane);
    let (plane_g, plane_r) = rest.split_at_mut(plane);
    for y in 0..nh {
        let sy = (r.y as f32 + (y as f32 + 0.5) / ratio - 0.5).clamp(r.y as f32, y_max);
        let y0 = sy.floor();
        let (r0, r1) = (y0 as usize, (y0 + 1.0).min(y_max) as usize);
        let fy = sy - y0;
        if cached.0 != Some(r0) {
            if cached.1 == Some(r0) {
                std::mem::swap(&mut top, &mut bottom);
                cached.1 = None;
            } else {
                horizontal(r0, &mut top);
            }
            cached.0 = Some(r0);
        }
        if cached.1 != Some(r1) {
            horizontal(r1, &mut bottom);
            cached.1 = Some(r1);
        }
        let out = y * tw..y * tw + nw;
        let rows = top.iter().zip(&bottom);
        for (((ob, og), or), (t, b)) in plane_b[out.clone()]
            .iter_mut()
            .zip(&mut plane_g[out.clone()])
            .zip(&mut plane_r[out])
            .zip(rows)
        {
            *ob = t[0] + (b[0] - t[0]) * fy;
            *og = t[1] + (b[1] - t[1]) * fy;
            *or = t[2] + (b[2] - t[2]) * fy;
        }
    }
    Prepared {
        tensor,
        spec: InputSpec {
            width: tw as u32,
            height: th as u32,
            ..spec
        },
        ratio,
        origin: (r.x as f32, r.y as f32),
    }
}

/// For each output column: the byte offsets of its two source pixels and the weight of the
/// second (computed once per frame).
fn horizontal_taps(r: &Region, ratio: f32, nw: usize, x_max: f32) -> Vec<(usize, usize, f32)> {
    (0..nw)
        .map(|x| {
            let sx = (r.x as f32 + (x as f32 + 0.5) / ratio - 0.5).clamp(r.x as f32, x_max);
            let x0 = sx.floor();
            let x1 = (x0 + 1.0).min(x_max);
            (x0 as usize * 3, x1 as usize * 3, sx - x0)
        })
        .collect()
}

/// One source row (BGR bytes) interpolated horizontally at `taps` into `out`.
#[inline]
fn interpolate_row(src: &[u8], taps: &[(usize, usize, f32)], out: &mut Vec<[f32; 3]>) {
    out.clear();
    out.extend(taps.iter().map(|&(a, b, fx)| {
        let (pa, pb) = (&src[a..a + 3], &src[b..b + 3]);
        [
            pa[0] as f32 + (pb[0] as f32 - pa[0] as f32) * fx,
            pa[1] as f32 + (pb[1] as f32 - pa[1] as f32) * fx,
            pa[2] as f32 + (pb[2] as f32 - pa[2] as f32) * fx,
        ]
    }));
}

fn clamp_region(r: Region, image: &BgrImage) -> Region {
    let x = r.x.min(image.width.saturating_sub(1));
    let y = r.y.min(image.height.saturating_sub(1));
    Region {
        x,
        y,
        width: r.width.clamp(1, image.width - x),
        height: r.height.clamp(1, image.height - y),
    }
}

/// Decodes the raw YOLOX head `[1, N, 5 + classes]` (grids of strides 8, 16, 32) into boxes in
/// source pixels, keeps the best class per row above `min_score`, then class-aware NMS.
pub fn decode_yolox(
    output: &[f32],
    spec: InputSpec,
    ratio: f32,
    origin: (f32, f32),
    min_score: f32,
) -> Result<Vec<Detection>, DetectError> {
    let mut grid = Vec::new();
    for stride in [8u32, 16, 32] {
        let (gw, gh) = (spec.width / stride, spec.height / stride);
        for gy in 0..gh {
            for gx in 0..gw {
                grid.push((gx as f32, gy as f32, stride as f32));
            }
        }
    }
    if grid.is_empty() || !output.len().is_multiple_of(grid.len()) || output.len() / grid.len() < 6
    {
        return Err(DetectError::Output(format!(
            "{} values for {} grid cells",
            output.len(),
            grid.len()
        )));
    }
    let cols = output.len() / grid.len();
    let mut out = Vec::new();
    for (row, &(gx, gy, s)) in output.chunks_exact(cols).zip(&grid) {
        let objectness = row[4];
        if objectness < min_score {
            continue;
        }
        let (class, class_score) = row[5..].iter().enumerate().fold(
            (0, f32::MIN),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        );
        let score = objectness * class_score;
        if score < min_score {
            continue;
        }
        let (cx, cy) = ((row[0] + gx) * s, (row[1] + gy) * s);
        let (w, h) = (row[2].exp() * s, row[3].exp() * s);
        let bbox = BoxF {
            x1: (cx - w / 2.0) / ratio + origin.0,
            y1: (cy - h / 2.0) / ratio + origin.1,
            x2: (cx + w / 2.0) / ratio + origin.0,
            y2: (cy + h / 2.0) / ratio + origin.1,
        };
        out.push(Detection { class, score, bbox });
    }
    Ok(nms(out, NMS_IOU))
}

/// Class-aware non-maximum suppression.
pub fn nms(mut dets: Vec<Detection>, iou: f32) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<Detection> = Vec::new();
    for d in dets {
        if keep
            .iter()
            .all(|k| k.class != d.class || k.bbox.iou(&d.bbox) <= iou)
        {
            keep.push(d);
        }
    }
    keep
}

/// Where ONNX Runtime was found (or why not), shared by every detector of the process:
/// ONNX Runtime allows one environment per process.
static RUNTIME: Mutex<Option<Environment>> = Mutex::new(None);

/// The candidate paths of `libonnxruntime.so`, in search order: the configured one alone if
/// given; else `<exe dir>/libonnxruntime.so`, `vendor/onnxruntime/libonnxruntime.so` in the
/// exe dir or any parent (the workspace), `/usr/lib/shouwang/libonnxruntime.so`.
pub fn onnxruntime_candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = configured {
        return vec![p.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir.join("libonnxruntime.so"));
        for d in dir.ancestors() {
            out.push(d.join("vendor/onnxruntime/libonnxruntime.so"));
        }
    }
    out.push(PathBuf::from("/usr/lib/shouwang/libonnxruntime.so"));
    out
}

/// Loads ONNX Runtime once per process (later calls return the same environment).
pub fn runtime(configured: Option<&Path>) -> Result<Environment, DetectError> {
    let mut slot = RUNTIME
        .lock()
        .map_err(|_| DetectError::Runtime("runtime lock poisoned".into()))?;
    if let Some(env) = slot.as_ref() {
        return Ok(env.clone());
    }
    let candidates = onnxruntime_candidates(configured);
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return Err(DetectError::Runtime(format!(
            "libonnxruntime.so not found (tried {}); run `./x deps` or set [detector] onnxruntime",
            tried.join(", ")
        )));
    };
    let builder = ort::init_from(path).map_err(|e| DetectError::Runtime(e.to_string()))?;
    let env = builder
        .with_name("shouwang")
        .build()
        .map_err(|e| DetectError::Runtime(format!("{}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "ONNX Runtime loaded");
    *slot = Some(env.clone());
    Ok(env)
}

/// Resolves a model path: as given when it exists; a relative path that does not exist is
/// also looked up in the executable's directory and its parents (so the default `models`
/// works from a checkout without `cd`).
pub fn resolve_model(path: &Path) -> PathBuf {
    if path.exists() || path.is_absolute() {
        return path.to_path_buf();
    }
    let found = std::env::current_exe().ok().and_then(|exe| {
        exe.parent()?
            .ancestors()
            .map(|d| d.join(path))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| path.to_path_buf())
}

/// YOLOX through ONNX Runtime.
pub struct OrtDetector {
    name: String,
    session: Session,
    spec: InputSpec,
    input_name: String,
    output_name: String,
}

/// `0` makes every detector pad its input to the model's square ([`InputShape::Fixed`]);
/// for measurements.
pub const RECT_INFERENCE_ENV: &str = "SHOUWANG_RECT_INFERENCE";

/// YOLOX's largest stride: the sides of a rectangle input are multiples of it.
const MAX_STRIDE: u32 = 32;

/// The model's declared input (yolox_nano: `[1, 3, 416, 416]`).
const MODEL_SIDE: u32 = 416;

impl OrtDetector {
    /// Loads the model (once) and warms it up with one inference on a padded frame. The model
    /// runs on rectangles when its graph allows it (probed here: a 16:9 input must run and
    /// decode); otherwise, or with [`RECT_INFERENCE_ENV`] `=0`, on
    /// its square input.
    pub fn load(
        runtime: &Environment,
        model: &Path,
        intra_threads: usize,
    ) -> Result<Self, DetectError> {
        let rect = std::env::var(RECT_INFERENCE_ENV).as_deref() != Ok("0");
        Self::load_as(runtime, model, intra_threads, rect)
    }

    /// [`OrtDetector::load`], trying rectangles only when `rect` is set.
    pub fn load_as(
        runtime: &Environment,
        model: &Path,
        intra_threads: usize,
        rect: bool,
    ) -> Result<Self, DetectError> {
        let model_err = |reason: String| DetectError::Model {
            path: model.to_path_buf(),
            reason,
        };
        if !model.is_file() {
            return Err(model_err("file not found (run `./x deps`)".into()));
        }
        let bytes = std::fs::read(model).map_err(|e| model_err(e.to_string()))?;
        let name = model
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        if rect {
            match Self::rect(runtime, &bytes, intra_threads, &name) {
                Ok(me) => return Ok(me),
                Err(reason) => tracing::warn!(
                    model = %model.display(), %reason,
                    "the model does not run on rectangles: every frame is padded to its square"
                ),
            }
        }
        let session = session(runtime, intra_threads, &bytes).map_err(model_err)?;
        let mut me = Self::new(name, session, InputShape::Fixed);
        me.warm_up(MODEL_SIDE, MODEL_SIDE)?;
        Ok(me)
    }

    /// The model with free spatial dimensions, probed.
    fn rect(
        runtime: &Environment,
        bytes: &[u8],
        intra_threads: usize,
        name: &str,
    ) -> Result<Self, String> {
        let freed = onnx_shape::free_spatial_dims(bytes).map_err(|e| e.to_string())?;
        let session = session(runtime, intra_threads, &freed)?;
        let shape = InputShape::Rect {
            multiple: MAX_STRIDE,
        };
        let mut me = Self::new(name.to_owned(), session, shape);
        // One 16:9 probe (the square is the model's own declared input, and running it
        // here would grow ONNX Runtime's arena to the square's size on every box).
        me.warm_up(MODEL_SIDE, 256)
            .map_err(|e| format!("probe at {MODEL_SIDE}x256: {e}"))?;
        tracing::info!(model = %name, "the detector runs on rectangles (sides multiples of 32)");
        Ok(me)
    }

    fn new(name: String, session: Session, shape: InputShape) -> Self {
        let input_name = session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .unwrap_or_else(|| "images".into());
        let output_name = session
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .unwrap_or_else(|| "output".into());
        OrtDetector {
            name,
            session,
            spec: InputSpec {
                width: MODEL_SIDE,
                height: MODEL_SIDE,
                pad: 114.0,
                shape,
            },
            input_name,
            output_name,
        }
    }

    /// One inference on a padded `width × height` input; its output must decode.
    fn warm_up(&mut self, width: u32, height: u32) -> Result<(), DetectError> {
        let warm = Prepared {
            tensor: vec![self.spec.pad; 3 * width as usize * height as usize],
            spec: InputSpec {
                width,
                height,
                ..self.spec
            },
            ratio: 1.0,
            origin: (0.0, 0.0),
        };
        self.infer(&warm).map(drop)
    }

    /// Whether the model runs on rectangles ([`InputShape::Rect`]).
    pub fn runs_on_rectangles(&self) -> bool {
        matches!(self.spec.shape, InputShape::Rect { .. })
    }

    /// Runtime + model from the `[detector]` section.
    pub fn from_config(detector: &edge_config::Detector) -> Result<Self, DetectError> {
        let env = runtime(detector.onnxruntime.as_deref())?;
        Self::load(
            &env,
            &resolve_model(&detector.model_path()),
            detector.intra_threads as usize,
        )
    }

    /// Runs the model only and returns the raw output (for the benchmark's raw figure).
    pub fn run_raw(&mut self, input: &Prepared) -> Result<usize, DetectError> {
        self.run_session(input, |data| Ok(data.len()))
    }

    /// Runs the session on a prepared input and hands the raw output to `read`.
    fn run_session<T>(
        &mut self,
        input: &Prepared,
        read: impl FnOnce(&[f32]) -> Result<T, DetectError>,
    ) -> Result<T, DetectError> {
        let shape = [
            1usize,
            3,
            input.spec.height as usize,
            input.spec.width as usize,
        ];
        let tensor = TensorRef::from_array_view((shape, input.tensor.as_slice()))
            .map_err(|e| DetectError::Inference(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => tensor])
            .map_err(|e| DetectError::Inference(e.to_string()))?;
        let (_, data) = outputs[self.output_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| DetectError::Output(e.to_string()))?;
        read(data)
    }
}

/// A session of `model` (ONNX bytes) with the gateway's settings.
fn session(runtime: &Environment, intra_threads: usize, model: &[u8]) -> Result<Session, String> {
    Session::builder(runtime)
        .map_err(|e| e.to_string())?
        .with_intra_threads(intra_threads.max(1))
        .map_err(|e| e.to_string())?
        // Idle inference threads sleep instead of spinning: the capture threads need
        // those cores between frames (and an idle gateway should idle).
        .with_intra_op_spinning(false)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| e.to_string())?
        // No memory pattern: the pattern plans one block for every intermediate tensor
        // of a run, kept beside the CPU arena (which stays: it reuses those tensors'
        // memory from run to run). Measured on the demo, one camera: 105.8 → 101.6 MB
        // RSS, the inference unchanged (README, "Memory").
        .with_memory_pattern(false)
        .map_err(|e| e.to_string())?
        .commit_from_memory(model)
        .map_err(|e| e.to_string())
}

impl Detector for OrtDetector {
    fn name(&self) -> &str {
        &self.name
    }

    fn input_spec(&self) -> InputSpec {
        self.spec
    }

    fn infer(&mut self, input: &Prepared) -> Result<Vec<Detection>, DetectError> {
        let _timed = crate::metrics::hooks::InferenceTimer::start();
        self.run_session(input, |data| {
            decode_yolox(data, input.spec, input.ratio, input.origin, CANDIDATE_SCORE)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class: usize, score: f32, x: f32) -> Detection {
        Detection {
            class,
            score,
            bbox: BoxF {
                x1: x,
                y1: 0.0,
                x2: x + 10.0,
                y2: 10.0,
            },
        }
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes_of_one_class_but_not_across_classes() {
        let kept = nms(
            vec![
                det(0, 0.6, 0.0),
                det(0, 0.9, 1.0),
                det(1, 0.5, 0.0),
                det(0, 0.7, 50.0),
            ],
            0.45,
        );
        let summary: Vec<(usize, f32)> = kept.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(summary, vec![(0, 0.9), (0, 0.7), (1, 0.5)]);
    }

    #[test]
    fn letterbox_places_the_image_top_left_and_pads_the_rest_with_114() {
        let image = BgrImage {
            width: 4,
            height: 2,
            data: vec![10; 4 * 2 * 3],
        };
        let spec = InputSpec {
            width: 8,
            height: 8,
            pad: 114.0,
            shape: InputShape::Fixed,
        };
        let p = letterbox(&image, None, spec);
        assert_eq!(p.ratio, 2.0);
        assert_eq!(p.tensor[0], 10.0);
        assert_eq!(p.tensor[3 * 8 + 7], 10.0, "row 3 is still image");
        assert_eq!(p.tensor[4 * 8], 114.0, "row 4 is padding");
    }

    #[test]
    fn a_wide_frame_on_a_rectangle_model_is_padded_only_to_the_next_multiple_of_32() {
        let image = BgrImage {
            width: 1920,
            height: 1080,
            data: vec![10; 1920 * 1080 * 3],
        };
        let spec = InputSpec {
            width: 416,
            height: 416,
            pad: 114.0,
            shape: InputShape::Rect { multiple: 32 },
        };
        let p = letterbox(&image, None, spec);
        // 1080 × 416/1920 = 234 rows of picture, padded to 256 (not 416).
        assert_eq!((p.spec.width, p.spec.height), (416, 256));
        assert_eq!(p.tensor.len(), 3 * 416 * 256);
        assert_eq!(p.spec.shape, spec.shape);
        assert_eq!(p.tensor[233 * 416], 10.0, "row 233 is still picture");
        assert_eq!(p.tensor[234 * 416], 114.0, "row 234 is padding");
        let square = letterbox(
            &image,
            None,
            InputSpec {
                shape: InputShape::Fixed,
                ..spec
            },
        );
        assert_eq!(square.tensor.len(), 3 * 416 * 416);
        assert_eq!(
            square.ratio, p.ratio,
            "same scale: boxes map back the same way"
        );
        // A tall crop: the width is what gets padded.
        let tall = letterbox(
            &image,
            Some(Region {
                x: 0,
                y: 0,
                width: 500,
                height: 1000,
            }),
            spec,
        );
        assert_eq!((tall.spec.width, tall.spec.height), (224, 416));
    }

    #[test]
    fn a_yolox_row_decodes_to_a_box_in_source_pixels() {
        let spec = InputSpec {
            width: 32,
            height: 32,
            pad: 114.0,
            shape: InputShape::Fixed,
        };
        // Grid: 4x4 (stride 8) + 2x2 (16) + 1x1 (32) = 21 rows of 5 + 2 classes.
        let mut out = vec![0.0f32; 21 * 7];
        let row = 5; // stride 8, cell (1, 1)
        out[row * 7..row * 7 + 7].copy_from_slice(&[0.5, 0.5, 0.0, 0.0, 0.9, 0.1, 0.8]);
        let dets = decode_yolox(&out, spec, 2.0, (100.0, 0.0), 0.25).unwrap();
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].class, 1);
        assert!((dets[0].score - 0.72).abs() < 1e-6);
        // centre (12, 12), size 8 in model pixels → /2 + origin.
        assert_eq!(
            dets[0].bbox,
            BoxF {
                x1: 104.0,
                y1: 4.0,
                x2: 108.0,
                y2: 8.0
            }
        );
    }
}
