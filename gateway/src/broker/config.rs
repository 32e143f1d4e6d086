//! The embedded broker's settings from the gateway configuration (`[broker]`, the devices'
//! logins, `[[broker.readers]]`).

use std::collections::HashMap;

use edge_config::Config;

use super::{AccessRules, BrokerSettings, TlsFiles, MAX_RETAINED_MESSAGES};

/// Retained messages allowed per device on top of [`MAX_RETAINED_MESSAGES`] (state and
/// availability, say).
const RETAINED_PER_DEVICE: usize = 4;

impl BrokerSettings {
    /// Listeners, logins (devices and readers), access
    /// rules ([`AccessRules::from_config`]) and limits for `config`'s embedded broker.
    ///
    /// Clients without a login are accepted when no device has one, or with
    /// `broker.allow_anonymous`; then (devices with logins and anonymous clients together)
    /// anonymous clients get at most half the connections, so they cannot crowd out the
    /// devices that log in.
    pub fn from_config(config: &Config) -> BrokerSettings {
        let b = &config.broker;
        let mut s = BrokerSettings::new(b.bind_addr());
        s.v5_bind = b.v5_bind;
        s.tls = b
            .tls
            .as_ref()
            .zip(b.tls_bind_addr())
            .map(|(t, bind)| TlsFiles {
                bind,
                cert_pem: t.cert.clone(),
                key_pem: t.key.clone(),
            });
        s.credentials = logins(config);
        s.max_connections = (config.devices.len() * 2).max(64);
        s.max_retained_messages =
            MAX_RETAINED_MESSAGES.max(config.devices.len() * RETAINED_PER_DEVICE);
        let anonymous = config.broker_accepts_anonymous();
        s.allow_anonymous = anonymous;
        s.access = AccessRules::from_config(config);
        let devices_log_in = config.devices.iter().any(|d| d.username.is_some());
        if anonymous && devices_log_in {
            s.access.anonymous.max_connections = s.max_connections / 2;
        }
        s
    }
}

/// Every login: devices' and readers'. Password files were read by edge-config when the
/// config was loaded (`secrets`), so every login here carries its password.
fn logins(config: &Config) -> HashMap<String, String> {
    let devices = config
        .devices
        .iter()
        .filter_map(|d| Some((d.username.clone()?, d.password.clone()?)));
    let readers = config
        .broker
        .readers
        .iter()
        .filter_map(|r| Some((r.username.clone(), r.password.clone()?)));
    let compounds = config
        .compounds
        .iter()
        .filter_map(|c| Some((c.username.clone(), c.password.clone()?)));
    devices.chain(readers).chain(compounds).collect()
}
