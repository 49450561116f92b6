//! Control-plane abuse: members flooding the relay with control requests, and many
//! connections sending garbage frames (an undecodable body behind a valid length prefix, a
//! length prefix far over the frame limit, a unidirectional stream of junk).

use std::time::{Duration, Instant};

use baton_protocol::ClientMessage;
use futures_util::FutureExt;

use super::{
    bump, connect, endpoint, hold_until, read_reply, reply_kind, request, sources, Attack, Ctx, Rng,
};
use crate::report::Findings;

/// The control-plane attacks.
pub fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "control-request flood, 4 members",
            counters: &["baton_requests_refused_total", "baton_rate_limited_total"],
            run: |ctx, until| request_flood(ctx, until).boxed(),
        },
        Attack {
            name: "garbage frames, many connections",
            counters: &["baton_connections", "baton_members_left_total"],
            run: |ctx, until| garbage(ctx, until).boxed(),
        },
    ]
}

/// Members that flood.
const FLOODERS: usize = 4;

async fn request_flood(ctx: &Ctx, until: Instant) -> anyhow::Result<Findings> {
    let per_member = ctx.scale(2_000, 20_000);
    let credential = crate::games::credential(&ctx.secret, "request-flooder")?;
    let code = baton_protocol::JoinCode::parse(&ctx.games[1].code)
        .map_err(|e| anyhow::anyhow!("game code: {e}"))?;
    let mut members = Vec::new();
    for addr in sources(18, FLOODERS) {
        let ep = endpoint(ctx, addr)?;
        let conn = connect(ctx, &ep, Duration::from_secs(5)).await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let join = ClientMessage::Join {
            request_id: 1,
            code,
            credential: Some(credential.clone()),
        };
        let reply = request(&mut send, &mut recv, &join, Duration::from_secs(5)).await?;
        anyhow::ensure!(
            reply_kind(&reply) == "joined",
            "flooder not admitted: {reply:?}"
        );
        members.push((ep, conn, send, recv));
    }
    let mut runs = Vec::new();
    for (_, _, send, recv) in &mut members {
        runs.push(async move {
            let mut tally = Vec::new();
            let mut sent = 0u64;
            // Writes as fast as the stream takes them (a member's host-only request, refused
            // `not_host` or `rate_limited`); replies are read beside.
            let writer = async {
                while Instant::now() < until && (sent as usize) < per_member {
                    sent += 1;
                    let msg = ClientMessage::RevokeCode {
                        request_id: sent as u32 + 1,
                    };
                    if send.write_all(&msg.to_frame()).await.is_err() {
                        break;
                    }
                }
            };
            let reader = async {
                while Instant::now() < until {
                    match read_reply(recv, Duration::from_millis(500)).await {
                        Ok(reply) => bump(&mut tally, &reply_kind(&reply), 1),
                        Err(_) => break,
                    }
                }
            };
            tokio::join!(writer, reader);
            bump(&mut tally, "requests sent", sent);
            tally
        });
    }
    let mut tally = Vec::new();
    for t in futures_util::future::join_all(runs).await {
        for (k, v) in t {
            bump(&mut tally, &k, v);
        }
    }
    hold_until(until).await;
    let mut findings = Findings::default();
    for (k, v) in tally {
        findings.figure(k, v);
    }
    for (ep, conn, _, _) in members {
        conn.close(0u32.into(), b"");
        ep.close(0u32.into(), b"");
    }
    Ok(findings)
}

async fn garbage(ctx: &Ctx, until: Instant) -> anyhow::Result<Findings> {
    let count = ctx.scale(150, 1_500);
    let addrs = sources(19, 254);
    let mut rng = Rng::new(19);
    let mut tasks = tokio::task::JoinSet::new();
    let mut tally = Vec::new();
    let mut started = 0;
    while started < count && Instant::now() < until {
        while tasks.len() < 32 && started < count {
            let kind = started % 3;
            let junk: Vec<u8> = (0..256).map(|_| rng.next() as u8).collect();
            let ep = endpoint(ctx, addrs[started % addrs.len()])?;
            let relay = ctx.relay;
            started += 1;
            tasks.spawn(async move {
                let conn = ep.connect(relay, "localhost").map_err(|e| e.to_string())?;
                let conn = tokio::time::timeout(Duration::from_secs(5), conn)
                    .await
                    .map_err(|_| "handshake timed out".to_owned())?
                    .map_err(|e| e.to_string())?;
                let frame: Vec<u8> = match kind {
                    // A body no decoder accepts: an unknown message type, then junk.
                    0 => [&200u32.to_be_bytes()[..], &[0xEE], &junk[..199]].concat(),
                    // A length prefix far over any frame limit.
                    1 => [&0xFFFF_FFF0u32.to_be_bytes()[..], &junk[..]].concat(),
                    _ => junk,
                };
                if kind == 2 {
                    let mut uni = conn.open_uni().await.map_err(|e| e.to_string())?;
                    let _ = uni.write_all(&frame).await;
                    let _ = uni.finish();
                } else {
                    let (mut send, _recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                    let _ = send.write_all(&frame).await;
                }
                let closed = tokio::time::timeout(Duration::from_secs(3), conn.closed()).await;
                ep.close(0u32.into(), b"");
                Ok::<_, String>(match closed {
                    Ok(reason) => format!("closed by the relay: {reason}"),
                    Err(_) => "still open after 3 s".to_owned(),
                })
            });
        }
        match tasks.join_next().await {
            Some(Ok(Ok(what))) => bump(&mut tally, &what, 1),
            Some(Ok(Err(e))) => bump(&mut tally, &format!("failed: {e}"), 1),
            _ => {}
        }
    }
    while let Ok(Some(done)) = tokio::time::timeout_at(until.into(), tasks.join_next()).await {
        match done {
            Ok(Ok(what)) => bump(&mut tally, &what, 1),
            Ok(Err(e)) => bump(&mut tally, &format!("failed: {e}"), 1),
            Err(_) => {}
        }
    }
    tasks.abort_all();
    hold_until(until).await;
    let mut findings = Findings::default();
    findings.figure("connections", started as u64);
    for (k, v) in tally {
        findings.figure(k, v);
    }
    Ok(findings)
}
