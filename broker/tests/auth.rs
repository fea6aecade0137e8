//! Authentication (password file) and authorization (ACL) end to end.

mod common;

use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use common::{Raw, cheap_hash as hash};
use tidemq_broker::Config;
use tidemq_proto::mqtt::{ConnAck, Protocol, QoS, ReasonCode};

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(text.as_bytes()).expect("write");
    path
}

/// A configuration whose password file (in `dir`) holds one user, alice,
/// with `password`.
fn alice(dir: &std::path::Path, password: &str) -> Config {
    let mut config = Config::default();
    config.auth.password_file = Some(write(
        dir,
        "passwords",
        &format!("alice:{}\n", hash(password)),
    ));
    config
}

/// Connects as `user` with `password`; the connection and its CONNACK.
async fn log_in(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
    user: &str,
    password: &'static [u8],
) -> (Raw, ConnAck) {
    Raw::connect_with(addr, protocol, client_id, |c| {
        c.username = Some(user.into());
        c.password = Some(Bytes::from_static(password));
    })
    .await
}

#[tokio::test]
async fn passwords_and_anonymous_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = alice(dir.path(), "wonderland");
    config.listener.allow_anonymous = false;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let (_, ack) = log_in(addr, protocol, "ok", "alice", b"wonderland").await;
        assert_eq!(ack.reason, ReasonCode::Success);
        let (mut raw, ack) = log_in(addr, protocol, "bad", "alice", b"looking-glass").await;
        assert_eq!(
            ack.reason,
            ReasonCode::BadUserNameOrPassword,
            "{protocol:?}"
        );
        assert!(raw.until_closed().await.is_empty());
        let (_, ack) = log_in(addr, protocol, "nobody", "mallory", b"x").await;
        assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
        let (_, ack) = Raw::connect_with(addr, protocol, "anon", |_| {}).await;
        assert_eq!(ack.reason, ReasonCode::NotAuthorized, "anonymous refused");
    }
    let refused = broker
        .shared()
        .metrics
        .connects
        .with_label_values(&["bad_username_or_password"])
        .get();
    assert_eq!(refused, 4);
    broker.shutdown().await;
}

