//! A game through a node event of the fleet ([`crate::gate`]): the game pauses between two
//! actions, finds which node holds its allocation, and if that node is the one drained or
//! killed follows the event on every member:
//!
//! - **drain**: every member sees `Relocated` within `--relocate-bound` of `POST /v1/drain`;
//! - **kill**: every member sees `Resumed` within `--resume-bound` of the SIGKILL, or, if the
//!   host did not come back in time, the members who resumed elect a new host (counted as a
//!   resume with an election; the game then starts afresh, since who hosts is no longer the
//!   soak's choice). A member whose session ends instead (`Disconnected`: its resume window
//!   ran out) is a failure.
//!
//! Then all members are on one live node other than the lost one, that node lists the
//! allocation under the same id with the same join code, host and members, every member hears
//! from the host again (and the host from every member), and a newcomer joins by the code
//! through a random node. Runs on the game's task.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use baton_tests::player::Command;
use tokio::io::AsyncWriteExt;

use super::{Game, Phase};
use crate::gate::{NodeEvent, NodeEventKind};
use crate::state::{lock, Check};
use crate::util::now_us;

/// Time a paused game waits for the node churn to act and then to let it go, at most.
const GATE_BOUND: Duration = Duration::from_secs(90);
/// Time members have to hear from each other again once all have moved.
const FLOW_BOUND: Duration = Duration::from_secs(4);
/// Moves later than their bound are still waited for this long past the resume window.
const LATE_GRACE: Duration = Duration::from_secs(2);
/// Time members may still hear `PeerRejoined` of others that moved after them, once the
/// game has followed the event.
const ECHO_GRACE: Duration = Duration::from_secs(3);

/// Node events a game remembers for loss classification.
const MAX_WINDOWS: usize = 16;

/// A member's move to another node (`Relocated` or `Resumed`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Move {
    /// The relay it is connected to now.
    pub(super) relay: SocketAddr,
    /// When the game heard of it.
    pub(super) at: Instant,
    /// The host its session saw right after.
    pub(super) host: Option<u16>,
}

/// A node event being followed on every member.
#[derive(Debug)]
pub(super) struct NodeCheck {
    /// What happened.
    pub(super) event: NodeEvent,
    /// Members that moved, by client uid.
    pub(super) moved: HashMap<u64, Move>,
    /// The host did not come back in time; the members elected a new one.
    pub(super) elected: bool,
}

impl Game {
    /// Whether the node churn asks this game to pause.
    pub(super) fn gate_pending(&self) -> bool {
        self.ctx.fleet && self.ctx.gate.pending(self.gate_round).is_some()
    }

    /// Pauses for the node event asked for, follows it if it concerns the game, and waits
    /// (bounded) until the node churn lets the games go on.
    pub(super) async fn node_round(&mut self) {
        let Some(round) = self.ctx.gate.pending(self.gate_round) else {
            return;
        };
        self.gate_round = round;
        // Before pausing: the node churn acts once every participant has paused.
        let holder = self.holder().await;
        self.paused_on = holder;
        self.early_moves.clear();
        self.ctx.gate.park(round);
        let deadline = Instant::now() + GATE_BOUND;
        let gate = |g: &Game| g.ctx.gate.event(round).is_some() || g.ctx.gate.released(round);
        self.pump_until(deadline, gate).await;
        if let Some(event) = self.ctx.gate.event(round) {
            if holder == Some(event.addr) && !self.members.is_empty() {
                self.follow_node_event(event).await;
            }
        }
        self.ctx.gate.finish(round);
        let deadline = Instant::now() + GATE_BOUND;
        self.pump_until(deadline, |g| g.ctx.gate.released(round))
            .await;
        self.paused_on = None;
        self.refresh_fallbacks().await;
    }

    /// Tells every client the fleet's nodes as they are now (a replacement started, a node
    /// drained or killed), as a lobby would: a client's fallback relays must not all be gone
    /// when its node is lost.
    async fn refresh_fallbacks(&mut self) {
        let relays: Vec<SocketAddr> = self.ctx.live_nodes().iter().map(|n| n.addr).collect();
        let command = Command::Fallbacks(relays);
        let line = command.to_line();
        for client in self.clients.values_mut() {
            if client.phase == Phase::Departing {
                continue;
            }
            if let Some(commands) = &client.commands {
                // A full queue means the client is busy leaving or closing; it keeps its list.
                let _ = commands.try_send(command.clone());
            } else if let Some(stdin) = client.stdin.as_mut() {
                let _ = tokio::time::timeout(
                    Duration::from_millis(200),
                    stdin.write_all(line.as_bytes()),
                )
                .await;
            }
        }
    }

