//! Failover between the platform's brokers (`[uplink] hosts`): the broker a gateway drains
//! into dies in the middle of a backlog; the gateway goes on with the next one, loses
//! nothing, and the platform sees every `seq` in order (at least once: what was in flight
//! when the node died is sent again, and the platform drops duplicates by `id`).
//!
//! Two platforms: two independent mosquittos (the simplest "cluster": a subscriber on each),
//! and a real 3-node NATS JetStream cluster (Debian's `nats-server`, MQTT on every node,
//! replicated sessions), where one subscriber on another node sees the whole drain.

use std::time::Duration;

use e2e::cluster::NatsCluster;
use e2e::upstream::{seed_outbox, Collector, Upstream, USER};
use e2e::{eventually, reached, write_config, Gateway};
use gateway::outbox::Class;
use serde_json::Value;

const SITE: &str = r#"
[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 18
"#;

fn is_seeded(r: &e2e::upstream::Received) -> bool {
    r.json["origin"] == "seeded"
}

/// The `[uplink]` of a gateway draining into `hosts`, plain MQTT, fast reconnects.
fn uplink(hosts: &[String], login: Option<&std::path::Path>) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    let login = login
        .map(|pass| {
            format!(
                "username = \"{USER}\"\npassword_file = \"{}\"\n",
                pass.display()
            )
        })
        .unwrap_or_default();
    format!(
        "[uplink]\nhosts = [{}]\n{login}keep_alive_s = 5\n\n[uplink.outbox]\nretry_backoff_max_s = 1\n",
        hosts.join(", ")
    )
}

/// The host:port the gateway's status says it is connected to.
fn connected_to(data: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(data.join("status.json")).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let link = &v["link"];
    match (
        link["state"].as_str(),
        link["host"].as_str(),
        link["port"].as_u64(),
    ) {
        (Some("connected"), Some(h), Some(p)) => Ok(format!("{h}:{p}")),
        _ => Err(link.to_string()),
    }
}

