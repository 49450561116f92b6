//! Control-plane tests with simulated time: every deadline is driven by advancing a fake
//! clock, so the 10 s keepalive, the 10 s bind window, code expiry and the 60 s host bind
//! window are tested in microseconds and deterministically.

use super::*;

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
        let now = Instant::now();
        Harness {
            cp: ControlPlane::new(&config, 7, now),
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
    }

    fn request(&mut self, conn: ConnId, msg: ClientMessage) -> Vec<Output> {
        self.cp.handle(self.now, Input::Request { conn, msg });
        self.drain()
    }

    fn rid(&mut self) -> u32 {
        self.next_request += 1;
        self.next_request
    }

    fn drain(&mut self) -> Vec<Output> {
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
        self.connect(conn);
        let request_id = self.rid();
        let out = self.request(
            conn,
            ClientMessage::CreateAllocation {
                request_id,
                max_peers,
                code_ttl_secs: ttl,
            },
        );
        out.iter()
            .find_map(|o| match o {
                Output::Send {
                    msg:
                        ServerMessage::AllocationCreated {
                            allocation, code, ..
                        },
                    ..
                } => Some((*allocation, *code)),
                _ => None,
            })
            .expect("allocation created")
    }

    /// `conn` connects and joins with `code`; returns the reply.
    fn join(&mut self, conn: ConnId, code: JoinCode) -> (ServerMessage, Vec<Output>) {
        self.connect(conn);
        let request_id = self.rid();
        let out = self.request(conn, ClientMessage::Join { request_id, code });
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

    fn refusal(&mut self, conn: ConnId, code: JoinCode) -> (ErrorCode, u32) {
        match self.join(conn, code).0 {
            ServerMessage::Refused { code, value, .. } => (code, value),
            other => panic!("join accepted: {other:?}"),
        }
    }
}

fn replies_to(out: &[Output], conn: ConnId) -> Vec<ServerMessage> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, msg } if *c == conn => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn closes(out: &[Output]) -> Vec<(ConnId, CloseCode)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Close { conn, code } => Some((*conn, *code)),
            _ => None,
        })
        .collect()
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
fn create_then_join_routes_both_and_tells_the_host() {
    let mut h = Harness::new();
    let (id, code) = h.create();
    assert_eq!(code.len(), 6);
    let lower = JoinCode::parse(&code.as_str().to_lowercase()).unwrap();
    let (reply, out) = h.join(2, lower);
    assert_eq!(
        reply,
        ServerMessage::Joined {
            request_id: h.next_request,
            allocation: id,
            peer: PeerId(1),
            max_payload: 1150,
            members: vec![PeerId::HOST],
        }
    );
    assert_eq!(
        replies_to(&out, HOST),
        vec![ServerMessage::PeerJoined { peer: PeerId(1) }]
    );
    assert_eq!(
        last_route(&out),
        Some(vec![(PeerId(0), HOST), (PeerId(1), 2)])
    );
    // Routing is installed before the joiner hears it joined.
    let bound = out
        .iter()
        .position(|o| matches!(o, Output::Bound { conn: 2, .. }));
    let joined = out.iter().position(|o| {
        matches!(
            o,
            Output::Send {
                conn: 2,
                msg: ServerMessage::Joined { .. }
            }
        )
    });
    assert!(bound < joined);
    assert_eq!(h.join_ok(3, code), PeerId(2));
    assert_eq!(h.cp.allocations(h.now)[0].members.len(), 3);
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
    assert!(matches!(
        replies_to(&out, 2)[..],
        [ServerMessage::Refused {
            code: ErrorCode::NotHost,
            ..
        }]
    ));
    h.connect(30);
    let request_id = h.rid();
    let out = h.request(
        30,
        ClientMessage::Kick {
            request_id,
            peer: PeerId(1),
        },
    );
    assert!(matches!(
        replies_to(&out, 30)[..],
        [ServerMessage::Refused {
            code: ErrorCode::NotBound,
            ..
        }]
    ));
    // A member cannot create or join again on the same connection.
    let request_id = h.rid();
    let out = h.request(2, ClientMessage::Join { request_id, code });
    assert!(matches!(
        replies_to(&out, 2)[..],
        [ServerMessage::Refused {
            code: ErrorCode::AlreadyBound,
            ..
        }]
    ));
}

