//! Local publication of alert events on the gateway's broker.
//!
//! Each event is published QoS 1 on `shouwang/{site}/alerts/{id}`, **retained while the alert
//! is active** so a subscriber that connects later (a console, a PA controller) sees every
//! active alert at once; a resolved alert publishes its final record not retained, then an
//! empty retained message that clears the topic. The embedded broker has no persistence, so
//! after a restart the active alerts are published again.
//!
//! That clear is the only empty retained message ever sent, and only after the final record
//! was handed to the client: an event whose record cannot be encoded publishes nothing (an
//! empty retained payload would delete an active alert's topic), and a failed publish is not
//! followed by the clear. Failures are logged and counted ([`PublishCounts`]); the alert is
//! in the store either way.
//!
//! On the embedded broker the events go to the router in process ([`Bus::Router`],
//! `broker::publisher`): no TCP, no front, no second MQTT parse on the alarm path; with an
//! external broker, through an MQTT client ([`Bus::Client`]).

use rumqttc::{AsyncClient, QoS};

use crate::broker::local::LocalLinkError;
use crate::broker::publisher::LocalPublisher;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::alerts::{Alert, AlertState};

/// Why an alert event was not published locally.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("alert {id}: cannot encode its record, nothing published: {source}")]
    Encode {
        id: String,
        source: serde_json::Error,
    },
    #[error("alert {id}: publish failed: {source}")]
    Client {
        id: String,
        source: rumqttc::ClientError,
    },
    /// The in-process link to the router failed: the publisher needs a new one.
    #[error("alert {id}: publish failed: {source}")]
    Router { id: String, source: LocalLinkError },
}

/// Local publication failures since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PublishCounts {
    /// Events whose record could not be encoded (nothing was published for them).
    pub encode_failures: u64,
    /// Publishes the MQTT client refused.
    pub publish_failures: u64,
}

impl PublishCounts {
    fn count(&mut self, e: &PublishError) {
        match e {
            PublishError::Encode { .. } => self.encode_failures += 1,
            PublishError::Client { .. } | PublishError::Router { .. } => self.publish_failures += 1,
        }
    }
}

/// One MQTT publish on an alert's topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub retain: bool,
    pub payload: Vec<u8>,
}

/// What to publish for `record`, in order: its JSON retained while active; when `resolved`,
/// its JSON not retained, then the empty retained message that clears the topic. An encoding
/// failure means nothing at all is published.
pub fn publications<T: Serialize>(
    record: &T,
    resolved: bool,
) -> Result<Vec<Publication>, serde_json::Error> {
    let body = serde_json::to_vec(record)?;
    Ok(if resolved {
        vec![
            Publication {
                retain: false,
                payload: body,
            },
            Publication {
                retain: true,
                payload: Vec::new(),
            },
        ]
    } else {
        vec![Publication {
            retain: true,
            payload: body,
        }]
    })
}

/// The local topic of an alert.
pub fn topic(site: &str, id: &str) -> String {
    format!("shouwang/{site}/alerts/{id}")
}

/// Where alert events are published.
pub enum Bus {
    /// The embedded broker's router, in process.
    Router(LocalPublisher),
    /// An MQTT client (an external broker).
    Client(AsyncClient),
}

impl Bus {
    async fn publish(&mut self, topic: &str, id: &str, p: Publication) -> Result<(), PublishError> {
        match self {
            Bus::Router(link) => link
                .publish(topic, p.retain, p.payload)
                .await
                .map_err(|source| PublishError::Router {
                    id: id.to_owned(),
                    source,
                }),
            Bus::Client(client) => client
                .publish(topic, QoS::AtLeastOnce, p.retain, p.payload)
                .await
                .map_err(|source| PublishError::Client {
                    id: id.to_owned(),
                    source,
                }),
        }
    }
}

/// Publishes one alert event.
pub async fn publish(client: &mut Bus, alert: &Alert) -> Result<(), PublishError> {
    let topic = topic(&alert.site, &alert.id);
    publish_record(
        client,
        &topic,
        &alert.id,
        alert,
        alert.state == AlertState::Resolved,
    )
    .await
}

