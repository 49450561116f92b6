//! Host migration end to end: the host is a separate OS process (`baton-player`) that leaves
//! cleanly or is killed with SIGKILL; the peers are SDK sessions over real QUIC on loopback;
//! the lobby is a webhook receiver checking signatures, and the admin API.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes as Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use baton_client::{
    AllocationId, AllocationOptions, ClientConfig, Event, Host, JoinCode, LeaveReason, Peer,
    PeerId, ReconnectToken,
};
use baton_relay::hooks;
use baton_tests::udp_tap::UdpTap;
use baton_tests::{event_matching, raw_connection, raw_join, raw_read, TestRelay, WAIT};
use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const SECRET: &str = "migration-test-webhook-secret";

/// The host, in its own process.
struct HostProcess {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    code: JoinCode,
    token: ReconnectToken,
}

impl HostProcess {
    /// Starts a hosting `baton-player` that uploads a snapshot of `snapshot` bytes and waits
    /// until it is stored.
    async fn start(relay: &TestRelay, snapshot: usize, keepalive: Duration) -> HostProcess {
        let fingerprint = baton_client::format_fingerprint(&relay.relay().fingerprint());
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton-player"))
            .args([
                "--relay",
                &relay.addr().to_string(),
                "--fingerprint",
                &fingerprint,
                "--keepalive-ms",
                &keepalive.as_millis().to_string(),
                "--max-secs",
                "60",
                "host",
                "--snapshot-bytes",
                &snapshot.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn host process");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = next_report(&mut lines, "ready").await;
        let stored = next_report(&mut lines, "snapshot_stored").await;
        assert_eq!(stored["len"].as_u64(), Some(snapshot as u64));
        HostProcess {
            child,
            stdin,
            lines,
            code: JoinCode::parse(ready["code"].as_str().expect("code")).expect("join code"),
            token: ready["token"]
                .as_str()
                .expect("token")
                .parse()
                .expect("reconnect token"),
        }
    }

    /// Tells the host to leave cleanly and waits for the process to end.
    async fn close(mut self) {
        self.stdin.write_all(b"close\n").await.expect("write");
        next_report(&mut self.lines, "closing").await;
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("host exits")
            .expect("wait");
    }

    /// Kills the host with SIGKILL: no QUIC close, no goodbye.
    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("wait");
    }
}

/// The next report line of type `event` from a player, skipping others.
async fn next_report(lines: &mut Lines<BufReader<ChildStdout>>, event: &str) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let line = lines
                .next_line()
                .await
                .expect("read player output")
                .unwrap_or_else(|| panic!("player ended before {event:?}"));
            let report: Value = serde_json::from_str(&line).expect("JSON line");
            if report["event"] == event {
                return report;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {event:?} from the player in time"))
}

/// A lobby's webhook endpoint: every delivery, with whether its signature verified.
#[derive(Clone, Default)]
struct Lobby {
    received: Arc<Mutex<Vec<(Value, bool)>>>,
}

impl Lobby {
    /// Serves on a loopback port; returns the URL to configure on the relay.
    async fn serve(&self) -> String {
        async fn deliver(State(lobby): State<Lobby>, headers: HeaderMap, body: Body) -> StatusCode {
            let header = |name| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let verified = hooks::verify_signature(
                SECRET.as_bytes(),
                &header(hooks::TIMESTAMP_HEADER),
                &body,
                &header(hooks::SIGNATURE_HEADER),
                Duration::from_secs(300),
                SystemTime::now(),
            )
            .is_ok();
            let event = serde_json::from_slice(&body).unwrap_or(Value::Null);
            lobby.received.lock().unwrap().push((event, verified));
            StatusCode::NO_CONTENT
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hooks", axum::routing::post(deliver))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hooks")
    }

    /// Deliveries of events of type `kind` so far.
    fn of_type(&self, kind: &str) -> Vec<(Value, bool)> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter(|(e, _)| e["type"] == kind)
            .cloned()
            .collect()
    }

