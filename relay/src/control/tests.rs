//! Control-plane tests with simulated time: every deadline is driven by advancing a fake
//! clock, so the 10 s keepalive, the 10 s bind window, code expiry and the 60 s host bind
//! window are tested in microseconds and deterministically.

use std::net::SocketAddr;

use baton_protocol::{LeaveReason, PeerId};
use bytes::Bytes;

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
    let ServerMessage::Joined {
        request_id,
        allocation,
        peer,
        max_payload,
        host,
        reconnect_token,
        members,
    } = reply
    else {
        panic!("not joined: {reply:?}");
    };
    assert_eq!(
        (request_id, allocation, peer, max_payload, host, members),
        (
            h.next_request,
            id,
            PeerId(1),
            1150,
            PeerId::HOST,
            vec![PeerId::HOST]
        )
    );
    assert_ne!(reconnect_token, [0; 16]);
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
fn host_loss_with_no_one_left_closes_the_allocation_once() {
    let mut h = Harness::new();
    let (id, code) = h.create();
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
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
    assert!(h.disconnect(HOST, LeaveReason::Closed).is_empty());
    assert_eq!(h.refusal(4, code).0, ErrorCode::Closed);
}

/// Host `HOST` with peers on connections 2, 3, 4 (peer ids 1, 2, 3).
fn game_of_four() -> (Harness, AllocationId, JoinCode) {
    game_of_four_with(RelayConfig::default())
}

/// As [`game_of_four`], on a relay configured with `config`.
fn game_of_four_with(config: RelayConfig) -> (Harness, AllocationId, JoinCode) {
    let mut h = Harness::with(config);
    let (id, code) = h.create();
    for conn in 2..=4 {
        h.join_ok(conn, code);
    }
    (h, id, code)
}

fn promote_of(out: &[Output], conn: ConnId) -> Option<(AllocationId, [u8; 16])> {
    replies_to(out, conn).into_iter().find_map(|m| match m {
        ServerMessage::Promote {
            allocation, ticket, ..
        } => Some((allocation, ticket)),
        _ => None,
    })
}

#[test]
fn host_loss_elects_by_rtt_then_join_order_and_tells_everyone_once() {
    let (mut h, id, _) = game_of_four();
    // Peer 3 (conn 4) measured the best RTT; peer 1 has none yet.
    for (conn, ms) in [(3, 40), (4, 12)] {
        h.cp.handle(
            h.now,
            Input::Rtt {
                conn,
                rtt: Duration::from_millis(ms),
            },
        );
    }
    let out = h.disconnect(HOST, LeaveReason::Closed);
    let lost = ServerMessage::HostLost {
        host: PeerId::HOST,
        reason: LeaveReason::Closed,
        elected: PeerId(3),
    };
    for conn in 2..=4 {
        assert!(replies_to(&out, conn).contains(&lost), "conn {conn}");
    }
    assert!(promote_of(&out, 4).is_some());
    assert!(promote_of(&out, 2).is_none() && promote_of(&out, 3).is_none());
    let ev = events(&out);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::HostDisconnected { .. }))
            .count(),
        1
    );
    assert!(ev.contains(&Event::HostElected {
        allocation: id,
        host: PeerId(3),
        by: ElectedBy::Relay
    }));
    assert!(closes(&out).is_empty(), "no one is disconnected");
    assert_eq!(h.cp.allocation(h.now, id).unwrap().state, "migrating");
}

#[test]
fn without_rtt_samples_the_earliest_joined_is_elected() {
    let (mut h, _, code) = game_of_four();
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
    assert!(promote_of(&out, 2).is_some());
    // A join while migrating is told to retry, with the time left.
    let (code, retry_ms) = h.refusal(9, code);
    assert_eq!(code, ErrorCode::Migrating);
    assert!(retry_ms > 0 && retry_ms <= 5000, "{retry_ms}");
}

