//! Without ONNX Runtime the gateway must not panic: the video pipeline reports itself
//! unavailable with a clear error (its own test binary: ONNX Runtime, once loaded, stays).

use std::path::Path;
use std::sync::Arc;

use gateway::shutdown::Lifecycle;
use gateway::video::{self, detect::DetectError, VideoError};

#[test]
fn a_missing_onnxruntime_library_makes_the_video_pipeline_unavailable_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = format!(
        r#"
[site]
id = "t1"
name = "Test"
kind = "compound"
[[locations.areas]]
id = "lobby"
name = "Lobby"
kind = "lobby"
[[cameras]]
id = "cam"
url = "{}"
location = {{ area = "lobby" }}
"#,
        root.join("vendor/footage/vtest.avi").display()
    );
    let mut config = edge_config::parse(&text, "t.toml", &root).unwrap_or_else(|e| panic!("{e}"));
    config.detector.onnxruntime = Some("/nonexistent/libonnxruntime.so".into());
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let bus = gateway::alerts::AlertBus::new(tx);
    let result = video::spawn(Arc::new(config), &Lifecycle::new(), bus, dir.path());
    let Err(err) = result else {
        panic!("expected the pipeline to be unavailable")
    };
    assert!(
        matches!(err, VideoError::Detector(DetectError::Runtime(_))),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("video pipeline unavailable")
            && text.contains("/nonexistent/libonnxruntime.so"),
        "{text}"
    );
}
