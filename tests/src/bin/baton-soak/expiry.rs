//! Relay-side expiry, probed in turn every `--expiry-every` (jittered) during the churn phase:
//!
//! - **Bind timeout.** A raw QUIC connection that never creates or joins anything must be
//!   closed by the relay with close code 4 (bind timeout), not before `--bind-timeout` and
//!   not much after.
//! - **Join-code lifetime.** A host asks for a code that lives `--code-ttl`; a join within the
//!   lifetime succeeds, one after it is refused with `expired`, the admin API shows the code
//!   `expired`, and the allocation closes when both leave.
//! - **Unclaimed reservation.** An allocation reserved through `POST /v1/allocations` whose
//!   host never claims it must disappear at `--host-bind-timeout`.
//!
//! With a fleet each probe picks a node in turn, and the probe pauses with the games while a
//! node is drained or killed ([`crate::gate`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use baton_client::{AllocationOptions, Error, Host, Peer};
use baton_protocol::CloseCode;
use serde_json::Value;

use crate::state::{Check, Ctx, NodeAddr};
use crate::util::Rng;

/// Slack on every expiry deadline: the relay's timers plus a loaded machine.
const SLACK: Duration = Duration::from_secs(3);
/// An expiry this much earlier than configured is a failure (timer granularity).
const EARLY: Duration = Duration::from_millis(150);
/// Bound on one connect or request of a probe.
const STEP: Duration = Duration::from_secs(10);

/// Time the probe stays paused while a node is drained or killed, at most.
const PAUSE_BOUND: Duration = Duration::from_secs(90);

/// Runs the probes until the churn phase ends.
pub async fn run(ctx: Arc<Ctx>, seed: u64) {
    let mut rng = Rng::new(seed ^ 0xE8B1_7E57);
    let mut round = 0u64;
    let mut gate_round = 0u64;
    ctx.gate.join();
    while ctx.churning() {
        let wait = rng.jitter(ctx.opts.expiry_every, 0.5, 1.5);
        let until = (Instant::now() + wait).min(ctx.churn_end);
        // Sleeps until the next probe, pausing for node events meanwhile.
        loop {
            if let Some(r) = ctx.gate.pending(gate_round) {
                gate_round = r;
                ctx.gate.park(r);
                ctx.gate.finish(r);
                ctx.gate
                    .wait(PAUSE_BOUND, |s| s.round != r || !s.requested)
                    .await;
            }
            if Instant::now() >= until {
                break;
            }
            let step = until.min(Instant::now() + Duration::from_millis(250));
            tokio::time::sleep_until(step.into()).await;
        }
        if !ctx.churning() {
            break;
        }
        let Some((node, _)) = ctx.node_at(round as usize / 3) else {
            break;
        };
        let (name, result) = match round % 3 {
            0 => ("bind timeout", unbound_connection(&ctx, &node).await),
            1 => ("join-code lifetime", short_lived_code(&ctx, &node).await),
            _ => ("reservation", unclaimed_reservation(&ctx, &node).await),
        };
        round += 1;
        if let Err(e) = result {
            let on = if ctx.fleet {
                format!(" on node {}", node.id)
            } else {
                String::new()
            };
            ctx.fail(Check::Expiry, format!("{name} probe{on}: {e:#}"));
        }
    }
    ctx.gate.leave();
}

/// A connection that never binds is closed with the bind-timeout code in time.
async fn unbound_connection(ctx: &Ctx, node: &NodeAddr) -> anyhow::Result<()> {
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
        .context("binding a client endpoint")?;
    let config = quic_config(ctx)?;
    let conn = tokio::time::timeout(
        STEP,
        endpoint
            .connect_with(config, node.addr, "localhost")
            .context("starting a connection")?,
    )
    .await
    .map_err(|_| anyhow!("handshake timed out"))?
    .context("handshake")?;
    let connected = Instant::now();
    let bound = ctx.opts.bind_timeout + SLACK;
    let result = match tokio::time::timeout(bound, conn.closed()).await {
        Err(_) => Err(anyhow!(
            "the relay kept an unbound connection open for {bound:?}"
        )),
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            let code = CloseCode::from_u64(close.error_code.into_inner());
            let after = connected.elapsed();
            if code != CloseCode::BindTimeout {
                Err(anyhow!(
                    "the relay closed an unbound connection with {code}, expected bind timeout"
                ))
            } else if after + EARLY < ctx.opts.bind_timeout {
                Err(anyhow!(
                    "the relay closed an unbound connection after {after:?}, before the bind timeout {:?}",
                    ctx.opts.bind_timeout
                ))
            } else {
                ctx.stats.bind_expiries.inc();
                Ok(())
            }
        }
        Ok(other) => Err(anyhow!(
            "an unbound connection ended with {other}, expected bind timeout"
        )),
    };
    conn.close(0u32.into(), b"");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}