    /// Waits until an event of type `kind` arrived.
    async fn wait_for(&self, kind: &str) {
        self.wait_until(kind, |e| e["type"] == kind).await;
    }

    /// Waits until an event matching `pred` arrived (`what` names it in the failure).
    async fn wait_until(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        tokio::time::timeout(WAIT, async {
            while !self.received.lock().unwrap().iter().any(|(e, _)| pred(e)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("lobby never got {what}"));
    }
}

/// A relay whose webhook posts to `lobby`, with `tweak` applied.
async fn relay_with_lobby(
    lobby: &Lobby,
    tweak: impl FnOnce(&mut baton_relay::RelayConfig),
) -> TestRelay {
    TestRelay::start_with_webhook(&lobby.serve().await, SECRET, tweak).await
}

/// `n` peers joined by `code`, in id order.
async fn join_peers(config: &ClientConfig, code: JoinCode, n: usize) -> Vec<Peer> {
    let mut peers = Vec::new();
    for _ in 0..n {
        peers.push(Peer::join(config, code).await.expect("join"));
    }
    peers
}

/// Waits for the migration on every peer: all hear the host was lost (with `reason`) and who
/// takes over, then that it did. Returns the new host's index in `peers`, the snapshot it
/// received, and when the first peer heard of the loss.
async fn follow_migration(
    peers: &[Peer],
    old: AllocationId,
    reason: LeaveReason,
) -> (usize, Option<Bytes>, Instant) {
    let mut elected = None;
    let mut first_heard = None;
    for peer in peers {
        match event_matching(peer, WAIT, |e| {
            matches!(
                e,
                Event::HostLost {
                    elected: Some(_),
                    ..
                }
            )
        })
        .await
        {
            Event::HostLost {
                host: PeerId::HOST,
                reason: r,
                elected: Some(e),
            } if r == reason => {
                first_heard.get_or_insert_with(Instant::now);
                assert!(elected.is_none() || elected == Some(e), "one election");
                elected = Some(e);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let elected = elected.expect("someone elected");
    let mut snapshot = None;
    let mut new_allocation = None;
    for peer in peers {
        let Event::HostMigrated {
            allocation,
            new_host,
            you_are_host,
            snapshot: got,
        } = event_matching(peer, WAIT, |e| matches!(e, Event::HostMigrated { .. })).await
        else {
            unreachable!()
        };
        assert_ne!(allocation, old);
        assert!(new_allocation.is_none() || new_allocation == Some(allocation));
        new_allocation = Some(allocation);
        assert_eq!(new_host, elected);
        assert_eq!(you_are_host, peer.local_peer() == elected);
        if you_are_host {
            snapshot = got;
        } else {
            assert_eq!(got, None);
        }
    }
    let index = peers
        .iter()
        .position(|p| p.local_peer() == elected)
        .expect("the elected member is one of the peers");
    (index, snapshot, first_heard.unwrap_or_else(Instant::now))
}

/// The next datagram `session` receives from `from`, skipping any from others (such as ticks
/// the old host sent before it left), or a panic after [`WAIT`].
async fn recv_from(session: &Peer, from: PeerId) -> Bytes {
    tokio::time::timeout(WAIT, async {
        loop {
            let (source, payload) = session.recv().await.expect("session open");
            if source == from {
                return payload;
            }
        }
    })
    .await
    .expect("datagram within the wait")
}

/// Every other peer and the new host exchange datagrams both ways.
async fn assert_playing_with(peers: &[Peer], new_host: usize) {
    let host = &peers[new_host];
    let host_id = host.local_peer();
    let others: Vec<&Peer> = peers.iter().filter(|p| p.local_peer() != host_id).collect();
    for peer in &others {
        let payload = format!("input from {}", peer.local_peer());
        peer.send_to_host(payload.as_bytes()).unwrap();
        assert_eq!(
            recv_from(host, peer.local_peer()).await,
            Bytes::from(payload.into_bytes())
        );
    }
    host.broadcast(b"state").unwrap();
    for peer in &others {
        assert_eq!(recv_from(peer, host_id).await, Bytes::from_static(b"state"));
    }
}

#[tokio::test]
async fn clean_host_exit_hands_the_game_to_a_peer_and_the_lobby_hears_once() {
    let lobby = Lobby::default();
    let relay = relay_with_lobby(&lobby, |_| {}).await;
    let snapshot_len = 300_000;
    let host = HostProcess::start(&relay, snapshot_len, Duration::from_secs(2)).await;
    let code = host.code;
    let config = relay.client();
    let peers = join_peers(&config, code, 3).await;
    let ids: Vec<PeerId> = peers.iter().map(|p| p.local_peer()).collect();
    assert_eq!(ids, [PeerId(1), PeerId(2), PeerId(3)]);
    let old = peers[0].allocation();

    host.close().await;
    let (new_host, snapshot, _) = follow_migration(&peers, old, LeaveReason::Closed).await;
    // Same ids, the snapshot byte for byte, and datagrams flowing with the new host.
    let ids_after: Vec<PeerId> = peers.iter().map(|p| p.local_peer()).collect();
    assert_eq!(ids_after, ids);
    assert_eq!(
        snapshot.as_deref(),
        Some(&baton_tests::snapshot_bytes(snapshot_len)[..])
    );
    assert!(peers[new_host].is_host());
    assert_playing_with(&peers, new_host).await;
    // The new host heard every other member arrive.
    for peer in peers.iter().filter(|p| !p.is_host()) {
        event_matching(
            &peers[new_host],
            WAIT,
            |e| matches!(e, Event::PeerRejoined { peer: p } if *p == peer.local_peer()),
        )
        .await;
    }

    // The old join code lets a fourth player into the new allocation.
    let fourth = Peer::join(&config, code)
        .await
        .expect("join by the old code");
    assert_eq!(fourth.allocation(), peers[new_host].allocation());
    assert_eq!(fourth.local_peer(), PeerId(4));
    assert_eq!(fourth.host(), Some(peers[new_host].local_peer()));
    fourth.send_to_host(b"hello").unwrap();
    assert_eq!(
        recv_from(&peers[new_host], PeerId(4)).await,
        Bytes::from_static(b"hello")
    );

    // The lobby got exactly one signed host.disconnected and one allocation.migrated. A webhook
    // delivers in event order, and peer 4 joined after the migration: once its peer.joined has
    // arrived, every migration event has too, so the counts below are final.
    lobby
        .wait_until("peer 4's peer.joined", |e| {
            e["type"] == "peer.joined" && e["peer"] == 4
        })
        .await;
    let lost = lobby.of_type("host.disconnected");
    let migrated = lobby.of_type("allocation.migrated");
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(migrated.len(), 1, "{migrated:?}");
    assert!(lost[0].1 && migrated[0].1, "signatures verify");
    assert_eq!(lost[0].0["reason"], "closed");
    assert_eq!(lost[0].0["host"], 0);
    assert_eq!(migrated[0].0["from"], old.to_string());
    assert_eq!(
        migrated[0].0["to"],
        peers[new_host].allocation().to_string()
    );
    assert_eq!(migrated[0].0["host"], peers[new_host].local_peer().0);
    assert_eq!(migrated[0].0["join_code"], code.to_string());
}

#[tokio::test]
async fn a_killed_host_process_is_replaced_after_the_keepalive_timeout_and_rejoins_as_a_peer() {
    let keepalive = Duration::from_millis(1500);
    let lobby = Lobby::default();
    let relay = relay_with_lobby(&lobby, |c| {
        c.set_keepalive_timeout(keepalive).unwrap();
    })
    .await;
    let ping = Duration::from_millis(300);
    let host = HostProcess::start(&relay, 4096, ping).await;
    let (code, token) = (host.code, host.token.clone());
    let config = relay.client().keep_alive_interval(ping);
    let peers = join_peers(&config, code, 3).await;
    let old = peers[0].allocation();

    host.kill().await;
    let killed_at = Instant::now();
    let (new_host, snapshot, heard) = follow_migration(&peers, old, LeaveReason::TimedOut).await;
    let detected = heard.duration_since(killed_at);
    // Detected within the keepalive timeout (plus scheduling slack on a loaded 2-core machine).
    assert!(
        detected <= keepalive + Duration::from_millis(500),
        "host loss detected after {detected:?}"
    );
    assert_eq!(
        snapshot.as_deref(),
        Some(&baton_tests::snapshot_bytes(4096)[..])
    );
    assert_playing_with(&peers, new_host).await;

    // The old host comes back with its reconnect token: an ordinary member, still peer 0.
    let back = Peer::rejoin(&config, &token).await.expect("rejoin");
    assert_eq!(back.local_peer(), PeerId::HOST);
    assert_eq!(back.allocation(), peers[new_host].allocation());
    assert_eq!(back.host(), Some(peers[new_host].local_peer()));
    assert!(!back.is_host());
    event_matching(&peers[new_host], WAIT, |e| {
        *e == Event::PeerRejoined { peer: PeerId::HOST }
    })
    .await;
    back.send_to_host(b"I'm back").unwrap();
    assert_eq!(
        recv_from(&peers[new_host], PeerId::HOST).await,
        Bytes::from_static(b"I'm back")
    );
    lobby.wait_for("allocation.migrated").await;
    let lost = lobby.of_type("host.disconnected");
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].0["reason"], "timed_out");
    // Metrics tell joins by code from comebacks.
    let metrics = relay.metrics().await;
    assert_eq!(metrics.get("baton_joins_total"), Some(3.0), "{metrics:?}");
    assert_eq!(metrics.get("baton_rejoins_total"), Some(1.0), "{metrics:?}");
}

#[tokio::test]
async fn a_lobby_names_the_next_host_and_may_hand_out_the_ticket_itself() {
    // A window long enough that the relay never elects by itself during the test.
    let relay = TestRelay::start_with(|c| {
        c.set_lobby_election_window(Duration::from_secs(30))
            .unwrap();
    })
    .await;
    let http = reqwest::Client::new();
    let elect = |alloc: AllocationId, body: Value| {
        http.post(format!(
            "{}/v1/allocations/{alloc}/elect",
            relay.admin_url()
        ))
        .json(&body)
        .send()
    };
    let config = relay.client();

    for notify in [true, false] {
        let host = Host::create(&config, AllocationOptions::default())
            .await
            .unwrap();
        let peers = join_peers(&config, host.join_code(), 3).await;
        let old = host.allocation();
        host.close().await;
        // Everyone hears of the loss at once; no one is elected until the lobby says.
        for peer in &peers {
            assert_eq!(
                event_matching(peer, WAIT, |e| matches!(e, Event::HostLost { .. })).await,
                Event::HostLost {
                    host: PeerId::HOST,
                    reason: LeaveReason::Closed,
                    elected: None
                }
            );
        }
        // The lobby picks peer 3 (the relay would have picked peer 1).
        let response = elect(old, serde_json::json!({ "peer": 3, "notify": notify }))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["elected"], 3);
        if !notify {
            // The lobby hands the ticket to the member itself.
            let mut ticket = [0u8; 16];
            hex::decode_to_slice(body["ticket"].as_str().unwrap(), &mut ticket).unwrap();
            let alloc = body["allocation_id"].as_str().unwrap().parse().unwrap();
            peers[2].take_over(alloc, ticket).await.expect("take over");
        }
        let (new_host, _, _) = follow_migration(&peers, old, LeaveReason::Closed).await;
        assert_eq!(peers[new_host].local_peer(), PeerId(3));
        assert_playing_with(&peers, new_host).await;
    }
}

#[tokio::test]
async fn an_elected_member_that_never_takes_over_is_passed_over() {
    let relay = TestRelay::start_with(|c| {
        c.set_migration_timeout(Duration::from_millis(300)).unwrap();
        c.set_lobby_election_window(Duration::from_secs(30))
            .unwrap();
    })
    .await;
    let config = relay.client();
    let host = Host::create(&config, AllocationOptions::default())
        .await
        .unwrap();
    // Peer 1 speaks the protocol by hand and ignores `Promote`; peer 2 runs the SDK.
    let raw = raw_connection(&relay, |_| {}).await;
    let (_send, mut control, joined) = raw_join(&raw, host.join_code()).await;
    assert!(matches!(
        joined,
        baton_protocol::ServerMessage::Joined {
            peer: PeerId(1),
            ..
        }
    ));
    let sdk_peer = Peer::join(&config, host.join_code()).await.unwrap();
    let old = host.allocation();
    host.close().await;

    let elected = |e: &Event| {
        matches!(
            e,
            Event::HostLost {
                elected: Some(_),
                ..
            }
        )
    };
    // The lobby names peer 1, which never takes over.
    let named = reqwest::Client::new()
        .post(format!("{}/v1/allocations/{old}/elect", relay.admin_url()))
        .json(&serde_json::json!({ "peer": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(named.status().as_u16(), 200);
    assert_eq!(
        event_matching(&sdk_peer, WAIT, elected).await,
        Event::HostLost {
            host: PeerId::HOST,
            reason: LeaveReason::Closed,
            elected: Some(PeerId(1))
        }
    );
    // Peer 1 misses its deadline; peer 2 is elected and takes over.
    let started = Instant::now();
    assert_eq!(
        event_matching(&sdk_peer, WAIT, elected).await,
        Event::HostLost {
            host: PeerId::HOST,
            reason: LeaveReason::Closed,
            elected: Some(PeerId(2))
        }
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let migrated =
        event_matching(&sdk_peer, WAIT, |e| matches!(e, Event::HostMigrated { .. })).await;
    assert!(matches!(
        migrated,
        Event::HostMigrated { new_host: PeerId(2), you_are_host: true, allocation, .. } if allocation != old
    ));
    // The passed-over member is moved along as an ordinary member.
    let moved = tokio::time::timeout(WAIT, async {
        loop {
            if let baton_protocol::ServerMessage::Migrated { allocation, host } =
                raw_read(&mut control).await
            {
                return (allocation, host);
            }
        }
    })
    .await
    .expect("Migrated in time");
    assert_eq!(moved, (sdk_peer.allocation(), PeerId(2)));
}

// ---------------------------------------------------------------------------------------------
// Fast host-loss detection (SPEC section 11.1), at the default 1.5 s host-loss timeout
// ---------------------------------------------------------------------------------------------

/// No event `pred` matches among those `session` already has or gets within `within`.
async fn no_event(
    session: &baton_client::Session,
    within: Duration,
    pred: impl Fn(&Event) -> bool,
) {
    let seen = tokio::time::timeout(within, async {
        loop {
            match session.next_event().await {
                Some(e) if pred(&e) => return e,
                Some(_) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    if let Ok(e) = seen {
        panic!("unexpected event {e:?}");
    }
}

/// The game still runs with `host` as host: `peer` and `host` exchange a datagram each way.
async fn still_hosting(host: &Host, peer: &Peer) {
    assert!(host.is_host(), "the host lost its role");
    assert_eq!(host.disconnect_reason(), None);
    assert_eq!(peer.host(), Some(PeerId::HOST));
    host.send_to(peer.local_peer(), b"host").unwrap();
    assert_eq!(
        baton_tests::recv(peer).await,
        (PeerId::HOST, Bytes::from_static(b"host"))
    );
    peer.send_to_host(b"peer").unwrap();
    assert_eq!(
        baton_tests::recv(host).await,
        (peer.local_peer(), Bytes::from_static(b"peer"))
    );
}

/// `peer` hears of no host loss or disconnect within `within`, the game still runs with `host`
/// as host, and the relay never found a host unresponsive.
async fn not_migrated(relay: &TestRelay, host: &Host, peer: &Peer, within: Duration) {
    no_event(peer, within, |e| {
        matches!(e, Event::HostLost { .. } | Event::Disconnected { .. })
    })
    .await;
    still_hosting(host, peer).await;
    assert_eq!(
        relay.metrics().await.value("baton_host_unresponsive_total"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_host_is_not_migrated_its_heartbeats_keep_it() {
    let relay = TestRelay::start().await;
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .unwrap();
    assert_eq!(host.host_loss_timeout(), Duration::from_millis(1500));
    let peer = Peer::join(&relay.client(), host.join_code()).await.unwrap();
    // No game traffic at all for 10 s: only the host's heartbeats (and QUIC's own pings,
    // every 2 s, too rare to keep a 1.5 s timeout) prove it alive.
    not_migrated(&relay, &host, &peer, Duration::from_secs(10)).await;
}

/// `to` receives a datagram from `from` over a lossy link: `send` sends a fresh payload
/// starting with `tag` every 100 ms until one arrives (for at most [`WAIT`]); other datagrams
/// are skipped.
async fn gets_through(
    to: &baton_client::Session,
    from: PeerId,
    tag: &str,
    send: impl Fn(&[u8]) -> Result<(), baton_client::Error>,
) {
    let deadline = Instant::now() + WAIT;
    for n in 0u32.. {
        assert!(Instant::now() < deadline, "no {tag:?} datagram got through");
        send(format!("{tag} {n}").as_bytes()).unwrap();
        let next = Instant::now() + Duration::from_millis(100);
        while let Some((source, got)) =
            baton_tests::try_recv(to, next.saturating_duration_since(Instant::now())).await
        {
            if source == from && got.starts_with(tag.as_bytes()) {
                return;
            }
        }
    }
}

/// The game still runs with `host` as host over a lossy link: `peer` and `host` get a datagram
/// through each way.
async fn still_hosting_despite_loss(host: &Host, peer: &Peer) {
    assert!(host.is_host(), "the host lost its role");
    assert_eq!(host.disconnect_reason(), None);
    assert_eq!(peer.host(), Some(PeerId::HOST));
    gets_through(peer, PeerId::HOST, "down", |p| {
        host.send_to(peer.local_peer(), p)
    })
    .await;
    gets_through(host, peer.local_peer(), "up", |p| peer.send_to_host(p)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_on_a_lossy_slow_link_is_not_migrated() {
    let relay = TestRelay::start().await;
    // 5 % loss, 50 ms delay and up to 10 ms of jitter on everything the host sends and
    // receives (the relay and the peer have a clean link). A fixed seed: the same draws each run.
    let lossy = baton_client::NetworkSimulator::new()
        .both(baton_client::LinkConditions::new(
            0.05,
            Duration::from_millis(50),
            Duration::from_millis(10),
        ))
        .seed(7);
    let host = Host::create(
        &relay.client().network_simulator(lossy.clone()),
        AllocationOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(host.host_loss_timeout(), Duration::from_millis(1500));
    let peer = Peer::join(&relay.client(), host.join_code()).await.unwrap();
    let lost_or_ended =
        |e: &Event| matches!(e, Event::HostLost { .. } | Event::Disconnected { .. });

    // Idle for 15 s: only the host's heartbeats, one in twenty of them lost, prove it alive.
    no_event(&peer, Duration::from_secs(15), lost_or_ended).await;
    still_hosting_despite_loss(&host, &peer).await;
    let idle = lossy.stats();
    assert!(idle.sent.lost > 0, "the link lost nothing: {idle:?}");

    // Game traffic for 10 s: the peer sends 30 datagrams a second, the host receives them.
    let mut received = 0usize;
    let counting = tokio::time::timeout(Duration::from_secs(11), async {
        while let Ok((from, _)) = host.recv().await {
            if from == peer.local_peer() {
                received += 1;
            }
        }
    });
    let sending = async {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / 30));
        for i in 0..300u32 {
            tick.tick().await;
            peer.send_to_host(&i.to_be_bytes()).unwrap();
        }
    };
    let watching = no_event(&peer, Duration::from_secs(11), lost_or_ended);
    let (_, _, counted) = tokio::join!(sending, watching, counting);
    assert!(counted.is_err(), "the host's session ended");
    // About 5 % of them lost on the way in, never most of them.
    assert!(received >= 240, "the host got {received} of 300 datagrams");
    assert!(host.is_host());
    assert_eq!(host.disconnect_reason(), None);
    still_hosting_despite_loss(&host, &peer).await;
    let stats = lossy.stats();
    assert!(stats.received.lost > idle.received.lost, "{stats:?}");
    assert_eq!(
        relay.metrics().await.value("baton_host_unresponsive_total"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_game_loop_is_blocked_is_not_migrated() {
    let relay = TestRelay::start().await;
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .unwrap();
    let peer = Peer::join(&relay.client(), host.join_code()).await.unwrap();
    // The game loop (this task) blocks its thread for 5 s: no recv, no send. The SDK's tasks
    // go on on the runtime's other worker.
    tokio::task::block_in_place(|| std::thread::sleep(Duration::from_secs(5)));
    not_migrated(&relay, &host, &peer, Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_for_longer_than_the_timeout_is_replaced_and_comes_back_as_a_peer() {
    let lobby = Lobby::default();
    let relay = relay_with_lobby(&lobby, |_| {}).await;
    let proxy = UdpTap::start(relay.addr()).await.unwrap();
    let via_proxy = ClientConfig::new(
        proxy.addr,
        baton_client::Trust::Fingerprint(relay.relay().fingerprint()),
    );
    let host = Host::create(&via_proxy, AllocationOptions::default())
        .await
        .unwrap();
    let token = host.reconnect_token();
    let a = Peer::join(&relay.client(), host.join_code()).await.unwrap();
    let b = Peer::join(&relay.client(), host.join_code()).await.unwrap();

    // The host's uplink dies: the relay hears nothing from it for 1.5 s.
    proxy.cut_uplink(true);
    let cut_at = Instant::now();
    let lost = event_matching(&a, WAIT, |e| matches!(e, Event::HostLost { .. })).await;
    assert!(
        cut_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        cut_at.elapsed()
    );
    assert!(matches!(
        lost,
        Event::HostLost {
            host: PeerId::HOST,
            reason: LeaveReason::TimedOut,
            elected: Some(_),
        }
    ));
    // The relay closed the host's connection with code 9, which the host heard.
    let ended = event_matching(&host, WAIT, |e| matches!(e, Event::Disconnected { .. })).await;
    assert_eq!(
        ended,
        Event::Disconnected {
            reason: baton_client::DisconnectReason::HostUnresponsive
        }
    );
    // The others go on with the new host.
    let migrated = event_matching(&b, WAIT, |e| matches!(e, Event::HostMigrated { .. })).await;
    let Event::HostMigrated { new_host, .. } = migrated else {
        unreachable!()
    };

    // Only a blip: the old host comes back with its reconnect token, as an ordinary peer.
    proxy.cut_uplink(false);
    let back = Peer::rejoin(&relay.client(), &token).await.unwrap();
    assert_eq!(back.local_peer(), PeerId::HOST);
    assert_eq!(back.host(), Some(new_host));
    assert!(!back.is_host());
    back.send_to_host(b"back").unwrap();
    let new_host_session = if a.local_peer() == new_host { &a } else { &b };
    tokio::time::timeout(WAIT, async {
        loop {
            let (from, payload) = baton_tests::recv(new_host_session).await;
            if from == PeerId::HOST && payload == Bytes::from_static(b"back") {
                return;
            }
        }
    })
    .await
    .expect("the new host hears the old one");
    assert_eq!(
        relay.metrics().await.value("baton_host_unresponsive_total"),
        1.0
    );
    // The lobby heard of it exactly once, as a host that timed out, then of the migration.
    lobby.wait_for("allocation.migrated").await;
    let lost = lobby.of_type("host.disconnected");
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(lost[0].1, "signature verifies");
    assert_eq!(lost[0].0["reason"], "timed_out");
    assert_eq!(lost[0].0["host"], 0);
}
