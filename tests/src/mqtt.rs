//! A small MQTT test client: publish like a sensor, watch alerts like a console.

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// One received publish.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Message {
    /// The payload as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// A connected client; received publishes queue up in `messages`.
pub struct Mqtt {
    pub client: AsyncClient,
    messages: mpsc::UnboundedReceiver<Message>,
    connected: mpsc::UnboundedReceiver<()>,
    /// One item per SUBACK, so that [`Mqtt::subscribe`] returns once the broker has the
    /// subscription (a lock, so subscribing needs only `&self`).
    subacks: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
}

impl Mqtt {
    /// Connects (anonymous) and waits for the CONNACK.
    pub async fn connect(addr: SocketAddr, id: &str) -> Mqtt {
        Self::connect_with(MqttOptions::new(id, addr.ip().to_string(), addr.port())).await
    }

    pub async fn connect_with(mut options: MqttOptions) -> Mqtt {
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = simulators::mqtt::connect(options, 1024);
        let (tx, messages) = mpsc::unbounded_channel();
        let (ctx, mut connected) = mpsc::unbounded_channel();
        let (sub_tx, subacks) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let m = Message {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        };
                        if tx.send(m).is_err() {
                            break;
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = ctx.send(());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        timeout(Duration::from_secs(10), connected.recv())
            .await
            .expect("MQTT CONNACK within 10 s");
        Mqtt {
            client,
            messages,
            connected,
            subacks: tokio::sync::Mutex::new(subacks),
        }
    }

    /// Subscribes (QoS 1) and returns once the broker acknowledged it (SUBACK): from then on
    /// every matching publish reaches this client.
    pub async fn subscribe(&self, filter: &str) {
        let mut subacks = self.subacks.lock().await;
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        timeout(Duration::from_secs(10), subacks.recv())
            .await
            .expect("SUBACK within 10 s")
            .expect("MQTT event loop running");
    }

    /// Publishes QoS 1.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish");
    }

    /// The next message within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Message> {
        timeout(wait, self.messages.recv()).await.ok().flatten()
    }

    /// Messages whose JSON satisfies `pred`, collected until `want` of them arrived or
    /// `wait` passed.
    pub async fn collect(
        &mut self,
        want: usize,
        wait: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < want {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(m) => {
                    let v = m.json();
                    if !v.is_null() && pred(&v) {
                        out.push(v);
                    }
                }
                None => break,
            }
        }
        out
    }

    /// Everything that arrives within `wait` (for "nothing else happened" assertions).
    pub async fn drain(&mut self, wait: Duration) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(m) = self.next(wait).await {
            out.push(m);
        }
        out
    }

    /// Whether the client has reconnected since the last call (for restart tests).
    pub fn reconnected(&mut self) -> bool {
        self.connected.try_recv().is_ok()
    }
}
