//! Join-code guessing with valid credentials (scope `any`) and random codes, from one
//! address, from across one /24, and from many addresses in many /24s (the relay-wide
//! budget). Each guesser holds one raw connection and sends `Join` after `Join` on its control
//! stream, reconnecting when the relay closes it. Refusals are counted by reason; a `Joined`
//! is a hit, and there must be none.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use baton_protocol::ClientMessage;
use futures_util::FutureExt;

use super::{bump, connect, endpoint, hold_until, reply_kind, request, sources, Attack, Ctx, Rng};
use crate::report::Findings;

/// Relay metric families guessing moves.
const COUNTERS: &[&str] = &["baton_requests_refused_total", "baton_rate_limited_total"];

/// The guessing attacks.
pub fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "join-code guessing, one address",
            counters: COUNTERS,
            run: |ctx, until| guess(ctx, until, sources(14, 1)).boxed(),
        },
        Attack {
            name: "join-code guessing, one /24",
            counters: COUNTERS,
            run: |ctx, until| guess(ctx, until, sources(15, 254)).boxed(),
        },
        Attack {
            name: "join-code guessing, 2032 addresses",
            counters: COUNTERS,
            run: |ctx, until| guess(ctx, until, sources(16, 2032)).boxed(),
        },
    ]
}

/// Guessers at once.
const GUESSERS: usize = 16;

async fn guess(ctx: &Ctx, until: Instant, addrs: Vec<IpAddr>) -> anyhow::Result<Findings> {
    let per_guesser = ctx.scale(60, 600);
    let credential = crate::games::credential(&ctx.secret, "guesser")?;
    let mut tally = Vec::new();
    let mut workers = Vec::new();
    for g in 0..GUESSERS {
        // Each guesser walks its own share of the addresses, one connection per address.
        let mine: Vec<IpAddr> = addrs.iter().copied().skip(g).step_by(GUESSERS).collect();
        let mine = if mine.is_empty() {
            vec![addrs[0]]
        } else {
            mine
        };
        workers.push(guesser(
            ctx,
            until,
            mine,
            credential.clone(),
            per_guesser,
            g as u64,
        ));
    }
    for t in futures_util::future::join_all(workers).await {
        for (k, v) in t {
            bump(&mut tally, &k, v);
        }
    }
    hold_until(until).await;
    let hits = tally
        .iter()
        .find(|(k, _)| k == "joined")
        .map_or(0, |(_, v)| *v);
    let mut findings = Findings::default();
    for (k, v) in tally {
        findings.figure(k, v);
    }
    findings.check("no guess hit a live join code", hits == 0);
    Ok(findings)
}

/// One guesser: up to `guesses` joins with random codes, rotating over `addrs`.
async fn guesser(
    ctx: &Ctx,
    until: Instant,
    addrs: Vec<IpAddr>,
    credential: String,
    guesses: usize,
    salt: u64,
) -> Vec<(String, u64)> {
    let mut rng = Rng::new(salt);
    let mut tally = Vec::new();
    let mut done = 0;
    let mut next_addr = 0;
    'connections: while done < guesses && Instant::now() < until {
        let addr = addrs[next_addr % addrs.len()];
        next_addr += 1;
        let Ok(ep) = endpoint(ctx, addr) else {
            bump(&mut tally, "bind failed", 1);
            break;
        };
        let conn = match connect(ctx, &ep, Duration::from_secs(3)).await {
            Ok(c) => c,
            Err(_) => {
                bump(&mut tally, "connect failed", 1);
                done += 1;
                continue;
            }
        };
        let Ok((mut send, mut recv)) = conn.open_bi().await else {
            bump(&mut tally, "stream refused", 1);
            continue;
        };
        // Every address makes a few guesses per connection, then the next address takes over.
        for _ in 0..8 {
            if done >= guesses || Instant::now() >= until {
                break 'connections;
            }
            done += 1;
            let join = ClientMessage::Join {
                request_id: done as u32,
                code: rng.join_code(),
                credential: Some(credential.clone()),
            };
            match request(&mut send, &mut recv, &join, Duration::from_secs(3)).await {
                Ok(reply) => bump(&mut tally, &reply_kind(&reply), 1),
                Err(_) => {
                    bump(&mut tally, "connection closed", 1);
                    continue 'connections;
                }
            }
        }
        conn.close(0u32.into(), b"");
    }
    tally
}
