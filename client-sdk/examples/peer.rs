//! Joins an allocation by its code, sends a message to the host once a second and prints the
//! replies; exits after `--count` replies.
//!
//! ```text
//! cargo run -p baton-client --example peer -- --relay 127.0.0.1:7700 --fingerprint <hex> --code BCDF78
//! ```

use std::time::Duration;

use anyhow::Context as _;
use baton_client::{Event, Peer};
use clap::Parser;

mod common;

/// Join a Baton allocation and talk to its host.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    relay: common::RelayArgs,
    /// The host's join code.
    #[arg(long)]
    code: String,
    /// Replies to wait for before exiting.
    #[arg(long, default_value_t = 5)]
    count: u32,
    /// Message to send.
    #[arg(long, default_value = "hi")]
    message: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let args = Args::parse();
    let config = args.relay.client_config()?;

    let peer = Peer::join(&config, args.code.as_str())
        .await
        .with_context(|| format!("joining {}", args.code))?;
    println!(
        "joined allocation {} as peer {} (members: {:?})",
        peer.allocation(),
        peer.local_peer(),
        peer.members()
    );

    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut sent = 0u32;
    let mut replies = 0u32;
    while replies < args.count {
        tokio::select! {
            _ = ticker.tick() => {
                sent += 1;
                let message = format!("{} #{sent}", args.message);
                peer.send_to_host(message.as_bytes())?;
                println!("sent: {message}");
            }
            datagram = peer.recv() => {
                let (from, payload) = datagram?;
                replies += 1;
                println!("reply from peer {from}: {}", String::from_utf8_lossy(&payload));
            }
            event = peer.next_event() => match event {
                Some(Event::Disconnected { reason }) => anyhow::bail!("disconnected: {reason}"),
                Some(event) => println!("event: {event}"),
                None => anyhow::bail!("session ended"),
            },
        }
    }
    peer.close().await;
    Ok(())
}
