//! Soak: does the gateway's memory stay flat under steady sensor traffic?
//!
//! Starts the real `gateway` binary (the release build cargo made for this bench, or
//! `SOAK_GATEWAY`) on a generated site of 2,000 devices — smoke, heat, gas, water-leak, e-bike
//! battery, SOS, valves and sirens, a third of them speaking zigbee2mqtt — with a real
//! mosquitto as its upstream platform, plays the simulators' `soak` scenario (every device
//! connected over TCP, reporting and sending heartbeats) at 500 msg/s in total, and samples
//! the gateway's resident memory (`VmRSS` in `/proc/PID/status`) every 10 s. After the
//! warm-up, RSS must stay within ±10 MB of its value at the end of the warm-up; the bench
//! prints the samples, the warm-up RSS, min/max after it, the slope, and exits non-zero
//! when the band is exceeded (or the gateway dies, or it did not ingest the traffic).
//!
//! Run: `cargo bench -p gateway --bench soak` (30 minutes). Settings (environment):
//! `SOAK_MINUTES` (default 30), `SOAK_WARMUP_MINUTES` (default 5, at most a third of the
//! run), `SOAK_DEVICES` (2000), `SOAK_RATE` (500 msg/s in total, heartbeats included),
//! `SOAK_BAND_MB` (10), `SOAK_SAMPLE_S` (10), `SOAK_GATEWAY` (another gateway binary, e.g. an
//! older build to compare with). Needs `mosquitto` (`./x deps`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use simulators::mqtt::Endpoint;
use simulators::sensors::{self, Options, Scenario};
use tokio_util::sync::CancellationToken;

/// Buildings of the generated site (devices are spread over them).
const BUILDINGS: usize = 20;
/// Device kinds in turn, with whether that one speaks zigbee2mqtt.
const MIX: [(&str, bool); 20] = [
    ("smoke", false),
    ("smoke", true),
    ("heat", false),
    ("gas", false),
    ("water_leak", true),
    ("smoke", false),
    ("heat", true),
    ("gas", false),
    ("water_leak", false),
    ("smoke", true),
    ("ebike_battery", false),
    ("heat", false),
    ("gas", true),
    ("smoke", false),
    ("water_leak", false),
    ("sos", true),
    ("heat", false),
    ("ebike_battery", false),
    ("valve", true),
    ("siren", false),
];

struct Settings {
    duration: Duration,
    warmup: Duration,
    devices: usize,
    rate: f64,
    band_mb: f64,
    every: Duration,
    gateway: PathBuf,
}

fn env_f64(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

fn settings() -> Settings {
    let minutes = env_f64("SOAK_MINUTES", 30.0);
    let warmup = env_f64("SOAK_WARMUP_MINUTES", (minutes / 3.0).min(5.0));
    Settings {
        duration: Duration::from_secs_f64(minutes * 60.0),
        warmup: Duration::from_secs_f64(warmup * 60.0),
        devices: env_f64("SOAK_DEVICES", 2000.0) as usize,
        rate: env_f64("SOAK_RATE", 500.0),
        band_mb: env_f64("SOAK_BAND_MB", 10.0),
        every: Duration::from_secs_f64(env_f64("SOAK_SAMPLE_S", 10.0)),
        gateway: std::env::var_os("SOAK_GATEWAY").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_gateway")),
            PathBuf::from,
        ),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The generated site: `devices` devices of [`MIX`], the `[broker]` section `broker`, the
/// console on `console`, the uplink to mosquitto on `uplink`.
fn site(devices: usize, broker: &str, console: u16, uplink: u16) -> String {
    let mut c = format!(
        "[site]\nid = \"soak\"\nname = \"Soak\"\nkind = \"compound\"\n\
         {broker}\
         [console]\nbind = \"127.0.0.1:{console}\"\n\
         [uplink]\nhost = \"127.0.0.1\"\nport = {uplink}\ntopic_prefix = \"shouwang\"\nqos = 1\n\
         [[locations.areas]]\nid = \"shed\"\nname = \"Shed\"\nkind = \"charging_shed\"\n"
    );
    for b in 1..=BUILDINGS {
        let _ = write!(
            c,
            "[[locations.buildings]]\nid = \"b{b}\"\nname = \"{b}\"\nfloors = 30\n"
        );
    }
    for i in 0..devices {
        let (kind, zigbee) = MIX[i % MIX.len()];
        let location = if kind == "ebike_battery" {
            format!("{{ area = \"shed\", room = \"bay {i}\" }}")
        } else {
            let (b, floor) = (i % BUILDINGS + 1, (i / BUILDINGS) % 30 + 1);
            format!(
                "{{ building = \"b{b}\", floor = {floor}, room = \"{floor:02}{:02}\" }}",
                i % 100
            )
        };
        let format = if zigbee {
            "format = \"zigbee2mqtt\"\n"
        } else {
            ""
        };
        let _ = write!(
            c,
            "[[devices]]\nid = \"{kind}-{i}\"\nkind = \"{kind}\"\nlocation = {location}\n{format}"
        );
        if let Ok(hb) = std::env::var("SOAK_HEARTBEAT_S") {
            let _ = writeln!(c, "heartbeat_s = {hb}");
        }
    }
    c
}

/// A child process killed (and reaped) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(dir: &Path) -> (Process, u16) {
    std::fs::create_dir_all(dir).expect("mosquitto dir");
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    // mosquitto started as root drops to user `mosquitto` unless told to stay.
    let root = if is_root() { "user root\n" } else { "" };
    std::fs::write(
        &conf,
        format!("{root}listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .expect("mosquitto.conf");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (install it with ./x deps)");
    (Process(child), port)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
    })
}

