//! A detector that sees nothing (video tests that need no model), optionally taking a set
//! time per inference (the load of a scenario). Included with
//! `#[path = "support/blind.rs"] mod blind;`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::video::detect::{DetectError, Detection, Detector, InputShape, InputSpec, Prepared};
use gateway::video::SharedDetector;

/// Sees nothing; each inference takes `cost`.
pub struct Blind {
    pub cost: Duration,
}

impl Detector for Blind {
    fn name(&self) -> &str {
        "blind"
    }
    fn input_spec(&self) -> InputSpec {
        InputSpec {
            width: 64,
            height: 64,
            pad: 114.0,
            shape: InputShape::Fixed,
        }
    }
    fn infer(&mut self, _input: &Prepared) -> Result<Vec<Detection>, DetectError> {
        if !self.cost.is_zero() {
            std::thread::sleep(self.cost);
        }
        Ok(Vec::new())
    }
}

/// A shared [`Blind`] taking `cost` per inference.
pub fn blind(cost: Duration) -> SharedDetector {
    Arc::new(Mutex::new(Box::new(Blind { cost })))
}
