//! Creates an allocation, prints its join code and every event, and echoes each datagram back to
//! its sender prefixed with `echo: `.
//!
//! ```text
//! cargo run -p baton-client --example host -- --relay 127.0.0.1:7700 --fingerprint <hex>
//! cargo run -p baton-client --example host -- --relay 127.0.0.1:7700 --cert relay-cert.pem
//! ```

use anyhow::Context as _;
use baton_client::{AllocationOptions, Event, Host};
use clap::Parser;

mod common;

/// Host an allocation on a Baton relay and echo datagrams.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    relay: common::RelayArgs,
    /// Maximum members, host included (relay default if absent).
    #[arg(long)]
    max_peers: Option<u16>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let args = Args::parse();
    let config = args.relay.client_config()?;
    let options = AllocationOptions {
        max_peers: args.max_peers,
        ..AllocationOptions::default()
    };

    let host = Host::create(&config, options)
        .await
        .context("creating the allocation")?;
    println!("join code: {}", host.join_code());
    println!(
        "allocation {} (up to {} members, code valid {:?}, payloads up to {} bytes)",
        host.allocation(),
        host.max_peers(),
        host.code_ttl(),
        host.max_payload()
    );

    loop {
        tokio::select! {
            event = host.next_event() => match event {
                Some(Event::Disconnected { reason }) => {
                    println!("disconnected: {reason}");
                    break;
                }
                Some(event) => println!("event: {event} (members: {:?})", host.members()),
                None => break,
            },
            datagram = host.recv() => match datagram {
                Ok((from, payload)) => {
                    println!("from peer {from}: {}", String::from_utf8_lossy(&payload));
                    let mut reply = Vec::with_capacity(6 + payload.len());
                    reply.extend_from_slice(b"echo: ");
                    reply.extend_from_slice(&payload);
                    if let Err(e) = host.send_to(from, &reply) {
                        eprintln!("cannot echo to peer {from}: {e}");
                    }
                }
                // The connection ended; the events say why.
                Err(_) => {
                    while let Some(event) = host.next_event().await {
                        println!("event: {event}");
                    }
                    break;
                }
            },
            _ = tokio::signal::ctrl_c() => {
                println!("closing");
                host.close().await;
            }
        }
    }
    Ok(())
}
