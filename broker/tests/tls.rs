//! TLS and mutual TLS listeners, driven by rumqttc over rustls, by raw
//! packets over tokio-rustls, and by plaintext sent to a TLS port, with
//! certificates made for each test (rcgen).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::certs::{Pem, TestCa, client_config};
use common::{Raw, WAIT, sample};
use rustls::pki_types::ServerName;
use tidemq_broker::{Broker, CertificateIdentity, Config, ListenerConfig, ListenerKind};
use tidemq_proto::mqtt::{Protocol, QoS, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A TLS listener's settings with the server certificate `server`.
fn tls_listener(server: &Pem) -> ListenerConfig {
    ListenerConfig {
        kind: ListenerKind::Tls,
        bind: "127.0.0.1:0".parse().expect("address"),
        cert_file: Some(server.cert.clone()),
        key_file: Some(server.key.clone()),
        ..ListenerConfig::default()
    }
}

/// A mutual-TLS listener: client certificates from `ca` required, the
/// user name taken from their common name.
fn mtls_listener(server: &Pem, ca: &TestCa) -> ListenerConfig {
    ListenerConfig {
        ca_file: Some(ca.cert.clone()),
        require_certificate: true,
        username_from_certificate: CertificateIdentity::Cn,
        ..tls_listener(server)
    }
}

/// The address of listener `index` (0 is the plain `[listener]`).
fn addr(broker: &Broker, index: usize) -> SocketAddr {
    broker.listener_addrs()[index].1
}

fn label(broker: &Broker, index: usize) -> String {
    broker.listener_addrs()[index].0.clone()
}

/// Opens TLS to `addr` with `config`; the handshake's error if it fails.
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    // TLS 1.3 reports a refused client certificate only after the client's
    // handshake is done: the first read shows it.
    let mut probe = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(300), tls.read(&mut probe)).await {
        Ok(Err(e)) => Err(e),
        Ok(Ok(0)) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(tls),
    }
}

/// Waits until `name{labels}` reaches `at_least`.
async fn wait_for_sample(
    registry: &prometheus::Registry,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while sample(registry, name, labels) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} stayed at {}",
            sample(registry, name, labels)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rumqttc_tls(id: &str, addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(id, "localhost", addr.port());
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ));
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// A broker whose listener 1 is TLS with a certificate `ca` signed.
struct OneWay {
    dir: tempfile::TempDir,
    ca: TestCa,
    broker: Broker,
    registry: prometheus::Registry,
}

async fn one_way() -> OneWay {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "ca").expect("ca");
    let server = ca.server("server").expect("server certificate");
    let mut config = Config::default();
    config.listeners.push(tls_listener(&server));
    let (broker, registry) = common::start_registered(config).await;
    OneWay {
        dir,
        ca,
        broker,
        registry,
    }
}

#[tokio::test]
async fn rumqttc_publishes_and_receives_over_tls() {
    let OneWay {
        dir: _dir,
        ca,
        broker,
        ..
    } = one_way().await;
    let tls = client_config(&ca.cert, None).expect("client config");

    let (client, mut events) =
        rumqttc::AsyncClient::new(rumqttc_tls("tls-sub", addr(&broker, 1), tls), 16);
    client
        .subscribe("tls/#", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut subscribed = false;
    let received = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await.expect("event loop") {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) if !subscribed => {
                    subscribed = true;
                    client
                        .publish(
                            "tls/a",
                            rumqttc::QoS::AtLeastOnce,
                            false,
                            b"over tls".to_vec(),
                        )
                        .await
                        .expect("publish");
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => break p,
                _ => {}
            }
        }
    })
    .await
    .expect("message within the wait");
    assert_eq!(received.topic, "tls/a");
    assert_eq!(&received.payload[..], b"over tls");
    broker.shutdown().await;
}

