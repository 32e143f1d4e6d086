//! Helpers shared by the gateway's integration tests (each test binary includes this module).

use std::time::Duration;

use gateway::broker::EmbeddedBroker;
use rumqttc::{Event, Packet, QoS};

/// Publishes every `(topic, payload)` at QoS 1 as client `client_id` and returns once the
/// broker acknowledged each one, i.e. appended it to its logs; panics after `within`.
pub async fn publish_acked<P: Into<Vec<u8>>>(
    broker: &EmbeddedBroker,
    client_id: &str,
    messages: Vec<(String, P)>,
    within: Duration,
) {
    let (client, mut events) = broker.async_client(client_id, messages.len() + 10);
    let total = messages.len();
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher connection failed: {e}"),
            }
        }
    });
    for (topic, payload) in messages {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }
    tokio::time::timeout(within, acks)
        .await
        .unwrap_or_else(|_| panic!("every publish acknowledged within {within:?}"))
        .unwrap();
}
