//! What the gateway announces: one [`Entity`] per Home Assistant entity, its discovery
//! topic, unique id and config payload (full key names, no abbreviations).
//!
//! # Ids
//!
//! - discovery topic: `{prefix}/{component}/shouwang_{site}/{object_id}/config`;
//! - `object_id`: `{source}_{id}_{entity}`, with `source` one of `device`, `camera`,
//!   `gateway` (the gateway's `id` is the site id) and `entity` a name without `_` (`alarm`,
//!   `battery`, `plugtemp`…). Ids are `[a-z0-9_-]`, so the first `_`-level is the source,
//!   the last the entity and the rest the id: two entities never share an object id;
//! - `unique_id`: `shouwang_{site}_{object_id}`;
//! - device registry identifiers: `shouwang_{site}_device_{id}`, `shouwang_{site}_camera_{id}`,
//!   `shouwang_{site}_gateway` (every device and camera is `via_device` the gateway).

use edge_config::{Config, Device, DeviceKind};
use serde_json::{json, Map, Value};

/// Manufacturer shown in Home Assistant's device registry.
pub const MANUFACTURER: &str = "shouwang";

/// A Home Assistant platform the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    BinarySensor,
    Sensor,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::BinarySensor => "binary_sensor",
            Component::Sensor => "sensor",
        }
    }
}

/// Who an entity belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Device { id: String, kind: DeviceKind },
    Camera(String),
    Gateway,
}

/// How one reading is shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure {
    /// The entity name (no `_`) and the key of the state JSON.
    pub key: &'static str,
    pub name: &'static str,
    pub component: Component,
    pub device_class: Option<&'static str>,
    pub unit: Option<&'static str>,
    pub state_class: Option<&'static str>,
    pub diagnostic: bool,
}

const fn sensor(
    key: &'static str,
    name: &'static str,
    class: Option<&'static str>,
    unit: Option<&'static str>,
) -> Measure {
    Measure {
        key,
        name,
        component: Component::Sensor,
        device_class: class,
        unit,
        state_class: Some("measurement"),
        diagnostic: false,
    }
}

pub const BATTERY: Measure = Measure {
    diagnostic: true,
    ..sensor("battery", "Battery", Some("battery"), Some("%"))
};
pub const TEMPERATURE: Measure = sensor(
    "temperature",
    "Temperature",
    Some("temperature"),
    Some("°C"),
);
/// %LEL has no Home Assistant device class (its `gas` class is a metered volume).
pub const LEL: Measure = sensor("lel", "Gas concentration", None, Some("%LEL"));
pub const CO: Measure = sensor(
    "co",
    "Carbon monoxide",
    Some("carbon_monoxide"),
    Some("ppm"),
);
pub const BATTERY_TEMP: Measure = sensor(
    "batterytemp",
    "Battery temperature",
    Some("temperature"),
    Some("°C"),
);
pub const VOLTAGE: Measure = sensor("voltage", "Voltage", Some("voltage"), Some("V"));
pub const CURRENT: Measure = sensor("current", "Current", Some("current"), Some("A"));
pub const POWER: Measure = sensor("power", "Power", Some("power"), Some("W"));
pub const ENERGY: Measure = Measure {
    state_class: Some("total_increasing"),
    ..sensor("energy", "Energy", Some("energy"), Some("kWh"))
};
pub const PLUG_TEMP: Measure = sensor(
    "plugtemp",
    "Plug temperature",
    Some("temperature"),
    Some("°C"),
);
pub const PERSONS: Measure = sensor("persons", "People in view", None, None);
pub const TWO_WHEELERS: Measure = sensor("twowheelers", "Bicycles and e-bikes in view", None, None);
pub const UPLINK: Measure = Measure {
    key: "uplink",
    name: "Platform link",
    component: Component::BinarySensor,
    device_class: Some("connectivity"),
    unit: None,
    state_class: None,
    diagnostic: true,
};
pub const BACKLOG: Measure = Measure {
    diagnostic: true,
    ..sensor("backlog", "Outbox backlog", None, None)
};
pub const ACTIVE_ALERTS: Measure = sensor("alerts", "Active alerts", None, None);
pub const FAULT: Measure = Measure {
    key: "fault",
    name: "Fault",
    component: Component::BinarySensor,
    device_class: Some("problem"),
    unit: None,
    state_class: None,
    diagnostic: false,
};

/// The alarm binary sensor's device class for a hazard device kind; `None` for actuators
/// (they are not announced). E-bike batteries: their alerts are over-temperature, fast rise
/// and thermal runaway, so `heat`. Smart plugs: over-current, overheating, charging past
/// the limit — a fault of the circuit rather than one physical hazard, so `problem`.
pub fn alarm_class(kind: DeviceKind) -> Option<&'static str> {
    Some(match kind {
        DeviceKind::Smoke => "smoke",
        DeviceKind::Heat => "heat",
        DeviceKind::WaterLeak => "moisture",
        DeviceKind::Gas => "gas",
        DeviceKind::CarbonMonoxide => "carbon_monoxide",
        DeviceKind::Sos => "safety",
        DeviceKind::EbikeBattery => "heat",
        DeviceKind::SmartPlug => "problem",
        DeviceKind::Siren | DeviceKind::Valve | DeviceKind::PaSpeaker => return None,
    })
}

