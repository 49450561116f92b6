//! Reservations placed across a fleet: three in-process relay nodes on loopback sharing a real
//! `redis-server`, the real admin APIs over HTTP, the real SDK over QUIC.
//!
//! `POST /v1/allocations` on any node reserves on the least-loaded active node (the load its
//! heartbeat published), forwarding to that node's admin API, and answers with that node's
//! address, where the host claims the reservation; a named node and a named region are
//! honoured; a draining node gets nothing; an unknown node or region, and a node whose admin
//! API cannot be reached, are typed errors.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_client::{AllocationOptions, ClientConfig, Event, Host, Peer, PeerId, Trust};
use baton_relay::directory::{NodeId, NodeInfo, NodeState, RedisDirectory};
use baton_relay::metrics::Metrics;
use baton_tests::redis_server::RedisServer;
use baton_tests::{event_matching, recv, TestRelay, WAIT};
use serde_json::{json, Value};

/// Every node's admin token: forwarding sends it, so a fleet shares one.
const TOKEN: &str = "placement-test-admin-token";

/// Nodes `a`, `b` and `c` in `regions`, sharing one certificate and one admin token.
async fn fleet(regions: [&str; 3]) -> (RedisServer, tempfile::TempDir, Vec<TestRelay>) {
    let redis = RedisServer::start().expect("redis-server starts (install redis-server)");
    let certs = tempfile::tempdir().expect("temp dir");
    let mut nodes = Vec::new();
    // One at a time: the first generates the certificate the others reuse.
    for (id, region) in ["a", "b", "c"].into_iter().zip(regions) {
        nodes.push(
            TestRelay::start_fleet_node(id, &redis.url(), certs.path(), |config| {
                config.admin_token = Some(TOKEN.to_owned());
                if let Some(fleet) = config.fleet.as_mut() {
                    fleet.region = region.to_owned();
                }
            })
            .await,
        );
    }
    (redis, certs, nodes)
}

async fn directory(redis: &RedisServer) -> RedisDirectory {
    RedisDirectory::connect(&redis.url(), std::sync::Arc::new(Metrics::new()))
        .await
        .expect("directory")
}

