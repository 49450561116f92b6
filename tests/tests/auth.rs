//! Access control end to end, over real QUIC on 127.0.0.1: a relay started with an auth secret
//! refuses creates and joins without a valid credential (each refusal typed in the SDK),
//! accepts lobby-minted ones (also the README's Python minting code), shows each member's
//! subject in the admin API and the lobby events, and closes a client of the retired `baton/1` or `baton/2`
//! with a clear reason.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_client::{AllocationOptions, CredentialRefusal, DisconnectReason, Error, Host, Peer};
use baton_protocol::credential::{self, Claims, Scope};
use baton_protocol::{AllocationId, JoinCode};
use baton_relay::auth::AuthSecrets;
use baton_tests::{TestRelay, WAIT};
use serde_json::Value;

const SECRET: &str = "auth-test-secret-of-at-least-32-bytes";
const OLD_SECRET: &str = "the-previous-secret-still-accepted!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn mint_with(secret: &str, subject: &str, scope: Scope, expires: u64) -> String {
    let claims = Claims {
        expires,
        subject: subject.into(),
        scope,
    };
    credential::mint(secret.as_bytes(), &claims).expect("mint")
}

fn mint(subject: &str, scope: Scope) -> String {
    mint_with(SECRET, subject, scope, now() + 600)
}

async fn closed_relay() -> TestRelay {
    TestRelay::start_with(|c| {
        c.auth_secrets =
            AuthSecrets::new(vec![SECRET.into(), OLD_SECRET.into()]).expect("auth secrets");
    })
    .await
}

