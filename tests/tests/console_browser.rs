//! The station console in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over W3C WebDriver, against the real `gateway` binary with a real
//! mosquitto upstream. A duty officer logs in, a smoke alarm appears live (no reload), the
//! officer opens it and acknowledges it; the page, the gateway's store and the upstream
//! platform all agree. With `SHOUWANG_SCREENSHOT=1` the test also rewrites `docs/console.png`.
//!
//! The WebDriver client is e2e::browser (a few JSON calls over plain HTTP on loopback).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::browser::{Browser, WAIT};
use e2e::mqtt::Mqtt;
use e2e::upstream::{Collector, Upstream};
use e2e::{workspace_root, write_config, Gateway};
use serde_json::json;

const SITE: &str = r#"
[[locations.buildings]]
id = "b1"
name = "Building 1"
floors = 18

[[locations.buildings.units]]
id = "u1"
name = "Unit 1"

[[locations.buildings]]
id = "b2"
name = "Building 2"
floors = 18

[[locations.buildings.units]]
id = "u1"
name = "Unit 1"

[[locations.areas]]
id = "charging-shed"
name = "E-bike charging shed"
kind = "charging_shed"

[rules.timing]
debounce_s = 0
clear_hold_s = 30

[[devices]]
id = "b1-u1-1201-smoke"
kind = "smoke"
location = { building = "b1", unit = "u1", floor = 12, room = "1201" }

[[devices]]
id = "b2-u1-0601-gas"
kind = "gas"
location = { building = "b2", unit = "u1", floor = 6, room = "0601" }

[[devices]]
id = "b1-u1-0101-leak"
kind = "water_leak"
location = { building = "b1", unit = "u1", floor = 1, room = "pump room" }

[[devices]]
id = "shed-bay-01-battery"
kind = "ebike_battery"
location = { area = "charging-shed", room = "bay 01" }

# The demo's duty officer (password "shouwang-demo"), as in edge-config/examples/demo.toml.
[[console.staff]]
username = "duty"
display_name = "Duty officer"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk"
role = "admin"
"#;

