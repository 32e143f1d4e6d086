//! A device flooding the embedded broker cannot make it drop another device's alarm.
//!
//! rumqttd keeps a bounded commit log per subscription filter and a reader that falls behind
//! it silently skips messages. These scenarios make the broker's logs tiny and stall the
//! gateway's ingest while a device floods, so the logs really overrun; then they check that
//! the alarm still reaches the rules, because every device topic has a log of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edge_config::Config;
use gateway::broker::{BrokerSettings, EmbeddedBroker, LocalLink, LocalSubscriber};
use gateway::ingest::{self, Ingest, Ingested};
use gateway::rules::Reading;
use rumqttc::{Event, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod support;

/// Largest payload the broker takes; with it each filter log is 2 segments of ~17 KiB.
const MAX_PAYLOAD: usize = 16 * 1024;
/// Flood messages published after the alarm: ~400 KB, a dozen times a filter log.
const FLOOD_AFTER: usize = 2_000;
/// Flood messages published before the alarm: ten times a link's in-memory buffer (200), so
/// the router has long stopped forwarding to the idle control link when the alarm comes and
/// the alarm is not already sitting in its buffer when the log overruns. (With 500 the
/// router's batches sometimes still had room for it: the control failed 2 runs in 7.)
const FLOOD_BEFORE: usize = 2_000;

fn config() -> Arc<Config> {
    let text = r#"
[site]
id = "flood"
name = "Flood"
kind = "compound"
[broker]
bind = "127.0.0.1:0"
[[locations.buildings]]
id = "b1"
name = "1"
floors = 6
[[devices]]
id = "smoke-1"
kind = "smoke"
location = { building = "b1", floor = 3 }
[[devices]]
id = "heat-0"
kind = "heat"
location = { building = "b1", floor = 1 }
"#;
    Arc::new(edge_config::parse(text, "flood.toml", std::path::Path::new(".")).unwrap())
}

/// A broker with tiny filter logs, the ingest's two links, and a third in-process link
/// subscribed the way ingest used to be (one wildcard for every device), as a control.
fn broker(ingest: &Ingest) -> (EmbeddedBroker, LocalLink, LocalLink, LocalLink) {
    let (devices, watch) = (ingest::DEVICES_LINK, ingest::WATCH_LINK);
    let mut s = BrokerSettings::new("127.0.0.1:0".parse().unwrap());
    s.max_payload_bytes = MAX_PAYLOAD;
    s.log_segment_bytes = 1024;
    s.log_segment_count = 2;
    s.local_subscribers = ingest.local_subscribers();
    s.local_subscribers.push(LocalSubscriber {
        role: "control-shared-wildcard".into(),
        client_id: "control-shared-wildcard".into(),
        filters: vec!["sensors/+/state".into()],
        per_device: false,
    });
    let mut b = EmbeddedBroker::start(s).expect("broker starts");
    let d = b.take_local_link(devices).unwrap();
    let w = b.take_local_link(watch).unwrap();
    let c = b.take_local_link("control-shared-wildcard").unwrap();
    (b, d, w, c)
}

/// Publishes everything at QoS 1 and returns once the broker acknowledged each message
/// (rumqttd acknowledges after appending to the logs), so the logs hold their final state.
async fn publish_all(broker: &EmbeddedBroker, messages: &[(String, String)]) {
    let messages = messages.to_vec();
    support::publish_acked(broker, "flooder", messages, Duration::from_secs(60)).await;
}

fn heat(i: usize) -> (String, String) {
    let padding = "x".repeat(150);
    (
        "sensors/heat-0/state".into(),
        format!(r#"{{"temperature_c":{}.5,"note":"{padding}"}}"#, 20 + i % 5),
    )
}

fn ghost(i: usize) -> (String, String) {
    (
        "sensors/ghost/state".into(),
        format!(r#"{{"n":{i},"pad":"{}"}}"#, "y".repeat(150)),
    )
}

/// Drains a link until it has been quiet for 500 ms; returns topic → messages seen.
async fn drain(mut link: LocalLink) -> HashMap<String, Vec<String>> {
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    while let Ok(Ok(p)) = tokio::time::timeout(Duration::from_millis(500), link.next()).await {
        seen.entry(String::from_utf8_lossy(&p.topic).into_owned())
            .or_default()
            .push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smoke_alarm_survives_a_flood_that_overruns_the_broker_logs_while_ingest_is_stalled() {
    let config = config();
    let ingest = Ingest::new(config.clone());
    let stats = ingest.stats.clone();
    let (broker, devices, watch, control) = broker(&ingest);

    // Ingest is stalled (nobody reads the links) while the flood, the alarm and a flood of
    // an unknown device's topic go through the broker.
    let mut messages: Vec<(String, String)> = (0..FLOOD_BEFORE).map(heat).collect();
    messages.extend((0..FLOOD_BEFORE).map(ghost));
    messages.push(("sensors/smoke-1/state".into(), r#"{"smoke":true}"#.into()));
    messages.extend((0..FLOOD_AFTER).map(heat));
    messages.extend((0..FLOOD_AFTER).map(ghost));
    publish_all(&broker, &messages).await;

    // Control: a reader sharing one wildcard log with the flood lost the alarm — the hazard.
    let shared = drain(control).await;
    let shared_heat = shared.get("sensors/heat-0/state").map_or(0, Vec::len);
    assert!(
        shared_heat < FLOOD_BEFORE + FLOOD_AFTER,
        "the shared log overran (the scenario is real): {shared_heat} flood messages read"
    );
    assert!(
        !shared.contains_key("sensors/smoke-1/state"),
        "a reader of one shared wildcard log loses the alarm in this flood"
    );

    // The gateway's ingest, started only now, still gets the alarm from its own log.
    let (tx, mut rx) = mpsc::channel::<Ingested>(10_000);
    let token = CancellationToken::new();
    let task = tokio::spawn(run_local(
        ingest,
        (devices, watch, broker.link_factory()),
        tx,
        token.clone(),
    ));
    let mut readings = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(800), rx.recv()).await {
        if let Ingested::Reading(r) = r {
            readings.push(r);
        }
    }
    token.cancel();
    task.await.unwrap();

    let smoke: Vec<&Reading> = readings
        .iter()
        .filter(|r| config.devices[r.device].id == "smoke-1")
        .collect();
    assert_eq!(smoke.len(), 1, "exactly the one alarm reading from smoke-1");
    assert_eq!(smoke[0].decoded.values.smoke, Some(true));

    let s = stats.snapshot();
    let reason = |r: &str| s.rejected_by_reason.get(r).copied().unwrap_or(0);
    let heat_read = s.accepted - 1 + reason("throttled");
    assert!(
        heat_read < (FLOOD_BEFORE + FLOOD_AFTER) as u64,
        "the flooder's own log overran: ingest read {heat_read} of its messages"
    );
    assert_eq!(
        heat_read + reason("broker_overrun"),
        (FLOOD_BEFORE + FLOOD_AFTER) as u64,
        "every flood message is accounted for: read, or counted as dropped by the broker"
    );
    assert_eq!(
        s.rejected_by_device.get("heat-0").copied().unwrap_or(0),
        reason("throttled") + reason("broker_overrun"),
        "the drops are counted against the flooder"
    );
    assert!(
        s.rejected_by_reason.get("throttled").copied().unwrap_or(0) > 0,
        "the flooder is throttled"
    );
    assert!(
        s.rejected_by_reason
            .get("unknown_device")
            .copied()
            .unwrap_or(0)
            > 0,
        "the unknown device's topic is seen and counted through the watch link"
    );
}

/// Devices that only make up the numbers in the live flood scenarios.
const BYSTANDERS: usize = 2_000;

fn config_with_smokes(n: usize) -> Arc<Config> {
    use std::fmt::Write as _;
    let mut text = String::from(
        "[site]\nid = \"flood\"\nname = \"Flood\"\nkind = \"compound\"\n[broker]\nbind = \"127.0.0.1:0\"\n\
         [[locations.buildings]]\nid = \"b1\"\nname = \"1\"\nfloors = 6\n\
         [[devices]]\nid = \"heat-0\"\nkind = \"heat\"\nlocation = { building = \"b1\" }\n",
    );
    // A compound's worth of other devices: rumqttd's costs grow with the number of filters.
    for i in 0..BYSTANDERS {
        let _ = write!(text, "[[devices]]\nid = \"heat-b{i}\"\nkind = \"heat\"\nlocation = {{ building = \"b1\" }}\n");
    }
    for i in 0..n {
        let _ = write!(text, "[[devices]]\nid = \"smoke-{i}\"\nkind = \"smoke\"\nlocation = {{ building = \"b1\" }}\n");
    }
    Arc::new(edge_config::parse(&text, "flood.toml", std::path::Path::new(".")).unwrap())
}

/// Runs the ingest on its links as the gateway's supervisor would, until `token` is cancelled.
async fn run_local(
    mut ingest: Ingest,
    (devices, watch, factory): (LocalLink, LocalLink, gateway::broker::LinkFactory),
    out: mpsc::Sender<Ingested>,
    token: CancellationToken,
) {
    let mut links = ingest::Links {
        devices,
        watch,
        extra: Vec::new(),
    };
    // Nobody reloads here: the sender is kept so the receiver stays quiet.
    let (_reload, mut reloads) = tokio::sync::watch::channel(ingest.config().clone());
    ingest::run_local(&mut ingest, &mut links, &factory, &mut reloads, &out, token)
        .await
        .expect("links stay up");
}

/// Publishes 30 smoke alarms, one at a time, while `flood_topic` is flooded at full speed
/// (QoS 0); every alarm must reach the rules within 5 s. Returns the ingest counters.
async fn alarms_during_a_flood_on(flood_topic: &'static str) -> gateway::ingest::StatsSnapshot {
    const ALARMS: usize = 30;
    let config = config_with_smokes(ALARMS);
    let ingest = Ingest::new(config.clone());
    let stats = ingest.stats.clone();
    let (devices, watch) = (ingest::DEVICES_LINK, ingest::WATCH_LINK);
    let mut s = BrokerSettings::new("127.0.0.1:0".parse().unwrap());
    s.local_subscribers = ingest.local_subscribers();
    let mut broker = EmbeddedBroker::start(s).expect("broker starts");
    let d = broker.take_local_link(devices).unwrap();
    let w = broker.take_local_link(watch).unwrap();
    let (tx, mut rx) = mpsc::channel::<Ingested>(1_000);
    let token = CancellationToken::new();
    let links = (d, w, broker.link_factory());
    let task = tokio::spawn(run_local(ingest, links, tx, token.clone()));

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (flooder, mut flood_events) = broker.async_client("flooder", 10_000);
    // Flood messages written to the broker so far.
    let on_the_wire = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let on_the_wire = on_the_wire.clone();
        tokio::spawn(async move {
            while let Ok(event) = flood_events.poll().await {
                if matches!(event, Event::Outgoing(Outgoing::Publish(_))) {
                    on_the_wire.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    let flooding = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (_, payload) = heat(n as usize);
                let _ = flooder
                    .publish(flood_topic, QoS::AtMostOnce, false, payload)
                    .await;
                n += 1;
                // (A send error is ignored: while connecting, the flooder has no link yet.)
                // A send into a channel with room completes without yielding: yield now and
                // then, or this task holds its worker for good (and a failing test hangs in
                // the runtime's shutdown instead of failing).
                if n.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            n
        })
    };
    let (sensor, mut sensor_events) = broker.async_client("smokes", 100);
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        while let Ok(event) = sensor_events.poll().await {
            if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                if let Some(tx) = connected_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    // The alarms go out during the flood: once their client is connected and the flood has
    // written a dozen filter logs' worth to the broker.
    tokio::time::timeout(Duration::from_secs(10), connected)
        .await
        .expect("the sensors' client connects within 10 s")
        .expect("the sensors' event loop runs");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while on_the_wire.load(std::sync::atomic::Ordering::Relaxed) < FLOOD_AFTER {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood did not get going within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut missing: Vec<usize> = Vec::new();
    for i in 0..ALARMS {
        sensor
            .publish(
                format!("sensors/smoke-{i}/state"),
                QoS::AtLeastOnce,
                false,
                r#"{"smoke":true}"#,
            )
            .await
            .unwrap();
        let want = config
            .devices
            .iter()
            .position(|d| d.id == format!("smoke-{i}"))
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(r) = rx.recv().await {
                if matches!(r, Ingested::Reading(r) if r.device == want) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !got {
            missing.push(i);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flooded = flooding.await.unwrap();
    token.cancel();
    task.await.unwrap();
    let s = stats.snapshot();
    eprintln!("flood on {flood_topic}: {flooded} messages sent; ingest: {s:?}");
    assert!(
        missing.is_empty(),
        "alarms that never reached the rules during a flood on {flood_topic}: {missing:?}"
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alarm_published_during_a_full_speed_flood_reaches_the_rules() {
    let s = alarms_during_a_flood_on("sensors/heat-0/state").await;
    assert!(s.rejected_by_reason.get("throttled").copied().unwrap_or(0) > 0);
}

/// A chatty device that is not a sensor (say a smart plug's telemetry) on the same broker:
/// rumqttd matches a topic nobody subscribed to against every filter on every publish
/// unless some filter matches it, which would make it slow the broker for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_speed_flood_on_a_foreign_topic_does_not_hold_up_alarms() {
    alarms_during_a_flood_on("tele/plug-7/SENSOR").await;
}
