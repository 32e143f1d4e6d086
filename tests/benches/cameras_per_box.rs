//! Cameras per box (issue 18): how many real 1080p cameras one gateway analyses on this
//! machine. For each codec in `CAMS_CODECS` (default `h264,h265`) and each camera count in
//! `CAMS_N` (default `1,2,4,8,16`): `sim camera --passthrough` serves the pre-encoded footage
//! (see `e2e::cameras`: vtest.avi scaled to 1920×1080, 15 fps, GOP 30, no B-frames, 4 Mbit/s;
//! encoded once into `target/cams-footage/`, never re-encoded live) on N mounts, staggered
//! through the file; the release `gateway` analyses them (5 frames/s each, an intrusion rule
//! on the whole picture); after `CAMS_WARMUP_S` (10) it measures `CAMS_MEASURE_S` (30):
//!
//! - gateway CPU (user + system, `/proc/PID/stat`) as % of one core and of the box (all
//!   cores), and the simulator's CPU apart (the load generator's share);
//! - frames decoded / analysed / run through the detector / dropped per second, summed over
//!   the cameras (`status.json`'s camera counters);
//! - detection latency p50 / p99 over the window (frame capture → detections available,
//!   from the cameras' latency histograms), and RSS at the end.
//!
//! `CAMS_SCENE=static` serves an empty still scene instead (what idle cameras cost);
//! `SHOUWANG_IDLE_DECODE=all|nonref|key` (the idle decoder mode) and
//! `SHOUWANG_SKIP_LOOP_FILTER=1` (no deblocking) pass to the gateway, for A/B runs.
//! `CAMS_FPS` sets each camera's `analyse_fps` (5).
//!
//! Run: `cargo build --release -p gateway -p simulators && cargo bench -p e2e --bench cameras_per_box`
//! Smoke: `CAMS_N=1,8 CAMS_CODECS=h264 CAMS_MEASURE_S=10 cargo bench -p e2e --bench cameras_per_box`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::cameras::{self, Scene};
use e2e::{bin, memory};
use gateway::video::latency;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

/// One run's figures.
struct Row {
    codec: String,
    n: usize,
    gateway_core: f64,
    sim_core: f64,
    decoded: f64,
    packets: f64,
    analysed: f64,
    detected: f64,
    dropped: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    rss_mb: f64,
    load: f64,
}

/// The cameras' counters summed, and their latency buckets summed.
#[derive(Default, Clone, Copy)]
struct Totals {
    at_ms: i64,
    packets: u64,
    decoded: u64,
    analysed: u64,
    detected: u64,
    dropped: u64,
    buckets: [u64; latency::BUCKETS],
}

fn totals(status: &serde_json::Value) -> Totals {
    let mut t = Totals {
        at_ms: status["updated_at_ms"].as_i64().unwrap_or(0),
        ..Totals::default()
    };
    let Some(cams) = status["cameras"].as_object() else {
        return t;
    };
    for c in cams.values() {
        let g = |k: &str| c[k].as_u64().unwrap_or(0);
        t.packets += g("packets");
        t.decoded += g("decoded");
        t.analysed += g("analysed");
        t.detected += g("detected");
        t.dropped += g("dropped");
        if let Some(b) = c["latency_buckets"].as_array() {
            for (i, v) in b.iter().enumerate().take(latency::BUCKETS) {
                t.buckets[i] += v.as_u64().unwrap_or(0);
            }
        }
    }
    t
}

