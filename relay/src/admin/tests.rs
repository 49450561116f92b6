//! Admin server tests: every route over real loopback HTTP, against a control task like the
//! relay's (minus connections) and real hooks; every wait bounded.

use std::time::{Duration, Instant};

use baton_protocol::AllocationId;
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::*;
use crate::control::ControlPlane;
use crate::driver::handle::AdminCall;
use crate::metrics::Metrics;
use crate::RelayConfig;

/// A control task like the relay's, minus connections: it runs admin calls and discards
/// the outputs. Dropping the returned task handle does not stop it; aborting it does.
fn control_task(config: RelayConfig) -> (RelayHandle, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<AdminCall>(16);
    let task = tokio::spawn(async move {
        let mut cp = ControlPlane::new(&config, 1, Instant::now());
        while let Some(call) = rx.recv().await {
            call(&mut cp, Instant::now());
            while cp.poll_output().is_some() {}
        }
    });
    let handle = RelayHandle {
        admin: tx,
        metrics: Arc::new(Metrics::new()),
    };
    (handle, task)
}

struct Admin {
    addr: SocketAddr,
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    control: JoinHandle<()>,
    hooks: HookSender,
    metrics: Arc<Metrics>,
}

async fn start(config: RelayConfig, token: Option<&str>) -> Admin {
    let hooks_config = config.hooks.clone();
    let admin_limits = config.admin_limits.clone();
    let (handle, control) = control_task(config);
    let metrics = handle.metrics.clone();
    let shutdown = CancellationToken::new();
    let hooks = crate::hooks::spawn(
        &hooks_config,
        None,
        handle.metrics.clone(),
        shutdown.clone(),
        &tokio_util::task::TaskTracker::new(),
    );
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (addr, server) = spawn(
        TcpListener::bind(listen).await.unwrap(),
        handle,
        token.map(str::to_owned),
        admin_limits,
        hooks.clone(),
        None,
        shutdown.clone(),
    )
    .unwrap();
    assert_ne!(addr.port(), 0);
    Admin {
        addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        shutdown,
        server,
        control,
        hooks,
        metrics,
    }
}

impl Admin {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn json(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .request(method, self.url(path))
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let body = response.text().await.unwrap();
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
        };
        (status, value)
    }

    /// POSTs `body` as JSON to `path`, or nothing when `body` is `None`.
    async fn post(&self, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut request = self.http.post(self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.server)
            .await
            .expect("admin server stops on cancel")
            .unwrap();
        self.control.abort();
    }
}

