//! `gateway config init`: a commented starter configuration that is valid
//! as it stands and shows installers where to fill in their site.

use crate::model::SiteKind;

/// A commented, valid starter configuration for a site.
///
/// `site_id` should pass [`crate::id_problem`]; if it does not, the text
/// still parses but validation reports `site.id`.
pub fn starter(site_id: &str, kind: SiteKind) -> String {
    let id = toml::Value::String(site_id.to_string()).to_string();
    let (kind_name, body) = match kind {
        SiteKind::Compound => ("compound", COMPOUND),
        SiteKind::StreetStation => ("street_station", STATION),
    };
    format!("{HEADER}{}{body}{FOOTER}", site(&id, kind_name))
}

fn site(id: &str, kind: &str) -> String {
    format!(
        r#"[site]
id = {id}
name = {id}  # TODO: the site's name, e.g. "幸福里小区 (Xingfuli compound)"
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

# Devices: kind = smoke | heat | water_leak | gas | ebike_battery | sos |
# siren | valve | pa_speaker; format = native (sensors/{id}/state) or
# zigbee2mqtt (zigbee2mqtt/{friendly_name}).
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

const STATION: &str = r#"# The station building and named areas. Floor 1 is the ground floor.
[[locations.buildings]]
id = "station"
name = "派出所办公楼 (Station building)"
floors = 3

[[locations.areas]]
id = "reception"
name = "接警大厅 (Reception hall)"
kind = "lobby"
building = "station"
floor = 1

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

# Devices: kind = smoke | heat | water_leak | gas | ebike_battery | sos |
# siren | valve | pa_speaker.
[[devices]]
id = "reception-smoke"
kind = "smoke"
location = { area = "reception" }

[[devices]]
id = "reception-sos"
kind = "sos"
location = { area = "reception" }

[[devices]]
id = "records-room-smoke"
kind = "smoke"
location = { building = "station", floor = 2, room = "档案室 records" }

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
id = "cam-yard"
url = "rtsp://127.0.0.1:8554/yard"       # TODO: the camera's stream
location = { area = "yard" }

[[cameras.zones]]
id = "shed"
polygon = [[0.1, 0.4], [0.9, 0.4], [0.9, 1.0], [0.1, 1.0]]

[[cameras.rules]]
kind = "intrusion"
zone = "shed"
window = { from = "23:00", to = "05:00" }

"#;

const FOOTER: &str = r#"# Upstream platform (uncomment and fill in). Production uses TLS:
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

# Resident pages on a listener of their own (e.g. on the residents' Wi-Fi), so that
# network need not reach the staff console; without it they are served on [console] bind.
# [residents]
# bind = "0.0.0.0:8081"

[storage]
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
