//! `fleet`: what a fleet of nodes adds to a client's path, measured on real processes. The
//! bench starts its own `redis-server` as the directory and `baton-relay` nodes `a`, `b` and
//! `c` sharing it (`nodes.rs`), then, in one run:
//!
//! 1. **Join through one redirect** (`join.rs`): join by code on node `a`, which holds the
//!    allocations, against joins through `b` and `c`, which answer `Redirect`; p50/p99 of both
//!    and their ratio. The direct join's p50 is the run's unit of time: every other time is
//!    also given as a multiple of it, because machines are noisy.
//! 2. **Relocation time per allocation** (`drain.rs`): node `a` carries K games of a host and
//!    a peer (SDK sessions) and is drained with `POST /v1/drain`; per allocation, the time until
//!    every member reported `Event::Relocated`, and the games are checked on their new nodes.
//!    Node `a` exits; node `d` joins the fleet in its place.
//! 3. **Drain time of a loaded node**: node `b` carries N allocations (1,000; `--quick`: 50),
//!    each with its host (and a peer with `--drain-members 2`), and is drained into `c` and `d`:
//!    until its `/v1/allocations` is empty and its process has exited, and allocations moved
//!    per second.
//!
//! Every client is an SDK session (`baton-client`, one QUIC endpoint each), so the figures
//! include what a game's client does: following the redirect, and moving make-before-break.
//! Sessions are idle apart from the SDK's keepalive; loss during a move is measured by the
//! `fleet` integration test, not here.

mod drain;
mod join;
mod nodes;

use std::time::{Duration, Instant};

use anyhow::bail;

use self::nodes::{Fleet, NodeOptions};
use crate::report::{note, FleetReport, Progress, Report};
use crate::Global;

/// The relay's default `--max-connections`.
const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

/// Most allocations the drain-time run sets up (each session is a UDP socket of the bench).
const MAX_DRAIN_ALLOCATIONS: usize = 5_000;

/// How long the games of one phase may take to leave their nodes before the next phase.
const EMPTY_WAIT: Duration = Duration::from_secs(15);

/// How much each measurement does, from the options and `--quick`.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Joins of each kind.
    joins: usize,
    /// Allocations on the node `a` that joins go into.
    join_allocations: usize,
    /// Games on node `a` when it drains.
    relocate: usize,
    /// Allocations on node `b` when it drains.
    drain: usize,
    /// Members of each of those.
    members: usize,
    /// Sessions set up at once.
    concurrency: usize,
}

impl Sizes {
    /// The sizes `args` ask for, or the defaults (smaller with `--quick`).
    fn from_args(args: &FleetArgs, quick: bool) -> anyhow::Result<Sizes> {
        let pick = |set: Option<usize>, quick_size, size| {
            set.unwrap_or(if quick { quick_size } else { size })
        };
        let sizes = Sizes {
            joins: pick(args.fleet_joins, 50, 500),
            join_allocations: args.fleet_join_allocations.clamp(1, 100),
            relocate: pick(args.relocate_allocations, 10, 100),
            drain: pick(args.drain_allocations, 50, 1000),
            members: usize::from(args.drain_members),
            concurrency: args.fleet_setup_concurrency.clamp(1, 256),
        };
        if sizes.joins == 0 || sizes.relocate == 0 || sizes.drain == 0 {
            bail!(
                "--fleet-joins, --relocate-allocations and --drain-allocations must be at least 1"
            );
        }
        if sizes.drain > MAX_DRAIN_ALLOCATIONS || sizes.relocate > MAX_DRAIN_ALLOCATIONS {
            bail!("at most {MAX_DRAIN_ALLOCATIONS} allocations per drain");
        }
        Ok(sizes)
    }
}

/// Options of the fleet benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Joins timed of each kind, direct and through a redirect [default: 500; --quick: 50].
    #[arg(long)]
    pub fleet_joins: Option<usize>,
    /// Allocations on node a the timed joins go into.
    #[arg(long, default_value_t = 4)]
    pub fleet_join_allocations: usize,
    /// Games (a host and a peer) on the node drained for the per-allocation relocation time
    /// [default: 100; --quick: 10].
    #[arg(long)]
    pub relocate_allocations: Option<usize>,
    /// Allocations on the node drained for the drain time [default: 1000; --quick: 50].
    #[arg(long)]
    pub drain_allocations: Option<usize>,
    /// Members of each allocation in the drain-time run: 1 (the host) or 2 (host and peer).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub drain_members: u8,
    /// Sessions set up at once before a drain.
    #[arg(long, default_value_t = 16)]
    pub fleet_setup_concurrency: usize,
}

