//! Sensor alarm → camera evidence (联动抓拍): a smoke, heat, gas, SOS or e-bike battery alarm
//! of a device that cameras see (`cameras = [...]` on the device, its area or its building)
//! gets a snapshot and a short clip from each of them, attached to the sensor's alert.
//!
//! ```text
//! alerts ─(committed events)─▶ linker ─(LinkedRequest)─▶ camera analysis thread
//!    ▲                             │  ◀──(Gathered, oneshot)──  snapshot of its next frame,
//!    └──(Trigger::AttachEvidence)──┘                            clip from its packet ring
//! ```
//!
//! The alarm never waits for a camera: the linker only sees an alert once it is committed
//! and published, and attaches what the cameras gave as a later `updated` event. A camera
//! that is down, busy or not running answers nothing within [`ANSWER_WITHIN`]: the alert then
//! says so (`linked_cameras: [{ camera, error }]`), and nothing else about it changes. The
//! alerts module does not know about video; this module only sends it a [`Trigger`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use edge_config::{AlertKind, Config};
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;

use crate::alerts::bus::EventFeed;
use crate::alerts::task::Trigger;
use crate::alerts::{Alert, AlertBus, EventKind, Source};
use crate::shutdown::{Lifecycle as Stages, Stage};
use crate::supervise::Severity;

/// Alert kinds whose alarm asks the cameras that see the device for evidence.
pub const LINKED_KINDS: [AlertKind; 5] = [
    AlertKind::Smoke,
    AlertKind::Heat,
    AlertKind::Gas,
    AlertKind::Sos,
    AlertKind::EbikeBattery,
];

/// How long a camera has to answer: its next analysed frame (5 fps by default) comes well
/// within it; a camera that is down never answers.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// Requests that may wait for one camera's analysis thread; more are answered "busy".
pub const QUEUE: usize = 4;

/// Why a camera gave no evidence (shown on the alert).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkedError {
    #[error("camera not running")]
    NotRunning,
    #[error("camera busy")]
    Busy,
    #[error("camera did not answer within {0:?} (down?)")]
    NoAnswer(Duration),
    #[error("camera wrote no evidence")]
    Nothing,
}

/// A request for a camera's evidence, served by its analysis thread at its next frame.
#[derive(Debug)]
pub struct LinkedRequest {
    /// Part of the file names: the alert kind and id.
    pub name: String,
    /// Past this the asker has given up: not served (no files written for nobody).
    pub deadline: Instant,
    pub reply: oneshot::Sender<Gathered>,
}

/// What a camera recorded for one alert: paths under `<data_dir>/evidence/<camera>/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gathered {
    /// The snapshot (JPEG), written by the time this is sent (or being written by the
    /// main-stream reader).
    pub snapshot: Option<PathBuf>,
    /// The clip, written once its last seconds have been recorded.
    pub clip: Option<PathBuf>,
    /// `main` or `sub` for a camera with a sub-stream.
    pub stream: Option<&'static str>,
}

/// The running cameras' request queues by camera id; a camera restarted by its supervisor
/// registers its new queue over the old one.
#[derive(Clone, Default)]
pub struct Registry {
    /// A plain mutex: held only to clone or replace a sender, never across a wait.
    cameras: Arc<Mutex<HashMap<String, Sender<LinkedRequest>>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.cameras.lock().map_or(0, |c| c.len());
        f.debug_struct("Registry").field("cameras", &n).finish()
    }
}

impl LinkedError {
    /// A stable name of the reason (the console shows it in the staff's language).
    pub fn code(&self) -> &'static str {
        match self {
            LinkedError::NotRunning => "not_running",
            LinkedError::Busy => "busy",
            LinkedError::NoAnswer(_) => "no_answer",
            LinkedError::Nothing => "nothing",
        }
    }
}

impl Registry {
    /// Makes `camera`'s analysis thread reachable through `queue`.
    pub fn register(&self, camera: &str, queue: Sender<LinkedRequest>) {
        if let Ok(mut cameras) = self.cameras.lock() {
            cameras.insert(camera.to_owned(), queue);
        }
    }

