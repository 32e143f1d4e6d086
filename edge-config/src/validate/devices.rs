//! `[broker]` and `[[devices]]`.

use super::places::check_location;
use super::{filter_problem, topic_problem, Problems};
use crate::hints::{did_you_mean, list};
use crate::model::{BrokerMode, Config, Device, DeviceKind, Field, PayloadFormat};
use crate::path::KeyPath;
use std::collections::HashMap;

pub(super) fn check_broker(config: &Config, p: &mut Problems) {
    let b = &config.broker;
    let at = KeyPath::of("broker");
    match b.mode {
        BrokerMode::Embedded => {
            if b.external.is_some() {
                p.push(
                    at.key("external"),
                    "[broker.external] is only used with mode = \"external\"; set broker.mode = \"external\" or remove this table",
                );
            }
            if let Some(tls) = &b.tls {
                p.file(at.key("tls").key("cert"), &tls.cert);
                p.file(at.key("tls").key("key"), &tls.key);
            }
            if b.v5_bind.is_some() && b.v5_bind == Some(b.bind_addr()) {
                p.push(
                    at.key("v5_bind"),
                    "v5_bind is the same address as bind; use another port, e.g. 0.0.0.0:1884",
                );
            }
            // Port 0 picks a free port per listener: no clash.
            let tls_bind = b.tls_bind_addr().filter(|a| a.port() != 0);
            if tls_bind.is_some() && (tls_bind == Some(b.bind_addr()) || tls_bind == b.v5_bind) {
                p.push(
                    at.key("tls"),
                    "the TLS listener has the same address as bind or v5_bind; use another port, e.g. bind = \"0.0.0.0:8883\"",
                );
            }
            check_readers(config, p);
            check_logins(config, p);
            check_compounds(config, p);
        }
        BrokerMode::External => {
            check_external(config, p);
            if !config.compounds.is_empty() {
                p.push(
                    KeyPath::of("compounds"),
                    "compounds log in to the gateway's own broker: they need broker.mode = \"embedded\"",
                );
            }
        }
    }
}

/// `[[compounds]]`: site ids (not this gateway's), names, one password source, logins of
/// their own (no device's or reader's), unique.
fn check_compounds(config: &Config, p: &mut Problems) {
    let at = KeyPath::of("compounds");
    let taken: std::collections::HashSet<&str> = config
        .devices
        .iter()
        .filter_map(|d| d.username.as_deref())
        .chain(config.broker.readers.iter().map(|r| r.username.as_str()))
        .collect();
    for (i, c) in config.compounds.iter().enumerate() {
        let at = at.index(i);
        p.id(at.key("id"), &c.id);
        if c.id == config.site.id {
            p.push(
                at.key("id"),
                "a compound's id is its own site.id, not this gateway's",
            );
        }
        p.not_blank(at.key("name"), &c.name, "\"幸福里小区\"");
        p.not_blank(at.key("username"), &c.username, "\"compound-xingfuli\"");
        if taken.contains(c.username.as_str()) {
            p.push(
                at.key("username"),
                "this login is a device's or a reader's; give the compound one of its own",
            );
        }
        match (&c.password, &c.password_file) {
            (Some(_), Some(_)) => p.push(
                at.key("password_file"),
                "set either `password` or `password_file`, not both",
            ),
            (None, None) => p.push(
                at.clone(),
                "a compound needs password = \"…\" or password_file = \"…\"",
            ),
            (None, Some(file)) => p.file(at.key("password_file"), file),
            (Some(_), None) => {}
        }
        p.range(at.key("offline_after_s"), c.offline_after_s, 30, 3600);
        if let Some(url) = &c.evidence_url {
            let ok = url
                .strip_prefix("http://")
                .map(|rest| rest.trim_end_matches('/'))
                .is_some_and(|hp| {
                    !hp.is_empty()
                        && !hp.contains('/')
                        && hp.rsplit_once(':').is_some_and(|(h, p)| {
                            !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                        })
                });
            if !ok {
                p.push(
                    at.key("evidence_url"),
                    "write the compound console's address as http://HOST:PORT, e.g. \"http://10.20.0.5:8080\"",
                );
            }
        }
    }
    let list = config.compounds.iter().enumerate();
    p.unique(
        "compound id",
        list.clone()
            .map(|(i, c)| (at.index(i).key("id"), c.id.as_str())),
    );
    p.unique(
        "compound username",
        list.map(|(i, c)| (at.index(i).key("username"), c.username.as_str())),
    );
}

