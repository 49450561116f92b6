//! Control-plane tests with simulated time: every deadline is driven by advancing a fake
//! clock, so the 10 s keepalive, the 10 s bind window, code expiry and the 60 s host bind
//! window are tested in microseconds and deterministically.
//!
//! This file holds the `Harness` and the output filters, and the tests of the entry points;
//! the rest sit in a file per concern, named after the file they test.

use std::net::SocketAddr;

use baton_protocol::{LeaveReason, PeerId};
use bytes::Bytes;

use super::*;

mod access;
mod admin;
mod allocation;
mod drain;
mod fleet;
mod host_loss;
mod membership;
mod migration;
mod observed;
mod paths;
mod ratelimit;
mod record;

const HOST: ConnId = 1;

/// A control plane with a fake clock.
struct Harness {
    cp: ControlPlane,
    now: Instant,
    next_request: u32,
}

impl Harness {
    fn new() -> Self {
        Self::with(RelayConfig::default())
    }

    fn with(config: RelayConfig) -> Self {
        Self::with_secrets(config, 7)
    }

    fn with_secrets(config: RelayConfig, secrets: impl Into<Secrets>) -> Self {
        let now = Instant::now();
        Harness {
            cp: ControlPlane::new(&config, secrets, now),
            now,
            next_request: 1,
        }
    }