    /// Asks `camera` for evidence named `name`; waits at most `wait` for the answer.
    pub async fn ask(
        &self,
        camera: &str,
        name: &str,
        wait: Duration,
    ) -> Result<Gathered, LinkedError> {
        let queue = self
            .cameras
            .lock()
            .ok()
            .and_then(|c| c.get(camera).cloned())
            .ok_or(LinkedError::NotRunning)?;
        let (reply, answer) = oneshot::channel();
        let request = LinkedRequest {
            name: name.to_owned(),
            deadline: Instant::now() + wait,
            reply,
        };
        match queue.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(LinkedError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(LinkedError::NotRunning),
        }
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(g)) if g.snapshot.is_some() || g.clip.is_some() => Ok(g),
            Ok(Ok(_)) => Err(LinkedError::Nothing),
            // The analysis thread ended with the request unserved.
            Ok(Err(_)) => Err(LinkedError::NotRunning),
            Err(_) => Err(LinkedError::NoAnswer(wait)),
        }
    }
}

/// The cameras to ask for `alert`'s evidence: a newly raised alert of a [`LINKED_KINDS`] kind
/// from a device that cameras see; none otherwise.
pub fn cameras_for<'a>(config: &'a Config, alert: &Alert) -> &'a [String] {
    let Source::Device(id) = &alert.source else {
        return &[];
    };
    if alert.event != EventKind::Raised || !LINKED_KINDS.contains(&alert.kind) {
        return &[];
    }
    config
        .device(id)
        .map_or(&[], |device| config.cameras_seeing(device))
}

/// Asks every camera at once and puts the answers into readings keys: `linked_cameras` (one
/// entry per camera, its files or its error), and `snapshot` / `clip` / `evidence_camera`
/// from the first camera that gave a snapshot (what the console shows first).
pub async fn gather(
    registry: &Registry,
    cameras: &[String],
    alert: &Alert,
    wait: Duration,
) -> Map<String, Value> {
    let name = format!("{}-{}", alert.kind.as_str(), alert.id);
    let asks = cameras.iter().map(|c| registry.ask(c, &name, wait));
    let answers = futures_util::future::join_all(asks).await;
    let mut entries = Vec::new();
    let mut out = Map::new();
    for (camera, answer) in cameras.iter().zip(answers) {
        match answer {
            Ok(g) => {
                if out.get("snapshot").is_none() && g.snapshot.is_some() {
                    out.insert("evidence_camera".into(), json!(camera));
                    out.insert("snapshot".into(), json!(g.snapshot));
                    if let Some(clip) = &g.clip {
                        out.insert("clip".into(), json!(clip));
                    }
                }
                let mut entry = json!({ "camera": camera, "snapshot": g.snapshot, "clip": g.clip });
                if let Some(stream) = g.stream {
                    entry["stream"] = json!(stream);
                }
                entries.push(entry);
            }
            Err(e) => {
                tracing::warn!(camera = %camera, alert = %alert.id, error = %e, "no linked evidence from this camera");
                entries
                    .push(json!({ "camera": camera, "error": e.to_string(), "reason": e.code() }));
            }
        }
    }
    out.insert("linked_cameras".into(), Value::Array(entries));
    out
}

/// Gathers `alert`'s evidence and hands it to the alert task.
async fn link(config: Arc<Config>, registry: Registry, alerts: AlertBus, alert: Alert) {
    let cameras = cameras_for(&config, &alert);
    if cameras.is_empty() {
        return;
    }
    let evidence = gather(&registry, cameras, &alert, ANSWER_WITHIN).await;
    let trigger = Trigger::AttachEvidence {
        id: alert.id.clone(),
        evidence,
    };
    if alerts.send(trigger.into()).await.is_err() {
        tracing::info!(alert = %alert.id, "linked evidence not attached: the alert task has stopped");
    }
}

/// Follows the committed events until `stop`, linking each alarm that cameras see; each
/// alarm's cameras are asked on a task of their own, so one slow camera holds up no other
/// alarm.
pub async fn run(
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    registry: Registry,
    mut events: broadcast::Receiver<Alert>,
    alerts: AlertBus,
    stop: CancellationToken,
) {
    use broadcast::error::RecvError;
    loop {
        let alert = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.recv() => match event {
                Ok(alert) => alert,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "linked evidence fell behind the alert events; some alarms get no snapshot");
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
        };
        // The configuration in force now (a reload may have linked other cameras).
        let config = config.borrow().clone();
        if cameras_for(&config, &alert).is_empty() {
            continue;
        }
        let (config, registry, alerts, stop) = (
            config.clone(),
            registry.clone(),
            alerts.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = link(config, registry, alerts, alert) => {}
            }
        });
    }
}

