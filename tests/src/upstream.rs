//! The platform side of store-and-forward scenarios: a real Debian `mosquitto` started on
//! free loopback ports with a generated configuration (TLS listener for the gateway, a plain
//! listener for the test's own observer, a password file made with `mosquitto_passwd`,
//! throwaway CA and server certificates from `rcgen`), and a [`Collector`] that subscribes
//! to everything the gateway sends and reports missing, duplicate and out-of-order alerts.
//!
//! mosquitto runs with persistence on, so the collector's QoS 1 session (clean_session =
//! false) survives [`Upstream::stop`] / [`Upstream::restart`]: nothing the gateway sends
//! after a restart can be lost between the broker coming back and the collector
//! re-subscribing.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// The user the gateway logs in as.
pub const USER: &str = "gateway";
/// Its password (in the mosquitto password file and in `gw.pass` for `password_file`).
pub const PASSWORD: &str = "s3cret-upl1nk";
/// The observer's login.
pub const OBSERVER: (&str, &str) = ("observer", "observer-pw");

/// Which server certificate mosquitto presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCert {
    /// Signed by the CA the gateway is configured with.
    Trusted,
    /// Signed by another CA: the gateway must refuse it.
    Rogue,
}

/// CA and server certificates written into a directory.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA the gateway trusts (`uplink.tls.ca`).
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

/// Writes a CA, a server certificate for `127.0.0.1`/`localhost` signed by it, and a second
/// ("rogue") CA with its own server certificate for the same names.
pub fn throwaway_pki(dir: &Path) -> Pki {
    let issue = |name: &str| {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
            .expect("self-signed CA");
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params")
            .signed_by(&key, &ca)
            .expect("server certificate");
        (ca.pem(), cert.pem(), key.serialize_pem())
    };
    let (ca, cert, key) = issue("platform");
    let (_rogue_ca, rogue_cert, rogue_key) = issue("rogue");
    let pki = Pki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        rogue_cert: dir.join("rogue.pem"),
        rogue_key: dir.join("rogue.key"),
    };
    for (path, text) in [
        (&pki.ca, ca),
        (&pki.server_cert, cert),
        (&pki.server_key, key),
        (&pki.rogue_cert, rogue_cert),
        (&pki.rogue_key, rogue_key),
    ] {
        std::fs::write(path, text).expect("write PKI file");
    }
    pki
}

/// A free loopback port (bound and released; the broker binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

/// A mosquitto process: TLS + password on `tls_port` (for the gateway), password on
/// `plain_port` (for the test's observer). Killed on drop.
pub struct Upstream {
    child: Option<Child>,
    pub dir: PathBuf,
    pub pki: Pki,
    pub tls_port: u16,
    pub plain_port: u16,
    conf: PathBuf,
    log: PathBuf,
}

impl Upstream {
    /// Starts mosquitto in `dir` with the trusted server certificate.
    pub fn start(dir: &Path) -> Upstream {
        Self::start_with(dir, ServerCert::Trusted)
    }

    pub fn start_with(dir: &Path, cert: ServerCert) -> Upstream {
        let dir = dir.join("upstream");
        std::fs::create_dir_all(&dir).expect("upstream dir");
        let pki = throwaway_pki(&dir);
        let passwd = dir.join("passwd");
        for (i, (user, password)) in [(USER, PASSWORD), OBSERVER].into_iter().enumerate() {
            let mut cmd = Command::new("mosquitto_passwd");
            cmd.arg("-b");
            if i == 0 {
                cmd.arg("-c");
            }
            let status = cmd
                .arg(&passwd)
                .args([user, password])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("mosquitto_passwd (install mosquitto: ./x deps)");
            assert!(status.success(), "mosquitto_passwd failed");
        }
        std::fs::write(dir.join("gw.pass"), format!("{PASSWORD}\n")).expect("gw.pass");
        std::fs::write(dir.join("wrong.pass"), "not-the-password\n").expect("wrong.pass");
        let (cert_file, key_file) = match cert {
            ServerCert::Trusted => (&pki.server_cert, &pki.server_key),
            ServerCert::Rogue => (&pki.rogue_cert, &pki.rogue_key),
        };
        let (tls_port, plain_port) = (free_port(), free_port());
        // mosquitto drops root privileges to user `mosquitto` unless told otherwise; it
        // could then not read this private temporary directory.
        // SAFETY: geteuid has no preconditions.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        let conf = dir.join("mosquitto.conf");
        let text = format!(
            "# generated by tests/src/upstream.rs
{run_as}per_listener_settings false
allow_anonymous false
password_file {passwd}
persistence true
persistence_location {dir}/
autosave_interval 3600
max_queued_messages 0
max_inflight_messages 100
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection_messages true

listener {tls_port} 127.0.0.1
cafile {ca}
certfile {cert}
keyfile {key}
require_certificate false

listener {plain_port} 127.0.0.1
",
            passwd = passwd.display(),
            dir = dir.display(),
            ca = pki.ca.display(),
            cert = cert_file.display(),
            key = key_file.display(),
        );
        std::fs::write(&conf, text).expect("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        let mut me = Upstream {
            child: None,
            dir,
            pki,
            tls_port,
            plain_port,
            conf,
            log,
        };
        me.launch();
        me
    }

