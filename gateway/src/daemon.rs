//! `gateway run`: prepares the data directory, starts every stage, waits for the one
//! shutdown signal and stops the stages in order.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_config::Config;

use std::sync::Arc;

use crate::db;
use crate::reserve::{is_disk_trouble, Reserve};
use crate::shutdown::{self, Lifecycle, Stage};
use crate::topology::{self, Running};

/// How the daemon runs, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the database and evidence live (`--data-dir` or `storage.data_dir`).
    pub data_dir: PathBuf,
    /// The whole ordered shutdown must finish within this time.
    pub shutdown_deadline: Duration,
    /// The configuration file, re-read on SIGHUP (`None`: nothing to reload from).
    pub config_file: Option<PathBuf>,
}

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {0} is in use by another gateway (lock file held)")]
    Locked(PathBuf),
    #[error(transparent)]
    Database(#[from] db::DbError),
    #[error(transparent)]
    Topology(#[from] crate::topology::TopologyError),
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    #[error("cannot listen for shutdown signals: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Reload(#[from] crate::reload::ReloadError),
    #[error("shutdown deadline passed with stages still running: {0:?}")]
    ShutdownTimedOut(Vec<Stage>),
}

/// Runs the gateway until SIGINT/SIGTERM.
pub async fn run(config: Config, options: Options) -> Result<(), DaemonError> {
    let mut signals = shutdown::Signals::new().map_err(DaemonError::Signal)?;
    harden_process();
    let _lock = lock_data_dir(&options.data_dir)?;
    let db_path = options.data_dir.join(db::FILE_NAME);
    let reserve = Arc::new(Reserve::ensure(
        &options.data_dir,
        config.storage.reserve_mb.saturating_mul(1024 * 1024),
    ));
    let conn = open_database(&db_path, &reserve)?;

    let life = Lifecycle::new();
    spawn_database(&life, conn, db_path.clone());
    let config = Arc::new(config);
    let running = topology::start_with_reserve(config.clone(), &db_path, &life, Some(reserve))?;
    let video = start_video(&config, &life, &running, &options.data_dir).await;
    if let Some(control) = video.as_ref().and_then(|v| v.control.as_ref()) {
        control.publish_to(running.cameras.clone());
    }
    // The configuration in force for the stages that need no ordering (console, resident
    // notices); the alarm path gets reloads in band (see `reload`).
    let (live, live_config) = tokio::sync::watch::channel(config.clone());
    // Sensor alarm → camera evidence (issue 16): the cameras that see a device.
    crate::video::linked::spawn(
        live_config.clone(),
        video.as_ref().map(|v| v.linked.clone()).unwrap_or_default(),
        running.events.clone(),
        running.alert_inputs.clone(),
        &life,
    );
    if running.broker_addr.is_some() {
        crate::residents::spawn_publisher(
            live_config.clone(),
            running.internal_options.clone(),
            running.events.subscribe(),
            &life,
        );
    }
    // --- Home Assistant MQTT discovery (issue 15; [homeassistant] enabled) ---
    crate::homeassistant::spawn(
        crate::homeassistant::Sources {
            config: config.clone(),
            options: running.internal_options.clone(),
            db_path: db_path.clone(),
            board: running.device_board.clone(),
            uplink: running.uplink.clone(),
            health: running.health.clone(),
            cameras: running.cameras.clone(),
            live: live_config.clone(),
        },
        running.events.subscribe(),
        &life,
    );
    // --- end Home Assistant ---
    let console = crate::console::spawn(
        crate::console::ConsoleDeps {
            config: config.clone(),
            data_dir: options.data_dir.clone(),
            alert_inputs: running.alert_inputs.clone(),
            events: Arc::new(running.events.subscribe()),
            uplink: running.uplink.clone(),
            cameras: running.cameras.clone(),
            board: running.device_board.clone(),
            ingest: running.ingest_stats.clone(),
            alert_store: running.alert_stats.clone(),
            reserve: running.reserve.clone(),
            health: Some(running.health.clone()),
        },
        live_config,
        &life,
    )?;
    if let Some(file) = &options.config_file {
        let targets = crate::reload::Targets {
            alarm_path: running.reload.clone(),
            live,
            access: running.broker.as_ref().and_then(|b| b.access_reloader()),
            video: video.as_ref().and_then(|v| v.control.clone()),
        };
        let (file, dir) = (file.clone(), options.data_dir.clone());
        crate::reload::spawn(&life, file, dir, config.clone(), targets)?;
    }

    // ---- /metrics (issue 15): Prometheus on `[metrics] bind`, off unless configured ----
    crate::metrics::start(
        &config,
        crate::metrics::MetricsSources::of(&running, &options.data_dir),
        &life,
    );
    // ---- end /metrics ----

    tracing::info!(
        site = %config.site.id,
        data_dir = %options.data_dir.display(),
        broker = %running.broker_addr.map(|a| a.to_string()).unwrap_or_else(|| "external".into()),
        devices = config.devices.len(),
        cameras = config.cameras.len(),
        cameras_analysed = video.as_ref().map_or(0, |v| v.cameras.len()),
        console = %console.local_addr,
        residents = %console.residents_addr.unwrap_or(console.local_addr),
        "gateway ready"
    );
    crate::service::ready(&format!(
        "watching {} devices and {} cameras",
        config.devices.len(),
        video.as_ref().map_or(0, |v| v.cameras.len())
    ));
    crate::service::spawn_watchdog(&life, running.health.clone());

    let signal = signals.recv().await;
    tracing::info!(signal, "shutting down");
    crate::service::stopping();
    // The stages stop by their tokens; only the broker must outlive them (its listeners
    // close when it is dropped).
    let Running { broker, .. } = running;
    let report = life.shutdown(options.shutdown_deadline).await;
    drop(broker);
    drop(video);
    if !report.clean() {
        return Err(DaemonError::ShutdownTimedOut(report.timed_out));
    }
    tracing::info!("gateway stopped cleanly");
    Ok(())
}

/// Files created from now on are private; the open-file limit is raised to its hard limit;
/// the allocator gives large blocks back ([`crate::os::bound_malloc`]) unless
/// `SHOUWANG_MALLOC=glibc` asks for glibc's defaults (to compare the two).
fn harden_process() {
    crate::os::private_umask();
    let mode = crate::os::MallocMode::from_env().unwrap_or_else(|value| {
        tracing::warn!(
            value,
            "unknown {} (bounded or glibc): bounded",
            crate::os::MALLOC_ENV
        );
        crate::os::MallocMode::Bounded
    });
    if crate::os::bound_malloc(mode) {
        tracing::info!(?mode, "allocator");
    } else {
        tracing::warn!("cannot bound the allocator (mallopt refused)");
    }
    match crate::os::raise_fd_limit() {
        Ok(l) if l.before != l.now => {
            tracing::info!(before = l.before, now = l.now, "open file limit raised")
        }
        Ok(l) => tracing::info!(open_files = l.now, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
}

/// Starts the camera pipelines. A missing ONNX Runtime or model leaves the cameras
/// unanalysed with a clear error; sensors keep working.
async fn start_video(
    config: &Arc<Config>,
    life: &Lifecycle,
    running: &Running,
    data_dir: &Path,
) -> Option<crate::video::VideoHandle> {
    if config.cameras.iter().all(|c| !c.enabled) {
        return None;
    }
    let (config, life, inputs, dir) = (
        config.clone(),
        life.clone(),
        running.alert_inputs.clone(),
        data_dir.to_owned(),
    );
    // Loading and warming up the model blocks for a moment.
    let spawned =
        tokio::task::spawn_blocking(move || crate::video::spawn(config, &life, inputs, &dir)).await;
    match spawned {
        Ok(Ok(video)) => Some(video),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cameras are not analysed; sensors keep working");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "camera start-up failed; sensors keep working");
            None
        }
    }
}

/// The database stage: owns the connection until every writer has stopped, then
/// checkpoints and closes it.
fn spawn_database(life: &Lifecycle, conn: rusqlite::Connection, path: PathBuf) {
    life.spawn(Stage::Database, move |token| async move {
        token.cancelled().await;
        match db::close(conn, &path) {
            Ok(()) => tracing::info!(path = %path.display(), "database closed"),
            Err(e) => tracing::error!(error = %e, "database close failed"),
        }
    });
}

/// Creates the data directory and takes an exclusive lock on `gateway.lock` inside it, so two
/// gateways never share one outbox. The lock is released when the returned file is dropped
/// (or the process dies).
/// Opens the database; on a full disk (it cannot even create its WAL index) gives up the
/// disk reserve and tries once more.
fn open_database(path: &Path, reserve: &Reserve) -> Result<rusqlite::Connection, DaemonError> {
    match db::open(path) {
        Ok(conn) => Ok(conn),
        Err(e) if is_disk_trouble(&e) && reserve.release("opening the database") => {
            tracing::warn!(error = %e, "retrying the database with the reserve's room");
            Ok(db::open(path)?)
        }
        Err(e) => Err(e.into()),
    }
}

fn lock_data_dir(dir: &Path) -> Result<File, DaemonError> {
    let io = |source| DaemonError::DataDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    // The database, status and evidence are the operator's alone (an older install may
    // have left the directory readable by everyone).
    crate::os::restrict(dir, 0o700).map_err(io)?;
    let file = File::create(dir.join("gateway.lock")).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DaemonError::Locked(dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_gateway_cannot_take_the_same_data_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        crate::os::restrict(dir.path(), 0o755).unwrap();
        let _first = lock_data_dir(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the data directory is private");
        let second = lock_data_dir(dir.path());
        assert!(matches!(second, Err(DaemonError::Locked(_))));
    }
}
