//! The live view of the station console: the real gateway reading real RTSP cameras
//! (`sim camera`, GStreamer's RTSP server), headless Chromium over WebDriver playing the
//! camera's own H.264 packets as fragmented MP4 (Media Source Extensions), and WebSocket
//! viewers from Rust.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::browser::{Browser, WAIT};
use e2e::live::{self, Received};
use e2e::sim::{start_camera, start_dual_camera};
use e2e::{http, write_config, Gateway};
use serde_json::{json, Value};
use simulators::process::{self, ChildGuard};

/// The console login of these scenarios: the demo's duty officer.
const STAFF: &str = r#"
[[console.staff]]
username = "duty"
display_name = "Duty officer"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk"
role = "admin"

[[locations.areas]]
id = "square"
name = "广场"
kind = "other"
"#;
const PASSWORD: &str = "shouwang-demo";
/// The dual camera's RTSP login (handed to `sim camera` in its environment).
const CAMERA_USER: &str = "admin";
const CAMERA_PASSWORD: &str = "live-view-1";

fn free_port() -> u16 {
    process::free_port().expect("a free loopback port")
}

/// A camera analysed at 1 frame/s (the live view shows every frame regardless).
fn camera_toml(id: &str, url: &str, extra: &str) -> String {
    format!(
        "[[cameras]]\nid = \"{id}\"\nurl = \"{url}\"\n{extra}location = {{ area = \"square\" }}\nanalyse_fps = 1\n\n"
    )
}

/// A running gateway with cameras, and its console.
struct Site {
    gw: Gateway,
    console: String,
    _dir: tempfile::TempDir,
}