/// `[[broker.readers]]`: a name, one password source, valid filters.
fn check_readers(config: &Config, p: &mut Problems) {
    for (i, r) in config.broker.readers.iter().enumerate() {
        let at = KeyPath::of("broker").key("readers").index(i);
        p.not_blank(at.key("username"), &r.username, "\"resident-display-b1\"");
        match (&r.password, &r.password_file) {
            (Some(_), Some(_)) => p.push(
                at.key("password_file"),
                "set either `password` or `password_file`, not both",
            ),
            (None, None) => p.push(
                at.clone(),
                "a reader needs password = \"…\" or password_file = \"…\"",
            ),
            (None, Some(file)) => p.file(at.key("password_file"), file),
            (Some(_), None) => {}
        }
        if r.topics.is_empty() {
            p.push(
                at.key("topics"),
                "list the topic filters this login may read, e.g. topics = [\"residents/b1/#\"]",
            );
        }
        for (j, filter) in r.topics.iter().enumerate() {
            if let Some(problem) = filter_problem(filter) {
                p.push(at.key("topics").index(j), problem);
            }
        }
    }
}

/// Logins are unambiguous (one password per device username, readers distinct from
/// devices), consistent with `require_auth`, and a broker reachable from the network
/// does not take anonymous clients unless `allow_anonymous = true` says so.
fn check_logins(config: &Config, p: &mut Problems) {
    let b = &config.broker;
    let at = KeyPath::of("broker");
    let mut device_password: HashMap<&str, Option<&str>> = HashMap::new();
    for (i, d) in config.devices.iter().enumerate() {
        let Some(user) = d.username.as_deref() else {
            continue;
        };
        match device_password.get(user) {
            Some(first) if *first != d.password.as_deref() => p.push(
                KeyPath::of("devices").index(i).key("password"),
                format!("devices sharing username \"{user}\" must share its password"),
            ),
            Some(_) => {}
            None => {
                device_password.insert(user, d.password.as_deref());
            }
        }
    }
    let readers = b.readers.iter().enumerate();
    p.unique(
        "reader username",
        readers.map(|(i, r)| {
            (
                at.key("readers").index(i).key("username"),
                r.username.as_str(),
            )
        }),
    );
    for (i, r) in b.readers.iter().enumerate() {
        if device_password.contains_key(r.username.as_str()) {
            p.push(
                at.key("readers").index(i).key("username"),
                format!(
                    "\"{}\" is a device's username; give the reader a login of its own",
                    r.username
                ),
            );
        }
    }
    if b.allow_anonymous && b.require_auth {
        p.push(
            at.key("allow_anonymous"),
            "allow_anonymous contradicts require_auth = true; remove one of them",
        );
    }
    check_exposure(config, p);
}

/// A non-loopback listener without device logins needs `allow_anonymous = true`.
fn check_exposure(config: &Config, p: &mut Problems) {
    let b = &config.broker;
    if b.allow_anonymous || !config.broker_accepts_anonymous() {
        return;
    }
    let listeners = [
        ("bind", Some(b.bind_addr())),
        ("v5_bind", b.v5_bind),
        ("tls", b.tls_bind_addr()),
    ];
    let exposed = listeners
        .into_iter()
        .find_map(|(key, addr)| addr.filter(|a| !a.ip().is_loopback()).map(|a| (key, a)));
    if let Some((key, addr)) = exposed {
        p.push(
            KeyPath::of("broker").key(key),
            format!(
                "the broker listens on {addr}, reachable from the network, and no device has a login: \
                 anyone there could publish alarms or all-clears. Set require_auth = true and give \
                 every device username = \"…\" and password = \"…\", or bind 127.0.0.1, or write \
                 allow_anonymous = true to accept that risk"
            ),
        );
    }
}