    fn launch(&mut self) {
        // On a loaded 2-core CI machine a restarted mosquitto has been seen not to listen
        // within 10 s; give each start 15 s and try up to three times before failing.
        for attempt in 1..=3 {
            if self.try_launch(Duration::from_secs(15)) {
                return;
            }
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            eprintln!("mosquitto attempt {attempt} did not listen; retrying");
        }
        panic!(
            "mosquitto did not listen after 3 attempts; its log:\n{}",
            self.log_text()
        );
    }

    fn try_launch(&mut self, wait: Duration) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("mosquitto log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto (install it: ./x deps)");
        self.child = Some(child);
        let deadline = Instant::now() + wait;
        for port in [self.tls_port, self.plain_port] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        true
    }

    /// Stops mosquitto (SIGTERM, so it saves its sessions) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts mosquitto again on the same ports with the same configuration.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// mosquitto's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An `[uplink]` section for the gateway: TLS with the test CA, `password_file`, fast
    /// reconnects. `password_file` names `gw.pass` (right) or `wrong.pass`.
    pub fn uplink_toml(&self, password_file: &str) -> String {
        format!(
            r#"
[uplink]
host = "127.0.0.1"
port = {port}
username = "{USER}"
password_file = "{pass}"
keep_alive_s = 5
tls = {{ ca = "{ca}" }}

[uplink.outbox]
retry_backoff_max_s = 1
"#,
            port = self.tls_port,
            pass = self.dir.join(password_file).display(),
            ca = self.pki.ca.display(),
        )
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One alert event as received upstream.
#[derive(Debug, Clone)]
pub struct Received {
    pub seq: u64,
    pub json: serde_json::Value,
}

#[derive(Debug, Default)]
struct Seen {
    alerts: Vec<Received>,
    telemetry: Vec<serde_json::Value>,
    /// Topic of every message in arrival order: "alerts" or "telemetry".
    order: Vec<(String, String)>,
}

/// What arrived, judged against the expected sequence numbers.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub received: usize,
    pub distinct: usize,
    /// Messages whose `seq` had already arrived (re-sent after a reconnect or a crash).
    pub duplicates: usize,
    /// Expected sequence numbers that never arrived.
    pub missing: Vec<u64>,
    /// New sequence numbers that arrived after a higher one (ordering violations).
    pub out_of_order: Vec<u64>,
}

/// Judges a stream of sequence numbers: every expected one present, first arrivals
/// increasing, repeats counted as duplicates.
pub fn judge(
    arrivals: impl IntoIterator<Item = u64>,
    expected: impl IntoIterator<Item = u64>,
) -> Report {
    let mut seen = BTreeSet::new();
    let mut report = Report::default();
    let mut max = None;
    for seq in arrivals {
        report.received += 1;
        if !seen.insert(seq) {
            report.duplicates += 1;
            continue;
        }
        if max.is_some_and(|m| seq < m) {
            report.out_of_order.push(seq);
        }
        max = max.max(Some(seq));
    }
    report.distinct = seen.len();
    report.missing = expected.into_iter().filter(|s| !seen.contains(s)).collect();
    report
}

