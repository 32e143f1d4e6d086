//! `gateway config init`: a commented starter configuration that is valid
//! as it stands and shows installers where to fill in their site.

use crate::model::SiteKind;

/// A commented, valid starter configuration for a site.
///
/// `site_id` should pass [`crate::id_problem`]; if it does not, the text
/// still parses but validation reports `site.id`.
pub fn starter(site_id: &str, kind: SiteKind) -> String {
    let id = toml::Value::String(site_id.to_string()).to_string();
    // A station has no residents: its starter says nothing of resident pages.
    let (body, residents) = match kind {
        SiteKind::Compound => (COMPOUND, RESIDENTS),
        SiteKind::StreetStation => (STATION, ""),
    };
    format!(
        "{HEADER}{}{body}{UPLINK_CONSOLE}{residents}{STORAGE}",
        site(&id, kind)
    )
}

fn site(id: &str, kind: SiteKind) -> String {
    let (kind, example) = match kind {
        SiteKind::Compound => ("compound", "幸福里小区 (Xingfuli compound)"),
        SiteKind::StreetStation => (
            "street_station",
            "幸福街警务站 (Xingfu Street police station)",
        ),
    };
    format!(
        r#"[site]
id = {id}
name = {id}  # TODO: the site's name, e.g. "{example}"
kind = "{kind}"  # compound | street_station
timezone = "Asia/Shanghai"
languages = ["zh-CN", "en"]

"#
    )
}

const HEADER: &str = r#"# shouwang (守望) gateway configuration.
# Check it with `gateway config check FILE`; errors print as
# FILE:LINE:COL: key.path: what to fix.
# Relative file paths are resolved against this file's directory.

"#;

const COMPOUND: &str = r#"# Buildings (楼栋), their units (单元) and named areas. Floor 1 is the ground
# floor, -1 the first basement.
[[locations.buildings]]
id = "b1"
name = "1号楼 (Building 1)"
floors = 18

[[locations.buildings.units]]
id = "u1"
name = "1单元 (Unit 1)"

[[locations.areas]]
id = "b1-lobby"
name = "1号楼大堂 (Building 1 lobby)"
kind = "lobby"
building = "b1"
floor = 1

[[locations.areas]]
id = "charging-shed"
name = "电动车充电棚 (E-bike charging shed)"
kind = "charging_shed"
warns = ["b1"]           # buildings warned of a fire here

# The gateway's own MQTT broker, on this machine only until sensors have
# logins. For sensors on the network: bind = "0.0.0.0:1883",
# require_auth = true and username/password on every device (each may then
# publish only its own topics); `config check` refuses a network bind without
# device logins unless allow_anonymous = true.
[broker]
mode = "embedded"
bind = "127.0.0.1:1883"

# Devices: kind = smoke | heat | water_leak | gas | carbon_monoxide |
# ebike_battery | sos | smart_plug | siren | valve | pa_speaker; format = native
# (sensors/{id}/state) or zigbee2mqtt (zigbee2mqtt/{friendly_name}, with
# model = "<Zigbee2MQTT model>" where the README's device profiles list it).
[[devices]]
id = "b1-u1-0101-smoke"
kind = "smoke"
location = { building = "b1", unit = "u1", floor = 1, room = "0101" }

[[devices]]
id = "b1-u1-0101-gas"
kind = "gas"
location = { building = "b1", unit = "u1", floor = 1, room = "0101" }

[[devices]]
id = "b1-u1-0101-valve"
kind = "valve"
location = { building = "b1", unit = "u1", floor = 1, room = "0101" }

[[devices]]
id = "shed-bay-01-battery"
kind = "ebike_battery"
location = { area = "charging-shed", room = "bay 01" }

[[devices]]
id = "b1-lobby-siren"
kind = "siren"
location = { area = "b1-lobby" }

# Rules have defaults for everything (gas 10/25 % LEL, heat 57 °C, ...);
# write only what differs. Linkage drives the actuators.
[rules]

[[rules.linkage]]
on = "gas"
action = "close_valve"
targets = ["b1-u1-0101-valve"]

[[rules.linkage]]
on = "smoke"
min_level = "red"
action = "sound_siren"
targets = ["b1-lobby-siren"]

# Cameras: zones are polygons of [x, y] fractions of the frame.
[[cameras]]
id = "cam-b1-lobby"
url = "rtsp://127.0.0.1:8554/lobby"      # TODO: the camera's stream
location = { area = "b1-lobby" }

[[cameras.zones]]
id = "door"
polygon = [[0.3, 0.3], [0.7, 0.3], [0.7, 1.0], [0.3, 1.0]]