    fn addr(conn: ConnId) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, (conn % 250) as u8 + 1], 40000 + conn as u16))
    }

    fn connect(&mut self, conn: ConnId) {
        self.cp.handle(
            self.now,
            Input::Connected {
                conn,
                addr: Self::addr(conn),
            },
        );
        self.check();
    }

    /// Panics unless the control plane's invariants hold: every step checks them.
    fn check(&self) {
        if let Err(violation) = self.cp.check_invariants() {
            panic!("{violation}\n{:?}", self.cp);
        }
    }

    fn request(&mut self, conn: ConnId, msg: ClientMessage) -> Vec<Output> {
        self.cp.handle(
            self.now,
            Input::Request {
                conn,
                msg,
                auth: Authorization::Open,
            },
        );
        self.drain()
    }

    fn rid(&mut self) -> u32 {
        self.next_request += 1;
        self.next_request
    }

    fn drain(&mut self) -> Vec<Output> {
        self.check();
        std::iter::from_fn(|| self.cp.poll_output()).collect()
    }

    /// Advances the fake clock, firing timers the way the driver does.
    fn advance(&mut self, by: Duration) -> Vec<Output> {
        let until = self.now + by;
        let mut out = Vec::new();
        while let Some(at) = self.cp.poll_timeout().filter(|at| *at <= until) {
            self.now = self.now.max(at);
            self.cp.handle_timeout(self.now);
            out.extend(self.drain());
        }
        self.now = until;
        out
    }

    fn disconnect(&mut self, conn: ConnId, reason: LeaveReason) -> Vec<Output> {
        self.cp
            .handle(self.now, Input::Disconnected { conn, reason });
        self.drain()
    }

    /// Host `HOST` creates an allocation; returns its id and code.
    fn create(&mut self) -> (AllocationId, JoinCode) {
        self.create_with(HOST, 0, 0)
    }

    fn create_with(&mut self, conn: ConnId, max_peers: u16, ttl: u32) -> (AllocationId, JoinCode) {
        let (id, code, _) = self.create_with_token(conn, max_peers, ttl);
        (id, code)
    }

    /// `conn` connects and creates an allocation; returns its id, its code and the host's
    /// reconnect token.
    fn create_with_token(
        &mut self,
        conn: ConnId,
        max_peers: u16,
        ttl: u32,
    ) -> (AllocationId, JoinCode, [u8; 16]) {
        self.connect(conn);
        let request_id = self.rid();
        let out = self.request(
            conn,
            ClientMessage::CreateAllocation {
                request_id,
                max_peers,
                code_ttl_secs: ttl,
                host_loss_timeout_ms: 0,
                credential: None,
            },
        );
        replies_to(&out, conn)
            .into_iter()
            .find_map(|m| match m {
                ServerMessage::AllocationCreated {
                    allocation,
                    code,
                    reconnect_token,
                    ..
                } => Some((allocation, code, reconnect_token)),
                _ => None,
            })
            .expect("allocation created")
    }

    /// The elected member on `conn` opens the successor of `old` with `ticket`; returns the
    /// successor's id.
    fn migrate(&mut self, conn: ConnId, old: AllocationId, ticket: [u8; 16]) -> AllocationId {
        let request_id = self.rid();
        let out = self.request(
            conn,
            ClientMessage::MigrateAllocation {
                request_id,
                allocation: old,
                ticket,
            },
        );
        replies_to(&out, conn)
            .into_iter()
            .find_map(|m| match m {
                ServerMessage::AllocationCreated { allocation, .. } => Some(allocation),
                _ => None,
            })
            .expect("migrated")
    }

    /// `conn` connects and joins with `code`; returns the reply.
    /// `conn` sends `Rejoin` for `peer` of `allocation` with `reconnect_token`.
    fn rejoin(
        &mut self,
        conn: ConnId,
        allocation: AllocationId,
        peer: PeerId,
        reconnect_token: [u8; 16],
    ) -> Vec<Output> {
        let request_id = self.rid();
        self.request(
            conn,
            ClientMessage::Rejoin {
                request_id,
                allocation,
                peer,
                reconnect_token,
                credential: None,
            },
        )
    }

    fn join(&mut self, conn: ConnId, code: JoinCode) -> (ServerMessage, Vec<Output>) {
        self.join_from(conn, Self::addr(conn), code)
    }

    /// `conn` connects from `addr` and joins by `code`; returns the reply and every output.
    fn join_from(
        &mut self,
        conn: ConnId,
        addr: SocketAddr,
        code: JoinCode,
    ) -> (ServerMessage, Vec<Output>) {
        self.cp.handle(self.now, Input::Connected { conn, addr });
        let request_id = self.rid();
        let out = self.request(
            conn,
            ClientMessage::Join {
                request_id,
                code,
                credential: None,
            },
        );
        let reply = replies_to(&out, conn)
            .into_iter()
            .find(|m| {
                matches!(m, ServerMessage::Joined { request_id: r, .. } | ServerMessage::Refused { request_id: r, .. } if *r == request_id)
            })
            .expect("join answered");
        (reply, out)
    }

    fn join_ok(&mut self, conn: ConnId, code: JoinCode) -> PeerId {
        match self.join(conn, code).0 {
            ServerMessage::Joined { peer, .. } => peer,
            other => panic!("join refused: {other:?}"),
        }
    }

    /// `conn` connects and joins with `code`; returns its peer id and reconnect token.
    fn join_with_token(&mut self, conn: ConnId, code: JoinCode) -> (PeerId, [u8; 16]) {
        match self.join(conn, code).0 {
            ServerMessage::Joined {
                peer,
                reconnect_token,
                ..
            } => (peer, reconnect_token),
            other => panic!("join refused: {other:?}"),
        }
    }

    /// The host on `host` kicks `peer`; panics unless the kick is done.
    fn kick(&mut self, host: ConnId, peer: PeerId) -> Vec<Output> {
        let request_id = self.rid();
        let out = self.request(host, ClientMessage::Kick { request_id, peer });
        assert!(
            replies_to(&out, host).contains(&ServerMessage::Done { request_id }),
            "kick of {peer} refused: {out:?}"
        );
        out
    }

    /// `conn` (connected, unbound) rejoins as `peer` of `allocation`; returns the allocation
    /// it landed in, or the refusal.
    fn rejoin_result(
        &mut self,
        conn: ConnId,
        allocation: AllocationId,
        peer: PeerId,
        token: [u8; 16],
    ) -> Result<AllocationId, (ErrorCode, u32)> {
        let out = self.rejoin(conn, allocation, peer, token);
        match &replies_to(&out, conn)[..] {
            [ServerMessage::Joined {
                allocation,
                peer: p,
                ..
            }] if *p == peer => Ok(*allocation),
            [ServerMessage::Refused { code, value, .. }] => Err((*code, *value)),
            other => panic!("rejoin of {peer} answered {other:?}"),
        }
    }

    fn refusal(&mut self, conn: ConnId, code: JoinCode) -> (ErrorCode, u32) {
        match self.join(conn, code).0 {
            ServerMessage::Refused { code, value, .. } => (code, value),
            other => panic!("join accepted: {other:?}"),
        }
    }
}

/// The messages sent to `conn` in `out`, but `ObservedAddress` (every bind ends with one;
/// `observed` tests them): what a test of replies and events expects.
fn replies_to(out: &[Output], conn: ConnId) -> Vec<ServerMessage> {
    sent_to(out, conn)
        .into_iter()
        .filter(|m| !matches!(m, ServerMessage::ObservedAddress { .. }))
        .collect()
}

/// Every message sent to `conn` in `out`.
fn sent_to(out: &[Output], conn: ConnId) -> Vec<ServerMessage> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, msg } if *c == conn => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

