//! Outbox destinations (issue 19): a compound forwards to its platform and its street
//! station; each message is stored once per destination that takes its stream, and each
//! destination drains its own rows, so either upstream can be down without holding back
//! the other.

use gateway::outbox::{self, Class, Destination, NewMessage, Outbox, OutboxRow, Stream};
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
        format!(r#"{{"seq":{seq}}}"#),
        1_000 + seq as i64,
    )
}

fn telemetry(n: u64) -> NewMessage {
    NewMessage::telemetry(key(1_000_000 + n), format!(r#"{{"n":{n}}}"#), 5_000)
}

fn station() -> Destination {
    Destination {
        dest: 1,
        name: "station".into(),
        streams: vec![Stream::Alerts],
    }
}

fn seqs(rows: &[OutboxRow]) -> Vec<Option<u64>> {
    rows.iter().map(|r| r.seq).collect()
}

fn put(store: &mut Connection, msg: NewMessage) {
    let d = msg.class.required_durability();
    outbox::commit_with(store, d, |tx| outbox::enqueue(tx, &msg)).expect("enqueue");
}

#[test]
fn each_destination_drains_its_own_copy_in_the_same_order_and_one_down_holds_back_nothing() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("gateway.db");
    let mut platform = Outbox::open(&path).unwrap();
    outbox::register_destinations(platform.connection(), &[station()]).unwrap();
    let mut station_side = Outbox::open(&path).unwrap().for_destination(1);
    let mut store = Connection::open(&path).unwrap();
    outbox::configure_connection(&mut store).unwrap();
    for seq in 1..=5 {
        put(&mut store, alarm(seq));
    }
    put(&mut store, telemetry(1));

    // The platform is down: the station gets every alert, in order, and no telemetry.
    let rows = station_side.next_batch(100).unwrap();
    assert_eq!(seqs(&rows), [1, 2, 3, 4, 5].map(Some));
    let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
    station_side.ack_batch(&ids).unwrap();
    assert!(station_side.next_batch(100).unwrap().is_empty());

    // The platform comes back later: its copy is all there, the same payloads in the same
    // order, and its telemetry.
    let rows = platform.next_batch(100).unwrap();
    assert_eq!(
        seqs(&rows),
        [1, 2, 3, 4, 5]
            .map(Some)
            .into_iter()
            .chain([None])
            .collect::<Vec<_>>()
    );
    assert_eq!(rows[0].payload, br#"{"seq":1}"#);
    let stats = outbox::stats(&store).unwrap();
    assert_eq!(stats.backlog_total, 6, "the platform's rows only");
    assert_eq!(stats.backlog_by_destination.get("station"), Some(&0));
}

#[test]
fn a_station_removed_from_the_config_leaves_no_rows_behind_and_the_platform_keeps_its_own() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("gateway.db");
    let platform = Outbox::open(&path).unwrap();
    outbox::register_destinations(platform.connection(), &[station()]).unwrap();
    let mut store = Connection::open(&path).unwrap();
    outbox::configure_connection(&mut store).unwrap();
    for seq in 1..=3 {
        put(&mut store, alarm(seq));
    }
    assert_eq!(
        outbox::stats(&store).unwrap().backlog_by_destination["station"],
        3
    );
    // Restarted without the station link: its rows would never be delivered, and alarm
    // rows are never evicted, so they would hold the quota for good.
    let deleted = outbox::register_destinations(platform.connection(), &[]).unwrap();
    assert_eq!(deleted, 3);
    let stats = outbox::stats(&store).unwrap();
    assert_eq!(stats.backlog_total, 3, "the platform's alarms stay");
    assert!(stats.backlog_by_destination.is_empty());
    // The platform cannot be unregistered: an alert always has a row.
    put(&mut store, alarm(4));
    assert_eq!(outbox::stats(&store).unwrap().backlog_total, 4);
}

#[test]
fn a_version_1_outbox_migrates_with_its_rows_belonging_to_the_platform() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("gateway.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE outbox (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 class INTEGER NOT NULL CHECK (class BETWEEN 0 AND 3),
                 stream INTEGER NOT NULL CHECK (stream IN (0, 1)),
                 seq INTEGER CHECK (seq IS NULL OR seq >= 0),
                 created_at_ms INTEGER NOT NULL,
                 size INTEGER NOT NULL CHECK (size > 0),
                 msg_key TEXT NOT NULL,
                 payload BLOB NOT NULL);
             CREATE INDEX outbox_drain ON outbox (class, seq);
             CREATE TABLE outbox_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO outbox_meta VALUES ('schema_version', 1), ('bytes', 100);
             INSERT INTO outbox (class, stream, seq, created_at_ms, size, msg_key, payload)
                 VALUES (0, 0, 7, 1000, 100, 'k7', X'7B7D');",
        )
        .unwrap();
    }
    let mut platform = Outbox::open(&path).unwrap();
    let version: i64 = platform
        .connection()
        .query_row(
            "SELECT value FROM outbox_meta WHERE name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, outbox::SCHEMA_VERSION);
    assert_eq!(seqs(&platform.next_batch(10).unwrap()), [Some(7)]);
}
