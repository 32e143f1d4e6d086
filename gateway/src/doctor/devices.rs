//! Which configured devices are heard on the sensor broker: the doctor subscribes to the
//! device topics ingest reads (its [`Router`]) for `--listen-s` seconds, as a client of its
//! own, and never starts a broker.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use edge_config::{BrokerMode, Config};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};

use super::ports::Presence;
use super::report::Check;
use crate::ingest::decode::{self, Role, Router};

const NAME: &str = "devices";

/// What the doctor heard from one device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heard {
    /// Live (not retained) messages.
    pub messages: u64,
    /// Of those, the ones the gateway's decoder refuses, and the last reason.
    pub rejected: u64,
    pub last_reject: Option<&'static str>,
    /// When its last live message came.
    pub last: Option<Instant>,
    /// Its retained availability, if the broker kept one (`true` = online).
    pub retained_online: Option<bool>,
}

impl Heard {
    /// Heard with a message the gateway accepts, or retained as online.
    fn alive(&self) -> bool {
        self.messages > self.rejected || self.retained_online == Some(true)
    }

    /// Heard, but every message refused.
    fn only_rejected(&self) -> bool {
        self.messages > 0 && self.messages == self.rejected
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
    match listen_for(options, &router, config, listen).await {
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
    let addr = crate::broker::connect_addr(config.broker.bind_addr());
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

/// Subscribes to every device topic and records what arrives within `listen` (the clock
/// starts at the CONNACK). Each device is indexed like `Config::devices`.
async fn listen_for(
    options: MqttOptions,
    router: &Router,
    config: &Config,
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
    let mut heard = vec![Heard::default(); config.devices.len()];
    let until = tokio::time::Instant::now() + listen;
    while let Ok(event) = tokio::time::timeout_at(until, events.poll()).await {
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => record(&mut heard, router, config, &p),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), events.poll()).await;
    Ok(heard)
}

/// Counts one publish for its device, decoded as ingest decodes it (so a device whose
/// payloads the gateway refuses is told apart from one that works).
fn record(heard: &mut [Heard], router: &Router, config: &Config, p: &rumqttc::Publish) {
    let Some((i, role)) = router.route(&p.topic) else {
        return;
    };
    let (Some(h), Some(d)) = (heard.get_mut(i), config.devices.get(i)) else {
        return;
    };
    let decoded = decode::decode_on(
        &p.topic,
        &p.payload,
        d.format,
        role,
        &decode::Spec::for_device(d),
    );
    if p.retain {
        if role == Role::Availability {
            h.retained_online = decoded.ok().and_then(|d| d.online);
        }
        return;
    }
    h.messages += 1;
    h.last = Some(Instant::now());
    if let Err(reason) = decoded {
        h.rejected += 1;
        h.last_reject = Some(reason.as_str());
    }
}

/// The check from what was heard: ok when every device was heard with a message the
/// gateway accepts; otherwise a warning naming the devices whose messages are rejected and
/// those never heard.
fn verdict(
    config: &Config,
    presence: &Presence,
    heard: &[Heard],
    listen: Duration,
    broker: &str,
) -> Check {
    let since_start: BTreeMap<String, u64> = presence
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
        .map(|(d, h)| detail(d, h, now, since_start.get(&d.id).copied()))
        .collect();
    let ids = |keep: fn(&Heard) -> bool| -> Vec<&str> {
        config
            .devices
            .iter()
            .zip(heard)
            .filter(|(_, h)| !h.alive() && keep(h))
            .map(|(d, _)| d.id.as_str())
            .collect()
    };
    let (refused, silent) = (ids(Heard::only_rejected), ids(|h| !h.only_rejected()));
    let (n, secs) = (config.devices.len(), listen.as_secs());
    if refused.is_empty() && silent.is_empty() {
        return Check::ok(NAME, format!("all {n} devices heard within {secs} s"))
            .with_details(details);
    }
    let mut finding = format!(
        "{} of {n} devices heard within {secs} s",
        n - refused.len() - silent.len()
    );
    let mut fixes = Vec::new();
    if !refused.is_empty() {
        finding.push_str(&format!("; messages rejected: {}", abbreviate(&refused, 6)));
        fixes.push(
            "make each device whose messages are rejected send what its `format` says \
             (native JSON on sensors/ID/state, or zigbee2mqtt); its line gives the reason"
                .to_owned(),
        );
    }
    if !silent.is_empty() {
        finding.push_str(&format!("; never heard: {}", abbreviate(&silent, 6)));
        fixes.push(format!(
            "trigger each device never heard (its test button) while `gateway doctor \
             --listen-s 120` runs; check that it publishes to {broker} on its topic \
             (sensors/ID/state or zigbee2mqtt/NAME) with its login"
        ));
    }
    Check::warn(NAME, finding, fixes.join("; ")).with_details(details)
}

fn detail(d: &edge_config::Device, h: &Heard, now: Instant, since_start: Option<u64>) -> String {
    let mut line = match (h.last, h.retained_online) {
        (Some(at), _) => {
            let plural = if h.messages == 1 { "" } else { "s" };
            let mut l = format!(
                "{}: heard {:.1} s ago ({} message{plural}",
                d.id,
                now.saturating_duration_since(at).as_secs_f64(),
                h.messages
            );
            if let Some(reason) = h.last_reject {
                l.push_str(&format!(", {} rejected: {reason}", h.rejected));
            }
            l.push(')');
            l
        }
        (None, Some(true)) => format!("{}: not heard; its retained availability is online", d.id),
        (None, Some(false)) => format!(
            "{}: not heard; its retained availability is offline (zigbee2mqtt lost it)",
            d.id
        ),
        (None, None) => format!("{}: never heard ({})", d.id, d.state_topic()),
    };
    if let Some(n) = since_start.filter(|n| *n > 0) {
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

    fn publish(topic: &str, payload: &str, retain: bool) -> rumqttc::Publish {
        let mut p = rumqttc::Publish::new(topic, QoS::AtMostOnce, payload.as_bytes().to_vec());
        p.retain = retain;
        p
    }

    #[test]
    fn devices_are_told_apart_as_heard_rejected_offline_or_never_heard() {
        let text = r#"
[site]
id = "t"
name = "T"
kind = "compound"
[[locations.areas]]
id = "hall"
name = "Hall"
kind = "lobby"
[[devices]]
id = "good"
kind = "smoke"
location = { area = "hall" }
[[devices]]
id = "garbled"
kind = "smoke"
location = { area = "hall" }
[[devices]]
id = "gone"
kind = "smoke"
format = "zigbee2mqtt"
location = { area = "hall" }
[[devices]]
id = "quiet"
kind = "smoke"
location = { area = "hall" }
"#;
        let config = edge_config::parse(text, "t.toml", Path::new(".")).unwrap();
        let router = Router::new(&config);
        let mut heard = vec![Heard::default(); config.devices.len()];
        for p in [
            publish("sensors/good/state", r#"{"smoke":false}"#, false),
            publish("sensors/garbled/state", "smoke=0", false),
            publish(
                "zigbee2mqtt/gone/availability",
                r#"{"state":"offline"}"#,
                true,
            ),
            publish("sensors/nobody/state", r#"{"smoke":true}"#, false),
        ] {
            record(&mut heard, &router, &config, &p);
        }
        let presence = Presence::of(Path::new("/nonexistent/doctor-test"));
        let check = verdict(&config, &presence, &heard, Duration::from_secs(4), "b:1");
        assert_eq!(
            check.finding,
            "1 of 4 devices heard within 4 s; messages rejected: garbled; never heard: gone, quiet"
        );
        let fix = check.fix.as_deref().unwrap();
        assert!(fix.contains("send what its `format` says"), "{fix}");
        assert!(fix.contains("publishes to b:1"), "{fix}");
        assert!(check.details[0].starts_with("good: heard "), "{check:?}");
        assert!(check.details[0].ends_with("(1 message)"), "{check:?}");
        assert!(
            check.details[1].ends_with("(1 message, 1 rejected: invalid_json)"),
            "{check:?}"
        );
        assert_eq!(
            check.details[2],
            "gone: not heard; its retained availability is offline (zigbee2mqtt lost it)"
        );
        assert_eq!(check.details[3], "quiet: never heard (sensors/quiet/state)");
    }
}
