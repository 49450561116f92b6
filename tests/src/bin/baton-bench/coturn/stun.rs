//! The STUN and TURN messages the bench's TURN clients exchange with coturn: requests
//! (Binding, Allocate, Refresh, CreatePermission, ChannelBind; RFC 8489 and RFC 8656, no
//! authentication) encoded and responses decoded with `stun_codec`, and the 4-byte
//! ChannelData framing of the data plane (RFC 8656 §12.4), written here: it is two big-endian
//! `u16`s, and the hot path wants it in place in the send buffer.

use std::net::SocketAddr;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{
    ErrorCode, Fingerprint, MessageIntegrity, Software, XorMappedAddress,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};

stun_codec::define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        XorMappedAddress,
        ErrorCode,
        Software,
        MessageIntegrity,
        Fingerprint,
        XorRelayAddress,
        XorPeerAddress,
        ChannelNumber,
        Lifetime,
        RequestedTransport
    ]
);

/// Bytes of the ChannelData header: channel number, data length.
pub const CHANNEL_HEADER_LEN: usize = 4;

/// The first channel number a client may bind (RFC 8656 §12: 0x4000 to 0x4FFF).
pub const FIRST_CHANNEL: u16 = ChannelNumber::MIN;

/// The last channel number a client may bind.
pub const LAST_CHANNEL: u16 = ChannelNumber::MAX;

/// REQUESTED-TRANSPORT's protocol number for UDP.
const UDP: u8 = 17;

/// Bytes of a STUN header; its first two bits are zero, which tells it from ChannelData.
const STUN_HEADER_LEN: usize = 20;

/// A STUN message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum StunError {
    /// An attribute's value is out of its range (e.g. a channel number outside 0x4000-0x4FFF).
    #[error("cannot encode {what}: {detail}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The codec's message.
        detail: String,
    },
    /// The bytes are not a well-formed STUN message.
    #[error("not a well-formed STUN message: {0}")]
    Decode(String),
}

/// A request a TURN client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Binding (RFC 8489): the server's liveness probe.
    Binding,
    /// Allocate a UDP relayed address for `lifetime_s` seconds.
    Allocate {
        /// Requested lifetime, seconds (the server caps it).
        lifetime_s: u32,
    },
    /// Refresh the allocation for `lifetime_s` seconds (0 deletes it).
    Refresh {
        /// Requested lifetime, seconds.
        lifetime_s: u32,
    },
    /// Install permissions for the IP addresses of `peers`.
    CreatePermission {
        /// The peers (their ports do not matter to a permission).
        peers: Vec<SocketAddr>,
    },
    /// Bind `channel` to `peer` (also installs or refreshes the peer's permission).
    ChannelBind {
        /// Channel number, [`FIRST_CHANNEL`] to [`LAST_CHANNEL`].
        channel: u16,
        /// The peer's transport address.
        peer: SocketAddr,
    },
}

impl Request {
    /// The request's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Binding => "Binding",
            Request::Allocate { .. } => "Allocate",
            Request::Refresh { .. } => "Refresh",
            Request::CreatePermission { .. } => "CreatePermission",
            Request::ChannelBind { .. } => "ChannelBind",
        }
    }

    /// The request as bytes, with transaction id `id`.
    pub fn encode(&self, id: [u8; 12]) -> Result<Vec<u8>, StunError> {
        let what = self.name();
        let bad = |e: bytecodec::Error| StunError::Encode {
            what,
            detail: e.to_string(),
        };
        let method = match self {
            Request::Binding => BINDING,
            Request::Allocate { .. } => ALLOCATE,
            Request::Refresh { .. } => REFRESH,
            Request::CreatePermission { .. } => CREATE_PERMISSION,
            Request::ChannelBind { .. } => CHANNEL_BIND,
        };
        let mut m =
            Message::<Attribute>::new(MessageClass::Request, method, TransactionId::new(id));
        match self {
            Request::Binding => {}
            Request::Allocate { lifetime_s } => {
                m.add_attribute(RequestedTransport::new(UDP));
                m.add_attribute(Lifetime::from_u32(*lifetime_s));
            }
            Request::Refresh { lifetime_s } => m.add_attribute(Lifetime::from_u32(*lifetime_s)),
            Request::CreatePermission { peers } => {
                for peer in peers {
                    m.add_attribute(XorPeerAddress::new(*peer));
                }
            }
            Request::ChannelBind { channel, peer } => {
                m.add_attribute(ChannelNumber::new(*channel).map_err(bad)?);
                m.add_attribute(XorPeerAddress::new(*peer));
            }
        }
        MessageEncoder::new().encode_into_bytes(m).map_err(bad)
    }
}

