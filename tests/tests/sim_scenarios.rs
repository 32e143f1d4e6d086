//! Every `sim sensors` scenario against the real gateway: the alerts each one must cause —
//! kind, level, count — seen on the local alert topics `shouwang/test-site/alerts/#`.
//!
//! The test configuration (`e2e::sim::SITE`) shortens the rule windows and the simulators
//! run hazards 15–30 times faster than life, so each scenario takes seconds.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::mqtt::Mqtt;
use e2e::sim::{drain, record, record_until, Bench, Events};
use simulators::sensors::{self, Scenario};
use tokio_util::sync::CancellationToken;

const SETTLE: Duration = Duration::from_millis(1500);

fn pairs(history: &[(String, String)]) -> Vec<(&str, &str)> {
    history
        .iter()
        .map(|(e, l)| (e.as_str(), l.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kitchen_fire_raises_one_red_heat_alert_and_one_red_smoke_alert() {
    let bench = Bench::start(
        r#"
[[devices]]
id = "k-heat"
kind = "heat"
location = { building = "b1", unit = "u1", floor = 12, room = "1201" }
[[devices]]
id = "k-smoke"
kind = "smoke"
format = "zigbee2mqtt"
friendly_name = "kitchen_1201_smoke"
location = { building = "b1", unit = "u1", floor = 12, room = "1201" }
"#,
    );
    let (report, events) = bench
        .play(bench.options(Scenario::KitchenFire, 15.0), SETTLE)
        .await;
    assert_eq!(report.targets, ["k-heat", "k-smoke"]);
    let heat = events.of("heat", "raised");
    let smoke = events.of("smoke", "raised");
    assert_eq!(
        (heat.len(), smoke.len()),
        (1, 1),
        "events:\n{}",
        events.dump()
    );
    assert_eq!(heat[0]["level"], "red");
    assert_eq!(heat[0]["source"]["id"], "k-heat");
    let causes = heat[0]["readings"]["causes"].to_string();
    assert!(
        causes.contains("rate_of_rise"),
        "raised by the rate of rise first: {causes}"
    );
    assert_eq!(smoke[0]["level"], "red");
    assert_eq!(smoke[0]["source"]["id"], "k-smoke");
    assert_eq!(
        events.raised_kinds(),
        ["heat", "smoke"],
        "nothing else:\n{}",
        events.dump()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gas_leak_goes_orange_then_red_and_resolves_once_the_valve_closes_on_command() {
    let bench = Bench::start(
        r#"
[[devices]]
id = "k-gas"
kind = "gas"
location = { building = "b1", unit = "u1", floor = 6, room = "0601" }
[[devices]]
id = "k-valve"
kind = "valve"
location = { building = "b1", unit = "u1", floor = 6, room = "0601" }
[[rules.linkage]]
on = "gas"
min_level = "red"
action = "close_valve"
targets = ["k-valve"]
"#,
    );
    let mut watcher = bench.watch().await;
    let mut valve_state = Mqtt::connect(bench.broker, "valve-watcher").await;
    valve_state.subscribe("sensors/k-valve/state").await;
    let config = bench.config.clone();
    let options = bench.options(Scenario::GasLeak, 20.0);
    let run =
        tokio::spawn(
            async move { sensors::run(&config, &options, CancellationToken::new()).await },
        );

    // The gateway's linkage closes the valve once the alert is red (only the gateway may
    // publish on an actuator's command topic).
    let (red, mut events) = record_until(&mut watcher, Duration::from_secs(30), |v| {
        v["kind"] == "gas" && v["level"] == "red"
    })
    .await;
    assert!(
        red,
        "no red gas alert; events:\n{}",
        Events(events.clone()).dump()
    );
    let closed = valve_state
        .collect(1, Duration::from_secs(5), |v| v["state"] == "closed")
        .await;
    assert_eq!(
        closed.len(),
        1,
        "the valve reports closed after the command"
    );

    let (report, more) = record(&mut watcher, run).await;
    let report = report.unwrap().unwrap();
    events.extend(more);
    events.extend(drain(&mut watcher, SETTLE).await);
    let events = Events(events);
    assert!(
        report.notes.iter().any(|n| n.contains("k-valve: closed")),
        "{:?}",
        report.notes
    );
    let raised = events.of("gas", "raised");
    assert_eq!(raised.len(), 1, "one gas alert:\n{}", events.dump());
    let history = events.history(&raised[0]["id"]);
    // The valve's confirmation is an update of its own (same level): counted once here.
    let mut levels = pairs(&history);
    levels.dedup();
    assert_eq!(
        levels,
        [
            ("raised", "orange"),
            ("updated", "red"),
            ("updated", "orange"),
            ("resolved", "orange")
        ],
        "events:\n{}",
        events.dump()
    );
    assert!(
        events
            .0
            .iter()
            .filter(|v| v["id"] == raised[0]["id"])
            .any(|v| v["actions"].as_array().is_some_and(|a| a
                .iter()
                .any(|x| x["target"] == "k-valve" && x["outcome"] == "confirmed"))),
        "the gateway's valve command was confirmed:\n{}",
        events.dump()
    );
    assert_eq!(events.raised_kinds(), ["gas"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn water_leak_is_orange_and_a_repeat_soon_after_drying_is_red() {
    let bench = Bench::start(
        r#"
[[devices]]
id = "pump-leak"
kind = "water_leak"
format = "zigbee2mqtt"
friendly_name = "pump_room_leak"
location = { building = "b1", unit = "u1", floor = 1, room = "pump room" }
"#,
    );
    let (_, events) = bench
        .play(bench.options(Scenario::WaterLeak, 20.0), SETTLE)
        .await;
    let raised = events.of("water_leak", "raised");
    assert_eq!(raised.len(), 2, "events:\n{}", events.dump());
    assert_eq!(
        pairs(&events.history(&raised[0]["id"])),
        [("raised", "orange"), ("resolved", "orange")]
    );
    assert_eq!(
        pairs(&events.history(&raised[1]["id"])),
        [("raised", "red"), ("resolved", "red")]
    );
    assert_eq!(events.raised_kinds(), ["water_leak", "water_leak"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ebike_thermal_runaway_warns_orange_then_goes_red_and_the_shed_smoke_detector_alarms() {
    let bench = Bench::start(
        r#"
[[devices]]
id = "bay-01"
kind = "ebike_battery"
location = { area = "shed", room = "bay 01" }
[[devices]]
id = "shed-smoke"
kind = "smoke"
location = { area = "shed" }
"#,
    );
    let (report, events) = bench
        .play(bench.options(Scenario::EbikeThermalRunaway, 30.0), SETTLE)
        .await;
    assert_eq!(report.targets, ["bay-01", "shed-smoke"]);
    let bike = events.of("ebike_battery", "raised");
    assert_eq!(bike.len(), 1, "events:\n{}", events.dump());
    let history = events.history(&bike[0]["id"]);
    assert_eq!(
        pairs(&history[..2]),
        [("raised", "orange"), ("updated", "red")],
        "events:\n{}",
        events.dump()
    );
    assert!(bike[0]["readings"]["causes"]
        .to_string()
        .contains("battery_temp_rising"));
    let red = events
        .0
        .iter()
        .find(|v| v["kind"] == "ebike_battery" && v["level"] == "red")
        .unwrap();
    assert!(
        red["readings"]["causes"]
            .to_string()
            .contains("thermal_runaway"),
        "{red}"
    );
    let smoke = events.of("smoke", "raised");
    assert_eq!(smoke.len(), 1);
    assert_eq!(smoke[0]["level"], "red");
    assert_eq!(events.raised_kinds(), ["ebike_battery", "smoke"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_battery_taken_from_the_shed_inside_the_theft_window_raises_one_yellow_alert() {
    // The theft window covers the whole day so that the test does not depend on the clock.
    let bench = Bench::start(
        r#"
[[devices]]
id = "bay-02"
kind = "ebike_battery"
location = { area = "shed", room = "bay 02" }
thresholds = { theft_window = { from = "00:00", to = "00:00" } }
"#,
    );
    let (_, events) = bench
        .play(bench.options(Scenario::BatteryTheft, 20.0), SETTLE)
        .await;
    let removed = events.of("battery_removed", "raised");
    assert_eq!(removed.len(), 1, "events:\n{}", events.dump());
    assert_eq!(removed[0]["level"], "yellow");
    assert_eq!(removed[0]["source"]["id"], "bay-02");
    assert_eq!(events.raised_kinds(), ["battery_removed"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sos_press_raises_exactly_one_red_alert() {
    let bench = Bench::start(
        r#"
[[devices]]
id = "lobby-sos"
kind = "sos"
location = { building = "b1", floor = 1 }
"#,
    );
    let (_, events) = bench.play(bench.options(Scenario::Sos, 20.0), SETTLE).await;
    let sos = events.of("sos", "raised");
    assert_eq!(sos.len(), 1, "events:\n{}", events.dump());
    assert_eq!(sos[0]["level"], "red");
    assert_eq!(events.0.len(), 1, "no other event:\n{}", events.dump());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_that_goes_silent_is_offline_yellow_and_resolved_when_it_is_back() {
    let bench = Bench::start(
        r#"
[rules.device]
offline_after_heartbeats = 1

[[devices]]
id = "hall-heat"
kind = "heat"
heartbeat_s = 10
location = { building = "b1", floor = 2 }
[[devices]]
id = "hall-smoke"
kind = "smoke"
heartbeat_s = 10
location = { building = "b1", floor = 2 }
"#,
    );
    let (report, events) = bench
        .play(bench.options(Scenario::DeviceOffline, 20.0), SETTLE)
        .await;
    assert_eq!(report.targets, ["hall-heat"]);
    let offline = events.of("device_offline", "raised");
    assert_eq!(
        offline.len(),
        1,
        "only the silent device, and once:\n{}",
        events.dump()
    );
    assert_eq!(offline[0]["source"]["id"], "hall-heat");
    assert_eq!(
        pairs(&events.history(&offline[0]["id"])),
        [("raised", "yellow"), ("resolved", "yellow")],
        "events:\n{}",
        events.dump()
    );
    assert_eq!(events.raised_kinds(), ["device_offline"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_cause_only_counted_rejections() {
    let mut bench = Bench::start(
        r#"
[[devices]]
id = "m-smoke"
kind = "smoke"
location = { building = "b1", floor = 3 }
[[devices]]
id = "m-leak"
kind = "water_leak"
format = "zigbee2mqtt"
location = { building = "b1", floor = 3 }
"#,
    );
    let (report, events) = bench
        .play(bench.options(Scenario::Malformed, 20.0), SETTLE)
        .await;
    assert!(events.0.is_empty(), "no alert at all:\n{}", events.dump());
    let sent: BTreeSet<(String, String)> = report
        .malformed
        .keys()
        .filter(|(d, _)| d != "-")
        .cloned()
        .collect();
    assert_eq!(sent.len(), 8, "{sent:?}");
    let rejections = bench.rejections();
    let logged: BTreeSet<(String, String)> = rejections
        .iter()
        .map(|(d, r, _)| (d.clone(), r.clone()))
        .collect();
    // Foreign topics under the sensor families are seen and counted as `unknown_device`
    // (the zigbee2mqtt bridge's own topics are skipped, uncounted).
    assert!(report
        .malformed
        .contains_key(&("-".to_owned(), "foreign_topic".to_owned())));
    let mut expected = sent.clone();
    expected.insert(("-".to_owned(), "unknown_device".to_owned()));
    assert_eq!(
        logged, expected,
        "every bad message counted under its reason, nothing else"
    );
    assert!(rejections.iter().all(|(_, _, n)| *n >= 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_device_is_throttled_while_a_smoke_alarm_elsewhere_still_raises_red() {
    let mut bench = Bench::start(
        r#"
[[devices]]
id = "chatty-heat"
kind = "heat"
location = { building = "b1", floor = 4 }
[[devices]]
id = "b1-smoke"
kind = "smoke"
location = { building = "b1", floor = 9 }
"#,
    );
    let mut options = bench.options(Scenario::Flood, 1.0);
    options.duration = Some(Duration::from_secs(4));
    let (report, events) = bench.play(options, SETTLE).await;
    let flooded = report.by_device["chatty-heat"];
    assert!(
        flooded >= 20_000,
        "flood of ~40,000 messages, sent {flooded}"
    );
    let smoke = events.of("smoke", "raised");
    assert_eq!(smoke.len(), 1, "events:\n{}", events.dump());
    assert_eq!(smoke[0]["level"], "red");
    assert_eq!(
        events.raised_kinds(),
        ["smoke"],
        "no alert from the flooder"
    );
    let rejections = bench.rejections();
    assert!(
        rejections
            .iter()
            .any(|(d, r, _)| d == "chatty-heat" && r == "throttled"),
        "{rejections:?}"
    );
    assert!(
        !rejections.iter().any(|(d, _, _)| d == "b1-smoke"),
        "{rejections:?}"
    );
}

const EVERY_KIND: &str = r#"
[[devices]]
id = "n-smoke"
kind = "smoke"
location = { building = "b1", floor = 1 }
[[devices]]
id = "n-smoke-z"
kind = "smoke"
format = "zigbee2mqtt"
location = { building = "b1", floor = 1 }
[[devices]]
id = "n-heat"
kind = "heat"
location = { building = "b1", floor = 1 }
[[devices]]
id = "n-heat-z"
kind = "heat"
format = "zigbee2mqtt"
location = { building = "b1", floor = 1 }
[[devices]]
id = "n-gas"
kind = "gas"
location = { building = "b1", floor = 1 }
[[devices]]
id = "n-gas-z"
kind = "gas"
format = "zigbee2mqtt"
location = { building = "b1", floor = 1 }
[[devices]]
id = "n-leak-z"
kind = "water_leak"
format = "zigbee2mqtt"
location = { building = "b1", floor = 1 }
[[devices]]
id = "n-bay"
kind = "ebike_battery"
location = { area = "shed" }
# Sensors report 0.1 °C steps: a 10 s window would turn one step into a "rise".
thresholds = { rise_window_s = 300 }
[[devices]]
id = "n-sos"
kind = "sos"
location = { building = "b1", floor = 1 }
[[devices]]
id = "n-valve"
kind = "valve"
location = { building = "b1", floor = 1 }
[[devices]]
id = "n-siren-z"
kind = "siren"
format = "zigbee2mqtt"
location = { building = "b1", floor = 1 }
[[devices]]
id = "n-pa"
kind = "pa_speaker"
location = { area = "shed" }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_short_soak_of_every_device_kind_raises_nothing_and_rejects_nothing() {
    let mut bench = Bench::start(EVERY_KIND);
    let mut options = bench.options(Scenario::Soak, 1.0);
    options.rate = Some(5.0);
    options.duration = Some(Duration::from_secs(5));
    let (report, events) = bench.play(options, SETTLE).await;
    assert!(events.0.is_empty(), "no alert:\n{}", events.dump());
    assert_eq!(report.by_device.len(), 12);
    assert!(
        report.by_device.values().all(|n| *n >= 15),
        "{:?}",
        report.by_device
    );
    assert_eq!(bench.rejections(), []);
}

#[tokio::test(flavor = "multi_thread")]
async fn normal_behaviour_raises_nothing() {
    let mut bench = Bench::start(EVERY_KIND);
    let mut options = bench.options(Scenario::Normal, 1.0);
    options.duration = Some(Duration::from_secs(3));
    let (report, events) = bench.play(options, SETTLE).await;
    assert!(events.0.is_empty(), "no alert:\n{}", events.dump());
    assert!(
        report.published >= 12,
        "every device announced itself: {}",
        report.published
    );
    assert_eq!(bench.rejections(), []);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_scenario_raises_its_hazards_round_after_round_and_lets_the_devices_recover() {
    // Only a kitchen: every other hazard of the cycle is skipped, so the fire comes back.
    let bench = Bench::start(
        r#"
[[devices]]
id = "k-heat"
kind = "heat"
location = { building = "b1", unit = "u1", floor = 12, room = "1201" }
[[devices]]
id = "k-smoke"
kind = "smoke"
location = { building = "b1", unit = "u1", floor = 12, room = "1201" }
"#,
    );
    let mut options = bench.options(Scenario::Demo, 30.0);
    options.every = Duration::from_secs(1);
    options.duration = Some(Duration::from_secs(26));
    let (report, events) = bench.play(options, SETTLE).await;
    let rounds = report
        .notes
        .iter()
        .filter(|n| n.starts_with("demo: kitchen_fire"))
        .count();
    assert!(rounds >= 2, "{:?}", report.notes);
    let smoke = events.of("smoke", "raised");
    assert!(
        smoke.len() >= 2,
        "a smoke alert in each round:\n{}",
        events.dump()
    );
    assert!(
        !events.of("smoke", "resolved").is_empty(),
        "the smoke detector recovered between rounds:\n{}",
        events.dump()
    );
    assert!(
        events
            .raised_kinds()
            .iter()
            .all(|k| k == "smoke" || k == "heat"),
        "{}",
        events.dump()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn co_leak_warns_yellow_goes_red_past_three_hundred_ppm_and_resolves_once_aired() {
    let bench = Bench::start(
        r#"
[[devices]]
id = "bath-co"
kind = "carbon_monoxide"
format = "zigbee2mqtt"
friendly_name = "bath_0802_co"
model = "ZC-HM"
location = { building = "b1", unit = "u1", floor = 8, room = "0802" }
"#,
    );
    let (report, events) = bench
        .play(bench.options(Scenario::CoLeak, 20.0), SETTLE)
        .await;
    assert_eq!(report.targets, ["bath-co"]);
    let raised = events.of("carbon_monoxide", "raised");
    assert_eq!(raised.len(), 1, "one CO alert:\n{}", events.dump());
    // CO climbs ~25 ppm/s here: past the warning (30 ppm) within the 1 s debounce, so the
    // alert is raised as a warning (yellow) or at the alarm point (orange), never red.
    let history = events.history(&raised[0]["id"]);
    assert!(
        ["yellow", "orange"].contains(&raised[0]["level"].as_str().unwrap_or("")),
        "CO present is a warning first: {history:?}"
    );
    let levels: Vec<&str> = history.iter().map(|(_, l)| l.as_str()).collect();
    let first = |l: &str| levels.iter().position(|x| *x == l);
    let (orange, red) = (first("orange"), first("red"));
    assert!(
        orange.is_some() && red.is_some() && orange < red,
        "orange at the alarm point, then red at 300 ppm: {history:?}"
    );
    assert_eq!(
        history.last().map(|(e, _)| e.as_str()),
        Some("resolved"),
        "resolved once aired:\n{}",
        events.dump()
    );
    let red_event = events
        .0
        .iter()
        .find(|v| v["id"] == raised[0]["id"] && v["level"] == "red")
        .expect("the red event");
    let causes = red_event["readings"]["causes"].to_string();
    assert!(
        causes.contains("co_alarm"),
        "red on the alarm point or the detector's own flag: {causes}"
    );
    assert_eq!(events.raised_kinds(), ["carbon_monoxide"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overheating_charger_plug_is_switched_off_by_linkage_and_the_confirmation_is_on_its_alert(
) {
    let bench = Bench::start(
        r#"
[[devices]]
id = "shed-plug-07"
kind = "smart_plug"
format = "zigbee2mqtt"
friendly_name = "shed_plug_07"
model = "TS011F_plug_1"
location = { area = "shed" }
[rules.smart_plug]
rise_window_s = 10
[[rules.linkage]]
on = "smart_plug"
min_level = "red"
action = "switch_off"
own_plug = true
"#,
    );
    let mut watcher = bench.watch().await;
    let mut commands = Mqtt::connect(bench.broker, "plug-command-watcher").await;
    commands.subscribe("zigbee2mqtt/shed_plug_07/set").await;
    let config = bench.config.clone();
    let options = bench.options(Scenario::ChargerOverheat, 20.0);
    let run =
        tokio::spawn(
            async move { sensors::run(&config, &options, CancellationToken::new()).await },
        );
    let off = commands
        .collect(1, Duration::from_secs(30), |v| v["state"] == "OFF")
        .await;
    assert_eq!(off.len(), 1, "the gateway switched the plug off");

    let (report, mut events) = record(&mut watcher, run).await;
    let report = report.unwrap().unwrap();
    events.extend(drain(&mut watcher, SETTLE).await);
    let events = Events(events);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("shed-plug-07: switched off on command")),
        "{:?}",
        report.notes
    );
    let raised = events.of("smart_plug", "raised");
    assert_eq!(raised.len(), 1, "one plug alert:\n{}", events.dump());
    let history = events.history(&raised[0]["id"]);
    assert!(
        history.iter().any(|(_, l)| l == "red"),
        "red when the plug overheats: {history:?}"
    );
    let ours = || events.0.iter().filter(|v| v["id"] == raised[0]["id"]);
    let causes: String = ours()
        .map(|v| v["readings"]["causes"].to_string())
        .collect();
    assert!(causes.contains("plug_over_temp"), "{causes}");
    assert!(
        ours().any(
            |v| v["actions"].as_array().is_some_and(|a| a.iter().any(|x| {
                x["action"] == "switch_off"
                    && x["target"] == "shed-plug-07"
                    && x["outcome"] == "confirmed"
            }))
        ),
        "the switch-off was confirmed by the plug's OFF state:\n{}",
        events.dump()
    );
    assert_eq!(
        history.last().map(|(e, _)| e.as_str()),
        Some("resolved"),
        "resolved once the plug cooled:\n{}",
        events.dump()
    );
}
