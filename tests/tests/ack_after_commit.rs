//! A sensor's PUBACK means its alarm is on disk: the gateway holds rumqttd's acknowledgement
//! until the alert task has committed what the message caused (`broker::gate`). Killed at
//! the worst moment — the instant the sensors got their PUBACKs — the gateway has lost
//! nothing; killed while alarms were not committed yet, it had not acknowledged them, so the
//! sensors still hold them and send them again.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::upstream::free_port;
use e2e::{bin, Gateway};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Smoke detectors that alarm at once (each commit is its own `synchronous=FULL`
/// transaction, so the last ones wait for the first ones' disk flushes).
const DEVICES: usize = 20;

/// The site: [`DEVICES`] smoke detectors in one building, no debounce, the broker on
/// `broker_port` (0: any free port).
fn config(dir: &Path, broker_port: u16) -> std::path::PathBuf {
    let mut text = format!(
        "[site]\nid = \"ack\"\nname = \"Ack\"\nkind = \"compound\"\n\
         [broker]\nbind = \"127.0.0.1:{broker_port}\"\n\
         [console]\nbind = \"127.0.0.1:0\"\n\
         [rules.timing]\ndebounce_s = 0\n\
         [[locations.buildings]]\nid = \"b1\"\nname = \"1\"\nfloors = 30\n"
    );
    for i in 0..DEVICES {
        text.push_str(&format!(
            "[[devices]]\nid = \"smoke-{i}\"\nkind = \"smoke\"\nlocation = {{ building = \"b1\", floor = {} }}\n",
            i + 1
        ));
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("write the configuration");
    path
}

/// A connected smoke detector: its client and event loop, CONNACK received.
async fn sensor(broker: std::net::SocketAddr, device: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new(device, broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return (client, events),
            Ok(Ok(_)) => {}
            other => panic!("{device} did not connect: {other:?}"),
        }
    }
}

/// Starts the gateway with the test-only fault injection reading `faults`.
fn start_with_faults(config: &Path, data: &Path, faults: &Path) -> Gateway {
    let mut command = std::process::Command::new(bin("gateway"));
    command
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .env(gateway::supervise::FAULT_INJECTION_ENV, faults);
    Gateway::spawn(command)
}

/// Publishes `device`'s smoke alarm at QoS 1 and drives its event loop as a careful device
/// does: after reconnecting to a broker that has no session for it (the gateway keeps none
/// across a restart), it publishes again an alarm that never got its PUBACK. Counts PUBACKs.
fn alarm_until_acknowledged(
    device: String,
    client: AsyncClient,
    mut events: rumqttc::EventLoop,
) -> tokio::sync::watch::Receiver<usize> {
    let (tx, rx) = tokio::sync::watch::channel(0);
    let topic = format!("sensors/{device}/state");
    let alarm = move || {
        let (client, topic) = (client.clone(), topic.clone());
        async move {
            let _ = client
                .publish(topic, QoS::AtLeastOnce, false, r#"{"smoke":true}"#)
                .await;
        }
    };
    tokio::spawn(async move {
        alarm().await;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => tx.send_modify(|n| *n += 1),
                Ok(Event::Incoming(Packet::ConnAck(_))) if *tx.borrow() == 0 => alarm().await,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// Publishes a smoke alarm at QoS 1 as `device` and returns once its PUBACK arrived.
async fn alarm_acknowledged(device: String, client: AsyncClient, mut events: rumqttc::EventLoop) {
    client
        .publish(
            format!("sensors/{device}/state"),
            QoS::AtLeastOnce,
            false,
            r#"{"smoke":true}"#,
        )
        .await
        .expect("publish queued");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{device}: connection failed before its PUBACK: {e}"),
            Err(_) => panic!("{device}: no PUBACK within 20 s"),
        }
    }
}

fn smoke_alerts(data: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        data.join("shouwang.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the gateway's database");
    let mut query = conn
        .prepare("SELECT source FROM alerts WHERE kind = 'smoke' ORDER BY source")
        .expect("query");
    let sources = query
        .query_map([], |r| r.get::<_, String>(0))
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect();
    sources
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_acknowledged_to_their_sensors_survive_a_kill_at_the_last_puback() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 0);
    let data = dir.path().join("data");
    let mut gateway = Gateway::start(&config, &data);
    let broker = gateway.wait_ready();
    let mut sensors = Vec::new();
    for i in 0..DEVICES {
        let device = format!("smoke-{i}");
        let (client, events) = sensor(broker, &device).await;
        sensors.push((device, client, events));
    }
    let alarms: Vec<_> = sensors
        .into_iter()
        .map(|(d, c, e)| tokio::spawn(alarm_acknowledged(d, c, e)))
        .collect();
    for alarm in alarms {
        alarm.await.expect("sensor task");
    }
    // Every sensor holds its PUBACK: the worst moment to die.
    gateway.signal(libc::SIGKILL);
    assert!(
        gateway.wait_exit(Duration::from_secs(10)).is_some(),
        "the gateway survived SIGKILL"
    );
    let alerts = smoke_alerts(&data);
    assert_eq!(
        alerts.len(),
        DEVICES,
        "every alarm whose sensor got a PUBACK is in the database; found only {alerts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_the_gateway_did_not_commit_are_not_acknowledged_and_come_again_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed port: the sensors reconnect to the restarted gateway on their own.
    let config = config(dir.path(), free_port());
    let (data, faults) = (dir.path().join("data"), dir.path().join("faults"));
    std::fs::create_dir_all(&faults).unwrap();
    // The alert task hangs at its next step: nothing reaches the disk.
    std::fs::write(faults.join("alerts.wedge"), "").unwrap();
    let mut gateway = start_with_faults(&config, &data, &faults);
    let broker = gateway.wait_ready();
    let mut acks = Vec::new();
    for i in 0..DEVICES {
        let device = format!("smoke-{i}");
        let (client, events) = sensor(broker, &device).await;
        acks.push(alarm_until_acknowledged(device, client, events));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acknowledged: usize = acks.iter().map(|a| *a.borrow()).sum();
    assert_eq!(
        acknowledged, 0,
        "alarms acknowledged before they were committed"
    );

    gateway.signal(libc::SIGKILL);
    assert!(gateway.wait_exit(Duration::from_secs(10)).is_some());
    std::fs::remove_file(faults.join("alerts.wedge")).unwrap();
    let mut gateway = start_with_faults(&config, &data, &faults);
    gateway.wait_ready();
    // The sensors reconnect on their own and send their unacknowledged alarms again.
    let deadline = Instant::now() + Duration::from_secs(30);
    for ack in &mut acks {
        let left = deadline.saturating_duration_since(Instant::now());
        let acked = tokio::time::timeout(left, ack.wait_for(|n| *n >= 1)).await;
        assert!(
            acked.is_ok(),
            "a sensor never got its PUBACK after the restart"
        );
    }
    let alerts = smoke_alerts(&data);
    assert_eq!(
        alerts.len(),
        DEVICES,
        "every alarm is in the database: {alerts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_alarm_path_delays_a_sensors_puback_but_never_silences_the_sensor() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 0);
    let (data, faults) = (dir.path().join("data"), dir.path().join("faults"));
    std::fs::create_dir_all(&faults).unwrap();
    std::fs::write(faults.join("alerts.wedge"), "").unwrap();
    let mut gateway = start_with_faults(&config, &data, &faults);
    let broker = gateway.wait_ready();
    let (client, events) = sensor(broker, "smoke-0").await;
    let began = Instant::now();
    let mut acks = alarm_until_acknowledged("smoke-0".to_owned(), client, events);
    tokio::time::timeout(Duration::from_secs(20), acks.wait_for(|n| *n >= 1))
        .await
        .expect("the PUBACK comes after the hold limit even though nothing commits")
        .unwrap();
    let waited = began.elapsed();
    assert!(
        waited >= gateway::broker::gate::HOLD_MAX,
        "acknowledged after {waited:?} although nothing was committed"
    );
    e2e::eventually(
        Duration::from_secs(10),
        "status.json counts the acknowledgement released before its commit",
        || {
            let text =
                std::fs::read_to_string(data.join("status.json")).map_err(|e| e.to_string())?;
            let status: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| e.to_string())?;
            match status["broker"]["acks_released_uncommitted"].as_u64() {
                Some(n) if n >= 1 => Ok(n),
                _ => Err(status["broker"].to_string()),
            }
        },
    )
    .await;
}
