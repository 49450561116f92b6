//! Datagram latency while the host uploads migration snapshots: shows that a large upload,
//! on its own QUIC stream, does not hold up game traffic.
//!
//! A relay on loopback, a host and one peer (SDK sessions in this process). The peer sends the
//! host a timestamped datagram every `1/rate` s; the host records one-way latency. First with
//! no upload (baseline), then while the host uploads `--snapshot-bytes` snapshots back to back.
//!
//! ```text
//! cargo run --release -p baton-tests --bin baton-snapshot-latency [-- --snapshot-bytes 10485760]
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use baton_client::{AllocationOptions, Host, Peer};
use baton_tests::TestRelay;
use clap::Parser;
use hdrhistogram::Histogram;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Datagram latency through the relay while the host uploads snapshots")]
struct Args {
    /// Size of each snapshot uploaded in the second phase.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    snapshot_bytes: usize,
    /// Datagrams per second from the peer to the host.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Length of each phase.
    #[arg(long, default_value = "3", value_name = "SECONDS")]
    seconds: u64,
}

/// One phase's figures.
struct Phase {
    latency: Histogram<u64>,
    sent: u64,
    uploads: u64,
    uploaded_bytes: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let relay = TestRelay::start().await;
    let config = relay.client();
    let host = Host::create(&config, AllocationOptions::default())
        .await
        .context("create")?;
    let peer = Peer::join(&config, host.join_code())
        .await
        .context("join")?;
    let epoch = Instant::now();
    let mut report = Vec::new();
    for (name, upload) in [("no upload", false), ("uploading", true)] {
        let phase = run_phase(&args, &host, &peer, epoch, upload).await?;
        report.push((name, phase));
    }
    println!(
        "datagram latency peer -> relay -> host, {} datagrams/s, {} s per phase, snapshots of {} bytes",
        args.rate, args.seconds, args.snapshot_bytes
    );
    println!(
        "{:<12} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}",
        "phase", "sent", "recv", "p50 us", "p99 us", "p99.9 us", "max us", "uploads", "upload MB/s"
    );
    for (name, p) in &report {
        let secs = args.seconds as f64;
        println!(
            "{:<12} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10.1}",
            name,
            p.sent,
            p.latency.len(),
            p.latency.value_at_quantile(0.5),
            p.latency.value_at_quantile(0.99),
            p.latency.value_at_quantile(0.999),
            p.latency.max(),
            p.uploads,
            p.uploaded_bytes as f64 / secs / 1e6,
        );
    }
    host.close().await;
    Ok(())
}

/// Runs one phase: the peer sends for `--seconds`, the host receives, and uploads if `upload`.
async fn run_phase(
    args: &Args,
    host: &Host,
    peer: &Peer,
    epoch: Instant,
    upload: bool,
) -> anyhow::Result<Phase> {
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let snapshot = bytes::Bytes::from(vec![0x5a; args.snapshot_bytes]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate.max(1));
    let mut sent = 0u64;
    let uploads = std::cell::Cell::new(0u64);
    let uploader = async {
        if !upload {
            return std::future::pending::<anyhow::Result<()>>().await;
        }
        loop {
            host.upload_snapshot(snapshot.clone()).await?;
            uploads.set(uploads.get() + 1);
        }
    };
    tokio::pin!(uploader);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            result = &mut uploader => result?,
            _ = tick.tick() => {
                let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                peer.send_to_host(&now.to_be_bytes())?;
                sent += 1;
            }
            datagram = host.recv() => {
                let (_, payload) = datagram?;
                let Ok(stamp) = <[u8; 8]>::try_from(&payload[..]) else { continue };
                let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                latency.saturating_record(now.saturating_sub(u64::from_be_bytes(stamp)).max(1));
            }
        }
    }
    // Datagrams still in flight arrive within a moment; count them.
    let drain = tokio::time::Instant::now() + Duration::from_millis(200);
    while let Ok(Ok((_, payload))) = tokio::time::timeout_at(drain, host.recv()).await {
        if let Ok(stamp) = <[u8; 8]>::try_from(&payload[..]) {
            let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
            latency.saturating_record(now.saturating_sub(u64::from_be_bytes(stamp)).max(1));
        }
    }
    Ok(Phase {
        latency,
        sent,
        uploads: uploads.get(),
        uploaded_bytes: uploads.get() * snapshot.len() as u64,
    })
}
