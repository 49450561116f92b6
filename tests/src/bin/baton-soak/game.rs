//! One game slot: a task that runs a game (an allocation and its members) at a time, churns
//! its membership, and checks that every member sees what it should.
//!
//! ## Flow
//! A game starts with a host and `--peers` peers. Then, every `--churn-every` (jittered), the
//! task takes one action: a peer joins, leaves cleanly or is killed; the host leaves cleanly
//! or is killed; a killed member comes back with its reconnect token; or everyone leaves and
//! a new game starts. Actions of one game are sequential: each waits until its consequences
//! have been seen by every member (or their bound passed, which is a failure) before the next,
//! so every check is exact. Games run concurrently, so the relay sees overlapping churn.
//!
//! ## Concurrency model
//! The task owns its clients: in-process clients are tasks in its [`JoinSet`], child
//! processes have a reader task there (stdout reports, stderr tail) and are reaped by one
//! after they are told to close or killed. Every client's reports come in on one bounded
//! channel, which the task drains whenever it waits ([`Game::pump_until`]), so a slow action
//! never stalls the clients. Nothing here blocks; every wait is bounded.
//!
//! ## Loss accounting
//! A gap in a flow's sequence numbers is *churn loss* if a membership change of the game
//! overlaps the time between the two arrivals around it (with [`CHURN_GRACE_US`] either side),
//! else *steady loss*, which the `--max-loss` threshold applies to.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_client::AllocationId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::state::{lock, Check, Ctx};
use crate::util::{now_us, Rng};
use baton_tests::player::{self, Command, PlayerArgs, Report, Role, Sink};

/// How often a client reports its counters.
const STATS_EVERY: Duration = Duration::from_millis(500);
/// The hidden subcommand that makes `baton-soak` a player process.
pub const PLAYER_SUBCOMMAND: &str = "player";
/// Time a client has to connect and enter its game.
const READY_BOUND: Duration = Duration::from_secs(15);
/// Time a membership event (`PeerJoined`, `PeerLeft`, `PeerRejoined`) has to reach every
/// member once the relay knows of the change.
const EVENT_BOUND: Duration = Duration::from_secs(3);
/// A member that should hear from a sender and has not for this long is stalled.
const STALL_BOUND: Duration = Duration::from_secs(3);
/// Gaps this close to a membership change count as churn loss (µs).
const CHURN_GRACE_US: u64 = 1_000_000;
/// Time an event nobody expected may wait for the action that explains it.
const UNMATCHED_GRACE: Duration = Duration::from_secs(2);
/// Time a client process has to exit after being told to close (then it is killed).
const EXIT_BOUND: Duration = Duration::from_secs(5);
/// Time the relay has to drop an allocation once its last member is gone (plus the
/// keepalive timeout when a member was killed).
const CLOSE_BOUND: Duration = Duration::from_secs(5);
/// A host that held the role this long has uploaded a snapshot; its successor must get one.
const SNAPSHOT_TENURE: Duration = Duration::from_secs(3);
/// An allocation id seen in a payload must be known to the game within this time.
const ALLOC_GRACE: Duration = Duration::from_secs(3);
/// Membership changes remembered for loss classification.
const CHURN_MEMORY_US: u64 = 120_000_000;
/// Steady-loss examples kept for the report.
const LOSS_EXAMPLES: usize = 10;
/// Longest stderr tail of a client process kept for messages.
const STDERR_TAIL: usize = 1500;

/// What a client said when it entered the game.
#[derive(Debug, Clone)]
struct Ready {
    peer: u16,
    alloc: u64,
    code: Option<String>,
    token: String,
    host: Option<u16>,
    members: Vec<u16>,
}

/// Where a client is in its life, as the game sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Entering the game.
    Entering,
    /// A member.
    Member,
    /// Told to leave or killed; its reports no longer concern the game.
    Departing,
}

/// One client of the game.
struct Client {
    phase: Phase,
    /// Whether it runs in its own process (and can be killed).
    process: bool,
    /// What it reported on entering (or why it could not).
    ready: Option<Result<Ready, String>>,
    /// An in-process client's command queue.
    commands: Option<mpsc::Sender<Command>>,
    /// A player process, until it is told to leave or killed.
    child: Option<Child>,
    /// Its stdin, for the `close` command.
    stdin: Option<ChildStdin>,
    /// Per sender peer id, when its latest datagram arrived (Unix µs).
    last_from: HashMap<u16, u64>,
}

