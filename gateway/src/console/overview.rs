//! The command room (值班指挥): what the console needs beyond the alert list — the site's
//! places for the overview schematic (`GET /api/site`), the alarm tone (`GET
//! /api/alarm.wav`, generated here, nothing downloaded) and the response-time targets of
//! `[console.response]` with how many alerts met or missed them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use edge_config::{AlertKind, Config, ResponseTargets};
use serde::Serialize;
use serde_json::json;

use super::State;
use crate::alerts::{Alert, AlertState};

/// `GET /api/site`: buildings (with units), areas, the cameras that see each place and
/// each device with cameras of its own, and the response targets.
pub(crate) async fn site(AxState(state): AxState<Arc<State>>) -> Json<serde_json::Value> {
    Json(site_json(&state.deps.config))
}

fn site_json(config: &Config) -> serde_json::Value {
    let buildings: Vec<_> = config
        .locations
        .buildings
        .iter()
        .map(|b| {
            let units: Vec<_> = b
                .units
                .iter()
                .map(|u| json!({ "id": u.id, "name": u.name }))
                .collect();
            json!({ "id": b.id, "name": b.name, "floors": b.floors, "units": units, "cameras": b.cameras })
        })
        .collect();
    let areas: Vec<_> = config
        .locations
        .areas
        .iter()
        .map(|a| json!({ "id": a.id, "name": a.name, "kind": a.kind, "building": a.building, "cameras": a.cameras }))
        .collect();
    // Which cameras see each device (its own, its area's or its building's): the console
    // links a sensor alert to their live view even before (or without) evidence.
    let devices: BTreeMap<&str, &[String]> = config
        .devices
        .iter()
        .map(|d| (d.id.as_str(), config.cameras_seeing(d)))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    let cameras: Vec<_> = config
        .cameras
        .iter()
        .map(|c| json!({ "id": c.id, "name": c.name.as_deref().unwrap_or(&c.id) }))
        .collect();
    json!({
        "name": config.site.name,
        "buildings": buildings,
        "areas": areas,
        "devices": devices,
        "cameras": cameras,
        "response": targets_json(&config.console.response),
    })
}

/// The targets as the console reads them: `ack_within_s`, and `resolve_within_min` for
/// every alert kind.
pub(crate) fn targets_json(t: &ResponseTargets) -> serde_json::Value {
    let resolve: BTreeMap<&str, u32> = AlertKind::ALL
        .iter()
        .map(|k| (k.as_str(), t.resolve_within_min(*k)))
        .collect();
    json!({ "ack_within_s": t.ack_within_s, "resolve_within_min": resolve })
}

/// How many alerts of one kind met or missed a target; alerts still within it are pending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MetMissed {
    pub met: usize,
    pub missed: usize,
    pub pending: usize,
}

/// Targets of one kind and how its alerts did against them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindTargets {
    pub ack_within_s: u32,
    pub resolve_within_min: u32,
    pub acknowledge: MetMissed,
    pub resolve: MetMissed,
}

/// Per kind: each alert against `targets` at `now`. An alert is answered when acknowledged
/// or resolved by staff (a resolve is an answer too); an unanswered alert past its target —
/// still waiting, or cleared by its sensor too late — has missed it.
pub fn against_targets(
    alerts: &[Alert],
    targets: &ResponseTargets,
    now: DateTime<Utc>,
) -> BTreeMap<String, KindTargets> {
    let mut out: BTreeMap<String, KindTargets> = BTreeMap::new();
    for a in alerts {
        let resolve_s = i64::from(targets.resolve_within_min(a.kind)) * 60;
        let e = out
            .entry(a.kind.as_str().to_owned())
            .or_insert_with(|| KindTargets {
                ack_within_s: targets.ack_within_s,
                resolve_within_min: targets.resolve_within_min(a.kind),
                ..KindTargets::default()
            });
        let by_staff = a.resolved_by.as_deref().is_some_and(|b| b != "auto");
        let answered = a.acknowledged_at.or(a.resolved_at.filter(|_| by_staff));
        let ended = a.resolved_at.filter(|_| a.state == AlertState::Resolved);
        tally(
            &mut e.acknowledge,
            a.raised_at,
            answered,
            ended.unwrap_or(now),
            i64::from(targets.ack_within_s),
        );
        tally(&mut e.resolve, a.raised_at, ended, now, resolve_s);
    }
    out
}

fn tally(
    m: &mut MetMissed,
    from: DateTime<Utc>,
    done: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    target_s: i64,
) {
    let within = |t: DateTime<Utc>| (t - from).num_milliseconds() <= target_s * 1000;
    match done {
        Some(t) if within(t) => m.met += 1,
        Some(_) => m.missed += 1,
        None if within(now) => m.pending += 1,
        None => m.missed += 1,
    }
}