fn check_external(config: &Config, p: &mut Problems) {
    let b = &config.broker;
    let at = KeyPath::of("broker");
    let embedded_only = [
        ("bind", b.bind.is_some()),
        ("v5_bind", b.v5_bind.is_some()),
        ("tls", b.tls.is_some()),
        ("require_auth", b.require_auth),
        ("allow_anonymous", b.allow_anonymous),
        ("readers", !b.readers.is_empty()),
    ];
    for (key, set) in embedded_only {
        if set {
            p.push(
                at.key(key),
                format!("`{key}` only applies to the embedded broker; remove it (mode = \"external\") or set mode = \"embedded\""),
            );
        }
    }
    let Some(ext) = &b.external else {
        p.push(
            at.key("mode"),
            "mode = \"external\" needs a [broker.external] table with at least host = \"…\"",
        );
        return;
    };
    let at = at.key("external");
    p.not_blank(at.key("host"), &ext.host, "\"192.0.2.10\"");
    if ext.password.is_some() && ext.password_file.is_some() {
        p.push(
            at.key("password_file"),
            "set either `password` or `password_file`, not both",
        );
    } else if let Some(file) = &ext.password_file {
        p.file(at.key("password_file"), file);
    }
    if let Some(tls) = &ext.tls {
        p.file(at.key("tls").key("ca"), &tls.ca);
    }
}

pub(super) fn check_devices(config: &Config, p: &mut Problems) {
    for (i, d) in config.devices.iter().enumerate() {
        check_device(config, d, &KeyPath::of("devices").index(i), p);
    }
    let ids = config.devices.iter().enumerate();
    p.unique(
        "device id",
        ids.map(|(i, d)| (KeyPath::of("devices").index(i).key("id"), d.id.as_str())),
    );
    check_topics_unique(config, p);
    check_under_zigbee_devices(config, p);
}

/// A topic under a zigbee2mqtt device's `zigbee2mqtt/{name}/…` is that device's property
/// topic (`output: attribute`, `/action`) as much as another device's: `floor2/bath` next to
/// `floor2` makes `zigbee2mqtt/floor2/bath` mean two things, and the first device's property
/// topics could not get a broker log of their own. Refused, naming both.
fn check_under_zigbee_devices(config: &Config, p: &mut Problems) {
    let zigbee: HashMap<String, &Device> = config
        .devices
        .iter()
        .filter(|d| d.format == PayloadFormat::Zigbee2mqtt)
        .map(|d| (d.state_topic(), d))
        .collect();
    for (i, d) in config.devices.iter().enumerate() {
        let topic = d.state_topic();
        let owner = ancestors(&topic).find_map(|a| zigbee.get(a).filter(|o| o.id != d.id));
        let Some(owner) = owner else {
            continue;
        };
        let at = KeyPath::of("devices").index(i);
        let key = match (&d.topic, &d.friendly_name) {
            (Some(_), _) => at.key("topic"),
            (None, Some(_)) => at.key("friendly_name"),
            (None, None) => at.key("id"),
        };
        p.push(
            key,
            format!(
                "topic \"{topic}\" lies under zigbee2mqtt device \"{}\" (\"{}/…\" are its property topics); rename one so that neither name is a level of the other (e.g. \"{}/hall\" for \"{}\")",
                owner.id,
                owner.state_topic(),
                owner.friendly_name(),
                owner.friendly_name()
            ),
        );
    }
}

/// `a/b/c` → `a/b`, `a`.
fn ancestors(topic: &str) -> impl Iterator<Item = &str> {
    topic.rmatch_indices('/').map(move |(i, _)| &topic[..i])
}

fn check_device(config: &Config, d: &Device, at: &KeyPath, p: &mut Problems) {
    p.id(at.key("id"), &d.id);
    check_location(config, &d.location, &at.key("location"), p);
    if let Some(topic) = &d.topic {
        if let Some(problem) = topic_problem(topic) {
            p.push(at.key("topic"), problem);
        }
    }
    if let Some(name) = &d.friendly_name {
        if d.format != PayloadFormat::Zigbee2mqtt {
            p.push(
                at.key("friendly_name"),
                "friendly_name only applies to format = \"zigbee2mqtt\"; remove it or set the format",
            );
        } else if name.trim().is_empty() || name.contains(['+', '#']) {
            p.push(
                at.key("friendly_name"),
                "write the device's zigbee2mqtt friendly name, without '+' or '#'",
            );
        }
    }
    if let Some(hb) = d.heartbeat_s {
        p.range(at.key("heartbeat_s"), hb, 10, 86_400);
    }
    check_credentials(config, d, at, p);
    check_fields(d, at, p);
    check_plug_link(config, d, at, p);
}

