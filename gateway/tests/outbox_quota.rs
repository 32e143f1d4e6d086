//! Disk quota: eviction order, alarms never evicted, `buffer_full`,
//! persisted eviction counters.

use std::collections::HashSet;
use std::path::Path;

use gateway::outbox::{self, Class, ClassCounts, Delivery, NewMessage, Outbox, ROW_OVERHEAD_BYTES};
use rusqlite::Connection;
use tempfile::TempDir;

const PAYLOAD: usize = 100;
/// Accounted size of every message in these tests.
const ROW: u64 = PAYLOAD as u64 + 26 + ROW_OVERHEAD_BYTES;

fn key(n: u64) -> String {
    ulid::Ulid::from_parts(1_700_000_000_000 + n, u128::from(n)).to_string()
}

fn message(class: Class, n: u64) -> NewMessage {
    let payload = vec![b'x'; PAYLOAD];
    match class {
        Class::Telemetry => NewMessage::telemetry(key(n), payload, n as i64),
        _ => NewMessage::alert(class, key(n), n, payload, n as i64),
    }
}

fn open_store(path: &Path) -> Connection {
    let mut conn = Connection::open(path).expect("open");
    outbox::configure_connection(&mut conn).expect("configure");
    outbox::migrate(&conn).expect("migrate");
    conn
}

fn put(conn: &mut Connection, msg: &NewMessage) {
    outbox::commit_with(conn, msg.class.required_durability(), |tx| {
        outbox::enqueue(tx, msg)
    })
    .expect("enqueue");
}

/// Mixed traffic: 10 rows of each class, interleaved; row `n` has seq `n`.
fn fill(conn: &mut Connection) {
    for n in 0..40 {
        put(conn, &message(Class::DRAIN_ORDER[(n % 4) as usize], n));
    }
}

/// Remaining seq/number per class, in drain order.
fn remaining(conn: &Connection, class: Class) -> Vec<i64> {
    outbox::pending_rows(conn, usize::MAX, &HashSet::new())
        .expect("pending")
        .into_iter()
        .filter(|r| r.class == class)
        .map(|r| r.created_at_ms)
        .collect()
}

fn counts(alarm: u64, warning: u64, notice: u64, telemetry: u64) -> ClassCounts {
    ClassCounts {
        alarm,
        warning,
        notice,
        telemetry,
    }
}

#[test]
fn under_quota_nothing_is_evicted() {
    let dir = TempDir::new().expect("tempdir");
    let mut conn = open_store(&dir.path().join("gateway.db"));
    fill(&mut conn);

    let report = outbox::enforce_quota(&conn, 40 * ROW).expect("quota");

    assert_eq!(report.evicted, ClassCounts::default());
    assert!(!report.buffer_full);
    assert_eq!(report.bytes_after, 40 * ROW);
    assert_eq!(outbox::stats(&conn).expect("stats").backlog_total, 40);
}

#[test]
fn quota_evicts_oldest_telemetry_then_notice_then_warning_and_never_alarms() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let mut conn = open_store(&path);
    fill(&mut conn);
    assert_eq!(outbox::stats(&conn).expect("stats").bytes, 40 * ROW);

    // 5 rows too many: only the 5 oldest telemetry rows go.
    let report = outbox::enforce_quota(&conn, 35 * ROW).expect("quota");
    assert_eq!(report.evicted, counts(0, 0, 0, 5));
    assert!(!report.buffer_full);
    assert_eq!(remaining(&conn, Class::Telemetry), vec![23, 27, 31, 35, 39]);

    // 10 more: the other 5 telemetry rows, then the 5 oldest notices.
    let report = outbox::enforce_quota(&conn, 25 * ROW).expect("quota");
    assert_eq!(report.evicted, counts(0, 0, 5, 5));
    assert!(remaining(&conn, Class::Telemetry).is_empty());
    assert_eq!(remaining(&conn, Class::Notice), vec![22, 26, 30, 34, 38]);

    // Half a row of room above the alarms: every notice and warning goes.
    let report = outbox::enforce_quota(&conn, 10 * ROW + ROW / 2).expect("quota");
    assert_eq!(report.evicted, counts(0, 10, 5, 0));
    assert!(!report.buffer_full, "the alarms alone fit");
    assert_eq!(report.bytes_after, 10 * ROW);

    // The alarms alone exceed the quota: nothing is evicted, buffer_full.
    let report = outbox::enforce_quota(&conn, 4 * ROW).expect("quota");
    assert_eq!(report.evicted, ClassCounts::default());
    assert!(report.buffer_full);
    assert_eq!(
        remaining(&conn, Class::Alarm),
        vec![0, 4, 8, 12, 16, 20, 24, 28, 32, 36]
    );

    let stats = outbox::stats(&conn).expect("stats");
    assert_eq!(stats.evicted_by_class, counts(0, 10, 10, 10));
    assert_eq!(stats.evicted_total, 30);
    assert_eq!(stats.backlog_by_class, counts(10, 0, 0, 0));
    assert_eq!(stats.bytes, outbox::recount_bytes(&conn).expect("recount"));

    // The counters survive a restart.
    drop(conn);
    let reopened = Outbox::open(&path).expect("reopen");
    let stats = reopened.stats().expect("stats after restart");
    assert_eq!(stats.evicted_by_class, counts(0, 10, 10, 10));
    assert_eq!(stats.bytes, 10 * ROW);
}

#[test]
fn acking_a_row_evicted_while_in_flight_reports_already_gone() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let mut conn = open_store(&path);
    let mut drain = Outbox::open(&path).expect("open");
    for n in 0..4 {
        put(&mut conn, &message(Class::Telemetry, n));
    }
    let sent = drain.next_batch(2).expect("batch");

    let report = drain.enforce_quota(2 * ROW).expect("quota");
    assert_eq!(report.evicted.telemetry, 2);

    assert_eq!(drain.ack(sent[0].id).expect("ack"), Delivery::AlreadyGone);
    assert_eq!(drain.ack(sent[1].id).expect("ack"), Delivery::AlreadyGone);
    let stats = drain.stats().expect("stats");
    assert_eq!(stats.delivered_total, 0);
    assert_eq!(stats.acks_for_missing_rows, 2);
    assert_eq!(stats.backlog_total, 2);
    assert_eq!(drain.inflight_len(), 0);
}

#[test]
fn eviction_inside_the_callers_transaction_rolls_back_with_it() {
    let dir = TempDir::new().expect("tempdir");
    let mut conn = open_store(&dir.path().join("gateway.db"));
    fill(&mut conn);

    let tx = conn.transaction().expect("begin");
    let report = outbox::enforce_quota(&tx, 30 * ROW).expect("quota in tx");
    assert_eq!(report.evicted, counts(0, 0, 0, 10));
    tx.rollback().expect("rollback");

    let stats = outbox::stats(&conn).expect("stats");
    assert_eq!(stats.backlog_total, 40);
    assert_eq!(stats.evicted_total, 0);
    assert_eq!(stats.bytes, 40 * ROW);
}
