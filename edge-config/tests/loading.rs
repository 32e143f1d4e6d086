//! Loading valid configurations: the demo, the starters, defaults and the
//! helpers the gateway relies on.

use edge_config::*;
use std::path::{Path, PathBuf};

fn demo_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.toml")
}

fn parse_ok(source: &str) -> Config {
    match parse(source, "test.toml", Path::new("/etc/shouwang")) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

const MINIMAL: &str = "[site]\nid = \"s1\"\nname = \"Minimal\"\nkind = \"compound\"\n";

#[test]
fn demo_config_loads_with_no_errors() {
    let config = match load(&demo_path()) {
        Ok(c) => c,
        Err(errors) => panic!("demo.toml has errors:\n{errors}"),
    };
    assert_eq!(config.site.id, "sw-demo-001");
    assert_eq!(config.site.kind, SiteKind::Compound);
    assert_eq!(config.locations.buildings.len(), 2);
    assert_eq!(config.cameras.len(), 4);
    assert!(
        config.devices.len() >= 20,
        "{} devices",
        config.devices.len()
    );
    assert_eq!(config.console.staff[0].username, "duty");
    let uplink = config.uplink.as_ref().expect("demo has an uplink");
    assert!(uplink.tls.is_none());
    assert_eq!((uplink.host.as_str(), uplink.port()), ("127.0.0.1", 1884));
    assert_eq!(
        config.uplink_client_id().as_deref(),
        Some("shouwang-sw-demo-001")
    );
}

#[test]
fn demo_config_covers_every_device_kind_and_both_formats() {
    let config = load(&demo_path()).expect("demo loads");
    for kind in DeviceKind::ALL {
        assert!(
            config.devices_of(kind).count() > 0,
            "no {kind} device in the demo"
        );
    }
    assert_eq!(config.devices_of(DeviceKind::EbikeBattery).count(), 3);
    let formats: Vec<PayloadFormat> = config.devices.iter().map(|d| d.format).collect();
    assert!(formats.contains(&PayloadFormat::Native));
    assert!(formats.contains(&PayloadFormat::Zigbee2mqtt));
    let gas_formats: Vec<PayloadFormat> = config
        .devices_of(DeviceKind::Gas)
        .map(|d| d.format)
        .collect();
    assert!(
        gas_formats.contains(&PayloadFormat::Native)
            && gas_formats.contains(&PayloadFormat::Zigbee2mqtt)
    );
}

#[test]
fn demo_linkage_closes_valves_on_gas_and_announces_battery_alarms() {
    let config = load(&demo_path()).expect("demo loads");
    let gas: Vec<&Linkage> = config
        .rules
        .linkages_for(AlertKind::Gas, Level::Orange)
        .collect();
    assert_eq!(gas.len(), 1);
    assert_eq!(gas[0].action, LinkageAction::CloseValve);
    assert_eq!(
        config
            .rules
            .linkages_for(AlertKind::Gas, Level::Yellow)
            .count(),
        0
    );
    let battery: Vec<&Linkage> = config
        .rules
        .linkages_for(AlertKind::EbikeBattery, Level::Red)
        .collect();
    let actions: Vec<LinkageAction> = battery.iter().map(|l| l.action).collect();
    assert_eq!(actions, [LinkageAction::SwitchOff, LinkageAction::PlayPa]);
    assert!(battery[0].own_plug, "the battery's own charger plug is cut");
    assert!(battery[1].message.is_some());
    let plug: Vec<&Linkage> = config
        .rules
        .linkages_for(AlertKind::SmartPlug, Level::Red)
        .collect();
    assert_eq!(plug[0].action, LinkageAction::SwitchOff);
    assert_eq!(
        config
            .device("shed-bay-01-battery")
            .and_then(|d| d.plug.as_deref()),
        Some("shed-bay-01-plug")
    );
    for kind in [AlertKind::Smoke, AlertKind::Heat] {
        let l: Vec<&Linkage> = config.rules.linkages_for(kind, Level::Red).collect();
        assert_eq!(l[0].action, LinkageAction::SoundSiren, "{kind}");
    }
}

#[test]
fn demo_staff_hash_is_argon2id() {
    let config = load(&demo_path()).expect("demo loads");
    assert!(config.console.staff[0]
        .password_hash
        .starts_with("$argon2id$v=19$"));
}

#[test]
fn charging_shed_hazards_warn_both_buildings() {
    let config = load(&demo_path()).expect("demo loads");
    let battery = config.device("shed-bay-01-battery").expect("device");
    let warned: Vec<&str> = config
        .warned_buildings(&battery.location)
        .iter()
        .map(|b| b.id.as_str())
        .collect();
    assert_eq!(warned, ["b1", "b2"]);
    let smoke = config.device("b2-u1-1502-smoke").expect("device");
    let warned: Vec<&str> = config
        .warned_buildings(&smoke.location)
        .iter()
        .map(|b| b.id.as_str())
        .collect();
    assert_eq!(warned, ["b2"]);
}

#[test]
fn device_thresholds_override_the_kind_rule() {
    let config = load(&demo_path()).expect("demo loads");
    let gas = config
        .rules
        .gas_for(config.device("b2-u1-0601-gas").expect("device"));
    assert_eq!((gas.low_lel_pct, gas.high_lel_pct), (8.0, 20.0));
    assert_eq!(gas.hysteresis_lel_pct, 2.0);
    let plain = config
        .rules
        .gas_for(config.device("b1-u1-1201-gas").expect("device"));
    assert_eq!((plain.low_lel_pct, plain.high_lel_pct), (10.0, 25.0));
    let battery = config
        .rules
        .ebike_battery_for(config.device("shed-bay-03-battery").expect("device"));
    assert_eq!(battery.temp_c, 55.0);
    assert_eq!(battery.max_charging_h, 8.0);
}

#[test]
fn compound_starter_parses_and_validates() {
    let text = starter("xingfuli-01", SiteKind::Compound);
    let config = parse_ok(&text);
    assert_eq!(config.site.id, "xingfuli-01");
    assert_eq!(config.site.kind, SiteKind::Compound);
    assert!(!config.devices.is_empty());
    assert!(
        text.lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .count()
            > 10,
        "starter is commented"
    );
}

#[test]
fn street_station_starter_describes_a_station_not_a_compound() {
    let text = starter("jiedao-ps-02", SiteKind::StreetStation);
    let config = parse_ok(&text);
    assert_eq!(config.site.kind, SiteKind::StreetStation);
    // Its own cameras at the door and on the street.
    let areas: Vec<_> = config
        .cameras
        .iter()
        .filter_map(|c| c.location.area.as_deref())
        .collect();
    assert!(
        areas.contains(&"door") && areas.contains(&"street"),
        "{areas:?}"
    );
    // The one-key alarm column on the street is an SOS device there.
    assert!(
        config
            .devices_of(DeviceKind::Sos)
            .any(|d| d.location.area.as_deref() == Some("street")),
        "no SOS device on the street"
    );
    // No residents: neither a resident section nor residential units.
    assert!(!text.contains("[residents]"), "{text}");
    assert!(config.residents.bind.is_none());
    assert!(config
        .locations
        .buildings
        .iter()
        .all(|b| b.units.is_empty()));
}

#[test]
fn compound_starter_shows_where_resident_pages_go() {
    assert!(starter("xingfuli-01", SiteKind::Compound).contains("# [residents]"));
}

#[test]
fn starter_with_a_bad_site_id_still_parses_but_reports_the_id() {
    let errors = parse(
        &starter("Bad \"Id\"", SiteKind::Compound),
        "s.toml",
        Path::new("."),
    )
    .expect_err("invalid id");
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["site.id"]);
}

