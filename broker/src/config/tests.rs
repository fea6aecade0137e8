use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_loopback_and_anonymous() {
    let c = Config::load(None, env(&[])).unwrap();
    assert_eq!(c.listener.bind, SocketAddr::from(([127, 0, 0, 1], 1883)));
    assert!(c.listener.allow_anonymous);
    assert_eq!(c.listener.backlog, 4096, "room for a burst of handshakes");
    c.check_exposure().unwrap();
}

#[test]
fn file_then_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "[mqtt]\nmax_packet_size = 4096\n[listener]\nbind = \"127.0.0.1:1999\"\n",
    )
    .unwrap();
    let c = Config::load(
        Some(&path),
        env(&[
            ("TIDEMQ_MQTT__MAX_PACKET_SIZE", "8192"),
            ("TIDEMQ_LISTENER__BACKLOG", "512"),
            ("OTHER", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.mqtt.max_packet_size, 8192);
    assert_eq!(c.listener.backlog, 512);
    assert_eq!(c.listener.bind.port(), 1999);
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    let err = Config::load(None, env(&[("TIDEMQ_MQTT__NO_SUCH_KEY", "1")])).unwrap_err();
    assert!(
        err.to_string().contains("TIDEMQ_MQTT__NO_SUCH_KEY"),
        "{err}"
    );
    let err = Config::load(None, env(&[("TIDEMQ_MQTT__MAX_PACKET_SIZE", "big")])).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid { .. }));
}

#[test]
fn storage_sync_policies() {
    use tidemq_storage_engine::SyncPolicy;
    let sync = |value: &str| {
        Config::load(None, env(&[("TIDEMQ_STORAGE__SYNC", value)])).map(|c| c.storage.sync_policy())
    };
    assert!(matches!(sync("always"), Ok(Ok(SyncPolicy::Always))));
    assert!(matches!(sync("never"), Ok(Ok(SyncPolicy::Never))));
    assert!(
        matches!(sync("100"), Ok(Ok(SyncPolicy::Interval(d))) if d == Duration::from_millis(100))
    );
    for bad in ["sometimes", "0", "-5", "\"100\""] {
        assert!(
            matches!(sync(bad), Err(ConfigError::Invalid { .. })),
            "{bad} is refused"
        );
    }
    let err = Config::load(None, env(&[("TIDEMQ_STORAGE__PARTITIONS", "0")])).unwrap_err();
    assert!(err.to_string().contains("storage.partitions"), "{err}");
}

#[test]
fn example_file_lists_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tidemq.toml");
    let c = Config::load(Some(&path), env(&[])).unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn node_sections_from_environment() {
    let c = Config::load(
        None,
        env(&[
            ("TIDEMQ_DATA_DIR", "/tmp/tidemq-x"),
            ("TIDEMQ_META__GRPC_ADDR", "127.0.0.1:1229"),
            (
                "TIDEMQ_META__PEERS",
                r#"["1=127.0.0.1:1229", "2=127.0.0.1:1230"]"#,
            ),
            ("TIDEMQ_META__ELECTION_TIMEOUT_MS", "[300, 600]"),
            ("TIDEMQ_HTTP__BIND", "127.0.0.1:0"),
            ("TIDEMQ_RUNTIME__BROKER_WORKERS", "4"),
        ]),
    )
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/tmp/tidemq-x"));
    assert_eq!(c.http.bind.port(), 0);
    assert_eq!(c.runtime.broker_workers, 4);
    assert_eq!(c.runtime.busy_lanes(), 2, "half the workers by default");
    let meta = c.meta.to_meta_config(&c.data_dir.join("meta")).unwrap();
    assert_eq!(meta.grpc_addr.port(), 1229);
    assert_eq!(meta.initial_members[1], (2, "127.0.0.1:1230".to_string()));
    assert_eq!(meta.election_timeout.1, Duration::from_millis(600));
    assert_eq!(meta.data_dir, PathBuf::from("/tmp/tidemq-x/meta"));
}

