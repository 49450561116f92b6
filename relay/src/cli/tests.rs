//! Tests of the command line, the config file and their merge; and structural checks of the
//! settings table against `--help`, README's configuration table and
//! `deploy/config.example.toml`.

use std::path::Path;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{CommandFactory, Parser};
use tracing::level_filters::LevelFilter;

use super::*;
use crate::config::{TlsSource, MAX_WEBHOOKS, MIN_WEBHOOK_SECRET};

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("baton-relay").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn file(text: &str) -> FileConfig {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
}

fn setting_of(err: CliError) -> &'static str {
    match err {
        CliError::Invalid(e) => e.setting,
        other => panic!("expected an invalid setting, got {other}"),
    }
}

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn every_flag_has_an_environment_variable() {
    for arg in Cli::command().get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let env = arg
            .get_env()
            .unwrap_or_else(|| panic!("--{id} has no env var"));
        assert!(env.to_string_lossy().starts_with("BATON_"), "{id}");
    }
}

#[test]
fn help_shows_every_setting_with_its_env_default_and_range() {
    // No wrapping, so a "[default: ..]" is never split over two lines.
    let help = Cli::command().term_width(0).render_long_help().to_string();
    let table = table();
    for s in &table {
        for expected in [
            format!("--{}", s.flag),
            format!("[env: {}", s.env),
            s.help(),
        ] {
            assert!(help.contains(&expected), "help lacks {expected:?}:\n{help}");
        }
        if let Some(default) = &s.default {
            assert!(
                s.help().ends_with(&format!("[default: {default}]")),
                "{}",
                s.key
            );
        }
        if let Some(range) = &s.range {
            assert!(s.help().contains(&format!("[range: {range}]")), "{}", s.key);
        }
    }
    // One argument per table entry, and the other way round.
    let ids: Vec<_> = Cli::command()
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .filter(|id| id != "help" && id != "version")
        .collect();
    let keys: Vec<_> = table.iter().map(|s| s.key.to_owned()).collect();
    assert_eq!(ids, keys);
    // Limits in the hand-written help text match the code.
    let find = |key: &str| table.iter().find(|s| s.key == key).unwrap().help();
    assert!(find("webhooks").contains(&format!("at most {MAX_WEBHOOKS})")));
    assert!(find("webhook_secret").contains(&format!("at least {MIN_WEBHOOK_SECRET} characters")));
    assert!(matches!(
        RelayConfig::default().tls,
        TlsSource::SelfSigned { ref data_dir, .. } if data_dir == Path::new(DEFAULT_DATA_DIR)
    ));
}

#[test]
fn every_shown_default_is_the_real_default() {
    // Giving each setting its shown default changes nothing: the text parses, and the value is
    // the one the library uses when the setting is absent.
    let base = format!("{:?}", resolve(&cli(&[]), FileConfig::default()).unwrap());
    let command = Cli::command();
    for s in table() {
        let Some(default) = &s.default else { continue };
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == s.key)
            .unwrap();
        if !arg.get_action().takes_values() {
            assert_eq!(default, "false", "--{} is a switch", s.flag);
            continue;
        }
        let flag = format!("--{}", s.flag);
        let got = resolve(&cli(&[&flag, default]), FileConfig::default())
            .unwrap_or_else(|e| panic!("{flag} {default}: {e}"));
        assert_eq!(format!("{got:?}"), base, "{flag} {default}");
    }
}

#[test]
fn every_default_is_inside_its_range() {
    for s in table() {
        let (Some(default), Some(range)) = (&s.default, &s.range) else {
            continue;
        };
        // Out-of-range values are refused with the range in the message; the default is not.
        let flag = format!("--{}", s.flag);
        assert!(
            resolve(&cli(&[&flag, default]), FileConfig::default()).is_ok(),
            "{flag} {default} outside {range}"
        );
    }
}

#[test]
fn every_file_key_is_a_config_file_key() {
    for s in table() {
        // A value of the wrong type for every key: a known key says so, an unknown one does not.
        let err = toml::from_str::<FileConfig>(&format!("{} = {{}}", s.key))
            .unwrap_err()
            .to_string();
        assert_eq!(
            !err.contains("unknown field"),
            s.in_file,
            "{}: {err}",
            s.key
        );
    }
}

