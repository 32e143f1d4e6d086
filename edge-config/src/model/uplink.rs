//! `[uplink]`: the upstream MQTT connection (to the district platform).

use super::redact;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[uplink]`: where alerts and events are forwarded. Absent = no upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    /// Whether to connect. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Host name or IP address of the upstream broker.
    pub host: String,
    /// Port. Default 8883 with `tls`, 1883 without (see [`Uplink::port`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// MQTT client id. Default `shouwang-{site.id}` (see
    /// [`Uplink::client_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `tls = { ca, cert, key, verify }`: connect with TLS. Production
    /// uplinks should always use TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UplinkTls>,
    /// User name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password (shown as `********` when serialized). Not with
    /// `password_file`. Once loaded, it also holds the secret read from
    /// `password_file` (see [`crate::read_password_file`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact"
    )]
    pub password: Option<String>,
    /// File whose first line is the password (relative = against the
    /// config file's directory; must exist). Not with `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Prefix of every upstream topic: `{topic_prefix}/{site.id}/…`.
    /// Default `"shouwang"`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// QoS of alert messages: 1 (default) or 2. QoS 0 may lose alerts and
    /// is rejected.
    #[serde(default = "default_qos")]
    pub qos: Qos,
    /// MQTT keep-alive, seconds (5..=3600). Default 30.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u32,
    /// `[uplink.outbox]`: delivery from the local SQLite outbox.
    #[serde(default)]
    pub outbox: Outbox,
}

fn default_true() -> bool {
    true
}

fn default_prefix() -> String {
    "shouwang".to_string()
}

fn default_qos() -> Qos {
    Qos::AtLeastOnce
}

/// An MQTT quality of service, written as the integer 0, 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Qos {
    /// 0: at most once (may lose messages).
    AtMostOnce,
    /// 1: at least once.
    AtLeastOnce,
    /// 2: exactly once.
    ExactlyOnce,
}

impl TryFrom<u8> for Qos {
    type Error = String;

    fn try_from(q: u8) -> Result<Self, Self::Error> {
        match q {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            2 => Ok(Qos::ExactlyOnce),
            q => Err(format!("MQTT QoS is 0, 1 or 2, got {q}; use 1 or 2")),
        }
    }
}

impl From<Qos> for u8 {
    fn from(q: Qos) -> u8 {
        match q {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }
}

fn default_keep_alive() -> u32 {
    30
}

impl Uplink {
    /// The effective port: `port`, else 8883 with TLS, else 1883.
    pub fn port(&self) -> u16 {
        self.port
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    /// The effective client id: `client_id`, else `shouwang-{site_id}`.
    pub fn client_id(&self, site_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("shouwang-{site_id}"))
    }
}

/// `tls = { ca, cert, key, verify }` of the uplink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkTls {
    /// PEM CA bundle to verify the server; absent = the platform's trust
    /// store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (mutual TLS); requires `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM client private key; requires `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Verify the server certificate. Default true; `false` is allowed only
    /// when written explicitly (testing only).
    #[serde(default = "default_true")]
    pub verify: bool,
}

/// `[uplink.outbox]`: how queued messages are sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outbox {
    /// Messages in flight (unacknowledged) at once (1..=65535). Default 64.
    pub max_inflight: u32,
    /// Messages read from the outbox at a time (1..=10000). Default 256.
    pub batch: u32,
    /// Longest wait between reconnect attempts, seconds (1..=3600).
    /// Default 60.
    pub retry_backoff_max_s: u32,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            max_inflight: 64,
            batch: 256,
            retry_backoff_max_s: 60,
        }
    }
}
