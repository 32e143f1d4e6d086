//! Upgrades keep the outbox (issue 14): a database written by the previous release's gateway
//! (the last commit before schema versions, `tests/fixtures/previous-release/`, made by its
//! `make.sh` from that commit's binary) is restored into a fresh data directory and opened
//! by this build's `gateway`, which migrates it at start-up and delivers every row the old
//! one left undelivered to a real mosquitto upstream.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::mqtt::Mqtt;
use e2e::upstream::{Collector, Received, Upstream};
use e2e::{eventually, http, workspace_root, Gateway};
use gateway::db::{FILE_NAME, SCHEMA_VERSION};
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    workspace_root()
        .join("tests/fixtures/previous-release")
        .join(name)
}

/// Restores the fixture's SQL dump as `data/shouwang.db` (the daemon's file name) and
/// returns its path.
fn restore(data: &Path) -> PathBuf {
    std::fs::create_dir_all(data).unwrap();
    let db = data.join(FILE_NAME);
    let sql = std::fs::read_to_string(fixture("gateway.sql")).unwrap();
    Connection::open(&db).unwrap().execute_batch(&sql).unwrap();
    db
}

/// The fixture's configuration with its `[uplink]` (a port where nothing listens) replaced
/// by `uplink`, written into `dir`.
fn config_with_uplink(dir: &Path, uplink: &str) -> PathBuf {
    let text = std::fs::read_to_string(fixture("gateway.toml")).unwrap();
    let cut = text
        .find("\n[uplink]\n")
        .expect("the fixture's config ends with [uplink]");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, format!("{}\n{uplink}", &text[..cut])).unwrap();
    path
}

fn read_only(db: &Path) -> Connection {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

fn user_version(conn: &Connection) -> u32 {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

fn next_seq(conn: &Connection) -> u64 {
    let next: i64 = conn
        .query_row(
            "SELECT value FROM alerts_meta WHERE name = 'next_seq'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    u64::try_from(next).unwrap()
}

/// What the previous release left in its outbox.
struct Undelivered {
    /// `(alert id, seq)` of every alert row, in the outbox's drain order (class, seq, id).
    alerts: Vec<(String, u64)>,
    /// Every telemetry payload, as canonical JSON text.
    telemetry: Vec<String>,
    /// The last row id (rows written after the upgrade have larger ones: AUTOINCREMENT).
    last_id: i64,
}

fn undelivered(conn: &Connection) -> Undelivered {
    let mut stmt = conn
        .prepare("SELECT stream, seq, payload, id FROM outbox ORDER BY class, seq, id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap);
    let mut out = Undelivered {
        alerts: Vec::new(),
        telemetry: Vec::new(),
        last_id: 0,
    };
    for (stream, seq, payload, id) in rows {
        out.last_id = out.last_id.max(id);
        let json: Value = serde_json::from_slice(&payload).unwrap();
        match (stream, seq) {
            (0, Some(seq)) => {
                let seq = u64::try_from(seq).unwrap();
                assert_eq!(json["seq"], seq, "the row's seq is its payload's");
                out.alerts
                    .push((json["id"].as_str().unwrap().to_owned(), seq));
            }
            (1, None) => out.telemetry.push(json.to_string()),
            other => panic!("unexpected outbox row {other:?}"),
        }
    }
    out
}

/// Ids of the alerts still active (raised, not cleared), sorted.
fn active_alerts(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT id FROM alerts WHERE active = 1 ORDER BY id")
        .unwrap();
    let ids = stmt.query_map([], |r| r.get(0)).unwrap();
    ids.map(Result::unwrap).collect()
}

/// How many times each text occurs.
fn tally<'a>(items: impl IntoIterator<Item = &'a String>) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item.as_str()).or_insert(0) += 1;
    }
    counts
}

/// How many of the `old` readings the platform has not received yet.
fn readings_short(collector: &Collector, old: &[String]) -> usize {
    let telemetry: Vec<String> = collector.telemetry().iter().map(Value::to_string).collect();
    let received = tally(&telemetry);
    tally(old)
        .into_iter()
        .map(|(payload, n)| n.saturating_sub(received.get(payload).copied().unwrap_or(0)))
        .sum()
}