#[test]
fn flags_and_env_vars_follow_the_key() {
    for s in table() {
        assert!(s.env.starts_with("BATON_"), "{}", s.env);
        if !["webhooks", "dev_cert_names", "auth_secrets"].contains(&s.key) {
            assert_eq!(s.flag, s.key.replace('_', "-"));
            assert_eq!(s.env, format!("BATON_{}", s.key.to_ascii_uppercase()));
        }
    }
}

#[test]
fn no_flags_give_the_library_defaults() {
    let s = resolve(&cli(&[]), FileConfig::default()).unwrap();
    let d = RelayConfig::default();
    assert_eq!(s.relay.listen, d.listen);
    assert_eq!(s.relay.admin_listen, d.admin_listen);
    assert_eq!(s.relay.tls, d.tls);
    assert_eq!(s.relay.admin_token, None);
    assert_eq!(s.relay.keepalive_timeout(), d.keepalive_timeout());
    assert_eq!(s.log_format, LogFormat::Text);
    assert_eq!(s.log_level, LevelFilter::INFO);
}

#[test]
fn parses_a_full_config_file() {
    let f = file(
        r#"
        listen = "0.0.0.0:9000"
        admin_listen = "127.0.0.1:9001"
        admin_token = "t0ken"
        data_dir = "/var/lib/baton"
        dev_cert_names = ["relay.example", "10.0.0.5"]
        keepalive_timeout = "5s"
        bind_timeout = "1500ms"
        host_bind_timeout = "2m"
        max_peers_per_allocation = 16
        max_allocations = 100
        max_connections = 200
        max_control_frame = 16384
        max_datagram_payload = 1000
        join_code_len = 8
        join_code_ttl = "1h"
        migration_timeout = "750ms"
        lobby_election_window = "2s"
        max_snapshot = 4096
        snapshot_budget = 8192
        udp_buffer = 1048576
        endpoints = 2
        log_format = "json"
        log_level = "debug"
        "#,
    );
    let s = resolve(&cli(&[]), f).unwrap();
    let r = &s.relay;
    assert_eq!(r.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(r.admin_listen, Some("127.0.0.1:9001".parse().unwrap()));
    assert_eq!(r.admin_token.as_deref(), Some("t0ken"));
    assert_eq!(
        r.tls,
        TlsSource::SelfSigned {
            data_dir: "/var/lib/baton".into(),
            extra_names: vec!["relay.example".into(), "10.0.0.5".into()],
        }
    );
    assert_eq!(r.keepalive_timeout(), Duration::from_secs(5));
    assert_eq!(r.bind_timeout(), Duration::from_millis(1500));
    assert_eq!(r.host_bind_timeout(), Duration::from_secs(120));
    assert_eq!(r.max_peers_per_allocation(), 16);
    assert_eq!(r.max_allocations(), 100);
    assert_eq!(r.max_connections(), 200);
    assert_eq!(r.max_control_frame(), 16384);
    assert_eq!(r.max_datagram_payload(), 1000);
    assert_eq!(r.join_code_len(), 8);
    assert_eq!(r.join_code_ttl(), Duration::from_secs(3600));
    assert_eq!(r.migration_timeout(), Duration::from_millis(750));
    assert_eq!(r.lobby_election_window(), Duration::from_secs(2));
    assert_eq!(r.udp_buffer(), 1 << 20);
    assert_eq!(r.endpoints(), 2);
    assert_eq!((r.max_snapshot(), r.snapshot_budget()), (4096, 8192));
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.log_level, LevelFilter::DEBUG);
}

#[test]
fn example_config_in_deploy_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.example.toml");
    let f = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    resolve(&cli(&[]), f).unwrap();
}

