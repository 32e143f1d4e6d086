//! Reload without a restart: `SIGHUP` or `gateway reload --data-dir DIR`.
//!
//! # What a reload does
//!
//! The daemon re-reads its configuration file with the same parser and validation as at
//! start-up. An invalid file is **refused**, with every error at line:col, and the running
//! configuration stays. A valid one is compared with the running configuration
//! ([`diff::ConfigDiff`]) and what a reload can change is applied at once:
//!
//! | change | how it is applied |
//! |---|---|
//! | `[[devices]]` added, changed, removed | in band on the alarm path (below); new logins and topic rules on the broker's front; new device topics subscribed on a link of their own |
//! | `[rules]` (thresholds, timing, linkage), `[locations]` | in band: the rules and the alert task switch in order with the readings |
//! | `[[cameras]]` | only the cameras added, changed or removed stop or start; the others keep running |
//! | `[[broker.readers]]`, `[[console.staff]]` | new CONNECTs and logins use them; a removed staff member's sessions end |
//! | anything else (`[site]`, `[uplink]`, `broker.bind`, `console.bind`, `[storage]`, …) | **not applied**: the outcome lists each such key as needing a restart, and the running value stays |
//!
//! Active alerts, the outbox, the uplink, broker connections of unchanged devices and camera
//! pipelines that did not change are left alone. Alerts of devices or cameras the new file
//! no longer has (or a device whose kind changed) are resolved with the reason
//! [`crate::alerts::task::REMOVED_BY_RELOAD`].
//!
//! # In band
//!
//! Readings carry device *indexes* into the configuration, so the stages of the alarm path
//! must switch in the order readings flow: the reloaded configuration goes to ingest (a
//! `watch` from [`crate::topology::Running::reload`]), which switches between two messages
//! and sends [`crate::ingest::Ingested::Reload`] after the last reading of the old numbering;
//! the rules switch on it (each device's state kept by id) and send
//! [`crate::alerts::task::AlertInput::Reload`] after the last signal of the old numbering; the
//! alert task switches on that and resolves what was removed. Staff resolves travel the other
//! way by device id, so a reload in between cannot misdirect them.
//!
//! # The outcome
//!
//! Each reload writes `reload.json` in the data directory ([`Outcome`]: `applied`,
//! `unchanged`, `refused`), which `gateway reload` waits for and prints.
//!
//! Known limit: messages of devices added by a reload get their PUBACK when the broker has
//! them, not after their commit (the commit gate's logs are fixed at start); the outcome says
//! so, and the next restart puts them under the gate.

pub mod cli;
pub mod diff;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{SecondsFormat, Utc};
use edge_config::Config;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::shutdown::{Lifecycle, Stage};
use crate::supervise::Severity;
pub use diff::ConfigDiff;

/// The outcome file, in the data directory.
pub const RELOAD_FILE: &str = "reload.json";

/// What a reload did, as written to `reload.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    /// The gateway process that reloaded.
    pub pid: u32,
    /// Reloads since that process started (1 for the first).
    pub seq: u64,
    pub at: String,
    pub file: String,
    pub result: Verdict,
    /// Every error of a refused file, at line:col.
    #[serde(default)]
    pub errors: Vec<String>,
    /// What was applied, one line each.
    #[serde(default)]
    pub applied: Vec<String>,
    /// Keys that changed but need a restart; their running values stay.
    #[serde(default)]
    pub restart_needed: Vec<String>,
    /// Anything else the installer should know.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Changes were applied (some keys may still need a restart).
    Applied,
    /// The file is valid and changes nothing a reload applies.
    Unchanged,
    /// The file is invalid: nothing changed.
    Refused,
}

/// Why writing the outcome failed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(std::io::Error),
}

/// Where a reload is applied: the stages' ends, set by the daemon.
pub struct Targets {
    /// The alarm path (ingest first; see "In band").
    pub alarm_path: watch::Sender<Arc<Config>>,
    /// The configuration for readers that need no ordering (console, resident notices).
    pub live: watch::Sender<Arc<Config>>,
    /// The embedded broker's logins and topic rules (none on an external broker).
    pub access: Option<crate::broker::AccessReloader>,
    /// The camera pipelines, if any run.
    pub video: Option<Arc<crate::video::VideoControl>>,
}

