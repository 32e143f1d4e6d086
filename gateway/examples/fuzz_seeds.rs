//! Writes the seed corpora of the fuzz targets under a directory (fuzz/seeds/):
//!
//! - `ingest_rules/`: realistic traffic of every device of the fuzzed site, as the simulators
//!   send it, through each device's hazard and back (smoke, heat ramps, gas stages, leaks,
//!   e-bike thermal runaway, SOS, tamper, low battery, offline), plus malformed messages;
//! - `config/`: both starter configurations (`gateway config init`) and the fuzzed site's
//!   (fuzz/run adds every TOML file of edge-config/examples and edge-config/tests/fixtures).
//!
//! Run: `cargo run -p gateway --example fuzz_seeds -- fuzz/seeds` (the committed seeds were
//! written this way; rerun after the demo's devices change).

#[path = "../../fuzz/src/ingest_rules.rs"]
#[allow(dead_code)]
mod ingest_rules;

use std::path::PathBuf;
use std::process::ExitCode;

use edge_config::{DeviceKind, PayloadFormat, SiteKind};
use simulators::sensors::SimDevice;

/// `ADVANCE` bytes (see `ingest_rules::advance`).
const NOW: u8 = 0;
const S1: u8 = 10;
const S10: u8 = 100;
const MIN1: u8 = 105;
const MIN17: u8 = 200;
const H2: u8 = 207;