/// Waits (bounded) until the directory's nodes satisfy `check`.
async fn until_directory(dir: &RedisDirectory, what: &str, check: impl Fn(&[NodeInfo]) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(nodes) = dir.nodes().await {
            if check(&nodes) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The allocations each node last heartbeated, by id.
fn loads(nodes: &[NodeInfo]) -> Vec<(String, u64, NodeState)> {
    nodes
        .iter()
        .map(|n| (n.id.to_string(), n.allocations, n.state))
        .collect()
}

/// `POST /v1/allocations` on `node` with `body`: the status, the JSON answer and `Location`.
async fn reserve(node: &TestRelay, body: Value) -> (u16, Value, Option<String>) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/allocations", node.admin_url()))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("admin API answers");
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answer: Value = response.json().await.expect("a JSON answer");
    (status, answer, location)
}

/// Reserves through `via` with `body` and returns the node it landed on, asserting the answer
/// is a reservation with that node's address.
async fn placed_on(via: &TestRelay, nodes: &[TestRelay], body: Value) -> String {
    let (status, answer, _) = reserve(via, body.clone()).await;
    assert_eq!(status, 201, "{body}: {answer}");
    let node = answer["node"].as_str().expect("node").to_owned();
    let index = ["a", "b", "c"]
        .iter()
        .position(|n| *n == node)
        .expect("a node of the fleet");
    assert_eq!(
        answer["address"].as_str(),
        Some(nodes[index].addr().to_string().as_str()),
        "{answer}"
    );
    node
}

/// A host on `node` with an allocation, kept open by the caller.
async fn host_on(node: &TestRelay) -> Host {
    Host::create(&node.client(), AllocationOptions::default())
        .await
        .expect("create")
}

#[tokio::test]
async fn a_reservation_goes_to_the_least_loaded_node_and_its_host_claims_it_there() {
    let (redis, _certs, nodes) = fleet(["default"; 3]).await;
    let dir = directory(&redis).await;
    // Three games on a, one on b, none on c.
    let mut hosts = Vec::new();
    for _ in 0..3 {
        hosts.push(host_on(&nodes[0]).await);
    }
    hosts.push(host_on(&nodes[1]).await);
    until_directory(&dir, "the load heartbeated", |n| {
        loads(n)
            == [
                ("a".to_owned(), 3, NodeState::Active),
                ("b".to_owned(), 1, NodeState::Active),
                ("c".to_owned(), 0, NodeState::Active),
            ]
            && n.iter().all(|n| n.admin_addr.is_some())
    })
    .await;

    // Asked on a, the busiest node: placed on c.
    let (status, answer, location) = reserve(&nodes[0], json!({ "max_peers": 4 })).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["node"], "c", "{answer}");
    assert_eq!(answer["address"], nodes[2].addr().to_string());
    assert_eq!(answer["server_name"], "localhost");
    let id = answer["allocation_id"].as_str().expect("allocation id");
    let token = answer["host_token"].as_str().expect("host token");
    let code = answer["join_code"].as_str().expect("join code");
    assert_eq!(
        location.as_deref(),
        Some(format!("{}/v1/allocations/{id}", nodes[2].admin_url()).as_str()),
        "Location is the allocation on c's admin API"
    );
    // It is c's: c lists it awaiting its host, a does not have it.
    let client = reqwest::Client::new();
    let on_c = client
        .get(format!("{}/v1/allocations/{id}", nodes[2].admin_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(on_c.status(), 200);
    let info: Value = on_c.json().await.unwrap();
    assert_eq!(
        (info["state"].as_str(), info["max_peers"].as_u64()),
        (Some("awaiting_host"), Some(4))
    );
    let on_a = client
        .get(format!("{}/v1/allocations/{id}", nodes[0].admin_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(on_a.status(), 404);

    // The host claims it at the address answered, with the host token.
    let address: SocketAddr = answer["address"].as_str().unwrap().parse().unwrap();
    let trust = Trust::Fingerprint(nodes[2].relay().fingerprint());
    let host = Host::claim(&ClientConfig::new(address, trust), id, token)
        .await
        .expect("the host claims the reservation on c");
    assert_eq!(host.relay_addr(), nodes[2].addr());
    assert_eq!(host.join_code().as_str(), code);
    // A player given the code joins through a and is sent to c.
    let peer = Peer::join(&nodes[0].client(), code)
        .await
        .expect("join through a");
    assert_eq!(peer.relay_addr(), nodes[2].addr(), "redirected to c");
    event_matching(
        &host,
        WAIT,
        |e| matches!(e, Event::PeerJoined { peer } if *peer == PeerId(1)),
    )
    .await;
    peer.send_to_host(b"placed").unwrap();
    assert_eq!(recv(&host).await, (PeerId(1), b"placed"[..].into()));

    // A forwarded request is served by the node it names or refused: never forwarded again.
    let refused = client
        .post(format!("{}/v1/allocations", nodes[1].admin_url()))
        .bearer_auth(TOKEN)
        .header("baton-forwarded-by", "a")
        .json(&json!({ "node": "c" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(
        nodes[1].relay().handle().counts().await.unwrap().0,
        1,
        "b reserved nothing"
    );
}

#[tokio::test]
async fn named_nodes_and_regions_are_honoured_and_draining_nodes_get_nothing() {
    let (redis, _certs, nodes) = fleet(["eu", "eu", "us"]).await;
    let dir = directory(&redis).await;
    // a is busier than b: eu's least-loaded node is b.
    let _games = [host_on(&nodes[0]).await, host_on(&nodes[0]).await];
    until_directory(&dir, "the load heartbeated", |n| {
        loads(n).iter().map(|(_, a, _)| *a).collect::<Vec<_>>() == [2, 0, 0]
            && n.iter().all(|n| n.admin_addr.is_some())
    })
    .await;

    // A named node, however busy, from another node.
    assert_eq!(
        placed_on(&nodes[1], &nodes, json!({ "node": "a" })).await,
        "a"
    );
    assert_eq!(
        placed_on(&nodes[0], &nodes, json!({ "node": "c" })).await,
        "c"
    );
    // A region: its least-loaded node.
    assert_eq!(
        placed_on(&nodes[2], &nodes, json!({ "region": "eu" })).await,
        "b"
    );
    assert_eq!(
        placed_on(&nodes[0], &nodes, json!({ "region": "us" })).await,
        "c"
    );

    // Typed refusals.
    let (status, answer, _) = reserve(&nodes[0], json!({ "region": "ap" })).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (503, Some("no_node_in_region")),
        "{answer}"
    );
    let (status, answer, _) = reserve(&nodes[0], json!({ "node": "zz" })).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("unknown_node")),
        "{answer}"
    );
    assert_eq!(answer["node"], "zz");
    let (status, answer, _) = reserve(&nodes[0], json!({ "node": "a", "region": "eu" })).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_request")),
        "{answer}"
    );

    // c drains: the directory says so within a heartbeat, and c gets nothing from then on.
    let drain = reqwest::Client::new()
        .post(format!("{}/v1/drain", nodes[2].admin_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(drain.status(), 202);
    until_directory(&dir, "c draining", |n| {
        n.iter()
            .any(|n| n.id.as_str() == "c" && n.state == NodeState::Draining)
    })
    .await;
    let (status, answer, _) = reserve(&nodes[0], json!({ "node": "c" })).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("node_unavailable")),
        "{answer}"
    );
    assert_eq!(answer["node"], "c");
    let (status, answer, _) = reserve(&nodes[1], json!({ "region": "us" })).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (503, Some("no_node_in_region")),
        "{answer}"
    );
    // Asked anywhere, c included, a reservation lands on an active node.
    for via in &nodes {
        let node = placed_on(via, &nodes, json!({})).await;
        assert_ne!(node, "c");
    }
}

/// A fake admin API on loopback: reads each request (headers and body) and answers `answer`,
/// or nothing at all (holding the connection) when `answer` is `None`.
async fn fake_admin(answer: Option<&'static [u8]>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let Some(answer) = answer else {
                held.push(stream);
                continue;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Until the headers' end and the body's length are read.
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let body: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + body {
                            break;
                        }
                    }
                }
                let _ = stream.write_all(answer).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// The directory record of a node that does not run, in `region`, with no load, whose admin
/// API is at `admin`.
fn phantom(id: &str, region: &str, admin: SocketAddr) -> NodeInfo {
    NodeInfo {
        id: NodeId::parse(id).unwrap(),
        addr: "127.0.0.1:9".parse().unwrap(),
        server_name: "localhost".into(),
        region: region.into(),
        state: NodeState::Active,
        allocations: 0,
        connections: 0,
        cpu_pct: 0.0,
        admin_addr: Some(admin.to_string()),
    }
}

#[tokio::test]
async fn forwards_that_fail_are_typed_and_only_unsent_ones_go_elsewhere() {
    let (redis, _certs, nodes) = fleet(["default"; 3]).await;
    let dir = directory(&redis).await;
    until_directory(&dir, "three nodes", |n| n.len() == 3).await;
    // Nodes the directory lists with no load (so, by id, before a, b and c), each alone in its
    // region, whose admin APIs are fakes: one never answers, one has another admin token, one
    // is not Baton.
    let silent = fake_admin(None).await;
    let other_token = fake_admin(Some(
        b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 48\r\n\r\n{\"error\":\"missing bearer\",\"code\":\"unauthorized\"}",
    ))
    .await;
    let not_baton = fake_admin(Some(
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\n\r\noops!",
    ))
    .await;
    let ttl = Duration::from_secs(60);
    for (id, admin) in [
        ("0-silent", silent),
        ("0-token", other_token),
        ("0-html", not_baton),
    ] {
        dir.heartbeat(&phantom(id, id, admin), ttl).await.unwrap();
    }
    for (region, status, code) in [
        ("0-token", 502, "forward_unauthorized"),
        ("0-html", 503, "node_unreachable"),
    ] {
        let (got, answer, _) = reserve(&nodes[0], json!({ "region": region })).await;
        assert_eq!(
            (got, answer["code"].as_str(), answer["node"].as_str()),
            (status, Some(code), Some(region)),
            "{answer}"
        );
    }
    // A node that takes the request and says nothing: the forward gives up after 2 s.
    let asked = Instant::now();
    let (status, answer, _) = reserve(&nodes[0], json!({ "node": "0-silent" })).await;
    let took = asked.elapsed();
    assert_eq!(
        (status, answer["code"].as_str(), answer["node"].as_str()),
        (503, Some("node_unreachable"), Some("0-silent")),
        "{answer}"
    );
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(4)).contains(&took),
        "the forward gave up after {took:?}"
    );
    // Unnamed: the first in load order ("0-html") failed after the request was sent, so it
    // may have reserved: no other node is tried.
    let (status, answer, _) = reserve(&nodes[0], json!({})).await;
    assert_eq!(
        (status, answer["code"].as_str(), answer["node"].as_str()),
        (503, Some("node_unreachable"), Some("0-html")),
        "{answer}"
    );
    for node in &nodes {
        assert_eq!(node.relay().handle().counts().await.unwrap().0, 0);
    }
}

#[tokio::test]
async fn a_node_whose_admin_api_is_down_is_named_or_passed_over() {
    let (redis, _certs, nodes) = fleet(["default"; 3]).await;
    let dir = directory(&redis).await;
    until_directory(&dir, "three nodes", |n| n.len() == 3).await;
    // A node the directory lists as the least loaded (its id sorts first) whose admin API
    // refuses connections: a port bound, then closed.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    dir.heartbeat(&phantom("0-ghost", "void", closed), Duration::from_secs(60))
        .await
        .unwrap();

    // Named, or the only node of its region: a typed 503 naming it.
    for body in [json!({ "node": "0-ghost" }), json!({ "region": "void" })] {
        let (status, answer, _) = reserve(&nodes[1], body.clone()).await;
        assert_eq!(
            (status, answer["code"].as_str(), answer["node"].as_str()),
            (503, Some("node_unreachable"), Some("0-ghost")),
            "{body}: {answer}"
        );
    }
    // Not named: it refused the connection before anything was sent, so the next node in
    // load order takes the reservation.
    let node = placed_on(&nodes[1], &nodes, json!({})).await;
    assert!(["a", "b", "c"].contains(&node.as_str()));
}
