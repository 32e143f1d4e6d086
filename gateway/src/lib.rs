//! # shouwang gateway
//!
//! One gateway per residential compound or street police station: hazard sensors over MQTT
//! and camera streams in, graded alerts out to station staff, residents and the central
//! platform — durably, in order, through WAN outages and power cuts.
//!
//! # Layout
//!
//! The daemon reads top-down as two pipelines joined by typed, bounded channels; data flows
//! one way and no module imports a later stage:
//!
//! ```text
//! ingest → rules → alerts → outbox → uplink
//! video (capture → motion → detect → track → zones) → rules
//! selftest probe ─(broker)─▶ ingest → rules → alerts (commit) ─▶ selftest
//! supervise (stage health) → fault reporter → alerts
//! ```
//!
//! Modules present today:
//!
//! - [`cli`] — the command line (`run`, `config check`, `config init`).
//! - [`logging`] — `tracing` set-up: human format on a terminal, JSON lines on request.
//! - [`shutdown`] — the one shutdown signal, per-stage cancellation and completion guards,
//!   stopping inputs → processing → outbox flush → database within a deadline; supervised
//!   stages ([`shutdown::Lifecycle::supervise`]).
//! - [`supervise`] — the fault model: every stage restarted with backoff when it ends, fails
//!   or panics outside shutdown, each such end a `gateway_fault` alert (red on the alarm
//!   path) until the stage is healthy again; stage health for status and console.
//! - [`selftest`] — a probe every few seconds through the real alarm path (broker listener →
//!   ingest → rules → alert store commit); a missed round trip is a red `gateway_fault`.
//! - [`daemon`] — `gateway run`: data directory lock, database, stages, readiness, shutdown.
//! - [`pipeline`] — wires the sensor side together: broker → ingest → rules → alerts →
//!   local publication, telemetry and the uplink.
//! - [`broker`] — the embedded MQTT broker (rumqttd) behind a front of its own (TLS, logins,
//!   topic ACLs, connection and retained limits) and its in-process links.
//! - [`ingest`] — sensor messages in (one broker log per device topic), decoded readings
//!   out; rejections counted per reason and device; the devices board.
//! - [`rules`] — hazard rules as state machines with debounce, hysteresis and clear-hold.
//! - [`alerts`] — the alert model, lifecycle (escalation, linkage) and its SQLite store.
//! - [`publish`] / [`telemetry`] — retained local alert topics; durable telemetry batches.
//! - [`db`] — the single SQLite (WAL) database shared by alerts and the outbox.
//! - [`reserve`] — disk space held back so that alarms can still be recorded on a full disk.
//! - [`outbox`] — the durable store-and-forward queue; its design is at the top of the module.
//! - [`video`] — camera pipelines: capture (FFmpeg) → motion → detect (ONNX Runtime) → track
//!   → zones → evidence, into the same alert lifecycle; `gateway detect` for installers.
//! - [`uplink`] — store-and-forward to the platform's MQTT broker: TLS, backoff, in-flight
//!   window, quota and `buffer_full`, status (`status_report`); design at the top of the module.
//! - [`console`] — the station staff's web console and JSON API (axum): session login with
//!   lock-out, live alert feed (SSE), acknowledge/resolve, devices, cameras, uplink, response
//!   times; also serves the resident pages.
//! - [`residents`] — hazard notices for residents on `residents/{building}/{unit}/alerts` and
//!   `residents/{building}/all`, per-unit secret links (rotatable) with a live page, QR codes.
//!
//! Configuration types, parsing and validation live in the `edge-config` crate.

pub mod alerts;
pub mod broker;
pub mod cli;
pub mod console;
pub mod daemon;
pub mod db;
pub mod ingest;
pub mod logging;
pub mod outbox;
pub mod pipeline;
pub mod publish;
pub mod reserve;
pub mod residents;
pub mod rules;
pub mod selftest;
pub mod shutdown;
pub mod supervise;
pub mod telemetry;
pub mod uplink;
pub mod video;
