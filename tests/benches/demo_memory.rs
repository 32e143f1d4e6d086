//! Demo memory (issue 18): the gateway's resident memory on the demo compound, as `./x demo`
//! runs it — `sim camera` serving the footage on the four cameras (15 fps H.264, 640×272 and
//! 768×576), `sim sensors --scenario normal` playing every device, a real mosquitto as the
//! platform — after a warm-up, and where it goes: `/proc/PID/smaps` summed by kind of
//! mapping (the executable, ONNX Runtime's library, FFmpeg's, the heap, thread arenas,
//! stacks, large allocations), the threads by name, each camera's counters (so a figure
//! from a demo whose cameras were not analysed is refused).
//!
//! One run per camera count in `DEMO_MEM_CAMERAS` (default `4`; e.g. `0,1,4` to see what
//! ONNX Runtime and the model, and then each camera, add). Settings: `DEMO_MEM_WARMUP_S`
//! (60), `DEMO_MEM_SAMPLE_S` (5), `DEMO_MEM_GATEWAY` (another gateway binary, e.g. an older
//! build to compare with), `DEMO_MEM_LIMIT_MB` (exit non-zero when the 4-camera RSS after
//! the warm-up is above it).
//!
//! The gateway inherits the environment: `SHOUWANG_MALLOC=glibc` runs it with glibc's own
//! allocator settings instead of the bounded ones (`gateway::os::MallocMode`), and with it
//! `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=N:glibc.malloc.arena_max=M` tries other
//! bounds without a rebuild. For where the heap goes, point `DEMO_MEM_GATEWAY` at a script
//! that runs `exec heaptrack -o FILE target/release/gateway "$@"` (the RSS figures are then
//! the script's, ignore them) and read `heaptrack_print -f FILE.zst --flamegraph-cost-type
//! leaked -F OUT`: what was still allocated when the demo stopped, by call stack.
//!
//! Run: `cargo build --release -p gateway -p simulators && cargo bench -p e2e --bench demo_memory`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::memory::{self, DemoSite};

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

fn mb(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// One demo run: RSS samples through the warm-up, then the breakdown; the final RSS (KiB).
fn run(gateway: &Path, cameras: usize, warmup: Duration, every: Duration) -> u64 {
    println!("\n## {cameras} camera(s), warm-up {warmup:?}");
    let started = Instant::now();
    let site = DemoSite::start(gateway, cameras);
    let pid = site.pid();
    println!(
        "gateway ready after {:.1} s (pid {pid})",
        started.elapsed().as_secs_f64()
    );
    let ready = Instant::now();
    let mut samples = Vec::new();
    while ready.elapsed() < warmup {
        std::thread::sleep(every.min(warmup.saturating_sub(ready.elapsed())));
        let rss = memory::rss_kib(pid);
        assert!(rss > 0, "the gateway is gone");
        samples.push((ready.elapsed().as_secs(), rss));
    }
    let line: Vec<String> = samples
        .iter()
        .map(|(s, kib)| format!("{s}s {}", mb(*kib)))
        .collect();
    println!("RSS (MB): {}", line.join(", "));
    if let Some(cameras) = site.status().get("cameras") {
        println!("cameras in status.json: {cameras}");
    }
    let counters = site.camera_counters();
    for (id, decoded, analysed) in &counters {
        println!("camera {id}: decoded {decoded}, analysed {analysed}");
    }
    assert_eq!(counters.len(), cameras, "every enabled camera reports");
    for (id, decoded, analysed) in &counters {
        assert!(
            *decoded > 0 && *analysed > 0,
            "camera {id} was not analysed: the figure would not be the demo's"
        );
    }
    let rss = memory::rss_kib(pid);
    breakdown(pid);
    println!(
        "**RSS {} MB** (peak {} MB) after {:?} with {cameras} camera(s)",
        mb(rss),
        mb(memory::peak_rss_kib(pid)),
        warmup
    );
    rss
}

/// Prints where the resident memory of `pid` is, by kind of mapping, and its threads.
fn breakdown(pid: u32) {
    let kinds = memory::smaps_by_kind(pid);
    let mut rows: Vec<_> = kinds.iter().collect();
    rows.sort_by_key(|(_, r)| std::cmp::Reverse(r.rss));
    println!("| mappings | resident MB | of which anonymous MB | count |");
    println!("|---|---:|---:|---:|");
    for (kind, r) in rows {
        println!(
            "| {kind} | {} | {} | {} |",
            mb(r.rss),
            mb(r.anon),
            r.mappings
        );
    }
    let total: u64 = kinds.values().map(|r| r.rss).sum();
    let anon: u64 = kinds.values().map(|r| r.anon).sum();
    println!(
        "| **total** | **{}** | {} (file-backed {}) | |",
        mb(total),
        mb(anon),
        mb(total - anon)
    );
    let files = memory::files_by_rss(pid);
    let top: Vec<String> = files
        .iter()
        .take(15)
        .map(|(path, r)| {
            let name = path.rsplit('/').next().unwrap_or(path);
            format!("{name} {} MB", mb(r.rss))
        })
        .collect();
    println!(
        "largest mapped files ({} in all): {}",
        files.len(),
        top.join(", ")
    );
    let threads = memory::threads_by_name(pid);
    let list: Vec<String> = threads.iter().map(|(n, c)| format!("{n} ×{c}")).collect();
    println!(
        "threads ({}): {}",
        threads.values().sum::<u64>(),
        list.join(", ")
    );
}

fn main() {
    let warmup = Duration::from_secs_f64(env_f64("DEMO_MEM_WARMUP_S", 60.0));
    let every = Duration::from_secs_f64(env_f64("DEMO_MEM_SAMPLE_S", 5.0));
    let gateway =
        std::env::var_os("DEMO_MEM_GATEWAY").map_or_else(|| e2e::bin("gateway"), PathBuf::from);
    let counts: Vec<usize> = std::env::var("DEMO_MEM_CAMERAS")
        .unwrap_or_else(|_| "4".into())
        .split(',')
        .map(|c| c.trim().parse().expect("DEMO_MEM_CAMERAS: counts 0 to 4"))
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "gateway: {}; load average at start: {}",
        gateway.display(),
        load.trim()
    );
    let mut results = Vec::new();
    for cameras in counts {
        results.push((cameras, run(&gateway, cameras, warmup, every)));
    }
    println!("\n| cameras | RSS after warm-up (MB) |\n|---:|---:|");
    for (cameras, rss) in &results {
        println!("| {cameras} | {} |", mb(*rss));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the end: {}", load.trim());
    if let Some(limit) = std::env::var("DEMO_MEM_LIMIT_MB")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        let over = results
            .iter()
            .filter(|(c, rss)| *c == 4 && *rss as f64 / 1024.0 > limit)
            .count();
        if over > 0 {
            eprintln!("demo RSS above {limit} MB");
            std::process::exit(1);
        }
    }
}
