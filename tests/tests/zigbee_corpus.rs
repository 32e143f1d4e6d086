//! The Zigbee2MQTT corpus, played through the real gateway: every device of
//! `tests/fixtures/zigbee2mqtt/corpus.json` (generated from zigbee-herdsman-converters' own
//! device definitions by `simulators/z2m-corpus`) is configured as a `zigbee2mqtt` device of
//! one gateway, and its messages are published QoS 1 in order, state by state, on the topics
//! Zigbee2MQTT uses. Per device: the normal messages raise nothing, the alarm raises the
//! expected alert kind at the level the default rules give it, the clear resolves it, and
//! ingest rejects none of these well-formed messages. All outcomes are collected first and
//! asserted at the end as one table, so a run shows the whole picture.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::mqtt::Mqtt;
use e2e::{workspace_root, write_config, Gateway};
use serde_json::Value;

struct Corpus {
    source: String,
    devices: Vec<Device>,
}

struct Device {
    id: String,
    vendor: String,
    model: String,
    kind: String,
    output: String,
    messages: Vec<Message>,
}

struct Message {
    state: String,
    topic_suffix: String,
    payload: Value,
}

/// Devices whose mismatch is known and not fixed yet, with the reason. The test checks they
/// still fail, so the list cannot go stale: a device that starts passing must leave it.
const PENDING: [(&str, &str); 0] = [];

/// The level of each kind's alarm under the default rules (edge-config `rules`): smoke and
/// heat red, a gas alarm flag is the high stage (red), a CO alarm's own flag red, a plug's
/// over-current and overheating red, water leak orange, SOS red.
fn expected_level(kind: &str) -> &'static str {
    match kind {
        "water_leak" => "orange",
        _ => "red",
    }
}

const PHASES: [&str; 3] = ["normal", "alarm", "clear"];
const WAIT: Duration = Duration::from_secs(15);
/// How long the normal phase listens for alerts that should not come.
const QUIET: Duration = Duration::from_secs(4);

fn corpus_path() -> PathBuf {
    workspace_root().join("tests/fixtures/zigbee2mqtt/corpus.json")
}

fn load_corpus() -> Corpus {
    let text = std::fs::read_to_string(corpus_path()).expect("read the corpus");
    let v: Value = serde_json::from_str(&text).expect("parse the corpus");
    let s = |v: &Value, k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("corpus: no {k} in {v}"))
            .to_owned()
    };
    let devices = v["devices"]
        .as_array()
        .expect("corpus devices")
        .iter()
        .map(|d| Device {
            id: s(d, "id"),
            vendor: s(d, "vendor"),
            model: s(d, "model"),
            kind: s(d, "kind"),
            output: s(d, "output"),
            messages: d["messages"]
                .as_array()
                .expect("corpus messages")
                .iter()
                .map(|m| Message {
                    state: s(m, "state"),
                    topic_suffix: s(m, "topic_suffix"),
                    payload: m["payload"].clone(),
                })
                .collect(),
        })
        .collect();
    Corpus {
        source: s(&v, "source"),
        devices,
    }
}

fn config_for(devices: &[&Device]) -> String {
    let mut body = String::from(
        "[[locations.buildings]]\nid = \"b1\"\nname = \"1号楼\"\nfloors = 18\n\n\
         [rules.timing]\ndebounce_s = 0\nclear_hold_s = 1\nescalate_after_s = 3600\n",
    );
    for d in devices {
        body.push_str(&format!(
            "\n[[devices]]\nid = \"{id}\"\nkind = \"{kind}\"\nformat = \"zigbee2mqtt\"\n\
             friendly_name = \"{id}\"\nmodel = \"{model}\"\nlocation = {{ building = \"b1\", floor = 2 }}\n",
            id = d.id,
            kind = d.kind,
            model = d.model
        ));
    }
    body
}

