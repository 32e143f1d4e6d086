//! Which configured devices are heard on the sensor broker: the doctor subscribes to the
//! device topics ingest reads (its [`Router`]) for `--listen-s` seconds, as a client of its
//! own, and never starts a broker.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use edge_config::{BrokerMode, Config};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};

use super::ports::Presence;
use super::report::Check;
use crate::ingest::decode::Router;

const NAME: &str = "devices";

/// What the doctor heard from one device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heard {
    pub messages: u64,
    /// When its last live (not retained) message came.
    pub last: Option<Instant>,
    /// Its retained availability, if the broker kept one (`online` / `offline`).
    pub retained: Option<String>,
}

impl Heard {
    /// Heard live, or retained as online.
    fn alive(&self) -> bool {
        self.last.is_some() || self.retained.as_deref().is_some_and(|r| r != "offline")
    }
}

/// Lists the devices heard within `listen`, or says why they cannot be listed now.
pub async fn check(config: &Config, file: &Path, presence: &Presence, listen: Duration) -> Check {
    if config.devices.is_empty() {
        return Check::skipped(NAME, "no devices configured");
    }
    let options = match options(config, file, presence) {
        Ok(o) => o,
        Err(check) => return *check,
    };
    let broker = format!(
        "{}:{}",
        options.broker_address().0,
        options.broker_address().1
    );
    let router = Router::new(config);
    match listen_for(options, &router, config.devices.len(), listen).await {
        Ok(heard) => verdict(config, presence, &heard, listen, &broker),
        Err(e) => Check::fail(
            NAME,
            format!("cannot listen on the sensor broker {broker}: {e}"),
            "check that the gateway's broker accepts this machine (see the port checks)",
        ),
    }
}

/// How to reach the sensor broker, or the check that says why not.
fn options(config: &Config, file: &Path, presence: &Presence) -> Result<MqttOptions, Box<Check>> {
    let id = format!("{}-doctor", config.site.id);
    match config.broker.mode {
        BrokerMode::External => {
            let mut o = crate::topology::external_options(config)
                .map_err(|e| Box::new(Check::fail(NAME, e.to_string(), "fix [broker.external]")))?;
            o.set_client_id(id);
            Ok(o)
        }
        BrokerMode::Embedded if !presence.running => Err(Box::new(Check::warn(
            NAME,
            "the gateway is not running: devices can only be listed while it runs (they \
             publish to its broker)",
            format!(
                "start the gateway (`gateway run --config {}`), then run `gateway doctor` again",
                file.display()
            ),
        ))),
        BrokerMode::Embedded => embedded_options(config, id),
    }
}

fn embedded_options(config: &Config, id: String) -> Result<MqttOptions, Box<Check>> {
    let addr = loopback_if_unspecified(config.broker.bind_addr());
    if addr.port() == 0 {
        return Err(Box::new(Check::warn(
            NAME,
            "broker.bind asks for any free port: the doctor cannot tell which one it got",
            "give broker.bind a fixed port (the sensors need one anyway)",
        )));
    }
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    if config.broker_accepts_anonymous() {
        return Ok(o);
    }
    let reader = config.broker.readers.iter().find(|r| r.password.is_some());
    let Some(reader) = reader else {
        return Err(Box::new(Check::warn(
            NAME,
            "the broker requires a login and there is no reader login to listen with",
            "add a [[broker.readers]] login with topics = [\"sensors/#\", \"zigbee2mqtt/#\"] \
             and run doctor again",
        )));
    };
    o.set_credentials(
        reader.username.clone(),
        reader.password.clone().unwrap_or_default(),
    );
    Ok(o)
}

/// `0.0.0.0:P` / `[::]:P` → the loopback address on `P` (where a listener on every address
/// is reached from this machine).
fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Subscribes to every device topic and records what arrives within `listen` (the clock
/// starts at the CONNACK). Each device is indexed like `Config::devices`.
async fn listen_for(
    options: MqttOptions,
    router: &Router,
    devices: usize,
    listen: Duration,
) -> Result<Vec<Heard>, String> {
    let (client, mut events) = AsyncClient::new(options, 64);
    crate::broker::enable_tcp_nodelay(&mut events);
    match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {}
        Ok(Ok(other)) => return Err(format!("expected CONNACK, got {other:?}")),
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no CONNACK within 5 s".into()),
    }
    let filters = router
        .subscriptions()
        .into_iter()
        .map(|f| SubscribeFilter::new(f, QoS::AtMostOnce));
    client
        .subscribe_many(filters)
        .await
        .map_err(|e| e.to_string())?;
    let mut heard = vec![Heard::default(); devices];
    let until = tokio::time::Instant::now() + listen;
    while let Ok(event) = tokio::time::timeout_at(until, events.poll()).await {
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => record(&mut heard, router, &p),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), events.poll()).await;
    Ok(heard)
}

