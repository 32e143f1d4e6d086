//! Zones: the camera's polygons and masks from the configuration, and its rules evaluated
//! on the tracked objects of every analysed frame.
//!
//! An object is *in* a zone when the bottom centre of its box (where it stands) is inside the
//! polygon; objects standing in a mask are dropped before tracking. A rule only counts
//! confirmed tracks of its `objects` classes whose best score reaches `min_score` and whose
//! box covers at least `min_area` of the frame.
//!
//! - `ebike_entry`: a bicycle/motorcycle track enters the zone — one trigger per track;
//! - `crowd`: at least `min_persons` in the zone for `min_duration_s` — one trigger per episode;
//! - `intrusion`: a person in the zone while the local time is in `window` — one per track;
//! - `loitering`: a track stays in the zone for `dwell_s` — one per track.
//!
//! Alerts are one per (camera, kind): the first trigger raises, later ones update (new
//! snapshot), and the kind clears once no rule of it has held for [`CLEAR_AFTER_S`].

use std::collections::{HashMap, HashSet};

use chrono::NaiveTime;
use edge_config::{Camera, CameraRule, CameraRuleKind, Level, Point, COCO_CLASSES};

use super::detect::BoxF;
use super::track::Track;

/// Errors building a camera's zones.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("rule {kind} refers to unknown zone {zone:?}")]
    UnknownZone { kind: &'static str, zone: String },
    #[error("rule {kind}: unknown object class {class:?}")]
    UnknownClass { kind: &'static str, class: String },
}

/// A kind's alert clears once none of its rules has held for this long (camera seconds).
pub const CLEAR_AFTER_S: f64 = 15.0;

/// A polygon in frame fractions.
#[derive(Debug, Clone)]
pub struct Polygon(Vec<(f32, f32)>);

impl Polygon {
    pub fn new(points: &[Point]) -> Self {
        Polygon(points.iter().map(|p| (p[0] as f32, p[1] as f32)).collect())
    }

    /// Even-odd rule point-in-polygon.
    pub fn contains(&self, x: f32, y: f32) -> bool {
        let pts = &self.0;
        let mut inside = false;
        let mut j = pts.len().wrapping_sub(1);
        for i in 0..pts.len() {
            let (xi, yi) = pts[i];
            let (xj, yj) = pts[j];
            if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                inside = !inside;
            }
            j = i;
        }
        inside
    }
}

/// A rule edge for the alert lifecycle.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleEdge {
    pub kind: CameraRuleKind,
    pub zone: String,
    pub level: Level,
    /// `true`: raise (or update) the kind's alert; `false`: resolve it.
    pub active: bool,
    /// The tracks that triggered it.
    pub tracks: Vec<u64>,
    /// The triggering rule's `min_score`: the evidence draws only objects it would count.
    pub min_score: f32,
}

struct RuleState {
    rule: CameraRule,
    zone: usize,
    classes: Vec<usize>,
    triggered: HashSet<u64>,
    entered: HashMap<u64, f64>,
    crowd_since: Option<f64>,
    crowd_fired: bool,
}

#[derive(Default)]
struct KindState {
    active: bool,
    last_holding: f64,
}

/// The zones, masks and rule state of one camera.
pub struct ZoneRules {
    zones: Vec<(String, Polygon)>,
    masks: Vec<Polygon>,
    rules: Vec<RuleState>,
    kinds: HashMap<CameraRuleKind, KindState>,
    min_hits: u32,
}

