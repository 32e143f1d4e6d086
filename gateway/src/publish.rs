//! Local publication of alert events on the gateway's broker.
//!
//! Each event is published QoS 1 on `shouwang/{site}/alerts/{id}`, **retained while the alert
//! is active** so a subscriber that connects later (a console, a PA controller) sees every
//! active alert at once; a resolved alert publishes its final record not retained, then an
//! empty retained message that clears the topic. The embedded broker has no persistence, so
//! after a restart the active alerts are published again.

use rumqttc::{AsyncClient, QoS};
use tokio::sync::broadcast;

use crate::alerts::{Alert, AlertState};

/// The local topic of an alert.
pub fn topic(site: &str, id: &str) -> String {
    format!("shouwang/{site}/alerts/{id}")
}

/// Publishes one alert event.
pub async fn publish(client: &AsyncClient, alert: &Alert) -> Result<(), rumqttc::ClientError> {
    let topic = topic(&alert.site, &alert.id);
    let body = serde_json::to_vec(alert).unwrap_or_default();
    if alert.state == AlertState::Resolved {
        client
            .publish(&topic, QoS::AtLeastOnce, false, body)
            .await?;
        client
            .publish(&topic, QoS::AtLeastOnce, true, Vec::new())
            .await
    } else {
        client.publish(&topic, QoS::AtLeastOnce, true, body).await
    }
}

/// Publishes every alert event received until the channel closes.
pub async fn run(client: AsyncClient, events: &mut broadcast::Receiver<Alert>) {
    loop {
        match events.recv().await {
            Ok(alert) => {
                if let Err(e) = publish(&client, &alert).await {
                    tracing::warn!(error = %e, id = %alert.id, "local alert publication failed");
                }
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
}
