//! What arrives at a player: every datagram checked against its payload header (right game,
//! destination and sender stamp, intact, no duplicate, gaps counted per flow), and every SDK
//! event turned into a [`Report`].
//!
//! Runs on the player's task, from [`Player::play`].

use std::collections::HashSet;

use baton_client::{Event, PeerId};
use bytes::Bytes;

use super::payload::{self, Arrival, BROADCAST};
use super::play::Player;
use super::snapshot;
use super::{now_us, Report, MAX_LATENCY_SAMPLES};

/// Allocation ids a player reports seeing at most ([`Report::AllocSeen`]).
const MAX_ALLOCS_SEEN: usize = 1024;

impl Player<'_> {
    /// Checks one received datagram.
    pub(super) async fn on_datagram(&mut self, from: PeerId, bytes: &Bytes) {
        let now = now_us();
        let me = self.session.local_peer().0;
        if self.awaiting_host && Some(from) == self.session.host() {
            self.awaiting_host = false;
            self.sink.send(Report::FirstFromHost { host: from.0 }).await;
        }
        if let Some(heard) = &mut self.heard {
            if heard.insert(from) {
                self.sink.send(Report::FirstFromPeer { peer: from.0 }).await;
            }
        }
        let game = self.args.game;
        let header = match payload::decode(bytes) {
            Ok(h) => h,
            Err(e) => {
                let what = format!("peer {me} of game {game} got a bad datagram from {from}: {e}");
                self.sink.send(Report::Violation { what }).await;
                return;
            }
        };
        self.received += 1;
        self.last_from.insert(from.0, now);
        let mut wrong = Vec::new();
        if header.game != game {
            wrong.push(format!("it belongs to game {}", header.game));
        }
        if header.sender != from.0 {
            wrong.push(format!(
                "the relay stamped sender {from} but peer {} sent it",
                header.sender
            ));
        }
        if header.dest != BROADCAST && header.dest != me {
            wrong.push(format!("it was addressed to peer {}", header.dest));
        }
        if from.0 == me {
            wrong.push("it came from this client itself".to_owned());
        }
        if !wrong.is_empty() {
            let what = format!(
                "misdelivery: peer {me} (uid {}) of game {game} got seq {} from uid {} (alloc {:016x}): {}",
                self.uid,
                header.seq,
                header.uid,
                header.alloc,
                wrong.join("; ")
            );
            self.sink.send(Report::Violation { what }).await;
            return;
        }
        if self.allocs_seen.len() < MAX_ALLOCS_SEEN && self.allocs_seen.insert(header.alloc) {
            self.sink
                .send(Report::AllocSeen {
                    alloc: header.alloc,
                    sender: from.0,
                })
                .await;
        }
        let latency = now.saturating_sub(header.sent_us);
        self.sink.record_latency(latency);
        if self.sink.is_stdout() && self.latencies.len() < MAX_LATENCY_SAMPLES {
            self.latencies.push(latency);
        }
        match self.flows.arrive(&header, now) {
            Arrival::First | Arrival::InOrder => {}
            Arrival::Late => self.late += 1,
            Arrival::Gap { lost, prev_us } => {
                self.sink
                    .send(Report::Gap {
                        sender: from.0,
                        lost,
                        prev_us,
                        now_us: now,
                    })
                    .await;
            }
            Arrival::Duplicate => {
                let what = format!(
                    "duplicate: peer {me} of game {game} got seq {} from peer {from} (uid {}) twice",
                    header.seq, header.uid
                );
                self.sink.send(Report::Violation { what }).await;
            }
        }
    }

    /// Reports a session event; true when the session has ended.
    pub(super) async fn on_event(&mut self, event: Event) -> bool {
        let report = match event {
            Event::PeerJoined { peer } => Report::PeerJoined { peer: peer.0 },
            Event::PeerLeft { peer, reason } => Report::PeerLeft {
                peer: peer.0,
                reason: reason.to_string(),
            },
            Event::HostLost {
                host,
                reason,
                elected,
            } => Report::HostLost {
                host: host.0,
                reason: reason.to_string(),
                elected: elected.map(|e| e.0),
            },
            Event::HostMigrated {
                allocation,
                new_host,
                you_are_host,
                snapshot,
            } => {
                let (snapshot_matches, snapshot_from) = match snapshot.as_deref() {
                    None => (None, None),
                    Some(bytes) => self.check_snapshot(bytes).await,
                };
                if you_are_host {
                    self.heard = Some(HashSet::new());
                } else {
                    self.awaiting_host = true;
                }
                Report::HostMigrated {
                    allocation: allocation.to_string(),
                    new_host: new_host.0,
                    you_are_host,
                    members: self.session.members().iter().map(|p| p.0).collect(),
                    snapshot_len: snapshot.as_ref().map(|s| s.len()),
                    snapshot_matches,
                    snapshot_from,
                }
            }
            Event::PeerRejoined { peer } => Report::PeerRejoined { peer: peer.0 },
            Event::Resumed { relay } => Report::Resumed {
                relay,
                host: self.session.host().map(|h| h.0),
            },
            Event::Relocated { relay } => Report::Relocated {
                relay,
                host: self.session.host().map(|h| h.0),
            },
            Event::PathChanged { peer, path, rtt } => Report::PathChanged {
                peer: peer.0,
                path: path.to_string(),
                rtt_us: u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX),
            },
            Event::DatagramsDropped { reason, count, .. } if self.stats_on() => {
                *self.relay_drops.entry(reason.to_string()).or_default() += u64::from(count);
                return false;
            }
            Event::Disconnected { reason } => {
                self.sink
                    .send(Report::Disconnected {
                        reason: reason.to_string(),
                    })
                    .await;
                return true;
            }
            other => Report::Other {
                what: other.to_string(),
            },
        };
        self.sink.send(report).await;
        false
    }

    /// Whether the snapshot a new host got is what this game's hosts upload, and with
    /// `--game-snapshots` who uploaded it (a foreign or damaged one is a violation).
    async fn check_snapshot(&self, bytes: &[u8]) -> (Option<bool>, Option<u64>) {
        if !self.args.game_snapshots {
            return (Some(snapshot::is_pattern(bytes)), None);
        }
        match snapshot::parse_tagged(bytes) {
            Some((game, uid)) if game == self.args.game => (Some(true), Some(uid)),
            other => {
                let what = format!(
                    "game {} got a foreign or damaged snapshot on migration: {other:?}",
                    self.args.game
                );
                self.sink.send(Report::Violation { what }).await;
                (Some(false), None)
            }
        }
    }
}
