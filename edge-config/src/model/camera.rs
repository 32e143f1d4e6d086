//! `[[cameras]]`: video sources, their zones and detection rules.

use super::{redact, Level, LocationRef, Point, TimeWindow};
use serde::{Deserialize, Serialize, Serializer};
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
    /// mounted later. With `sub_url`, this is the camera's main stream
    /// (e.g. H.265 at full size, Hikvision `/Streaming/Channels/101`):
    /// snapshots and event clips come from it.
    ///
    /// The camera's login may be written in it, `rtsp://USER:PASSWORD@host/…`
    /// (percent-encode `/ ? # %` in the password: `%2F %3F %23 %25`), or
    /// given as `username` / `password`. FFmpeg answers the camera's basic or
    /// digest challenge with it. Wherever the URL is shown (logs, errors,
    /// `gateway status` / `doctor`, the console, the serialized
    /// configuration) the password reads `***` (see [`redact_url`]).
    #[serde(serialize_with = "redact_url_ser")]
    pub url: String,
    /// The camera's sub-stream (optional; `rtsp://`, `rtsps://`, `http://` or
    /// `https://`, e.g. H.264 640×480, Hikvision `/Streaming/Channels/102`):
    /// when set, detection runs on it (cheaper to decode) while snapshots and
    /// clips come from `url`, the main stream, with the boxes scaled to its
    /// size. Without a login of its own it uses the camera's (`username` /
    /// `password`, or the one written in `url`). Not with a file source. If
    /// either stream fails while the other runs, the camera is reported down
    /// (`camera_down`) saying which stream.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact_url_opt"
    )]
    pub sub_url: Option<String>,
    /// The camera's user name for RTSP / HTTP authentication, instead of
    /// writing it in `url` (needs `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The camera's password (shown as `********` when serialized); needs
    /// `username`. Any character is fine: it is percent-encoded into the
    /// URLs FFmpeg opens.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact"
    )]
    pub password: Option<String>,
    /// Where the camera looks (see [`LocationRef`]).
    pub location: LocationRef,
    /// Frames analysed per second (0.1..=30). Default 5.
    #[serde(default = "default_fps")]
    pub analyse_fps: f64,
    /// Whether the camera is analysed. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Hardware video decoding of the analysed stream: `off` (the default,
    /// software), `auto` (VAAPI, then V4L2 M2M, else software), `vaapi` or
    /// `v4l2m2m`. Whatever is asked, a camera whose hardware decoder cannot
    /// be opened, or fails, is decoded in software; `gateway status` says
    /// which decoder runs and why it fell back.
    #[serde(default, skip_serializing_if = "HwAccel::is_off")]
    pub hwaccel: HwAccel,
    /// The VAAPI device (`vaapi` and `auto` only). Default
    /// `/dev/dri/renderD128`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hwaccel_device: Option<PathBuf>,
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

/// `hwaccel`: how a camera's analysed stream is decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HwAccel {
    /// Software (FFmpeg's own decoders).
    #[default]
    Off,
    /// VAAPI if its device opens, else V4L2 M2M, else software.
    Auto,
    /// VAAPI (Intel / AMD GPUs) on `hwaccel_device`, else software.
    Vaapi,
    /// A V4L2 memory-to-memory decoder (Raspberry Pi, Rockchip, …), else
    /// software.
    V4l2m2m,
}

impl HwAccel {
    /// The VAAPI device used when `hwaccel_device` is not set.
    pub const DEFAULT_VAAPI_DEVICE: &'static str = "/dev/dri/renderD128";

    /// Whether hardware decoding is off (the default).
    pub fn is_off(&self) -> bool {
        *self == HwAccel::Off
    }

    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            HwAccel::Off => "off",
            HwAccel::Auto => "auto",
            HwAccel::Vaapi => "vaapi",
            HwAccel::V4l2m2m => "v4l2m2m",
        }
    }

    /// Whether this choice opens a VAAPI device (and so reads `hwaccel_device`).
    pub fn uses_vaapi(self) -> bool {
        matches!(self, HwAccel::Auto | HwAccel::Vaapi)
    }
}

fn default_true() -> bool {
    true
}

