//! Track: a small ByteTrack-style multi-object tracker. Boxes are associated to tracks by IoU
//! against a constant-velocity prediction, high-score detections first, then low-score ones
//! for the tracks left over (so a briefly occluded person keeps their id). Only high-score
//! detections start tracks; a track is *confirmed* after a few hits (a few frames of
//! inertia against one-frame false alarms) and survives a while without detections (when
//! there is no motion the detector does not run, and a still person must keep their id).

use super::detect::{BoxF, Detection};

/// Errors of the tracker (none: bad boxes are simply not matched).
#[derive(Debug, thiserror::Error)]
pub enum TrackError {}

/// Tracker settings.
#[derive(Debug, Clone, Copy)]
pub struct TrackerOptions {
    /// Detections at or above this start tracks and are matched first.
    pub high_score: f32,
    /// Detections below this are ignored.
    pub low_score: f32,
    /// Minimum IoU for a match.
    pub match_iou: f32,
    /// A track not seen for this long (camera seconds) is dropped.
    pub max_age_s: f64,
    /// Hits before a track is confirmed.
    pub min_hits: u32,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        TrackerOptions {
            high_score: 0.45,
            low_score: 0.1,
            match_iou: 0.25,
            max_age_s: 6.0,
            min_hits: 3,
        }
    }
}

/// One tracked object.
#[derive(Debug, Clone)]
pub struct Track {
    /// Stable per camera for the object's life.
    pub id: u64,
    pub class: usize,
    pub bbox: BoxF,
    /// Score of the latest matched detection.
    pub score: f32,
    pub best_score: f32,
    pub first_seen: f64,
    pub last_seen: f64,
    pub hits: u32,
    /// Box centre velocity, pixels per second.
    velocity: (f32, f32),
}

impl Track {
    /// Seen long enough to be believed.
    pub fn confirmed(&self, min_hits: u32) -> bool {
        self.hits >= min_hits
    }

    fn predicted(&self, t: f64) -> BoxF {
        let dt = (t - self.last_seen).clamp(0.0, 2.0) as f32;
        self.bbox
            .shifted(self.velocity.0 * dt, self.velocity.1 * dt)
    }
}

/// Bicycles and motorcycles look alike to COCO models (e-bikes are both): one group.
fn group(class: usize) -> usize {
    if class == 3 {
        1
    } else {
        class
    }
}

/// The tracker of one camera.
pub struct Tracker {
    options: TrackerOptions,
    next_id: u64,
    tracks: Vec<Track>,
}

impl Tracker {
    pub fn new(options: TrackerOptions) -> Self {
        Tracker {
            options,
            next_id: 1,
            tracks: Vec::new(),
        }
    }

    pub fn options(&self) -> &TrackerOptions {
        &self.options
    }

    /// Live tracks (confirmed or not).
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Ages tracks when the detector did not run on this frame.
    pub fn coast(&mut self, t: f64) {
        let max_age = self.options.max_age_s;
        self.tracks.retain(|tr| t - tr.last_seen <= max_age);
    }

    /// Associates the detections of the frame at `t`; returns, per detection, the id of the
    /// track it was matched to or started (`None` for unmatched low-score detections).
    pub fn update(&mut self, t: f64, detections: &[Detection]) -> Vec<Option<u64>> {
        let o = self.options;
        let mut assigned: Vec<Option<u64>> = vec![None; detections.len()];
        let mut track_taken = vec![false; self.tracks.len()];
        let predicted: Vec<BoxF> = self.tracks.iter().map(|tr| tr.predicted(t)).collect();
        for pass_high in [true, false] {
            let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
            for (di, d) in detections.iter().enumerate() {
                let high = d.score >= o.high_score;
                if high != pass_high || d.score < o.low_score {
                    continue;
                }
                for (ti, tr) in self.tracks.iter().enumerate() {
                    if track_taken[ti] || group(tr.class) != group(d.class) {
                        continue;
                    }
                    let iou = predicted[ti].iou(&d.bbox).max(tr.bbox.iou(&d.bbox));
                    if iou >= o.match_iou {
                        pairs.push((iou, di, ti));
                    }
                }
            }
            pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (_, di, ti) in pairs {
                if track_taken[ti] || assigned[di].is_some() {
                    continue;
                }
                track_taken[ti] = true;
                let d = &detections[di];
                let tr = &mut self.tracks[ti];
                let dt = (t - tr.last_seen) as f32;
                if dt > 0.0 {
                    let (ox, oy) = centre(&tr.bbox);
                    let (nx, ny) = centre(&d.bbox);
                    let v = ((nx - ox) / dt, (ny - oy) / dt);
                    tr.velocity = (
                        0.5 * tr.velocity.0 + 0.5 * v.0,
                        0.5 * tr.velocity.1 + 0.5 * v.1,
                    );
                }
                tr.bbox = d.bbox;
                tr.score = d.score;
                tr.best_score = tr.best_score.max(d.score);
                if d.score >= o.high_score {
                    tr.class = d.class;
                }
                tr.last_seen = t;
                tr.hits += 1;
                assigned[di] = Some(tr.id);
            }
        }
        for (di, d) in detections.iter().enumerate() {
            if assigned[di].is_none() && d.score >= o.high_score {
                let id = self.next_id;
                self.next_id += 1;
                self.tracks.push(Track {
                    id,
                    class: d.class,
                    bbox: d.bbox,
                    score: d.score,
                    best_score: d.score,
                    first_seen: t,
                    last_seen: t,
                    hits: 1,
                    velocity: (0.0, 0.0),
                });
                assigned[di] = Some(id);
            }
        }
        self.coast(t);
        assigned
    }
}

fn centre(b: &BoxF) -> (f32, f32) {
    ((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(x: f32, score: f32) -> Detection {
        Detection {
            class: 0,
            score,
            bbox: BoxF {
                x1: x,
                y1: 0.0,
                x2: x + 40.0,
                y2: 100.0,
            },
        }
    }

    #[test]
    fn a_walking_person_keeps_one_id_and_a_second_person_gets_another() {
        let mut t = Tracker::new(TrackerOptions::default());
        let a = t.update(0.0, &[person(0.0, 0.9), person(300.0, 0.8)]);
        let b = t.update(0.2, &[person(10.0, 0.9), person(310.0, 0.8)]);
        let c = t.update(0.4, &[person(20.0, 0.3), person(320.0, 0.8)]);
        assert_eq!(a, b);
        assert_eq!(b, c, "a low-score detection continues its track");
        assert_ne!(a[0], a[1]);
        assert!(t.tracks().iter().all(|tr| tr.confirmed(3)));
    }

    #[test]
    fn a_low_score_detection_never_starts_a_track_and_old_tracks_expire() {
        let mut t = Tracker::new(TrackerOptions::default());
        assert_eq!(t.update(0.0, &[person(0.0, 0.2)]), vec![None]);
        t.update(0.0, &[person(0.0, 0.9)]);
        t.coast(5.0);
        assert_eq!(t.tracks().len(), 1, "still within max age");
        t.coast(10.0);
        assert!(t.tracks().is_empty());
    }
}
