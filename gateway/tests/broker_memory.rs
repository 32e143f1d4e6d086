//! The embedded broker's logs are buffers for readers that read at once, not stores: a
//! device topic keeps a burst for ingest, never the topic's history, and memory stays flat
//! however many messages pass (see `broker`, "Memory").

use std::time::Duration;

use gateway::broker::{
    BrokerError, BrokerSettings, EmbeddedBroker, LocalLink, LocalSubscriber,
    DEVICE_LOG_SEGMENT_BYTES, MIN_LOG_SEGMENT_BYTES,
};

mod support;

/// A broker whose in-process subscriber `reader` names `filters` (each one device's, as
/// ingest's device link does, or not), not read yet.
fn broker_with_reader(filters: &[&str], per_device: bool) -> (EmbeddedBroker, LocalLink) {
    let mut settings = BrokerSettings::new("127.0.0.1:0".parse().unwrap());
    settings.local_subscribers = vec![LocalSubscriber {
        role: "reader".into(),
        client_id: "reader".into(),
        filters: filters.iter().map(|f| f.to_string()).collect(),
        per_device,
    }];
    let mut broker = EmbeddedBroker::start(settings).expect("broker starts");
    let link = broker.take_local_link("reader").expect("the reader's link");
    (broker, link)
}

/// Publishes at QoS 1 and returns once the broker acknowledged every message.
async fn publish_acked(broker: &EmbeddedBroker, messages: Vec<(String, Vec<u8>)>) {
    support::publish_acked(broker, "publisher", messages, Duration::from_secs(30)).await;
}

/// Reads the link until it has been quiet for 500 ms: the payloads read and the number of
/// messages the link reported dropped.
async fn drain(link: &mut LocalLink) -> (Vec<Vec<u8>>, u64) {
    let (mut got, mut dropped) = (Vec::new(), 0);
    while let Ok(Ok(p)) = tokio::time::timeout(Duration::from_millis(500), link.next()).await {
        dropped += p.dropped_before;
        got.push(p.payload.to_vec());
    }
    (got, dropped)
}

fn numbered(topic: &str, n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (topic.to_owned(), format!("{i:0size$}").into_bytes()))
        .collect()
}

#[tokio::test]
async fn a_device_topic_log_keeps_a_burst_for_ingest_not_the_topics_history() {
    let topic = "sensors/heat-1/state";
    let (broker, mut link) = broker_with_reader(&[topic], true);
    // 2,000 × 100 B: far more than the link's buffer (200 messages) and a device log (2 KiB).
    publish_acked(&broker, numbered(topic, 2_000, 100)).await;
    let (got, dropped) = drain(&mut link).await;
    assert_eq!(
        got.len() as u64 + dropped,
        2_000,
        "every message read or counted as dropped"
    );
    assert!(
        got.len() < 500 && dropped > 1_500,
        "the broker kept {} of 2,000 messages of one device topic: a store, not a buffer",
        got.len()
    );
    assert_eq!(
        got.last(),
        Some(&format!("{:0100}", 1_999).into_bytes()),
        "the newest message, the device's current state, is always kept"
    );
}

#[tokio::test]
async fn a_max_size_packet_fits_a_device_log_and_waits_there_for_ingest() {
    let topic = "sensors/cam-1/state";
    let (broker, mut link) = broker_with_reader(&[topic], true);
    // Fill the link's buffer first, so that what follows waits in the device log.
    let mut messages = numbered(topic, 1_000, 100);
    let big = vec![b'x'; BrokerSettings::new(broker.local_addr()).max_payload_bytes];
    assert!(big.len() > 30 * DEVICE_LOG_SEGMENT_BYTES);
    messages.push((topic.to_owned(), big.clone()));
    messages.extend(numbered(topic, 3, 100));
    publish_acked(&broker, messages).await;
    let (got, dropped) = drain(&mut link).await;
    assert_eq!(got.len() as u64 + dropped, 1_004);
    let at = got.iter().position(|p| *p == big);
    assert_eq!(
        at.map(|i| got.len() - i),
        Some(4),
        "the max-size packet, then the 3 small ones after it"
    );
}

#[tokio::test]
async fn a_wildcard_subscriber_keeps_a_burst_of_alerts_in_a_shared_log() {
    let (broker, mut link) = broker_with_reader(&["shouwang/site/alerts/#"], false);
    // 350 alert-sized messages, each on its own topic: 200 wait in the link's buffer, the
    // other ~150 KB in the shared log.
    let alerts = (0..350)
        .map(|i| (format!("shouwang/site/alerts/{i}"), vec![b'a'; 1000]))
        .collect();
    publish_acked(&broker, alerts).await;
    let (got, dropped) = drain(&mut link).await;
    assert_eq!(got.len(), 350, "alerts lost from a shared log");
    assert_eq!(dropped, 0);
}

#[test]
fn a_device_log_smaller_than_rumqttd_allows_is_refused_before_anything_starts() {
    for (bytes, count) in [(MIN_LOG_SEGMENT_BYTES - 1, 2), (MIN_LOG_SEGMENT_BYTES, 1)] {
        let mut settings = BrokerSettings::new("127.0.0.1:0".parse().unwrap());
        settings.device_log_segment_bytes = bytes;
        settings.device_log_segment_count = count;
        assert!(matches!(
            EmbeddedBroker::start(settings),
            Err(BrokerError::InvalidSettings(_))
        ));
    }
}

#[tokio::test]
async fn a_devices_state_and_heartbeats_share_one_log_and_every_message_is_read_or_counted() {
    let (broker, mut link) = broker_with_reader(&["sensors/smoke-1/+"], true);
    let interleaved = |n: usize| -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let topic = if i % 3 == 0 { "heartbeat" } else { "state" };
                (
                    format!("sensors/smoke-1/{topic}"),
                    format!("{i:080}").into_bytes(),
                )
            })
            .collect()
    };
    // A burst the log holds: nothing dropped, and no false "dropped" from the two topics
    // taking turns in one log.
    publish_acked(&broker, interleaved(12)).await;
    let (got, dropped) = drain(&mut link).await;
    assert_eq!((got.len(), dropped), (12, 0));
    // A burst far beyond the log: what is not read is counted.
    publish_acked(&broker, interleaved(3_000)).await;
    let (got, dropped) = drain(&mut link).await;
    assert_eq!(got.len() as u64 + dropped, 3_000);
    assert!(
        dropped > 2_000,
        "only {dropped} dropped: the log is a store"
    );
}
