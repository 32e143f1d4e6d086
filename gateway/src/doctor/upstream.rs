//! The upstream platform: one MQTT connection with the uplink's own options (TLS, login),
//! under a client id of its own so that a running gateway's session is not taken over.

use std::time::{Duration, Instant};

use edge_config::Config;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, Outgoing, Packet};

use super::report::Check;
use crate::uplink::LinkSettings;

const NAME: &str = "upstream";

/// Connects to `[uplink]` within `timeout` and disconnects; skipped without an enabled
/// `[uplink]`. With several `hosts`, each is tried: all reachable is ok, some is a warning
/// (the link fails over to the others), none is a failure.
pub async fn check(config: &Config, timeout: Duration) -> Check {
    let mut settings = match LinkSettings::from_config(config) {
        Ok(Some(s)) => s,
        Ok(None) => return Check::skipped(NAME, "no [uplink] configured (or enabled = false)"),
        Err(e) => {
            return Check::fail(
                NAME,
                e.to_string(),
                "fix the file named under [uplink] tls (PEM, readable by the gateway's user)",
            )
        }
    };
    if settings.endpoints.len() <= 1 {
        return check_one(&settings, timeout).await;
    }
    let mut checks = Vec::new();
    for (host, port) in settings.endpoints.clone() {
        (settings.host, settings.port) = (host, port);
        checks.push(check_one(&settings, timeout).await);
    }
    combine(checks)
}

/// One check for several brokers: every finding on one line; ok when all are, a failure
/// when none is, a warning (with the first failure's fix) otherwise.
fn combine(checks: Vec<Check>) -> Check {
    let finding = checks
        .iter()
        .map(|c| c.finding.clone())
        .collect::<Vec<_>>()
        .join("; ");
    let failed: Vec<&Check> = checks.iter().filter(|c| c.fix.is_some()).collect();
    match failed.first() {
        None => Check::ok(NAME, finding),
        Some(first) if failed.len() == checks.len() => {
            Check::fail(NAME, finding, first.fix.clone().unwrap_or_default())
        }
        Some(first) => Check::warn(
            NAME,
            finding,
            format!(
                "{} of {} platform brokers unreachable (the uplink fails over to the others): {}",
                failed.len(),
                checks.len(),
                first.fix.clone().unwrap_or_default()
            ),
        ),
    }
}