    /// The QUIC address of the node that lists the game's allocation, if one does.
    async fn holder(&mut self) -> Option<SocketAddr> {
        // (A game between hosts is still listed where it lives: its members follow the node
        // event like any other game's.)
        if self.members.is_empty() || self.alloc == 0 {
            return None;
        }
        let alloc = self.alloc;
        let nodes = self.ctx.live_nodes();
        self.pumping(async move {
            for node in nodes {
                if let Ok(Some(_)) = node.api.allocation(alloc).await {
                    return Some(node.addr);
                }
            }
            None
        })
        .await
    }

    /// Follows a drain or kill of the node holding the game's allocation on every member.
    async fn follow_node_event(&mut self, event: NodeEvent) {
        let kind = event.kind;
        let (bound, what) = match kind {
            NodeEventKind::Drain => (self.ctx.opts.relocate_bound, "Relocated"),
            NodeEventKind::Kill => (self.ctx.opts.resume_bound, "Resumed"),
        };
        let members: Vec<(u16, u64)> = self.members.iter().map(|(p, u)| (*p, *u)).collect();
        let at = event.at;
        let at_us = event.at_us;
        let node = event.node.clone();
        let lost = event.addr;
        let moved = self
            .early_moves
            .drain(..)
            .filter(|(_, k, _)| *k == kind)
            .map(|(uid, _, m)| (uid, m))
            .collect();
        self.node_check = Some(NodeCheck {
            event,
            moved,
            elected: false,
        });
        let waiting: Vec<u64> = members.iter().map(|(_, u)| *u).collect();
        // Late moves are waited for too (within the resume window), to say how late.
        let listen = bound.max(self.ctx.opts.resume_window + LATE_GRACE);
        self.pump_until(at + listen, |g| {
            g.node_check.as_ref().is_some_and(|c| {
                c.elected
                    || waiting
                        .iter()
                        .all(|u| c.moved.contains_key(u) || !g.members.values().any(|m| m == u))
            })
        })
        .await;
        let Some(check) = self.node_check.take() else {
            return;
        };
        self.resume_echoes_until = Instant::now() + ECHO_GRACE;
        let verb = match kind {
            NodeEventKind::Drain => "drained",
            NodeEventKind::Kill => "killed",
        };
        if check.elected {
            // Accounted for: the host's session did not come back within the keepalive
            // timeout of the takeover, so the members who did elected a new host.
            self.ctx.stats.resume_elections.inc();
            self.ctx.stats.members_resumed.add(check.moved.len() as u64);
            self.push_window(at_us, kind);
            self.broken = true;
            return;
        }
        let mut problems = Vec::new();
        for (peer, uid) in &members {
            if let Some(Move { at: t, host, .. }) = check.moved.get(uid) {
                let took = t.saturating_duration_since(at);
                if took > bound {
                    problems.push(format!(
                        "peer {peer} saw {what} {took:?} after node {node} was {verb}, later than {bound:?}"
                    ));
                }
                if *host != self.host {
                    problems.push(format!(
                        "peer {peer} saw {what} with host {host:?}, the game's host is {:?}",
                        self.host
                    ));
                }
            } else {
                if self.members.get(peer) == Some(uid) {
                    problems.push(format!(
                        "peer {peer} did not see {what} within {listen:?} of node {node} being {verb} (bound {bound:?})"
                    ));
                } else {
                    problems.push(format!(
                        "peer {peer} was lost when node {node} was {verb} (its session ended)"
                    ));
                }
            }
        }
        let targets: BTreeSet<SocketAddr> = check.moved.values().map(|m| m.relay).collect();
        if targets.len() > 1 {
            problems.push(format!(
                "members ended on different relays after node {node} was {verb}: {targets:?}"
            ));
        }
        if targets.contains(&lost) {
            problems.push(format!("a member says it moved to {lost}, the node {verb}"));
        }
        if let Some(last) = check.moved.values().map(|m| m.at).max() {
            let took = last.saturating_duration_since(at).as_millis().max(1) as u64;
            let hist = match kind {
                NodeEventKind::Drain => &self.ctx.relocation_ms,
                NodeEventKind::Kill => &self.ctx.resume_ms,
            };
            let _ = lock(hist).record(took);
        }
        match kind {
            NodeEventKind::Drain => self
                .ctx
                .stats
                .members_relocated
                .add(check.moved.len() as u64),
            NodeEventKind::Kill => self.ctx.stats.members_resumed.add(check.moved.len() as u64),
        }
        if let (Some(target), 1) = (targets.first().copied(), targets.len()) {
            if let Some(problem) = self.check_new_home(target, verb, &node).await {
                problems.push(problem);
            }
        }
        if problems.is_empty() {
            if let Some(problem) = self.check_flowing_again().await {
                problems.push(problem);
            }
        }
        self.push_window(at_us, kind);
        if problems.is_empty() {
            match kind {
                NodeEventKind::Drain => self.ctx.stats.relocations.inc(),
                NodeEventKind::Kill => self.ctx.stats.resumes.inc(),
            }
            // The code still leads to the game, from any node.
            if self.members.len() < self.ctx.opts.peers + 3 {
                self.join().await;
            }
        } else {
            for problem in problems {
                self.ctx
                    .fail(Check::Fleet, format!("game {}: {problem}", self.id));
            }
            self.broken = true;
        }
    }

