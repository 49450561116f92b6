//! A stateful fuzz target for the control plane: the fuzzer's bytes become a relay
//! configuration and a sequence of up to `MAX_STEPS` steps in simulated time (connections,
//! any client request, RTT samples, snapshot uploads, disconnects for any reason, the admin
//! API's calls, and time running on by milliseconds to days, with timers fired on time, late
//! or not yet). Join codes, allocation ids, reservation tokens, reconnect tokens and migration
//! tickets are mostly the live ones the control plane handed out, so deep states (joins,
//! migrations, rejoins after a migration) are reached, and sometimes forged.
//!
//! After each step it checks the control plane's own invariants
//! (`ControlPlane::check_invariants`) and that its outputs are consistent, as a driver sees
//! them: each request from a connection it knows gets exactly one reply; a connection is
//! closed once and only after it opened; routing tables (`Output::Route`) and lifecycle events
//! (created, migrated, closed, peer joined, peer left) each replayed on their own agree with
//! the admin API's view of every allocation.
#![no_main]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_protocol::credential::{Claims, CredentialRefusal, Scope};
use baton_protocol::{
    join_code, AllocationId, ClientMessage, JoinCode, LeaveReason, NatKind, PathReason, PeerId,
    ServerMessage,
};
use baton_relay::control::{Authorization, ConnId, ControlPlane, Event, Input, Output, Secrets};
use baton_relay::RelayConfig;
use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// Steps per input: enough for several allocations' whole lives.
const MAX_STEPS: usize = 256;

/// The relay's configuration, small so that limits are reached.
#[derive(Arbitrary, Debug)]
struct Settings {
    max_peers: u8,
    max_allocations: u8,
    code_len: u8,
    /// `None`: the default 24 h.
    code_ttl_secs: Option<u16>,
    bind_timeout_ms: u16,
    host_bind_timeout_ms: u16,
    migration_timeout_ms: u16,
    election_window_secs: u8,
    snapshot_budget_kib: u8,
    seed: u64,
}

impl Settings {
    fn config(&self) -> RelayConfig {
        let ms = |v: u16| Duration::from_millis(u64::from(v).max(100));
        let mut c = RelayConfig::default();
        c.set_max_peers_per_allocation(2 + u16::from(self.max_peers % 7))
            .and_then(|c| c.set_max_allocations(1 + usize::from(self.max_allocations % 6)))
            .and_then(|c| c.set_join_code_len(4 + usize::from(self.code_len % 3)))
            .and_then(|c| c.set_bind_timeout(ms(self.bind_timeout_ms)))
            .and_then(|c| c.set_host_bind_timeout(ms(self.host_bind_timeout_ms)))
            .and_then(|c| c.set_migration_timeout(ms(self.migration_timeout_ms)))
            .and_then(|c| {
                c.set_lobby_election_window(Duration::from_secs(u64::from(
                    self.election_window_secs % 4 * 5,
                )))
            })
            .and_then(|c| c.set_max_snapshot(1024))
            .and_then(|c| {
                c.set_snapshot_budget(1024 * (1 + usize::from(self.snapshot_budget_kib % 4)))
            })
            .expect("the fuzz settings are in range");
        if let Some(secs) = self.code_ttl_secs {
            c.set_join_code_ttl(Duration::from_secs(u64::from(secs.max(1))))
                .expect("code TTL in range");
        }
        c
    }
}

/// One thing that happens to the relay.
#[derive(Arbitrary, Debug)]
enum Step {
    /// A QUIC handshake completes.
    Connect {
        addr: u8,
    },
    /// A connection (maybe closed already) sends a request, with what the driver made of its
    /// credential.
    Request {
        conn: u8,
        msg: Msg,
        auth: AuthPick,
    },
    /// A new connection sends its first request: the usual way in.
    Fresh {
        addr: u8,
        msg: Msg,
        auth: AuthPick,
    },
    /// The elected member of a recorded promotion opens the successor allocation.
    TakeOver {
        promotion: u8,
    },
    Rtt {
        conn: u8,
        millis: u16,
    },
    /// A snapshot upload of up to 2 KiB (the limit is 1 KiB).
    Snapshot {
        conn: u8,
        len: u16,
        fill: u8,
    },
    Disconnect {
        conn: u8,
        reason: u8,
    },
    /// The client finishes its control stream (the relay closes it, or keeps a moved member).
    Finish {
        conn: u8,
    },
    /// The client's address changes (a NAT rebinding).
    Rebind {
        conn: u8,
        port: u16,
    },
    Reserve {
        max_peers: Option<u8>,
    },
    RevokeCode {
        alloc: Pick,
    },
    Close {
        alloc: Pick,
    },
    Elect {
        alloc: Pick,
        peer: u8,
        promote: bool,
    },
    View {
        alloc: Pick,
    },
    Advance {
        span: Span,
        fire: Fire,
    },
    Shutdown,
}

