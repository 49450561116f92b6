//! Idle clients: how much relay memory (and keepalive CPU) a connected, bound, silent client
//! costs, and whether the memory comes back when they all leave.
//!
//! The relay's RSS is read before any client connects, every 250 ms while the clients are held
//! (the highest reading and the kernel's `VmHWM` give the peak), and after every client left
//! and the relay reported no connections. Clients ping every 2 s like the SDK, so none times
//! out while held.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::task::JoinSet;

use crate::load::{close_all, setup, setup_with};
use crate::probe::{Cpu, KernelUdp, Sample};
use crate::quic::{self, ControlEvents};
use crate::relay::{Needs, Relay};
use crate::report::{note, HeartbeatCost, IdleReport, IdleRound, Progress, Report};
use crate::{procstat, Global};

/// Options of the idle benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Clients to connect and hold [default: 10000; --quick: 200].
    #[arg(long)]
    pub idle_clients: Option<usize>,
    /// Members per allocation, host included.
    #[arg(long, default_value_t = 10)]
    pub idle_members: usize,
    /// How long to hold them [default: 10s; --quick: 1s].
    #[arg(long, value_parser = crate::parse_duration)]
    pub idle_hold: Option<Duration>,
    /// Allocations being set up at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Idle two-member allocations held to measure what hosts' heartbeats cost, once with the
    /// default host-loss timeout and once with one equal to the keepalive timeout
    /// [default: 1000; --quick: 50]; 0 skips it.
    #[arg(long)]
    pub heartbeat_allocations: Option<usize>,
    /// Times to connect, hold and release them all: memory that comes back after the first
    /// round but not to the start is kept by the allocator or bounded caches; memory that
    /// grows round after round is a leak.
    #[arg(long, default_value_t = 2)]
    pub idle_rounds: usize,
}

/// RSS may grow this much (fraction) between before and after and still count as returned.
const RETURN_TOLERANCE: f64 = 0.10;

/// Whether RSS `now` is back within [`RETURN_TOLERANCE`] of `start` (none when either is
/// unknown).
fn within_tolerance(start: Option<u64>, now: Option<u64>) -> Option<bool> {
    Some(now? as f64 <= start? as f64 * (1.0 + RETURN_TOLERANCE))
}

/// How long, after the last client left, the relay's RSS is watched for it to fall back (an
/// allocator hands freed pages back over seconds, not at once) [--quick: 1 s].
const RETURN_WATCH: Duration = Duration::from_secs(15);

/// Runs the idle benchmark and adds it to `report`.
pub async fn run(global: &Global, args: &IdleArgs, report: &mut Report) -> anyhow::Result<()> {
    let clients = args
        .idle_clients
        .unwrap_or(if global.quick { 200 } else { 10_000 });
    let members = args.idle_members;
    if !(2..=usize::from(baton_protocol::MAX_PEERS_LIMIT)).contains(&members) {
        bail!(
            "--idle-members must be 2 to {}",
            baton_protocol::MAX_PEERS_LIMIT
        );
    }
    if clients < members || clients > 200_000 {
        bail!("--idle-clients must be between --idle-members and 200000");
    }
    let allocations = clients / members;
    let hold = args
        .idle_hold
        .unwrap_or(Duration::from_millis(if global.quick {
            1_000
        } else {
            10_000
        }));
    let needs = Needs {
        connections: allocations * members + 100,
        allocations: allocations + 10,
        members,
    };
    let rounds = args.idle_rounds.clamp(1, 10);
    let idle = Relay::run_bench(
        global,
        needs,
        "idle",
        &mut Progress::new(),
        async |relay, progress| {
            idle(
                global,
                args,
                relay,
                allocations,
                members,
                hold,
                rounds,
                progress,
            )
            .await
        },
    )
    .await?;
    if idle.rss_returned_within_10pct == Some(false) {
        report.warnings.push(format!(
            "idle: relay RSS did not return within 10 % of its start after {} clients left ({:.1} -> {:.1} MiB)",
            idle.connected,
            idle.relay_rss_before_mib.unwrap_or(0.0),
            idle.relay_rss_after_mib.unwrap_or(0.0)
        ));
    }
    if idle.rss_steady_across_rounds == Some(false) {
        report.errors.push(format!(
            "idle: relay RSS after all clients left grew by more than 10 % from round 1 to round {} (a leak?): {:?} MiB",
            idle.rounds.len(),
            idle.rounds.iter().map(|r| r.relay_rss_after_mib).collect::<Vec<_>>()
        ));
    }
    report.idle = Some(idle);
    Ok(())
}

/// What one round of connect, hold and leave measured.
struct Round {
    connected: usize,
    connect_s: f64,
    peak_kib: Option<u64>,
    after_kib: Option<u64>,
    /// Seconds after the clients left until RSS was back within the tolerance, if it was.
    returned_s: Option<f64>,
    idle_cores: Option<f64>,
    generator_held_kib: Option<u64>,
    drained: Option<Duration>,
    close_drops: Option<KernelUdp>,
    departures: u64,
}

