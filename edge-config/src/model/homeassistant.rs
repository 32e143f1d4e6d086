//! `[homeassistant]`: Home Assistant MQTT discovery.

use serde::{Deserialize, Serialize};

/// `[homeassistant]`: announce the gateway's devices, cameras and itself to Home Assistant
/// through MQTT discovery (retained config messages under `prefix`), with the gateway's
/// own judgement (alert active or not) and readings as their state.
///
/// Discovery goes to the broker the sensors use: the embedded one, or `[broker.external]`
/// with `broker.mode = "external"`. Home Assistant connects there (on the embedded broker
/// as a `[[broker.readers]]` login reading `{prefix}/#` and `shouwang/#`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistant {
    /// Announce to Home Assistant. Default false.
    pub enabled: bool,
    /// Home Assistant's discovery prefix (its MQTT integration's setting): a topic without
    /// `+`, `#`, spaces or a leading/trailing `/`. Default `"homeassistant"`.
    pub prefix: String,
    /// A device's readings are published at most once per this many seconds (1..=3600);
    /// a change of its alert state is published at once. Default 10.
    pub readings_interval_s: u32,
}

impl Default for HomeAssistant {
    fn default() -> Self {
        Self {
            enabled: false,
            prefix: "homeassistant".to_owned(),
            readings_interval_s: 10,
        }
    }
}
