use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;
use crate::ingest::decode::Reject;
use crate::ingest::IngestStats;
use crate::shutdown::Lifecycle;
use crate::status::StatusSources;
use crate::supervise::{Health, SelfTestSnapshot};
use crate::telemetry::TelemetryStats;
use crate::uplink::UplinkStatus;
use crate::video::CameraStats;

/// Sources with no stage but the (disabled) uplink, and a database that is not there.
fn bare(dir: &Path) -> MetricsSources {
    MetricsSources {
        status: StatusSources {
            link: Arc::new(UplinkStatus::new(None)),
            station_link: None,
            ingest: None,
            alert_store: None,
            reserve: None,
            health: None,
            cameras: Arc::default(),
            broker: None,
        },
        telemetry: None,
        db_path: dir.join("absent").join(crate::db::FILE_NAME),
    }
}

/// Sources with every stage present and something counted in each, and a database with one
/// active red alert and one undelivered alarm row.
fn busy(dir: &Path) -> MetricsSources {
    let db_path = dir.join(crate::db::FILE_NAME);
    let store = crate::alerts::AlertStore::open(&db_path).unwrap();
    store
        .connection()
        .execute_batch(
            "INSERT INTO alerts (id, source, kind, active, level, state, raised_at, updated_at, body)
             VALUES ('a1', 'device:d1', 'smoke', 1, 'red', 'active', 't', 't', '{}'),
                    ('a2', 'device:d2', 'gas', 0, 'orange', 'resolved', 't', 't', '{}');
             INSERT INTO outbox (class, stream, seq, created_at_ms, size, msg_key, payload)
             VALUES (0, 0, 1, 0, 10, 'k', x'7b7d');",
        )
        .unwrap();
    let ingest = Arc::new(IngestStats::default());
    ingest.accept();
    ingest.reject(Some("d1"), Reject::InvalidJson, "sensors/d1/state");
    let camera = Arc::new(CameraStats::default());
    camera.decoded.store(10, Ordering::Relaxed);
    camera.analysed.store(4, Ordering::Relaxed);
    camera.latency.record(Duration::from_millis(30));
    camera.latency.record(Duration::from_millis(30));
    camera.latency.record(Duration::from_millis(1200));
    let cameras: crate::video::CameraSlot = Arc::default();
    cameras.set(vec![("gate-cam".to_owned(), camera)]);
    let health = Arc::new(Health::default());
    health.set_self_test(
        SelfTestSnapshot {
            last_ok_at: Some(chrono::Utc::now()),
            round_trip_ms: Some(12),
            failing_since: None,
        },
        None,
    );
    let telemetry = Arc::new(TelemetryStats::default());
    telemetry.committed.store(5, Ordering::Relaxed);
    let link = Arc::new(UplinkStatus::new(None));
    link.set_endpoint("platform-b.example.org", 8883);
    MetricsSources {
        status: StatusSources {
            link,
            station_link: None,
            ingest: Some(ingest),
            alert_store: Some(Arc::default()),
            reserve: Some(Arc::new(crate::reserve::Reserve::ensure(dir, 4096))),
            health: Some(health),
            cameras,
            broker: Some(Arc::default()),
        },
        telemetry: Some(telemetry),
        db_path,
    }
}

/// The exposition text of `sources`, checked with an independent parser.
fn scrape(sources: MetricsSources) -> (String, prometheus_parse::Scrape) {
    let text = render(&registry(sources)).unwrap();
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    (text, parsed)
}