/// Waits until the platform holds seq 1..=rows of the seeded alerts; whether it did, and
/// the verdict on what arrived.
async fn every_seeded_alert(
    platform: &Collector,
    rows: u64,
    wait: Duration,
) -> (bool, simulators::verify::Verdict) {
    let done = platform
        .wait_until(wait, |alerts| {
            let seqs: std::collections::BTreeSet<u64> = alerts
                .iter()
                .filter(|r| is_seeded(r))
                .map(|r| r.seq)
                .collect();
            seqs.len() as u64 >= rows
        })
        .await;
    (done, platform.report(1..=rows, is_seeded))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_dying_mid_drain_hands_the_drain_to_the_next_host_and_nothing_is_lost() {
    const ROWS: u64 = 3_000;
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Upstream::start(&tmp.path().join("a"));
    let b = Upstream::start(&tmp.path().join("b"));
    let (on_a, on_b) = (
        Collector::start(&a, "platform-a").await,
        Collector::start(&b, "platform-b").await,
    );
    let hosts = [
        format!("127.0.0.1:{}", a.plain_port),
        format!("127.0.0.1:{}", b.plain_port),
    ];
    let body = format!("{SITE}\n{}", uplink(&hosts, Some(&a.dir.join("gw.pass"))));
    let config = write_config(tmp.path(), &body);
    let data = tmp.path().join("data");
    let rows: Vec<_> = (1..=ROWS).map(|s| (Class::Alarm, Some(s))).collect();
    seed_outbox(&data.join("shouwang.db"), &rows, 200);

    let mut gw = Gateway::start(&config, &data);
    gw.wait_ready();
    eventually(Duration::from_secs(30), "a delivers 300 alerts", || {
        reached(on_a.distinct_seqs(is_seeded).len() as u64, 300)
    })
    .await;
    a.stop();
    let b_addr = hosts[1].clone();
    eventually(Duration::from_secs(30), "the link moves to b", || {
        connected_to(&data).and_then(|h| if h == b_addr { Ok(()) } else { Err(h) })
    })
    .await;
    eventually(Duration::from_secs(60), "a and b hold every alert", || {
        let mut all = on_a.distinct_seqs(is_seeded);
        all.extend(on_b.distinct_seqs(is_seeded));
        reached(all.len() as u64, ROWS)
    })
    .await;

    let (first, second) = (on_a.distinct_seqs(is_seeded), on_b.distinct_seqs(is_seeded));
    assert!(
        first.len() < ROWS as usize && !second.is_empty(),
        "the drain was split between the brokers: a {}, b {}",
        first.len(),
        second.len()
    );
    // b continues where a stopped: from a's unacknowledged tail, in order.
    let verdict = on_b.report(first.iter().max().map_or(1, |m| m + 1)..=ROWS, is_seeded);
    assert!(
        verdict.reordered.is_empty() && verdict.absent.is_empty(),
        "b: {verdict:?}"
    );
    assert!(on_a
        .report(1..=*first.iter().max().unwrap(), is_seeded)
        .ok());
    gw.drain_log();
    let failover = gw
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|v| v["message"] == "uplink connection failed" && v["next_port"] == b.plain_port);
    assert!(failover, "the failover is logged with the next host");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_of_ten_thousand_alerts_survives_the_nats_node_it_is_on_being_killed() {
    const ROWS: u64 = 10_000;
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = NatsCluster::start(tmp.path());
    let hosts = cluster.mqtt_hosts();
    // The platform's consumer: a persistent QoS 1 subscriber on the third node.
    let platform = Collector::start_at(cluster.nodes[2].mqtt_port, None, "platform").await;
    let body = format!("{SITE}\n{}", uplink(&hosts, None));
    let config = write_config(tmp.path(), &body);
    let data = tmp.path().join("data");
    let rows: Vec<_> = (1..=ROWS).map(|s| (Class::Alarm, Some(s))).collect();
    seed_outbox(&data.join("shouwang.db"), &rows, 200);

    let mut gw = Gateway::start(&config, &data);
    gw.wait_ready();
    let first = eventually(Duration::from_secs(30), "the gateway connects", || {
        connected_to(&data)
    })
    .await;
    assert_eq!(first, hosts[0], "the first host is tried first");
    eventually(
        Duration::from_secs(60),
        "1,000 alerts reach the platform",
        || reached(platform.distinct_seqs(is_seeded).len() as u64, 1_000),
    )
    .await;
    let port: u16 = first.rsplit(':').next().unwrap().parse().unwrap();
    let killed_at = platform.distinct_seqs(is_seeded).len();
    cluster.node_with_mqtt_port(port).unwrap().kill();

    let second = eventually(
        Duration::from_secs(30),
        "the link moves to another node",
        || connected_to(&data).and_then(|h| if h != first { Ok(h) } else { Err(h) }),
    )
    .await;
    assert!(hosts.contains(&second));
    let (done, verdict) = every_seeded_alert(&platform, ROWS, Duration::from_secs(180)).await;
    assert!(
        done && verdict.ok(),
        "node {first} killed after {killed_at} alerts; every alert, in order, on the platform: {verdict:?}"
    );
    eprintln!(
        "NATS failover: killed {first} after {killed_at} of {ROWS}; finished on {second}; \
         {} duplicates",
        verdict.duplicates
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_of_ten_thousand_alerts_into_rabbitmq_survives_the_broker_being_killed_and_restarted(
) {
    const ROWS: u64 = 10_000;
    let tmp = tempfile::tempdir().unwrap();
    let mut rabbit = e2e::cluster::RabbitMq::start(&tmp.path().join("rabbitmq"));
    let host = format!("127.0.0.1:{}", rabbit.mqtt_port);
    let platform = Collector::start_at(rabbit.mqtt_port, None, "platform").await;
    let body = format!("{SITE}\n{}", uplink(std::slice::from_ref(&host), None));
    let config = write_config(tmp.path(), &body);
    let data = tmp.path().join("data");
    let rows: Vec<_> = (1..=ROWS).map(|s| (Class::Alarm, Some(s))).collect();
    seed_outbox(&data.join("shouwang.db"), &rows, 200);

    let mut gw = Gateway::start(&config, &data);
    gw.wait_ready();
    eventually(
        Duration::from_secs(60),
        "1,000 alerts reach the platform",
        || reached(platform.distinct_seqs(is_seeded).len() as u64, 1_000),
    )
    .await;
    let killed_at = platform.distinct_seqs(is_seeded).len();
    rabbit.kill();
    rabbit.restart();
    let (done, verdict) = every_seeded_alert(&platform, ROWS, Duration::from_secs(240)).await;
    assert!(
        done && verdict.ok(),
        "RabbitMQ killed after {killed_at} alerts; every alert, in order: {verdict:?}"
    );
    eprintln!(
        "RabbitMQ: killed after {killed_at} of {ROWS}; {} duplicates",
        verdict.duplicates
    );
}

/// A district after a WAN outage: five gateways, each with 1,000 alerts waiting, started
/// while the platform cluster is down; the cluster comes up and every site's backlog
/// arrives, complete and in order per site, through whichever node each gateway reaches.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_whose_platform_comes_back_delivers_every_sites_backlog_complete_and_in_order() {
    const SITES: usize = 5;
    const ROWS: u64 = 1_000;
    let tmp = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&tmp.path().join("nats"));
    let platform =
        e2e::fleet::Platform::subscribe(cluster.nodes[1].mqtt_port, None, "platform", ROWS).await;
    let (wan, hosts) = e2e::fleet::Wan::cut(&cluster.mqtt_hosts()).await;
    let mut fleet = e2e::fleet::Fleet::prepare(&tmp.path().join("fleet"), SITES, ROWS, &hosts, "");
    fleet.start();
    wan.restore();
    let done = platform
        .wait_complete(SITES, Duration::from_secs(180))
        .await;
    let verdicts = platform.verdicts(&fleet.sites());
    assert!(
        done && verdicts.iter().all(|v| v.ok()),
        "every site complete and in order: {verdicts:?}"
    );
}