#[allow(clippy::too_many_arguments)]
async fn idle(
    global: &Global,
    args: &IdleArgs,
    relay: &Relay,
    allocations: usize,
    members: usize,
    hold: Duration,
    rounds: usize,
    progress: &mut Progress,
) -> anyhow::Result<IdleReport> {
    // Let the relay finish starting before its baseline is read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = relay.proc_sample().map(|s| s.rss_kib);
    let me_before = procstat::process(None).map(|s| s.rss_kib);
    let pool = Arc::new(quic::Clients::new(relay, global.endpoints)?);
    let mut done = Vec::new();
    for round in 1..=rounds {
        done.push(
            idle_round(
                args,
                relay,
                &pool,
                allocations,
                members,
                hold,
                round,
                rss_before,
                global.quick,
                progress,
            )
            .await?,
        );
    }
    let heartbeat_allocations =
        args.heartbeat_allocations
            .unwrap_or(if global.quick { 50 } else { 1000 });
    let mut heartbeats = Vec::new();
    if heartbeat_allocations > 0 {
        // The default (0: the relay's 1.5 s), then the relay's default keepalive timeout (the
        // relay clamps to its own): effectively no fast detection.
        for host_loss_ms in [0, quic::NO_FAST_HOST_LOSS_MS] {
            heartbeats.push(
                heartbeat_cost(
                    args,
                    relay,
                    &pool,
                    (heartbeat_allocations, host_loss_ms),
                    hold,
                    progress,
                )
                .await?,
            );
        }
    }
    let first = &done[0];
    let last = &done[done.len() - 1];
    let mib = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
    let per_client = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some((b as f64 - a as f64) / first.connected.max(1) as f64),
        _ => None,
    };
    let mut failures = BTreeMap::new();
    let departures: u64 = done.iter().map(|r| r.departures).sum();
    if departures > 0 {
        failures.insert("departures while held".to_owned(), departures);
    }
    Ok(IdleReport {
        relay: relay.description.clone(),
        clients: allocations * members,
        connected: first.connected,
        members,
        connect_s: first.connect_s,
        connects_per_s: first.connected as f64 / first.connect_s.max(1e-9),
        hold_s: hold.as_secs_f64(),
        relay_rss_before_mib: mib(rss_before),
        relay_rss_peak_mib: mib(done.iter().filter_map(|r| r.peak_kib).max()),
        relay_rss_after_mib: mib(last.after_kib),
        relay_kib_per_client: per_client(rss_before, first.peak_kib),
        rss_returned_within_10pct: within_tolerance(rss_before, last.after_kib),
        rss_steady_across_rounds: (done.len() > 1)
            .then(|| within_tolerance(first.after_kib, last.after_kib))
            .flatten(),
        relay_idle_cores: first.idle_cores,
        generator_kib_per_client: per_client(me_before, first.generator_held_kib),
        drained_s: first.drained.map(|d| d.as_secs_f64()),
        failures,
        rounds: done
            .iter()
            .map(|r| IdleRound {
                connected: r.connected,
                connect_s: r.connect_s,
                relay_rss_peak_mib: mib(r.peak_kib),
                relay_rss_after_mib: mib(r.after_kib),
                relay_rss_returned_s: r.returned_s,
                drained_s: r.drained.map(|d| d.as_secs_f64()),
                kernel_udp_at_close: r.close_drops,
            })
            .collect(),
        heartbeats,
    })
}

/// The relay's default host-loss timeout, which an allocation asking for 0 gets.
const DEFAULT_HOST_LOSS: Duration = Duration::from_millis(1500);

