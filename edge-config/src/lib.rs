//! Configuration of one shouwang gateway: the typed model of its single
//! TOML file, and validation that reports **every** problem at once, each
//! as `FILE:LINE:COL: key.path: what is wrong and how to fix it`.
//!
//! ```no_run
//! match edge_config::load(std::path::Path::new("/etc/shouwang/gateway.toml")) {
//!     Ok(config) => println!("site {}: {} devices", config.site.id, config.devices.len()),
//!     Err(errors) => eprintln!("{errors}"), // one error per line
//! }
//! ```
//!
//! # Layout
//!
//! - `model` (`src/model/`): the types — [`Config`] and its
//!   sections [`Site`], [`Locations`], [`Broker`], [`Device`], [`Rules`],
//!   [`Camera`], [`Detector`], [`Uplink`], [`Console`], [`Storage`]. Every
//!   table has `deny_unknown_fields`; defaults are documented per field.
//! - `parse`: [`load`] and [`parse`]. TOML syntax errors are all reported
//!   (recovering parser); then the schema is deserialized from `toml`'s
//!   spanned tree, and after each schema error the working copy of the tree
//!   is repaired (`repair`: drop the key, rename a misspelt key, pick an
//!   allowed value) and deserialized again, up to 50 times, so several
//!   unknown keys or wrong types are reported in one run.
//! - `resolve`: relative file paths become absolute against the config
//!   file's directory (`base_dir`).
//! - `secrets`: after validation, every `password_file` is read (its first
//!   line, trailing whitespace removed) into its `password`, once, here.
//! - `validate`: one pass over the typed config producing
//!   `(key path, message)` pairs (ids, references, ranges, files, hashes).
//! - `locate`: byte offset → line:column, key path → offset (falling back to
//!   the nearest written parent), error span → key path.
//! - `hints`: "did you mean" suggestions and friendlier serde messages.
//! - `starter`: [`starter`], a commented valid config for `gateway config init`.
//! - `error`: [`ConfigError`] and [`ConfigErrors`].
//!
//! # Paths
//!
//! Relative paths written in the file (TLS files, password files,
//! `detector.models_dir`, `detector.onnxruntime`, `storage.data_dir`, a
//! camera's file URL or path) are resolved against `base_dir` — for
//! [`load`], the config file's directory. The default
//! `detector.models_dir = "models"` stays relative (to the current
//! directory at use time).
//!
//! # Positions
//!
//! Lines and columns are 1-based and columns count characters. Semantic
//! errors point at the offending value (or, if the key is absent, at the
//! nearest enclosing table that is written). A file that cannot be read is
//! one error at 1:1 with an empty path.
#![warn(missing_docs)]

mod error;
mod hints;
mod locate;
mod model;
mod parse;
mod path;
pub mod profiles;
mod repair;
mod resolve;
mod secrets;
mod starter;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use parse::{load, parse};
pub use path::{KeyPath, Segment};
pub use secrets::read_password_file;
pub use starter::starter;
pub use validate::id_problem;