/// What the driver made of a request's credential (`baton_relay::auth::Authorization`): an
/// open relay, a credential refused before its scope mattered, or a verified one whose scope
/// names what the relay handed out (or anything).
#[derive(Arbitrary, Debug)]
enum AuthPick {
    Open,
    Refused(u8),
    Verified { subject: u8, scope: ScopePick },
}

/// A verified credential's scope.
#[derive(Arbitrary, Debug)]
enum ScopePick {
    Create,
    Any,
    Code(u8),
    Allocation(Pick),
}

/// A client request, with its references mostly to what the relay handed out.
#[derive(Arbitrary, Debug)]
enum Msg {
    Create {
        max_peers: u16,
        ttl_secs: u32,
    },
    Join {
        code: CodePick,
    },
    Kick {
        peer: u8,
    },
    Revoke,
    Claim {
        reservation: u8,
        forged: Option<[u8; 16]>,
    },
    Migrate {
        promotion: u8,
        forged: Option<[u8; 16]>,
    },
    Rejoin {
        credential: u8,
        peer: Option<u8>,
        forged: Option<[u8; 16]>,
    },
    /// A direct-path offer to a member (SPEC section 17).
    PathOffer {
        peer: u8,
        nat: u8,
        fingerprint: [u8; 32],
        /// 1 to 4 candidates, ports from these.
        ports: Vec<u16>,
    },
    /// A direct-path outcome report about a member.
    PathReport {
        peer: u8,
        reason: u8,
    },
}

/// An allocation: one the relay created (by index), or any id.
#[derive(Arbitrary, Debug)]
enum Pick {
    Known(u8),
    Raw(u64),
}

/// A join code: one the relay issued (by index), or any well-formed code.
#[derive(Arbitrary, Debug)]
enum CodePick {
    Known(u8),
    Raw {
        len: u8,
        chars: [u8; join_code::MAX_LEN],
    },
}

/// How far the clock moves.
#[derive(Arbitrary, Debug)]
enum Span {
    Millis(u16),
    Seconds(u16),
    /// Up to 49 hours: past the default 24 h code TTL.
    Hours(u8),
    /// To the next pending deadline.
    NextDeadline,
}

/// How the driver fires the timers that came due.
#[derive(Arbitrary, Debug)]
enum Fire {
    /// Each at its instant, as the control task does when idle.
    OnTime,
    /// All at once at the end (a busy control task).
    Late,
    /// Not yet: the next steps see overdue timers.
    NotYet,
}

#[derive(Arbitrary, Debug)]
struct Scenario {
    settings: Settings,
    steps: Vec<Step>,
}

/// An allocation's routing table as `Output::Route` last gave it: members and host.
type Table = (Vec<(PeerId, ConnId)>, Option<PeerId>);

/// The fuzz run's view of the relay, built only from the control plane's outputs and the
/// admin calls' returns, the way a driver and a lobby see it.
struct World {
    cp: ControlPlane,
    max_allocations: usize,
    now: Instant,
    next_conn: ConnId,
    next_request: u32,
    shut_down: bool,
    /// Every connection ever opened, in order.
    conns: Vec<ConnId>,
    /// Connections opened and not yet closed by either side.
    open: HashSet<ConnId>,
    /// `Output::Bound`: each connection's allocation and peer id.
    bound: HashMap<ConnId, (AllocationId, PeerId)>,
    /// `Output::Route`: each allocation's routing table and host.
    tables: HashMap<AllocationId, Table>,
    /// Lifecycle events replayed: live allocations and their members.
    rosters: HashMap<AllocationId, BTreeSet<PeerId>>,
    /// Every allocation id the relay created (live or not).
    allocations: Vec<AllocationId>,
    /// Every join code it issued.
    codes: Vec<JoinCode>,
    /// Reservations: allocation and host token.
    reservations: Vec<(AllocationId, [u8; 16])>,
    /// Reconnect tokens: allocation, peer, token.
    credentials: Vec<(AllocationId, PeerId, [u8; 16])>,
    /// Promotions: allocation, elected peer, ticket.
    promotions: Vec<(AllocationId, PeerId, [u8; 16])>,
}