/// The readings a device of `kind` has in Home Assistant (only what the kind measures;
/// mains-powered plugs have no battery).
pub fn measures(kind: DeviceKind) -> &'static [Measure] {
    match kind {
        DeviceKind::Smoke | DeviceKind::Heat => &[BATTERY, TEMPERATURE],
        DeviceKind::Gas => &[BATTERY, LEL],
        DeviceKind::CarbonMonoxide => &[BATTERY, CO],
        DeviceKind::WaterLeak | DeviceKind::Sos => &[BATTERY],
        DeviceKind::EbikeBattery => &[BATTERY, BATTERY_TEMP, VOLTAGE, CURRENT],
        DeviceKind::SmartPlug => &[POWER, CURRENT, VOLTAGE, ENERGY, PLUG_TEMP],
        DeviceKind::Siren | DeviceKind::Valve | DeviceKind::PaSpeaker => &[],
    }
}

/// One announced entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub owner: Owner,
    pub measure: Measure,
}

/// Topics and names of one site's announcements.
#[derive(Debug, Clone)]
pub struct Naming {
    pub prefix: String,
    pub site: String,
}

impl Naming {
    pub fn new(config: &Config) -> Self {
        Naming {
            prefix: config.homeassistant.prefix.clone(),
            site: config.site.id.clone(),
        }
    }

    /// `shouwang_{site}`: the discovery node id of every entity of this site.
    pub fn node_id(&self) -> String {
        format!("shouwang_{}", self.site)
    }

    /// The filter of every discovery config this site's gateway may have announced.
    pub fn config_filter(&self) -> String {
        format!("{}/+/{}/+/config", self.prefix, self.node_id())
    }

    /// Home Assistant's birth/last-will topic.
    pub fn ha_status_topic(&self) -> String {
        format!("{}/status", self.prefix)
    }

    /// The gateway's own availability topic (`online`/`offline`, retained).
    pub fn availability_topic(&self) -> String {
        format!("shouwang/{}/ha/availability", self.site)
    }

    /// Where the gateway publishes the state an owner's entities read.
    pub fn state_topic(&self, owner: &Owner) -> String {
        match owner {
            Owner::Device { id, .. } => format!("shouwang/{}/ha/device/{id}/state", self.site),
            Owner::Camera(id) => format!("shouwang/{}/ha/camera/{id}/state", self.site),
            Owner::Gateway => format!("shouwang/{}/ha/gateway/state", self.site),
        }
    }

    pub fn object_id(&self, e: &Entity) -> String {
        let key = e.measure.key;
        match &e.owner {
            Owner::Device { id, .. } => format!("device_{id}_{key}"),
            Owner::Camera(id) => format!("camera_{id}_{key}"),
            Owner::Gateway => format!("gateway_{}_{key}", self.site),
        }
    }

    pub fn unique_id(&self, e: &Entity) -> String {
        format!("shouwang_{}_{}", self.site, self.object_id(e))
    }

    pub fn config_topic(&self, e: &Entity) -> String {
        format!(
            "{}/{}/{}/{}/config",
            self.prefix,
            e.measure.component.as_str(),
            self.node_id(),
            self.object_id(e)
        )
    }

    fn gateway_identifier(&self) -> String {
        format!("shouwang_{}_gateway", self.site)
    }

    fn identifier(&self, owner: &Owner) -> String {
        match owner {
            Owner::Device { id, .. } => format!("shouwang_{}_device_{id}", self.site),
            Owner::Camera(id) => format!("shouwang_{}_camera_{id}", self.site),
            Owner::Gateway => self.gateway_identifier(),
        }
    }
}

/// Every entity `config` announces: each hazard device's alarm and readings, each enabled
/// camera's counts, and the gateway's own (uplink and backlog only with an `[uplink]`).
pub fn entities(config: &Config) -> Vec<Entity> {
    let mut out = Vec::new();
    for d in &config.devices {
        out.extend(device_entities(d));
    }
    for c in config.cameras.iter().filter(|c| c.enabled) {
        for m in [PERSONS, TWO_WHEELERS] {
            out.push(Entity {
                owner: Owner::Camera(c.id.clone()),
                measure: m,
            });
        }
    }
    let mut gateway = vec![ACTIVE_ALERTS, FAULT];
    if config.uplink.is_some() {
        gateway.extend([UPLINK, BACKLOG]);
    }
    out.extend(gateway.into_iter().map(|m| Entity {
        owner: Owner::Gateway,
        measure: m,
    }));
    out
}