#[test]
fn unknown_and_mistyped_keys_are_rejected() {
    let err = toml::from_str::<FileConfig>("keepalive = \"10s\"").unwrap_err();
    assert!(
        err.to_string().contains("unknown field `keepalive`"),
        "{err}"
    );
    let err = toml::from_str::<FileConfig>("keepalive_timeout = 10").unwrap_err();
    assert!(err.to_string().contains("keepalive_timeout"), "{err}");
    let err = toml::from_str::<FileConfig>("keepalive_timeout = \"10\"").unwrap_err();
    assert!(err.to_string().contains("no unit"), "{err}");
    let err = toml::from_str::<FileConfig>("log_format = \"xml\"").unwrap_err();
    assert!(err.to_string().contains("log_format"), "{err}");
}

#[test]
fn config_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = settings(&cli(&["--config", missing.to_str().unwrap()])).unwrap_err();
    assert!(matches!(err, CliError::Read { .. }), "{err}");
    assert!(err.to_string().contains("nope.toml"), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"0.0.0.0:1\"\nbogus = 1\n").unwrap();
    let err = settings(&cli(&["--config", bad.to_str().unwrap()])).unwrap_err();
    assert!(matches!(err, CliError::Parse { .. }), "{err}");
    assert!(
        err.to_string().contains("bad.toml") && err.to_string().contains("bogus"),
        "{err}"
    );
}

#[test]
fn file_paths_are_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, "cert = \"tls/cert.pem\"\nkey = \"/abs/key.pem\"\n").unwrap();
    let s = settings(&cli(&["--config", path.to_str().unwrap()])).unwrap();
    assert_eq!(
        s.relay.tls,
        TlsSource::Pem {
            cert: dir.path().join("tls/cert.pem"),
            key: "/abs/key.pem".into(),
        }
    );
}

#[test]
fn command_line_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        "listen = \"0.0.0.0:9000\"\nkeepalive_timeout = \"5s\"\nmax_allocations = 7\n\
         no_admin = true\ndev_cert_names = [\"a.example\"]\nlog_level = \"warn\"\n",
    )
    .unwrap();
    let s = settings(&cli(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:9100",
        "--keepalive-timeout",
        "2s",
        "--admin-listen",
        "127.0.0.1:9101",
        "--dev-cert-name",
        "b.example",
        "--dev-cert-name",
        "c.example",
        "--log-level",
        "TRACE",
    ]))
    .unwrap();
    assert_eq!(s.relay.listen, "127.0.0.1:9100".parse().unwrap());
    assert_eq!(s.relay.keepalive_timeout(), Duration::from_secs(2));
    // Not on the command line: the file's value stands.
    assert_eq!(s.relay.max_allocations(), 7);
    assert_eq!(
        s.relay.admin_listen,
        Some("127.0.0.1:9101".parse().unwrap())
    );
    assert!(matches!(
        &s.relay.tls,
        TlsSource::SelfSigned { extra_names, .. } if extra_names == &["b.example", "c.example"]
    ));
    assert_eq!(s.log_level, LevelFilter::TRACE);

    let f = file("admin_listen = \"127.0.0.1:9001\"");
    assert_eq!(
        resolve(&cli(&["--no-admin"]), f)
            .unwrap()
            .relay
            .admin_listen,
        None
    );
    // --no-admin also wins over an address from the command line or the environment.
    let c = cli(&["--admin-listen", "127.0.0.1:9001", "--no-admin"]);
    assert_eq!(
        resolve(&c, FileConfig::default())
            .unwrap()
            .relay
            .admin_listen,
        None
    );
}

