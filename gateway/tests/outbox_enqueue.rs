//! Write side of the outbox: atomicity with the caller's transaction,
//! durability policy, batches, migration.

use gateway::outbox::{
    self, Class, Durability, InvalidReason, NewMessage, OutboxError, SCHEMA_VERSION,
};
use rusqlite::Connection;
use tempfile::TempDir;

fn key(n: u64) -> String {
    ulid::Ulid::from_parts(1_700_000_000_000 + n, u128::from(n)).to_string()
}

fn alarm(seq: u64) -> NewMessage {
    NewMessage::alert(
        Class::Alarm,
        key(seq),
        seq,
        br#"{"level":"red"}"#.to_vec(),
        1_000,
    )
}

fn telemetry(n: u64) -> NewMessage {
    NewMessage::telemetry(key(100_000 + n), br#"{"temp":21}"#.to_vec(), 2_000)
}

/// The alert store's connection: configured, migrated, with a scratch
/// `alerts` table standing in for the alert records.
fn open_store(dir: &TempDir) -> Connection {
    let mut conn = Connection::open(dir.path().join("gateway.db")).expect("open");
    outbox::configure_connection(&mut conn).expect("configure");
    outbox::migrate(&conn).expect("migrate");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, body TEXT NOT NULL)",
    )
    .expect("alerts table");
    conn
}

fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

fn store_alert(
    tx: &rusqlite::Transaction<'_>,
    msg: &NewMessage,
) -> Result<outbox::RowId, OutboxError> {
    tx.execute(
        "INSERT INTO alerts (id, body) VALUES (?1, 'smoke in B2')",
        [&msg.key],
    )?;
    outbox::enqueue(tx, msg)
}

/// The alert store's own error type, to show `commit_with` is generic over it.
#[derive(Debug)]
enum StoreError {
    Outbox(#[allow(dead_code)] OutboxError),
    Refused,
}

impl From<OutboxError> for StoreError {
    fn from(err: OutboxError) -> Self {
        StoreError::Outbox(err)
    }
}

#[test]
fn enqueue_commits_together_with_the_callers_alert_record() {
    let dir = TempDir::new().expect("tempdir");
    let mut conn = open_store(&dir);

    let row = outbox::commit_with(&mut conn, Durability::Full, |tx| store_alert(tx, &alarm(1)))
        .expect("commit");

    assert_eq!(count(&conn, "alerts"), 1);
    assert_eq!(count(&conn, "outbox"), 1);
    let rows = outbox::pending_rows(&conn, 10, &Default::default()).expect("pending");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, row);
    assert_eq!(rows[0].key, key(1));
    assert_eq!(rows[0].seq, Some(1));
}

#[test]
fn a_rolled_back_transaction_leaves_neither_alert_nor_outbox_row() {
    let dir = TempDir::new().expect("tempdir");
    let mut conn = open_store(&dir);

    // Explicit rollback after a successful enqueue (the connection is set to
    // FULL by hand here, which is what commit_with does for the caller).
    conn.pragma_update(None, "synchronous", 2).expect("FULL");
    {
        let tx = conn.transaction().expect("begin");
        store_alert(&tx, &alarm(1)).expect("enqueue");
        tx.rollback().expect("rollback");
    }
    // The caller's closure fails after enqueueing (with the caller's own
    // error type): commit_with rolls everything back.
    let failed: Result<(), StoreError> = outbox::commit_with(&mut conn, Durability::Full, |tx| {
        store_alert(tx, &alarm(2))?;
        Err(StoreError::Refused)
    });
    assert!(matches!(failed, Err(StoreError::Refused)));

    assert_eq!(count(&conn, "alerts"), 0);
    assert_eq!(count(&conn, "outbox"), 0);
    let stats = outbox::stats(&conn).expect("stats");
    assert_eq!(stats.bytes, 0, "byte accounting rolls back too");
    assert_eq!(stats.backlog_total, 0);
}

#[test]
fn alarm_rows_are_refused_in_a_transaction_that_commits_with_normal_sync() {
    let dir = TempDir::new().expect("tempdir");
    let mut conn = open_store(&dir); // baseline synchronous=NORMAL
    let tx = conn.transaction().expect("begin");

    let err = outbox::enqueue(&tx, &alarm(1)).expect_err("alarm under NORMAL");
    assert!(
        matches!(
            err,
            OutboxError::WeakDurability {
                class: Class::Alarm,
                required: Durability::Full,
                actual: "NORMAL"
            }
        ),
        "{err}"
    );
    // Telemetry may be committed under NORMAL.
    outbox::enqueue(&tx, &telemetry(1)).expect("telemetry under NORMAL");
    // A batch is held to its strongest class.
    let err = outbox::enqueue_batch(&tx, &[telemetry(2), alarm(2)]).expect_err("mixed batch");
    assert!(matches!(err, OutboxError::WeakDurability { .. }));
    tx.commit().expect("commit");
    assert_eq!(count(&conn, "outbox"), 1);
}

