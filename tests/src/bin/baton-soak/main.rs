//! `baton-soak`: a soak test of a real `baton-relay` process with host migration.
//!
//! Runs `--allocations` games at once for `--duration`, each a host and `--peers` peers
//! playing at `--rate` ticks per second (the host broadcasts, the others send to the host and
//! now and then to each other), with churn: peers join and leave, hosts leave cleanly or are
//! killed, killed members come back with their reconnect tokens, whole games end and new ones
//! start. Meanwhile connections that never bind, short-lived join codes and unclaimed
//! reservations probe the relay's expiry. Then everyone leaves and the relay must drain.
//!
//! A crash must be silence to the relay, detected by its keepalive timeout. Dropping an SDK
//! `Session` sends a close, so a client that may be killed runs in its own process (this
//! executable re-run with the hidden `player` subcommand) and is killed with SIGKILL. The relay
//! runs with a short `--keepalive-timeout` (2 s) and clients ping more often than that.
//!
//! ## Checks (exit status 1 if any fails, with what failed)
//! - **migration**: every host loss with members left leads to `HostLost` then
//!   `HostMigrated` on every remaining member within `--migration-bound` of the relay learning
//!   of the loss (the keepalive timeout is added for a killed host), all agreeing on the new
//!   host and allocation, peer ids unchanged, the new host hearing every other member rejoin
//!   and receiving the old host's snapshot.
//! - **routing**: no datagram reaches a wrong peer or game, carries a sender other than the
//!   relay's stamp, names an allocation outside its game's lineage, or arrives corrupted or
//!   twice (every payload says who sent it, where to, in which game and allocation).
//! - **loss**: datagrams missing between membership changes stay under `--max-loss`, and no
//!   member of a stable game stops hearing from the host (or the host from a member).
//! - **membership**: joins, leaves, crashes and rejoins are seen by every member, with the
//!   right reasons, ids and member lists.
//! - **expiry**: unbound connections, short-lived join codes and unclaimed reservations expire
//!   when configured, not before.
//! - **drain**: after everyone leaves, `GET /v1/allocations` is empty and `/metrics` shows
//!   `baton_allocations 0` and `baton_connections 0`.
//! - **memory**: the relay's RSS shows no growth trend: the median of the last third of the
//!   samples taken after the warm-up is at most the first third's plus `--rss-tolerance` and
//!   `--rss-slack-mib`.
//! - **relay_health**: the relay stays up, logs nothing at error level and writes nothing to
//!   stderr.
//! - **coverage**: a run of 30 s or more exercised migrations, crashes and every expiry.
//!
//! ## A fleet (`--nodes N`, N of 2 or more)
//! The soak starts its own `redis-server` as the directory and N relay processes as nodes of
//! one fleet (shared certificate and fleet secret). Games are created on the nodes in turn,
//! every other client enters through a random node (redirected to the allocation's node),
//! and every client has the other nodes as fallback relays. Every `--node-churn-every` the
//! games pause and the node holding the most allocations is drained (`POST /v1/drain`) or,
//! the next time, killed with SIGKILL, and a node with a new id replaces it; never fewer than
//! two nodes take clients.
//! More checks:
//! - **fleet**: every game on a drained node relocates on every member (`Relocated`) within
//!   `--relocate-bound`, every game on a killed node resumes on every member (`Resumed`)
//!   within `--resume-bound` (or, if its host did not come back in time, elects a new host:
//!   counted, not a failure); afterwards the allocation is on one live node with its id,
//!   code, host and members, datagrams flow again, and a newcomer joins by the code through
//!   a random node.
//! - **loss** counts gaps around relocations and resumes apart from the rest.
//! - **drain** (at the end) holds on every node still running; **memory** is judged per
//!   node that ran from before the warm-up to the end; **relay_health** covers every node
//!   (a drained node must exit 0 by itself; a killed one is not expected to exit cleanly).
//! - **counters** are not compared: a killed node takes its counters with it.
//!
//! Every loop is bounded in count and time, and all traffic stays on 127.0.0.1.

mod expiry;
mod fleet;
mod game;
mod gate;
mod relay;
mod report;
mod state;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;

use crate::relay::{Relay, RelaySettings};
use crate::report::{Drain, Fate, Monitor, NodeMon, Summary};
use crate::state::{Check, Ctx, NodeAddr, Opts};
use crate::util::{parse_duration, parse_fraction, parse_percent};
use baton_tests::player::{self, payload, PlayerArgs};