#[test]
fn invalid_values_name_the_setting() {
    let cases: &[(&[&str], &str)] = &[
        (&["--keepalive-timeout", "10ms"], "keepalive_timeout"),
        (&["--bind-timeout", "11m"], "bind_timeout"),
        (&["--host-bind-timeout", "2h"], "host_bind_timeout"),
        (&["--migration-timeout", "1h"], "migration_timeout"),
        (&["--lobby-election-window", "2m"], "lobby_election_window"),
        (&["--max-snapshot", "10"], "max_snapshot"),
        (&["--udp-buffer", "10"], "udp_buffer"),
        (&["--endpoints", "0"], "endpoints"),
        (&["--snapshot-budget", "10"], "snapshot_budget"),
        (
            &["--max-peers-per-allocation", "1"],
            "max_peers_per_allocation",
        ),
        (&["--max-allocations", "0"], "max_allocations"),
        (&["--max-connections", "0"], "max_connections"),
        (&["--max-control-frame", "100"], "max_control_frame"),
        (&["--max-datagram-payload", "1151"], "max_datagram_payload"),
        (&["--join-code-len", "3"], "join_code_len"),
        (&["--join-code-ttl", "31d"], "join_code_ttl"),
        (&["--cert", "c.pem"], "key"),
        (&["--key", "k.pem"], "cert"),
        (
            &["--cert", "c.pem", "--key", "k.pem", "--dev-cert-name", "x"],
            "dev_cert_names",
        ),
        (&["--admin-token", " "], "admin_token"),
        (&["--admin-token", "t", "--no-admin"], "admin_token"),
        (&["--node-id", "a"], "node_id"),
        (&["--region", "eu"], "region"),
        (&["--admin-advertise", "relay-1:7701"], "admin_advertise"),
        (&["--directory", "http://x"], "directory"),
        (
            &["--directory", "redis://r", "--fleet-secret", FLEET_SECRET],
            "node_id",
        ),
        (
            &[
                "--directory",
                "redis://r",
                "--node-id",
                "a b",
                "--fleet-secret",
                FLEET_SECRET,
            ],
            "node_id",
        ),
        // The default listen address is a wildcard: clients could not be sent to it.
        (
            &[
                "--directory",
                "redis://r",
                "--node-id",
                "a",
                "--fleet-secret",
                FLEET_SECRET,
            ],
            "public_addr",
        ),
        (
            &[
                "--directory",
                "redis://r",
                "--node-id",
                "a",
                "--public-addr",
                "1.2.3.4:7700",
            ],
            "fleet_secret",
        ),
        (
            &[
                "--directory",
                "redis://r",
                "--node-id",
                "a",
                "--public-addr",
                "1.2.3.4:7700",
                "--fleet-secret",
                "short",
            ],
            "fleet_secret",
        ),
        (
            &[
                "--directory",
                "redis://r",
                "--node-id",
                "a",
                "--public-addr",
                "1.2.3.4:7700",
                "--fleet-secret",
                FLEET_SECRET,
                "--server-name",
                "bad name",
            ],
            "server_name",
        ),
        (
            &[
                "--directory",
                "redis://r",
                "--node-id",
                "a",
                "--public-addr",
                "1.2.3.4:7700",
                "--fleet-secret",
                FLEET_SECRET,
                "--region",
                "eu west",
            ],
            "region",
        ),
        (
            &[
                "--directory",
                "redis://r",
                "--node-id",
                "a",
                "--public-addr",
                "1.2.3.4:7700",
                "--fleet-secret",
                FLEET_SECRET,
                "--admin-advertise",
                "relay-1",
            ],
            "admin_advertise",
        ),
        (
            &[
                "--directory",
                "redis://r",
                "--node-id",
                "a",
                "--public-addr",
                "1.2.3.4:7700",
                "--fleet-secret",
                FLEET_SECRET,
                "--no-admin",
                "--admin-advertise",
                "relay-1:7701",
            ],
            "admin_advertise",
        ),
    ];
    for (args, setting) in cases {
        let err = resolve(&cli(args), FileConfig::default()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(setting), "{args:?}: {message}");
        assert_eq!(setting_of(err), *setting, "{args:?}");
    }
    let err = resolve(&cli(&[]), file("log_level = \"loud\"")).unwrap_err();
    assert_eq!(setting_of(err), "log_level");
    let err = resolve(
        &cli(&[]),
        file("no_admin = true\nadmin_listen = \"127.0.0.1:1\""),
    )
    .unwrap_err();
    assert_eq!(setting_of(err), "no_admin");
    let err = resolve(&cli(&[]), file("max_datagram_payload = 5000")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid max_datagram_payload: must be between 1 and 1150"
    );
}

