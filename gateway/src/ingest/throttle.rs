//! Per-device token buckets: a device that floods loses its own messages, nobody else's.
//!
//! Only *repeats* are throttled. A valid message that changes what the device says about a
//! hazard ([`HazardKey`]: an alarm flag on or off, a gas or temperature reading crossing into
//! another band, going online/offline, an actuator's state) always passes, so a real alarm
//! that follows a burst of junk or of repeats is never thrown away; and invalid messages are
//! rejected before the bucket is consulted, so they spend nothing of a device's budget.

use std::time::Duration;

use tokio::time::Instant;

use super::decode::{Decoded, Values};

/// Width of the bands a temperature (°C) or gas concentration (%LEL) reading falls in: every
/// threshold the rules use by default (10 / 25 %LEL, 46 / 56 / 57 / 65 °C) is crossed by a
/// change of band, or lies within one band of it.
pub const BAND: f64 = 5.0;

/// Bands of a CO concentration (ppm): the alarm points (30 / 50 / 100 / 300 ppm) are band
/// edges.
pub const CO_BAND_PPM: f64 = 10.0;
/// Bands of a plug's current (A) and power (W): over-current (10 A) and over-power (1000 W)
/// are band edges, a charger's own wobble (0.82 / 0.84 A) is not.
pub const CURRENT_BAND_A: f64 = 1.0;
pub const POWER_BAND_W: f64 = 100.0;

/// Sustained messages per second a device may send.
pub const RATE_PER_S: f64 = 20.0;
/// Burst a device may send at once.
pub const BURST: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

/// What a device says about hazards, coarsely: equal keys mean "nothing new".
#[derive(Debug, Clone, Default, PartialEq)]
struct HazardKey {
    flags: [Option<bool>; 11],
    bands: [Option<i64>; 7],
    state: Option<String>,
}

impl HazardKey {
    fn of(v: &Values, online: Option<bool>) -> Self {
        let band_of = |x: Option<f64>, width: f64| {
            x.filter(|x| x.is_finite())
                .map(|x| (x / width).floor() as i64)
        };
        let band = |x: Option<f64>| band_of(x, BAND);
        HazardKey {
            flags: [
                v.smoke,
                v.gas,
                v.heat,
                v.carbon_monoxide,
                v.water_leak,
                v.tamper,
                v.battery_low,
                v.pressed,
                v.charging,
                v.present,
                online,
            ],
            bands: [
                band(v.gas_lel_pct),
                band(v.temperature_c),
                band(v.battery_temp_c),
                band(v.plug_temp_c),
                band_of(v.co_ppm, CO_BAND_PPM),
                band_of(v.current_a, CURRENT_BAND_A),
                band_of(v.power_w, POWER_BAND_W),
            ],
            state: v.state.clone(),
        }
    }
}

/// What the rules last heard from a device (merged), to tell a change from a repeat.
#[derive(Debug, Clone, Default)]
struct Known {
    values: Values,
    online: Option<bool>,
}

/// One bucket per device index.
#[derive(Debug)]
pub struct Throttle {
    buckets: Vec<Bucket>,
    known: Vec<Known>,
}

impl Throttle {
    pub fn new(devices: usize) -> Self {
        Throttle {
            buckets: vec![
                Bucket {
                    tokens: BURST,
                    last: None
                };
                devices
            ],
            known: vec![Known::default(); devices],
        }
    }

