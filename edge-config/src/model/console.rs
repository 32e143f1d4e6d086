//! `[console]`: the duty staff's web console.

use super::{redact_required, AlertKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// `[console]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Console {
    /// Listen address. Default `"0.0.0.0:8080"`.
    pub bind: SocketAddr,
    /// Sessions expire after this many minutes (5..=10080). Default 480.
    pub session_timeout_min: u32,
    /// After this many failed logins in a row from one address for one user name, that
    /// address must wait before its next try for that name (5 s, doubling up to 15 min);
    /// other addresses are not affected (1..=100). Default 5. (The name is historical: no
    /// account is ever locked.)
    pub lockout_after_failures: u32,
    /// `[[console.staff]]`: who may log in.
    pub staff: Vec<Staff>,
    /// `[console.response]`: the response-time targets the console measures staff against.
    pub response: ResponseTargets,
}

impl Default for Console {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
            session_timeout_min: 480,
            lockout_after_failures: 5,
            staff: Vec::new(),
            response: ResponseTargets::default(),
        }
    }
}

impl Console {
    /// The staff account with this user name.
    pub fn staff(&self, username: &str) -> Option<&Staff> {
        self.staff.iter().find(|s| s.username == username)
    }
}

/// `[[console.staff]]`: one console account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Staff {
    /// Unique login name: lowercase ASCII letters, digits, `.`, `-`, `_`.
    pub username: String,
    /// Name shown on the console, e.g. `"值班员 (Duty officer)"`.
    pub display_name: String,
    /// Argon2 PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`); shown as
    /// `********` when serialized.
    #[serde(serialize_with = "redact_required")]
    pub password_hash: String,
    /// `staff` (default) or `admin`.
    #[serde(default)]
    pub role: Role,
}

/// What a console account may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Acknowledge and handle alerts.
    #[default]
    Staff,
    /// Also manage accounts and settings.
    Admin,
}

/// `[console.response]`: how fast the duty staff should answer ("135": acknowledge within a
/// minute). The console pins unacknowledged alerts with a running timer against
/// `ack_within_s` and shows, per alert kind, how many alerts met or missed each target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseTargets {
    /// Seconds within which an alert should be acknowledged (10..=3600). Default 60.
    pub ack_within_s: u32,
    /// Minutes within which an alert should be resolved, per alert kind, with `default` for
    /// the kinds not listed (each 1..=1440), e.g. `{ default = 15, smoke = 10 }`. Default
    /// `{ default = 15 }`.
    pub resolve_within_min: BTreeMap<String, u32>,
}

/// `resolve_within_min` for a kind not listed and without `default`.
pub const DEFAULT_RESOLVE_WITHIN_MIN: u32 = 15;

impl Default for ResponseTargets {
    fn default() -> Self {
        Self {
            ack_within_s: 60,
            resolve_within_min: BTreeMap::from([(
                "default".to_owned(),
                DEFAULT_RESOLVE_WITHIN_MIN,
            )]),
        }
    }
}

impl ResponseTargets {
    /// The resolve target of `kind` in minutes: its own entry, else `default`, else 15.
    pub fn resolve_within_min(&self, kind: AlertKind) -> u32 {
        self.resolve_within_min
            .get(kind.as_str())
            .or_else(|| self.resolve_within_min.get("default"))
            .copied()
            .unwrap_or(DEFAULT_RESOLVE_WITHIN_MIN)
    }
}