#[test]
fn commit_with_commits_under_full_and_restores_the_previous_level() {
    let dir = TempDir::new().expect("tempdir");
    let mut conn = open_store(&dir);
    let level = |c: &Connection| -> i64 {
        c.pragma_query_value(None, "synchronous", |r| r.get(0))
            .expect("pragma")
    };
    assert_eq!(level(&conn), 1);

    let inside = outbox::commit_with(&mut conn, Durability::Full, |tx| {
        store_alert(tx, &alarm(1))?;
        Ok::<_, OutboxError>(level(tx))
    })
    .expect("commit");
    assert_eq!(inside, 2, "FULL while the alarm transaction runs");
    assert_eq!(level(&conn), 1, "NORMAL restored afterwards");

    conn.pragma_update(None, "synchronous", 2)
        .expect("set FULL");
    let inside = outbox::commit_with(&mut conn, Durability::Normal, |tx| {
        outbox::enqueue(tx, &telemetry(1))?;
        Ok::<_, OutboxError>(level(tx))
    })
    .expect("commit");
    assert_eq!(inside, 1);
    assert_eq!(level(&conn), 2);
}

#[test]
fn commit_with_refuses_to_run_inside_an_open_transaction() {
    let dir = TempDir::new().expect("tempdir");
    let mut conn = open_store(&dir);
    conn.execute_batch("BEGIN").expect("begin");
    let err = outbox::commit_with(&mut conn, Durability::Full, |tx| store_alert(tx, &alarm(1)))
        .expect_err("nested");
    assert!(matches!(err, OutboxError::TransactionAlreadyOpen));
    conn.execute_batch("ROLLBACK").expect("rollback");
}

#[test]
fn enqueue_batch_returns_ids_in_input_order_and_accounts_every_byte() {
    let dir = TempDir::new().expect("tempdir");
    let mut conn = open_store(&dir);
    let msgs: Vec<NewMessage> = (0..500).map(telemetry).collect();

    let ids = outbox::commit_with(&mut conn, Durability::Normal, |tx| {
        outbox::enqueue_batch(tx, &msgs)
    })
    .expect("batch");

    assert_eq!(ids.len(), 500);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let expected: u64 = msgs.iter().map(NewMessage::accounted_size).sum();
    let stats = outbox::stats(&conn).expect("stats");
    assert_eq!(stats.bytes, expected);
    assert_eq!(outbox::recount_bytes(&conn).expect("recount"), expected);
    assert_eq!(stats.backlog_by_class.telemetry, 500);
}

#[test]
fn an_invalid_message_in_a_batch_inserts_nothing() {
    let dir = TempDir::new().expect("tempdir");
    let mut conn = open_store(&dir);
    let mut bad = telemetry(3);
    bad.key = "not-a-ulid".into();
    let msgs = vec![telemetry(1), telemetry(2), bad];

    let err = outbox::commit_with(&mut conn, Durability::Normal, |tx| {
        outbox::enqueue_batch(tx, &msgs)
    })
    .expect_err("invalid");

    assert!(matches!(
        err,
        OutboxError::InvalidMessage {
            reason: InvalidReason::KeyNotUlid,
            ..
        }
    ));
    assert_eq!(count(&conn, "outbox"), 0);
}

#[test]
fn migrate_is_idempotent_and_leaves_user_version_alone() {
    let dir = TempDir::new().expect("tempdir");
    let mut conn = open_store(&dir);
    conn.pragma_update(None, "user_version", 7)
        .expect("user_version");
    outbox::commit_with(&mut conn, Durability::Full, |tx| store_alert(tx, &alarm(1)))
        .expect("commit");

    outbox::migrate(&conn).expect("second migrate");
    outbox::migrate(&conn).expect("third migrate");

    let user_version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("read");
    assert_eq!(user_version, 7);
    assert_eq!(count(&conn, "outbox"), 1, "migrate keeps rows");
    let version: i64 = conn
        .query_row(
            "SELECT value FROM outbox_meta WHERE name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn migrate_refuses_a_schema_from_a_newer_build() {
    let dir = TempDir::new().expect("tempdir");
    let conn = open_store(&dir);
    conn.execute(
        "UPDATE outbox_meta SET value = 99 WHERE name = 'schema_version'",
        [],
    )
    .expect("bump");
    let err = outbox::migrate(&conn).expect_err("too new");
    assert!(matches!(err, OutboxError::SchemaTooNew { found: 99, .. }));
}

#[test]
fn migrate_inside_the_callers_transaction_rolls_back_with_it() {
    let dir = TempDir::new().expect("tempdir");
    let mut conn = Connection::open(dir.path().join("fresh.db")).expect("open");
    outbox::configure_connection(&mut conn).expect("configure");
    let tx = conn.transaction().expect("begin");
    outbox::migrate(&tx).expect("migrate in tx");
    tx.rollback().expect("rollback");
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('outbox', 'outbox_meta')",
            [],
            |r| r.get(0),
        )
        .expect("tables");
    assert_eq!(tables, 0);
}
