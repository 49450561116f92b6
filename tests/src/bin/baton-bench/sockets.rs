//! UDP sockets set up the same way on every side of a measurement: the relay's default kernel
//! buffer size (`baton_relay::defaults::UDP_BUFFER`) requested for the load generator's
//! sockets and the plain UDP forwarder's, so the ceiling and the generator are not held back
//! by the kernel's small default buffers where the relay is not.

use std::net::SocketAddr;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

/// A UDP socket bound to `addr` with the relay's default buffer sizes requested (the kernel
/// caps them at `net.core.rmem_max`/`wmem_max`), non-blocking for tokio and quinn.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("creating a UDP socket")?;
    let buffer = baton_relay::defaults::UDP_BUFFER;
    // Best effort, as the relay does.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket
        .set_nonblocking(true)
        .context("non-blocking UDP socket")?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket.into())
}