#[tokio::test]
async fn probes_and_metrics() {
    let admin = start(RelayConfig::default(), Some("secret")).await;

    let r = admin.http.get(admin.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");

    let r = admin.http.get(admin.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "ready");

    // Probes and metrics stay open even with a token configured.
    let r = admin.http.get(admin.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let content_type = r.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = r.text().await.unwrap();
    assert!(
        text.lines()
            .any(|line| line.starts_with("baton_connections ")),
        "{text}"
    );

    let (status, body) = admin.json(Method::GET, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");

    admin.stop().await;
}

#[tokio::test]
async fn election_override_needs_a_migrating_allocation() {
    let admin = start(RelayConfig::default(), None).await;
    let reservation: Value = admin
        .post("/v1/allocations", None)
        .await
        .json()
        .await
        .unwrap();
    let id = reservation["allocation_id"].as_str().unwrap();
    let elect = format!("/v1/allocations/{id}/elect");
    let r = admin
        .post(&elect, Some(serde_json::json!({ "peer": 1 })))
        .await;
    assert_eq!(r.status().as_u16(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "not_migrating");
    let r = admin
        .post(&elect, Some(serde_json::json!({ "who": 1 })))
        .await;
    assert_eq!(r.status().as_u16(), 400);
    let r = admin
        .post(
            "/v1/allocations/00000000000000ff/elect",
            Some(serde_json::json!({ "peer": 1 })),
        )
        .await;
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn allocation_lifecycle() {
    let admin = start(RelayConfig::default(), None).await;

    let (status, body) = admin.json(Method::GET, "/v1/allocations").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["allocations"].as_array().unwrap().len(), 0);

    let r = admin
        .post(
            "/v1/allocations",
            Some(serde_json::json!({ "max_peers": 4 })),
        )
        .await;
    assert_eq!(r.status().as_u16(), 201);
    let location = r.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let reservation: Value = r.json().await.unwrap();
    let id = reservation["allocation_id"].as_str().unwrap().to_owned();
    let code = reservation["join_code"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 16);
    assert_eq!(location, format!("/v1/allocations/{id}"));
    assert_eq!(reservation["host_token"].as_str().unwrap().len(), 32);
    assert_eq!(reservation["host_bind_secs"], 60);

    let (status, body) = admin.json(Method::GET, "/v1/allocations").await;
    assert_eq!(status, StatusCode::OK);
    let list = body["allocations"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["host_bound"], false);
    assert_eq!(list[0]["max_peers"], 4);

    let path = format!("/v1/allocations/{id}");
    let (status, body) = admin.json(Method::GET, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["join_code"], code.as_str());
    assert_eq!(body["code_state"], "active");

    let (status, body) = admin
        .json(Method::POST, &format!("{path}/revoke-code"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["revoked"], code.as_str());
    let (_, body) = admin.json(Method::GET, &path).await;
    assert_eq!(body["code_state"], "revoked");
    assert_eq!(body["code_expires_in_secs"], 0);

    let (status, body) = admin.json(Method::DELETE, &path).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null);

    for (method, p) in [
        (Method::GET, path.clone()),
        (Method::DELETE, path.clone()),
        (Method::POST, format!("{path}/revoke-code")),
    ] {
        let (status, body) = admin.json(method.clone(), &p).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {p}");
        assert_eq!(body["code"], "not_found");
        assert!(body["error"].as_str().unwrap().contains(&id), "{body}");
    }

    admin.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_with_json() {
    let admin = start(RelayConfig::default(), None).await;

    for bad in [
        "xyz",
        "0123456789abcdeg",
        "0123456789abcdef0",
        "+123456789abcdef",
    ] {
        let (status, body) = admin
            .json(Method::GET, &format!("/v1/allocations/{bad}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["code"], "invalid_request");
    }

    let post = |body: Vec<u8>| {
        admin
            .http
            .post(admin.url("/v1/allocations"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
    };
    for bad in [
        &b"{"[..],
        b"{\"max_peers\": 1}",
        b"{\"max_peers\": 4, \"extra\": 1}",
    ] {
        let r = post(bad.to_vec()).await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{}", String::from_utf8_lossy(bad));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "invalid_request");
    }
    let r = post(vec![b' '; MAX_BODY + 1]).await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "payload_too_large");

    // No body at all reserves with the relay's defaults.
    let r = admin.post("/v1/allocations", None).await;
    assert_eq!(r.status().as_u16(), 201);

    admin.stop().await;
}

#[tokio::test]
async fn a_relay_standing_alone_answers_reservations_as_before_and_refuses_placement() {
    let admin = start(RelayConfig::default(), None).await;
    // The answer has exactly the fields it always had: nothing about nodes.
    let r = admin
        .post(
            "/v1/allocations",
            Some(serde_json::json!({ "max_peers": 3 })),
        )
        .await;
    assert_eq!(r.status().as_u16(), 201);
    let body: Value = r.json().await.unwrap();
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["allocation_id", "host_bind_secs", "host_token", "join_code"]
    );
    // Placing on a node or in a region needs a fleet.
    for target in [
        serde_json::json!({ "node": "relay-1" }),
        serde_json::json!({ "region": "eu" }),
    ] {
        let r = admin.post("/v1/allocations", Some(target.clone())).await;
        assert_eq!(r.status().as_u16(), 409, "{target}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "not_a_fleet_node", "{target}");
    }
    // Malformed targets are the request's fault, before anything else.
    for bad in [
        serde_json::json!({ "node": "a b" }),
        serde_json::json!({ "node": "" }),
        serde_json::json!({ "region": "eu/west" }),
        serde_json::json!({ "node": "a", "region": "eu" }),
    ] {
        let r = admin.post("/v1/allocations", Some(bad.clone())).await;
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }
    let (_, list) = admin.json(Method::GET, "/v1/allocations").await;
    assert_eq!(list["allocations"].as_array().unwrap().len(), 1);
    admin.stop().await;
}

#[tokio::test]
async fn full_relay_and_stopped_control_plane_answer_503() {
    let mut config = RelayConfig::default();
    config.set_max_allocations(1).unwrap();
    let admin = start(config, None).await;

    let (status, _) = admin.json(Method::POST, "/v1/allocations").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = admin.json(Method::POST, "/v1/allocations").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "relay_full");

    let (readyz, healthz, list) = (
        admin.url("/readyz"),
        admin.url("/healthz"),
        admin.url("/v1/allocations"),
    );
    let control = admin.control;
    control.abort();
    assert!(control.await.unwrap_err().is_cancelled());
    let r = admin.http.get(readyz).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let r = admin.http.get(healthz).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = admin.http.get(list).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "stopped");

    admin.shutdown.cancel();
    admin.server.await.unwrap();
}

#[tokio::test]
async fn token_guards_the_api() {
    let admin = start(RelayConfig::default(), Some("s3cret-token")).await;
    let url = admin.url("/v1/allocations");

    let r = admin.http.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()[reqwest::header::WWW_AUTHENTICATE], "Bearer");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");

    for wrong in [
        "Bearer nope",
        "Bearer s3cret-toke",
        "Basic s3cret-token",
        "s3cret-token",
    ] {
        let r = admin
            .http
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{wrong}");
    }
    // A rejected mutation must not have happened.
    let r = admin
        .http
        .post(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let r = admin
        .http
        .get(&url)
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["allocations"].as_array().unwrap().len(), 0);

    admin.stop().await;
}

/// Bound on waits for something that should happen within milliseconds.
const WAIT: Duration = Duration::from_secs(10);

/// One parsed SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl SseEvent {
    fn lobby_event(&self) -> crate::hooks::LobbyEvent {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }

    fn id(&self) -> u64 {
        self.id
            .as_deref()
            .expect("event has an id")
            .parse()
            .unwrap()
    }
}

/// A minimal SSE client over a streaming reqwest response.
struct EventStream {
    response: reqwest::Response,
    buf: String,
}

impl EventStream {
    async fn open(admin: &Admin, query: &str, headers: &[(&str, &str)]) -> EventStream {
        let mut request = admin.http.get(admin.url(&format!("/v1/events{query}")));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response.headers()[reqwest::header::CONTENT_TYPE],
            "text/event-stream"
        );
        EventStream {
            response,
            buf: String::new(),
        }
    }

    /// The next event (comments skipped), or `None` when the stream ends.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    let Some((field, value)) = line.split_once(':') else {
                        continue;
                    };
                    let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                    match field {
                        "" => {} // a comment: keep-alive
                        "id" => event.id = Some(value),
                        "event" => event.event = Some(value),
                        "data" => event.data.push_str(&value),
                        other => panic!("unexpected SSE field {other:?}"),
                    }
                    any |= !field.is_empty();
                }
                if any {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("an SSE event in time")
                .unwrap()?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn expect_event(&mut self) -> SseEvent {
        self.next().await.expect("the stream is open")
    }

    /// Asserts nothing arrives for a little while.
    async fn expect_quiet(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(150), self.next()).await;
        assert!(next.is_err(), "unexpected {next:?}");
    }
}

fn publish(admin: &Admin, peer: u16) -> u64 {
    admin.hooks.publish(
        crate::hooks::LobbyEventKind::peer_joined(baton_protocol::PeerId(peer), None),
        AllocationId(0xab),
        "BCDF78".parse().unwrap(),
    )
}

#[tokio::test]
async fn event_stream_delivers_live_events_and_resumes() {
    let admin = start(RelayConfig::default(), None).await;

    let mut stream = EventStream::open(&admin, "", &[]).await;
    let ids: Vec<u64> = (1..=3).map(|p| publish(&admin, p)).collect();
    for (i, id) in ids.iter().enumerate() {
        let event = stream.expect_event().await;
        assert_eq!(event.id(), *id);
        assert_eq!(event.event.as_deref(), Some("peer.joined"));
        let lobby = event.lobby_event();
        assert_eq!(lobby.id, *id);
        assert_eq!(lobby.allocation, "00000000000000ab");
        assert_eq!(lobby.join_code, "BCDF78");
        assert_eq!(
            lobby.kind,
            crate::hooks::LobbyEventKind::peer_joined(baton_protocol::PeerId(i as u16 + 1), None)
        );
    }
    stream.expect_quiet().await;
    drop(stream);

    // Missed while disconnected; a reconnect with Last-Event-ID gets exactly those.
    let missed: Vec<u64> = (4..=5).map(|p| publish(&admin, p)).collect();
    let last = ids[2].to_string();
    let mut stream = EventStream::open(&admin, "", &[("last-event-id", &last)]).await;
    assert_eq!(stream.expect_event().await.id(), missed[0]);
    assert_eq!(stream.expect_event().await.id(), missed[1]);
    stream.expect_quiet().await;
    let live = publish(&admin, 6);
    assert_eq!(stream.expect_event().await.id(), live);

    // The query parameter works too; the header wins over it (EventSource reconnects).
    let mut by_query =
        EventStream::open(&admin, &format!("?last_event_id={}", missed[1]), &[]).await;
    assert_eq!(by_query.expect_event().await.id(), live);
    let header = missed[0].to_string();
    let mut both = EventStream::open(
        &admin,
        &format!("?last_event_id={}", ids[0]),
        &[("last-event-id", &header)],
    )
    .await;
    assert_eq!(both.expect_event().await.id(), missed[1]);

    for bad in ["?last_event_id=abc", "?last_event_id=-1"] {
        let (status, body) = admin.json(Method::GET, &format!("/v1/events{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["code"], "invalid_request");
    }
    let r = admin
        .http
        .get(admin.url("/v1/events"))
        .header("last-event-id", "12x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    let metrics = admin.hooks_metrics();
    // A whole line, so 30 or 31 subscribers would not pass for 3.
    assert!(
        metrics
            .lines()
            .any(|line| line == "baton_hook_stream_subscribers 3"),
        "{metrics}"
    );

    // Shutdown ends open streams (after the flush window), so the server stops.
    let shutdown = admin.shutdown.clone();
    let stopping = tokio::spawn(admin.stop());
    shutdown.cancelled().await;
    assert_eq!(
        tokio::time::timeout(WAIT, stream.next()).await.unwrap(),
        None
    );
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
}

impl Admin {
    fn hooks_metrics(&self) -> String {
        let text = self.metrics.encode();
        text.lines()
            .filter(|l| l.starts_with("baton_hook"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[tokio::test]
async fn event_stream_signals_a_gap_past_the_replay_buffer() {
    let mut config = RelayConfig::default();
    config.hooks.set_replay(2).unwrap();
    let admin = start(config, None).await;
    let ids: Vec<u64> = (1..=5).map(|p| publish(&admin, p)).collect();

    let first = ids[0].to_string();
    let mut stream = EventStream::open(&admin, "", &[("last-event-id", &first)]).await;
    let gap = stream.expect_event().await;
    assert_eq!(
        gap.id, None,
        "a gap must not move the client's last event id"
    );
    assert_eq!(gap.event.as_deref(), Some("replay.gap"));
    let data: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(
        data,
        serde_json::json!({ "type": "replay.gap", "after": ids[0], "next": ids[3] })
    );
    assert_eq!(stream.expect_event().await.id(), ids[3]);
    assert_eq!(stream.expect_event().await.id(), ids[4]);
    stream.expect_quiet().await;
    drop(stream);
    admin.stop().await;
}

/// A default config whose event stream requires `token`.
fn stream_token_config(token: &str) -> RelayConfig {
    let mut config = RelayConfig::default();
    config.hooks.set_stream_token(Some(token.into())).unwrap();
    config
}

#[tokio::test]
async fn event_stream_token_rules() {
    let status = |admin: &Admin, path: &str, token: Option<&str>| {
        let mut request = admin.http.get(admin.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };

    // Only the admin token: it guards the stream too.
    let admin = start(RelayConfig::default(), Some("admin-t")).await;
    assert_eq!(status(&admin, "/v1/events", None).await, 401);
    assert_eq!(status(&admin, "/v1/events", Some("wrong")).await, 401);
    assert_eq!(status(&admin, "/v1/events", Some("admin-t")).await, 200);
    admin.stop().await;

    // A stream token: the stream takes it (and only it), the API does not.
    let admin = start(stream_token_config("stream-t"), Some("admin-t")).await;
    assert_eq!(status(&admin, "/v1/events", None).await, 401);
    assert_eq!(status(&admin, "/v1/events", Some("admin-t")).await, 401);
    assert_eq!(status(&admin, "/v1/events", Some("stream-t")).await, 200);
    assert_eq!(
        status(&admin, "/v1/allocations", Some("stream-t")).await,
        401
    );
    assert_eq!(
        status(&admin, "/v1/allocations", Some("admin-t")).await,
        200
    );
    let r = admin
        .http
        .get(admin.url("/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[reqwest::header::WWW_AUTHENTICATE], "Bearer");
    admin.stop().await;

    // A stream token without an admin token: the stream is guarded, the API open.
    let admin = start(stream_token_config("stream-t"), None).await;
    assert_eq!(status(&admin, "/v1/events", None).await, 401);
    assert_eq!(status(&admin, "/v1/events", Some("stream-t")).await, 200);
    assert_eq!(status(&admin, "/v1/allocations", None).await, 200);
    admin.stop().await;
}

/// Reads until the server closes the connection (EOF or reset), discarding what it sends
/// first; panics if it is still open after `within`.
async fn expect_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin), within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {within:?}"),
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends a whole `GET path` on `stream` and reads the answer's head and `ok`-sized body:
/// returns the status line.
async fn raw_get(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        // Short answers (probes, errors) end with their body; stop once it is in.
        while !got.ends_with(b"ok") && !got.ends_with(b"}") {
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("an answer");
    let text = String::from_utf8_lossy(&got).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off_at_the_header_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let mut config = RelayConfig::default();
    config.admin_limits.set_header_timeout(TIMEOUT).unwrap();
    let admin = start(config, None).await;

    // A partial request line, then nothing.
    let started = Instant::now();
    let mut stalled = TcpStream::connect(admin.addr).await.unwrap();
    stalled.write_all(b"GET /heal").await.unwrap();
    // Headers dribbled a byte at a time, each well within the timeout: the timeout bounds the
    // whole head, not the gap between bytes.
    let mut dribbler = TcpStream::connect(admin.addr).await.unwrap();
    dribbler
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
        .await
        .unwrap();
    let (mut reader, mut writer) = dribbler.into_split();
    let dribble = tokio::spawn(async move {
        // Bounded: 200 bytes at 20 ms is 4 s, far past the timeout.
        for _ in 0..200 {
            if writer.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // A kept-alive connection that goes idle after a request.
    let mut idle = TcpStream::connect(admin.addr).await.unwrap();
    assert_eq!(raw_get(&mut idle, "/healthz").await, "HTTP/1.1 200 OK");

    expect_closed(&mut stalled, WAIT).await;
    assert!(started.elapsed() >= TIMEOUT, "closed early");
    expect_closed(&mut reader, WAIT).await;
    dribble.abort();
    expect_closed(&mut idle, WAIT).await;

    // A client that sends its request at once is served.
    let mut prompt = TcpStream::connect(admin.addr).await.unwrap();
    assert_eq!(raw_get(&mut prompt, "/healthz").await, "HTTP/1.1 200 OK");
    admin.stop().await;
}

impl Admin {
    /// The value of the metric line starting with `line_start`.
    fn metric(&self, line_start: &str) -> u64 {
        crate::metrics::testing::value(&self.metrics, line_start)
    }

    /// Waits (bounded) until the metric starting with `line_start` is `want`.
    async fn wait_metric(&self, line_start: &str, want: u64) {
        crate::metrics::testing::wait_for(&self.metrics, line_start, want, WAIT).await;
    }
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_accept() {
    const LIMIT: usize = 3;
    let mut config = RelayConfig::default();
    config.admin_limits.set_max_connections(LIMIT).unwrap();
    let admin = start(config, None).await;

    // LIMIT kept-alive connections, each served once.
    let mut open = Vec::new();
    for _ in 0..LIMIT {
        let mut stream = TcpStream::connect(admin.addr).await.unwrap();
        assert_eq!(raw_get(&mut stream, "/healthz").await, "HTTP/1.1 200 OK");
        open.push(stream);
    }
    assert_eq!(admin.metric("baton_admin_connections "), LIMIT as u64);

    // One more is closed before it is read, and counted.
    let mut extra = TcpStream::connect(admin.addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await;
    expect_closed(&mut extra, WAIT).await;
    admin
        .wait_metric(
            "baton_admin_connections_refused_total{reason=\"connection_limit\"}",
            1,
        )
        .await;
    assert_eq!(admin.metric("baton_admin_connections "), LIMIT as u64);

    // Closing one frees its slot.
    drop(open.pop());
    admin
        .wait_metric("baton_admin_connections ", LIMIT as u64 - 1)
        .await;
    let mut next = TcpStream::connect(admin.addr).await.unwrap();
    assert_eq!(raw_get(&mut next, "/healthz").await, "HTTP/1.1 200 OK");
    assert_eq!(
        admin.metric("baton_admin_connections_refused_total{reason=\"connection_limit\"}"),
        1
    );
    drop(open);
    drop(next);
    admin.stop().await;
}

#[tokio::test]
async fn event_stream_subscribers_over_the_limit_get_503() {
    let mut config = RelayConfig::default();
    config.hooks.set_max_subscribers(2).unwrap();
    let admin = start(config, None).await;

    let first = EventStream::open(&admin, "", &[]).await;
    let mut second = EventStream::open(&admin, "", &[]).await;
    assert_eq!(admin.metric("baton_hook_stream_subscribers "), 2);

    // The third is refused with a JSON error, and counted.
    let (status, body) = admin.json(Method::GET, "/v1/events").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "too_many_subscribers");
    assert!(body["error"].as_str().unwrap().contains('2'), "{body}");
    assert_eq!(
        admin.metric("baton_hook_stream_subscriptions_refused_total{reason=\"subscriber_limit\"}"),
        1
    );
    assert_eq!(admin.metric("baton_hook_stream_subscribers "), 2);

    // The open streams still get events; closing one frees its place.
    let id = publish(&admin, 1);
    assert_eq!(second.expect_event().await.id(), id);
    drop(first);
    admin.wait_metric("baton_hook_stream_subscribers ", 1).await;
    let mut third = EventStream::open(&admin, "", &[]).await;
    let id = publish(&admin, 2);
    assert_eq!(third.expect_event().await.id(), id);
    drop((second, third));
    admin.stop().await;
}