/// Waits for a `status.json` newer than `after_ms` and returns its totals.
fn fresh_totals(data_dir: &Path, after_ms: i64) -> Totals {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = totals(&cameras::status(data_dir));
        if t.at_ms > after_ms || Instant::now() > deadline {
            return t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(codec: &str, scene: Scene, n: usize, footage: &Path, timing: (f64, f64, f64)) -> Row {
    let (warmup, measure, fps) = timing;
    let load = cameras::load_1min();
    println!("\n## {codec} {} × {n}, load {load:.2}", scene.label());
    // Mounts spread over the ~80 s clip, so the cameras are not in lockstep.
    let (sim, port) = cameras::serve(footage, n, 79.0 / n as f64);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = cameras::config(dir.path(), port, n, fps);
    let data_dir = dir.path().join("data");
    let mut gw = cameras::start_gateway(&bin("gateway"), &config, &data_dir);
    let pid = gw.pid();
    std::thread::sleep(Duration::from_secs_f64(warmup));
    gw.drain_log();
    let before = fresh_totals(&data_dir, 0);
    let (cpu0, sim0, threads0, t0) = (
        cameras::cpu_time(pid),
        cameras::cpu_time(sim.0.id()),
        cameras::cpu_by_thread(pid),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64(measure));
    let (cpu1, sim1, threads1, wall) = (
        cameras::cpu_time(pid),
        cameras::cpu_time(sim.0.id()),
        cameras::cpu_by_thread(pid),
        t0.elapsed().as_secs_f64(),
    );
    let mut by_thread: Vec<(String, f64)> = threads1
        .iter()
        .map(|(name, t)| {
            let before = threads0.get(name).copied().unwrap_or_default();
            (
                name.clone(),
                t.saturating_sub(before).as_secs_f64() / wall * 100.0,
            )
        })
        .filter(|(_, pct)| *pct >= 0.5)
        .collect();
    by_thread.sort_by(|a, b| b.1.total_cmp(&a.1));
    let shown: Vec<String> = by_thread
        .iter()
        .map(|(n, p)| format!("{n} {p:.1}%"))
        .collect();
    println!(
        "gateway CPU by thread name (% of one core): {}",
        shown.join(", ")
    );
    let after = fresh_totals(&data_dir, before.at_ms);
    gw.drain_log();
    let rss_mb = memory::rss_kib(pid) as f64 / 1024.0;
    assert!(rss_mb > 0.0, "the gateway is gone");
    let span = ((after.at_ms - before.at_ms) as f64 / 1000.0).max(0.001);
    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / span;
    let window = latency::window(&after.buckets, &before.buckets);
    Row {
        codec: format!("{codec} {}", scene.label()),
        n,
        gateway_core: (cpu1 - cpu0).as_secs_f64() / wall * 100.0,
        sim_core: (sim1.saturating_sub(sim0)).as_secs_f64() / wall * 100.0,
        packets: rate(after.packets, before.packets),
        decoded: rate(after.decoded, before.decoded),
        analysed: rate(after.analysed, before.analysed),
        detected: rate(after.detected, before.detected),
        dropped: rate(after.dropped, before.dropped),
        p50: latency::quantile_ms(&window, 0.5),
        p99: latency::quantile_ms(&window, 0.99),
        rss_mb,
        load,
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.0}"))
}

fn print_table(rows: &[Row], cores: f64) {
    println!("\n| footage | cameras | gateway CPU (% of 1 core) | % of box ({cores} cores) | sim CPU (% core) | packets/s | decoded/s | analysed/s | detected/s | dropped/s | latency p50 ms | p99 ms | RSS MB | load at start |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} | {:.2} |",
            r.codec,
            r.n,
            r.gateway_core,
            r.gateway_core / cores,
            r.sim_core,
            r.packets,
            r.decoded,
            r.analysed,
            r.detected,
            r.dropped,
            ms(r.p50),
            ms(r.p99),
            r.rss_mb,
            r.load
        );
    }
}

fn target_dir() -> PathBuf {
    // target/<profile>/deps/<bench> → target/
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("the bench lives in target/<profile>/deps")
}

fn main() {
    let counts: Vec<usize> = env_or("CAMS_N", "1,2,4,8,16")
        .split(',')
        .map(|v| v.trim().parse().expect("CAMS_N is a list of numbers"))
        .collect();
    let codecs: Vec<String> = env_or("CAMS_CODECS", "h264,h265")
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let scene = Scene::parse(&env_or("CAMS_SCENE", "walk")).expect("CAMS_SCENE is walk or static");
    let timing = (
        env_f64("CAMS_WARMUP_S", 10.0),
        env_f64("CAMS_MEASURE_S", 30.0),
        env_f64("CAMS_FPS", 5.0),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let uptime = std::process::Command::new("uptime").output();
    if let Ok(out) = uptime {
        print!("uptime: {}", String::from_utf8_lossy(&out.stdout));
    }
    let load = cameras::load_1min();
    if load > 0.5 {
        println!("WARNING: 1-min load average {load:.2} > 0.5 before starting: the machine is busy, these figures are NOT publishable (smoke only)");
    }
    println!(
        "idle decode mode: {}, skip loop filter: {}",
        std::env::var("SHOUWANG_IDLE_DECODE").unwrap_or_else(|_| "default (nonref)".into()),
        std::env::var("SHOUWANG_SKIP_LOOP_FILTER").unwrap_or_else(|_| "off".into())
    );
    let mut rows = Vec::new();
    for codec in &codecs {
        let footage = cameras::encoded_footage(&target_dir(), scene, codec);
        println!("footage: {}", footage.display());
        for &n in &counts {
            rows.push(run(codec, scene, n, &footage, timing));
            print_table(&rows[rows.len() - 1..], cores);
        }
    }
    println!(
        "\n# cameras per box: {} scene, analyse_fps {}, warm-up {} s, measured {} s",
        scene.label(),
        timing.2,
        timing.0,
        timing.1
    );
    print_table(&rows, cores);
}