#[test]
fn join_codes_expire_and_tombstones_are_forgotten_later() {
    let mut h = Harness::new();
    let (id, code) = h.create_with(HOST, 0, 30);
    h.advance(Duration::from_secs(29));
    assert_eq!(h.join_ok(2, code), PeerId(1));
    h.advance(Duration::from_secs(1));
    assert_eq!(h.refusal(3, code).0, ErrorCode::Expired);
    // Members stay: only new joins need a fresh code.
    assert_eq!(h.cp.allocation(h.now, id).unwrap().members.len(), 2);
    assert_eq!(h.cp.allocation(h.now, id).unwrap().code_state, "expired");
    h.advance(defaults::CODE_TOMBSTONE_TTL);
    assert_eq!(h.refusal(4, code).0, ErrorCode::NotFound);
}

#[test]
fn requested_limits_are_clamped_and_reported() {
    let mut config = RelayConfig::default();
    config.set_join_code_ttl(Duration::from_secs(60)).unwrap();
    let mut h = Harness::with(config);
    h.connect(HOST);
    let out = h.request(
        HOST,
        ClientMessage::CreateAllocation {
            request_id: 9,
            max_peers: 60_000,
            code_ttl_secs: 3600,
        },
    );
    assert!(matches!(
        replies_to(&out, HOST)[..],
        [ServerMessage::AllocationCreated {
            max_peers: 150,
            code_ttl_secs: 60,
            ..
        }]
    ));
}

#[test]
fn host_loss_closes_the_allocation_once_with_its_reason() {
    let mut h = Harness::new();
    let (id, code) = h.create();
    h.join_ok(2, code);
    h.join_ok(3, code);
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
    let mut c = closes(&out);
    c.sort_by_key(|(conn, _)| *conn);
    assert_eq!(
        c,
        vec![
            (2, CloseCode::HostLost(LeaveReason::TimedOut)),
            (3, CloseCode::HostLost(LeaveReason::TimedOut))
        ]
    );
    let ev = events(&out);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::HostDisconnected { .. }))
            .count(),
        1
    );
    assert!(ev.contains(&Event::AllocationClosed {
        allocation: id,
        reason: CloseReason::HostLost(LeaveReason::TimedOut)
    }));
    assert_eq!(last_route(&out), Some(vec![]));
    assert_eq!(h.cp.allocation_count(), 0);
    // The peers' own disconnects, arriving later, change nothing.
    assert!(h.disconnect(2, LeaveReason::Closed).is_empty());
    assert!(h.disconnect(HOST, LeaveReason::Closed).is_empty());
    assert_eq!(h.refusal(4, code).0, ErrorCode::Closed);
    assert_eq!(
        h.cp.connection_count(),
        1,
        "only the refused joiner is left"
    );
}

#[test]
fn a_silent_peer_is_reported_to_the_others_as_timed_out() {
    let mut h = Harness::new();
    let (_, code) = h.create();
    let peer = h.join_ok(2, code);
    h.join_ok(3, code);
    let out = h.disconnect(2, LeaveReason::TimedOut);
    let left = ServerMessage::PeerLeft {
        peer,
        reason: LeaveReason::TimedOut,
    };
    assert_eq!(replies_to(&out, HOST), vec![left.clone()]);
    assert_eq!(replies_to(&out, 3), vec![left]);
    assert_eq!(
        last_route(&out),
        Some(vec![(PeerId(0), HOST), (PeerId(2), 3)])
    );
    assert!(closes(&out).is_empty());
}

#[test]
fn keepalive_default_is_ten_seconds() {
    // The rule itself is enforced as the QUIC idle timeout the driver derives from this value
    // (see `server::transport_config`); the control plane reports who timed out.
    let h = Harness::new();
    assert_eq!(h.cp.keepalive_timeout(), Duration::from_secs(10));
}

#[test]
fn a_connection_that_never_binds_is_closed_at_the_bind_deadline() {
    let mut h = Harness::new();
    h.connect(5);
    assert!(closes(&h.advance(Duration::from_millis(9_999))).is_empty());
    assert_eq!(
        closes(&h.advance(Duration::from_millis(1))),
        vec![(5, CloseCode::BindTimeout)]
    );
    assert_eq!(h.cp.connection_count(), 0);
    // A bound connection is not affected by its old bind deadline.
    let (_, _) = h.create();
    assert!(closes(&h.advance(Duration::from_secs(60))).is_empty());
}

