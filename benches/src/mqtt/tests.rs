//! The loads against a TideMQ broker on an ephemeral port: in memory, or
//! keeping persistent sessions in a storage engine in a temporary directory.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use tidemq_broker::{Broker, Config};
use tidemq_broker::{DurableConfig, DurableStore, SessionCatalog};
use tidemq_proto::mqtt::{Packet, PubResponse};
use tidemq_storage_engine::SyncPolicy;

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
        transport: Default::default(),
        cafile: None,
        ws_path: "/mqtt".into(),
        source_ips: 1,
        count,
        concurrency: 4,
        mqtt_version,
        client_prefix: Some(format!("test-v{mqtt_version}")),
        username: None,
        password: None,
        timeout_ms: 5000,
        output: Output::Json,
    }
}

/// `--transport tls|ws|wss`: connections and a QoS 1 load over each,
/// against a broker with those listeners and a self-signed certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_run_over_tls_and_websocket() -> anyhow::Result<()> {
    use super::target::Transport;
    use tidemq_broker::{ListenerConfig, ListenerKind};
    let dir = tempfile::tempdir()?;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    let mut config = Config::default();
    config.listener.bind = "127.0.0.1:0".parse()?;
    for kind in [ListenerKind::Tls, ListenerKind::Ws, ListenerKind::Wss] {
        let tls = matches!(kind, ListenerKind::Tls | ListenerKind::Wss);
        config.listeners.push(ListenerConfig {
            kind,
            bind: "127.0.0.1:0".parse()?,
            cert_file: tls.then(|| cert.clone()),
            key_file: tls.then(|| key.clone()),
            ..ListenerConfig::default()
        });
    }
    let broker = Broker::start(config, &prometheus::Registry::new()).await?;
    let addrs = broker.listener_addrs();
    for (index, transport) in [(1, Transport::Tls), (2, Transport::Ws), (3, Transport::Wss)] {
        let common = CommonArgs {
            host: "localhost".into(),
            transport,
            cafile: Some(cert.clone()),
            client_prefix: Some(format!("{transport:?}")),
            ..common(addrs[index].1.port(), 5, 4)
        };
        let outcome = conn::conn(&ConnArgs::new(common.clone())).await?;
        assert_eq!(
            (outcome.report.success, outcome.held),
            (5, 5),
            "{transport:?}"
        );
        let load = PubArgs {
            common,
            topic: "t/%i".into(),
            qos: 1,
            payload_size: 64,
            duration_secs: 1,
            rate_per_client: 50,
            inflight: 4,
            retain: false,
        };
        let report = publish::publish(&load).await?;
        assert!(
            report.success > 0 && report.failed == 0,
            "{transport:?}: {report:?}"
        );
    }
    broker.shutdown().await;
    Ok(())
}

