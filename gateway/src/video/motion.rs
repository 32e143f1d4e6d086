//! Motion: cheap frame differencing on a small grey image against a running-average
//! background, as Frigate does. Detection runs only when (and where) something moves, plus a
//! periodic full-frame pass so still objects (a parked e-bike, a person standing) stay seen.

use edge_config::Point;

use super::detect::Region;
use super::zones::Polygon;
use super::GreyImage;

/// Errors of the motion stage (none can happen today: a size change re-initialises).
#[derive(Debug, thiserror::Error)]
pub enum MotionError {}

/// A pixel differing from the background by more than this (0..255) has changed.
const THRESHOLD: f32 = 25.0;
/// Background learning rate per analysed frame.
const ALPHA: f32 = 0.1;
/// Side of a motion cell in grey-image pixels, and how many changed pixels make it move.
const CELL: u32 = 8;
const CELL_MIN_CHANGED: u32 = 4;

/// Where something moved, in fractions of the frame (x1, y1, x2, y2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
    /// Moving cells over all cells.
    pub fraction: f32,
}

/// Per-camera motion detector.
pub struct MotionDetector {
    width: u32,
    height: u32,
    background: Vec<f32>,
    /// `true` = masked out (config `[[cameras.masks]]`).
    ignored: Vec<bool>,
    masks: Vec<Polygon>,
}

impl MotionDetector {
    pub fn new(masks: &[Vec<Point>]) -> Self {
        MotionDetector {
            width: 0,
            height: 0,
            background: Vec::new(),
            ignored: Vec::new(),
            masks: masks.iter().map(|m| Polygon::new(m)).collect(),
        }
    }

    /// Compares with the background and learns the frame. `None` = no motion. The first
    /// frame (or a size change) counts as motion everywhere.
    pub fn update(&mut self, grey: &GreyImage) -> Option<MotionBox> {
        if grey.width != self.width
            || grey.height != self.height
            || self.background.len() != grey.data.len()
        {
            self.reset(grey);
            return Some(MotionBox {
                x1: 0.0,
                y1: 0.0,
                x2: 1.0,
                y2: 1.0,
                fraction: 1.0,
            });
        }
        let (w, h) = (self.width, self.height);
        let (cw, ch) = (w.div_ceil(CELL), h.div_ceil(CELL));
        let mut counts = vec![0u32; (cw * ch) as usize];
        for y in 0..h {
            for x in 0..w {
                let i = (y * w + x) as usize;
                let v = grey.data[i] as f32;
                let bg = &mut self.background[i];
                if !self.ignored[i] && (v - *bg).abs() > THRESHOLD {
                    counts[((y / CELL) * cw + x / CELL) as usize] += 1;
                }
                *bg += (v - *bg) * ALPHA;
            }
        }
        let (mut x1, mut y1, mut x2, mut y2, mut moving) = (u32::MAX, u32::MAX, 0, 0, 0u32);
        for cy in 0..ch {
            for cx in 0..cw {
                if counts[(cy * cw + cx) as usize] >= CELL_MIN_CHANGED {
                    moving += 1;
                    x1 = x1.min(cx);
                    y1 = y1.min(cy);
                    x2 = x2.max(cx + 1);
                    y2 = y2.max(cy + 1);
                }
            }
        }
        if moving == 0 {
            return None;
        }
        Some(MotionBox {
            x1: (x1 * CELL) as f32 / w as f32,
            y1: (y1 * CELL) as f32 / h as f32,
            x2: ((x2 * CELL).min(w)) as f32 / w as f32,
            y2: ((y2 * CELL).min(h)) as f32 / h as f32,
            fraction: moving as f32 / (cw * ch) as f32,
        })
    }

    fn reset(&mut self, grey: &GreyImage) {
        self.width = grey.width;
        self.height = grey.height;
        self.background = grey.data.iter().map(|&v| v as f32).collect();
        self.ignored = (0..grey.height)
            .flat_map(|y| (0..grey.width).map(move |x| (x, y)))
            .map(|(x, y)| {
                let p = (
                    (x as f32 + 0.5) / grey.width as f32,
                    (y as f32 + 0.5) / grey.height as f32,
                );
                self.masks.iter().any(|m| m.contains(p.0, p.1))
            })
            .collect();
    }
}

/// The region to run the detector on for this motion: the moving area with a margin, at
/// least the model's input size (so small objects are seen at full resolution), or the
/// whole frame when that is nearly as large.
pub fn region_for(
    motion: &MotionBox,
    width: u32,
    height: u32,
    model: (u32, u32),
) -> Option<Region> {
    let (fw, fh) = (width as f32, height as f32);
    let margin = 0.1;
    let mut x1 = ((motion.x1 - margin) * fw).max(0.0);
    let mut y1 = ((motion.y1 - margin) * fh).max(0.0);
    let mut x2 = ((motion.x2 + margin) * fw).min(fw);
    let mut y2 = ((motion.y2 + margin) * fh).min(fh);
    (x1, x2) = grow(x1, x2, model.0 as f32, fw);
    (y1, y2) = grow(y1, y2, model.1 as f32, fh);
    if (x2 - x1) * (y2 - y1) > 0.6 * fw * fh {
        return None;
    }
    Some(Region {
        x: x1 as u32,
        y: y1 as u32,
        width: (x2 - x1) as u32,
        height: (y2 - y1) as u32,
    })
}

/// Widens `[a, b]` around its centre to at least `min` (at most `max`), kept inside `[0, max]`.
fn grow(a: f32, b: f32, min: f32, max: f32) -> (f32, f32) {
    let target = min.min(max);
    if b - a >= target {
        return (a, b);
    }
    let start = ((a + b) / 2.0 - target / 2.0).clamp(0.0, max - target);
    (start, start + target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(v: u8) -> GreyImage {
        GreyImage {
            width: 32,
            height: 32,
            data: vec![v; 32 * 32],
        }
    }

    #[test]
    fn a_static_scene_has_no_motion_and_a_moving_block_is_located() {
        let mut m = MotionDetector::new(&[]);
        assert!(
            m.update(&grey(50)).is_some(),
            "first frame counts as motion"
        );
        assert!(m.update(&grey(50)).is_none());
        let mut g = grey(50);
        for y in 8..16 {
            for x in 16..24 {
                g.data[y * 32 + x] = 200;
            }
        }
        let b = m.update(&g).expect("motion");
        assert_eq!((b.x1, b.y1, b.x2, b.y2), (0.5, 0.25, 0.75, 0.5));
    }

    #[test]
    fn motion_inside_a_mask_is_ignored() {
        let mask = vec![vec![[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]];
        let mut m = MotionDetector::new(&mask);
        m.update(&grey(50));
        let mut g = grey(50);
        for y in 8..16 {
            for x in 16..24 {
                g.data[y * 32 + x] = 200;
            }
        }
        assert!(m.update(&g).is_none());
    }

    #[test]
    fn the_detection_region_is_at_least_the_model_size_or_the_whole_frame() {
        let small = MotionBox {
            x1: 0.45,
            y1: 0.45,
            x2: 0.5,
            y2: 0.5,
            fraction: 0.01,
        };
        let r = region_for(&small, 1920, 1080, (416, 416)).expect("a crop");
        assert!(
            r.width >= 416 && r.height >= 416 && r.x + r.width <= 1920 && r.y + r.height <= 1080
        );
        assert!(
            region_for(&small, 480, 360, (416, 416)).is_none(),
            "nearly the whole frame"
        );
    }
}
