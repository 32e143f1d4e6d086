//! Broken configurations report every error with the right line, column
//! and key path.
//!
//! Each fixture in `tests/fixtures/broken/` lists the errors it must
//! produce as comment lines:
//!
//! ```text
//! # expect: LINE:COL key.path ~ text the message must contain
//! ```
//!
//! The test fails unless the reported errors are exactly those (same
//! count, lines, columns and paths, in file order).

use edge_config::{parse, ConfigErrors};
use std::path::{Path, PathBuf};

#[derive(Debug, PartialEq)]
struct Expected {
    line: usize,
    col: usize,
    path: String,
    contains: String,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken")
}

fn expectations(source: &str) -> Vec<Expected> {
    source
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|spec| {
            let (head, contains) = spec.split_once(" ~ ").unwrap_or((spec, ""));
            let (pos, path) = head.split_once(' ').unwrap_or((head, ""));
            let (line, col) = pos.split_once(':').expect("LINE:COL");
            Expected {
                line: line.parse().expect("line"),
                col: col.parse().expect("col"),
                path: path.trim().to_string(),
                contains: contains.trim().to_string(),
            }
        })
        .collect()
}

fn errors_of(name: &str) -> (Vec<Expected>, ConfigErrors) {
    let file = fixtures_dir().join(name);
    let source = std::fs::read_to_string(&file).expect("fixture exists");
    let expected = expectations(&source);
    assert!(!expected.is_empty(), "{name} has no `# expect:` lines");
    let errors = match parse(&source, name, &fixtures_dir()) {
        Ok(_) => panic!("{name} should not validate"),
        Err(errors) => errors,
    };
    (expected, errors)
}

/// Compare and, on failure, show the actual errors in `# expect:` form.
fn check(name: &str) {
    let (mut expected, errors) = errors_of(name);
    expected.sort_by_key(|e| (e.line, e.col));
    let actual: Vec<(usize, usize, &str)> = errors
        .iter()
        .map(|e| (e.line, e.col, e.path.as_str()))
        .collect();
    let wanted: Vec<(usize, usize, &str)> = expected
        .iter()
        .map(|e| (e.line, e.col, e.path.as_str()))
        .collect();
    let shown: String = errors
        .iter()
        .map(|e| {
            format!(
                "# expect: {}:{} {} ~ {}\n",
                e.line, e.col, e.path, e.message
            )
        })
        .collect();
    assert_eq!(actual, wanted, "{name} reported:\n{shown}");
    for (e, want) in errors.iter().zip(&expected) {
        assert!(
            e.message.contains(&want.contains),
            "{name}: message of {} is {:?}, expected it to contain {:?}",
            e.path,
            e.message,
            want.contains
        );
        assert!(e
            .to_string()
            .starts_with(&format!("{name}:{}:{}: {}: ", e.line, e.col, e.path)));
    }
}

#[test]
fn syntax_error_reports_its_line_and_column() {
    check("01-syntax-error.toml");
}

#[test]
fn misspelt_key_reports_its_line_and_column() {
    check("02-misspelt-key.toml");
}

#[test]
fn wrong_type_reports_the_value() {
    check("03-wrong-type.toml");
}

#[test]
fn dangling_building_names_the_known_buildings() {
    check("04-dangling-building.toml");
}

#[test]
fn dangling_area_suggests_the_closest_area() {
    check("05-dangling-area.toml");
}

#[test]
fn duplicate_device_id_points_at_the_second_one() {
    check("06-duplicate-device-id.toml");
}

#[test]
fn polygon_with_fewer_than_three_points_is_rejected() {
    check("07-polygon-too-few-points.toml");
}

#[test]
fn polygon_points_outside_the_frame_are_each_reported() {
    check("08-polygon-out-of-frame.toml");
}

#[test]
fn gas_thresholds_in_the_wrong_order_are_rejected() {
    check("09-gas-thresholds-wrong-order.toml");
}

#[test]
fn missing_tls_file_is_reported() {
    check("10-missing-tls-file.toml");
}

#[test]
fn camera_rule_naming_an_unknown_zone_is_rejected() {
    check("11-unknown-zone.toml");
}

#[test]
fn linkage_target_of_the_wrong_kind_is_rejected() {
    check("12-linkage-wrong-kind.toml");
}

#[test]
fn bad_timezone_suggests_the_closest_name() {
    check("13-bad-timezone.toml");
}

#[test]
fn bad_bind_address_is_rejected() {
    check("14-bad-bind-address.toml");
}

#[test]
fn bad_argon2_hash_is_rejected() {
    check("15-bad-argon2-hash.toml");
}

