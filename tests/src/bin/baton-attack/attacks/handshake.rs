//! Handshake floods: half-open handshakes (Initial packets never completed) from many ports
//! and from many addresses, and completed connections that sit unbound, from one address and
//! from one /24.
//!
//! Half-open: a quinn client connects, again and again, to a *capture* socket of this
//! process, so each connection's first flight is a real, fresh Initial (new connection IDs,
//! a real TLS ClientHello with Baton's ALPN). The first datagram of each new destination
//! connection ID is sent on to the relay from a plain UDP socket bound to one of the attack's
//! source addresses; nothing the relay answers is ever read. So the relay sees a valid
//! Initial from a source that never completes the handshake, exactly what a spoofing flooder
//! produces. (Rewriting one captured Initial with fresh connection IDs would mean
//! re-encrypting it: the Initial keys derive from the destination ID.) Later datagrams of the
//! same connection (retransmissions, and the close when the client endpoint is dropped) are
//! not forwarded, so the relay is never told the handshake was abandoned.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::FutureExt;

use super::{bump, endpoint, hold_until, sources, Attack, Ctx};
use crate::report::Findings;

/// Relay metric families a handshake flood moves.
const COUNTERS: &[&str] = &[
    "baton_connections",
    "baton_handshake",
    "baton_connections_refused",
];

/// The handshake attacks.
pub fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "half-open handshakes, one address, many ports",
            counters: COUNTERS,
            run: |ctx, until| half_open(ctx, until, sources(10, 1), 64).boxed(),
        },
        Attack {
            name: "half-open handshakes, 1016 addresses",
            counters: COUNTERS,
            run: |ctx, until| half_open(ctx, until, sources(11, 1016), 1).boxed(),
        },
        Attack {
            name: "connection flood, one address",
            counters: COUNTERS,
            run: |ctx, until| connection_flood(ctx, until, sources(12, 1)).boxed(),
        },
        Attack {
            name: "connection flood, one /24",
            counters: COUNTERS,
            run: |ctx, until| connection_flood(ctx, until, sources(13, 254)).boxed(),
        },
    ]
}

/// Initials per second a half-open flood aims at.
const INITIALS_PER_SEC: u64 = 1000;

/// Sends real Initials from `ports` sockets on each address in `addrs` until `until`, and
/// never completes them.
async fn half_open(
    ctx: &Ctx,
    until: Instant,
    addrs: Vec<IpAddr>,
    ports: usize,
) -> anyhow::Result<Findings> {
    let limit = ctx.scale(3_000, 30_000);
    let mut socks = Vec::new();
    for addr in &addrs {
        for _ in 0..ports {
            let sock = UdpSocket::bind(SocketAddr::new(*addr, 0))
                .with_context(|| format!("binding {addr}"))?;
            sock.set_nonblocking(true)?;
            socks.push(sock);
        }
    }
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let capture_addr = capture.local_addr()?;
    let client = endpoint(ctx, "127.0.0.1".parse()?)?;
    let mut pending = Vec::new();
    let mut seen = HashSet::new();
    let mut buf = vec![0u8; 2048];
    let mut sent = 0u64;
    let mut send_errors = 0u64;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while Instant::now() < until && seen.len() < limit {
        tokio::select! {
            _ = tick.tick() => {
                // Keep to the target rate: as many connections as are due by now.
                let due = (start.elapsed().as_millis() as u64 * INITIALS_PER_SEC / 1000) as usize;
                while pending.len() < due.min(limit) {
                    pending.push(client.connect(capture_addr, "localhost")?);
                }
            }
            got = capture.recv_from(&mut buf) => {
                let (len, _) = got?;
                let Some(dcid) = initial_dcid(&buf[..len]) else { continue };
                if !seen.insert(dcid.to_vec()) {
                    continue;
                }
                let sock = &socks[seen.len() % socks.len()];
                match sock.send_to(&buf[..len], ctx.relay) {
                    Ok(_) => sent += 1,
                    Err(_) => send_errors += 1,
                }
            }
        }
    }
    hold_until(until).await;
    let mut findings = Findings::default();
    findings.figure("initials sent", sent);
    findings.figure("send errors", send_errors);
    findings.figure("source sockets", socks.len() as u64);
    findings.figure("source addresses", addrs.len() as u64);
    // The capture side never answered: dropping the client sends its closes to the capture
    // socket, which is no longer read; the relay hears nothing more.
    drop(pending);
    client.close(0u32.into(), b"");
    Ok(findings)
}

/// The destination connection ID of a QUIC long-header (Initial) packet.
fn initial_dcid(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let len = usize::from(*packet.get(5)?);
    packet.get(6..6 + len)
}

/// Completes as many handshakes as it can (bounded) from `addrs`, and holds the connections,
/// never binding them, until `until`.
async fn connection_flood(
    ctx: &Ctx,
    until: Instant,
    addrs: Vec<IpAddr>,
) -> anyhow::Result<Findings> {
    let limit = ctx.scale(400, 3_000);
    let endpoints = addrs
        .iter()
        .map(|a| endpoint(ctx, *a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut held = Vec::new();
    let mut outcomes = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = 0usize;
    // 32 handshakes in flight at once.
    while Instant::now() < until && (started < limit || !tasks.is_empty()) {
        while tasks.len() < 32 && started < limit {
            let ep = endpoints[started % endpoints.len()].clone();
            let connecting = ep.connect(ctx.relay, "localhost");
            tasks.spawn(async move {
                match connecting {
                    Ok(c) => tokio::time::timeout(Duration::from_secs(5), c)
                        .await
                        .map_err(|_| "handshake timed out".to_owned())
                        .and_then(|r| r.map_err(|e| e.to_string())),
                    Err(e) => Err(e.to_string()),
                }
            });
            started += 1;
        }
        let Ok(Some(done)) = tokio::time::timeout_at(until.into(), tasks.join_next()).await else {
            break;
        };
        match done {
            Ok(Ok(conn)) => {
                bump(&mut outcomes, "established", 1);
                held.push(conn);
            }
            Ok(Err(e)) => bump(&mut outcomes, &format!("failed: {e}"), 1),
            Err(_) => bump(&mut outcomes, "task failed", 1),
        }
    }
    tasks.abort_all();
    hold_until(until).await;
    let closed_by_relay = held.iter().filter(|c| c.close_reason().is_some()).count();
    let mut findings = Findings::default();
    findings.figure("attempted", started as u64);
    for (k, v) in outcomes {
        findings.figure(k, v);
    }
    findings.figure("closed by the relay before the end", closed_by_relay as u64);
    for ep in &endpoints {
        ep.close(0u32.into(), b"");
    }
    Ok(findings)
}
