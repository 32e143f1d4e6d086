//! The embedded broker's TLS listener, with a throwaway CA and server certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gateway::broker::{BrokerError, BrokerSettings, EmbeddedBroker, TlsFiles};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rumqttc::{Event, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// Writes ca.pem, server.pem and server.key into `dir`; the server certificate is for
/// "localhost" and 127.0.0.1, signed by the CA.
fn throwaway_pki(dir: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
}

fn tls_settings(dir: &Path) -> BrokerSettings {
    let mut settings = BrokerSettings::new("127.0.0.1:0".parse().unwrap());
    settings.tls = Some(TlsFiles {
        bind: "127.0.0.1:0".parse().unwrap(),
        cert_pem: dir.join("server.pem"),
        key_pem: dir.join("server.key"),
    });
    settings
}

/// MQTT 3.1.1 packets written by hand: rumqttc is built without TLS in this workspace.
fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut p = vec![kind, body.len() as u8];
    p.extend_from_slice(body);
    p
}

fn mqtt_str(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(ca_pem).unwrap();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost".to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the broker")
}

#[tokio::test]
async fn tls_listener_serves_mqtt_with_a_certificate_from_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    throwaway_pki(dir.path());
    let mut settings = tls_settings(dir.path());
    settings.credentials = HashMap::from([("smoke-4".to_owned(), "pw-4".to_owned())]);
    let broker = EmbeddedBroker::start(settings).unwrap();
    let tls_addr = broker.tls_addr().expect("TLS listener");
    assert_ne!(tls_addr.port(), 0);
    assert_ne!(tls_addr, broker.local_addr());

    // The gateway's ingest subscribes on the plain listener.
    let (ingest, mut event_loop) = broker.async_client("ingest", 10);
    ingest
        .subscribe("sensors/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match event_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => tx.send(None).unwrap(),
                Ok(Event::Incoming(Packet::Publish(p))) => tx.send(Some(p)).unwrap(),
                Ok(_) => {}
                Err(e) => panic!("ingest connection failed: {e}"),
            }
        }
    });
    let wait = Duration::from_secs(10);
    let suback = tokio::time::timeout(wait, rx.recv()).await.unwrap();
    assert!(suback.unwrap().is_none(), "SUBACK first");

    // A sensor logs in over TLS and publishes (QoS 0).
    let mut tls = tls_connect(tls_addr, &dir.path().join("ca.pem")).await;
    let mut connect = mqtt_str("MQTT");
    connect.extend_from_slice(&[4, 0xC2, 0, 30]);
    for s in ["smoke-4", "smoke-4", "pw-4"] {
        connect.extend(mqtt_str(s));
    }
    tls.write_all(&packet(0x10, &connect)).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(wait, tls.read_exact(&mut connack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    let mut publish = mqtt_str("sensors/smoke-4/smoke");
    publish.extend_from_slice(b"alarm");
    tls.write_all(&packet(0x30, &publish)).await.unwrap();

    let received = tokio::time::timeout(wait, rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(received.topic, "sensors/smoke-4/smoke");
    assert_eq!(&received.payload[..], b"alarm");
}

#[test]
fn unusable_tls_files_fail_at_start_not_at_the_first_sensor() {
    let dir = tempfile::tempdir().unwrap();
    throwaway_pki(dir.path());

    let mut missing = tls_settings(dir.path());
    if let Some(tls) = missing.tls.as_mut() {
        tls.key_pem = dir.path().join("absent.key");
    }
    match EmbeddedBroker::start(missing) {
        Err(BrokerError::Tls { path, .. }) => assert!(path.ends_with("absent.key")),
        other => panic!("expected a TLS error, got {other:?}"),
    }

    // A certificate where the key should be: the file parses as PEM but holds no key.
    let mut swapped = tls_settings(dir.path());
    if let Some(tls) = swapped.tls.as_mut() {
        tls.key_pem = dir.path().join("server.pem");
    }
    match EmbeddedBroker::start(swapped) {
        Err(e @ BrokerError::Tls { .. }) => assert!(e.to_string().contains("no PRIVATE KEY")),
        other => panic!("expected a TLS error, got {other:?}"),
    }
}