#[test]
fn password_and_password_file_together_are_rejected() {
    check("16-password-and-password-file.toml");
}

#[test]
fn several_schema_errors_are_all_reported_in_one_run() {
    check("17-several-schema-errors.toml");
    let (_, errors) = errors_of("17-several-schema-errors.toml");
    assert_eq!(errors.len(), 5);
}

#[test]
fn several_semantic_errors_are_all_reported_sorted_by_line() {
    check("18-several-semantic-errors.toml");
    let (_, errors) = errors_of("18-several-semantic-errors.toml");
    assert_eq!(errors.len(), 11);
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    assert!(
        lines.windows(2).all(|w| w[0] <= w[1]),
        "not sorted: {lines:?}"
    );
}

#[test]
fn device_threshold_override_is_checked_merged_with_defaults() {
    check("19-device-threshold-override.toml");
}

#[test]
fn broker_mode_and_fields_must_agree() {
    check("20-broker-mode-mismatch.toml");
}

#[test]
fn missing_required_key_is_reported_at_its_table() {
    check("21-missing-required-key.toml");
}

#[test]
fn camera_rule_keys_must_fit_the_rule_kind() {
    check("22-intrusion-without-window.toml");
}

#[test]
fn a_self_test_slower_than_en54_or_with_no_period_is_refused() {
    check("23-self-test-too-slow.toml");
}

#[test]
fn an_anonymous_broker_on_the_network_is_refused_unless_allow_anonymous_says_so() {
    check("24-anonymous-broker-on-the-network.toml");
    let source =
        std::fs::read_to_string(fixtures_dir().join("24-anonymous-broker-on-the-network.toml"))
            .unwrap()
            .replace("mode = \"embedded\"", "allow_anonymous = true");
    assert!(
        parse(&source, "inline.toml", &fixtures_dir()).is_ok(),
        "allow_anonymous = true accepts the risk"
    );
    let loopback =
        std::fs::read_to_string(fixtures_dir().join("24-anonymous-broker-on-the-network.toml"))
            .unwrap()
            .replace("0.0.0.0:1883", "127.0.0.1:1883");
    assert!(
        parse(&loopback, "inline.toml", &fixtures_dir()).is_ok(),
        "loopback is fine"
    );
}

#[test]
fn broker_logins_must_be_unambiguous() {
    check("25-broker-logins.toml");
}

#[test]
fn weak_argon2_staff_hashes_are_refused() {
    check("26-weak-argon2-hash.toml");
}

#[test]
fn every_fixture_has_a_test() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    let source = include_str!("validation.rs");
    for name in &names {
        assert!(
            source.contains(&format!("check(\"{name}\")")),
            "{name} is not checked by a test"
        );
    }
    assert!(names.len() >= 12);
}

const SITE: &str = "[site]\nid = \"s\"\nname = \"S\"\nkind = \"compound\"\n[[locations.areas]]\nid = \"a\"\nname = \"A\"\nkind = \"lobby\"\n";

/// `LINE:COL path` of every error of `source` (base dir: `base`).
fn positions_in(source: &str, base: &Path) -> Vec<String> {
    match parse(source, "inline.toml", base) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| format!("{}:{} {}", e.line, e.col, e.path))
            .collect(),
    }
}

fn positions(source: &str) -> Vec<String> {
    positions_in(source, Path::new("/nonexistent"))
}

#[test]
fn require_auth_demands_credentials_on_every_device() {
    let src = format!(
        "{SITE}[broker]\nrequire_auth = true\n\
         [[devices]]\nid = \"d1\"\nkind = \"smoke\"\nlocation = {{ area = \"a\" }}\nusername = \"d1\"\npassword = \"p\"\n\
         [[devices]]\nid = \"d2\"\nkind = \"smoke\"\nlocation = {{ area = \"a\" }}\n"
    );
    assert_eq!(positions(&src), ["17:1 devices[1]"]);
}

#[test]
fn two_devices_on_one_topic_are_rejected() {
    let src = format!(
        "{SITE}[[devices]]\nid = \"d1\"\nkind = \"gas\"\nlocation = {{ area = \"a\" }}\n\
         [[devices]]\nid = \"d2\"\nkind = \"gas\"\nlocation = {{ area = \"a\" }}\ntopic = \"sensors/d1/state\"\n"
    );
    assert_eq!(positions(&src), ["17:9 devices[1].topic"]);
}