/// One message: clock step, topic, payload.
type Msg = (u8, String, Vec<u8>);

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz_seeds DIR (normally fuzz/seeds)");
        return ExitCode::FAILURE;
    };
    if let Err(e) = write_all(&dir) {
        eprintln!("fuzz_seeds: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn write_all(root: &std::path::Path) -> std::io::Result<()> {
    let config = root.join("config");
    std::fs::create_dir_all(&config)?;
    for (name, kind) in [
        ("starter-compound.toml", SiteKind::Compound),
        ("starter-street-station.toml", SiteKind::StreetStation),
    ] {
        std::fs::write(config.join(name), edge_config::starter("sw-fuzz-001", kind))?;
    }
    std::fs::write(config.join("fuzz-site.toml"), ingest_rules::config_text())?;
    let dir = &root.join("ingest_rules");
    std::fs::create_dir_all(dir)?;
    let site = ingest_rules::site();
    let mut everyone = Vec::new();
    for (i, device) in site.config.devices.iter().enumerate() {
        let mut sim = SimDevice::new(&site.config, device, 7);
        everyone.push((NOW, sim.state_topic.clone(), sim.payload()));
        let msgs = scenario(&mut sim);
        write(dir, &format!("{i:02}-{}", device.id), &msgs)?;
    }
    write(dir, "all-devices-normal", &everyone)?;
    write(dir, "malformed", &malformed())?;
    Ok(())
}

fn write(dir: &std::path::Path, name: &str, msgs: &[Msg]) -> std::io::Result<()> {
    let records: Vec<(u8, &str, &[u8])> = msgs
        .iter()
        .map(|(a, t, p)| (*a, t.as_str(), p.as_slice()))
        .collect();
    std::fs::write(dir.join(name), ingest_rules::encode(&records))
}

/// Normal traffic, the device's hazard and its end, then silence long enough to go offline.
fn scenario(sim: &mut SimDevice) -> Vec<Msg> {
    let mut out = vec![(NOW, sim.state_topic.clone(), sim.payload())];
    hazard(sim, &mut out);
    sim.tamper = true;
    sim.battery_pct = 8.0;
    send(sim, MIN1, &mut out);
    sim.tamper = false;
    send(sim, MIN17, &mut out);
    alive(sim, &mut out);
    out
}

/// The device's state payload now, after `advance`.
fn send(sim: &SimDevice, advance: u8, out: &mut Vec<Msg>) {
    out.push((advance, sim.state_topic.clone(), sim.payload()))
}

/// The device's own hazard, from its start to its end.
fn hazard(sim: &mut SimDevice, out: &mut Vec<Msg>) {
    match sim.kind {
        DeviceKind::Smoke => {
            sim.smoke = true;
            send(sim, S10, out);
            send(sim, S1, out);
            sim.smoke = false;
            send(sim, MIN1, out);
        }
        DeviceKind::Heat => {
            for t in [35.0, 48.0, 58.0, 66.0, 75.0, 40.0, 26.0] {
                sim.temperature_c = t;
                send(sim, S10, out);
            }
        }
        DeviceKind::Gas => {
            for lel in [4.0, 12.0, 18.0, 30.0, 55.0, 12.0, 3.0, 0.5] {
                sim.gas_lel_pct = lel;
                send(sim, S10, out);
            }
        }
        DeviceKind::CarbonMonoxide => {
            for ppm in [5.0, 35.0, 60.0, 120.0, 320.0, 90.0, 20.0, 1.0] {
                sim.co_ppm = ppm;
                send(sim, S10, out);
            }
        }
        DeviceKind::SmartPlug => {
            for (w, t) in [
                (180.0, 33.0),
                (185.0, 45.0),
                (190.0, 72.0),
                (2900.0, 60.0),
                (0.0, 30.0),
            ] {
                sim.power_w = w;
                sim.plug_temp_c = t;
                send(sim, S10, out);
            }
        }
        DeviceKind::WaterLeak => {
            sim.water_leak = true;
            send(sim, S10, out);
            sim.water_leak = false;
            send(sim, MIN17, out);
            sim.water_leak = true;
            send(sim, MIN1, out);
        }
        DeviceKind::EbikeBattery => {
            sim.start_charging();
            for (temp, advance) in [(32.0, S10), (45.0, MIN1), (58.0, MIN1), (75.0, S10)] {
                sim.battery_temp_c = temp;
                send(sim, advance, out);
            }
            sim.battery_temp_c = 120.0;
            sim.voltage_v = 30.0;
            send(sim, S1, out);
            sim.stop_charging();
            sim.battery_temp_c = 30.0;
            send(sim, MIN17, out);
            sim.present = false;
            send(sim, H2, out);
        }
        DeviceKind::Sos => {
            sim.pressed = true;
            send(sim, S10, out);
            sim.pressed = false;
            send(sim, S1, out);
        }
        DeviceKind::Valve | DeviceKind::Siren | DeviceKind::PaSpeaker => {
            sim.actuator = match sim.kind {
                DeviceKind::Valve => "closed",
                DeviceKind::Siren => "on",
                _ => "playing",
            }
            .to_owned();
            send(sim, S10, out);
        }
    }
}

/// Heartbeats or availability, then silence, then back.
fn alive(sim: &SimDevice, out: &mut Vec<Msg>) {
    match sim.format {
        PayloadFormat::Native => {
            let topic = sim.heartbeat_topic.clone().unwrap_or_default();
            out.push((MIN1, topic.clone(), b"{}".to_vec()));
            out.push((H2, topic, Vec::new()));
        }
        PayloadFormat::Zigbee2mqtt => {
            let topic = sim.availability_topic.clone().unwrap_or_default();
            out.push((MIN1, topic.clone(), b"offline".to_vec()));
            out.push((H2, topic.clone(), br#"{"state":"online"}"#.to_vec()));
            out.push((S1, topic, b"online".to_vec()));
        }
    }
}

/// Messages every rejection reason and skip path starts from.
fn malformed() -> Vec<Msg> {
    let m = |topic: &str, payload: &str| (S1, topic.to_owned(), payload.as_bytes().to_vec());
    vec![
        m("sensors/b1-u1-1201-smoke/state", "{not json"),
        m("sensors/b1-u1-1201-smoke/state", "[1,2]"),
        m("sensors/b1-u1-1201-smoke/state", r#"{"smoke":"yes"}"#),
        m("sensors/b1-u1-1201-smoke/state", r#"{"ts":"yesterday"}"#),
        m(
            "sensors/b1-u1-1201-smoke/state",
            r#"{"ts":"2026-11-23T03:12:45.120+08:00","smoke":true,"temperature_c":1e308}"#,
        ),
        m("sensors/b1-u1-1201-gas/state", r#"{"gas_lel_pct":-5}"#),
        m(
            "zigbee2mqtt/b1_u2_0803_smoke",
            r#"{"smoke":null,"battery":"x"}"#,
        ),
        m("zigbee2mqtt/b1-elevator-sos", r#"{"action":"emergency"}"#),
        m("zigbee2mqtt/b1-elevator-sos", r#"{"action":"release"}"#),
        m("zigbee2mqtt/b2-u1-0601-valve", r#"{"state":"CLOSE"}"#),
        m("zigbee2mqtt/b1_u2_0803_smoke/availability", "maybe"),
        m("zigbee2mqtt/bridge/state", r#"{"state":"online"}"#),
        m("zigbee2mqtt/b1_u2_0803_smoke/set", r#"{"state":"ON"}"#),
        m("sensors/nobody/state", r#"{"smoke":true}"#),
        m("legacy/kitchen/gas", r#"{"gas_lel_pct":40}"#),
        m("home/plug/power", "12.5"),
    ]
}
