//! `gateway reload`: asks the running gateway of a data directory to re-read its
//! configuration (SIGHUP to the pid in its `status.json`), waits for the outcome it writes
//! to `reload.json`, prints it and exits 0 (applied or nothing to apply), 78 (the file was
//! refused: nothing changed) or 1 (no gateway, or no answer in time).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::{read_outcome, Outcome, Verdict};
use crate::status::{StatusFile, STATUS_FILE};

/// sysexits.h EX_CONFIG.
const EX_CONFIG: u8 = 78;

/// How often `reload.json` is looked at while waiting.
const POLL: Duration = Duration::from_millis(50);

/// Why the reload could not be asked for or answered.
#[derive(Debug, thiserror::Error)]
pub enum ReloadCliError {
    #[error("no running gateway in {0}: its status.json is missing or unreadable ({1})")]
    NoStatus(String, String),
    #[error("the gateway of {dir} (pid {pid}) is not running")]
    NotRunning { dir: String, pid: u32 },
    #[error("cannot signal pid {pid}: {source}")]
    Signal { pid: u32, source: std::io::Error },
    #[error("no reload outcome from pid {0} within {1:?}")]
    NoAnswer(u32, Duration),
}

/// Signals the gateway of `data_dir` and waits up to `timeout` for its outcome.
pub fn request(data_dir: &Path, timeout: Duration) -> Result<Outcome, ReloadCliError> {
    let status = StatusFile::read(&data_dir.join(STATUS_FILE))
        .map_err(|e| ReloadCliError::NoStatus(data_dir.display().to_string(), e.to_string()))?;
    let pid = status.pid;
    if !crate::status::gateway_alive(pid) {
        return Err(ReloadCliError::NotRunning {
            dir: data_dir.display().to_string(),
            pid,
        });
    }
    let before = read_outcome(data_dir)
        .filter(|o| o.pid == pid)
        .map_or(0, |o| o.seq);
    hang_up(pid)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(o) = read_outcome(data_dir).filter(|o| o.pid == pid && o.seq > before) {
            return Ok(o);
        }
        if Instant::now() >= deadline {
            return Err(ReloadCliError::NoAnswer(pid, timeout));
        }
        std::thread::sleep(POLL);
    }
}

fn hang_up(pid: u32) -> Result<(), ReloadCliError> {
    let signal_err = |source| ReloadCliError::Signal { pid, source };
    let pid_t = libc::pid_t::try_from(pid)
        .map_err(|_| signal_err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: kill(2) with a pid read from the gateway's own status file and a valid signal
    // number has no memory effects; failure is reported through errno.
    let rc = unsafe { libc::kill(pid_t, libc::SIGHUP) };
    if rc == 0 {
        Ok(())
    } else {
        Err(signal_err(std::io::Error::last_os_error()))
    }
}

/// `gateway reload`: prints the outcome (text or JSON) and returns the exit code.
pub fn main(data_dir: &Path, timeout: Duration, json: bool) -> ExitCode {
    let outcome = match request(data_dir, timeout) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gateway reload: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome).unwrap_or_default()
        );
    } else {
        print!("{}", render(&outcome));
    }
    match outcome.result {
        Verdict::Applied | Verdict::Unchanged => ExitCode::SUCCESS,
        Verdict::Refused => ExitCode::from(EX_CONFIG),
    }
}

/// The outcome for a terminal.
pub fn render(o: &Outcome) -> String {
    let mut out = String::new();
    let head = match o.result {
        Verdict::Applied => "configuration reloaded",
        Verdict::Unchanged => "configuration valid; nothing a reload applies has changed",
        Verdict::Refused => "reload refused; the running configuration stays",
    };
    out.push_str(&format!("{head} ({})\n", o.file));
    for e in &o.errors {
        out.push_str(&format!("  error: {e}\n"));
    }
    for a in &o.applied {
        out.push_str(&format!("  applied: {a}\n"));
    }
    for k in &o.restart_needed {
        out.push_str(&format!("  needs a restart (running value kept): {k}\n"));
    }
    for n in &o.notes {
        out.push_str(&format!("  note: {n}\n"));
    }
    out
}
