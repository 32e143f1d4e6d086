//! The installer's CLI, run as the real binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
}

fn demo_toml() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../edge-config/examples/demo.toml")
}

#[test]
fn config_check_accepts_the_demo_compound() {
    let out = gateway()
        .args(["config", "check"])
        .arg(demo_toml())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

#[test]
fn config_init_output_passes_config_check_on_stdin() {
    // `street_station` is how the config file's `site.kind` spells it: installers copy it.
    for kind in ["compound", "street-station", "street_station"] {
        let init = gateway()
            .args(["config", "init", "--site-id", "test-site", "--kind", kind])
            .output()
            .unwrap();
        assert!(init.status.success(), "init --kind {kind} failed");
        let mut check = gateway()
            .args(["config", "check", "/dev/stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check.stdin.take().unwrap().write_all(&init.stdout).unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "starter for {kind} does not validate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn config_check_exits_78_and_prints_every_error_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[site]\nid = \"x\"\nname = \"x\"\nkind = \"compound\"\ncolour = \"red\"\n\n[storage]\nquota_mbb = 3\n",
    )
    .unwrap();
    let out = gateway()
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:5:1: site.colour")),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:8:1: storage.quota_mbb")),
        "stderr: {stderr}"
    );
}

#[test]
fn run_with_a_broken_config_exits_78_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[site\n").unwrap();
    let out = gateway()
        .args(["run", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        !dir.path().join("data").exists(),
        "must not touch the data dir"
    );
}

#[test]
fn help_shows_examples_and_version_is_printed() {
    let help = gateway().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Examples:"));
    let version = gateway().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("gateway 0."));
}

/// Two MPEG-TS segments of bikes.mp4, each encoded on its own with timestamps starting at
/// zero, joined byte-wise: what an encoder restart inside one session sends.
fn restarted_encoder_clip(dir: &std::path::Path) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut joined = Vec::new();
    for (i, start) in ["0", "4"].iter().enumerate() {
        let segment = dir.join(format!("segment{i}.ts"));
        let status = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-ss", start, "-i"])
            .arg(root.join("vendor/footage/bikes.mp4"))
            .args([
                "-t", "2", "-an", "-c:v", "mpeg4", "-q:v", "5", "-f", "mpegts",
            ])
            .args(["-mpegts_copyts", "1", "-output_ts_offset", "0"])
            .arg(&segment)
            .status()
            .expect("ffmpeg is installed");
        assert!(status.success(), "ffmpeg made segment {i}");
        joined.extend(std::fs::read(&segment).unwrap());
    }
    let path = dir.join("restarted.ts");
    std::fs::write(&path, joined).unwrap();
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v", "-show_entries"])
        .args(["packet=pts_time", "-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe is installed");
    let pts: Vec<f64> = String::from_utf8_lossy(&probe.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    assert_eq!(pts.len(), 100, "2 × 2 s at 25 fps: {pts:?}");
    let back: Vec<_> = pts.windows(2).filter(|w| w[1] < w[0]).collect();
    assert_eq!(back.len(), 1, "timestamps go back once: {pts:?}");
    assert!(back[0][0] > 1.9 && back[0][1] < 0.05, "{back:?}");
    path
}

#[test]
fn a_camera_whose_timestamps_jump_back_keeps_being_analysed() {
    let dir = tempfile::tempdir().unwrap();
    let clip = restarted_encoder_clip(dir.path());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = gateway()
        .args(["detect", "--json", "--fps", "5", "--input"])
        .arg(&clip)
        .arg("--models-dir")
        .arg(root.join("models"))
        .arg("--onnxruntime")
        .arg(root.join("vendor/onnxruntime/libonnxruntime.so"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let frames: Vec<&serde_json::Value> = lines.iter().filter(|v| v["seq"].is_u64()).collect();
    // 4 s of video at 5 frames/s; the second segment's frames continue the camera clock.
    assert!(
        (19..=21).contains(&frames.len()),
        "about 20 frames analysed over both segments, got {}; stderr: {stderr}",
        frames.len()
    );
    let after_jump = frames
        .iter()
        .filter(|f| f["t"].as_f64().is_some_and(|t| t >= 2.0))
        .count();
    assert!(after_jump >= 9, "frames after the jump: {after_jump}");
    assert!(frames.iter().all(|f| f["detected"] == true));
    let times: Vec<f64> = frames.iter().filter_map(|f| f["t"].as_f64()).collect();
    assert!(
        times.windows(2).all(|w| w[1] > w[0]),
        "camera time goes forward: {times:?}"
    );
    let stats = &lines.last().expect("a summary line")["stats"];
    assert_eq!(stats["decoded"], 100, "{stats}");
    assert_eq!(stats["analysed"], frames.len(), "{stats}");
    assert_eq!(stats["discontinuities"], 1, "{stats}");
    assert_eq!(stats["analysis_stalls"], 0, "{stats}");
    assert!(
        stderr.contains("decoded 100, analysed 2") && stderr.contains("discontinuities 1"),
        "the text summary carries the counters: {stderr}"
    );
}
