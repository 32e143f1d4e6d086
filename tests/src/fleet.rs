//! A fleet of gateways draining into one platform (issue 20): N sensor-only gateways, each
//! with its own site id, data directory and a seeded backlog of alerts, all pointed at the
//! same platform brokers; and the platform side's verifier, which checks every site's `seq`
//! completeness and order and when each site's backlog was complete.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway::outbox::Class;
use rumqttc::{Event, MqttOptions, Packet, QoS};

use crate::upstream::seed_outbox;
use crate::Gateway;

/// The district's WAN: one `sim link` proxy in front of each platform broker, so a whole
/// fleet can be cut off and released at the same moment.
pub struct Wan {
    links: Vec<simulators::link::Link>,
    stop: tokio_util::sync::CancellationToken,
}

impl Wan {
    /// Proxies to every `host:port` of `hosts`, cut; returns the proxies' addresses too.
    pub async fn cut(hosts: &[String]) -> (Wan, Vec<String>) {
        let stop = tokio_util::sync::CancellationToken::new();
        let mut links = Vec::new();
        for h in hosts {
            let link = simulators::link::start("127.0.0.1:0", h, stop.clone())
                .await
                .expect("WAN proxy");
            link.down();
            links.push(link);
        }
        let proxied = links.iter().map(|l| l.listen.to_string()).collect();
        (Wan { links, stop }, proxied)
    }

