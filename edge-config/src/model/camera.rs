//! `[[cameras]]`: video sources, their zones and detection rules.

use super::{Level, LocationRef, Point, TimeWindow};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[[cameras]]`: one video source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Camera {
    /// Unique id, e.g. `"cam-b1-lobby"`.
    pub id: String,
    /// Human name shown on the console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Stream URL: `rtsp://`, `rtsps://`, `http://`, `https://`, a
    /// `file://` URL or a plain file path (relative = against the config
    /// file's directory). Only the scheme is checked: footage may be
    /// mounted later.
    pub url: String,
    /// Where the camera looks (see [`LocationRef`]).
    pub location: LocationRef,
    /// Frames analysed per second (0.1..=30). Default 5.
    #[serde(default = "default_fps")]
    pub analyse_fps: f64,
    /// Whether the camera is analysed. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `[[cameras.zones]]`: named regions the rules refer to.
    #[serde(default)]
    pub zones: Vec<Zone>,
    /// `[[cameras.masks]]`: regions ignored by the detector (trees, TVs).
    #[serde(default)]
    pub masks: Vec<Mask>,
    /// `[[cameras.rules]]`: what to detect in which zone.
    #[serde(default)]
    pub rules: Vec<CameraRule>,
}

fn default_fps() -> f64 {
    5.0
}

fn default_true() -> bool {
    true
}

impl Camera {
    /// The zone with this id.
    pub fn zone(&self, id: &str) -> Option<&Zone> {
        self.zones.iter().find(|z| z.id == id)
    }

    /// The source: a network stream or a local file.
    pub fn source(&self) -> CameraSource {
        if let Some(path) = self.url.strip_prefix("file://") {
            return CameraSource::File(PathBuf::from(path));
        }
        match self.url.split_once("://") {
            Some(_) => CameraSource::Stream(self.url.clone()),
            None => CameraSource::File(PathBuf::from(&self.url)),
        }
    }
}

/// Where a camera's frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraSource {
    /// An `rtsp`, `rtsps`, `http` or `https` URL.
    Stream(String),
    /// A video file (from a `file://` URL or a plain path).
    File(PathBuf),
}

/// `[[cameras.zones]]`: a named polygon of the frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    /// Id, unique within the camera, e.g. `"door"`.
    pub id: String,
    /// Human name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// At least 3 points `[x, y]`, each coordinate in 0..=1.
    pub polygon: Vec<Point>,
}

/// `[[cameras.masks]]`: a polygon of the frame that is ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mask {
    /// Optional label, e.g. `"tree"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// At least 3 points `[x, y]`, each coordinate in 0..=1.
    pub polygon: Vec<Point>,
}

/// `[[cameras.rules]]`: one detection rule on one zone.
///
/// Which keys apply depends on `kind`: `min_persons` and `min_duration_s`
/// only to `crowd`, `dwell_s` only to `loitering`, `window` only to
/// `intrusion` (where it is required).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraRule {
    /// What to detect.
    pub kind: CameraRuleKind,
    /// Id of a zone of this camera.
    pub zone: String,
    /// COCO class names to look for. Default `["bicycle", "motorcycle"]`
    /// for `ebike_entry`, `["person"]` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<Vec<String>>,
    /// Minimum detector confidence (0 < x <= 1). Default 0.5.
    #[serde(default = "default_min_score")]
    pub min_score: f64,
    /// Minimum box area as a fraction of the frame (0 <= x < 1).
    /// Default 0.002.
    #[serde(default = "default_min_area")]
    pub min_area: f64,
    /// Crowd: at least this many persons (>= 2). Default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_persons: Option<u32>,
    /// Crowd: for at least this long, seconds (>= 1). Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_duration_s: Option<u32>,
    /// Loitering: staying longer than this, seconds (>= 1). Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwell_s: Option<u32>,
    /// Intrusion: the guarded local time window (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<TimeWindow>,
    /// Alert level. Default: ebike_entry orange, crowd yellow, intrusion
    /// orange, loitering blue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
}

fn default_min_score() -> f64 {
    0.5
}

fn default_min_area() -> f64 {
    0.002
}

impl CameraRule {
    /// The effective object classes.
    pub fn objects(&self) -> Vec<String> {
        match &self.objects {
            Some(list) => list.clone(),
            None => self
                .kind
                .default_objects()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    /// The effective level.
    pub fn level(&self) -> Level {
        self.level.unwrap_or(self.kind.default_level())
    }

    /// Crowd: the effective minimum number of persons (default 8).
    pub fn min_persons(&self) -> u32 {
        self.min_persons.unwrap_or(8)
    }

    /// Crowd: the effective minimum duration (default 10 s).
    pub fn min_duration_s(&self) -> u32 {
        self.min_duration_s.unwrap_or(10)
    }

    /// Loitering: the effective dwell time (default 60 s).
    pub fn dwell_s(&self) -> u32 {
        self.dwell_s.unwrap_or(60)
    }
}

/// The kind of a camera rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CameraRuleKind {
    /// An e-bike entering a lobby or lift (电动车进楼/进电梯).
    EbikeEntry,
    /// Too many persons in the zone for too long (人员聚集).
    Crowd,
    /// A person in the zone during the guarded window (区域入侵).
    Intrusion,
    /// A person staying in the zone too long (徘徊).
    Loitering,
}

impl CameraRuleKind {
    /// Default object classes of this kind.
    pub fn default_objects(self) -> &'static [&'static str] {
        match self {
            CameraRuleKind::EbikeEntry => &["bicycle", "motorcycle"],
            _ => &["person"],
        }
    }

    /// Default alert level of this kind.
    pub fn default_level(self) -> Level {
        match self {
            CameraRuleKind::EbikeEntry | CameraRuleKind::Intrusion => Level::Orange,
            CameraRuleKind::Crowd => Level::Yellow,
            CameraRuleKind::Loitering => Level::Blue,
        }
    }

    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            CameraRuleKind::EbikeEntry => "ebike_entry",
            CameraRuleKind::Crowd => "crowd",
            CameraRuleKind::Intrusion => "intrusion",
            CameraRuleKind::Loitering => "loitering",
        }
    }
}

/// The 80 COCO class names the detector knows.
pub const COCO_CLASSES: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];
