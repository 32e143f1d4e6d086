//! The link task: connect, drain the outbox through a bounded in-flight window, match
//! PUBACKs to rows, reconnect with backoff. See the module docs for the protocol.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::commands;
use super::status::UplinkStatus;
use super::{LinkSettings, SharedOutbox, UplinkError, FLUSH_GRACE};
use crate::alerts::{Alert, WeakAlertBus};
use crate::outbox::{Delivery, OutboxError, OutboxRow, RowId, Stream, MAX_PAYLOAD_BYTES};

/// Largest MQTT packet either way: the largest outbox payload plus room for topic and header.
const MAX_PACKET: usize = MAX_PAYLOAD_BYTES + 64 * 1024;

/// Acknowledged rows are deleted in one transaction once this many have gathered (or with
/// the next refill, or when nothing else is in flight, or at the next [`ACK_FLUSH_EVERY`]
/// tick): one delete per few hundred PUBACKs instead of one per handful.
const ACK_BATCH: usize = 256;

/// The longest an acknowledged row waits for its delete while the link is busy. A row whose
/// PUBACK came but whose delete was not committed is sent again after a crash (at least
/// once); this bounds how many that can be.
const ACK_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// The uplink's connection to the platform broker.
pub struct Link {
    settings: LinkSettings,
    outbox: SharedOutbox,
    status: Arc<UplinkStatus>,
    /// Weak, so that the alert task can stop during shutdown even while the link runs.
    commands: Option<WeakAlertBus>,
    /// Committed alert events: wake an idle link at once instead of at its next poll.
    wake: Option<broadcast::Receiver<Alert>>,
}

/// How a connection ended.
enum End {
    Cancelled,
    Failed { error: String, connected: bool },
}

/// Rows between the outbox and the broker during one connection.
#[derive(Default)]
struct Window {
    /// Fetched from the outbox (so marked in flight there) but not yet handed to the client:
    /// a PUBACK frees a slot and the next row goes out at once, without waiting for SQLite,
    /// so the link never stops sending while the window refills. (A publisher that pauses
    /// between batches meets Nagle + delayed-ACK stalls of ~10 ms on brokers that do not set
    /// TCP_NODELAY — mosquitto's default.)
    ready: VecDeque<OutboxRow>,
    /// Handed to the rumqttc client; their packet ids are not known yet. rumqttc reports
    /// `Outgoing::Publish(pkid)` in the order the requests were queued, so the front of this
    /// queue is the row the next such event belongs to.
    queued: VecDeque<RowId>,
    /// Published, waiting for PUBACK (PUBCOMP with QoS 2), indexed by packet id (rumqttc
    /// numbers them 1..=max_inflight, so this stays as small as the window).
    by_pkid: Vec<Option<RowId>>,
    /// How many entries of `by_pkid` are set.
    published: usize,
    /// Acknowledged by the broker, not yet deleted from the outbox (they stay in the
    /// outbox's in-flight set meanwhile, so they are not handed out again; after a crash
    /// they are sent once more).
    acked: Vec<RowId>,
}

impl Window {
    fn inflight(&self) -> usize {
        self.queued.len() + self.published
    }

    /// rumqttc sent the row at the front of `queued` as packet `pkid`.
    fn sent(&mut self, pkid: u16) {
        let Some(row) = self.queued.pop_front() else {
            return;
        };
        let slot = usize::from(pkid);
        if self.by_pkid.len() <= slot {
            self.by_pkid.resize(slot + 1, None);
        }
        // A packet id still in use would be a rumqttc collision; the row it replaces stays
        // in the outbox's in-flight set and is re-sent after the next reconnect.
        if self.by_pkid[slot].replace(row).is_none() {
            self.published += 1;
        }
    }

    /// The broker acknowledged packet `pkid`: its row may be deleted. False for a packet id
    /// with no row.
    fn acknowledged(&mut self, pkid: u16) -> bool {
        let slot = self.by_pkid.get_mut(usize::from(pkid));
        let Some(row) = slot.and_then(Option::take) else {
            return false;
        };
        self.published -= 1;
        self.acked.push(row);
        true
    }
}

impl Link {
    pub fn new(settings: LinkSettings, outbox: SharedOutbox, status: Arc<UplinkStatus>) -> Self {
        Self {
            settings,
            outbox,
            status,
            commands: None,
            wake: None,
        }
    }