/// `--username` (with `%c` for the client id) and `--password`: the
/// clients log in, and a wrong password fails every connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_log_in_with_a_password() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let passwords = dir.path().join("passwords");
    let hash = tidemq_broker::PasswordFile::hash_password(b"secret")?;
    let users: String = (0..3).map(|i| format!("u-login-c-{i}:{hash}\n")).collect();
    std::fs::write(&passwords, users)?;
    let mut config = Config::default();
    config.listener.bind = "127.0.0.1:0".parse()?;
    config.auth.password_file = Some(passwords);
    let broker = Broker::start(config, &prometheus::Registry::new()).await?;
    let with = |password: &str| {
        ConnArgs::new(CommonArgs {
            client_prefix: Some("login".into()),
            username: Some("u-%c".into()),
            password: Some(password.into()),
            ..common(broker.local_addr().port(), 3, 5)
        })
    };
    let right = conn::conn(&with("secret")).await?;
    assert_eq!(
        (right.report.success, right.held),
        (3, 3),
        "{:?}",
        right.report
    );
    let wrong = conn::conn(&with("guess")).await?;
    assert_eq!(
        (wrong.report.success, wrong.report.failed),
        (0, 3),
        "{:?}",
        wrong.report
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_load_runs_against_tidemq() -> anyhow::Result<()> {
    let mut config = Config::default();
    config.listener.bind = "127.0.0.1:0".parse()?;
    let broker = Broker::start(config, &prometheus::Registry::new()).await?;
    let port = broker.local_addr().port();

    for version in [4, 5] {
        let outcome = conn::conn(&ConnArgs::new(common(port, 20, version))).await?;
        assert_eq!(
            (outcome.report.success, outcome.report.failed, outcome.held),
            (20, 0, 20),
            "v{version}"
        );
    }
    // Held and subscribed, from two source addresses, with the memory of
    // the broker (this process) read around them.
    let outcome = conn::conn(&ConnArgs {
        subscribe: Some("idle/%i".into()),
        broker_pid: Some(std::process::id()),
        ..ConnArgs::new(CommonArgs {
            source_ips: 2,
            ..common(port, 20, 4)
        })
    })
    .await?;
    assert_eq!(outcome.held, 20);
    let memory = outcome.memory.context("--broker-pid reads the memory")?;
    let cpu = outcome.cpu;
    assert!(cpu.broker_us_per_connect.is_some(), "{cpu:?}");
    assert!(cpu.tool_us_per_connect >= 0.0, "{cpu:?}");
    let persistent = conn::conn(&ConnArgs {
        persistent: true,
        ..ConnArgs::new(common(port, 10, 5))
    })
    .await?;
    assert_eq!(persistent.held, 10, "{:?}", persistent.report);
    assert!(memory.rss_before > 0 && memory.rss_held > 0, "{memory:?}");

    let sub_args = SubArgs {
        common: common(port, 2, 4),
        topic: "t/%i".into(),
        qos: 2,
        duration_secs: 20,
        expect: 0,
        idle_secs: 1,
        // The second filter of each matches nothing published: each message
        // still arrives once.
        filters_per_client: 2,
        persistent: false,
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
            retain: false,
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

/// The tool's closed connections leave no TIME_WAIT on its own ports: it
/// waits for the broker to close first after DISCONNECT. A TIME_WAIT of the
/// tool's is a socket of state 06 in `/proc/net/tcp` whose remote end is
/// the broker's port (the broker's own have it as their local end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_leaves_the_time_wait_to_the_broker() -> anyhow::Result<()> {
    let mut config = Config::default();
    config.listener.bind = "127.0.0.1:0".parse()?;
    let broker = Broker::start(config, &prometheus::Registry::new()).await?;
    let port = broker.local_addr().port();
    let outcome = conn::conn(&ConnArgs::new(CommonArgs {
        source_ips: 2,
        ..common(port, 20, 4)
    }))
    .await?;
    assert_eq!(outcome.held, 20);
    let time_waits = |remote: bool| -> anyhow::Result<usize> {
        let table = std::fs::read_to_string("/proc/net/tcp")?;
        let port = format!(":{port:04X}");
        Ok(table
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 3 && f[3] == "06")
            .filter(|f| f[if remote { 2 } else { 1 }].ends_with(&port))
            .count())
    };
    assert_eq!(time_waits(true)?, 0, "TIME_WAITs on the tool's ports");
    assert_eq!(
        time_waits(false)?,
        20,
        "the broker closed every connection first"
    );
    broker.shutdown().await;
    Ok(())
}

/// What a broker found in its storage engine when it started.
#[derive(Debug, PartialEq)]
struct Stored {
    /// Persistent sessions.
    sessions: usize,
    /// Messages queued for each of them, sorted.
    queued: Vec<usize>,
}

/// A broker on an ephemeral port keeping persistent sessions and their
/// messages in a storage engine under `dir` (synced on every append, as
/// the `tidemq` binary does by default), and what it recovered from there.
async fn durable_broker(dir: &Path) -> anyhow::Result<(Broker, Stored)> {
    let registry = prometheus::Registry::new();
    let durable = DurableConfig {
        dir: dir.to_path_buf(),
        partitions: 2,
        io_threads: 1,
        pin_cores: false,
        sync: SyncPolicy::Always,
        segment_bytes: 1 << 20,
        preallocate_bytes: 256 * 1024,
        max_backlog_bytes: 64 << 20,
        min_free_bytes: 0,
        max_message_age: None,
    };
    let (store, recovered) = DurableStore::open(&durable, &registry).await?;
    let mut queued: Vec<usize> = recovered.sessions.iter().map(|s| s.queue.len()).collect();
    queued.sort_unstable();
    let stored = Stored {
        sessions: recovered.sessions.len(),
        queued,
    };
    let mut config = Config::default();
    config.listener.bind = "127.0.0.1:0".parse()?;
    let broker = Broker::start_with_store(
        config,
        &registry,
        Some((store, recovered)),
        SessionCatalog::Local,
    )
    .await?;
    Ok((broker, stored))
}

/// Resumes the persistent session `client_id`, acknowledges every message
/// it is sent until none comes for 500 ms, and returns whether the broker
/// had the session and the topics of the messages.
async fn drain(
    port: u16,
    client_id: &str,
    mqtt_version: u8,
) -> anyhow::Result<(bool, Vec<String>)> {
    let common = common(port, 1, mqtt_version);
    let mut client = client::Client::connect(
        &common.target()?,
        client_id.into(),
        common.protocol(),
        KEEP_ALIVE_SECS,
        SessionKind::Persistent,
    )
    .await?;
    let present = client.session_present();
    let mut topics = Vec::new();
    while let Ok(packet) =
        tokio::time::timeout(Duration::from_millis(500), client.read_packet()).await
    {
        if let Packet::Publish(publish) = packet? {
            if let Some(id) = publish.packet_id {
                client.send(&Packet::PubAck(PubResponse::success(id)))?;
                client.flush().await?;
            }
            topics.push(publish.topic);
        }
    }
    client.disconnect().await;
    Ok((present, topics))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_subscribers_leave_stored_sessions_behind() -> anyhow::Result<()> {
    for version in [4, 5] {
        let dir = tempfile::tempdir()?;
        let (broker, stored) = durable_broker(dir.path()).await?;
        assert_eq!(stored.sessions, 0);
        let port = broker.local_addr().port();
        let mut sub_args = SubArgs {
            common: common(port, 2, version),
            topic: "p/%i".into(),
            qos: 1,
            duration_secs: 20,
            expect: 0,
            idle_secs: 1,
            filters_per_client: 1,
            persistent: true,
        };
        sub_args.common.client_prefix = Some(format!("persistent-v{version}"));
        let mut clean_args = sub_args.clone();
        clean_args.persistent = false;
        clean_args.topic = "c/%i".into();
        clean_args.common.client_prefix = Some(format!("clean-v{version}"));
        let subscribers = tokio::spawn(async move {
            let (persistent, clean) = tokio::join!(
                subscribe::subscribe(&sub_args),
                subscribe::subscribe(&clean_args)
            );
            anyhow::Ok((persistent?, clean?))
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Each publisher load on its own client ids, or they take each
        // other's connections over.
        let pub_args = |name: &str| PubArgs {
            common: CommonArgs {
                client_prefix: Some(format!("{name}-v{version}")),
                ..common(port, 2, version)
            },
            topic: format!("{name}/%i"),
            qos: 1,
            payload_size: 16,
            duration_secs: 1,
            rate_per_client: 100,
            inflight: 4,
            retain: false,
        };
        let (to_persistent, to_clean) = (pub_args("p"), pub_args("c"));
        let (online, clean_online) = tokio::join!(
            publish::publish(&to_persistent),
            publish::publish(&to_clean)
        );
        let (online, clean_online) = (online?, clean_online?);
        assert!(online.success > 0 && clean_online.success > 0);
        let (received, clean_received) = subscribers.await??;
        assert_eq!(received.success, online.success, "v{version}");
        assert_eq!(clean_received.success, clean_online.success, "v{version}");

        // The subscribers are gone: only the persistent ones' sessions
        // store what is published now.
        let (offline, clean_offline) = tokio::join!(
            publish::publish(&to_persistent),
            publish::publish(&to_clean)
        );
        let (offline, clean_offline) = (offline?, clean_offline?);
        assert_eq!((offline.failed, offline.timeout), (0, 0), "v{version}");
        assert!(offline.success > 0 && clean_offline.success > 0);
        broker.shutdown().await;

        let (broker, stored) = durable_broker(dir.path()).await?;
        assert_eq!(stored.sessions, 2, "v{version}: {stored:?}");
        assert_eq!(
            stored.queued.iter().sum::<usize>() as u64,
            offline.success,
            "v{version}: {stored:?}"
        );
        let port = broker.local_addr().port();
        let (present, topics) = drain(port, &format!("persistent-v{version}-s-1"), version).await?;
        assert!(present, "v{version}");
        assert!(
            !topics.is_empty() && topics.iter().all(|t| t == "p/1"),
            "{topics:?}"
        );
        let (present, topics) = drain(port, &format!("clean-v{version}-s-1"), version).await?;
        assert_eq!((present, topics.len()), (false, 0), "v{version}");
        broker.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_sessions_store_every_message() -> anyhow::Result<()> {
    for version in [4, 5] {
        let dir = tempfile::tempdir()?;
        let (broker, _) = durable_broker(dir.path()).await?;
        let args = OfflineArgs {
            common: common(broker.local_addr().port(), 20, version),
            messages: 5,
            payload_size: 16,
            // 20 topics over 3 publishers: 7, 7 and 6 each.
            publishers: 3,
            inflight: 4,
            topic_prefix: Some(format!("o{version}")),
            phases: super::args::Phases::Both,
        };
        let report = offline::offline(&args).await?;
        let sessions = &report.sessions;
        assert_eq!(
            (sessions.success, sessions.failed, sessions.timeout),
            (20, 0, 0),
            "v{version}"
        );
        let messages = &report.messages;
        assert_eq!(
            (messages.success, messages.failed, messages.timeout),
            (100, 0, 0),
            "v{version}"
        );
        assert_eq!(messages.latency_samples, 100);
        broker.shutdown().await;

        let (broker, stored) = durable_broker(dir.path()).await?;
        assert_eq!(
            stored,
            Stored {
                sessions: 20,
                queued: vec![5; 20]
            },
            "v{version}"
        );
        let port = broker.local_addr().port();
        let (present, topics) = drain(port, &args.common.client_id('o', 7), version).await?;
        assert!(present, "v{version}");
        assert_eq!(topics, vec![format!("o{version}/7"); 5], "v{version}");
        broker.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_sessions_come_back_and_drain_what_was_stored() -> anyhow::Result<()> {
    for version in [4, 5] {
        let dir = tempfile::tempdir()?;
        let (broker, _) = durable_broker(dir.path()).await?;
        let mut args = OfflineArgs {
            common: common(broker.local_addr().port(), 12, version),
            messages: 4,
            payload_size: 16,
            publishers: 2,
            inflight: 4,
            topic_prefix: Some(format!("r{version}")),
            phases: super::args::Phases::Both,
        };
        offline::offline(&args).await?;
        args.phases = super::args::Phases::Resume;
        let resume = offline::offline(&args).await?.resume.context("resumed")?;
        let counts = |r: &FinalReport| (r.success, r.failed, r.timeout);
        assert_eq!(counts(&resume.resumed), (12, 0, 0), "v{version}");
        assert_eq!(counts(&resume.drained), (12, 0, 0), "v{version}");
        // Drained: a second comeback finds the sessions but nothing in them.
        args.common.timeout_ms = 300;
        let again = offline::offline(&args).await?.resume.context("resumed")?;
        assert_eq!(counts(&again.resumed), (12, 0, 0), "v{version}");
        assert_eq!(counts(&again.drained), (0, 0, 12), "v{version}");
        // Sessions never parked are not present: each comeback fails.
        args.common.client_prefix = Some(format!("never-v{version}"));
        let none = offline::offline(&args).await?.resume.context("resumed")?;
        assert_eq!(counts(&none.resumed), (0, 12, 0), "v{version}");
        broker.shutdown().await;
    }
    Ok(())
}
