//! The station staff console: a local web UI and its JSON API, served by the gateway with
//! axum on `[console] bind`.
//!
//! ```text
//! browser ──HTTP──▶ router ─┬─ /healthz, /login (open)
//!                           ├─ /, /api/* (session cookie) ─▶ read-only SQLite (alerts, outbox)
//!                           │                              ─▶ AlertInput::{Acknowledge,Resolve} ─▶ alert task
//!                           ├─ /api/events (SSE) ◀── broadcast of committed alert events
//!                           └─ /r/{token}… resident pages (see crate::residents)
//! ```
//!
//! The console runs in the Inputs stage: staff actions are inputs, so it stops first and
//! the alert task still records what it already accepted. Sessions live in memory (a
//! restart logs everyone out); see [`auth`].

pub mod api;
pub mod auth;
pub mod devices;
pub mod pages;
pub mod store;

use crate::ingest::board::DeviceBoard;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use edge_config::Config;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::alerts::Alert;
use crate::shutdown::{Lifecycle as Stages, Stage};
use crate::supervise::Severity;
use crate::uplink::UplinkStatus;
use crate::video::CameraStats;

/// Errors of the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("console: database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("console: stored alert is unreadable: {0}")]
    Json(#[from] serde_json::Error),
    #[error("console: {0}")]
    Uplink(#[from] crate::uplink::UplinkError),
    #[error("console: {0}")]
    Residents(#[from] crate::residents::ResidentsError),
    #[error("console: background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What the console needs from the running gateway.
#[derive(Clone)]
pub struct ConsoleDeps {
    pub config: Arc<Config>,
    /// `<data_dir>`: the database (`shouwang.db`) and evidence live there.
    pub data_dir: PathBuf,
    /// Staff actions go to the alert task through this.
    pub alert_inputs: crate::alerts::AlertBus,
    /// Committed alert events (a receiver, so the console never keeps the channel open).
    pub events: Arc<broadcast::Receiver<Alert>>,
    pub uplink: Arc<UplinkStatus>,
    /// `(camera id, counters)` of the analysed cameras (empty without video).
    pub cameras: Vec<(String, Arc<CameraStats>)>,
    /// What every device last said, kept by ingest.
    pub board: Arc<DeviceBoard>,
    /// Ingest's accepted/rejected counters (rejections per device on the devices panel).
    pub ingest: Arc<crate::ingest::IngestStats>,
    /// Alert events the database refused (disk full): the console shows a banner while any
    /// wait, because staff would otherwise see nothing at all.
    pub alert_store: Arc<crate::alerts::task::AlertTaskStats>,
    /// The disk reserve (`None`: none kept): its release is a banner too.
    pub reserve: Option<Arc<crate::reserve::Reserve>>,
    /// Supervised stages and the self-test: a faulted stage is a red banner.
    pub health: Option<Arc<crate::supervise::Health>>,
}

/// The running console.
#[derive(Debug, Clone)]
pub struct ConsoleHandle {
    /// The real listening address (port 0 in the configuration picks a free one).
    pub local_addr: SocketAddr,
}

/// Shared state of the handlers.
pub(crate) struct State {
    pub deps: ConsoleDeps,
    pub auth: auth::Auth,
    /// Analysis fps per camera, sampled once a second.
    pub fps: Mutex<std::collections::HashMap<String, f64>>,
    /// Cancelled when the console stops: ends the SSE streams.
    pub stop: CancellationToken,
    pub db_path: PathBuf,
}

/// Binds `config.console.bind`, logs the real address and serves the console (and the
/// resident pages) as a task of the Inputs stage until shutdown.
pub fn spawn(deps: ConsoleDeps, stages: &Stages) -> Result<ConsoleHandle, ConsoleError> {
    let addr = deps.config.console.bind;
    let bind_err = |source| ConsoleError::Bind { addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    std_listener.set_nonblocking(true).map_err(bind_err)?;
    let local_addr = std_listener.local_addr().map_err(bind_err)?;
    let token = stages.token(Stage::Inputs);
    let state = Arc::new(State {
        auth: auth::Auth::new(deps.config.console.clone()),
        fps: Mutex::new(Default::default()),
        stop: token.child_token(),
        db_path: deps.data_dir.join(crate::db::FILE_NAME),
        deps,
    });
    let sampler = state.clone();
    stages.supervise(
        Stage::Inputs,
        "console_fps",
        Severity::Degraded,
        move |_| {
            let sampler = sampler.clone();
            async move {
                sample_fps(sampler).await;
                Ok(())
            }
        },
    );
    // The listening socket outlives a crash of the server: a restart serves a clone of it.
    let std_listener = Arc::new(std_listener);
    stages.supervise(Stage::Inputs, "console", Severity::Degraded, move |token| {
        let (state, std_listener) = (state.clone(), std_listener.clone());
        async move {
            let listener = std_listener
                .try_clone()
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|e| format!("console listener: {e}"))?;
            let stop = state.stop.clone();
            let shutdown = async move {
                token.cancelled().await;
                stop.cancel();
            };
            let result = axum::serve(listener, router(state))
                .with_graceful_shutdown(shutdown)
                .await;
            tracing::info!("console stopped");
            result.map_err(|e| format!("console: {e}"))
        }
    });
    tracing::info!(console = %local_addr, "console listening");
    Ok(ConsoleHandle { local_addr })
}

/// The whole HTTP surface (console + resident pages), for tests and [`spawn`].
pub(crate) fn router(state: Arc<State>) -> axum::Router {
    api::routes(state.clone()).merge(crate::residents::web::routes(state))
}

/// Builds the router without binding (for in-process tests with `tower::ServiceExt`).
pub fn test_router(deps: ConsoleDeps) -> axum::Router {
    router(Arc::new(State {
        auth: auth::Auth::new(deps.config.console.clone()),
        fps: Mutex::new(Default::default()),
        stop: CancellationToken::new(),
        db_path: deps.data_dir.join(crate::db::FILE_NAME),
        deps,
    }))
}

async fn sample_fps(state: Arc<State>) {
    let mut last: std::collections::HashMap<String, (std::time::Instant, u64)> = Default::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = state.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = std::time::Instant::now();
        for (id, stats) in &state.deps.cameras {
            let analysed = stats.snapshot().analysed;
            if let Some((t, n)) = last.insert(id.clone(), (now, analysed)) {
                let dt = (now - t).as_secs_f64();
                if dt > 0.0 {
                    if let Ok(mut fps) = state.fps.lock() {
                        fps.insert(id.clone(), analysed.saturating_sub(n) as f64 / dt);
                    }
                }
            }
        }
    }
}