/// A code past its lifetime is refused with `expired`; the allocation is unaffected.
async fn short_lived_code(ctx: &Ctx, node: &NodeAddr) -> anyhow::Result<()> {
    let config = ctx.client_config(node.addr)?;
    let ttl = ctx.opts.code_ttl;
    let host = tokio::time::timeout(
        STEP,
        Host::create(&config, AllocationOptions::default().code_ttl(ttl)),
    )
    .await
    .map_err(|_| anyhow!("create timed out"))?
    .context("create with a short code lifetime")?;
    let created = Instant::now();
    ctx.stats.probe_allocations.inc();
    if host.code_ttl() > ttl {
        bail!(
            "asked for a code lifetime of {ttl:?}, got {:?}",
            host.code_ttl()
        );
    }
    let code = host.join_code();
    let result = async {
        let early = tokio::time::timeout(STEP, Peer::join(&config, code)).await;
        let peer = match early {
            Ok(Ok(peer)) => {
                ctx.stats.probe_joins.inc();
                Some(peer)
            }
            // Too slow a machine to join within the lifetime: not the relay's fault.
            Ok(Err(Error::CodeExpired)) if created.elapsed() + EARLY >= ttl => {
                ctx.stats.probe_late_joins.inc();
                None
            }
            Ok(Err(e)) => bail!("a join within the code's lifetime failed: {e}"),
            Err(_) => bail!("a join within the code's lifetime timed out"),
        };
        tokio::time::sleep_until((created + ttl + Duration::from_millis(500)).into()).await;
        match tokio::time::timeout(STEP, Peer::join(&config, code)).await {
            Ok(Err(Error::CodeExpired)) => ctx.stats.code_expiries.inc(),
            Ok(Err(e)) => {
                bail!("a join after the code's lifetime failed with {e}, expected `expired`")
            }
            Ok(Ok(_)) => bail!("a join after the code's lifetime ({ttl:?}) succeeded"),
            Err(_) => bail!("a join after the code's lifetime timed out"),
        }
        let info =
            node.api.allocation(host.allocation().0).await?.context(
                "the allocation of an expired code vanished while its host is connected",
            )?;
        if info.get("code_state").and_then(Value::as_str) != Some("expired") {
            bail!(
                "admin API shows the expired code as {:?}",
                info.get("code_state")
            );
        }
        if let Some(peer) = peer {
            peer.close().await;
            ctx.stats.probe_closes.inc();
        }
        Ok(())
    }
    .await;
    let alloc = host.allocation().0;
    host.close().await;
    ctx.stats.probe_closes.inc();
    result?;
    let deadline = Instant::now() + SLACK;
    while node.api.allocation(alloc).await?.is_some() {
        if Instant::now() > deadline {
            bail!("allocation {alloc:016x} still exists {SLACK:?} after its members left");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A reservation nobody claims disappears at the host bind timeout.
async fn unclaimed_reservation(ctx: &Ctx, node: &NodeAddr) -> anyhow::Result<()> {
    // In a fleet a reservation goes to the least-loaded node unless it names one: this one.
    let id = node
        .api
        .reserve(ctx.fleet.then_some(node.id.as_str()))
        .await?;
    ctx.stats.probe_allocations.inc();
    let reserved = Instant::now();
    let info = node
        .api
        .allocation(id)
        .await?
        .context("a fresh reservation is not listed")?;
    if info.get("state").and_then(Value::as_str) != Some("awaiting_host") {
        bail!("a fresh reservation is in state {:?}", info.get("state"));
    }
    let bound = ctx.opts.host_bind_timeout + SLACK;
    loop {
        let present = node.api.allocation(id).await?.is_some();
        let after = reserved.elapsed();
        if !present {
            if after + EARLY < ctx.opts.host_bind_timeout {
                bail!(
                    "reservation {id:016x} vanished after {after:?}, before the host bind timeout {:?}",
                    ctx.opts.host_bind_timeout
                );
            }
            ctx.stats.reservation_expiries.inc();
            return Ok(());
        }
        if after > bound {
            bail!("reservation {id:016x} still exists {after:?} after it was made");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A raw QUIC client configuration trusting the relay's certificate.
fn quic_config(ctx: &Ctx) -> anyhow::Result<quinn::ClientConfig> {
    let pem =
        std::fs::read(&ctx.cert).with_context(|| format!("reading {}", ctx.cert.display()))?;
    let crypto = baton_tests::tls::quic_crypto(&pem)?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(ctx.opts.keepalive_interval));
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}
