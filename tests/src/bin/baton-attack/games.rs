//! The real games the attacks must not hurt: `GAMES` allocations, each a host and `PEERS`
//! peers, every one an in-process [`baton_tests::player`] (an SDK session playing at 60 Hz,
//! checking every datagram) with a lobby-minted credential. They run on their own thread and
//! runtime, so the attack traffic this process makes does not queue behind them on one
//! scheduler (both still share the machine's cores with the relay).
//!
//! Measured per window ([`Games::take_window`]): one-way latency of every datagram (sender's
//! timestamp to receipt, one clock), loss (sequence gaps), and disconnects: a game member
//! leaving, its host lost, a player whose session ended.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use baton_tests::player::{self, Command, PlayerArgs, Report, Role, Sink};
use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use crate::relay::Relay;

/// Allocations played.
pub const GAMES: u32 = 3;
/// Peers per allocation, besides its host.
pub const PEERS: u32 = 3;
/// The games' tick rate.
const RATE: u32 = 60;
/// How long a player may take to enter its game.
const READY_BOUND: Duration = Duration::from_secs(20);
/// How often players report their counters.
const STATS_MS: u64 = 250;

/// What the games saw during one window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams missing (sequence gaps).
    pub lost: u64,
    /// Latency percentiles, milliseconds: p50, p99, max.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Members that left, hosts lost, sessions that ended.
    pub disconnects: u64,
    /// Misdeliveries, corruption, duplicates, refused sends.
    pub violations: u64,
}

impl Window {
    /// Lost datagrams as a percentage of those expected.
    pub fn loss_pct(&self) -> f64 {
        let expected = self.received + self.lost;
        if expected == 0 {
            return 0.0;
        }
        100.0 * self.lost as f64 / expected as f64
    }
}

/// Counters shared between the games' thread and the measuring side.
#[derive(Default)]
struct Counters {
    window: Window,
    first_violation: Option<String>,
}

/// A game's join code, for attacks that target a real allocation.
#[derive(Debug, Clone)]
pub struct GameInfo {
    /// The join code.
    pub code: String,
}

