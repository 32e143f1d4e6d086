//! Live view (issue 16): how late the live view is and what viewers cost the gateway.
//!
//! One `sim camera` (vtest.avi as H.264 over RTSP, 768×576, a keyframe a second), one
//! gateway analysing it (`analyse_fps` 5), then 0, 1 and 8 WebSocket viewers of
//! `/api/cameras/{id}/live` for `LIVE_BENCH_S` seconds each (default 20).
//!
//! - **Latency** (what the gateway adds, a glass-to-glass proxy): an independent RTSP client
//!   of the same camera (FFmpeg, in this process) notes when each frame arrives; every
//!   viewer notes when the same frame arrives as a fragment (frames matched by a hash of
//!   their slice NAL unit, which Annex B and MP4 carry alike). Latency = fragment arrival −
//!   RTSP arrival: the gateway's read, remux and WebSocket send, including the one frame
//!   the muxer holds (a fragment leaves when the next frame arrives). The camera's encoder
//!   and the browser's decoder are outside it.
//! - **CPU**: the gateway process's utime + stime (/proc/PID/stat) over the window, as a
//!   share of one core.
//!
//! Run: `cargo build --release -p gateway -p simulators && cargo bench -p e2e --bench live_view`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::live::{self, Received};
use e2e::sim::start_camera;
use e2e::{write_config, Gateway};
use ffmpeg_next as ffmpeg;

const STAFF: &str = r#"
[[console.staff]]
username = "duty"
display_name = "Duty officer"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk"
role = "admin"

[[locations.areas]]
id = "square"
name = "Square"
kind = "other"
"#;

/// Arrival time of each frame (by its key) at one receiver.
type Arrivals = Arc<Mutex<HashMap<u64, Instant>>>;

/// The gateway's CPU seconds so far (utime + stime).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) — utime and stime are the
    // 14th and 15th fields, the 12th and 13th after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.iter().sum::<u64>() as f64 / tick
}

/// An RTSP client of the camera (TCP, as the gateway) noting each frame's arrival.
fn reference_client(url: String, arrivals: Arrivals, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut opts = ffmpeg::Dictionary::new();
    opts.set("rtsp_transport", "tcp");
    let mut input = ffmpeg::format::input_with_dictionary(&url, opts).expect("open the camera");
    let index = input
        .streams()
        .best(ffmpeg::media::Type::Video)
        .expect("a video stream")
        .index();
    let mut packet = ffmpeg::Packet::empty();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if packet.read(&mut input).is_err() {
            break;
        }
        let at = Instant::now();
        if packet.stream() != index {
            continue;
        }
        let nals = live::annexb_nals(packet.data().unwrap_or_default());
        if let Some(key) = live::frame_key(&nals) {
            arrivals.lock().unwrap().insert(key, at);
        }
    }
}

/// A viewer noting each fragment's arrival, until `until`.
async fn viewer(console: String, cookie: String, arrivals: Arrivals, until: Instant) -> u64 {
    let mut v = live::connect(&console, Some(&cookie), "cam", None)
        .await
        .expect("a viewer connects");
    let mut fragments = 0;
    while Instant::now() < until {
        match v.next(Duration::from_secs(5)).await {
            Some(Received::Media(m)) if m.get(4..8) == Some(b"moof") => {
                let at = Instant::now();
                fragments += 1;
                if let Some(key) = live::frame_key(&live::mdat_nals(&m)) {
                    arrivals.lock().unwrap().insert(key, at);
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    fragments
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One window with `n` viewers: latency samples (ms) and the gateway's CPU share.
async fn window(
    site: &(String, String, u32),
    reference: &Arrivals,
    n: usize,
    length: Duration,
) -> (Vec<f64>, f64, u64) {
    let (console, cookie, pid) = site;
    let until = Instant::now() + length + Duration::from_secs(3);
    let views: Vec<Arrivals> = (0..n).map(|_| Arrivals::default()).collect();
    let tasks: Vec<_> = views
        .iter()
        .map(|a| tokio::spawn(viewer(console.clone(), cookie.clone(), a.clone(), until)))
        .collect();
    // Three seconds for the viewers to connect and catch up, then the measured window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, t0, from) = (cpu_seconds(*pid), Instant::now(), Instant::now());
    tokio::time::sleep(length).await;
    let cpu = (cpu_seconds(*pid) - cpu0) / t0.elapsed().as_secs_f64();
    let mut fragments = 0;
    for t in tasks {
        fragments += t.await.unwrap_or(0);
    }
    let reference = reference.lock().unwrap();
    let mut latencies: Vec<f64> = Vec::new();
    for view in &views {
        for (key, at) in view.lock().unwrap().iter() {
            if let Some(sent) = reference.get(key).filter(|s| **s >= from) {
                latencies.push(at.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    (latencies, cpu, fragments)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let length = Duration::from_secs(
        std::env::var("LIVE_BENCH_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load.trim());
    ffmpeg::init().expect("FFmpeg");
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
    let port = e2e::upstream::free_port();
    let _camera = start_camera(port);
    let url = format!("rtsp://127.0.0.1:{port}/cam0");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "{STAFF}\n[[cameras]]\nid = \"cam\"\nurl = \"{url}\"\nlocation = {{ area = \"square\" }}\nanalyse_fps = 5\n"
        ),
    );
    let mut gw = Gateway::start(&config, &dir.path().join("data"));
    let ready = gw.wait_for_message("gateway ready", Duration::from_secs(60));
    let console = ready["console"].as_str().unwrap().to_owned();
    let cookie = live::login(&console, "duty", "shouwang-demo");
    let reference = Arrivals::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (reference, stop) = (reference.clone(), stop.clone());
        std::thread::spawn(move || reference_client(url, reference, stop))
    };
    // The camera's first seconds (opening, detector warm-up) are not measured.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let site = (console.clone(), cookie.clone(), gw.pid());
    println!("\n| viewers | fragments received | latency p50 (ms) | p99 (ms) | max (ms) | gateway CPU (% of a core) |");
    println!("|---|---|---|---|---|---|");
    for n in [0usize, 1, 8] {
        let (lat, cpu, fragments) = window(&site, &reference, n, length).await;
        println!(
            "| {n} | {fragments} | {:.1} | {:.1} | {:.1} | {:.1} |",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            cpu * 100.0
        );
    }
    let stats = live::camera_stats(&console, &cookie, "cam");
    println!("\ncamera counters: {stats}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(gw);
    let _ = client.join();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average after: {}", load.trim());
}
