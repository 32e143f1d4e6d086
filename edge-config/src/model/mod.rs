//! The typed configuration of one gateway. Every table rejects unknown keys;
//! optional keys have the defaults documented on each field.

mod broker;
mod camera;
mod common;
mod console;
mod device;
mod homeassistant;
mod metrics;
mod rules;
mod uplink;

pub use broker::{
    Broker, BrokerMode, BrokerReader, CaTls, Compound, ExternalBroker, ServerTls,
    DEFAULT_BROKER_BIND, DEFAULT_BROKER_TLS_PORT,
};
pub(crate) use camera::{parsed_userinfo, userinfo};
pub use camera::{
    redact_url, Camera, CameraRule, CameraRuleKind, CameraSource, HwAccel, Mask, Zone, COCO_CLASSES,
};
pub use common::{AlertKind, HhMm, Level, LocationRef, Point, TimeWindow};
pub use console::{Console, ResponseTargets, Role, Staff, DEFAULT_RESOLVE_WITHIN_MIN};
pub use device::{Device, DeviceKind, Field, FieldType, PayloadFormat, Thresholds};
pub use homeassistant::HomeAssistant;
pub use metrics::{Metrics, DEFAULT_METRICS_BIND};
pub use rules::{
    CarbonMonoxideRule, DeviceHealthRule, EbikeBatteryRule, GasRule, HeatRule, Linkage,
    LinkageAction, Rules, SmartPlugRule, SmokeRule, SosRule, Timing, WaterLeakRule,
};
pub use uplink::{split_host_port, Outbox, Qos, Uplink, UplinkTls};

pub(crate) use common::{redact, redact_required};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole configuration of one gateway (one TOML file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[site]`: who and where this gateway is. Required.
    pub site: Site,
    /// `[locations]`: buildings, units and named areas.
    #[serde(default)]
    pub locations: Locations,
    /// `[broker]`: the MQTT broker the sensors talk to.
    #[serde(default)]
    pub broker: Broker,
    /// `[[devices]]`: sensors and actuators.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// `[rules]`: alert thresholds, levels, timing and linkage.
    #[serde(default)]
    pub rules: Rules,
    /// `[[cameras]]`: video sources analysed by the detector.
    #[serde(default)]
    pub cameras: Vec<Camera>,
    /// `[detector]`: the ONNX object detector.
    #[serde(default)]
    pub detector: Detector,
    /// `[uplink]`: the upstream MQTT connection; absent = no upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<Uplink>,
    /// `[[compounds]]`: on a street station's gateway, the compound gateways that forward
    /// their alerts to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compounds: Vec<Compound>,
    /// `[station_link]`: a compound's second upstream, its street police station's gateway
    /// (same keys as `[uplink]`; alerts only, from a durable outbox copy of their own, so
    /// the station hears the compound while the platform is unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station_link: Option<Uplink>,
    /// `[console]`: the duty staff's web console.
    #[serde(default)]
    pub console: Console,
    /// `[residents]`: the residents' pages.
    #[serde(default)]
    pub residents: Residents,
    /// `[storage]`: where the outbox and evidence are kept.
    #[serde(default)]
    pub storage: Storage,
    /// `[supervision]`: the end-to-end self-test of the alarm path.
    #[serde(default)]
    pub supervision: Supervision,
    /// `[metrics]`: Prometheus `/metrics`; absent = no listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// `[homeassistant]`: Home Assistant MQTT discovery.
    #[serde(default)]
    pub homeassistant: HomeAssistant,
}

impl Config {
    /// The device with this id.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.id == id)
    }

    /// The camera with this id.
    pub fn camera(&self, id: &str) -> Option<&Camera> {
        self.cameras.iter().find(|c| c.id == id)
    }

    /// The building with this id.
    pub fn building(&self, id: &str) -> Option<&Building> {
        self.locations.buildings.iter().find(|b| b.id == id)
    }

    /// The area with this id.
    pub fn area(&self, id: &str) -> Option<&Area> {
        self.locations.areas.iter().find(|a| a.id == id)
    }

    /// The device whose effective state topic is `topic`.
    pub fn device_by_topic(&self, topic: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.state_topic() == topic)
    }

    /// Devices of one kind.
    pub fn devices_of(&self, kind: DeviceKind) -> impl Iterator<Item = &Device> {
        self.devices.iter().filter(move |d| d.kind == kind)
    }

    /// The building a location is in: its own `building`, or its area's.
    pub fn building_of(&self, loc: &LocationRef) -> Option<&Building> {
        let id = match (&loc.building, &loc.area) {
            (Some(b), _) => b.as_str(),
            (None, Some(a)) => self.area(a)?.building.as_deref()?,
            (None, None) => return None,
        };
        self.building(id)
    }

    /// Buildings whose residents are warned of a hazard at `loc`: the
    /// area's `warns` list, or else the building the location is in.
    pub fn warned_buildings(&self, loc: &LocationRef) -> Vec<&Building> {
        let warns = loc
            .area
            .as_deref()
            .and_then(|a| self.area(a))
            .map(|a| &a.warns);
        match warns {
            Some(ids) if !ids.is_empty() => ids.iter().filter_map(|id| self.building(id)).collect(),
            _ => self.building_of(loc).into_iter().collect(),
        }
    }

    /// The cameras that see `device`: its own `cameras`, else its area's, else its
    /// building's (see [`Device::cameras`]).
    pub fn cameras_seeing<'a>(&'a self, device: &'a Device) -> &'a [String] {
        if !device.cameras.is_empty() {
            return &device.cameras;
        }
        let area = device.location.area.as_deref().and_then(|a| self.area(a));
        if let Some(area) = area.filter(|a| !a.cameras.is_empty()) {
            return &area.cameras;
        }
        self.building_of(&device.location)
            .map_or(&[], |b| b.cameras.as_slice())
    }

    /// Whether the embedded broker accepts clients without a login: no device has a
    /// login (readers alone do not make logins mandatory), or `broker.allow_anonymous`.
    pub fn broker_accepts_anonymous(&self) -> bool {
        self.broker.allow_anonymous || self.devices.iter().all(|d| d.username.is_none())
    }

    /// The MQTT client id used upstream (`uplink.client_id`, default
    /// `shouwang-{site.id}`); `None` without an `[uplink]`.
    pub fn uplink_client_id(&self) -> Option<String> {
        self.uplink.as_ref().map(|u| u.client_id(&self.site.id))
    }
}

/// `[residents]`: the residents' secret-link pages (`/r/{token}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Residents {
    /// Serve the resident pages on a listener of their own, e.g. `"192.168.20.1:8081"`
    /// on the residents' network, so that network need not reach the staff console and
    /// its login. Default: none (the pages are served on `[console] bind`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<std::net::SocketAddr>,
}

/// `[site]`: identity of the gateway's site.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Site id, lowercase ASCII letters, digits, `-` and `_` (it is part of
    /// every upstream MQTT topic), e.g. `"sw-demo-001"`.
    pub id: String,
    /// Human name, e.g. `"幸福里小区 (Xingfuli compound)"`.
    pub name: String,
    /// `compound` (residential compound, 小区) or `street_station`
    /// (street police station, 街道派出所/警务站).
    pub kind: SiteKind,
    /// IANA time zone used for time windows and reports. Default
    /// `"Asia/Shanghai"`; an unknown name is an error.
    #[serde(default = "default_timezone")]
    pub timezone: TimeZone,
    /// Languages of messages and announcements, first = primary.
    /// Default `["zh-CN", "en"]`.
    #[serde(default = "default_languages")]
    pub languages: Vec<Language>,
}

