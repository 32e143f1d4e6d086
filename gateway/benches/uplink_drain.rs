//! Uplink benchmark, one run, one machine, one real Debian mosquitto on a free loopback port:
//!
//! 1. outbox insert rate: 100,000 alarm rows committed with `synchronous=FULL` in batches of
//!    1,000, and 2,000 rows one transaction each (the alert store's path);
//! 2. mosquitto's own QoS 1 accept rate: a plain rumqttc publisher with no store and the same
//!    in-flight window, 100,000 messages of the same size, first publish → last PUBACK; and
//!    `mosquitto_pub -q 1 -l` publishing the same number of lines;
//! 3. backlog drain rate: the gateway's uplink (`Link`) draining 100,000 buffered rows, first
//!    connect → last row deleted, over plain TCP and over TLS with a password, with the
//!    default window (64) and a wider one (512).
//!
//! Besides wall-clock msg/s, every publishing phase reports its **CPU time per message**: the
//! bench process's user + system time (`getrusage(RUSAGE_SELF)`: every thread, the tokio
//! workers and the SQLite blocking threads alike) and mosquitto's (`/proc/<pid>/stat`), from
//! the first publish (connect, for the drain) to the last PUBACK (row deleted). On a shared,
//! noisy machine the CPU ratio drain / raw is the comparable figure; wall clock needs a quiet
//! one.
//!
//! Run: `cargo bench -p gateway --bench uplink_drain` (release build). Needs `mosquitto`,
//! `mosquitto_passwd` and `mosquitto_pub` (`./x deps`). Figures go in the README.
//! `UPLINK_DRAIN_QUICK=1` runs only the plain TCP windows (64, 512), without the insert rates
//! and `mosquitto_pub`; with `UPLINK_DRAIN_ONLY=raw` or `=drain` it runs only that side (for
//! profiling one side: `perf record -g` on the bench binary).

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::outbox::{self, Class, Durability, NewMessage, Outbox};
use gateway::uplink::{Link, LinkSettings, SharedOutbox, UplinkStatus};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;

const ROWS: u64 = 100_000;
const PAYLOAD: usize = 512;

