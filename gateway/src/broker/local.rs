//! In-process subscribers of the embedded broker: the gateway's own ingest reads the router
//! directly instead of through a TCP client.
//!
//! # Why
//!
//! rumqttd stores every publish in a bounded commit log **per subscription filter** and
//! a subscriber that falls further behind than that log silently skips the oldest messages.
//! With one wildcard filter for every sensor, a single device flooding at full speed shares
//! that log with every smoke detector of the compound: one alarm in a flood could be skipped.
//!
//! A [`LocalSubscriber`] therefore names one filter per device (the ingest gives
//! `sensors/{id}/+`, or a device's topics exactly), so each device gets logs of its own and a
//! flood can only overrun the flooder's own. Reading through an in-process link also removes the TCP hop, the MQTT
//! encode/decode and the QoS 1 in-flight window (100 messages) between router and ingest.
//!
//! # Ordering with the listeners
//!
//! [`super::EmbeddedBroker::start`] attaches and subscribes every local subscriber **before**
//! any listener opens, so the first publish of the first sensor to connect already has a
//! reader: nothing is published into the void while the gateway starts.
//!
//! # Flow control
//!
//! Subscriptions are QoS 0 (in-process, nothing can be lost on the way). The router pushes at
//! most its outgoing capacity into the link, then marks it unscheduled; [`LocalLink::next`]
//! wakes it again when it meets that mark, as rumqttd's own network links do.

use std::collections::HashMap;

use bytes::Bytes;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::Notification;

use super::gate::Mark;

/// An in-process subscriber to attach when the broker starts.
#[derive(Debug, Clone)]
pub struct LocalSubscriber {
    /// What the link is for (e.g. `ingest-devices`); [`super::EmbeddedBroker::take_local_link`]
    /// finds it by this name.
    pub role: String,
    /// The router's client id for the link: unguessable ([`super::internal_client_id`]), or
    /// a client connecting with the same id would take the link's session over.
    pub client_id: String,
    /// Topic filters, subscribed at QoS 0 before any listener opens.
    pub filters: Vec<String>,
    /// Each filter names one device's topics (ingest's device link): their logs, and those
    /// of filters of the same shape, get the small device size (see `broker`, "Memory").
    pub per_device: bool,
}

/// Why a local link failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalLinkError {
    /// The router refused or dropped the link (it only does so when it is gone).
    #[error("in-process link {client_id} to the MQTT router failed: {reason}")]
    Router { client_id: String, reason: String },
    /// The router disconnected the link (a duplicate client id takes over the session).
    #[error("in-process link {0} was disconnected by the MQTT router")]
    Disconnected(String),
    /// A publish could not be encoded (a topic or payload MQTT cannot carry).
    #[error("in-process link {0}: cannot encode a publish: {1}")]
    Encode(String, String),
}

impl LocalLinkError {
    /// rumqttd's error carries the whole router event; only its message is kept.
    pub(super) fn router(client_id: &str, e: LinkError) -> Self {
        LocalLinkError::Router {
            client_id: client_id.to_owned(),
            reason: e.to_string(),
        }
    }
}

/// One message the router forwarded to a local link.
#[derive(Debug, Clone)]
pub struct LocalPublish {
    pub topic: Bytes,
    pub payload: Bytes,
    /// Messages of this publish's log (its filter's) the router dropped just before this one
    /// because the log overran (counted on links whose filters are exact topics or
    /// `PREFIX/+`; 0 on links with other wildcards).
    pub dropped_before: u64,
    /// Its log and offset there (same links only): what the alert task marks committed
    /// (see [`super::gate`]).
    pub mark: Option<Mark>,
}

/// A subscriber attached to the router in-process; see the [module docs](self).
pub struct LocalLink {
    client_id: String,
    /// Kept so the router keeps the connection (dropping both halves ends it).
    _tx: LinkTx,
    rx: LinkRx,
    /// The router paused this link (its outgoing buffer was full) and has not been told we
    /// drained it yet. Kept across calls so a [`LocalLink::next`] dropped while the wake-up
    /// waits for room in the router's channel retries it: a lost wake-up would stall the
    /// link for good.
    wake_pending: bool,
    /// Which of the link's filters (and so which broker log) a publish came from; `None`
    /// for a link with other wildcards.
    logs: Option<TopicLogs>,
    /// Offset of the last message read, per filter. Each filter has a log of its own whose
    /// offsets count up by one per message, so a jump is the number of messages the router
    /// dropped when the log overran.
    last: Vec<Option<u64>>,
    /// Whether this link's filters started with it (first offset 0) or existed before (a
    /// re-attached link: the first offset seen per log is where it started reading).
    fresh_filters: bool,
}

/// The logs of filters that are exact topics, `PREFIX/+` or `PREFIX/#`, found for a topic
/// with a few hash lookups. Keyed by owned strings, never by a publish's topic: a `Bytes` from the router
/// would keep the whole network buffer it was parsed from.
#[derive(Debug)]
pub(crate) struct TopicLogs {
    exact: HashMap<String, usize>,
    /// `PREFIX/+`, by `PREFIX`.
    children: HashMap<String, usize>,
    /// `PREFIX/#`, by `PREFIX` (it matches `PREFIX` itself too).
    subtree: HashMap<String, usize>,
}

