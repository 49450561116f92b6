//! The sides of the load run, one after the other: [`baton_side`] (QUIC clients of the relay),
//! [`ceiling_side`] (UDP sockets of the plain forwarder) and, with `--compare coturn`,
//! [`coturn_side`] (TURN clients of `turnserver`). Each sets up its clients and one receiving
//! task per client on the generator runtime, runs every pattern × payload (and
//! `--find-max`), then tears down.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::target::Target;
use super::{close_all, setup, Config};
use crate::ceiling::{self, Forwarder};
use crate::coturn::{self, Turnserver};
use crate::probe::Server;
use crate::quic::{self, ControlEvents};
use crate::relay::Relay;
use crate::report::{note, LoadReport, MaxSearch, Progress, Report, TrafficReport};
use crate::traffic::{Shared, Transport};
use crate::{procstat, Global};

/// What the relay half of the load run produces: the section (without cases), the runs and
/// the `--find-max` search.
pub(super) type BatonSide = (LoadReport, Vec<TrafficReport>, Option<MaxSearch>);

/// The relay half: set-up, every run, `--find-max`, teardown.
pub(super) async fn baton_side(
    global: &Global,
    config: &Config,
    relay: &Relay,
    report: &mut Report,
    progress: &mut Progress,
) -> anyhow::Result<BatonSide> {
    let before = relay.proc_sample();
    let pool = Arc::new(quic::Clients::new(relay, global.endpoints)?);
    let started = Instant::now();
    let (mut clients, topo) = setup(
        &pool,
        config.allocations,
        config.members,
        config.setup_concurrency,
        "load",
        progress,
    )
    .await?;
    let setup_s = started.elapsed().as_secs_f64();
    note(
        progress,
        format!(
            "load: {} clients connected and bound in {setup_s:.1} s",
            clients.len()
        ),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected = relay.proc_sample();

    let shared = Shared::new(topo, 16);
    let events = Arc::new(ControlEvents::default());
    let mut tasks = JoinSet::new();
    let lost = quic::spawn_receivers(&mut tasks, &mut clients, &shared, &events);
    let target = Target {
        name: "baton",
        shared: shared.clone(),
        transport: Arc::new(Transport::Quic(
            clients.iter().map(|c| c.conn.clone()).collect(),
        )),
        server: relay.server(),
        relay: Some(relay),
        events: Some(events),
        sender_tasks: config.sender_tasks,
    };
    let outcome = target.run_all(config, report, progress).await;
    let lost = lost.load(Ordering::Relaxed);
    if lost > 0 {
        report.errors.push(format!(
            "{lost} client connections to the relay were lost during the load run"
        ));
    }
    close_all(&clients, config.members);
    pool.wait_idle().await;
    tasks.abort_all();
    let (runs, max) = outcome?;
    let kib = |s: Option<procstat::ProcSample>| s.map(|s| s.rss_kib as f64);
    let per_client = match (kib(before), kib(connected)) {
        (Some(a), Some(b)) => Some((b - a) / clients.len() as f64),
        _ => None,
    };
    let load = LoadReport {
        relay: relay.description.clone(),
        allocations: config.allocations,
        members: config.members,
        clients: clients.len(),
        setup_s,
        relay_rss_before_mib: kib(before).map(|k| k / 1024.0),
        relay_rss_connected_mib: kib(connected).map(|k| k / 1024.0),
        relay_kib_per_client: per_client,
        coturn: None,
        cases: Vec::new(),
        find_max: None,
    };
    Ok((load, runs, max))
}

/// The ceiling half: the forwarder, its clients, the same runs and search.
pub(super) async fn ceiling_side(
    config: &Config,
    report: &mut Report,
    progress: &mut Progress,
) -> anyhow::Result<(Vec<TrafficReport>, Option<MaxSearch>)> {
    // As many workers as the relay's runtime has: tokio's default, one per CPU.
    let threads = procstat::cpus();
    let forwarder = Forwarder::start(threads, 4 * 3600).await?;
    note(
        progress,
        format!(
            "ceiling: UDP forwarder at {} ({threads} threads, pid {})",
            forwarder.addr,
            forwarder.pid.map_or_else(|| "?".into(), |p| p.to_string())
        ),
    );
    let result = async {
        let (sockets, topo) =
            ceiling::clients(forwarder.addr, config.allocations, config.members).await?;
        let shared = Shared::new(topo, 16);
        let mut tasks = ceiling::spawn_receivers(&sockets, &shared);
        let target = Target {
            name: "udp-forwarder",
            shared,
            transport: Arc::new(Transport::Udp(sockets)),
            server: Server {
                pid: forwarder.pid,
                port: Some(forwarder.addr.port()),
            },
            relay: None,
            events: None,
            sender_tasks: config.sender_tasks,
        };
        let (runs, max) = target.run_all(config, report, progress).await?;
        tasks.abort_all();
        anyhow::Ok((runs, max))
    }
    .await;
    forwarder.stop().await;
    result
}

/// The coturn half: `turnserver`, its TURN clients, the same runs and search. The returned
/// string says how coturn ran, for the report.
pub(super) async fn coturn_side(
    bin: &Path,
    config: &Config,
    report: &mut Report,
    progress: &mut Progress,
) -> anyhow::Result<(String, Vec<TrafficReport>, Option<MaxSearch>)> {
    // As many relay threads as the relay's runtime has workers: one per CPU.
    let threads = procstat::cpus();
    let mut server = Turnserver::start(bin, threads).await?;
    let description = format!(
        "coturn {} ({}, {} relay threads, UDP, no authentication, no TLS/DTLS)",
        server.version,
        bin.display(),
        server.relay_threads
    );
    note(
        progress,
        format!(
            "coturn: turnserver {} at {} ({threads} relay threads, pid {}, log {})",
            server.version,
            server.addr,
            server.pid.map_or_else(|| "?".into(), |p| p.to_string()),
            server.log_file().display()
        ),
    );
    let result = async {
        let started = Instant::now();
        let (clients, games, topo) =
            coturn::clients(server.addr, config.allocations, config.members).await?;
        note(
            progress,
            format!(
                "coturn: {} allocations with {} peers each set up in {:.1} s",
                games.len(),
                config.members - 1,
                started.elapsed().as_secs_f64()
            ),
        );
        let shared = Shared::new(topo, 16);
        let stun_errors = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        coturn::spawn_receivers(&mut tasks, &clients, &shared, &stun_errors);
        coturn::spawn_refresher(&mut tasks, games);
        let target = Target {
            name: "coturn",
            shared,
            transport: Arc::new(Transport::Turn(clients)),
            server: Server {
                pid: server.pid,
                port: Some(server.addr.port()),
            },
            relay: None,
            events: None,
            sender_tasks: config.sender_tasks,
        };
        let outcome = target.run_all(config, report, progress).await;
        tasks.abort_all();
        let errors = stun_errors.load(Ordering::Relaxed);
        if errors > 0 {
            report.errors.push(format!(
                "coturn answered {errors} refreshes with errors (or undecodable STUN)"
            ));
        }
        let (runs, max) = outcome?;
        server.check_alive()?;
        anyhow::Ok((runs, max))
    }
    .await;
    server.stop().await;
    let (runs, max) = result?;
    Ok((description, runs, max))
}