/// `model` (zigbee2mqtt only) and `fields` (each reading fits the kind, each key is a
/// plain payload key).
fn check_fields(d: &Device, at: &KeyPath, p: &mut Problems) {
    if let Some(model) = &d.model {
        if d.format != PayloadFormat::Zigbee2mqtt {
            p.push(
                at.key("model"),
                "model only applies to format = \"zigbee2mqtt\"; remove it or set the format",
            );
        } else if model.trim().is_empty() {
            p.push(
                at.key("model"),
                "write the Zigbee2MQTT model (as zigbee2mqtt/bridge/devices lists it), or remove it",
            );
        }
    }
    for (field, key) in &d.fields {
        let here = at.key("fields").key(field.as_str());
        if !field.applies_to(d.kind) {
            let fitting: Vec<&str> = Field::ALL
                .iter()
                .filter(|f| f.applies_to(d.kind))
                .map(|f| f.as_str())
                .collect();
            p.push(
                here,
                format!(
                    "a {} device has no `{field}` reading; it takes: {}",
                    d.kind,
                    fitting.join(", ")
                ),
            );
        } else if key.trim().is_empty() || key.contains(['/', '+', '#']) || key != key.trim() {
            p.push(
                here,
                format!(
                    "\"{key}\" is not a payload key: write the key of the device's JSON that carries {field}, e.g. \"gas_value\""
                ),
            );
        }
    }
}

/// `plug` (ebike_battery only) names a smart plug.
fn check_plug_link(config: &Config, d: &Device, at: &KeyPath, p: &mut Problems) {
    let Some(plug) = &d.plug else {
        return;
    };
    let plugs: Vec<&str> = config
        .devices_of(DeviceKind::SmartPlug)
        .map(|d| d.id.as_str())
        .collect();
    if d.kind != DeviceKind::EbikeBattery {
        p.push(
            at.key("plug"),
            format!(
                "plug only applies to ebike_battery devices (the plug its charger is on); remove it from this {}",
                d.kind
            ),
        );
    } else if !plugs.contains(&plug.as_str()) {
        p.push(
            at.key("plug"),
            format!(
                "\"{plug}\" is not a smart_plug device{}; smart_plug devices: {}",
                did_you_mean(plug, plugs.iter().copied()),
                list(plugs.iter().copied())
            ),
        );
    }
}

fn check_credentials(config: &Config, d: &Device, at: &KeyPath, p: &mut Problems) {
    let external = config.broker.mode == BrokerMode::External;
    match (&d.username, &d.password) {
        (Some(_), Some(_)) | (None, None) => {}
        (Some(_), None) => p.push(
            at.key("username"),
            "username without password; add password = \"…\"",
        ),
        (None, Some(_)) => p.push(
            at.key("password"),
            "password without username; add username = \"…\"",
        ),
    }
    let has_any = d.username.is_some() || d.password.is_some();
    if external && has_any {
        let key = if d.username.is_some() {
            "username"
        } else {
            "password"
        };
        p.push(
            at.key(key),
            "device credentials are for the embedded broker; remove them (mode = \"external\") or use the embedded broker",
        );
    } else if !external && config.broker.require_auth && !has_any {
        p.push(
            at.clone(),
            "broker.require_auth is true: give this device username = \"…\" and password = \"…\"",
        );
    }
}

fn check_topics_unique(config: &Config, p: &mut Problems) {
    let mut first: HashMap<String, (usize, &str)> = HashMap::new();
    for (i, d) in config.devices.iter().enumerate() {
        let topic = d.state_topic();
        let at = KeyPath::of("devices").index(i);
        if let Some((j, other)) = first.get(&topic) {
            if *other == d.id && d.topic.is_none() {
                continue; // reported as a duplicate id
            }
            let key = if d.topic.is_some() {
                at.key("topic")
            } else {
                at.key("id")
            };
            p.push(
                key,
                format!(
                    "topic \"{topic}\" is also used by device \"{other}\" (devices[{j}]); give this device its own `topic`"
                ),
            );
        } else {
            first.insert(topic, (i, &d.id));
        }
    }
}