#[test]
fn migration_moves_roster_code_and_snapshot_keeping_peer_ids() {
    let (mut h, old, code) = game_of_four();
    h.cp.handle(
        h.now,
        Input::Snapshot {
            conn: HOST,
            data: Bytes::from_static(b"world state v7"),
        },
    );
    assert_eq!(
        replies_to(&h.drain(), HOST),
        vec![ServerMessage::SnapshotStored { len: 14 }]
    );
    let out = h.disconnect(HOST, LeaveReason::Closed);
    let (alloc, ticket) = promote_of(&out, 2).unwrap();
    assert_eq!(alloc, old);

    // A forged ticket and a non-elected member are refused.
    let out = h.request(
        3,
        ClientMessage::MigrateAllocation {
            request_id: 5,
            allocation: old,
            ticket,
        },
    );
    assert!(matches!(
        replies_to(&out, 3)[..],
        [ServerMessage::Refused {
            code: ErrorCode::Unauthorized,
            ..
        }]
    ));
    let mut forged = ticket;
    forged[3] ^= 0x40;
    let out = h.request(
        2,
        ClientMessage::MigrateAllocation {
            request_id: 6,
            allocation: old,
            ticket: forged,
        },
    );
    assert!(matches!(
        replies_to(&out, 2)[..],
        [ServerMessage::Refused {
            code: ErrorCode::Unauthorized,
            ..
        }]
    ));

    let out = h.request(
        2,
        ClientMessage::MigrateAllocation {
            request_id: 7,
            allocation: old,
            ticket,
        },
    );
    let replies = replies_to(&out, 2);
    let ServerMessage::AllocationCreated {
        request_id: 7,
        allocation: new,
        code: same_code,
        ..
    } = replies[0]
    else {
        panic!("not created: {replies:?}");
    };
    assert_ne!(new, old);
    assert_eq!(same_code, code);
    assert_eq!(
        replies[1..],
        [
            ServerMessage::PeerRejoined { peer: PeerId(2) },
            ServerMessage::PeerRejoined { peer: PeerId(3) }
        ]
    );
    assert!(out.contains(&Output::DeliverSnapshot {
        conn: 2,
        data: Bytes::from_static(b"world state v7")
    }));
    for conn in [3, 4] {
        assert_eq!(
            replies_to(&out, conn),
            vec![ServerMessage::Migrated {
                allocation: new,
                host: PeerId(1)
            }]
        );
    }
    // Peer ids are unchanged, and routing is in place before anyone is told.
    let route_of = |alloc: AllocationId| {
        out.iter().rev().find_map(|o| match o {
            Output::Route {
                allocation,
                members,
            } if *allocation == alloc => Some(members.clone()),
            _ => None,
        })
    };
    assert_eq!(
        route_of(new),
        Some(vec![(PeerId(1), 2), (PeerId(2), 3), (PeerId(3), 4)])
    );
    assert_eq!(route_of(old), Some(vec![]));
    let routed = out
        .iter()
        .position(|o| matches!(o, Output::Route { allocation, .. } if *allocation == new));
    let told = out.iter().position(|o| {
        matches!(
            o,
            Output::Send {
                msg: ServerMessage::Migrated { .. },
                ..
            }
        )
    });
    assert!(routed < told);
    assert!(events(&out).contains(&Event::AllocationMigrated {
        from: old,
        to: new,
        host: PeerId(1)
    }));
    let info = h.cp.allocation(h.now, new).unwrap();
    assert_eq!((info.state, info.host), ("active", Some(1)));
    assert!(h.cp.allocation(h.now, old).is_none());

    // The old code lets a late joiner into the new allocation with a fresh id.
    let (reply, _) = h.join(9, code);
    assert!(matches!(
        reply,
        ServerMessage::Joined { allocation, peer: PeerId(4), host: PeerId(1), .. } if allocation == new
    ));
    // The new host may kick; the old rules follow the role, not id 0.
    let out = h.request(
        2,
        ClientMessage::Kick {
            request_id: 8,
            peer: PeerId(4),
        },
    );
    assert!(replies_to(&out, 2).contains(&ServerMessage::Done { request_id: 8 }));
}

