//! The embedded MQTT broker, driven by real rumqttc clients over loopback TCP.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use gateway::broker::{enable_tcp_nodelay, BrokerError, BrokerSettings, EmbeddedBroker};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn start(settings: BrokerSettings) -> EmbeddedBroker {
    EmbeddedBroker::start(settings).expect("broker starts")
}

/// Drives an event loop in a task; forwards incoming publishes as (topic, payload) and
/// returns once the first CONNACK and (if `topic` is given) SUBACK have arrived.
async fn subscriber(
    broker: &EmbeddedBroker,
    id: &str,
    topic: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let (client, event_loop) = broker.async_client(id, 100);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(forward(event_loop, tx, Some(ready_tx)));
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("SUBACK within 10 s")
        .unwrap();
    (client, rx)
}

async fn forward(
    mut event_loop: EventLoop,
    tx: mpsc::UnboundedSender<(String, Vec<u8>)>,
    mut on_suback: Option<tokio::sync::oneshot::Sender<()>>,
) {
    loop {
        match event_loop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send((p.topic, p.payload.to_vec())).is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(ready) = on_suback.take() {
                    let _ = ready.send(());
                }
            }
            Ok(_) => {}
            Err(e) => panic!("subscriber connection failed: {e}"),
        }
    }
}

/// Runs an event loop in the background until it fails (publishers).
fn drive(mut event_loop: EventLoop) {
    tokio::spawn(async move { while event_loop.poll().await.is_ok() {} });
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>) -> (String, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("message within 10 s")
        .expect("subscriber still running")
}

/// Polls a fresh connection until its first CONNACK or error; `true` when accepted.
async fn connects(mut options: MqttOptions) -> bool {
    options.set_keep_alive(Duration::from_secs(5));
    let (_client, mut event_loop) = AsyncClient::new(options, 10);
    enable_tcp_nodelay(&mut event_loop);
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match event_loop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return ack.code == ConnectReturnCode::Success
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    outcome.unwrap_or(false)
}

#[tokio::test]
async fn broker_on_port_zero_reports_its_real_port_and_routes_qos1() {
    let broker = start(BrokerSettings::new(any_port()));
    let addr = broker.local_addr();
    assert_ne!(addr.port(), 0, "the real port, not the requested 0");
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    // The gateway's own login exists on an anonymous broker too (the front tells its
    // clients from anonymous ones by it).
    let (internal_user, _) = broker.internal_credentials().expect("internal login");
    assert!(internal_user.starts_with("shouwang-gateway-"));
    let anonymous = MqttOptions::new("anon", "127.0.0.1", addr.port());
    assert!(connects(anonymous).await, "anonymous broker");
    assert_eq!(
        broker.client_options("x").broker_address(),
        ("127.0.0.1".to_owned(), addr.port())
    );

    let (_sub, mut rx) = subscriber(&broker, "ingest", "sensors/+/smoke").await;
    let (publisher, event_loop) = broker.async_client("smoke-1", 100);
    drive(event_loop);
    for i in 0..100u32 {
        publisher
            .publish(
                "sensors/smoke-1/smoke",
                QoS::AtLeastOnce,
                false,
                i.to_string(),
            )
            .await
            .unwrap();
    }
    for expected in 0..100u32 {
        let (topic, payload) = next(&mut rx).await;
        assert_eq!(topic, "sensors/smoke-1/smoke");
        assert_eq!(String::from_utf8(payload).unwrap(), expected.to_string());
    }
}

#[tokio::test]
async fn wrong_password_is_refused_and_right_one_accepted() {
    let mut settings = BrokerSettings::new(any_port());
    settings.credentials = HashMap::from([("gas-7".to_owned(), "right-password".to_owned())]);
    let broker = start(settings);
    let (internal_user, internal_password) = broker.internal_credentials().expect("auth is on");
    assert_ne!(internal_user, "gas-7");
    assert!(internal_password.len() >= 32);

    let sensor = |password: &str| {
        let mut options = broker.client_options("gas-7");
        options.set_credentials("gas-7", password);
        options
    };
    assert!(
        !connects(sensor("wrong-password")).await,
        "wrong password refused"
    );
    let port = broker.local_addr().port();
    let no_login = MqttOptions::new("anon", "127.0.0.1", port);
    assert!(!connects(no_login).await, "a client without login refused");
    assert!(
        connects(sensor("right-password")).await,
        "right password accepted"
    );

    // The gateway's own client logs in with the internal credentials…
    let (_sub, mut rx) = subscriber(&broker, "ingest", "sensors/#").await;
    // …and receives what the authenticated sensor publishes.
    let (publisher, mut event_loop) = AsyncClient::new(sensor("right-password"), 10);
    enable_tcp_nodelay(&mut event_loop);
    drive(event_loop);
    publisher
        .publish("sensors/gas-7/gas", QoS::AtLeastOnce, false, "ppm=412")
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        ("sensors/gas-7/gas".to_owned(), b"ppm=412".to_vec())
    );
}