/// Starts the linker (Inputs stage, supervised) when some device, area or building names
/// cameras; cameras that are not running (no ONNX Runtime, disabled) answer
/// [`LinkedError::NotRunning`], which the alert then shows.
pub fn spawn(
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    registry: Registry,
    feed: EventFeed,
    alerts: AlertBus,
    stages: &Stages,
) {
    let any = |c: &Config| c.devices.iter().any(|d| !c.cameras_seeing(d).is_empty());
    if !any(&config.borrow()) && config.borrow().cameras.iter().all(|c| !c.enabled) {
        return;
    }
    stages.supervise(
        Stage::Inputs,
        "linked_evidence",
        Severity::Degraded,
        move |stop| {
            let (config, registry, alerts) = (config.clone(), registry.clone(), alerts.clone());
            let events = feed.subscribe();
            async move {
                run(config, registry, events, alerts, stop).await;
                Ok(())
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::task::{AlertInput, AlertTask, AlertTaskStats};
    use crate::alerts::{AlertState, AlertStore, Lifecycle};
    use crate::reading::Values;
    use crate::rules::{Cause, Change, Signal};
    use edge_config::Level;
    use tokio::sync::mpsc;

    const CONFIG: &str = r#"
[site]
id = "t1"
name = "Test compound"
kind = "compound"

[[locations.areas]]
id = "shed"
name = "充电棚"
kind = "charging_shed"
cameras = ["shed-cam"]

[[devices]]
id = "shed-smoke"
kind = "smoke"
location = { area = "shed" }

[[cameras]]
id = "shed-cam"
url = "rtsp://127.0.0.1:8554/shed"
location = { area = "shed" }
"#;

    struct Bench {
        task: AlertTask,
        events: broadcast::Sender<Alert>,
        published: broadcast::Receiver<Alert>,
        inputs: mpsc::Receiver<AlertInput>,
        bus: AlertBus,
        config: Arc<Config>,
        _dir: tempfile::TempDir,
    }

    fn bench() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let config =
            Arc::new(edge_config::parse(CONFIG, "t.toml", std::path::Path::new(".")).unwrap());
        let store = AlertStore::open(&dir.path().join("db")).unwrap();
        let lifecycle = Lifecycle::new(config.clone(), store).unwrap();
        let (events, published) = broadcast::channel(16);
        let task = AlertTask::new(
            lifecycle,
            events.clone(),
            Arc::new(AlertTaskStats::default()),
        );
        let (tx, inputs) = mpsc::channel(16);
        Bench {
            task,
            events,
            published,
            inputs,
            bus: AlertBus::new(tx),
            config,
            _dir: dir,
        }
    }

    fn smoke(change: Change) -> AlertInput {
        Trigger::Signal(Signal {
            device: 0,
            kind: AlertKind::Smoke,
            change,
            causes: vec![Cause::SmokeDetected],
            values: Values {
                smoke: Some(true),
                ..Values::default()
            },
        })
        .into()
    }

    /// Starts the linker on the bench's committed events.
    fn linker(b: &Bench, registry: &Registry) -> CancellationToken {
        let stop = CancellationToken::new();
        let run = run(
            tokio::sync::watch::channel(b.config.clone()).1,
            registry.clone(),
            b.events.subscribe(),
            b.bus.clone(),
            stop.clone(),
        );
        tokio::spawn(run);
        stop
    }

    #[tokio::test(start_paused = true)]
    async fn a_smoke_alarm_seen_by_a_down_camera_is_committed_at_once_and_then_says_no_evidence() {
        let mut b = bench();
        let registry = Registry::default();
        // The camera's analysis thread is alive but gets no frames (stream down): nobody
        // serves its queue.
        let (queue, _unserved) = crossbeam_channel::bounded(QUEUE);
        registry.register("shed-cam", queue);
        let stop = linker(&b, &registry);
        tokio::task::yield_now().await;

        let started = tokio::time::Instant::now();
        b.task
            .handle(smoke(Change::Raise(Level::Red)), chrono::Utc::now());
        let raised = b
            .published
            .try_recv()
            .expect("the alarm is published as it is handled");
        assert_eq!(
            (raised.event, raised.level),
            (EventKind::Raised, Level::Red)
        );
        let stored = b.task.lifecycle().store().get(&raised.id).unwrap();
        assert!(
            stored.is_some(),
            "the alarm is committed before any camera is asked"
        );

        let input = tokio::time::timeout(Duration::from_secs(10), b.inputs.recv())
            .await
            .expect("the linker reports back")
            .expect("an input");
        assert!(
            started.elapsed() >= ANSWER_WITHIN,
            "the evidence only gave up after the camera's time to answer"
        );
        b.task.handle(input, chrono::Utc::now());
        let updated = b
            .published
            .try_recv()
            .expect("the evidence note is published");
        assert_eq!(updated.id, raised.id);
        assert_eq!(
            (updated.event, updated.state),
            (EventKind::Updated, AlertState::Raised)
        );
        assert_eq!(updated.level, Level::Red);
        let linked = &updated.readings["linked_cameras"][0];
        assert_eq!(linked["camera"], "shed-cam");
        assert!(
            linked["error"].as_str().unwrap().contains("did not answer"),
            "{linked}"
        );
        assert_eq!(linked["reason"], "no_answer");
        assert!(updated.readings.get("snapshot").is_none());
        assert_eq!(
            updated.readings["causes"], raised.readings["causes"],
            "the reading is kept"
        );
        stop.cancel();
    }

    // Real time: the camera answers from a thread of its own, which a paused clock would
    // not wait for.
    #[tokio::test]
    async fn a_camera_that_answers_puts_its_snapshot_and_clip_on_the_sensor_alert_for_good() {
        let mut b = bench();
        let registry = Registry::default();
        let (queue, requests) = crossbeam_channel::bounded::<LinkedRequest>(QUEUE);
        registry.register("shed-cam", queue);
        // The camera's analysis thread, answering at its next frame.
        let camera = std::thread::spawn(move || {
            let req = requests
                .recv_timeout(Duration::from_secs(10))
                .expect("a request");
            assert!(req.name.starts_with("smoke-"), "{}", req.name);
            let _ = req.reply.send(Gathered {
                snapshot: Some(PathBuf::from("/evidence/shed-cam/a.jpg")),
                clip: Some(PathBuf::from("/evidence/shed-cam/a.mp4")),
                stream: None,
            });
        });
        let stop = linker(&b, &registry);
        tokio::task::yield_now().await;
        b.task
            .handle(smoke(Change::Raise(Level::Red)), chrono::Utc::now());
        let raised = b.published.try_recv().unwrap();
        let input = b.inputs.recv().await.expect("the evidence");
        camera.join().unwrap();
        b.task.handle(input, chrono::Utc::now());
        let updated = b.published.try_recv().unwrap();
        assert_eq!(updated.id, raised.id);
        assert_eq!(updated.readings["snapshot"], "/evidence/shed-cam/a.jpg");
        assert_eq!(updated.readings["clip"], "/evidence/shed-cam/a.mp4");
        assert_eq!(updated.readings["evidence_camera"], "shed-cam");

        // The sensor's next reading updates the alert; the cameras' evidence stays on it.
        b.task
            .handle(smoke(Change::Update(Level::Red)), chrono::Utc::now());
        let again = b.published.try_recv().unwrap();
        assert_eq!(again.id, raised.id);
        assert_eq!(again.readings["snapshot"], "/evidence/shed-cam/a.jpg");
        assert_eq!(again.readings["linked_cameras"][0]["camera"], "shed-cam");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_camera_that_is_not_running_is_named_at_once() {
        let mut b = bench();
        let registry = Registry::default();
        b.task
            .handle(smoke(Change::Raise(Level::Red)), chrono::Utc::now());
        let alert = b.published.try_recv().unwrap();
        assert_eq!(cameras_for(&b.config, &alert), ["shed-cam"]);
        let got = gather(
            &registry,
            cameras_for(&b.config, &alert),
            &alert,
            ANSWER_WITHIN,
        )
        .await;
        assert_eq!(got["linked_cameras"][0]["error"], "camera not running");
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_alarms_on_a_down_camera_keeps_its_queue_bounded_and_the_rest_hear_busy_at_once(
    ) {
        let registry = Registry::default();
        let (queue, unserved) = crossbeam_channel::bounded(QUEUE);
        registry.register("shed-cam", queue);
        let started = tokio::time::Instant::now();
        let asks = (0..QUEUE + 6).map(|i| {
            let registry = registry.clone();
            async move {
                let answer = registry
                    .ask("shed-cam", &format!("smoke-{i}"), ANSWER_WITHIN)
                    .await;
                (answer, started.elapsed())
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let busy: Vec<_> = answers
            .iter()
            .filter(|(a, _)| *a == Err(LinkedError::Busy))
            .collect();
        assert_eq!(busy.len(), 6, "{answers:?}");
        assert!(
            busy.iter().all(|(_, t)| t.is_zero()),
            "busy is said at once"
        );
        let waited = answers
            .iter()
            .filter(|(a, _)| *a == Err(LinkedError::NoAnswer(ANSWER_WITHIN)))
            .count();
        assert_eq!(waited, QUEUE);
        assert_eq!(
            unserved.len(),
            QUEUE,
            "never more requests queued than its bound"
        );
    }
}
