//! Crash test: a peer in a separate OS process is killed with SIGKILL (no QUIC close, no
//! goodbye); the host is told within the keepalive timeout.

use std::process::Stdio;
use std::time::{Duration, Instant};

use baton_client::{Event, LeaveReason, PeerId};
use baton_tests::{event_matching, recv, TestRelay, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn a_killed_peer_process_is_reported_within_the_keepalive_timeout() {
    let keepalive = Duration::from_millis(1500);
    let (relay, host) =
        TestRelay::start_with_keepalive(keepalive, Duration::from_millis(300)).await;

    let fingerprint = baton_client::format_fingerprint(&relay.relay().fingerprint());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton-test-peer"))
        .args([
            relay.addr().to_string(),
            fingerprint,
            host.join_code().to_string(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn peer process");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(WAIT, BufReader::new(stdout).lines().next_line())
        .await
        .expect("peer joins in time")
        .unwrap()
        .unwrap_or_default();
    assert_eq!(line, "joined 1");
    // It is alive and sending.
    let (from, _) = recv(&host).await;
    assert_eq!(from, PeerId(1));

    child.start_kill().expect("SIGKILL");
    child.wait().await.unwrap();
    let killed_at = Instant::now();
    let left = event_matching(&host, WAIT, |e| matches!(e, Event::PeerLeft { .. })).await;
    let took = killed_at.elapsed();
    assert_eq!(
        left,
        Event::PeerLeft {
            peer: PeerId(1),
            reason: LeaveReason::TimedOut
        }
    );
    // Told within the keepalive timeout (plus scheduling slack on a loaded 2-core machine).
    assert!(
        took <= keepalive + Duration::from_millis(500),
        "host told after {took:?}"
    );
}