#[test]
fn the_old_host_rejoins_as_an_ordinary_peer_with_its_token() {
    let mut h = Harness::new();
    h.connect(HOST);
    let out = h.request(
        HOST,
        ClientMessage::CreateAllocation {
            request_id: 1,
            max_peers: 0,
            code_ttl_secs: 0,
        },
    );
    let Some(ServerMessage::AllocationCreated {
        allocation: old,
        code,
        reconnect_token,
        ..
    }) = replies_to(&out, HOST).into_iter().next()
    else {
        panic!("not created");
    };
    h.join_ok(2, code);
    h.join_ok(3, code);
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
    let (_, ticket) = promote_of(&out, 2).unwrap();

    // While migrating, a rejoin is told to retry.
    h.connect(10);
    let rejoin = |request_id| ClientMessage::Rejoin {
        request_id,
        allocation: old,
        peer: PeerId::HOST,
        reconnect_token,
    };
    let out = h.request(10, rejoin(1));
    assert!(matches!(
        replies_to(&out, 10)[..],
        [ServerMessage::Refused { code: ErrorCode::Migrating, value, .. }] if value > 0
    ));
    let out = h.request(
        2,
        ClientMessage::MigrateAllocation {
            request_id: 2,
            allocation: old,
            ticket,
        },
    );
    let new = replies_to(&out, 2)
        .into_iter()
        .find_map(|m| match m {
            ServerMessage::AllocationCreated { allocation, .. } => Some(allocation),
            _ => None,
        })
        .unwrap();

    // A wrong token is refused; the right one, naming the OLD allocation, lands in the new one.
    let mut wrong = reconnect_token;
    wrong[0] ^= 1;
    let out = h.request(
        10,
        ClientMessage::Rejoin {
            request_id: 3,
            allocation: old,
            peer: PeerId::HOST,
            reconnect_token: wrong,
        },
    );
    assert!(matches!(
        replies_to(&out, 10)[..],
        [ServerMessage::Refused {
            code: ErrorCode::Unauthorized,
            ..
        }]
    ));
    let out = h.request(10, rejoin(4));
    assert!(matches!(
        &replies_to(&out, 10)[..],
        [ServerMessage::Joined { allocation, peer: PeerId(0), host: PeerId(1), .. }] if *allocation == new
    ));
    assert!(replies_to(&out, 2).contains(&ServerMessage::PeerRejoined { peer: PeerId(0) }));
    assert_eq!(h.cp.allocation(h.now, new).unwrap().members.len(), 3);
    // The old host is an ordinary peer now: it may not kick.
    let out = h.request(
        10,
        ClientMessage::Kick {
            request_id: 5,
            peer: PeerId(2),
        },
    );
    assert!(matches!(
        replies_to(&out, 10)[..],
        [ServerMessage::Refused {
            code: ErrorCode::NotHost,
            ..
        }]
    ));
}

#[test]
fn a_silent_candidate_is_passed_over_and_then_the_allocation_closes() {
    let mut config = RelayConfig::default();
    config
        .set_migration_timeout(Duration::from_secs(5))
        .unwrap();
    let mut h = Harness::with(config);
    let (id, code) = h.create();
    h.join_ok(2, code);
    h.join_ok(3, code);
    let out = h.disconnect(HOST, LeaveReason::Closed);
    assert!(promote_of(&out, 2).is_some());
    assert!(h.advance(Duration::from_millis(4_999)).is_empty());
    let out = h.advance(Duration::from_millis(1));
    assert!(
        promote_of(&out, 3).is_some(),
        "the next candidate is elected"
    );
    assert!(replies_to(&out, 2).contains(&ServerMessage::HostLost {
        host: PeerId::HOST,
        reason: LeaveReason::Closed,
        elected: PeerId(2)
    }));
    let out = h.advance(Duration::from_secs(5));
    let mut c = closes(&out);
    c.sort_by_key(|(conn, _)| *conn);
    assert_eq!(
        c,
        vec![
            (2, CloseCode::HostLost(LeaveReason::Closed)),
            (3, CloseCode::HostLost(LeaveReason::Closed))
        ]
    );
    assert!(events(&out).contains(&Event::AllocationClosed {
        allocation: id,
        reason: CloseReason::MigrationFailed
    }));
    assert_eq!(h.cp.allocation_count(), 0);
}

