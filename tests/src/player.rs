//! A game client for its own OS process (`baton-player`, or any program that re-executes
//! itself with [`PlayerArgs`]), for migration tests, the demo and the migration
//! benchmark: hosts an allocation or joins one by code, plays at a game's tick rate, and
//! reports what happens to it as JSON lines on stdout, each stamped with the wall clock in
//! microseconds since the Unix epoch (`t_us`), so a parent process on the same machine can
//! time a migration across processes.
//!
//! Other reports: `peer_joined`, `peer_rejoined` and `peer_left` (`peer`, and `reason`),
//! `snapshot_stored`, `closing`, `disconnected` (`reason`), and `event` (`what`) for the rest.
//!
//! Traffic: the host broadcasts a tick every `1/rate` s; every other member sends one to the
//! host. A member records the first datagram from the new host after a migration
//! (`first_from_host`), and a new host the first from each member (`first_from_peer`).
//!
//! Commands on stdin, one per line: `close` (leave cleanly and exit), `snapshot` (upload the
//! snapshot again). End of input closes too. The process also exits by itself after
//! `--max-secs`.
//!
//! ```text
//! baton-player --relay 127.0.0.1:7700 --fingerprint HEX host --snapshot-bytes 65536
//! baton-player --relay 127.0.0.1:7700 --fingerprint HEX join BCDF78
//! baton-player --relay 127.0.0.1:7700 --fingerprint HEX rejoin ALLOC.PEER.TOKEN
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::snapshot_bytes;
use anyhow::Context;
use baton_client::{
    AllocationOptions, ClientConfig, Error, Event, Host, Peer, PeerId, ReconnectToken, Session,
    Trust,
};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Command line of a player.
#[derive(Debug, Clone, Parser)]
#[command(about = "A Baton game client reporting its session as JSON lines")]
pub struct PlayerArgs {
    /// The relay's QUIC address.
    #[arg(long)]
    pub relay: SocketAddr,
    /// SHA-256 fingerprint of the relay's certificate, in hex.
    #[arg(long)]
    pub fingerprint: String,
    /// Datagrams per second (the game's tick rate).
    #[arg(long, default_value_t = 60)]
    pub rate: u32,
    /// SDK keepalive interval in milliseconds (must be below the relay's keepalive timeout).
    #[arg(long, default_value_t = 2000)]
    pub keepalive_ms: u64,
    /// Exit by itself after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub max_secs: u64,
    /// What to be.
    #[command(subcommand)]
    pub role: Role,
}

/// How the client enters the game.
#[derive(Debug, Clone, Subcommand)]
pub enum Role {
    /// Create an allocation and host it.
    Host {
        /// Upload a snapshot of this many bytes (`baton_tests::snapshot_bytes`) once the allocation
        /// exists; 0 uploads none.
        #[arg(long, default_value_t = 0)]
        snapshot_bytes: usize,
    },
    /// Join an allocation by code.
    Join {
        /// The join code.
        code: String,
    },
    /// Come back with a reconnect token (`ALLOC.PEER.TOKEN`).
    Rejoin {
        /// The token.
        token: String,
    },
}

/// Microseconds since the Unix epoch.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Prints one report line.
fn report(event: &str, mut fields: Value) {
    if let Value::Object(map) = &mut fields {
        map.insert("t_us".into(), json!(now_us()));
        map.insert("event".into(), json!(event));
    }
    println!("{fields}");
}

