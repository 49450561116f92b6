//! What the game's clients report, taken in by the game's task ([`Game::handle`]): counters,
//! gaps (churn or steady loss), violations, membership events matched against what each
//! member must hear, the migration under way, and the deadlines of all of these.

use std::time::{Duration, Instant};

use baton_client::AllocationId;
use baton_tests::player::Report;

use super::migration::Migration;
use super::nodes::Move;
use super::{
    Expect, Game, Heard, Phase, Ready, ALLOC_GRACE, LOSS_EXAMPLES, SNAPSHOT_TENURE, UNMATCHED_GRACE,
};
use crate::gate::NodeEventKind;
use crate::state::{lock, Check};

impl Game {
    /// One report from client `uid`.
    pub(super) fn handle(&mut self, uid: u64, report: Report) {
        let Some(client) = self.clients.get_mut(&uid) else {
            return;
        };
        let phase = client.phase;
        match report {
            Report::Ready {
                peer,
                allocation,
                code,
                token,
                host,
                members,
            } => {
                client.ready = Some(Ok(Ready {
                    peer,
                    alloc: alloc_id(&allocation),
                    code,
                    token,
                    host,
                    members,
                }));
            }
            Report::Fatal { error } => client.ready = Some(Err(error)),
            Report::Stats {
                sent,
                deliveries,
                received,
                late,
                last_from,
                relay_drops,
                dropped_events,
                ..
            } => {
                client.last_from.extend(last_from);
                let stats = &self.ctx.stats;
                stats.sent.add(sent);
                stats.deliveries.add(deliveries);
                stats.received.add(received);
                stats.late.add(late);
                stats.dropped_events.add(dropped_events);
                if !relay_drops.is_empty() {
                    let mut drops = lock(&stats.relay_drops);
                    for (reason, n) in relay_drops {
                        *drops.entry(reason).or_default() += n;
                    }
                }
            }
            Report::Gap {
                sender,
                lost,
                prev_us,
                now_us,
            } => {
                let receiver = self.peer_of(uid);
                let node_event = self.in_node_event(prev_us, now_us);
                if let Some(kind) = node_event {
                    match kind {
                        NodeEventKind::Drain => self.ctx.stats.lost_relocation.add(lost),
                        NodeEventKind::Kill => self.ctx.stats.lost_resume.add(lost),
                    }
                } else if phase == Phase::Member && !self.in_churn(prev_us, now_us) {
                    self.ctx.stats.lost_steady.add(lost);
                    let mut examples = lock(&self.ctx.loss_examples);
                    if examples.len() < LOSS_EXAMPLES {
                        examples.push(format!(
                            "game {} peer {receiver:?} missed {lost} from peer {sender} at {:.1}s ({} ms without datagrams)",
                            self.id,
                            self.ctx.elapsed_s(),
                            now_us.saturating_sub(prev_us) / 1000
                        ));
                    }
                } else {
                    self.ctx.stats.lost_churn.add(lost);
                }
            }
            Report::Violation { what } => self.ctx.fail(Check::Routing, what),
            // Timing reports for the migration tools; the soak checks migrations by events.
            Report::FirstFromHost { .. }
            | Report::FirstFromPeer { .. }
            | Report::SnapshotStored { .. }
            | Report::Closing => {}
            Report::SnapshotFailed { error } => self.ctx.fail(
                Check::Migration,
                format!("game {}: a snapshot upload failed: {error}", self.id),
            ),
            Report::UnknownCommand { command } => self.ctx.fail(
                Check::Membership,
                format!("game {}: a player did not understand {command:?}", self.id),
            ),
            Report::AllocSeen { alloc, sender } => {
                if phase != Phase::Departing {
                    self.alloc_seen(alloc, sender);
                }
            }
            Report::Closed => {
                if !client.process {
                    self.clients.remove(&uid);
                }
            }
            Report::Exited { detail } => {
                if phase != Phase::Departing {
                    let what = format!(
                        "game {}: player process of peer {:?} exited unexpectedly: {detail}",
                        self.id,
                        self.peer_of(uid)
                    );
                    self.ctx.fail(Check::Membership, what);
                    self.forget_member(uid);
                }
                self.clients.remove(&uid);
            }
            Report::Resumed { relay, host } => {
                self.push_move_report(NodeEventKind::Kill);
                if phase != Phase::Departing {
                    self.moved(uid, NodeEventKind::Kill, relay, host);
                }
            }
            Report::Relocated { relay, host } => {
                self.push_move_report(NodeEventKind::Drain);
                if phase != Phase::Departing {
                    self.moved(uid, NodeEventKind::Drain, relay, host);
                }
            }
            Report::Disconnected { reason } => {
                if phase != Phase::Departing {
                    let what = format!(
                        "game {}: peer {:?} was disconnected unexpectedly: {reason}",
                        self.id,
                        self.peer_of(uid)
                    );
                    let check = if self.node_check.is_some() {
                        Check::Fleet
                    } else {
                        Check::Membership
                    };
                    self.ctx.fail(check, what);
                    self.forget_member(uid);
                }
                if let Some(c) = self.clients.get(&uid) {
                    if !c.process {
                        self.clients.remove(&uid);
                    }
                }
            }
            event => {
                if phase == Phase::Departing {
                    return;
                }
                // A `PeerRejoined` goes to a migration or an explicit expectation before it
                // is taken for an echo of a node event: a host migration, or a member that
                // rejoins, soon after a node event is heard while its echoes still are, and
                // must count for what it is.
                let rejoined = matches!(event, Report::PeerRejoined { .. });
                if !rejoined && self.resume_echo(&event) {
                    return;
                }
                if let Some(m) = &mut self.migration {
                    match m.take(uid, &event) {
                        Ok(true) => {
                            self.check_migration();
                            return;
                        }
                        Ok(false) => {}
                        Err(what) => {
                            self.ctx
                                .fail(Check::Migration, format!("game {}: {what}", self.id));
                            self.check_migration();
                            return;
                        }
                    }
                }
                if self.match_expect(uid, &event) || (rejoined && self.resume_echo(&event)) {
                    return;
                }
                self.unmatched.push((uid, event, Instant::now()));
            }
        }
    }

