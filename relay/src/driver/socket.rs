//! The relay's UDP sockets: [`bind_udp`] binds one per endpoint on one port (`SO_REUSEPORT`)
//! with the kernel buffers asked for, [`steer`] attaches connection-ID steering to the group,
//! and [`endpoint_config`] makes each endpoint issue connection IDs that name it (see
//! [`steering`]).
//!
//! Called once, by `Relay::bind` on the caller's task, before the endpoints and their lanes
//! start.

use std::net::SocketAddr;

use tracing::{debug, info, warn};

use super::steering;

/// Binds `count` UDP sockets to `listen` (the first picks the port if `listen` has port 0, the
/// others share it with `SO_REUSEPORT`), each with kernel buffers of `buffer` bytes requested.
pub(super) fn bind_udp(
    listen: SocketAddr,
    count: usize,
    buffer: usize,
) -> std::io::Result<Vec<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut addr = listen;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            // Accept IPv4 too on the unspecified address, as the kernel default usually does.
            let _ = socket.set_only_v6(false);
        }
        if count > 1 {
            socket.set_reuse_port(true)?;
        }
        // Best effort: the kernel caps the request; what it granted is logged.
        let _ = socket.set_recv_buffer_size(buffer);
        let _ = socket.set_send_buffer_size(buffer);
        socket.bind(&addr.into())?;
        if let Some(bound) = socket.local_addr()?.as_socket() {
            addr = bound;
        }
        info!(
            %addr,
            recv_buffer = socket.recv_buffer_size().unwrap_or(0),
            send_buffer = socket.send_buffer_size().unwrap_or(0),
            "QUIC socket bound"
        );
        sockets.push(socket.into());
    }
    Ok(sockets)
}

/// Attaches connection-ID steering to the reuse-port group `sockets` (bound in endpoint order)
/// when there is more than one; without it the kernel spreads packets by address.
pub(super) fn steer(sockets: &[std::net::UdpSocket]) {
    // At most 64 endpoints (the config's bound), so indexes fit the connection ID's byte.
    let count = sockets.len();
    if let Some(first) = sockets.first().filter(|_| count > 1) {
        match steering::attach(first, u8::try_from(count).unwrap_or(u8::MAX)) {
            Ok(()) => debug!(endpoints = count, "connection-ID steering attached"),
            Err(e) => warn!(
                cause = %e,
                "connection-ID steering unavailable: the kernel spreads packets by address, \
                 so a client whose address changes may lose its connection"
            ),
        }
    }
}

/// The configuration of endpoint `index`: the connection IDs it issues start with `index`.
pub(super) fn endpoint_config(index: usize) -> quinn::EndpointConfig {
    let mut endpoint_config = quinn::EndpointConfig::default();
    let cids = steering::LaneCids::new(u8::try_from(index).unwrap_or(u8::MAX));
    endpoint_config.cid_generator(move || Box::new(cids));
    endpoint_config
}
