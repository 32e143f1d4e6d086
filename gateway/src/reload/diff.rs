//! What a reload changes: the running configuration against the file, section by section.
//!
//! Pure: no stage is touched here. [`ConfigDiff::between`] says which devices and cameras
//! were added, removed or changed (by id), whether rules, locations, readers or staff
//! changed, and which keys only a restart can apply; [`ConfigDiff::effective`] builds the
//! configuration the gateway runs on after the reload: the file's sections a reload can apply,
//! the running ones for the rest (so nothing half-applies a key that needs a restart).

use std::collections::BTreeMap;

use edge_config::Config;
use serde_json::Value;

/// Ids added, removed and changed in one list (`[[devices]]`, `[[cameras]]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl IdChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Compares two lists of items keyed by their `id` field (serialised forms).
    fn of(old: &[Value], new: &[Value]) -> IdChanges {
        let key = |v: &Value| v.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
        let old: BTreeMap<String, &Value> = old.iter().map(|v| (key(v), v)).collect();
        let new: BTreeMap<String, &Value> = new.iter().map(|v| (key(v), v)).collect();
        let mut c = IdChanges::default();
        for (id, v) in &new {
            match old.get(id) {
                None => c.added.push(id.clone()),
                Some(o) if o != v => c.changed.push(id.clone()),
                Some(_) => {}
            }
        }
        c.removed = old
            .keys()
            .filter(|id| !new.contains_key(*id))
            .cloned()
            .collect();
        c
    }
}

/// The difference between the running configuration and a reloaded one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    pub devices: IdChanges,
    pub cameras: IdChanges,
    /// `[rules]` (thresholds, timing, linkage) changed.
    pub rules: bool,
    /// `[locations]` (buildings, units, areas: alert places and resident notices) changed.
    pub locations: bool,
    /// `[[broker.readers]]` changed (logins of MQTT readers).
    pub readers: bool,
    /// `[[console.staff]]` changed.
    pub staff: bool,
    /// Keys that differ but only a restart applies (`uplink`, `broker.bind`, …), sorted.
    pub restart_needed: Vec<String>,
}

/// Sections a reload applies as a whole.
const APPLIED: [&str; 4] = ["devices", "cameras", "rules", "locations"];
/// Keys of otherwise restart-only sections that a reload applies.
const APPLIED_KEYS: [(&str, &str); 2] = [("broker", "readers"), ("console", "staff")];

impl ConfigDiff {
    /// Compares `old` (running) with `new` (the file).
    pub fn between(old: &Config, new: &Config) -> ConfigDiff {
        let (o, n) = (to_value(old), to_value(new));
        let section = |name: &str| (o.get(name).cloned(), n.get(name).cloned());
        let list = |name: &str| {
            let (a, b) = section(name);
            IdChanges::of(&as_list(a), &as_list(b))
        };
        let key = |s: &str, k: &str| {
            let (a, b) = section(s);
            a.as_ref().and_then(|a| a.get(k)) != b.as_ref().and_then(|b| b.get(k))
        };
        ConfigDiff {
            devices: list("devices"),
            cameras: list("cameras"),
            rules: section("rules").0 != section("rules").1,
            locations: section("locations").0 != section("locations").1,
            readers: key("broker", "readers"),
            staff: key("console", "staff"),
            restart_needed: restart_keys(&o, &n),
        }
    }

    /// Whether the file changes nothing a reload applies (restart-only keys aside).
    pub fn applies_nothing(&self) -> bool {
        self.devices.is_empty()
            && self.cameras.is_empty()
            && !self.rules
            && !self.locations
            && !self.readers
            && !self.staff
    }

    /// What a reload applies, one line each, for the reload's outcome and the log.
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (what, c) in [("device", &self.devices), ("camera", &self.cameras)] {
            out.extend(c.added.iter().map(|id| format!("{what} {id} added")));
            out.extend(c.changed.iter().map(|id| format!("{what} {id} changed")));
            out.extend(c.removed.iter().map(|id| format!("{what} {id} removed")));
        }
        for (changed, what) in [
            (self.rules, "rules (thresholds, timing, linkage) changed"),
            (self.locations, "locations changed"),
            (self.readers, "broker readers changed"),
            (self.staff, "console staff changed"),
        ] {
            if changed {
                out.push(what.to_owned());
            }
        }
        out
    }

    /// The configuration to run on: `new`'s applied sections over `old`.
    pub fn effective(old: &Config, new: &Config) -> Config {
        let mut c = old.clone();
        c.devices = new.devices.clone();
        c.cameras = new.cameras.clone();
        c.rules = new.rules.clone();
        c.locations = new.locations.clone();
        c.broker.readers = new.broker.readers.clone();
        c.console.staff = new.console.staff.clone();
        c
    }
}