fn refusal<T: std::fmt::Debug>(result: Result<T, Error>) -> CredentialRefusal {
    match result {
        Err(Error::CredentialRefused(reason)) => reason,
        other => panic!("expected a credential refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_closed_relay_refuses_each_bad_credential_with_its_reason() {
    let relay = closed_relay().await;
    let config = relay.client();
    let create = |config: baton_client::ClientConfig| async move {
        tokio::time::timeout(WAIT, Host::create(&config, AllocationOptions::default()))
            .await
            .expect("answered in time")
    };
    assert_eq!(
        refusal(create(config.clone()).await),
        CredentialRefusal::Missing
    );
    let cases = [
        ("AAAA".to_owned(), CredentialRefusal::Malformed),
        (
            mint_with(&"x".repeat(32), "p", Scope::Create, now() + 600),
            CredentialRefusal::BadSignature,
        ),
        (
            mint_with(SECRET, "p", Scope::Create, now() - 120),
            CredentialRefusal::Expired,
        ),
        (
            mint(
                "p",
                Scope::JoinCode(JoinCode::parse("BCDF78").expect("code")),
            ),
            CredentialRefusal::WrongScope,
        ),
    ];
    for (text, want) in cases {
        let got = refusal(create(config.clone().credential(text)).await);
        assert_eq!(got, want);
    }
    // Each refusal was counted by its reason.
    let metrics = relay.metrics().await;
    for reason in [
        "missing",
        "malformed",
        "bad_signature",
        "expired",
        "wrong_scope",
    ] {
        let name = format!("baton_credentials_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(metrics.value(&name), 1.0, "{name}");
    }
    // Both configured secrets verify: the current one and the one being rotated out.
    for secret in [SECRET, OLD_SECRET] {
        let text = mint_with(secret, "host", Scope::Create, now() + 600);
        create(config.clone().credential(text))
            .await
            .expect("created");
    }
}

#[tokio::test]
async fn members_carry_their_subject_to_the_admin_api_and_lobby_events() {
    let relay = closed_relay().await;
    let host_config = relay.client().credential(mint("alice", Scope::Create));
    let host = Host::create(&host_config, AllocationOptions::default())
        .await
        .expect("created");
    let code = host.join_code();
    let events = tokio::spawn(read_events(relay.admin_url(), 2));
    // A join without a credential, or with one for another code, is refused.
    let other = JoinCode::parse("GHJK99").expect("code");
    assert_eq!(
        refusal(Peer::join(&relay.client(), code).await),
        CredentialRefusal::Missing
    );
    let wrong = mint("bob", Scope::JoinCode(other));
    assert_eq!(
        refusal(Peer::join_with_credential(&relay.client(), code, &wrong).await),
        CredentialRefusal::WrongScope
    );
    let bob =
        Peer::join_with_credential(&relay.client(), code, &mint("bob", Scope::JoinCode(code)))
            .await
            .expect("bob joins");

    let url = format!("{}/v1/allocations/{}", relay.admin_url(), host.allocation());
    let view: Value = reqwest::get(url)
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    let subjects: Vec<(u64, &str)> = view["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["peer"].as_u64().expect("peer"),
                m["subject"].as_str().expect("subject"),
            )
        })
        .collect();
    assert_eq!(
        subjects,
        [(0, "alice"), (u64::from(bob.local_peer().0), "bob")]
    );

    let joined = tokio::time::timeout(WAIT, events)
        .await
        .expect("events in time")
        .expect("event reader");
    assert_eq!(
        joined,
        [
            (0, Some("alice".into())),
            (bob.local_peer().0, Some("bob".into()))
        ]
    );
}

/// The peer and subject of the first `count` `peer.joined` events of the relay's event
/// stream, from its start.
async fn read_events(admin: String, count: usize) -> Vec<(u16, Option<String>)> {
    let mut response = reqwest::Client::new()
        .get(format!("{admin}/v1/events"))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .expect("event stream");
    let mut buf = String::new();
    let mut found = Vec::new();
    while found.len() < count {
        let chunk = response
            .chunk()
            .await
            .expect("stream")
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            for line in frame.lines() {
                let Some(json) = line.strip_prefix("data:") else {
                    continue;
                };
                let event: Value = serde_json::from_str(json.trim()).expect("event JSON");
                if event["type"] == "peer.joined" {
                    let peer = event["peer"].as_u64().expect("peer");
                    let subject = event["subject"].as_str().map(str::to_owned);
                    found.push((u16::try_from(peer).expect("peer id"), subject));
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn an_allocation_scoped_credential_joins_and_a_rejoin_needs_the_same_subject() {
    let relay = closed_relay().await;
    let host_config = relay.client().credential(mint("alice", Scope::Create));
    let host = Host::create(&host_config, AllocationOptions::default())
        .await
        .expect("created");
    let scope = Scope::Allocation(AllocationId(host.allocation().0));
    let bob_config = relay.client().credential(mint("bob", scope));
    let bob = Peer::join(&bob_config, host.join_code())
        .await
        .expect("bob joins");
    let token = bob.reconnect_token();
    bob.close().await;
    // Mallory holds bob's token but not bob's credential.
    let mallory = relay.client().credential(mint("mallory", scope));
    let mut refused = None;
    for _ in 0..50 {
        match Peer::rejoin(&mallory, &token).await {
            // The old connection may still be held for a moment.
            Err(Error::AlreadyBound) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    assert!(
        matches!(refused, Some(Err(Error::Unauthorized))),
        "{refused:?}"
    );
    let back = Peer::rejoin(&bob_config, &token)
        .await
        .expect("bob rejoins");
    assert_eq!(back.local_peer(), token.peer);
}

#[tokio::test]
async fn the_readme_python_minting_code_makes_credentials_the_relay_accepts() {
    let readme = include_str!("../../README.md");
    let section = readme
        .find("### Access control")
        .expect("README has an access control section");
    let start = section
        + readme[section..]
            .find("```python\n")
            .expect("README has a Python minting snippet")
        + "```python\n".len();
    let snippet = &readme[start..start + readme[start..].find("```").expect("closed")];
    assert!(snippet.contains("def mint("), "the snippet defines mint()");

    let relay = closed_relay().await;
    let python = |subject: &str, scope: &str| {
        let program =
            format!("{snippet}\nprint(mint({SECRET:?}.encode(), {subject:?}, {scope:?}))\n");
        let out = std::process::Command::new("python3")
            .args(["-c", &program])
            .stderr(Stdio::inherit())
            .output()
            .expect("python3 runs (CI installs it)");
        assert!(out.status.success(), "python3 failed");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let host_config = relay.client().credential(python("py-host", "create"));
    let host = Host::create(&host_config, AllocationOptions::default())
        .await
        .expect("a Python-minted create credential is accepted");
    let code = host.join_code();
    let by_code = python("py-peer", &format!("code:{code}"));
    Peer::join_with_credential(&relay.client(), code, &by_code)
        .await
        .expect("a Python-minted code credential is accepted");
    let by_alloc = python("py-peer-2", &format!("allocation:{}", host.allocation()));
    Peer::join_with_credential(&relay.client(), code, &by_alloc)
        .await
        .expect("a Python-minted allocation credential is accepted");
    assert_eq!(
        refusal(Peer::join_with_credential(&relay.client(), code, &python("x", "create")).await),
        CredentialRefusal::WrongScope
    );
}

#[tokio::test]
async fn clients_of_retired_versions_are_closed_with_a_clear_reason() {
    let relay = TestRelay::start().await;
    for retired in [&b"baton/1"[..], &b"baton/2"[..]] {
        let config = relay.client().alpn(retired.to_vec());
        let result =
            tokio::time::timeout(WAIT, Host::create(&config, AllocationOptions::default()))
                .await
                .expect("answered in time");
        assert!(
            matches!(
                result,
                Err(Error::Disconnected(DisconnectReason::UnsupportedVersion))
            ),
            "{}: {result:?}",
            String::from_utf8_lossy(retired)
        );
    }
    // A current client on the same relay is served.
    Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("baton/3 is served");
}

#[tokio::test]
async fn an_open_relay_ignores_credentials() {
    let relay = TestRelay::start().await;
    let config = relay
        .client()
        .credential(mint_with(&"z".repeat(32), "p", Scope::Create, 1));
    let host = Host::create(&config, AllocationOptions::default())
        .await
        .expect("an open relay does not check");
    Peer::join(&relay.client(), host.join_code())
        .await
        .expect("nor asks for one");
}
