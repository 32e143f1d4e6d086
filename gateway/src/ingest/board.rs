//! The devices board: what every configured device last said, as ingest accepted it.
//!
//! Ingest records each accepted message here (the console's devices panel reads it), so the
//! board needs no subscriber of its own on the broker: it works with the embedded broker and
//! an external one alike, and a flood costs the broker nothing extra.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::decode::{Decoded, Values};

/// What one device last said.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Gateway receive time of its last accepted message.
    pub at: Option<DateTime<Utc>>,
    /// The latest value of every field it ever sent (merged over messages).
    pub values: Values,
    /// `Some(false)` after an `offline` availability message; `Some(true)` after anything else.
    pub available: Option<bool>,
}

/// Last-seen state per device, indexed like `Config::devices`.
#[derive(Debug)]
pub struct DeviceBoard {
    /// One lock for all devices: taken for a few field copies per accepted message and by
    /// the console's reads, never across an await.
    seen: Mutex<Vec<Seen>>,
}

impl DeviceBoard {
    pub fn new(devices: usize) -> Self {
        DeviceBoard {
            seen: Mutex::new(vec![Seen::default(); devices]),
        }
    }

    /// Records an accepted message of device `device`, received at `at`.
    pub fn record(&self, device: usize, decoded: &Decoded, at: DateTime<Utc>) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let Some(s) = seen.get_mut(device) else {
            return;
        };
        s.at = Some(at);
        s.values.merge(&decoded.values);
        s.available = decoded.online.or(Some(true));
    }

    /// A copy of every device's state, indexed like `Config::devices`.
    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_messages_update_their_fields_and_keep_the_others() {
        let board = DeviceBoard::new(2);
        let at = Utc::now();
        let first = Decoded {
            values: Values {
                temperature_c: Some(21.0),
                battery_pct: Some(80.0),
                ..Values::default()
            },
            sensor_ts: None,
            online: None,
        };
        let second = Decoded {
            values: Values {
                temperature_c: Some(22.5),
                ..Values::default()
            },
            sensor_ts: None,
            online: Some(false),
        };
        board.record(1, &first, at);
        board.record(1, &second, at);
        board.record(7, &first, at); // out of range: ignored
        let s = board.snapshot();
        assert_eq!(s[1].values.temperature_c, Some(22.5));
        assert_eq!(s[1].values.battery_pct, Some(80.0));
        assert_eq!(s[1].available, Some(false));
        assert_eq!(s[0].at, None);
    }
}
