//! Alerts: the record ([`model`]), its text ([`messages`]), its durable store with the
//! outbox ([`store`]) and its lifecycle ([`lifecycle`]).

pub mod lifecycle;
pub mod linkage;
pub mod messages;
pub mod model;
pub mod store;
pub mod task;

pub use lifecycle::Lifecycle;
pub use model::{Alert, AlertState, EventKind, Location, Source};
pub use store::AlertStore;
