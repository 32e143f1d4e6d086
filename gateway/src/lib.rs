//! # shouwang gateway
//!
//! One gateway per residential compound or street police station: hazard sensors over MQTT
//! and camera streams in, graded alerts out to station staff, residents and the central
//! platform — durably, in order, through WAN outages and power cuts.
//!
//! # Layout
//!
//! The daemon reads top-down as two pipelines joined by typed, bounded channels, wired in
//! one place ([`topology::start_with_reserve`]); every stage runs supervised:
//!
//! ```text
//! broker ─▶ ingest ─(Ingested)─▶ rules ─(AlertBus)─▶ alerts ─▶ outbox ─▶ uplink
//! video (capture → motion → detect → track → zones) ─(AlertBus)─▶ alerts
//! alerts ─(committed events)─▶ local publish, residents, console, uplink wake-up
//! selftest probe ─(broker)─▶ ingest → rules → alerts (commit) ─▶ selftest
//! supervise (stage health) → faults ─(AlertBus)─▶ alerts
//! every stage's snapshot ─▶ status ─▶ status.json ─▶ `gateway status`, console
//! alerts ─(commit marks)─▶ broker::gate ─▶ the sensor's PUBACK
//! reload ─(config, in band)─▶ ingest ─▶ rules ─▶ alerts;  reload ─▶ broker logins, cameras, console
//! alerts ─(committed events)─▶ video::linked ─▶ cameras (snapshot, clip) ─(AlertBus)─▶ alerts
//! ```
//!
//! The daemon adds the cameras, the console and the resident notices to what the topology
//! built. On shutdown every stage stops by its token; the alert task, once the rules and the
//! fault reporter have stopped, drains its queue and ends whoever still holds an
//! [`alerts::AlertBus`].
//!
//! Back edges, named: staff and platform actions, `buffer_full` and gateway faults enter the
//! alert task through [`alerts::AlertBus`]; a staff resolve resets its rule condition
//! through [`rules::reset`]; actuator confirmations come back as readings
//! (broker → ingest → rules → alerts); the alert task marks each device-log message
//! committed in [`broker::CommitGate`], which releases the sensor's PUBACK (the only state
//! a later stage hands back to the broker, through a type the broker owns). No module imports a later one; the console serves
//! the resident pages ([`console::resident_pages`]) and uses [`residents`] for links.
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
//! - [`faults`] — the fault reporter: faulted stages in, `gateway_fault` alerts out.
//! - [`selftest`] — a probe every few seconds through the real alarm path (broker listener →
//!   ingest → rules → alert store commit); a missed round trip is a red `gateway_fault`.
//! - [`doctor`] — `gateway doctor`: the installer's commissioning report (config, ports,
//!   ONNX Runtime, cameras, devices heard, upstream), each problem with its fix.
//! - [`daemon`] — `gateway run`: data directory lock, database, stages, readiness, shutdown.
//! - [`reload`] — `SIGHUP` / `gateway reload`: the file re-read and validated, compared with
//!   the running config, applied in band on the alarm path (ingest → rules → alert task) and
//!   to the broker's logins, the cameras, console staff, resident notices and Home Assistant;
//!   restart-only keys named; the outcome in `reload.json`.
//! - [`service`] — the service manager's protocol (systemd `Type=notify`): `READY=1`, and
//!   watchdog pings only while the self-test passes, so systemd restarts a wedged gateway.
//! - [`os`] — process-wide start-up settings: a private umask, the open-file limit raised.
//! - [`topology`] — builds every channel and task of the sensor side in one place:
//!   broker → ingest → rules → alerts → local publication, actuators, telemetry and the
//!   uplink; its docs draw each channel with its stage and name the back edges.
//! - [`broker`] — the embedded MQTT broker (rumqttd) behind a front of its own (TLS, logins,
//!   topic ACLs, connection and retained limits, PUBACKs held until their commit), its
//!   in-process links (ingest's subscribers, the alert publisher) and logs sized as buffers,
//!   not stores.
//! - [`ingest`] — sensor messages in (one broker log per device), decoded readings
//!   out; rejections counted per reason and device; the devices board.
//! - [`reading`] — the decoded reading, the neutral type between ingest and rules.
//! - [`rules`] — hazard rules as state machines with debounce, hysteresis and clear-hold.
//! - [`alerts`] — the alert model, lifecycle (escalation, linkage), its SQLite store, the
//!   alert task (the single writer of alert events) and the typed [`alerts::AlertBus`] into it;
//!   on a street station, its compounds' alert events and liveness ([`alerts::remote`]), which
//!   reach it over the compounds' `[station_link]` like sensor messages (broker log, ingest,
//!   rules, commit gate).
//! - [`publish`] / [`telemetry`] — retained local alert topics (on the embedded broker's
//!   router in process); durable telemetry batches.
//! - [`db`] — the single SQLite (WAL) database: every connection opened there, who writes
//!   what, the versioned schema migrations (`PRAGMA user_version`; a newer file is refused).
//! - [`reserve`] — disk space held back so that alarms can still be recorded on a full disk.
//! - [`outbox`] — the durable store-and-forward queue; its design is at the top of the module.
//! - [`video`] — camera pipelines: capture (FFmpeg, optional hardware decoding) → motion →
//!   detect (ONNX Runtime, on rectangles when the model allows) → track → zones → evidence,
//!   into the same alert lifecycle; frames travel as the decoder's own pictures; `gateway
//!   detect` for installers.
//! - [`uplink`] — store-and-forward to the platform's MQTT broker: TLS, backoff, in-flight
//!   window, quota and `buffer_full`, the link's status snapshot; design at the top of the module.
//! - [`status`] — the gateway status: every stage's snapshot written to `status.json` each
//!   second, read back with the outbox (read-only) for `gateway status` and the console
//!   ([`status::status_report`]); it imports the stages' snapshot types, no stage
//!   imports it (only the CLI and the console's API read it).
//! - [`console`] — the station staff's web console and JSON API (axum): session login with
//!   throttled guessing, bounded password checks, same-origin posts, capped connections,
//!   live alert feed (SSE), acknowledge/resolve, devices, cameras, uplink, response times;
//!   also serves the resident pages (or `[residents] bind` does).
//! - [`metrics`] — `GET /metrics` for Prometheus (`[metrics]`, off by default): the stages'
//!   shared counters read at scrape time, the database read-only, `/proc/self`; its
//!   [`metrics::hooks`] (a leaf the alert task and the detector call) count alerts raised
//!   and time commits and inferences.
//! - [`token`] — secret tokens (sessions, resident links).
//! - [`homeassistant`] — Home Assistant MQTT discovery: retained configs for each hazard
//!   device, camera and the gateway, their state from the gateway's own judgement, removed
//!   entities cleared (`[homeassistant]`).
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
pub mod doctor;
pub mod faults;
pub mod homeassistant;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod os;
pub mod outbox;
pub mod publish;
pub mod reading;
pub mod reload;
pub mod reserve;
pub mod residents;
pub mod rules;
pub mod selftest;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod supervise;
pub mod telemetry;
pub mod token;
pub mod topology;
pub mod uplink;
pub mod video;
