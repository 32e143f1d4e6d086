//! `sim link` and `sim verify` against a real mosquitto started by the test: alerts
//! published through the link, the link cut in the middle and restored, and the verdict.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{Event, Packet, QoS};
use simulators::link;
use simulators::mqtt::{self, Endpoint};
use simulators::upstream::{self, UpstreamOptions};
use simulators::verify::{verify, Verdict, VerifyError, VerifyOptions};
use simulators::wait::{eventually, reached};
use tokio_util::sync::CancellationToken;

fn alert(seq: u64) -> Vec<u8> {
    serde_json::json!({
        "id": format!("alert-{seq}"),
        "seq": seq,
        "kind": "smoke",
        "level": "red",
        "updated_at": chrono::Utc::now().to_rfc3339(),
    })
    .to_string()
    .into_bytes()
}

fn endpoint(port: u16) -> Endpoint {
    Endpoint::parse(&format!("127.0.0.1:{port}")).unwrap()
}

/// A publisher that keeps polling (and reconnecting) in the background; returns its client
/// and a counter of PUBACKs. Its session persists (clean_session = false): rumqttc drops
/// the publishes queued during an outage when it reconnects to a *new* session.
fn publisher(
    at: &Endpoint,
    id: &str,
) -> (
    rumqttc::AsyncClient,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut options = mqtt::options(id, at);
    options.set_clean_session(false);
    let (client, mut events) = mqtt::connect(options, 256);
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = acks.clone();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                // Reconnect backoff.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (client, acks)
}

/// Publishes `alert(seq)` for each of `seqs` on `topic`, QoS 1.
async fn publish(client: &rumqttc::AsyncClient, topic: &str, seqs: impl IntoIterator<Item = u64>) {
    for seq in seqs {
        client
            .publish(topic, QoS::AtLeastOnce, false, alert(seq))
            .await
            .unwrap();
    }
}

/// A plain mosquitto on a free port, in `dir`.
fn plain_broker(dir: &std::path::Path) -> upstream::Mosquitto {
    upstream::start(&UpstreamOptions {
        dir: dir.to_owned(),
        port: 0,
        tls_port: None,
    })
    .unwrap()
}

/// `verify` with `options`, running; returns once it is subscribed.
async fn verifying(
    options: &VerifyOptions,
) -> tokio::task::JoinHandle<Result<Verdict, VerifyError>> {
    let ready = CancellationToken::new();
    let checking = {
        let (options, ready) = (options.clone(), ready.clone());
        tokio::spawn(async move { verify(&options, ready, CancellationToken::new()).await })
    };
    tokio::time::timeout(Duration::from_secs(5), ready.cancelled())
        .await
        .expect("subscribed");
    checking
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_duplicates_gaps_and_missing_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = plain_broker(dir.path());
    let mut options = VerifyOptions::new(endpoint(broker.port), "site-7", 5);
    options.timeout = Duration::from_secs(3);
    let checking = verifying(&options).await;
    let (client, _) = publisher(&endpoint(broker.port), "platform-test-pub");
    publish(&client, "shouwang/site-7/alerts", [1, 2, 2, 3, 5]).await;
    publish(&client, "shouwang/other-site/alerts", [4]).await;
    let verdict = checking.await.unwrap().unwrap();
    assert_eq!(
        (verdict.received, verdict.unique, verdict.duplicates),
        (5, 4, 1),
        "{verdict}"
    );
    assert_eq!(verdict.gaps, [4]);
    assert_eq!(verdict.missing, 1);
    assert!(!verdict.ok());
    assert!(verdict.latency_ms.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_sent_through_a_link_cut_in_the_middle_all_arrive_once_it_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let broker = plain_broker(dir.path());
    let stop = CancellationToken::new();
    let wan = link::start(
        "127.0.0.1:0",
        &format!("127.0.0.1:{}", broker.port),
        stop.clone(),
    )
    .await
    .unwrap();

    let mut options = VerifyOptions::new(endpoint(broker.port), "site-7", 10);
    options.timeout = Duration::from_secs(20);
    options.settle = Duration::from_millis(500);
    let checking = verifying(&options).await;

    let (gateway, acks) = publisher(&endpoint(wan.listen.port()), "gateway-through-link");
    publish(&gateway, "shouwang/site-7/alerts", 1..=5).await;
    eventually(
        Duration::from_secs(5),
        "the first five alerts acknowledged",
        || reached(acks.load(Ordering::Relaxed), 5),
    )
    .await;
    wan.down();
    // Published while the WAN is down: queued by the client, delivered after the restore.
    publish(&gateway, "shouwang/site-7/alerts", 6..=10).await;
    // The outage is felt: the open connection is cut and a reconnect refused.
    eventually(Duration::from_secs(5), "the open connection cut", || {
        reached(wan.stats.cut.load(Ordering::Relaxed), 1)
    })
    .await;
    eventually(Duration::from_secs(5), "a reconnect refused", || {
        reached(wan.stats.refused.load(Ordering::Relaxed), 1)
    })
    .await;
    wan.up();

    let verdict = checking.await.unwrap().unwrap();
    assert_eq!(verdict.missing, 0, "{verdict}");
    assert!(verdict.gaps.is_empty(), "{verdict}");
    assert!(verdict.ok(), "{verdict}");
    stop.cancel();
}