    /// The node event of the round the game is paused in, if it hit the game's node.
    fn paused_event(&self) -> Option<NodeEventKind> {
        let event = self.ctx.gate.event(self.gate_round)?;
        (self.paused_on == Some(event.addr)).then_some(event.kind)
    }

    /// Member `uid` resumed (after a kill) or relocated (after a drain) to `relay`: part of
    /// the node event being followed, or a failure.
    fn moved(
        &mut self,
        uid: u64,
        kind: NodeEventKind,
        relay: std::net::SocketAddr,
        host: Option<u16>,
    ) {
        let paused_event = self.paused_event();
        match &mut self.node_check {
            Some(check) if check.event.kind == kind => {
                check.moved.insert(
                    uid,
                    Move {
                        relay,
                        at: Instant::now(),
                        host,
                    },
                );
            }
            // Paused, the event announced, not followed yet: kept for when it is.
            None if paused_event == Some(kind) => {
                let m = Move {
                    relay,
                    at: Instant::now(),
                    host,
                };
                self.early_moves.push((uid, kind, m));
            }
            _ => {
                let (what, why) = match kind {
                    NodeEventKind::Kill => ("resumed", "killed"),
                    NodeEventKind::Drain => ("relocated", "drained"),
                };
                let text = format!(
                    "game {}: peer {:?} {what} to relay {relay} although no node it was on was {why}",
                    self.id,
                    self.peer_of(uid)
                );
                self.ctx.fail(Check::Fleet, text);
            }
        }
    }