#[test]
fn the_elected_member_leaving_triggers_a_new_election_and_the_last_one_closes_it() {
    let (mut h, id, _) = game_of_four();
    h.disconnect(HOST, LeaveReason::Closed);
    let out = h.disconnect(2, LeaveReason::Closed);
    assert!(promote_of(&out, 3).is_some());
    h.disconnect(3, LeaveReason::Closed);
    let out = h.disconnect(4, LeaveReason::Closed);
    assert!(events(&out).contains(&Event::AllocationClosed {
        allocation: id,
        reason: CloseReason::MigrationFailed
    }));
    assert_eq!(h.cp.allocation_count(), 0);
}

#[test]
fn a_lobby_can_override_the_election_and_stale_tickets_stop_working() {
    let (mut h, id, _) = game_of_four();
    let out = h.disconnect(HOST, LeaveReason::Kicked);
    let (_, first_ticket) = promote_of(&out, 2).unwrap();
    assert_eq!(
        h.cp.elect_host(h.now, id, PeerId(9), true),
        Err(AdminError::UnknownPeer(PeerId(9)))
    );
    let promotion = h.cp.elect_host(h.now, id, PeerId(3), true).unwrap();
    let out = h.drain();
    // The lobby gets the very ticket the member is sent.
    assert_eq!(promote_of(&out, 4), Some((id, promotion.ticket)));
    assert_eq!((promotion.allocation, promotion.peer), (id, PeerId(3)));
    assert!(events(&out).contains(&Event::HostElected {
        allocation: id,
        host: PeerId(3),
        by: ElectedBy::Lobby
    }));
    let out = h.request(
        2,
        ClientMessage::MigrateAllocation {
            request_id: 1,
            allocation: id,
            ticket: first_ticket,
        },
    );
    assert!(matches!(
        replies_to(&out, 2)[..],
        [ServerMessage::Refused {
            code: ErrorCode::Unauthorized,
            ..
        }]
    ));
    let (_, live) = h.create_with(50, 0, 0);
    let _ = live;
    let other = h.cp.allocations(h.now)[1].id.parse().unwrap();
    assert_eq!(
        h.cp.elect_host(h.now, other, PeerId(0), true),
        Err(AdminError::NotMigrating(other))
    );
}

