//! Frame buffers handed back from a camera's analysis thread to its capture thread.
//!
//! Every analysed frame carries a full-size BGR image (6 MB at 1080p) and a detector input
//! (1.3 MB at 416 × 256). Allocated fresh per frame, each came from `mmap` (the allocator's
//! threshold is fixed so freed frames go back to the system, `os::bound_malloc`) and was
//! faulted in page by page and zeroed by the kernel: 12 % of the gateway's CPU with 8
//! cameras at 1080p (perf, issue 18). Instead, the analysis thread gives each frame's
//! buffers back when it is done, and the capture thread converts the next frame into them.
//! One spare of each kind per camera: capture converts frame N+1 while analysis works on N,
//! so N's buffers are back before N+2 is converted; a second would only hold memory.

use crossbeam_channel::{Receiver, Sender};

use super::Frame;

/// One camera's spare buffers; clones share them (one clone on each thread).
#[derive(Clone)]
pub struct Spares {
    /// Bounded to one: a spare is either waiting here or in use, never piling up.
    images: (Sender<Vec<u8>>, Receiver<Vec<u8>>),
    tensors: (Sender<Vec<f32>>, Receiver<Vec<f32>>),
}

impl Default for Spares {
    fn default() -> Self {
        Spares {
            images: crossbeam_channel::bounded(1),
            tensors: crossbeam_channel::bounded(1),
        }
    }
}

impl Spares {
    /// A spare image buffer (empty, with its capacity), or a new empty one.
    pub fn image(&self) -> Vec<u8> {
        let mut spare = self.images.1.try_recv().unwrap_or_default();
        spare.clear();
        spare
    }

    /// A spare detector-input buffer (empty, with its capacity), or a new empty one.
    pub fn tensor(&self) -> Vec<f32> {
        let mut spare = self.tensors.1.try_recv().unwrap_or_default();
        spare.clear();
        spare
    }

    /// Keeps the frame's buffers for the next conversion (dropped when a spare waits already).
    pub fn give(&self, frame: Frame) {
        let _ = self.images.0.try_send(frame.image.data);
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
    use crate::video::BgrImage;

    fn frame(image: Vec<u8>, tensor: Vec<f32>) -> Frame {
        Frame {
            seq: 1,
            t: 0.0,
            at: Instant::now(),
            image: BgrImage {
                width: 2,
                height: 1,
                data: image,
            },
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
    fn buffers_given_back_by_the_analysis_are_the_ones_the_capture_fills_next() {
        let capture = Spares::default();
        let analysis = capture.clone();
        let image = vec![7u8; 6];
        let tensor = vec![1.0f32; 3];
        let (image_at, tensor_at) = (image.as_ptr(), tensor.as_ptr());
        analysis.give(frame(image, tensor));
        // A second frame finds the one spare slot taken: its buffers are freed, not kept.
        analysis.give(frame(vec![0; 6], vec![0.0; 3]));
        let (again_image, again_tensor) = (capture.image(), capture.tensor());
        assert_eq!(
            again_image.as_ptr(),
            image_at,
            "the same allocation comes back"
        );
        assert_eq!(again_tensor.as_ptr(), tensor_at);
        assert!(again_image.capacity() >= 6 && again_tensor.capacity() >= 3);
        assert!(
            capture.image().is_empty() && capture.image().capacity() == 0,
            "only one spare"
        );
    }
}
