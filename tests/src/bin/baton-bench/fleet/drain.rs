//! Draining a node: games (a host, and a peer when asked) are set up on it through the SDK,
//! every session watches its own events, and the node is drained with `POST /v1/drain`. The
//! node tells each member where its allocation went (`Relocate`); the SDK moves the session
//! there by itself and queues `Event::Relocated` once the new node has seated it. Measured from
//! the POST: per allocation, until its last member reported `Relocated`; until every session
//! had; until the node had handed every allocation over, and until it held none (both from the
//! timestamps of its JSON log, read after it exited; `/v1/allocations` is polled too, but the
//! node stops answering within 100 ms of being empty, sometimes before a poll sees it); until
//! its process exited.
//!
//! Afterwards each game is checked: every member on the same new node (not the drained one),
//! with its peer id, role and allocation unchanged, and a datagram each way between host and
//! peer. The watchers, polls and checks are bounded by deadlines.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use baton_client::{
    AllocationId, AllocationOptions, ClientConfig, Event, Host, Peer, PeerId, Session,
};
use tokio::task::JoinSet;

use super::nodes::{allocations_at, Fleet};
use crate::procstat;
use crate::report::{in_units, DrainCpu, DrainReport, Latency, Progress};
use crate::traffic::new_histogram;

/// How long a game's datagram may take to arrive in the check after the move.
const DELIVERY_WAIT: Duration = Duration::from_secs(5);

/// How often the drained node's `/v1/allocations` is read during the drain.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// One game on the node to drain.
pub struct Game {
    /// The host's session first, then the peer's, if any.
    members: Vec<Arc<Session>>,
    /// What each member must still be after the move: its peer id and whether it hosts.
    identities: Vec<(PeerId, bool)>,
    /// The allocation, which must not change in the move.
    allocation: AllocationId,
}

/// Sets up `count` games of `members` members (1: a host; 2: a host and a peer) on the node
/// `config` names, `concurrency` at a time.
pub async fn set_up(
    config: &ClientConfig,
    count: usize,
    members: usize,
    concurrency: usize,
    progress: &mut Progress,
) -> anyhow::Result<Vec<Game>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (config, next) = (config.clone(), next.clone());
        workers.spawn(async move {
            let mut games = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let host = Host::create(&config, AllocationOptions::default())
                    .await
                    .context("creating an allocation")?;
                let mut sessions = vec![Arc::new(host.into_session())];
                if members > 1 {
                    let code = sessions[0].join_code().context("a host without a code")?;
                    let peer = Peer::join(&config, code).await.context("joining")?;
                    sessions.push(Arc::new(peer.into_session()));
                }
                games.push(Game {
                    identities: sessions
                        .iter()
                        .map(|s| (s.local_peer(), s.is_host()))
                        .collect(),
                    allocation: sessions[0].allocation(),
                    members: sessions,
                });
            }
            anyhow::Ok(games)
        });
    }
    let mut games = Vec::with_capacity(count);
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok(Ok(mut some))) => games.append(&mut some),
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => bail!("set-up worker failed: {e}"),
            },
            () = tokio::time::sleep(Duration::from_millis(250)) => progress.update(|| {
                format!("fleet: setting up {count} games, {} started", next.load(Ordering::Relaxed).min(count))
            }),
        }
    }
    progress.done();
    Ok(games)
}

