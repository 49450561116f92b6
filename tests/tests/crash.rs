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

/// A hosting `baton-test-peer` process on `relay` (default settings: 10 s keepalive, 1.5 s
/// host-loss timeout) and its join code.
async fn host_process(relay: &TestRelay) -> (tokio::process::Child, baton_client::JoinCode) {
    let fingerprint = baton_client::format_fingerprint(&relay.relay().fingerprint());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton-test-peer"))
        .args(["host".to_owned(), relay.addr().to_string(), fingerprint])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn host process");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(WAIT, BufReader::new(stdout).lines().next_line())
        .await
        .expect("host creates in time")
        .unwrap()
        .unwrap_or_default();
    let code = line
        .strip_prefix("created ")
        .unwrap_or_else(|| panic!("not created: {line:?}"))
        .parse()
        .expect("a join code");
    (child, code)
}

/// Until both `a` and `b` know `host` hosts the game and have received a datagram from the
/// other since (each sends to the other every 10 ms meanwhile), or a panic after [`WAIT`].
/// (Members exchange datagrams during a migration too: the game has resumed only once the new
/// host has taken over.)
async fn until_exchanging(a: &baton_client::Session, b: &baton_client::Session, host: PeerId) {
    let (mut a_heard, mut b_heard) = (false, false);
    tokio::time::timeout(WAIT, async {
        while !(a_heard && b_heard) {
            let resumed = a.host() == Some(host) && b.host() == Some(host);
            // Sends fail while the host is being replaced; they are retried on the next round.
            let _ = a.send_to(b.local_peer(), b"ping");
            let _ = b.send_to(a.local_peer(), b"pong");
            if let Some((from, _)) = baton_tests::try_recv(a, Duration::from_millis(5)).await {
                a_heard |= resumed && from == b.local_peer();
            }
            if let Some((from, _)) = baton_tests::try_recv(b, Duration::from_millis(5)).await {
                b_heard |= resumed && from == a.local_peer();
            }
        }
    })
    .await
    .expect("exchanging within the wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_process_is_replaced_within_two_seconds_at_default_settings() {
    let relay = TestRelay::start().await;
    let (mut child, code) = host_process(&relay).await;
    let a = baton_client::Peer::join(&relay.client(), code)
        .await
        .unwrap();
    let b = baton_client::Peer::join(&relay.client(), code)
        .await
        .unwrap();
    assert_eq!(a.host_loss_timeout(), Duration::from_millis(1500));
    // The host is alive and sending to both.
    assert_eq!(recv(&a).await.0, PeerId::HOST);
    assert_eq!(recv(&b).await.0, PeerId::HOST);

    child.start_kill().expect("SIGKILL");
    child.wait().await.unwrap();
    let killed_at = Instant::now();
    let lost = event_matching(&a, WAIT, |e| matches!(e, Event::HostLost { .. })).await;
    let detected = killed_at.elapsed();
    let Event::HostLost {
        host,
        reason,
        elected: Some(elected),
    } = lost
    else {
        panic!("not a host loss with someone elected: {lost:?}");
    };
    assert_eq!((host, reason), (PeerId::HOST, LeaveReason::TimedOut));
    assert!(elected == a.local_peer() || elected == b.local_peer());
    // The others exchange datagrams with the new host (one of them: it took over by itself).
    until_exchanging(&a, &b, elected).await;
    let exchanging = killed_at.elapsed();
    assert!(
        a.host() == Some(elected) && b.host() == Some(elected),
        "hosts {:?} and {:?}, elected {elected}",
        a.host(),
        b.host()
    );
    eprintln!("host loss detected after {detected:?}, exchanging after {exchanging:?}");
    // At most the 1.5 s timeout and one 250 ms sample after the host's last datagram, which
    // came before the kill; 2 s keeps a margin for a loaded machine.
    assert!(
        detected < Duration::from_millis(2000),
        "host loss detected {detected:?} after the kill"
    );
    assert!(
        exchanging < Duration::from_millis(2000),
        "exchanging with the new host {exchanging:?} after the kill"
    );
    // Once: no second HostLost.
    let again = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            match a.next_event().await {
                Some(Event::HostLost { .. }) => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await;
    assert_ne!(again, Ok(true), "HostLost was reported twice");
    assert_eq!(
        relay.metrics().await.value("baton_host_unresponsive_total"),
        1.0
    );
}
