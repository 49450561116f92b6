//! Hook tests: event JSON, signatures, and webhook delivery and the event stream over real
//! loopback sockets, every wait bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use baton_protocol::{AllocationId, JoinCode, LeaveReason, PeerId};
use bytes::Bytes;
use futures_util::FutureExt;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::event::{first_id, unix_millis};
use super::replay::{CATCH_UP_SLICE, LIVE_CAPACITY};
use super::*;
use crate::config::HooksConfig;
use crate::metrics::Metrics;

const SECRET: &str = "whsec_test_secret_0123";
/// Bound on every wait for something that should happen within milliseconds.
const WAIT: Duration = Duration::from_secs(10);

fn alloc() -> AllocationId {
    AllocationId(0x8f3a_51c2_d07e_9b14)
}

fn code() -> JoinCode {
    JoinCode::parse("BCDF78").unwrap()
}

/// A hooks instance with its own metrics, shutdown token and task tracker.
struct Hooks {
    sender: HookSender,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

fn start(config: &HooksConfig) -> Hooks {
    start_on(config, None)
}

/// As [`start`], on fleet node `node`.
fn start_on(config: &HooksConfig, node: Option<&str>) -> Hooks {
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let node = node.map(str::to_owned);
    let sender = spawn(config, node, metrics.clone(), shutdown.clone(), &tracker);
    Hooks {
        sender,
        metrics,
        shutdown,
        tracker,
    }
}

impl Hooks {
    /// Begins the relay's shutdown and publishes what the relay then does, an
    /// `allocation.closed`; returns its id.
    fn shut_down(&self) -> u64 {
        self.shutdown.cancel();
        self.sender.publish(
            LobbyEventKind::allocation_closed("shutdown"),
            alloc(),
            code(),
        )
    }

    /// Publishes `n` `peer.joined` events for peers `first..first + n`; returns their ids.
    fn publish_peers(&self, first: u16, n: u16) -> Vec<u64> {
        (first..first + n)
            .map(|p| {
                self.sender.publish(
                    LobbyEventKind::peer_joined(PeerId(p), None),
                    alloc(),
                    code(),
                )
            })
            .collect()
    }

    fn metric(&self, line_start: &str) -> u64 {
        crate::metrics::testing::value(&self.metrics, line_start)
    }

    /// Waits until a metric reaches `want`: the task counts after the lobby's answer arrives,
    /// a moment after the lobby recorded the request.
    async fn wait_metric(&self, line_start: &str, want: u64) {
        crate::metrics::testing::wait_for(&self.metrics, line_start, want, WAIT).await;
    }
}

/// Fast retries for tests.
fn webhook_config(url: &str, queue: usize) -> HooksConfig {
    let mut config = HooksConfig::default();
    config
        .set_webhooks(vec![Url::parse(url).unwrap()], SECRET)
        .unwrap()
        .set_queue(queue)
        .unwrap()
        .set_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .unwrap();
    config
}

/// One request the test lobby got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    /// What the lobby answered.
    status: StatusCode,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers[name].to_str().unwrap()
    }

    fn id(&self) -> u64 {
        self.header(EVENT_ID_HEADER).parse().unwrap()
    }

    fn verify(&self) -> Result<(), SignatureError> {
        verify_signature(
            SECRET.as_bytes(),
            self.header(TIMESTAMP_HEADER),
            &self.body,
            self.header(SIGNATURE_HEADER),
            DEFAULT_TOLERANCE,
            SystemTime::now(),
        )
    }
}

/// A tiny lobby: records every request, answers 500 to the first `fail_first`, and, when
/// gated, waits for a permit before answering.
#[derive(Clone, Default)]
struct Lobby {
    received: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<AtomicUsize>,
    gate: Option<Arc<Semaphore>>,
}