/// What Zigbee2MQTT puts on the wire: JSON for objects, the bare text for a string (the
/// `/action` side topic, `output: attribute` values), numbers and booleans as text.
fn wire(payload: &Value) -> Vec<u8> {
    match payload {
        Value::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

/// Alert events seen per device: (event, kind, level, phase).
type Events = BTreeMap<String, Vec<(String, String, String, &'static str)>>;

/// Reads alert events until `done` holds or `wait` passes.
async fn pump(
    w: &mut Mqtt,
    events: &mut Events,
    phase: &'static str,
    wait: Duration,
    done: impl Fn(&Events) -> bool,
) {
    let deadline = tokio::time::Instant::now() + wait;
    while !done(events) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(m) = w.next(left).await else {
            break;
        };
        let v = m.json();
        let (Some(device), Some(event)) = (v["source"]["id"].as_str(), v["event"].as_str()) else {
            continue;
        };
        events.entry(device.to_owned()).or_default().push((
            event.to_owned(),
            v["kind"].as_str().unwrap_or("").to_owned(),
            v["level"].as_str().unwrap_or("").to_owned(),
            phase,
        ));
    }
}

fn has(events: &Events, device: &str, phase: &str, event: &str, kind: &str) -> bool {
    events.get(device).is_some_and(|e| {
        e.iter()
            .any(|(ev, k, _, p)| *p == phase && ev == event && k == kind)
    })
}

fn in_phase<'a>(
    events: &'a Events,
    device: &str,
    phase: &str,
) -> Vec<&'a (String, String, String, &'static str)> {
    events
        .get(device)
        .map(|e| e.iter().filter(|x| x.3 == phase).collect())
        .unwrap_or_default()
}

/// Plays every phase for every device; returns the alert events seen.
async fn play(broker: SocketAddr, devices: &[&Device]) -> (Events, u64) {
    let mut w = Mqtt::connect(broker, "corpus-watch").await;
    w.subscribe("shouwang/test-site/alerts/#").await;
    let z2m = Mqtt::connect(broker, "zigbee2mqtt-bridge").await;
    let mut events = Events::new();
    let mut published = 0u64;
    for phase in PHASES {
        for d in devices {
            for m in d.messages.iter().filter(|m| m.state == phase) {
                let topic = format!("zigbee2mqtt/{}{}", d.id, m.topic_suffix);
                z2m.publish(&topic, wire(&m.payload)).await;
                published += 1;
            }
        }
        let expect: Vec<(&str, &str)> = devices
            .iter()
            .filter(|d| phase == "alarm" || (phase == "clear" && d.kind != "sos"))
            .map(|d| (d.id.as_str(), d.kind.as_str()))
            .collect();
        let event = if phase == "alarm" {
            "raised"
        } else {
            "resolved"
        };
        let done = |e: &Events| {
            !expect.is_empty()
                && expect
                    .iter()
                    .all(|(id, kind)| has(e, id, phase, event, kind))
        };
        // The normal phase waits its whole time (nothing should come); the others end early
        // once every expected event is in, then wait a little for stray events.
        let wait = if phase == "normal" { QUIET } else { WAIT };
        pump(&mut w, &mut events, phase, wait, done).await;
        let stray = Duration::from_millis(1500);
        pump(&mut w, &mut events, phase, stray, |_| false).await;
    }
    (events, published)
}