impl Camera {
    /// The zone with this id.
    pub fn zone(&self, id: &str) -> Option<&Zone> {
        self.zones.iter().find(|z| z.id == id)
    }

    /// The source of `url` (the main stream): a network stream, with the
    /// camera's login in its URL, or a local file.
    pub fn source(&self) -> CameraSource {
        if let Some(path) = self.url.strip_prefix("file://") {
            return CameraSource::File(PathBuf::from(path));
        }
        match self.url.split_once("://") {
            Some(_) => CameraSource::Stream(self.with_login(&self.url)),
            None => CameraSource::File(PathBuf::from(&self.url)),
        }
    }

    /// What detection analyses: the sub-stream when there is one, else the
    /// main stream.
    pub fn analysis_source(&self) -> CameraSource {
        match &self.sub_url {
            Some(sub) => CameraSource::Stream(self.with_login(sub)),
            None => self.source(),
        }
    }

    /// The main stream, when it is kept apart from the analysed one (a
    /// `sub_url` is set): snapshots and clips come from it.
    pub fn evidence_source(&self) -> Option<CameraSource> {
        self.sub_url.as_ref().map(|_| self.source())
    }

    /// The VAAPI device `hwaccel` opens: `hwaccel_device`, else
    /// [`HwAccel::DEFAULT_VAAPI_DEVICE`].
    pub fn vaapi_device(&self) -> PathBuf {
        self.hwaccel_device
            .clone()
            .unwrap_or_else(|| PathBuf::from(HwAccel::DEFAULT_VAAPI_DEVICE))
    }

    /// `url` as shown anywhere (password replaced by `***`).
    pub fn shown_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The login as URL userinfo (`USER:PASSWORD`, percent-encoded): from
    /// `username` / `password`, else the one written in `url`.
    fn login(&self) -> Option<String> {
        if let Some(user) = &self.username {
            let pass = self.password.as_deref().unwrap_or_default();
            return Some(format!("{}:{}", percent_encode(user), percent_encode(pass)));
        }
        parsed_userinfo(&self.url).map(str::to_owned)
    }

    /// `url` with the camera's login inserted, unless it has one of its own.
    fn with_login(&self, url: &str) -> String {
        match (parsed_userinfo(url), self.login(), url.split_once("://")) {
            (None, Some(login), Some((scheme, rest))) => format!("{scheme}://{login}@{rest}"),
            _ => url.to_owned(),
        }
    }
}

/// The userinfo of a network URL (`USER[:PASSWORD]` between `://` and the
/// last `@`) and the byte offset where it starts. The last `@` is taken, not
/// the first after the host, so that a password holding a raw `@` or `/`
/// is still recognised as userinfo (and redacted) rather than shown.
pub(crate) fn userinfo(url: &str) -> Option<(&str, usize)> {
    let start = url.find("://")? + 3;
    let at = url[start..].rfind('@')? + start;
    Some((&url[start..at], start))
}

/// The userinfo of a network URL as FFmpeg reads it: before the last `@` of
/// the authority, which ends at the first `/`, `?` or `#`.
pub(crate) fn parsed_userinfo(url: &str) -> Option<&str> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority.rfind('@').map(|at| &authority[..at])
}

/// A camera URL safe to show: the password in its userinfo replaced by
/// `***` (`rtsp://admin:s3cret@10.0.0.5/…` → `rtsp://admin:***@10.0.0.5/…`);
/// a URL without a password (or a file path) is returned as it is. The one
/// redaction used for camera URLs in logs, errors, status, doctor, the
/// console and the serialized configuration.
pub fn redact_url(url: &str) -> String {
    let Some((info, start)) = userinfo(url) else {
        return url.to_owned();
    };
    match info.split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..start], &url[start + info.len()..]),
        None => url.to_owned(),
    }
}

/// `s` with every byte but RFC 3986's unreserved characters percent-encoded
/// (userinfo that any URL parser splits the same way).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn redact_url_ser<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

