//! Connection-ID steering across the endpoints that share the relay's port.
//!
//! With `--endpoints N` the relay binds N UDP sockets to one port with `SO_REUSEPORT`. By default
//! the kernel picks a socket by hashing the packet's addresses, so a client whose address changes
//! (a NAT rebinding, a phone moving from Wi-Fi to mobile data) would land on an endpoint that
//! does not know its connection, which answers with a stateless reset and ends the game.
//!
//! Instead, every connection ID an endpoint issues starts with that endpoint's index
//! (`LaneCids`), and a classic BPF program attached to the port's socket group
//! (`attach`) sends each packet to the socket its destination connection ID names. A
//! client's first Initial packet carries a connection ID the client chose; the program maps it
//! to an endpoint all the same (its first byte modulo N), consistently for that handshake's
//! retransmissions, and from the server's first reply on the client uses the IDs that endpoint
//! issued. Addresses play no part, so connections survive address changes on any endpoint.
//!
//! The driver's `socket` module calls `attach` once while the relay binds; quinn calls
//! `LaneCids` on each endpoint's lane thread. Nothing here does I/O beyond that one socket
//! option.

use std::time::Duration;

use quinn::{ConnectionId, ConnectionIdGenerator};

/// Length of the connection IDs the relay issues: the endpoint index and 7 random bytes.
pub(crate) const CID_LEN: usize = 8;

/// Issues connection IDs whose first byte is the endpoint's index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaneCids {
    lane: u8,
}

impl LaneCids {
    /// IDs for endpoint `lane` (at most 64 endpoints, so the index fits the first byte).
    pub(crate) fn new(lane: u8) -> Self {
        LaneCids { lane }
    }
}

impl ConnectionIdGenerator for LaneCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut id = [0u8; CID_LEN];
        id[0] = self.lane;
        rand::Rng::fill(&mut rand::thread_rng(), &mut id[1..]);
        ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The endpoint index a QUIC packet's destination connection ID names, for `lanes` endpoints:
/// what the BPF program computes, written out for tests and documentation. `None` for a packet
/// too short to carry one (the kernel then uses socket 0).
pub fn lane_of(packet: &[u8], lanes: u8) -> Option<u8> {
    let first = *packet.first()?;
    // Long header (bit 7 set): version (4 bytes), DCID length (1), DCID. Short header: DCID
    // right after the first byte.
    let at = if first & 0x80 != 0 { 6 } else { 1 };
    packet.get(at).map(|b| b % lanes.max(1))
}

/// The classic BPF program behind [`lane_of`], for a reuse-port group of `lanes` sockets. The
/// kernel runs it on the UDP payload; it returns the index of the socket (in bind order).
#[cfg(target_os = "linux")]
fn program(lanes: u8) -> Vec<nix::libc::sock_filter> {
    // Opcodes (linux/filter.h): BPF_LD|BPF_B|BPF_ABS, BPF_JMP|BPF_JSET|BPF_K, BPF_JMP|BPF_JA,
    // BPF_ALU|BPF_MOD|BPF_K, BPF_RET|BPF_A.
    const LDB_ABS: u16 = 0x30;
    const JSET_K: u16 = 0x45;
    const JA: u16 = 0x05;
    const MOD_K: u16 = 0x94;
    const RET_A: u16 = 0x16;
    let op = |code, jt, jf, k| nix::libc::sock_filter { code, jt, jf, k };
    vec![
        op(LDB_ABS, 0, 0, 0),                     // A = first byte
        op(JSET_K, 0, 2, 0x80),                   // long header? next : short
        op(LDB_ABS, 0, 0, 6),                     // long: A = DCID[0]
        op(JA, 0, 0, 1),                          // skip the short-header load
        op(LDB_ABS, 0, 0, 1),                     // short: A = DCID[0]
        op(MOD_K, 0, 0, u32::from(lanes.max(1))), // A %= lanes
        op(RET_A, 0, 0, 0),                       // socket index A
    ]
}

/// Attaches the steering program to `socket`'s reuse-port group of `lanes` sockets, bound in
/// endpoint order.
#[cfg(target_os = "linux")]
pub(crate) fn attach(socket: &std::net::UdpSocket, lanes: u8) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::AttachReusePortCbpf};
    let mut filter = program(lanes);
    let fprog = nix::libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // The kernel copies the program during the call; `filter` outlives it.
    setsockopt(socket, AttachReusePortCbpf, &fprog).map_err(std::io::Error::from)
}

/// Without Linux's reuse-port BPF, the kernel's address hash picks the socket.
#[cfg(not(target_os = "linux"))]
pub(crate) fn attach(_socket: &std::net::UdpSocket, _lanes: u8) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "connection-ID steering needs Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_ids_name_their_endpoint_for_short_and_long_headers() {
        for lanes in 1..=8u8 {
            for lane in 0..lanes {
                let id = LaneCids::new(lane).generate_cid();
                assert_eq!(id.len(), CID_LEN);
                let mut short = vec![0x40];
                short.extend_from_slice(&id);
                short.extend_from_slice(&[0; 20]);
                assert_eq!(lane_of(&short, lanes), Some(lane));
                let mut long = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8];
                long.extend_from_slice(&id);
                long.extend_from_slice(&[0; 20]);
                assert_eq!(lane_of(&long, lanes), Some(lane));
            }
        }
        assert_eq!(lane_of(&[], 4), None);
        assert_eq!(lane_of(&[0x40], 4), None);
    }

    #[test]
    fn ids_are_random_past_the_endpoint_byte() {
        let mut cids = LaneCids::new(3);
        let a = cids.generate_cid();
        let b = cids.generate_cid();
        assert_eq!((a[0], b[0]), (3, 3));
        assert_ne!(a[1..], b[1..]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_accepts_the_program_on_a_reuse_port_group() {
        use socket2::{Domain, Socket, Type};
        let a = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        a.set_reuse_port(true).unwrap();
        a.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let a: std::net::UdpSocket = a.into();
        attach(&a, 2).unwrap();
    }
}
