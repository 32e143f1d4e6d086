//! Small helpers around rumqttc shared by the simulators: one way to build a client.

use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions};

/// Largest MQTT packet the simulators send or accept (the `malformed` scenario sends
/// payloads larger than the gateway's 16 KiB limit on purpose).
pub const MAX_PACKET_BYTES: usize = 256 * 1024;

/// Where an MQTT client connects and as whom.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Endpoint {
    /// Parses `HOST:PORT` (no credentials).
    pub fn parse(addr: &str) -> Option<Endpoint> {
        let (host, port) = addr.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        Some(Endpoint {
            host: host.to_owned(),
            port: port.parse().ok()?,
            username: None,
            password: None,
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Client options: a clean session, a 30 s keep-alive, large packets, the endpoint's
/// credentials.
pub fn options(client_id: &str, at: &Endpoint) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, at.host.clone(), at.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if let (Some(user), Some(pass)) = (&at.username, &at.password) {
        options.set_credentials(user.clone(), pass.clone());
    }
    options
}

/// A client from `options` with TCP_NODELAY (without it QoS 1 traffic stalls on loopback)
/// and room for `capacity` queued requests.
pub fn connect(options: MqttOptions, capacity: usize) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(options, capacity);
    let mut network = events.network_options();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(5);
    events.set_network_options(network);
    (client, events)
}

/// [`connect`] with [`options`].
pub fn client(client_id: &str, at: &Endpoint, capacity: usize) -> (AsyncClient, EventLoop) {
    connect(options(client_id, at), capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_host_and_port() {
        let e = Endpoint::parse("127.0.0.1:1883").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 1883));
        assert_eq!(Endpoint::parse("[::1]:8883").unwrap().host, "::1");
        assert!(Endpoint::parse("nohost").is_none());
        assert!(Endpoint::parse(":1883").is_none());
        assert!(Endpoint::parse("h:notaport").is_none());
    }
}
