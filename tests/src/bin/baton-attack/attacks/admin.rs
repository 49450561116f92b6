//! Admin HTTP abuse: slowloris (many TCP connections that send a request's headers a byte
//! at a time and never finish them) and thousands of event-stream subscribers. While either
//! runs, a probe asks `/healthz` twice a second: an operator must still reach the relay.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{bump, hold_until, sources, Attack, Ctx};
use crate::report::Findings;

/// The admin attacks.
pub fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "admin slowloris",
            counters: &["baton_admin"],
            run: |ctx, until| slowloris(ctx, until).boxed(),
        },
        Attack {
            name: "event-stream subscribers",
            counters: &["baton_admin", "baton_event"],
            run: |ctx, until| subscribers(ctx, until).boxed(),
        },
    ]
}

/// A TCP connection to the admin server from `from`.
async fn dial(admin: SocketAddr, from: IpAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    tokio::time::timeout(Duration::from_secs(3), socket.connect(admin))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

/// Asks `/healthz` every 500 ms until `until`: (answered, asked).
async fn probe(ctx: &Ctx, until: Instant) -> (u64, u64) {
    let (mut ok, mut asked) = (0, 0);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build();
    let Ok(http) = http else { return (0, 0) };
    while Instant::now() < until {
        asked += 1;
        let url = format!("http://{}/healthz", ctx.admin);
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (ok, asked)
}

/// The attacker's `tally` and the `/healthz` probe's result, with its check.
fn with_probe(tally: Vec<(String, u64)>, ok: u64, asked: u64) -> Findings {
    let mut findings = Findings::default();
    for (k, v) in tally {
        findings.figure(k, v);
    }
    findings.figure("healthz answered", ok);
    findings.figure("healthz asked", asked);
    findings.check(
        "the admin server kept answering /healthz",
        asked > 0 && ok == asked,
    );
    findings
}

async fn slowloris(ctx: &Ctx, until: Instant) -> anyhow::Result<Findings> {
    let count = ctx.scale(600, 2_000);
    let addrs = sources(20, 254);
    let attack = async {
        let mut open = Vec::new();
        let mut tally = Vec::new();
        for i in 0..count {
            if Instant::now() >= until {
                break;
            }
            match dial(ctx.admin, addrs[i % addrs.len()]).await {
                Ok(mut s) => {
                    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
                        .await
                        .is_ok()
                    {
                        open.push(s);
                    } else {
                        bump(&mut tally, "write failed", 1);
                    }
                }
                Err(_) => bump(&mut tally, "connect failed", 1),
            }
        }
        bump(&mut tally, "connections opened", open.len() as u64);
        // One more header byte per connection a second, until the deadline.
        while Instant::now() < until {
            tokio::time::sleep(
                Duration::from_secs(1).min(until.saturating_duration_since(Instant::now())),
            )
            .await;
            let mut alive = 0;
            for s in &mut open {
                if s.write_all(b"a").await.is_ok() {
                    alive += 1;
                }
            }
            tally.retain(|(k, _)| k != "still open at the end");
            bump(&mut tally, "still open at the end", alive);
        }
        tally
    };
    let (tally, (ok, asked)) = tokio::join!(attack, probe(ctx, until));
    Ok(with_probe(tally, ok, asked))
}

async fn subscribers(ctx: &Ctx, until: Instant) -> anyhow::Result<Findings> {
    let count = ctx.scale(1_000, 3_000);
    let addrs = sources(21, 254);
    let attack = async {
        let mut tally = Vec::new();
        let mut open = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut started = 0;
        while started < count && Instant::now() < until {
            while tasks.len() < 64 && started < count {
                let (admin, from) = (ctx.admin, addrs[started % addrs.len()]);
                started += 1;
                tasks.spawn(async move {
                    let mut s = dial(admin, from).await.map_err(|e| e.to_string())?;
                    s.write_all(b"GET /v1/events HTTP/1.1\r\nHost: relay\r\nAccept: text/event-stream\r\n\r\n")
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut head = [0u8; 12];
                    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut head))
                        .await
                        .map_err(|_| "no status line in 3 s".to_owned())?
                        .map_err(|e| e.to_string())?;
                    let status = String::from_utf8_lossy(&head[9..12]).into_owned();
                    Ok::<_, String>((status, s))
                });
            }
            match tasks.join_next().await {
                Some(Ok(Ok((status, s)))) => {
                    bump(&mut tally, &format!("HTTP {status}"), 1);
                    open.push(s);
                }
                Some(Ok(Err(e))) => bump(&mut tally, &e, 1),
                _ => {}
            }
        }
        while let Ok(Some(done)) = tokio::time::timeout_at(until.into(), tasks.join_next()).await {
            match done {
                Ok(Ok((status, s))) => {
                    bump(&mut tally, &format!("HTTP {status}"), 1);
                    open.push(s);
                }
                Ok(Err(e)) => bump(&mut tally, &e, 1),
                Err(_) => {}
            }
        }
        tasks.abort_all();
        hold_until(until).await;
        tally
    };
    let (tally, (ok, asked)) = tokio::join!(attack, probe(ctx, until));
    let accepted = tally
        .iter()
        .find(|(k, _)| k == "HTTP 200")
        .map_or(0, |(_, v)| *v);
    let mut findings = with_probe(tally, ok, asked);
    findings.check(
        format!(
            "subscribers capped (at most {} accepted)",
            baton_relay::defaults::EVENT_STREAM_MAX_SUBSCRIBERS
        ),
        accepted as usize <= baton_relay::defaults::EVENT_STREAM_MAX_SUBSCRIBERS,
    );
    Ok(findings)
}