#[tokio::test]
async fn plaintext_on_a_tls_port_is_refused_and_counted() {
    let OneWay {
        broker, registry, ..
    } = one_way().await;
    let tls_label = label(&broker, 1);

    let mut tcp = TcpStream::connect(addr(&broker, 1)).await.expect("connect");
    let mut connect = bytes::BytesMut::new();
    let packet = common::connect_packet(Protocol::V3_1_1, "plain");
    tidemq_proto::mqtt::encode(
        &tidemq_proto::mqtt::Packet::Connect(packet),
        Protocol::V3_1_1,
        &mut connect,
    )
    .expect("encode");
    tcp.write_all(&connect).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("the broker closes")
        .expect("read");
    // No CONNACK: at most a TLS alert record (content type 21).
    assert!(answer.first().is_none_or(|b| *b == 21), "{answer:?}");
    let labels = [("listener", tls_label.as_str()), ("reason", "not_tls")];
    wait_for_sample(&registry, "tidemq_handshake_failures_total", &labels, 1.0).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_fails_and_is_counted() {
    let OneWay {
        dir,
        broker,
        registry,
        ..
    } = one_way().await;
    let other = TestCa::new(dir.path(), "other-ca").expect("other ca");

    let wrong = client_config(&other.cert, None).expect("client config");
    let err = tls_connect(addr(&broker, 1), wrong)
        .await
        .expect_err("the server's certificate is not from the CA the client trusts");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let labels = [
        ("listener", label(&broker, 1)),
        ("reason", "client_rejected_certificate".to_string()),
    ];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    wait_for_sample(&registry, "tidemq_handshake_failures_total", &labels, 1.0).await;
    broker.shutdown().await;
}

/// The mutual-TLS fixture: a broker whose listener 1 requires certificates
/// from `ca`, with an ACL on certificate identities.
struct Mtls {
    dir: tempfile::TempDir,
    ca: TestCa,
    broker: Broker,
    registry: prometheus::Registry,
}

async fn mtls() -> Mtls {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "ca").expect("ca");
    let server = ca.server("server").expect("server certificate");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "allow all user:alice alice/#\n").expect("acl");
    let mut config = Config::default();
    config.auth.acl_file = Some(acl);
    config.listeners.push(mtls_listener(&server, &ca));
    let (broker, registry) = common::start_registered(config).await;
    Mtls {
        dir,
        ca,
        broker,
        registry,
    }
}

impl Mtls {
    fn failures(&self, reason: &str) -> f64 {
        let listener = label(&self.broker, 1);
        sample(
            &self.registry,
            "tidemq_handshake_failures_total",
            &[("listener", &listener), ("reason", reason)],
        )
    }

    async fn refused(&self, identity: Option<&Pem>, reason: &str) {
        let config = client_config(&self.ca.cert, identity).expect("client config");
        let before = self.failures(reason);
        let result = tls_connect(addr(&self.broker, 1), config).await;
        assert!(result.is_err(), "a {reason} client must be refused");
        let listener = label(&self.broker, 1);
        let labels = [("listener", listener.as_str()), ("reason", reason)];
        wait_for_sample(
            &self.registry,
            "tidemq_handshake_failures_total",
            &labels,
            before + 1.0,
        )
        .await;
    }
}

#[tokio::test]
async fn mutual_tls_takes_the_user_name_from_the_certificate_for_the_acl() {
    let f = mtls().await;
    let alice =
        f.ca.client("alice", "alice", "alice.devices")
            .expect("cert");
    let config = client_config(&f.ca.cert, Some(&alice)).expect("client config");
    let stream = tls_connect(addr(&f.broker, 1), config.clone())
        .await
        .expect("a certificate from the CA is accepted");
    let mut raw = Raw::over(stream, Protocol::V5);
    // No user name or password in CONNECT: the certificate is the identity.
    let ack = raw.handshake("alice-1").await;
    assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
    // ACL `user:alice` rules apply to the certificate's CN.
    let granted = raw.subscribe(1, "alice/#", QoS::AtLeastOnce).await;
    assert_eq!(granted.reasons, vec![ReasonCode::GrantedQoS1]);
    let refused = raw.subscribe(2, "bob/#", QoS::AtLeastOnce).await;
    assert!(refused.reasons[0].is_error(), "{refused:?}");
    raw.publish("alice/t", b"mine", QoS::AtLeastOnce, false, 3)
        .await;
    let got = raw.expect_publish().await;
    assert_eq!(got.topic, "alice/t");

    // rumqttc with the same certificate, and with an expired one.
    let port_addr = addr(&f.broker, 1);
    let (client, mut events) =
        rumqttc::AsyncClient::new(rumqttc_tls("alice-2", port_addr, config), 16);
    client
        .subscribe("alice/#", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let suback = tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)) = events
                .poll()
                .await
                .expect("rumqttc with alice's certificate connects")
            {
                break ack;
            }
        }
    })
    .await
    .expect("SUBACK within the wait");
    assert_eq!(
        suback.return_codes,
        vec![rumqttc::SubscribeReasonCode::Success(
            rumqttc::QoS::AtLeastOnce
        )]
    );
    let old = f.ca.expired_client("old", "alice").expect("cert");
    let expired = client_config(&f.ca.cert, Some(&old)).expect("client config");
    let (_client, mut events) =
        rumqttc::AsyncClient::new(rumqttc_tls("alice-3", port_addr, expired), 16);
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = events.poll().await {
                break e;
            }
        }
    })
    .await
    .expect("rumqttc fails within the wait");
    assert!(!refused.to_string().is_empty());
    f.broker.shutdown().await;
    drop(f.dir);
}

