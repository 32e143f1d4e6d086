//! `sim upstream`: a real upstream MQTT broker for demos and tests — Debian's `mosquitto`
//! started with a generated configuration in its own directory (never a system service).
//! With TLS, a throwaway CA and a server certificate for `127.0.0.1`/`localhost` are made
//! with `rcgen`; point the gateway's `uplink.tls.ca` at the CA file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use crate::process;

/// Errors of `sim upstream`.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot run mosquitto ({0}); install it with `./x deps` (Debian package mosquitto)")]
    NotInstalled(std::io::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("making the throwaway certificates failed: {0}")]
    Certificates(#[from] rcgen::Error),
    #[error("no free port: {0}")]
    NoPort(std::io::Error),
    #[error("mosquitto did not accept connections on port {port} within {wait:?}; its log: {log}")]
    NotListening {
        port: u16,
        wait: Duration,
        log: String,
    },
}

/// How to start the broker.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Directory for the configuration, certificates and log.
    pub dir: PathBuf,
    /// Plain MQTT port on 127.0.0.1 (0 = a free one).
    pub port: u16,
    /// Also serve TLS on this port (0 = a free one).
    pub tls_port: Option<u16>,
}

/// A running mosquitto; killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    pub tls_port: Option<u16>,
    /// The CA file clients must trust (with TLS).
    pub ca: Option<PathBuf>,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mosquitto {
    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        process::is_running(&mut self.child)
    }

    /// Stops the broker now.
    pub fn stop(mut self) {
        process::terminate(&mut self.child, Duration::from_secs(5));
    }
}

fn write(path: &Path, text: &str) -> Result<(), UpstreamError> {
    std::fs::write(path, text).map_err(|source| UpstreamError::Write {
        path: path.to_owned(),
        source,
    })
}

/// A free loopback port (bound, then released for the broker to bind).
pub fn free_port() -> Result<u16, UpstreamError> {
    process::free_port().map_err(UpstreamError::NoPort)
}

/// The files of one throwaway CA and of the server certificate it signed.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The CA certificate clients must trust.
    pub ca: PathBuf,
    /// The server certificate, for `127.0.0.1` and `localhost`.
    pub cert: PathBuf,
    /// The server certificate's private key.
    pub key: PathBuf,
}

/// Makes a throwaway CA and a server certificate for `127.0.0.1` and `localhost` signed by
/// it, and writes them into `dir` as `{stem}-ca.pem`, `{stem}.pem` and `{stem}.key`. Two
/// stems give two unrelated CAs (a trusted platform and a rogue one, say).
pub fn throwaway_pki(dir: &Path, stem: &str) -> Result<CertFiles, UpstreamError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("shouwang {stem} CA (throwaway)"),
    );
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
        .signed_by(&key, &ca)?;
    let files = CertFiles {
        ca: dir.join(format!("{stem}-ca.pem")),
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
    };
    write(&files.ca, &ca.pem())?;
    write(&files.cert, &cert.pem())?;
    write(&files.key, &key.serialize_pem())?;
    Ok(files)
}

/// The first line of a generated mosquitto configuration: as root, `user root`. mosquitto
/// otherwise drops root privileges to user `mosquitto`, and could then not read a private
/// temporary directory.
pub fn run_as_line() -> &'static str {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        "user root\n"
    } else {
        ""
    }
}

/// Runs `mosquitto -c config` with its standard error (`log_dest stderr`) appended to
/// `log`, and waits up to `wait` until it accepts connections on every one of `ports`. The
/// broker gets SIGTERM when the thread that started it ends, so that it cannot outlive a
/// killed test or simulator.
pub fn spawn_mosquitto(
    config: &Path,
    log: &Path,
    ports: &[u16],
    wait: Duration,
) -> Result<Child, UpstreamError> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| UpstreamError::Write {
            path: log.to_owned(),
            source,
        })?;
    let mut command = Command::new("mosquitto");
    command
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(UpstreamError::NotInstalled)?;
    match process::wait_listening(ports, wait, || process::is_running(&mut child)) {
        None => Ok(child),
        Some(port) => {
            process::terminate(&mut child, Duration::from_secs(1));
            Err(UpstreamError::NotListening {
                port,
                wait,
                log: std::fs::read_to_string(log).unwrap_or_default(),
            })
        }
    }
}

/// Starts mosquitto and waits until it accepts connections.
pub fn start(options: &UpstreamOptions) -> Result<Mosquitto, UpstreamError> {
    std::fs::create_dir_all(&options.dir).map_err(|source| UpstreamError::Write {
        path: options.dir.clone(),
        source,
    })?;
    let port = if options.port == 0 {
        free_port()?
    } else {
        options.port
    };
    let tls_port = match options.tls_port {
        Some(0) => Some(free_port()?),
        other => other,
    };
    let log = options.dir.join("mosquitto.log");
    let mut text = format!(
        "# generated by `sim upstream`\n{}per_listener_settings false\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n\nlistener {port} 127.0.0.1\n",
        run_as_line()
    );
    let mut ca = None;
    if let Some(tls) = tls_port {
        let pki = throwaway_pki(&options.dir, "platform")?;
        text.push_str(&format!(
            "\nlistener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            pki.ca.display(),
            pki.cert.display(),
            pki.key.display()
        ));
        ca = Some(pki.ca);
    }
    let config = options.dir.join("mosquitto.conf");
    write(&config, &text)?;
    let ports: Vec<u16> = std::iter::once(port).chain(tls_port).collect();
    let child = spawn_mosquitto(&config, &log, &ports, Duration::from_secs(5))?;
    Ok(Mosquitto {
        child,
        port,
        tls_port,
        ca,
        config,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn mosquitto_starts_on_a_free_port_with_tls_and_stops_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let m = start(&UpstreamOptions {
            dir: dir.path().to_owned(),
            port: 0,
            tls_port: Some(0),
        })
        .unwrap();
        let (port, tls) = (m.port, m.tls_port.unwrap());
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(TcpStream::connect(("127.0.0.1", tls)).is_ok());
        let ca = std::fs::read_to_string(m.ca.as_ref().unwrap()).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        // Dropping the handle kills and reaps mosquitto: its port is closed at once.
        drop(m);
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "stopped with its handle"
        );
    }
}
