//! `baton-relay credential` and `--auth-secret`, run as the real binary.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use baton_protocol::credential::{self, Scope};
use baton_protocol::JoinCode;

const SECRET: &str = "a-test-secret-that-is-32-bytes!!";

fn relay() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton-relay"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("BATON_")) {
        command.env_remove(key);
    }
    command
}

#[test]
fn the_subcommand_prints_a_credential_the_relay_verifies() {
    let out = relay()
        .args([
            "credential",
            "--subject",
            "alice",
            "--scope",
            "code:bcdf78",
            "--ttl",
            "2m",
        ])
        .env("BATON_CREDENTIAL_SECRET", SECRET)
        .output()
        .expect("run baton-relay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = credential::verify(text.trim(), &[SECRET], now).expect("verifies");
    assert_eq!(claims.subject, "alice");
    assert_eq!(
        claims.scope,
        Scope::JoinCode(JoinCode::parse("BCDF78").unwrap())
    );
    assert!(
        (now + 110..=now + 121).contains(&claims.expires),
        "{}",
        claims.expires
    );
    // Two minutes and a skew later, it is refused.
    assert!(credential::verify(text.trim(), &[SECRET], now + 300).is_err());
}

#[test]
fn bad_credential_arguments_and_short_secrets_are_refused_clearly() {
    let out = relay()
        .args(["credential", "--subject", "alice", "--scope", "everything"])
        .env("BATON_CREDENTIAL_SECRET", SECRET)
        .output()
        .expect("run baton-relay");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--scope"));

    // The relay refuses to start with a secret shorter than 32 bytes, naming the setting.
    let out = relay()
        .args([
            "--auth-secret",
            "too-short",
            "--listen",
            "127.0.0.1:0",
            "--no-admin",
        ])
        .output()
        .expect("run baton-relay");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth_secrets") && stderr.contains("32"),
        "{stderr}"
    );
}