impl Site {
    /// The time zone.
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone.0
    }
}

fn default_timezone() -> TimeZone {
    TimeZone(chrono_tz::Asia::Shanghai)
}

/// An IANA time zone, written by name (`"Asia/Shanghai"`); an unknown name is refused with
/// the closest known one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeZone(pub chrono_tz::Tz);

impl TimeZone {
    /// Its IANA name.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }
}

impl TryFrom<String> for TimeZone {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse().map(TimeZone).map_err(|_| {
            let hint = crate::hints::did_you_mean(
                &name,
                chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()),
            );
            format!(
                "unknown time zone \"{name}\"{hint}; use an IANA name such as \"Asia/Shanghai\""
            )
        })
    }
}

impl From<TimeZone> for String {
    fn from(tz: TimeZone) -> String {
        tz.name().to_owned()
    }
}

fn default_languages() -> Vec<Language> {
    vec![Language::ZhCn, Language::En]
}

/// What kind of site the gateway guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    /// A residential compound (小区).
    Compound,
    /// A street police station (派出所 / 警务站).
    StreetStation,
}

/// A language for messages and PA announcements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Language {
    /// Simplified Chinese.
    #[serde(rename = "zh-CN")]
    ZhCn,
    /// English.
    #[serde(rename = "en")]
    En,
}

/// `[locations]`: the physical layout devices and cameras refer to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Locations {
    /// `[[locations.buildings]]`.
    pub buildings: Vec<Building>,
    /// `[[locations.areas]]`: named places such as lobbies and sheds.
    pub areas: Vec<Area>,
}

/// `[[locations.buildings]]`: one building (楼栋).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Building {
    /// Unique id, e.g. `"b1"`.
    pub id: String,
    /// Human name, e.g. `"1号楼 (Building 1)"`.
    pub name: String,
    /// Number of floors above ground (1..=200).
    pub floors: u32,
    /// Number of basement floors (floors -1 ..= -basements). Default 0.
    #[serde(default)]
    pub basements: u32,
    /// `[[locations.buildings.units]]`: stairwell units (单元).
    #[serde(default)]
    pub units: Vec<Unit>,
    /// Cameras (`[[cameras]]` ids) that see this building: a smoke, heat, gas, SOS or e-bike
    /// battery alarm of a device here gets a snapshot and a clip from each, unless the
    /// device or its area names cameras of its own. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cameras: Vec<String>,
}

