//! [`ClientMessage`]: what a client sends to the relay on its control stream, with its codec.

use std::net::SocketAddr;

use bytes::BufMut;

use crate::join_code::JoinCode;
use crate::path::{NatKind, PathOutcome, PathReason, FINGERPRINT_LEN};
use crate::wire::Reader;
use crate::{AllocationId, DecodeError, PeerId};

use super::{
    candidates_len, code_len, credential_len, put_candidates, put_code, put_credential,
    read_candidates, read_code, read_credential, read_nat,
};

/// Messages a client sends to the relay on its control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientMessage {
    /// `0x01`: open an allocation with the sender as host (peer id 0).
    CreateAllocation {
        /// Echoed in the reply.
        request_id: u32,
        /// Maximum members including the host; 0 asks for the relay's default.
        max_peers: u16,
        /// Join code time to live in seconds; 0 asks for the relay's default.
        code_ttl_secs: u32,
        /// How long the relay waits without hearing from the host before it treats the host as
        /// lost and migrates, in milliseconds; 0 asks for the relay's default. The relay clamps
        /// it into its bounds and reports the effective value in `AllocationCreated`.
        host_loss_timeout_ms: u16,
        /// The lobby-minted credential (SPEC section 16); `None` on an open relay.
        credential: Option<String>,
    },
    /// `0x02`: join the allocation a join code names.
    Join {
        /// Echoed in the reply.
        request_id: u32,
        /// The code the host shared.
        code: JoinCode,
        /// The lobby-minted credential (SPEC section 16); `None` on an open relay.
        credential: Option<String>,
    },
    /// `0x03`: (host only) remove a peer from the allocation.
    Kick {
        /// Echoed in the reply.
        request_id: u32,
        /// The peer to remove.
        peer: PeerId,
    },
    /// `0x04`: (host only) revoke the allocation's join code; later joins get `revoked`.
    RevokeCode {
        /// Echoed in the reply.
        request_id: u32,
    },
    /// `0x05`: become the host of an allocation a lobby reserved through the relay's admin API,
    /// proving it with the reservation's host token. Replied to with `AllocationCreated`.
    ClaimHost {
        /// Echoed in the reply.
        request_id: u32,
        /// The reserved allocation.
        allocation: AllocationId,
        /// The 16-byte secret the admin API returned with the reservation.
        host_token: [u8; 16],
    },
    /// `0x06`: (the elected peer, after `Promote`) open the successor of a migrating
    /// allocation as its new host. Replied to with `AllocationCreated` for the new allocation.
    MigrateAllocation {
        /// Echoed in the reply.
        request_id: u32,
        /// The allocation being migrated (the one named in `Promote`).
        allocation: AllocationId,
        /// The ticket from `Promote`.
        ticket: [u8; 16],
    },
    /// `0x07`: rejoin an allocation (or its successor after a migration) under a peer id held
    /// before, proving it with the reconnect token issued with that id. Replied to with
    /// `Joined`.
    Rejoin {
        /// Echoed in the reply.
        request_id: u32,
        /// The allocation last known to the client; the relay follows migrations from it.
        allocation: AllocationId,
        /// The peer id to take back.
        peer: PeerId,
        /// The reconnect token from `AllocationCreated` or `Joined`.
        reconnect_token: [u8; 16],
        /// The lobby-minted credential (SPEC section 16); `None` on an open relay.
        credential: Option<String>,
    },
    /// `0x08`: offer a direct path to `peer` (SPEC section 17): the relay forwards it as
    /// `ServerMessage::PathOffer` and replies `Done`. Only between the host and another
    /// member.
    PathOffer {
        /// Echoed in the reply.
        request_id: u32,
        /// The member to send the offer to.
        peer: PeerId,
        /// The sender's NAT kind, as it measured it.
        nat: NatKind,
        /// SHA-256 of the self-signed certificate the sender presents on the direct
        /// connection.
        fingerprint: [u8; FINGERPRINT_LEN],
        /// Addresses the sender can be reached at: 1 to
        /// [`MAX_PATH_CANDIDATES`](crate::path::MAX_PATH_CANDIDATES), each unicast with a
        /// port other than 0.
        candidates: Vec<SocketAddr>,
    },
    /// `0x09`: report which path the sender uses to `peer` and why (counted in the relay's
    /// metrics). Replied to with `Done`.
    PathReport {
        /// Echoed in the reply.
        request_id: u32,
        /// The member the path leads to.
        peer: PeerId,
        /// The path in use.
        outcome: PathOutcome,
        /// Why; [`PathReason::Direct`] goes with [`PathOutcome::Direct`] only.
        reason: PathReason,
    },
    /// `0x0A`: (on a relay's probe port only, SPEC section 17.5) ask for the address the
    /// relay sees for this connection; answered with one `ObservedAddress`, then the
    /// connection ends. Empty body: no request id (the relay echoes none). On the main port
    /// it is refused `invalid_request` with request id 0.
    Probe,
}