fn alert_state(db: &Path, id: &str) -> Option<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.busy_timeout(Duration::from_secs(5)).ok()?;
    conn.query_row("SELECT state FROM alerts WHERE id = ?1", [id], |r| r.get(0))
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duty_officer_sees_a_smoke_alarm_live_and_acknowledges_it_in_the_browser() {
    let started = Instant::now();
    // Fail (never skip) when the browser is missing; checked before anything else starts.
    let browser = tokio::task::spawn_blocking(Browser::start).await.unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(tmp.path());
    let collector = Collector::start(&upstream, "platform-console").await;
    let config = write_config(
        tmp.path(),
        &format!("{SITE}\n{}", upstream.uplink_toml("gw.pass")),
    );
    let data = tmp.path().join("data");
    let mut gw = Gateway::start(&config, &data);
    let ready = gw.wait_for_message("gateway ready", Duration::from_secs(30));
    let broker: SocketAddr = ready["broker"].as_str().unwrap().parse().unwrap();
    let console = ready["console"].as_str().unwrap().to_owned();

    // Everything below talks to the browser synchronously; keep it off the async workers.
    let browser = std::sync::Arc::new(browser);
    let b = browser.clone();
    let base = format!("http://{console}");
    tokio::task::spawn_blocking(move || {
        b.goto(&format!("{base}/login"));
        b.type_into("#username", "duty");
        b.type_into("#password", "shouwang-demo");
        b.click("#login", "login form");
        // Logged in: the console page, its live feed connected.
        b.wait_for("#live.ok", "console live feed (SSE) after login");
        assert_eq!(
            b.url(),
            format!("{base}/"),
            "login did not land on the console"
        );
        // Chinese first: zh-CN although this browser asks for English (en-US).
        assert_eq!(
            b.script("return document.documentElement.lang;"),
            json!("zh-CN"),
            "the console is in zh-CN by default"
        );
        assert_eq!(
            b.script("return document.querySelector('[data-t=alerts]').textContent;"),
            json!("警报")
        );
        // A marker that a reload or navigation would wipe.
        b.script("window.__noReload = 'still-here'; return null;");
    })
    .await
    .unwrap();

    let sensor = Mqtt::connect(broker, "b1-u1-1201-smoke").await;
    sensor
        .publish("sensors/b1-u1-1201-smoke/state", r#"{"smoke":true}"#)
        .await;

    let b = browser.clone();
    let id = tokio::task::spawn_blocking(move || {
        let row = b.wait_for(
            "tr.alert[data-kind='smoke']",
            "the smoke alarm did not appear live in the console",
        );
        assert_eq!(
            b.script("return window.__noReload || null;"),
            json!("still-here"),
            "the page reloaded instead of showing the alert live"
        );
        let id = b.attribute(&row, "data-id").expect("alert row has data-id");
        b.click(&format!("tr.alert[data-id='{id}']"), "opening the alert");
        b.wait_for(
            &format!("#detail.open[data-id='{id}']"),
            "the alert detail did not open",
        );
        b.click("#detail #ack", "acknowledge button");
        b.wait_for(
            &format!("#detail.open[data-id='{id}'][data-state='acknowledged']"),
            "the detail does not show the alert acknowledged",
        );
        b.wait_for(
            &format!("tr.alert[data-id='{id}'][data-state='acknowledged']"),
            "the list does not show the alert acknowledged",
        );
        id
    })
    .await
    .unwrap();

    // The gateway's store.
    let db = data.join("shouwang.db");
    let deadline = Instant::now() + WAIT;
    loop {
        let state = alert_state(&db, &id);
        if state.as_deref() == Some("acknowledged") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "store has alert {id} in state {state:?}, not acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The upstream platform.
    let acked = collector
        .wait_until(WAIT, |a| {
            a.iter().any(|r| {
                r.json["id"] == id.as_str()
                    && r.json["event"] == "acknowledged"
                    && r.json["acknowledged_by"] == "duty"
            })
        })
        .await;
    assert!(
        acked,
        "upstream never received the acknowledged event for {id}; received: {:?}; gateway log:\n{}",
        collector
            .alerts()
            .iter()
            .map(|r| (r.json["id"].clone(), r.json["event"].clone()))
            .collect::<Vec<_>>(),
        gw.seen.join("\n")
    );

    // More live alerts of other levels, for the screenshot (and a busier page).
    let others = [
        ("b2-u1-0601-gas", r#"{"gas_lel_pct":12.5}"#, "gas"),
        (
            "b1-u1-0101-leak",
            r#"{"water_leak":true,"battery_pct":4}"#,
            "water_leak",
        ),
        (
            "shed-bay-01-battery",
            r#"{"battery_temp_c":66.0}"#,
            "ebike_battery",
        ),
    ];
    for (device, payload, _) in others {
        sensor
            .publish(&format!("sensors/{device}/state"), payload)
            .await;
    }
    let b = browser.clone();
    let png = tokio::task::spawn_blocking(move || {
        for (_, _, kind) in others {
            b.wait_for(
                &format!("tr.alert[data-kind='{kind}']"),
                "a further live alert did not appear",
            );
        }
        // Let the "fresh" flash animation (2 s) settle before the picture.
        b.script(
            "document.querySelectorAll('tr.fresh').forEach(r => r.classList.remove('fresh')); return null;",
        );
        b.screenshot_png()
    })
    .await
    .unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    if std::env::var("SHOUWANG_SCREENSHOT").as_deref() == Ok("1") {
        let out = workspace_root().join("docs/console.png");
        std::fs::write(&out, &png).unwrap();
        eprintln!("wrote {} ({} bytes)", out.display(), png.len());
    }

    drop(browser);
    eprintln!("console browser scenario took {:?}", started.elapsed());
}