#[test]
fn a_reserved_allocation_whose_host_never_binds_expires() {
    let mut h = Harness::new();
    let r = h.cp.reserve_allocation(h.now, Some(4)).unwrap();
    h.drain();
    let code = JoinCode::parse(&r.join_code).unwrap();
    // Peers may join before the host arrives; the host's seat is held.
    assert_eq!(h.join_ok(2, code), PeerId(1));
    let info = &h.cp.allocations(h.now)[0];
    assert!(!info.host_bound);
    let out = h.advance(Duration::from_secs(60));
    assert_eq!(closes(&out), vec![(2, CloseCode::AllocationClosed)]);
    assert!(events(&out).iter().any(|e| matches!(
        e,
        Event::AllocationClosed {
            reason: CloseReason::HostNeverBound,
            ..
        }
    )));
    assert_eq!(h.cp.allocation_count(), 0);
}

#[test]
fn a_reserved_allocation_is_claimed_with_its_token_only() {
    let mut h = Harness::new();
    let r = h.cp.reserve_allocation(h.now, None).unwrap();
    h.drain();
    let id: AllocationId = r.allocation_id.parse().unwrap();
    let token: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&r.host_token[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let token: [u8; 16] = token.try_into().unwrap();
    let code = JoinCode::parse(&r.join_code).unwrap();
    h.join_ok(2, code);

    h.connect(HOST);
    let mut wrong = token;
    wrong[0] ^= 1;
    let out = h.request(
        HOST,
        ClientMessage::ClaimHost {
            request_id: 1,
            allocation: id,
            host_token: wrong,
        },
    );
    assert!(matches!(
        replies_to(&out, HOST)[..],
        [ServerMessage::Refused {
            code: ErrorCode::Unauthorized,
            ..
        }]
    ));
    let out = h.request(
        HOST,
        ClientMessage::ClaimHost {
            request_id: 2,
            allocation: id,
            host_token: token,
        },
    );
    assert!(matches!(
        replies_to(&out, HOST)[..],
        [
            ServerMessage::AllocationCreated { request_id: 2, .. },
            ServerMessage::PeerJoined { peer: PeerId(1) }
        ]
    ));
    assert_eq!(
        replies_to(&out, 2),
        vec![ServerMessage::PeerJoined { peer: PeerId::HOST }]
    );
    // Claimed: the host bind deadline no longer applies, and the token is spent.
    assert!(closes(&h.advance(Duration::from_secs(120))).is_empty());
    h.connect(9);
    let out = h.request(
        9,
        ClientMessage::ClaimHost {
            request_id: 3,
            allocation: id,
            host_token: token,
        },
    );
    assert!(matches!(
        replies_to(&out, 9)[..],
        [ServerMessage::Refused {
            code: ErrorCode::Unauthorized,
            ..
        }]
    ));
}

#[test]
fn failed_joins_are_rate_limited_per_address() {
    let mut h = Harness::new();
    let bad = JoinCode::parse("BCDFGH").unwrap();
    // Connections 100, 350, 600... share an address in this harness.
    let conns: Vec<ConnId> = (0..12).map(|i| 100 + 250 * i).collect();
    for conn in &conns[..10] {
        assert_eq!(h.refusal(*conn, bad).0, ErrorCode::NotFound);
    }
    let (code, retry_ms) = h.refusal(conns[10], bad);
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(retry_ms > 0 && retry_ms <= 1000, "{retry_ms}");
    // Another address is unaffected.
    assert_eq!(h.refusal(101, bad).0, ErrorCode::NotFound);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.refusal(conns[11], bad).0, ErrorCode::NotFound);
}

