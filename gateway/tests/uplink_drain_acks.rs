//! The uplink's drain against a real Debian mosquitto, attacking what makes it cheap:
//!
//! * acknowledged rows are deleted in batches, one statement per batch: a SIGKILL after the
//!   PUBACKs arrived but before the batch's delete was committed must leave those rows in the
//!   outbox, and the restarted link must send them again, in order, losing nothing;
//! * rows are read ahead of the window (one outbox job deletes, then refills): alarms
//!   written while a batch is in flight must go out after it, in sequence order;
//! * one `ack_batch` of a thousand ids deletes exactly those rows and keeps the byte count
//!   exact.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use gateway::outbox::{self, Class, Delivery, Durability, NewMessage, Outbox, RowId};
use gateway::uplink::{Link, LinkSettings, SharedOutbox, UplinkStatus};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const SITE: &str = "s1";
const PREFIX: &str = "sw";
const CHILD_DB: &str = "SHOUWANG_UPLINK_ACKS_CHILD_DB";
const CHILD_PORT: &str = "SHOUWANG_UPLINK_ACKS_CHILD_PORT";
const DEADLINE: Duration = Duration::from_secs(60);

fn key(n: u64) -> String {
    ulid::Ulid::from_parts(1_700_000_000_000 + n, u128::from(n)).to_string()
}

fn alarm(seq: u64) -> NewMessage {
    NewMessage::alert(
        Class::Alarm,
        key(seq),
        seq,
        format!(r#"{{"seq":{seq},"pad":"{}"}}"#, "x".repeat(200)),
        1_000,
    )
}

/// The alert store's side: its own connection, configured like the gateway's.
fn store(db: &Path) -> rusqlite::Connection {
    drop(Outbox::open(db).expect("create outbox"));
    let mut conn = rusqlite::Connection::open(db).expect("open store");
    outbox::configure_connection(&mut conn).expect("configure store");
    conn
}

fn enqueue(conn: &mut rusqlite::Connection, seqs: impl Iterator<Item = u64>) {
    let msgs: Vec<NewMessage> = seqs.map(alarm).collect();
    outbox::commit_with(conn, Durability::Full, |tx| {
        outbox::enqueue_batch(tx, &msgs)
    })
    .expect("enqueue alarms");
}

fn settings(port: u16, client_id: &str) -> LinkSettings {
    let host = "127.0.0.1".to_owned();
    LinkSettings {
        host: host.clone(),
        port,
        endpoints: vec![(host, port)],
        client_id: client_id.to_owned(),
        tls: None,
        credentials: None,
        site: SITE.to_owned(),
        topic_prefix: PREFIX.to_owned(),
        qos: QoS::AtLeastOnce,
        keep_alive: Duration::from_secs(30),
        max_inflight: 64,
        batch: 1000,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        idle_poll: Duration::from_millis(20),
        connect_timeout: Duration::from_secs(5),
        heartbeat: None,
    }
}

/// A Debian mosquitto on a free loopback port, anonymous, unlimited queues. Killed on drop.
struct Broker {
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        simulators::process::terminate(&mut self.child, Duration::from_secs(1));
    }
}

fn mosquitto(dir: &Path) -> Broker {
    let port = simulators::process::free_port().expect("free port");
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root\n"
    } else {
        ""
    };
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "{user}allow_anonymous true\npersistence false\nmax_queued_messages 0\n\
             log_dest stderr\nlistener {port} 127.0.0.1\n"
        ),
    )
    .expect("mosquitto.conf");
    let child = simulators::upstream::spawn_mosquitto(
        &conf,
        &dir.join("mosquitto.log"),
        &[port],
        Duration::from_secs(10),
    )
    .expect("mosquitto (./x deps)");
    Broker { child, port }
}

/// Subscribes to the alerts topic and keeps the `seq` of every message, in arrival order.
struct Collector {
    seqs: Arc<Mutex<Vec<u64>>>,
    _client: AsyncClient,
}

impl Collector {
    async fn start(port: u16) -> Collector {
        let mut o = MqttOptions::new("collector", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(o, 64);
        client
            .subscribe(format!("{PREFIX}/{SITE}/alerts"), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "no SUBACK from mosquitto");
            if let Ok(Event::Incoming(Packet::SubAck(_))) = events.poll().await {
                break;
            }
        }
        let seqs = Arc::new(Mutex::new(Vec::new()));
        let sink = seqs.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let seq = serde_json::from_slice::<serde_json::Value>(&p.payload)
                            .ok()
                            .and_then(|v| v["seq"].as_u64())
                            .unwrap_or(0);
                        sink.lock().expect("collector lock").push(seq);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Collector {
            seqs,
            _client: client,
        }
    }