/// Publishes `record` on `topic` as [`publications`] says, stopping at the first failure.
async fn publish_record<T: Serialize>(
    client: &mut Bus,
    topic: &str,
    id: &str,
    record: &T,
    resolved: bool,
) -> Result<(), PublishError> {
    let plan = publications(record, resolved).map_err(|source| PublishError::Encode {
        id: id.to_owned(),
        source,
    })?;
    for p in plan {
        client.publish(topic, id, p).await?;
    }
    Ok(())
}

/// Publishes `republish` (the active alerts, after a restart), then every alert event
/// received until the channel closes. Returns the failures counted, or the in-process
/// link's failure (the stage starts again with a new link).
pub async fn run(
    mut client: Bus,
    republish: &[Alert],
    events: &mut broadcast::Receiver<Alert>,
) -> Result<PublishCounts, PublishError> {
    let mut counts = PublishCounts::default();
    for alert in republish {
        publish_counted(&mut client, alert, &mut counts).await?;
    }
    loop {
        match events.recv().await {
            Ok(alert) => {
                publish_counted(&mut client, &alert, &mut counts).await?;
                crate::supervise::fault_point("publisher").await;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "local publisher lagged; alerts are in the store"
                );
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    Ok(counts)
}

/// Publishes one alert; a failure is counted and logged, and returned when it is the
/// in-process link's (nothing more can go through it).
async fn publish_counted(
    client: &mut Bus,
    alert: &Alert,
    counts: &mut PublishCounts,
) -> Result<(), PublishError> {
    let Err(e) = publish(client, alert).await else {
        return Ok(());
    };
    counts.count(&e);
    tracing::error!(
        error = %e,
        encode_failures = counts.encode_failures,
        publish_failures = counts.publish_failures,
        "local alert publication failed"
    );
    match e {
        PublishError::Router { .. } => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{EventLoop, MqttOptions, Request};

    /// A record serde_json refuses: a map with non-string keys.
    fn unencodable() -> std::collections::BTreeMap<(u8, u8), u8> {
        [((1, 2), 3)].into_iter().collect()
    }

    fn client() -> (AsyncClient, EventLoop) {
        AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 16)
    }

    /// What the client queued, as (retain, payload) pairs.
    fn queued(mut event_loop: EventLoop) -> Vec<(bool, Vec<u8>)> {
        event_loop.clean();
        event_loop
            .pending
            .iter()
            .filter_map(|r| match r {
                Request::Publish(p) => Some((p.retain, p.payload.to_vec())),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_record_that_cannot_be_encoded_publishes_nothing_least_of_all_an_empty_retained_message(
    ) {
        for resolved in [false, true] {
            let (client, event_loop) = client();
            let r = publish_record(
                &mut Bus::Client(client),
                "t/a",
                "a",
                &unencodable(),
                resolved,
            )
            .await;
            assert!(matches!(r, Err(PublishError::Encode { .. })), "{r:?}");
            assert_eq!(queued(event_loop), [], "resolved = {resolved}");
        }
        let mut counts = PublishCounts::default();
        counts.count(&PublishError::Encode {
            id: "a".into(),
            source: serde_json::to_vec(&unencodable()).unwrap_err(),
        });
        assert_eq!(counts.encode_failures, 1);
    }

    #[tokio::test]
    async fn only_a_resolved_alert_clears_its_topic_and_only_after_its_final_record() {
        let (client, event_loop) = client();
        let client = &mut Bus::Client(client);
        publish_record(
            client,
            "t/a",
            "a",
            &serde_json::json!({"state": "raised"}),
            false,
        )
        .await
        .unwrap();
        publish_record(
            client,
            "t/a",
            "a",
            &serde_json::json!({"state": "resolved"}),
            true,
        )
        .await
        .unwrap();
        let got = queued(event_loop);
        assert_eq!(
            got,
            [
                (true, br#"{"state":"raised"}"#.to_vec()),
                (false, br#"{"state":"resolved"}"#.to_vec()),
                (true, Vec::new()),
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_publish_sends_nothing_after_it() {
        let (client, event_loop) = client();
        drop(event_loop);
        let r = publish_record(
            &mut Bus::Client(client),
            "t/a",
            "a",
            &serde_json::json!({}),
            true,
        )
        .await;
        assert!(matches!(r, Err(PublishError::Client { .. })), "{r:?}");
    }
}