#[test]
fn bad_meta_sections_are_errors() {
    for (key, value) in [
        ("TIDEMQ_META__NODE_ID", "0"),
        ("TIDEMQ_META__PEERS", r#"["2=127.0.0.1:1230"]"#),
        ("TIDEMQ_META__PEERS", r#"["one=127.0.0.1:1230"]"#),
        ("TIDEMQ_META__ELECTION_TIMEOUT_MS", "[2000, 1000]"),
        ("TIDEMQ_META__ELECTION_TIMEOUT_MS", "[50, 1000]"),
        ("TIDEMQ_RUNTIME__META_RAFT_WORKERS", "0"),
    ] {
        let err = Config::load(None, env(&[(key, value)])).unwrap_err();
        assert!(
            err.to_string().contains("meta") || err.to_string().contains("runtime"),
            "{key}: {err}"
        );
    }
}

#[test]
fn anonymous_public_listener_is_refused() {
    let c = Config::load(None, env(&[("TIDEMQ_LISTENER__BIND", "0.0.0.0:1883")])).unwrap();
    assert!(c.check_exposure().is_err());
    let c = Config::load(
        None,
        env(&[
            ("TIDEMQ_LISTENER__BIND", "0.0.0.0:1883"),
            ("TIDEMQ_LISTENER__ALLOW_ANONYMOUS_ON_PUBLIC_ADDRESS", "true"),
        ]),
    )
    .unwrap();
    c.check_exposure().unwrap();
}

#[test]
fn unauthenticated_public_meta_and_http_are_refused() {
    for (bind, allow) in [
        (
            "TIDEMQ_META__GRPC_ADDR",
            "TIDEMQ_META__ALLOW_UNAUTHENTICATED_ON_PUBLIC_ADDRESS",
        ),
        (
            "TIDEMQ_HTTP__BIND",
            "TIDEMQ_HTTP__ALLOW_UNAUTHENTICATED_ON_PUBLIC_ADDRESS",
        ),
    ] {
        let c = Config::load(None, env(&[(bind, "0.0.0.0:1234")])).unwrap();
        let refused = c.check_exposure().expect_err(bind);
        assert!(refused.to_string().contains("0.0.0.0:1234"), "{refused}");
        let c = Config::load(None, env(&[(bind, "0.0.0.0:1234"), (allow, "true")])).unwrap();
        c.check_exposure().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
    let path = file.to_string_lossy().to_string();
    let c = Config::load(
        None,
        env(&[
            ("TIDEMQ_META__GRPC_ADDR", "0.0.0.0:1234"),
            ("TIDEMQ_META__CLUSTER_SECRET_FILE", &path),
            ("TIDEMQ_HTTP__BIND", "0.0.0.0:9999"),
            ("TIDEMQ_HTTP__TOKEN_FILE", &path),
        ]),
    )
    .unwrap();
    c.check_exposure().unwrap();
    assert!(c.meta.secret().unwrap().is_some());
    assert_eq!(
        c.http.token().unwrap().as_deref(),
        Some("0123456789abcdef0123")
    );
    // A secret too short to be one is an error, not a silent fallback.
    std::fs::write(&file, "short").unwrap();
    assert!(c.meta.secret().is_err());
    assert!(c.http.token().is_err());
}

#[test]
fn busy_lanes_default_to_half_the_workers_and_zero_turns_them_off() {
    let mut runtime = RuntimeConfig::default();
    assert_eq!(runtime.busy_lanes(), 1);
    runtime.broker_workers = 1;
    assert_eq!(runtime.busy_lanes(), 1, "at least one");
    runtime.busy_lanes = Some(0);
    assert_eq!(runtime.busy_lanes(), 0);
}

fn from_toml(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidemq.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), env(&[]))
}

#[test]
fn listeners_tables_add_listeners_of_every_kind() {
    let c = from_toml(
        r#"
[listener]
bind = "127.0.0.1:1883"
[[listeners]]
kind = "tls"
bind = "127.0.0.1:8883"
cert_file = "server.crt"
key_file = "server.key"
ca_file = "ca.crt"
require_certificate = true
username_from_certificate = "san"
tenant = "devices"
[[listeners]]
kind = "wss"
name = "browsers"
bind = "127.0.0.1:8443"
cert_file = "server.crt"
key_file = "server.key"
allowed_origins = ["https://app.example"]
[[listeners]]
kind = "ws"
bind = "127.0.0.1:8080"
path = "/ws"
"#,
    )
    .unwrap();
    let kinds: Vec<ListenerKind> = c.all_listeners().map(|l| l.kind).collect();
    use ListenerKind::*;
    assert_eq!(kinds, [Tcp, Tls, Wss, Ws]);
    assert_eq!(
        c.listeners[0].username_from_certificate,
        CertificateIdentity::San
    );
    assert_eq!(c.listeners[0].tenant, "devices");
    assert_eq!(c.listeners[0].label(), "tls:8883");
    assert_eq!(c.listeners[1].label(), "browsers");
    assert_eq!(c.listeners[2].path, "/ws");
}

#[test]
fn listeners_that_cannot_work_are_refused() {
    for (what, text) in [
        ("cert_file", "kind = \"tls\"\nbind = \"127.0.0.1:8883\"\n"),
        (
            "ca_file",
            "kind = \"tls\"\nbind = \"127.0.0.1:8883\"\ncert_file = \"c\"\nkey_file = \"k\"\nrequire_certificate = true\n",
        ),
        (
            "kind tls or wss",
            "bind = \"127.0.0.1:1884\"\ncert_file = \"c\"\n",
        ),
        (
            "path",
            "kind = \"ws\"\nbind = \"127.0.0.1:8080\"\npath = \"mqtt\"\n",
        ),
        ("tenant", "bind = \"127.0.0.1:1884\"\ntenant = \"a/b\"\n"),
        ("same address", "bind = \"127.0.0.1:1883\"\n"),
    ] {
        let err = from_toml(&format!("[[listeners]]\n{text}")).unwrap_err();
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
    assert!(from_toml("[[listeners]]\nkind = \"quic\"\n").is_err());
}

#[test]
fn a_public_listener_requiring_certificates_is_not_anonymous() {
    let public = "[[listeners]]\nkind = \"tls\"\nbind = \"0.0.0.0:8883\"\ncert_file = \"c\"\nkey_file = \"k\"\n";
    let err = from_toml(public).unwrap().check_exposure().unwrap_err();
    assert!(err.to_string().contains("0.0.0.0:8883"), "{err}");
    let certified = format!("{public}ca_file = \"ca\"\nrequire_certificate = true\n");
    from_toml(&certified).unwrap().check_exposure().unwrap();
}
