//! coturn in the load run (`baton-bench load --compare coturn`): Debian's `turnserver` as a
//! third target, driven by the bench's own generator with the same flows, rates and payloads
//! as Baton and the UDP forwarder, through TURN allocations and ChannelData over UDP, and
//! measured the same way (CPU from `/proc` of the `turnserver` process, loss and one-way
//! latency from the stamps).
//!
//! ## Topology
//! The host of each game holds a TURN allocation; its peers are plain UDP sockets. That is the
//! usual TURN deployment (one side behind TURN), and it makes coturn do what Baton does per
//! delivered datagram: one receive and one send.
//!
//! - host → peer: the host sends ChannelData (4-byte header, no padding) on the channel bound
//!   to the peer; coturn sends the data as plain UDP from the host's relayed address;
//! - peer → host: the peer sends plain UDP to the host's relayed address; coturn sends it to
//!   the host as ChannelData on the peer's channel;
//! - broadcast: the host sends one ChannelData per peer, as a TURN host must. Baton's host
//!   uploads once and the relay fans out, so figures are compared per *delivered* datagram.
//!
//! Giving the peers allocations too would make coturn receive and send twice per datagram
//! (allocation to allocation), a deployment games avoid and a cost Baton does not have.
//!
//! The datagram coturn carries is the same as Baton's: a 2-byte header, then the stamped
//! payload. The receiving side overwrites the header with the source it learns from the
//! transport (the channel a host received on; for a peer, its socket is connected to its
//! host's relayed address), so the receivers' source check holds coturn to the same standard.
//!
//! ## Set-up and lifetimes
//! Per game: Allocate (lifetime [`LIFETIME_S`]), then CreatePermission for every peer and a
//! ChannelBind per peer. Every transaction is retried a bounded number of times with a
//! timeout. A refresher re-sends Refresh and the ChannelBinds every [`REFRESH_EVERY`] (within
//! the 300 s of a permission), so runs longer than coturn's lifetimes keep their
//! allocations; its answers reach the hosts' receiving tasks, which count error responses.
//!
//! - `stun`: the STUN/TURN messages and ChannelData framing;
//! - `server`: the `turnserver` child process and its command line.

mod server;
mod stun;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use self::stun::{Reply, Request, FIRST_CHANNEL, LAST_CHANNEL};
use crate::traffic::{Receiver, Shared, Topology};

pub use self::server::{find, Turnserver};
pub use self::stun::{write_channel_header, CHANNEL_HEADER_LEN};

/// Allocation lifetime asked for, seconds (coturn's default; refreshed well before it ends).
pub const LIFETIME_S: u32 = 600;

/// How often the refresher renews allocations, permissions (300 s) and channels (600 s).
pub const REFRESH_EVERY: Duration = Duration::from_secs(120);

/// Most refresh rounds, bounding the refresher to 8 hours.
const MAX_REFRESHES: u32 = 240;

/// Attempts of one transaction.
const ATTEMPTS: u32 = 5;

/// Wait for an answer to the first attempt; doubled each retry, at most [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(250);

/// Longest wait for an answer to one attempt.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// Games set up at once.
const SETUP_BATCH: usize = 32;

/// One client's socket, and for a host its channels.
pub struct TurnClient {
    /// Its UDP socket: a host's is connected to coturn, a peer's to its host's relayed
    /// address.
    pub socket: Arc<UdpSocket>,
    /// A host's channel to each member of its game, by member index (the host's own entry,
    /// index 0, is unused); empty for a peer.
    pub channels: Vec<u16>,
}

/// One game's allocation, as the refresher needs it.
pub struct Game {
    /// The host's socket, connected to coturn.
    host: Arc<UdpSocket>,
    /// Each peer's channel and address.
    peers: Vec<(u16, SocketAddr)>,
}

/// The channel a host binds to member `index` (1 and up) of its game.
fn channel_of(index: usize) -> Option<u16> {
    let c = usize::from(FIRST_CHANNEL) + index;
    (c <= usize::from(LAST_CHANNEL)).then_some(c as u16)
}

/// Transaction ids: unique within the process (coturn only needs them unique per client).
fn next_id() -> [u8; 12] {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(b"btn\0");
    id[4..].copy_from_slice(&n.to_be_bytes());
    id
}

/// Sends `request` on `socket` (connected to coturn) and waits for its answer, retrying
/// [`ATTEMPTS`] times; other datagrams arriving meanwhile are ignored. An error response is
/// an error.
async fn transact(socket: &UdpSocket, request: &Request) -> anyhow::Result<Reply> {
    let id = next_id();
    let bytes = request.encode(id)?;
    let mut buf = vec![0u8; 2048];
    let mut wait = FIRST_WAIT;
    for _ in 0..ATTEMPTS {
        socket
            .send(&bytes)
            .await
            .with_context(|| format!("sending {}", request.name()))?;
        let deadline = tokio::time::Instant::now() + wait;
        // Bounded by the deadline.
        while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            let n = received.with_context(|| format!("waiting for {}'s answer", request.name()))?;
            let Ok(reply) = Reply::decode(&buf[..n]) else {
                continue;
            };
            if reply.id != id {
                continue;
            }
            if let Some((code, reason)) = &reply.error {
                bail!("coturn refused {}: {code} {reason}", request.name());
            }
            return Ok(reply);
        }
        wait = (wait * 2).min(MAX_WAIT);
    }
    bail!(
        "coturn did not answer {} ({ATTEMPTS} attempts)",
        request.name()
    )
}

