//! The `tgingest` binary's command line, run as a user runs it: help, version, and
//! `--check-config` for every subcommand, including the one-line errors for bad settings.

mod common;

use std::process::Output;

use common::tgingest;

const SUBCOMMANDS: [&str; 7] = [
    "producer", "consumer", "migrate", "replay", "dlq", "status", "demo",
];

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const FULL_ENV: [(&str, &str); 3] = [
    (
        "DATABASE_URL",
        "postgres://ingest:pa55word@db.internal:5432/telegram",
    ),
    ("KAFKA_BROKERS", "kafka-0:9092,kafka-1:9092"),
    ("TELEGRAM_BOT_TOKENS", "123456:AAE-secretpart_xyz"),
];

#[test]
fn help_lists_every_subcommand() {
    let out = tgingest(&["--help"], &[]);
    assert!(out.status.success());
    let text = stdout(&out);
    for sub in SUBCOMMANDS {
        assert!(
            text.contains(&format!("  {sub}")),
            "--help lacks {sub}:\n{text}"
        );
    }
}

#[test]
fn version_prints_the_package_version() {
    let out = tgingest(&["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        format!("tgingest {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn every_subcommand_accepts_check_config_with_a_complete_configuration() {
    for sub in SUBCOMMANDS {
        let out = tgingest(&[sub, "--check-config"], &FULL_ENV);
        assert!(
            out.status.success(),
            "{sub} --check-config failed: {}",
            stderr(&out)
        );
        assert!(
            stdout(&out).contains("configuration OK"),
            "{sub}: {}",
            stdout(&out)
        );
    }
}

#[test]
fn a_missing_setting_exits_2_with_one_line_naming_it() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (
            "producer",
            &[
                ("KAFKA_BROKERS", "k:9092"),
                ("TELEGRAM_BOT_TOKENS", "1:a"),
                ("PRODUCER_MODE", "webhook"),
            ],
            "TELEGRAM_WEBHOOK_SECRET",
        ),
        ("consumer", &[("KAFKA_BROKERS", "k:9092")], "DATABASE_URL"),
        (
            "consumer",
            &[("DATABASE_URL", "postgres://u@h/db")],
            "KAFKA_BROKERS",
        ),
        (
            "producer",
            &[("KAFKA_BROKERS", "k:9092")],
            "TELEGRAM_BOT_TOKENS",
        ),
        (
            "producer",
            &[
                ("KAFKA_BROKERS", "k:9092"),
                ("TELEGRAM_BOT_TOKENS", "1:a"),
                ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ],
            "KAFKA_SASL_MECHANISM",
        ),
    ];
    for (sub, env, setting) in cases {
        let out = tgingest(&[sub, "--check-config"], env);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{sub} {setting}: {}",
            stderr(&out)
        );
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "not one line: {err}");
        assert!(
            err.starts_with(&format!("error: invalid configuration: {setting}: ")),
            "{err}"
        );
    }
}

#[test]
fn configuration_errors_never_echo_secrets() {
    let secrets_env = [
        ("DATABASE_URL", "mysql://ingest:pa55word@db/telegram"),
        ("KAFKA_BROKERS", "k:9092"),
        (
            "TELEGRAM_BOT_TOKENS",
            "123456:AAE-secretpart_xyz,bad token here",
        ),
    ];
    for sub in ["consumer", "producer", "migrate"] {
        let out = tgingest(&[sub, "--check-config"], &secrets_env);
        assert_eq!(out.status.code(), Some(2), "{sub}");
        let all = format!("{}{}", stdout(&out), stderr(&out));
        for secret in ["pa55word", "secretpart", "bad token"] {
            assert!(!all.contains(secret), "{sub} printed {secret:?}: {all}");
        }
    }
}