/// The unit's resident link path (`/r/…`) the previous release issued (`links.tsv`).
fn resident_link(unit: &str) -> String {
    let tsv = std::fs::read_to_string(fixture("links.tsv")).unwrap();
    tsv.lines()
        .find_map(|l| l.strip_prefix(&format!("{unit}\t")))
        .and_then(|url| url.strip_prefix("http://gateway"))
        .unwrap_or_else(|| panic!("no link for {unit} in {tsv}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_written_by_the_previous_release_is_delivered_in_order_by_this_one() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(tmp.path());
    let collector = Collector::start(&upstream, "platform-upgrade").await;
    let data = tmp.path().join("data");
    let db = restore(&data);
    let (old, next, active) = {
        let conn = read_only(&db);
        assert_eq!(
            user_version(&conn),
            0,
            "the fixture predates schema versions"
        );
        (undelivered(&conn), next_seq(&conn), active_alerts(&conn))
    };
    assert!(
        old.alerts.len() >= 20 && !old.telemetry.is_empty(),
        "the fixture holds alerts and readings: {} alert rows, {} telemetry rows",
        old.alerts.len(),
        old.telemetry.len()
    );
    let last = old.alerts.iter().map(|(_, seq)| *seq).max().unwrap();
    assert_eq!(
        next,
        last + 1,
        "the fixture's sequence goes on after its last row"
    );

    let config = config_with_uplink(tmp.path(), &upstream.uplink_toml("gw.pass"));
    let mut gw = Gateway::start(&config, &data);
    let ready = gw.wait_for_message("gateway ready", Duration::from_secs(30));
    let broker: std::net::SocketAddr = ready["broker"].as_str().unwrap().parse().unwrap();
    let console = ready["console"].as_str().unwrap().to_owned();
    assert_eq!(
        user_version(&read_only(&db)),
        SCHEMA_VERSION,
        "migrated at start-up"
    );

    // Every old row leaves the outbox (acknowledged upstream, then deleted).
    eventually(Duration::from_secs(60), "the old rows delivered", || {
        let left: i64 = read_only(&db)
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE id <= ?1",
                [old.last_id],
                |r| r.get(0),
            )
            .unwrap();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} rows left"))
        }
    })
    .await;
    // The platform has them once each, in the outbox's order (class, then seq).
    let old_arrived = collector
        .wait_until(Duration::from_secs(30), |a| {
            a.iter().filter(|r| r.seq < next).count() >= old.alerts.len()
        })
        .await;
    assert!(old_arrived, "{:?}", collector.counts());
    let arrived: Vec<(String, u64)> = collector
        .alerts()
        .iter()
        .filter(|r| r.seq < next)
        .map(|r| (r.json["id"].as_str().unwrap_or("").to_owned(), r.seq))
        .collect();
    assert_eq!(arrived, old.alerts, "each old alert row once, in order");
    eventually(
        Duration::from_secs(30),
        "every old reading upstream",
        || match readings_short(&collector, &old.telemetry) {
            0 => Ok(()),
            n => Err(format!("{n} readings missing")),
        },
    )
    .await;

    // The alerts the previous release left raised carry on: unacknowledged for longer than
    // escalate_after_s (180 s), each is escalated under its old id, taking the next numbers.
    let escalated = |r: &Received| r.json["event"] == "escalated" && r.seq >= next;
    let all_escalated = collector
        .wait_until(Duration::from_secs(30), |a| {
            a.iter().filter(|r| escalated(r)).count() >= active.len()
        })
        .await;
    assert!(
        all_escalated,
        "escalations of {active:?}: {:?}",
        collector.alerts()
    );
    let mut escalations: Vec<(String, u64)> = collector
        .alerts()
        .iter()
        .filter(|r| escalated(r))
        .map(|r| (r.json["id"].as_str().unwrap_or("").to_owned(), r.seq))
        .collect();
    escalations.sort_by_key(|(_, seq)| *seq);
    let (ids, seqs): (Vec<String>, Vec<u64>) = escalations.into_iter().unzip();
    let mut ids_sorted = ids.clone();
    ids_sorted.sort();
    assert_eq!(ids_sorted, active, "each still-active old alert once");
    let after_old: Vec<u64> = (next..next + active.len() as u64).collect();
    assert_eq!(seqs, after_old, "numbered right after the old rows");

    // A new alarm after the upgrade continues the sequence and reaches the platform too.
    let sensors = Mqtt::connect(broker, "upgrade-gas").await;
    sensors
        .publish("sensors/b1-u1-301-gas/state", r#"{"gas_lel_pct":30.0}"#)
        .await;
    let is_new_gas = |r: &Received| r.json["kind"] == "gas" && r.seq >= next;
    let arrived = collector
        .wait_until(Duration::from_secs(30), |a| a.iter().any(is_new_gas))
        .await;
    assert!(arrived, "the new gas alarm reaches the platform");
    let new = collector.alerts().into_iter().find(is_new_gas).unwrap();
    let last = seqs.last().copied().unwrap_or(next - 1);
    assert_eq!(new.seq, last + 1, "the sequence goes on: {}", new.json);
    assert_eq!(
        (&new.json["event"], &new.json["level"]),
        (&"raised".into(), &"red".into())
    );
    assert!(
        !old.alerts
            .iter()
            .any(|(id, _)| new.json["id"] == id.as_str()),
        "a new alert: {}",
        new.json
    );

    // The resident link the previous release issued still opens its unit's page.
    let link = resident_link("b1/u1");
    let (status, body) = http::get(&console, &format!("{link}/alerts"));
    assert_eq!(status, 200, "the old link resolves: {body}");
    let forged = format!("{}x", link.trim_end_matches('/'));
    assert_eq!(
        http::get(&console, &format!("{forged}/alerts")).0,
        404,
        "and a wrong one does not"
    );

    gw.signal(libc::SIGTERM);
    let status = gw
        .wait_exit(Duration::from_secs(30))
        .expect("gateway exits");
    assert!(status.success(), "{status:?}");
    let conn = read_only(&db);
    assert_eq!(user_version(&conn), SCHEMA_VERSION);
    assert_eq!(next_seq(&conn), new.seq + 1);
    let counts = collector.counts();
    for seq in 1..=new.seq {
        assert_eq!(counts.get(&seq), Some(&1), "event {seq} arrived once");
    }
    let telemetry: Vec<String> = collector.telemetry().iter().map(Value::to_string).collect();
    let received = tally(&telemetry);
    for (payload, n) in tally(&old.telemetry) {
        assert_eq!(received.get(payload), Some(&n), "reading {payload} once");
    }
}