/// The value of the sample `name` whose labels include `labels`.
fn value(parsed: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    parsed
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// The (upper bound, cumulative count) buckets of the histogram `name` whose labels include
/// `labels`.
fn histogram(
    parsed: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<(f64, f64)> {
    let sample = parsed
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no histogram {name} {labels:?}"));
    match &sample.value {
        prometheus_parse::Value::Histogram(h) => h.iter().map(|b| (b.less_than, b.count)).collect(),
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

/// The metric names of the sample lines of `text` (`_bucket`, `_sum`, `_count` included).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The text format's own rules, checked line by line: every sample follows a `# TYPE` of
/// its family, names are valid, values are numbers, no family is described twice.
fn assert_text_format(text: &str) {
    let mut typed: Vec<(String, String)> = Vec::new();
    let valid = |n: &str| {
        n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(valid(name), "{line}");
            assert!(
                !typed.iter().any(|(n, _)| n == name),
                "described twice: {name}"
            );
            typed.push((name.to_owned(), kind.to_owned()));
        } else if line.starts_with("# HELP ") {
            assert!(line.split(' ').count() > 3, "HELP without text: {line}");
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            let (family, kind) = typed.last().unwrap_or_else(|| panic!("untyped {line}"));
            let suffixes: &[&str] = match kind.as_str() {
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            assert!(
                suffixes.iter().any(|s| name == format!("{family}{s}")),
                "{line} is not of family {family}"
            );
            let v = line.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok() || v == "+Inf", "{line}");
        }
    }
}

#[test]
fn a_scrape_is_valid_prometheus_text_with_every_stages_counters() {
    let dir = tempfile::tempdir().unwrap();
    hooks::alert_raised(edge_config::AlertKind::Smoke, edge_config::Level::Red);
    let (text, parsed) = scrape(busy(dir.path()));
    assert_text_format(&text);

    let v = |name: &str, labels: &[(&str, &str)]| value(&parsed, name, labels);
    assert_eq!(
        v(
            "shouwang_uplink_broker",
            &[("broker", "platform-b.example.org:8883")]
        ),
        Some(1.0),
        "the broker of [uplink] hosts the link is on"
    );
    assert_eq!(v("shouwang_sensor_messages_accepted_total", &[]), Some(1.0));
    let invalid = [("reason", "invalid_json")];
    assert_eq!(
        v("shouwang_sensor_messages_rejected_total", &invalid),
        Some(1.0)
    );
    let throttled = [("reason", "throttled")];
    assert_eq!(
        v("shouwang_sensor_messages_rejected_total", &throttled),
        Some(0.0)
    );
    assert_eq!(v("shouwang_readings_committed_total", &[]), Some(5.0));
    assert_eq!(v("shouwang_alerts_active", &[("level", "red")]), Some(1.0));
    assert_eq!(
        v("shouwang_alerts_active", &[("level", "orange")]),
        Some(0.0)
    );
    let alarm = [("class", "alarm")];
    assert_eq!(v("shouwang_outbox_backlog_rows", &alarm), Some(1.0));
    let alarm_bytes = v("shouwang_outbox_backlog_bytes", &alarm).unwrap();
    assert_eq!(
        Some(alarm_bytes),
        v("shouwang_outbox_bytes", &[]),
        "the one alarm row is all the bytes"
    );
    assert_eq!(
        v("shouwang_outbox_backlog_bytes", &[("class", "telemetry")]),
        Some(0.0)
    );
    assert!(v("shouwang_outbox_oldest_undelivered_age_seconds", &[]).unwrap() > 1e6);
    let cam = [("camera", "gate-cam")];
    assert_eq!(v("shouwang_camera_frames_decoded_total", &cam), Some(10.0));
    assert_eq!(v("shouwang_camera_frames_analysed_total", &cam), Some(4.0));
    let buckets = histogram(&parsed, "shouwang_detection_latency_seconds", &cam);
    let at = |le: f64| buckets.iter().find(|b| b.0 == le).map(|b| b.1);
    assert_eq!(at(0.035), Some(2.0), "two frames took 30 ms");
    assert_eq!(at(1.0), Some(2.0));
    assert_eq!(
        at(1.5),
        Some(3.0),
        "cumulative: the 1.2 s frame from 1.5 s on"
    );
    assert_eq!(at(f64::INFINITY), Some(3.0));
    assert!(text.contains("shouwang_detection_latency_seconds_sum{camera=\"gate-cam\"} 1.26"));
    assert_eq!(v("shouwang_selftest_round_trip_seconds", &[]), Some(0.012));
    assert_eq!(v("shouwang_disk_reserve_held", &[]), Some(1.0));
    assert_eq!(v("shouwang_database_readable", &[]), Some(1.0));
    let smoke_red = [("kind", "smoke"), ("level", "red")];
    assert!(v("shouwang_alerts_raised_total", &smoke_red).unwrap() >= 1.0);
    assert!(v("shouwang_process_resident_memory_bytes", &[]).unwrap() > 0.0);
    assert!(
        parsed.docs.keys().all(|k| k.starts_with("shouwang_")),
        "{:?}",
        parsed.docs
    );
}

#[test]
fn an_inference_and_a_commit_are_timed_into_their_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let count = |name: &str| {
        let (_, parsed) = scrape(bare(dir.path()));
        parsed
            .samples
            .iter()
            .find(|s| s.metric == name)
            .and_then(|s| match s.value {
                prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => {
                    Some(v)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let (inferences, commits) = (
        count("shouwang_inference_seconds_count"),
        count("shouwang_alert_commit_seconds_count"),
    );
    drop(hooks::InferenceTimer::start());
    hooks::alert_commit_took(Duration::from_millis(3), 2);
    // Other tests of this process may observe too: at least one more, not exactly one.
    assert!(count("shouwang_inference_seconds_count") >= inferences + 1.0);
    assert!(count("shouwang_alert_commit_seconds_count") >= commits + 1.0);
}

#[test]
fn a_scrape_without_cameras_uplink_or_database_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let (text, parsed) = scrape(bare(dir.path()));
    assert_text_format(&text);
    let v = |name: &str, labels: &[(&str, &str)]| value(&parsed, name, labels);
    assert_eq!(
        v("shouwang_uplink_state", &[("state", "disabled")]),
        Some(1.0)
    );
    assert_eq!(
        v("shouwang_uplink_state", &[("state", "connected")]),
        Some(0.0)
    );
    assert_eq!(v("shouwang_database_readable", &[]), Some(0.0));
    let names = sample_names(&text);
    assert!(
        !names.iter().any(|n| n.starts_with("shouwang_camera_")),
        "{names:?}"
    );
    assert!(!names.contains("shouwang_outbox_backlog_rows"), "{names:?}");
    assert!(
        names.contains("shouwang_inference_seconds_bucket"),
        "{names:?}"
    );
}

#[test]
fn every_grafana_dashboard_expression_names_only_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    hooks::alert_raised(edge_config::AlertKind::Gas, edge_config::Level::Orange);
    let (text, _) = scrape(busy(dir.path()));
    let exported = sample_names(&text);

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana-shouwang.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "only {} expressions", exprs.len());
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no shouwang metric in {expr:?}");
        used.extend(names);
    }
    let unknown: Vec<_> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard asks for {unknown:?}; exported: {exported:?}"
    );
}

/// Every `"expr"` string anywhere in `v`.
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v.as_str()) {
                    ("expr", Some(e)) => out.push(e.to_owned()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `shouwang_…` identifiers of a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("shouwang_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn config(extra: &str) -> Config {
    let src = format!("[site]\nid = \"s\"\nname = \"S\"\nkind = \"compound\"\n{extra}");
    edge_config::parse(&src, "t.toml", Path::new(".")).unwrap()
}

#[tokio::test]
async fn without_a_metrics_table_no_listener_is_started() {
    let dir = tempfile::tempdir().unwrap();
    let life = Lifecycle::new();
    assert_eq!(start(&config(""), bare(dir.path()), &life), None);
    let off = config("[metrics]\nenabled = false\nbind = \"127.0.0.1:0\"\n");
    assert_eq!(start(&off, bare(dir.path()), &life), None);
    assert!(!life.health().snapshot().stages.contains_key("metrics"));

    let on = config("[metrics]\nbind = \"127.0.0.1:0\"\n");
    let addr = start(&on, bare(dir.path()), &life).expect("listening");
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !life.health().snapshot().stages.contains_key("metrics") {
        assert!(Instant::now() < deadline, "no supervised `metrics` stage");
        tokio::task::yield_now().await;
    }
    life.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn metrics_are_served_over_http_and_stop_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let life = Lifecycle::new();
    let addr = spawn("127.0.0.1:0".parse().unwrap(), busy(dir.path()), &life).unwrap();

    let response = get(addr, "/metrics").await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        body.contains("shouwang_sensor_messages_accepted_total 1"),
        "{body}"
    );
    let other = get(addr, "/").await.unwrap();
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");

    let report = life.shutdown(Duration::from_secs(5)).await;
    assert!(report.clean(), "{report:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening after shutdown");
        tokio::task::yield_now().await;
    }
}

async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn a_metrics_address_already_taken_is_logged_and_the_gateway_goes_on_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let life = Lifecycle::new();
    let config = config(&format!("[metrics]\nbind = \"{addr}\"\n"));
    assert_eq!(start(&config, bare(dir.path()), &life), None);
    let err = spawn(addr, bare(dir.path()), &life)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(life.shutdown(Duration::from_secs(5)).await.clean());
}
