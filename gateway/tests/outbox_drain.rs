//! Drain side of the outbox: priority and order, in-flight tracking,
//! requeue on reconnect, acknowledgement.

use gateway::outbox::{
    self, Class, Delivery, Durability, NewMessage, Outbox, OutboxRow, RowId, Stream,
};
use rusqlite::Connection;
use tempfile::TempDir;

fn key(n: u64) -> String {
    ulid::Ulid::from_parts(1_700_000_000_000 + n, u128::from(n)).to_string()
}

fn alert(class: Class, seq: u64) -> NewMessage {
    NewMessage::alert(
        class,
        key(seq),
        seq,
        format!(r#"{{"seq":{seq}}}"#),
        1_000 + seq as i64,
    )
}

fn telemetry(n: u64) -> NewMessage {
    NewMessage::telemetry(
        key(1_000_000 + n),
        format!(r#"{{"n":{n}}}"#),
        5_000 + n as i64,
    )
}

struct Fixture {
    _dir: TempDir,
    /// The alert store's connection (writer).
    store: Connection,
    /// The uplink's drain side, on its own connection.
    outbox: Outbox,
}

fn fixture() -> Fixture {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("gateway.db");
    let outbox = Outbox::open(&path).expect("open outbox");
    let mut store = Connection::open(&path).expect("open store");
    outbox::configure_connection(&mut store).expect("configure");
    Fixture {
        _dir: dir,
        store,
        outbox,
    }
}

impl Fixture {
    fn put(&mut self, msg: NewMessage) -> RowId {
        let durability = msg.class.required_durability();
        outbox::commit_with(&mut self.store, durability, |tx| outbox::enqueue(tx, &msg))
            .expect("enqueue")
    }
}

/// (class, seq or telemetry number) of each row, for readable assertions.
fn labels(rows: &[OutboxRow]) -> Vec<(Class, u64)> {
    rows.iter()
        .map(|r| {
            let n = match r.seq {
                Some(seq) => seq,
                None => serde_json::from_slice::<serde_json::Value>(&r.payload)
                    .ok()
                    .and_then(|v| v["n"].as_u64())
                    .unwrap_or(u64::MAX),
            };
            (r.class, n)
        })
        .collect()
}

#[test]
fn alarm_rows_drain_before_telemetry() {
    let mut f = fixture();
    f.put(telemetry(1));
    f.put(telemetry(2));
    f.put(alert(Class::Alarm, 10));

    let rows = f.outbox.next_batch(10).expect("batch");
    assert_eq!(
        labels(&rows),
        vec![
            (Class::Alarm, 10),
            (Class::Telemetry, 1),
            (Class::Telemetry, 2)
        ]
    );
    assert_eq!(rows[0].stream, Stream::Alerts);
    assert_eq!(rows[1].stream, Stream::Telemetry);
}

#[test]
fn mixed_classes_drain_by_priority_then_by_seq() {
    let mut f = fixture();
    // Enqueued out of order on purpose (seq is chosen by the alert store).
    f.put(telemetry(1));
    f.put(alert(Class::Notice, 5));
    f.put(alert(Class::Alarm, 9));
    f.put(alert(Class::Warning, 3));
    f.put(alert(Class::Alarm, 2));
    f.put(telemetry(2));
    f.put(alert(Class::Notice, 1));
    f.put(alert(Class::Warning, 7));

    let rows = f.outbox.next_batch(100).expect("batch");
    assert_eq!(
        labels(&rows),
        vec![
            (Class::Alarm, 2),
            (Class::Alarm, 9),
            (Class::Warning, 3),
            (Class::Warning, 7),
            (Class::Notice, 1),
            (Class::Notice, 5),
            (Class::Telemetry, 1),
            (Class::Telemetry, 2),
        ]
    );
    // The payload and metadata survive the round trip.
    assert_eq!(rows[0].key, key(2));
    assert_eq!(rows[0].payload, br#"{"seq":2}"#);
    assert_eq!(rows[0].created_at_ms, 1_002);
}

#[test]
fn in_flight_rows_are_not_handed_out_twice() {
    let mut f = fixture();
    for seq in 1..=5 {
        f.put(alert(Class::Warning, seq));
    }

    let first = f.outbox.next_batch(2).expect("first");
    let second = f.outbox.next_batch(10).expect("second");
    let third = f.outbox.next_batch(10).expect("third");

    assert_eq!(
        labels(&first),
        vec![(Class::Warning, 1), (Class::Warning, 2)]
    );
    assert_eq!(
        labels(&second),
        vec![
            (Class::Warning, 3),
            (Class::Warning, 4),
            (Class::Warning, 5)
        ]
    );
    assert!(third.is_empty());
    assert_eq!(f.outbox.inflight_len(), 5);
    // A peek without an exclusion set still sees all five: nothing is deleted
    // before its ack.
    let peek = outbox::pending_rows(f.outbox.connection(), 10, &Default::default()).expect("peek");
    assert_eq!(peek.len(), 5);
}

#[test]
fn a_new_alarm_overtakes_telemetry_that_is_still_pending() {
    let mut f = fixture();
    for n in 1..=4 {
        f.put(telemetry(n));
    }
    let first = f.outbox.next_batch(2).expect("first");
    f.put(alert(Class::Alarm, 1));
    let next = f.outbox.next_batch(2).expect("next");

    assert_eq!(
        labels(&first),
        vec![(Class::Telemetry, 1), (Class::Telemetry, 2)]
    );
    assert_eq!(
        labels(&next),
        vec![(Class::Alarm, 1), (Class::Telemetry, 3)]
    );
}

#[test]
fn requeue_inflight_puts_unacked_rows_first_again_in_their_original_order() {
    let mut f = fixture();
    for seq in 1..=3 {
        f.put(alert(Class::Notice, seq));
    }
    let sent = f.outbox.next_batch(10).expect("sent");
    assert_eq!(sent.len(), 3);
    assert_eq!(f.outbox.ack(sent[1].id).expect("ack"), Delivery::Acked);
    // Newer rows arrive while the link is down.
    f.put(alert(Class::Notice, 4));
    f.put(telemetry(1));

    assert_eq!(f.outbox.requeue_inflight(), 2);
    assert_eq!(f.outbox.inflight_len(), 0);
    let resent = f.outbox.next_batch(10).expect("resent");

    assert_eq!(
        labels(&resent),
        vec![
            (Class::Notice, 1),
            (Class::Notice, 3),
            (Class::Notice, 4),
            (Class::Telemetry, 1)
        ]
    );
    assert_eq!(resent[0].id, sent[0].id, "same rows, same ids");
    assert_eq!(f.outbox.stats().expect("stats").requeued_total, 2);
}

#[test]
fn ack_deletes_exactly_that_row_and_a_second_ack_is_harmless() {
    let mut f = fixture();
    for seq in 1..=3 {
        f.put(alert(Class::Alarm, seq));
    }
    let rows = f.outbox.next_batch(10).expect("batch");
    let bytes_before = f.outbox.stats().expect("stats").bytes;

    assert_eq!(f.outbox.ack(rows[1].id).expect("ack"), Delivery::Acked);
    assert_eq!(
        f.outbox.ack(rows[1].id).expect("re-ack"),
        Delivery::AlreadyGone
    );
    assert_eq!(
        f.outbox.ack(RowId::new(987_654)).expect("unknown"),
        Delivery::AlreadyGone
    );

    let left = outbox::pending_rows(f.outbox.connection(), 10, &Default::default()).expect("left");
    assert_eq!(labels(&left), vec![(Class::Alarm, 1), (Class::Alarm, 3)]);
    assert!(!f.outbox.is_inflight(rows[1].id));
    assert!(f.outbox.is_inflight(rows[0].id));
    let stats = f.outbox.stats().expect("stats");
    assert_eq!(stats.delivered_total, 1);
    assert_eq!(stats.acks_for_missing_rows, 2);
    assert_eq!(stats.backlog_total, 2);
    assert_eq!(
        stats.bytes,
        bytes_before - alert(Class::Alarm, 2).accounted_size()
    );
}

#[test]
fn ack_batch_reports_each_outcome_in_input_order() {
    let mut f = fixture();
    let a = f.put(alert(Class::Warning, 1));
    let b = f.put(alert(Class::Warning, 2));
    f.outbox.next_batch(10).expect("batch");

    let outcomes = f.outbox.ack_batch(&[b, a, b]).expect("ack batch");

    assert_eq!(
        outcomes,
        vec![Delivery::Acked, Delivery::Acked, Delivery::AlreadyGone]
    );
    assert_eq!(f.outbox.inflight_len(), 0);
    let stats = f.outbox.stats().expect("stats");
    assert_eq!((stats.backlog_total, stats.bytes), (0, 0));
    assert_eq!(stats.delivered_total, 2);
}

#[test]
fn stats_report_backlog_per_class_and_the_oldest_undelivered_row() {
    let mut f = fixture();
    let empty = f.outbox.stats().expect("empty stats");
    assert_eq!(empty.oldest_undelivered_ms, None);
    assert_eq!(empty.backlog_total, 0);

    let first = f.put(alert(Class::Warning, 1)); // created_at 1_001
    f.put(alert(Class::Alarm, 2));
    f.put(telemetry(1));
    f.put(telemetry(2));

    let stats = f.outbox.stats().expect("stats");
    assert_eq!(stats.backlog_by_class.alarm, 1);
    assert_eq!(stats.backlog_by_class.warning, 1);
    assert_eq!(stats.backlog_by_class.notice, 0);
    assert_eq!(stats.backlog_by_class.telemetry, 2);
    assert_eq!(stats.backlog_total, 4);
    assert_eq!(stats.oldest_undelivered_ms, Some(1_001));

    f.outbox.next_batch(10).expect("batch");
    f.outbox.ack(first).expect("ack");
    assert_eq!(
        f.outbox.stats().expect("stats").oldest_undelivered_ms,
        Some(1_002)
    );
}

/// Small deterministic generator so the model test needs no extra crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

#[test]
fn random_traffic_always_drains_in_the_documented_order_and_keeps_exact_accounting() {
    let mut f = fixture();
    let mut rng = Lcg(42);
    // Model: every undelivered row as (class, seq-or-none, id) and the set of
    // rows in flight.
    let mut model: Vec<(Class, Option<u64>, RowId, u64)> = Vec::new();
    let mut inflight: Vec<RowId> = Vec::new();
    let mut seq = 0_u64;
    let mut delivered = 0_u64;

    for step in 0..2_000 {
        match rng.next(10) {
            0..=3 => {
                let class = Class::DRAIN_ORDER[rng.next(4) as usize];
                let msg = if class == Class::Telemetry {
                    telemetry(step)
                } else {
                    // Sequence numbers mostly increase but sometimes arrive late.
                    seq += 1;
                    let s = if rng.next(5) == 0 {
                        seq.saturating_sub(3)
                    } else {
                        seq
                    };
                    NewMessage {
                        key: key(step),
                        ..alert(class, s)
                    }
                };
                let size = msg.accounted_size();
                let id = f.put(msg.clone());
                model.push((msg.class, msg.seq, id, size));
            }
            4..=6 => {
                let limit = rng.next(5) as usize + 1;
                let got = f.outbox.next_batch(limit).expect("batch");
                let mut expected: Vec<_> = model
                    .iter()
                    .filter(|(_, _, id, _)| !inflight.contains(id))
                    .map(|&(c, s, id, _)| (c, s, id))
                    .collect();
                expected.sort();
                expected.truncate(limit);
                let got_keys: Vec<_> = got.iter().map(|r| (r.class, r.seq, r.id)).collect();
                assert_eq!(got_keys, expected, "step {step}");
                inflight.extend(got.iter().map(|r| r.id));
            }
            7 | 8 => {
                if !inflight.is_empty() {
                    let id = inflight.swap_remove(rng.next(inflight.len() as u64) as usize);
                    assert_eq!(f.outbox.ack(id).expect("ack"), Delivery::Acked);
                    model.retain(|&(_, _, m, _)| m != id);
                    delivered += 1;
                }
            }
            _ => {
                assert_eq!(f.outbox.requeue_inflight(), inflight.len());
                inflight.clear();
            }
        }
    }

    let stats = f.outbox.stats().expect("stats");
    assert_eq!(stats.backlog_total, model.len() as u64);
    assert_eq!(stats.delivered_total, delivered);
    let model_bytes: u64 = model.iter().map(|&(_, _, _, size)| size).sum();
    assert_eq!(stats.bytes, model_bytes);
    assert_eq!(
        outbox::recount_bytes(f.outbox.connection()).expect("recount"),
        model_bytes
    );
}

/// Not a benchmark (nothing is timed): pushes a realistic volume through the
/// whole cycle and checks that everything comes out once and in order.
#[test]
fn twenty_thousand_telemetry_rows_go_through_enqueue_drain_and_ack() {
    let mut f = fixture();
    let total = 20_000_u64;
    for chunk in (0..total).collect::<Vec<_>>().chunks(500) {
        let msgs: Vec<_> = chunk.iter().map(|&n| telemetry(n)).collect();
        outbox::commit_with(&mut f.store, Durability::Normal, |tx| {
            outbox::enqueue_batch(tx, &msgs)
        })
        .expect("batch");
    }

    let mut next_expected = 0_u64;
    loop {
        let rows = f.outbox.next_batch(256).expect("drain");
        if rows.is_empty() {
            break;
        }
        for (class, n) in labels(&rows) {
            assert_eq!((class, n), (Class::Telemetry, next_expected));
            next_expected += 1;
        }
        let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
        let outcomes = f.outbox.ack_batch(&ids).expect("ack");
        assert!(outcomes.iter().all(|o| *o == Delivery::Acked));
    }

    assert_eq!(next_expected, total);
    let stats = f.outbox.stats().expect("stats");
    assert_eq!(stats.delivered_total, total);
    assert_eq!((stats.backlog_total, stats.bytes), (0, 0));
}
