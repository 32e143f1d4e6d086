//! The station staff console: a local web UI and its JSON API, served by the gateway with
//! axum on `[console] bind`.
//!
//! ```text
//! browser ──HTTP──▶ serve (caps, timeouts) ──▶ same-origin check (POST) ──▶ router
//!   router ─┬─ /healthz, /login (open; password checks bounded, failures throttled)
//!           ├─ /, /api/* (session cookie) ─▶ read-only SQLite (alerts, outbox)
//!           │                              ─▶ AlertBus::{acknowledge,resolve} ─▶ alert task
//!           ├─ /api/events (SSE) ◀── broadcast of committed alert events (ends with the session)
//!           ├─ /live, /api/cameras/{id}/live (WebSocket) ◀── the cameras' live feeds (see [`live`])
//!           └─ /r/{token}… resident pages (see crate::residents), here or on a listener
//!              of their own (`[residents] bind`)
//! ```
//!
//! The console runs in the Inputs stage: staff actions are inputs, so it stops first and
//! the alert task still records what it already accepted. Sessions live in memory (a
//! restart logs everyone out); see [`auth`]. What a hostile LAN can and cannot do to it:
//! [`serve`] (connections), [`checker`] (password checks), [`throttle`] (guessing),
//! [`origin`] (forged form posts).

pub mod api;
pub mod auth;
pub mod checker;
mod compounds;
pub mod devices;
pub mod live;
pub mod origin;
pub mod overview;
pub mod pages;
pub mod resident_pages;
pub mod serve;
pub mod store;
pub mod throttle;

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
    Status(#[from] crate::status::StatusError),
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
    /// Kept up to date by the cameras (a reload starts and stops them), read per request.
    pub cameras: crate::video::CameraSlot,
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
    /// The resident pages' own listener (`[residents] bind`), if configured.
    pub residents_addr: Option<SocketAddr>,
}

/// Connections one address may hold open to the staff console.
pub const CONSOLE_CONNECTIONS_PER_ADDRESS: usize = 32;

/// Shared state of the handlers.
pub(crate) struct State {
    pub deps: ConsoleDeps,
    pub auth: auth::Auth,
    /// Analysis fps per camera, sampled once a second.
    pub fps: Mutex<std::collections::HashMap<String, f64>>,
    /// Cancelled when the console stops: ends the SSE streams.
    pub stop: CancellationToken,
    pub db_path: PathBuf,
    /// The configuration in force (a reload replaces it; see [`crate::reload`]).
    pub live: tokio::sync::watch::Receiver<Arc<Config>>,
}

impl State {
    /// The configuration in force now (devices, locations, staff after a reload).
    pub fn config(&self) -> Arc<Config> {
        self.live.borrow().clone()
    }

    /// `(camera id, counters)` of the cameras running now (none without video).
    pub fn cameras(&self) -> crate::video::Cameras {
        self.deps.cameras.get().unwrap_or_default()
    }
}

/// Binds `config.console.bind` (and `config.residents.bind` when set), logs the real
/// addresses and serves the console and the resident pages as supervised tasks of the
/// Inputs stage until shutdown.
pub fn spawn(
    deps: ConsoleDeps,
    live: tokio::sync::watch::Receiver<Arc<Config>>,
    stages: &Stages,
) -> Result<ConsoleHandle, ConsoleError> {
    let console_listener = bind(deps.config.console.bind)?;
    let residents_listener = deps.config.residents.bind.map(bind).transpose()?;
    let local_addr = local(&console_listener, deps.config.console.bind)?;
    let residents_addr = match (&residents_listener, deps.config.residents.bind) {
        (Some(l), Some(addr)) => Some(local(l, addr)?),
        _ => None,
    };
    let token = stages.token(Stage::Inputs);
    let state = Arc::new(State {
        auth: auth::Auth::new(deps.config.console.clone()),
        fps: Mutex::new(Default::default()),
        stop: token.child_token(),
        db_path: deps.data_dir.join(crate::db::FILE_NAME),
        deps,
        live,
    });
    spawn_staff_follower(stages, &state);
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
    let fds = crate::os::fd_limit();
    let console_gate = serve::Limits::for_fd_limit(fds, Some(CONSOLE_CONNECTIONS_PER_ADDRESS));
    let app = match residents_listener {
        Some(listener) => {
            let pages = resident_pages::routes(state.clone());
            let gate = serve::Gate::new("residents", serve::Limits::for_fd_limit(fds, None));
            supervise_server(stages, "residents_web", listener, pages, gate, &state);
            api::routes(state.clone())
        }
        None => router(state.clone()),
    };
    let gate = serve::Gate::new("console", console_gate);
    supervise_server(stages, "console", console_listener, app, gate, &state);
    tracing::info!(
        console = %local_addr,
        residents = %residents_addr.map_or_else(|| "(console)".to_owned(), |a| a.to_string()),
        max_connections = console_gate.max_connections,
        "console listening"
    );
    Ok(ConsoleHandle {
        local_addr,
        residents_addr,
    })
}

/// Follows reloads of `[[console.staff]]`: logins use the new list at once, and the
/// sessions of staff removed (or whose password or role changed) end.
fn spawn_staff_follower(stages: &Stages, state: &Arc<State>) {
    let (state, mut live) = (state.clone(), state.live.clone());
    stages.spawn(Stage::Inputs, move |token| async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                changed = live.changed() => if changed.is_err() { break },
            }
            let staff = live.borrow_and_update().console.staff.clone();
            state.auth.set_staff(staff);
        }
    });
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ConsoleError> {
    let bind_err = |source| ConsoleError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

fn local(listener: &std::net::TcpListener, addr: SocketAddr) -> Result<SocketAddr, ConsoleError> {
    listener
        .local_addr()
        .map_err(|source| ConsoleError::Bind { addr, source })
}

/// Serves `app` on `listener` as the supervised stage `name`. The listening socket and the
/// connection gate outlive a crash of the server: a restart serves a clone of the socket.
fn supervise_server(
    stages: &Stages,
    name: &'static str,
    listener: std::net::TcpListener,
    app: axum::Router,
    gate: serve::Gate,
    state: &Arc<State>,
) {
    let (listener, gate, stop) = (Arc::new(listener), Arc::new(gate), state.stop.clone());
    // `stop` is a child of the Inputs stage's token: shutdown ends the server, its
    // connections and their event streams.
    stages.supervise(Stage::Inputs, name, Severity::Degraded, move |_| {
        let (listener, gate, app, stop) =
            (listener.clone(), gate.clone(), app.clone(), stop.clone());
        async move {
            let listener = listener
                .try_clone()
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|e| format!("{name} listener: {e}"))?;
            serve::serve(listener, app, gate, stop).await;
            tracing::info!(listener = name, "stopped");
            Ok(())
        }
    });
}

/// The whole HTTP surface (console + resident pages), for tests and [`spawn`].
pub(crate) fn router(state: Arc<State>) -> axum::Router {
    api::routes(state.clone()).merge(resident_pages::routes(state))
}

/// Builds the router without binding (for in-process tests with `tower::ServiceExt`).
pub fn test_router(deps: ConsoleDeps) -> axum::Router {
    router(Arc::new(State {
        auth: auth::Auth::new(deps.config.console.clone()),
        fps: Mutex::new(Default::default()),
        stop: CancellationToken::new(),
        db_path: deps.data_dir.join(crate::db::FILE_NAME),
        live: tokio::sync::watch::channel(deps.config.clone()).1,
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
        for (id, stats) in &state.cameras() {
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