[[cameras.rules]]
kind = "ebike_entry"
zone = "door"

"#;

const STATION: &str = r#"# A street police station (警务站): its own building, the door and the street
# in front of it. Floor 1 is the ground floor.
[[locations.buildings]]
id = "station"
name = "警务站 (Station building)"
floors = 2

[[locations.areas]]
id = "door"
name = "警务站门口 (Station door)"
kind = "lobby"
building = "station"
floor = 1

[[locations.areas]]
id = "street"
name = "站前街面 (Street in front of the station)"
kind = "other"

[[locations.areas]]
id = "yard"
name = "院内车棚 (Yard and e-bike shed)"
kind = "charging_shed"
warns = ["station"]

# The gateway's own MQTT broker, on this machine only until sensors have
# logins. For sensors on the network: bind = "0.0.0.0:1883",
# require_auth = true and username/password on every device (each may then
# publish only its own topics); `config check` refuses a network bind without
# device logins unless allow_anonymous = true.
[broker]
mode = "embedded"
bind = "127.0.0.1:1883"

# Devices: kind = smoke | heat | water_leak | gas | carbon_monoxide |
# ebike_battery | sos | smart_plug | siren | valve | pa_speaker.
# The one-key alarm column (一键报警柱) on the street: a citizen presses it, the
# duty staff see a red SOS with the street camera beside it.
[[devices]]
id = "street-alarm-column"
kind = "sos"
location = { area = "street" }

[[devices]]
id = "door-sos"
kind = "sos"
location = { area = "door" }

[[devices]]
id = "station-smoke"
kind = "smoke"
location = { building = "station", floor = 1, room = "值班室 duty room" }

[[devices]]
id = "yard-battery-01"
kind = "ebike_battery"
location = { area = "yard", room = "bay 01" }

[[devices]]
id = "yard-pa"
kind = "pa_speaker"
location = { area = "yard" }

# Rules have defaults for everything; write only what differs.
[rules]

[[rules.linkage]]
on = "ebike_battery"
action = "play_pa"
targets = ["yard-pa"]

# Cameras: zones are polygons of [x, y] fractions of the frame.
[[cameras]]
id = "cam-door"
url = "rtsp://127.0.0.1:8554/door"       # TODO: the door camera's stream
location = { area = "door" }

[[cameras.zones]]
id = "entrance"
polygon = [[0.2, 0.2], [0.8, 0.2], [0.8, 1.0], [0.2, 1.0]]

[[cameras.rules]]
kind = "intrusion"
zone = "entrance"
window = { from = "23:00", to = "06:00" }

[[cameras]]
id = "cam-street"
url = "rtsp://127.0.0.1:8554/street"     # TODO: the street camera's stream
location = { area = "street" }

[[cameras.zones]]
id = "pavement"
polygon = [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]

[[cameras.rules]]
kind = "crowd"
zone = "pavement"
min_persons = 10
min_duration_s = 30

[[cameras.rules]]
kind = "loitering"
zone = "pavement"
dwell_s = 300

"#;

const UPLINK_CONSOLE: &str = r#"# Upstream platform (uncomment and fill in). Production uses TLS:
# [uplink]
# host = "platform.example.org"
# port = 8883
# tls = { ca = "certs/platform-ca.pem" }
# username = "SITE-ID"
# password_file = "secrets/uplink.pass"

# Console for the duty staff. Add accounts with an argon2id hash, e.g.
#   echo -n 'PASSWORD' | argon2 "$(openssl rand -base64 16)" -id -t 2 -k 19456 -e
[console]
bind = "0.0.0.0:8080"
# [[console.staff]]
# username = "duty"
# display_name = "值班员 (Duty officer)"
# password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
# role = "admin"

"#;

const RESIDENTS: &str = r#"# Resident pages on a listener of their own (e.g. on the residents' Wi-Fi), so that
# network need not reach the staff console; without it they are served on [console] bind.
# [residents]
# bind = "0.0.0.0:8081"

"#;

const STORAGE: &str = r#"[storage]
data_dir = "/var/lib/shouwang"
quota_mb = 1024
# Held back and given up when the disk is full, so alarms can still be recorded (0: none).
reserve_mb = 16

[supervision]
# A synthetic reading travels broker → ingest → rules → alert store this often (seconds);
# if one has not come back within the timeout, a red gateway_fault is raised (EN 54-2: a
# fault must show within 100 s).
self_test_period_s = 10
self_test_timeout_s = 60
"#;
