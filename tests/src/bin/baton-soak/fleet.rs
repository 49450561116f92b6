//! The fleet of a `--nodes N` run (N of 2 or more): a `redis-server` of its own as the
//! directory, N `baton-relay` processes as nodes sharing one certificate and fleet secret,
//! and the node churn: every `--node-churn-every` (jittered), once every game has paused
//! ([`crate::gate`]), the node holding the most allocations is drained (`POST /v1/drain`; it
//! exits by itself once empty) or killed with SIGKILL, in turn, and a node with a new id
//! replaces it. A replacement starts
//! before the drain or kill when fewer than two nodes would be left otherwise.
//!
//! Runs on its own task; every wait is bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use baton_tests::redis_server::RedisServer;
use tokio::sync::Mutex;

use crate::gate::{NodeEvent, NodeEventKind};
use crate::relay::{FleetNode, Relay, RelaySettings};
use crate::report::{Fate, Monitor, NodeMon};
use crate::state::{Check, Ctx, NodeAddr};
use crate::util::{now_us, Rng};

/// The fleet secret of every node (at least 32 bytes; a soak's fleet is its own).
const FLEET_SECRET: &str = "baton-soak-fleet-secret-0123456789abcdef";
/// How long a node has to register in the directory once running.
const REGISTER_BOUND: Duration = Duration::from_secs(10);
/// How long the node churn waits for every game to pause.
const PAUSE_BOUND: Duration = Duration::from_secs(30);
/// How long the games have to check a node event once it happened.
const CHECK_BOUND: Duration = Duration::from_secs(60);
/// No node event starts closer than this to the end of the churn phase.
const END_ROOM: Duration = Duration::from_secs(12);
/// A drained node must have exited this long after its drain timeout.
const EXIT_SLACK: Duration = Duration::from_secs(5);

/// The directory and how to start nodes.
pub struct Fleet {
    redis: RedisServer,
    cert_dir: tempfile::TempDir,
    settings: RelaySettings,
    drain_timeout: Duration,
    next_id: u32,
}

impl Fleet {
    /// Starts the directory (`redis-server` on a free loopback port).
    pub fn new(settings: RelaySettings, drain_timeout: Duration) -> anyhow::Result<Fleet> {
        let redis = RedisServer::start().context("starting the fleet's directory")?;
        let cert_dir = tempfile::Builder::new()
            .prefix("baton-soak-fleet-")
            .tempdir()
            .context("the fleet's certificate directory")?;
        Ok(Fleet {
            redis,
            cert_dir,
            settings,
            drain_timeout,
            next_id: 1,
        })
    }

    /// The directory's URL.
    pub fn directory(&self) -> String {
        self.redis.url()
    }