    /// Whether `event` is what a node kill explains: members that resumed hear
    /// `PeerRejoined` of those who came back after them; if the host did not come back in
    /// time, they hear it lost and a new host elected (the check counts that).
    fn resume_echo(&mut self, event: &Report) -> bool {
        let following = self
            .node_check
            .as_ref()
            .map(|c| c.event.kind)
            .or_else(|| self.paused_event());
        let killing = following == Some(NodeEventKind::Kill);
        match event {
            Report::PeerRejoined { peer }
                if (following.is_some() || Instant::now() < self.resume_echoes_until)
                    && self.members.contains_key(peer) =>
            {
                match following {
                    Some(NodeEventKind::Drain) => self.ctx.stats.relocation_echoes.inc(),
                    _ => self.ctx.stats.resume_echoes.inc(),
                }
                true
            }
            Report::HostLost { .. } | Report::HostMigrated { .. } if killing => {
                if let Some(check) = &mut self.node_check {
                    check.elected = true;
                }
                true
            }
            _ => false,
        }
    }

    /// Satisfies the expectation `event` from `uid` meets, if any.
    pub(super) fn match_expect(&mut self, uid: u64, event: &Report) -> bool {
        let (heard, reason) = match event {
            Report::PeerJoined { peer } => (Heard::Joined(*peer), None),
            Report::PeerLeft { peer, reason } => (Heard::Left(*peer), Some(reason.as_str())),
            Report::PeerRejoined { peer } => (Heard::Rejoined(*peer), None),
            _ => return false,
        };
        let Some(i) = self
            .expects
            .iter()
            .position(|e| e.uid == uid && e.heard == heard)
        else {
            return false;
        };
        let expect = self.expects.swap_remove(i);
        if let (Some(want), Some(got)) = (expect.reason, reason) {
            if want != got {
                let what = format!(
                    "game {}: peer {:?} heard {heard:?} with reason {got}, expected {want} ({})",
                    self.id,
                    self.peer_of(uid),
                    expect.why
                );
                self.ctx.fail(Check::Membership, what);
            }
        }
        true
    }

    /// Registers that member `uid` must hear `heard` within `bound`.
    pub(super) fn expect(
        &mut self,
        uid: u64,
        heard: Heard,
        reason: Option<&'static str>,
        bound: Duration,
        why: &str,
    ) {
        self.expects.push(Expect {
            uid,
            heard,
            reason,
            deadline: Instant::now() + bound,
            why: why.to_owned(),
        });
        // It may have arrived already.
        if let Some(i) = self.unmatched.iter().position(|(u, e, _)| {
            *u == uid
                && matches!(
                    (e, heard),
                    (Report::PeerJoined { peer }, Heard::Joined(p))
                    | (Report::PeerLeft { peer, .. }, Heard::Left(p))
                    | (Report::PeerRejoined { peer }, Heard::Rejoined(p)) if *peer == p
                )
        }) {
            let (uid, event, _) = self.unmatched.swap_remove(i);
            self.match_expect(uid, &event);
        }
    }

