//! Fleet drain benchmark (issue 20), one run, one machine: 1, 10 and 50 gateways (each its
//! own process, data directory and site) with a 10,000-alert backlog each, cut off from the
//! platform by a WAN proxy, released at the same moment into
//!
//! - a 3-node NATS JetStream cluster (Debian's `nats-server`, MQTT on every node, the
//!   gateways spread over the nodes by their `hosts` order), and
//! - a single mosquitto,
//!
//! side by side. Reported per run: the aggregate drain rate (alerts/s, release → the last
//! site complete on the platform's subscriber), the slowest gateway's time to empty, and
//! the platform's CPU (its processes' user+system time over the drain, in % of one core).
//! The platform's subscriber checks every site's `seq` completeness and order.
//!
//! Run: `cargo build --release -p gateway && cargo bench -p e2e --bench fleet_drain`
//! (`FLEET_SIZES=1,10` and `FLEET_ROWS=2000` for a shorter run). Figures go in the README.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::cluster::NatsCluster;
use e2e::fleet::{Fleet, Platform, Wan};
use e2e::upstream::free_port;

struct Run {
    platform: &'static str,
    gateways: usize,
    rows: u64,
    rate: f64,
    slowest_s: f64,
    platform_cpu_pct: f64,
    duplicates: u64,
    /// The subscriber's CONNACKs (1 = it never reconnected).
    subscriber_connects: u64,
    /// The gateways' rows published (re-sends included) and connections made.
    gateways_published: u64,
    gateways_connects: u64,
    ok: bool,
}

/// user + system CPU seconds of `pid` (Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is 0, utime 11, stime 12.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn mosquitto(dir: &Path) -> (Child, u16) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nmax_inflight_messages 100\nlog_dest none\n"
        ),
    )
    .expect("mosquitto.conf");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (./x deps)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

async fn drain(
    platform: &'static str,
    hosts: Vec<String>,
    subscribe_port: u16,
    pids: Vec<u32>,
    dir: &Path,
    gateways: usize,
    rows: u64,
) -> Run {
    let consumer = Platform::subscribe(subscribe_port, None, "platform", rows).await;
    let (wan, proxied) = Wan::cut(&hosts).await;
    let mut fleet = Fleet::prepare(&dir.join("fleet"), gateways, rows, &proxied, "");
    fleet.start();
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let t0 = Instant::now();
    wan.restore();
    let done = consumer
        .wait_complete(gateways, Duration::from_secs(1800))
        .await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0;
    let verdicts = consumer.verdicts(&fleet.sites());
    // The gateways write status.json every second: let the last counters land.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (published, _, connects) = fleet.uplink_totals();
    let slowest = verdicts
        .iter()
        .filter_map(|v| v.complete_at)
        .map(|t| t.duration_since(t0).as_secs_f64())
        .fold(0.0, f64::max);
    Run {
        platform,
        gateways,
        rows,
        rate: (gateways as u64 * rows) as f64 / slowest.max(1e-3),
        slowest_s: slowest,
        platform_cpu_pct: cpu / wall * 100.0,
        duplicates: verdicts.iter().map(|v| v.duplicates).sum(),
        subscriber_connects: consumer.connacks.load(std::sync::atomic::Ordering::Relaxed),
        gateways_published: published,
        gateways_connects: connects,
        ok: done && verdicts.iter().all(|v| v.ok()),
    }
}

fn sizes() -> Vec<usize> {
    std::env::var("FLEET_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 50])
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rows: u64 = std::env::var("FLEET_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "fleet drain: sizes {:?}, {rows} alerts each; load before: {load}",
        sizes()
    );
    let mut runs = Vec::new();
    let platforms = std::env::var("FLEET_PLATFORMS").unwrap_or_else(|_| "nats,mosquitto".into());
    for n in sizes() {
        if platforms.contains("nats") {
            let tmp = tempfile::tempdir().expect("temp dir");
            let cluster = NatsCluster::start(&tmp.path().join("nats"));
            let run = drain(
                "NATS cluster (3 nodes)",
                cluster.mqtt_hosts(),
                cluster.nodes[2].mqtt_port,
                cluster.pids(),
                tmp.path(),
                n,
                rows,
            )
            .await;
            eprintln!(
                "{:?}",
                (run.platform, run.gateways, run.rate, run.slowest_s)
            );
            runs.push(run);
            drop(cluster);
        }
        if !platforms.contains("mosquitto") {
            continue;
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        let (mut child, port) = mosquitto(tmp.path());
        let run = drain(
            "mosquitto (1 node)",
            vec![format!("127.0.0.1:{port}")],
            port,
            vec![child.id()],
            tmp.path(),
            n,
            rows,
        )
        .await;
        eprintln!(
            "{:?}",
            (run.platform, run.gateways, run.rate, run.slowest_s)
        );
        runs.push(run);
        let _ = child.kill();
        let _ = child.wait();
    }
    println!("| platform | gateways | alerts each | aggregate drain | slowest gateway empty after | platform CPU | duplicates | subscriber connects | gateways' rows published / connects | complete, in order |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &runs {
        println!(
            "| {} | {} | {} | {:.0} alerts/s | {:.1} s | {:.0} % | {} | {} | {} / {} | {} |",
            r.platform,
            r.gateways,
            r.rows,
            r.rate,
            r.slowest_s,
            r.platform_cpu_pct,
            r.duplicates,
            r.subscriber_connects,
            r.gateways_published,
            r.gateways_connects,
            if r.ok { "yes" } else { "NO" }
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("load after: {load}");
    assert!(
        runs.iter().all(|r| r.ok),
        "a site's backlog was incomplete or out of order"
    );
}