/// Holds `allocations` idle two-member allocations asking for a host-loss timeout of
/// `host_loss_ms` for `hold`, their hosts sending heartbeats as the SDK does, and measures the
/// relay's CPU and traffic.
async fn heartbeat_cost(
    args: &IdleArgs,
    relay: &Relay,
    pool: &Arc<quic::Clients>,
    (allocations, host_loss_ms): (usize, u16),
    hold: Duration,
    progress: &mut Progress,
) -> anyhow::Result<HeartbeatCost> {
    let timeout = match host_loss_ms {
        0 => DEFAULT_HOST_LOSS,
        ms => Duration::from_millis(u64::from(ms)),
    };
    let interval = timeout / 6;
    let (mut clients, _topo) = setup_with(
        pool,
        (allocations, 2, host_loss_ms),
        args.connect_concurrency,
        "heartbeats",
        progress,
    )
    .await?;
    let events = Arc::new(ControlEvents::default());
    let mut readers = JoinSet::new();
    for c in &mut clients {
        if let Some(recv) = c.recv.take() {
            quic::spawn_control_reader(&mut readers, recv, events.clone());
        }
    }
    note(
        progress,
        format!(
            "heartbeats: {allocations} idle allocations with a {} ms host-loss timeout, holding them {hold:?}",
            timeout.as_millis()
        ),
    );
    let traffic = |clients: &[quic::Client]| {
        clients.iter().fold((0u64, 0u64), |(bytes, datagrams), c| {
            let s = c.conn.stats();
            (
                bytes + s.udp_tx.bytes + s.udp_rx.bytes,
                datagrams + s.udp_tx.datagrams + s.udp_rx.datagrams,
            )
        })
    };
    let hosts: Vec<&quic::Client> = clients.iter().step_by(2).collect();
    let mut last_sent: Vec<Option<u64>> = vec![None; hosts.len()];
    let mut beats = 0u64;
    let (bytes_before, datagrams_before) = traffic(&clients);
    let before = Sample::take(relay.server());
    let started = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while started.elapsed() < hold {
        tick.tick().await;
        // The SDK's rule: a heartbeat when nothing else was sent since the last check.
        for (host, last) in hosts.iter().zip(last_sent.iter_mut()) {
            let sent = host.conn.stats().udp_tx.datagrams;
            if last.is_none_or(|l| sent <= l) {
                let _ = host.conn.send_datagram(bytes::Bytes::new());
                beats += 1;
                *last = Some(sent + 1);
            } else {
                *last = Some(sent);
            }
        }
    }
    let held = started.elapsed().as_secs_f64();
    let after = Sample::take(relay.server());
    let (bytes_after, datagrams_after) = traffic(&clients);
    relay.check_alive()?;
    let departures = events.take_membership();
    close_all(&clients, 2);
    let _ = relay.wait_empty(Duration::from_secs(30)).await;
    pool.wait_idle().await;
    readers.abort_all();
    let per_allocation = |v: u64| v as f64 / allocations.max(1) as f64 / held.max(1e-9);
    Ok(HeartbeatCost {
        host_loss_timeout_ms: u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX),
        heartbeat_interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        allocations,
        hold_s: held,
        relay_cores: Cpu::between(&before, &after).server_cores,
        bytes_per_allocation_per_s: per_allocation(bytes_after - bytes_before),
        datagrams_per_allocation_per_s: per_allocation(datagrams_after - datagrams_before),
        heartbeats_per_host_per_s: per_allocation(beats),
        departures,
    })
}

/// Connects every client, holds them, lets them all leave, and reads the relay's memory.
#[allow(clippy::too_many_arguments)]
async fn idle_round(
    args: &IdleArgs,
    relay: &Relay,
    pool: &Arc<quic::Clients>,
    allocations: usize,
    members: usize,
    hold: Duration,
    round: usize,
    rss_start: Option<u64>,
    quick: bool,
    progress: &mut Progress,
) -> anyhow::Result<Round> {
    let rss = || relay.proc_sample().map(|s| s.rss_kib);
    let watch = if quick {
        Duration::from_secs(1)
    } else {
        RETURN_WATCH
    };
    let started = Instant::now();
    let (mut clients, _topo) = setup(
        pool,
        allocations,
        members,
        args.connect_concurrency,
        "idle",
        progress,
    )
    .await?;
    let connect_s = started.elapsed().as_secs_f64();
    note(
        progress,
        format!(
            "idle round {round}: {} clients connected in {connect_s:.1} s; holding them {hold:?}",
            clients.len()
        ),
    );
    let events = Arc::new(ControlEvents::default());
    let mut readers = JoinSet::new();
    for c in &mut clients {
        if let Some(recv) = c.recv.take() {
            quic::spawn_control_reader(&mut readers, recv, events.clone());
        }
    }
    let before_hold = Sample::take(relay.server());
    let mut peak = rss();
    let hold_end = Instant::now() + hold;
    while Instant::now() < hold_end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss();
        peak = peak.max(now);
        progress.update(|| {
            format!(
                "idle round {round}: holding {} clients, relay RSS {} MiB, {:.1} s left",
                clients.len(),
                now.map_or(0, |k| k / 1024),
                hold_end
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
            )
        });
    }
    progress.done();
    let after_hold = Sample::take(relay.server());
    relay.check_alive()?;
    let generator_held_kib = procstat::process(None).map(|s| s.rss_kib);
    let hwm = relay.proc_sample().map(|s| s.hwm_kib);
    let departures = events.take_membership();
    let connected = clients.len();
    close_all(&clients, members);
    let drained = relay.wait_empty(Duration::from_secs(30)).await;
    let after_close = Sample::take(relay.server());
    pool.wait_idle().await;
    readers.abort_all();
    drop(clients);
    // Watch the relay's RSS fall back until it is within the tolerance of its start, or the
    // watch ends; then read what it kept.
    let left = Instant::now();
    let returned = |kib: Option<u64>| within_tolerance(rss_start, kib) == Some(true);
    let mut after = rss();
    while !returned(after) && left.elapsed() < watch {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = rss();
        progress.update(|| {
            format!(
                "idle round {round}: relay RSS {} MiB {:.1} s after the clients left",
                after.map_or(0, |k| k / 1024),
                left.elapsed().as_secs_f64()
            )
        });
    }
    progress.done();
    let returned_s = returned(after).then(|| left.elapsed().as_secs_f64());
    Ok(Round {
        connected,
        connect_s,
        peak_kib: peak.max(hwm),
        after_kib: after,
        returned_s,
        idle_cores: Cpu::between(&before_hold, &after_hold).server_cores,
        generator_held_kib,
        drained,
        close_drops: KernelUdp::between(&after_hold, &after_close),
        departures,
    })
}