/// Soak test of a Baton relay with churn, crashes and host migration.
#[derive(Debug, Parser)]
#[command(
    name = "baton-soak",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  \
        baton-soak --duration 60s\n  \
        baton-soak --duration 1h --allocations 20 --peers 4 --rate 30\n  \
        baton-soak --duration 20s --json > soak.json\n  \
        baton-soak --nodes 3 --duration 60s"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    soak: SoakArgs,
}

/// Internal subcommands.
#[derive(Debug, Subcommand)]
enum Sub {
    /// A client in its own process (started by the soak itself).
    #[command(hide = true)]
    Player(PlayerArgs),
}

/// Settings of a soak run.
#[derive(Debug, Clone, clap::Args)]
struct SoakArgs {
    /// How long the churn phase lasts; then everyone leaves and the relay must drain.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Games (allocations) at once.
    #[arg(long, default_value_t = 8)]
    allocations: usize,
    /// Peers per game besides the host when a game starts (churn varies it from 1 to
    /// this plus 3 members).
    #[arg(long, default_value_t = 3)]
    peers: usize,
    /// Game ticks per second: the host broadcasts, every other member sends to the host.
    #[arg(long, default_value_t = 30)]
    rate: u32,
    /// Bytes per datagram payload (44 to 1150).
    #[arg(long, default_value_t = 120)]
    payload: usize,
    /// Every this many ticks a member also sends straight to another member (0: never).
    #[arg(long, default_value_t = 5)]
    p2p_every: u64,
    /// Mean time between two membership actions of one game (join, leave, crash, ...).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    churn_every: Duration,
    /// Share of clients run as their own process, which can be killed (a host is twice as
    /// likely to be one).
    #[arg(long, default_value = "0.3", value_parser = parse_fraction)]
    process_fraction: f64,
    /// The relay's keepalive timeout: a killed client is noticed after this.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    keepalive_timeout: Duration,
    /// Clients' keepalive interval (well below the keepalive timeout).
    #[arg(long, default_value = "400ms", value_parser = parse_duration)]
    keepalive_interval: Duration,
    /// The relay's bind timeout (probed with connections that never bind).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    bind_timeout: Duration,
    /// The relay's host bind timeout (probed with reservations nobody claims).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    host_bind_timeout: Duration,
    /// Lifetime of the join codes of the expiry probe (whole seconds, at least 1 s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    code_ttl: Duration,
    /// Mean time between two expiry probes.
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    expiry_every: Duration,
    /// Time a migration may take, from the relay learning of the host loss to the last
    /// member migrated (a killed host's loss is learned after the keepalive timeout).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    migration_bound: Duration,
    /// Largest share of datagrams lost between membership changes.
    #[arg(long, default_value = "1%", value_parser = parse_percent)]
    max_loss: f64,
    /// Allowed growth of the relay's median RSS from the first to the last third of the run.
    #[arg(long, default_value = "20%", value_parser = parse_percent)]
    rss_tolerance: f64,
    /// Allowed RSS growth on top of --rss-tolerance, MiB (allocator noise on a small relay).
    #[arg(long, default_value_t = 4)]
    rss_slack_mib: u64,
    /// Time between progress lines.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    progress: Duration,
    /// Print the summary as JSON on stdout (progress and failures go to stderr).
    #[arg(long)]
    json: bool,
    /// Seed of the run's random choices [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// The relay binary [default: baton-relay next to this executable].
    #[arg(long, value_name = "PATH")]
    relay_bin: Option<PathBuf>,
    /// The relay's log level.
    #[arg(long, default_value = "info")]
    relay_log_level: String,
    /// An extra argument for the relay, e.g. `--relay-arg=--event-replay=100`; repeatable.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    relay_arg: Vec<String>,
    /// Keep the relay's data directory (its logs) and print where it is.
    #[arg(long)]
    keep_logs: bool,
    /// Log the SDK in every player process with this filter (`RUST_LOG` syntax, e.g.
    /// `baton_client=debug`) into a kept directory, one file per player; clients that run in
    /// this process are not logged.
    #[arg(long, value_name = "FILTER")]
    player_log: Option<String>,
    /// Relay processes: 1 runs a relay alone; 2 or more run a fleet with its own
    /// `redis-server` directory, drains and node kills (needs `redis-server` on PATH).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// With a fleet: mean time between two node events (a drain, then a kill, in turn).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    node_churn_every: Duration,
    /// With a fleet: each node's `--drain-timeout`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// With a fleet: how long clients try to resume through the other nodes
    /// (`ClientConfig::resume_window`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    resume_window: Duration,
    /// With a fleet: time every member of a game on a killed node has to resume
    /// [default: --keepalive-timeout + 2s].
    #[arg(long, value_parser = parse_duration)]
    resume_bound: Option<Duration>,
    /// With a fleet: time every member of a game on a drained node has to relocate.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    relocate_bound: Duration,
}

