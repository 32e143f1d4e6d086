//! Semantic validation of a typed [`Config`]: one pass that collects every
//! problem as a `(key path, message)` pair; [`crate::locate`] later turns
//! each path into a line and column.

mod cameras;
mod devices;
mod homeassistant;
mod linked;
mod metrics;
mod places;
mod rules;
mod services;

use crate::model::Config;
use crate::path::KeyPath;
use std::collections::HashMap;
use std::fmt::Display;
use std::path::Path;

/// Every problem of `config`, in no particular order.
pub(crate) fn validate(config: &Config) -> Vec<(KeyPath, String)> {
    let mut p = Problems::default();
    places::check_site(config, &mut p);
    places::check_locations(config, &mut p);
    devices::check_broker(config, &mut p);
    devices::check_devices(config, &mut p);
    rules::check_rules(config, &mut p);
    cameras::check_cameras(config, &mut p);
    services::check_detector(config, &mut p);
    services::check_uplink(config, &mut p);
    services::check_console(config, &mut p);
    services::check_storage(config, &mut p);
    services::check_supervision(config, &mut p);
    metrics::check_metrics(config, &mut p);
    homeassistant::check_homeassistant(config, &mut p);
    linked::check_linked_cameras(config, &mut p);
    linked::check_response(config, &mut p);
    p.0
}

/// Collected problems and the common checks that add to them.
#[derive(Default)]
pub(crate) struct Problems(Vec<(KeyPath, String)>);

impl Problems {
    pub(crate) fn push(&mut self, at: KeyPath, message: impl Into<String>) {
        self.0.push((at, message.into()));
    }

    /// `lo <= value <= hi` (also rejects NaN).
    pub(crate) fn range<T: PartialOrd + Display + Copy>(
        &mut self,
        at: KeyPath,
        value: T,
        lo: T,
        hi: T,
    ) {
        if !(lo <= value && value <= hi) {
            self.push(
                at,
                format!("{value} is out of range: use a value from {lo} to {hi}"),
            );
        }
    }

    /// `0 < value <= hi` (also rejects NaN).
    pub(crate) fn positive(&mut self, at: KeyPath, value: f64, hi: f64) {
        if !(value > 0.0 && value <= hi) {
            self.push(
                at,
                format!("{value} is out of range: use a value above 0 and at most {hi}"),
            );
        }
    }

    /// `lo <= value < hi` (also rejects NaN).
    pub(crate) fn below(&mut self, at: KeyPath, value: f64, lo: f64, hi: f64) {
        if !(lo <= value && value < hi) {
            self.push(
                at,
                format!(
                    "{value} is out of range: use a value from {lo} up to (not including) {hi}"
                ),
            );
        }
    }

    /// An id: 1..=64 of `[a-z0-9_-]`.
    pub(crate) fn id(&mut self, at: KeyPath, id: &str) {
        if let Some(problem) = id_problem(id) {
            self.push(at, problem);
        }
    }

    /// Report every repeat of an id after its first use.
    pub(crate) fn unique<'a>(
        &mut self,
        what: &str,
        items: impl IntoIterator<Item = (KeyPath, &'a str)>,
    ) {
        let mut first: HashMap<&str, KeyPath> = HashMap::new();
        for (at, id) in items {
            match first.get(id) {
                Some(prev) => self.push(
                    at,
                    format!("duplicate {what} \"{id}\" (already used at {prev}); each {what} must be unique"),
                ),
                None => {
                    first.insert(id, at);
                }
            }
        }
    }

    /// A file that must exist.
    pub(crate) fn file(&mut self, at: KeyPath, file: &Path) {
        if !file.is_file() {
            self.push(
                at,
                format!(
                    "file \"{}\" does not exist; create it or fix the path (relative paths are resolved against the config file's directory)",
                    file.display()
                ),
            );
        }
    }

    /// A string that must not be blank.
    pub(crate) fn not_blank(&mut self, at: KeyPath, value: &str, example: &str) {
        if value.trim().is_empty() {
            self.push(at, format!("must not be empty; write e.g. {example}"));
        }
    }
}

/// Why `id` is not a valid id, if it is not.
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some(
            "id must not be empty; use lowercase letters, digits, '-' and '_'".to_string(),
        );
    }
    if id.len() > 64 {
        return Some(format!(
            "id \"{id}\" is longer than 64 characters; shorten it"
        ));
    }
    let bad: String = id
        .chars()
        .filter(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        .collect();
    (!bad.is_empty()).then(|| {
        format!("id \"{id}\" contains {bad:?}: use only lowercase letters a-z, digits, '-' and '_'")
    })
}

/// Whether `filter` is a valid MQTT topic filter (wildcards allowed as whole levels,
/// `#` only last); why not if not.
pub(crate) fn filter_problem(filter: &str) -> Option<String> {
    let example = "write e.g. \"residents/b1/#\" or \"shouwang/+/alerts/#\"";
    if filter.is_empty() || filter.contains(['\0', ' ']) {
        return Some(format!(
            "topic filter \"{filter}\" is empty or contains spaces; {example}"
        ));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    let bad = levels.iter().enumerate().any(|(i, l)| {
        (l.contains('#') && (*l != "#" || i != last)) || (l.contains('+') && *l != "+")
    });
    bad.then(|| {
        format!(
            "topic filter \"{filter}\": '+' must be a whole level and '#' the whole last level; {example}"
        )
    })
}

/// Whether `topic` is a valid MQTT topic to publish to; why not if not.
pub(crate) fn topic_problem(topic: &str) -> Option<String> {
    if topic.is_empty() {
        Some("topic must not be empty".to_string())
    } else if topic.contains(['+', '#', '\0']) {
        Some(format!(
            "topic \"{topic}\" contains a wildcard ('+' or '#'); write a concrete topic"
        ))
    } else if topic.starts_with('/') || topic.ends_with('/') || topic.contains(char::is_whitespace)
    {
        Some(format!(
            "topic \"{topic}\" starts or ends with '/' or contains spaces; write e.g. \"sensors/b1-smoke-01/state\""
        ))
    } else {
        None
    }
}
