//! End-to-end tests of the reference lobby, `baton-lobby`, run as a child process against an
//! in-process relay, all on 127.0.0.1: webhooks (signature checks, exactly-once output), the
//! event stream (resume after a cut connection with nothing missed or repeated), both at once
//! (deduplicated across sources) and a refused token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_client::{AllocationOptions, Event, Host, Peer, PeerId};
use baton_relay::hooks;
use baton_tests::{event_matching, TestRelay, WAIT};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};

const SECRET: &str = "lobby-test-webhook-secret";
const ADMIN_TOKEN: &str = "lobby-test-admin-token";
/// What the lobby prints on stderr before the webhook receiver's address.
const LISTENING: &str = "webhook receiver listening on http://";

/// The lobby binary running as a child process (killed on drop), its output read line by line.
struct Lobby {
    child: Child,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
}

impl Lobby {
    /// Starts `baton-lobby` with `args` and `env`, none of the caller's Baton variables.
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Lobby {
        let mut command = Command::new(env!("CARGO_BIN_EXE_baton-lobby"));
        command
            .args(args)
            .env_remove("BATON_WEBHOOK_SECRET")
            .env_remove("BATON_ADMIN_TOKEN")
            .env_remove("BATON_EVENT_STREAM_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn baton-lobby");
        let stdout = lines(child.stdout.take().expect("stdout piped"), false);
        let stderr = lines(child.stderr.take().expect("stderr piped"), true);
        Lobby {
            child,
            stdout,
            stderr,
        }
    }

    /// The webhook receiver's address, once the lobby says it listens.
    async fn listening(&mut self) -> SocketAddr {
        tokio::time::timeout(WAIT, async {
            while let Some(line) = self.stderr.recv().await {
                if let Some((_, addr)) = line.split_once(LISTENING) {
                    return addr.trim().parse().expect("listening address");
                }
            }
            panic!("lobby exited before listening");
        })
        .await
        .expect("lobby listens within the wait")
    }

