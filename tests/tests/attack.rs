//! Runs `baton-attack --quick` against a relay process and asserts every attack whose defence
//! exists today (all but `baton_tests::attack_known::KNOWN_FAILING`) held the games' bounds.
//!
//! The relay binary is the one beside `baton-attack` (`cargo test --workspace` builds it there);
//! run alone, the test builds it first with the cargo that runs the test.

use std::path::PathBuf;
use std::process::Command;

use baton_tests::attack_known::KNOWN_FAILING;

/// `baton-relay` beside `baton-attack`, built if it is not there yet.
fn relay_bin() -> PathBuf {
    let attack = PathBuf::from(env!("CARGO_BIN_EXE_baton-attack"));
    let bin = attack.with_file_name(format!("baton-relay{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        let profile_dir = attack.parent().expect("target profile directory");
        let mut build = Command::new(env!("CARGO"));
        build.args([
            "build",
            "--locked",
            "-p",
            "baton-relay",
            "--bin",
            "baton-relay",
        ]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "building baton-relay failed");
    }
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

#[test]
fn attacks_with_defences_hold_the_games_bounds() {
    let relay = relay_bin();
    let out = Command::new(env!("CARGO_BIN_EXE_baton-attack"))
        .arg("--quick")
        // A test build is unoptimised: its latency says nothing about the relay's. The full
        // run (`baton-attack` without --quick, README) measures the p99 bound.
        .arg("--no-latency-bound")
        .arg("--relay-bin")
        .arg(&relay)
        .output()
        .expect("running baton-attack");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    let failed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FAILED: "))
        .unwrap_or_else(|| panic!("no FAILED line (exit {:?}): {stderr}", out.status));
    let unexpected: Vec<&str> = failed
        .split(" | ")
        .filter(|name| *name != "none")
        .filter(|name| !KNOWN_FAILING.iter().any(|(known, _)| known == name))
        .collect();
    assert!(
        unexpected.is_empty(),
        "attacks that broke a bound: {unexpected:?}"
    );
    // The exit code is honest: non-zero exactly when an attack not known to fail failed.
    assert_eq!(
        out.status.success(),
        unexpected.is_empty(),
        "exit {:?}",
        out.status
    );
}