struct Mosquitto {
    child: Child,
    plain: u16,
    tls: u16,
    dir: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn mosquitto(dir: &Path) -> Mosquitto {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let status = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(dir.join("passwd"))
        .args(["bench", "bench-pw"])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    let (plain, tls) = (free_port(), free_port());
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc_geteuid() } == 0 {
        "user root\n"
    } else {
        ""
    };
    let conf = format!(
        "{user}per_listener_settings false\nallow_anonymous false\npassword_file {d}/passwd\n\
         persistence false\nmax_queued_messages 0\nlog_dest none\n\
         listener {plain} 127.0.0.1\n\
         listener {tls} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
        d = dir.display()
    );
    std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (./x deps)");
    for port in [plain, tls] {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Mosquitto {
        child,
        plain,
        tls,
        dir: dir.to_owned(),
    }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn payload(seq: u64) -> Vec<u8> {
    let mut p = format!("{{\"id\":\"bench-{seq}\",\"seq\":{seq},\"level\":\"red\",\"pad\":\"");
    while p.len() < PAYLOAD - 2 {
        p.push('x');
    }
    p.push_str("\"}");
    p.into_bytes()
}

fn messages(from: u64, n: u64) -> Vec<NewMessage> {
    (from..from + n)
        .map(|seq| {
            NewMessage::alert(
                Class::Alarm,
                ulid::Ulid::generate().to_string(),
                seq,
                payload(seq),
                0,
            )
        })
        .collect()
}

/// Seeds `ROWS` rows in batches of 1,000 (FULL); returns rows/s.
fn seed(db: &Path) -> f64 {
    drop(Outbox::open(db).unwrap());
    let mut conn = rusqlite::Connection::open(db).unwrap();
    outbox::configure_connection(&mut conn).unwrap();
    let msgs = messages(1, ROWS);
    let t = Instant::now();
    for chunk in msgs.chunks(1000) {
        outbox::commit_with(&mut conn, Durability::Full, |tx| {
            outbox::enqueue_batch(tx, chunk)
        })
        .unwrap();
    }
    ROWS as f64 / t.elapsed().as_secs_f64()
}

/// 2,000 rows, one FULL transaction each (as the alert store commits); returns rows/s.
fn single_inserts(db: &Path) -> f64 {
    drop(Outbox::open(db).unwrap());
    let mut conn = rusqlite::Connection::open(db).unwrap();
    outbox::configure_connection(&mut conn).unwrap();
    let msgs = messages(1, 2000);
    let t = Instant::now();
    for m in &msgs {
        outbox::commit_with(&mut conn, Durability::Full, |tx| outbox::enqueue(tx, m)).unwrap();
    }
    2000.0 / t.elapsed().as_secs_f64()
}

/// CPU time (user + system) of this process and of mosquitto at one instant.
#[derive(Clone, Copy)]
struct Cpu {
    own: Duration,
    broker: Duration,
}

impl Cpu {
    fn now(broker_pid: u32) -> Self {
        Cpu {
            own: own_cpu(),
            broker: process_cpu(broker_pid),
        }
    }
}

/// User + system time of every thread of this process.
fn own_cpu() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we hand it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// User + system time of another process, from `/proc/<pid>/stat` (clock ticks).
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// One publishing phase: wall-clock rate and CPU per message.
#[derive(Clone, Copy)]
struct Phase {
    rate: f64,
    /// This process's CPU µs per message (every thread).
    own_us: f64,
    /// mosquitto's CPU µs per message.
    broker_us: f64,
}

impl Phase {
    fn measure(started: Instant, before: Cpu, broker_pid: u32) -> Self {
        let wall = started.elapsed().as_secs_f64();
        let after = Cpu::now(broker_pid);
        let per_msg = |d: Duration| d.as_secs_f64() * 1e6 / ROWS as f64;
        Phase {
            rate: ROWS as f64 / wall,
            own_us: per_msg(after.own.saturating_sub(before.own)),
            broker_us: per_msg(after.broker.saturating_sub(before.broker)),
        }
    }
}

/// A plain rumqttc publisher, no store, `window` in flight: first publish → last PUBACK.
async fn raw_publisher(port: u16, window: u16, broker_pid: u32) -> Phase {
    let mut o = MqttOptions::new(format!("raw-{window}"), "127.0.0.1", port);
    o.set_credentials("bench", "bench-pw")
        .set_inflight(window)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, usize::from(window) + 16);
    let mut net = events.network_options();
    net.set_tcp_nodelay(true);
    events.set_network_options(net);
    loop {
        if let Ok(Event::Incoming(Packet::ConnAck(_))) = events.poll().await {
            break;
        }
    }
    let topic = "bench/raw/alerts";
    let bodies: Vec<Vec<u8>> = (1..=ROWS).map(payload).collect();
    let cpu = Cpu::now(broker_pid);
    let t = Instant::now();
    let mut sent = 0_u64;
    let mut acked = 0_u64;
    let mut inflight = 0_u64;
    let mut bodies = bodies.into_iter();
    while acked < ROWS {
        while inflight < u64::from(window) && sent < ROWS {
            let body = bodies.next().unwrap_or_default();
            client
                .try_publish(topic, QoS::AtLeastOnce, false, body)
                .unwrap();
            sent += 1;
            inflight += 1;
        }
        match events.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                inflight -= 1;
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) | Ok(_) => {}
            Err(e) => panic!("raw publisher: {e}"),
        }
    }
    Phase::measure(t, cpu, broker_pid)
}

/// `mosquitto_pub -q 1 -l`: one message per stdin line, QoS 1.
fn mosquitto_pub(port: u16) -> f64 {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            "bench",
            "-P",
            "bench-pw",
        ])
        .args(["-q", "1", "-t", "bench/mosquitto_pub/alerts", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_pub");
    let mut lines = Vec::with_capacity(ROWS as usize * (PAYLOAD + 1));
    for seq in 1..=ROWS {
        lines.extend_from_slice(&payload(seq));
        lines.push(b'\n');
    }
    let t = Instant::now();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&lines).unwrap();
    }
    child.wait().unwrap();
    ROWS as f64 / t.elapsed().as_secs_f64()
}

/// The uplink draining `ROWS` seeded rows: first connect attempt → all rows deleted.
async fn drain(m: &Mosquitto, db: &Path, tls: bool, window: u16) -> (Phase, u64) {
    let tls_line = if tls {
        format!("tls = {{ ca = \"{}\" }}\n", m.dir.join("ca.pem").display())
    } else {
        String::new()
    };
    let toml = format!(
        "[site]\nid = \"bench\"\nname = \"Bench\"\nkind = \"compound\"\n\
         [uplink]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"bench\"\npassword = \"bench-pw\"\n\
         client_id = \"drain-{window}-{tls}\"\n{tls_line}\
         [uplink.outbox]\nmax_inflight = {window}\nbatch = 1000\n",
        port = if tls { m.tls } else { m.plain },
    );
    let config = edge_config::parse(&toml, "bench.toml", &m.dir).expect("bench config");
    let settings: LinkSettings = LinkSettings::from_config(&config).unwrap().unwrap();
    let status = Arc::new(UplinkStatus::new(Some(&settings)));
    let link = Link::new(
        settings,
        SharedOutbox::new(Outbox::open(db).unwrap()),
        status.clone(),
    );
    let token = CancellationToken::new();
    let broker_pid = m.child.id();
    let cpu = Cpu::now(broker_pid);
    let t = Instant::now();
    let task = tokio::spawn(link.run(token.clone()));
    while status.acked_total.load(Ordering::Relaxed) < ROWS {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(t.elapsed() < Duration::from_secs(600), "drain stalled");
    }
    let phase = Phase::measure(t, cpu, broker_pid);
    token.cancel();
    let _ = task.await;
    let left = outbox::stats(&rusqlite::Connection::open(db).unwrap())
        .unwrap()
        .backlog_total;
    (phase, left)
}

