//! Simulators for shouwang demos and tests.
//!
//! - [`sensors`]: one MQTT client per configured device, normal behaviour and hazard
//!   scenarios (`sim sensors`).
//! - [`camera`]: footage served as live RTSP cameras, re-encoded to H.264 by GStreamer's
//!   RTSP server (`sim camera`).
//! - [`link`]: a TCP proxy standing in for the WAN link, cut and restored on a schedule or
//!   on command (`sim link`).
//! - [`upstream`]: a real upstream broker (mosquitto) with optional throwaway TLS
//!   (`sim upstream`).
//! - [`verify`]: counts the alerts that reached the platform — gaps, duplicates, latency
//!   (`sim verify`).
//! - [`mqtt`]: the client settings every simulator uses.
//! - [`process`]: free loopback ports, waiting for a server to listen, stopping a child
//!   process; shared with the end-to-end tests (crate `e2e`), like [`wait`].
//! - [`wait`]: `eventually`, polling for a condition with a deadline instead of sleeping.

pub mod camera;
pub mod http_ts;
pub mod link;
pub mod mqtt;
pub mod process;
pub mod sensors;
pub mod upstream;
pub mod verify;
pub mod wait;