/// Reloads `file` whenever the process gets SIGHUP, until the inputs stop.
pub fn spawn(
    life: &Lifecycle,
    file: PathBuf,
    data_dir: PathBuf,
    running: Arc<Config>,
    targets: Targets,
) -> Result<(), ReloadError> {
    use tokio::signal::unix::{signal, SignalKind};
    let hangups = signal(SignalKind::hangup()).map_err(ReloadError::Signal)?;
    // Supervised like every stage: the signal stream and the reloader (the configuration in
    // force, the outcome count) outlive a crash of the task, which is a fault until it runs
    // again.
    let state = Arc::new(tokio::sync::Mutex::new((
        hangups,
        Reloader {
            file,
            data_dir,
            running,
            targets,
            seq: 0,
        },
    )));
    life.supervise(Stage::Inputs, "reload", Severity::Degraded, move |token| {
        let state = state.clone();
        async move {
            let mut guard = state.lock().await;
            let (hangups, reloader) = &mut *guard;
            loop {
                tokio::select! {
                    _ = token.cancelled() => return Ok(()),
                    got = hangups.recv() => if got.is_none() {
                        return Err("the SIGHUP stream ended".to_owned());
                    },
                }
                crate::supervise::fault_point("reload").await;
                let outcome = reloader.reload().await;
                log(&outcome);
                if let Err(e) = reloader.write(&outcome) {
                    tracing::error!(error = %e, "reload outcome not written");
                }
            }
        }
    });
    Ok(())
}

/// The reloading task's state.
struct Reloader {
    file: PathBuf,
    data_dir: PathBuf,
    /// The configuration in force (after the last applied reload).
    running: Arc<Config>,
    targets: Targets,
    seq: u64,
}

impl Reloader {
    /// Reads, validates, compares and applies the file once.
    async fn reload(&mut self) -> Outcome {
        self.seq += 1;
        let mut outcome = Outcome {
            pid: std::process::id(),
            seq: self.seq,
            at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            file: self.file.display().to_string(),
            result: Verdict::Unchanged,
            errors: Vec::new(),
            applied: Vec::new(),
            restart_needed: Vec::new(),
            notes: Vec::new(),
        };
        let file = self.file.clone();
        let loaded = tokio::task::spawn_blocking(move || edge_config::load(&file)).await;
        let new = match loaded {
            Ok(Ok(config)) => config,
            Ok(Err(errors)) => {
                outcome.result = Verdict::Refused;
                outcome.errors = errors.0.iter().map(ToString::to_string).collect();
                return outcome;
            }
            Err(e) => {
                outcome.result = Verdict::Refused;
                outcome.errors = vec![format!("reading the file failed: {e}")];
                return outcome;
            }
        };
        let diff = ConfigDiff::between(&self.running, &new);
        outcome.restart_needed = diff.restart_needed.clone();
        if diff.applies_nothing() {
            return outcome;
        }
        let effective = Arc::new(ConfigDiff::effective(&self.running, &new));
        self.apply(&diff, &effective, &mut outcome);
        self.running = effective;
        outcome.result = Verdict::Applied;
        outcome.applied = diff.summary();
        outcome
    }

    /// Hands `config` to every target.
    fn apply(&self, diff: &ConfigDiff, config: &Arc<Config>, outcome: &mut Outcome) {
        self.targets.alarm_path.send_replace(config.clone());
        if let Some(access) = &self.targets.access {
            access.apply(config);
            if !diff.devices.added.is_empty() || !diff.devices.changed.is_empty() {
                outcome.notes.push(
                    "new or changed device topics are acknowledged to the sensor on receipt, \
                     not after their commit, until the next restart"
                        .to_owned(),
                );
            }
        }
        self.targets.live.send_replace(config.clone());
        if diff.cameras.is_empty() {
            return;
        }
        match &self.targets.video {
            Some(video) => outcome.notes.extend(video.reconfigure(config)),
            None if config.cameras.iter().any(|c| c.enabled) => {
                outcome.restart_needed.push("cameras".to_owned());
                outcome.notes.push(
                    "no camera pipeline runs (none was enabled at start, or the detector did \
                     not load): a restart starts the cameras"
                        .to_owned(),
                );
            }
            None => {}
        }
    }

    /// Writes `outcome` to `reload.json` (a temporary file renamed over it).
    fn write(&self, outcome: &Outcome) -> Result<(), ReloadError> {
        let path = self.data_dir.join(RELOAD_FILE);
        let tmp = self.data_dir.join(format!("{RELOAD_FILE}.tmp"));
        let io = |source| ReloadError::Write {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(outcome).unwrap_or_default();
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

fn log(o: &Outcome) {
    match o.result {
        Verdict::Refused => tracing::error!(
            file = %o.file,
            errors = o.errors.len(),
            first = o.errors.first().map(String::as_str).unwrap_or(""),
            "reload refused: the running configuration stays"
        ),
        Verdict::Unchanged => tracing::info!(
            file = %o.file,
            restart_needed = ?o.restart_needed,
            "reload: nothing to apply"
        ),
        Verdict::Applied => tracing::info!(
            file = %o.file,
            applied = ?o.applied,
            restart_needed = ?o.restart_needed,
            "configuration reloaded"
        ),
    }
}

/// Reads the outcome of the last reload in `data_dir`, if any.
pub fn read_outcome(data_dir: &Path) -> Option<Outcome> {
    let text = std::fs::read(data_dir.join(RELOAD_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}