    fn seqs(&self) -> Vec<u64> {
        self.seqs.lock().expect("collector lock").clone()
    }
}

/// Polls `done` every 10 ms until it holds; panics with `what` after [`DEADLINE`].
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a link on `db` until `n` rows are deleted after their PUBACK; returns its status.
async fn drain_until_deleted(port: u16, db: &Path, n: u64) -> Arc<UplinkStatus> {
    let s = settings(port, "restarted");
    let status = Arc::new(UplinkStatus::new(Some(&s)));
    let outbox = SharedOutbox::new(Outbox::open(db).expect("open outbox"));
    let token = CancellationToken::new();
    let task = tokio::spawn(Link::new(s, outbox, status.clone()).run(token.clone()));
    eventually("the restarted link to delete every row", || {
        status.acked_total.load(Ordering::Relaxed) >= n
    })
    .await;
    token.cancel();
    task.await.expect("link task");
    status
}

/// Runs only as the child process of the SIGKILL scenario: drains the outbox through a
/// link (after "go" on stdin) and prints the PUBACKs it got, until it is killed.
#[test]
#[ignore = "helper: run in a child process by the SIGKILL test"]
fn uplink_child_drains_until_killed() {
    let (Ok(db), Ok(port)) = (std::env::var(CHILD_DB), std::env::var(CHILD_PORT)) else {
        return;
    };
    let port: u16 = port.parse().expect("port");
    let outbox = Outbox::open(&db).expect("open outbox");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").expect("stdout");
    out.flush().expect("flush");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).expect("stdin");

    let s = settings(port, "killed");
    let status = Arc::new(UplinkStatus::new(Some(&s)));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let link = Link::new(s, SharedOutbox::new(outbox), status.clone());
        tokio::spawn(link.run(CancellationToken::new()));
        let mut reported = 0;
        loop {
            let pubacks = status.pubacks_total.load(Ordering::Relaxed);
            if pubacks > reported {
                writeln!(out, "pubacks {pubacks}").expect("stdout");
                out.flush().expect("flush");
                reported = pubacks;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
}

/// The child's "pubacks N" lines, as numbers, read on a thread of their own.
fn child_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for_line(lines: &mpsc::Receiver<String>, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .expect("the child stopped or fell silent");
        if done(&line) {
            return;
        }
    }
}

#[test]
fn rows_whose_puback_came_but_whose_delete_was_not_committed_when_the_gateway_was_killed_are_sent_again_in_order(
) {
    const N: u64 = 600;
    let dir = TempDir::new().expect("tempdir");
    let broker = mosquitto(dir.path());
    let db = dir.path().join("gateway.db");
    let mut store = store(&db);
    enqueue(&mut store, 1..=N);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let seen = runtime.block_on(Collector::start(broker.port));

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "uplink_child_drains_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &db)
        .env(CHILD_PORT, broker.port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let lines = child_lines(&mut child);
    // libtest prints "test <name> ... " without a newline before the test runs.
    wait_for_line(&lines, |l| l.ends_with("ready"));
    // The alert store holds the write lock: the child reads and publishes (WAL readers do
    // not wait), but no batched delete of acknowledged rows can commit.
    store
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let mut stdin = child.stdin.take().expect("child stdin");
    writeln!(stdin, "go").expect("go");
    wait_for_line(&lines, |l| {
        l.strip_prefix("pubacks ")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= N)
    });
    child.kill().expect("SIGKILL");
    child.wait().expect("reap child");
    store.execute_batch("ROLLBACK").expect("release the lock");

    let first: Vec<u64> = seen.seqs();
    assert_eq!(
        first,
        (1..=N).collect::<Vec<_>>(),
        "the killed link sent each row once, in order"
    );
    let stats = outbox::stats(&store).expect("stats");
    assert_eq!(
        (stats.backlog_total, stats.delivered_total),
        (N, 0),
        "acknowledged rows whose delete never committed are still in the outbox"
    );

    let status = runtime.block_on(drain_until_deleted(broker.port, &db, N));
    runtime.block_on(eventually("the re-sent rows at the collector", || {
        seen.seqs().len() as u64 >= 2 * N
    }));
    let all = seen.seqs();
    assert_eq!(
        all[N as usize..],
        (1..=N).collect::<Vec<_>>(),
        "after the restart every row is sent again, in order, nothing lost"
    );
    assert_eq!(status.acked_total.load(Ordering::Relaxed), N);
    let stats = outbox::stats(&store).expect("stats");
    assert_eq!((stats.backlog_total, stats.delivered_total), (0, N));
    assert_eq!(stats.bytes, outbox::recount_bytes(&store).expect("recount"));
}

