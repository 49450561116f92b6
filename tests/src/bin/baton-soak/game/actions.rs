//! The churn of a game, one action at a time on the game's task: start a game, a peer joins,
//! leaves or is killed, the host leaves or is killed, a killed member rejoins, everyone
//! leaves; each waits until every member has seen its consequences ([`Game::settle`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::migration::Migration;
use super::{Exit, Game, Heard, Ready, CLOSE_BOUND, EVENT_BOUND, EXIT_BOUND, SNAPSHOT_TENURE};
use crate::state::Check;
use baton_tests::player::Role;

impl Game {
    /// Starts a new game: a host, then `--peers` peers. False if it could not.
    pub(super) async fn start_game(&mut self) -> bool {
        self.id = self.ctx.next_game();
        self.members.clear();
        self.member_since.clear();
        self.host = None;
        self.hosts.clear();
        self.code = None;
        self.lineage.clear();
        self.rejoinable.clear();
        self.pending_allocs.clear();
        self.expects.clear();
        self.migration = None;
        self.broken = false;
        self.ctx.stats.games_started.inc();
        self.churn_begin();
        let process = self
            .rng
            .chance((self.ctx.opts.process_fraction * 2.0).min(1.0));
        let (uid, ready) = match self.enter(Role::Host { snapshot_bytes: 0 }, process).await {
            Ok(r) => r,
            Err(e) => {
                self.ctx.fail(
                    Check::Coverage,
                    format!(
                        "game {}: the host could not create an allocation: {e}",
                        self.id
                    ),
                );
                self.churn_end();
                return false;
            }
        };
        if ready.peer != 0 || ready.host != Some(0) || ready.members != [0] {
            self.ctx.fail(
                Check::Membership,
                format!(
                    "game {}: a new host should be peer 0 alone, got {ready:?}",
                    self.id
                ),
            );
        }
        self.members.insert(ready.peer, uid);
        self.member_since.insert(ready.peer, Instant::now());
        self.host = Some(ready.peer);
        self.host_since = Instant::now();
        self.hosts.insert(uid);
        self.code = ready.code.clone();
        self.alloc = ready.alloc;
        self.lineage.insert(ready.alloc);
        self.ctx.register_alloc(ready.alloc, self.id);
        self.churn_end();
        for _ in 0..self.ctx.opts.peers {
            self.join().await;
        }
        true
    }

    /// Chooses and takes one action.
    pub(super) async fn act(&mut self) {
        let n = self.members.len();
        let target = self.ctx.opts.peers + 1;
        let Some(host) = self.host else { return };
        let process_of = |g: &Game, peer: &u16| {
            g.members
                .get(peer)
                .and_then(|u| g.clients.get(u))
                .is_some_and(|c| c.process)
        };
        let host_process = process_of(self, &host);
        let process_peers: Vec<u16> = self
            .members
            .keys()
            .filter(|p| **p != host && process_of(self, p))
            .copied()
            .collect();
        let weights = [
            // join
            if n < target {
                4.0
            } else if n < target + 2 {
                1.5
            } else {
                0.0
            },
            // a peer leaves
            if n > 2 { 1.5 } else { 0.0 },
            // a peer is killed
            if n > 2 && !process_peers.is_empty() {
                1.0
            } else {
                0.0
            },
            // the host leaves (alone: the allocation closes)
            if n >= 2 { 1.5 } else { 0.5 },
            // the host is killed
            if !host_process {
                0.0
            } else if n >= 2 {
                2.0
            } else {
                0.5
            },
            // a killed member comes back
            if !self.rejoinable.is_empty() && n < target + 2 {
                2.0
            } else {
                0.0
            },
            // everyone leaves
            if n <= 1 { 0.5 } else { 0.25 },
        ];
        match self.rng.weighted(&weights) {
            Some(0) => self.join().await,
            Some(1) => {
                let peers: Vec<u16> = self
                    .members
                    .keys()
                    .copied()
                    .filter(|p| *p != host)
                    .collect();
                let peer = peers[self.rng.below(peers.len())];
                self.peer_exit(peer, Exit::Close).await;
            }
            Some(2) => {
                let peer = process_peers[self.rng.below(process_peers.len())];
                self.peer_exit(peer, Exit::Kill).await;
            }
            Some(3) => self.host_exit(Exit::Close).await,
            Some(4) => self.host_exit(Exit::Kill).await,
            Some(5) => self.rejoin().await,
            _ => self.end_game(true).await,
        }
    }

    /// A new peer joins by code; every member must hear `PeerJoined`.
    pub(super) async fn join(&mut self) {
        let Some(code) = self.code.clone() else {
            return;
        };
        self.churn_begin();
        let process = self.rng.chance(self.ctx.opts.process_fraction);
        match self.enter(Role::Join { code }, process).await {
            Ok((uid, ready)) => {
                self.ctx.stats.joins.inc();
                self.arrived(uid, &ready, Heard::Joined(ready.peer), "joined");
            }
            Err(e) => self.ctx.fail(
                Check::Membership,
                format!("game {}: a peer could not join with the code: {e}", self.id),
            ),
        }
        self.settle().await;
        self.churn_end();
    }

