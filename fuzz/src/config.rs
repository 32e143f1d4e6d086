//! Fuzz harness: configuration text through `edge_config::parse` (TOML syntax with
//! recovery, schema with repair rounds, path resolution, validation, error location), and a
//! configuration that passes straight into the gateway's sensor side.
//!
//! Shared by the `config` fuzz target (fuzz/fuzz_targets/) and the regular test suite
//! (gateway/tests/ingest_fuzz.rs replays the seed corpus and every regression input).
//!
//! The input is the file's bytes; invalid UTF-8 is replaced (as a lossy read would), so every
//! input reaches the parser.
//!
//! # What is checked
//!
//! Nothing panics; a rejected file has at least one error, each naming the file, at a line
//! and column inside it (1-based, columns in characters), in file order; a valid one builds ingest (routing, subscriptions)
//! and the rules engine, and one heartbeat-like message per device goes through both.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edge_config::{Config, ConfigErrors};
use gateway::ingest::{Ingest, Ingested};
use gateway::rules::Engine;
use tokio::time::Instant;

/// The file name errors are reported against.
pub const FILE_NAME: &str = "fuzz.toml";

/// Where relative paths resolve: the demo's directory, so the demo's files exist.
pub fn base_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge-config/examples")
}

/// Runs one input. Panics only on a finding (a panic in the gateway or a broken invariant).
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match edge_config::parse(&text, FILE_NAME, &base_dir()) {
        Ok(config) => start_sensor_side(Arc::new(config)),
        Err(errors) => check_errors(&text, &errors),
    }
}

/// Every error names the file and points inside it.
///
/// # Panics
///
/// On an error list that breaks that: a finding.
fn check_errors(text: &str, errors: &ConfigErrors) {
    assert!(!errors.is_empty(), "a rejected configuration with no error");
    let lines: Vec<&str> = text.split('\n').collect();
    let mut previous = (0, 0);
    for e in errors.iter() {
        assert_eq!(e.file, FILE_NAME, "error names another file: {e}");
        let Some(line) = e.line.checked_sub(1).and_then(|i| lines.get(i)) else {
            panic!("error outside the file ({} lines): {e}", lines.len());
        };
        // Columns count characters; one past the end points at a missing value.
        let width = line.chars().count() + 1;
        assert!(
            (1..=width).contains(&e.col),
            "error beside its line ({width} columns): {e}"
        );
        assert!((e.line, e.col) >= previous, "errors out of file order: {e}");
        previous = (e.line, e.col);
        assert!(!e.message.is_empty(), "error without a message: {e}");
    }
    let rendered = errors.to_string();
    assert!(rendered.lines().count() >= errors.len());
}

/// What `gateway run` builds from a configuration before any network I/O: ingest (router,
/// throttle, subscriptions, in-process subscribers) and the rules engine; then one `{}`
/// message on every device topic and a tick an hour later.
fn start_sensor_side(config: Arc<Config>) {
    let mut ingest = Ingest::new(config.clone());
    let _ = ingest.subscriptions();
    let _ = ingest.local_subscribers();
    let t0 = Instant::now();
    let mut engine = Engine::new(config.clone(), t0);
    for d in &config.devices {
        if let Some(Ingested::Reading(r)) = ingest.ingest(&d.state_topic(), b"{}", t0) {
            engine.on_reading(&r);
        }
    }
    engine.on_tick(t0 + Duration::from_secs(3600));
}