/// Reads `status.json` until ingest has counted every published message.
fn ingest_counters(data: &Path, published: u64) -> Value {
    let path = data.join("status.json");
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if let Some(ingest) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| v["ingest"].clone())
        {
            let seen = ingest["accepted"].as_u64().unwrap_or(0)
                + ingest["rejected_total"].as_u64().unwrap_or(0);
            last = ingest;
            if seen >= published {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

/// Rejections per device and reason from the gateway's log ("sensor message rejected", the
/// first of each (device, reason) is always logged), topics no device owns under `-`.
fn rejections_from_log(gateway: &mut Gateway) -> BTreeMap<String, BTreeSet<String>> {
    gateway.drain_log();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for v in gateway
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if v["message"] == "sensor message rejected" {
            let device = v["device"].as_str().unwrap_or("-").to_owned();
            let what = format!(
                "{} ({})",
                v["reason"].as_str().unwrap_or("?"),
                v["topic"].as_str().unwrap_or("?")
            );
            out.entry(device).or_default().insert(what);
        }
    }
    out
}

/// What went wrong for one device, from the events of each phase.
fn judge(d: &Device, events: &Events) -> Vec<String> {
    let mut why = Vec::new();
    let stray = |phase: &str| -> Vec<String> {
        in_phase(events, &d.id, phase)
            .iter()
            .map(|(ev, k, l, _)| format!("{ev} {k} {l}"))
            .collect()
    };
    let normal = stray("normal");
    if !normal.is_empty() {
        why.push(format!("normal raised: {}", normal.join(", ")));
    }
    let alarm = in_phase(events, &d.id, "alarm");
    match alarm
        .iter()
        .find(|(ev, k, _, _)| ev == "raised" && *k == d.kind)
    {
        None => why.push(format!(
            "alarm: no {} alert (saw: {})",
            d.kind,
            stray("alarm").join(", ")
        )),
        Some((_, _, level, _)) if level != expected_level(&d.kind) => why.push(format!(
            "alarm: {} at {level}, expected {}",
            d.kind,
            expected_level(&d.kind)
        )),
        Some(_) => {}
    }
    let clear = stray("clear");
    if d.kind == "sos" {
        // SOS alerts are resolved by staff; the button's idle/off must not count as a press.
        if !clear.is_empty() {
            why.push(format!("clear counted as a press: {}", clear.join(", ")));
        }
    } else if !has(events, &d.id, "clear", "resolved", &d.kind) {
        why.push(format!(
            "clear: {} not resolved (saw: {})",
            d.kind,
            clear.join(", ")
        ));
    }
    why
}

#[tokio::test(flavor = "multi_thread")]
async fn every_corpus_device_alerts_on_alarm_stays_quiet_when_normal_and_resolves_on_clear() {
    let corpus = load_corpus();
    let devices: Vec<&Device> = corpus.devices.iter().collect();
    assert!(
        devices.len() >= 30,
        "the corpus has {} playable devices",
        devices.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_for(&devices));
    let data = dir.path().join("data");
    let mut gateway = Gateway::start(&config, &data);
    let broker = gateway.wait_ready();

    let (events, published) = play(broker, &devices).await;
    let ingest = ingest_counters(&data, published);
    let rejected = rejections_from_log(&mut gateway);

    let failures = failures(&devices, &events, &rejected, &ingest);
    let table = report(&corpus, &devices, &failures, &ingest);
    eprintln!("{table}");
    let pending: BTreeMap<&str, &str> = PENDING.iter().copied().collect();
    let stale: Vec<&&str> = pending
        .keys()
        .filter(|id| !failures.contains_key(**id))
        .collect();
    assert!(
        stale.is_empty(),
        "PENDING devices that now pass (remove them from PENDING): {stale:?}\n{table}"
    );
    let unexpected: Vec<&&str> = failures
        .keys()
        .filter(|id| !pending.contains_key(**id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} of {} corpus devices fail:\n{table}",
        unexpected.len(),
        devices.len()
    );
    if pending.is_empty() {
        assert_eq!(
            ingest["rejected_total"].as_u64(),
            Some(0),
            "well-formed Zigbee2MQTT messages were rejected\n{table}"
        );
    }
}

/// Every failing device and why: its alert events, and the rejections of its messages.
fn failures<'a>(
    devices: &[&'a Device],
    events: &Events,
    rejected: &BTreeMap<String, BTreeSet<String>>,
    ingest: &Value,
) -> BTreeMap<&'a str, Vec<String>> {
    let unowned = ingest["rejected_by_reason"]["unknown_device"]
        .as_u64()
        .unwrap_or(0);
    let mut failures: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for d in devices {
        let mut why = judge(d, events);
        if let Some(r) = rejected.get(&d.id) {
            why.push(format!(
                "rejected: {}",
                r.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        // Topics no device owns are counted under `-`, and the log names only the first of
        // them every few seconds: a device with messages off its state topic (the `/action`
        // side topic, `output: attribute`) is blamed for any such count.
        let side = d
            .messages
            .iter()
            .filter(|m| !m.topic_suffix.is_empty())
            .count();
        if side > 0 && unowned > 0 {
            why.push(format!(
                "its {side} messages on zigbee2mqtt/{}/…: the site counted {unowned} unknown_device",
                d.id
            ));
        }
        if !why.is_empty() {
            failures.insert(d.id.as_str(), why);
        }
    }

    failures
}

fn report(
    corpus: &Corpus,
    devices: &[&Device],
    failures: &BTreeMap<&str, Vec<String>>,
    ingest: &Value,
) -> String {
    let mut t = format!(
        "Zigbee2MQTT corpus ({}): {} devices played, {} pass, {} fail; ingest: accepted {}, rejected {} {}\n",
        corpus.source,
        devices.len(),
        devices.len() - failures.len(),
        failures.len(),
        ingest["accepted"],
        ingest["rejected_total"],
        ingest["rejected_by_reason"],
    );
    t.push_str("| device | vendor | model | kind | output | result |\n|---|---|---|---|---|---|\n");
    for d in devices {
        let result = failures
            .get(d.id.as_str())
            .map_or_else(|| "pass".to_owned(), |w| format!("FAIL: {}", w.join("; ")));
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {result} |\n",
            d.id, d.vendor, d.model, d.kind, d.output
        ));
    }
    t
}

/// Garbage on a charging plug's own topic — invalid JSON, wrong types, oversized, empty —
/// two hundred messages of it, then the plug's real over-current report (from the corpus):
/// the alert is raised red, the plug is switched off by linkage and its OFF report confirms
/// it. The rejections are counted, nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_a_plugs_topic_does_not_stop_its_over_current_cut_off() {
    let corpus = load_corpus();
    let plug = corpus
        .devices
        .iter()
        .find(|d| d.model == "TS011F_plug_1" && d.output == "json")
        .expect("TS011F_plug_1 in the corpus");
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n[[rules.linkage]]\non = \"smart_plug\"\nmin_level = \"red\"\naction = \"switch_off\"\nown_plug = true\n",
        config_for(&[plug])
    );
    let config = write_config(dir.path(), &body);
    let data = dir.path().join("data");
    let mut gateway = Gateway::start(&config, &data);
    let broker = gateway.wait_ready();

    let mut w = Mqtt::connect(broker, "plug-watch").await;
    w.subscribe("shouwang/test-site/alerts/#").await;
    let mut set = Mqtt::connect(broker, "plug-set-watch").await;
    set.subscribe(&format!("zigbee2mqtt/{}/set", plug.id)).await;
    let z2m = Mqtt::connect(broker, "zigbee2mqtt-bridge").await;
    let topic = format!("zigbee2mqtt/{}", plug.id);
    let step = |state: &str, n: usize| {
        wire(
            &plug
                .messages
                .iter()
                .filter(|m| m.state == state)
                .nth(n)
                .unwrap()
                .payload,
        )
    };
    z2m.publish(&topic, step("normal", 1)).await; // charging
    let garbage: [Vec<u8>; 5] = [
        b"{\"power\":".to_vec(),
        br#"{"power":"lots","current":12.6}"#.to_vec(),
        br#"{"current":[12.6]}"#.to_vec(),
        Vec::new(),
        format!(r#"{{"pad":"{}"}}"#, "x".repeat(20_000)).into_bytes(),
    ];
    for i in 0..200 {
        z2m.publish(&topic, garbage[i % garbage.len()].clone())
            .await;
    }
    z2m.publish(&topic, step("alarm", 0)).await; // over-current

    let red = w
        .collect(1, WAIT, |v| {
            v["kind"] == "smart_plug" && v["level"] == "red"
        })
        .await;
    assert_eq!(red.len(), 1, "a red plug alert despite the garbage");
    let off = set.collect(1, WAIT, |v| v["state"] == "OFF").await;
    assert_eq!(off.len(), 1, "the plug was switched off");
    // The plug reports itself off, as Zigbee2MQTT publishes it after the command.
    let mut report: Value = plug
        .messages
        .iter()
        .find(|m| m.state == "clear")
        .unwrap()
        .payload
        .clone();
    report["state"] = Value::from("OFF");
    z2m.publish(&topic, report.to_string()).await;
    let confirmed = w
        .collect(1, WAIT, |v| {
            v["actions"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x["action"] == "switch_off" && x["outcome"] == "confirmed")
            })
        })
        .await;
    assert_eq!(
        confirmed.len(),
        1,
        "the OFF report confirmed the cut-off on the alert"
    );
    // Every message is accounted for: the garbage rejected (what the plug's own broker log
    // could not hold is `broker_overrun`, the oldest first), the alarm and the OFF accepted.
    let ingest = ingest_counters(&data, 203);
    let accepted = ingest["accepted"].as_u64().unwrap_or(0);
    let rejected = ingest["rejected_total"].as_u64().unwrap_or(0);
    assert_eq!(accepted + rejected, 203, "{ingest}");
    assert!(accepted >= 2 && rejected >= 200, "{ingest}");
}
