//! The station console as a command room, in a real browser: headless Chromium over W3C
//! WebDriver against the real `gateway` binary and, for the linked evidence, a real RTSP
//! camera (`sim camera`). Sensor alarms bring their cameras' snapshot and clip, the site
//! overview shows where the alarm is, a red alarm sounds until someone acknowledges it, and
//! the page fits a 1366×768 duty PC and an 800×1280 tablet. With `SHOUWANG_SCREENSHOT=1`
//! the tests also rewrite `docs/room-overview.png` and `docs/room-evidence.png` (zh-CN).
//!
//! The WebDriver client is the suite's own ([`e2e::browser`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::browser::Browser;
use e2e::mqtt::Mqtt;
use e2e::sim::start_camera;
use e2e::upstream::free_port;
use e2e::{workspace_root, write_config, Gateway};
use serde_json::{json, Value};

/// How long any single "until the page shows it" wait may take (a loaded 2-core CI box).
const WAIT: Duration = Duration::from_secs(30);

/// A kiosk needs the same to sound the alarm without a click first.
const AUTOPLAY: &str = "--autoplay-policy=no-user-gesture-required";

/// Two buildings, the charging shed (seen by `shed-cam` when there is one) and a smoke
/// detector in each place; the demo's duty officer (password "shouwang-demo").
fn site(shed_cameras: &str) -> String {
    format!(
        r#"
[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 18
[[locations.buildings.units]]
id = "u1"
name = "1单元"
[[locations.buildings.units]]
id = "u2"
name = "2单元"

[[locations.buildings]]
id = "b2"
name = "2号楼"
floors = 18
[[locations.buildings.units]]
id = "u1"
name = "1单元"

[[locations.areas]]
id = "charging-shed"
name = "电动车充电棚"
kind = "charging_shed"
cameras = {shed_cameras}

[rules.timing]
debounce_s = 0
clear_hold_s = 30
escalate_after_s = 3600

[console.response]
ack_within_s = 60
resolve_within_min = {{ default = 15, smoke = 10 }}

[[devices]]
id = "shed-smoke"
kind = "smoke"
name = "充电棚烟感"
location = {{ area = "charging-shed" }}

[[devices]]
id = "b1-u2-0301-smoke"
kind = "smoke"
location = {{ building = "b1", unit = "u2", floor = 3, room = "0301" }}

[[devices]]
id = "b2-u1-0601-smoke"
kind = "smoke"
location = {{ building = "b2", unit = "u1", floor = 6, room = "0601" }}

[[devices]]
id = "b2-u1-0602-gas"
kind = "gas"
location = {{ building = "b2", unit = "u1", floor = 6, room = "0602 厨房" }}

[[devices]]
id = "b1-u1-0101-leak"
kind = "water_leak"
location = {{ building = "b1", unit = "u1", floor = 1, room = "水泵房" }}

[[console.staff]]
username = "duty"
display_name = "值班员"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk"
role = "admin"
"#
    )
}

/// What these scenarios do with the shared WebDriver client ([`e2e::browser`]).
trait RoomBrowser {
    fn wait_true(&self, script: &str, what: &str);
    fn login(&self, base: &str);
    fn resize(&self, width: u32, height: u32);
}

impl RoomBrowser for Browser {
    /// Polls `script` (a `return …` expression) until it returns `true`; `what` explains a
    /// failure, with the last value and the page.
    fn wait_true(&self, script: &str, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.script(script);
            if v == json!(true) {
                return;
            }
            if Instant::now() >= deadline {
                let html = self.script("return document.body ? document.body.outerHTML : ''");
                panic!("{what}: `{script}` gave {v} for {WAIT:?}; page:\n{html}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Logs in as the duty officer and waits for the live feed.
    fn login(&self, base: &str) {
        self.goto(&format!("{base}/login"));
        self.type_into("#username", "duty");
        self.type_into("#password", "shouwang-demo");
        self.click("#login", "login form");
        self.wait_for("#live.ok", "console live feed (SSE) after login");
    }

    /// Resizes the window and waits until the page has the new width.
    fn resize(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
        self.wait_true(
            &format!("return Math.abs(window.innerWidth - {width}) <= 16;"),
            "the window took its new size",
        );
    }
}

/// A gateway on `body` (under the `write_config` header) with a logged-in browser.
struct Room {
    browser: Arc<Browser>,
    /// Kept for its log in failure messages and to stop it on drop.
    gateway: Gateway,
    broker: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Room {
    async fn start(body: String, width: u32, height: u32) -> Room {
        // Fail (never skip) when the browser is missing; checked before anything else starts.
        let browser =
            tokio::task::spawn_blocking(move || Browser::start_with(width, height, &[AUTOPLAY]))
                .await
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &body);
        let mut gateway = Gateway::start(&config, &dir.path().join("data"));
        let ready = gateway.wait_for_message("gateway ready", Duration::from_secs(60));
        let broker: SocketAddr = ready["broker"].as_str().unwrap().parse().unwrap();
        let base = format!("http://{}", ready["console"].as_str().unwrap());
        let browser = Arc::new(browser);
        let b = browser.clone();
        tokio::task::spawn_blocking(move || b.login(&base))
            .await
            .unwrap();
        Room {
            browser,
            gateway,
            broker,
            _dir: dir,
        }
    }

    /// Runs browser steps off the async workers.
    async fn steps<T: Send + 'static>(&self, f: impl FnOnce(&Browser) -> T + Send + 'static) -> T {
        let b = self.browser.clone();
        tokio::task::spawn_blocking(move || f(&b)).await.unwrap()
    }

    /// The gateway's log so far (for failure messages).
    fn log(&mut self) -> String {
        self.gateway.drain_log();
        self.gateway.seen.join("\n")
    }

    async fn sensor(&self, device: &str, payload: &str) {
        let m = Mqtt::connect(self.broker, &format!("{device}-sim")).await;
        m.publish(&format!("sensors/{device}/state"), payload).await;
    }
}

/// The id of the alert row of `kind` from `device`'s place, once it shows.
fn alert_row(b: &Browser, css: &str, what: &str) -> String {
    let row = b.wait_for(css, what);
    b.attribute(&row, "data-id").expect("alert row has data-id")
}

fn save_screenshot(b: &Browser, name: &str) {
    let png = b.screenshot_png();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    if std::env::var("SHOUWANG_SCREENSHOT").as_deref() == Ok("1") {
        let out = workspace_root().join("docs").join(name);
        std::fs::write(&out, &png).unwrap();
        eprintln!("wrote {} ({} bytes)", out.display(), png.len());
    }
}

/// Frames the gateway has analysed from `camera`, read through the console API.
fn analysed(b: &Browser, camera: &str) -> u64 {
    let v = b.script(&format!(
        "const x=new XMLHttpRequest();x.open('GET','/api/cameras',false);x.send();\
         const c=JSON.parse(x.responseText).cameras.find(c=>c.id==='{camera}');\
         return c&&c.stats?c.stats.analysed:0;"
    ));
    v.as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_smoke_alarm_in_the_charging_shed_shows_the_shed_cameras_snapshot_and_plays_its_clip() {
    let port = free_port();
    let _camera = start_camera(port);
    let body = format!(
        "{}\n[[cameras]]\nid = \"shed-cam\"\nname = \"充电棚摄像头\"\nurl = \"rtsp://127.0.0.1:{port}/cam0\"\nlocation = {{ area = \"charging-shed\" }}\nanalyse_fps = 2\n",
        site("[\"shed-cam\"]")
    );
    let mut room = Room::start(body, 1366, 768).await;
    // The camera is watched (its analysis thread serves evidence at its frames).
    room.steps(|b| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while analysed(b, "shed-cam") == 0 {
            assert!(
                Instant::now() < deadline,
                "the shed camera was never analysed"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await;

    let raised = Instant::now();
    room.sensor("shed-smoke", r#"{"smoke":true}"#).await;
    let id = room
        .steps(move |b| {
            let id = alert_row(
                b,
                "tr.alert[data-kind='smoke']",
                "the shed's smoke alarm did not appear",
            );
            // The evidence comes as an update of the sensor's own alert: its thumbnail.
            b.wait_for(
                &format!("tr.alert[data-id='{id}'] img.thumb"),
                "the smoke alert got no snapshot thumbnail",
            );
            b.wait_for(
                &format!("tr.alert[data-id='{id}'] a.live[href='/live?camera=shed-cam']"),
                "the smoke alert has no link to the shed camera's live view",
            );
            b.click(&format!("tr.alert[data-id='{id}']"), "opening the alert");
            b.wait_for(
                &format!("#detail.open[data-id='{id}'] #evidence-img"),
                "the alert detail shows no snapshot",
            );
            b.wait_true(
                "const i=document.getElementById('evidence-img');return i.complete&&i.naturalWidth>0;",
                "the snapshot did not load",
            );
            id
        })
        .await;
    assert!(
        raised.elapsed() < WAIT,
        "evidence took {:?}",
        raised.elapsed()
    );

    // The clip covers seconds after the alarm too: the page retries until it is written,
    // then it plays.
    room.steps(|b| {
        b.wait_true(
            "const v=document.getElementById('evidence-clip');return !!v&&v.readyState>=2;",
            "the clip never loaded",
        );
        b.script("const v=document.getElementById('evidence-clip');v.play();window.__t0=v.currentTime;return null;");
        b.wait_true(
            "const v=document.getElementById('evidence-clip');return v.currentTime>window.__t0+0.5;",
            "the clip does not play",
        );
        b.script("document.querySelectorAll('tr.fresh').forEach(r=>r.classList.remove('fresh'));\
                  const d=document.getElementById('detail');d.scrollTop=document.getElementById('evidence-img').offsetTop-60;window.scrollTo(0,0);return null;");
        save_screenshot(b, "room-evidence.png");
    })
    .await;

    // The gateway's own record: the sensor's alert carries the camera's files.
    let v = room
        .steps(move |b| {
            b.script(&format!(
                "const x=new XMLHttpRequest();x.open('GET','/api/alerts/{id}',false);x.send();return JSON.parse(x.responseText);"
            ))
        })
        .await;
    assert_eq!(v["source"]["id"], "shed-smoke");
    assert_eq!(
        v["readings"]["evidence_camera"],
        "shed-cam",
        "gateway log:\n{}",
        room.log()
    );
    assert_eq!(v["readings"]["linked_cameras"][0]["camera"], "shed-cam");
    assert!(
        v["readings"]["clip"].as_str().unwrap().ends_with(".mp4"),
        "{v}"
    );
    drop(room);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_smoke_alarm_whose_camera_is_down_shows_at_once_and_then_says_it_has_no_evidence() {
    // Nothing listens on the camera's port: the camera is down from the start.
    let port = free_port();
    let body = format!(
        "{}\n[[cameras]]\nid = \"shed-cam\"\nurl = \"rtsp://127.0.0.1:{port}/cam0\"\nlocation = {{ area = \"charging-shed\" }}\n",
        site("[\"shed-cam\"]")
    );
    let room = Room::start(body, 1366, 768).await;
    room.sensor("shed-smoke", r#"{"smoke":true}"#).await;
    room.steps(|b| {
        let id = alert_row(
            b,
            "tr.alert[data-kind='smoke']",
            "the smoke alarm did not appear",
        );
        // The alarm came before the camera's time to answer was over: it did not wait.
        let first = b.script(&format!(
            "const a=alerts.get('{id}');return [a.event, a.readings.linked_cameras===undefined];"
        ));
        assert_eq!(
            first,
            json!(["raised", true]),
            "the alarm waited for the camera"
        );
        b.click(&format!("tr.alert[data-id='{id}']"), "opening the alarm");
        b.wait_for(
            "#detail.open p.linked[data-camera='shed-cam'] span.no",
            "the alarm does not say its camera gave no evidence",
        );
        assert_eq!(
            b.script("return document.querySelector('#detail p.linked span.no').textContent;"),
            json!("无联动证据：摄像头无响应（离线？）")
        );
        assert_eq!(
            b.script(&format!(
                "const a=alerts.get('{id}');return [a.state, a.level, !!a.readings.snapshot];"
            )),
            json!(["raised", "red", false]),
            "the alarm is otherwise as it was"
        );
        b.wait_for(
            "#detail a.live[href='/live?camera=shed-cam']",
            "the live view link is there all the same",
        );
    })
    .await;
    drop(room);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_site_overview_colours_the_building_of_a_smoke_alarm_red_and_not_the_other() {
    let room = Room::start(site("[]"), 1366, 768).await;
    room.steps(|b| {
        b.wait_for(
            ".place.building[data-building='b1']",
            "the overview shows no buildings",
        );
        b.wait_for(
            ".place.area[data-area='charging-shed']",
            "the shed is not drawn",
        );
        assert_eq!(
            b.script("return document.querySelectorAll('#overview .place.red').length;"),
            json!(0),
            "nothing is red before any alarm"
        );
    })
    .await;
    room.sensor("b2-u1-0601-smoke", r#"{"smoke":true}"#).await;
    room.sensor("b1-u1-0101-leak", r#"{"water_leak":true}"#)
        .await;
    room.steps(|b| {
        let id = alert_row(b, "tr.alert[data-kind='smoke']", "the smoke alarm did not appear");
        alert_row(b, "tr.alert[data-kind='water_leak']", "the leak did not appear");
        b.wait_for(
            ".place.building.red[data-building='b2']",
            "building 2 is not red",
        );
        b.wait_for(
            ".place.unit.red[data-place='unit:b2/u1']",
            "unit 1 of building 2 is not red",
        );
        let b1 = b.script(
            "const p=document.querySelector(\".place.building[data-building='b1']\");return p.dataset.level||null;",
        );
        assert_ne!(b1, json!("red"), "building 1 has only a leak: not red");
        assert_eq!(
            b.script("return document.querySelector(\".place.area[data-area='charging-shed']\").dataset.level||null;"),
            Value::Null,
            "the shed has no alarm"
        );
        // A click on building 2: the list shows its alerts only and its alarm opens.
        b.click(".place.building[data-building='b2'] > .name", "building 2");
        b.wait_for(
            &format!("#detail.open[data-id='{id}']"),
            "the building's alarm did not open",
        );
        b.wait_true(
            "return [...document.querySelectorAll('tr.alert')].every(r=>r.dataset.kind==='smoke')&&document.querySelectorAll('tr.alert').length===1;",
            "the list is not filtered to building 2",
        );
        b.script("document.querySelectorAll('tr.fresh').forEach(r=>r.classList.remove('fresh'));return null;");
        save_screenshot(b, "room-overview.png");
        b.click("#place-chip", "clearing the place filter");
        b.wait_true(
            "return document.querySelectorAll('tr.alert').length===2;",
            "clearing the place filter shows every alert again",
        );
    })
    .await;
    drop(room);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_red_alert_plays_the_alarm_sound_until_it_is_acknowledged_then_stops() {
    let room = Room::start(site("[]"), 1366, 768).await;
    room.steps(|b| {
        b.wait_true(
            "return !!document.getElementById('alarm');",
            "no alarm sound element",
        );
        assert_eq!(
            b.script("return document.getElementById('alarm').paused;"),
            json!(true),
            "silent without alarms"
        );
    })
    .await;
    room.sensor("b1-u2-0301-smoke", r#"{"smoke":true}"#).await;
    room.steps(|b| {
        let id = alert_row(b, "tr.alert[data-level='red']", "the red alarm did not appear");
        b.wait_true(
            "const a=document.getElementById('alarm');return !a.paused&&window.__alarm.plays>=1;",
            "the alarm sound does not play",
        );
        // It repeats while nobody acknowledges: the tone is 1 s long.
        b.wait_true("return window.__alarm.plays>=3;", "the alarm sound did not repeat");
        assert_eq!(
            b.script("return window.__alarm.blocked;"),
            json!(false),
            "autoplay was allowed"
        );
        // Pinned at the top with its running timer.
        assert_eq!(
            b.script("const r=document.querySelector('tr.alert');return [r.dataset.id, r.classList.contains('pinned')];"),
            json!([id, true])
        );
        b.wait_true(
            &format!("return /^0:0[1-9] \\/ 60 s$/.test(document.querySelector(\"tr.alert[data-id='{id}'] td.timer\").textContent);"),
            "the response timer does not run",
        );
        b.click(&format!("tr.alert[data-id='{id}']"), "opening the alarm");
        b.click("#detail #ack", "acknowledge button");
        b.wait_true(
            "return document.getElementById('alarm').paused;",
            "the alarm sound did not stop on acknowledgement",
        );
        let plays = b.script("return window.__alarm.plays;");
        // The scenario: three more seconds of quiet (three more tones if it still rang).
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            b.script("return window.__alarm.plays;"),
            plays,
            "the alarm sounded again after acknowledgement"
        );
        assert_eq!(
            b.script(&format!("return document.querySelector(\"tr.alert[data-id='{id}']\").classList.contains('pinned');")),
            json!(false),
            "an acknowledged alert is no longer pinned"
        );
        // Acknowledged within the minute: the response figures count it as met.
        let v = b.script(
            "const x=new XMLHttpRequest();x.open('GET','/api/stats/response-times',false);x.send();return JSON.parse(x.responseText);",
        );
        assert_eq!(v["targets"]["ack_within_s"], 60);
        assert_eq!(v["targets"]["resolve_within_min"]["smoke"], 10);
        assert_eq!(v["targets"]["resolve_within_min"]["gas"], 15);
        let smoke = &v["against_targets"]["last_24h"]["smoke"];
        assert_eq!(smoke["acknowledge"]["met"], 1, "{v}");
        assert_eq!(smoke["resolve"]["pending"], 1, "{v}");
        b.click("nav button[data-page='stats']", "the response times page");
        b.wait_true(
            "const r=document.querySelector(\"#stats tr[data-kind='smoke'][data-period='last_24h'] .met\");return !!r&&r.textContent==='✓ 1';",
            "the response times page shows the acknowledgement met",
        );
    })
    .await;
    drop(room);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_layout_at_1366x768_and_800x1280_has_no_horizontal_overflow() {
    let room = Room::start(site("[]"), 1366, 768).await;
    room.sensor("b2-u1-0601-smoke", r#"{"smoke":true}"#).await;
    room.sensor("b2-u1-0602-gas", r#"{"gas_lel_pct":30.0}"#)
        .await;
    room.sensor("b1-u1-0101-leak", r#"{"water_leak":true}"#)
        .await;
    room.steps(|b| {
        b.wait_true(
            "return document.querySelectorAll('tr.alert').length===3;",
            "three alerts show",
        );
        // With an alert open: the widest the page gets.
        b.click("tr.alert[data-kind='gas']", "opening an alert");
        b.wait_for("#detail.open", "the detail did not open");
        for (w, h) in [(1366, 768), (800, 1280)] {
            b.resize(w, h);
            if w == 800 {
                save_screenshot(b, "room-tablet.png");
            }
            let fit = b.script(
                "return [document.documentElement.scrollWidth, window.innerWidth];",
            );
            assert!(
                fit[0].as_u64() <= fit[1].as_u64(),
                "at {w}×{h} the page is wider than the window: scrollWidth, innerWidth = {fit}"
            );
            for id in ["overview", "alert-table", "detail"] {
                let seen = b.script(&format!(
                    "const r=document.getElementById('{id}').getBoundingClientRect();\
                     return r.width>0&&r.height>0&&r.left>=0&&r.right<=window.innerWidth+1&&r.top<window.innerHeight;"
                ));
                assert_eq!(seen, json!(true), "#{id} is not visible at {w}×{h}");
            }
        }
    })
    .await;
    drop(room);
}