    /// Starts a client as `role` and waits (bounded) until it is in the game.
    async fn enter(&mut self, role: Role, process: bool) -> Result<(u64, Ready), String> {
        match self.spawn_client(role, process) {
            Ok(uid) => self.await_ready(uid).await.map(|r| (uid, r)),
            Err(e) => Err(format!("cannot start a player: {e}")),
        }
    }

    /// Makes a client that entered a member (see [`Game::admit`]); every other member must
    /// hear `heard`.
    fn arrived(&mut self, uid: u64, ready: &Ready, heard: Heard, how: &str) {
        self.admit(uid, ready, how);
        let others = self.others(ready.peer);
        let why = format!("a peer {how}");
        for other in others {
            self.expect(other, heard, None, EVENT_BOUND, &why);
        }
    }

    /// Checks what a client entering the game saw, and makes it a member.
    pub(super) fn admit(&mut self, uid: u64, ready: &Ready, how: &str) {
        let mut expected: Vec<u16> = self.members.keys().copied().collect();
        expected.push(ready.peer);
        expected.sort_unstable();
        expected.dedup();
        let mut problems = Vec::new();
        if self.members.contains_key(&ready.peer) {
            problems.push(format!("got peer id {} which a member holds", ready.peer));
        }
        if ready.alloc != self.alloc {
            problems.push(format!(
                "is in allocation {:016x}, the game is in {:016x}",
                ready.alloc, self.alloc
            ));
        }
        if ready.host != self.host {
            problems.push(format!(
                "sees host {:?}, the game's is {:?}",
                ready.host, self.host
            ));
        }
        let mut members = ready.members.clone();
        members.sort_unstable();
        if members != expected {
            problems.push(format!("sees members {members:?}, expected {expected:?}"));
        }
        if !problems.is_empty() {
            self.ctx.fail(
                Check::Membership,
                format!(
                    "game {}: peer {} {how} but {}",
                    self.id,
                    ready.peer,
                    problems.join("; ")
                ),
            );
        }
        self.members.insert(ready.peer, uid);
        self.member_since.insert(ready.peer, Instant::now());
    }

    /// A non-host member leaves or is killed; the others must hear `PeerLeft`.
    pub(super) async fn peer_exit(&mut self, peer: u16, exit: Exit) {
        let Some(&uid) = self.members.get(&peer) else {
            return;
        };
        self.churn_begin();
        let token = self.token_of(uid);
        self.depart(uid, exit).await;
        let (reason, bound) = match exit {
            Exit::Close => {
                self.ctx.stats.leaves.inc();
                ("closed", EVENT_BOUND)
            }
            Exit::Kill => {
                self.ctx.stats.peer_crashes.inc();
                ("timed_out", self.ctx.opts.keepalive_timeout + EVENT_BOUND)
            }
        };
        let others: Vec<u64> = self.members.values().copied().collect();
        for other in others {
            self.expect(other, Heard::Left(peer), Some(reason), bound, "a peer left");
        }
        self.settle().await;
        if exit == Exit::Kill {
            if let Some(token) = token {
                self.rejoinable.push((peer, token));
            }
        }
        self.churn_end();
    }

    /// The host leaves or is killed: with members left, every one of them must see the
    /// migration through; without, the allocation must close.
    pub(super) async fn host_exit(&mut self, exit: Exit) {
        let Some(host) = self.host else { return };
        let Some(&uid) = self.members.get(&host) else {
            return;
        };
        self.churn_begin();
        let token = self.token_of(uid);
        let old_alloc = self.alloc;
        let tenure = self.host_since.elapsed();
        self.depart(uid, exit).await;
        self.host = None;
        let (reason, detection) = match exit {
            Exit::Close => {
                self.ctx.stats.host_closes.inc();
                ("closed", Duration::ZERO)
            }
            Exit::Kill => {
                self.ctx.stats.host_crashes.inc();
                ("timed_out", self.ctx.opts.keepalive_timeout)
            }
        };
        if self.members.is_empty() {
            self.ctx.stats.closed_without_members.inc();
            self.verify_closed(old_alloc, detection + CLOSE_BOUND).await;
            self.churn_end();
            return;
        }
        let started = Instant::now();
        self.migration = Some(Migration {
            old_host: host,
            old_alloc,
            reason,
            started,
            deadline: started + detection + self.ctx.opts.migration_bound,
            expect_snapshot: tenure >= SNAPSHOT_TENURE,
            remaining: self.members.iter().map(|(p, u)| (*u, *p)).collect(),
            lost: HashMap::new(),
            migrated: HashMap::new(),
            rejoined: HashMap::new(),
        });
        self.settle().await;
        if exit == Exit::Kill && !self.broken {
            if let Some(token) = token {
                self.rejoinable.push((host, token));
            }
        }
        self.churn_end();
    }

