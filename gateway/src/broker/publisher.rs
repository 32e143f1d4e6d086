//! The gateway's own publications on the embedded broker, in process (issue 18).
//!
//! Alert events used to go out through a TCP MQTT client: encoded, written to the loopback,
//! read by the front (login, ACL), passed to rumqttd's listener and parsed again before the
//! router appended them to its logs: four hops and two MQTT codecs for a message that
//! starts in the same process as the router. A [`LocalPublisher`] hands the publish to the
//! router through an in-process link instead, at QoS 1 (so a QoS 1 subscriber receives it
//! at QoS 1), and returns once the router acknowledged it: it is in the logs, and in the
//! retained store when retained. It bypasses the front's ACL, as the gateway's own internal
//! login did; its client id is unguessable ([`super::internal_client_id`]), so no network
//! client can take its session over.

use bytes::{Bytes, BytesMut};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Packet, Protocol};
use rumqttd::Notification;

use super::local::LocalLinkError;

/// A QoS 1 publish as the router's own type. rumqttd lets a local link build only QoS 0
/// publishes (the QoS and packet id fields are private), so the packet is encoded with
/// rumqttc's MQTT 3.1.1 codec and read back by rumqttd's: a few hundred bytes copied, no hop.
fn qos1_publish(topic: &str, retain: bool, payload: Vec<u8>, pkid: u16) -> Result<Packet, String> {
    let publish = rumqttc::Publish {
        dup: false,
        qos: rumqttc::QoS::AtLeastOnce,
        retain,
        topic: topic.to_owned(),
        pkid,
        payload: Bytes::from(payload),
    };
    let mut buf = BytesMut::with_capacity(publish.size() + 8);
    publish.write(&mut buf).map_err(|e| e.to_string())?;
    V4.read_mut(&mut buf, usize::MAX)
        .map_err(|e| format!("{e:?}"))
}

/// Publishes on the router through an in-process link; see the [module docs](self).
pub struct LocalPublisher {
    client_id: String,
    tx: LinkTx,
    rx: LinkRx,
    /// The last packet id used (QoS 1 ids are 1..=65535, never 0).
    pkid: u16,
}

impl std::fmt::Debug for LocalPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPublisher")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl LocalPublisher {
    pub(super) fn new(client_id: String, tx: LinkTx, rx: LinkRx) -> Self {
        LocalPublisher {
            client_id,
            tx,
            rx,
            pkid: 0,
        }
    }

    /// The link's client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Publishes `payload` on `topic` at QoS 1 and returns once the router acknowledged it.
    /// An error means the router is gone or dropped the link: make a new publisher.
    pub async fn publish(
        &mut self,
        topic: &str,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), LocalLinkError> {
        self.pkid = self.pkid.checked_add(1).unwrap_or(1);
        let pkid = self.pkid;
        let packet = qos1_publish(topic, retain, payload, pkid)
            .map_err(|reason| LocalLinkError::Encode(self.client_id.clone(), reason))?;
        self.tx
            .send(packet)
            .await
            .map_err(|e| LocalLinkError::router(&self.client_id, e))?;
        self.acknowledged(pkid).await
    }

    /// Reads the link's notifications until the PUBACK of `pkid`.
    async fn acknowledged(&mut self, pkid: u16) -> Result<(), LocalLinkError> {
        loop {
            let notification = self
                .rx
                .next()
                .await
                .map_err(|e| LocalLinkError::router(&self.client_id, e))?;
            let Some(notification) = notification else {
                continue;
            };
            if matches!(notification, Notification::Unschedule) {
                // The router paused the link's outgoing side (it never forwards to us, but
                // acks count too): tell it we read them.
                self.rx
                    .wake()
                    .await
                    .map_err(|e| LocalLinkError::router(&self.client_id, e))?;
                continue;
            }
            match Option::<Packet>::from(notification) {
                Some(Packet::PubAck(ack, _)) if ack.pkid == pkid => return Ok(()),
                Some(Packet::Disconnect(..)) => {
                    return Err(LocalLinkError::Disconnected(self.client_id.clone()))
                }
                _ => {}
            }
        }
    }
}