/// `GET /api/alarm.wav`: the alarm tone (cached by the browser; it never changes).
pub(crate) async fn alarm_wav() -> Response {
    (
        [
            (header::CONTENT_TYPE, "audio/wav"),
            (header::CACHE_CONTROL, "private, max-age=86400"),
        ],
        alarm_tone(),
    )
        .into_response()
}

/// Sample rate of the alarm tone.
const RATE: u32 = 16_000;

/// A two-tone alarm (960 / 770 Hz, 0.25 s each, twice: 1 s), 16-bit mono PCM WAV, with
/// 5 ms ramps so the tone changes without clicks.
pub fn alarm_tone() -> Vec<u8> {
    let step = RATE as usize / 4;
    let ramp = RATE as usize / 200;
    let mut samples: Vec<i16> = Vec::with_capacity(step * 4);
    for (i, freq) in [960.0, 770.0, 960.0, 770.0].iter().enumerate() {
        for n in 0..step {
            let t = (i * step + n) as f64 / f64::from(RATE);
            let edge = n.min(step - 1 - n);
            let gain = (edge as f64 / ramp as f64).min(1.0);
            let v = (2.0 * std::f64::consts::PI * freq * t).sin() * gain * 0.6;
            samples.push((v * f64::from(i16::MAX)) as i16);
        }
    }
    wav(&samples)
}

/// `samples` as a 16-bit mono PCM WAV file at [`RATE`].
fn wav(samples: &[i16]) -> Vec<u8> {
    let data = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * 2).to_le_bytes()); // bytes per second
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{EventKind, Location, Source};
    use edge_config::Level;

    fn alert(kind: AlertKind, raised: i64) -> Alert {
        let at = |s: i64| DateTime::from_timestamp(1_790_000_000 + s, 0).unwrap();
        let text = crate::alerts::model::Localized {
            zh_cn: String::new(),
            en: String::new(),
        };
        Alert {
            id: format!("a{raised}"),
            seq: 1,
            event: EventKind::Raised,
            site: "s".into(),
            kind,
            level: Level::Red,
            state: AlertState::Raised,
            source: Source::Device("d".into()),
            location: Location::default(),
            raised_at: at(raised),
            updated_at: at(raised),
            acknowledged_at: None,
            acknowledged_by: None,
            escalated_at: None,
            resolved_at: None,
            resolved_by: None,
            rearmed_at: None,
            still_reported: false,
            continues: None,
            readings: json!({}),
            message: text.clone(),
            advice: text,
            actions: Vec::new(),
        }
    }

    #[test]
    fn alerts_meet_or_miss_the_targets_of_their_kind() {
        let t0 = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let secs = chrono::Duration::seconds;
        let mut targets = ResponseTargets::default();
        targets.resolve_within_min.insert("smoke".into(), 10);
        // Acknowledged after 30 s, resolved by staff after 9 min: both met.
        let mut quick = alert(AlertKind::Smoke, 0);
        quick.acknowledged_at = Some(t0 + secs(30));
        quick.state = AlertState::Resolved;
        quick.resolved_at = Some(t0 + secs(540));
        quick.resolved_by = Some("duty".into());
        // Acknowledged after 90 s, resolved after 12 min: both missed (smoke: 10 min).
        let mut slow = alert(AlertKind::Smoke, 0);
        slow.acknowledged_at = Some(t0 + secs(90));
        slow.state = AlertState::Resolved;
        slow.resolved_at = Some(t0 + secs(720));
        slow.resolved_by = Some("duty".into());
        // Nobody answered for 2 minutes: missed; still within 15 min: pending.
        let waiting = alert(AlertKind::Gas, 0);
        // Raised 20 s ago: pending both.
        let fresh = alert(AlertKind::Gas, 100);
        let now = t0 + secs(120);
        let r = against_targets(&[quick, slow, waiting, fresh], &targets, now);
        let smoke = &r["smoke"];
        assert_eq!((smoke.ack_within_s, smoke.resolve_within_min), (60, 10));
        let mm = |met, missed, pending| MetMissed {
            met,
            missed,
            pending,
        };
        assert_eq!(smoke.acknowledge, mm(1, 1, 0));
        assert_eq!(smoke.resolve, mm(1, 1, 0));
        let gas = &r["gas"];
        assert_eq!(gas.resolve_within_min, 15);
        assert_eq!(gas.acknowledge, mm(0, 1, 1));
        assert_eq!(gas.resolve, mm(0, 0, 2));
    }

    #[test]
    fn the_alarm_tone_is_a_one_second_pcm_wav() {
        let wav = alarm_tone();
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        let data = u32::from_le_bytes([wav[40], wav[41], wav[42], wav[43]]) as usize;
        assert_eq!(data, 2 * RATE as usize, "1 s of 16-bit samples");
        assert_eq!(wav.len(), 44 + data);
        let peak = wav[44..]
            .chunks(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]).unsigned_abs())
            .max();
        assert!(peak > Some(10_000), "audible: {peak:?}");
    }
}
