//! [`ServerMessage`]: what the relay sends to a client on its control stream (replies and
//! events), with its codec.

use std::net::SocketAddr;

use bytes::BufMut;

use crate::join_code::JoinCode;
use crate::path::{NatKind, FINGERPRINT_LEN};
use crate::wire::Reader;
use crate::{
    server_name, AllocationId, DecodeError, DropReason, ErrorCode, LeaveReason, PeerId,
    MAX_PEERS_LIMIT,
};

use super::{
    address_len, candidates_len, code_len, put_address, put_candidates, put_code, read_address,
    read_candidates, read_code, read_nat,
};

/// Messages the relay sends to a client on its control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerMessage {
    /// `0x81`: reply to `CreateAllocation`.
    AllocationCreated {
        /// The request this answers.
        request_id: u32,
        /// The new allocation.
        allocation: AllocationId,
        /// The code peers join with.
        code: JoinCode,
        /// Seconds until the join code expires.
        code_ttl_secs: u32,
        /// Maximum members including the host.
        max_peers: u16,
        /// Largest datagram payload the relay carries, in bytes.
        max_payload: u16,
        /// Token to take this peer id back with `Rejoin` (e.g. as an ordinary peer after the
        /// allocation migrated away from this host).
        reconnect_token: [u8; 16],
        /// The allocation's effective host-loss timeout in milliseconds: the host must send
        /// something (game traffic or an empty heartbeat datagram) at least this often.
        host_loss_timeout_ms: u16,
    },
    /// `0x82`: reply to `Join` or `Rejoin`.
    Joined {
        /// The request this answers.
        request_id: u32,
        /// The allocation joined.
        allocation: AllocationId,
        /// The caller's peer id.
        peer: PeerId,
        /// Largest datagram payload the relay carries, in bytes.
        max_payload: u16,
        /// The current host's peer id (0 unless the allocation has migrated).
        host: PeerId,
        /// Token to take this peer id back with `Rejoin` after a lost connection.
        reconnect_token: [u8; 16],
        /// The allocation's effective host-loss timeout in milliseconds, which this member must
        /// keep to should it become host.
        host_loss_timeout_ms: u16,
        /// The other members present at the time of joining, host included.
        members: Vec<PeerId>,
    },
    /// `0x83`: a request was refused.
    Refused {
        /// The request this answers.
        request_id: u32,
        /// Why.
        code: ErrorCode,
        /// Code-specific detail, see [`ErrorCode`].
        value: u32,
    },
    /// `0x84`: a request without other reply data (`Kick`, `RevokeCode`) succeeded.
    Done {
        /// The request this answers.
        request_id: u32,
    },
    /// `0x85`: a peer joined the caller's allocation.
    PeerJoined {
        /// The new member.
        peer: PeerId,
    },
    /// `0x86`: a peer left the caller's allocation.
    PeerLeft {
        /// The member that left.
        peer: PeerId,
        /// Why it left.
        reason: LeaveReason,
    },
    /// `0x87`: the allocation's join code was revoked by an operator (sent to the host).
    CodeRevoked {
        /// The revoked code.
        code: JoinCode,
    },
    /// `0x88`: the relay dropped datagrams the caller sent. Sent at most once a second per
    /// reason, with the count since the last report.
    DatagramsDropped {
        /// Why.
        reason: DropReason,
        /// Datagrams dropped since the last report for this reason.
        count: u32,
        /// Reason-specific detail, see [`DropReason`].
        value: u32,
    },
    /// `0x89`: the host was lost; the allocation is migrating to `elected`. Sent to every
    /// remaining member, again if the choice changes (a lobby override or a timed-out
    /// candidate).
    HostLost {
        /// The lost host.
        host: PeerId,
        /// Why it was lost.
        reason: LeaveReason,
        /// The member chosen to host next.
        elected: PeerId,
    },
    /// `0x8A`: (to the elected member only) open the successor allocation with
    /// `MigrateAllocation` and this ticket within `deadline_ms`.
    Promote {
        /// The migrating allocation.
        allocation: AllocationId,
        /// Proof of election; valid for this allocation, this member and this election only.
        ticket: [u8; 16],
        /// Milliseconds left before the relay elects someone else.
        deadline_ms: u32,
    },
    /// `0x8B`: (to every other member) the allocation migrated: the caller is now a member of
    /// `allocation`, hosted by `host`, with its peer id unchanged.
    Migrated {
        /// The successor allocation.
        allocation: AllocationId,
        /// The new host.
        host: PeerId,
    },
    /// `0x8C`: (to the new host) a member of the old allocation arrived in the new one.
    PeerRejoined {
        /// The member, with its old peer id.
        peer: PeerId,
    },
    /// `0x8D`: (to the host) the migration snapshot it uploaded is stored.
    SnapshotStored {
        /// Its size in bytes.
        len: u32,
    },
    /// `0x8E`: (to the host) the snapshot it uploaded was not stored.
    SnapshotRejected {
        /// Why: `payload_too_large` (value = the limit in bytes), `not_host`, `relay_full`
        /// (the relay's snapshot memory budget is spent; value = 0).
        code: ErrorCode,
        /// Code-specific detail.
        value: u32,
    },
    /// `0x8F`: reply to `Join` or `Rejoin` from a relay of a fleet that does not hold the
    /// allocation: the node at `address` does. The client closes this connection normally,
    /// connects to `address` checking its certificate for `server_name` with the same trust,
    /// and sends the same request there; it follows at most one `Redirect` per request.
    Redirect {
        /// The request this answers.
        request_id: u32,
        /// The relay to send the request to. On the wire: family (4 or 6), the address bytes,
        /// the port; never port 0, an unspecified or a multicast address. An IPv6 address's
        /// flow label and scope id are not carried (they decode as 0).
        address: SocketAddr,
        /// The TLS server name to present to that relay and check its certificate against: a
        /// DNS name or an IP literal, 1 to [`server_name::MAX_LEN`] bytes, as
        /// [`server_name::is_valid`] accepts. A sender must only send valid names (encoding
        /// does not check); decoding refuses others.
        server_name: String,
    },
    /// `0x90`: unsolicited, from a fleet node that is draining: the client's allocation now
    /// lives on the node at `address`. The client connects there (checking its certificate for
    /// `server_name` with the same trust) and sends `Rejoin` with its allocation, peer id and
    /// reconnect token, while it keeps this connection and goes on sending and receiving here;
    /// once the new node has seated it (`Joined`), it sends there only and closes this
    /// connection normally. Its reconnect token is its ticket: it verifies on every node.
    Relocate {
        /// The node to move to, encoded as in `Redirect`.
        address: SocketAddr,
        /// Its TLS server name, as in `Redirect`.
        server_name: String,
    },
    /// `0x91`: unsolicited: the client's address as the relay sees it, i.e. its NAT's mapping
    /// for this connection (a candidate for direct paths). Sent once the connection is bound,
    /// after the reply that bound it, and again whenever the relay sees the client's address
    /// change (a NAT rebinding, a network change).
    /// Also the one reply to `Probe` on the relay's probe port (SPEC section 17.5).
    ObservedAddress {
        /// The client's IP address and UDP port, encoded as in `Redirect`; an IPv4 address
        /// the relay saw as IPv4-mapped IPv6 is sent as IPv4.
        address: SocketAddr,
        /// The UDP port of the relay's probe endpoint, on the IP address this connection
        /// reached the relay at; 0 when the relay runs none, and always 0 in the reply to
        /// `Probe`.
        probe_port: u16,
    },
    /// `0x92`: another member's direct-path offer (SPEC section 17), forwarded by the relay.
    PathOffer {
        /// The member that sent it; the relay vouches for it (the authenticated sender).
        from: PeerId,
        /// Its NAT kind, as it measured it.
        nat: NatKind,
        /// SHA-256 of the certificate it will present on the direct connection: pin it.
        fingerprint: [u8; FINGERPRINT_LEN],
        /// Its candidate addresses, as in `ClientMessage::PathOffer`.
        candidates: Vec<SocketAddr>,
    },
    /// `0x93`: both members of a pair have offered: start punching towards `peer` after
    /// `delay_ms`, so both start together.
    Punch {
        /// The member to punch towards.
        peer: PeerId,
        /// Milliseconds to wait before starting, 0 to 1000.
        delay_ms: u16,
    },
}