impl TopicLogs {
    /// `None` if a filter is another kind of wildcard.
    pub(crate) fn new(filters: &[String]) -> Option<TopicLogs> {
        let plain = |p: &str| !p.contains(['+', '#']);
        let mut logs = TopicLogs {
            exact: HashMap::new(),
            children: HashMap::new(),
            subtree: HashMap::new(),
        };
        for (i, f) in filters.iter().enumerate() {
            if plain(f) {
                logs.exact.insert(f.clone(), i);
            } else if let Some(p) = f.strip_suffix("/+").filter(|p| plain(p)) {
                logs.children.insert(p.to_owned(), i);
            } else if let Some(p) = f.strip_suffix("/#").filter(|p| plain(p)) {
                logs.subtree.insert(p.to_owned(), i);
            } else {
                return None;
            }
        }
        Some(logs)
    }

    /// The one filter matching `topic`; `None` if none or two do (the router then delivers
    /// it once per filter and a jump cannot be told apart).
    pub(crate) fn log_of(&self, topic: &str) -> Option<usize> {
        let exact = self.exact.get(topic);
        let child = topic
            .rsplit_once('/')
            .and_then(|(parent, _)| self.children.get(parent));
        let ancestors = std::iter::successors(Some(topic), |t| t.rsplit_once('/').map(|(p, _)| p));
        let mut found = exact
            .into_iter()
            .chain(child)
            .chain(ancestors.filter_map(|a| self.subtree.get(a)));
        match (found.next(), found.next()) {
            (Some(i), None) => Some(*i),
            _ => None,
        }
    }
}

impl std::fmt::Debug for LocalLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLink")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl LocalLink {
    /// Which log `topic` came from, its offset there, and how many messages of that log were
    /// skipped before it. A fresh filter was created by our subscription before any listener
    /// opened, so its first message is at offset 0.
    fn position(&mut self, topic: &[u8], cursor: Option<(u64, u64)>) -> (Option<Mark>, u64) {
        let (Some(logs), Some((_, offset))) = (self.logs.as_ref(), cursor) else {
            return (None, 0);
        };
        let Some(log) = std::str::from_utf8(topic).ok().and_then(|t| logs.log_of(t)) else {
            return (None, 0);
        };
        let expected = match self.last[log].replace(offset) {
            Some(seen) => seen + 1,
            None if self.fresh_filters => 0,
            None => offset,
        };
        (Some(Mark { log, offset }), offset.saturating_sub(expected))
    }

    /// Wraps a freshly built link and subscribes every filter of `spec`. `fresh_filters`:
    /// the filters were created by this subscription (before any listener opened), so their
    /// logs start at offset 0; otherwise the first offset seen per topic is the baseline.
    pub(super) fn subscribe(
        spec: &LocalSubscriber,
        mut tx: LinkTx,
        rx: LinkRx,
        fresh_filters: bool,
    ) -> Result<LocalLink, LocalLinkError> {
        for filter in &spec.filters {
            tx.subscribe(filter.as_str())
                .map_err(|e| LocalLinkError::router(&spec.client_id, e))?;
        }
        Ok(LocalLink {
            client_id: spec.client_id.clone(),
            _tx: tx,
            rx,
            wake_pending: false,
            fresh_filters,
            logs: TopicLogs::new(&spec.filters),
            last: vec![None; spec.filters.len()],
        })
    }

    /// The link's client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The next forwarded publish. Cancel-safe: a dropped call loses nothing.
    pub async fn next(&mut self) -> Result<LocalPublish, LocalLinkError> {
        loop {
            if self.wake_pending {
                self.rx
                    .wake()
                    .await
                    .map_err(|e| LocalLinkError::router(&self.client_id, e))?;
                self.wake_pending = false;
            }
            let notification = self
                .rx
                .next()
                .await
                .map_err(|e| LocalLinkError::router(&self.client_id, e))?;
            match notification {
                Some(Notification::Forward(f)) => {
                    let (mark, dropped_before) = self.position(&f.publish.topic, f.cursor);
                    return Ok(LocalPublish {
                        topic: f.publish.topic,
                        payload: f.publish.payload,
                        dropped_before,
                        mark,
                    });
                }
                // The router paused us; tell it we drained (at the top of the loop, so a
                // call dropped while waiting to tell it does not forget to).
                Some(Notification::Unschedule) => self.wake_pending = true,
                Some(Notification::Disconnect(..)) => {
                    return Err(LocalLinkError::Disconnected(self.client_id.clone()))
                }
                // Acks of our own subscriptions, or a wake-up with nothing new.
                Some(_) | None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_traced_to_the_one_filter_whose_log_it_came_from() {
        let filters: Vec<String> = ["sensors/a/+", "legacy/gas", "x/+", "x/y", "zigbee2mqtt/k/#"]
            .map(String::from)
            .to_vec();
        let logs = TopicLogs::new(&filters).expect("exact, PREFIX/+ and PREFIX/# filters");
        assert_eq!(logs.log_of("zigbee2mqtt/k"), Some(4));
        assert_eq!(logs.log_of("zigbee2mqtt/k/availability"), Some(4));
        assert_eq!(logs.log_of("zigbee2mqtt/k/set/x"), Some(4));
        assert_eq!(logs.log_of("zigbee2mqtt/kk"), None);
        assert_eq!(logs.log_of("sensors/a/state"), Some(0));
        assert_eq!(logs.log_of("sensors/a/heartbeat"), Some(0));
        assert_eq!(logs.log_of("sensors/a/b/c"), None);
        assert_eq!(logs.log_of("legacy/gas"), Some(1));
        assert_eq!(logs.log_of("x/y"), None, "two filters match: ambiguous");
        assert_eq!(logs.log_of("x/z"), Some(2));
        assert!(TopicLogs::new(&["sensors/+/state".to_owned()]).is_none());
        assert!(TopicLogs::new(&["#".to_owned()]).is_none());
    }
}