/// A fleet secret long enough.
const FLEET_SECRET: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn fleet_settings_make_a_fleet_node() {
    let s = resolve(
        &cli(&[
            "--directory",
            "redis://:pw@10.0.0.5:6379/2",
            "--node-id",
            "relay-1",
            "--listen",
            "10.0.0.7:7700",
            "--fleet-secret",
            FLEET_SECRET,
            "--region",
            "eu-west",
            "--admin-advertise",
            "relay-1.internal:7701",
        ]),
        FileConfig::default(),
    )
    .unwrap();
    assert_eq!(
        s.relay.admin_advertise.as_deref(),
        Some("relay-1.internal:7701")
    );
    let fleet = s.relay.fleet.expect("a fleet node");
    assert_eq!(fleet.node_id, "relay-1");
    assert_eq!(fleet.public_addr, "10.0.0.7:7700".parse().unwrap());
    assert_eq!(fleet.server_name, "localhost");
    assert_eq!(fleet.region, "eu-west");
    assert_eq!(fleet.directory, "redis://:pw@10.0.0.5:6379/2");
    // Its Debug (logs, panics) shows neither the URL's password nor the secret.
    let shown = format!("{fleet:?}");
    assert!(
        !shown.contains("pw") && !shown.contains(FLEET_SECRET),
        "{shown}"
    );
    assert!(resolve(&cli(&[]), FileConfig::default())
        .unwrap()
        .relay
        .fleet
        .is_none());
}

#[test]
fn command_line_syntax_errors_name_the_flag() {
    for args in [
        &["--listen", "nowhere"][..],
        &["--keepalive-timeout", "10"],
        &["--keepalive-timeout", "ten seconds"],
        &["--max-peers-per-allocation", "70000"],
        &["--log-format", "xml"],
        &["--log-level", "loud"],
    ] {
        let err = Cli::try_parse_from(std::iter::once("baton-relay").chain(args.iter().copied()))
            .unwrap_err()
            .to_string();
        let flag = args[0];
        assert!(
            err.contains(flag) || err.contains(args[args.len() - 2]),
            "{args:?}: {err}"
        );
    }
}

const SECRET: &str = "0123456789abcdef-secret";

#[test]
fn hook_settings_from_the_file() {
    let f = file(&format!(
        r#"
        webhooks = ["https://lobby.example/hooks/baton", "http://127.0.0.1:8080/h"]
        webhook_secret = "{SECRET}"
        hook_queue = 50
        webhook_backoff_initial = "250ms"
        webhook_backoff_max = "1m"
        webhook_timeout = "2s"
        event_replay = 77
        event_stream_token = "stream-t0ken"
        "#
    ));
    let s = resolve(&cli(&[]), f).unwrap();
    let h = &s.relay.hooks;
    let urls: Vec<_> = h.webhooks().iter().map(|u| u.as_str()).collect();
    assert_eq!(
        urls,
        [
            "https://lobby.example/hooks/baton",
            "http://127.0.0.1:8080/h"
        ]
    );
    assert_eq!(h.webhook_secret(), Some(SECRET));
    assert_eq!(h.queue(), 50);
    assert_eq!(h.backoff_initial(), Duration::from_millis(250));
    assert_eq!(h.backoff_max(), Duration::from_secs(60));
    assert_eq!(h.request_timeout(), Duration::from_secs(2));
    assert_eq!(h.replay(), 77);
    assert_eq!(h.stream_token(), Some("stream-t0ken"));
    // Secrets stay out of debug output.
    let debug = format!("{h:?}");
    assert!(
        !debug.contains(SECRET) && !debug.contains("stream-t0ken"),
        "{debug}"
    );
}