fn record(heard: &mut [Heard], router: &Router, p: &rumqttc::Publish) {
    let Some((device, role)) = router.route(&p.topic) else {
        return;
    };
    let Some(h) = heard.get_mut(device) else {
        return;
    };
    if p.retain {
        if role == crate::ingest::decode::Role::Availability {
            h.retained = Some(availability(&p.payload));
        }
        return;
    }
    h.messages += 1;
    h.last = Some(Instant::now());
}

/// `online` / `offline` from `online` or `{"state":"online"}`.
fn availability(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload).trim().to_owned();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_owned))
        .unwrap_or(text)
}

/// The check from what was heard: ok when every device was, a warning listing the others.
fn verdict(
    config: &Config,
    presence: &Presence,
    heard: &[Heard],
    listen: Duration,
    broker: &str,
) -> Check {
    let rejected: BTreeMap<String, u64> = presence
        .status
        .as_ref()
        .and_then(|s| s.ingest.as_ref())
        .map(|i| i.rejected_by_device.clone())
        .unwrap_or_default();
    let now = Instant::now();
    let details = config
        .devices
        .iter()
        .zip(heard)
        .map(|(d, h)| detail(d, h, now, rejected.get(&d.id).copied()))
        .collect();
    let silent: Vec<&str> = config
        .devices
        .iter()
        .zip(heard)
        .filter(|(_, h)| !h.alive())
        .map(|(d, _)| d.id.as_str())
        .collect();
    let (n, secs) = (config.devices.len(), listen.as_secs());
    if silent.is_empty() {
        return Check::ok(NAME, format!("all {n} devices heard within {secs} s"))
            .with_details(details);
    }
    Check::warn(
        NAME,
        format!(
            "{} of {n} devices heard within {secs} s; never heard: {}",
            n - silent.len(),
            abbreviate(&silent, 6)
        ),
        format!(
            "trigger each device never heard (its test button) while `gateway doctor \
             --listen-s 120` runs; check that it publishes to {broker} on its topic \
             (sensors/ID/state or zigbee2mqtt/NAME) with its login"
        ),
    )
    .with_details(details)
}

fn detail(d: &edge_config::Device, h: &Heard, now: Instant, rejected: Option<u64>) -> String {
    let mut line = match (h.last, &h.retained) {
        (Some(at), _) => format!(
            "{}: heard {:.1} s ago ({} message{})",
            d.id,
            now.saturating_duration_since(at).as_secs_f64(),
            h.messages,
            if h.messages == 1 { "" } else { "s" }
        ),
        (None, Some(state)) => format!("{}: not heard; its retained availability is {state}", d.id),
        (None, None) => format!("{}: never heard ({})", d.id, d.state_topic()),
    };
    if let Some(n) = rejected.filter(|n| *n > 0) {
        line.push_str(&format!(
            "; {n} of its messages rejected since the gateway started (`gateway status`)"
        ));
    }
    line
}

/// `a, b, c and 4 more`.
fn abbreviate(ids: &[&str], max: usize) -> String {
    if ids.len() <= max {
        return ids.join(", ");
    }
    format!("{} and {} more", ids[..max].join(", "), ids.len() - max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_of_silent_devices_are_abbreviated() {
        assert_eq!(abbreviate(&["a", "b"], 3), "a, b");
        assert_eq!(abbreviate(&["a", "b", "c", "d"], 2), "a, b and 2 more");
    }

    #[test]
    fn a_retained_offline_availability_is_not_a_device_heard() {
        assert_eq!(availability(br#"{"state":"offline"}"#), "offline");
        assert_eq!(availability(b"online"), "online");
        let offline = Heard {
            retained: Some("offline".into()),
            ..Heard::default()
        };
        assert!(!offline.alive());
        let online = Heard {
            retained: Some("online".into()),
            ..Heard::default()
        };
        assert!(online.alive());
    }
}
