//! Fuzz harness: sensor traffic through ingest (routing, throttle, decoder) and the rules
//! engine behind it, on the demo compound plus a device of every kind in each payload format.
//!
//! Shared by the `ingest_rules` fuzz target (fuzz/fuzz_targets/) and the regular test suite
//! (gateway/tests/ingest_fuzz.rs replays the seed corpus and every regression input).
//!
//! # Input format
//!
//! An input is a sequence of records separated by `\n` (at most [`MAX_RECORDS`]). A record is
//! `ADVANCE TOPIC PAYLOAD…`, one byte each for the first two:
//!
//! - `ADVANCE`: how far the clock moves before the record (see [`advance`]): 0–255 in uneven
//!   steps from nothing to 16 hours, so debounces, clear-holds, offline timeouts and the
//!   e-bike charging limit are all reachable;
//! - `TOPIC`: `0xFF` takes the topic inline, `PAYLOAD` being `topic SPACE payload` (the form
//!   the seed corpus is written in, stable when the demo's devices change); `0xFE` is a staff
//!   resolve of an alert the rules raised (`PAYLOAD`'s first byte picks which); anything else
//!   picks one of [`Site::topics`] by index (every device topic, heartbeat and availability
//!   topic, plus foreign and bridge topics);
//! - `PAYLOAD`: the MQTT payload, as is.
//!
//! After every record the engine gets a tick at the new time.
//!
//! # What is checked
//!
//! Nothing panics; every message not skipped as bridge/command traffic is counted once,
//! accepted or rejected; and the rules' edges are consistent per (device, kind): `Raise` only
//! when no alert is open (but every SOS press is a raise, by design), `Update` (to another
//! level) and `Clear` only when one is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use edge_config::{AlertKind, Config, Level};
use gateway::ingest::decode::Router;
use gateway::ingest::{Ingest, Ingested};
use gateway::rules::reset::{self, ResetSender};
use gateway::rules::{Change, Engine, RuleReset, Signal};
use tokio::time::Instant;

/// Records beyond this are ignored (keeps one input's run time bounded).
pub const MAX_RECORDS: usize = 256;

/// `TOPIC` byte: the topic is written inline, before the first space of the payload.
pub const INLINE_TOPIC: u8 = 0xFF;
/// `TOPIC` byte: a staff member resolves an alert the rules raised.
pub const STAFF_RESOLVE: u8 = 0xFE;

/// Devices the demo lacks, so that every kind is fuzzed in both payload formats, plus a
/// device on a custom topic.
const EXTRA_DEVICES: &str = r#"
[[devices]]
id = "fuzz-z2m-battery"
kind = "ebike_battery"
format = "zigbee2mqtt"
location = { area = "charging-shed", room = "bay 09" }

[[devices]]
id = "fuzz-z2m-siren"
kind = "siren"
format = "zigbee2mqtt"
location = { area = "b1-lobby" }

[[devices]]
id = "fuzz-z2m-pa"
kind = "pa_speaker"
format = "zigbee2mqtt"
friendly_name = "shed/pa 2"
location = { area = "charging-shed" }

[[devices]]
id = "fuzz-native-co"
kind = "carbon_monoxide"
location = { building = "b1", unit = "u1", floor = 3, room = "0301" }

[[devices]]
id = "fuzz-native-plug"
kind = "smart_plug"
location = { area = "charging-shed", room = "bay 09" }

[[devices]]
id = "fuzz-legacy-gas"
kind = "gas"
topic = "legacy/kitchen/gas"
location = { building = "b1", unit = "u1", floor = 3, room = "0301" }
"#;

/// Topics no device owns: sensor families (counted as unknown devices), bridge and command
/// traffic (skipped), and foreign topics.
const FOREIGN_TOPICS: [&str; 8] = [
    "sensors/nobody/state",
    "sensors/nobody/heartbeat",
    "zigbee2mqtt/nobody",
    "zigbee2mqtt/bridge/state",
    "zigbee2mqtt/b1_u2_0803_smoke/set",
    "sensors/b1-u1-1201-valve/get",
    "home/plug/power",
    "",
];

/// The fuzzed site: its configuration and the topics a `TOPIC` byte picks from.
pub struct Site {
    pub config: Arc<Config>,
    /// Every device topic (sorted), then [`FOREIGN_TOPICS`].
    pub topics: Vec<String>,
    /// Tells which topics ingest skips uncounted.
    pub router: Router,
}

/// The configuration text: the demo compound plus [`EXTRA_DEVICES`].
pub fn config_text() -> String {
    format!(
        "{}\n{EXTRA_DEVICES}",
        include_str!("../../edge-config/examples/demo.toml")
    )
}

/// Where the demo's relative paths resolve (the demo's own directory).
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge-config/examples")
}

/// The site, parsed once per process.
///
/// # Panics
///
/// If the demo configuration no longer parses: the harness cannot run without it.
pub fn site() -> &'static Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(|| {
        let config = edge_config::parse(&config_text(), "demo+fuzz.toml", &examples_dir())
            .unwrap_or_else(|e| panic!("the fuzz site's configuration is invalid:\n{e}"));
        let router = Router::new(&config);
        let mut topics = router.device_filters();
        topics.extend(FOREIGN_TOPICS.iter().map(|t| t.to_string()));
        Site {
            config: Arc::new(config),
            topics,
            router,
        }
    })
}

/// The clock step of an `ADVANCE` byte: 0–99 → 0–9.9 s in 100 ms steps; 100–199 → 10 s to
/// 16.5 min in 10 s steps; 200–255 → 17 min to 16 h in 17-minute steps.
pub fn advance(b: u8) -> Duration {
    let b = u64::from(b);
    match b {
        0..=99 => Duration::from_millis(b * 100),
        100..=199 => Duration::from_secs((b - 99) * 10),
        _ => Duration::from_secs((b - 199) * 17 * 60),
    }
}