#[test]
fn hook_flags_override_the_file_and_default_sensibly() {
    let s = resolve(&cli(&[]), FileConfig::default()).unwrap();
    let d = crate::config::HooksConfig::default();
    assert_eq!(s.relay.hooks, d);
    assert!(d.webhooks().is_empty());
    assert_eq!(d.queue(), 10_000);
    assert_eq!(d.replay(), 10_000);
    assert_eq!(d.backoff_initial(), Duration::from_millis(100));
    assert_eq!(d.backoff_max(), Duration::from_secs(30));
    assert_eq!(d.request_timeout(), Duration::from_secs(5));
    assert_eq!(d.stream_token(), None);

    let f = file(&format!(
        "webhooks = [\"http://file.example/h\"]\nwebhook_secret = \"{SECRET}\"\n\
         hook_queue = 5\nevent_replay = 6\nwebhook_backoff_max = \"10s\"\n"
    ));
    // The environment form, BATON_WEBHOOKS=a,b, goes through the same delimiter.
    let c = cli(&[
        "--webhook",
        "http://127.0.0.1:9/a,https://lobby.example/b",
        "--webhook",
        "http://[::1]:9/c",
        "--hook-queue",
        "7",
        "--event-replay",
        "8",
        "--webhook-backoff-initial",
        "20ms",
        "--webhook-timeout",
        "300ms",
        "--event-stream-token",
        "s",
    ]);
    let s = resolve(&c, f).unwrap();
    let h = &s.relay.hooks;
    let urls: Vec<_> = h.webhooks().iter().map(|u| u.as_str()).collect();
    assert_eq!(
        urls,
        [
            "http://127.0.0.1:9/a",
            "https://lobby.example/b",
            "http://[::1]:9/c"
        ]
    );
    // The secret comes from the file, the rest from the command line.
    assert_eq!(h.webhook_secret(), Some(SECRET));
    assert_eq!(h.queue(), 7);
    assert_eq!(h.replay(), 8);
    assert_eq!(h.backoff_initial(), Duration::from_millis(20));
    assert_eq!(h.backoff_max(), Duration::from_secs(10));
    assert_eq!(h.request_timeout(), Duration::from_millis(300));
    assert_eq!(h.stream_token(), Some("s"));
}