#[test]
fn external_broker_with_existing_files_validates() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), "ca").expect("write");
    std::fs::write(dir.path().join("broker.pass"), "pw").expect("write");
    let src = format!(
        "{SITE}[broker]\nmode = \"external\"\n[broker.external]\nhost = \"10.0.0.5\"\nusername = \"gw\"\n\
         password_file = \"broker.pass\"\ntls = {{ ca = \"ca.pem\" }}\n"
    );
    let config = parse(&src, "inline.toml", dir.path()).expect("valid");
    let ext = config.broker.external.expect("external");
    assert_eq!(ext.port(), 8883);
    assert_eq!(
        ext.password_file.as_deref(),
        Some(dir.path().join("broker.pass").as_path())
    );
    assert_eq!(
        positions_in(&src, Path::new("/nonexistent")),
        [
            "14:17 broker.external.password_file",
            "15:14 broker.external.tls.ca"
        ]
    );
}

#[test]
fn uplink_client_certificate_needs_its_key_and_qos_must_be_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("gw.pem"), "cert").expect("write");
    let tls = "tls = { cert = \"gw.pem\", verify = false }\n";
    // `qos` is a typed QoS: 3 is refused as it is read, like an unknown name, before the
    // checks of the whole configuration (so the certificate is reported once qos is fixed).
    let src = format!("{SITE}[uplink]\nhost = \"up\"\nqos = 3\n{tls}");
    assert_eq!(positions_in(&src, dir.path()), ["11:7 uplink.qos"]);
    let message = parse(&src, "inline.toml", dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("MQTT QoS is 0, 1 or 2, got 3; use 1 or 2"),
        "{message}"
    );
    let src = format!("{SITE}[uplink]\nhost = \"up\"\nqos = 2\n{tls}");
    assert_eq!(positions_in(&src, dir.path()), ["12:16 uplink.tls.cert"]);
}

#[test]
fn a_time_zone_and_a_qos_are_read_as_types() {
    let src = format!(
        "{}timezone = \"Europe/Berlin\"\n{}[uplink]\nhost = \"up\"\nqos = 2\n",
        &SITE[..SITE.find("[[").expect("areas")],
        &SITE[SITE.find("[[").expect("areas")..]
    );
    let config = parse(&src, "inline.toml", Path::new(".")).expect("valid");
    assert_eq!(config.site.tz(), chrono_tz::Europe::Berlin);
    assert_eq!(config.site.timezone.name(), "Europe/Berlin");
    let up = config.uplink.expect("uplink");
    assert_eq!(up.qos, edge_config::Qos::ExactlyOnce);
    assert_eq!(u8::from(up.qos), 2);
}

#[test]
fn password_files_are_read_once_by_the_config_with_one_rule_for_every_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("up.pass"), "upstream-pw  \r\nignored\n").expect("write");
    std::fs::write(dir.path().join("reader.pass"), "reader-pw\n").expect("write");
    let src = format!(
        "{SITE}[[broker.readers]]\nusername = \"board\"\npassword_file = \"reader.pass\"\n\
         topics = [\"residents/#\"]\n[uplink]\nhost = \"up\"\nusername = \"gw\"\n\
         password_file = \"up.pass\"\n"
    );
    let config = parse(&src, "inline.toml", dir.path()).expect("valid");
    let up = config.uplink.expect("uplink");
    assert_eq!(up.password.as_deref(), Some("upstream-pw"));
    assert_eq!(
        config.broker.readers[0].password.as_deref(),
        Some("reader-pw")
    );
}

#[test]
fn floor_zero_and_floors_of_areas_are_checked() {
    let src = "[site]\nid = \"s\"\nname = \"S\"\nkind = \"compound\"\n\
               [[locations.buildings]]\nid = \"b1\"\nname = \"B\"\nfloors = 6\nbasements = 1\n\
               [[locations.areas]]\nid = \"garage\"\nname = \"G\"\nkind = \"car_park\"\nbuilding = \"b1\"\nfloor = -2\n\
               [[locations.areas]]\nid = \"x\"\nname = \"X\"\nkind = \"other\"\nunit = \"u1\"\n\
               [[devices]]\nid = \"d\"\nkind = \"heat\"\nlocation = { building = \"b1\", floor = 0 }\n";
    assert_eq!(
        positions(src),
        [
            "15:9 locations.areas[0].floor",
            "16:1 locations.areas[1].building",
            "24:39 devices[0].location.floor"
        ]
    );
}

#[test]
fn staff_usernames_must_be_unique() {
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk";
    let staff = format!("[[console.staff]]\nusername = \"duty\"\ndisplay_name = \"D\"\npassword_hash = \"{hash}\"\n");
    let src = format!("{SITE}{staff}{staff}");
    assert_eq!(positions(&src), ["14:12 console.staff[1].username"]);
}