async fn check_one(settings: &LinkSettings, timeout: Duration) -> Check {
    let mut options = settings.mqtt_options();
    options.set_client_id(doctor_client_id(&settings.client_id));
    let (client, mut events) = AsyncClient::new(options, 8);
    let mut network = events.network_options();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(timeout.as_secs().max(1));
    events.set_network_options(network);

    let at = format!("{}:{}", settings.host, settings.port);
    let how = describe_transport(settings);
    let started = Instant::now();
    let first = tokio::time::timeout(timeout, events.poll()).await;
    match first {
        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
            let took = started.elapsed().as_millis();
            // A clean goodbye, so the platform logs a disconnect, not a lost client.
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Ok(e) = events.poll().await {
                    if matches!(e, Event::Outgoing(Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
            Check::ok(NAME, format!("connected to {at} ({how}) in {took} ms"))
        }
        Ok(Ok(other)) => Check::fail(
            NAME,
            format!("{at} answered {other:?} instead of CONNACK"),
            "check that uplink.host/port point at the platform's MQTT broker",
        ),
        Ok(Err(e)) => failure(&e, &at, &settings.host, timeout),
        Err(_) => failure(
            &ConnectionError::NetworkTimeout,
            &at,
            &settings.host,
            timeout,
        ),
    }
}

/// The doctor's client id upstream: the uplink's with `-doctor` appended.
pub fn doctor_client_id(uplink_client_id: &str) -> String {
    format!("{uplink_client_id}-doctor")
}

fn describe_transport(s: &LinkSettings) -> String {
    let tls = if s.tls.is_some() {
        "TLS"
    } else {
        "plain TCP, no TLS"
    };
    match &s.credentials {
        Some((user, _)) => format!("{tls}, user {user}"),
        None => format!("{tls}, no login"),
    }
}

/// The TLS failure inside `e`, if it is one (rustls reports a refused certificate as an
/// I/O error carrying its own error).
fn tls_error(e: &ConnectionError) -> Option<String> {
    match e {
        ConnectionError::Tls(tls) => Some(tls.to_string()),
        ConnectionError::Io(io) => io
            .get_ref()
            .filter(|inner| inner.is::<rustls::Error>())
            .map(|inner| inner.to_string()),
        _ => None,
    }
}

/// A failed connection as a finding and its fix.
pub fn failure(e: &ConnectionError, at: &str, host: &str, timeout: Duration) -> Check {
    let wan = "check uplink.host/port and that the WAN link is up";
    if let Some(tls) = tls_error(e) {
        return Check::fail(
            NAME,
            format!("TLS with {at} failed: {tls}"),
            format!(
                "uplink.tls.ca must be the CA that signed the platform's certificate, the \
                 certificate must name {host}, and this machine's clock must be right (`date`)"
            ),
        );
    }
    match e {
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            Check::fail(
                NAME,
                format!("connection refused at {at}"),
                format!("{wan} (test with `nc -vz {}`)", at.replace(':', " ")),
            )
        }
        ConnectionError::Io(io) => Check::fail(
            NAME,
            format!("cannot reach {at}: {io}"),
            format!("{wan}; check DNS and the route to {host}"),
        ),
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => Check::fail(
            NAME,
            format!("no answer from {at} within {} s", timeout.as_secs()),
            format!("{wan}; a firewall may drop the traffic to that port"),
        ),
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
        ) => Check::fail(
            NAME,
            format!("{at} refused the login ({code:?})"),
            "check uplink.username and uplink.password / uplink.password_file with the platform",
        ),
        ConnectionError::ConnectionRefused(code) => Check::fail(
            NAME,
            format!("{at} refused the connection ({code:?})"),
            "ask the platform why it refuses this gateway (client id, protocol version)",
        ),
        other => Check::fail(
            NAME,
            format!("connection to {at} failed: {other}"),
            wan.to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_with_one_broker_down_is_a_warning_and_with_all_down_a_failure() {
        let ok = || Check::ok(NAME, "connected to a:1883");
        let down = || Check::fail(NAME, "cannot reach b:1883", "check the WAN");
        assert_eq!(combine(vec![ok(), ok()]).state, State::Ok);
        let some = combine(vec![ok(), down(), ok()]);
        assert_eq!(some.state, State::Warn);
        assert!(some
            .fix
            .unwrap()
            .starts_with("1 of 3 platform brokers unreachable"));
        assert!(some.finding.contains("cannot reach b:1883"));
        assert_eq!(combine(vec![down(), down()]).state, State::Fail);
    }
    use crate::doctor::report::State;

    #[test]
    fn each_connection_failure_names_its_fix() {
        let t = Duration::from_secs(10);
        let refused = failure(
            &ConnectionError::Io(std::io::ErrorKind::ConnectionRefused.into()),
            "10.0.0.1:8883",
            "10.0.0.1",
            t,
        );
        assert_eq!(refused.state, State::Fail);
        assert_eq!(refused.finding, "connection refused at 10.0.0.1:8883");
        assert!(refused.fix.as_deref().unwrap().contains("uplink.host/port"));
        let login = failure(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
            "p:1",
            "p",
            t,
        );
        assert!(login.fix.as_deref().unwrap().contains("uplink.password"));
        let silent = failure(&ConnectionError::NetworkTimeout, "p:1", "p", t);
        assert_eq!(silent.finding, "no answer from p:1 within 10 s");
        assert!(silent.fix.as_deref().unwrap().contains("firewall"));
    }

    #[test]
    fn the_doctor_never_takes_the_uplink_s_client_id() {
        assert_eq!(doctor_client_id("shouwang-sw-1"), "shouwang-sw-1-doctor");
    }
}