/// The whole database as text: `user_version`, every schema object and every row of every
/// table (rows sorted), to compare a file before and after.
fn contents(conn: &Connection) -> Vec<String> {
    let mut out = vec![format!("user_version {}", user_version(conn))];
    let mut stmt = conn
        .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        .unwrap();
    let objects: Vec<(String, String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (kind, name, sql) in objects {
        out.push(format!("{kind} {name}: {sql:?}"));
        if kind != "table" {
            continue;
        }
        let mut rows = conn.prepare(&format!("SELECT * FROM \"{name}\"")).unwrap();
        let width = rows.column_count();
        let mut lines: Vec<String> = rows
            .query_map([], |r| {
                (0..width)
                    .map(|i| r.get::<_, rusqlite::types::Value>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap()
            .map(|row| format!("  {name} {:?}", row.unwrap()))
            .collect();
        lines.sort();
        out.extend(lines);
    }
    out
}

#[test]
fn a_previous_release_database_whose_migration_fails_midway_is_left_at_its_old_version_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let db = restore(&data);
    // Make the version-1 step fail half-way on this copy: it must create the index dropped
    // here (its 3rd statement), then its insert into alerts_meta (the 6th) is aborted.
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "DROP INDEX alerts_by_time;
             CREATE TRIGGER interrupt_migration BEFORE INSERT ON alerts_meta
             BEGIN SELECT RAISE(ABORT, 'migration interrupted by the test'); END;",
        )
        .unwrap();
    let before = contents(&read_only(&db));
    assert!(before[0] == "user_version 0", "{}", before[0]);

    let mut gw = Gateway::start(&fixture("gateway.toml"), &data);
    let status = gw
        .wait_exit(Duration::from_secs(30))
        .expect("the gateway gives up");
    assert!(!status.success(), "{status:?}");
    assert!(
        gw.seen
            .iter()
            .any(|l| l.contains("schema migration to version 1 failed")
                && l.contains("migration interrupted by the test")),
        "the log says why:\n{}",
        gw.seen.join("\n")
    );
    assert!(
        !gw.seen.iter().any(|l| l.contains("gateway ready")),
        "it never ran on a half-migrated file"
    );

    let after = contents(&read_only(&db));
    assert_eq!(
        after, before,
        "the failed step left nothing behind: old version, no new index, every row as it was"
    );

    // Once the cause is gone, the next start migrates the same file.
    Connection::open(&db)
        .unwrap()
        .execute_batch("DROP TRIGGER interrupt_migration;")
        .unwrap();
    let conn = gateway::db::open(&db).unwrap();
    assert_eq!(user_version(&conn), SCHEMA_VERSION);
    let index: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'alerts_by_time'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(index, 1, "the step ran whole this time");
}