    /// Apply upstream `commands/ack` through the alert task.
    pub fn with_commands(mut self, inputs: WeakAlertBus) -> Self {
        self.commands = Some(inputs);
        self
    }

    /// Wake up on committed alert events.
    pub fn with_wake(mut self, events: broadcast::Receiver<Alert>) -> Self {
        self.wake = Some(events);
        self
    }

    async fn requeue_inflight(&self) {
        match self.outbox.call(|o| Ok(o.requeue_inflight())).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                requeued = n,
                "uplink: unacknowledged rows will be re-sent first"
            ),
            Err(e) => tracing::error!(error = %e, "uplink: requeue failed"),
        }
    }

    /// Connects, drains and reconnects until `token` is cancelled; then waits up to
    /// [`FLUSH_GRACE`] for the PUBACKs of rows already published.
    pub async fn run(mut self, token: CancellationToken) {
        let mut backoff = Backoff::new(self.settings.backoff_base, self.settings.backoff_max);
        // A link that crashed mid-session (and was restarted by its supervisor) left rows in
        // flight: they go first, as after any lost session.
        self.requeue_inflight().await;
        // Failover: after a failed attempt or a lost connection the next broker of
        // `[uplink] hosts` is tried at once; the backoff applies once a whole round failed.
        let mut tried = 0;
        loop {
            self.status
                .set_endpoint(&self.settings.host, self.settings.port);
            self.status.set_connecting();
            let end = self.session(&token).await;
            self.requeue_inflight().await;
            let (error, connected) = match end {
                End::Cancelled => break,
                End::Failed { error, connected } => (error, connected),
            };
            if connected {
                backoff.reset();
                tried = 0;
            }
            tried += 1;
            let (failed_host, failed_port) = (self.settings.host.clone(), self.settings.port);
            self.settings.next_endpoint();
            let round = tried >= self.settings.endpoints.len().max(1);
            let delay = if round {
                tried = 0;
                backoff.next_delay()
            } else {
                std::time::Duration::ZERO
            };
            tracing::warn!(
                error = %error,
                host = %failed_host,
                port = failed_port,
                next_host = %self.settings.host,
                next_port = self.settings.port,
                attempt = backoff.attempts(),
                retry_in_ms = delay.as_millis() as u64,
                "uplink connection failed"
            );
            self.status.set_backoff(error, delay);
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.status.set_stopped();
        tracing::info!("uplink stopped");
    }

    fn options(&self) -> MqttOptions {
        self.settings.mqtt_options()
    }

    async fn session(&mut self, token: &CancellationToken) -> End {
        let window = usize::from(self.settings.max_inflight);
        // Room for the whole window plus the subscribe: `try_publish` never finds it full.
        let (client, mut events) = AsyncClient::new(self.options(), window + 16);
        let mut net = events.network_options();
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(self.settings.connect_timeout.as_secs().max(1));
        events.set_network_options(net);

        let first = tokio::select! {
            _ = token.cancelled() => return End::Cancelled,
            first = events.poll() => first,
        };
        match first {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {}
            Ok(other) => {
                return End::Failed {
                    error: format!("expected CONNACK, got {other:?}"),
                    connected: false,
                }
            }
            Err(e) => {
                return End::Failed {
                    error: describe(&e, &self.settings),
                    connected: false,
                }
            }
        }
        self.status.set_connected();
        tracing::info!(
            host = %self.settings.host, port = self.settings.port,
            tls = self.settings.tls.is_some(), "uplink connected"
        );
        let commands_topic = self.settings.ack_command_topic();
        if let Err(e) = client.try_subscribe(commands_topic.clone(), QoS::AtLeastOnce) {
            tracing::warn!(error = %e, "uplink: cannot subscribe to upstream commands");
        }
        let mut w = Window::default();
        let end = self
            .drain(&client, &mut events, &mut w, &commands_topic, token)
            .await;
        // Whatever the broker acknowledged is deleted before the rest is requeued.
        if !w.acked.is_empty() {
            let ids = std::mem::take(&mut w.acked);
            match self.outbox.call(move |o| o.ack_batch(&ids)).await {
                Ok(outcomes) => self.count_acks(&outcomes),
                Err(e) => tracing::error!(error = %e, "uplink: cannot delete acknowledged rows"),
            }
        }
        if matches!(end, End::Cancelled) {
            let _ = client.try_disconnect();
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(200), events.poll()).await;
        }
        end
    }

    fn count_acks(&self, outcomes: &[Delivery]) {
        let acked = outcomes.iter().filter(|d| **d == Delivery::Acked).count() as u64;
        self.status.acked_total.fetch_add(acked, Ordering::Relaxed);
    }

    /// One connection's drain loop. Returns with no outbox job running.
    async fn drain(
        &mut self,
        client: &AsyncClient,
        events: &mut EventLoop,
        w: &mut Window,
        commands_topic: &str,
        token: &CancellationToken,
    ) -> End {
        let s = self.settings.clone();
        let mut d = Drain::new(&s);
        let mut idle_timer = tokio::time::interval(s.idle_poll);
        idle_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The station link says it is alive (QoS 0, not from the outbox): the station
        // raises `compound_offline` when these stop.
        let mut heartbeat =
            tokio::time::interval(s.heartbeat.unwrap_or(std::time::Duration::from_secs(3600)));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ack_tick = tokio::time::interval(ACK_FLUSH_EVERY);
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            crate::supervise::fault_point("uplink").await;
            if d.stopping.is_none() {
                if let Err(error) = self.send_ready(client, w, &d) {
                    break End::Failed {
                        error,
                        connected: true,
                    };
                }
            }
            self.schedule_jobs(w, &mut d);
            if d.flushed_or_out_of_time(w) {
                break End::Cancelled;
            }
            tokio::select! {
                _ = token.cancelled(), if d.stopping.is_none() => d.stopping = Some(Instant::now()),
                event = events.poll() => if let Some(end) = self.on_event(event, w, commands_topic) {
                    break end;
                },
                done = join(&mut d.job), if d.job.is_some() => {
                    d.job = None;
                    if let Err(error) = self.job_done(done, w, &mut d) {
                        break End::Failed { error, connected: true };
                    }
                }
                _ = ack_tick.tick(), if !w.acked.is_empty() => d.ack_due = true,
                _ = wake(&mut self.wake), if d.idle => d.idle = false,
                _ = idle_timer.tick(), if d.idle => d.idle = false,
                _ = heartbeat.tick(), if s.heartbeat.is_some() && d.stopping.is_none() => {
                    self.send_heartbeat(client, w);
                }
                _ = grace_over(d.stopping), if d.stopping.is_some() => {}
            }
        };
        self.finish_jobs(&mut d).await;
        end
    }

    /// Publishes `{prefix}/{site}/heartbeat` (QoS 0) with the backlog still to send.
    fn send_heartbeat(&self, client: &AsyncClient, w: &Window) {
        let s = &self.settings;
        let payload = serde_json::json!({
            "site": s.site,
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "unacknowledged": w.inflight() + w.ready.len(),
        });
        let topic = format!("{}/{}/heartbeat", s.topic_prefix, s.site);
        if let Err(e) = client.try_publish(topic, QoS::AtMostOnce, false, payload.to_string()) {
            tracing::debug!(error = %e, "heartbeat not queued");
        }
    }

    /// Hands ready rows to the client while the in-flight window has room.
    fn send_ready(&self, client: &AsyncClient, w: &mut Window, d: &Drain) -> Result<(), String> {
        while w.inflight() < d.window {
            let Some(row) = w.ready.pop_front() else {
                break;
            };
            let topic = match row.stream {
                Stream::Alerts => &d.alerts_topic,
                Stream::Telemetry => &d.telemetry_topic,
            };
            client
                .try_publish(topic.as_str(), self.settings.qos, false, row.payload)
                .map_err(|e| UplinkError::Client(e.to_string()).to_string())?;
            w.queued.push_back(row.id);
            self.status.published_total.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Starts one outbox job when one is due: the deletion of acknowledged rows (see
    /// [`ACK_BATCH`]) and then a refill of ready rows, both in one blocking call.
    fn schedule_jobs(&self, w: &mut Window, d: &mut Drain) {
        if d.job.is_some() {
            return;
        }
        let missing = d.prefetch.saturating_sub(w.ready.len());
        let fetch = if d.stopping.is_none() && !d.idle && missing >= d.refill_at {
            missing
        } else {
            0
        };
        let flush = !w.acked.is_empty()
            && (fetch > 0
                || d.ack_due
                || w.acked.len() >= ACK_BATCH
                || w.inflight() == 0
                || d.stopping.is_some());
        if fetch == 0 && !flush {
            return;
        }
        let ids = if flush {
            d.ack_due = false;
            std::mem::take(&mut w.acked)
        } else {
            Vec::new()
        };
        d.asked = fetch;
        d.job = Some(self.outbox.spawn(move |o| {
            // Deletes first: the rows they remove need not be skipped by the read.
            let acks = match ids.is_empty() {
                true => Ok(Vec::new()),
                false => o.ack_batch(&ids),
            };
            let rows = match fetch {
                0 => Ok(Vec::new()),
                n => o.next_batch(n),
            };
            Ok(JobDone { acks, rows })
        }));
    }

    /// The outbox job finished: count the deleted rows, queue the rows read. An error
    /// reading ends the connection; one deleting is logged (those rows are sent again).
    fn job_done(
        &self,
        done: Result<JobDone, UplinkError>,
        w: &mut Window,
        d: &mut Drain,
    ) -> Result<(), String> {
        let done = done.map_err(|e| e.to_string())?;
        match done.acks {
            Ok(outcomes) => self.count_acks(&outcomes),
            Err(e) => tracing::error!(
                error = %e,
                "uplink: cannot delete acknowledged rows; they will be re-sent"
            ),
        }
        let rows = done.rows.map_err(|e| UplinkError::from(e).to_string())?;
        if d.asked > 0 {
            d.idle = rows.len() < d.asked;
        }
        w.ready.extend(rows);
        Ok(())
    }

    /// One event of the connection; `Some` ends it.
    fn on_event(
        &self,
        event: Result<Event, ConnectionError>,
        w: &mut Window,
        commands_topic: &str,
    ) -> Option<End> {
        let qos2 = self.settings.qos == QoS::ExactlyOnce;
        match event {
            // QoS 0 (a heartbeat) has packet id 0 and no row; rows are QoS 1 or 2 (1..).
            Ok(Event::Outgoing(Outgoing::Publish(0))) => {}
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => w.sent(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) if !qos2 => self.acknowledged(w, ack.pkid),
            Ok(Event::Incoming(Packet::PubComp(comp))) if qos2 => self.acknowledged(w, comp.pkid),
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == commands_topic => {
                self.status.commands_total.fetch_add(1, Ordering::Relaxed);
                commands::apply_ack(self.commands.as_ref(), &p.topic, &p.payload);
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    tracing::warn!(
                        topic = commands_topic,
                        "upstream broker refused the commands subscription"
                    );
                }
            }
            Ok(_) => {}
            Err(e) => {
                return Some(End::Failed {
                    error: describe(&e, &self.settings),
                    connected: true,
                })
            }
        }
        None
    }

    fn acknowledged(&self, w: &mut Window, pkid: u16) {
        if w.acknowledged(pkid) {
            self.status.pubacks_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// No job may outlive the connection: requeue must see the final in-flight set. Rows
    /// the job read are dropped here; requeue makes them pending again.
    async fn finish_jobs(&self, d: &mut Drain) {
        let Some(job) = d.job.take() else {
            return;
        };
        match job.await {
            Ok(Ok(JobDone {
                acks: Ok(outcomes), ..
            })) => self.count_acks(&outcomes),
            Ok(Ok(JobDone { acks: Err(e), .. })) => {
                tracing::error!(error = %e, "uplink: cannot delete acknowledged rows")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "uplink: outbox job failed"),
            Err(e) => tracing::error!(error = %e, "uplink: outbox job failed"),
        }
    }
}

/// What one outbox job did: the outcome of deleting acknowledged rows and the rows read.
struct JobDone {
    acks: Result<Vec<Delivery>, OutboxError>,
    rows: Result<Vec<OutboxRow>, OutboxError>,
}

/// One connection's drain state besides the [`Window`]: the outbox jobs running and whether
/// the link is idle or stopping.
struct Drain {
    window: usize,
    /// Rows kept ready; a refill starts when `refill_at` of them are missing.
    prefetch: usize,
    refill_at: usize,
    alerts_topic: String,
    telemetry_topic: String,
    /// At most one outbox job runs at a time (off the async threads; the outbox has one
    /// connection behind a mutex anyway): it deletes acknowledged rows, then reads rows.
    job: Option<JoinHandle<Result<JobDone, UplinkError>>>,
    /// Rows the running job reads (0: it only deletes).
    asked: usize,
    /// The ack tick fired: delete what has gathered, however few.
    ack_due: bool,
    /// The last refill came back short: wait for a new alert event or the idle poll.
    idle: bool,
    /// Shutdown asked at: flush acknowledgements for up to [`FLUSH_GRACE`].
    stopping: Option<Instant>,
}

impl Drain {
    fn new(s: &LinkSettings) -> Self {
        let window = usize::from(s.max_inflight);
        // Keep up to `prefetch` rows ready; refill when half of them went out.
        let prefetch = window.max(s.batch);
        Drain {
            window,
            prefetch,
            refill_at: (prefetch / 2).max(1),
            alerts_topic: Stream::Alerts.topic(&s.topic_prefix, &s.site),
            telemetry_topic: Stream::Telemetry.topic(&s.topic_prefix, &s.site),
            job: None,
            asked: 0,
            ack_due: false,
            idle: false,
            stopping: None,
        }
    }

    /// Stopping, and either everything in flight is acknowledged and deleted, or the grace
    /// is over.
    fn flushed_or_out_of_time(&self, w: &Window) -> bool {
        self.stopping.is_some_and(|since| {
            let flushed = w.inflight() == 0 && w.acked.is_empty() && self.job.is_none();
            flushed || since.elapsed() >= FLUSH_GRACE
        })
    }
}

/// Resolves when the shutdown grace that began at `since` is over. An async fn, so the
/// timer is only made when the branch is polled, not on every turn of the drain loop.
async fn grace_over(since: Option<Instant>) {
    match since {
        Some(since) => tokio::time::sleep_until(since + FLUSH_GRACE).await,
        None => std::future::pending().await,
    }
}

/// Awaits an outbox job that is known to be running.
async fn join<T>(job: &mut Option<JoinHandle<Result<T, UplinkError>>>) -> Result<T, UplinkError> {
    match job {
        Some(handle) => handle.await.map_err(|e| UplinkError::Join(e.to_string()))?,
        None => std::future::pending().await,
    }
}

/// Resolves on the next committed alert event (or when events lag); never if there is no
/// event channel (any more).
async fn wake(events: &mut Option<broadcast::Receiver<Alert>>) {
    let Some(rx) = events else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
        Err(broadcast::error::RecvError::Closed) => {
            *events = None;
            std::future::pending::<()>().await;
        }
    }
}

impl LinkSettings {
    /// The MQTT options of a session: client id, keep-alive, clean session, in-flight window,
    /// packet limits, login and TLS. Shared with `gateway doctor`, so its upstream check
    /// connects exactly as the link does.
    pub fn mqtt_options(&self) -> MqttOptions {
        let s = self;
        let mut o = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        o.set_keep_alive(s.keep_alive)
            .set_clean_session(true)
            .set_inflight(s.max_inflight)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some((user, password)) = &s.credentials {
            o.set_credentials(user.clone(), password.clone());
        }
        if let Some(tls) = &s.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        o
    }
}

/// A connection error in words an installer can act on.
fn describe(e: &ConnectionError, s: &LinkSettings) -> String {
    let at = format!("{}:{}", s.host, s.port);
    match e {
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
        ) => format!(
            "the upstream broker at {at} refused the login ({code:?}): check uplink.username and \
             uplink.password / uplink.password_file"
        ),
        ConnectionError::ConnectionRefused(code) => {
            format!("the upstream broker at {at} refused the connection ({code:?})")
        }
        ConnectionError::Tls(e) => format!(
            "TLS with {at} failed: {e} (the server certificate must be signed by uplink.tls.ca \
             and name the host {})",
            s.host
        ),
        ConnectionError::Io(e) => format!("cannot reach {at}: {e}"),
        ConnectionError::NetworkTimeout => format!(
            "no answer from {at} within {} s",
            s.connect_timeout.as_secs()
        ),
        other => format!("connection to {at} lost: {other}"),
    }
}
