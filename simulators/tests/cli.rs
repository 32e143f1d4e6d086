//! The `sim` binary: help texts with examples, and `sim upstream` + `sim link` +
//! `sim verify` working together as real processes.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{Event, Packet, QoS};
use simulators::mqtt::{self, Endpoint};
use simulators::process::ChildGuard;
use simulators::wait::{eventually, reached};

const SIM: &str = env!("CARGO_BIN_EXE_sim");

/// `sim ARGS`, stopped on drop (SIGTERM first, so that `sim upstream` stops its mosquitto).
fn spawn(args: &[&str]) -> (ChildGuard, BufReader<ChildStdout>) {
    let mut child = Command::new(SIM)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sim");
    let out = BufReader::new(child.stdout.take().unwrap());
    (ChildGuard(child), out)
}

/// The first line containing `marker`.
fn line_with(out: &mut impl BufRead, marker: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "sim exited before printing {marker:?}"
        );
        if line.contains(marker) {
            return line.trim().to_owned();
        }
    }
}

#[test]
fn every_subcommand_help_shows_an_example() {
    for sub in ["sensors", "link", "verify", "upstream", "camera"] {
        let out = Command::new(SIM).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Examples:"), "{sub}: {text}");
        assert!(
            text.contains(&format!("  sim {sub} --")),
            "{sub} example missing: {text}"
        );
    }
}

#[test]
fn an_unknown_scenario_is_refused_with_the_list_of_scenarios() {
    let out = Command::new(SIM)
        .args(["sensors", "--broker", "127.0.0.1:1", "--config"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../edge-config/examples/demo.toml"
        ))
        .args(["--scenario", "volcano"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("volcano") && err.contains("ebike_thermal_runaway"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_link_and_verify_processes_show_store_and_forward_across_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (_upstream, mut up_out) = spawn(&[
        "upstream",
        "--port",
        "0",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    let ready = line_with(&mut up_out, "upstream ready: mqtt://");
    let broker = ready.rsplit("mqtt://").next().unwrap().to_owned();

    let (mut link, mut link_out) = spawn(&["link", "--listen", "127.0.0.1:0", "--to", &broker]);
    let ready = line_with(&mut link_out, "link ready:");
    let listen = ready.split_whitespace().nth(2).unwrap().to_owned();

    let mut verify = Command::new(SIM)
        .args([
            "verify",
            "--upstream",
            &broker,
            "--site",
            "demo",
            "--expect",
            "6",
            "--timeout",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut verify_err = BufReader::new(verify.stderr.take().unwrap());
    let mut verify = ChildGuard(verify);
    line_with(&mut verify_err, "verify ready:");

    // The "gateway": a persistent session through the link, counting PUBACKs and lost
    // connections (its own or refused reconnects).
    let mut options = mqtt::options("gw-through-link", &Endpoint::parse(&listen).unwrap());
    options.set_clean_session(false);
    let (client, mut events) = mqtt::connect(options, 64);
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (acks, failures) = (acked.clone(), failed.clone());
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    // Reconnect backoff.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let alert = |seq: u64| {
        serde_json::json!({ "seq": seq, "updated_at": chrono::Utc::now().to_rfc3339() }).to_string()
    };
    let publish = |seqs: std::ops::RangeInclusive<u64>| {
        let client = client.clone();
        async move {
            for seq in seqs {
                client
                    .publish("shouwang/demo/alerts", QoS::AtLeastOnce, false, alert(seq))
                    .await
                    .unwrap();
            }
        }
    };
    publish(1..=3).await;
    eventually(
        Duration::from_secs(10),
        "the first three alerts acknowledged through the link",
        || reached(acked.load(Ordering::Relaxed), 3),
    )
    .await;
    let failed_at_cut = failed.load(Ordering::Relaxed);
    let stdin = link.0.stdin.as_mut().unwrap();
    writeln!(stdin, "down").unwrap();
    assert_eq!(line_with(&mut link_out, "link "), "link DOWN");
    publish(4..=6).await;
    // The outage is felt: the connection is lost and a reconnect refused.
    eventually(
        Duration::from_secs(10),
        "the cut felt by the publisher",
        || reached(failed.load(Ordering::Relaxed), failed_at_cut + 2),
    )
    .await;
    writeln!(stdin, "up").unwrap();
    assert_eq!(line_with(&mut link_out, "link "), "link UP");

    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    let status = loop {
        if let Some(s) = verify.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sim verify still running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut report = String::new();
    verify
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    assert!(status.success(), "{report}");
    assert!(
        report.contains("6 of 6 expected arrived") && report.contains("0 missing"),
        "{report}"
    );
    assert!(report.contains("seq gaps: none"), "{report}");
}