/// Host `HOST` with peers on connections 2 and 3 (peer ids 1, 2), then the host times out
/// and conn 2 is elected. Returns the allocation, its code, the old host's reconnect token
/// and conn 2's ticket.
fn host_lost_among_three() -> (Harness, AllocationId, JoinCode, [u8; 16], [u8; 16]) {
    let mut h = Harness::new();
    let (old, code, reconnect_token) = h.create_with_token(HOST, 0, 0);
    h.join_ok(2, code);
    h.join_ok(3, code);
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
    let (_, ticket) = promote_of(&out, 2).expect("conn 2 is promoted");
    (h, old, code, reconnect_token, ticket)
}

/// The allocation and ticket of the `Promote` sent to `conn` in `out`, if any.
fn promote_of(out: &[Output], conn: ConnId) -> Option<(AllocationId, [u8; 16])> {
    replies_to(out, conn).into_iter().find_map(|m| match m {
        ServerMessage::Promote {
            allocation, ticket, ..
        } => Some((allocation, ticket)),
        _ => None,
    })
}

/// The code and value of the refusal that is the one reply to `conn` in `out`; panics when
/// `conn` got anything else.
fn refused(out: &[Output], conn: ConnId) -> (ErrorCode, u32) {
    match &replies_to(out, conn)[..] {
        [ServerMessage::Refused { code, value, .. }] => (*code, *value),
        other => panic!("conn {conn} was not refused: {other:?}"),
    }
}

fn closes(out: &[Output]) -> Vec<(ConnId, CloseCode)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Close { conn, code } => Some((*conn, *code)),
            _ => None,
        })
        .collect()
}

/// As [`closes`], in connection order (the order several closes come out in is not part of
/// the contract).
fn closes_by_conn(out: &[Output]) -> Vec<(ConnId, CloseCode)> {
    let mut c = closes(out);
    c.sort_by_key(|(conn, _)| *conn);
    c
}

fn events(out: &[Output]) -> Vec<Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn last_route(out: &[Output]) -> Option<Vec<(PeerId, ConnId)>> {
    out.iter().rev().find_map(|o| match o {
        Output::Route { members, .. } => Some(members.clone()),
        _ => None,
    })
}

#[test]
fn every_refusal_names_its_cause() {
    let mut h = Harness::new();
    let (_, code) = h.create_with(HOST, 2, 0);
    assert_eq!(
        h.refusal(10, JoinCode::parse("BCDFGH").unwrap()).0,
        ErrorCode::NotFound
    );
    h.join_ok(2, code);
    assert_eq!(h.refusal(3, code), (ErrorCode::Full, 2));

    // Revoked by the host.
    let (_, code2) = h.create_with(20, 0, 0);
    let request_id = h.rid();
    let out = h.request(20, ClientMessage::RevokeCode { request_id });
    assert_eq!(
        replies_to(&out, 20),
        vec![ServerMessage::Done { request_id }]
    );
    assert_eq!(h.refusal(21, code2).0, ErrorCode::Revoked);

    // A peer may not revoke or kick; an unbound connection may not either.
    let request_id = h.rid();
    let out = h.request(2, ClientMessage::RevokeCode { request_id });
    assert_eq!(refused(&out, 2).0, ErrorCode::NotHost);
    h.connect(30);
    let request_id = h.rid();
    let out = h.request(
        30,
        ClientMessage::Kick {
            request_id,
            peer: PeerId(1),
        },
    );
    assert_eq!(refused(&out, 30).0, ErrorCode::NotBound);
    // A member cannot create or join again on the same connection.
    let request_id = h.rid();
    let out = h.request(
        2,
        ClientMessage::Join {
            request_id,
            code,
            credential: None,
        },
    );
    assert_eq!(refused(&out, 2).0, ErrorCode::AlreadyBound);
}

#[test]
fn keepalive_default_is_ten_seconds() {
    // The rule itself is enforced as the QUIC idle timeout the driver derives from this value
    // (see `crate::transport_config`); the control plane reports who timed out.
    let h = Harness::new();
    assert_eq!(h.cp.keepalive_timeout(), Duration::from_secs(10));
}

#[test]
fn the_same_seed_replays_the_same_codes() {
    let mut a = Harness::new();
    let mut b = Harness::new();
    assert_eq!(a.create(), b.create());
}

