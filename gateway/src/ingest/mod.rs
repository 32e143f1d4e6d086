//! Sensor ingest: MQTT publishes in, decoded [`crate::rules::Reading`]s out.

pub mod decode;
