//! The playing state of one player ([`Player`]) and its loop: ticks (sending, staging
//! snapshots), commands, counters. What arrives is handled in [`super::receive`].
//!
//! Runs on the player's own task (in-process) or the player process's runtime.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use baton_client::{Error, PeerId, Session};
use tokio::sync::mpsc;

use super::payload::{self, Flows, Header, BROADCAST};
use super::snapshot::{self, STAGE_EVERY_TICKS};
use super::{now_us, Command, PlayerArgs, Report, Sink};

/// The playing state of one client.
pub(super) struct Player<'a> {
    pub(super) args: &'a PlayerArgs,
    /// The uid in this client's payloads.
    pub(super) uid: u64,
    pub(super) session: &'a Session,
    pub(super) sink: &'a Sink,
    /// The [`crate::snapshot_bytes`] snapshot this host uploads (empty: none).
    pub(super) snapshot: Vec<u8>,
    pub(super) flows: Flows,
    /// Sequence numbers: broadcasts, and unicasts per destination.
    broadcast_seq: u64,
    unicast_seq: BTreeMap<u16, u64>,
    ticks: u64,
    snapshot_version: u64,
    pub(super) allocs_seen: BTreeSet<u64>,
    /// After a migration: whether the new host is still to be heard from.
    pub(super) awaiting_host: bool,
    /// After a migration that made this client host: the members heard from since.
    pub(super) heard: Option<HashSet<PeerId>>,
    // Counters since the last stats report.
    sent: u64,
    deliveries: u64,
    pub(super) received: u64,
    pub(super) late: u64,
    pub(super) last_from: BTreeMap<u16, u64>,
    pub(super) relay_drops: BTreeMap<String, u64>,
    /// A player process: one-way latencies (µs) since the last report, bounded.
    pub(super) latencies: Vec<u64>,
    /// The session's count of dropped events at the last stats report.
    dropped_events_reported: u64,
}

impl<'a> Player<'a> {
    /// A player of `session` that has sent and received nothing yet.
    pub(super) fn new(
        args: &'a PlayerArgs,
        session: &'a Session,
        sink: &'a Sink,
        snapshot: Vec<u8>,
    ) -> Self {
        let uid = args
            .uid
            .unwrap_or_else(|| (u64::from(std::process::id()) << 32) ^ now_us());
        Player {
            args,
            uid,
            session,
            sink,
            snapshot,
            flows: Flows::default(),
            broadcast_seq: 0,
            unicast_seq: BTreeMap::new(),
            ticks: 0,
            snapshot_version: 0,
            allocs_seen: BTreeSet::new(),
            awaiting_host: false,
            heard: None,
            sent: 0,
            deliveries: 0,
            received: 0,
            late: 0,
            last_from: BTreeMap::new(),
            relay_drops: BTreeMap::new(),
            latencies: Vec::new(),
            dropped_events_reported: 0,
        }
    }

    /// Whether counters are reported (`--stats-ms` is not 0).
    pub(super) fn stats_on(&self) -> bool {
        self.args.stats_ms > 0
    }

    /// Plays until told to close, the session ends, or `max_secs` pass.
    pub(super) async fn play(&mut self, commands: &mut mpsc::Receiver<Command>) {
        let session = self.session;
        let mut tick = tokio::time::interval(Duration::from_secs(1) / self.args.rate.max(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let stats_on = self.stats_on();
        let mut stats = tokio::time::interval(Duration::from_millis(self.args.stats_ms.max(1)));
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = tokio::time::sleep(Duration::from_secs(self.args.max_secs));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                command = commands.recv() => {
                    match command {
                        Some(Command::Snapshot) => {
                            // Reported either way; the player plays on.
                            let _ = self.upload_snapshot().await;
                            continue;
                        }
                        Some(Command::Fallbacks(relays)) => {
                            session.set_fallback_relays(relays);
                            continue;
                        }
                        Some(Command::Close) | None => {}
                    }
                    // `Close`, or the sender is gone: leave cleanly either way.
                    self.report_stats().await;
                    self.sink.send(Report::Closing).await;
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
                _ = stats.tick(), if stats_on => self.report_stats().await,
                () = &mut deadline => {
                    self.report_stats().await;
                    session.close().await;
                    self.sink.send(Report::Closed).await;
                    return;
                }
            }
        }
    }

    /// Uploads the host's snapshot and reports how it went.
    pub(super) async fn upload_snapshot(&mut self) -> Result<(), String> {
        match self.session.upload_snapshot(self.snapshot.clone()).await {
            Ok(len) => {
                self.sink.send(Report::SnapshotStored { len }).await;
                Ok(())
            }
            Err(e) => {
                let error = e.to_string();
                self.sink
                    .send(Report::SnapshotFailed {
                        error: error.clone(),
                    })
                    .await;
                Err(error)
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
            if self.args.game_snapshots && self.ticks % STAGE_EVERY_TICKS == 1 {
                self.snapshot_version += 1;
                session.stage_snapshot(snapshot::tagged(
                    self.args.game,
                    self.uid,
                    self.snapshot_version,
                ));
            }
        } else if let Some(host) = session.host() {
            self.unicast(PeerId(host.0)).await;
        }
        let p2p_every = self.args.p2p_every;
        if p2p_every > 0 && self.ticks % p2p_every == 0 {
            // Someone who is neither this client nor the host, in turn.
            let host = session.host().map(|h| h.0);
            let others: Vec<u16> = session
                .members()
                .iter()
                .map(|p| p.0)
                .filter(|p| *p != me && Some(*p) != host)
                .collect();
            if !others.is_empty() {
                let pick = others[(self.ticks / p2p_every) as usize % others.len()];
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
                game: self.args.game,
                alloc: self.session.allocation().0,
                sender: self.session.local_peer().0,
                dest,
                uid: self.uid,
                seq,
                sent_us: now_us(),
            },
            self.args.payload,
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

    /// Reports the counters since the last report (when `--stats-ms` asks for them).
    async fn report_stats(&mut self) {
        if !self.stats_on() {
            return;
        }
        let dropped_events = self.session.dropped_events();
        let report = Report::Stats {
            sent: std::mem::take(&mut self.sent),
            deliveries: std::mem::take(&mut self.deliveries),
            received: std::mem::take(&mut self.received),
            late: std::mem::take(&mut self.late),
            last_from: std::mem::take(&mut self.last_from).into_iter().collect(),
            relay_drops: std::mem::take(&mut self.relay_drops).into_iter().collect(),
            dropped_events: dropped_events.saturating_sub(self.dropped_events_reported),
            latency_us: std::mem::take(&mut self.latencies),
            nat: self.session.nat().as_str().to_owned(),
        };
        self.dropped_events_reported = dropped_events;
        self.sink.send(report).await;
    }
}
