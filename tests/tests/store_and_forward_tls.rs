//! The uplink's TLS and login failures against a real mosquitto: refused, reported clearly,
//! retried with backoff — never a crash, never a delivery to the wrong server.

use std::time::Duration;

use e2e::mqtt::Mqtt;
use e2e::upstream::{Collector, ServerCert, Upstream};
use e2e::{write_config, Gateway};

const SITE: &str = r#"
[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 18

[rules.timing]
debounce_s = 0

[[devices]]
id = "smoke-1"
kind = "smoke"
location = { building = "b1", floor = 3 }
"#;

/// Starts a gateway against `upstream` with the given password file; raises a smoke alert.
async fn gateway_with(upstream: &Upstream, dir: &std::path::Path, password_file: &str) -> Gateway {
    let config = write_config(
        dir,
        &format!("{SITE}\n{}", upstream.uplink_toml(password_file)),
    );
    let mut gw = Gateway::start(&config, &dir.join("data"));
    let broker = gw.wait_ready();
    let smoke = Mqtt::connect(broker, "smoke-1").await;
    smoke
        .publish("sensors/smoke-1/state", r#"{"smoke":true}"#)
        .await;
    gw
}

/// The `error` fields of the next two "uplink connection failed" lines.
fn two_failures(gw: &mut Gateway) -> Vec<String> {
    (0..2)
        .map(|_| {
            let line = gw.wait_for_message("uplink connection failed", Duration::from_secs(20));
            line["error"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

/// The gateway goes on: it fails once more after its backoff (a retry, not a crash) and is
/// still running then. Whatever an earlier attempt could have sent upstream has had that
/// backoff's time to arrive.
fn keeps_retrying(gw: &mut Gateway) {
    gw.wait_for_message("uplink connection failed", Duration::from_secs(20));
    assert!(
        gw.wait_exit(Duration::ZERO).is_none(),
        "the gateway must keep running"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_certificate_not_signed_by_the_configured_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = Upstream::start_with(tmp.path(), ServerCert::Rogue);
    let collector = Collector::start(&upstream, "platform-rogue").await;
    let mut gw = gateway_with(&upstream, tmp.path(), "gw.pass").await;

    let errors = two_failures(&mut gw);
    for e in &errors {
        assert!(
            e.contains("TLS") && e.contains("certificate"),
            "unclear error: {e}"
        );
    }
    keeps_retrying(&mut gw);
    assert!(
        collector.alerts().is_empty(),
        "nothing may be sent to an unverified server"
    );
    gw.drain_log();
    assert!(
        !gw.seen.iter().any(|l| l.contains("\"uplink connected\"")),
        "connected to a rogue server"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_a_clear_error_that_is_retried_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(tmp.path());
    let collector = Collector::start(&upstream, "platform-password").await;
    let mut gw = gateway_with(&upstream, tmp.path(), "wrong.pass").await;

    let errors = two_failures(&mut gw);
    for e in &errors {
        assert!(e.contains("refused the login"), "unclear error: {e}");
        assert!(
            e.contains("uplink.password"),
            "the error should say what to fix: {e}"
        );
    }
    keeps_retrying(&mut gw);
    assert!(collector.alerts().is_empty());
}