#[test]
fn snapshots_are_bounded_by_size_budget_and_role() {
    let mut config = RelayConfig::default();
    config.set_max_snapshot(2048).unwrap();
    config.set_snapshot_budget(3000).unwrap();
    let mut h = Harness::with(config);
    let (_, code) = h.create();
    h.join_ok(2, code);
    let snap = |h: &mut Harness, conn, len| {
        h.cp.handle(
            h.now,
            Input::Snapshot {
                conn,
                data: Bytes::from(vec![1u8; len]),
            },
        );
        replies_to(&h.drain(), conn)
    };
    assert_eq!(
        snap(&mut h, 2, 10),
        vec![ServerMessage::SnapshotRejected {
            code: ErrorCode::NotHost,
            value: 0
        }]
    );
    assert_eq!(
        snap(&mut h, HOST, 2049),
        vec![ServerMessage::SnapshotRejected {
            code: ErrorCode::PayloadTooLarge,
            value: 2048
        }]
    );
    assert_eq!(
        snap(&mut h, HOST, 2000),
        vec![ServerMessage::SnapshotStored { len: 2000 }]
    );
    // Replacing counts only the difference.
    assert_eq!(
        snap(&mut h, HOST, 2048),
        vec![ServerMessage::SnapshotStored { len: 2048 }]
    );
    let (_, code2) = h.create_with(20, 0, 0);
    let _ = code2;
    assert_eq!(
        snap(&mut h, 20, 1000),
        vec![ServerMessage::SnapshotRejected {
            code: ErrorCode::RelayFull,
            value: 0
        }]
    );
    assert_eq!(h.cp.snapshot_bytes(), 2048);
    // An empty upload clears the snapshot and frees its bytes.
    assert_eq!(
        snap(&mut h, HOST, 0),
        vec![ServerMessage::SnapshotStored { len: 0 }]
    );
    assert_eq!(h.cp.snapshot_bytes(), 0);
    assert_eq!(
        snap(&mut h, HOST, 2048),
        vec![ServerMessage::SnapshotStored { len: 2048 }]
    );
    // Closing the allocation releases its snapshot.
    h.disconnect(2, LeaveReason::Closed);
    h.disconnect(HOST, LeaveReason::Closed);
    assert_eq!(h.cp.snapshot_bytes(), 0);
    assert_eq!(
        snap(&mut h, 20, 1000),
        vec![ServerMessage::SnapshotStored { len: 1000 }]
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
    // (see `crate::transport_config`); the control plane reports who timed out.
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

#[test]
fn a_migration_without_a_snapshot_delivers_an_empty_one() {
    let (mut h, old, _) = game_of_four();
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
    let (_, ticket) = promote_of(&out, 2).unwrap();
    let out = h.request(
        2,
        ClientMessage::MigrateAllocation {
            request_id: 3,
            allocation: old,
            ticket,
        },
    );
    // The new host always gets a snapshot stream, so it knows when it has everything.
    assert!(out.contains(&Output::DeliverSnapshot {
        conn: 2,
        data: Bytes::new()
    }));
}

#[test]
fn with_a_lobby_window_the_relay_waits_for_the_lobby_then_elects_itself() {
    let mut config = RelayConfig::default();
    config
        .set_lobby_election_window(Duration::from_millis(800))
        .unwrap();
    let (mut h, id, _) = game_of_four_with(config.clone());
    let out = h.disconnect(HOST, LeaveReason::Closed);
    // Everyone hears of the loss at once, with no one elected, and no one is promoted.
    for conn in [2, 3, 4] {
        assert_eq!(
            replies_to(&out, conn),
            vec![ServerMessage::HostLost {
                host: PeerId::HOST,
                reason: LeaveReason::Closed,
                elected: PeerId(0xFFFF)
            }]
        );
    }
    assert!(events(&out).contains(&Event::HostDisconnected {
        allocation: id,
        host: PeerId::HOST,
        reason: LeaveReason::Closed
    }));
    // The lobby names peer 3 within the window; the window's end then changes nothing.
    h.advance(Duration::from_millis(300));
    let promotion = h.cp.elect_host(h.now, id, PeerId(3), true).unwrap();
    assert_eq!(promote_of(&h.drain(), 4), Some((id, promotion.ticket)));
    assert!(h
        .advance(Duration::from_millis(600))
        .iter()
        .all(|o| !matches!(
            o,
            Output::Send {
                msg: ServerMessage::Promote { .. },
                ..
            }
        )));

    // Without the lobby, the relay elects by itself when the window ends.
    let (mut h, id, _) = game_of_four_with(config);
    h.disconnect(HOST, LeaveReason::TimedOut);
    assert!(promote_of(&h.advance(Duration::from_millis(799)), 2).is_none());
    let out = h.advance(Duration::from_millis(1));
    assert!(promote_of(&out, 2).is_some());
    assert!(events(&out).contains(&Event::HostElected {
        allocation: id,
        host: PeerId(1),
        by: ElectedBy::Relay
    }));
}

#[test]
fn a_lobby_may_hand_out_the_ticket_itself() {
    let (mut h, id, _) = game_of_four();
    h.disconnect(HOST, LeaveReason::Closed);
    let promotion = h.cp.elect_host(h.now, id, PeerId(2), false).unwrap();
    let out = h.drain();
    // Everyone hears who is elected, but the relay does not promote it.
    assert!(promote_of(&out, 3).is_none());
    assert!(replies_to(&out, 3).contains(&ServerMessage::HostLost {
        host: PeerId::HOST,
        reason: LeaveReason::Closed,
        elected: PeerId(2)
    }));
    // The ticket the lobby got works.
    let out = h.request(
        3,
        ClientMessage::MigrateAllocation {
            request_id: 9,
            allocation: id,
            ticket: promotion.ticket,
        },
    );
    assert!(matches!(
        replies_to(&out, 3)[0],
        ServerMessage::AllocationCreated { request_id: 9, .. }
    ));
}
