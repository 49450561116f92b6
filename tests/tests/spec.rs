//! Points protocol/SPEC.md decides that a client author could otherwise only guess, checked
//! end to end over real QUIC on 127.0.0.1: what the certificate fingerprint hashes (against
//! Python's `ssl` and `hashlib`), the `STOP_SENDING` error code, who hears `PeerRejoined`, and
//! what `max_peers` 0 means.

use std::time::Duration;

use baton_client::{AllocationOptions, Error, Event, Host, Peer};
use baton_protocol::{stream_kind, ServerMessage};
use baton_tests::{event_matching, raw_connection, raw_join, TestRelay, WAIT};

/// SPEC 2.1: the fingerprint is SHA-256 of the leaf certificate's DER, printed as colon-separated
/// upper-case hex.
#[tokio::test]
async fn the_fingerprint_is_sha256_of_the_leaf_certificate_der() {
    let relay = TestRelay::start().await;
    let program = "import hashlib, ssl, sys\n\
                   der = ssl.PEM_cert_to_DER_cert(open(sys.argv[1]).read())\n\
                   print(hashlib.sha256(der).hexdigest())";
    let out = std::process::Command::new("python3")
        .args(["-c", program])
        .arg(relay.relay().cert_path())
        .output()
        .expect("python3 runs (CI installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python = String::from_utf8(out.stdout).expect("utf-8");
    let ours = relay.relay().fingerprint();
    assert_eq!(python.trim(), hex::encode(ours));
    let printed = baton_relay::tls::fingerprint_hex(&ours);
    assert_eq!(printed.replace(':', "").to_ascii_lowercase(), python.trim());
    assert_eq!(printed.len(), 32 * 3 - 1);
}

/// SPEC 2.5: a stream the relay will not read is stopped with application error code 0.
#[tokio::test]
async fn a_refused_upload_is_stopped_with_code_0() {
    let relay = TestRelay::start().await;
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("created");
    let conn = raw_connection(&relay, |_| {}).await;
    let (_send, mut recv, reply) = raw_join(&conn, host.join_code()).await;
    assert!(matches!(reply, ServerMessage::Joined { .. }), "{reply:?}");
    // A peer, not the host: its upload is stopped before it is read.
    let mut upload = conn.open_uni().await.expect("uni stream");
    upload
        .write_all(&[stream_kind::SNAPSHOT, 1, 2, 3])
        .await
        .expect("write");
    let stopped = tokio::time::timeout(WAIT, upload.stopped())
        .await
        .expect("stopped in time")
        .expect("stream state");
    assert_eq!(stopped, Some(quinn::VarInt::from_u32(0)));
    let event = baton_tests::raw_read(&mut recv).await;
    assert!(
        matches!(event, ServerMessage::SnapshotRejected { .. }),
        "{event:?}"
    );
}

/// SPEC 5.3: a member that takes its id back with `Rejoin` is announced to every other member,
/// not only to the host.
#[tokio::test]
async fn peer_rejoined_reaches_every_other_member() {
    let relay = TestRelay::start().await;
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("created");
    let code = host.join_code();
    let stays = Peer::join(&relay.client(), code).await.expect("joins");
    let leaves = Peer::join(&relay.client(), code).await.expect("joins");
    let token = leaves.reconnect_token();
    leaves.close().await;
    let mut back = None;
    for _ in 0..100 {
        match Peer::rejoin(&relay.client(), &token).await {
            // The relay has not seen the old connection go yet.
            Err(Error::AlreadyBound) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => {
                back = Some(other.expect("rejoins"));
                break;
            }
        }
    }
    let back = back.expect("rejoined within 2 s");
    for session in [host.session(), stays.session()] {
        let event = event_matching(
            session,
            WAIT,
            |e| matches!(e, Event::PeerRejoined { peer } if *peer == back.local_peer()),
        )
        .await;
        assert_eq!(
            event,
            Event::PeerRejoined {
                peer: back.local_peer()
            }
        );
    }
}

/// SPEC 5.2: `max_peers` 0 asks for the relay's configured maximum, which also caps any larger
/// request.
#[tokio::test]
async fn max_peers_0_is_the_relays_configured_maximum() {
    let relay = TestRelay::start_with(|c| {
        c.set_max_peers_per_allocation(40).expect("max peers");
    })
    .await;
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("created");
    assert_eq!(host.max_peers(), 40);
    let host = Host::create(
        &relay.client(),
        AllocationOptions::default().max_peers(1000),
    )
    .await
    .expect("created");
    assert_eq!(host.max_peers(), 40);
}

/// SPEC 14.3: the new host keeps its reconnect token through a migration (its peer id,
/// lineage and subject are unchanged); only the allocation it names moves on.
#[tokio::test]
async fn the_new_hosts_reconnect_token_survives_the_migration() {
    let relay = TestRelay::start().await;
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("created");
    let code = host.join_code();
    let a = Peer::join(&relay.client(), code).await.expect("joins");
    let b = Peer::join(&relay.client(), code).await.expect("joins");
    let before = [a.reconnect_token(), b.reconnect_token()];
    host.close().await;
    let mut new_host = None;
    for peer in [&a, &b] {
        let event = event_matching(peer.session(), WAIT, |e| {
            matches!(e, Event::HostMigrated { .. })
        })
        .await;
        if let Event::HostMigrated {
            you_are_host: true, ..
        } = event
        {
            new_host = Some(peer);
        }
    }
    let new_host = new_host.expect("one of them hosts now");
    let index = usize::from(std::ptr::eq(new_host, &b));
    let after = new_host.reconnect_token();
    assert_eq!(after.peer, before[index].peer);
    assert_eq!(after.token, before[index].token);
    assert_ne!(
        after.allocation, before[index].allocation,
        "the allocation moved on"
    );
}