/// The running games.
pub struct Games {
    /// One per allocation.
    pub info: Vec<GameInfo>,
    counters: Arc<Mutex<Counters>>,
    latency: Arc<Mutex<Histogram<u64>>>,
    closing: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Games {
    /// Starts the games on `relay` and waits until every player is in.
    pub async fn start(relay: &Relay) -> anyhow::Result<Games> {
        let counters = Arc::new(Mutex::new(Counters::default()));
        let latency = Arc::new(Mutex::new(
            Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")?,
        ));
        let closing = Arc::new(AtomicBool::new(false));
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let base = PlayerArgs {
            relay: relay.addr,
            fingerprint: relay.fingerprint.clone(),
            rate: RATE,
            keepalive_ms: 2000,
            max_secs: 3600,
            game: 0,
            uid: None,
            payload: player::payload::HEADER_LEN,
            p2p_every: 0,
            stats_ms: STATS_MS,
            game_snapshots: false,
            credential: None,
            fallback_relays: Vec::new(),
            resume_window_ms: 0,
            idle_timeout_ms: 0,
            log: None,
            direct: false,
            netsim: None,
            role: Role::Host { snapshot_bytes: 0 },
        };
        let secret = relay.secret.clone();
        let shared = (counters.clone(), latency.clone(), closing.clone());
        let thread = std::thread::Builder::new()
            .name("games".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("games runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(run_games(base, secret, shared, ready_tx, stop_rx));
            })
            .context("starting the games' thread")?;
        let info = match ready_rx.await {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => bail!("the games did not start: {e}"),
            Err(_) => bail!("the games' thread ended before the games started"),
        };
        Ok(Games {
            info,
            counters,
            latency,
            closing,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// What the games saw since the previous call, and starts a new window.
    pub fn take_window(&self) -> Window {
        let mut window = self
            .counters
            .lock()
            .map(|mut c| std::mem::take(&mut c.window))
            .unwrap_or_default();
        if let Ok(mut h) = self.latency.lock() {
            let ms = |v: u64| v as f64 / 1000.0;
            if !h.is_empty() {
                window.p50_ms = ms(h.value_at_quantile(0.50));
                window.p99_ms = ms(h.value_at_quantile(0.99));
                window.max_ms = ms(h.max());
            }
            h.reset();
        }
        window
    }

    /// The first violation any player reported, if any.
    pub fn first_violation(&self) -> Option<String> {
        self.counters
            .lock()
            .ok()
            .and_then(|c| c.first_violation.clone())
    }

    /// Tells every player to leave, and waits for the games' thread.
    pub fn stop(mut self) {
        self.closing.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A credential of scope `any` for `subject`, valid for a day.
pub fn credential(secret: &[u8], subject: &str) -> anyhow::Result<String> {
    credential_with(
        secret,
        subject,
        baton_protocol::credential::Scope::Any,
        86_400,
    )
}

/// A credential for `subject` with `scope`, expiring `valid_secs` from now (negative: in the
/// past).
pub fn credential_with(
    secret: &[u8],
    subject: &str,
    scope: baton_protocol::credential::Scope,
    valid_secs: i64,
) -> anyhow::Result<String> {
    let now = baton_relay::auth::unix_now();
    let claims = baton_protocol::credential::Claims {
        expires: now.saturating_add_signed(valid_secs),
        subject: subject.to_owned(),
        scope,
    };
    baton_protocol::credential::mint(secret, &claims).map_err(|e| anyhow::anyhow!("minting: {e}"))
}

type Shared = (
    Arc<Mutex<Counters>>,
    Arc<Mutex<Histogram<u64>>>,
    Arc<AtomicBool>,
);

/// The games' thread: starts every player, then routes their reports into the counters until
/// told to stop.
async fn run_games(
    base: PlayerArgs,
    secret: Vec<u8>,
    (counters, latency, closing): Shared,
    ready: tokio::sync::oneshot::Sender<Result<Vec<GameInfo>, String>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let (tx, mut rx) = mpsc::channel::<(u64, Report)>(4096);
    let mut tasks = tokio::task::JoinSet::new();
    let mut commands = Vec::new();
    // Peer ids of game members, per game (reports of others joining or leaving are attacks').
    let mut members: Vec<HashSet<u16>> = Vec::new();
    let mut info = Vec::new();
    let mut uid = 0u64;
    let mut spawn = |args: PlayerArgs, uid: u64| {
        let (command_tx, command_rx) = mpsc::channel(2);
        let sink = Sink::Channel {
            uid,
            tx: tx.clone(),
            latency: latency.clone(),
        };
        let counters = counters.clone();
        let closing = closing.clone();
        tasks.spawn(async move {
            let _ = player::play(args, sink, command_rx).await;
            if !closing.load(Ordering::SeqCst) {
                if let Ok(mut c) = counters.lock() {
                    c.window.disconnects += 1;
                }
            }
        });
        command_tx
    };
    for game in 0..GAMES {
        let mut ids = HashSet::new();
        let mut code = None;
        for seat in 0..=PEERS {
            uid += 1;
            let role = match &code {
                None => Role::Host { snapshot_bytes: 0 },
                Some(code) => Role::Join {
                    code: String::clone(code),
                },
            };
            let credential = match credential(&secret, &format!("game{game}-seat{seat}")) {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return;
                }
            };
            let args = PlayerArgs {
                game,
                uid: Some(uid),
                credential: Some(credential),
                role,
                ..base.clone()
            };
            commands.push(spawn(args, uid));
            match await_ready(&mut rx, uid).await {
                Ok((peer, ready_code)) => {
                    ids.insert(peer);
                    if code.is_none() {
                        code = ready_code;
                    }
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("game {game} seat {seat}: {e}")));
                    return;
                }
            }
        }
        let Some(code) = code else {
            let _ = ready.send(Err(format!("game {game}: its host got no join code")));
            return;
        };
        info.push(GameInfo { code });
        members.push(ids);
    }
    let _ = ready.send(Ok(info));
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            report = rx.recv() => {
                let Some((uid, report)) = report else { break };
                let game = ((uid - 1) / u64::from(PEERS + 1)) as usize;
                let Ok(mut c) = counters.lock() else { break };
                tally(&mut c, members.get(game), report);
            }
        }
    }
    for command in &commands {
        let _ = command.try_send(Command::Close);
    }
    drop(commands);
    // Bounded: every player leaves on `Close`; a stuck one is dropped with the runtime.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

/// Waits for player `uid`'s `Ready` (its peer id and join code), skipping other reports.
async fn await_ready(
    rx: &mut mpsc::Receiver<(u64, Report)>,
    uid: u64,
) -> Result<(u16, Option<String>), String> {
    let deadline = Instant::now() + READY_BOUND;
    loop {
        let next = tokio::time::timeout_at(deadline.into(), rx.recv()).await;
        match next {
            Err(_) => return Err(format!("not in the game within {READY_BOUND:?}")),
            Ok(None) => return Err("report channel closed".to_owned()),
            Ok(Some((from, Report::Ready { peer, code, .. }))) if from == uid => {
                return Ok((peer, code))
            }
            Ok(Some((from, Report::Fatal { error }))) if from == uid => return Err(error),
            Ok(Some(_)) => {}
        }
    }
}

/// Adds one report to the window's counters. `members` are the report's game's own peers:
/// attackers joining and leaving that game are no disconnect of it.
fn tally(c: &mut Counters, members: Option<&HashSet<u16>>, report: Report) {
    let member = |peer: u16| members.is_some_and(|m| m.contains(&peer));
    match report {
        Report::Stats { received, .. } => c.window.received += received,
        Report::Gap { lost, .. } => c.window.lost += lost,
        Report::PeerLeft { peer, .. } if member(peer) => c.window.disconnects += 1,
        Report::HostLost { host, .. } if member(host) => c.window.disconnects += 1,
        Report::Violation { what } => {
            c.window.violations += 1;
            c.first_violation.get_or_insert(what);
        }
        _ => {}
    }
}
