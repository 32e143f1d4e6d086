//! Child processes and loopback ports, for the simulators that start other programs
//! (`sim upstream` runs mosquitto) and for the tests that start the simulators, the gateway
//! or mosquitto: one way to find a free port, to wait until a server listens, and to stop a
//! child so that it can clean up.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

/// A free loopback port: bound, then released for a server started right after to bind.
pub fn free_port() -> std::io::Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// Polls every 20 ms until every one of `ports` on 127.0.0.1 accepts a TCP connection.
/// Returns the first port that still refused when `wait` ran out or `alive` said the server
/// is gone (a server that died cannot start listening); `None` once all of them listen.
pub fn wait_listening(
    ports: &[u16],
    wait: Duration,
    mut alive: impl FnMut() -> bool,
) -> Option<u16> {
    let deadline = Instant::now() + wait;
    for &port in ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if Instant::now() >= deadline || !alive() {
                return Some(port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    None
}

/// Whether `child` is still running.
pub fn is_running(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// Stops `child`: SIGTERM first, so that it can clean up (mosquitto saves its sessions,
/// `sim upstream` stops its mosquitto), SIGKILL if it is still running after `grace`; then
/// reaps it.
pub fn terminate(child: &mut Child, grace: Duration) {
    if is_running(child) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions; the
        // child is not reaped yet, so the pid is still its own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while is_running(child) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A child process stopped with [`terminate`] (1 s of grace) when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        terminate(&mut self.0, Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn a_port_is_found_free_then_seen_listening() {
        let port = free_port().unwrap();
        assert_eq!(
            wait_listening(&[port], Duration::from_millis(100), || true),
            Some(port),
            "nothing listens on a free port"
        );
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        assert_eq!(
            wait_listening(&[port], Duration::from_secs(5), || true),
            None
        );
        drop(listener);
    }

    #[test]
    fn waiting_for_a_server_that_died_gives_up_at_once() {
        let port = free_port().unwrap();
        let started = Instant::now();
        assert_eq!(
            wait_listening(&[port], Duration::from_secs(30), || false),
            Some(port)
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_guarded_child_is_stopped_and_reaped_on_drop() {
        let child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        drop(ChildGuard(child));
        // SAFETY: signal 0 only checks whether the pid exists.
        let exists = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!exists, "the child was reaped: its pid is gone");
    }
}