/// Runs a player until it is told to close, its session ends, or `--max-secs` pass.
///
/// # Errors
/// If the client cannot enter the game (connect, create, join) or upload its snapshot.
pub async fn run(args: PlayerArgs) -> anyhow::Result<()> {
    let config = ClientConfig::new(args.relay, Trust::fingerprint_hex(&args.fingerprint)?)
        .keep_alive_interval(Duration::from_millis(args.keepalive_ms));
    let mut snapshot = Vec::new();
    let session: Session = match &args.role {
        Role::Host { snapshot_bytes: n } => {
            let host = Host::create(&config, AllocationOptions::default())
                .await
                .context("create allocation")?;
            snapshot = snapshot_bytes(*n);
            host.into_session()
        }
        Role::Join { code } => Peer::join(&config, code.as_str())
            .await
            .context("join")?
            .into_session(),
        Role::Rejoin { token } => {
            let token: ReconnectToken = token.parse()?;
            Peer::rejoin(&config, &token)
                .await
                .context("rejoin")?
                .into_session()
        }
    };
    report(
        "ready",
        json!({
            "peer": session.local_peer().0,
            "host": session.host().map(|h| h.0),
            "allocation": session.allocation().to_string(),
            "code": session.join_code().map(|c| c.to_string()),
            "token": session.reconnect_token().to_string(),
        }),
    );
    if !snapshot.is_empty() {
        let len = session.upload_snapshot(snapshot.clone()).await?;
        report("snapshot_stored", json!({ "len": len }));
    }
    play(&session, &args, &snapshot).await
}

/// Plays until told to close, the session ends, or `--max-secs` pass.
async fn play(session: &Session, args: &PlayerArgs, snapshot: &[u8]) -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let deadline = tokio::time::sleep(Duration::from_secs(args.max_secs));
    tokio::pin!(deadline);
    let mut seq = 0u64;
    // After a migration: whether the new host was heard from, and which members were.
    let mut awaiting_host = false;
    let mut heard: Option<HashSet<PeerId>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                let payload = seq.to_be_bytes();
                let sent = if session.is_host() {
                    session.broadcast(&payload)
                } else {
                    session.send_to_host(&payload)
                };
                match sent {
                    Ok(()) | Err(Error::HostMigrating) => {}
                    Err(e) => report("send_failed", json!({ "error": e.to_string() })),
                }
            }
            datagram = session.recv() => {
                let Ok((from, _)) = datagram else { continue };
                if awaiting_host && Some(from) == session.host() {
                    awaiting_host = false;
                    report("first_from_host", json!({ "host": from.0 }));
                }
                if let Some(heard) = &mut heard {
                    if heard.insert(from) {
                        report("first_from_peer", json!({ "peer": from.0 }));
                    }
                }
            }
            event = session.next_event() => match event {
                Some(Event::HostLost { host, reason, elected }) => report(
                    "host_lost",
                    json!({ "host": host.0, "reason": reason.to_string(), "elected": elected.map(|e| e.0) }),
                ),
                Some(Event::HostMigrated { allocation, new_host, you_are_host, snapshot: got }) => {
                    report("host_migrated", json!({
                        "allocation": allocation.to_string(),
                        "new_host": new_host.0,
                        "you_are_host": you_are_host,
                        "snapshot_len": got.as_ref().map(|s| s.len()),
                        "snapshot_matches": got.as_ref().map(|s| s[..] == snapshot_bytes(s.len())[..]),
                    }));
                    if you_are_host {
                        heard = Some(HashSet::new());
                    } else {
                        awaiting_host = true;
                    }
                }
                Some(Event::PeerJoined { peer }) => report("peer_joined", json!({ "peer": peer.0 })),
                Some(Event::PeerRejoined { peer }) => report("peer_rejoined", json!({ "peer": peer.0 })),
                Some(Event::PeerLeft { peer, reason }) => report(
                    "peer_left",
                    json!({ "peer": peer.0, "reason": reason.to_string() }),
                ),
                Some(Event::Disconnected { reason }) => {
                    report("disconnected", json!({ "reason": reason.to_string() }));
                    return Ok(());
                }
                Some(event) => report("event", json!({ "what": event.to_string() })),
                None => return Ok(()),
            },
            line = stdin.next_line() => match line {
                Ok(Some(command)) if command.trim() == "snapshot" => {
                    match session.upload_snapshot(snapshot.to_vec()).await {
                        Ok(len) => report("snapshot_stored", json!({ "len": len })),
                        Err(e) => report("snapshot_failed", json!({ "error": e.to_string() })),
                    }
                }
                Ok(Some(command)) if command.trim() != "close" => {
                    report("unknown_command", json!({ "command": command }));
                }
                // `close`, end of input, or an unreadable stdin.
                _ => {
                    report("closing", json!({}));
                    session.close().await;
                    return Ok(());
                }
            },
            () = &mut deadline => {
                session.close().await;
                return Ok(());
            }
        }
    }
}