impl Site {
    fn start(cameras: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &format!("{STAFF}\n{cameras}"));
        let mut gw = Gateway::start(&config, &dir.path().join("data"));
        let ready = gw.wait_for_message("gateway ready", Duration::from_secs(30));
        let console = ready["console"].as_str().unwrap().to_owned();
        Site {
            gw,
            console,
            _dir: dir,
        }
    }

    fn cookie(&self) -> String {
        live::login(&self.console, "duty", PASSWORD)
    }

    /// Waits until every camera of `ids` has decoded frames.
    fn wait_decoding(&self, cookie: &str, ids: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let decoding = ids.iter().all(|id| {
                live::camera_stats(&self.console, cookie, id)["decoded"]
                    .as_u64()
                    .is_some_and(|n| n > 0)
            });
            if decoding {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cameras {ids:?} not decoding: {}\n{}",
                live::cameras(&self.console, cookie),
                self.gw.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Logs the browser in as the duty officer.
fn browser_login(b: &Browser, base: &str) {
    b.goto(&format!("{base}/login"));
    b.type_into("#username", "duty");
    b.type_into("#password", PASSWORD);
    b.click("#login", "login form");
    b.wait_for("#live.ok", "the console after login");
}

/// Polls the page until `script` returns something other than null (up to `wait`).
fn wait_script(b: &Browser, script: &str, wait: Duration, what: &str) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let v = b.script(script);
        if !v.is_null() {
            return v;
        }
        if Instant::now() >= deadline {
            let html = b.script("return document.body.outerHTML");
            panic!("{what}: nothing within {wait:?}; page:\n{html}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The page's view of one camera tile.
fn tile_js(id: &str) -> String {
    format!(
        "const s = window.__live && window.__live['{id}'];
         const f = document.querySelector(\"figure.tile[data-camera='{id}']\");
         if (!f) return null;
         const v = f.querySelector('video');
         return {{ state: f.dataset.state, first: s ? s.firstFrameMs : null, mime: s ? s.mime : null,
                  t: v.currentTime, ready: v.readyState, msg: f.querySelector('.msg').textContent,
                  note: f.querySelector('.note').textContent,
                  playable: s && s.mime ? MediaSource.isTypeSupported(s.mime) : null }};"
    )
}

/// Waits (up to `wait`) until camera `id`'s tile `r` makes the JS condition `until` true;
/// returns the tile's view.
fn wait_tile(b: &Browser, id: &str, until: &str, wait: Duration) -> Value {
    let js = format!(
        "const r = (function(){{ {} }})(); return r && ({until}) ? r : null;",
        tile_js(id)
    );
    wait_script(b, &js, wait, &format!("{id}: {until}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_view_of_a_camera_plays_in_the_browser_within_two_seconds() {
    let browser = tokio::task::spawn_blocking(Browser::start).await.unwrap();
    let port = free_port();
    let _camera = start_camera(port);
    let site = Site::start(&camera_toml(
        "cam-square",
        &format!("rtsp://127.0.0.1:{port}/cam0"),
        "",
    ));
    let base = format!("http://{}", site.console);
    tokio::task::spawn_blocking(move || {
        site.wait_decoding(&site.cookie(), &["cam-square"]);
        browser_login(&browser, &base);
        // The console links to the live view.
        let link = browser.script(
            "const a = document.querySelector('a[href=\"/live\"]'); return a ? a.textContent : null;",
        );
        assert_eq!(link, json!("实时画面"), "the console's link to /live");
        browser.goto(&format!("{base}/live?camera=cam-square"));
        let first = wait_tile(&browser, "cam-square", "r.first !== null", WAIT);
        let first_ms = first["first"].as_f64().unwrap();
        eprintln!("first live frame {first_ms:.0} ms after navigation: {first}");
        assert!(
            first_ms <= 2000.0,
            "the first frame showed {first_ms:.0} ms after the page was opened (more than 2 s)"
        );
        assert!(first["ready"].as_u64().unwrap() >= 2, "{first}");
        assert!(
            first["mime"].as_str().unwrap().contains("avc1."),
            "the camera's own H.264: {first}"
        );
        // It goes on playing: currentTime advances by a second or more.
        let t0 = first["t"].as_f64().unwrap();
        let advanced = format!("r.t > {t0} + 1.0");
        let later = wait_tile(&browser, "cam-square", &advanced, Duration::from_secs(10));
        assert_eq!(later["state"], "playing", "{later}");
        // Chinese first, English by the console's language switch.
        assert_eq!(
            browser.script("return document.documentElement.lang;"),
            json!("zh-CN")
        );
        assert_eq!(
            browser.script("return document.querySelector('[data-t=back]').textContent;"),
            json!("返回值班台")
        );
        browser.click("#lang", "the language switch");
        assert_eq!(
            browser.script("return document.querySelector('[data-t=back]').textContent;"),
            json!("Back to the console")
        );
        drop(site);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grid_shows_every_camera_and_h265_gets_a_message_where_the_browser_cannot_play_it() {
    let browser = tokio::task::spawn_blocking(Browser::start).await.unwrap();
    let (single, dual) = (free_port(), free_port());
    let _cameras: [ChildGuard; 2] = [
        start_camera(single),
        start_dual_camera(dual, CAMERA_USER, CAMERA_PASSWORD),
    ];
    let login = format!("username = \"{CAMERA_USER}\"\npassword = \"{CAMERA_PASSWORD}\"\n");
    let channel = |n: u32| format!("rtsp://127.0.0.1:{dual}/Streaming/Channels/{n}");
    let cameras = [
        camera_toml("cam-a", &format!("rtsp://127.0.0.1:{single}/cam0"), ""),
        camera_toml(
            "cam-dual",
            &channel(101),
            &format!("sub_url = \"{}\"\n{login}", channel(102)),
        ),
        camera_toml("cam-h265", &channel(101), &login),
    ];
    let site = Site::start(&cameras.concat());
    let base = format!("http://{}", site.console);
    tokio::task::spawn_blocking(move || {
        site.wait_decoding(&site.cookie(), &["cam-a", "cam-dual", "cam-h265"]);
        browser_login(&browser, &base);
        browser.goto(&format!("{base}/live"));
        let ids = browser.script(
            "return [...document.querySelectorAll('figure.tile')].map(f => f.dataset.camera);",
        );
        assert_eq!(
            ids,
            json!(["cam-a", "cam-dual", "cam-h265"]),
            "one tile per camera"
        );
        // H.264 (cam-a, and cam-dual's analysed sub-stream) plays in the grid.
        for id in ["cam-a", "cam-dual"] {
            wait_tile(&browser, id, "r.state === 'playing'", WAIT);
        }
        // H.265 only: plays where the browser can, else a message (never a black box).
        let h265 = wait_tile(&browser, "cam-h265", "r.mime", WAIT);
        assert!(h265["mime"].as_str().unwrap().contains("hvc1."), "{h265}");
        let expect = if h265["playable"] == true {
            "playing"
        } else {
            "unsupported"
        };
        let shown = wait_tile(
            &browser,
            "cam-h265",
            &format!("r.state === '{expect}'"),
            WAIT,
        );
        if expect == "unsupported" {
            let msg = shown["msg"].as_str().unwrap();
            assert!(msg.contains("H.265") && msg.contains("浏览器"), "{shown}");
            browser.click("#lang", "the language switch");
            let en = wait_tile(&browser, "cam-h265", "r.msg.includes('This browser')", WAIT);
            assert!(
                en["msg"].as_str().unwrap().contains("cannot play H.265"),
                "{en}"
            );
            browser.click("#lang", "the language switch");
        }
        // With SHOUWANG_SCREENSHOT=1: the grid, in zh-CN, for the README.
        if std::env::var("SHOUWANG_SCREENSHOT").as_deref() == Ok("1") {
            let out = e2e::workspace_root().join("docs").join("live-grid.png");
            std::fs::write(&out, browser.screenshot_png()).unwrap();
            eprintln!("wrote {}", out.display());
        }
        // One camera large: the main stream (H.265 here), else the sub-stream with a note.
        browser.goto(&format!("{base}/live?camera=cam-dual"));
        let one = wait_tile(&browser, "cam-dual", "r.state === 'playing'", WAIT);
        let tiles = browser.script("return document.querySelectorAll('figure.tile').length;");
        assert_eq!(tiles, json!(1));
        if expect == "unsupported" {
            assert!(one["note"].as_str().unwrap().contains("子码流"), "{one}");
            assert!(one["mime"].as_str().unwrap().contains("avc1."), "{one}");
        }
        drop(site);
    })
    .await
    .unwrap();
}

#[test]
fn the_live_view_needs_a_session_and_its_own_origin() {
    let site = Site::start("");
    let c = site.console.as_str();
    let upgrade = [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    let path = "/api/cameras/cam-square/live";
    let anonymous = http::request(c, "GET", path, &upgrade, "");
    assert_eq!(anonymous.status, 401, "{}", anonymous.raw);
    let forged = [&upgrade[..], &["Cookie: shouwang_session=forged"]].concat();
    assert_eq!(http::request(c, "GET", path, &forged, "").status, 401);
    let page = http::request(c, "GET", "/live", &[], "");
    assert_eq!(page.status, 303, "{}", page.raw);
    assert_eq!(page.header("location"), Some("/login"));
    let cookie = format!("Cookie: {}", site.cookie());
    let staff = [&upgrade[..], &[cookie.as_str()]].concat();
    let other_site = [&staff[..], &["Origin: http://evil.example"]].concat();
    assert_eq!(http::request(c, "GET", path, &other_site, "").status, 403);
    let unknown = http::request(c, "GET", "/api/cameras/nope/live", &staff, "");
    assert_eq!(unknown.status, 404, "{}", unknown.raw);
    let page = http::request(c, "GET", "/live", &[cookie.as_str()], "");
    assert_eq!(page.status, 200);
    assert!(page.body().contains("<video") || page.body().contains("\"video\""));
}

/// Receives on `viewer` until its first fragment after the init segment.
async fn started(viewer: &mut live::Viewer) -> Value {
    let mut start = Value::Null;
    loop {
        match viewer.next(Duration::from_secs(20)).await {
            Some(Received::Control(v)) if v["type"] == "start" => start = v,
            Some(Received::Control(v)) => panic!("unexpected {v}"),
            Some(Received::Media(m)) if &m[4..8] == b"moof" && !start.is_null() => return start,
            Some(Received::Media(_)) => {}
            None => panic!("the live view closed before playing"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_viewers_share_one_demux_and_one_that_never_reads_stalls_nobody() {
    let port = free_port();
    let _camera = start_camera(port);
    let site = Site::start(&camera_toml(
        "cam-square",
        &format!("rtsp://127.0.0.1:{port}/cam0"),
        "",
    ));
    let cookie = site.cookie();
    site.wait_decoding(&cookie, &["cam-square"]);
    let console = site.console.clone();
    let stats = move |cookie: String| {
        let console = console.clone();
        tokio::task::spawn_blocking(move || live::camera_stats(&console, &cookie, "cam-square"))
    };
    assert_eq!(
        live::established_on(port),
        1,
        "the gateway's one RTSP session"
    );
    let before = stats(cookie.clone()).await.unwrap();

    // Eight viewers, each playing; one more that never reads (a small receive buffer, so
    // its socket fills at once).
    let readers = Readers::spawn(playing_viewers(&site.console, &cookie, 8).await);
    let stalled = live::connect(&site.console, Some(&cookie), "cam-square", Some(4096))
        .await
        .expect("the stalled viewer connects");

    // For the stall timeout and more: every reader keeps getting frames, the camera keeps
    // being read once and analysed.
    let mut last = readers.counts();
    let mut analysed = before["analysed"].as_u64().unwrap();
    let started_at = Instant::now();
    let mut dropped = false;
    while started_at.elapsed() < Duration::from_secs(60)
        && !(dropped && started_at.elapsed() > Duration::from_secs(15))
    {
        // The scenario's pace: five seconds of live video between looks.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = readers.counts();
        for (i, (a, b)) in last.iter().zip(&now).enumerate() {
            let got = b - a;
            assert!(
                got >= 25,
                "viewer {i} got {got} fragments in 5 s (stalled by the one that never reads?)"
            );
        }
        last = now;
        let st = stats(cookie.clone()).await.unwrap();
        let a = st["analysed"].as_u64().unwrap();
        assert!(a > analysed, "frames analysed stopped at {a}: {st}");
        analysed = a;
        assert_eq!(st["reconnects"], before["reconnects"], "{st}");
        assert_eq!(
            live::established_on(port),
            1,
            "still one RTSP session with 9 viewers"
        );
        dropped = st["live_dropped"].as_u64().unwrap_or(0) >= 1;
        let viewers_now = st["live_viewers"].as_u64().unwrap();
        assert!(viewers_now == 9 || (dropped && viewers_now == 8), "{st}");
        eprintln!("after {:?}: {st}", started_at.elapsed());
    }
    assert!(
        dropped,
        "the viewer that never reads was dropped within 60 s"
    );
    drop(stalled);
    drop(readers);
    drop(site);
}

/// `n` viewers of cam-square, each past its init segment and first fragment.
async fn playing_viewers(console: &str, cookie: &str, n: usize) -> Vec<live::Viewer> {
    let mut viewers = Vec::new();
    for _ in 0..n {
        let mut v = live::connect(console, Some(cookie), "cam-square", None)
            .await
            .expect("a viewer connects");
        let start = started(&mut v).await;
        assert!(start["mime"].as_str().unwrap().contains("avc1."), "{start}");
        viewers.push(v);
    }
    viewers
}

/// Viewers read on their own tasks, counting what they receive; stopped on drop.
struct Readers {
    counts: Vec<Arc<AtomicU64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Readers {
    fn spawn(viewers: Vec<live::Viewer>) -> Readers {
        let counts: Vec<Arc<AtomicU64>> = viewers.iter().map(|_| Arc::default()).collect();
        let tasks = viewers
            .into_iter()
            .zip(counts.iter().cloned())
            .map(|(mut v, n)| {
                tokio::spawn(async move {
                    while let Some(m) = v.next(Duration::from_secs(30)).await {
                        if matches!(m, Received::Media(_)) {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Readers { counts, tasks }
    }

    /// Media messages each viewer has received so far.
    fn counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_stays_connected_across_a_camera_restart_and_is_closed_at_logout() {
    let port = free_port();
    let camera = start_camera(port);
    let site = Site::start(&camera_toml(
        "cam-square",
        &format!("rtsp://127.0.0.1:{port}/cam0"),
        "",
    ));
    let cookie = site.cookie();
    site.wait_decoding(&cookie, &["cam-square"]);
    let mut viewer = live::connect(&site.console, Some(&cookie), "cam-square", None)
        .await
        .expect("a viewer connects");
    let first = started(&mut viewer).await;

    // The camera dies outright (SIGKILL) and comes back on the same port.
    let mut killed = camera;
    let _ = killed.0.kill();
    drop(killed);
    let _camera = start_camera(port);
    // The same socket: the rest of the old session, then a new `start` and its frames.
    let deadline = Instant::now() + Duration::from_secs(60);
    let restarted = loop {
        assert!(Instant::now() < deadline, "no new live session within 60 s");
        match viewer.next(Duration::from_secs(60)).await {
            Some(Received::Control(v)) if v["type"] == "start" => break v,
            Some(_) => {}
            None => panic!("the live view closed when the camera restarted"),
        }
    };
    assert_eq!(restarted["mime"], first["mime"], "{restarted}");
    let mut media = 0;
    while media < 10 {
        match viewer.next(Duration::from_secs(20)).await {
            Some(Received::Media(_)) => media += 1,
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("the live view closed after the restart"),
        }
    }
    let stats = live::camera_stats(&site.console, &cookie, "cam-square");
    assert!(stats["reconnects"].as_u64().unwrap() >= 1, "{stats}");

    // Logging out ends the live view, as it ends the alert event stream.
    let header = format!("Cookie: {cookie}");
    let out = http::request(&site.console, "POST", "/logout", &[&header], "");
    assert_eq!(out.status, 204, "{}", out.raw);
    let deadline = Instant::now() + Duration::from_secs(10);
    while viewer.next(Duration::from_secs(10)).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the live view outlived the session"
        );
    }
    drop(site);
}