    /// Renumbers the buckets for a reloaded configuration: `from[i]` is the old index of new
    /// device `i` (`None` for a new device, which starts with a full bucket), so a flooding
    /// device cannot refill its bucket by a reload.
    pub fn remap(&mut self, from: &[Option<usize>]) {
        let fresh = Bucket {
            tokens: BURST,
            last: None,
        };
        self.buckets = from
            .iter()
            .map(|o| {
                o.and_then(|i| self.buckets.get(i))
                    .copied()
                    .unwrap_or(fresh)
            })
            .collect();
        self.known = from
            .iter()
            .map(|o| {
                o.and_then(|i| self.known.get(i))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
    }

    /// Whether a valid message of `device` may pass: always when it changes the device's
    /// hazard state, otherwise when the bucket has a token. An admitted message becomes the
    /// device's known state.
    pub fn admit_decoded(&mut self, device: usize, decoded: &Decoded, now: Instant) -> bool {
        let Some(known) = self.known.get(device) else {
            return false;
        };
        let before = HazardKey::of(&known.values, known.online);
        let mut after = known.clone();
        after.values.merge(&decoded.values);
        if decoded.online.is_some() {
            after.online = decoded.online;
        }
        let changed = HazardKey::of(&after.values, after.online) != before;
        let has_token = self.admit(device, now);
        if has_token || changed {
            self.known[device] = after;
            return true;
        }
        false
    }

    /// Takes a token for `device`; false when its bucket is empty.
    pub fn admit(&mut self, device: usize, now: Instant) -> bool {
        let Some(b) = self.buckets.get_mut(device) else {
            return false;
        };
        let elapsed = b
            .last
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        b.tokens = (b.tokens + elapsed.as_secs_f64() * RATE_PER_S).min(BURST);
        b.last = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_device_is_throttled_and_its_neighbour_is_not() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2);
        let admitted = (0..10_000).filter(|_| t.admit(0, t0)).count();
        assert_eq!(admitted, BURST as usize);
        assert!(t.admit(1, t0), "another device still passes");
        // One second later the flooder has RATE_PER_S tokens again.
        let later = t0 + Duration::from_secs(1);
        let admitted = (0..1000).filter(|_| t.admit(0, later)).count();
        assert_eq!(admitted, RATE_PER_S as usize);
    }

    fn reading(json: &str) -> Decoded {
        Decoded {
            values: serde_json::from_str(json).unwrap(),
            sensor_ts: None,
            online: None,
        }
    }

    #[test]
    fn repeats_are_throttled_but_a_change_of_hazard_state_always_passes() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1);
        let quiet = reading(r#"{"smoke": false, "battery_pct": 90}"#);
        let admitted = (0..1000).filter(|_| t.admit_decoded(0, &quiet, t0)).count();
        assert_eq!(admitted, BURST as usize, "repeats spend the bucket");
        assert!(
            t.admit_decoded(0, &reading(r#"{"smoke": true}"#), t0),
            "alarm on"
        );
        assert!(
            !t.admit_decoded(0, &reading(r#"{"smoke": true}"#), t0),
            "its repeat"
        );
        assert!(
            t.admit_decoded(0, &reading(r#"{"smoke": false}"#), t0),
            "alarm off"
        );
    }

    #[test]
    fn a_plug_flooding_its_meter_readings_still_gets_its_over_current_and_heat_through() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1);
        let charging = reading(r#"{"power_w": 180.0, "current_a": 0.82, "plug_temp_c": 33.0}"#);
        while t.admit_decoded(0, &charging, t0) {}
        let wobble = reading(r#"{"power_w": 185.0, "current_a": 0.84, "plug_temp_c": 34.0}"#);
        assert!(!t.admit_decoded(0, &wobble, t0), "a charger's wobble");
        let short = reading(r#"{"power_w": 2900.0, "current_a": 12.6}"#);
        assert!(t.admit_decoded(0, &short, t0), "over-current");
        let hot = reading(r#"{"plug_temp_c": 72.0}"#);
        assert!(t.admit_decoded(0, &hot, t0), "overheating plug");
        let off = reading(r#"{"state": "off", "power_w": 0.0, "current_a": 0.0}"#);
        assert!(
            t.admit_decoded(0, &off, t0),
            "switched off: the linkage's confirmation"
        );
    }

    #[test]
    fn a_co_alarm_flooding_its_readings_still_gets_its_rise_and_its_flag_through() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1);
        let clean = reading(r#"{"co_ppm": 2.0, "carbon_monoxide": false}"#);
        while t.admit_decoded(0, &clean, t0) {}
        assert!(!t.admit_decoded(0, &reading(r#"{"co_ppm": 4.0}"#), t0));
        assert!(
            t.admit_decoded(0, &reading(r#"{"co_ppm": 35.0}"#), t0),
            "warning point"
        );
        assert!(
            t.admit_decoded(0, &reading(r#"{"co_ppm": 310.0}"#), t0),
            "alarm point"
        );
        assert!(
            t.admit_decoded(0, &reading(r#"{"carbon_monoxide": true}"#), t0),
            "the alarm's own flag"
        );
    }

    #[test]
    fn a_gas_reading_crossing_a_band_passes_an_empty_bucket() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1);
        let low = reading(r#"{"gas_lel_pct": 3.0}"#);
        while t.admit_decoded(0, &low, t0) {}
        assert!(
            !t.admit_decoded(0, &reading(r#"{"gas_lel_pct": 4.5}"#), t0),
            "same band"
        );
        assert!(
            t.admit_decoded(0, &reading(r#"{"gas_lel_pct": 12.0}"#), t0),
            "10 %LEL crossed"
        );
        assert!(
            t.admit_decoded(0, &reading(r#"{"gas_lel_pct": 45.0}"#), t0),
            "25 %LEL crossed"
        );
        let offline = Decoded {
            online: Some(false),
            ..reading("{}")
        };
        assert!(
            t.admit_decoded(0, &offline, t0),
            "going offline is a change too"
        );
    }
}
