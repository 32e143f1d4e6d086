//! Whether a gateway already runs on the data directory, and whether every listener the
//! configuration binds can be bound.

use std::fs::{File, TryLockError};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use edge_config::{BrokerMode, Config};

use super::report::Check;
use crate::status::{StatusFile, STALE_AFTER, STATUS_FILE};
use crate::uplink::now_ms;

/// The data directory's lock file (see `daemon`): held while a gateway runs on it.
const LOCK_FILE: &str = "gateway.lock";

/// Whether a gateway runs on the data directory, and how we know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub data_dir: PathBuf,
    /// Its lock file is held, or its status file is fresh.
    pub running: bool,
    /// The pid in a fresh `status.json`.
    pub pid: Option<u32>,
    /// The fresh status file, if any (its ingest counters name rejected devices).
    pub status: Option<StatusFile>,
}

impl Presence {
    /// Looks at the lock file and `status.json` in `data_dir`, creating nothing.
    pub fn of(data_dir: &Path) -> Presence {
        let status = StatusFile::read(&data_dir.join(STATUS_FILE))
            .ok()
            .filter(|s| {
                let stale = i64::try_from(STALE_AFTER.as_millis()).unwrap_or(i64::MAX);
                now_ms().saturating_sub(s.updated_at_ms) <= stale
            });
        Presence {
            data_dir: data_dir.to_owned(),
            running: lock_held(&data_dir.join(LOCK_FILE)) || status.is_some(),
            pid: status.as_ref().map(|s| s.pid),
            status,
        }
    }

    /// The `gateway` line of the report.
    pub fn check(&self) -> Check {
        let dir = self.data_dir.display();
        match (self.running, self.pid) {
            (true, Some(pid)) => Check::ok("gateway", format!("running (pid {pid}) on {dir}")),
            (true, None) => Check::ok("gateway", format!("running on {dir} (its lock is held)")),
            (false, _) => Check::ok("gateway", format!("not running on {dir}")),
        }
    }
}

/// Whether another process holds the lock file. Taking the lock for an instant is the only
/// portable way to ask; a gateway starting in that very instant would report the data
/// directory in use and exit (its service manager restarts it).
fn lock_held(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => false,
    }
}

/// One listener of the configuration: its name in the report, the key that sets it, its
/// address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: &'static str,
    pub key: &'static str,
    pub addr: SocketAddr,
}

/// Every address the gateway binds with `config`.
pub fn listeners(config: &Config) -> Vec<Listener> {
    let mut out = Vec::new();
    let b = &config.broker;
    if b.mode == BrokerMode::Embedded {
        out.push(Listener {
            name: "port broker",
            key: "broker.bind",
            addr: b.bind_addr(),
        });
        if let Some(addr) = b.v5_bind {
            out.push(Listener {
                name: "port broker v5",
                key: "broker.v5_bind",
                addr,
            });
        }
        if let Some(addr) = b.tls_bind_addr() {
            out.push(Listener {
                name: "port broker TLS",
                key: "broker.tls.bind",
                addr,
            });
        }
    }
    out.push(Listener {
        name: "port console",
        key: "console.bind",
        addr: config.console.bind,
    });
    if let Some(addr) = config.residents.bind {
        out.push(Listener {
            name: "port residents",
            key: "residents.bind",
            addr,
        });
    }
    out
}

/// Binds each listener for an instant (port 0 needs no check: any free port will do).
pub fn checks(config: &Config, presence: &Presence) -> Vec<Check> {
    listeners(config)
        .into_iter()
        .map(|l| check(&l, presence))
        .collect()
}

fn check(l: &Listener, presence: &Presence) -> Check {
    let addr = l.addr;
    if addr.port() == 0 {
        return Check::ok(
            l.name,
            format!("{addr}: any free port ({} = port 0)", l.key),
        );
    }
    match TcpListener::bind(addr) {
        Ok(listener) => {
            drop(listener);
            Check::ok(l.name, format!("{addr} is free"))
        }
        Err(e) => bind_failure(l, presence, e),
    }
}