#[test]
fn minimal_config_has_the_documented_defaults() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.site.timezone.name(), "Asia/Shanghai");
    assert_eq!(c.site.languages, [Language::ZhCn, Language::En]);
    let r = &c.rules;
    assert_eq!(
        (
            r.gas.low_lel_pct,
            r.gas.high_lel_pct,
            r.gas.hysteresis_lel_pct
        ),
        (10.0, 25.0, 2.0)
    );
    assert_eq!(
        (r.gas.low_level, r.gas.high_level),
        (Level::Orange, Level::Red)
    );
    assert_eq!(
        (r.heat.fixed_c, r.heat.rate_c_per_min, r.heat.rate_window_s),
        (57.0, 8.0, 60)
    );
    assert_eq!(r.heat.hysteresis_c, 3.0);
    let e = &r.ebike_battery;
    assert_eq!(
        (
            e.temp_c,
            e.rise_c_per_min,
            e.rise_window_s,
            e.max_charging_h
        ),
        (60.0, 1.0, 300, 8.0)
    );
    assert_eq!((e.runaway_c_per_s, e.voltage_drop_pct), (1.0, 25.0));
    assert_eq!(
        (
            e.theft_window.from.to_string(),
            e.theft_window.to.to_string()
        ),
        ("22:00".into(), "06:00".into())
    );
    assert_eq!((e.level, e.runaway_level), (Level::Orange, Level::Red));
    assert_eq!(
        (r.smoke.level, r.heat.level, r.sos.level, r.water_leak.level),
        (Level::Red, Level::Red, Level::Red, Level::Orange)
    );
    assert_eq!(r.water_leak.escalate_within_min, 10);
    assert_eq!(
        (r.device.offline_after_heartbeats, r.device.battery_low_pct),
        (3, 15)
    );
    assert_eq!(
        (
            r.device.offline_level,
            r.device.battery_low_level,
            r.device.tamper_level
        ),
        (Level::Yellow, Level::Blue, Level::Yellow)
    );
    let t = &r.timing;
    assert_eq!(
        (
            t.debounce_s,
            t.clear_hold_s,
            t.escalate_after_s,
            t.actuator_confirm_s
        ),
        (2, 30, 180, 10)
    );
}