#[test]
fn alarms_written_while_a_batch_is_in_flight_go_out_after_it_in_seq_order_and_none_is_lost() {
    const SEEDED: u64 = 3000;
    const LIVE: u64 = 1500;
    let dir = TempDir::new().expect("tempdir");
    let broker = mosquitto(dir.path());
    let db = dir.path().join("gateway.db");
    let mut store = store(&db);
    enqueue(&mut store, 1..=SEEDED);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let seen = Arc::new(runtime.block_on(Collector::start(broker.port)));

    let s = settings(broker.port, "live");
    let status = Arc::new(UplinkStatus::new(Some(&s)));
    let token = CancellationToken::new();
    let outbox = SharedOutbox::new(Outbox::open(&db).expect("open outbox"));
    let link = runtime.spawn(Link::new(s, outbox, status.clone()).run(token.clone()));
    // The writer starts once the drain is under way (a batch read and in flight) and
    // commits its alarms in small FULL transactions, as the alert store does.
    runtime.block_on(eventually("the first rows at the collector", || {
        !seen.seqs().is_empty()
    }));
    let writer = std::thread::spawn(move || {
        let mut next = SEEDED + 1;
        while next <= SEEDED + LIVE {
            enqueue(&mut store, next..next + 10);
            next += 10;
        }
        store
    });
    let store = writer.join().expect("writer");
    let total = SEEDED + LIVE;
    runtime.block_on(eventually("every row deleted after its PUBACK", || {
        status.acked_total.load(Ordering::Relaxed) >= total
    }));
    token.cancel();
    runtime.block_on(link).expect("link task");

    assert_eq!(
        seen.seqs(),
        (1..=total).collect::<Vec<_>>(),
        "one connection: each alarm once, in seq order, the live ones after the backlog"
    );
    let stats = outbox::stats(&store).expect("stats");
    assert_eq!((stats.backlog_total, stats.delivered_total), (0, total));
    assert_eq!(stats.bytes, 0);
}

#[test]
fn one_ack_batch_of_a_thousand_ids_deletes_exactly_those_rows_and_keeps_the_byte_count_exact() {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("gateway.db");
    let mut store = store(&db);
    enqueue(&mut store, 1..=1500);
    let mut drain = Outbox::open(&db).expect("open outbox");
    let rows = drain.next_batch(1500).expect("batch");
    assert_eq!(rows.len(), 1500);

    // Every other row of the first 1000, an id that never existed, and three repeats.
    let mut ids: Vec<RowId> = rows[..1000].iter().step_by(2).map(|r| r.id).collect();
    ids.push(RowId::new(987_654_321));
    ids.extend_from_slice(&[rows[0].id, rows[2].id, rows[4].id]);
    let outcomes = drain.ack_batch(&ids).expect("ack batch");

    let acked = outcomes.iter().filter(|o| **o == Delivery::Acked).count();
    assert_eq!(acked, 500);
    assert_eq!(outcomes[..500], vec![Delivery::Acked; 500]);
    assert_eq!(outcomes[500..], vec![Delivery::AlreadyGone; 4]);
    let left: Vec<u64> = outbox::pending_rows(&store, 2000, &Default::default())
        .expect("left")
        .iter()
        .filter_map(|r| r.seq)
        .collect();
    let expected: Vec<u64> = (1..=1500).filter(|s| *s > 1000 || s % 2 == 0).collect();
    assert_eq!(left, expected, "exactly the acknowledged rows are gone");
    assert_eq!(
        drain.inflight_len(),
        1000,
        "acked rows leave the in-flight set"
    );
    let stats = outbox::stats(&store).expect("stats");
    assert_eq!(
        (stats.delivered_total, stats.acks_for_missing_rows),
        (500, 4)
    );
    assert_eq!(stats.bytes, outbox::recount_bytes(&store).expect("recount"));
}