fn bind_failure(l: &Listener, presence: &Presence, e: std::io::Error) -> Check {
    let (addr, port, key) = (l.addr, l.addr.port(), l.key);
    match e.kind() {
        ErrorKind::AddrInUse if presence.running => {
            Check::ok(l.name, format!("{addr} is in use by the running gateway"))
        }
        ErrorKind::AddrInUse => Check::fail(
            l.name,
            format!("{addr} is in use by another program"),
            format!(
                "find it with `ss -ltnp 'sport = :{port}'` and stop it, or move {key} to a free \
                 port (if a gateway runs as another user, run doctor as that user to see it)"
            ),
        ),
        ErrorKind::AddrNotAvailable => Check::fail(
            l.name,
            format!("{addr}: this machine has no such address"),
            format!(
                "set {key} to one of this machine's addresses (`ip -br addr`), or 0.0.0.0 for all"
            ),
        ),
        ErrorKind::PermissionDenied => Check::fail(
            l.name,
            format!("{addr}: permission denied"),
            format!(
                "ports below 1024 need root or CAP_NET_BIND_SERVICE: move {key} to a port \
                 ≥ 1024, or grant the capability (`setcap cap_net_bind_service=+ep $(which gateway)`)"
            ),
        ),
        _ => Check::fail(
            l.name,
            format!("{addr}: cannot bind: {e}"),
            format!("check {key}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::State;

    fn config(body: &str) -> Config {
        let text = format!("[site]\nid = \"t\"\nname = \"T\"\nkind = \"compound\"\n{body}\n");
        edge_config::parse(&text, "t.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn absent() -> Presence {
        Presence::of(Path::new("/nonexistent/doctor-test"))
    }

    #[test]
    fn a_port_held_by_another_program_fails_with_how_to_find_it() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let c = config(&format!(
            "[broker]\nbind = \"127.0.0.1:0\"\n[console]\nbind = \"127.0.0.1:{port}\"\n"
        ));
        let checks = checks(&c, &absent());
        assert_eq!(checks.len(), 2, "{checks:?}");
        assert_eq!(checks[0].state, State::Ok, "port 0 is always fine");
        let console = &checks[1];
        assert_eq!(console.name, "port console");
        assert_eq!(console.state, State::Fail);
        assert!(
            console.finding.contains("in use by another program"),
            "{console:?}"
        );
        let fix = console.fix.as_deref().unwrap();
        assert!(
            fix.contains(&format!("ss -ltnp 'sport = :{port}'")),
            "{fix}"
        );
        assert!(fix.contains("console.bind"), "{fix}");
    }

    #[test]
    fn a_port_in_use_while_the_gateway_runs_is_its_own() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let c = config(&format!("[broker]\nbind = \"127.0.0.1:{port}\"\n"));
        let running = Presence {
            running: true,
            ..absent()
        };
        let broker = &checks(&c, &running)[0];
        assert_eq!(broker.state, State::Ok);
        assert!(
            broker.finding.contains("in use by the running gateway"),
            "{broker:?}"
        );
    }

    #[test]
    fn a_held_lock_file_means_a_gateway_runs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!Presence::of(dir.path()).running, "no lock file, no status");
        let lock = File::create(dir.path().join(LOCK_FILE)).unwrap();
        assert!(
            !Presence::of(dir.path()).running,
            "a lock file nobody holds"
        );
        lock.lock().unwrap();
        let p = Presence::of(dir.path());
        assert!(p.running);
        assert!(p.check().finding.starts_with("running on"), "{p:?}");
        drop(lock);
        assert!(!Presence::of(dir.path()).running, "released");
    }

    #[test]
    fn the_tls_and_residents_listeners_are_checked_too() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "not checked here").unwrap();
        std::fs::write(&key, "not checked here").unwrap();
        let c = config(&format!(
            "[broker]\nbind = \"127.0.0.1:0\"\ntls = {{ cert = {:?}, key = {:?}, bind = \"127.0.0.1:0\" }}\n[residents]\nbind = \"127.0.0.1:0\"\n",
            cert.display().to_string(),
            key.display().to_string()
        ));
        let names: Vec<&str> = listeners(&c).iter().map(|l| l.name).collect();
        assert_eq!(
            names,
            [
                "port broker",
                "port broker TLS",
                "port console",
                "port residents"
            ]
        );
    }
}
