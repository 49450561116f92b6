//! Join latency through one redirect: hosts open allocations on node 0; joiners join by code
//! alternately on node 0 itself (direct) and through another node (which answers `Redirect`;
//! the SDK follows it), one join at a time so the figures are latency, not queueing. Each time
//! is `Peer::join` from the call to its return, the whole client path: a fresh UDP socket, the
//! QUIC handshake, `Join` and `Joined` (through another node: a handshake there, `Join`, its
//! directory lookup and `Redirect`, then a handshake and `Join` on node 0). Each joiner leaves
//! once it has joined, on a task of its own (a close waits for the relay's acknowledgement and
//! the connection's draining period, tens of milliseconds that are no part of a join).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_client::{AllocationOptions, Host, Peer};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::nodes::Fleet;
use crate::report::{FleetJoinReport, Latency, Progress};
use crate::traffic::new_histogram;

/// Joins of each kind made first and not counted (lazy set-up in the nodes and the SDK).
const WARMUP: usize = 5;

/// Times `joins` joins of each kind into `allocations` allocations on node 0.
pub async fn measure(
    fleet: &Fleet,
    joins: usize,
    allocations: usize,
    progress: &mut Progress,
) -> anyhow::Result<FleetJoinReport> {
    let home = fleet.config(0)?;
    let mut hosts = Vec::with_capacity(allocations);
    // Each host reads its events (a joiner arriving and leaving, every time), so none queue up.
    let mut readers = JoinSet::new();
    for _ in 0..allocations {
        let host = Host::create(&home, AllocationOptions::default())
            .await
            .context("creating an allocation on node a")?;
        let session = std::sync::Arc::new(host.into_session());
        let reader = session.clone();
        readers.spawn(async move { while reader.next_event().await.is_some() {} });
        hosts.push(session);
    }
    let codes: Vec<_> = hosts.iter().filter_map(|h| h.join_code()).collect();
    if codes.len() != hosts.len() {
        anyhow::bail!("a host has no join code");
    }
    let others: Vec<_> = (1..fleet.nodes.len())
        .filter(|&i| fleet.nodes[i].is_running())
        .map(|i| fleet.config(i))
        .collect::<anyhow::Result<_>>()?;
    if others.is_empty() {
        anyhow::bail!("no other node to join through");
    }
    let home_addr = fleet.nodes[0].addr;
    let mut direct = new_histogram();
    let mut redirect = new_histogram();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut leaving = JoinSet::new();
    let total = 2 * (joins + WARMUP);
    let started = Instant::now();
    for i in 0..total {
        let redirected = i % 2 == 1;
        let round = i / 2;
        let config = if redirected {
            &others[round % others.len()]
        } else {
            &home
        };
        let code = codes[round % codes.len()];
        let kind = if redirected { "redirect" } else { "direct" };
        let t0 = Instant::now();
        match Peer::join(config, code).await {
            Ok(peer) => {
                let took = t0.elapsed();
                if peer.relay_addr() != home_addr {
                    *failures
                        .entry(format!(
                            "{kind}: seated on {} instead of node a",
                            peer.relay_addr()
                        ))
                        .or_default() += 1;
                } else if round >= WARMUP {
                    let h: &mut Histogram<u64> = if redirected {
                        &mut redirect
                    } else {
                        &mut direct
                    };
                    h.saturating_record((took.as_nanos() as u64).max(1));
                }
                leaving.spawn(async move { peer.close().await });
            }
            Err(e) => *failures.entry(format!("{kind}: {e}")).or_default() += 1,
        }
        progress.update(|| {
            format!(
                "fleet: {}/{total} joins, {:.1} s",
                i + 1,
                started.elapsed().as_secs_f64()
            )
        });
    }
    progress.done();
    while leaving.join_next().await.is_some() {}
    for host in &hosts {
        host.close().await;
    }
    // The readers end with their sessions' event queues; abort any that has not yet.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    readers.abort_all();
    let (direct, redirect) = (Latency::from_ns(&direct), Latency::from_ns(&redirect));
    let ratio = |a: f64, b: f64| (b > 0.0 && a > 0.0).then(|| a / b);
    Ok(FleetJoinReport {
        allocations,
        ratio_p50: ratio(redirect.p50_us, direct.p50_us),
        ratio_p99: ratio(redirect.p99_us, direct.p99_us),
        direct,
        redirect,
        failures,
    })
}
