//! The command room's keys: the cameras that see a device, area or building
//! (`cameras = ["shed-cam"]`) and `[console.response]`.

use super::Problems;
use crate::hints::{did_you_mean, list};
use crate::model::{AlertKind, Config};
use crate::path::KeyPath;

/// Every `cameras` list names configured cameras, each once.
pub(super) fn check_linked_cameras(config: &Config, p: &mut Problems) {
    for (i, d) in config.devices.iter().enumerate() {
        let at = KeyPath::of("devices").index(i).key("cameras");
        check_list(config, &d.cameras, &at, p);
    }
    let places = KeyPath::of("locations");
    for (i, b) in config.locations.buildings.iter().enumerate() {
        let at = places.key("buildings").index(i).key("cameras");
        check_list(config, &b.cameras, &at, p);
    }
    for (i, a) in config.locations.areas.iter().enumerate() {
        let at = places.key("areas").index(i).key("cameras");
        check_list(config, &a.cameras, &at, p);
    }
}

fn check_list(config: &Config, cameras: &[String], at: &KeyPath, p: &mut Problems) {
    let known = || config.cameras.iter().map(|c| c.id.as_str());
    for (j, id) in cameras.iter().enumerate() {
        if config.camera(id).is_none() {
            let known_list = match config.cameras.is_empty() {
                true => "none".to_owned(),
                false => list(known()),
            };
            p.push(
                at.index(j),
                format!(
                    "unknown camera \"{id}\"{}; known cameras: {known_list} (add it under [[cameras]] or remove it here)",
                    did_you_mean(id, known())
                ),
            );
        } else if cameras[..j].contains(id) {
            p.push(
                at.index(j),
                format!("camera \"{id}\" listed twice; remove the repeat"),
            );
        }
    }
}

/// `[console.response]`: targets in range, `resolve_within_min` keyed by alert kinds.
pub(super) fn check_response(config: &Config, p: &mut Problems) {
    let r = &config.console.response;
    let at = KeyPath::of("console").key("response");
    p.range(at.key("ack_within_s"), r.ack_within_s, 10, 3600);
    let kinds = || AlertKind::ALL.iter().map(|k| k.as_str());
    for (key, minutes) in &r.resolve_within_min {
        let here = at.key("resolve_within_min").key(key);
        if key != "default" && !kinds().any(|k| k == key) {
            p.push(
                here,
                format!(
                    "unknown alert kind \"{key}\"{}; use `default` or one of: {}",
                    did_you_mean(key, kinds().chain(["default"])),
                    list(kinds())
                ),
            );
            continue;
        }
        p.range(here, *minutes, 1, 1440);
    }
}

#[cfg(test)]
mod tests {
    use crate::model::AlertKind;

    const CONFIG: &str = r#"
[site]
id = "t"
name = "T"
kind = "compound"

[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 6
cameras = ["gate-cam"]

[[locations.areas]]
id = "shed"
name = "充电棚"
kind = "charging_shed"
building = "b1"
cameras = ["shed-cam"]

[[devices]]
id = "shed-smoke"
kind = "smoke"
location = { area = "shed" }

[[devices]]
id = "shed-sos"
kind = "sos"
location = { area = "shed" }
cameras = ["gate-cam", "shed-cam"]

[[devices]]
id = "b1-gas"
kind = "gas"
location = { building = "b1", floor = 3 }

[console.response]
resolve_within_min = { default = 20, smoke = 10 }

[[cameras]]
id = "shed-cam"
url = "rtsp://127.0.0.1:8554/shed"
location = { area = "shed" }

[[cameras]]
id = "gate-cam"
url = "rtsp://127.0.0.1:8554/gate"
location = { building = "b1" }
"#;

    #[test]
    fn a_device_is_seen_by_its_own_cameras_else_its_areas_else_its_buildings() {
        let config = crate::parse(CONFIG, "t.toml", std::path::Path::new(".")).unwrap();
        let seen = |id: &str| config.cameras_seeing(config.device(id).unwrap()).to_vec();
        assert_eq!(seen("shed-smoke"), ["shed-cam"]);
        assert_eq!(seen("shed-sos"), ["gate-cam", "shed-cam"]);
        assert_eq!(seen("b1-gas"), ["gate-cam"]);
    }

    #[test]
    fn a_kind_without_its_own_resolve_target_takes_the_default() {
        let config = crate::parse(CONFIG, "t.toml", std::path::Path::new(".")).unwrap();
        let r = &config.console.response;
        assert_eq!(r.ack_within_s, 60);
        assert_eq!(r.resolve_within_min(AlertKind::Smoke), 10);
        assert_eq!(r.resolve_within_min(AlertKind::Gas), 20);
        let unset = crate::model::ResponseTargets::default();
        assert_eq!(unset.resolve_within_min(AlertKind::Sos), 15);
    }
}
