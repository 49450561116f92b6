//! A client in its own OS process, for crash tests.
//!
//! - `baton-test-peer <relay addr> <fingerprint hex> <join code>`: joins by code, prints
//!   `joined <peer id>` on stdout, then sends a datagram to the host every 100 ms until killed.
//! - `baton-test-peer host <relay addr> <fingerprint hex> [host loss timeout ms]`: creates an
//!   allocation (with that host-loss timeout, else the relay's default), prints
//!   `created <join code>`, then broadcasts a datagram every 100 ms until killed (or stopped:
//!   a SIGSTOPped host is a host whose network was cut).

use std::time::Duration;

use anyhow::{bail, Context};
use baton_client::{AllocationOptions, ClientConfig, Host, Peer, Trust};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, relay, fingerprint, rest @ ..] if mode == "host" && rest.len() <= 1 => {
            let config = config(relay, fingerprint)?;
            let mut options = AllocationOptions::default();
            if let [ms] = rest {
                options = options.host_loss_timeout(Duration::from_millis(
                    ms.parse().context("host loss timeout")?,
                ));
            }
            let host = Host::create(&config, options).await?;
            println!("created {}", host.join_code());
            // Bounded: a crash test kills it long before; a forgotten one stops by itself.
            for i in 0u32..6000 {
                host.broadcast(&i.to_be_bytes())?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        [relay, fingerprint, code] => {
            let peer = Peer::join(&config(relay, fingerprint)?, code.as_str()).await?;
            println!("joined {}", peer.local_peer());
            for i in 0u32..6000 {
                peer.send_to_host(&i.to_be_bytes())?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        _ => bail!(
            "usage: baton-test-peer <relay addr> <fingerprint hex> <join code>\n       \
             baton-test-peer host <relay addr> <fingerprint hex> [host loss timeout ms]"
        ),
    }
    Ok(())
}

fn config(relay: &str, fingerprint: &str) -> anyhow::Result<ClientConfig> {
    Ok(ClientConfig::new(
        relay.parse().context("relay address")?,
        Trust::fingerprint_hex(fingerprint)?,
    ))
}