/// Runs the fleet benchmark and adds it to `report`.
pub async fn run(global: &Global, args: &FleetArgs, report: &mut Report) -> anyhow::Result<()> {
    if global.relay.is_some() {
        bail!("fleet starts its own directory and nodes; --relay does not apply to it");
    }
    let sizes = Sizes::from_args(args, global.quick)?;
    // Every session may hold two connections while it moves.
    let sessions = (2 * sizes.relocate).max(sizes.members * sizes.drain);
    let per_address = 2 * sessions + 100;
    let bin = match &global.relay_bin {
        Some(bin) => bin.clone(),
        None => baton_tests::relay_process::relay_bin_beside_this_exe("baton-bench")?,
    };
    let options = NodeOptions {
        bin,
        log_level: global.relay_log_level.clone(),
        max_connections: per_address.max(DEFAULT_MAX_CONNECTIONS),
        per_address: per_address.max(64),
    };
    let mut progress = Progress::new();
    let mut fleet = Fleet::start(options.clone()).await?;
    let result = phases(&mut fleet, sizes, &mut progress, &mut report.errors).await;
    fleet.stop().await;
    let mut fleet_report = result?;
    fleet_report.nodes = format!(
        "{} processes (a, b, c; d joins when a has drained), each --max-connections {} \
         --max-connections-per-ipv4-address {p} --max-connections-per-ipv4-24 {p} \
         --drain-timeout 0s --log-level {}, one shared development certificate, \
         directory: a redis-server child on loopback",
        options.bin.display(),
        options.max_connections,
        options.log_level,
        p = options.per_address,
    );
    let j = &fleet_report.join;
    if !j.failures.is_empty() {
        report
            .errors
            .push(format!("fleet: failed joins: {:?}", j.failures));
    }
    for (what, d) in [
        ("relocation", &fleet_report.relocation),
        ("drain", &fleet_report.drain),
    ] {
        if let Some(d) = d.as_ref().filter(|d| !d.failures.is_empty()) {
            report
                .errors
                .push(format!("fleet {what} of node {}: {:?}", d.node, d.failures));
        }
    }
    report.fleet = Some(fleet_report);
    Ok(())
}

/// The three measurements, in order, on `fleet`.
async fn phases(
    fleet: &mut Fleet,
    sizes: Sizes,
    progress: &mut Progress,
    errors: &mut Vec<String>,
) -> anyhow::Result<FleetReport> {
    let Sizes {
        joins,
        join_allocations,
        relocate,
        drain: drain_n,
        members,
        concurrency,
    } = sizes;
    for id in ["a", "b", "c"] {
        fleet.add_node(id).await?;
    }
    fleet.wait_registered().await?;
    note(
        progress,
        format!(
            "fleet: nodes a, b, c on {} sharing {}",
            fleet
                .nodes
                .iter()
                .map(|n| n.addr.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            fleet.directory_url()
        ),
    );

    note(
        progress,
        format!("fleet: {joins} joins direct on node a, {joins} through b and c"),
    );
    let join = join::measure(fleet, joins, join_allocations, progress).await?;
    let unit_us = join.direct.p50_us;
    fleet.wait_empty(EMPTY_WAIT).await?;

    note(
        progress,
        format!("fleet: {relocate} games (host + peer) on node a, then node a drains"),
    );
    let relocation = match drain_phase(fleet, 0, relocate, 2, concurrency, unit_us, progress).await
    {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(format!("fleet: the relocation run failed: {e:#}"));
            None
        }
    };
    // Node a has drained and exited (or is stopped now); d takes its place.
    fleet.stop_node(0).await;
    fleet.add_node("d").await?;
    fleet.wait_empty(EMPTY_WAIT).await?;
    fleet.wait_registered().await?;

    note(
        progress,
        format!("fleet: {drain_n} allocations x {members} members on node b, then node b drains"),
    );
    let drain = match drain_phase(fleet, 1, drain_n, members, concurrency, unit_us, progress).await
    {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(format!("fleet: the drain run failed: {e:#}"));
            None
        }
    };

    Ok(FleetReport {
        nodes: String::new(),
        client: "baton-client SDK sessions in the bench process, one QUIC endpoint (UDP socket) \
                 each: Peer::join follows the redirect, a session moves by itself on Relocate"
            .to_owned(),
        unit_us,
        join,
        relocation,
        drain,
    })
}

/// Sets up `count` games of `members` members on node `node`, drains it and measures it; the
/// games are closed afterwards whatever happened.
async fn drain_phase(
    fleet: &mut Fleet,
    node: usize,
    count: usize,
    members: usize,
    concurrency: usize,
    unit_us: f64,
    progress: &mut Progress,
) -> anyhow::Result<crate::report::DrainReport> {
    let t0 = Instant::now();
    let games = drain::set_up(&fleet.config(node)?, count, members, concurrency, progress).await?;
    let setup_s = t0.elapsed().as_secs_f64();
    let result = drain::drain(fleet, node, &games, setup_s, unit_us, progress).await;
    drain::close_all(games).await;
    result
}