    /// Whether node `target` lists the game's allocation under its id, with its code, host
    /// and members; the problem if not.
    async fn check_new_home(
        &mut self,
        target: SocketAddr,
        verb: &str,
        from: &str,
    ) -> Option<String> {
        let Some(node) = self.ctx.node_by_addr(target) else {
            return Some(format!(
                "members moved to {target}, which is no node of the fleet"
            ));
        };
        let alloc = self.alloc;
        let api = node.api.clone();
        let info = match self.pumping(async move { api.allocation(alloc).await }).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                return Some(format!(
                    "node {} does not list allocation {alloc:016x} after its members moved there from node {from} ({verb})",
                    node.id
                ))
            }
            Err(e) => return Some(format!("node {}: {e:#}", node.id)),
        };
        let mut wrong = Vec::new();
        let code = info.get("join_code").and_then(Value::as_str);
        if code != self.code.as_deref() {
            wrong.push(format!("join code {code:?}, the game's is {:?}", self.code));
        }
        let host = info.get("host").and_then(Value::as_u64);
        if host != self.host.map(u64::from) {
            wrong.push(format!("host {host:?}, the game's is {:?}", self.host));
        }
        let listed: BTreeSet<u64> = info
            .get("members")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(|m| m.get("peer").and_then(Value::as_u64))
                    .collect()
            })
            .unwrap_or_default();
        let expected: BTreeSet<u64> = self.members.keys().map(|p| u64::from(*p)).collect();
        if listed != expected {
            wrong.push(format!("members {listed:?}, the game's are {expected:?}"));
        }
        if wrong.is_empty() {
            None
        } else {
            Some(format!(
                "allocation {alloc:016x} on node {} after node {from} was {verb} has {}",
                node.id,
                wrong.join("; ")
            ))
        }
    }

    /// Waits (bounded) until every member has heard from the host since now, and the host
    /// from every member; the problem if not.
    async fn check_flowing_again(&mut self) -> Option<String> {
        let since = now_us();
        let host = self.host?;
        let pairs: Vec<(u64, u16, u16)> = self
            .members
            .iter()
            .filter(|(p, _)| **p != host)
            .flat_map(|(p, u)| {
                let host_uid = self.members.get(&host).copied();
                [(*u, *p, host)]
                    .into_iter()
                    .chain(host_uid.map(|h| (h, host, *p)))
            })
            .collect();
        let heard = |g: &Game, (uid, _, from): &(u64, u16, u16)| {
            g.clients
                .get(uid)
                .and_then(|c| c.last_from.get(from))
                .is_some_and(|t| *t > since)
        };
        self.pump_until(Instant::now() + FLOW_BOUND, |g| {
            pairs.iter().all(|p| heard(g, p))
        })
        .await;
        let silent: Vec<String> = pairs
            .iter()
            .filter(|p| !heard(self, p))
            .map(|(_, to, from)| format!("{from}->{to}"))
            .collect();
        if silent.is_empty() {
            None
        } else {
            Some(format!(
                "datagrams did not flow again within {FLOW_BOUND:?} after the move: {}",
                silent.join(", ")
            ))
        }
    }

    /// Remembers a node event of the game from `start_us` to now (the last few only).
    fn push_window(&mut self, start_us: u64, kind: NodeEventKind) {
        self.node_windows.push_back((start_us, now_us(), kind));
        while self.node_windows.len() > MAX_WINDOWS {
            self.node_windows.pop_front();
        }
    }

    /// Whether a gap between `prev_us` and `now_us` overlaps a node event of this game (with
    /// the churn grace), and which.
    pub(super) fn in_node_event(&self, prev_us: u64, now_us: u64) -> Option<NodeEventKind> {
        let g = super::CHURN_GRACE_US;
        if let Some(check) = &self.node_check {
            if now_us + g >= check.event.at_us {
                return Some(check.event.kind);
            }
        }
        self.node_windows
            .iter()
            .find(|(a, b, _)| prev_us <= b + g && now_us + g >= *a)
            .map(|(_, _, k)| *k)
            .or_else(|| {
                // A member moved while datagrams were missing: the move explains the gap.
                self.move_reports
                    .iter()
                    .find(|(at, _)| prev_us <= *at && *at <= now_us + g)
                    .map(|(_, k)| *k)
            })
    }

    /// Remembers that a member reported moving now (the last few only).
    pub(super) fn push_move_report(&mut self, kind: NodeEventKind) {
        self.move_reports.push_back((now_us(), kind));
        while self.move_reports.len() > MAX_WINDOWS * 8 {
            self.move_reports.pop_front();
        }
    }
}