#[test]
fn kick_removes_the_peer_with_its_reason() {
    let mut h = Harness::new();
    let (_, code) = h.create();
    let p1 = h.join_ok(2, code);
    h.join_ok(3, code);
    let request_id = h.rid();
    let out = h.request(
        HOST,
        ClientMessage::Kick {
            request_id,
            peer: p1,
        },
    );
    assert_eq!(closes(&out), vec![(2, CloseCode::Kicked)]);
    assert!(replies_to(&out, HOST).contains(&ServerMessage::Done { request_id }));
    assert_eq!(
        replies_to(&out, 3),
        vec![ServerMessage::PeerLeft {
            peer: p1,
            reason: LeaveReason::Kicked
        }]
    );
    // Kicking again, kicking the host, or a peer kicking: each refused precisely.
    let out = h.request(
        HOST,
        ClientMessage::Kick {
            request_id: 50,
            peer: p1,
        },
    );
    assert!(matches!(
        replies_to(&out, HOST)[..],
        [ServerMessage::Refused {
            code: ErrorCode::UnknownPeer,
            value: 1,
            ..
        }]
    ));
    let out = h.request(
        HOST,
        ClientMessage::Kick {
            request_id: 51,
            peer: PeerId::HOST,
        },
    );
    assert!(matches!(
        replies_to(&out, HOST)[..],
        [ServerMessage::Refused {
            code: ErrorCode::InvalidRequest,
            ..
        }]
    ));
    let out = h.request(
        3,
        ClientMessage::Kick {
            request_id: 52,
            peer: PeerId::HOST,
        },
    );
    assert!(matches!(
        replies_to(&out, 3)[..],
        [ServerMessage::Refused {
            code: ErrorCode::NotHost,
            ..
        }]
    ));
    // The kicked peer's transport disconnect is not reported twice.
    assert!(h.disconnect(2, LeaveReason::Closed).is_empty());
}

#[test]
fn peer_ids_are_not_reused_while_their_holder_could_return() {
    let mut h = Harness::new();
    let (_, code) = h.create();
    assert_eq!(h.join_ok(2, code), PeerId(1));
    h.disconnect(2, LeaveReason::Closed);
    assert_eq!(h.join_ok(3, code), PeerId(2));
    assert_eq!(h.join_ok(4, code), PeerId(3));
}

#[test]
fn admin_revocation_tells_the_host_and_admin_close_closes_everyone() {
    let mut h = Harness::new();
    let (id, code) = h.create();
    h.join_ok(2, code);
    assert_eq!(h.cp.revoke_code(h.now, id), Ok(code));
    let out = h.drain();
    assert_eq!(
        replies_to(&out, HOST),
        vec![ServerMessage::CodeRevoked { code }]
    );
    assert_eq!(h.refusal(3, code).0, ErrorCode::Revoked);
    h.cp.close_by_admin(h.now, id).unwrap();
    let mut c = closes(&h.drain());
    c.sort_by_key(|(conn, _)| *conn);
    assert_eq!(
        c,
        vec![
            (HOST, CloseCode::AllocationClosed),
            (2, CloseCode::AllocationClosed)
        ]
    );
    assert_eq!(
        h.cp.close_by_admin(h.now, id),
        Err(AdminError::NotFound(id))
    );
}

#[test]
fn relay_full_and_shutdown() {
    let mut config = RelayConfig::default();
    config.set_max_allocations(1).unwrap();
    let mut h = Harness::with(config);
    h.create();
    h.connect(2);
    let out = h.request(
        2,
        ClientMessage::CreateAllocation {
            request_id: 1,
            max_peers: 0,
            code_ttl_secs: 0,
        },
    );
    assert!(matches!(
        replies_to(&out, 2)[..],
        [ServerMessage::Refused {
            code: ErrorCode::RelayFull,
            value: 1,
            ..
        }]
    ));
    h.cp.shutdown(h.now);
    let mut c = closes(&h.drain());
    c.sort_by_key(|(conn, _)| *conn);
    assert_eq!(
        c,
        vec![
            (HOST, CloseCode::RelayShuttingDown),
            (2, CloseCode::RelayShuttingDown)
        ]
    );
    assert_eq!((h.cp.allocation_count(), h.cp.connection_count()), (0, 0));
    h.connect(3);
    assert_eq!(closes(&h.drain()), vec![(3, CloseCode::RelayShuttingDown)]);
}

#[test]
fn the_same_seed_replays_the_same_codes() {
    let mut a = Harness::new();
    let mut b = Harness::new();
    assert_eq!(a.create(), b.create());
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