#[test]
fn invalid_hook_settings_name_the_setting() {
    let secret = format!("--webhook-secret={SECRET}");
    let cases: &[(&[&str], &str)] = &[
        (&["--webhook", "http://127.0.0.1:9/h"], "webhook_secret"),
        (&[&secret], "webhook_secret"),
        (
            &[
                "--webhook",
                "http://127.0.0.1:9/h",
                "--webhook-secret",
                "short",
            ],
            "webhook_secret",
        ),
        (
            &[
                "--webhook",
                "http://a.example/h,http://a.example/h",
                &secret,
            ],
            "webhooks",
        ),
        (&["--hook-queue", "0"], "hook_queue"),
        (&["--event-replay", "0"], "event_replay"),
        (
            &["--webhook-backoff-initial", "1ms"],
            "webhook_backoff_initial",
        ),
        (&["--webhook-backoff-max", "50ms"], "webhook_backoff_max"),
        (&["--webhook-backoff-max", "2h"], "webhook_backoff_max"),
        (&["--webhook-timeout", "10m"], "webhook_timeout"),
        (&["--event-stream-token", " "], "event_stream_token"),
        (
            &["--event-stream-token", "t", "--no-admin"],
            "event_stream_token",
        ),
    ];
    for (args, setting) in cases {
        let err = resolve(&cli(args), FileConfig::default()).unwrap_err();
        assert_eq!(setting_of(err), *setting, "{args:?}");
    }
    let many: Vec<String> = (0..17).map(|i| format!("http://h{i}.example/")).collect();
    let err = resolve(
        &cli(&["--webhook", &many.join(","), &secret]),
        FileConfig::default(),
    )
    .unwrap_err();
    assert_eq!(setting_of(err), "webhooks");
    for bad in ["ftp://lobby.example/h", "not a url", "/relative"] {
        let f = file(&format!(
            "webhooks = [{bad:?}]\nwebhook_secret = \"{SECRET}\"\n"
        ));
        let err = resolve(&cli(&[]), f).unwrap_err();
        assert_eq!(setting_of(err), "webhooks", "{bad}");
    }
    // On the command line a bad URL is a syntax error naming the flag.
    let err = Cli::try_parse_from(["baton-relay", "--webhook", "ftp://x.example/"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--webhook"), "{err}");
    assert!(parse_webhook_url("https://lobby.example/h?token=x").is_ok());
}

#[test]
fn parses_durations() {
    let ok = [
        ("500ms", Duration::from_millis(500)),
        ("10s", Duration::from_secs(10)),
        ("2m", Duration::from_secs(120)),
        ("2min", Duration::from_secs(120)),
        ("1h", Duration::from_secs(3600)),
        ("1d", Duration::from_secs(86_400)),
        ("1m30s", Duration::from_secs(90)),
        (" 1h 30m ", Duration::from_secs(5400)),
        ("10 s", Duration::from_secs(10)),
        ("0s", Duration::ZERO),
    ];
    for (text, want) in ok {
        assert_eq!(parse_duration(text), Ok(want), "{text:?}");
    }
    for bad in [
        "",
        "10",
        "s",
        "1.5s",
        "10sec",
        "-1s",
        "5x",
        "99999999999999999999s",
        "1s5",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    assert!(parse_duration("10").unwrap_err().contains("no unit"));
    assert!(parse_duration("10sec").unwrap_err().contains("\"sec\""));
}

#[test]
fn boolean_flag_reads_common_spellings() {
    // The same parser reads BATON_NO_ADMIN; the command line form covers its syntax.
    let parser = BoolishValueParser::new();
    let cmd = Cli::command();
    for (text, want) in [
        ("1", true),
        ("true", true),
        ("yes", true),
        ("0", false),
        ("false", false),
        ("off", false),
    ] {
        let got = clap::builder::TypedValueParser::parse_ref(
            &parser,
            &cmd,
            None,
            std::ffi::OsStr::new(text),
        )
        .unwrap();
        assert_eq!(got, want, "{text}");
    }
    assert!(cli(&["--no-admin"]).no_admin);
}

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));

/// The row README's configuration table should have for `s` (its meaning column is free).
fn readme_cells(s: &Setting) -> [String; 3] {
    [
        format!("`--{}` / `{}`", s.flag, s.env),
        if s.in_file {
            format!("`{}`", s.key)
        } else {
            "—".to_owned()
        },
        s.default
            .as_ref()
            .map_or_else(|| "none".to_owned(), |d| format!("`{d}`")),
    ]
}

/// Every problem of README's configuration table against the settings table, one per line.
fn readme_problems(readme: &str) -> Vec<String> {
    let section = readme
        .split_once("\n## Configuration\n")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
        .expect("README.md has a \"## Configuration\" section");
    let first_line = readme.len() - readme.split_once("\n## Configuration\n").unwrap().1.len();
    let line_of = |row: &str| {
        let offset = first_line + section.find(row).unwrap_or(0);
        readme[..offset].lines().count() + 1
    };
    // Setting rows start with a flag; the header and separator do not.
    let rows: Vec<(&str, Vec<&str>)> = section
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| (l, l.trim_matches('|').split(" | ").map(str::trim).collect()))
        .collect();
    let table = table();
    let mut problems = Vec::new();
    for s in &table {
        let want = readme_cells(s);
        let flag = format!("`--{}` ", s.flag);
        let found: Vec<_> = rows
            .iter()
            .filter(|(_, c)| c[0].starts_with(&flag))
            .collect();
        match found.as_slice() {
            [] => problems.push(format!(
                "no row for --{}; add: | {} | {} | {} | <meaning> |",
                s.flag, want[0], want[1], want[2]
            )),
            [(row, cells)] => {
                for (i, column) in ["flag / env", "TOML key", "default"].iter().enumerate() {
                    if cells.get(i).copied() != Some(want[i].as_str()) {
                        problems.push(format!(
                            "README.md line {}: the {column} of --{} is {:?}, should be {:?}",
                            line_of(row),
                            s.flag,
                            cells.get(i).copied().unwrap_or(""),
                            want[i]
                        ));
                    }
                }
            }
            more => problems.push(format!(
                "--{} has {} rows (lines {:?}); keep one",
                s.flag,
                more.len(),
                more.iter().map(|(row, _)| line_of(row)).collect::<Vec<_>>()
            )),
        }
    }
    for (row, cells) in &rows {
        if !table
            .iter()
            .any(|s| cells[0].starts_with(&format!("`--{}` ", s.flag)))
        {
            problems.push(format!(
                "README.md line {}: {} is not a setting (see cli/table.rs)",
                line_of(row),
                cells[0]
            ));
        }
    }
    problems
}

#[test]
fn readme_configuration_table_matches_the_settings() {
    let problems = readme_problems(README);
    assert!(
        problems.is_empty(),
        "README.md's configuration table disagrees with relay/src/cli/table.rs:\n{}",
        problems.join("\n")
    );
}