/// Starts the gateway and waits until it logged "gateway ready".
fn gateway(bin: &Path, config: &Path, data: &Path, log: &Path) -> Process {
    let out = std::fs::File::create(log).expect("gateway log");
    let err = out.try_clone().expect("gateway log");
    let child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("gateway ready") {
            return process;
        }
        if let Ok(Some(status)) = process.0.try_wait() {
            panic!("gateway exited ({status}) before it was ready:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "gateway not ready after 60 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Resident memory of `pid` in MB (`VmRSS`), `None` once the process is gone.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The gateway's `status.json`, if it is there.
fn status(data: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(data.join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn accepted(data: &Path) -> u64 {
    status(data).map_or(0, |s| s["ingest"]["accepted"].as_u64().unwrap_or(0))
}

/// Heartbeats the simulated devices send per second in total (each every third of its
/// configured period, as `sim sensors` does).
fn heartbeat_rate(config: &edge_config::Config) -> f64 {
    config
        .devices
        .iter()
        .map(|d| 3.0 / f64::from(d.heartbeat_s()))
        .sum()
}

struct Sample {
    at: Duration,
    rss_mb: f64,
    accepted: u64,
}

/// Samples the gateway every `every` until `until` or until it dies.
fn sample(process: &mut Process, data: &Path, s: &Settings, started: Instant) -> Vec<Sample> {
    let mut samples: Vec<Sample> = Vec::new();
    let pid = process.0.id();
    let mut next = started;
    while next <= started + s.duration {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += s.every;
        let Some(rss_mb) = rss_mb(pid) else {
            eprintln!("gateway is gone");
            break;
        };
        let sample = Sample {
            at: started.elapsed(),
            rss_mb,
            accepted: accepted(data),
        };
        let rate = samples.last().map_or(0.0, |p| {
            (sample.accepted - p.accepted.min(sample.accepted)) as f64
                / (sample.at - p.at).as_secs_f64()
        });
        eprintln!(
            "  t = {:>5.0} s  RSS {:>7.1} MB  accepted {:>9} ({rate:>5.0} msg/s)",
            sample.at.as_secs_f64(),
            sample.rss_mb,
            sample.accepted
        );
        samples.push(sample);
    }
    samples
}

struct Verdict {
    warm_mb: f64,
    min_mb: f64,
    max_mb: f64,
    slope_mb_per_h: f64,
    ok: bool,
}

/// RSS at the end of the warm-up, min/max after it, least-squares slope, and whether every
/// sample after the warm-up is within `band_mb` of the first.
fn verdict(samples: &[Sample], warmup: Duration, band_mb: f64) -> Option<Verdict> {
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= warmup).collect();
    let warm_mb = after.first()?.rss_mb;
    let min_mb = after.iter().map(|s| s.rss_mb).fold(f64::MAX, f64::min);
    let max_mb = after.iter().map(|s| s.rss_mb).fold(f64::MIN, f64::max);
    let n = after.len() as f64;
    let mean_t = after.iter().map(|s| s.at.as_secs_f64()).sum::<f64>() / n;
    let mean_r = after.iter().map(|s| s.rss_mb).sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for s in &after {
        let dt = s.at.as_secs_f64() - mean_t;
        cov += dt * (s.rss_mb - mean_r);
        var += dt * dt;
    }
    let slope_mb_per_h = if var > 0.0 { cov / var * 3600.0 } else { 0.0 };
    let ok = max_mb - warm_mb <= band_mb && warm_mb - min_mb <= band_mb && after.len() >= 2;
    Some(Verdict {
        warm_mb,
        min_mb,
        max_mb,
        slope_mb_per_h,
        ok,
    })
}

/// Plays the `soak` scenario at `rate` msg/s in total; returns the messages published.
fn play(config: &edge_config::Config, broker: u16, rate: f64, duration: Duration) -> u64 {
    let per_device = (rate - heartbeat_rate(config)).max(0.01) / config.devices.len() as f64;
    let mut options = Options::new(
        Endpoint::parse(&format!("127.0.0.1:{broker}")).expect("endpoint"),
        Scenario::Soak,
    );
    options.rate = Some(per_device);
    options.duration = Some(duration);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let report = runtime
        .block_on(sensors::run(config, &options, CancellationToken::new()))
        .unwrap_or_else(|e| panic!("simulated devices failed: {e}"));
    report.published
}

fn main() {
    let s = settings();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_mosquitto, uplink) = mosquitto(dir.path());
    // `SOAK_BROKER=external`: the sensors use a second mosquitto, the gateway subscribes
    // to it (for comparison with the embedded broker).
    let external = std::env::var("SOAK_BROKER").is_ok_and(|b| b == "external");
    let sensors_broker = external.then(|| mosquitto(&dir.path().join("sensors")));
    let (broker, section) = match &sensors_broker {
        Some((_, port)) => (*port, format!("[broker]\nmode = \"external\"\n[broker.external]\nhost = \"127.0.0.1\"\nport = {port}\n")),
        None => {
            let port = free_port();
            (port, format!("[broker]\nbind = \"127.0.0.1:{port}\"\n"))
        }
    };
    let text = site(s.devices, &section, free_port(), uplink);
    let config_path = dir.path().join("soak.toml");
    std::fs::write(&config_path, &text).expect("config");
    let config = edge_config::parse(&text, "soak.toml", dir.path()).expect("generated config");
    let data = dir.path().join("data");
    let log = dir.path().join("gateway.log");
    let mut process = gateway(&s.gateway, &config_path, &data, &log);
    let idle_mb = rss_mb(process.0.id()).unwrap_or(f64::NAN);
    eprintln!(
        "soak: {} devices, {} msg/s, {:.0} min (warm-up {:.1} min), gateway {} (pid {}), idle RSS {idle_mb:.1} MB",
        s.devices,
        s.rate,
        s.duration.as_secs_f64() / 60.0,
        s.warmup.as_secs_f64() / 60.0,
        s.gateway.display(),
        process.0.id()
    );
    let started = Instant::now();
    let player = {
        let (config, duration, rate) = (config.clone(), s.duration, s.rate);
        std::thread::spawn(move || play(&config, broker, rate, duration))
    };
    let samples = sample(&mut process, &data, &s, started);
    let published = player.join().unwrap_or(0);
    let alive = process.0.try_wait().ok().flatten().is_none();
    let final_status = status(&data).unwrap_or_default();
    drop(process);
    let pass = report(&s, idle_mb, &samples, published, alive, &final_status, &log);
    // Stop mosquitto and remove the temporary directory before exiting.
    drop((_mosquitto, sensors_broker, dir));
    if !pass {
        std::process::exit(1);
    }
}

fn report(
    s: &Settings,
    idle_mb: f64,
    samples: &[Sample],
    published: u64,
    alive: bool,
    status: &serde_json::Value,
    log: &Path,
) -> bool {
    let accepted = status["ingest"]["accepted"].as_u64().unwrap_or(0);
    let minutes = s.duration.as_secs_f64() / 60.0;
    let v = verdict(samples, s.warmup, s.band_mb);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "## soak ({} cores, load {})", cores(), load());
    let _ = writeln!(out, "| measure | result |\n|---|---|");
    let _ = writeln!(
        out,
        "| devices / offered rate / duration | {} / {} msg/s / {minutes:.0} min |",
        s.devices, s.rate
    );
    let _ = writeln!(
        out,
        "| published by the devices / accepted by ingest | {published} / {accepted} |"
    );
    let _ = writeln!(
        out,
        "| ingest rejections by reason | {} |",
        status["ingest"]["rejected_by_reason"]
    );
    let _ = writeln!(
        out,
        "| rows acknowledged by the upstream broker | {} |",
        status["link"]["acked_total"]
    );
    let _ = writeln!(out, "| RSS idle (before traffic) | {idle_mb:.1} MB |");
    let Some(v) = v else {
        let _ = writeln!(out, "| verdict | FAIL: no samples after the warm-up |");
        return false;
    };
    let _ = writeln!(
        out,
        "| RSS at the end of the warm-up ({:.1} min) | {:.1} MB |",
        s.warmup.as_secs_f64() / 60.0,
        v.warm_mb
    );
    let _ = writeln!(
        out,
        "| RSS after the warm-up: min / max | {:.1} MB / {:.1} MB ({:+.1} / {:+.1} MB) |",
        v.min_mb,
        v.max_mb,
        v.min_mb - v.warm_mb,
        v.max_mb - v.warm_mb
    );
    let _ = writeln!(
        out,
        "| RSS slope after the warm-up | {:+.1} MB/h |",
        v.slope_mb_per_h
    );
    let ingested = published > 0 && accepted as f64 >= 0.95 * published as f64;
    let pass = v.ok && alive && ingested;
    let why = match (v.ok, alive, ingested) {
        (_, false, _) => "the gateway died".to_owned(),
        (false, ..) => format!("RSS left the ±{} MB band", s.band_mb),
        (_, _, false) => "ingest accepted less than 95 % of what was published".to_owned(),
        _ => format!("RSS within ±{} MB", s.band_mb),
    };
    let _ = writeln!(
        out,
        "| verdict | {} ({why}) |",
        if pass { "PASS" } else { "FAIL" }
    );
    if !pass {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        eprintln!(
            "last gateway log lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    pass
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