fn redact_url_opt<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_some(&redact_url(url)),
        None => s.serialize_none(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A camera of these keys (TOML lines), `url` defaulting to a main stream.
    fn camera(keys: &str) -> Camera {
        let url = if keys.lines().any(|l| l.starts_with("url =")) {
            ""
        } else {
            "url = \"rtsp://10.0.0.5:554/Streaming/Channels/101\"\n"
        };
        toml::from_str(&format!(
            "id = \"cam-gate\"\nlocation = {{ area = \"gate\" }}\n{url}{keys}"
        ))
        .unwrap()
    }

    #[test]
    fn redaction_replaces_the_password_and_keeps_user_host_and_path() {
        assert_eq!(
            redact_url("rtsp://admin:s3cret@10.0.0.5:554/Streaming/Channels/101"),
            "rtsp://admin:***@10.0.0.5:554/Streaming/Channels/101"
        );
        // Special characters, raw or percent-encoded, in user and password.
        assert_eq!(
            redact_url("rtsp://ad%40min:p%40ss%3Aw%2Frd@cam.local/live?x=1"),
            "rtsp://ad%40min:***@cam.local/live?x=1"
        );
        assert_eq!(
            redact_url("rtsp://admin:p@ss:w/rd#1@cam.local/live"),
            "rtsp://admin:***@cam.local/live",
            "a raw '@', ':', '/' or '#' in the password is still hidden"
        );
        assert_eq!(redact_url("rtsp://admin:@h/x"), "rtsp://admin:***@h/x");
        // Nothing secret: unchanged.
        assert_eq!(redact_url("rtsp://admin@h/x"), "rtsp://admin@h/x");
        assert_eq!(redact_url("rtsp://h:554/x"), "rtsp://h:554/x");
        assert_eq!(redact_url("footage/a b@2x.mp4"), "footage/a b@2x.mp4");
        assert_eq!(redact_url(""), "");
    }

    #[test]
    fn the_login_keys_are_percent_encoded_into_both_streams() {
        let cam = camera(
            "sub_url = \"rtsp://10.0.0.5:554/Streaming/Channels/102\"\n\
             username = \"admin\"\npassword = \"p@ss:w/rd %1\"",
        );
        let login = "admin:p%40ss%3Aw%2Frd%20%251@";
        assert_eq!(
            cam.source(),
            CameraSource::Stream(format!("rtsp://{login}10.0.0.5:554/Streaming/Channels/101"))
        );
        assert_eq!(
            cam.analysis_source(),
            CameraSource::Stream(format!("rtsp://{login}10.0.0.5:554/Streaming/Channels/102"))
        );
        assert_eq!(cam.evidence_source(), Some(cam.source()));
        assert_eq!(
            cam.shown_url(),
            "rtsp://10.0.0.5:554/Streaming/Channels/101"
        );
    }

    #[test]
    fn a_login_written_in_url_also_opens_the_sub_stream() {
        let cam =
            camera("url = \"rtsp://admin:s3cret@10.0.0.5/101\"\nsub_url = \"rtsp://10.0.0.5/102\"");
        assert_eq!(
            cam.analysis_source(),
            CameraSource::Stream("rtsp://admin:s3cret@10.0.0.5/102".into())
        );
        let own = camera(
            "url = \"rtsp://admin:s3cret@10.0.0.5/101\"\n\
             sub_url = \"rtsp://viewer:other@10.0.0.5/102\"",
        );
        assert_eq!(
            own.analysis_source(),
            CameraSource::Stream("rtsp://viewer:other@10.0.0.5/102".into())
        );
        let single = camera("");
        assert_eq!(
            (single.evidence_source(), single.analysis_source()),
            (None, single.source())
        );
    }

    #[test]
    fn a_serialized_camera_shows_no_password() {
        let cam = camera(
            "url = \"rtsp://admin:s3cret@10.0.0.5/101\"\n\
             sub_url = \"rtsp://viewer:0ther@10.0.0.5/102\"\n\
             username = \"admin\"\npassword = \"pa55word\"",
        );
        let shown = toml::to_string(&cam).unwrap();
        for secret in ["s3cret", "0ther", "pa55word"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("url = \"rtsp://admin:***@10.0.0.5/101\""),
            "{shown}"
        );
        assert!(shown.contains("password = \"********\""), "{shown}");
    }
}