    /// Starts the next node (`n1`, `n2`, ...) and waits (bounded) until it is registered in
    /// the directory.
    pub async fn start_node(&mut self) -> anyhow::Result<(String, Relay)> {
        let id = format!("n{}", self.next_id);
        self.next_id += 1;
        let node = FleetNode {
            id: id.clone(),
            directory: self.redis.url(),
            secret: FLEET_SECRET.to_owned(),
            drain_timeout: self.drain_timeout,
            cert_dir: self.cert_dir.path().to_owned(),
        };
        let relay = Relay::start_node(&self.settings, Some(&node)).await?;
        let mut conn = self.redis.connection()?;
        let key = format!("baton:node:{id}");
        let started = Instant::now();
        // One query per 50 ms within the bound.
        loop {
            let exists: i64 = redis::cmd("EXISTS")
                .arg(&key)
                .query(&mut conn)
                .context("asking the directory")?;
            if exists == 1 {
                return Ok((id, relay));
            }
            if started.elapsed() > REGISTER_BOUND {
                bail!("node {id} did not register in the directory within {REGISTER_BOUND:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How clients reach a node.
pub fn node_addr(id: &str, relay: &Relay) -> NodeAddr {
    NodeAddr {
        id: id.to_owned(),
        addr: relay.addr,
        api: relay.api.clone(),
    }
}

/// Drains or kills a node every `every` (jittered) until the churn phase ends, then returns
/// the fleet (the directory lives until the run is over).
pub async fn churn(
    ctx: Arc<Ctx>,
    mut fleet: Fleet,
    monitor: Arc<Mutex<Monitor>>,
    every: Duration,
    seed: u64,
) -> Fleet {
    let mut rng = Rng::new(seed ^ 0x0DE5_C4A2);
    let mut kind = NodeEventKind::Drain;
    while ctx.churning() {
        let wait = rng.jitter(every, 0.75, 1.25);
        let at = Instant::now() + wait;
        if at + END_ROOM > ctx.churn_end {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        if !ctx.churning() {
            break;
        }
        node_event(&ctx, &mut fleet, &monitor, kind, &mut rng).await;
        kind = match kind {
            NodeEventKind::Drain => NodeEventKind::Kill,
            NodeEventKind::Kill => NodeEventKind::Drain,
        };
    }
    fleet
}

/// One node event: pause the games, drain or kill a node, replace it, let the games check
/// what it did to them, go on.
async fn node_event(
    ctx: &Ctx,
    fleet: &mut Fleet,
    monitor: &Mutex<Monitor>,
    kind: NodeEventKind,
    rng: &mut Rng,
) {
    let round = ctx.gate.request();
    if !ctx
        .gate
        .wait(PAUSE_BOUND, |s| {
            s.round != round || s.parked >= s.participants
        })
        .await
    {
        let (participants, parked, _) = ctx.gate.counts();
        ctx.fail(
            Check::Fleet,
            format!("only {parked} of {participants} games and probes paused for a node {} within {PAUSE_BOUND:?}", kind.name()),
        );
    }
    let live = ctx.live_nodes();
    let mut replaced = false;
    if live.len() <= 2 {
        // Never fewer than two nodes taking clients.
        replaced = replace(ctx, fleet, monitor).await;
    }
    let Some(victim) = busiest(&live, rng).await else {
        ctx.gate.release();
        return;
    };
    ctx.retire_node(victim.addr);
    let event = NodeEvent {
        kind,
        node: victim.id.clone(),
        addr: victim.addr,
        at: Instant::now(),
        at_us: now_us(),
    };
    ctx.gate.announce(event.clone());
    match kind {
        NodeEventKind::Drain => drain(ctx, fleet, monitor, &victim).await,
        NodeEventKind::Kill => kill(ctx, monitor, victim.addr).await,
    }
    if !replaced {
        replace(ctx, fleet, monitor).await;
    }
    if !ctx
        .gate
        .wait(CHECK_BOUND, |s| s.round != round || s.done >= s.parked)
        .await
    {
        let (_, parked, done) = ctx.gate.counts();
        ctx.fail(
            Check::Fleet,
            format!(
                "only {done} of {parked} games finished checking the {} of node {} within {CHECK_BOUND:?}",
                kind.name(),
                victim.id
            ),
        );
    }
    ctx.gate.release();
}

/// The node among `live` holding the most allocations (ties broken at random), so that a
/// node event has games to move.
async fn busiest(live: &[NodeAddr], rng: &mut Rng) -> Option<NodeAddr> {
    let mut best: Vec<(usize, &NodeAddr)> = Vec::new();
    for node in live {
        let held = node.api.allocations().await.map_or(0, |a| a.len());
        match best.first() {
            Some((most, _)) if held < *most => {}
            Some((most, _)) if held == *most => best.push((held, node)),
            _ => best = vec![(held, node)],
        }
    }
    if best.is_empty() {
        return None;
    }
    Some(best[rng.below(best.len())].1.clone())
}

/// Drains node `victim` through its admin API and waits (bounded) until it has exited.
async fn drain(ctx: &Ctx, fleet: &Fleet, monitor: &Mutex<Monitor>, victim: &NodeAddr) {
    let started = Instant::now();
    {
        let mut m = monitor.lock().await;
        if let Some(node) = m.nodes.iter_mut().find(|n| n.relay.addr == victim.addr) {
            node.fate = Fate::Draining;
        }
    }
    match victim.api.drain().await {
        Ok(_) => ctx.stats.node_drains.inc(),
        Err(e) => {
            ctx.fail(
                Check::Fleet,
                format!("POST /v1/drain on node {}: {e:#}", victim.id),
            );
            return;
        }
    }
    let bound = fleet.drain_timeout + EXIT_SLACK;
    // One look per 100 ms within the bound.
    loop {
        let exited = {
            let mut m = monitor.lock().await;
            m.nodes
                .iter_mut()
                .find(|n| n.relay.addr == victim.addr)
                .is_none_or(|n| n.relay.exit_status().is_some())
        };
        if exited {
            ctx.stats
                .drain_ms_total
                .add(started.elapsed().as_millis() as u64);
            return;
        }
        if started.elapsed() > bound {
            ctx.fail(
                Check::Fleet,
                format!(
                    "drained node {} had not exited {bound:?} after POST /v1/drain",
                    victim.id
                ),
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills the node at `addr` with SIGKILL.
async fn kill(ctx: &Ctx, monitor: &Mutex<Monitor>, addr: SocketAddr) {
    let mut m = monitor.lock().await;
    if let Some(node) = m.nodes.iter_mut().find(|n| n.relay.addr == addr) {
        node.fate = Fate::Killed;
        node.relay.kill().await;
        ctx.stats.node_kills.inc();
    }
}

/// Starts a node with a new id; returns whether it runs.
async fn replace(ctx: &Ctx, fleet: &mut Fleet, monitor: &Mutex<Monitor>) -> bool {
    match fleet.start_node().await {
        Ok((id, relay)) => {
            ctx.add_node(node_addr(&id, &relay));
            ctx.stats.node_replacements.inc();
            monitor
                .lock()
                .await
                .nodes
                .push(NodeMon::new(id, relay, ctx.elapsed_s()));
            true
        }
        Err(e) => {
            ctx.fail(
                Check::Fleet,
                format!("a replacement node did not start: {e:#}"),
            );
            false
        }
    }
}