#[test]
fn minimal_config_defaults_the_services() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.broker.mode, BrokerMode::Embedded);
    assert_eq!(c.broker.bind_addr().to_string(), "127.0.0.1:1883");
    assert!(!c.broker.require_auth);
    assert!(c.uplink.is_none());
    assert_eq!(c.console.bind.to_string(), "0.0.0.0:8080");
    assert_eq!(
        (
            c.console.session_timeout_min,
            c.console.lockout_after_failures
        ),
        (480, 5)
    );
    assert_eq!(c.storage.data_dir, Path::new("/var/lib/shouwang"));
    assert_eq!(c.storage.quota_mb, 1024);
    assert_eq!(c.storage.reserve_mb, 16);
    assert_eq!(c.detector.model, "yolox_nano");
    assert_eq!(
        c.detector.models_dir,
        Path::new("models"),
        "the default stays relative"
    );
    assert_eq!(c.detector.model_path(), Path::new("models/yolox_nano.onnx"));
    assert_eq!(
        (c.detector.onnxruntime.as_ref(), c.detector.intra_threads),
        (None, 1)
    );
}

#[test]
fn uplink_defaults_depend_on_tls_and_site() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), "x").expect("write");
    let plain = format!("{MINIMAL}[uplink]\nhost = \"up.example\"\n");
    let c = parse_ok(&plain);
    let u = c.uplink.as_ref().expect("uplink");
    assert_eq!(
        (u.port(), u.qos, u.keep_alive_s, u.topic_prefix.as_str()),
        (1883, edge_config::Qos::AtLeastOnce, 30, "shouwang")
    );
    assert_eq!(u.client_id(&c.site.id), "shouwang-s1");
    assert_eq!(
        (
            u.outbox.max_inflight,
            u.outbox.batch,
            u.outbox.retry_backoff_max_s
        ),
        (64, 256, 60)
    );
    let tls = format!("{plain}tls = {{ ca = \"ca.pem\" }}\n");
    let c = parse(&tls, "t.toml", dir.path()).expect("valid");
    let u = c.uplink.expect("uplink");
    assert_eq!(u.port(), 8883);
    let t = u.tls.expect("tls");
    assert!(t.verify);
    assert_eq!(
        t.ca.as_deref(),
        Some(dir.path().join("ca.pem").as_path()),
        "resolved against base_dir"
    );
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let src = format!("{MINIMAL}[storage]\ndata_dir = \"data\"\n[detector]\nmodels_dir = \"m\"\n[[cameras]]\nid = \"c\"\nurl = \"footage/a.mp4\"\nlocation = {{ area = \"x\" }}\n[[locations.areas]]\nid = \"x\"\nname = \"X\"\nkind = \"other\"\n");
    let c = parse_ok(&src);
    assert_eq!(c.storage.data_dir, Path::new("/etc/shouwang/data"));
    assert_eq!(c.detector.models_dir, Path::new("/etc/shouwang/m"));
    assert_eq!(
        c.cameras[0].source(),
        CameraSource::File("/etc/shouwang/footage/a.mp4".into())
    );
}

