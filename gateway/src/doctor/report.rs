//! The commissioning report: one [`Check`] per thing looked at, each with a state, a one-line
//! finding and — when it is not ok — what to do about it; rendered for a person or as JSON.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    /// Works, but needs a look (devices not heard yet, nothing to check against).
    Warn,
    /// Broken: the gateway will not do its job until this is fixed.
    Fail,
    /// Not applicable to this configuration (no camera enabled, no `[uplink]`).
    Skipped,
}

impl State {
    fn label(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Warn => "warn",
            State::Fail => "FAIL",
            State::Skipped => "skip",
        }
    }
}

/// One finding of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked: `config`, `port broker`, `camera cam-b1-lobby`, `upstream`, …
    pub name: String,
    pub state: State,
    /// One line: what was found.
    pub finding: String,
    /// What to do about it (always given for `warn` and `fail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Further lines (every configuration error, every device).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

impl Check {
    pub fn ok(name: impl Into<String>, finding: impl Into<String>) -> Check {
        Check::new(name, State::Ok, finding, None)
    }

    pub fn skipped(name: impl Into<String>, finding: impl Into<String>) -> Check {
        Check::new(name, State::Skipped, finding, None)
    }

    pub fn warn(
        name: impl Into<String>,
        finding: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(name, State::Warn, finding, Some(fix.into()))
    }

    pub fn fail(
        name: impl Into<String>,
        finding: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(name, State::Fail, finding, Some(fix.into()))
    }

    fn new(
        name: impl Into<String>,
        state: State,
        finding: impl Into<String>,
        fix: Option<String>,
    ) -> Check {
        Check {
            name: name.into(),
            state,
            finding: finding.into(),
            fix,
            details: Vec::new(),
        }
    }

    /// The same check with `details` under it.
    pub fn with_details(mut self, details: Vec<String>) -> Check {
        self.details = details;
        self
    }
}

/// How many checks ended in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub ok: usize,
    pub warnings: usize,
    pub failures: usize,
    pub skipped: usize,
}

/// Everything `gateway doctor` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The configuration file examined.
    pub config: PathBuf,
    /// Its site id (absent when the file is invalid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    pub checks: Vec<Check>,
    pub summary: Summary,
}

impl Report {
    pub fn new(config: PathBuf, site: Option<String>, checks: Vec<Check>) -> Report {
        let mut summary = Summary::default();
        for c in &checks {
            match c.state {
                State::Ok => summary.ok += 1,
                State::Warn => summary.warnings += 1,
                State::Fail => summary.failures += 1,
                State::Skipped => summary.skipped += 1,
            }
        }
        Report {
            config,
            site,
            checks,
            summary,
        }
    }

    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.summary.failures > 0
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ok, {}, {}, {} skipped",
            self.ok,
            plural(self.warnings, "warning", "warnings"),
            plural(self.failures, "failure", "failures"),
            self.skipped
        )
    }
}

/// The human report: a header, one line per check (details indented under it), the
/// "To fix:" list in check order, and the summary line.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.site {
            Some(site) => writeln!(f, "gateway doctor: site {site} ({})", self.config.display())?,
            None => writeln!(f, "gateway doctor: {}", self.config.display())?,
        }
        writeln!(f)?;
        let width = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0);
        for c in &self.checks {
            writeln!(
                f,
                "{:<4}  {:<width$}  {}",
                c.state.label(),
                c.name,
                c.finding
            )?;
            for d in &c.details {
                writeln!(f, "{:<4}  {:<width$}    {d}", "", "")?;
            }
        }
        let fixes: Vec<&Check> = self.checks.iter().filter(|c| c.fix.is_some()).collect();
        if !fixes.is_empty() {
            writeln!(f)?;
            writeln!(f, "To fix:")?;
            for (i, c) in fixes.iter().enumerate() {
                let fix = c.fix.as_deref().unwrap_or_default();
                writeln!(f, "{:>3}. {} ({}): {fix}", i + 1, c.name, c.state.label())?;
            }
        }
        writeln!(f)?;
        write!(f, "{}", self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report::new(
            PathBuf::from("site.toml"),
            Some("sw-demo-001".into()),
            vec![
                Check::ok("config", "site sw-demo-001, 2 devices, 1 camera"),
                Check::fail(
                    "camera cam-gate",
                    "rtsp://127.0.0.1:9/gate: Connection refused",
                    "check the camera's address and that RTSP is on",
                ),
                Check::warn("devices", "1 of 2 devices not heard", "trigger it")
                    .with_details(vec!["smoke-1: never heard".into()]),
                Check::skipped("upstream", "no [uplink] configured"),
            ],
        )
    }

    #[test]
    fn the_human_report_lists_every_check_then_the_fixes_in_order_then_the_counts() {
        let text = sample().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "gateway doctor: site sw-demo-001 (site.toml)");
        assert!(
            lines[2].starts_with("ok    config           site sw-demo-001"),
            "{text}"
        );
        assert!(
            lines[3]
                .starts_with("FAIL  camera cam-gate  rtsp://127.0.0.1:9/gate: Connection refused"),
            "{text}"
        );
        assert!(lines[5].ends_with("    smoke-1: never heard"), "{text}");
        assert!(lines[6].starts_with("skip  upstream"), "{text}");
        let fixes = text.split("To fix:\n").nth(1).expect("a To fix: list");
        assert!(fixes.starts_with(
            "  1. camera cam-gate (FAIL): check the camera's address and that RTSP is on\n  2. devices (warn): trigger it\n"
        ), "{text}");
        assert!(
            text.ends_with("1 ok, 1 warning, 1 failure, 1 skipped"),
            "{text}"
        );
    }

    #[test]
    fn a_report_without_anything_to_fix_has_no_fix_list_and_has_not_failed() {
        let report = Report::new(
            PathBuf::from("a.toml"),
            None,
            vec![
                Check::ok("config", "valid"),
                Check::ok("port console", "free"),
            ],
        );
        let text = report.to_string();
        assert!(!text.contains("To fix"), "{text}");
        assert!(
            text.ends_with("2 ok, 0 warnings, 0 failures, 0 skipped"),
            "{text}"
        );
        assert!(!report.failed());
        assert!(sample().failed());
    }

    #[test]
    fn the_json_report_carries_states_fixes_and_the_summary() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["site"], "sw-demo-001");
        assert_eq!(json["checks"][1]["state"], "fail");
        assert_eq!(
            json["checks"][1]["fix"],
            "check the camera's address and that RTSP is on"
        );
        assert!(json["checks"][0].get("fix").is_none());
        assert_eq!(json["checks"][2]["details"][0], "smoke-1: never heard");
        assert_eq!(json["summary"]["failures"], 1);
        assert_eq!(json["summary"]["warnings"], 1);
    }
}