impl Lobby {
    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The ids the lobby acknowledged, in arrival order.
    fn acknowledged(&self) -> Vec<u64> {
        self.received()
            .iter()
            .filter(|r| r.status.is_success())
            .map(Received::id)
            .collect()
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&self.received()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; got {:?}",
                self.received()
                    .iter()
                    .map(|r| (r.id(), r.status))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn serve(self, listener: TcpListener) -> JoinHandle<()> {
        let app = Router::new()
            .route("/hook", post(lobby_hook))
            .with_state(self);
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        })
    }

    async fn start(self) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, self.serve(listener).await)
    }
}

async fn lobby_hook(State(lobby): State<Lobby>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let fail = lobby
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    lobby.received.lock().unwrap().push(Received {
        headers,
        body,
        status,
    });
    if let (false, Some(gate)) = (fail, &lobby.gate) {
        gate.acquire().await.unwrap().forget();
    }
    status
}

fn assert_strictly_increasing(ids: &[u64]) {
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

#[test]
fn events_have_the_documented_json_shape() {
    let cases = [
        (LobbyEventKind::AllocationCreated {}, json!({})),
        (
            LobbyEventKind::peer_joined(PeerId(3), None),
            json!({ "peer": 3, "subject": null }),
        ),
        (
            LobbyEventKind::peer_joined(PeerId(4), Some("player-42")),
            json!({ "peer": 4, "subject": "player-42" }),
        ),
        (
            LobbyEventKind::peer_left(PeerId(2), LeaveReason::TimedOut),
            json!({ "peer": 2, "reason": "timed_out" }),
        ),
        (
            LobbyEventKind::host_disconnected(PeerId(0), LeaveReason::RelayShuttingDown),
            json!({ "host": 0, "reason": "relay_shutting_down" }),
        ),
        (
            LobbyEventKind::host_elected(PeerId(4), ElectedBy::Lobby),
            json!({ "host": 4, "by": "lobby" }),
        ),
        (
            LobbyEventKind::allocation_migrated(AllocationId(1), alloc(), PeerId(4)),
            json!({ "from": "0000000000000001", "to": "8f3a51c2d07e9b14", "host": 4 }),
        ),
        (
            LobbyEventKind::AllocationRelocated {
                from_node: "relay-1".into(),
                to_node: "relay-2".into(),
            },
            json!({ "from_node": "relay-1", "to_node": "relay-2" }),
        ),
        (
            LobbyEventKind::allocation_closed("host_lost"),
            json!({ "reason": "host_lost" }),
        ),
    ];
    for (kind, fields) in cases {
        let name = kind.name();
        let event = LobbyEvent {
            id: 1_732_170_000_123_000,
            node: None,
            time_ms: 1_732_170_000_123,
            allocation: alloc().to_string(),
            join_code: "BCDF78".into(),
            kind,
        };
        let mut want = json!({
            "id": 1_732_170_000_123_000u64,
            "time_ms": 1_732_170_000_123u64,
            "allocation": "8f3a51c2d07e9b14",
            "join_code": "BCDF78",
            "type": name,
        });
        for (k, v) in fields.as_object().unwrap() {
            want[k] = v.clone();
        }
        assert_eq!(serde_json::to_value(&event).unwrap(), want, "{name}");
        let back: LobbyEvent = serde_json::from_value(want).unwrap();
        assert_eq!(back, event, "{name}");
    }
    // The documented example parses.
    let example = r#"{"id":1732170000123000,"time_ms":1732170000123,"allocation":"8f3a51c2d07e9b14",
        "join_code":"BCDF78","type":"peer.left","peer":2,"reason":"timed_out"}"#;
    let event: LobbyEvent = serde_json::from_str(example).unwrap();
    assert_eq!(
        event.kind,
        LobbyEventKind::peer_left(PeerId(2), LeaveReason::TimedOut)
    );
    let gap = Gap { after: 5, next: 9 };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&gap.json()).unwrap(),
        json!({ "type": "replay.gap", "after": 5, "next": 9 })
    );
}