#[test]
fn device_topics_default_by_format() {
    let src = format!(
        "{MINIMAL}[[locations.areas]]\nid = \"a\"\nname = \"A\"\nkind = \"lobby\"\n\
         [[devices]]\nid = \"n1\"\nkind = \"smoke\"\nlocation = {{ area = \"a\" }}\n\
         [[devices]]\nid = \"z1\"\nkind = \"gas\"\nformat = \"zigbee2mqtt\"\nlocation = {{ area = \"a\" }}\n\
         [[devices]]\nid = \"z2\"\nkind = \"valve\"\nformat = \"zigbee2mqtt\"\nfriendly_name = \"Kitchen Valve\"\nlocation = {{ area = \"a\" }}\n\
         [[devices]]\nid = \"t1\"\nkind = \"siren\"\ntopic = \"custom/siren/state\"\nlocation = {{ area = \"a\" }}\n"
    );
    let c = parse_ok(&src);
    let topic = |id: &str| c.device(id).expect("device").state_topic();
    assert_eq!(topic("n1"), "sensors/n1/state");
    assert_eq!(topic("z1"), "zigbee2mqtt/z1");
    assert_eq!(topic("z2"), "zigbee2mqtt/Kitchen Valve");
    assert_eq!(topic("t1"), "custom/siren/state");
    assert_eq!(
        c.device("z2").expect("device").command_topic(),
        "zigbee2mqtt/Kitchen Valve/set"
    );
    assert_eq!(
        c.device("t1").expect("device").command_topic(),
        "custom/siren/set"
    );
    assert_eq!(
        c.device_by_topic("zigbee2mqtt/z1").map(|d| d.id.as_str()),
        Some("z1")
    );
    assert_eq!(
        (
            c.device("n1").expect("d").heartbeat_s(),
            c.device("t1").expect("d").heartbeat_s()
        ),
        (300, 60)
    );
}

#[test]
fn camera_rules_have_kind_specific_defaults() {
    let config = load(&demo_path()).expect("demo loads");
    let lobby = config.camera("cam-b1-lobby").expect("camera");
    let rule = &lobby.rules[0];
    assert_eq!(rule.objects(), ["bicycle", "motorcycle"]);
    assert_eq!(
        (rule.level(), rule.min_score, rule.min_area),
        (Level::Orange, 0.5, 0.002)
    );
    assert_eq!(lobby.analyse_fps, 5.0);
    assert!(lobby.enabled);
    let shed = config.camera("cam-shed").expect("camera");
    assert_eq!(
        (shed.rules[0].kind, shed.rules[0].level()),
        (CameraRuleKind::Intrusion, Level::Orange)
    );
    assert_eq!(
        (shed.rules[1].dwell_s(), shed.rules[1].level()),
        (120, Level::Blue)
    );
    assert_eq!(shed.rules[1].objects(), ["person"]);
    let gate = config.camera("cam-kindergarten-gate").expect("camera");
    assert_eq!(
        (
            gate.rules[0].min_persons(),
            gate.rules[0].min_duration_s(),
            gate.rules[0].level()
        ),
        (12, 30, Level::Yellow)
    );
}

#[test]
fn error_display_is_file_line_col_path_message() {
    let e = ConfigError {
        file: "site.toml".into(),
        line: 12,
        col: 5,
        path: "devices[3].location.building".into(),
        message: "unknown building \"b9\"; known buildings: b1, b2".into(),
    };
    assert_eq!(
        e.to_string(),
        "site.toml:12:5: devices[3].location.building: unknown building \"b9\"; known buildings: b1, b2"
    );
    let two = ConfigErrors(vec![e.clone(), ConfigError { line: 13, ..e }]);
    assert_eq!(two.to_string().lines().count(), 2);
}

#[test]
fn unreadable_file_is_one_error_at_line_one() {
    let errors = load(Path::new("/nonexistent/shouwang.toml")).expect_err("missing file");
    assert_eq!(errors.len(), 1);
    let e = &errors.0[0];
    assert_eq!((e.line, e.col, e.path.as_str()), (1, 1, ""));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/shouwang.toml:1:1: cannot read"),
        "{e}"
    );
}

#[test]
fn serialized_config_hides_secrets() {
    let config = load(&demo_path()).expect("demo loads");
    let shown = toml::to_string(&config).expect("serializes");
    assert!(!shown.contains("$argon2id$"), "hash leaked");
    assert!(shown.contains("password_hash = \"********\""));
    assert!(shown.contains("sw-demo-001"));
}