/// A UDP socket on 127.0.0.1 connected to `to`.
async fn connected_socket(to: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::from_std(crate::sockets::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?)
        .context("binding a TURN client socket")?;
    socket
        .connect(to)
        .await
        .context("connecting a TURN client socket")?;
    Ok(socket)
}

/// Sets up one game: the host's allocation, its peers' sockets, permissions and channels.
async fn setup_game(server: SocketAddr, members: usize) -> anyhow::Result<(Vec<TurnClient>, Game)> {
    let host = connected_socket(server).await?;
    let allocated = transact(
        &host,
        &Request::Allocate {
            lifetime_s: LIFETIME_S,
        },
    )
    .await?;
    let relayed = allocated
        .relayed
        .context("coturn's Allocate answer has no XOR-RELAYED-ADDRESS")?;
    let mut clients = Vec::with_capacity(members);
    let mut peers = Vec::with_capacity(members.saturating_sub(1));
    let mut channels = vec![0u16];
    let mut peer_clients = Vec::with_capacity(members.saturating_sub(1));
    for index in 1..members {
        let socket = connected_socket(relayed).await?;
        let channel = channel_of(index).context("more peers than TURN channels")?;
        peers.push((channel, socket.local_addr()?));
        channels.push(channel);
        peer_clients.push(TurnClient {
            socket: Arc::new(socket),
            channels: Vec::new(),
        });
    }
    transact(
        &host,
        &Request::CreatePermission {
            peers: peers.iter().map(|(_, a)| *a).collect(),
        },
    )
    .await?;
    for &(channel, peer) in &peers {
        transact(&host, &Request::ChannelBind { channel, peer }).await?;
    }
    let host = Arc::new(host);
    clients.push(TurnClient {
        socket: host.clone(),
        channels,
    });
    clients.extend(peer_clients);
    Ok((clients, Game { host, peers }))
}

/// Sets up `allocations` games of `members` (host included) on coturn at `server`: client `g`
/// is member `g % members` of game `g / members`, member 0 the host, and its peer id is its
/// member index.
pub async fn clients(
    server: SocketAddr,
    allocations: usize,
    members: usize,
) -> anyhow::Result<(Vec<TurnClient>, Vec<Game>, Topology)> {
    if !server.ip().is_loopback() {
        bail!("coturn must be on loopback");
    }
    let mut clients = Vec::with_capacity(allocations * members);
    let mut games = Vec::with_capacity(allocations);
    let all: Vec<usize> = (0..allocations).collect();
    for batch in all.chunks(SETUP_BATCH) {
        let done =
            futures_util::future::join_all(batch.iter().map(|_| setup_game(server, members))).await;
        for (result, alloc) in done.into_iter().zip(batch) {
            let (c, g) = result.with_context(|| format!("coturn game {alloc}"))?;
            clients.extend(c);
            games.push(g);
        }
    }
    let topo = Topology {
        allocations,
        members,
        peer_ids: (0..allocations * members)
            .map(|g| (g % members) as u16)
            .collect(),
    };
    Ok((clients, games, topo))
}

/// Spawns one receiving task per client into `tasks`. Hosts take ChannelData apart and name
/// the source by its channel; STUN answers (the refresher's) are skipped, error responses
/// and undecodable ones counted in `stun_errors`. Peers name their host as the source.
pub fn spawn_receivers(
    tasks: &mut JoinSet<()>,
    clients: &[TurnClient],
    shared: &Arc<Shared>,
    stun_errors: &Arc<AtomicU64>,
) {
    let members = shared.topo.members;
    for (g, client) in clients.iter().enumerate() {
        let socket = client.socket.clone();
        let mut receiver = Receiver::new(shared.clone(), g as u32);
        let host = !client.channels.is_empty();
        let host_peer_id = shared.topo.peer_ids[g - g % members];
        let ids: Vec<u16> = (0..members)
            .map(|i| shared.topo.peer_ids[g - g % members + i])
            .collect();
        let stun_errors = stun_errors.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 2048];
            // Ends when aborted, or when the socket fails.
            while let Ok(n) = socket.recv(&mut buf).await {
                let d = &mut buf[..n];
                if !host {
                    if let Some(src) = d.get_mut(..2) {
                        src.copy_from_slice(&host_peer_id.to_be_bytes());
                    }
                    receiver.on_datagram(d);
                } else if stun::is_stun(d) {
                    if Reply::decode(d).map_or(true, |r| r.error.is_some()) {
                        stun_errors.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    on_channel_data(&mut receiver, d, &ids);
                }
            }
        });
    }
}

