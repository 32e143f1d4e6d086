//! `[broker]`: the MQTT broker the site's sensors publish to.

use super::redact;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Default listen address of the embedded broker.
pub const DEFAULT_BROKER_BIND: &str = "0.0.0.0:1883";

/// `[broker]`.
///
/// With `mode = "embedded"` (default) the gateway runs its own broker and
/// only `bind`, `v5_bind`, `tls` and `require_auth` apply. With
/// `mode = "external"` it connects to `[broker.external]` and those four
/// keys must be left out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// `embedded` (default) or `external`.
    #[serde(default)]
    pub mode: BrokerMode,
    /// Embedded: MQTT v3.1.1 listen address. Default `"0.0.0.0:1883"`
    /// (see [`Broker::bind_addr`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
    /// Embedded: optional MQTT v5 listen address, e.g. `"0.0.0.0:1884"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v5_bind: Option<SocketAddr>,
    /// Embedded: serve TLS with `{ cert, key }` (PEM files that must exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
    /// Embedded: when true every device must have `username` and
    /// `password`. Default false.
    #[serde(default)]
    pub require_auth: bool,
    /// `[broker.external]`: required when `mode = "external"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalBroker>,
}

impl Broker {
    /// The embedded broker's listen address (`bind` or `0.0.0.0:1883`).
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 1883)))
    }
}

/// Which broker the sensors use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerMode {
    /// The gateway runs its own broker.
    #[default]
    Embedded,
    /// An existing broker on the site's network.
    External,
}

/// `tls = { cert, key }` of a listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain (relative = against the config file's directory).
    pub cert: PathBuf,
    /// PEM private key (relative = against the config file's directory).
    pub key: PathBuf,
}

/// `[broker.external]`: connection to an existing broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalBroker {
    /// Host name or IP address.
    pub host: String,
    /// Port. Default 8883 with `tls`, 1883 without (see
    /// [`ExternalBroker::port`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// User name, if the broker wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password (shown as `********` when serialized). Not with `password_file`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact"
    )]
    pub password: Option<String>,
    /// File holding the password (first line). Not with `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// `tls = { ca }`: connect with TLS, verifying the broker against `ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<CaTls>,
    /// MQTT client id. Default `shouwang-{site.id}-sensors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl ExternalBroker {
    /// The effective port: `port`, else 8883 with TLS, else 1883.
    pub fn port(&self) -> u16 {
        self.port
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    /// The effective client id.
    pub fn client_id(&self, site_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("shouwang-{site_id}-sensors"))
    }
}

/// `tls = { ca }` of a client connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaTls {
    /// PEM CA bundle (relative = against the config file's directory).
    pub ca: PathBuf,
}
