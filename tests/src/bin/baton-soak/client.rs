//! One soak client: an SDK session that plays a game at a fixed tick rate and checks every
//! datagram it receives. The same code runs inside the soak process (a tokio task) and in a
//! child process of its own (the hidden `player` subcommand), which the soak can SIGKILL to
//! simulate a crash the relay only notices as silence.
//!
//! Traffic per tick, like a client-hosted game: the host broadcasts its state; every other
//! member sends its input to the host, and every `p2p_every` ticks also one datagram straight
//! to another member. Each payload names its game, allocation, sender and destination
//! ([`crate::payload`]). While host, a client also stages a migration snapshot now and then,
//! which a new host must receive after a migration.
//!
//! What happens is reported as [`Report`]s: over a channel to the game's task in-process, or
//! as JSON lines on stdout from a child process. Datagram checks happen here, at the receiver;
//! what they find is reported at once ([`Report::Violation`], [`Report::Gap`]), counters every
//! [`STATS_EVERY`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_client::{
    AllocationOptions, ClientConfig, Error, Event, Host, Peer, PeerId, ReconnectToken, Session,
    Trust,
};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::payload::{self, Arrival, Flows, Header, BROADCAST};
use crate::util::now_us;

/// How often a client reports its counters.
pub const STATS_EVERY: Duration = Duration::from_millis(500);

/// Attempts at entering a game when the relay answers "rate limited" or "migrating".
const ENTRY_ATTEMPTS: u32 = 10;

/// Size of the migration snapshot a host stages.
const SNAPSHOT_LEN: usize = 2048;

/// Ticks between two staged snapshots (the SDK uploads at most one a second anyway).
const SNAPSHOT_EVERY_TICKS: u64 = 10;

/// How a client enters its game.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Entry {
    /// Create an allocation and host it.
    Host,
    /// Join by code.
    Join {
        /// The join code.
        code: String,
    },
    /// Come back under an old peer id with a reconnect token (`ALLOC.PEER.TOKEN`).
    Rejoin {
        /// The token.
        token: String,
    },
}

/// Everything a client needs; also the command line of the hidden `player` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientSpec {
    /// The relay's QUIC address.
    #[arg(long)]
    pub relay: SocketAddr,
    /// SHA-256 fingerprint of the relay's certificate.
    #[arg(long)]
    pub fingerprint: String,
    /// The soak's game id.
    #[arg(long)]
    pub game: u32,
    /// The soak's id of this client instance.
    #[arg(long)]
    pub uid: u64,
    /// Ticks per second.
    #[arg(long)]
    pub rate: u32,
    /// Payload bytes per datagram.
    #[arg(long)]
    pub payload: usize,
    /// SDK keepalive interval, milliseconds.
    #[arg(long)]
    pub keepalive_ms: u64,
    /// Send a datagram straight to another member every this many ticks (0: never).
    #[arg(long)]
    pub p2p_every: u64,
    /// Leave by itself after this many seconds (a bound, in case the soak loses track).
    #[arg(long)]
    pub max_secs: u64,
    /// How to enter the game.
    #[command(subcommand)]
    pub entry: Entry,
}

impl ClientSpec {
    /// The command-line arguments of a `player` process running this spec.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "player".to_owned(),
            "--relay".to_owned(),
            self.relay.to_string(),
            "--fingerprint".to_owned(),
            self.fingerprint.clone(),
            "--game".to_owned(),
            self.game.to_string(),
            "--uid".to_owned(),
            self.uid.to_string(),
            "--rate".to_owned(),
            self.rate.to_string(),
            "--payload".to_owned(),
            self.payload.to_string(),
            "--keepalive-ms".to_owned(),
            self.keepalive_ms.to_string(),
            "--p2p-every".to_owned(),
            self.p2p_every.to_string(),
            "--max-secs".to_owned(),
            self.max_secs.to_string(),
        ];
        match &self.entry {
            Entry::Host => args.push("host".to_owned()),
            Entry::Join { code } => args.extend(["join".to_owned(), code.clone()]),
            Entry::Rejoin { token } => args.extend(["rejoin".to_owned(), token.clone()]),
        }
        args
    }
}

