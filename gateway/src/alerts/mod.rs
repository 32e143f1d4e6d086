//! Alerts: the record ([`model`]), its text ([`messages`]), its durable store with the
//! outbox ([`store`]), its lifecycle ([`lifecycle`]), the task that alone writes it
//! ([`task`]) and the typed way in ([`bus`]).

pub mod bus;
pub mod lifecycle;
pub mod linkage;
pub mod messages;
pub mod model;
pub mod remote;
pub mod store;
pub mod task;

pub use bus::{AlertBus, EventFeed, WeakAlertBus};
pub use lifecycle::Lifecycle;
pub use model::{Alert, AlertState, EventKind, Location, Source};
pub use store::AlertStore;
