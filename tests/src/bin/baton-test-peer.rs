//! A peer in its own OS process, for crash tests: joins a relay by code, prints
//! `joined <peer id>` on stdout, then sends a datagram to the host every 100 ms until killed.
//!
//! Usage: `baton-test-peer <relay addr> <fingerprint hex> <join code>`

use std::time::Duration;

use anyhow::{bail, Context};
use baton_client::{ClientConfig, Peer, Trust};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [relay, fingerprint, code] = args.as_slice() else {
        bail!("usage: baton-test-peer <relay addr> <fingerprint hex> <join code>");
    };
    let config = ClientConfig::new(
        relay.parse().context("relay address")?,
        Trust::fingerprint_hex(fingerprint)?,
    );
    let peer = Peer::join(&config, code.as_str()).await?;
    println!("joined {}", peer.local_peer());
    // Bounded: a crash test kills it long before; a forgotten one stops by itself.
    for i in 0u32..6000 {
        peer.send_to_host(&i.to_be_bytes())?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
