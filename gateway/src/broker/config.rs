//! The embedded broker's settings from the gateway configuration (`[broker]`, the devices'
//! logins, `[[broker.readers]]`).

use std::collections::HashMap;

use edge_config::Config;

use super::{AccessRules, BrokerError, BrokerSettings, TlsFiles, MAX_RETAINED_MESSAGES};

/// Retained messages allowed per device on top of [`MAX_RETAINED_MESSAGES`] (state and
/// availability, say).
const RETAINED_PER_DEVICE: usize = 4;

impl BrokerSettings {
    /// Listeners, logins (devices and readers; reader password files are read now), access
    /// rules ([`AccessRules::from_config`]) and limits for `config`'s embedded broker.
    ///
    /// Clients without a login are accepted when no device has one, or with
    /// `broker.allow_anonymous`; then (devices with logins and anonymous clients together)
    /// anonymous clients get at most half the connections, so they cannot crowd out the
    /// devices that log in.
    pub fn from_config(config: &Config) -> Result<BrokerSettings, BrokerError> {
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
        s.credentials = logins(config)?;
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
        Ok(s)
    }
}

/// Every login: devices' and readers'.
fn logins(config: &Config) -> Result<HashMap<String, String>, BrokerError> {
    let mut out: HashMap<String, String> = config
        .devices
        .iter()
        .filter_map(|d| Some((d.username.clone()?, d.password.clone()?)))
        .collect();
    for r in &config.broker.readers {
        let password = match (&r.password, &r.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|source| BrokerError::PasswordFile {
                    user: r.username.clone(),
                    path: path.clone(),
                    source,
                })?
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
            (None, None) => continue,
        };
        out.insert(r.username.clone(), password);
    }
    Ok(out)
}
