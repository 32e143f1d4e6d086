//! `GET /metrics`: the gateway's counters in the Prometheus text format (version 0.0.4), on
//! a listener of its own (`[metrics] bind`, off unless `[metrics]` is present).
//!
//! ```text
//! Prometheus ──HTTP──▶ console::serve (caps, timeouts) ──▶ /metrics ──▶ Registry (blocking pool)
//!   Registry ─┬─ hooks: alerts raised, alert commit and inference histograms (process-wide)
//!             ├─ collect: StatusSources (ingest, alert task, uplink, cameras, health,
//!             │           reserve, broker front), telemetry, the database read-only
//!             └─ process: /proc/self (RSS, CPU seconds, open descriptors)
//! ```
//!
//! Almost everything is read at scrape time from the counters the stages already keep for
//! `status.json`; only what nobody counted ([`hooks`]) is counted here. A scrape never
//! blocks a stage: the shared counters are atomics or short locks, and the database is read
//! on its own read-only connection (WAL readers never block the writer).
//!
//! `/metrics` has no authentication (Prometheus scrapes without one): it listens on
//! loopback unless configured otherwise; see [`edge_config::Metrics`]. It runs in the
//! Inputs stage, like the console, and stops first on shutdown.

mod collect;
mod encode;
pub mod hooks;
pub mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use edge_config::Config;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

pub use collect::{read_database, DatabaseView, MetricsSources};

use crate::console::serve;
use crate::shutdown::{Lifecycle as Stages, Stage};
use crate::supervise::Severity;

/// Connections one address may hold open to `/metrics` (a Prometheus or two, and a curl).
pub const CONNECTIONS_PER_ADDRESS: usize = 8;

/// Errors of `/metrics`.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: cannot open the database {path} read-only: {source}")]
    Database {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("metrics: database query: {0}")]
    Query(rusqlite::Error),
    #[error("metrics: outbox: {0}")]
    Outbox(#[from] crate::outbox::OutboxError),
    #[error("metrics: cannot encode: {0}")]
    Encode(std::fmt::Error),
}

impl MetricsSources {
    /// What the running gateway's stages report, and its database in `data_dir`.
    pub fn of(running: &crate::topology::Running, data_dir: &Path) -> MetricsSources {
        MetricsSources {
            status: crate::status::StatusSources {
                link: running.uplink.clone(),
                station_link: running.station_link.clone(),
                ingest: Some(running.ingest_stats.clone()),
                alert_store: Some(running.alert_stats.clone()),
                reserve: running.reserve.clone(),
                health: Some(running.health.clone()),
                cameras: running.cameras.clone(),
                broker: running
                    .broker
                    .as_ref()
                    .map(crate::broker::EmbeddedBroker::front_counters),
            },
            telemetry: Some(running.telemetry_stats.clone()),
            db_path: data_dir.join(crate::db::FILE_NAME),
        }
    }
}

/// Every metric `/metrics` serves: the hooks' instruments, the stages' counters, the process.
pub fn registry(sources: MetricsSources) -> Registry {
    let mut r = Registry::default();
    r.register(
        "shouwang_alerts_raised",
        "Alerts raised, by kind and level",
        hooks::ALERTS_RAISED.clone(),
    );
    r.register(
        "shouwang_alert_commit_seconds",
        "Time the alert task took to commit a trigger's alert events (synchronous=FULL), seconds",
        hooks::ALERT_COMMIT_SECONDS.clone(),
    );
    r.register(
        "shouwang_inference_seconds",
        "Time one detector inference took (all cameras share the detector), seconds",
        hooks::INFERENCE_SECONDS.clone(),
    );
    r.register_collector(Box::new(sources));
    r.register_collector(Box::new(process::ProcessCollector));
    r
}

/// The exposition text of `registry` now (reads the database: call it off the async workers).
pub fn render(registry: &Registry) -> Result<String, MetricsError> {
    let mut text = String::new();
    prometheus_text::encode(&mut text, registry).map_err(MetricsError::Encode)?;
    Ok(text)
}

/// The `/metrics` router (also for in-process tests).
pub fn router(registry: Arc<Registry>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || scrape(registry.clone())),
    )
}

async fn scrape(registry: Arc<Registry>) -> Response {
    match tokio::task::spawn_blocking(move || render(&registry)).await {
        Ok(Ok(text)) => (
            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves `/metrics` on `[metrics] bind` when configured; logs and carries on without it
/// when the address cannot be had (the alarm path matters more than its dashboard).
/// Returns the real address (port 0 picks a free one).
pub fn start(config: &Config, sources: MetricsSources, stages: &Stages) -> Option<SocketAddr> {
    let addr = edge_config::Metrics::listen_addr(config.metrics.as_ref())?;
    match spawn(addr, sources, stages) {
        Ok(local) => {
            tracing::info!(addr = %local, "metrics listening");
            Some(local)
        }
        Err(e) => {
            tracing::error!(error = %e, "/metrics is not served; the gateway runs without it");
            None
        }
    }
}

/// Binds `addr` and serves `/metrics` there as the supervised stage `metrics` of the Inputs
/// stage until shutdown. The socket and connection gate outlive a crash of the server.
pub fn spawn(
    addr: SocketAddr,
    sources: MetricsSources,
    stages: &Stages,
) -> Result<SocketAddr, MetricsError> {
    let bind_err = |source| MetricsError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let limits = serve::Limits::for_fd_limit(crate::os::fd_limit(), Some(CONNECTIONS_PER_ADDRESS));
    let (listener, gate) = (
        Arc::new(listener),
        Arc::new(serve::Gate::new("metrics", limits)),
    );
    let app = router(Arc::new(registry(sources)));
    stages.supervise(Stage::Inputs, "metrics", Severity::Degraded, move |stop| {
        let (listener, gate, app) = (listener.clone(), gate.clone(), app.clone());
        async move {
            let listener = listener
                .try_clone()
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|e| format!("metrics listener: {e}"))?;
            serve::serve(listener, app, gate, stop).await;
            tracing::info!(listener = "metrics", "stopped");
            Ok(())
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests;