/// What a client tells its game's task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Report {
    /// In the game.
    Ready {
        /// Own peer id.
        peer: u16,
        /// Allocation id.
        alloc: u64,
        /// Join code, when known.
        code: Option<String>,
        /// Reconnect token, `ALLOC.PEER.TOKEN`.
        token: String,
        /// The host, as the session sees it.
        host: Option<u16>,
        /// The members, as the session sees them (self and host included).
        members: Vec<u16>,
    },
    /// Could not enter the game.
    Fatal {
        /// Why.
        error: String,
    },
    /// Counters since the previous report.
    Stats {
        /// Datagrams handed to QUIC.
        sent: u64,
        /// Deliveries those datagrams should make (a broadcast counts once per other member).
        deliveries: u64,
        /// Soak datagrams received.
        received: u64,
        /// Datagrams that arrived after a later one of their flow.
        late: u64,
        /// Per sender peer id, when its latest datagram arrived (Unix µs).
        last_from: Vec<(u16, u64)>,
        /// Datagrams the relay reported dropping, by reason.
        relay_drops: Vec<(String, u64)>,
        /// SDK events dropped because the queue was full.
        dropped_events: u64,
    },
    /// Datagrams missing from one flow.
    Gap {
        /// The sender's peer id.
        sender: u16,
        /// How many.
        lost: u64,
        /// Arrival of the datagram before the gap (Unix µs).
        prev_us: u64,
        /// Arrival of the datagram after it (Unix µs).
        now_us: u64,
    },
    /// Something the relay must never do (wrong destination, wrong game, spoofed sender,
    /// corrupted or duplicated datagram, a foreign snapshot).
    Violation {
        /// What.
        what: String,
    },
    /// A datagram named an allocation id this client had not seen in a payload before.
    AllocSeen {
        /// The allocation id.
        alloc: u64,
        /// Who sent it.
        sender: u16,
    },
    /// [`Event::PeerJoined`].
    PeerJoined {
        /// Who.
        peer: u16,
    },
    /// [`Event::PeerLeft`].
    PeerLeft {
        /// Who.
        peer: u16,
        /// Why (`closed`, `timed_out`, ...).
        reason: String,
    },
    /// [`Event::HostLost`].
    HostLost {
        /// The lost host.
        host: u16,
        /// Why.
        reason: String,
        /// Who takes over.
        elected: Option<u16>,
    },
    /// [`Event::HostMigrated`].
    HostMigrated {
        /// The successor allocation.
        alloc: u64,
        /// The new host.
        new_host: u16,
        /// Whether that is this client.
        you_are_host: bool,
        /// The members as the session sees them right after the event.
        members: Vec<u16>,
        /// The snapshot delivered to the new host: its uploader's uid.
        snapshot_from: Option<u64>,
    },
    /// [`Event::PeerRejoined`].
    PeerRejoined {
        /// Who.
        peer: u16,
    },
    /// [`Event::Disconnected`]: the session ended.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// Any other event.
    Other {
        /// The event, as text.
        what: String,
    },
    /// Left cleanly, on request.
    Closed,
    /// (Added by the soak for a child process) its output ended.
    Exited {
        /// Exit status and the end of its stderr.
        detail: String,
    },
}

/// What the game's task can tell a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Leave cleanly ([`Session::close`]) and stop.
    Close,
}

/// Where a client's reports go.
pub enum Sink {
    /// To the game's task in this process; latencies go into the shared histogram.
    Channel {
        /// The client's uid, sent along with each report.
        uid: u64,
        /// The game's report channel.
        tx: mpsc::Sender<(u64, Report)>,
        /// One-way latency histogram, microseconds.
        latency: Arc<Mutex<Histogram<u64>>>,
    },
    /// As JSON lines on stdout (a child process).
    Stdout,
}

impl Sink {
    /// Delivers one report. A child whose parent stopped reading exits.
    async fn send(&self, report: Report) {
        match self {
            Sink::Channel { uid, tx, .. } => {
                // The game's task may be gone at the end of the run; nothing to tell then.
                let _ = tx.send((*uid, report)).await;
            }
            Sink::Stdout => {
                let Ok(line) = serde_json::to_string(&report) else {
                    return;
                };
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    std::process::exit(3);
                }
            }
        }
    }

    /// Records one datagram's one-way latency (in-process clients only).
    fn record_latency(&self, micros: u64) {
        if let Sink::Channel { latency, .. } = self {
            if let Ok(mut h) = latency.lock() {
                let _ = h.record(micros.max(1));
            }
        }
    }
}

