//! MQTT over WebSocket (`ws`) and over WebSocket over TLS (`wss`): packets
//! split across frames and packed several to a frame, ping/pong, close,
//! refused upgrades, and rumqttc as a client nobody here wrote.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::certs::{TestCa, client_config};
use common::{WAIT, sample};
use futures_util::{SinkExt, StreamExt};
use tidemq_broker::{Broker, Config, ListenerConfig, ListenerKind};
use tidemq_proto::mqtt::{self, Packet, Protocol, QoS, ReasonCode};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

fn ws_listener(kind: ListenerKind) -> ListenerConfig {
    ListenerConfig {
        kind,
        bind: "127.0.0.1:0".parse().expect("address"),
        ..ListenerConfig::default()
    }
}

async fn ws_broker(edit: impl FnOnce(&mut ListenerConfig)) -> (Broker, prometheus::Registry) {
    let mut listener = ws_listener(ListenerKind::Ws);
    edit(&mut listener);
    let mut config = Config::default();
    config.listeners.push(listener);
    common::start_registered(config).await
}

/// Opens a WebSocket to `addr` at `path`, offering `protocol` and sending
/// `origin` if given.
async fn open(
    addr: SocketAddr,
    path: &str,
    protocol: Option<&str>,
    origin: Option<&str>,
) -> Result<WebSocketStream<TcpStream>, WsError> {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    if let Some(protocol) = protocol {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(protocol).expect("header"),
        );
    }
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).expect("header"));
    }
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let (ws, response) = tokio_tungstenite::client_async(request, tcp).await?;
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        protocol.and_then(|p| p.split(',').map(str::trim).find(|p| p.starts_with("mqtt"))),
        "the broker names the subprotocol it chose"
    );
    Ok(ws)
}

fn encode(packet: &Packet) -> Bytes {
    let mut out = BytesMut::new();
    mqtt::encode(packet, Protocol::V5, &mut out).expect("encodable packet");
    out.freeze()
}