#[tokio::test]
async fn a_fleet_node_stamps_its_id_on_every_event() {
    for node in [Some("relay-7"), None] {
        let hooks = start_on(&HooksConfig::default(), node);
        let mut sub = hooks.sender.subscribe(None).unwrap();
        hooks
            .sender
            .publish(LobbyEventKind::AllocationCreated {}, alloc(), code());
        let Some(StreamItem::Event(published)) = sub.next().await else {
            panic!("no event");
        };
        let json: serde_json::Value = serde_json::from_slice(published.json()).unwrap();
        match node {
            Some(node) => assert_eq!(json["node"], node),
            // A relay standing alone sends the same JSON as before: no `node` key.
            None => assert!(json.get("node").is_none(), "{json}"),
        }
        assert_eq!(published.event().node.as_deref(), node);
    }
}

#[test]
fn ids_start_at_the_clock_and_fit_a_double() {
    let start = UNIX_EPOCH + Duration::from_millis(1_732_170_000_123);
    assert_eq!(first_id(start), 1_732_170_000_123_000);
    // Exact in an IEEE double (JavaScript) until 2255.
    let y2255 = UNIX_EPOCH + Duration::from_secs(9_000_000_000);
    assert!(first_id(y2255) < 1 << 53);
    assert_eq!(first_id(UNIX_EPOCH), 1);
}