#[tokio::test]
async fn acl_denies_subscribe_and_publish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = "\
allow subscribe * public/#
allow all * devices/%c/#
allow publish * public/#
deny all * #
";
    let mut config = Config::default();
    config.auth.acl_file = Some(write(dir.path(), "acl", acl));
    let broker = common::start(config).await;
    let addr = broker.local_addr();

    let mut v5 = Raw::connect(addr, Protocol::V5, "dev1").await;
    // 0x80, as in 3.1.1: see on_subscribe.
    assert_eq!(
        v5.subscribe(1, "secret/#", QoS::AtLeastOnce).await.reasons,
        vec![ReasonCode::UnspecifiedError]
    );
    assert_eq!(
        v5.subscribe(2, "devices/dev1/#", QoS::AtLeastOnce)
            .await
            .reasons,
        vec![ReasonCode::GrantedQoS1]
    );
    assert_eq!(
        v5.subscribe(3, "devices/dev2/#", QoS::AtLeastOnce)
            .await
            .reasons,
        vec![ReasonCode::UnspecifiedError]
    );
    let mut v3 = Raw::connect(addr, Protocol::V3_1_1, "dev2").await;
    let ack = v3.subscribe(1, "secret/#", QoS::AtLeastOnce).await;
    // 3.1.1 has one failure code, 0x80, which decodes as UnspecifiedError.
    assert_eq!(ack.reasons, vec![ReasonCode::UnspecifiedError]);
    v3.subscribe(2, "public/#", QoS::AtLeastOnce).await;

    // A denied QoS 1 publish is acknowledged with 0x87 (5.0) and not routed.
    let ack = v5
        .publish("devices/dev2/cmd", b"no", QoS::AtLeastOnce, false, 9)
        .await;
    assert_eq!(ack.map(|a| a.reason), Some(ReasonCode::NotAuthorized));
    let ack = v5
        .publish("public/news", b"yes", QoS::AtLeastOnce, false, 10)
        .await;
    assert_eq!(ack.map(|a| a.reason), Some(ReasonCode::Success));
    assert_eq!(&v3.expect_publish().await.payload[..], b"yes");
    v3.expect_silence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn one_deny_rule_leaves_wildcard_subscriptions_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = "deny subscribe * test/nosubscribe\nallow all * #\n";
    let mut config = Config::default();
    config.auth.acl_file = Some(write(dir.path(), "acl", acl));
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let mut publisher = Raw::connect(addr, Protocol::V5, "pub").await;
    publisher
        .publish(
            "test/nosubscribe",
            b"retained-secret",
            QoS::AtLeastOnce,
            true,
            1,
        )
        .await;
    publisher
        .publish("test/open", b"retained-open", QoS::AtLeastOnce, true, 2)
        .await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut all = Raw::connect(addr, protocol, "dashboard").await;
        let ack = all.subscribe(1, "#", QoS::AtLeastOnce).await;
        assert_eq!(ack.reasons, vec![ReasonCode::GrantedQoS1], "{protocol:?}");
        // Retained messages: only the allowed one.
        let retained = all.expect_publish().await;
        assert_eq!(&retained.payload[..], b"retained-open");
        all.expect_silence().await;
        // Live messages: the denied topic is never delivered.
        publisher
            .publish("test/nosubscribe", b"secret", QoS::AtLeastOnce, false, 3)
            .await;
        publisher
            .publish("test/open", b"open", QoS::AtLeastOnce, false, 4)
            .await;
        assert_eq!(&all.expect_publish().await.payload[..], b"open");
        all.expect_silence().await;
        // The denied topic itself is refused: 0x80 in both versions.
        let refused = all.subscribe(2, "test/nosubscribe", QoS::AtLeastOnce).await;
        assert_eq!(
            refused.reasons,
            vec![ReasonCode::UnspecifiedError],
            "{protocol:?}"
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_session_belongs_to_the_user_that_created_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwords = format!("alice:{}\nbob:{}\n", hash("a-pass"), hash("b-pass"));
    let mut config = Config::default();
    config.auth.password_file = Some(write(dir.path(), "passwords", &passwords));
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let login = |user: &'static str, pass: &'static str| {
        move |c: &mut tidemq_proto::mqtt::Connect| {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(3600);
            c.username = Some(user.into());
            c.password = Some(Bytes::from_static(pass.as_bytes()));
        }
    };
    let (mut alice, ack) =
        Raw::connect_with(addr, Protocol::V5, "device-1", login("alice", "a-pass")).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    alice.subscribe(1, "alice/inbox", QoS::AtLeastOnce).await;
    // Bob knows the client id: he is refused, and alice stays connected.
    for protocol in [Protocol::V5, Protocol::V3_1_1] {
        let (_bob, ack) =
            Raw::connect_with(addr, protocol, "device-1", login("bob", "b-pass")).await;
        assert_eq!(ack.reason, ReasonCode::NotAuthorized, "{protocol:?}");
    }
    let mut publisher = Raw::connect(addr, Protocol::V5, "pub").await;
    publisher
        .publish("alice/inbox", b"for alice", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(&alice.expect_publish().await.payload[..], b"for alice");
    // Alice herself takes her session over as before.
    let (_again, ack) =
        Raw::connect_with(addr, Protocol::V5, "device-1", login("alice", "a-pass")).await;
    assert!(ack.session_present);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_resumed_session_drops_what_the_acl_now_denies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.auth.acl_file = Some(write(dir.path(), "acl", "allow all * #\n"));
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let persistent = |c: &mut tidemq_proto::mqtt::Connect| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(3600);
    };
    let (mut sub, _) = Raw::connect_with(addr, Protocol::V5, "resumer", persistent).await;
    sub.subscribe(1, "news/#", QoS::AtLeastOnce).await;
    sub.subscribe(2, "secret/#", QoS::AtLeastOnce).await;
    drop(sub);
    // The rules change while the session is offline.
    let rules = "deny subscribe * secret/#\nallow all * #";
    let acl = tidemq_broker::AclRules::parse(rules, false).expect("rules");
    broker
        .shared()
        .auth
        .store(std::sync::Arc::new(tidemq_broker::AuthState {
            acl: Some(acl),
            ..Default::default()
        }));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (mut sub, ack) = Raw::connect_with(addr, Protocol::V5, "resumer", persistent).await;
    assert!(ack.session_present);
    let mut publisher = Raw::connect(addr, Protocol::V5, "pub").await;
    publisher
        .publish("secret/x", b"no", QoS::AtLeastOnce, false, 1)
        .await;
    publisher
        .publish("news/x", b"yes", QoS::AtLeastOnce, false, 2)
        .await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"yes");
    sub.expect_silence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn repeated_bad_passwords_slow_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = alice(dir.path(), "right");
    config.auth.failure_delay_ms = 400;
    let broker = common::start(config).await;
    let addr = broker.local_addr();
    let attempt = |password: &'static str| async move {
        let started = std::time::Instant::now();
        let (_c, ack) = log_in(addr, Protocol::V5, "guesser", "alice", password.as_bytes()).await;
        (ack.reason, started.elapsed())
    };
    let (reason, _) = attempt("wrong-1").await;
    assert_eq!(reason, ReasonCode::BadUserNameOrPassword);
    // The next attempt from this address, for this user, waits first: the
    // right password too.
    let (reason, took) = attempt("wrong-2").await;
    assert_eq!(reason, ReasonCode::BadUserNameOrPassword);
    assert!(
        took >= std::time::Duration::from_millis(400),
        "waited {took:?}"
    );
    let (reason, took) = attempt("right").await;
    assert_eq!(reason, ReasonCode::Success);
    assert!(
        took >= std::time::Duration::from_millis(800),
        "doubled: waited {took:?}"
    );
    // A success clears the record.
    let (_, took) = attempt("right").await;
    assert!(
        took < std::time::Duration::from_millis(400),
        "waited {took:?}"
    );
    broker.shutdown().await;
}