/// An event a member must hear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    Joined(u16),
    Left(u16),
    Rejoined(u16),
}

/// A pending expectation: `uid` must hear `heard` (with `reason`) by `deadline`.
#[derive(Debug)]
struct Expect {
    uid: u64,
    heard: Heard,
    reason: Option<&'static str>,
    deadline: Instant,
    why: String,
}

/// What a migrating member reported after `HostMigrated`.
#[derive(Debug, Clone)]
struct Migrated {
    alloc: u64,
    new_host: u16,
    you_are_host: bool,
    members: Vec<u16>,
    snapshot_from: Option<u64>,
}

/// A host loss being followed on every remaining member.
#[derive(Debug)]
struct Migration {
    old_host: u16,
    old_alloc: u64,
    reason: &'static str,
    started: Instant,
    deadline: Instant,
    expect_snapshot: bool,
    remaining: BTreeMap<u64, u16>,
    lost: HashMap<u64, Option<u16>>,
    migrated: HashMap<u64, Migrated>,
    rejoined: HashMap<u64, BTreeSet<u16>>,
}

/// A migration seen through.
struct MigrationDone {
    new_host: u16,
    new_uid: u64,
    alloc: u64,
    problems: Vec<String>,
    snapshot_from: Option<u64>,
}

impl Migration {
    /// Takes the reports that concern the migration; false for others.
    fn take(&mut self, uid: u64, report: &Report) -> Result<bool, String> {
        if !self.remaining.contains_key(&uid) {
            return Ok(false);
        }
        match report {
            Report::HostLost {
                host,
                reason,
                elected,
            } if *host == self.old_host => {
                self.lost.insert(uid, *elected);
                if reason != self.reason {
                    return Err(format!(
                        "peer {} heard host {host} lost with reason {reason}, expected {}",
                        self.remaining[&uid], self.reason
                    ));
                }
                Ok(true)
            }
            Report::HostMigrated {
                allocation,
                new_host,
                you_are_host,
                members,
                snapshot_from,
                ..
            } => {
                self.migrated.insert(
                    uid,
                    Migrated {
                        alloc: alloc_id(allocation),
                        new_host: *new_host,
                        you_are_host: *you_are_host,
                        members: members.clone(),
                        snapshot_from: *snapshot_from,
                    },
                );
                if !self.lost.contains_key(&uid) {
                    return Err(format!(
                        "peer {} heard HostMigrated without HostLost first",
                        self.remaining[&uid]
                    ));
                }
                Ok(true)
            }
            Report::PeerRejoined { peer } => {
                self.rejoined.entry(uid).or_default().insert(*peer);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The outcome once every remaining member has migrated and the new host heard every
    /// other member rejoin; `None` while waiting.
    fn done(&self) -> Option<MigrationDone> {
        if self.migrated.len() < self.remaining.len() {
            return None;
        }
        let mut problems = Vec::new();
        let peers: Vec<u16> = self.remaining.values().copied().collect();
        let mut sorted_peers = peers.clone();
        sorted_peers.sort_unstable();
        let hosts: BTreeSet<u16> = self.migrated.values().map(|m| m.new_host).collect();
        let allocs: BTreeSet<u64> = self.migrated.values().map(|m| m.alloc).collect();
        let claimants: Vec<u64> = self
            .migrated
            .iter()
            .filter(|(_, m)| m.you_are_host)
            .map(|(uid, _)| *uid)
            .collect();
        let new_host = *hosts.iter().next()?;
        if hosts.len() != 1 {
            problems.push(format!("members disagree on the new host: {hosts:?}"));
        }
        if allocs.len() != 1 {
            problems.push(format!(
                "members disagree on the new allocation: {allocs:x?}"
            ));
        }
        let alloc = *allocs.iter().next()?;
        if alloc == self.old_alloc {
            problems.push("the successor allocation has the old id".to_owned());
        }
        let new_uid = match claimants.as_slice() {
            [uid] if self.remaining.get(uid) == Some(&new_host) => *uid,
            _ => {
                problems.push(format!(
                    "expected exactly peer {new_host} to be told it is host; told: {:?}",
                    claimants
                        .iter()
                        .map(|u| self.remaining.get(u))
                        .collect::<Vec<_>>()
                ));
                self.remaining
                    .iter()
                    .find(|(_, p)| **p == new_host)
                    .map(|(u, _)| *u)?
            }
        };
        if !peers.contains(&new_host) {
            problems.push(format!(
                "new host {new_host} is not a remaining member {peers:?}"
            ));
        }
        // The new host hears every other member arrive, under its old id.
        let expected: BTreeSet<u16> = peers.iter().copied().filter(|p| *p != new_host).collect();
        let heard = self.rejoined.get(&new_uid).cloned().unwrap_or_default();
        if !expected.is_subset(&heard) && Instant::now() < self.deadline {
            return None;
        }
        if !expected.is_subset(&heard) {
            problems.push(format!(
                "new host {new_host} heard PeerRejoined for {heard:?}, expected {expected:?}"
            ));
        }
        for (uid, m) in &self.migrated {
            let peer = self.remaining[uid];
            let mut members = m.members.clone();
            members.sort_unstable();
            if members != sorted_peers {
                problems.push(format!(
                    "peer {peer} sees members {members:?} after the migration, expected {sorted_peers:?} (ids must not change)"
                ));
            }
            match self.lost.get(uid) {
                Some(Some(elected)) if *elected == new_host => {}
                other => problems.push(format!(
                    "peer {peer}'s last HostLost named {other:?} as elected, but {new_host} took over"
                )),
            }
        }
        let snapshot_from = self.migrated.get(&new_uid).and_then(|m| m.snapshot_from);
        Some(MigrationDone {
            new_host,
            new_uid,
            alloc,
            problems,
            snapshot_from,
        })
    }

    /// What each remaining member has reported, for a failure message.
    fn progress(&self) -> String {
        self.remaining
            .iter()
            .map(|(uid, peer)| {
                let lost = match self.lost.get(uid) {
                    Some(e) => format!("HostLost(elected {e:?})"),
                    None => "no HostLost".to_owned(),
                };
                let migrated = match self.migrated.get(uid) {
                    Some(m) => format!("HostMigrated(host {})", m.new_host),
                    None => "no HostMigrated".to_owned(),
                };
                let rejoined = self
                    .rejoined
                    .get(uid)
                    .map(|r| format!(", PeerRejoined {r:?}"))
                    .unwrap_or_default();
                format!("peer {peer}: {lost}, {migrated}{rejoined}")
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// How a member leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// `Session::close`.
    Close,
    /// SIGKILL of its process: silence, as far as the relay can tell.
    Kill,
}

/// One game slot.
pub struct Game {
    ctx: Arc<Ctx>,
    /// Which of the `--allocations` slots this is.
    slot: usize,
    rng: Rng,
    /// Cloned into every client; reports carry the client's uid.
    tx: mpsc::Sender<(u64, Report)>,
    rx: mpsc::Receiver<(u64, Report)>,
    /// Client tasks, player-process readers and reapers.
    tasks: JoinSet<()>,
    /// Every client not yet finished, by uid (members, entering and departing ones).
    clients: HashMap<u64, Client>,
    /// The current game's id (0: none).
    id: u32,
    /// The members by peer id: their client uids.
    members: BTreeMap<u16, u64>,
    /// When each member entered (or came back).
    member_since: HashMap<u16, Instant>,
    /// The host, `None` while migrating or between games.
    host: Option<u16>,
    /// Since when the current host holds the role.
    host_since: Instant,
    /// Uids of every client that hosted this game (snapshot uploaders).
    hosts: HashSet<u64>,
    /// The join code.
    code: Option<String>,
    /// The current allocation id.
    alloc: u64,
    /// Every allocation id of this game (the original and its successors).
    lineage: HashSet<u64>,
    /// Past membership changes, `(start, end)` in Unix µs.
    churn: VecDeque<(u64, u64)>,
    /// The membership change under way, since (Unix µs).
    churn_open: Option<u64>,
    /// Events members must hear.
    expects: Vec<Expect>,
    /// Events heard that no expectation claimed (yet).
    unmatched: Vec<(u64, Report, Instant)>,
    /// The host loss being followed.
    migration: Option<Migration>,
    /// Killed members that may come back: peer id and reconnect token.
    rejoinable: Vec<(u16, String)>,
    /// Allocation ids seen in payloads but not (yet) in the lineage: id, sender, when.
    pending_allocs: Vec<(u64, u16, Instant)>,
    /// Something unexpected happened; the game is ended and a new one started.
    broken: bool,
}

impl Game {
    /// Game slot `slot`, with its own random sequence from `seed`.
    pub fn new(ctx: Arc<Ctx>, slot: usize, seed: u64) -> Game {
        let (tx, rx) = mpsc::channel(1024);
        Game {
            ctx,
            slot,
            rng: Rng::new(seed ^ (slot as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            tx,
            rx,
            tasks: JoinSet::new(),
            clients: HashMap::new(),
            id: 0,
            members: BTreeMap::new(),
            member_since: HashMap::new(),
            host: None,
            host_since: Instant::now(),
            hosts: HashSet::new(),
            code: None,
            alloc: 0,
            lineage: HashSet::new(),
            churn: VecDeque::new(),
            churn_open: None,
            expects: Vec::new(),
            unmatched: Vec::new(),
            migration: None,
            rejoinable: Vec::new(),
            pending_allocs: Vec::new(),
            broken: false,
        }
    }

    /// Runs games in this slot until the churn phase ends, then makes everyone leave.
    pub async fn run(mut self) {
        // Stagger the slots' starts over the first second or two.
        let stagger = Duration::from_millis(150) * (self.slot as u32 % 16);
        self.pump_for(stagger).await;
        while self.ctx.churning() {
            if self.broken {
                // What the game's members know can no longer be predicted: start afresh.
                self.end_game(false).await;
            }
            if self.host.is_none() && !self.start_game().await {
                self.pump_for(Duration::from_secs(1)).await;
                continue;
            }
            let wait = self.rng.jitter(self.ctx.opts.churn_every, 0.5, 1.5);
            self.pump_for(wait).await;
            if !self.ctx.churning() {
                break;
            }
            if self.broken {
                continue;
            }
            self.check_flows();
            self.act().await;
        }
        self.teardown().await;
    }

    // ---- waiting -------------------------------------------------------------------------

    /// Handles reports until `done` holds or `deadline` passes; returns whether `done` held.
    async fn pump_until(&mut self, deadline: Instant, done: impl Fn(&Game) -> bool) -> bool {
        // At most one iteration per report or per 250 ms, within the deadline.
        loop {
            self.housekeeping();
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wake = deadline.min(now + Duration::from_millis(250));
            tokio::select! {
                report = self.rx.recv() => {
                    if let Some((uid, report)) = report {
                        self.handle(uid, report);
                    }
                }
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            self.ctx.fail(Check::Membership, format!("game {}: a client task panicked: {e}", self.id));
                        }
                    }
                }
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// Handles reports for `d` (or until the churn phase ends).
    async fn pump_for(&mut self, d: Duration) {
        let until = (Instant::now() + d).min(self.ctx.churn_end.max(Instant::now()));
        self.pump_until(until, |_| false).await;
    }

    /// Handles reports while `fut` runs (it must not borrow the game).
    async fn pumping<T>(&mut self, fut: impl Future<Output = T>) -> T {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return out,
                report = self.rx.recv() => {
                    if let Some((uid, report)) = report {
                        self.handle(uid, report);
                    }
                }
            }
        }
    }

    /// Waits until every expectation is met and no migration is in flight (each has its own
    /// deadline; this adds a margin).
    async fn settle(&mut self) {
        let latest = self
            .expects
            .iter()
            .map(|e| e.deadline)
            .chain(self.migration.as_ref().map(|m| m.deadline))
            .max()
            .unwrap_or_else(Instant::now);
        self.pump_until(latest + Duration::from_secs(1), |g| {
            g.expects.is_empty() && g.migration.is_none()
        })
        .await;
    }

    // ---- reports -------------------------------------------------------------------------

    /// One report from client `uid`.
    fn handle(&mut self, uid: u64, report: Report) {
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
                if phase == Phase::Member && !self.in_churn(prev_us, now_us) {
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
            Report::Disconnected { reason } => {
                if phase != Phase::Departing {
                    let what = format!(
                        "game {}: peer {:?} was disconnected unexpectedly: {reason}",
                        self.id,
                        self.peer_of(uid)
                    );
                    self.ctx.fail(Check::Membership, what);
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
                if !self.match_expect(uid, &event) {
                    self.unmatched.push((uid, event, Instant::now()));
                }
            }
        }
    }

    /// Satisfies the expectation `event` from `uid` meets, if any.
    fn match_expect(&mut self, uid: u64, event: &Report) -> bool {
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
    fn expect(
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
    fn housekeeping(&mut self) {
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
    fn alloc_seen(&mut self, alloc: u64, sender: u16) {
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
    fn check_migration(&mut self) {
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

    // ---- bookkeeping -------------------------------------------------------------------

    /// The peer id of client `uid`: as a member, or as it entered.
    fn peer_of(&self, uid: u64) -> Option<u16> {
        self.members
            .iter()
            .find(|(_, u)| **u == uid)
            .map(|(p, _)| *p)
            .or_else(|| {
                self.clients
                    .get(&uid)
                    .and_then(|c| c.ready.as_ref())
                    .and_then(|r| r.as_ref().ok())
                    .map(|r| r.peer)
            })
    }

    /// Drops a member that is gone without the game asking (already a failure).
    fn forget_member(&mut self, uid: u64) {
        if let Some(c) = self.clients.get_mut(&uid) {
            c.phase = Phase::Departing;
        }
        if let Some(peer) = self.peer_of(uid) {
            if self.members.get(&peer) == Some(&uid) {
                self.members.remove(&peer);
                // What follows in this game cannot be checked exactly any more.
                self.broken = true;
            }
        }
    }

    /// A membership change starts (gaps from now on are churn loss).
    fn churn_begin(&mut self) {
        if self.churn_open.is_none() {
            self.churn_open = Some(now_us());
        }
    }

    /// The membership change is over; forgets changes too old to matter.
    fn churn_end(&mut self) {
        let now = now_us();
        if let Some(start) = self.churn_open.take() {
            self.churn.push_back((start, now));
        }
        while self
            .churn
            .front()
            .is_some_and(|(_, end)| now.saturating_sub(*end) > CHURN_MEMORY_US)
        {
            self.churn.pop_front();
        }
    }

    /// Whether a membership change overlaps `[prev_us, now_us]` (with the grace).
    fn in_churn(&self, prev_us: u64, now_us: u64) -> bool {
        let g = CHURN_GRACE_US;
        if self.churn_open.is_some_and(|start| now_us + g >= start) {
            return true;
        }
        self.churn
            .iter()
            .any(|(a, b)| prev_us <= b + g && now_us + g >= *a)
    }

    /// Fails for every member that has not heard from a peer it should (every member from
    /// the host, the host from every member) for [`STALL_BOUND`], counting only pairs that
    /// have both been members, under the same host, for longer than that.
    fn check_flows(&mut self) {
        let settled = STALL_BOUND + Duration::from_secs(1);
        if self.migration.is_some() || self.host_since.elapsed() < settled {
            return;
        }
        let Some(host) = self.host else { return };
        let steady = |p: &u16| {
            self.member_since
                .get(p)
                .is_some_and(|since| since.elapsed() >= settled)
        };
        let now = now_us();
        let bound = STALL_BOUND.as_micros() as u64;
        let mut stalled = Vec::new();
        let mut pairs = 0;
        for (&peer, &uid) in self.members.iter().filter(|(p, _)| steady(p)) {
            let senders: Vec<u16> = if peer == host {
                self.members
                    .keys()
                    .copied()
                    .filter(|p| *p != host && steady(p))
                    .collect()
            } else {
                vec![host]
            };
            let Some(client) = self.clients.get(&uid) else {
                continue;
            };
            for s in senders {
                pairs += 1;
                let last = client.last_from.get(&s).copied().unwrap_or(0);
                if now.saturating_sub(last) > bound {
                    stalled.push((uid, peer, s, last));
                }
            }
        }
        self.ctx.stats.flow_checks.add(pairs);
        for (uid, peer, sender, last) in stalled {
            let ago = if last == 0 {
                "ever".to_owned()
            } else {
                format!("{} ms", now.saturating_sub(last) / 1000)
            };
            let what = format!(
                "game {}: peer {peer} has heard nothing from peer {sender} for {ago}, both members for over {settled:?}",
                self.id
            );
            self.ctx.fail(Check::Loss, what);
            if let Some(c) = self.clients.get_mut(&uid) {
                c.last_from.insert(sender, now);
            }
        }
    }

    // ---- clients -------------------------------------------------------------------------

    /// Starts a client of the current game, in this process or its own.
    fn spawn_client(&mut self, role: Role, process: bool) -> anyhow::Result<u64> {
        let ctx = &self.ctx;
        let uid = ctx.next_uid();
        let spec = PlayerArgs {
            relay: ctx.relay_addr,
            fingerprint: ctx.fingerprint.clone(),
            rate: ctx.opts.rate,
            keepalive_ms: ctx.opts.keepalive_interval.as_millis() as u64,
            max_secs: ctx
                .churn_end
                .saturating_duration_since(Instant::now())
                .as_secs()
                + 60,
            game: self.id,
            uid: Some(uid),
            payload: ctx.opts.payload,
            p2p_every: ctx.opts.p2p_every,
            stats_ms: STATS_EVERY.as_millis() as u64,
            game_snapshots: true,
            role,
        };
        let mut client = Client {
            phase: Phase::Entering,
            process,
            ready: None,
            commands: None,
            child: None,
            stdin: None,
            last_from: HashMap::new(),
        };
        if process {
            let mut child = tokio::process::Command::new(&ctx.exe)
                .arg(PLAYER_SUBCOMMAND)
                .args(spec.to_args())
                .env_remove("RUST_LOG")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            ctx.stats.processes.inc();
            let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
                anyhow::bail!("player process without pipes");
            };
            client.stdin = child.stdin.take();
            client.child = Some(child);
            let tx = self.tx.clone();
            self.tasks.spawn(read_player(uid, stdout, stderr, tx));
        } else {
            let (commands, rx) = mpsc::channel(2);
            client.commands = Some(commands);
            let sink = Sink::Channel {
                uid,
                tx: self.tx.clone(),
                latency: ctx.latency.clone(),
            };
            self.tasks.spawn(async move {
                // A client that cannot enter has reported why.
                let _ = player::play(spec, sink, rx).await;
            });
        }
        self.clients.insert(uid, client);
        Ok(uid)
    }

    /// Waits (bounded) until client `uid` is in the game.
    async fn await_ready(&mut self, uid: u64) -> Result<Ready, String> {
        let deadline = Instant::now() + READY_BOUND;
        self.pump_until(deadline, |g| {
            g.clients.get(&uid).is_none_or(|c| c.ready.is_some())
        })
        .await;
        match self.clients.get(&uid).and_then(|c| c.ready.clone()) {
            Some(Ok(ready)) => {
                if let Some(c) = self.clients.get_mut(&uid) {
                    c.phase = Phase::Member;
                }
                Ok(ready)
            }
            other => {
                self.depart(uid, Exit::Kill).await;
                if self.clients.get(&uid).is_some_and(|c| !c.process) {
                    // Its task has ended or ends at the close command; nothing more comes.
                    self.clients.remove(&uid);
                }
                Err(match other {
                    Some(Err(e)) => e,
                    _ => format!("not in the game within {READY_BOUND:?}"),
                })
            }
        }
    }

    /// Makes client `uid` leave; it is no longer a member from here on.
    async fn depart(&mut self, uid: u64, exit: Exit) {
        if let Some(peer) = self.peer_of(uid) {
            if self.members.get(&peer) == Some(&uid) {
                self.members.remove(&peer);
            }
        }
        let Some(client) = self.clients.get_mut(&uid) else {
            return;
        };
        client.phase = Phase::Departing;
        if let Some(commands) = client.commands.take() {
            // In-process clients cannot be killed honestly (dropping a session closes it), so
            // they always close; dropping the sender closes too if the queue is full.
            let _ = commands.try_send(Command::Close);
            return;
        }
        let stdin = client.stdin.take();
        let Some(mut child) = client.child.take() else {
            return;
        };
        match exit {
            Exit::Kill => {
                let _ = child.start_kill();
            }
            Exit::Close => {
                if let Some(mut stdin) = stdin {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), stdin.write_all(b"close\n"))
                            .await;
                }
            }
        }
        self.tasks.spawn(async move {
            if tokio::time::timeout(EXIT_BOUND, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        });
    }

    // ---- actions -------------------------------------------------------------------------

    /// Starts a new game: a host, then `--peers` peers. False if it could not.
    async fn start_game(&mut self) -> bool {
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
        let ready = match self.spawn_client(Role::Host { snapshot_bytes: 0 }, process) {
            Ok(uid) => self.await_ready(uid).await.map(|r| (uid, r)),
            Err(e) => Err(format!("cannot start a player process: {e}")),
        };
        let (uid, ready) = match ready {
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
    async fn act(&mut self) {
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
    async fn join(&mut self) {
        let Some(code) = self.code.clone() else {
            return;
        };
        self.churn_begin();
        let process = self.rng.chance(self.ctx.opts.process_fraction);
        let ready = match self.spawn_client(Role::Join { code }, process) {
            Ok(uid) => self.await_ready(uid).await.map(|r| (uid, r)),
            Err(e) => Err(format!("cannot start a player process: {e}")),
        };
        match ready {
            Ok((uid, ready)) => {
                self.ctx.stats.joins.inc();
                self.admit(uid, &ready, "joined");
                let others = self.others(ready.peer);
                for other in others {
                    self.expect(
                        other,
                        Heard::Joined(ready.peer),
                        None,
                        EVENT_BOUND,
                        "a peer joined",
                    );
                }
            }
            Err(e) => self.ctx.fail(
                Check::Membership,
                format!("game {}: a peer could not join with the code: {e}", self.id),
            ),
        }
        self.settle().await;
        self.churn_end();
    }

    /// Checks what a client entering the game saw, and makes it a member.
    fn admit(&mut self, uid: u64, ready: &Ready, how: &str) {
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
    async fn peer_exit(&mut self, peer: u16, exit: Exit) {
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
    async fn host_exit(&mut self, exit: Exit) {
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
    async fn rejoin(&mut self) {
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
        let ready = match self.spawn_client(Role::Rejoin { token }, false) {
            Ok(uid) => self.await_ready(uid).await.map(|r| (uid, r)),
            Err(e) => Err(e.to_string()),
        };
        match ready {
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
                self.admit(uid, &ready, "rejoined");
                let others = self.others(ready.peer);
                for other in others {
                    self.expect(
                        other,
                        Heard::Rejoined(ready.peer),
                        None,
                        EVENT_BOUND,
                        "a member rejoined",
                    );
                }
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
    async fn end_game(&mut self, kill: bool) {
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
    async fn leave_all(&mut self, kill: bool) -> bool {
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

    /// Waits (bounded) until the relay no longer lists allocation `alloc`.
    async fn verify_closed(&mut self, alloc: u64, bound: Duration) {
        let api = self.ctx.api.clone();
        let deadline = Instant::now() + bound;
        let mut last = String::new();
        while Instant::now() < deadline {
            let api = api.clone();
            match self
                .pumping(async move { api.allocation(alloc).await })
                .await
            {
                Ok(None) => return,
                Ok(Some(info)) => last = info.to_string(),
                Err(e) => last = format!("{e:#}"),
            }
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
    fn others(&self, peer: u16) -> Vec<u64> {
        self.members
            .iter()
            .filter(|(p, _)| **p != peer)
            .map(|(_, u)| *u)
            .collect()
    }

    /// The reconnect token client `uid` got when it entered.
    fn token_of(&self, uid: u64) -> Option<String> {
        self.clients
            .get(&uid)
            .and_then(|c| c.ready.as_ref())
            .and_then(|r| r.as_ref().ok())
            .map(|r| r.token.clone())
    }

    /// The end of the run: everyone leaves (processes killed half the time), and the task
    /// waits (bounded) for its clients to finish.
    async fn teardown(&mut self) {
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

/// An allocation id as a report spells it (hex); 0 if it is not one.
fn alloc_id(allocation: &str) -> u64 {
    allocation.parse::<AllocationId>().map_or(0, |a| a.0)
}

/// Forwards a player process's reports to its game, then reports how it ended.
async fn read_player(
    uid: u64,
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
    tx: mpsc::Sender<(u64, Report)>,
) {
    let out = async {
        let mut lines = BufReader::new(stdout).lines();
        let mut unreadable = 0u64;
        // Ends with the process's stdout (the process is bounded by --max-secs).
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Report>(&line) {
                Ok(report) => {
                    let _ = tx.send((uid, report)).await;
                }
                Err(_) => unreadable += 1,
            }
        }
        unreadable
    };
    let err = async {
        let mut buf = Vec::new();
        let _ = stderr.take(1 << 20).read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let start = text.len().saturating_sub(STDERR_TAIL);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].trim().to_owned()
    };
    let (unreadable, stderr_tail) = tokio::join!(out, err);
    let mut detail = format!("output ended ({unreadable} unreadable lines)");
    if !stderr_tail.is_empty() {
        detail.push_str(&format!("; stderr: {stderr_tail}"));
    }
    let _ = tx.send((uid, Report::Exited { detail })).await;
}
