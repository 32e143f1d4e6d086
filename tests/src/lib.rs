//! Helpers shared by the end-to-end scenarios: locate the built binaries, start a gateway
//! as a real child process, read its JSON log lines, signal it.

pub mod browser;
pub mod cameras;
pub mod cluster;
pub mod fleet;
pub mod http;
pub mod live;
pub mod memory;
pub mod mqtt;
pub mod sim;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The workspace root (where `Cargo.toml` of the workspace lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of a binary built by this workspace (`gateway`, `sim`) in the same profile as the
/// running test. Cargo builds every workspace binary before `cargo test --workspace` runs.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not built; run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// The demo configuration shipped with edge-config.
pub fn demo_config() -> PathBuf {
    workspace_root().join("edge-config/examples/demo.toml")
}

/// Writes a test configuration into `dir` and returns its path. `body` is TOML appended after
/// a `[site]` table (id `test-site`), `[broker]` and `[console]` both bound to 127.0.0.1:0, so
/// tests never clash on ports.
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let text = format!(
        "[site]\nid = \"test-site\"\nname = \"Test compound\"\nkind = \"compound\"\n\n[broker]\nbind = \"127.0.0.1:0\"\n\n[console]\nbind = \"127.0.0.1:0\"\n\n{body}\n"
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("write test config");
    path
}

/// A copy of the demo configuration in `dir` with every listener on a free loopback port,
/// so tests can run the demo compound side by side.
pub fn demo_config_on_free_ports(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(demo_config()).expect("read demo.toml");
    let text = text
        .replace("bind = \"127.0.0.1:1883\"", "bind = \"127.0.0.1:0\"")
        .replace("\"127.0.0.1:8080\"", "\"127.0.0.1:0\"");
    let path = dir.join("demo.toml");
    std::fs::write(&path, text).expect("write demo copy");
    path
}

/// A gateway running as a child process with JSON logs captured line by line.
pub struct Gateway {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every log line seen so far (for assertions and failure messages).
    pub seen: Vec<String>,
}

impl Gateway {
    /// Starts `gateway --log-format json run --config CONFIG --data-dir DATA`.
    pub fn start(config: &Path, data_dir: &Path) -> Gateway {
        Self::start_with(config, data_dir, &[])
    }

    /// Like [`Gateway::start`] with extra `run` arguments.
    pub fn start_with(config: &Path, data_dir: &Path, extra: &[&str]) -> Gateway {
        let mut command = Command::new(bin("gateway"));
        command
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra);
        Self::spawn(command)
    }

    /// Runs `command`, which must end up exec-ing the gateway with `--log-format json` (e.g.
    /// through a wrapper that prepares its environment first).
    pub fn spawn(mut command: Command) -> Gateway {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gateway");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Gateway {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line whose `message` field equals `message`; returns it parsed.
    pub fn wait_for_message(&mut self, message: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if v["message"] == message {
                            return v;
                        }
                    }
                }
                Err(_) => panic!(
                    "no log line {message:?} within {timeout:?}; log so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the readiness line and returns the embedded broker's real address (the
    /// config may ask for port 0).
    pub fn wait_ready(&mut self) -> std::net::SocketAddr {
        let ready = self.wait_for_message("gateway ready", Duration::from_secs(30));
        ready["broker"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("readiness line has no broker address: {ready}"))
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Drains the log lines that arrived so far.
    pub fn drain_log(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits for the process to exit, up to `timeout`; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain_log();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` every 50 ms until it yields a value or `timeout` passes; then panics with
/// `what` and the last thing `check` saw. The simulators' own tests use the same one.
pub use simulators::wait::{eventually, reached};
