//! `[metrics]`: the `/metrics` listener must not take another listener's address.

use super::Problems;
use crate::model::{BrokerMode, Config};
use crate::path::KeyPath;
use std::net::SocketAddr;

pub(super) fn check_metrics(config: &Config, p: &mut Problems) {
    let Some(m) = config.metrics.as_ref().filter(|m| m.enabled) else {
        return;
    };
    let clash = other_listeners(config)
        .into_iter()
        .find(|(_, addr)| overlaps(m.bind, *addr));
    if let Some((name, addr)) = clash {
        p.push(
            KeyPath::of("metrics").key("bind"),
            format!(
                "metrics.bind {} takes the address of {name} ({addr}); give /metrics a port of \
                 its own, e.g. \"127.0.0.1:9464\"",
                m.bind
            ),
        );
    }
}

/// The gateway's other listeners, by the key that sets them.
fn other_listeners(config: &Config) -> Vec<(&'static str, SocketAddr)> {
    let mut all = vec![("console.bind", config.console.bind)];
    all.extend(config.residents.bind.map(|a| ("residents.bind", a)));
    let b = &config.broker;
    if b.mode == BrokerMode::Embedded {
        all.push(("broker.bind", b.bind_addr()));
        all.extend(b.v5_bind.map(|a| ("broker.v5_bind", a)));
        all.extend(b.tls_bind_addr().map(|a| ("broker.tls.bind", a)));
    }
    all
}

/// Whether two listeners would fight over one port: the same port (port 0 picks a free one,
/// so never) on the same address, or with either on every address (`0.0.0.0`, `::`).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_overlap_on_one_port_of_one_address_or_of_every_address() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("127.0.0.1:9464"), a("127.0.0.1:9464")));
        assert!(overlaps(a("127.0.0.1:8080"), a("0.0.0.0:8080")));
        assert!(overlaps(a("0.0.0.0:8080"), a("192.0.2.1:8080")));
        assert!(!overlaps(a("127.0.0.1:8080"), a("192.0.2.1:8080")));
        assert!(!overlaps(a("127.0.0.1:9464"), a("127.0.0.1:8080")));
        assert!(!overlaps(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }
}