fn device_entities(d: &Device) -> Vec<Entity> {
    let Some(class) = alarm_class(d.kind) else {
        return Vec::new();
    };
    let owner = Owner::Device {
        id: d.id.clone(),
        kind: d.kind,
    };
    let alarm = Measure {
        key: "alarm",
        name: "Alarm",
        component: Component::BinarySensor,
        device_class: Some(class),
        unit: None,
        state_class: None,
        diagnostic: false,
    };
    std::iter::once(alarm)
        .chain(measures(d.kind).iter().copied())
        .map(|measure| Entity {
            owner: owner.clone(),
            measure,
        })
        .collect()
}

/// The discovery config payload of `e`.
pub fn config_payload(config: &Config, naming: &Naming, e: &Entity) -> Value {
    let m = &e.measure;
    let state_topic = naming.state_topic(&e.owner);
    let mut p = Map::new();
    p.insert("name".into(), json!(m.name));
    p.insert("unique_id".into(), json!(naming.unique_id(e)));
    p.insert("object_id".into(), json!(naming.object_id(e)));
    p.insert("state_topic".into(), json!(state_topic));
    p.insert(
        "value_template".into(),
        json!(format!("{{{{ value_json.{} }}}}", m.key)),
    );
    p.insert("availability".into(), availability(naming, &e.owner));
    p.insert("availability_mode".into(), json!("all"));
    p.insert("device".into(), device_block(config, naming, &e.owner));
    p.insert(
        "origin".into(),
        json!({ "name": "shouwang gateway", "sw_version": env!("CARGO_PKG_VERSION") }),
    );
    if let Some(c) = m.device_class {
        p.insert("device_class".into(), json!(c));
    }
    if let Some(u) = m.unit {
        p.insert("unit_of_measurement".into(), json!(u));
    }
    if let Some(s) = m.state_class {
        p.insert("state_class".into(), json!(s));
    }
    if m.diagnostic {
        p.insert("entity_category".into(), json!("diagnostic"));
    }
    if m.component == Component::BinarySensor {
        p.insert("payload_on".into(), json!("ON"));
        p.insert("payload_off".into(), json!("OFF"));
    }
    if m.key == "alarm" {
        // Level, alert id and kind of the active alert as attributes.
        p.insert("json_attributes_topic".into(), json!(state_topic));
        p.insert(
            "json_attributes_template".into(),
            json!("{{ value_json.alert | tojson }}"),
        );
    }
    p.insert("qos".into(), json!(1));
    Value::Object(p)
}

/// The gateway's availability, and for devices and cameras also their own (offline while a
/// `device_offline` / `camera_down` alert is active): all must be `online`.
fn availability(naming: &Naming, owner: &Owner) -> Value {
    let mut list = vec![json!({ "topic": naming.availability_topic() })];
    if !matches!(owner, Owner::Gateway) {
        list.push(json!({
            "topic": naming.state_topic(owner),
            "value_template": "{{ value_json.available }}",
        }));
    }
    Value::Array(list)
}

fn device_block(config: &Config, naming: &Naming, owner: &Owner) -> Value {
    let identifiers = vec![naming.identifier(owner)];
    match owner {
        Owner::Device { id, kind } => {
            let d = config.device(id);
            let name = d.and_then(|d| d.name.clone()).unwrap_or_else(|| id.clone());
            json!({
                "identifiers": identifiers,
                "name": name,
                "manufacturer": MANUFACTURER,
                "model": kind.as_str(),
                "via_device": naming.gateway_identifier(),
            })
        }
        Owner::Camera(id) => {
            let name = config
                .camera(id)
                .and_then(|c| c.name.clone())
                .unwrap_or_else(|| id.clone());
            json!({
                "identifiers": identifiers,
                "name": name,
                "manufacturer": MANUFACTURER,
                "model": "camera",
                "via_device": naming.gateway_identifier(),
            })
        }
        Owner::Gateway => json!({
            "identifiers": identifiers,
            "name": config.site.name.clone(),
            "manufacturer": MANUFACTURER,
            "model": "gateway",
            "sw_version": env!("CARGO_PKG_VERSION"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_of_different_entities_never_collide_even_when_ids_contain_entity_names() {
        let naming = Naming {
            prefix: "homeassistant".into(),
            site: "s".into(),
        };
        let dev = |id: &str, m: Measure| Entity {
            owner: Owner::Device {
                id: id.into(),
                kind: DeviceKind::EbikeBattery,
            },
            measure: m,
        };
        let a = naming.object_id(&dev("x_battery", TEMPERATURE));
        let b = naming.object_id(&dev("x", BATTERY_TEMP));
        assert_ne!(a, b);
        for m in [
            BATTERY,
            TEMPERATURE,
            LEL,
            CO,
            BATTERY_TEMP,
            VOLTAGE,
            CURRENT,
            POWER,
            ENERGY,
            PLUG_TEMP,
            PERSONS,
            TWO_WHEELERS,
            UPLINK,
            BACKLOG,
            ACTIVE_ALERTS,
            FAULT,
        ] {
            assert!(!m.key.contains('_') && !m.key.contains('-'), "{}", m.key);
        }
    }
}