/// A subscriber on the upstream broker's plain listener: `{prefix}/{site}/#`, QoS 1,
/// persistent session (survives broker restarts), reconnecting forever.
pub struct Collector {
    pub client: AsyncClient,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Connects as `id`, subscribes to `shouwang/test-site/#` and waits for the SUBACK.
    pub async fn start(upstream: &Upstream, id: &str) -> Collector {
        let mut options = MqttOptions::new(id, "127.0.0.1", upstream.plain_port);
        options
            .set_credentials(OBSERVER.0, OBSERVER.1)
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(false)
            .set_max_packet_size(2 << 20, 2 << 20);
        let (client, mut events) = AsyncClient::new(options, 1024);
        let mut net = events.network_options();
        net.set_tcp_nodelay(true);
        events.set_network_options(net);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (subacked_tx, mut subacked) = tokio::sync::mpsc::unbounded_channel();
        let sub_client = client.clone();
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if !ack.session_present {
                            let _ =
                                sub_client.try_subscribe("shouwang/test-site/#", QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subacked_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json: serde_json::Value =
                            serde_json::from_slice(&p.payload).unwrap_or(serde_json::Value::Null);
                        let mut seen = sink.lock().expect("collector lock");
                        let stream = p.topic.rsplit('/').next().unwrap_or("").to_owned();
                        seen.order.push((
                            stream.clone(),
                            json["level"].as_str().unwrap_or("").to_owned(),
                        ));
                        if stream == "alerts" {
                            if let Some(seq) = json["seq"].as_u64() {
                                seen.alerts.push(Received { seq, json });
                            }
                        } else if stream == "telemetry" {
                            seen.telemetry.push(json);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subacked.recv())
            .await
            .expect("collector SUBACK within 10 s");
        Collector { client, seen, task }
    }

    /// Every alert event received so far, in arrival order.
    pub fn alerts(&self) -> Vec<Received> {
        self.seen.lock().expect("collector lock").alerts.clone()
    }

    /// Telemetry messages received so far.
    pub fn telemetry(&self) -> Vec<serde_json::Value> {
        self.seen.lock().expect("collector lock").telemetry.clone()
    }

    /// (stream, level) of every message in arrival order.
    pub fn order(&self) -> Vec<(String, String)> {
        self.seen.lock().expect("collector lock").order.clone()
    }

    /// Distinct alert sequence numbers received that satisfy `keep`.
    pub fn distinct_seqs(&self, keep: impl Fn(&Received) -> bool) -> BTreeSet<u64> {
        self.seen
            .lock()
            .expect("collector lock")
            .alerts
            .iter()
            .filter(|r| keep(r))
            .map(|r| r.seq)
            .collect()
    }

    /// Waits until `done` holds for the alerts received so far; false on timeout.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.seen.lock().expect("collector lock").alerts) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Judges the alerts received so far that satisfy `keep` against `expected`.
    pub fn report(
        &self,
        expected: impl IntoIterator<Item = u64>,
        keep: impl Fn(&Received) -> bool,
    ) -> Report {
        let alerts = self.alerts();
        judge(alerts.iter().filter(|r| keep(r)).map(|r| r.seq), expected)
    }

    /// Counts of alerts received per `seq` (for diagnostics).
    pub fn counts(&self) -> HashMap<u64, usize> {
        let mut counts = HashMap::new();
        for r in self.alerts() {
            *counts.entry(r.seq).or_insert(0) += 1;
        }
        counts
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Seeds the outbox of the database at `db` (creating it) with rows, as the alert store and
/// the telemetry writer would: alert rows with `synchronous=FULL`. Each payload is JSON with
/// `id`, `seq`, `level` and a `pad` of `pad` bytes; `origin: "seeded"` marks them.
pub fn seed_outbox(db: &Path, rows: &[(gateway::outbox::Class, Option<u64>)], pad: usize) {
    use gateway::outbox::{self, Class, Durability, NewMessage};
    std::fs::create_dir_all(db.parent().expect("db has a parent")).expect("data dir");
    drop(outbox::Outbox::open(db).expect("open outbox"));
    let mut conn = rusqlite::Connection::open(db).expect("open db");
    let padding = "x".repeat(pad);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let msgs: Vec<NewMessage> = rows
        .iter()
        .map(|(class, seq)| {
            let key = ulid::Ulid::generate().to_string();
            let level = match class {
                Class::Alarm => "red",
                Class::Warning => "yellow",
                Class::Notice => "blue",
                Class::Telemetry => "",
            };
            let payload = serde_json::json!({
                "id": key, "seq": seq, "level": level, "origin": "seeded", "pad": padding,
            })
            .to_string()
            .into_bytes();
            match seq {
                Some(seq) => NewMessage::alert(*class, key, *seq, payload, now),
                None => NewMessage::telemetry(key, payload, now),
            }
        })
        .collect();
    for chunk in msgs.chunks(5000) {
        outbox::commit_with(&mut conn, Durability::for_messages(chunk), |tx| {
            outbox::enqueue_batch(tx, chunk)
        })
        .expect("seed outbox");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_judge_counts_duplicates_and_finds_gaps_and_reordering() {
        let r = judge([1, 2, 3, 2, 3, 4, 6, 5], 1..=7);
        assert_eq!(r.received, 8);
        assert_eq!(r.duplicates, 2);
        assert_eq!(r.missing, vec![7]);
        assert_eq!(r.out_of_order, vec![5]);
    }
}