    /// A killed member comes back with its reconnect token (in this process): same id, in the
    /// game's current allocation, and every member hears `PeerRejoined`.
    pub(super) async fn rejoin(&mut self) {
        if self.rejoinable.is_empty() {
            return;
        }
        let (peer, token) = self
            .rejoinable
            .swap_remove(self.rng.below(self.rejoinable.len()));
        if self.members.contains_key(&peer) {
            return;
        }
        self.churn_begin();
        match self.enter(Role::Rejoin { token }, false).await {
            Ok((uid, ready)) => {
                self.ctx.stats.rejoins.inc();
                if ready.peer != peer {
                    self.ctx.fail(
                        Check::Membership,
                        format!(
                            "game {}: peer {peer} rejoined as peer {}",
                            self.id, ready.peer
                        ),
                    );
                }
                self.arrived(uid, &ready, Heard::Rejoined(ready.peer), "rejoined");
            }
            Err(e) => self.ctx.fail(
                Check::Membership,
                format!(
                    "game {}: killed peer {peer} could not rejoin with its token: {e}",
                    self.id
                ),
            ),
        }
        self.settle().await;
        self.churn_end();
    }

    /// Everyone leaves at once (members in their own process are killed half the time, if
    /// `kill` allows); the allocation must then close.
    pub(super) async fn end_game(&mut self, kill: bool) {
        self.churn_begin();
        let alloc = self.alloc;
        let killed = self.leave_all(kill).await;
        self.ctx.stats.games_ended.inc();
        let bound = if killed {
            self.ctx.opts.keepalive_timeout + CLOSE_BOUND
        } else {
            CLOSE_BOUND
        };
        if alloc != 0 {
            self.verify_closed(alloc, bound).await;
        }
        self.host = None;
        self.churn_end();
    }

    /// Makes every member leave; returns whether any was killed.
    pub(super) async fn leave_all(&mut self, kill: bool) -> bool {
        self.expects.clear();
        self.migration = None;
        self.unmatched.clear();
        let members: Vec<u64> = self.members.values().copied().collect();
        let mut killed = false;
        for uid in members {
            let process = self.clients.get(&uid).is_some_and(|c| c.process);
            let exit = if kill && process && self.rng.chance(0.5) {
                killed = true;
                self.ctx.stats.end_kills.inc();
                Exit::Kill
            } else {
                self.ctx.stats.end_closes.inc();
                Exit::Close
            };
            self.depart(uid, exit).await;
        }
        self.members.clear();
        killed
    }

    /// Waits (bounded) until no relay node lists allocation `alloc`.
    pub(super) async fn verify_closed(&mut self, alloc: u64, bound: Duration) {
        let deadline = Instant::now() + bound;
        let mut last = String::new();
        while Instant::now() < deadline {
            let apis: Vec<_> = self
                .ctx
                .live_nodes()
                .into_iter()
                .map(|n| (n.id, n.api))
                .collect();
            let answers = self
                .pumping(async move {
                    let mut out = Vec::new();
                    for (id, api) in apis {
                        out.push((id, api.allocation(alloc).await));
                    }
                    out
                })
                .await;
            let held: Vec<String> = answers
                .into_iter()
                .filter_map(|(id, answer)| match answer {
                    Ok(None) => None,
                    Ok(Some(info)) => Some(format!("node {id}: {info}")),
                    Err(e) => Some(format!("node {id}: {e:#}")),
                })
                .collect();
            if held.is_empty() {
                return;
            }
            last = held.join("; ");
            self.pump_until(Instant::now() + Duration::from_millis(200), |_| false)
                .await;
        }
        self.ctx.fail(
            Check::Drain,
            format!(
                "game {}: allocation {alloc:016x} still exists {bound:?} after its last member left: {last}",
                self.id
            ),
        );
    }

    /// The uids of every member but `peer`.
    pub(super) fn others(&self, peer: u16) -> Vec<u64> {
        self.members
            .iter()
            .filter(|(p, _)| **p != peer)
            .map(|(_, u)| *u)
            .collect()
    }

    /// The reconnect token client `uid` got when it entered.
    pub(super) fn token_of(&self, uid: u64) -> Option<String> {
        self.clients
            .get(&uid)
            .and_then(|c| c.ready.as_ref())
            .and_then(|r| r.as_ref().ok())
            .map(|r| r.token.clone())
    }

    /// The end of the run: everyone leaves (processes killed half the time), and the task
    /// waits (bounded) for its clients to finish.
    pub(super) async fn teardown(&mut self) {
        self.churn_begin();
        self.leave_all(true).await;
        let deadline = Instant::now() + EXIT_BOUND + Duration::from_secs(2);
        let uids: Vec<u64> = self.clients.keys().copied().collect();
        for uid in uids {
            self.depart(uid, Exit::Close).await;
        }
        self.pump_until(deadline, |g| g.tasks.is_empty()).await;
        self.tasks.shutdown().await;
    }
}