#[test]
fn field_maps_models_plugs_and_co_and_plug_thresholds_are_checked_at_their_keys() {
    check("27-device-fields-and-plugs.toml");
}

#[test]
fn an_unknown_reading_in_a_field_map_names_the_valid_ones() {
    check("28-unknown-field-reading.toml");
}

#[test]
fn a_zigbee_name_under_another_devices_name_is_refused() {
    check("29-zigbee-name-under-another.toml");
}

// ---- [metrics] (issue 15) ----

#[test]
fn a_metrics_listener_on_the_consoles_address_is_refused() {
    check("30-metrics-bind-taken.toml");
}

#[test]
fn a_metrics_bind_that_is_no_address_is_refused_at_its_line() {
    check("31-metrics-bad-address.toml");
}

#[test]
fn metrics_are_off_unless_configured_and_listen_on_loopback_by_default() {
    let off = parse(SITE, "inline.toml", Path::new("/nonexistent")).expect("valid");
    assert_eq!(off.metrics, None);
    assert_eq!(
        edge_config::Metrics::listen_addr(off.metrics.as_ref()),
        None
    );

    let on = parse(
        &format!("{SITE}[metrics]\n"),
        "inline.toml",
        Path::new("/nonexistent"),
    )
    .expect("valid");
    let addr = edge_config::Metrics::listen_addr(on.metrics.as_ref());
    assert_eq!(addr, Some(edge_config::DEFAULT_METRICS_BIND));
    assert!(addr.is_some_and(|a| a.ip().is_loopback() && a.port() == 9464));

    let disabled = format!("{SITE}[metrics]\nenabled = false\nbind = \"0.0.0.0:1883\"\n");
    let disabled = parse(&disabled, "inline.toml", Path::new("/nonexistent")).expect("valid");
    assert_eq!(
        edge_config::Metrics::listen_addr(disabled.metrics.as_ref()),
        None,
        "a disabled listener takes no address, so it clashes with none"
    );
}

#[test]
fn a_metrics_listener_on_the_brokers_or_residents_address_is_refused() {
    let broker = format!("{SITE}[broker]\nbind = \"0.0.0.0:1883\"\nallow_anonymous = true\n[metrics]\nbind = \"127.0.0.1:1883\"\n");
    assert_eq!(positions(&broker), ["13:8 metrics.bind"]);
    let residents = format!(
        "{SITE}[residents]\nbind = \"192.0.2.1:8081\"\n[metrics]\nbind = \"192.0.2.1:8081\"\n"
    );
    assert_eq!(positions(&residents), ["12:8 metrics.bind"]);
    let elsewhere = format!("{SITE}[metrics]\nbind = \"0.0.0.0:9464\"\n");
    assert_eq!(positions(&elsewhere), Vec::<String>::new());
}
// --- [homeassistant] (issue 15) ---

#[test]
fn a_home_assistant_prefix_with_a_wildcard_and_a_zero_readings_interval_are_refused_at_their_keys()
{
    check("32-homeassistant-prefix.toml");
}

#[test]
fn an_empty_or_misspelt_home_assistant_setting_is_refused_at_its_key() {
    let empty = format!("{SITE}[homeassistant]\nenabled = true\nprefix = \"\"\n");
    assert_eq!(positions(&empty), ["11:10 homeassistant.prefix"]);
    let own = format!("{SITE}[homeassistant]\nprefix = \"shouwang/ha\"\n");
    assert_eq!(positions(&own), ["10:10 homeassistant.prefix"]);
    let misspelt = format!("{SITE}[homeassistant]\nenabled = true\ndiscovery_prefix = \"ha\"\n");
    assert_eq!(
        positions(&misspelt),
        ["11:1 homeassistant.discovery_prefix"]
    );
}

// ---- street station (issue 19) ----

#[test]
fn a_stations_compounds_need_their_own_ids_logins_and_passwords() {
    check("35-compounds.toml");
}

#[test]
fn a_station_link_to_the_platforms_broker_is_refused() {
    check("36-station-link-is-the-platform.toml");
}

#[test]
fn unknown_linked_cameras_are_each_reported_where_they_are_named() {
    check("33-linked-camera-unknown.toml");
}

#[test]
fn response_targets_are_in_range_and_keyed_by_alert_kinds() {
    check("34-response-targets.toml");
}

// ---- hardware decoding (issue 18) ----

#[test]
fn an_unknown_camera_hwaccel_is_reported_at_its_value_with_the_closest_choice() {
    check("37-camera-hwaccel-unknown.toml");
}

#[test]
fn a_hwaccel_device_is_refused_without_vaapi_or_as_a_relative_path() {
    check("38-camera-hwaccel-device.toml");
}