impl Building {
    /// The unit with this id.
    pub fn unit(&self, id: &str) -> Option<&Unit> {
        self.units.iter().find(|u| u.id == id)
    }
}

/// `[[locations.buildings.units]]`: one unit (单元) of a building.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    /// Id, unique within the building, e.g. `"u1"`.
    pub id: String,
    /// Human name, e.g. `"1单元"`.
    pub name: String,
    /// Floors of this unit when fewer than the building's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floors: Option<u32>,
}

/// `[[locations.areas]]`: a named place, e.g. a lobby or a charging shed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Area {
    /// Unique id, e.g. `"b1-lobby"`.
    pub id: String,
    /// Human name, e.g. `"1号楼大堂 (Building 1 lobby)"`.
    pub name: String,
    /// What the place is.
    pub kind: AreaKind,
    /// Building the area is in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<String>,
    /// Unit of that building, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Floor of that building, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<i32>,
    /// Ids of buildings whose residents are warned of hazards here, e.g. a
    /// charging shed warns its nearest buildings. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warns: Vec<String>,
    /// Cameras (`[[cameras]]` ids) that see this area, e.g. the charging shed's camera: a
    /// smoke, heat, gas, SOS or e-bike battery alarm of a device here gets a snapshot and a
    /// clip from each, unless the device names cameras of its own. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cameras: Vec<String>,
}

/// The kind of a named area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AreaKind {
    /// Entrance hall (大堂).
    Lobby,
    /// Lift car or lift lobby (电梯).
    Elevator,
    /// E-bike charging shed (电动车充电棚).
    ChargingShed,
    /// School gate (校门).
    SchoolGate,
    /// Car park (停车场).
    CarPark,
    /// Corridor (走廊).
    Corridor,
    /// Kitchen (厨房).
    Kitchen,
    /// Plant / pump / boiler room (设备间).
    PlantRoom,
    /// Anything else.
    Other,
}

/// `[detector]`: the ONNX object detector used on camera frames.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Detector {
    /// Model name; the file is `{models_dir}/{model}.onnx`. Default
    /// `"yolox_nano"`.
    pub model: String,
    /// Directory of model files. When written in the file, a relative path
    /// is resolved against the config file's directory; the default
    /// `"models"` is left relative and resolved against the current
    /// directory when used.
    pub models_dir: PathBuf,
    /// Path of `libonnxruntime.so` (relative = against the config file's
    /// directory; must exist). Default: none, meaning the gateway looks for
    /// `vendor/onnxruntime/libonnxruntime.so` beside the workspace or next
    /// to its executable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<PathBuf>,
    /// Threads used inside one inference (1..=64). Default 1: on a 2-core gateway the
    /// other core decodes video (the pipeline then keeps ≥ 0.9 × raw inference speed);
    /// raise it on boxes with more cores.
    pub intra_threads: u32,
}

impl Default for Detector {
    fn default() -> Self {
        Self {
            model: "yolox_nano".to_string(),
            models_dir: PathBuf::from("models"),
            onnxruntime: None,
            intra_threads: 1,
        }
    }
}

impl Detector {
    /// `{models_dir}/{model}.onnx`.
    pub fn model_path(&self) -> PathBuf {
        self.models_dir.join(format!("{}.onnx", self.model))
    }
}

/// `[storage]`: local data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Directory of the SQLite outbox and evidence (relative = against the
    /// config file's directory). Default `"/var/lib/shouwang"`.
    pub data_dir: PathBuf,
    /// Disk quota in MiB (at least 16). Default 1024.
    pub quota_mb: u64,
    /// Disk space in MiB held back in a reserve file and given up when the disk is full, so
    /// that alarms can still be recorded (0: none). Default 16.
    pub reserve_mb: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/shouwang"),
            quota_mb: 1024,
            reserve_mb: 16,
        }
    }
}

/// `[supervision]`: how the gateway checks that it can still raise an alarm.
///
/// Every `self_test_period_s` a synthetic reading travels the real alarm path (embedded
/// broker → ingest → rules → alert store commit) without becoming an alert; when one has not
/// come back within `self_test_timeout_s`, a red `gateway_fault` is raised ("alarm path not
/// working"). EN 54-2 asks a fire panel to show a fault within 100 s.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Supervision {
    /// Seconds between two self-test probes (1..=60). Default 10.
    pub self_test_period_s: u64,
    /// Seconds a probe may take before the alarm path counts as broken (more than the
    /// period, at most 90, so that the fault shows within EN 54-2's 100 s). Default 60.
    pub self_test_timeout_s: u64,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            self_test_period_s: 10,
            self_test_timeout_s: 60,
        }
    }
}
