//! Configuration of one shouwang gateway.

mod error;
mod hints;
mod locate;
mod model;
mod parse;
mod path;
mod repair;
mod resolve;
mod starter;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use parse::{load, parse};
pub use path::{KeyPath, Segment};
pub use starter::starter;
pub use validate::id_problem;