impl SoakArgs {
    /// Rejects settings that cannot make a meaningful run.
    fn validate(&self) -> anyhow::Result<()> {
        if self.duration < Duration::from_secs(1) {
            bail!("--duration must be at least 1s");
        }
        if !(1..=8).contains(&self.nodes) {
            bail!("--nodes must be 1 to 8");
        }
        if self.nodes > 1 {
            for (name, d) in [
                ("--node-churn-every", self.node_churn_every),
                ("--drain-timeout", self.drain_timeout),
                ("--resume-window", self.resume_window),
                ("--relocate-bound", self.relocate_bound),
            ] {
                if d < Duration::from_secs(1) {
                    bail!("{name} must be at least 1s");
                }
            }
        }
        if !(1..=200).contains(&self.allocations) {
            bail!("--allocations must be 1 to 200");
        }
        if self.peers > 50 {
            bail!("--peers must be at most 50");
        }
        if !(1..=1000).contains(&self.rate) {
            bail!("--rate must be 1 to 1000");
        }
        if !(payload::HEADER_LEN..=1150).contains(&self.payload) {
            bail!("--payload must be {} to 1150 bytes", payload::HEADER_LEN);
        }
        if self.keepalive_interval.is_zero() || self.keepalive_interval * 2 > self.keepalive_timeout
        {
            bail!("--keepalive-interval must be non-zero and at most half of --keepalive-timeout");
        }
        if self.code_ttl < Duration::from_secs(1) {
            bail!("--code-ttl must be at least 1s");
        }
        for (name, d) in [
            ("--keepalive-timeout", self.keepalive_timeout),
            ("--bind-timeout", self.bind_timeout),
            ("--host-bind-timeout", self.host_bind_timeout),
        ] {
            if d < Duration::from_millis(100) {
                bail!("{name} must be at least 100ms");
            }
        }
        for (name, d) in [
            ("--churn-every", self.churn_every),
            ("--expiry-every", self.expiry_every),
            ("--progress", self.progress),
            ("--migration-bound", self.migration_bound),
        ] {
            if d < Duration::from_millis(100) {
                bail!("{name} must be at least 100ms");
            }
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Sub::Player(spec)) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("baton-soak player: cannot start a runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            // A player that cannot enter has reported why on stdout.
            let _ = runtime.block_on(player::run(spec));
            ExitCode::SUCCESS
        }
        None => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("baton-soak: cannot start a runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            // A hard bound on the whole run, whatever happens inside.
            let bound = cli.soak.duration + WATCHDOG_SLACK;
            let run = async move {
                tokio::time::timeout(bound, soak(cli.soak))
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("the run did not finish within {bound:?}"))
                    })
            };
            match runtime.block_on(run) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("baton-soak: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// Time the whole run may take beyond `--duration` (start, teardown, drain, stop).
const WATCHDOG_SLACK: Duration = Duration::from_secs(120);
/// Time the games have after the churn phase to make everyone leave.
const TEARDOWN_BOUND: Duration = Duration::from_secs(30);
/// Time the relay has to drain after the games ended, on top of its keepalive timeout.
const DRAIN_BOUND: Duration = Duration::from_secs(10);

/// Runs the soak; `Ok(false)` if a check failed.
async fn soak(args: SoakArgs) -> anyhow::Result<bool> {
    args.validate()?;
    let seed = args
        .seed
        .unwrap_or_else(|| util::now_us() ^ u64::from(std::process::id()));
    let exe = std::env::current_exe().context("locating baton-soak")?;
    let relay_bin = match &args.relay_bin {
        Some(bin) => bin.clone(),
        None => baton_tests::relay_process::relay_bin_beside_this_exe("baton-soak")?,
    };
    let settings = RelaySettings {
        bin: relay_bin,
        keepalive_timeout: args.keepalive_timeout,
        bind_timeout: args.bind_timeout,
        host_bind_timeout: args.host_bind_timeout,
        log_level: args.relay_log_level.clone(),
        extra: args.relay_arg.clone(),
    };
    let (fleet, nodes) = if args.nodes > 1 {
        let mut fleet = fleet::Fleet::new(settings.clone(), args.drain_timeout)?;
        let mut nodes = Vec::new();
        for _ in 0..args.nodes {
            nodes.push(fleet.start_node().await?);
        }
        (Some(fleet), nodes)
    } else {
        (
            None,
            vec![("relay".to_owned(), Relay::start(&settings).await?)],
        )
    };
    let opts = Opts {
        peers: args.peers,
        rate: args.rate,
        payload: args.payload,
        p2p_every: args.p2p_every,
        churn_every: args.churn_every,
        process_fraction: args.process_fraction,
        keepalive_interval: args.keepalive_interval,
        keepalive_timeout: args.keepalive_timeout,
        bind_timeout: args.bind_timeout,
        host_bind_timeout: args.host_bind_timeout,
        code_ttl: args.code_ttl,
        expiry_every: args.expiry_every,
        migration_bound: args.migration_bound,
        resume_window: args.resume_window,
        resume_bound: args
            .resume_bound
            .unwrap_or(args.keepalive_timeout + Duration::from_secs(2)),
        relocate_bound: args.relocate_bound,
        player_log: match &args.player_log {
            Some(filter) => {
                let dir = tempfile::Builder::new()
                    .prefix("baton-soak-players-")
                    .tempdir()
                    .context("the players' log directory")?
                    .keep();
                println!("baton-soak: player logs in {}", dir.display());
                Some((filter.clone(), dir))
            }
            None => None,
        },
    };
    let first = &nodes[0].1;
    let trust = (first.fingerprint.clone(), first.cert.clone());
    let addrs: Vec<NodeAddr> = nodes
        .iter()
        .map(|(id, relay)| fleet::node_addr(id, relay))
        .collect();
    let ctx = Arc::new(Ctx::new(opts, addrs, trust, exe, args.duration)?);
    let progress = |line: String| {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    if let Some(fleet) = &fleet {
        progress(format!(
            "baton-soak: seed {seed}, {} allocations x (1 host + {} peers) at {} Hz for {:?}; a fleet of {} nodes, directory {}, a node drained or killed every {:?}",
            args.allocations, args.peers, args.rate, args.duration, args.nodes, fleet.directory(), args.node_churn_every
        ));
        for (id, relay) in &nodes {
            progress(format!(
                "baton-soak: node {id} pid {} at {} (admin {})",
                relay.pid, relay.addr, relay.api.admin
            ));
        }
    } else {
        let relay = first;
        progress(format!(
            "baton-soak: seed {seed}, {} allocations x (1 host + {} peers) at {} Hz for {:?}; relay pid {} at {} (admin {})",
            args.allocations, args.peers, args.rate, args.duration, relay.pid, relay.addr, relay.api.admin
        ));
    }

    let monitor = Arc::new(Mutex::new(Monitor {
        nodes: nodes
            .into_iter()
            .map(|(id, relay)| NodeMon::new(id, relay, 0.0))
            .collect(),
        fleet: ctx.fleet,
    }));
    let (stop_tx, stop_rx) = watch::channel(false);
    let monitor_task = tokio::spawn(run_monitor(
        ctx.clone(),
        monitor.clone(),
        stop_rx,
        args.progress,
        args.json,
    ));
    let node_churn = fleet.map(|fleet| {
        tokio::spawn(fleet::churn(
            ctx.clone(),
            fleet,
            monitor.clone(),
            args.node_churn_every,
            seed,
        ))
    });

    let mut tasks = JoinSet::new();
    for slot in 0..args.allocations {
        tasks.spawn(game::Game::new(ctx.clone(), slot, seed).run());
    }
    tasks.spawn(expiry::run(ctx.clone(), seed));
    let teardown_deadline = ctx.churn_end + TEARDOWN_BOUND;
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout_at(teardown_deadline.into(), all_done)
        .await
        .is_err()
    {
        ctx.fail(
            Check::Membership,
            format!("the games did not wind down within {TEARDOWN_BOUND:?} after the churn phase"),
        );
        tasks.shutdown().await;
    }
    let churn_secs = ctx.churn_end.duration_since(ctx.started).as_secs_f64();
    progress(format!(
        "[{:>7.1}s] churn over; everyone left; waiting for the relay to drain",
        ctx.elapsed_s()
    ));
    // The directory stays up until every node has stopped.
    let fleet = match node_churn {
        Some(task) => Some(task.await.context("node churn task")?),
        None => None,
    };
    let drain = if ctx.aborted() {
        Drain::default()
    } else {
        drain(&ctx, args.keepalive_timeout + DRAIN_BOUND).await
    };
    let _ = stop_tx.send(true);
    monitor_task.await.context("monitor task")?;
    let mut guard = monitor.lock().await;
    let monitor = &mut *guard;
    // Memory after the drain, then stop the relays and read their last words.
    monitor.check_alive(&ctx).await;
    monitor.sample_rss(&ctx);
    monitor.scan_logs(&ctx);
    for node in &mut monitor.nodes {
        if node.fate == Fate::Live {
            node.stopped = Some(node.relay.stop().await);
        }
    }
    monitor.scan_logs(&ctx);
    drop(fleet);
    let stopped = monitor.primary().stopped.clone().unwrap_or_default();
    let mut kept = None;
    if args.keep_logs {
        for node in &mut monitor.nodes {
            if let Some(dir) = node.relay.keep_dir() {
                if monitor.fleet {
                    progress(format!("node {} logs kept in {}", node.id, dir.display()));
                }
                kept.get_or_insert(dir);
            }
        }
    }
    let summary = Summary::build(
        &ctx,
        &args_view(&args, seed),
        monitor,
        &drain,
        churn_secs,
        stopped,
        kept,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary.to_json())?);
    } else {
        println!("{}", summary.to_text());
    }
    Ok(summary.ok)
}