/// A host's ChannelData: the source is the member its channel is bound to.
fn on_channel_data(receiver: &mut Receiver, d: &mut [u8], ids: &[u16]) {
    let Some((channel, data)) = stun::split_channel_data(d) else {
        receiver.on_datagram(&[]);
        return;
    };
    let len = data.len();
    let member = usize::from(channel.wrapping_sub(FIRST_CHANNEL));
    let Some(&src) = ids.get(member).filter(|_| member > 0) else {
        receiver.on_datagram(&[]);
        return;
    };
    let data = &mut d[CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + len];
    if let Some(head) = data.get_mut(..2) {
        head.copy_from_slice(&src.to_be_bytes());
    }
    receiver.on_datagram(data);
}

/// Spawns the refresher into `tasks`: every [`REFRESH_EVERY`], each game's Refresh and
/// ChannelBinds, sent without waiting (the hosts' receiving tasks see the answers).
pub fn spawn_refresher(tasks: &mut JoinSet<()>, games: Vec<Game>) {
    tasks.spawn(async move {
        for _ in 0..MAX_REFRESHES {
            tokio::time::sleep(REFRESH_EVERY).await;
            for game in &games {
                let mut requests = vec![Request::Refresh {
                    lifetime_s: LIFETIME_S,
                }];
                requests.extend(
                    game.peers
                        .iter()
                        .map(|&(channel, peer)| Request::ChannelBind { channel, peer }),
                );
                for request in requests {
                    if let Ok(bytes) = request.encode(next_id()) {
                        let _ = game.host.send(&bytes).await;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_stay_in_range() {
        assert_eq!(channel_of(1), Some(0x4001));
        assert_eq!(channel_of(0xFFF), Some(0x4FFF));
        assert_eq!(channel_of(0x1000), None);
    }

    #[test]
    fn transaction_ids_differ() {
        assert_ne!(next_id(), next_id());
    }

    #[test]
    fn channel_data_is_named_by_its_channel() {
        let topo = Topology {
            allocations: 1,
            members: 3,
            peer_ids: vec![0, 1, 2],
        };
        let shared = Shared::new(topo, 1);
        let mut host = Receiver::new(shared.clone(), 0);
        let ids = [0u16, 1, 2];
        // Member 2 sends to the host (run 0, the shared state's first); the header it wrote
        // is replaced by the source its channel names.
        let mut d = vec![0u8; CHANNEL_HEADER_LEN];
        d.extend_from_slice(&0xBEEFu16.to_be_bytes());
        crate::traffic::Stamp {
            run: 0,
            sender: 2,
            target: 0,
            alloc: 0,
            seq: 0,
            sent_ns: 1,
        }
        .write(&mut d);
        let len = d.len() - CHANNEL_HEADER_LEN;
        assert!(write_channel_header(&mut d, channel_of(2).unwrap(), len));
        d.extend_from_slice(&[0, 0]); // padding
        on_channel_data(&mut host, &mut d, &ids);
        assert_eq!(&d[4..6], &[0, 2]);
        assert_eq!(shared.received_so_far(), 1);
        // A channel no member is bound to, the host's own, and broken ChannelData are not
        // counted as received.
        for channel in [channel_of(3).unwrap(), FIRST_CHANNEL] {
            assert!(write_channel_header(&mut d, channel, len));
            on_channel_data(&mut host, &mut d, &ids);
        }
        on_channel_data(&mut host, &mut [0x40, 0x01, 0x00, 0x09, 0], &ids);
        assert_eq!(shared.received_so_far(), 1);
    }

    /// A game through a real `turnserver` on loopback, when it is installed: set-up, then
    /// ChannelData host → peer and plain UDP peer → host.
    #[tokio::test]
    async fn relays_through_turnserver_when_installed() {
        let Some(bin) = find() else {
            eprintln!("skipped: no turnserver on PATH");
            return;
        };
        let server = Turnserver::start(&bin, 1).await.unwrap();
        let (clients, games, topo) = clients(server.addr, 2, 3).await.unwrap();
        assert_eq!((clients.len(), games.len(), topo.peer_ids.len()), (6, 2, 6));
        let wait = Duration::from_secs(3);
        let mut rx = [0u8; 64];
        for game in 0..2 {
            let host = &clients[game * 3];
            assert_eq!(host.channels, vec![0, 0x4001, 0x4002]);
            let mut d = [0u8; CHANNEL_HEADER_LEN + 6];
            d[CHANNEL_HEADER_LEN..].copy_from_slice(b"hello!");
            assert!(write_channel_header(&mut d, host.channels[1], 6));
            host.socket.send(&d).await.unwrap();
            let peer = &clients[game * 3 + 1];
            let n = tokio::time::timeout(wait, peer.socket.recv(&mut rx))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&rx[..n], b"hello!");

            clients[game * 3 + 2].socket.send(b"back").await.unwrap();
            let n = tokio::time::timeout(wait, host.socket.recv(&mut rx))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                stun::split_channel_data(&rx[..n]),
                Some((host.channels[2], &b"back"[..]))
            );
        }
        server.stop().await;
    }
}
