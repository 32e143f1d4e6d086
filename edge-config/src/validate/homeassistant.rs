//! `[homeassistant]`.

use super::{topic_problem, Problems};
use crate::model::Config;
use crate::path::KeyPath;

pub(super) fn check_homeassistant(config: &Config, p: &mut Problems) {
    let ha = &config.homeassistant;
    let at = KeyPath::of("homeassistant");
    if let Some(problem) = topic_problem(&ha.prefix) {
        p.push(
            at.key("prefix"),
            format!("{problem} (the discovery prefix, e.g. \"homeassistant\")"),
        );
    } else if ha.prefix.split('/').any(|l| l.is_empty()) {
        p.push(
            at.key("prefix"),
            format!(
                "prefix \"{}\" has an empty level ('//'); write e.g. \"homeassistant\"",
                ha.prefix
            ),
        );
    } else if ha.prefix.split('/').next() == Some("shouwang") {
        p.push(
            at.key("prefix"),
            "prefix must not be under \"shouwang/\" (the gateway's own topics); write e.g. \"homeassistant\"",
        );
    }
    p.range(
        at.key("readings_interval_s"),
        ha.readings_interval_s,
        1,
        3600,
    );
}
