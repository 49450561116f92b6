//! A datagram flood from one member over its rate limit (the relay's default is 500
//! datagrams a second per client): an attacker joins the first game's allocation with a valid
//! credential, with an accomplice beside it, and sends it 10× the limit. The game's members
//! share the allocation (and the relay's forwarding) with the flood; the other games share the
//! relay. The flood goes to the accomplice, not to the game's players, so what the players
//! measure is the relay's behaviour, not their own work on junk.

use std::time::{Duration, Instant};

use baton_client::Peer;
use futures_util::FutureExt;

use super::{sources, Attack, Ctx};
use crate::report::Findings;

/// The flood's rate, datagrams a second.
const FLOOD_PER_SEC: u64 = 5000;

/// The datagram flood.
pub fn attacks() -> Vec<Attack> {
    vec![Attack {
        name: "datagram flood, one member at 10× its limit",
        counters: &["baton_datagrams_dropped_total", "baton_rate_limited_total"],
        run: |ctx, until| flood(ctx, until).boxed(),
    }]
}

async fn flood(ctx: &Ctx, until: Instant) -> anyhow::Result<Findings> {
    let addrs = sources(17, 2);
    let code = ctx.games[0].code.as_str();
    let attacker = Peer::join(&ctx.sdk_config(addrs[0], "flooder")?, code).await?;
    let sink = Peer::join(&ctx.sdk_config(addrs[1], "flood-sink")?, code).await?;
    let target = sink.session().local_peer();
    let payload = vec![0xA5u8; 64];
    let mut sent = 0u64;
    let mut refused = 0u64;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let mut received = 0u64;
    while Instant::now() < until {
        tokio::select! {
            _ = tick.tick() => {
                let due = start.elapsed().as_micros() as u64 * FLOOD_PER_SEC / 1_000_000;
                while sent + refused < due {
                    match attacker.session().send_to(target, &payload) {
                        Ok(()) => sent += 1,
                        Err(_) => refused += 1,
                    }
                }
            }
            got = sink.session().recv() => {
                if got.is_ok() {
                    received += 1;
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64().max(0.001);
    let mut findings = Findings::default();
    findings.figure("sent", sent);
    findings.figure("refused by the SDK", refused);
    findings.figure("delivered to the accomplice", received);
    findings.figure("delivered per second", (received as f64 / secs) as u64);
    attacker.into_session().close().await;
    sink.into_session().close().await;
    Ok(findings)
}
