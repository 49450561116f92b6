//! The snapshot-abort loop: hosts start 10 MiB snapshot uploads and drop their connections
//! mid-upload, again and again; afterwards a real migration (a host that uploaded a snapshot
//! and then left) must still carry that snapshot to the new host.

use std::time::{Duration, Instant};

use baton_client::{Event, Host, Peer};
use futures_util::FutureExt;

use super::{bump, sources, Attack, Ctx};
use crate::report::Findings;

/// Snapshot size the aborted uploads announce.
const ABORTED_LEN: usize = 10 * 1024 * 1024;
/// Snapshot the final migration carries.
const CARRIED_LEN: usize = 256 * 1024;

/// The snapshot attack.
pub fn attacks() -> Vec<Attack> {
    vec![Attack {
        name: "snapshot-abort loop, then a migration",
        counters: &["baton_snapshot", "baton_members_left_total"],
        run: |ctx, until| abort_loop(ctx, until).boxed(),
    }]
}

async fn abort_loop(ctx: &Ctx, until: Instant) -> anyhow::Result<Findings> {
    // Over the 26 aborted uploads that exhausted the upload permits before they were guarded.
    let rounds = ctx.scale(40, 100);
    let addrs = sources(24, 64);
    let big = bytes::Bytes::from(vec![7u8; ABORTED_LEN]);
    let mut tally = Vec::new();
    let mut done = 0;
    for round in 0..rounds {
        // The loop gets most of the window; the migration check needs the rest.
        if Instant::now() + Duration::from_secs(2) >= until {
            break;
        }
        let config = ctx.sdk_config(addrs[round % addrs.len()], "aborter")?;
        let host = match Host::create(&config, Default::default()).await {
            Ok(h) => h,
            Err(e) => {
                bump(&mut tally, &format!("create failed: {e}"), 1);
                continue;
            }
        };
        let session = host.into_session();
        let big = big.clone();
        // The task owns the session: aborting it drops the session, which closes the
        // connection mid-upload.
        let upload = tokio::spawn(async move {
            let _ = session.upload_snapshot(big).await;
        });
        // Let some megabytes go, then drop everything mid-upload.
        tokio::time::sleep(Duration::from_millis(30)).await;
        upload.abort();
        let _ = upload.await;
        done += 1;
    }
    let mut findings = Findings::default();
    findings.figure("uploads aborted", done);
    for (k, v) in tally {
        findings.figure(k, v);
    }
    let carried = migration_carries_snapshot(ctx).await;
    match &carried {
        Ok(()) => findings.figure("migration carried the snapshot", 1),
        Err(e) => findings.figure(format!("migration check: {e}"), 1),
    }
    findings.check(
        "a migration after the loop carries its snapshot",
        carried.is_ok(),
    );
    super::hold_until(until).await;
    Ok(findings)
}

/// A host uploads a snapshot and leaves; its peer must become host with that snapshot.
async fn migration_carries_snapshot(ctx: &Ctx) -> Result<(), String> {
    let addrs = sources(25, 2);
    let e = |e: anyhow::Error| e.to_string();
    let host = Host::create(
        &ctx.sdk_config(addrs[0], "migrating-host").map_err(e)?,
        Default::default(),
    )
    .await
    .map_err(|e| format!("create: {e}"))?;
    let peer = Peer::join(
        &ctx.sdk_config(addrs[1], "heir").map_err(e)?,
        host.join_code(),
    )
    .await
    .map_err(|e| format!("join: {e}"))?;
    let snapshot = baton_tests::snapshot_bytes(CARRIED_LEN);
    match tokio::time::timeout(
        Duration::from_secs(10),
        host.session().upload_snapshot(snapshot.clone()),
    )
    .await
    {
        Err(_) => {
            return Err("the upload did not finish in 10 s (upload permits exhausted?)".into())
        }
        Ok(Err(e)) => return Err(format!("upload refused: {e}")),
        Ok(Ok(_)) => {}
    }
    host.into_session().close().await;
    let session = peer.into_session();
    let migrated = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(event) = session.next_event().await {
            if let Event::HostMigrated {
                you_are_host,
                snapshot,
                ..
            } = event
            {
                return Some((you_are_host, snapshot));
            }
        }
        None
    })
    .await;
    session.close().await;
    match migrated {
        Err(_) => Err("no migration within 15 s".into()),
        Ok(None) => Err("the session ended without a migration".into()),
        Ok(Some((false, _))) => Err("the peer did not become host".into()),
        Ok(Some((true, Some(got)))) if got[..] == snapshot[..] => Ok(()),
        Ok(Some((true, got))) => Err(format!(
            "the new host got {} snapshot bytes, not the {CARRIED_LEN} uploaded",
            got.map_or(0, |g| g.len())
        )),
    }
}