    /// Restores every link at once.
    pub fn restore(&self) {
        for l in &self.links {
            l.up();
        }
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One gateway of the fleet.
pub struct Member {
    pub site: String,
    pub config: PathBuf,
    pub data: PathBuf,
    pub gateway: Option<Gateway>,
}

/// N gateways, each with `rows` red alerts (seq 1..=rows) waiting in its outbox.
pub struct Fleet {
    pub members: Vec<Member>,
    pub rows: u64,
}

impl Fleet {
    /// Writes each member's configuration (site `fleet-NNN`, `[uplink] hosts`, no devices,
    /// every listener on a free port) and seeds its outbox. Starts nothing.
    pub fn prepare(dir: &Path, n: usize, rows: u64, hosts: &[String], login: &str) -> Fleet {
        let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
        let members = (0..n)
            .map(|i| {
                let site = format!("fleet-{i:03}");
                let home = dir.join(&site);
                std::fs::create_dir_all(&home).expect("member dir");
                let config = home.join("gateway.toml");
                std::fs::write(
                    &config,
                    format!(
                        "[site]\nid = \"{site}\"\nname = \"{site}\"\nkind = \"compound\"\n\n\
                         [broker]\nbind = \"127.0.0.1:0\"\n\n[console]\nbind = \"127.0.0.1:0\"\n\n\
                         [[locations.buildings]]\nid = \"b1\"\nname = \"1号楼\"\nfloors = 6\n\n\
                         [uplink]\nhosts = [{}]\n{login}keep_alive_s = 5\n\n\
                         [uplink.outbox]\nretry_backoff_max_s = 1\n",
                        hosts.join(", ")
                    ),
                )
                .expect("member config");
                let data = home.join("data");
                let seeded: Vec<_> = (1..=rows).map(|s| (Class::Alarm, Some(s))).collect();
                seed_outbox(&data.join("shouwang.db"), &seeded, 200);
                Member {
                    site,
                    config,
                    data,
                    gateway: None,
                }
            })
            .collect();
        Fleet { members, rows }
    }

    /// Starts every gateway and waits until each is ready.
    pub fn start(&mut self) {
        for m in &mut self.members {
            m.gateway = Some(Gateway::start(&m.config, &m.data));
        }
        for m in &mut self.members {
            if let Some(g) = m.gateway.as_mut() {
                g.wait_ready();
            }
        }
    }

    pub fn sites(&self) -> Vec<String> {
        self.members.iter().map(|m| m.site.clone()).collect()
    }

    /// The gateways' uplink counters from their `status.json`, summed: (rows published,
    /// re-sends included; rows acknowledged; connections made).
    pub fn uplink_totals(&self) -> (u64, u64, u64) {
        let mut t = (0, 0, 0);
        for m in &self.members {
            let text = std::fs::read_to_string(m.data.join("status.json")).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let n = |k: &str| v["link"][k].as_u64().unwrap_or(0);
            t.0 += n("published_total");
            t.1 += n("acked_total");
            t.2 += n("connects_total");
        }
        t
    }
}

#[derive(Debug, Default)]
struct SiteTally {
    seqs: BTreeSet<u64>,
    received: u64,
    /// First arrivals lower than an earlier first arrival: the order was broken.
    reordered: Vec<u64>,
    last_first: u64,
    complete_at: Option<Instant>,
}

/// The platform's consumer: one persistent QoS 1 subscription to `shouwang/+/alerts`,
/// tallied per site.
pub struct Platform {
    tally: Arc<Mutex<BTreeMap<String, SiteTally>>>,
    /// CONNACKs the subscriber received: more than one means it reconnected (and the broker
    /// re-delivered what was in flight to it).
    pub connacks: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    rows: u64,
}

/// What the platform received from one site.
#[derive(Debug, Clone)]
pub struct SiteVerdict {
    pub site: String,
    pub unique: u64,
    pub duplicates: u64,
    pub missing: Vec<u64>,
    pub reordered: Vec<u64>,
    pub complete_at: Option<Instant>,
}

impl SiteVerdict {
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.reordered.is_empty()
    }
}

impl Platform {
    /// Subscribes on `127.0.0.1:port` as `id` and waits for the SUBACK; each site is
    /// expected to deliver seq 1..=rows.
    pub async fn subscribe(
        port: u16,
        login: Option<(&str, &str)>,
        id: &str,
        rows: u64,
    ) -> Platform {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        if let Some((u, p)) = login {
            options.set_credentials(u, p);
        }
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(false)
            .set_max_packet_size(2 << 20, 2 << 20)
            .set_inflight(1000);
        let (client, mut events) = simulators::mqtt::connect(options, 4096);
        let tally: Arc<Mutex<BTreeMap<String, SiteTally>>> = Arc::default();
        let sink = tally.clone();
        let connacks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = connacks.clone();
        let (subacked_tx, mut subacked) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if !ack.session_present {
                            let _ = client.try_subscribe("shouwang/+/alerts", QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subacked_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let site = p.topic.split('/').nth(1).unwrap_or("").to_owned();
                        let seq = serde_json::from_slice::<serde_json::Value>(&p.payload)
                            .ok()
                            .and_then(|v| v["seq"].as_u64());
                        if let Some(seq) = seq {
                            let mut t = sink.lock().expect("tally lock");
                            record(t.entry(site).or_default(), seq, rows);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(20), subacked.recv())
            .await
            .expect("platform SUBACK within 20 s");
        Platform {
            tally,
            connacks,
            task,
            rows,
        }
    }

    /// Sites whose every seq arrived.
    pub fn complete(&self) -> usize {
        let t = self.tally.lock().expect("tally lock");
        t.values().filter(|s| s.complete_at.is_some()).count()
    }

    /// Distinct alerts received, all sites.
    pub fn unique_total(&self) -> u64 {
        let t = self.tally.lock().expect("tally lock");
        t.values().map(|s| s.seqs.len() as u64).sum()
    }

    /// Waits until every one of `sites` is complete; false on timeout.
    pub async fn wait_complete(&self, sites: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.complete() < sites {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// The verdict of each of `sites`.
    pub fn verdicts(&self, sites: &[String]) -> Vec<SiteVerdict> {
        let t = self.tally.lock().expect("tally lock");
        sites
            .iter()
            .map(|site| {
                let empty = SiteTally::default();
                let s = t.get(site).unwrap_or(&empty);
                SiteVerdict {
                    site: site.clone(),
                    unique: s.seqs.len() as u64,
                    duplicates: s.received - s.seqs.len() as u64,
                    missing: (1..=self.rows).filter(|q| !s.seqs.contains(q)).collect(),
                    reordered: s.reordered.clone(),
                    complete_at: s.complete_at,
                }
            })
            .collect()
    }
}

fn record(s: &mut SiteTally, seq: u64, rows: u64) {
    s.received += 1;
    if s.seqs.insert(seq) {
        if seq < s.last_first {
            s.reordered.push(seq);
        }
        s.last_first = seq;
        if s.seqs.len() as u64 >= rows && s.complete_at.is_none() {
            s.complete_at = Some(Instant::now());
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.task.abort();
    }
}
