//! The attacks, one family per file, and what they share: the context ([`Ctx`]), the source
//! addresses each attack sends from ([`sources`]), raw QUIC clients that bypass the SDK
//! ([`connect`], [`request`]) and a small deterministic RNG.
//!
//! Every attack sends only to the relay on 127.0.0.0/8, is bounded both in count and by the
//! deadline it is given, and holds its pressure until that deadline. Each attack family sends
//! from its own `127.N.0.0/16`, so that per-address limits one attack trips do not spill into
//! the next one or into the games (which use 127.0.0.1).

pub mod admin;
pub mod control;
pub mod credentials;
pub mod datagrams;
pub mod guessing;
pub mod handshake;
pub mod snapshots;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_protocol::{ClientMessage, ServerMessage};

use crate::games::GameInfo;
use crate::report::Findings;

/// What every attack gets.
#[derive(Clone)]
pub struct Ctx {
    /// The relay's QUIC address.
    pub relay: SocketAddr,
    /// The relay's admin address.
    pub admin: SocketAddr,
    /// The relay's certificate, PEM.
    pub cert_pem: Vec<u8>,
    /// Its fingerprint, hex.
    pub fingerprint: String,
    /// The relay's credential secret (a lobby's).
    pub secret: Vec<u8>,
    /// The games' join codes.
    pub games: Vec<GameInfo>,
    /// Short form (CI) rather than full.
    pub quick: bool,
    /// The runtime attacks run on, at the lowest scheduling priority.
    pub attackers: tokio::runtime::Handle,
}

impl Ctx {
    /// `quick` in the short form, `full` otherwise.
    pub fn scale(&self, quick: usize, full: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// A QUIC client configuration trusting the relay, with Baton's ALPN.
    pub fn quic_config(&self) -> anyhow::Result<quinn::ClientConfig> {
        let crypto = baton_tests::tls::quic_crypto(&self.cert_pem)?;
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(2)));
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }

    /// An SDK configuration for this relay with a credential of scope `any`, sending from
    /// `bind`.
    pub fn sdk_config(
        &self,
        bind: IpAddr,
        subject: &str,
    ) -> anyhow::Result<baton_client::ClientConfig> {
        let trust = baton_client::Trust::fingerprint_hex(&self.fingerprint)?;
        Ok(baton_client::ClientConfig::new(self.relay, trust)
            .bind_addr(SocketAddr::new(bind, 0))
            .credential(crate::games::credential(&self.secret, subject)?))
    }
}

/// One attack: its name in the report, the relay metric families it reports, and the run.
pub struct Attack {
    /// Name in the report (and in `KNOWN_FAILING`).
    pub name: &'static str,
    /// Metric name prefixes whose changes the report shows.
    pub counters: &'static [&'static str],
    /// Runs the attack until the deadline.
    pub run: fn(&Ctx, Instant) -> futures_util::future::BoxFuture<'_, anyhow::Result<Findings>>,
}

/// Every attack, in the order they run.
pub fn all() -> Vec<Attack> {
    let mut attacks = Vec::new();
    attacks.extend(handshake::attacks());
    attacks.extend(guessing::attacks());
    attacks.extend(datagrams::attacks());
    attacks.extend(control::attacks());
    attacks.extend(admin::attacks());
    attacks.extend(credentials::attacks());
    attacks.extend(snapshots::attacks());
    attacks
}

/// `count` source addresses in `127.block.0.0/16`: `127.block.0.1`, `127.block.0.2`, ...,
/// `127.block.0.254`, `127.block.1.1`, ... (Linux routes all of 127/8 to the loopback
/// interface, so each can be bound).
pub fn sources(block: u8, count: usize) -> Vec<IpAddr> {
    (0..count)
        .map(|i| {
            let third = (i / 254) as u8;
            let fourth = (i % 254) as u8 + 1;
            IpAddr::V4(Ipv4Addr::new(127, block, third, fourth))
        })
        .collect()
}

/// A raw QUIC client endpoint bound to `bind` (any port).
pub fn endpoint(ctx: &Ctx, bind: IpAddr) -> anyhow::Result<quinn::Endpoint> {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(bind, 0))
        .with_context(|| format!("binding a QUIC client to {bind}"))?;
    endpoint.set_default_client_config(ctx.quic_config()?);
    Ok(endpoint)
}

/// A completed QUIC handshake with the relay from `endpoint`, within `within`.
pub async fn connect(
    ctx: &Ctx,
    endpoint: &quinn::Endpoint,
    within: Duration,
) -> anyhow::Result<quinn::Connection> {
    let connecting = endpoint.connect(ctx.relay, "localhost")?;
    Ok(tokio::time::timeout(within, connecting)
        .await
        .context("handshake timed out")??)
}

/// Writes `msg` on a raw control stream and reads one reply, within `within`.
pub async fn request(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    msg: &ClientMessage,
    within: Duration,
) -> anyhow::Result<ServerMessage> {
    send.write_all(&msg.to_frame()).await?;
    read_reply(recv, within).await
}

/// Reads one control message from a raw control stream, within `within`.
pub async fn read_reply(
    recv: &mut quinn::RecvStream,
    within: Duration,
) -> anyhow::Result<ServerMessage> {
    tokio::time::timeout(within, async {
        let mut prefix = [0u8; 4];
        recv.read_exact(&mut prefix).await?;
        let len = baton_protocol::frame::check_len(prefix, 1 << 16)
            .map_err(|e| anyhow::anyhow!("reply frame: {e}"))?;
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await?;
        ServerMessage::decode(&body).map_err(|e| anyhow::anyhow!("reply: {e}"))
    })
    .await
    .context("no reply in time")?
}

/// How a reply reads in the report: `joined`, or the refusal's code (`not_found`, ...).
pub fn reply_kind(reply: &ServerMessage) -> String {
    match reply {
        ServerMessage::Refused { code, .. } => code.to_string(),
        ServerMessage::Joined { .. } => "joined".to_owned(),
        other => format!("{other:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or("other")
            .to_owned(),
    }
}

/// A small xorshift generator: random join codes and payloads need no cryptographic quality
/// and no new dependency.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock and `salt`.
    pub fn new(salt: u64) -> Rng {
        let seed = baton_tests::player::now_us() ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Rng(seed | 1)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A random join code of the default length.
    pub fn join_code(&mut self) -> baton_protocol::JoinCode {
        let alphabet = baton_protocol::join_code::ALPHABET;
        let text: String = (0..baton_protocol::join_code::DEFAULT_LEN)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
            .collect();
        baton_protocol::JoinCode::parse(&text).expect("letters of the alphabet make a code")
    }
}

/// Adds `n` to the figure named `name` in `tally` (kept in first-seen order).
pub fn bump(tally: &mut Vec<(String, u64)>, name: &str, n: u64) {
    match tally.iter_mut().find(|(k, _)| k == name) {
        Some((_, v)) => *v += n,
        None => tally.push((name.to_owned(), n)),
    }
}

/// Sleeps until `deadline` (holding whatever the caller holds).
pub async fn hold_until(deadline: Instant) {
    tokio::time::sleep_until(deadline.into()).await;
}