#[tokio::test]
async fn mutual_tls_refuses_missing_foreign_and_expired_certificates() {
    let f = mtls().await;
    f.refused(None, "no_certificate").await;
    let other = TestCa::new(f.dir.path(), "other-ca").expect("other ca");
    let mallory = other
        .client("mallory", "alice", "alice.devices")
        .expect("cert");
    f.refused(Some(&mallory), "unknown_ca").await;
    let old = f.ca.expired_client("old", "alice").expect("cert");
    f.refused(Some(&old), "expired").await;
    f.broker.shutdown().await;
}

/// mosquitto_pub and mosquitto_sub, as users run them against a TLS port
/// (`--cafile`) and a mutual-TLS one (`--cert`, `--key`).
#[tokio::test]
async fn mosquitto_clients_speak_tls_and_mutual_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "ca").expect("ca");
    let server = ca.server("server").expect("server certificate");
    let alice = ca.client("alice", "alice", "alice.devices").expect("cert");
    let mut config = Config::default();
    config.listeners.push(tls_listener(&server));
    config.listeners.push(ListenerConfig {
        username_from_certificate: CertificateIdentity::San,
        ..mtls_listener(&server, &ca)
    });
    let broker = common::start(config).await;
    let tls_port = addr(&broker, 1).port().to_string();
    let mtls_port = addr(&broker, 2).port().to_string();
    let cafile = ca.cert.display().to_string();
    let (cert, key) = (
        alice.cert.display().to_string(),
        alice.key.display().to_string(),
    );

    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "localhost", "-p", &tls_port, "--cafile", &cafile])
        .args([
            "-t", "mosq/#", "-C", "2", "-W", "10", "-q", "1", "-V", "mqttv311",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub (package mosquitto-clients) runs");
    // The subscriber needs its SUBACK before the messages arrive.
    wait_for_subscriptions(&broker, 1).await;
    for (port, extra, payload) in [
        (&tls_port, vec![], "one-way"),
        (&mtls_port, vec!["--cert", &cert, "--key", &key], "mutual"),
    ] {
        let status = tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p", port, "--cafile", &cafile])
            .args(&extra)
            .args(["-t", "mosq/x", "-m", payload, "-q", "1"])
            .status()
            .await
            .expect("mosquitto_pub runs");
        assert!(status.success(), "mosquitto_pub to port {port}: {status}");
    }
    let out = tokio::time::timeout(Duration::from_secs(15), sub.wait_with_output())
        .await
        .expect("mosquitto_sub finishes")
        .expect("mosquitto_sub output");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one-way\nmutual\n");
    // Without a certificate the mutual-TLS port refuses mosquitto_pub.
    let status = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &mtls_port, "--cafile", &cafile])
        .args(["-t", "mosq/x", "-m", "nope", "-q", "1"])
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .expect("mosquitto_pub runs");
    assert!(!status.success(), "no certificate, no connection");
    broker.shutdown().await;
}

async fn wait_for_subscriptions(broker: &Broker, count: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.shared().router.subscription_count() < count {
        assert!(tokio::time::Instant::now() < deadline, "no subscription");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connections still in their TLS handshake, or yet to send CONNECT, do
/// not hold a shutdown for their timeouts.
#[tokio::test]
async fn shutdown_does_not_wait_for_handshakes_in_progress() {
    let OneWay { broker, .. } = one_way().await;
    let _silent_tls = TcpStream::connect(addr(&broker, 1)).await.expect("connect");
    let _silent_tcp = TcpStream::connect(addr(&broker, 0)).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(3), broker.shutdown())
        .await
        .expect("shutdown within 3 s, not after the 10 s CONNECT timeout");
}