/// Runs a client: enters the game, reports [`Report::Ready`] (or [`Report::Fatal`]), then
/// plays until told to close, its session ends, or `max_secs` pass.
pub async fn run(spec: ClientSpec, sink: Sink, mut commands: mpsc::Receiver<Command>) {
    let session = match enter(&spec).await {
        Ok(session) => session,
        Err(error) => {
            sink.send(Report::Fatal { error }).await;
            return;
        }
    };
    let role_members = |s: &Session| s.members().iter().map(|p| p.0).collect::<Vec<_>>();
    sink.send(Report::Ready {
        peer: session.local_peer().0,
        alloc: session.allocation().0,
        code: session.join_code().map(|c| c.to_string()),
        token: session.reconnect_token().to_string(),
        host: session.host().map(|h| h.0),
        members: role_members(&session),
    })
    .await;
    let mut player = Player::new(&spec, &session, &sink);
    player.play(&mut commands).await;
}

/// Connects and binds as `spec.entry` says, retrying (bounded) while the relay asks to wait.
async fn enter(spec: &ClientSpec) -> Result<Session, String> {
    let trust = Trust::fingerprint_hex(&spec.fingerprint).map_err(|e| e.to_string())?;
    let config = ClientConfig::new(spec.relay, trust)
        .keep_alive_interval(Duration::from_millis(spec.keepalive_ms));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match &spec.entry {
            Entry::Host => Host::create(&config, AllocationOptions::default())
                .await
                .map(Host::into_session),
            Entry::Join { code } => Peer::join(&config, code.as_str())
                .await
                .map(Peer::into_session),
            Entry::Rejoin { token } => match token.parse::<ReconnectToken>() {
                Ok(token) => Peer::rejoin(&config, &token).await.map(Peer::into_session),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(session) => return Ok(session),
            Err(Error::RateLimited { retry_after } | Error::Migrating { retry_after })
                if attempt < ENTRY_ATTEMPTS =>
            {
                tokio::time::sleep(
                    retry_after.clamp(Duration::from_millis(20), Duration::from_secs(2)),
                )
                .await;
            }
            Err(e) => return Err(format!("{e} (attempt {attempt})")),
        }
    }
}

/// The playing state of one client.
struct Player<'a> {
    spec: &'a ClientSpec,
    session: &'a Session,
    sink: &'a Sink,
    flows: Flows,
    /// Sequence numbers: broadcasts, and unicasts per destination.
    broadcast_seq: u64,
    unicast_seq: BTreeMap<u16, u64>,
    ticks: u64,
    snapshot_version: u64,
    allocs_seen: BTreeSet<u64>,
    // Counters since the last stats report.
    sent: u64,
    deliveries: u64,
    received: u64,
    late: u64,
    last_from: BTreeMap<u16, u64>,
    relay_drops: BTreeMap<String, u64>,
    /// The session's count of dropped events at the last stats report.
    dropped_events_reported: u64,
}

impl<'a> Player<'a> {
    /// A player of `session` that has sent and received nothing yet.
    fn new(spec: &'a ClientSpec, session: &'a Session, sink: &'a Sink) -> Self {
        Player {
            spec,
            session,
            sink,
            flows: Flows::default(),
            broadcast_seq: 0,
            unicast_seq: BTreeMap::new(),
            ticks: 0,
            snapshot_version: 0,
            allocs_seen: BTreeSet::new(),
            sent: 0,
            deliveries: 0,
            received: 0,
            late: 0,
            last_from: BTreeMap::new(),
            relay_drops: BTreeMap::new(),
            dropped_events_reported: 0,
        }
    }

