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
    /// Host name or IP address of the upstream broker. Not with `hosts`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// The upstream brokers of a clustered platform, tried in order:
    /// `hosts = ["a.example.org:8883", "b.example.org:8883", "[fd00::3]:8883"]`
    /// (an entry without a port takes `port`). Not with `host`. See the
    /// uplink's failover notes (README, "Fleet").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
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

    /// Every broker to try, in order, as (host, port): `hosts` (each entry's port, else
    /// [`Uplink::port`]), else `host` with [`Uplink::port`]. An entry that does not parse
    /// is left out (validation reports it).
    pub fn endpoints(&self) -> Vec<(String, u16)> {
        if self.hosts.is_empty() {
            return vec![(self.host.clone(), self.port())];
        }
        self.hosts
            .iter()
            .filter_map(|h| split_host_port(h, self.port()).ok())
            .collect()
    }

    /// The effective client id: `client_id`, else `shouwang-{site_id}`.
    pub fn client_id(&self, site_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("shouwang-{site_id}"))
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` → (host, port), the port defaulting to
/// `default_port`; the error says what is wrong.
pub fn split_host_port(entry: &str, default_port: u16) -> Result<(String, u16), String> {
    let entry = entry.trim();
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ']'")?;
        match after {
            "" => (v6, None),
            _ => (
                v6,
                Some(after.strip_prefix(':').ok_or("write [address]:port")?),
            ),
        }
    } else {
        match entry.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err("write an IPv6 address in brackets: [fd00::1]:8883".into())
            }
            Some((h, p)) => (h, Some(p)),
            None => (entry, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
        return Err("write a host name or address, e.g. \"platform-a.example.org:8883\"".into());
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("\"{p}\" is not a port (1..=65535)")),
        },
    };
    Ok((host.to_owned(), port))
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