impl ZoneRules {
    /// Builds from the camera's configuration; `min_hits` is the tracker's confirmation.
    pub fn new(camera: &Camera, min_hits: u32) -> Result<Self, ZoneError> {
        let zones: Vec<(String, Polygon)> = camera
            .zones
            .iter()
            .map(|z| (z.id.clone(), Polygon::new(&z.polygon)))
            .collect();
        let mut rules = Vec::new();
        for rule in &camera.rules {
            let kind = rule.kind.as_str();
            let zone = zones
                .iter()
                .position(|(id, _)| *id == rule.zone)
                .ok_or_else(|| ZoneError::UnknownZone {
                    kind,
                    zone: rule.zone.clone(),
                })?;
            let classes = rule
                .objects()
                .iter()
                .map(|c| {
                    COCO_CLASSES.iter().position(|k| k == c).ok_or_else(|| {
                        ZoneError::UnknownClass {
                            kind,
                            class: c.clone(),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            rules.push(RuleState {
                rule: rule.clone(),
                zone,
                classes,
                triggered: HashSet::new(),
                entered: HashMap::new(),
                crowd_since: None,
                crowd_fired: false,
            });
        }
        Ok(ZoneRules {
            zones,
            masks: camera
                .masks
                .iter()
                .map(|m| Polygon::new(&m.polygon))
                .collect(),
            rules,
            kinds: HashMap::new(),
            min_hits,
        })
    }

    /// Whether a box stands in a mask (dropped before tracking).
    pub fn masked(&self, b: &BoxF, width: u32, height: u32) -> bool {
        let (x, y) = norm_foot(b, width, height);
        self.masks.iter().any(|m| m.contains(x, y))
    }

    /// Ids of the zones a box stands in.
    pub fn zones_at(&self, b: &BoxF, width: u32, height: u32) -> Vec<String> {
        let (x, y) = norm_foot(b, width, height);
        self.zones
            .iter()
            .filter(|(_, p)| p.contains(x, y))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Evaluates every rule on the live tracks at camera time `t` (local wall time `local`).
    pub fn update(
        &mut self,
        t: f64,
        local: NaiveTime,
        tracks: &[Track],
        width: u32,
        height: u32,
    ) -> Vec<RuleEdge> {
        let frame = Frame {
            width,
            height,
            area: width as f32 * height as f32,
        };
        let mut edges = Vec::new();
        let mut holding: HashSet<CameraRuleKind> = HashSet::new();
        for rs in &mut self.rules {
            let polygon = &self.zones[rs.zone].1;
            let inside = rs.inside(t, tracks, polygon, self.min_hits, &frame);
            let (fired, holds) = rs.fire(t, local, &inside);
            if holds {
                holding.insert(rs.rule.kind);
            }
            if !fired.is_empty() {
                edges.push(RuleEdge {
                    kind: rs.rule.kind,
                    zone: rs.rule.zone.clone(),
                    level: rs.rule.level(),
                    active: true,
                    tracks: fired,
                    min_score: rs.rule.min_score as f32,
                });
            }
        }
        self.clear_kinds(t, &holding, &mut edges);
        edges
    }

    /// Per-kind state: raise on triggers, clear after the kind stopped holding.
    fn clear_kinds(
        &mut self,
        t: f64,
        holding: &HashSet<CameraRuleKind>,
        edges: &mut Vec<RuleEdge>,
    ) {
        for e in edges.iter() {
            self.kinds.entry(e.kind).or_default().active = true;
        }
        for rs in &mut self.rules {
            let kind = rs.rule.kind;
            let state = self.kinds.entry(kind).or_default();
            if holding.contains(&kind) {
                state.last_holding = t;
            } else if state.active && t - state.last_holding >= CLEAR_AFTER_S {
                state.active = false;
                rs.crowd_fired = false;
                edges.push(RuleEdge {
                    kind,
                    zone: rs.rule.zone.clone(),
                    level: rs.rule.level(),
                    active: false,
                    tracks: Vec::new(),
                    min_score: rs.rule.min_score as f32,
                });
            }
        }
    }
}

/// The frame tracks are measured in.
struct Frame {
    width: u32,
    height: u32,
    area: f32,
}

impl RuleState {
    /// The confirmed tracks of this rule's classes, score and size standing in its zone;
    /// also keeps when each entered.
    fn inside<'a>(
        &mut self,
        t: f64,
        tracks: &'a [Track],
        polygon: &Polygon,
        min_hits: u32,
        frame: &Frame,
    ) -> Vec<&'a Track> {
        let rule = &self.rule;
        let inside: Vec<&Track> = tracks
            .iter()
            .filter(|tr| tr.confirmed(min_hits))
            .filter(|tr| {
                self.classes.iter().any(|&c| {
                    c == tr.class || (c == 1 && tr.class == 3) || (c == 3 && tr.class == 1)
                })
            })
            .filter(|tr| tr.best_score as f64 >= rule.min_score)
            .filter(|tr| (tr.bbox.area() / frame.area) as f64 >= rule.min_area)
            .filter(|tr| {
                let (x, y) = norm_foot(&tr.bbox, frame.width, frame.height);
                polygon.contains(x, y)
            })
            .collect();
        let ids: HashSet<u64> = inside.iter().map(|tr| tr.id).collect();
        self.entered.retain(|id, _| ids.contains(id));
        for tr in &inside {
            self.entered.entry(tr.id).or_insert(t);
        }
        inside
    }

    /// The tracks this rule triggers on now, and whether its condition holds.
    fn fire(&mut self, t: f64, local: NaiveTime, inside: &[&Track]) -> (Vec<u64>, bool) {
        let rule = &self.rule;
        let new_ids = |triggered: &mut HashSet<u64>, ids: Vec<u64>| -> Vec<u64> {
            ids.into_iter().filter(|id| triggered.insert(*id)).collect()
        };
        let all: Vec<u64> = inside.iter().map(|tr| tr.id).collect();
        match rule.kind {
            CameraRuleKind::EbikeEntry => (new_ids(&mut self.triggered, all), !inside.is_empty()),
            CameraRuleKind::Intrusion => {
                let guarded = rule.window.as_ref().is_some_and(|w| w.contains(local));
                if guarded && !inside.is_empty() {
                    (new_ids(&mut self.triggered, all), true)
                } else {
                    (Vec::new(), false)
                }
            }
            CameraRuleKind::Loitering => {
                let dwell = rule.dwell_s() as f64;
                let long: Vec<u64> = self
                    .entered
                    .iter()
                    .filter(|(_, &since)| t - since >= dwell)
                    .map(|(&id, _)| id)
                    .collect();
                let holds = !long.is_empty();
                let mut new = new_ids(&mut self.triggered, long);
                new.sort_unstable();
                (new, holds)
            }
            CameraRuleKind::Crowd => self.crowd(t, all),
        }
    }

    /// `crowd`: at least `min_persons` for `min_duration_s`, one trigger per episode.
    fn crowd(&mut self, t: f64, mut ids: Vec<u64>) -> (Vec<u64>, bool) {
        if ids.len() < self.rule.min_persons() as usize {
            self.crowd_since = None;
            return (Vec::new(), false);
        }
        let since = *self.crowd_since.get_or_insert(t);
        if !self.crowd_fired && t - since >= self.rule.min_duration_s() as f64 {
            self.crowd_fired = true;
            ids.sort_unstable();
            return (ids, true);
        }
        (Vec::new(), true)
    }
}

fn norm_foot(b: &BoxF, width: u32, height: u32) -> (f32, f32) {
    let (x, y) = b.foot();
    (x / width.max(1) as f32, y / height.max(1) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::detect::Detection;
    use crate::video::track::{Tracker, TrackerOptions};

    fn camera(rule: serde_json::Value) -> Camera {
        serde_json::from_value(serde_json::json!({
            "id": "cam",
            "url": "/dev/null",
            "location": { "area": "a" },
            "zones": [{ "id": "left", "polygon": [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]] }],
            "rules": [rule],
        }))
        .unwrap()
    }

    fn det(class: usize, x: f32) -> Detection {
        Detection {
            class,
            score: 0.9,
            bbox: BoxF {
                x1: x,
                y1: 10.0,
                x2: x + 20.0,
                y2: 60.0,
            },
        }
    }

    fn noon() -> NaiveTime {
        NaiveTime::from_hms_opt(12, 0, 0).unwrap()
    }

    #[test]
    fn an_ebike_entering_the_zone_triggers_once_and_clears_after_it_left() {
        let cam =
            camera(serde_json::json!({"kind": "ebike_entry", "zone": "left", "min_area": 0.0}));
        let mut rules = ZoneRules::new(&cam, 3).unwrap();
        let mut tracker = Tracker::new(TrackerOptions::default());
        let mut edges = Vec::new();
        for i in 0..10 {
            let t = i as f64 * 0.2;
            tracker.update(t, &[det(1, 10.0 + i as f32)]);
            edges.extend(rules.update(t, noon(), tracker.tracks(), 200, 100));
        }
        assert_eq!(edges.len(), 1);
        assert!(edges[0].active && edges[0].kind == CameraRuleKind::EbikeEntry);
        let mut t = 2.0;
        while t < 30.0 {
            tracker.update(t, &[]);
            edges.extend(rules.update(t, noon(), tracker.tracks(), 200, 100));
            t += 1.0;
        }
        assert_eq!(edges.len(), 2);
        assert!(!edges[1].active);
    }

    #[test]
    fn a_person_outside_the_zone_or_of_another_class_does_not_trigger() {
        let cam =
            camera(serde_json::json!({"kind": "ebike_entry", "zone": "left", "min_area": 0.0}));
        let mut rules = ZoneRules::new(&cam, 3).unwrap();
        let mut tracker = Tracker::new(TrackerOptions::default());
        for i in 0..10 {
            let t = i as f64 * 0.2;
            tracker.update(t, &[det(0, 10.0), det(1, 150.0)]);
            assert!(rules
                .update(t, noon(), tracker.tracks(), 200, 100)
                .is_empty());
        }
    }

    #[test]
    fn loitering_triggers_after_the_dwell_time() {
        let cam = camera(
            serde_json::json!({"kind": "loitering", "zone": "left", "dwell_s": 3, "min_area": 0.0}),
        );
        let mut rules = ZoneRules::new(&cam, 3).unwrap();
        let mut tracker = Tracker::new(TrackerOptions::default());
        let mut first = None;
        for i in 0..30 {
            let t = i as f64 * 0.2;
            tracker.update(t, &[det(0, 10.0)]);
            if !rules
                .update(t, noon(), tracker.tracks(), 200, 100)
                .is_empty()
                && first.is_none()
            {
                first = Some(t);
            }
        }
        // Confirmed at the 3rd hit (t = 0.4), dwell 3 s.
        assert!(first.is_some_and(|t| (t - 3.4).abs() < 1e-9), "{first:?}");
    }

    #[test]
    fn a_point_in_polygon_uses_the_even_odd_rule() {
        let p = Polygon::new(&[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]);
        assert!(p.contains(0.2, 0.2));
        assert!(!p.contains(0.8, 0.8));
    }
}