fn addr(pick: u8, conn: ConnId) -> SocketAddr {
    let ip = match pick % 4 {
        0 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        1 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        2 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        _ => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(ip, 1024 + (conn % 60_000) as u16)
}

fn peer(p: u8) -> PeerId {
    if p == u8::MAX {
        PeerId(baton_protocol::datagram::BROADCAST)
    } else {
        PeerId(u16::from(p % 16))
    }
}

fn nth<T: Copy>(list: &[T], i: u8) -> Option<T> {
    (!list.is_empty()).then(|| list[usize::from(i) % list.len()])
}

fn unhex(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("host token is hex");
    }
    out
}

impl World {
    fn new(settings: &Settings) -> Self {
        let now = Instant::now();
        let config = settings.config();
        let mut rng_seed = [0u8; 32];
        rng_seed[..8].copy_from_slice(&settings.seed.to_le_bytes());
        let secrets = Secrets {
            hmac_key: [7; 32],
            rng_seed,
        };
        World {
            cp: ControlPlane::new(&config, secrets, now),
            max_allocations: config.max_allocations(),
            now,
            next_conn: 1,
            next_request: 0,
            shut_down: false,
            conns: Vec::new(),
            open: HashSet::new(),
            bound: HashMap::new(),
            tables: HashMap::new(),
            rosters: HashMap::new(),
            allocations: Vec::new(),
            codes: Vec::new(),
            reservations: Vec::new(),
            credentials: Vec::new(),
            promotions: Vec::new(),
        }
    }

    fn conn(&self, i: u8) -> Option<ConnId> {
        nth(&self.conns, i)
    }

    fn alloc(&self, pick: &Pick) -> AllocationId {
        match pick {
            Pick::Known(i) => nth(&self.allocations, *i).unwrap_or(AllocationId(0)),
            Pick::Raw(id) => AllocationId(*id),
        }
    }