    /// Plays until told to close, the session ends, or `max_secs` pass.
    async fn play(&mut self, commands: &mut mpsc::Receiver<Command>) {
        let session = self.session;
        let mut tick = tokio::time::interval(Duration::from_secs(1) / self.spec.rate.max(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut stats = tokio::time::interval(STATS_EVERY);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = tokio::time::sleep(Duration::from_secs(self.spec.max_secs));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                command = commands.recv() => {
                    // `Close`, or the soak dropped the sender: leave cleanly either way.
                    let _ = command;
                    self.report_stats().await;
                    session.close().await;
                    self.sink.send(Report::Closed).await;
                    return;
                }
                event = session.next_event() => {
                    let Some(event) = event else { return };
                    if self.on_event(event).await {
                        self.report_stats().await;
                        return;
                    }
                }
                datagram = session.recv() => {
                    // An error means the connection ended; `next_event` reports why.
                    if let Ok((from, bytes)) = datagram {
                        self.on_datagram(from, &bytes).await;
                    }
                }
                _ = tick.tick() => self.on_tick().await,
                _ = stats.tick() => self.report_stats().await,
                () = &mut deadline => {
                    self.report_stats().await;
                    session.close().await;
                    self.sink.send(Report::Closed).await;
                    return;
                }
            }
        }
    }

    /// One game tick: send, and stage a snapshot now and then while host.
    async fn on_tick(&mut self) {
        self.ticks += 1;
        let session = self.session;
        let me = session.local_peer().0;
        if session.is_host() {
            let others = session.members().len().saturating_sub(1) as u64;
            self.broadcast_seq += 1;
            let seq = self.broadcast_seq;
            let bytes = self.payload(BROADCAST, seq);
            match session.broadcast(&bytes) {
                Ok(()) => {
                    self.sent += 1;
                    self.deliveries += others;
                }
                Err(e) => {
                    self.broadcast_seq -= 1;
                    self.send_failed(e).await;
                }
            }
            if self.ticks % SNAPSHOT_EVERY_TICKS == 1 {
                self.snapshot_version += 1;
                session.stage_snapshot(snapshot(
                    self.spec.game,
                    self.spec.uid,
                    self.snapshot_version,
                ));
            }
        } else if let Some(host) = session.host() {
            self.unicast(PeerId(host.0)).await;
        }
        if self.spec.p2p_every > 0 && self.ticks % self.spec.p2p_every == 0 {
            // Someone who is neither this client nor the host, in turn.
            let host = session.host().map(|h| h.0);
            let others: Vec<u16> = session
                .members()
                .iter()
                .map(|p| p.0)
                .filter(|p| *p != me && Some(*p) != host)
                .collect();
            if !others.is_empty() {
                let pick = others[(self.ticks / self.spec.p2p_every) as usize % others.len()];
                self.unicast(PeerId(pick)).await;
            }
        }
    }

    /// Sends the next datagram of the unicast flow to `dest`.
    async fn unicast(&mut self, dest: PeerId) {
        let seq = self.unicast_seq.get(&dest.0).copied().unwrap_or(0) + 1;
        let bytes = self.payload(dest.0, seq);
        match self.session.send_to(dest, &bytes) {
            Ok(()) => {
                self.unicast_seq.insert(dest.0, seq);
                self.sent += 1;
                self.deliveries += 1;
            }
            Err(e) => self.send_failed(e).await,
        }
    }

    /// The payload of datagram `seq` to `dest`, stamped now.
    fn payload(&self, dest: u16, seq: u64) -> Vec<u8> {
        payload::encode(
            &Header {
                game: self.spec.game,
                alloc: self.session.allocation().0,
                sender: self.session.local_peer().0,
                dest,
                uid: self.spec.uid,
                seq,
                sent_us: now_us(),
            },
            self.spec.payload,
        )
    }

    /// A send the SDK refused. Only the end of the connection (reported by its event) and a
    /// migration in progress are expected.
    async fn send_failed(&mut self, e: Error) {
        if !matches!(e, Error::Disconnected(_) | Error::HostMigrating) {
            self.sink
                .send(Report::Violation {
                    what: format!("send refused by the SDK: {e}"),
                })
                .await;
        }
    }

