//! Arbitrary bytes on any topic: ingest rejects or accepts, never panics.
//!
//! The 1 M-input runs are coverage-guided fuzzing (`fuzz/run`, see the README's "Fuzzing");
//! here, besides the property tests, every seed of the fuzz corpora and every input that once
//! crashed a fuzz target (fuzz/regressions/) goes through the same harnesses.

use std::path::Path;
use std::sync::Arc;

use edge_config::{DeviceKind, PayloadFormat};
use gateway::ingest::decode::{decode, Role};
use gateway::ingest::Ingest;
use gateway::rules::Engine;
use proptest::prelude::*;

#[path = "../../fuzz/src/ingest_rules.rs"]
#[allow(dead_code)]
mod ingest_rules;

#[path = "../../fuzz/src/config.rs"]
#[allow(dead_code)]
mod config_harness;

/// The files of `dirs` (relative to the repository root), recursively, sorted.
fn inputs(dirs: &[&str]) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        if dir.is_file() {
            out.push(dir.to_path_buf());
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    for d in dirs {
        walk(&root.join(d), &mut out);
    }
    out.sort();
    out
}

/// Runs `harness` on every file, naming the file that panics.
fn replay(files: &[std::path::PathBuf], harness: fn(&[u8])) {
    for f in files {
        let data = std::fs::read(f).unwrap();
        if std::panic::catch_unwind(|| harness(&data)).is_err() {
            panic!("fuzz input {} panics", f.display());
        }
    }
}

#[test]
fn every_ingest_seed_and_past_crash_replays_without_panic() {
    let files = inputs(&["fuzz/seeds/ingest_rules", "fuzz/regressions/ingest_rules"]);
    assert!(files.len() > 20, "the ingest seed corpus is missing");
    replay(&files, ingest_rules::run);
}

#[test]
fn every_config_seed_fixture_and_past_crash_replays_without_panic() {
    let files = inputs(&[
        "fuzz/seeds/config",
        "fuzz/regressions/config",
        "edge-config/examples/demo.toml",
        "edge-config/tests/fixtures",
    ]);
    assert!(files.len() > 20, "the config seed corpus is missing");
    replay(&files, config_harness::run);
}

const CONFIG: &str = r#"
[site]
id = "fuzz"
name = "Fuzz"
kind = "compound"
[[locations.buildings]]
id = "b1"
name = "1"
floors = 3
[[devices]]
id = "s"
kind = "smoke"
location = { building = "b1" }
[[devices]]
id = "g"
kind = "gas"
format = "zigbee2mqtt"
location = { building = "b1" }
[[devices]]
id = "e"
kind = "ebike_battery"
location = { building = "b1" }
[[devices]]
id = "h"
kind = "heat"
location = { building = "b1" }
"#;

fn json_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        "[{}\\[\\]\":,0-9a-z_.eE+-]{0,200}".prop_map(String::into_bytes),
        (
            prop::sample::select(vec![
                "smoke",
                "gas",
                "gas_lel_pct",
                "gas_density",
                "temperature_c",
                "battery_temp_c",
                "voltage_v",
                "charging",
                "present",
                "pressed",
                "ts",
                "state",
                "battery",
            ]),
            prop_oneof![
                any::<f64>().prop_map(|f| f.to_string()),
                any::<bool>().prop_map(|b| b.to_string()),
                "\"[a-z0-9:+.-]{0,30}\"".prop_map(|s| s),
                Just("null".to_string()),
                Just("1e999".to_string()),
            ],
        )
            .prop_map(|(k, v)| format!("{{\"{k}\":{v}}}").into_bytes()),
    ]
}

proptest! {
    // XorShift: in a debug build proptest's default ChaCha generator took most of the time
    // (the payloads are up to 2 KiB of random bytes).
    #![proptest_config(ProptestConfig {
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::with_cases(2000)
    })]

    #[test]
    fn decode_never_panics_on_arbitrary_payloads(payload in json_like(), z2m in any::<bool>(), role in 0u8..3) {
        let format = if z2m { PayloadFormat::Zigbee2mqtt } else { PayloadFormat::Native };
        let role = [Role::State, Role::Heartbeat, Role::Availability][role as usize];
        for kind in DeviceKind::ALL {
            let _ = decode(&payload, format, role, kind);
        }
    }

    #[test]
    fn ingest_and_rules_never_panic_on_arbitrary_topics_and_payloads(
        msgs in proptest::collection::vec(
            (prop::sample::select(vec![
                "sensors/s/state", "zigbee2mqtt/g", "zigbee2mqtt/g/availability",
                "sensors/e/state", "sensors/h/state", "sensors/h/heartbeat", "other/topic", "",
            ]), json_like()),
            1..40,
        )
    ) {
        static PARSED: std::sync::OnceLock<Arc<edge_config::Config>> = std::sync::OnceLock::new();
        let config = PARSED
            .get_or_init(|| Arc::new(edge_config::parse(CONFIG, "fuzz.toml", Path::new(".")).unwrap()))
            .clone();
        let mut ingest = Ingest::new(config.clone());
        let t0 = tokio::time::Instant::now();
        let mut engine = Engine::new(config, t0);
        for (i, (topic, payload)) in msgs.iter().enumerate() {
            let now = t0 + std::time::Duration::from_millis(i as u64 * 700);
            if let Ok(Some(reading)) = ingest.handle(topic, payload, now) {
                engine.on_reading(&reading);
            }
            engine.on_tick(now);
        }
        let s = ingest.stats.snapshot();
        prop_assert_eq!(s.accepted + s.rejected_total, msgs.len() as u64);
    }
}