    fn connect(&mut self, addr_pick: u8) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.push(conn);
        self.cp.handle(
            self.now,
            Input::Connected {
                conn,
                addr: addr(addr_pick, conn),
            },
        );
        // A relay shutting down closes it at once (an output, checked below).
        self.open.insert(conn);
        conn
    }

    /// The request `msg` stands for, from `conn`.
    fn message(&mut self, conn: ConnId, msg: &Msg) -> ClientMessage {
        self.next_request += 1;
        let request_id = self.next_request;
        match msg {
            Msg::Create {
                max_peers,
                ttl_secs,
            } => ClientMessage::CreateAllocation {
                request_id,
                max_peers: *max_peers,
                code_ttl_secs: *ttl_secs,
                // Drawn from the TTL's high half rather than a field of its own, so the
                // stored seeds keep their layout; 0 (the relay's default) stays common.
                host_loss_timeout_ms: (*ttl_secs >> 16) as u16,
                credential: None,
            },
            Msg::Join { code } => {
                let code = match code {
                    CodePick::Known(i) => nth(&self.codes, *i),
                    CodePick::Raw { len, chars } => {
                        let len = join_code::MIN_LEN
                            + usize::from(*len) % (join_code::MAX_LEN - join_code::MIN_LEN + 1);
                        let text: Vec<u8> = chars[..len]
                            .iter()
                            .map(|c| {
                                join_code::ALPHABET[usize::from(*c) % join_code::ALPHABET.len()]
                            })
                            .collect();
                        JoinCode::from_bytes(&text).ok()
                    }
                };
                ClientMessage::Join {
                    request_id,
                    code: code.unwrap_or_else(|| JoinCode::parse("BCDF").expect("valid code")),
                    credential: None,
                }
            }
            Msg::Kick { peer: p } => ClientMessage::Kick {
                request_id,
                peer: peer(*p),
            },
            Msg::Revoke => ClientMessage::RevokeCode { request_id },
            Msg::Claim {
                reservation,
                forged,
            } => {
                let (allocation, token) =
                    nth(&self.reservations, *reservation).unwrap_or((AllocationId(0), [0; 16]));
                ClientMessage::ClaimHost {
                    request_id,
                    allocation,
                    host_token: forged.unwrap_or(token),
                }
            }
            Msg::Migrate { promotion, forged } => {
                let (allocation, _, ticket) = nth(&self.promotions, *promotion)
                    .or_else(|| self.bound.get(&conn).map(|(a, p)| (*a, *p, [0; 16])))
                    .unwrap_or((AllocationId(0), PeerId(0), [0; 16]));
                ClientMessage::MigrateAllocation {
                    request_id,
                    allocation,
                    ticket: forged.unwrap_or(ticket),
                }
            }
            Msg::Rejoin {
                credential,
                peer: p,
                forged,
            } => {
                let (allocation, holder, token) = nth(&self.credentials, *credential).unwrap_or((
                    AllocationId(0),
                    PeerId(1),
                    [0; 16],
                ));
                ClientMessage::Rejoin {
                    request_id,
                    allocation,
                    peer: p.map_or(holder, peer),
                    reconnect_token: forged.unwrap_or(token),
                    credential: None,
                }
            }
            Msg::PathOffer {
                peer: p,
                nat,
                fingerprint,
                ports,
            } => {
                // Only what decodes reaches the control plane: 1 to 8 unicast candidates.
                let mut candidates: Vec<SocketAddr> = ports
                    .iter()
                    .take(4)
                    .map(|port| SocketAddr::from(([198, 51, 100, 7], (*port).max(1))))
                    .collect();
                if candidates.is_empty() {
                    candidates.push(SocketAddr::from(([192, 0, 2, 1], 7700)));
                }
                ClientMessage::PathOffer {
                    request_id,
                    peer: peer(*p),
                    nat: NatKind::ALL[usize::from(*nat) % NatKind::ALL.len()],
                    fingerprint: *fingerprint,
                    candidates,
                }
            }
            Msg::PathReport { peer: p, reason } => {
                let reason = PathReason::ALL[usize::from(*reason) % PathReason::ALL.len()];
                ClientMessage::PathReport {
                    request_id,
                    peer: peer(*p),
                    outcome: reason.outcome(),
                    reason,
                }
            }
        }
    }

    /// The authorization `pick` stands for.
    fn auth(&self, pick: &AuthPick) -> Authorization {
        match pick {
            AuthPick::Open => Authorization::Open,
            AuthPick::Refused(i) => Authorization::Refused(
                CredentialRefusal::ALL[usize::from(*i) % CredentialRefusal::ALL.len()],
            ),
            AuthPick::Verified { subject, scope } => {
                let scope = match scope {
                    ScopePick::Create => Scope::Create,
                    ScopePick::Any => Scope::Any,
                    ScopePick::Code(i) => nth(&self.codes, *i).map_or(Scope::Any, Scope::JoinCode),
                    ScopePick::Allocation(pick) => Scope::Allocation(self.alloc(pick)),
                };
                Authorization::Verified(Arc::new(Claims {
                    expires: u64::MAX,
                    subject: ["alice", "bob", "carol"][usize::from(*subject) % 3].to_owned(),
                    scope,
                }))
            }
        }
    }

    /// Sends `msg` from `conn` as `auth`; returns the request id to check the reply against.
    fn request(&mut self, conn: ConnId, msg: ClientMessage, auth: Authorization) -> (ConnId, u32) {
        let request_id = msg.request_id();
        self.cp.handle(self.now, Input::Request { conn, msg, auth });
        (conn, request_id)
    }

    fn advance(&mut self, span: &Span, fire: &Fire) {
        let until = match span {
            Span::Millis(ms) => self.now + Duration::from_millis(u64::from(*ms)),
            Span::Seconds(s) => self.now + Duration::from_secs(u64::from(*s)),
            Span::Hours(h) => self.now + Duration::from_secs(3600 * u64::from(h % 50)),
            Span::NextDeadline => self.cp.poll_timeout().unwrap_or(self.now).max(self.now),
        };
        match fire {
            Fire::OnTime => {
                while let Some(at) = self.cp.poll_timeout().filter(|at| *at <= until) {
                    self.now = self.now.max(at);
                    self.cp.handle_timeout(self.now);
                    self.drain(None);
                }
                self.now = until;
            }
            Fire::Late => {
                self.now = until;
                self.cp.handle_timeout(self.now);
            }
            Fire::NotYet => self.now = until,
        }
        if !matches!(fire, Fire::NotYet) {
            assert!(
                self.cp.poll_timeout().is_none_or(|at| at > self.now),
                "a due timer was left unfired"
            );
        }
    }

    /// Runs one step, then checks everything.
    fn step(&mut self, step: &Step) {
        let mut asked = None;
        match step {
            Step::Connect { addr } => {
                self.connect(*addr);
            }
            Step::Request { conn, msg, auth } => {
                if let Some(conn) = self.conn(*conn) {
                    let msg = self.message(conn, msg);
                    let auth = self.auth(auth);
                    asked = Some(self.request(conn, msg, auth));
                }
            }
            Step::Fresh { addr, msg, auth } => {
                let conn = self.connect(*addr);
                self.drain(None);
                let msg = self.message(conn, msg);
                let auth = self.auth(auth);
                asked = Some(self.request(conn, msg, auth));
            }
            Step::TakeOver { promotion } => {
                if let Some((allocation, elected, ticket)) = nth(&self.promotions, *promotion) {
                    let conn = self.tables.get(&allocation).and_then(|(members, _)| {
                        members.iter().find(|(p, _)| *p == elected).map(|(_, c)| *c)
                    });
                    if let Some(conn) = conn {
                        self.next_request += 1;
                        let msg = ClientMessage::MigrateAllocation {
                            request_id: self.next_request,
                            allocation,
                            ticket,
                        };
                        asked = Some(self.request(conn, msg, Authorization::Open));
                    }
                }
            }
            Step::Rtt { conn, millis } => {
                if let Some(conn) = self.conn(*conn) {
                    let rtt = Duration::from_millis(u64::from(*millis));
                    self.cp.handle(self.now, Input::Rtt { conn, rtt });
                }
            }
            Step::Snapshot { conn, len, fill } => {
                if let Some(conn) = self.conn(*conn) {
                    let data = Bytes::from(vec![*fill; usize::from(*len % 2049)]);
                    self.cp.handle(self.now, Input::Snapshot { conn, data });
                }
            }
            Step::Disconnect { conn, reason } => {
                if let Some(conn) = self.conn(*conn) {
                    let reason = LeaveReason::from_u8(*reason);
                    self.cp
                        .handle(self.now, Input::Disconnected { conn, reason });
                    self.open.remove(&conn);
                }
            }
            Step::Finish { conn } => {
                if let Some(conn) = self.conn(*conn) {
                    self.cp.handle(self.now, Input::Finished { conn });
                }
            }
            Step::Rebind { conn, port } => {
                if let Some(conn) = self.conn(*conn) {
                    let addr = std::net::SocketAddr::from(([198, 51, 100, 7], *port));
                    self.cp.handle(self.now, Input::AddressChanged { conn, addr });
                }
            }
            Step::Reserve { max_peers } => {
                let result = self
                    .cp
                    .reserve_allocation(self.now, max_peers.map(u16::from));
                if let Ok(r) = result {
                    let id: AllocationId = r.allocation_id.parse().expect("hex id");
                    self.reservations.push((id, unhex(&r.host_token)));
                    let code = JoinCode::parse(&r.join_code).expect("a valid code");
                    self.drain(None);
                    assert!(
                        self.codes.contains(&code),
                        "reservation's code was announced"
                    );
                } else {
                    assert!(
                        self.shut_down || self.rosters.len() >= self.max_allocations,
                        "{result:?}"
                    );
                }
            }
            Step::RevokeCode { alloc } => {
                let id = self.alloc(alloc);
                let result = self.cp.revoke_code(self.now, id);
                assert_eq!(result.is_ok(), self.rosters.contains_key(&id), "{result:?}");
            }
            Step::Close { alloc } => {
                let id = self.alloc(alloc);
                let result = self.cp.close_by_admin(self.now, id);
                assert_eq!(result.is_ok(), self.rosters.contains_key(&id), "{result:?}");
            }
            Step::Elect {
                alloc,
                peer: p,
                promote,
            } => {
                let id = self.alloc(alloc);
                if let Ok(promotion) = self.cp.elect_host(self.now, id, peer(*p), *promote) {
                    self.promotions
                        .push((promotion.allocation, promotion.peer, promotion.ticket));
                }
            }
            Step::View { alloc } => {
                let id = self.alloc(alloc);
                let view = self.cp.allocation(self.now, id);
                assert_eq!(view.is_some(), self.rosters.contains_key(&id));
            }
            Step::Advance { span, fire } => self.advance(span, fire),
            Step::Shutdown => {
                self.cp.shutdown(self.now);
                self.shut_down = true;
            }
        }
        self.drain(asked);
        if let Err(violation) = self.cp.check_invariants() {
            panic!("{violation}\n{:?}", self.cp);
        }
        self.check_views();
    }

    /// Acts on every pending output as a driver would, checking each; `asked` is the request
    /// of this step, which must get exactly one reply if its connection is known.
    fn drain(&mut self, asked: Option<(ConnId, u32)>) {
        let mut replies = 0;
        let known = asked.is_some_and(|(conn, _)| self.open.contains(&conn) && !self.shut_down);
        while let Some(output) = self.cp.poll_output() {
            match output {
                Output::Send { conn, msg } => {
                    assert!(self.open.contains(&conn), "sent to closed {conn}: {msg:?}");
                    if let Some((asker, request_id)) = asked {
                        let answered = match &msg {
                            ServerMessage::AllocationCreated { request_id: r, .. }
                            | ServerMessage::Joined { request_id: r, .. }
                            | ServerMessage::Done { request_id: r }
                            | ServerMessage::Refused { request_id: r, .. } => *r == request_id,
                            _ => false,
                        };
                        if answered {
                            assert_eq!(conn, asker, "reply to the wrong connection");
                            replies += 1;
                        }
                    }
                    self.learn(conn, msg);
                }
                Output::Close { conn, .. } => {
                    assert!(
                        self.open.remove(&conn),
                        "closed {conn} twice or before it opened"
                    );
                    self.bound.remove(&conn);
                }
                Output::Bound {
                    conn,
                    allocation,
                    peer,
                    host_loss_timeout,
                } => {
                    assert!(self.open.contains(&conn), "bound closed {conn}");
                    assert!(
                        !host_loss_timeout.is_zero(),
                        "{conn} bound without a host-loss timeout"
                    );
                    self.bound.insert(conn, (allocation, peer));
                }
                Output::Route {
                    allocation,
                    members,
                    host,
                } => {
                    assert!(
                        members.windows(2).all(|w| w[0].0 < w[1].0),
                        "unsorted route"
                    );
                    for (peer, conn) in &members {
                        assert_eq!(
                            self.bound.get(conn),
                            Some(&(allocation, *peer)),
                            "routed {conn} before it was bound there"
                        );
                    }
                    if members.is_empty() {
                        self.tables.remove(&allocation);
                    } else {
                        self.tables.insert(allocation, (members, host));
                    }
                }
                Output::DeliverSnapshot { conn, data } => {
                    assert!(self.open.contains(&conn), "snapshot to closed {conn}");
                    assert!(data.len() <= 1024, "snapshot over the limit delivered");
                }
                Output::Event(event) => self.replay(event),
                // This target runs a relay without a directory.
                out @ (Output::ClaimCodes { .. }
                | Output::Locate { .. }
                | Output::Publish { .. }
                | Output::Relocate { .. }
                | Output::Awaiting { .. }
                | Output::Draining) => {
                    panic!("fleet output without a directory: {out:?}")
                }
            }
        }
        if asked.is_some() {
            assert_eq!(
                replies,
                usize::from(known),
                "request {asked:?} answered {replies} times"
            );
        }
    }

    /// Records what a client learns that a later step may present.
    fn learn(&mut self, conn: ConnId, msg: ServerMessage) {
        match msg {
            ServerMessage::AllocationCreated {
                allocation,
                reconnect_token,
                ..
            } => {
                let (at, peer) = self
                    .bound
                    .get(&conn)
                    .copied()
                    .expect("a host is bound first");
                assert_eq!(at, allocation, "the host is bound where it was told");
                self.credentials.push((allocation, peer, reconnect_token));
            }
            ServerMessage::Joined {
                allocation,
                peer,
                reconnect_token,
                ..
            } => {
                assert_eq!(self.bound.get(&conn), Some(&(allocation, peer)));
                self.credentials.push((allocation, peer, reconnect_token));
            }
            ServerMessage::Promote {
                allocation, ticket, ..
            } => {
                let (at, peer) = self
                    .bound
                    .get(&conn)
                    .copied()
                    .expect("promoted member is bound");
                assert_eq!(at, allocation);
                self.promotions.push((allocation, peer, ticket));
            }
            _ => {}
        }
    }

    /// Replays a lifecycle event on the rosters: each happens once per occurrence.
    fn replay(&mut self, event: Event) {
        match event {
            Event::AllocationCreated { allocation, code } => {
                assert!(
                    self.rosters.insert(allocation, BTreeSet::new()).is_none(),
                    "{allocation} created twice"
                );
                self.allocations.push(allocation);
                self.codes.push(code);
            }
            Event::AllocationMigrated { from, to, .. } => {
                let roster = self
                    .rosters
                    .remove(&from)
                    .expect("migrated from a live allocation");
                assert!(
                    self.rosters.insert(to, roster).is_none(),
                    "migrated onto a live id"
                );
                self.allocations.push(to);
            }
            Event::AllocationClosed { allocation, .. } => {
                let roster = self.rosters.remove(&allocation).expect("closed once");
                assert!(
                    roster.is_empty(),
                    "{allocation} closed with members {roster:?} left"
                );
            }
            Event::PeerJoined {
                allocation, peer, ..
            } => {
                let roster = self
                    .rosters
                    .get_mut(&allocation)
                    .expect("joined a live allocation");
                assert!(roster.insert(peer), "peer {peer} joined twice");
            }
            Event::PeerLeft {
                allocation, peer, ..
            } => {
                let roster = self
                    .rosters
                    .get_mut(&allocation)
                    .expect("left a live allocation");
                assert!(roster.remove(&peer), "peer {peer} left twice");
            }
            _ => {}
        }
    }

    /// The admin view, the routing tables and the replayed events agree.
    fn check_views(&self) {
        let views = self.cp.allocations(self.now);
        assert_eq!(views.len(), self.rosters.len(), "live allocations");
        assert_eq!(views.len(), self.cp.allocation_count());
        for view in &views {
            let id: AllocationId = view.id.parse().expect("hex id");
            let peers: BTreeSet<PeerId> = view.members.iter().map(|m| PeerId(m.peer)).collect();
            assert_eq!(Some(&peers), self.rosters.get(&id), "events of {id}");
            let (routed, host) = self.tables.get(&id).cloned().unwrap_or_default();
            let routed: BTreeSet<PeerId> = routed.iter().map(|(p, _)| *p).collect();
            assert_eq!(routed, peers, "routing table of {id}");
            if !peers.is_empty() {
                let want = if view.host_bound {
                    view.host.map(PeerId)
                } else {
                    None
                };
                assert_eq!(host, want, "host in the routing table of {id}");
            }
        }
        for (id, (members, _)) in &self.tables {
            assert!(self.rosters.contains_key(id), "table left for closed {id}");
            for (peer, conn) in members {
                assert!(self.open.contains(conn), "closed {conn} still routed");
                assert_eq!(self.bound.get(conn), Some(&(*id, *peer)));
            }
        }
        let members: usize = views.iter().map(|v| v.members.len()).sum();
        assert!(members <= self.cp.connection_count());
    }
}

fuzz_target!(|scenario: Scenario| {
    let mut world = World::new(&scenario.settings);
    for step in scenario.steps.iter().take(MAX_STEPS) {
        world.step(step);
    }
});