impl ServerMessage {
    /// The message type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            ServerMessage::AllocationCreated { .. } => 0x81,
            ServerMessage::Joined { .. } => 0x82,
            ServerMessage::Refused { .. } => 0x83,
            ServerMessage::Done { .. } => 0x84,
            ServerMessage::PeerJoined { .. } => 0x85,
            ServerMessage::PeerLeft { .. } => 0x86,
            ServerMessage::CodeRevoked { .. } => 0x87,
            ServerMessage::DatagramsDropped { .. } => 0x88,
            ServerMessage::HostLost { .. } => 0x89,
            ServerMessage::Promote { .. } => 0x8A,
            ServerMessage::Migrated { .. } => 0x8B,
            ServerMessage::PeerRejoined { .. } => 0x8C,
            ServerMessage::SnapshotStored { .. } => 0x8D,
            ServerMessage::SnapshotRejected { .. } => 0x8E,
            ServerMessage::Redirect { .. } => 0x8F,
            ServerMessage::Relocate { .. } => 0x90,
            ServerMessage::ObservedAddress { .. } => 0x91,
            ServerMessage::PathOffer { .. } => 0x92,
            ServerMessage::Punch { .. } => 0x93,
        }
    }

    /// Length of type byte + body.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            ServerMessage::AllocationCreated { code, .. } => {
                4 + 8 + code_len(code) + 4 + 2 + 2 + 16 + 2
            }
            ServerMessage::Joined { members, .. } => {
                4 + 8 + 2 + 2 + 2 + 16 + 2 + 2 + 2 * members.len()
            }
            ServerMessage::Refused { .. } => 4 + 1 + 4,
            ServerMessage::Done { .. } => 4,
            ServerMessage::PeerJoined { .. } => 2,
            ServerMessage::PeerLeft { .. } => 2 + 1,
            ServerMessage::CodeRevoked { code } => code_len(code),
            ServerMessage::DatagramsDropped { .. } => 1 + 4 + 4,
            ServerMessage::HostLost { .. } => 2 + 1 + 2,
            ServerMessage::Promote { .. } => 8 + 16 + 4,
            ServerMessage::Migrated { .. } => 8 + 2,
            ServerMessage::PeerRejoined { .. } => 2,
            ServerMessage::SnapshotStored { .. } => 4,
            ServerMessage::SnapshotRejected { .. } => 1 + 4,
            ServerMessage::Redirect {
                address,
                server_name,
                ..
            } => 4 + address_len(address) + 2 + server_name.len(),
            ServerMessage::Relocate {
                address,
                server_name,
            } => address_len(address) + 2 + server_name.len(),
            ServerMessage::ObservedAddress { address, .. } => address_len(address) + 2,
            ServerMessage::PathOffer { candidates, .. } => {
                2 + 1 + FINGERPRINT_LEN + candidates_len(candidates)
            }
            ServerMessage::Punch { .. } => 2 + 2,
        }
    }

    /// Writes type byte + body (no length prefix).
    pub fn write_to(&self, buf: &mut impl BufMut) {
        buf.put_u8(self.type_byte());
        match self {
            ServerMessage::AllocationCreated {
                request_id,
                allocation,
                code,
                code_ttl_secs,
                max_peers,
                max_payload,
                reconnect_token,
                host_loss_timeout_ms,
            } => {
                buf.put_u32(*request_id);
                buf.put_u64(allocation.0);
                put_code(buf, code);
                buf.put_u32(*code_ttl_secs);
                buf.put_u16(*max_peers);
                buf.put_u16(*max_payload);
                buf.put_slice(reconnect_token);
                buf.put_u16(*host_loss_timeout_ms);
            }
            ServerMessage::Joined {
                request_id,
                allocation,
                peer,
                max_payload,
                host,
                reconnect_token,
                host_loss_timeout_ms,
                members,
            } => {
                buf.put_u32(*request_id);
                buf.put_u64(allocation.0);
                buf.put_u16(peer.0);
                buf.put_u16(*max_payload);
                buf.put_u16(host.0);
                buf.put_slice(reconnect_token);
                buf.put_u16(*host_loss_timeout_ms);
                buf.put_u16(members.len() as u16);
                for m in members {
                    buf.put_u16(m.0);
                }
            }
            ServerMessage::Refused {
                request_id,
                code,
                value,
            } => {
                buf.put_u32(*request_id);
                buf.put_u8(code.to_u8());
                buf.put_u32(*value);
            }
            ServerMessage::Done { request_id } => buf.put_u32(*request_id),
            ServerMessage::PeerJoined { peer } => buf.put_u16(peer.0),
            ServerMessage::PeerLeft { peer, reason } => {
                buf.put_u16(peer.0);
                buf.put_u8(reason.to_u8());
            }
            ServerMessage::CodeRevoked { code } => put_code(buf, code),
            ServerMessage::DatagramsDropped {
                reason,
                count,
                value,
            } => {
                buf.put_u8(reason.to_u8());
                buf.put_u32(*count);
                buf.put_u32(*value);
            }
            ServerMessage::HostLost {
                host,
                reason,
                elected,
            } => {
                buf.put_u16(host.0);
                buf.put_u8(reason.to_u8());
                buf.put_u16(elected.0);
            }
            ServerMessage::Promote {
                allocation,
                ticket,
                deadline_ms,
            } => {
                buf.put_u64(allocation.0);
                buf.put_slice(ticket);
                buf.put_u32(*deadline_ms);
            }
            ServerMessage::Migrated { allocation, host } => {
                buf.put_u64(allocation.0);
                buf.put_u16(host.0);
            }
            ServerMessage::PeerRejoined { peer } => buf.put_u16(peer.0),
            ServerMessage::SnapshotStored { len } => buf.put_u32(*len),
            ServerMessage::SnapshotRejected { code, value } => {
                buf.put_u8(code.to_u8());
                buf.put_u32(*value);
            }
            ServerMessage::Redirect {
                request_id,
                address,
                server_name,
            } => {
                buf.put_u32(*request_id);
                put_address(buf, address);
                buf.put_u16(server_name.len() as u16);
                buf.put_slice(server_name.as_bytes());
            }
            ServerMessage::Relocate {
                address,
                server_name,
            } => {
                put_address(buf, address);
                buf.put_u16(server_name.len() as u16);
                buf.put_slice(server_name.as_bytes());
            }
            ServerMessage::ObservedAddress {
                address,
                probe_port,
            } => {
                put_address(buf, address);
                buf.put_u16(*probe_port);
            }
            ServerMessage::PathOffer {
                from,
                nat,
                fingerprint,
                candidates,
            } => {
                buf.put_u16(from.0);
                buf.put_u8(nat.to_u8());
                buf.put_slice(fingerprint);
                put_candidates(buf, candidates);
            }
            ServerMessage::Punch { peer, delay_ms } => {
                buf.put_u16(peer.0);
                buf.put_u16(*delay_ms);
            }
        }
    }

    /// Reads the body of a message of type `ty`.
    pub(super) fn read_body(ty: u8, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let msg = match ty {
            0x81 => ServerMessage::AllocationCreated {
                request_id: r.u32()?,
                allocation: AllocationId(r.u64()?),
                code: read_code(r)?,
                code_ttl_secs: r.u32()?,
                max_peers: r.u16()?,
                max_payload: r.u16()?,
                reconnect_token: r.array()?,
                host_loss_timeout_ms: r.u16()?,
            },
            0x82 => {
                let request_id = r.u32()?;
                let allocation = AllocationId(r.u64()?);
                let peer = PeerId(r.u16()?);
                let max_payload = r.u16()?;
                let host = PeerId(r.u16()?);
                let reconnect_token = r.array()?;
                let host_loss_timeout_ms = r.u16()?;
                let count = r.u16()?;
                if count > MAX_PEERS_LIMIT {
                    return Err(DecodeError::InvalidField {
                        field: "members",
                        reason: "more members than an allocation can hold",
                    });
                }
                let count = usize::from(count);
                // Check the bytes are there before allocating for them.
                if r.remaining() < 2 * count {
                    return Err(DecodeError::Truncated {
                        needed: 2 * count - r.remaining(),
                    });
                }
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    members.push(PeerId(r.u16()?));
                }
                ServerMessage::Joined {
                    request_id,
                    allocation,
                    peer,
                    max_payload,
                    host,
                    reconnect_token,
                    host_loss_timeout_ms,
                    members,
                }
            }
            0x83 => ServerMessage::Refused {
                request_id: r.u32()?,
                code: ErrorCode::from_u8(r.u8()?),
                value: r.u32()?,
            },
            0x84 => ServerMessage::Done {
                request_id: r.u32()?,
            },
            0x85 => ServerMessage::PeerJoined {
                peer: PeerId(r.u16()?),
            },
            0x86 => ServerMessage::PeerLeft {
                peer: PeerId(r.u16()?),
                reason: LeaveReason::from_u8(r.u8()?),
            },
            0x87 => ServerMessage::CodeRevoked {
                code: read_code(r)?,
            },
            0x88 => ServerMessage::DatagramsDropped {
                reason: DropReason::from_u8(r.u8()?),
                count: r.u32()?,
                value: r.u32()?,
            },
            0x89 => ServerMessage::HostLost {
                host: PeerId(r.u16()?),
                reason: LeaveReason::from_u8(r.u8()?),
                elected: PeerId(r.u16()?),
            },
            0x8A => ServerMessage::Promote {
                allocation: AllocationId(r.u64()?),
                ticket: r.array()?,
                deadline_ms: r.u32()?,
            },
            0x8B => ServerMessage::Migrated {
                allocation: AllocationId(r.u64()?),
                host: PeerId(r.u16()?),
            },
            0x8C => ServerMessage::PeerRejoined {
                peer: PeerId(r.u16()?),
            },
            0x8D => ServerMessage::SnapshotStored { len: r.u32()? },
            0x8E => ServerMessage::SnapshotRejected {
                code: ErrorCode::from_u8(r.u8()?),
                value: r.u32()?,
            },
            0x8F => ServerMessage::Redirect {
                request_id: r.u32()?,
                address: read_address(r)?,
                server_name: read_server_name(r)?,
            },
            0x90 => ServerMessage::Relocate {
                address: read_address(r)?,
                server_name: read_server_name(r)?,
            },
            0x91 => ServerMessage::ObservedAddress {
                address: read_address(r)?,
                probe_port: r.u16()?,
            },
            0x92 => ServerMessage::PathOffer {
                from: PeerId(r.u16()?),
                nat: read_nat(r)?,
                fingerprint: r.array()?,
                candidates: read_candidates(r)?,
            },
            0x93 => ServerMessage::Punch {
                peer: PeerId(r.u16()?),
                delay_ms: r.u16()?,
            },
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok(msg)
    }
}

/// Reads a server name: `len: u16` (1 to 253), then that many bytes of a DNS name or an IP
/// literal ([`server_name::is_valid`]).
fn read_server_name(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let invalid = |reason| DecodeError::InvalidField {
        field: "server_name",
        reason,
    };
    let len = usize::from(r.u16()?);
    if !(1..=server_name::MAX_LEN).contains(&len) {
        return Err(invalid("length outside 1..=253"));
    }
    let name = std::str::from_utf8(r.bytes(len)?).map_err(|_| invalid("not UTF-8"))?;
    if !server_name::is_valid(name) {
        return Err(invalid("neither a DNS name nor an IP literal"));
    }
    Ok(name.to_owned())
}
