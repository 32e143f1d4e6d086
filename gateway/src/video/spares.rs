//! Detector inputs handed back from a camera's analysis thread to its capture thread.
//!
//! Every analysed frame carries a detector input (1.3 MB of f32 at 416 × 256). Allocated
//! fresh per frame, each came from `mmap` (the allocator's threshold is fixed so freed blocks
//! go back to the system, `os::bound_malloc`) and was faulted in page by page and zeroed by
//! the kernel; with the full BGR frames the inputs were made from, that was 12 % of the
//! gateway's CPU with 8 cameras at 1080p (perf, issue 18). Instead, the analysis thread
//! gives each input back when it is done, and the capture thread makes the next one in it.
//! One spare per camera: capture prepares frame N+1 while analysis works on N, so N's
//! buffer is back before N+2 is prepared; a second would only hold memory.

use crossbeam_channel::{Receiver, Sender};

use super::Frame;

/// One camera's spare detector input; clones share it (one clone on each thread).
#[derive(Clone)]
pub struct Spares {
    /// Bounded to one: a spare is either waiting here or in use, never piling up.
    tensors: (Sender<Vec<f32>>, Receiver<Vec<f32>>),
}

impl Default for Spares {
    fn default() -> Self {
        Spares {
            tensors: crossbeam_channel::bounded(1),
        }
    }
}

impl Spares {
    /// A spare detector-input buffer (empty, with its capacity), or a new empty one.
    pub fn tensor(&self) -> Vec<f32> {
        let mut spare = self.tensors.1.try_recv().unwrap_or_default();
        spare.clear();
        spare
    }

    /// Keeps the frame's input buffer for the next one (freed when a spare waits already).
    pub fn give(&self, frame: Frame) {
        if let Some(input) = frame.input {
            let _ = self.tensors.0.try_send(input.tensor);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::video::detect::{InputShape, InputSpec, Prepared};
    use crate::video::picture::tests::picture;

    fn frame(tensor: Vec<f32>) -> Frame {
        Frame {
            seq: 1,
            t: 0.0,
            at: Instant::now(),
            picture: picture(32, 18),
            input: Some(Prepared {
                tensor,
                spec: InputSpec {
                    width: 1,
                    height: 1,
                    pad: 114.0,
                    shape: InputShape::Fixed,
                },
                ratio: 1.0,
                origin: (0.0, 0.0),
            }),
        }
    }

    #[test]
    fn an_input_given_back_by_the_analysis_is_the_buffer_the_capture_fills_next() {
        let capture = Spares::default();
        let analysis = capture.clone();
        let tensor = vec![1.0f32; 3];
        let at = tensor.as_ptr();
        analysis.give(frame(tensor));
        // A second frame finds the one spare slot taken: its buffer is freed, not kept.
        analysis.give(frame(vec![0.0; 3]));
        let again = capture.tensor();
        assert_eq!(again.as_ptr(), at, "the same allocation comes back");
        assert!(again.is_empty() && again.capacity() >= 3);
        let none = capture.tensor();
        assert!(none.capacity() == 0, "only one spare");
    }
}
