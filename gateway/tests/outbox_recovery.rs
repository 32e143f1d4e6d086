//! Crash recovery: in-flight state is memory only, so after a crash every
//! unacked row is pending again, in drain order, and nothing acked returns.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use gateway::outbox::{self, Class, Delivery, Durability, NewMessage, Outbox, RowId};
use rusqlite::Connection;
use tempfile::TempDir;

fn key(n: u64) -> String {
    ulid::Ulid::from_parts(1_700_000_000_000 + n, u128::from(n)).to_string()
}

/// Alert `i` of a mixed stream: classes rotate, telemetry has no seq.
fn message(i: u64) -> NewMessage {
    let payload = format!(r#"{{"i":{i}}}"#);
    match i % 4 {
        0 => NewMessage::alert(Class::Alarm, key(i), i, payload, i as i64),
        1 => NewMessage::alert(Class::Warning, key(i), i, payload, i as i64),
        2 => NewMessage::alert(Class::Notice, key(i), i, payload, i as i64),
        _ => NewMessage::telemetry(key(i), payload, i as i64),
    }
}

fn open_store(path: &Path) -> Connection {
    let mut conn = Connection::open(path).expect("open store");
    outbox::configure_connection(&mut conn).expect("configure");
    outbox::migrate(&conn).expect("migrate");
    conn.execute_batch("CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY)")
        .expect("alerts table");
    conn
}

fn all_pending(conn: &Connection) -> Vec<outbox::OutboxRow> {
    outbox::pending_rows(conn, usize::MAX, &HashSet::new()).expect("pending")
}

#[test]
fn after_a_crash_exactly_the_unacked_rows_are_pending_in_drain_order() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let mut store = open_store(&path);
    let mut drain = Outbox::open(&path).expect("open outbox");

    for i in 0..1_000 {
        let msg = message(i);
        outbox::commit_with(&mut store, msg.class.required_durability(), |tx| {
            outbox::enqueue(tx, &msg)
        })
        .expect("enqueue");
    }
    let expected_order: Vec<RowId> = all_pending(&store).iter().map(|r| r.id).collect();
    let inflight = drain.next_batch(500).expect("hand out 500");
    assert_eq!(inflight.len(), 500);
    // Ack 200 of them, spread over the batch (every other one of the first 400).
    let acked: BTreeSet<RowId> = inflight.iter().step_by(2).take(200).map(|r| r.id).collect();
    for id in &acked {
        assert_eq!(drain.ack(*id).expect("ack"), Delivery::Acked);
    }
    assert_eq!(drain.inflight_len(), 300);

    // Crash: no close, no checkpoint, no cleanup of any kind.
    std::mem::forget(drain);
    std::mem::forget(store);

    let mut reopened = Outbox::open(&path).expect("reopen");
    assert_eq!(
        reopened.inflight_len(),
        0,
        "in-flight state is not persisted"
    );
    let pending = reopened.next_batch(10_000).expect("pending after crash");
    let pending_ids: Vec<RowId> = pending.iter().map(|r| r.id).collect();
    let expected: Vec<RowId> = expected_order
        .into_iter()
        .filter(|id| !acked.contains(id))
        .collect();
    assert_eq!(pending_ids.len(), 800);
    assert_eq!(
        pending_ids, expected,
        "the 800 unacked rows, in drain order"
    );

    let stats = reopened.stats().expect("stats");
    assert_eq!(stats.backlog_total, 800);
    assert_eq!(stats.delivered_total, 200);
    assert_eq!(
        stats.bytes,
        outbox::recount_bytes(reopened.connection()).expect("recount")
    );
}

const CHILD_ENV: &str = "SHOUWANG_OUTBOX_CRASH_CHILD_DB";

/// Runs only as the child process of
/// `a_writer_killed_with_sigkill_loses_no_committed_alert`: writes alerts
/// with their outbox rows and acks some of them, reporting each commit on
/// stdout, until it is killed.
#[test]
#[ignore = "helper: run in a child process by the SIGKILL test"]
fn sigkill_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut store = open_store(Path::new(&path));
    let mut drain = Outbox::open(&path).expect("open outbox");
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        let msg = message(i);
        let id = outbox::commit_with(&mut store, Durability::Full, |tx| {
            tx.execute("INSERT INTO alerts (id) VALUES (?1)", [&msg.key])?;
            outbox::enqueue(tx, &msg)
        })
        .expect("enqueue");
        writeln!(out, "committed {}", id.get()).expect("stdout");
        if i % 7 == 0 {
            let rows = drain.next_batch(3).expect("drain");
            let ids: Vec<RowId> = rows.iter().map(|r| r.id).collect();
            drain.ack_batch(&ids).expect("ack");
            for id in ids {
                writeln!(out, "acked {}", id.get()).expect("stdout");
            }
        }
        out.flush().expect("flush");
    }
}

#[test]
fn a_writer_killed_with_sigkill_loses_no_committed_alert() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "sigkill_child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");

    let mut committed = BTreeSet::new();
    let mut acked = BTreeSet::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child");
        if let Some(id) = line.strip_prefix("committed ") {
            committed.insert(id.parse::<i64>().expect("id"));
        } else if let Some(id) = line.strip_prefix("acked ") {
            acked.insert(id.parse::<i64>().expect("id"));
        }
        if committed.len() >= 400 {
            child.kill().expect("SIGKILL"); // SIGKILL on Unix
            break;
        }
    }
    child.wait().expect("reap child");
    assert!(committed.len() >= 400, "child stopped early");

    // First open after the kill: SQLite recovers from the WAL.
    let store = open_store(&path);
    let outbox = Outbox::open(&path).expect("reopen");
    let present: BTreeSet<i64> = all_pending(&store).iter().map(|r| r.id.get()).collect();

    let lost: Vec<_> = committed
        .difference(&acked)
        .filter(|id| !present.contains(id))
        .collect();
    assert!(lost.is_empty(), "committed, unacked rows lost: {lost:?}");
    assert!(present.is_disjoint(&acked), "acked rows came back");

    // Every outbox row belongs to a stored alert and every stored alert is
    // either still in the outbox or was delivered (atomic commits).
    let alerts: i64 = store
        .query_row("SELECT COUNT(*) FROM alerts", [], |r| r.get(0))
        .expect("alerts");
    let orphans: i64 = store
        .query_row(
            "SELECT COUNT(*) FROM outbox WHERE msg_key NOT IN (SELECT id FROM alerts)",
            [],
            |r| r.get(0),
        )
        .expect("orphans");
    let stats = outbox.stats().expect("stats");
    assert_eq!(orphans, 0);
    assert_eq!(alerts as u64, stats.backlog_total + stats.delivered_total);
    assert_eq!(stats.bytes, outbox::recount_bytes(&store).expect("recount"));
}