    /// Deadlines: expectations, the migration, unexplained events, unknown allocation ids.
    pub(super) fn housekeeping(&mut self) {
        let now = Instant::now();
        let mut missed = Vec::new();
        self.expects.retain(|e| {
            let keep = e.deadline > now;
            if !keep {
                missed.push((e.uid, e.heard, e.why.clone()));
            }
            keep
        });
        for (uid, heard, why) in missed {
            let what = format!(
                "game {}: peer {:?} did not hear {heard:?} in time ({why})",
                self.id,
                self.peer_of(uid)
            );
            self.ctx.fail(Check::Membership, what);
        }
        if self.migration.as_ref().is_some_and(|m| m.deadline <= now) {
            self.check_migration();
            if let Some(m) = self.migration.take() {
                self.ctx.stats.migrations_failed.inc();
                let what = format!(
                    "game {}: host {} lost ({}) and the migration did not complete on every member within {:?}: {}",
                    self.id,
                    m.old_host,
                    m.reason,
                    m.deadline - m.started,
                    m.progress()
                );
                self.ctx.fail(Check::Migration, what);
                self.broken = true;
            }
        }
        let stale: Vec<(u64, Report)> = self
            .unmatched
            .iter()
            .filter(|(_, _, at)| now.duration_since(*at) > UNMATCHED_GRACE)
            .map(|(u, e, _)| (*u, e.clone()))
            .collect();
        if !stale.is_empty() {
            self.unmatched
                .retain(|(_, _, at)| now.duration_since(*at) <= UNMATCHED_GRACE);
            for (uid, event) in stale {
                if self
                    .clients
                    .get(&uid)
                    .is_some_and(|c| c.phase != Phase::Departing)
                {
                    let what = format!(
                        "game {}: peer {:?} got an event no action explains: {event:?}",
                        self.id,
                        self.peer_of(uid)
                    );
                    self.ctx.fail(Check::Membership, what);
                }
            }
        }
        if self.migration.is_none() && !self.pending_allocs.is_empty() {
            let lineage = &self.lineage;
            self.pending_allocs.retain(|(a, _, _)| !lineage.contains(a));
            let late: Vec<(u64, u16)> = self
                .pending_allocs
                .iter()
                .filter(|(_, _, at)| now.duration_since(*at) > ALLOC_GRACE)
                .map(|(a, s, _)| (*a, *s))
                .collect();
            self.pending_allocs
                .retain(|(_, _, at)| now.duration_since(*at) <= ALLOC_GRACE);
            for (alloc, sender) in late {
                let what = format!(
                    "game {}: a datagram from peer {sender} names allocation {alloc:016x}, which is not in the game's lineage",
                    self.id
                );
                self.ctx.fail(Check::Routing, what);
            }
        }
    }

    /// A payload named `alloc`: it must be this game's (now or soon, after a migration).
    pub(super) fn alloc_seen(&mut self, alloc: u64, sender: u16) {
        if self.lineage.contains(&alloc) {
            return;
        }
        match self.ctx.alloc_game(alloc) {
            Some(other) if other != self.id => {
                let what = format!(
                    "game {} received a datagram from peer {sender} sent in allocation {alloc:016x} of game {other}",
                    self.id
                );
                self.ctx.fail(Check::Routing, what);
            }
            _ => self.pending_allocs.push((alloc, sender, Instant::now())),
        }
    }

    /// Completes the migration once every member has seen it through.
    pub(super) fn check_migration(&mut self) {
        let Some(done) = self.migration.as_ref().and_then(Migration::done) else {
            return;
        };
        let Some(m) = self.migration.take() else {
            return;
        };
        for problem in &done.problems {
            self.ctx
                .fail(Check::Migration, format!("game {}: {problem}", self.id));
        }
        match done.snapshot_from {
            Some(uid) if self.hosts.contains(&uid) => self.ctx.stats.snapshots.inc(),
            Some(uid) => self.ctx.fail(
                Check::Migration,
                format!(
                    "game {}: the new host got a snapshot from client {uid}, which never hosted this game",
                    self.id
                ),
            ),
            None if m.expect_snapshot => self.ctx.fail(
                Check::Migration,
                format!(
                    "game {}: new host {} got no snapshot although host {} had hosted for more than {SNAPSHOT_TENURE:?}",
                    self.id, done.new_host, m.old_host
                ),
            ),
            None => {}
        }
        let took = m.started.elapsed();
        if let Ok(mut h) = self.ctx.migration_ms.lock() {
            let _ = h.record(took.as_millis().max(1) as u64);
        }
        self.ctx.stats.migrations.inc();
        self.host = Some(done.new_host);
        self.host_since = Instant::now();
        self.hosts.insert(done.new_uid);
        self.alloc = done.alloc;
        self.lineage.insert(done.alloc);
        self.ctx.register_alloc(done.alloc, self.id);
    }
}

/// An allocation id as a report spells it (hex); 0 if it is not one.
pub(super) fn alloc_id(allocation: &str) -> u64 {
    allocation.parse::<AllocationId>().map_or(0, |a| a.0)
}