/// Reads MQTT packets out of binary messages until `count` are decoded.
async fn read_packets(ws: &mut WebSocketStream<TcpStream>, count: usize) -> Vec<Packet> {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    while packets.len() < count {
        while let Some(packet) =
            mqtt::decode(&mut buf, Protocol::V5, 1 << 20).expect("well-formed packet")
        {
            packets.push(packet);
        }
        if packets.len() >= count {
            break;
        }
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => buf.extend_from_slice(&data),
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
    packets
}

#[tokio::test]
async fn packets_split_across_frames_and_packed_in_one_frame_both_work() {
    let (broker, _registry) = ws_broker(|_| {}).await;
    let addr = broker.listener_addrs()[1].1;
    let mut ws = open(addr, "/mqtt", Some("mqtt"), None)
        .await
        .expect("upgrade");

    // CONNECT in three frames, cut inside the fixed header and the payload.
    let connect = encode(&Packet::Connect(common::connect_packet(
        Protocol::V5,
        "ws-1",
    )));
    for piece in [&connect[..1], &connect[1..5], &connect[5..]] {
        ws.send(Message::Binary(Bytes::copy_from_slice(piece)))
            .await
            .expect("send");
    }
    match read_packets(&mut ws, 1).await.as_slice() {
        [Packet::ConnAck(ack)] => assert_eq!(ack.reason, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }

    // SUBSCRIBE and a QoS 1 PUBLISH to it in one frame.
    let subscribe = mqtt::Subscribe {
        packet_id: 1,
        filters: vec![mqtt::SubscribeFilter {
            filter: "ws/#".into(),
            options: mqtt::SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
        properties: mqtt::SubscribeProperties::default(),
    };
    let mut both = BytesMut::new();
    both.extend_from_slice(&encode(&Packet::Subscribe(subscribe)));
    both.extend_from_slice(&encode(&Packet::Publish(common::publish(
        "ws/a",
        b"framed",
        QoS::AtLeastOnce,
        false,
        2,
    ))));
    ws.send(Message::Binary(both.freeze())).await.expect("send");
    let packets = read_packets(&mut ws, 3).await;
    assert!(matches!(packets[0], Packet::SubAck(_)), "{packets:?}");
    assert!(
        packets
            .iter()
            .any(|p| matches!(p, Packet::PubAck(a) if a.packet_id == 2)),
        "{packets:?}"
    );
    let delivered = packets.iter().find_map(|p| match p {
        Packet::Publish(p) => Some(p),
        _ => None,
    });
    assert_eq!(delivered.map(|p| &p.payload[..]), Some(&b"framed"[..]));

    // A WebSocket ping is answered with a pong carrying its payload.
    ws.send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(data))) => break data,
                Some(Ok(_)) => {}
                other => panic!("expected a pong, got {other:?}"),
            }
        }
    })
    .await
    .expect("pong within the wait");
    assert_eq!(&pong[..], b"hi");

    // A close frame ends the connection: the broker answers the close.
    ws.send(Message::Close(None)).await.expect("close");
    let ended = tokio::time::timeout(WAIT, async {
        // Reads past the broker's close frame until the stream ends.
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the broker closes after a close frame");
    broker.shutdown().await;
}

#[tokio::test]
async fn upgrades_with_a_wrong_path_protocol_or_origin_are_refused_and_counted() {
    let (broker, registry) = ws_broker(|l| {
        l.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let (label, addr) = broker.listener_addrs()[1].clone();
    let status = |result: Result<_, WsError>| match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("the upgrade must be refused"),
    };
    let origin = Some("https://app.example");
    assert_eq!(
        status(open(addr, "/other", Some("mqtt"), origin).await),
        404
    );
    assert_eq!(status(open(addr, "/mqtt", Some("chat"), origin).await), 400);
    assert_eq!(
        status(open(addr, "/mqtt", Some("mqtt"), Some("https://evil.example")).await),
        403
    );
    // The old subprotocol name is accepted, with the allowed origin.
    let ws = open(addr, "/mqtt", Some("mqttv3.1"), origin).await;
    assert!(ws.is_ok(), "mqttv3.1 with an allowed origin is upgraded");
    for reason in ["ws_path", "ws_subprotocol", "ws_origin"] {
        let labels = [("listener", label.as_str()), ("reason", reason)];
        let deadline = tokio::time::Instant::now() + WAIT;
        while sample(&registry, "tidemq_handshake_failures_total", &labels) < 1.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{reason} not counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_text_frame_closes_the_connection() {
    let (broker, _registry) = ws_broker(|_| {}).await;
    let addr = broker.listener_addrs()[1].1;
    let mut ws = open(addr, "/mqtt", Some("mqtt"), None)
        .await
        .expect("upgrade");
    ws.send(Message::text("CONNECT")).await.expect("send");
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "MQTT over WebSocket is binary only");
    broker.shutdown().await;
}

/// rumqttc's client over `ws://` and `wss://`.
#[tokio::test]
async fn rumqttc_round_trips_over_ws_and_wss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "ca").expect("ca");
    let server = ca.server("server").expect("server certificate");
    let mut config = Config::default();
    config.listeners.push(ws_listener(ListenerKind::Ws));
    config.listeners.push(ListenerConfig {
        cert_file: Some(server.cert.clone()),
        key_file: Some(server.key.clone()),
        ..ws_listener(ListenerKind::Wss)
    });
    let broker = common::start(config).await;
    let addrs = broker.listener_addrs();
    let tls = client_config(&ca.cert, None).expect("client config");
    for (index, transport, scheme) in [
        (1, rumqttc::Transport::Ws, "ws"),
        (
            2,
            rumqttc::Transport::wss_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone())),
            "wss",
        ),
    ] {
        let url = format!("{scheme}://localhost:{}/mqtt", addrs[index].1.port());
        let mut options =
            rumqttc::MqttOptions::new(format!("rumqttc-{scheme}"), url, addrs[index].1.port());
        options.set_transport(transport);
        let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
        client
            .subscribe("rq/#", rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let topic = format!("rq/{scheme}");
        let received = tokio::time::timeout(WAIT, async {
            loop {
                match events.poll().await.expect("event loop") {
                    rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => client
                        .publish(
                            &topic,
                            rumqttc::QoS::AtLeastOnce,
                            false,
                            scheme.as_bytes().to_vec(),
                        )
                        .await
                        .expect("publish"),
                    rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => break p,
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no message over {scheme}"));
        assert_eq!(received.topic, topic);
        assert_eq!(&received.payload[..], scheme.as_bytes());
    }
    broker.shutdown().await;
}
