//! MQTT.js (npm `mqtt`, run with node) against the broker over `mqtt://`,
//! `mqtts://`, `ws://` and `wss://`, 3.1.1 and 5.0. `scripts/test.sh`
//! installs the package (`interop/mqttjs`, from its lock file).

mod common;

use std::path::{Path, PathBuf};

use common::certs::TestCa;
use tidemq_broker::{Config, ListenerConfig, ListenerKind};

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/mqttjs")
}

fn listener(kind: ListenerKind, server: &common::certs::Pem) -> ListenerConfig {
    let tls = kind == ListenerKind::Tls || kind == ListenerKind::Wss;
    ListenerConfig {
        kind,
        bind: "127.0.0.1:0".parse().expect("address"),
        cert_file: tls.then(|| server.cert.clone()),
        key_file: tls.then(|| server.key.clone()),
        ..ListenerConfig::default()
    }
}

#[tokio::test]
async fn mqttjs_round_trips_over_every_transport() {
    let dir = interop_dir();
    assert!(
        dir.join("node_modules/mqtt").is_dir(),
        "MQTT.js is not installed: run scripts/test.sh (it runs `npm ci` in {})",
        dir.display()
    );
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(certs.path(), "ca").expect("ca");
    let server = ca.server("server").expect("server certificate");
    let mut config = Config::default();
    for kind in [ListenerKind::Tls, ListenerKind::Ws, ListenerKind::Wss] {
        config.listeners.push(listener(kind, &server));
    }
    let broker = common::start(config).await;
    let addrs = broker.listener_addrs();
    let cafile = ca.cert.display().to_string();
    let urls = [
        (format!("mqtt://127.0.0.1:{}", addrs[0].1.port()), None),
        (
            format!("mqtts://localhost:{}", addrs[1].1.port()),
            Some(&cafile),
        ),
        (format!("ws://127.0.0.1:{}/mqtt", addrs[2].1.port()), None),
        (
            format!("wss://localhost:{}/mqtt", addrs[3].1.port()),
            Some(&cafile),
        ),
    ];
    for (url, ca) in &urls {
        for version in ["4", "5"] {
            let output = tokio::process::Command::new("node")
                .arg(dir.join("roundtrip.js"))
                .arg(url)
                .arg(ca.map_or("", String::as_str))
                .arg(version)
                .output()
                .await
                .expect("node runs");
            assert!(
                output.status.success(),
                "MQTT.js over {url} (protocol {version}): {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    broker.shutdown().await;
}
