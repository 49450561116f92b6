//! # Baton client SDK
//!
//! Connects a game to a Baton relay: a [`Host`] creates an allocation and shares its join
//! code; [`Peer`]s join with the code; everyone exchanges unreliable datagrams through the
//! relay, addressed by small stable [`PeerId`]s (the host is always [`PeerId::HOST`]).
//!
//! Each [`Host`] or [`Peer`] is one QUIC connection (TLS 1.3, ALPN [`baton_protocol::ALPN`])
//! and dereferences to a [`Session`]:
//! - [`Session::send_to`] / [`Session::broadcast`] / [`Session::recv`] carry datagrams of at
//!   most [`Session::max_payload`] bytes;
//! - [`Session::next_event`] reports joins, leaves, drops and, last, why the connection ended
//!   ([`Event::Disconnected`]) — the SDK keeps the connection alive by itself, so a session that
//!   ends always says why;
//! - [`Session::members`] is the current member set.
//!
//! A relay of a fleet that does not hold the allocation a join or rejoin names redirects it to
//! the relay that does; the SDK follows one such redirect by itself, with the same trust and
//! settings ([`Error::RedirectLoop`] for more). When the relay a session is on is lost, a
//! session configured with [`ClientConfig::fallback_relays`] resumes through another relay of
//! the fleet by itself, under the same peer id and role ([`Event::Resumed`]). When its relay
//! drains, a session moves to the node its allocation went to by itself, without interrupting
//! the game ([`Event::Relocated`]).
//!
//! With [`ClientConfig::direct`] set to [`DirectPolicy::Prefer`] the host and each peer also try
//! a **direct path**: a QUIC connection between the two, through their NATs by UDP hole
//! punching, introduced by the relay. Datagrams between them take it while it works
//! ([`Session::path`], [`Event::PathChanged`]) and fall back to the relay by themselves when it
//! fails. A direct path tells each of the two players the other's IP addresses, so the default
//! is [`DirectPolicy::Never`]; a relay can forbid direct paths for everyone
//! (`--allow-direct false`).
//!
//! The relay is trusted by pinning its certificate's SHA-256 fingerprint
//! ([`Trust::Fingerprint`], for the relay's self-signed development certificate), by a PEM
//! certificate file, or by the web PKI ([`Trust`]).
//!
//! ## Example
//! ```no_run
//! use baton_client::{AllocationOptions, ClientConfig, Event, Host, Peer, Trust};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // The fingerprint the relay printed when it started.
//!     let trust = Trust::fingerprint_hex(
//!         "3f:a1:07:9c:5e:22:d1:8b:40:6a:f3:91:0c:b7:58:e2:\
//!          14:9d:6b:a0:c3:2f:87:5d:e9:01:7a:b4:36:c8:f0:5b",
//!     )?;
//!     let config = ClientConfig::new("127.0.0.1:7700".parse()?, trust);
//!
//!     // The host creates an allocation and shares its join code (through a lobby, a chat...).
//!     let host = Host::create(&config, AllocationOptions::default().max_peers(8)).await?;
//!     println!("join code: {}", host.join_code());
//!
//!     // A player joins with the code.
//!     let peer = Peer::join(&config, host.join_code()).await?;
//!     println!("joined as peer {}", peer.local_peer());
//!
//!     // Datagrams are addressed by peer id; the relay stamps the sender's id on delivery.
//!     peer.send_to_host(b"hello")?;
//!     let (from, payload) = host.recv().await?;
//!     println!("host got {payload:?} from peer {from}");
//!     host.send_to(from, b"welcome")?;
//!     let (_, reply) = peer.recv().await?;
//!     assert_eq!(&reply[..], b"welcome");
//!
//!     // Membership changes arrive as events.
//!     if let Some(Event::PeerJoined { peer: id }) = host.next_event().await {
//!         println!("peer {id} joined; members now {:?}", host.members());
//!     }
//!
//!     peer.close().await;
//!     host.close().await;
//!     Ok(())
//! }
//! ```
//!
//! ## Errors
//! Every failure is a typed [`Error`]: a relay that cannot be reached or trusted, each reason
//! the relay can refuse a request for, a payload over the limit, or a session that ended
//! ([`Error::Disconnected`] with a [`DisconnectReason`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod config;
pub mod defaults;
mod direct;
mod error;
mod event;
mod host;
mod netsim;
mod path;
mod peer;
mod session;
mod snapshot;
mod tls;

pub use config::{AllocationOptions, ClientConfig, Trust};
pub use error::{DisconnectReason, Error};
pub use event::Event;
pub use host::Host;
pub use netsim::{
    LinkConditions, LinkStats, NetworkSimulator, NetworkSimulatorStats, DEFAULT_QUEUE_LIMIT,
    MAX_SIMULATED_DELAY,
};
pub use path::{DirectPolicy, Path};
pub use peer::{IntoJoinCode, Peer, ReconnectToken};
pub use session::{PathStats, Session};
pub use tls::{fingerprint, format_fingerprint, parse_fingerprint};

/// Why the relay refused a credential ([`Error::CredentialRefused`]).
pub use baton_protocol::credential::CredentialRefusal;
/// How a NAT maps a UDP socket ([`Session::nat`]).
pub use baton_protocol::path::NatKind;
pub use baton_protocol::{
    AllocationId, DropReason, ErrorCode, JoinCode, JoinCodeError, LeaveReason, PeerId,
};
/// A DER-encoded X.509 certificate, for [`Trust::Certificates`].
pub use rustls::pki_types::CertificateDer;
