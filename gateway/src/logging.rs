//! Logging set-up: human-readable on a terminal, JSON lines for log collectors.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human format, coloured when stderr is a terminal.
    #[default]
    Human,
    /// One JSON object per line (for journald/Loki/Vector collectors).
    Json,
}

/// The default filter. rumqttd's segment and routing warnings are one line per "cursor
/// jump", i.e. per overrun of a log under a flood; ingest counts those drops per device
/// (`broker_overrun`) and logs them at a limited rate instead.
pub const DEFAULT_FILTER: &str =
    "info,rumqttd=warn,rumqttd::segments=error,rumqttd::router::routing=error,rumqttc=warn";

/// Installs the global subscriber. `RUST_LOG` overrides [`DEFAULT_FILTER`].
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Human => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    drop(result);
}
