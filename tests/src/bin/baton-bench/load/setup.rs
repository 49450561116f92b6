//! Connecting and binding the relay clients of N allocations × M members ([`setup`], on
//! concurrent set-up tasks of the generator runtime) and closing them ([`close_all`]). Used by
//! the load run and by `idle`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::quic::{self, Client};
use crate::report::Progress;
use crate::traffic::Topology;

/// Connects and binds every client of `allocations × members`: per allocation a host
/// (`CreateAllocation`), then its peers (`Join` by code) one after another; `concurrency`
/// allocations at a time. Fails if any client fails.
pub async fn setup(
    pool: &Arc<quic::Clients>,
    allocations: usize,
    members: usize,
    concurrency: usize,
    label: &str,
    progress: &mut Progress,
) -> anyhow::Result<(Vec<Client>, Topology)> {
    setup_with(
        pool,
        (allocations, members, quic::NO_FAST_HOST_LOSS_MS),
        concurrency,
        label,
        progress,
    )
    .await
}

/// [`setup`] with every allocation asking for a host-loss timeout of `host_loss_ms` (0: the
/// relay's default; [`setup`] asks for [`quic::NO_FAST_HOST_LOSS_MS`], its clients sending no
/// heartbeats).
pub async fn setup_with(
    pool: &Arc<quic::Clients>,
    (allocations, members, host_loss_ms): (usize, usize, u16),
    concurrency: usize,
    label: &str,
    progress: &mut Progress,
) -> anyhow::Result<(Vec<Client>, Topology)> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let done = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for alloc in 0..allocations {
        let (pool, permits, done) = (pool.clone(), permits.clone(), done.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let first = alloc * members;
            let host = pool
                .create_with(first, members as u16, host_loss_ms)
                .await
                .with_context(|| format!("allocation {alloc}: host"))?;
            done.fetch_add(1, Ordering::Relaxed);
            let mut clients = vec![host.client];
            for i in 1..members {
                let peer = pool
                    .join(first + i, host.code)
                    .await
                    .with_context(|| format!("allocation {alloc}: peer {i}"))?;
                clients.push(peer.client);
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((alloc, clients))
        });
    }
    let total = allocations * members;
    let mut by_alloc: Vec<Option<Vec<Client>>> = (0..allocations).map(|_| None).collect();
    let started = Instant::now();
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(joined) => {
                    let (alloc, clients) = joined.context("set-up task")??;
                    by_alloc[alloc] = Some(clients);
                }
            },
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                progress.update(|| format!(
                    "{label}: set-up {}/{total} clients, {:.1} s",
                    done.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                ));
            }
        }
    }
    progress.done();
    let clients: Vec<Client> = by_alloc.into_iter().flatten().flatten().collect();
    if clients.len() != total {
        bail!("only {} of {total} clients were set up", clients.len());
    }
    let topo = Topology {
        allocations,
        members,
        peer_ids: clients.iter().map(|c| c.peer).collect(),
    };
    Ok((clients, topo))
}

/// Closes every client, peers first so no host's departure starts a migration.
pub fn close_all(clients: &[Client], members: usize) {
    for (g, c) in clients.iter().enumerate() {
        if g % members != 0 {
            c.close();
        }
    }
    for c in clients.iter().step_by(members.max(1)) {
        c.close();
    }
}
