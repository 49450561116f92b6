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
//!
//! ## Node events (a fleet)
//! Between two actions a game pauses when the node churn asks ([`crate::gate`]). If the node
//! drained or killed held the game's allocation, every member must relocate or resume, the
//! allocation must be on one live node with its id and code, and datagrams must flow again
//! (`nodes`); gaps around it are counted as relocation or resume loss, apart from the rest.
//!
//! Files: [`migration`] (following one host loss on every member), `reports` (what clients
//! report), `loss` (churn windows and stalled flows), `clients` (starting and ending
//! clients), `actions` (the churn), `nodes` (node events).

mod actions;
mod clients;
mod loss;
mod migration;
mod nodes;
mod reports;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::state::{Check, Ctx};
use crate::util::Rng;
use baton_tests::player::{Command, Report};

use self::migration::Migration;
use self::nodes::{Move, NodeCheck};
use crate::gate::NodeEventKind;

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
    /// The last node-event round this game paused for.
    gate_round: u64,
    /// The node event being followed.
    node_check: Option<NodeCheck>,
    /// While paused for a node event: the node that held the game's allocation.
    paused_on: Option<std::net::SocketAddr>,
    /// Moves (`Relocated`, `Resumed`) heard while paused, before the game follows the event:
    /// client uid, which, where to, when, and the host the client then saw.
    early_moves: Vec<(u64, NodeEventKind, Move)>,
    /// Past node events that concerned the game, `(start, end)` in Unix µs.
    node_windows: VecDeque<(u64, u64, NodeEventKind)>,
    /// When members reported moving (`Resumed` after a kill, `Relocated` after a drain), in
    /// Unix µs, the last few: a gap in the datagrams that spans one is the move's loss, even
    /// when the game did not follow the node event at its gate.
    move_reports: VecDeque<(u64, NodeEventKind)>,
    /// Until when members may hear each other's `PeerRejoined` from a resume.
    resume_echoes_until: Instant,
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
            gate_round: 0,
            node_check: None,
            paused_on: None,
            early_moves: Vec::new(),
            node_windows: VecDeque::new(),
            move_reports: VecDeque::new(),
            resume_echoes_until: Instant::now(),
        }
    }

    /// Runs games in this slot until the churn phase ends, then makes everyone leave.
    pub async fn run(mut self) {
        // Stagger the slots' starts over the first second or two.
        let stagger = Duration::from_millis(150) * (self.slot as u32 % 16);
        self.ctx.gate.join();
        self.pump_for(stagger).await;
        while self.ctx.churning() {
            if self.gate_pending() {
                self.node_round().await;
                continue;
            }
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
            if self.broken || self.gate_pending() {
                continue;
            }
            self.check_flows();
            self.act().await;
        }
        self.ctx.gate.leave();
        self.teardown().await;
    }

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

    /// Handles reports for `d` (or until the churn phase ends, or a node event asks the game
    /// to pause).
    async fn pump_for(&mut self, d: Duration) {
        let until = (Instant::now() + d).min(self.ctx.churn_end.max(Instant::now()));
        self.pump_until(until, Game::gate_pending).await;
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
}