    /// Checks one received datagram.
    async fn on_datagram(&mut self, from: PeerId, bytes: &Bytes) {
        let now = now_us();
        let me = self.session.local_peer().0;
        let header = match payload::decode(bytes) {
            Ok(h) => h,
            Err(e) => {
                let what = format!(
                    "peer {me} of game {} got a bad datagram from {from}: {e}",
                    self.spec.game
                );
                self.sink.send(Report::Violation { what }).await;
                return;
            }
        };
        self.received += 1;
        self.last_from.insert(from.0, now);
        let mut wrong = Vec::new();
        if header.game != self.spec.game {
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
                "misdelivery: peer {me} (uid {}) of game {} got seq {} from uid {} (alloc {:016x}): {}",
                self.spec.uid,
                self.spec.game,
                header.seq,
                header.uid,
                header.alloc,
                wrong.join("; ")
            );
            self.sink.send(Report::Violation { what }).await;
            return;
        }
        if self.allocs_seen.len() < 1024 && self.allocs_seen.insert(header.alloc) {
            self.sink
                .send(Report::AllocSeen {
                    alloc: header.alloc,
                    sender: from.0,
                })
                .await;
        }
        self.sink.record_latency(now.saturating_sub(header.sent_us));
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
                    "duplicate: peer {me} of game {} got seq {} from peer {from} (uid {}) twice",
                    self.spec.game, header.seq, header.uid
                );
                self.sink.send(Report::Violation { what }).await;
            }
        }
    }

    /// Reports a session event; true when the session has ended.
    async fn on_event(&mut self, event: Event) -> bool {
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
                let snapshot_from = match snapshot.as_deref().map(parse_snapshot) {
                    None => None,
                    Some(Some((game, uid))) if game == self.spec.game => Some(uid),
                    Some(other) => {
                        let what = format!(
                            "game {} got a foreign or damaged snapshot on migration: {other:?}",
                            self.spec.game
                        );
                        self.sink.send(Report::Violation { what }).await;
                        None
                    }
                };
                Report::HostMigrated {
                    alloc: allocation.0,
                    new_host: new_host.0,
                    you_are_host,
                    members: self.session.members().iter().map(|p| p.0).collect(),
                    snapshot_from,
                }
            }
            Event::PeerRejoined { peer } => Report::PeerRejoined { peer: peer.0 },
            Event::DatagramsDropped { reason, count, .. } => {
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

    /// Reports the counters since the last report.
    async fn report_stats(&mut self) {
        let dropped_events = self.session.dropped_events();
        let report = Report::Stats {
            sent: std::mem::take(&mut self.sent),
            deliveries: std::mem::take(&mut self.deliveries),
            received: std::mem::take(&mut self.received),
            late: std::mem::take(&mut self.late),
            last_from: std::mem::take(&mut self.last_from).into_iter().collect(),
            relay_drops: std::mem::take(&mut self.relay_drops).into_iter().collect(),
            dropped_events: dropped_events.saturating_sub(self.dropped_events_reported),
        };
        self.dropped_events_reported = dropped_events;
        self.sink.send(report).await;
    }
}

/// A migration snapshot: game id, uploader uid, version, then a pattern.
fn snapshot(game: u32, uid: u64, version: u64) -> Bytes {
    let mut out = Vec::with_capacity(SNAPSHOT_LEN);
    out.extend_from_slice(&game.to_be_bytes());
    out.extend_from_slice(&uid.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend((out.len()..SNAPSHOT_LEN).map(|i| (i as u8).wrapping_mul(7)));
    Bytes::from(out)
}

/// The game id and uploader uid of a snapshot made by [`snapshot`], or `None` if damaged.
fn parse_snapshot(bytes: &[u8]) -> Option<(u32, u64)> {
    if bytes.len() != SNAPSHOT_LEN {
        return None;
    }
    if (20..SNAPSHOT_LEN).any(|i| bytes[i] != (i as u8).wrapping_mul(7)) {
        return None;
    }
    let game = u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?);
    let uid = u64::from_be_bytes(bytes.get(4..12)?.try_into().ok()?);
    Some((game, uid))
}

/// The hidden `player` subcommand: a client in its own process, reporting on stdout and
/// taking commands on stdin (`close`; end of input also closes).
pub async fn player_main(spec: ClientSpec) {
    let (tx, rx) = mpsc::channel(4);
    let stdin = tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        // Any line, end of input or an unreadable stdin: leave.
        let _ = lines.next_line().await;
        let _ = tx.send(Command::Close).await;
    });
    run(spec, Sink::Stdout, rx).await;
    stdin.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_reports_serialise() {
        let s = snapshot(3, 99, 5);
        assert_eq!(parse_snapshot(&s), Some((3, 99)));
        let mut bad = s.to_vec();
        bad[100] ^= 1;
        assert_eq!(parse_snapshot(&bad), None);
        let report = Report::HostLost {
            host: 0,
            reason: "timed_out".into(),
            elected: Some(2),
        };
        let line = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&line).unwrap(), report);
    }
}
