//! `[metrics]`: the Prometheus `/metrics` endpoint.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Where `/metrics` listens when `[metrics]` gives no `bind`: this machine only.
pub const DEFAULT_METRICS_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// `[metrics]`: serve `GET /metrics` in the Prometheus text format on a listener of its own.
/// Absent (the default): no listener at all.
///
/// `/metrics` has **no authentication**: it tells whoever can reach it how many alerts of
/// each kind were raised, the uplink's state and the cameras' ids. Keep it on loopback (the
/// default) and scrape through an SSH tunnel or a local agent, or bind it only to a
/// management network the operator trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Whether to serve `/metrics`. Default true once the table is present
    /// (`enabled = false` keeps the table but turns the listener off).
    pub enabled: bool,
    /// Listen address, IP:PORT. Default `"127.0.0.1:9464"` (loopback). A non-loopback
    /// address is allowed, but nothing guards it (see above). It must not be the address of
    /// the console, the resident pages or the broker.
    pub bind: SocketAddr,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: true,
            bind: DEFAULT_METRICS_BIND,
        }
    }
}

impl Metrics {
    /// The address to serve `/metrics` on, if it is to be served at all.
    pub fn listen_addr(metrics: Option<&Metrics>) -> Option<SocketAddr> {
        metrics.filter(|m| m.enabled).map(|m| m.bind)
    }
}
