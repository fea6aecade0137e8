//! SIGHUP reloads certificates, passwords and the ACL of the running
//! `tidemq` binary without dropping connections; a broken file keeps the
//! old settings and is counted.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use common::certs::{Pem, TestCa, client_config};
use common::process::{NodeProcess, http_post};
use common::{Raw, cheap_hash};
use rustls::pki_types::ServerName;
use tidemq_proto::mqtt::{Protocol, QoS, ReasonCode};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(10);

async fn tls_raw(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Raw> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    Ok(Raw::over(tls, Protocol::V5))
}

async fn login(addr: SocketAddr, user: &str, password: &'static [u8]) -> ReasonCode {
    let (_, ack) = Raw::connect_with(addr, Protocol::V5, user, |c| {
        c.username = Some(user.to_string());
        c.password = Some(Bytes::from_static(password));
    })
    .await;
    ack.reason
}

fn install(pem: &Pem, dir: &Path) -> anyhow::Result<()> {
    std::fs::copy(&pem.cert, dir.join("server.crt"))?;
    std::fs::copy(&pem.key, dir.join("server.key"))?;
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_certificates_and_passwords_and_keeps_connections() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (ca1, ca2) = (TestCa::new(d, "ca1")?, TestCa::new(d, "ca2")?);
    install(&ca1.server("server-1")?, d)?;
    let passwords = d.join("passwords");
    std::fs::write(&passwords, format!("old:{}\n", cheap_hash("old-pw")))?;
    let acl = d.join("acl");
    std::fs::write(&acl, "allow all * #\n")?;
    let config = d.join("tidemq.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\npassword_file = {passwords:?}\nacl_file = {acl:?}\n\
             [listener]\nallow_anonymous = false\n\
             [[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\n\
             cert_file = {:?}\nkey_file = {:?}\n",
            d.join("server.crt"),
            d.join("server.key"),
        ),
    )?;
    let config_arg = format!("--config={}", config.display());
    let node = NodeProcess::start_with_args(&d.join("data"), &[], &[&config_arg])?;
    let (tls_label, tls_addr) = node.listeners[1].clone();
    let (trust1, trust2) = (
        client_config(&ca1.cert, None)?,
        client_config(&ca2.cert, None)?,
    );

    // A client that stays connected across the reloads.
    let mut kept = tls_raw(tls_addr, trust1.clone()).await?;
    assert_eq!(kept.handshake("kept").await.reason, ReasonCode::Success);
    kept.subscribe(1, "r/#", QoS::AtLeastOnce).await;
    assert!(
        tls_raw(tls_addr, trust2.clone()).await.is_err(),
        "not yet the new CA"
    );
    assert_eq!(
        login(node.mqtt, "old", b"old-pw").await,
        ReasonCode::Success
    );

    // New certificate (another CA) and new passwords, then SIGHUP.
    install(&ca2.server("server-2")?, d)?;
    std::fs::write(&passwords, format!("new:{}\n", cheap_hash("new-pw")))?;
    node.sighup()?;
    node.metric_until("tidemq_reloads_total", WAIT, "a reload", |n| n >= 1.0)
        .await?;
    let mut fresh = tls_raw(tls_addr, trust2.clone())
        .await
        .context("a new handshake sees the new certificate")?;
    assert_eq!(fresh.handshake("fresh").await.reason, ReasonCode::Success);
    assert!(
        tls_raw(tls_addr, trust1).await.is_err(),
        "the old certificate is gone"
    );
    assert_eq!(
        login(node.mqtt, "new", b"new-pw").await,
        ReasonCode::Success
    );
    assert_eq!(
        login(node.mqtt, "old", b"old-pw").await,
        ReasonCode::BadUserNameOrPassword
    );
    // The connection made before the reload still works.
    fresh
        .publish("r/1", b"after reload", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(&kept.expect_publish().await.payload[..], b"after reload");

    // Broken files: the old settings stay, the failure is counted.
    std::fs::write(d.join("server.crt"), "not a certificate")?;
    std::fs::write(&acl, "allow all * #\nthis is no rule\n")?;
    node.sighup()?;
    let tls_failures = format!("tidemq_reload_failures_total{{what=\"{tls_label}\"}}");
    node.metric_until(&tls_failures, WAIT, "a failed TLS reload", |n| n >= 1.0)
        .await?;
    node.metric_until(
        "tidemq_reload_failures_total{what=\"auth\"}",
        WAIT,
        "a failed auth reload",
        |n| n >= 1.0,
    )
    .await?;
    let mut again = tls_raw(tls_addr, trust2)
        .await
        .context("the last good certificate is still served")?;
    assert_eq!(again.handshake("again").await.reason, ReasonCode::Success);
    assert_eq!(
        login(node.mqtt, "new", b"new-pw").await,
        ReasonCode::Success
    );
    again
        .publish("r/2", b"still", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(&kept.expect_publish().await.payload[..], b"still");

    // POST /admin/reload does what SIGHUP does, and says what failed.
    let (status, body) = http_post(node.http, "/admin/reload")?;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains(&tls_label) && body.contains("\"auth\""),
        "{body}"
    );
    install(&ca1.server("server-3")?, d)?;
    std::fs::write(&acl, "allow all * #\n")?;
    let (status, body) = http_post(node.http, "/admin/reload")?;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        answer,
        serde_json::json!({ "reloaded": true, "failed": [] })
    );
    let mut third = tls_raw(tls_addr, client_config(&ca1.cert, None)?).await?;
    assert_eq!(third.handshake("third").await.reason, ReasonCode::Success);
    Ok(())
}