/// What a response said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The transaction it answers.
    pub id: [u8; 12],
    /// The method's number (e.g. 0x003 for Allocate).
    pub method: u16,
    /// `None` for a success response; the ERROR-CODE's code and reason for an error response
    /// (0 and an empty reason if it carried none).
    pub error: Option<(u16, String)>,
    /// XOR-RELAYED-ADDRESS (Allocate).
    pub relayed: Option<SocketAddr>,
    /// XOR-MAPPED-ADDRESS.
    pub mapped: Option<SocketAddr>,
    /// LIFETIME, seconds.
    pub lifetime_s: Option<u32>,
}

impl Reply {
    /// Decodes a success or error response. Requests and indications are errors, and so is a
    /// message whose FINGERPRINT does not match.
    pub fn decode(bytes: &[u8]) -> Result<Reply, StunError> {
        let m = MessageDecoder::<Attribute>::new()
            .decode_from_bytes(bytes)
            .map_err(|e| StunError::Decode(e.to_string()))?
            .map_err(|broken| StunError::Decode(broken.error().to_string()))?;
        let error = match m.class() {
            MessageClass::SuccessResponse => None,
            MessageClass::ErrorResponse => Some(
                m.get_attribute::<ErrorCode>()
                    .map_or((0, String::new()), |e| {
                        (e.code(), e.reason_phrase().to_owned())
                    }),
            ),
            class => return Err(StunError::Decode(format!("a {class}, not a response"))),
        };
        Ok(Reply {
            id: *m.transaction_id().as_bytes(),
            method: m.method().as_u16(),
            error,
            relayed: m.get_attribute::<XorRelayAddress>().map(|a| a.address()),
            mapped: m.get_attribute::<XorMappedAddress>().map(|a| a.address()),
            lifetime_s: m
                .get_attribute::<Lifetime>()
                .map(|l| l.lifetime().as_secs().min(u64::from(u32::MAX)) as u32),
        })
    }
}

/// Whether `bytes` look like a STUN message (first two bits zero, room for the header) rather
/// than ChannelData (first two bits 01).
pub fn is_stun(bytes: &[u8]) -> bool {
    bytes.len() >= STUN_HEADER_LEN && bytes[0] & 0xC0 == 0
}

/// Writes the ChannelData header for `len` bytes of data on `channel` into `out[..4]`.
/// Returns `false` (writing nothing) if `out` is shorter than the header or `len` does not fit
/// in 16 bits.
pub fn write_channel_header(out: &mut [u8], channel: u16, len: usize) -> bool {
    let (Some(head), Ok(len)) = (out.get_mut(..CHANNEL_HEADER_LEN), u16::try_from(len)) else {
        return false;
    };
    head[..2].copy_from_slice(&channel.to_be_bytes());
    head[2..].copy_from_slice(&len.to_be_bytes());
    true
}