#[test]
fn signature_matches_the_documented_scheme() {
    // Computed independently: python3 -c "import hmac,hashlib; print(hmac.new(
    //   b'whsec_test_secret_0123', b'1700000000.{\"a\":1}', hashlib.sha256).hexdigest())"
    let want = "v1=b1e06771f9a20c020fc4b9be257996790d615bbe4d030159b6a5669fdada024c";
    assert_eq!(sign(SECRET.as_bytes(), 1_700_000_000, br#"{"a":1}"#), want);

    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
    let check = |ts: &str, body: &[u8], header: &str| {
        verify_signature(SECRET.as_bytes(), ts, body, header, DEFAULT_TOLERANCE, now)
    };
    let body = br#"{"a":1}"#;
    assert_eq!(check("1700000000", body, want), Ok(()));
    // Other versions are ignored; any matching v1 is enough (secret rotation).
    let rotated = format!("v0=abcd, v1={}, {want}", "00".repeat(32));
    assert_eq!(check("1700000000", body, &rotated), Ok(()));

    assert_eq!(
        check("1700000000", br#"{"a":2}"#, want),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        check("1700000001", body, want),
        Err(SignatureError::Mismatch)
    );
    let mut flipped = want.to_owned();
    flipped.replace_range(10..11, "0");
    assert_eq!(
        check("1700000000", body, &flipped),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        check("1700000000", body, "v1=nothex"),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_signature(
            b"another-secret-xyz",
            "1700000000",
            body,
            want,
            DEFAULT_TOLERANCE,
            now
        ),
        Err(SignatureError::Mismatch)
    );
    for header in ["", "b1e06771", "t=1700000000", "v2=b1e06771"] {
        assert_eq!(
            check("1700000000", body, header),
            Err(SignatureError::Malformed),
            "{header}"
        );
    }
    for ts in ["", "abc", "-5", "1.5", "+1700000000"] {
        assert_eq!(
            check(ts, body, want),
            Err(SignatureError::InvalidTimestamp),
            "{ts}"
        );
    }
    // Replays: too old, or too far in the future.
    let check_at = |at: SystemTime| {
        verify_signature(
            SECRET.as_bytes(),
            "1700000000",
            body,
            want,
            DEFAULT_TOLERANCE,
            at,
        )
    };
    let late = now + DEFAULT_TOLERANCE + Duration::from_secs(1);
    assert_eq!(
        check_at(late),
        Err(SignatureError::Expired(Duration::from_secs(401)))
    );
    let early = UNIX_EPOCH + Duration::from_secs(1_700_000_000 - 301);
    assert!(matches!(check_at(early), Err(SignatureError::Expired(_))));
}

#[test]
fn urls_are_redacted_for_logs() {
    let url = Url::parse("https://user:pw@lobby.example:8443/hooks/baton?token=s3cret#x").unwrap();
    assert_eq!(redact(&url), "https://lobby.example:8443/hooks/baton");
    let url = Url::parse("http://127.0.0.1/h").unwrap();
    assert_eq!(redact(&url), "http://127.0.0.1/h");
}

#[tokio::test]
async fn webhook_gets_every_event_in_order_and_signed() {
    let lobby = Lobby::default();
    let (addr, _server) = lobby.clone().start().await;
    let hooks = start(&webhook_config(&format!("http://{addr}/hook?token=x"), 100));

    let mut ids = vec![hooks
        .sender
        .publish(LobbyEventKind::AllocationCreated {}, alloc(), code())];
    ids.extend(hooks.publish_peers(0, 3));
    ids.push(hooks.sender.publish(
        LobbyEventKind::host_disconnected(PeerId(0), LeaveReason::TimedOut),
        alloc(),
        code(),
    ));
    ids.push(hooks.sender.publish(
        LobbyEventKind::allocation_closed("host_lost"),
        alloc(),
        code(),
    ));
    assert_eq!(ids.len(), 6);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");

    lobby.wait_for("6 events", |r| r.len() >= 6).await;
    let received = lobby.received();
    assert_eq!(received.len(), 6);
    assert_eq!(lobby.acknowledged(), ids);
    let mut types = Vec::new();
    for r in &received {
        assert_eq!(r.verify(), Ok(()), "event {}", r.id());
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.header("user-agent").starts_with("baton-relay/"));
        let event: LobbyEvent = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(event.id, r.id());
        assert_eq!(event.kind.name(), r.header(EVENT_TYPE_HEADER));
        assert_eq!(event.allocation, "8f3a51c2d07e9b14");
        assert_eq!(event.join_code, "BCDF78");
        let age = unix_millis(SystemTime::now()).abs_diff(event.time_ms);
        assert!(age < 60_000, "time_ms {} is {age} ms off", event.time_ms);
        types.push(event.kind.name());
    }
    assert_eq!(
        types,
        [
            "allocation.created",
            "peer.joined",
            "peer.joined",
            "peer.joined",
            "host.disconnected",
            "allocation.closed"
        ]
    );

    // A tampered body or signature fails the documented verification.
    let r = &received[4];
    let mut tampered = r.body.to_vec();
    let at = tampered.len() - 3;
    tampered[at] ^= 1;
    let check = |body: &[u8], header: &str| {
        verify_signature(
            SECRET.as_bytes(),
            r.header(TIMESTAMP_HEADER),
            body,
            header,
            DEFAULT_TOLERANCE,
            SystemTime::now(),
        )
    };
    assert_eq!(
        check(&tampered, r.header(SIGNATURE_HEADER)),
        Err(SignatureError::Mismatch)
    );
    let other = received[3].header(SIGNATURE_HEADER).to_owned();
    assert_eq!(check(&r.body, &other), Err(SignatureError::Mismatch));

    assert_eq!(hooks.metric("baton_hook_events_published_total"), 6);
    hooks
        .wait_metric("baton_hook_webhook_delivered_total", 6)
        .await;
    assert_eq!(hooks.metric("baton_hook_webhook_failed_attempts_total"), 0);
    assert_eq!(
        hooks.metric("baton_hook_events_dropped_total{sink=\"webhook\"}"),
        0
    );
    assert_eq!(hooks.metric("baton_hook_webhook_queued"), 0);
}

#[tokio::test]
async fn webhook_retries_a_failing_lobby_and_keeps_order() {
    let lobby = Lobby {
        fail_first: Arc::new(AtomicUsize::new(3)),
        ..Lobby::default()
    };
    let (addr, _server) = lobby.clone().start().await;
    let hooks = start(&webhook_config(&format!("http://{addr}/hook"), 100));
    let ids = hooks.publish_peers(1, 5);

    lobby
        .wait_for("5 acknowledged", |r| {
            r.iter().filter(|r| r.status.is_success()).count() >= 5
        })
        .await;
    // The first event failed three times and was retried with the same id; the others waited
    // behind it, so every attempt is in order and each event was acknowledged once.
    let attempts: Vec<u64> = lobby.received().iter().map(Received::id).collect();
    assert_eq!(
        attempts,
        [ids[0], ids[0], ids[0], ids[0], ids[1], ids[2], ids[3], ids[4]]
    );
    assert_eq!(lobby.acknowledged(), ids);
    for r in lobby.received() {
        assert_eq!(r.verify(), Ok(()));
    }
    hooks
        .wait_metric("baton_hook_webhook_delivered_total", 5)
        .await;
    assert_eq!(hooks.metric("baton_hook_webhook_failed_attempts_total"), 3);
}

#[tokio::test]
async fn webhook_waits_for_a_lobby_that_is_down() {
    // Take a free port, then close it: nothing listens there until the lobby starts.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let hooks = start(&webhook_config(&format!("http://{addr}/hook"), 100));
    let ids = hooks.publish_peers(1, 4);

    let deadline = tokio::time::Instant::now() + WAIT;
    while hooks.metric("baton_hook_webhook_failed_attempts_total") < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no retries seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // More events while the lobby is down queue behind the first.
    let mut all = ids.clone();
    all.extend(hooks.publish_peers(5, 2));

    let lobby = Lobby::default();
    let listener = TcpListener::bind(addr).await.unwrap();
    let _server = lobby.clone().serve(listener).await;
    lobby.wait_for("6 events", |r| r.len() >= 6).await;
    // Connection refusals never reached the lobby, so it sees each event once, in order.
    assert_eq!(lobby.acknowledged(), all);
    assert_strictly_increasing(&lobby.acknowledged());
    hooks
        .wait_metric("baton_hook_webhook_delivered_total", 6)
        .await;
}

/// Asserts the next items of `sub` are the events `ids`, in order.
async fn expect_events<'a>(sub: &mut Subscription, ids: impl IntoIterator<Item = &'a u64>) {
    for want in ids {
        match sub.next().await {
            Some(StreamItem::Event(p)) => assert_eq!(p.id(), *want),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn full_queue_drops_and_counts() {
    let gate = Arc::new(Semaphore::new(0));
    let lobby = Lobby {
        gate: Some(gate.clone()),
        ..Lobby::default()
    };
    let (addr, _server) = lobby.clone().start().await;
    let hooks = start(&webhook_config(&format!("http://{addr}/hook"), 3));

    // The first event is taken off the queue and held by the lobby...
    let first = hooks.publish_peers(1, 1);
    lobby.wait_for("the first request", |r| r.len() == 1).await;
    // ...three more fill the queue, and two more find it full.
    let queued = hooks.publish_peers(2, 3);
    assert_eq!(hooks.metric("baton_hook_webhook_queued"), 3);
    let started = Instant::now();
    let dropped = hooks.publish_peers(5, 2);
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "publish blocked"
    );
    assert_eq!(
        hooks.metric("baton_hook_events_dropped_total{sink=\"webhook\"}"),
        2
    );
    // The stream is not affected by a slow webhook: all seven are in its buffer.
    let mut sub = hooks.sender.subscribe(Some(first[0] - 1)).unwrap();
    expect_events(&mut sub, first.iter().chain(&queued).chain(&dropped)).await;

    gate.add_permits(100);
    lobby.wait_for("4 events", |r| r.len() >= 4).await;
    let want: Vec<u64> = first.iter().chain(&queued).copied().collect();
    assert_eq!(lobby.acknowledged(), want);
    // Nothing else arrives: the dropped ones are gone for this webhook.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(lobby.received().len(), 4);
    assert_eq!(hooks.metric("baton_hook_webhook_queued"), 0);
    assert_eq!(hooks.metric("baton_hook_events_published_total"), 6);
}

#[tokio::test]
async fn shutdown_flushes_then_stops_webhooks_promptly() {
    // A lobby that never answers 2xx: the webhook retries until the hooks stop.
    let lobby = Lobby {
        fail_first: Arc::new(AtomicUsize::new(usize::MAX)),
        ..Lobby::default()
    };
    let (addr, _server) = lobby.clone().start().await;
    let hooks = start(&webhook_config(&format!("http://{addr}/hook"), 100));
    let ids = hooks.publish_peers(1, 3);
    lobby.wait_for("a failed attempt", |r| !r.is_empty()).await;

    let started = Instant::now();
    // Events published during the flush window still go out.
    let late = hooks.shut_down();
    hooks.tracker.close();
    tokio::time::timeout(
        SHUTDOWN_FLUSH + Duration::from_secs(2),
        hooks.tracker.wait(),
    )
    .await
    .expect("hook tasks stop after the flush window");
    let took = started.elapsed();
    assert!(
        took >= SHUTDOWN_FLUSH,
        "stopped before the flush window: {took:?}"
    );
    // The event published during the flush window was published after the others and queued
    // for the webhook, not refused: it is dropped at the end with the head event and the two
    // behind it, none of which the lobby ever accepted.
    assert_eq!(late, ids[2] + 1);
    assert_eq!(hooks.metric("baton_hook_events_published_total"), 4);
    assert_eq!(
        hooks.metric("baton_hook_events_dropped_total{sink=\"webhook\"}"),
        4
    );
    assert_eq!(hooks.metric("baton_hook_webhook_queued"), 0);
}

#[tokio::test]
async fn subscription_resumes_replays_and_reports_gaps() {
    let mut config = HooksConfig::default();
    config.set_replay(5).unwrap();
    let hooks = start(&config);

    let mut live = hooks.sender.subscribe(None).unwrap();
    let ids = hooks.publish_peers(1, 8);
    expect_events(&mut live, &ids).await;

    let next_ids = |sub: &mut Subscription, n: usize| {
        let mut out = Vec::new();
        for _ in 0..n {
            let item = sub.next().now_or_never().flatten();
            out.push(match item {
                Some(StreamItem::Event(p)) => format!("{}", p.id()),
                Some(StreamItem::Gap(g)) => format!("gap {}..{}", g.after, g.next),
                None => "pending".into(),
            });
        }
        out
    };

    // Resuming inside the buffer: exactly the missed events, then nothing.
    let mut sub = hooks.sender.subscribe(Some(ids[5])).unwrap();
    assert_eq!(
        next_ids(&mut sub, 3),
        [ids[6].to_string(), ids[7].to_string(), "pending".into()]
    );
    // Up to date: nothing.
    sub = hooks.sender.subscribe(Some(ids[7])).unwrap();
    assert_eq!(next_ids(&mut sub, 1), ["pending"]);
    // Older than the buffer (it holds the last 5): a gap, then the buffer.
    sub = hooks.sender.subscribe(Some(ids[0])).unwrap();
    let mut want = vec![format!("gap {}..{}", ids[0], ids[3])];
    want.extend(ids[3..].iter().map(u64::to_string));
    want.push("pending".into());
    assert_eq!(next_ids(&mut sub, 7), want);
    // An id this run never issued (from another run, or garbage): a gap, then the buffer.
    sub = hooks.sender.subscribe(Some(ids[7] + 100)).unwrap();
    assert_eq!(
        next_ids(&mut sub, 1),
        [format!("gap {}..{}", ids[7] + 100, ids[3])]
    );
    // ...and live events continue after replays.
    let more = hooks.publish_peers(20, 1);
    sub = hooks.sender.subscribe(Some(ids[6])).unwrap();
    assert_eq!(
        next_ids(&mut sub, 3),
        [ids[7].to_string(), more[0].to_string(), "pending".into()]
    );
    assert_eq!(hooks.metric("baton_hook_stream_subscribers"), 2);
    drop(sub);
    drop(live);
    assert_eq!(hooks.metric("baton_hook_stream_subscribers"), 0);
}

#[tokio::test]
async fn lagging_subscriber_catches_up_from_the_buffer() {
    let hooks = start(&HooksConfig::default());
    let mut sub = hooks.sender.subscribe(None).unwrap();
    // Far more than the live channel holds, fewer than the replay buffer.
    let ids = hooks.publish_peers(0, (LIVE_CAPACITY * 3) as u16);
    expect_events(&mut sub, &ids).await;
    assert_eq!(
        hooks.metric("baton_hook_events_dropped_total{sink=\"stream\"}"),
        0
    );

    // Further behind than the replay buffer: a gap, counted, then the buffered events.
    let mut config = HooksConfig::default();
    config.set_replay(100).unwrap();
    let hooks = start(&config);
    let mut sub = hooks.sender.subscribe(None).unwrap();
    let before = hooks.sender.subscribe(None).unwrap().last;
    let ids = hooks.publish_peers(0, 2000);
    match sub.next().await {
        Some(StreamItem::Gap(gap)) => assert_eq!(
            gap,
            Gap {
                after: before,
                next: ids[1900]
            }
        ),
        other => panic!("{other:?}"),
    }
    expect_events(&mut sub, &ids[1900..]).await;
    assert_eq!(
        hooks.metric("baton_hook_events_dropped_total{sink=\"stream\"}"),
        1900
    );
}

#[tokio::test]
async fn streams_end_after_the_shutdown_flush() {
    let hooks = start(&HooksConfig::default());
    let mut sub = hooks.sender.subscribe(None).unwrap();
    let started = Instant::now();
    let id = hooks.shut_down();
    expect_events(&mut sub, &[id]).await;
    let end = tokio::time::timeout(SHUTDOWN_FLUSH + Duration::from_secs(2), sub.next())
        .await
        .expect("stream ends after the flush window");
    assert!(end.is_none());
    assert!(started.elapsed() >= SHUTDOWN_FLUSH);

    // Dropping every sender ends streams too.
    let hooks = start(&HooksConfig::default());
    let mut sub = hooks.sender.subscribe(None).unwrap();
    drop(hooks.sender);
    let end = tokio::time::timeout(WAIT, sub.next()).await.unwrap();
    assert!(end.is_none());
}

#[tokio::test]
async fn catch_up_copies_one_bounded_slice_per_lock_and_publishing_goes_on() {
    // The default replay buffer, full.
    let hooks = start(&HooksConfig::default());
    let mut live = hooks.sender.subscribe(None).unwrap();
    let ids = hooks.publish_peers(0, 10_000);

    // Resuming from the oldest buffered event copies one slice under the publishing lock, not
    // the 10,000 events: the backlog is all a subscription ever copies while it holds the lock.
    let mut sub = hooks.sender.subscribe(Some(ids[0] - 1)).unwrap();
    assert!(
        sub.backlog.len() <= CATCH_UP_SLICE,
        "subscribe copied {} events under the lock",
        sub.backlog.len()
    );
    // So does a live subscriber that fell behind the live channel.
    expect_events(&mut live, &ids[..1]).await;
    assert!(
        live.backlog.len() <= CATCH_UP_SLICE,
        "catch-up copied {} events under the lock",
        live.backlog.len()
    );

    // Halfway through the catch-up, publishing goes on (more than the live channel holds), and
    // both subscribers still get every event once, in order, without a gap.
    // (The new events push the oldest 2048 out of the ring: both have read past them.)
    expect_events(&mut sub, &ids[..5_000]).await;
    expect_events(&mut live, &ids[1..5_000]).await;
    let more = hooks.publish_peers(10_000, (LIVE_CAPACITY * 2) as u16);
    assert!(sub.backlog.len() <= CATCH_UP_SLICE);
    expect_events(&mut sub, ids[5_000..].iter().chain(&more)).await;
    expect_events(&mut live, ids[5_000..].iter().chain(&more)).await;
    for sub in [&mut sub, &mut live] {
        assert!(sub.next().now_or_never().is_none(), "nothing more");
    }
    assert_eq!(
        hooks.metric("baton_hook_events_dropped_total{sink=\"stream\"}"),
        0
    );
}