fn main() {
    let quick = std::env::var_os("UPLINK_DRAIN_QUICK").is_some();
    let dir = tempfile::tempdir().unwrap();
    let m = mosquitto(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let line = |s: String| println!("{s}");
    line(format!(
        "uplink drain benchmark: {ROWS} rows of {PAYLOAD} B, mosquitto {} on loopback, {} CPUs, load {}",
        mosquitto_version(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average(),
    ));
    if !quick {
        let single = single_inserts(&dir.path().join("single.db"));
        line(format!(
            "outbox insert, 1 row per FULL commit (alert path): {single:>10.0} rows/s"
        ));
    }
    let mut seeded = Vec::new();
    let mut plain = std::collections::HashMap::new();
    let runs: &[(bool, u16, bool)] = if quick {
        &[(false, 64, false), (false, 512, false)]
    } else {
        &[
            (false, 64, false),
            (false, 512, false),
            (true, 64, false),
            (true, 512, false),
            (false, 64, true),
            (false, 512, true),
        ]
    };
    for &(tls, window, busy) in runs {
        let db = dir.path().join(format!("drain-{tls}-{window}-{busy}.db"));
        seeded.push(seed(&db));
        // "Another process busy on one core": a shell spinning, for the raw publisher and
        // the drain alike.
        let spinner = busy.then(|| {
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .expect("sh")
        });
        let only = std::env::var("UPLINK_DRAIN_ONLY").unwrap_or_default();
        let skipped = Phase {
            rate: f64::NAN,
            own_us: f64::NAN,
            broker_us: f64::NAN,
        };
        let raw = match only.as_str() {
            "drain" => skipped,
            // Spawned, as the link is: the same worker threads and wake-ups.
            _ => runtime.block_on(async {
                tokio::spawn(raw_publisher(m.plain, window, m.child.id()))
                    .await
                    .expect("raw publisher task")
            }),
        };
        let (drained, left) = match only.as_str() {
            "raw" => (skipped, 0),
            _ => runtime.block_on(drain(&m, &db, tls, window)),
        };
        if let Some(mut s) = spinner {
            let _ = s.kill();
            let _ = s.wait();
        }
        assert_eq!(left, 0, "rows left after the drain");
        let vs_plain = match (tls, plain.get(&window)) {
            (true, Some(p)) => format!(", {:.2} x the plain drain", drained.rate / p),
            _ => String::new(),
        };
        if !tls && !busy {
            plain.insert(window, drained.rate);
        }
        line(format!(
            "window {window:>3}, {}{}: raw rumqttc QoS 1 accept {:>8.0} msg/s (plain TCP) | uplink drain {:>8.0} msg/s = {:.2} x raw{vs_plain}",
            if tls { "TLS+password" } else { "TCP+password" },
            if busy { ", one core busy" } else { "" },
            raw.rate,
            drained.rate,
            drained.rate / raw.rate,
        ));
        line(format!(
            "    CPU per message: raw {:.2} µs + mosquitto {:.2} µs | drain {:.2} µs + mosquitto {:.2} µs | drain / raw (own CPU) {:.2} x, (with mosquitto) {:.2} x",
            raw.own_us,
            raw.broker_us,
            drained.own_us,
            drained.broker_us,
            drained.own_us / raw.own_us,
            (drained.own_us + drained.broker_us) / (raw.own_us + raw.broker_us),
        ));
    }
    if quick {
        return;
    }
    let insert = seeded.iter().sum::<f64>() / seeded.len() as f64;
    line(format!(
        "outbox insert, batches of 1000 per FULL commit: {insert:>10.0} rows/s"
    ));
    let pub_rate = mosquitto_pub(m.plain);
    line(format!(
        "mosquitto_pub -q 1 -l (plain TCP):          {pub_rate:>10.0} msg/s"
    ));
}

/// The 1-minute load average, for the record of how busy the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

fn mosquitto_version() -> String {
    Command::new("mosquitto")
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.replace("mosquitto version ", ""))
        })
        .unwrap_or_default()
}
