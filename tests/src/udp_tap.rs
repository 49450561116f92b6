//! A loopback UDP tap between one client and the relay: forwards every datagram both ways,
//! records the largest seen in each direction, and can cut the client's uplink (its datagrams
//! towards the relay are then dropped, as on a dead link).
//!
//! The client sends to [`UdpTap::addr`]; the tap sends on to the relay from its own socket and
//! returns the relay's datagrams to the last client address it heard from.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;

/// Larger than any UDP datagram the tests' QUIC endpoints send (quinn's MTU upper bound is
/// 1452 bytes), so nothing is truncated.
const BUFFER: usize = 65_536;

/// The tap's shared state.
#[derive(Debug, Default)]
struct State {
    cut: AtomicBool,
    largest_up: AtomicUsize,
    largest_down: AtomicUsize,
}

/// A running tap; dropping it stops the forwarding.
#[derive(Debug)]
pub struct UdpTap {
    /// Where the client sends (the tap's client-facing socket).
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpTap {
    /// Starts a tap in front of the relay at `relay` (a loopback address).
    pub async fn start(relay: SocketAddr) -> std::io::Result<UdpTap> {
        let front = UdpSocket::bind("127.0.0.1:0").await?;
        let back = UdpSocket::bind("127.0.0.1:0").await?;
        back.connect(relay).await?;
        let addr = front.local_addr()?;
        let state = Arc::new(State::default());
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let (mut up, mut down) = (vec![0u8; BUFFER], vec![0u8; BUFFER]);
                let mut client = None;
                loop {
                    tokio::select! {
                        Ok((n, from)) = front.recv_from(&mut up) => {
                            client = Some(from);
                            state.largest_up.fetch_max(n, Ordering::Relaxed);
                            if !state.cut.load(Ordering::SeqCst) {
                                let _ = back.send(&up[..n]).await;
                            }
                        }
                        Ok(n) = back.recv(&mut down) => {
                            state.largest_down.fetch_max(n, Ordering::Relaxed);
                            if let Some(to) = client {
                                let _ = front.send_to(&down[..n], to).await;
                            }
                        }
                    }
                }
            }
        });
        Ok(UdpTap { addr, state, task })
    }

    /// Cuts (`true`) or restores (`false`) the client's uplink.
    pub fn cut_uplink(&self, cut: bool) {
        self.state.cut.store(cut, Ordering::SeqCst);
    }

    /// The largest UDP payload seen from the client towards the relay, in bytes.
    pub fn largest_up(&self) -> usize {
        self.state.largest_up.load(Ordering::Relaxed)
    }

    /// The largest UDP payload seen from the relay towards the client, in bytes.
    pub fn largest_down(&self) -> usize {
        self.state.largest_down.load(Ordering::Relaxed)
    }
}

impl Drop for UdpTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}
