//! The devices board: what every configured device last said, as ingest accepted it.
//!
//! Ingest records each accepted message here (the console's devices panel reads it), so the
//! board needs no subscriber of its own on the broker: it works with the embedded broker and
//! an external one alike, and a flood costs the broker nothing extra.

use std::collections::HashMap;
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

/// Last-seen state per device; recorded by device index (as ingest routes), read by id.
#[derive(Debug)]
pub struct DeviceBoard {
    /// One lock for all devices: taken for a few field copies per accepted message and by
    /// the console's reads, never across an await. The ids travel with the states so that a
    /// reader never pairs one configuration's devices with another's (a reload renumbers).
    seen: Mutex<Vec<(String, Seen)>>,
}

impl DeviceBoard {
    /// An empty board for the devices of `ids`, in configuration order.
    pub fn new<'a>(ids: impl IntoIterator<Item = &'a str>) -> Self {
        DeviceBoard {
            seen: Mutex::new(
                ids.into_iter()
                    .map(|id| (id.to_owned(), Seen::default()))
                    .collect(),
            ),
        }
    }

    /// Records an accepted message of device `device`, received at `at`.
    pub fn record(&self, device: usize, decoded: &Decoded, at: DateTime<Utc>) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let Some((_, s)) = seen.get_mut(device) else {
            return;
        };
        s.at = Some(at);
        s.values.merge(&decoded.values);
        s.available = decoded.online.or(Some(true));
    }

    /// Renumbers the board for a reloaded configuration's devices (`ids`, in order): each
    /// device still configured keeps what it said, a new one starts unseen.
    pub fn reconfigure<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let mut old: HashMap<String, Seen> = std::mem::take(&mut *seen).into_iter().collect();
        *seen = ids
            .into_iter()
            .map(|id| (id.to_owned(), old.remove(id).unwrap_or_default()))
            .collect();
    }

    /// A copy of every device's state, by device id.
    pub fn snapshot(&self) -> HashMap<String, Seen> {
        self.seen
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_messages_update_their_fields_and_keep_the_others() {
        let board = DeviceBoard::new(["a", "b"]);
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
        assert_eq!(s["b"].values.temperature_c, Some(22.5));
        assert_eq!(s["b"].values.battery_pct, Some(80.0));
        assert_eq!(s["b"].available, Some(false));
        assert_eq!(s["a"].at, None);
        // A reload that drops "a" and puts "c" first keeps what "b" said, by id.
        board.reconfigure(["c", "b"]);
        board.record(0, &first, at);
        let s = board.snapshot();
        assert_eq!(s["b"].values.temperature_c, Some(22.5));
        assert_eq!(s["c"].values.temperature_c, Some(21.0));
        assert!(!s.contains_key("a"));
    }
}