    /// The next line on stdout, or `None` if none comes within `within`.
    async fn line_within(&mut self, within: Duration) -> Option<String> {
        tokio::time::timeout(within, self.stdout.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next event printed (with `--json`).
    async fn next_event(&mut self) -> Value {
        let line = self
            .line_within(WAIT)
            .await
            .expect("an event line within the wait");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Events printed up to and including the first that matches `last`.
    async fn events_until(&mut self, last: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let event = self.next_event().await;
            let done = last(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }

    /// Waits for the lobby to exit by itself.
    async fn exit_status(&mut self) -> ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("lobby exits within the wait")
            .expect("wait for lobby")
    }

    /// Everything the lobby wrote on stderr so far (after it exited: all of it).
    async fn stderr_text(&mut self) -> String {
        let mut text = String::new();
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_millis(500), self.stderr.recv()).await
        {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }
}

/// Forwards each line of `pipe` to a channel (and stderr lines to the test's output).
fn lines(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    echo: bool,
) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if echo {
                eprintln!("[baton-lobby] {line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Counts events by type and the peer they name, e.g. `peer.joined peer=1`.
fn tally(events: &[Value]) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    for event in events {
        let mut key = event["type"].as_str().expect("type").to_owned();
        for field in ["peer", "host"] {
            if let Some(n) = event[field].as_u64() {
                key = format!("{key} {field}={n}");
            }
        }
        *tally.entry(key).or_insert(0) += 1;
    }
    tally
}

fn ids(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["id"].as_u64().expect("numeric id"))
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// POSTs `body` to the lobby's webhook with the given headers; the status code.
async fn post_hook(
    url: &str,
    body: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
) -> u16 {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(timestamp) = timestamp {
        request = request.header(hooks::TIMESTAMP_HEADER, timestamp);
    }
    if let Some(signature) = signature {
        request = request.header(hooks::SIGNATURE_HEADER, signature);
    }
    tokio::time::timeout(WAIT, request.send())
        .await
        .expect("lobby answers within the wait")
        .expect("lobby reachable")
        .status()
        .as_u16()
}

/// Waits until the relay's `/metrics` has a line `<metric> <value>`.
async fn wait_metric(relay: &TestRelay, name: &str, value: f64) {
    tokio::time::timeout(WAIT, async {
        loop {
            if relay.metrics().await.get(name) == Some(value) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("metric {name} = {value} within the wait"));
}

/// A TCP proxy in front of the relay's admin server that can cut every connection and refuse
/// new ones for a while, to disconnect the lobby's event stream at a chosen moment.
struct CutProxy {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    refusing: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl CutProxy {
    /// A proxy to `target`; with `None`, connections are refused until [`CutProxy::point_at`].
    async fn start(target: Option<SocketAddr>) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let target = Arc::new(Mutex::new(target));
        let refusing = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (target, refusing, connections) =
                (target.clone(), refusing.clone(), connections.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let to = *target.lock().expect("lock");
                    let Some(to) = to.filter(|_| !refusing.load(Ordering::SeqCst)) else {
                        continue; // Dropped: the lobby sees the connection close.
                    };
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(to).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().expect("lock").push(task.abort_handle());
                }
            }
        });
        CutProxy {
            addr,
            target,
            refusing,
            connections,
            accept,
        }
    }

    fn point_at(&self, target: SocketAddr) {
        *self.target.lock().expect("lock") = Some(target);
    }

    /// Closes every proxied connection and refuses new ones until [`CutProxy::resume`].
    fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        for connection in self.connections.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }

    fn resume(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A relay whose admin API (and event stream) wants [`ADMIN_TOKEN`].
async fn relay_with_admin_token() -> TestRelay {
    TestRelay::start_with(|config| {
        config.admin_token = Some(ADMIN_TOKEN.to_owned());
    })
    .await
}

fn admin_addr(relay: &TestRelay) -> SocketAddr {
    relay.relay().admin_addr().expect("admin server")
}

#[tokio::test]
async fn webhook_events_are_printed_once_each_and_forgeries_are_refused() {
    // The secret comes from the environment, as a deployment would pass it.
    let mut lobby = Lobby::spawn(
        &[
            "--webhook-listen",
            "127.0.0.1:0",
            "--json",
            "--exit-after",
            "1000",
        ],
        &[("BATON_WEBHOOK_SECRET", SECRET)],
    );
    let url = format!("http://{}/hooks/baton", lobby.listening().await);
    let relay = TestRelay::start_with_webhook(&url, SECRET, |_| {}).await;

    // A host and a peer; the peer leaves, then the host, alone, closes: the allocation closes.
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("create allocation");
    let allocation = host.allocation().to_string();
    let code = host.join_code().to_string();
    let peer = Peer::join(&relay.client(), host.join_code())
        .await
        .expect("join");
    assert_eq!(peer.local_peer(), PeerId(1));
    event_matching(&host, WAIT, |e| matches!(e, Event::PeerJoined { .. })).await;
    peer.close().await;
    event_matching(&host, WAIT, |e| matches!(e, Event::PeerLeft { .. })).await;
    host.close().await;

    let events = lobby
        .events_until(|e| e["type"] == "allocation.closed" && e["allocation"] == allocation)
        .await;
    for event in &events {
        assert_eq!(event["allocation"], allocation, "{event}");
        assert_eq!(event["join_code"], code, "{event}");
    }
    // Webhooks deliver in order; a repeated id would be a duplicate printed.
    let ids = ids(&events);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order: {ids:?}");
    let tally = tally(&events);
    for expected in [
        "allocation.created",
        "peer.joined peer=0",
        "peer.joined peer=1",
        "peer.left peer=1",
        "host.disconnected host=0",
        "allocation.closed",
    ] {
        assert_eq!(
            tally.get(expected),
            Some(&1),
            "{expected} once in {tally:?}"
        );
    }
    assert!(tally.values().all(|&n| n == 1), "nothing twice: {tally:?}");
    let lost = events
        .iter()
        .find(|e| e["type"] == "host.disconnected")
        .expect("host.disconnected");
    assert_eq!(lost["reason"], "closed");

    // Requests that are not the relay's are refused with 401, whatever their body.
    let body = serde_json::to_vec(&events[0]).expect("JSON");
    let ts = unix_now();
    let now = ts.to_string();
    let signed = hooks::sign(SECRET.as_bytes(), ts, &body);
    let tampered = String::from_utf8(body.clone())
        .expect("UTF-8")
        .replace(&code, "TTTTTT");
    let stale_ts = (ts - 600).to_string();
    let stale = hooks::sign(SECRET.as_bytes(), ts - 600, &body);
    let other_secret = hooks::sign(b"another-secret-of-16+", ts, &body);
    /// One forged request: what it is, its body and its two headers.
    struct Forgery<'a>(&'a str, &'a [u8], Option<&'a str>, Option<&'a str>);
    let forgeries = [
        Forgery(
            "tampered body",
            tampered.as_bytes(),
            Some(&now),
            Some(&signed),
        ),
        Forgery("other secret", &body, Some(&now), Some(&other_secret)),
        Forgery("stale timestamp", &body, Some(&stale_ts), Some(&stale)),
        Forgery("no signature", &body, Some(&now), None),
        Forgery("no timestamp", &body, None, Some(&signed)),
        Forgery("garbage signature", &body, Some(&now), Some("v1=zz")),
    ];
    for Forgery(what, body, timestamp, signature) in forgeries {
        assert_eq!(
            post_hook(&url, body, timestamp, signature).await,
            401,
            "{what}"
        );
    }
    // An authentic redelivery is acknowledged but not printed again; a new event is printed.
    assert_eq!(post_hook(&url, &body, Some(&now), Some(&signed)).await, 204);
    let fresh = serde_json::json!({
        "id": ids[ids.len() - 1] + 1_000_000, "time_ms": 0, "allocation": "00000000000000aa",
        "join_code": "BCDF78", "type": "peer.joined", "peer": 7,
    });
    let fresh_body = serde_json::to_vec(&fresh).expect("JSON");
    let fresh_sig = hooks::sign(SECRET.as_bytes(), ts, &fresh_body);
    assert_eq!(
        post_hook(&url, &fresh_body, Some(&now), Some(&fresh_sig)).await,
        204
    );
    assert_eq!(
        lobby.next_event().await,
        fresh,
        "next line is the new event"
    );
}

#[tokio::test]
async fn event_stream_resumes_after_a_cut_without_loss_or_repeats() {
    let relay = relay_with_admin_token().await;
    let proxy = CutProxy::start(Some(admin_addr(&relay))).await;
    let events_url = format!("http://{}/v1/events", proxy.addr);
    // Six events: each of three hosts' `allocation.created` and `peer.joined` (peer 0).
    let mut lobby = Lobby::spawn(
        &[
            "--events-url",
            &events_url,
            "--admin-token",
            ADMIN_TOKEN,
            "--json",
            "--exit-after",
            "6",
            "--reconnect-initial",
            "50ms",
            "--reconnect-max",
            "200ms",
        ],
        &[],
    );
    wait_metric(&relay, "baton_hook_stream_subscribers", 1.0).await;

    let first = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("create");
    let mut events = vec![lobby.next_event().await, lobby.next_event().await];

    // Cut the stream; two more allocations are opened while the lobby is away.
    proxy.cut();
    let second = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("create");
    let third = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("create");
    wait_metric(&relay, "baton_hook_events_published_total", 6.0).await;
    assert_eq!(
        lobby.line_within(Duration::from_millis(300)).await,
        None,
        "nothing arrives while cut"
    );
    proxy.resume();

    // The lobby reconnects with Last-Event-ID, gets the four it missed and stops at six.
    for _ in 0..4 {
        events.push(lobby.next_event().await);
    }
    assert!(lobby.exit_status().await.success(), "--exit-after exits 0");
    assert_eq!(lobby.line_within(Duration::from_millis(100)).await, None);

    let ids = ids(&events);
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive ids, none missed or repeated: {ids:?}"
    );
    let mut expected = Vec::new();
    for host in [&first, &second, &third] {
        let allocation = host.allocation().to_string();
        expected.push(("allocation.created".to_owned(), allocation.clone()));
        expected.push(("peer.joined".to_owned(), allocation));
    }
    let got: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().expect("type").to_owned(),
                e["allocation"].as_str().expect("allocation").to_owned(),
            )
        })
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn both_sources_at_once_print_each_event_once() {
    // The lobby must exist before the relay (the relay needs its webhook URL) and the relay
    // before the stream's target is known: the proxy refuses connections until it is.
    let proxy = CutProxy::start(None).await;
    let events_url = format!("http://{}/v1/events", proxy.addr);
    let mut lobby = Lobby::spawn(
        &[
            "--webhook-listen",
            "127.0.0.1:0",
            "--events-url",
            &events_url,
            "--reconnect-initial",
            "50ms",
            "--reconnect-max",
            "200ms",
        ],
        &[("BATON_WEBHOOK_SECRET", SECRET)],
    );
    let url = format!("http://{}/hooks/baton", lobby.listening().await);
    let relay = TestRelay::start_with_webhook(&url, SECRET, |_| {}).await;
    proxy.point_at(admin_addr(&relay));
    wait_metric(&relay, "baton_hook_stream_subscribers", 1.0).await;

    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("create");
    let allocation = host.allocation().to_string();
    // Text output: `<id> <type> allocation=.. join_code=.. <fields> via=<source>`.
    let mut lines = Vec::new();
    for _ in 0..2 {
        lines.push(lobby.line_within(WAIT).await.expect("an event line"));
    }
    // Both copies of both events have reached the lobby once the webhook delivered them and
    // the stream has had time to; still only two lines.
    wait_metric(&relay, "baton_hook_webhook_delivered_total", 2.0).await;
    assert_eq!(
        lobby.line_within(Duration::from_millis(500)).await,
        None,
        "no duplicate: {lines:?}"
    );
    assert!(lines[0].contains(" allocation.created "), "{lines:?}");
    assert!(lines[1].contains(" peer.joined "), "{lines:?}");
    assert!(lines[1].contains(" peer=0 "), "{lines:?}");
    for line in &lines {
        assert!(
            line.contains(&format!("allocation={allocation} ")),
            "{line}"
        );
        assert!(
            line.ends_with(" via=webhook") || line.ends_with(" via=stream"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn a_refused_stream_token_stops_the_lobby_with_an_error() {
    let relay = relay_with_admin_token().await;
    let events_url = format!("{}/v1/events", relay.admin_url());
    let mut lobby = Lobby::spawn(
        &["--events-url", &events_url],
        &[("BATON_ADMIN_TOKEN", "not-the-token")],
    );
    assert!(!lobby.exit_status().await.success());
    let stderr = lobby.stderr_text().await;
    assert!(stderr.contains("401"), "{stderr}");

    // Without any source there is nothing to do: refused at once.
    let mut idle = Lobby::spawn(&[], &[]);
    assert!(!idle.exit_status().await.success());
}
