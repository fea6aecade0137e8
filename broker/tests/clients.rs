//! The broker driven by a real MQTT client library (rumqttc), 3.1.1 and 5.0.

mod common;

use std::time::Duration;

use tokio::sync::mpsc;

/// Runs a rumqttc 3.1.1 event loop, forwarding incoming PUBLISHes.
fn v4_client(
    port: u16,
    id: &str,
    clean: bool,
) -> (
    rumqttc::AsyncClient,
    mpsc::UnboundedReceiver<rumqttc::Publish>,
) {
    let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(clean);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event
                && tx.send(p).is_err()
            {
                break;
            }
        }
    });
    (client, rx)
}

/// Runs a rumqttc 5.0 event loop, forwarding incoming PUBLISHes.
fn v5_client(
    port: u16,
    id: &str,
) -> (
    rumqttc::v5::AsyncClient,
    mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Publish>,
) {
    let mut options = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::v5::AsyncClient::new(options, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)) =
                event
                && tx.send(p).is_err()
            {
                break;
            }
        }
    });
    (client, rx)
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(common::WAIT, rx.recv())
        .await
        .expect("a message within the wait")
        .expect("event loop running")
}

#[tokio::test]
async fn v4_qos_0_1_2_end_to_end() -> anyhow::Result<()> {
    use rumqttc::QoS;
    let broker = common::start_default().await;
    let port = broker.local_addr().port();
    let (sub, mut inbox) = v4_client(port, "v4-sub", true);
    sub.subscribe("sensors/+/temp", QoS::ExactlyOnce).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (publisher, _) = v4_client(port, "v4-pub", true);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publisher
            .publish(
                format!("sensors/{i}/temp"),
                qos,
                false,
                format!("reading {i}"),
            )
            .await?;
        let got = next(&mut inbox).await;
        assert_eq!(got.topic, format!("sensors/{i}/temp"));
        assert_eq!(&got.payload[..], format!("reading {i}").as_bytes());
        assert_eq!(got.qos, qos, "granted QoS 2 keeps the published QoS");
    }
    publisher
        .publish("sensors/x/humidity", QoS::AtLeastOnce, false, "no")
        .await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), inbox.recv())
            .await
            .is_err()
    );
    broker.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn v5_qos_downgrade_and_retained() -> anyhow::Result<()> {
    use rumqttc::v5::mqttbytes::QoS;
    let broker = common::start_default().await;
    let port = broker.local_addr().port();
    let (publisher, _) = v5_client(port, "v5-pub");
    publisher
        .publish("home/lamp", QoS::ExactlyOnce, true, "on")
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (sub, mut inbox) = v5_client(port, "v5-sub");
    sub.subscribe("home/#", QoS::AtLeastOnce).await?;
    let retained = next(&mut inbox).await;
    assert_eq!(&retained.topic[..], b"home/lamp");
    assert!(
        retained.retain,
        "retained message carries RETAIN on subscribe"
    );
    assert_eq!(
        retained.qos,
        QoS::AtLeastOnce,
        "min(published 2, granted 1)"
    );
    publisher
        .publish("home/door", QoS::ExactlyOnce, false, "open")
        .await?;
    let live = next(&mut inbox).await;
    assert_eq!(&live.payload[..], b"open");
    assert_eq!(live.qos, QoS::AtLeastOnce);
    assert!(!live.retain);
    broker.shutdown().await;
    Ok(())
}