/// A login argon2 verified is remembered: the same user name and password
/// skip argon2 (`tidemq_logins_cached_total`), a wrong one is still
/// refused, and a reloaded password file forgets every remembered login.
#[tokio::test]
async fn a_verified_login_is_remembered_until_the_password_file_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = alice(dir.path(), "wonderland");
    let passwords = config.auth.password_file.clone().expect("a password file");
    config.auth.failure_delay_ms = 1;
    let (broker, registry) = common::start_registered(config).await;
    let addr = broker.local_addr();
    let login = |password: &'static [u8]| async move {
        log_in(addr, Protocol::V5, "alice-1", "alice", password)
            .await
            .1
            .reason
    };
    let cached = || common::sample(&registry, "tidemq_logins_cached_total", &[]);

    assert_eq!(login(b"wonderland").await, ReasonCode::Success);
    assert_eq!(cached(), 0.0, "the first login is verified with argon2");
    assert_eq!(login(b"wonderland").await, ReasonCode::Success);
    assert_eq!(cached(), 1.0, "the second one is remembered");
    assert_eq!(
        login(b"looking-glass").await,
        ReasonCode::BadUserNameOrPassword
    );
    assert_eq!(
        login(b"wonderland").await,
        ReasonCode::Success,
        "a failure forgets nothing"
    );
    assert_eq!(cached(), 2.0);

    std::fs::write(&passwords, format!("alice:{}\n", hash("looking-glass"))).expect("rewrite");
    assert!(broker.reload(), "reloaded");
    assert_eq!(
        login(b"wonderland").await,
        ReasonCode::BadUserNameOrPassword
    );
    assert_eq!(login(b"looking-glass").await, ReasonCode::Success);
    assert_eq!(
        cached(),
        2.0,
        "the reloaded file starts with no remembered login"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn remembering_logins_can_be_turned_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = alice(dir.path(), "wonderland");
    config.auth.verified_cache_secs = 0;
    let (broker, registry) = common::start_registered(config).await;
    for _ in 0..2 {
        let (_, ack) = log_in(
            broker.local_addr(),
            Protocol::V3_1_1,
            "alice-2",
            "alice",
            b"wonderland",
        )
        .await;
        assert_eq!(ack.reason, ReasonCode::Success);
    }
    assert_eq!(
        common::sample(&registry, "tidemq_logins_cached_total", &[]),
        0.0
    );
    broker.shutdown().await;
}