#[test]
fn every_bit_of_both_256_bit_secrets_counts() {
    let base = Secrets {
        hmac_key: [1; 32],
        rng_seed: [2; 32],
    };
    let mut seed_tail = base.clone();
    seed_tail.rng_seed[31] ^= 1;
    let mut key_tail = base.clone();
    key_tail.hmac_key[31] ^= 1;
    let mut a = Harness::with_secrets(RelayConfig::default(), base);
    let mut b = Harness::with_secrets(RelayConfig::default(), seed_tail);
    let mut c = Harness::with_secrets(RelayConfig::default(), key_tail);
    let (id, code) = a.create();

    // Seeds that differ in their last bit draw other ids and codes: no 64-bit prefix decides.
    assert_ne!(b.create(), (id, code));
    // The key is not drawn from the RNG: the same seed with another key draws the same ids
    // and codes but signs other tokens, so seeing ids tells nothing about the key.
    assert_eq!(c.create(), (id, code));
    assert_eq!(a.cp.secret, [1; 32]);
    assert_ne!(
        a.cp.reconnect_token(id, (PeerId(1), 0), None),
        c.cp.reconnect_token(id, (PeerId(1), 0), None)
    );
}

#[test]
fn debug_output_shows_counts_but_never_the_secrets() {
    let key = [0xA7; 32];
    let seed = [0x5C; 32];
    let mut h = Harness::with_secrets(
        RelayConfig::default(),
        Secrets {
            hmac_key: key,
            rng_seed: seed,
        },
    );
    h.create();
    let text = format!("{:?}", h.cp);
    // The derived Debug printed both arrays as decimal bytes: 0xA7 = 167, 0x5C = 92.
    for byte in [key[0], seed[0]] {
        let run = vec![byte.to_string(); 4].join(", ");
        assert!(!text.contains(&run), "secret bytes in {text}");
    }
    assert!(text.contains("allocations: 1"), "{text}");
}

/// With the default 24 h code TTL: allocations that close, migrate or are reserved and
/// closed, and connections that bind and leave or never bind, leave no deadline behind once
/// their tombstones are forgotten (an hour, not a day).
#[test]
fn churn_leaves_no_timers_behind_with_the_default_code_ttl() {
    let mut h = Harness::new();
    assert_eq!(h.cp.code_ttl, defaults::JOIN_CODE_TTL);
    let baseline = h.cp.pending_timers();
    for round in 0..50u64 {
        let (host, peer, idle) = (1000 + round, 5000 + round, 9000 + round);
        // An allocation whose host leaves: its one peer takes over, then leaves too.
        let (old, code) = h.create_with(host, 0, 0);
        h.join_ok(peer, code);
        let out = h.disconnect(host, LeaveReason::Closed);
        let (_, ticket) = promote_of(&out, peer).expect("the peer is promoted");
        h.migrate(peer, old, ticket);
        h.disconnect(peer, LeaveReason::Closed);
        // A connection that never binds.
        h.connect(idle);
        h.disconnect(idle, LeaveReason::Closed);
        // A reservation an operator closes before its host claims it.
        h.cp.reserve_allocation(h.now, None).expect("reserved");
        let reserved = h
            .drain()
            .into_iter()
            .find_map(|o| match o {
                Output::Event(Event::AllocationCreated { allocation, .. }) => Some(allocation),
                _ => None,
            })
            .expect("reservation created");
        h.cp.close_by_admin(h.now, reserved).expect("closed");
        h.drain();
        h.advance(Duration::from_secs(1));
    }
    assert_eq!(h.cp.allocation_count(), 0);
    assert_eq!(h.cp.connection_count(), 0);
    h.advance(defaults::CODE_TOMBSTONE_TTL + Duration::from_secs(120));
    assert!(h.cp.codes.is_empty(), "tombstones are forgotten");
    assert_eq!(
        h.cp.pending_timers(),
        baseline,
        "only the periodic sweep remains"
    );
}

#[test]
fn stale_timers_do_not_accumulate_state() {
    let mut h = Harness::new();
    for round in 0..100u64 {
        let (_, code) = h.create_with(1000 + round, 0, 5);
        h.join_ok(5000 + round, code);
        h.disconnect(1000 + round, LeaveReason::Closed);
        h.advance(Duration::from_secs(1));
    }
    h.advance(defaults::CODE_TOMBSTONE_TTL + Duration::from_secs(120));
    assert_eq!(h.cp.allocation_count(), 0);
    assert_eq!(h.cp.connection_count(), 0);
    assert!(h.cp.codes.is_empty(), "tombstones are forgotten");
    assert!(h.cp.join_buckets.is_empty(), "rate-limit buckets are swept");
    assert!(h.cp.timers.len() <= 1, "only the periodic sweep remains");
}