#[test]
fn a_busy_fixed_port_gives_a_clear_error() {
    let occupied = TcpListener::bind(any_port()).unwrap();
    let busy = occupied.local_addr().unwrap();

    let began = Instant::now();
    let result = EmbeddedBroker::start(BrokerSettings::new(busy));
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "took {:?}",
        began.elapsed()
    );
    match result {
        Err(BrokerError::AddressInUse(addr)) => assert_eq!(addr, busy),
        other => panic!("expected AddressInUse({busy}), got {other:?}"),
    }

    // A busy optional listener fails the whole start too, naming that address.
    let mut settings = BrokerSettings::new(any_port());
    settings.v5_bind = Some(busy);
    match EmbeddedBroker::start(settings) {
        Err(e @ BrokerError::AddressInUse(_)) => {
            assert_eq!(
                e.to_string(),
                format!("MQTT broker address {busy} is already in use")
            )
        }
        other => panic!("expected AddressInUse({busy}), got {other:?}"),
    }
}

#[tokio::test]
async fn two_brokers_run_side_by_side() {
    let a = start(BrokerSettings::new(any_port()));
    let b = start(BrokerSettings::new(any_port()));
    assert_ne!(a.local_addr(), b.local_addr());

    let (_sub_a, mut rx_a) = subscriber(&a, "ingest", "sensors/#").await;
    let (_sub_b, mut rx_b) = subscriber(&b, "ingest", "sensors/#").await;
    for (broker, payload) in [(&a, "to-a"), (&b, "to-b")] {
        let (publisher, event_loop) = broker.async_client("leak-1", 10);
        drive(event_loop);
        publisher
            .publish("sensors/leak-1/water", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    assert_eq!(next(&mut rx_a).await.1, b"to-a");
    assert_eq!(next(&mut rx_b).await.1, b"to-b");
    // Each broker routes only its own traffic.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx_a.try_recv().is_err());
    assert!(rx_b.try_recv().is_err());
}

#[tokio::test]
async fn mqtt5_clients_reach_mqtt311_subscribers_through_the_v5_listener() {
    let mut settings = BrokerSettings::new(any_port());
    settings.v5_bind = Some(any_port());
    settings.credentials = HashMap::from([("sos-3".to_owned(), "pw-sos".to_owned())]);
    let broker = start(settings);
    let v5 = broker.v5_addr().expect("v5 listener");
    assert_ne!(v5.port(), 0);
    assert_ne!(v5, broker.local_addr());

    let (_sub, mut rx) = subscriber(&broker, "ingest", "sensors/#").await;
    let mut options = rumqttc::v5::MqttOptions::new("sos-3", "127.0.0.1", v5.port());
    options.set_credentials("sos-3", "pw-sos");
    // rumqttc's v5 client keeps its network options in MqttOptions.
    let mut network = options.network_options();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    let (publisher, mut event_loop) = rumqttc::v5::AsyncClient::new(options, 10);
    tokio::spawn(async move { while event_loop.poll().await.is_ok() {} });
    publisher
        .publish(
            "sensors/sos-3/button",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "pressed",
        )
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await.1, b"pressed");
}

#[tokio::test]
async fn a_last_will_reaches_subscribers_when_a_sensor_vanishes() {
    let broker = start(BrokerSettings::new(any_port()));
    let (_sub, mut rx) = subscriber(&broker, "ingest", "sensors/+/status").await;

    let mut options = broker.client_options("ebike-9");
    options.set_last_will(rumqttc::LastWill::new(
        "sensors/ebike-9/status",
        "offline",
        QoS::AtLeastOnce,
        false,
    ));
    let (_client, mut event_loop) = AsyncClient::new(options, 10);
    enable_tcp_nodelay(&mut event_loop);
    let poller = tokio::spawn(async move { while event_loop.poll().await.is_ok() {} });
    tokio::time::sleep(Duration::from_millis(300)).await;
    poller.abort(); // the TCP connection drops without DISCONNECT
    assert_eq!(
        next(&mut rx).await,
        ("sensors/ebike-9/status".to_owned(), b"offline".to_vec())
    );
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_its_connections_and_frees_the_port() {
    let broker = start(BrokerSettings::new(any_port()));
    let addr = broker.local_addr();
    let options = broker.client_options("smoke-2");

    let (client, mut event_loop) = broker.async_client("ingest", 10);
    client
        .subscribe("sensors/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed = None;
        loop {
            match event_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => subscribed = Some(()),
                Ok(_) => {}
                Err(e) => {
                    let _ = closed_tx.send((subscribed, e.to_string()));
                    return;
                }
            }
        }
    });
    assert!(connects(options.clone()).await);
    tokio::time::sleep(Duration::from_millis(100)).await;

    tokio::task::spawn_blocking(move || broker.shutdown())
        .await
        .unwrap();
    let (subscribed, _error) = tokio::time::timeout(Duration::from_secs(5), closed_rx)
        .await
        .expect("the live connection is closed by shutdown")
        .unwrap();
    assert!(
        subscribed.is_some(),
        "it was connected and subscribed before"
    );
    assert!(!connects(options).await, "nothing listens after shutdown");
    // The same fixed port can be served again.
    let again = start(BrokerSettings::new(addr));
    assert_eq!(again.local_addr(), addr);
}

