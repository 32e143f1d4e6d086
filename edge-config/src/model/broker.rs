//! `[broker]`: the MQTT broker the site's sensors publish to.

use super::redact;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Default listen address of the embedded broker: this machine only. Sensors on the
/// network need an explicit `bind` (e.g. `"0.0.0.0:1883"`) and, off loopback,
/// authentication or `allow_anonymous = true`.
pub const DEFAULT_BROKER_BIND: &str = "127.0.0.1:1883";

/// Default port of the embedded broker's TLS listener.
pub const DEFAULT_BROKER_TLS_PORT: u16 = 8883;

/// `[broker]`.
///
/// With `mode = "embedded"` (default) the gateway runs its own broker and
/// only `bind`, `v5_bind`, `tls`, `require_auth`, `allow_anonymous` and
/// `[[broker.readers]]` apply. With `mode = "external"` it connects to
/// `[broker.external]` and those keys must be left out.
///
/// Embedded broker logins: a device's `username`/`password` lets it publish
/// only its own topics and read only its own command topic; a reader
/// (`[[broker.readers]]`) may only read the `topics` it lists. As soon as
/// one device has a login, every client must log in, unless
/// `allow_anonymous = true`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// `embedded` (default) or `external`.
    #[serde(default)]
    pub mode: BrokerMode,
    /// Embedded: MQTT v3.1.1 listen address. Default `"127.0.0.1:1883"`
    /// (this machine only; see [`Broker::bind_addr`]).
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
    /// Embedded: accept clients without a login. Default false. Needed for
    /// a broker without device logins on a non-loopback address (anyone on
    /// that network may then publish sensor readings); with device logins it
    /// lets clients without one in as well. Anonymous clients may publish on
    /// any topic except the gateway's (`shouwang/…`, `residents/…`, actuator
    /// command topics) and read any topic except `residents/…`.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Embedded: `[[broker.readers]]`, read-only logins (resident displays,
    /// local alert boards). Readers alone do not make logins mandatory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<BrokerReader>,
    /// `[broker.external]`: required when `mode = "external"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalBroker>,
}

impl Broker {
    /// The embedded broker's listen address (`bind` or `127.0.0.1:1883`).
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1883)))
    }

    /// The TLS listener's address: `tls.bind`, else `bind`'s address on port 8883.
    pub fn tls_bind_addr(&self) -> Option<SocketAddr> {
        let tls = self.tls.as_ref()?;
        Some(
            tls.bind
                .unwrap_or_else(|| SocketAddr::new(self.bind_addr().ip(), DEFAULT_BROKER_TLS_PORT)),
        )
    }
}

/// `[[broker.readers]]`: a read-only login of the embedded broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerReader {
    /// User name (not a device's).
    pub username: String,
    /// Password (shown as `********` when serialized). Not with `password_file`. Once
    /// loaded, it also holds the secret read from `password_file` (see
    /// [`crate::read_password_file`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact"
    )]
    pub password: Option<String>,
    /// File holding the password (its first line). Not with `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Topic filters this login may read, e.g. `["residents/b1/#"]` for building 1's
    /// resident display or `["shouwang/+/alerts/#"]` for a local alert board.
    pub topics: Vec<String>,
}

/// `[[compounds]]` (a street station's gateway): a compound gateway whose `[station_link]`
/// forwards its alerts here. It logs in to the embedded broker with its own credentials and
/// may publish only under `shouwang/{id}/` (`alerts`, `heartbeat`) and read only its own
/// `shouwang/{id}/commands/#` (staff acknowledgements going back).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compound {
    /// The compound gateway's `site.id`.
    pub id: String,
    /// Shown on the station console, e.g. "幸福里小区".
    pub name: String,
    /// The compound gateway's login (its `[station_link] username`).
    pub username: String,
    /// Password (shown as `********` when serialized). Not with `password_file`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact"
    )]
    pub password: Option<String>,
    /// File holding the password (its first line). Not with `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The compound gateway's console, e.g. `http://10.20.0.5:8080`: the station fetches an
    /// alert's snapshot or clip from there (`/station/alerts/{id}/…`, with this compound's
    /// login) only when someone looks. Absent: no evidence from this compound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_url: Option<String>,
    /// Forward this compound's alert events upstream with the station's own (one aggregated
    /// stream on the station's `[uplink]`, the events unchanged: the platform deduplicates by
    /// `id` + `seq` when the compound also reaches it directly). Default false.
    #[serde(default)]
    pub forward: bool,
    /// Silent this long (no heartbeat, no alert), the compound is `compound_offline`.
    /// Default 90 (its link beats every 20 s; a fault shows within 100 s).
    #[serde(default = "default_offline_after_s")]
    pub offline_after_s: u32,
}

fn default_offline_after_s() -> u32 {
    90
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

/// `tls = { cert, key, bind }` of a listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain (relative = against the config file's directory).
    pub cert: PathBuf,
    /// PEM private key (relative = against the config file's directory).
    pub key: PathBuf,
    /// Listen address. Default: `bind`'s address on port 8883 (see
    /// [`Broker::tls_bind_addr`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
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
    /// Password (shown as `********` when serialized). Not with `password_file`. Once
    /// loaded, it also holds the secret read from `password_file` (see
    /// [`crate::read_password_file`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact"
    )]
    pub password: Option<String>,
    /// File holding the password (its first line). Not with `password`.
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