/// Splits a ChannelData message into its channel number and data (without any padding).
/// `None` if it is not ChannelData (first two bits not 01) or shorter than its length says.
pub fn split_channel_data(bytes: &[u8]) -> Option<(u16, &[u8])> {
    let [c0, c1, l0, l1, ref rest @ ..] = *bytes else {
        return None;
    };
    if c0 & 0xC0 != 0x40 {
        return None;
    }
    let data = rest.get(..usize::from(u16::from_be_bytes([l0, l1])))?;
    Some((u16::from_be_bytes([c0, c1]), data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 §2.2: sample IPv4 response (SOFTWARE, XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY,
    /// FINGERPRINT).
    const RFC5769_IPV4_RESPONSE: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 §2.3: sample IPv6 response.
    const RFC5769_IPV6_RESPONSE: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    /// The transaction id of RFC 5769's samples.
    const RFC5769_ID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    #[test]
    fn decodes_rfc5769_ipv4_response() {
        assert!(is_stun(&RFC5769_IPV4_RESPONSE));
        let r = Reply::decode(&RFC5769_IPV4_RESPONSE).unwrap();
        assert_eq!(r.id, RFC5769_ID);
        assert_eq!(r.method, 0x001);
        assert_eq!(r.error, None);
        assert_eq!(r.mapped, Some("192.0.2.1:32853".parse().unwrap()));
        assert_eq!(r.relayed, None);
    }

    #[test]
    fn decodes_rfc5769_ipv6_response() {
        let r = Reply::decode(&RFC5769_IPV6_RESPONSE).unwrap();
        assert_eq!(r.id, RFC5769_ID);
        assert_eq!(
            r.mapped,
            Some(
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                    .parse()
                    .unwrap()
            )
        );
    }

    #[test]
    fn rejects_a_wrong_fingerprint_and_garbage() {
        let mut bad = RFC5769_IPV4_RESPONSE;
        bad[79] ^= 1;
        assert!(Reply::decode(&bad).is_err());
        assert!(Reply::decode(&RFC5769_IPV4_RESPONSE[..30]).is_err());
        assert!(Reply::decode(&[0x40, 0x00, 0x00, 0x00]).is_err());
        // A request is not a reply.
        let request = Request::Binding.encode([1; 12]).unwrap();
        assert!(Reply::decode(&request).is_err());
    }

    #[test]
    fn encodes_an_allocate_request() {
        let bytes = Request::Allocate { lifetime_s: 600 }
            .encode([7; 12])
            .unwrap();
        let mut expected = vec![
            0x00, 0x03, 0x00, 0x10, // Allocate request, 16 bytes of attributes
            0x21, 0x12, 0xa4, 0x42, // magic cookie
        ];
        expected.extend_from_slice(&[7; 12]);
        // REQUESTED-TRANSPORT: UDP (17) and three reserved bytes.
        expected.extend_from_slice(&[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]);
        // LIFETIME: 600 s.
        expected.extend_from_slice(&[0x00, 0x0d, 0x00, 0x04, 0, 0, 0x02, 0x58]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn encodes_a_channel_bind_request() {
        let peer: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let bytes = Request::ChannelBind {
            channel: 0x4001,
            peer,
        }
        .encode(RFC5769_ID)
        .unwrap();
        assert_eq!(&bytes[..4], &[0x00, 0x09, 0x00, 0x14]);
        // CHANNEL-NUMBER 0x4001 and RFFU.
        assert_eq!(&bytes[20..28], &[0x00, 0x0c, 0x00, 0x04, 0x40, 0x01, 0, 0]);
        // XOR-PEER-ADDRESS: the same XOR encoding as RFC 5769's XOR-MAPPED-ADDRESS.
        assert_eq!(
            &bytes[28..40],
            &[0x00, 0x12, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
        // Outside RFC 8656's channel range.
        let low = Request::ChannelBind {
            channel: 0x3FFF,
            peer,
        };
        assert!(matches!(low.encode([0; 12]), Err(StunError::Encode { .. })));
    }

    #[test]
    fn create_permission_carries_every_peer() {
        let peers: Vec<SocketAddr> = vec![
            "127.0.0.1:4000".parse().unwrap(),
            "127.0.0.1:4001".parse().unwrap(),
        ];
        let bytes = Request::CreatePermission {
            peers: peers.clone(),
        }
        .encode([3; 12])
        .unwrap();
        assert_eq!(&bytes[..4], &[0x00, 0x08, 0x00, 0x18]);
        assert_eq!(bytes.len(), 20 + 2 * 12);
    }

    #[test]
    fn decodes_an_allocate_success_and_an_error() {
        // Built with the codec the way coturn answers: XOR-RELAYED-ADDRESS, LIFETIME,
        // XOR-MAPPED-ADDRESS.
        let relayed: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let mapped: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut m = Message::<Attribute>::new(
            MessageClass::SuccessResponse,
            ALLOCATE,
            TransactionId::new([9; 12]),
        );
        m.add_attribute(XorRelayAddress::new(relayed));
        m.add_attribute(Lifetime::from_u32(600));
        m.add_attribute(XorMappedAddress::new(mapped));
        let bytes = MessageEncoder::new().encode_into_bytes(m).unwrap();
        let r = Reply::decode(&bytes).unwrap();
        assert_eq!(
            r,
            Reply {
                id: [9; 12],
                method: 0x003,
                error: None,
                relayed: Some(relayed),
                mapped: Some(mapped),
                lifetime_s: Some(600),
            }
        );

        let mut m = Message::<Attribute>::new(
            MessageClass::ErrorResponse,
            ALLOCATE,
            TransactionId::new([9; 12]),
        );
        m.add_attribute(ErrorCode::new(486, "Allocation Quota Reached".to_owned()).unwrap());
        let bytes = MessageEncoder::new().encode_into_bytes(m).unwrap();
        let r = Reply::decode(&bytes).unwrap();
        assert_eq!(r.error, Some((486, "Allocation Quota Reached".to_owned())));
    }

    #[test]
    fn channel_data_round_trip() {
        let mut buf = [0u8; 4 + 6 + 2];
        buf[4..10].copy_from_slice(b"abcdef");
        assert!(write_channel_header(&mut buf, 0x4001, 6));
        assert_eq!(&buf[..4], &[0x40, 0x01, 0x00, 0x06]);
        // The two bytes after the data are padding, not data.
        assert_eq!(split_channel_data(&buf), Some((0x4001, &b"abcdef"[..])));
        assert!(!is_stun(&buf));
        // Shorter than its length says; not ChannelData at all; too short for a header.
        assert_eq!(split_channel_data(&buf[..8]), None);
        assert_eq!(split_channel_data(&RFC5769_IPV4_RESPONSE), None);
        assert_eq!(split_channel_data(&[0x40, 0x01, 0x00]), None);
        // Empty data is allowed.
        assert_eq!(
            split_channel_data(&[0x4F, 0xFF, 0, 0]),
            Some((0x4FFF, &[][..]))
        );
        // The header does not fit, or the length does not fit in 16 bits.
        assert!(!write_channel_header(&mut [0u8; 3], 0x4000, 0));
        assert!(!write_channel_header(&mut buf, 0x4000, 70_000));
    }
}