/// One record as the harness reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// An MQTT publish.
    Publish { topic: String, payload: &'a [u8] },
    /// A staff resolve of the `pick`-th alert raised so far (modulo their number).
    Resolve { pick: u8 },
    /// Only the clock moves (a record shorter than two bytes).
    Tick,
}

/// Splits an input into (clock step, record) pairs.
pub fn records<'a>(site: &Site, data: &'a [u8]) -> Vec<(Duration, Record<'a>)> {
    data.split(|&b| b == b'\n')
        .take(MAX_RECORDS)
        .map(|line| match line {
            [] => (Duration::ZERO, Record::Tick),
            [a] => (advance(*a), Record::Tick),
            [a, t, payload @ ..] => (advance(*a), record(site, *t, payload)),
        })
        .collect()
}

fn record<'a>(site: &Site, topic: u8, payload: &'a [u8]) -> Record<'a> {
    match topic {
        INLINE_TOPIC => {
            let split = payload.iter().position(|&b| b == b' ');
            let (topic, payload) = match split {
                Some(i) => (&payload[..i], &payload[i + 1..]),
                None => (payload, &payload[payload.len()..]),
            };
            Record::Publish {
                topic: String::from_utf8_lossy(topic).into_owned(),
                payload,
            }
        }
        STAFF_RESOLVE => Record::Resolve {
            pick: payload.first().copied().unwrap_or(0),
        },
        i => Record::Publish {
            topic: site.topics[usize::from(i) % site.topics.len()].clone(),
            payload,
        },
    }
}

/// Writes records in the input format (for seed corpora): `(advance byte, topic, payload)`,
/// the topic inline. A payload must not contain `\n`.
pub fn encode(records: &[(u8, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (advance, topic, payload)) in records.iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.push(*advance);
        out.push(INLINE_TOPIC);
        out.extend_from_slice(topic.as_bytes());
        out.push(b' ');
        out.extend_from_slice(payload);
    }
    out
}

/// The alerts the rules hold open, as the alert task would see them from the edges.
#[derive(Default)]
struct Alerts {
    /// Open alerts and their levels.
    open: HashMap<(usize, AlertKind), Level>,
    /// Every (device, kind) raised so far, for staff resolves to pick from.
    raised: Vec<(usize, AlertKind)>,
}

impl Alerts {
    /// Checks that `signals` are consistent with the open alerts, then applies them.
    ///
    /// # Panics
    ///
    /// On an inconsistent edge: that is a finding.
    fn apply(&mut self, signals: &[Signal]) {
        for s in signals {
            let key = (s.device, s.kind);
            match s.change {
                Change::Raise(level) => {
                    // Every SOS press is a raise; the alert task folds one on an open alert
                    // into it (see `Engine::hazards`).
                    assert!(
                        self.open.insert(key, level).is_none() || s.kind == AlertKind::Sos,
                        "raise of an alert already open: {s:?}"
                    );
                    self.raised.push((s.device, s.kind));
                }
                Change::Update(level) => {
                    let Some(open) = self.open.get_mut(&key) else {
                        panic!("update of no open alert: {s:?}");
                    };
                    assert_ne!(*open, level, "update to the same level: {s:?}");
                    *open = level;
                }
                Change::Clear => {
                    assert!(
                        self.open.remove(&key).is_some(),
                        "clear of no open alert: {s:?}"
                    )
                }
            }
        }
    }

    /// A staff resolve of the `pick`-th raised alert, if it is still open, as the alert task
    /// sends it.
    fn resolve(&mut self, config: &Config, pick: u8, resets: &mut ResetSender) {
        if self.raised.is_empty() {
            return;
        }
        let (device, kind) = self.raised[usize::from(pick) % self.raised.len()];
        let Some(level) = self.open.remove(&(device, kind)) else {
            return;
        };
        let id = config.devices[device].id.clone();
        let still_reported = resets.still_reported(&id, kind);
        resets.send(RuleReset {
            device: id,
            kind,
            level,
            still_reported,
        });
    }
}

/// The wall-clock time the fuzzed clock starts at (a winter evening, local time UTC+8: the
/// e-bike night rules are an advance or two away).
fn wall_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 15, 10, 0, 0)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// Runs one input. Panics only on a finding (a panic in the gateway or a broken invariant).
pub fn run(data: &[u8]) {
    let site = site();
    let mut ingest = Ingest::new(site.config.clone());
    let t0 = Instant::now();
    let wall0 = wall_start();
    let mut engine = Engine::new(site.config.clone(), t0);
    let (mut resets, receiver) = reset::channel();
    engine.set_resets(receiver);
    let mut alerts = Alerts::default();
    let mut elapsed = Duration::ZERO;
    let mut counted = 0u64;
    for (step, record) in records(site, data) {
        elapsed += step;
        let now = t0 + elapsed;
        match record {
            Record::Publish { topic, payload } => {
                if !site.router.is_ignorable(&topic) {
                    counted += 1;
                }
                if let Some(Ingested::Reading(mut reading)) = ingest.ingest(&topic, payload, now) {
                    reading.at = wall0 + elapsed;
                    alerts.apply(&engine.on_reading(&reading));
                }
            }
            Record::Resolve { pick } => alerts.resolve(&site.config, pick, &mut resets),
            Record::Tick => {}
        }
        alerts.apply(&engine.on_tick(now));
    }
    let s = ingest.stats.snapshot();
    assert_eq!(
        s.accepted + s.rejected_total,
        counted,
        "every sensor message is accepted or rejected, once"
    );
}