#[test]
fn readme_check_catches_a_missing_a_wrong_and_an_extra_row() {
    let s = table().into_iter().find(|s| s.key == "udp_buffer").unwrap();
    let [flag_env, key, default] = readme_cells(&s);
    let row = format!("| {flag_env} | {key} | {default} |");
    let doc = |rows: &str| {
        format!("# Baton\n\n## Configuration\n\n| a | b | c |\n|---|---|---|\n{rows}\n## Next\n")
    };
    let problems = readme_problems(&doc(&row));
    assert!(
        !problems.iter().any(|p| p.contains("--udp-buffer")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("no row for --listen;")),
        "{problems:?}"
    );

    let wrong = row.replace("`8388608`", "`4096`");
    let problems = readme_problems(&doc(&wrong));
    assert!(
        problems.contains(
            &"README.md line 7: the default of --udp-buffer is \"`4096`\", should be \"`8388608`\""
                .to_owned()
        ),
        "{problems:?}"
    );

    let extra = format!("{row}\n| `--bogus` / `BATON_BOGUS` | `bogus` | none | x |");
    let problems = readme_problems(&doc(&extra));
    assert!(
        problems.contains(
            &"README.md line 8: `--bogus` / `BATON_BOGUS` is not a setting (see cli/table.rs)"
                .to_owned()
        ),
        "{problems:?}"
    );
}

#[test]
fn example_config_mentions_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    for s in table().iter().filter(|s| s.in_file) {
        let line = format!("{} = ", s.key);
        let value = text
            .lines()
            .find_map(|l| l.trim_start_matches("# ").strip_prefix(&line))
            .unwrap_or_else(|| panic!("{} has no `# {line}...` line", path.display()));
        // Settings with a default are shown with it.
        if let Some(default) = &s.default {
            assert_eq!(
                value.trim_matches('"'),
                default,
                "{}: {}",
                path.display(),
                s.key
            );
        }
    }
}

#[test]
fn secrets_never_show_their_environment_values_in_help() {
    let command = Cli::command();
    let secrets = [
        "admin_token",
        "webhook_secret",
        "event_stream_token",
        "auth_secrets",
        "directory",
        "fleet_secret",
    ];
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        assert_eq!(
            arg.is_hide_env_values_set(),
            secrets.contains(&id),
            "--{id}: hide_env_values"
        );
    }
}

#[test]
fn probe_listen_takes_auto_off_or_an_address() {
    use crate::config::ProbeListen;
    assert_eq!(
        settings(&cli(&[])).unwrap().relay.probe_listen(),
        ProbeListen::Auto
    );
    assert_eq!(
        settings(&cli(&["--probe-listen", "off"]))
            .unwrap()
            .relay
            .probe_listen(),
        ProbeListen::Off
    );
    let addr: std::net::SocketAddr = "192.0.2.1:9001".parse().unwrap();
    assert_eq!(
        settings(&cli(&["--probe-listen", "192.0.2.1:9001"]))
            .unwrap()
            .relay
            .probe_listen(),
        ProbeListen::Addr(addr)
    );
    assert_eq!(
        file("probe_listen = \"off\"\n").probe_listen,
        Some(ProbeListen::Off)
    );
    assert!(toml::from_str::<FileConfig>("probe_listen = \"sometimes\"\n").is_err());
    assert!(Cli::try_parse_from(["baton-relay", "--probe-listen", "9001"]).is_err());

    // auto: the next port on the listen address, 0 for 0; none after 65535.
    let on = |listen: &str| ProbeListen::Auto.resolve(listen.parse().unwrap());
    assert_eq!(
        on("0.0.0.0:7700").unwrap(),
        Some("0.0.0.0:7701".parse().unwrap())
    );
    assert_eq!(
        on("127.0.0.1:0").unwrap(),
        Some("127.0.0.1:0".parse().unwrap())
    );
    assert_eq!(on("127.0.0.1:65535").unwrap_err().setting, "probe_listen");
    assert_eq!(ProbeListen::Off.resolve(addr).unwrap(), None);
    assert_eq!(
        ProbeListen::Addr(addr).to_string().parse(),
        Ok(ProbeListen::Addr(addr))
    );
}