impl ClientMessage {
    /// The message type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            ClientMessage::CreateAllocation { .. } => 0x01,
            ClientMessage::Join { .. } => 0x02,
            ClientMessage::Kick { .. } => 0x03,
            ClientMessage::RevokeCode { .. } => 0x04,
            ClientMessage::ClaimHost { .. } => 0x05,
            ClientMessage::MigrateAllocation { .. } => 0x06,
            ClientMessage::Rejoin { .. } => 0x07,
            ClientMessage::PathOffer { .. } => 0x08,
            ClientMessage::PathReport { .. } => 0x09,
            ClientMessage::Probe => 0x0A,
        }
    }

    /// The request id the message carries; 0 for `Probe`, which carries none.
    pub fn request_id(&self) -> u32 {
        match self {
            ClientMessage::CreateAllocation { request_id, .. }
            | ClientMessage::Join { request_id, .. }
            | ClientMessage::Kick { request_id, .. }
            | ClientMessage::RevokeCode { request_id }
            | ClientMessage::ClaimHost { request_id, .. }
            | ClientMessage::MigrateAllocation { request_id, .. }
            | ClientMessage::Rejoin { request_id, .. }
            | ClientMessage::PathOffer { request_id, .. }
            | ClientMessage::PathReport { request_id, .. } => *request_id,
            ClientMessage::Probe => 0,
        }
    }

    /// Length of type byte + body.
    pub fn encoded_len(&self) -> usize {
        if matches!(self, ClientMessage::Probe) {
            return 1;
        }
        1 + match self {
            ClientMessage::CreateAllocation { credential, .. } => {
                4 + 2 + 4 + 2 + credential_len(credential)
            }
            ClientMessage::Join {
                code, credential, ..
            } => 4 + code_len(code) + credential_len(credential),
            ClientMessage::Kick { .. } => 4 + 2,
            ClientMessage::RevokeCode { .. } => 4,
            ClientMessage::ClaimHost { .. } => 4 + 8 + 16,
            ClientMessage::MigrateAllocation { .. } => 4 + 8 + 16,
            ClientMessage::Rejoin { credential, .. } => 4 + 8 + 2 + 16 + credential_len(credential),
            ClientMessage::PathOffer { candidates, .. } => {
                4 + 2 + 1 + FINGERPRINT_LEN + candidates_len(candidates)
            }
            ClientMessage::PathReport { .. } => 4 + 2 + 1 + 1,
            ClientMessage::Probe => 0,
        }
    }

    /// Writes type byte + body (no length prefix).
    pub fn write_to(&self, buf: &mut impl BufMut) {
        buf.put_u8(self.type_byte());
        if matches!(self, ClientMessage::Probe) {
            return;
        }
        buf.put_u32(self.request_id());
        match self {
            ClientMessage::CreateAllocation {
                max_peers,
                code_ttl_secs,
                host_loss_timeout_ms,
                credential,
                ..
            } => {
                buf.put_u16(*max_peers);
                buf.put_u32(*code_ttl_secs);
                buf.put_u16(*host_loss_timeout_ms);
                put_credential(buf, credential);
            }
            ClientMessage::Join {
                code, credential, ..
            } => {
                put_code(buf, code);
                put_credential(buf, credential);
            }
            ClientMessage::Kick { peer, .. } => buf.put_u16(peer.0),
            ClientMessage::RevokeCode { .. } => {}
            ClientMessage::ClaimHost {
                allocation,
                host_token,
                ..
            } => {
                buf.put_u64(allocation.0);
                buf.put_slice(host_token);
            }
            ClientMessage::MigrateAllocation {
                allocation, ticket, ..
            } => {
                buf.put_u64(allocation.0);
                buf.put_slice(ticket);
            }
            ClientMessage::Rejoin {
                allocation,
                peer,
                reconnect_token,
                credential,
                ..
            } => {
                buf.put_u64(allocation.0);
                buf.put_u16(peer.0);
                buf.put_slice(reconnect_token);
                put_credential(buf, credential);
            }
            ClientMessage::PathOffer {
                peer,
                nat,
                fingerprint,
                candidates,
                ..
            } => {
                buf.put_u16(peer.0);
                buf.put_u8(nat.to_u8());
                buf.put_slice(fingerprint);
                put_candidates(buf, candidates);
            }
            ClientMessage::PathReport {
                peer,
                outcome,
                reason,
                ..
            } => {
                buf.put_u16(peer.0);
                buf.put_u8(outcome.to_u8());
                buf.put_u8(reason.to_u8());
            }
            ClientMessage::Probe => {}
        }
    }

    /// Reads the body of a message of type `ty`.
    pub(super) fn read_body(ty: u8, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if ty == 0x0A {
            return Ok(ClientMessage::Probe);
        }
        if !(0x01..=0x09).contains(&ty) {
            return Err(DecodeError::UnknownType(ty));
        }
        let request_id = r.u32()?;
        let msg = match ty {
            0x01 => ClientMessage::CreateAllocation {
                request_id,
                max_peers: r.u16()?,
                code_ttl_secs: r.u32()?,
                host_loss_timeout_ms: r.u16()?,
                credential: read_credential(r)?,
            },
            0x02 => ClientMessage::Join {
                request_id,
                code: read_code(r)?,
                credential: read_credential(r)?,
            },
            0x03 => ClientMessage::Kick {
                request_id,
                peer: PeerId(r.u16()?),
            },
            0x04 => ClientMessage::RevokeCode { request_id },
            0x05 => ClientMessage::ClaimHost {
                request_id,
                allocation: AllocationId(r.u64()?),
                host_token: r.array()?,
            },
            0x06 => ClientMessage::MigrateAllocation {
                request_id,
                allocation: AllocationId(r.u64()?),
                ticket: r.array()?,
            },
            0x07 => ClientMessage::Rejoin {
                request_id,
                allocation: AllocationId(r.u64()?),
                peer: PeerId(r.u16()?),
                reconnect_token: r.array()?,
                credential: read_credential(r)?,
            },
            0x08 => ClientMessage::PathOffer {
                request_id,
                peer: PeerId(r.u16()?),
                nat: read_nat(r)?,
                fingerprint: r.array()?,
                candidates: read_candidates(r)?,
            },
            _ => ClientMessage::PathReport {
                request_id,
                peer: PeerId(r.u16()?),
                outcome: PathOutcome::from_u8(r.u8()?).ok_or(DecodeError::InvalidField {
                    field: "outcome",
                    reason: "not a defined path outcome",
                })?,
                reason: PathReason::from_u8(r.u8()?).ok_or(DecodeError::InvalidField {
                    field: "reason",
                    reason: "not a defined path reason",
                })?,
            },
        };
        Ok(msg)
    }
}
