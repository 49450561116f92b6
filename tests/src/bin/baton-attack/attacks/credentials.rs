//! Credential abuse: joins of a real game with forged (another secret), expired, wrong-scope
//! and malformed credentials, each refused with its own reason; and a kicked peer coming back
//! with its reconnect token, which must be refused.

use std::time::{Duration, Instant};

use baton_client::{Error, Event, Host, Peer};
use baton_protocol::credential::{CredentialRefusal, Scope};
use baton_protocol::{ClientMessage, ErrorCode, ServerMessage};
use futures_util::FutureExt;

use super::{bump, connect, endpoint, hold_until, request, sources, Attack, Ctx};
use crate::games::credential_with;
use crate::report::Findings;

/// The credential attacks.
pub fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "forged, expired and wrong-scope credentials",
            counters: &[
                "baton_credentials_refused_total",
                "baton_requests_refused_total",
            ],
            run: |ctx, until| bad_credentials(ctx, until).boxed(),
        },
        Attack {
            name: "kicked peer rejoins",
            counters: &["baton_members_left_total", "baton_requests_refused_total"],
            run: |ctx, until| kicked_rejoin(ctx, until).boxed(),
        },
    ]
}

async fn bad_credentials(ctx: &Ctx, until: Instant) -> anyhow::Result<Findings> {
    let rounds = ctx.scale(25, 250);
    let code = baton_protocol::JoinCode::parse(&ctx.games[2].code)
        .map_err(|e| anyhow::anyhow!("game code: {e}"))?;
    let other_code =
        baton_protocol::JoinCode::parse("BBBBBB").map_err(|e| anyhow::anyhow!("{e}"))?;
    let forged_secret = [0x42u8; 32];
    let kinds = [
        (
            "forged",
            credential_with(&forged_secret, "forger", Scope::Any, 3600)?,
        ),
        (
            "expired",
            credential_with(&ctx.secret, "late", Scope::Any, -3600)?,
        ),
        (
            "wrong scope (create)",
            credential_with(&ctx.secret, "creator", Scope::Create, 3600)?,
        ),
        (
            "wrong scope (other code)",
            credential_with(&ctx.secret, "elsewhere", Scope::JoinCode(other_code), 3600)?,
        ),
        ("malformed", "AAAA".to_owned()),
    ];
    let mut tally = Vec::new();
    let mut admitted = 0u64;
    let addrs = sources(22, 64);
    'rounds: for round in 0..rounds {
        if Instant::now() >= until {
            break;
        }
        let ep = endpoint(ctx, addrs[round % addrs.len()])?;
        let Ok(conn) = connect(ctx, &ep, Duration::from_secs(3)).await else {
            bump(&mut tally, "connect failed", 1);
            continue;
        };
        let Ok((mut send, mut recv)) = conn.open_bi().await else {
            continue;
        };
        for (i, (kind, text)) in kinds.iter().enumerate() {
            let join = ClientMessage::Join {
                request_id: i as u32 + 1,
                code,
                credential: Some(text.clone()),
            };
            match request(&mut send, &mut recv, &join, Duration::from_secs(3)).await {
                Ok(ServerMessage::Refused {
                    code: ErrorCode::Unauthorized,
                    value,
                    ..
                }) => {
                    let reason = CredentialRefusal::from_value(value)
                        .map_or("other", CredentialRefusal::as_str);
                    bump(&mut tally, &format!("{kind}: {reason}"), 1);
                }
                Ok(ServerMessage::Refused { code, .. }) => {
                    bump(&mut tally, &format!("{kind}: {code}"), 1)
                }
                Ok(ServerMessage::Joined { .. }) => {
                    admitted += 1;
                    bump(&mut tally, &format!("{kind}: JOINED"), 1);
                    conn.close(0u32.into(), b"");
                    continue 'rounds;
                }
                Ok(other) => bump(&mut tally, &format!("{kind}: {other:?}"), 1),
                Err(_) => {
                    bump(&mut tally, "connection closed", 1);
                    continue 'rounds;
                }
            }
        }
        conn.close(0u32.into(), b"");
    }
    hold_until(until).await;
    let mut findings = Findings::default();
    for (k, v) in tally {
        findings.figure(k, v);
    }
    findings.check("no bad credential was admitted", admitted == 0);
    Ok(findings)
}

async fn kicked_rejoin(ctx: &Ctx, until: Instant) -> anyhow::Result<Findings> {
    let addrs = sources(23, 2);
    let host = Host::create(&ctx.sdk_config(addrs[0], "kicker")?, Default::default()).await?;
    let peer_config = ctx.sdk_config(addrs[1], "kicked")?;
    let peer = Peer::join(&peer_config, host.join_code()).await?;
    let token = peer.session().reconnect_token();
    let victim = peer.session().local_peer();
    host.session().kick(victim).await?;
    // The kicked session ends (bounded wait).
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = peer.session().next_event().await {
            if matches!(e, Event::Disconnected { .. }) {
                return true;
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    let mut findings = Findings::default();
    findings.figure("kicked session ended", u64::from(ended));
    let outcome = Peer::rejoin(&peer_config, &token).await;
    let refused = match &outcome {
        Ok(p) => {
            findings.figure("rejoin admitted", 1);
            p.session().close().await;
            false
        }
        Err(Error::Unauthorized | Error::CredentialRefused(_)) => {
            findings.figure("rejoin refused unauthorized", 1);
            true
        }
        Err(e) => {
            findings.figure(format!("rejoin failed: {e}"), 1);
            true
        }
    };
    findings.check("a kicked peer's rejoin is refused", refused);
    hold_until(until).await;
    host.into_session().close().await;
    Ok(findings)
}