#[test]
fn secrets_are_read_from_files_named_by_the_file_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url_file = dir.path().join("database_url");
    std::fs::write(&url_file, "postgres://u:pw@h:5432/db\n").expect("write");
    let out = tgingest(
        &["migrate", "--check-config"],
        &[("DATABASE_URL_FILE", url_file.to_str().expect("utf-8 path"))],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let out = tgingest(
        &["migrate", "--check-config"],
        &[("DATABASE_URL_FILE", "/nonexistent/database_url")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("DATABASE_URL_FILE"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_kafka_client_option_is_caught_by_check_config() {
    let mut env = FULL_ENV.to_vec();
    env.push((
        "KAFKA_CLIENT_OPTIONS",
        "socket.keepalive.enable=true,bogus.option=1",
    ));
    let out = tgingest(&["consumer", "--check-config"], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bogus.option"), "{}", stderr(&out));
}

#[test]
fn client_options_cannot_turn_topic_auto_creation_back_on() {
    let mut env = FULL_ENV.to_vec();
    env.push(("KAFKA_CLIENT_OPTIONS", "allow.auto.create.topics=true"));
    for sub in ["producer", "consumer"] {
        let out = tgingest(&[sub, "--check-config"], &env);
        assert_eq!(out.status.code(), Some(2), "{sub}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("allow.auto.create.topics"),
            "{sub}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn an_http_webhook_url_is_accepted_for_a_self_hosted_bot_api_and_refused_for_the_cloud() {
    let webhook = [
        ("KAFKA_BROKERS", "k:9092"),
        ("TELEGRAM_BOT_TOKENS", "1:a"),
        ("PRODUCER_MODE", "webhook"),
        ("TELEGRAM_WEBHOOK_SECRET", "s3cret"),
        ("WEBHOOK_PUBLIC_URL", "http://ingest.internal:8443"),
    ];
    let mut self_hosted = webhook.to_vec();
    self_hosted.push(("TELEGRAM_API_URL", "http://bot-api.internal:8081"));
    let out = tgingest(&["producer", "--check-config"], &self_hosted);
    assert!(
        out.status.success(),
        "a self-hosted Bot API server delivers to http://: {}",
        stderr(&out)
    );

    let out = tgingest(&["producer", "--check-config"], &webhook);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error: invalid configuration: WEBHOOK_PUBLIC_URL: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_checks_the_producer_admin_urls_before_connecting() {
    let base = [
        ("DATABASE_URL", "postgres://u@h/db"),
        ("KAFKA_BROKERS", "k:9092"),
    ];
    let with = |urls: &'static str| {
        let mut env = base.to_vec();
        env.push(("STATUS_PRODUCER_ADMIN_URLS", urls));
        env
    };
    let out = tgingest(
        &["status", "--check-config", "--require-bots-ready"],
        &with("http://producer-0:9464, http://producer-1:9464"),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    for urls in [
        "http://producer-0:9464,producer-1:9464",
        "http://ops:pa55word@p:9464",
    ] {
        let out = tgingest(&["status", "--check-config"], &with(urls));
        assert_eq!(out.status.code(), Some(2), "{urls}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "not one line: {err}");
        assert!(
            err.starts_with("error: invalid configuration: STATUS_PRODUCER_ADMIN_URLS: "),
            "{err}"
        );
        assert!(!err.contains("pa55word"), "{err}");
    }

    let out = tgingest(&["status", "--check-config", "--require-bots-ready"], &base);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error: invalid configuration: --require-bots-ready: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_never_shows_the_value_of_an_environment_variable() {
    let marker = "s3cr3t-in-the-environment";
    let env = [
        (
            "KAFKA_CLIENT_OPTIONS",
            "sasl.oauthbearer.client.secret=s3cr3t-in-the-environment",
        ),
        ("KAFKA_SASL_USERNAME", marker),
        ("KAFKA_GROUP_ID", marker),
        ("DATABASE_SSL_MODE", marker),
        // Wide enough that no `[env: …]` is wrapped.
        ("COLUMNS", "1000"),
    ];
    let mut invocations: Vec<Vec<&str>> = vec![vec!["--help"]];
    invocations.extend(SUBCOMMANDS.iter().map(|sub| vec![*sub, "--help"]));
    invocations.extend(
        ["list", "show", "redrive", "purge"]
            .iter()
            .map(|action| vec!["dlq", *action, "--help"]),
    );
    for args in invocations {
        let out = tgingest(&args, &env);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(!text.contains(marker), "{args:?} shows a value:\n{text}");
        if args[0] != "--help" && args[0] != "migrate" {
            assert!(
                text.contains("[env: KAFKA_CLIENT_OPTIONS]"),
                "{args:?} no longer names the variable:\n{text}"
            );
        }
    }
}

#[test]
fn an_invalid_value_from_the_environment_is_one_line_naming_the_variable() {
    let cases: [(&[&str], (&str, &str), &str); 4] = [
        (
            &["consumer", "--check-config"],
            ("CONSUMER_BATCH_MAX_RECORDS", "many"),
            "invalid digit",
        ),
        (
            &["consumer", "--check-config"],
            ("CONSUMER_LINGER", "5 parsecs"),
            "unknown time unit",
        ),
        (
            &["migrate", "--check-config"],
            ("LOG_FORMAT", "xml"),
            "possible values: text, json",
        ),
        (
            &["dlq", "list", "--check-config"],
            ("DATABASE_ACQUIRE_TIMEOUT", "soon"),
            "",
        ),
    ];
    for (args, (variable, value), why) in cases {
        let mut env = FULL_ENV.to_vec();
        env.push((variable, value));
        let out = tgingest(args, &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{variable}: {err}");
        assert_eq!(err.lines().count(), 1, "not one line: {err}");
        assert!(
            err.starts_with(&format!("error: invalid configuration: {variable}: ")),
            "{err}"
        );
        assert!(err.contains(value) && err.contains(why), "{err}");
    }
    // The same value typed as a flag keeps clap's message, which names the flag.
    let out = tgingest(
        &["consumer", "--check-config", "--batch-max-records", "many"],
        &FULL_ENV,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--batch-max-records"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_comma_inside_a_client_option_value_is_escaped_with_a_backslash() {
    let mut env = FULL_ENV.to_vec();
    env.push(("KAFKA_CLIENT_OPTIONS", r"debug=cgrp\,fetch,client.rack=eu1"));
    for sub in ["producer", "consumer", "status"] {
        let out = tgingest(&[sub, "--check-config"], &env);
        assert!(out.status.success(), "{sub}: {}", stderr(&out));
    }
}

#[test]
fn subcommand_options_are_accepted_after_a_nested_subcommand() {
    for args in [
        &["dlq", "list", "--check-config"][..],
        &["dlq", "--check-config", "list"],
        &["dlq", "redrive", "--all", "--check-config"],
        &["dlq", "list", "--kafka-brokers", "k:9092", "--check-config"],
        &["dlq", "show", "7", "--log-format", "json", "--check-config"],
    ] {
        let out = tgingest(args, &FULL_ENV);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).contains("configuration OK"), "{args:?}");
    }
}
