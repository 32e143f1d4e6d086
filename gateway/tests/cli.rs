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
    for kind in ["compound", "street-station"] {
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
