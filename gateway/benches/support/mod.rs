//! Machinery shared by the sensor-side benchmarks (`ingest`, `ack_window`): the bench
//! configuration, MQTT clients as a sensor would build them, their event loops, percentiles.
// Each bench uses a part of it.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};
use tokio::sync::mpsc;

/// A site `bench` with `heats` heat detectors (`heat-{i}`) and `smokes` smoke detectors
/// (`smoke-{i}`) in one 30-floor building, on an embedded broker on a free port, no debounce.
pub fn config(heats: usize, smokes: usize) -> String {
    let mut c = String::from(
        "[site]\nid = \"bench\"\nname = \"Bench\"\nkind = \"compound\"\n[broker]\nbind = \"127.0.0.1:0\"\n\
         [[locations.buildings]]\nid = \"b1\"\nname = \"1\"\nfloors = 30\n\
         [rules.timing]\ndebounce_s = 0\n",
    );
    for i in 0..heats {
        let _ = write!(
            c,
            "[[devices]]\nid = \"heat-{i}\"\nkind = \"heat\"\nlocation = {{ building = \"b1\" }}\n"
        );
    }
    for i in 0..smokes {
        let _ = write!(
            c,
            "[[devices]]\nid = \"smoke-{i}\"\nkind = \"smoke\"\nlocation = {{ building = \"b1\" }}\n"
        );
    }
    c
}

/// A sensor-like client: 30 s keep-alive, 100 in flight, `TCP_NODELAY`.
pub fn client(addr: SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    let (c, mut e) = AsyncClient::new(o, 10_000);
    let mut n = e.network_options();
    n.set_tcp_nodelay(true);
    e.set_network_options(n);
    (c, e)
}

/// Drives an event loop, forwarding publishes (topic, payload) to `tx`.
pub fn spawn_loop(e: EventLoop, tx: Option<mpsc::UnboundedSender<(String, Vec<u8>)>>) {
    spawn_events(e, move |_, event| {
        if let (Some(tx), Event::Incoming(Packet::Publish(p))) = (&tx, event) {
            let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
        }
    });
}

/// Drives an event loop, handing every event to `on_event` with the instant it was polled
/// (e.g. to time PUBACKs); ends when the connection fails or closes.
pub fn spawn_events(mut e: EventLoop, mut on_event: impl FnMut(Instant, &Event) + Send + 'static) {
    tokio::spawn(async move {
        while let Ok(event) = e.poll().await {
            on_event(Instant::now(), &event);
        }
    });
}

/// The `p` quantile (0–1) of sorted `samples`, nearest rank; `None` when there are none.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get(((last as f64) * p).round() as usize).copied()
}

/// Milliseconds, for tables.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A Debian mosquitto on a free loopback port, anonymous, no persistence: the broker of a
/// peer (the glue script). Killed on drop.
pub struct PlainMosquitto {
    child: std::process::Child,
    pub port: u16,
}

impl PlainMosquitto {
    pub fn start(dir: &std::path::Path) -> PlainMosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let root = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        let conf = format!(
            "{}set_tcp_nodelay true\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n",
            if root { "user root\n" } else { "" }
        );
        let path = dir.join("peer-mosquitto.conf");
        std::fs::write(&path, conf).expect("write mosquitto.conf");
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto (./x deps)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        PlainMosquitto { child, port }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for PlainMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's Python (with its dist-packages: python3-paho-mqtt, python3-numpy), not whatever
/// `python3` a developer's PATH finds first.
pub fn debian_python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}