fn to_value(c: &Config) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

fn as_list(v: Option<Value>) -> Vec<Value> {
    match v {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

/// Dotted keys (`uplink`, `broker.bind`, …) that differ outside what a reload applies.
fn restart_keys(old: &Value, new: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut out = Vec::new();
    let mut sections: Vec<&String> = o.keys().chain(n.keys()).collect();
    sections.sort();
    sections.dedup();
    for s in sections {
        if APPLIED.contains(&s.as_str()) || o.get(s) == n.get(s) {
            continue;
        }
        let applied: Vec<&str> = APPLIED_KEYS
            .iter()
            .filter(|(sec, _)| sec == s)
            .map(|(_, k)| *k)
            .collect();
        match (o.get(s), n.get(s)) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                out.extend(
                    keys.into_iter()
                        .filter(|k| !applied.contains(&k.as_str()) && a.get(*k) != b.get(*k))
                        .map(|k| format!("{s}.{k}")),
                );
            }
            _ => out.push(s.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[site]
id = "t1"
name = "Test compound"
kind = "compound"

[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 18
[[locations.buildings.units]]
id = "u1"
name = "1单元"

[[devices]]
id = "b1-smoke"
kind = "smoke"
location = { building = "b1", unit = "u1", floor = 3, room = "301" }

[[devices]]
id = "b1-gas"
kind = "gas"
location = { building = "b1", unit = "u1", floor = 5, room = "501" }
"#;

    fn parse(text: &str) -> Config {
        edge_config::parse(text, "t.toml", Path::new(".")).expect("valid test config")
    }

    #[test]
    fn an_identical_file_changes_nothing() {
        let d = ConfigDiff::between(&parse(BASE), &parse(BASE));
        assert!(d.applies_nothing());
        assert!(d.restart_needed.is_empty());
        assert!(d.summary().is_empty());
    }

    #[test]
    fn devices_are_compared_by_id_whatever_their_order() {
        let old = parse(BASE);
        // b1-gas moved first with a new room, b1-smoke removed, b1-leak added.
        let new = parse(&format!(
            "{}\n{}",
            BASE.split("[[devices]]").next().unwrap(),
            r#"
[[devices]]
id = "b1-gas"
kind = "gas"
location = { building = "b1", unit = "u1", floor = 5, room = "502" }

[[devices]]
id = "b1-leak"
kind = "water_leak"
location = { building = "b1", unit = "u1", floor = 1, room = "pump" }
"#
        ));
        let d = ConfigDiff::between(&old, &new);
        assert_eq!(d.devices.added, ["b1-leak"]);
        assert_eq!(d.devices.removed, ["b1-smoke"]);
        assert_eq!(d.devices.changed, ["b1-gas"]);
        assert!(!d.rules && !d.locations && d.restart_needed.is_empty());
        assert_eq!(
            d.summary(),
            [
                "device b1-leak added",
                "device b1-gas changed",
                "device b1-smoke removed"
            ]
        );
    }

    #[test]
    fn a_threshold_is_applied_and_a_new_broker_bind_or_uplink_needs_a_restart() {
        let new = parse(&format!(
            "{BASE}\n[rules.gas]\nhigh_lel_pct = 15.0\n\n[broker]\nbind = \"127.0.0.1:18830\"\n\n[console]\nbind = \"127.0.0.1:18080\"\n"
        ));
        let d = ConfigDiff::between(&parse(BASE), &new);
        assert!(d.rules);
        assert_eq!(d.restart_needed, ["broker.bind", "console.bind"]);
        let running = ConfigDiff::effective(&parse(BASE), &new);
        assert_eq!(running.rules.gas.high_lel_pct, 15.0);
        assert_eq!(
            running.broker.bind,
            parse(BASE).broker.bind,
            "a restart-only key keeps its running value"
        );
    }

    #[test]
    fn staff_and_readers_are_applied_inside_sections_that_otherwise_need_a_restart() {
        let new = parse(&format!(
            "{BASE}\n[[console.staff]]\nusername = \"duty\"\ndisplay_name = \"Duty\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk\"\nrole = \"admin\"\n"
        ));
        let d = ConfigDiff::between(&parse(BASE), &new);
        assert!(d.staff);
        assert!(d.restart_needed.is_empty(), "{:?}", d.restart_needed);
        assert_eq!(
            ConfigDiff::effective(&parse(BASE), &new)
                .console
                .staff
                .len(),
            1
        );
    }
}