/// The settings as the summary shows them.
fn args_view(args: &SoakArgs, seed: u64) -> report::Settings {
    report::Settings {
        seed,
        duration_s: args.duration.as_secs_f64(),
        allocations: args.allocations,
        peers: args.peers,
        rate: args.rate,
        payload: args.payload,
        churn_every_s: args.churn_every.as_secs_f64(),
        process_fraction: args.process_fraction,
        keepalive_timeout_s: args.keepalive_timeout.as_secs_f64(),
        max_loss: args.max_loss,
        rss_tolerance: args.rss_tolerance,
        rss_slack_mib: args.rss_slack_mib,
        migration_bound_s: args.migration_bound.as_secs_f64(),
        expiry_every_s: args.expiry_every.as_secs_f64(),
    }
}

/// Samples the relays every second until told to stop: alive, RSS, new log lines, and a
/// progress line every `every`.
async fn run_monitor(
    ctx: Arc<Ctx>,
    monitor: Arc<Mutex<Monitor>>,
    mut stop: watch::Receiver<bool>,
    every: Duration,
    json: bool,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_progress = Instant::now() + every;
    // One iteration a second until the soak says stop (the soak's own deadlines bound it).
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let mut m = monitor.lock().await;
        m.check_alive(&ctx).await;
        m.sample_rss(&ctx);
        m.scan_logs(&ctx);
        if Instant::now() >= next_progress {
            next_progress += every;
            let line = report::progress_line(&ctx, &m).await;
            if json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
    }
}

/// Waits (bounded) until every relay node still running holds no allocation and no
/// connection, by the admin API and by the metrics.
async fn drain(ctx: &Ctx, bound: Duration) -> Drain {
    let started = Instant::now();
    let mut last = Drain::default();
    // One iteration per 250 ms within `bound`.
    while started.elapsed() < bound {
        let mut drains = Vec::new();
        for node in ctx.live_nodes() {
            let allocations = node.api.allocations().await;
            let metrics = node.api.metrics().await;
            drains.push((node.id, Drain::from_answers(allocations, metrics)));
        }
        last = Drain::merge(drains, ctx.fleet);
        if last.empty() {
            last.took_s = Some(started.elapsed().as_secs_f64());
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let what = if ctx.fleet {
        "the nodes still hold"
    } else {
        "the relay still holds"
    };
    ctx.fail(
        Check::Drain,
        format!("{bound:?} after everyone left, {what} {}", last.describe()),
    );
    last
}
