//! The three loads against a TideMQ broker on an ephemeral port.

use std::time::Duration;

use tidemq_broker::{Broker, Config};

use super::*;

#[test]
fn payloads_carry_their_send_time() {
    let before = now_nanos();
    let payload = stamped_payload(64);
    assert_eq!(payload.len(), 64);
    let stamp = sent_at(&payload).expect("64 bytes hold a stamp");
    assert!(stamp >= before && stamp <= now_nanos());
    assert_eq!(stamped_payload(1).len(), 8, "never shorter than the stamp");
    assert_eq!(sent_at(b"short"), None);
}

fn common(port: u16, count: usize, mqtt_version: u8) -> CommonArgs {
    CommonArgs {
        host: "127.0.0.1".into(),
        port,
        count,
        concurrency: 4,
        mqtt_version,
        client_prefix: Some(format!("test-v{mqtt_version}")),
        timeout_ms: 5000,
        output: Output::Json,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_load_runs_against_tidemq() -> anyhow::Result<()> {
    let mut config = Config::default();
    config.listener.bind = "127.0.0.1:0".parse()?;
    let broker = Broker::start(config, &prometheus::Registry::new()).await?;
    let port = broker.local_addr().port();

    for version in [4, 5] {
        let conn_args = ConnArgs {
            common: common(port, 20, version),
        };
        let (report, held) = conn::conn(&conn_args).await?;
        assert_eq!(
            (report.success, report.failed, held),
            (20, 0, 20),
            "v{version}"
        );
    }

    let sub_args = SubArgs {
        common: common(port, 2, 4),
        topic: "t/%i".into(),
        qos: 2,
        duration_secs: 20,
        expect: 0,
        idle_secs: 1,
    };
    let subscribers = tokio::spawn(async move { subscribe::subscribe(&sub_args).await });
    // The subscribers announce readiness only on stderr; connecting and
    // subscribing two clients on loopback takes milliseconds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sent = 0;
    for qos in [0, 1, 2] {
        let pub_args = PubArgs {
            common: common(port, 2, 4),
            topic: "t/%i".into(),
            qos,
            payload_size: 16,
            duration_secs: 1,
            rate_per_client: 100,
            inflight: 4,
        };
        let published = publish::publish(&pub_args).await?;
        assert!(published.success > 0, "QoS {qos}: {published:?}");
        assert_eq!((published.failed, published.timeout), (0, 0), "QoS {qos}");
        if qos > 0 {
            assert_eq!(published.latency_samples, published.success);
        }
        sent += published.success;
    }
    let received = subscribers.await??;
    assert_eq!(
        received.success, sent,
        "every message reached its subscriber"
    );
    assert_eq!(received.latency_samples, received.success);
    assert_eq!((received.failed, received.timeout), (0, 0));
    broker.shutdown().await;
    Ok(())
}