#[tokio::test]
async fn a_payload_over_the_limit_closes_the_publishers_connection() {
    let mut settings = BrokerSettings::new(any_port());
    settings.max_payload_bytes = 4096;
    let broker = start(settings);
    let (_sub, mut rx) = subscriber(&broker, "ingest", "sensors/#").await;

    let mut options = broker.client_options("cam-1");
    options.set_max_packet_size(1 << 20, 1 << 20); // the client itself would allow it
    let (publisher, mut event_loop) = AsyncClient::new(options, 10);
    enable_tcp_nodelay(&mut event_loop);
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        loop {
            if let Err(e) = event_loop.poll().await {
                let _ = closed_tx.send(e.to_string());
                return;
            }
        }
    });
    let topic = "sensors/cam-1/snapshot";
    publisher
        .publish(topic, QoS::AtLeastOnce, false, vec![1u8; 4096])
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await.1.len(),
        4096,
        "exactly the limit passes"
    );
    publisher
        .publish(topic, QoS::AtLeastOnce, false, vec![2u8; 8192])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), closed_rx)
        .await
        .expect("the broker closes the connection")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        rx.try_recv().is_err(),
        "the oversized message is not delivered"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_and_its_headroom_are_refused() {
    let mut settings = BrokerSettings::new(any_port());
    settings.max_connections = 1;
    let broker = start(settings);
    // max_connections + RESERVED_CONNECTIONS clients may be connected at once.
    let allowed = 1 + gateway::broker::RESERVED_CONNECTIONS;
    let mut held = Vec::new();
    for i in 0..allowed {
        let (client, mut event_loop) = broker.async_client(&format!("smoke-{i}"), 10);
        let (up_tx, up_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut up = Some(up_tx);
            while let Ok(event) = event_loop.poll().await {
                if let Event::Incoming(Packet::ConnAck(_)) = event {
                    if let Some(up) = up.take() {
                        let _ = up.send(());
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), up_rx)
            .await
            .expect("connection within the limit accepted")
            .unwrap();
        held.push(client);
    }
    assert!(
        !connects(broker.client_options("one-too-many")).await,
        "the connection over the limit gets no CONNACK"
    );
}

#[test]
fn invalid_limits_are_refused_before_anything_starts() {
    let mut settings = BrokerSettings::new(any_port());
    settings.max_connections = 0;
    assert!(matches!(
        EmbeddedBroker::start(settings),
        Err(BrokerError::InvalidSettings(_))
    ));
    let mut settings = BrokerSettings::new(any_port());
    settings.credentials.insert(String::new(), "pw".to_owned());
    assert!(matches!(
        EmbeddedBroker::start(settings),
        Err(BrokerError::InvalidSettings(_))
    ));
}

/// Every publish a fresh QoS 1 subscriber of `filter` receives within `within`, as
/// (topic, qos, retain, payload).
async fn received(
    broker: &EmbeddedBroker,
    id: &str,
    filter: &str,
    within: Duration,
) -> Vec<(String, QoS, bool, Vec<u8>)> {
    let (client, mut event_loop) = broker.async_client(id, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(event) = tokio::time::timeout_at(deadline, event_loop.poll()).await {
        if let Event::Incoming(Packet::Publish(p)) = event.expect("subscriber connected") {
            got.push((p.topic, p.qos, p.retain, p.payload.to_vec()));
        }
    }
    got
}

/// Issue 18: alert events go to the router through an in-process link (no TCP client, no
/// front) and keep what the TCP client gave them: QoS 1 for QoS 1 subscribers, retained
/// while active (a console connecting later sees them), cleared by an empty retained
/// message, and each publish returns only once the router acknowledged it.
#[tokio::test]
async fn alerts_published_in_process_reach_live_and_late_subscribers_at_qos_1_and_retained() {
    let broker = start(BrokerSettings::new(any_port()));
    let mut link = broker.link_factory().publisher("publisher").unwrap();
    assert!(link.client_id().starts_with("shouwang-publisher-"));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let live = tokio::spawn({
        let (client, mut event_loop) = broker.async_client("console-live", 100);
        async move {
            client
                .subscribe("shouwang/t1/alerts/#", QoS::AtLeastOnce)
                .await
                .unwrap();
            let (mut ready, mut got) = (Some(ready_tx), Vec::new());
            while got.len() < 3 {
                match event_loop.poll().await.unwrap() {
                    Event::Incoming(Packet::SubAck(_)) => {
                        let _ = ready.take().map(|r| r.send(()));
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        got.push((p.topic, p.qos, p.payload.to_vec()))
                    }
                    _ => {}
                }
            }
            got
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("SUBACK within 10 s")
        .unwrap();
    let raised = br#"{"id":"a1","state":"raised"}"#.to_vec();
    link.publish("shouwang/t1/alerts/a1", true, raised.clone())
        .await
        .expect("acknowledged by the router");
    link.publish("shouwang/t1/alerts/a2", true, b"{\"id\":\"a2\"}".to_vec())
        .await
        .unwrap();
    let late = received(
        &broker,
        "console-late",
        "shouwang/t1/alerts/#",
        Duration::from_secs(1),
    )
    .await;
    let mut late_topics: Vec<_> = late
        .iter()
        .map(|(t, q, r, _)| (t.clone(), *q, *r))
        .collect();
    late_topics.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        late_topics,
        [
            ("shouwang/t1/alerts/a1".to_owned(), QoS::AtLeastOnce, true),
            ("shouwang/t1/alerts/a2".to_owned(), QoS::AtLeastOnce, true),
        ],
        "a late subscriber gets the active alerts, retained, at QoS 1"
    );
    // a1 resolves: its final record, then the empty retained message that clears it.
    link.publish(
        "shouwang/t1/alerts/a1",
        false,
        b"{\"state\":\"resolved\"}".to_vec(),
    )
    .await
    .unwrap();
    link.publish("shouwang/t1/alerts/a1", true, Vec::new())
        .await
        .unwrap();
    let after = received(
        &broker,
        "console-after",
        "shouwang/t1/alerts/#",
        Duration::from_secs(1),
    )
    .await;
    let topics: Vec<_> = after.iter().map(|(t, ..)| t.as_str()).collect();
    assert_eq!(
        topics,
        ["shouwang/t1/alerts/a2"],
        "a1 cleared, a2 still active"
    );
    let live = tokio::time::timeout(Duration::from_secs(5), live)
        .await
        .expect("the live subscriber got three publishes")
        .unwrap();
    assert_eq!(
        live[0],
        ("shouwang/t1/alerts/a1".to_owned(), QoS::AtLeastOnce, raised)
    );
    assert!(live.iter().all(|(_, q, _)| *q == QoS::AtLeastOnce));
}