/// Closes every game (peers first, so a host leaving closes its allocation instead of
/// starting a migration).
pub async fn close_all(games: Vec<Game>) {
    let mut set = JoinSet::new();
    for game in games {
        set.spawn(async move {
            for member in game.members.iter().rev() {
                member.close().await;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// When one session reported `Relocated`, and to where; or why it did not.
type Moved = Result<(Instant, SocketAddr), String>;

/// Waits (until `deadline`) for `session`'s `Event::Relocated`, reading past other events.
async fn watch(session: Arc<Session>, deadline: tokio::time::Instant) -> Moved {
    loop {
        match tokio::time::timeout_at(deadline, session.next_event()).await {
            Ok(Some(Event::Relocated { relay })) => return Ok((Instant::now(), relay)),
            Ok(Some(Event::Disconnected { reason })) => {
                return Err(format!("disconnected before moving: {reason}"))
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("event queue ended before moving".to_owned()),
            Err(_) => return Err("no Event::Relocated by the deadline".to_owned()),
        }
    }
}

/// When the node's `/v1/allocations` was first seen empty, polling until `deadline`. An error
/// while its process (`pid`) still runs is passed over.
async fn poll_empty(
    http: reqwest::Client,
    admin: String,
    pid: Option<u32>,
    deadline: Instant,
) -> Option<Instant> {
    loop {
        match allocations_at(&http, &admin).await {
            Ok(0) => return Some(Instant::now()),
            Ok(_) => {}
            // The admin server stops as the node shuts down: it emptied between two polls.
            Err(_) if procstat::process(pid).is_none() => return None,
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Drains node `node` of `games` and measures it; `unit_us` is the run's direct join p50.
pub async fn drain(
    fleet: &mut Fleet,
    node: usize,
    games: &[Game],
    setup_s: f64,
    unit_us: f64,
    progress: &mut Progress,
) -> anyhow::Result<DrainReport> {
    // A node writes an allocation's directory entries after creating it; a drain begun before
    // they are written waits a sweep (a second) for those. Games on a node being drained have
    // been there a while: wait for the entries, so the figures are those of that case.
    let ids: Vec<u64> = games.iter().map(|g| g.allocation.0).collect();
    let node_id = fleet.nodes[node].id.clone();
    fleet.wait_bound(&node_id, &ids).await?;
    let sessions: usize = games.iter().map(|g| g.members.len()).sum();
    // Generous for a loaded machine: the SDK gives up a move after 20 s.
    let budget = Duration::from_secs(30) + Duration::from_millis(10) * sessions as u32;
    let deadline = Instant::now() + budget;
    let mut watchers = JoinSet::new();
    for (g, game) in games.iter().enumerate() {
        for (m, member) in game.members.iter().enumerate() {
            let member = member.clone();
            watchers.spawn(async move { (g, m, watch(member, deadline.into()).await) });
        }
    }
    let drained_addr = fleet.nodes[node].addr;
    let target_cpu = |fleet: &Fleet| -> Option<f64> {
        fleet
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| *i != node && n.is_running())
            .map(|(_, n)| n.cpu_s())
            .sum()
    };
    let targets_before = target_cpu(fleet);
    let drained_before = fleet.nodes[node].cpu_s();
    let clients_before = procstat::process(None).map(|s| s.cpu_s);

    let wall = SystemTime::now();
    let started = Instant::now();
    fleet.nodes[node]
        .drain(&fleet.http)
        .await
        .with_context(|| format!("draining node {}", fleet.nodes[node].id))?;
    let poll = poll_empty(
        fleet.http.clone(),
        fleet.nodes[node].admin.clone(),
        fleet.nodes[node].pid,
        deadline,
    );
    let gather = async {
        let mut moved: Vec<Vec<Option<Moved>>> =
            games.iter().map(|g| vec![None; g.members.len()]).collect();
        let mut done = 0;
        loop {
            tokio::select! {
                joined = watchers.join_next() => match joined {
                    None => break,
                    Some(Ok((g, m, result))) => {
                        moved[g][m] = Some(result);
                        done += 1;
                    }
                    Some(Err(e)) => bail!("a watcher failed: {e}"),
                },
                () = tokio::time::sleep(Duration::from_millis(250)) => progress.update(|| {
                    format!("fleet: draining, {done}/{sessions} sessions moved, {:.1} s", started.elapsed().as_secs_f64())
                }),
            }
        }
        Ok(moved)
    };
    let (admin_empty, (exited, drained_after), moved) = {
        let exit = fleet.nodes[node].wait_exit(deadline);
        tokio::join!(poll, exit, gather)
    };
    progress.done();
    let moved = moved?;
    let targets_after = target_cpu(fleet);
    let clients_after = procstat::process(None).map(|s| s.cpu_s);
    let cpu_s = DrainCpu {
        drained: drained_before.zip(drained_after).map(|(a, b)| b - a),
        targets: targets_before.zip(targets_after).map(|(a, b)| b - a),
        clients: clients_before.zip(clients_after).map(|(a, b)| b - a),
    };
    let since = |t: Option<Instant>| t.map(|t| t.duration_since(started).as_secs_f64());
    let after_post = |t: Option<SystemTime>| {
        t.and_then(|t| t.duration_since(wall).ok())
            .map(|d| d.as_secs_f64())
    };
    let drained = &fleet.nodes[node];
    let (closed, last_closed) = drained.logged("allocation closed", Some("relocated"));
    let empty_s = after_post(last_closed);
    let (relocated, last_relocated) = drained.logged("allocation relocated", None);
    let handed_over_s = after_post(last_relocated).filter(|_| relocated == games.len());
    let shutdown_s = after_post(drained.logged("relay shutting down", None).1);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    if exited.is_none() {
        *failures
            .entry(format!(
                "node did not exit within {budget:?} ({})",
                fleet.nodes[node].err_tail()
            ))
            .or_default() += 1;
    }

    if closed != games.len() && fleet.logs_info() {
        *failures
            .entry(format!(
                "the node logged {closed} allocations closed as relocated, not {}",
                games.len()
            ))
            .or_default() += 1;
    }

    // Per allocation: its last member's move; every member on one new node, unchanged.
    let mut per_allocation = new_histogram();
    let mut last_move: Option<Instant> = None;
    let mut checks = JoinSet::new();
    for (game, moves) in games.iter().zip(&moved) {
        let mut fail = |what: String| *failures.entry(what).or_default() += 1;
        let mut at = Vec::new();
        for result in moves {
            match result {
                Some(Ok((when, relay))) => at.push((*when, *relay)),
                Some(Err(why)) => fail(why.clone()),
                None => fail("watcher gave no answer".to_owned()),
            }
        }
        if at.len() != game.members.len() {
            continue;
        }
        let Some(&(last, relay)) = at.iter().max_by_key(|(when, _)| *when) else {
            continue;
        };
        if relay == drained_addr || fleet.node_at(relay).is_none() {
            fail(format!(
                "relocated to {relay}, not another node of the fleet"
            ));
            continue;
        }
        if at.iter().any(|(_, r)| *r != relay) {
            fail("the members of a game relocated to different nodes".to_owned());
            continue;
        }
        let unchanged = game
            .members
            .iter()
            .zip(&game.identities)
            .all(|(s, (peer, host))| {
                s.local_peer() == *peer
                    && s.is_host() == *host
                    && s.allocation() == game.allocation
                    && s.relay_addr() == relay
            });
        if !unchanged {
            fail("a member's peer id, role, allocation or relay changed".to_owned());
            continue;
        }
        per_allocation.saturating_record((last.duration_since(started).as_nanos() as u64).max(1));
        last_move = last_move.max(Some(last));
        if game.members.len() > 1 {
            let (host, peer) = (game.members[0].clone(), game.members[1].clone());
            checks.spawn(exchange(host, peer));
        }
    }
    let everyone_moved = per_allocation.len() == games.len() as u64;
    while let Some(joined) = checks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => *failures.entry(format!("after the move: {e}")).or_default() += 1,
            Err(e) => *failures.entry(format!("check failed: {e}")).or_default() += 1,
        }
    }

    // Where the allocations went: each node's own list.
    let mut targets = BTreeMap::new();
    for (i, n) in fleet.nodes.iter().enumerate() {
        if i != node && n.is_running() {
            targets.insert(n.id.clone(), fleet.allocations(i).await.unwrap_or(0));
        }
    }
    let per_allocation = Latency::from_ns(&per_allocation);
    // Without the node's info log, the admin API's view.
    let drain_s = empty_s.or(since(admin_empty));

    Ok(DrainReport {
        node: fleet.nodes[node].id.clone(),
        allocations: games.len(),
        members: games.first().map_or(0, |g| g.members.len()),
        setup_s,
        per_allocation_x_join: [
            in_units(per_allocation.p50_us, unit_us),
            in_units(per_allocation.p99_us, unit_us),
            in_units(per_allocation.max_us, unit_us),
        ],
        per_allocation,
        handed_over_s,
        all_relocated_s: if everyone_moved {
            since(last_move)
        } else {
            None
        },
        empty_s,
        admin_empty_s: since(admin_empty),
        shutdown_s,
        exited_s: since(exited),
        drain_x_join: drain_s.and_then(|s| in_units(s * 1e6, unit_us)),
        allocations_per_s: drain_s.filter(|s| *s > 0.0).map(|s| games.len() as f64 / s),
        targets,
        cpu_s,
        failures,
    })
}

/// A datagram from the peer to the host and one back, each within [`DELIVERY_WAIT`].
async fn exchange(host: Arc<Session>, peer: Arc<Session>) -> anyhow::Result<()> {
    let ping = peer.local_peer().0.to_be_bytes();
    peer.send_to_host(&ping).context("peer send")?;
    let (from, got) = tokio::time::timeout(DELIVERY_WAIT, host.recv())
        .await
        .context("the host received nothing from its peer")?
        .context("host recv")?;
    if from != peer.local_peer() || got[..] != ping[..] {
        bail!("the host received {got:?} from {from}, not the peer's datagram");
    }
    host.send_to(peer.local_peer(), b"pong")
        .context("host send")?;
    let (from, got) = tokio::time::timeout(DELIVERY_WAIT, peer.recv())
        .await
        .context("the peer received nothing from its host")?
        .context("peer recv")?;
    if from != PeerId::HOST || &got[..] != b"pong" {
        bail!("the peer received {got:?} from {from}, not the host's datagram");
    }
    Ok(())
}
