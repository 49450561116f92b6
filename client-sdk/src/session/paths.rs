//! Direct host–peer paths of a session (SPEC section 17), with
//! [`DirectPolicy::Prefer`](crate::DirectPolicy::Prefer) only.
//!
//! The **driver** ([`run_driver`], one task per session) owns one [`PathMachine`] per remote
//! member a direct path may lead to: on the host one per other member, on a peer one for the
//! current host. It is fed by the reader ([`Shared::path_signal`]: forwarded offers and
//! `Punch`; [`Shared::paths_changed`]: the member set, the role or the observed address
//! changed), by the direct connections' watchers and by the accept loop, and it samples the
//! relay's RTT itself. It carries out what the machines ask: offers and reports through the
//! writer (each a request with its own id; a refused offer is fed back as
//! [`Input::Declined`]), punch packets from the session's one socket, dials (a peer dials the
//! host's candidates, the first connection to complete wins), and path switches, which update
//! the route table [`DirectShared::route`] that [`Session::send_to`](super::Session::send_to)
//! reads and queue [`Event::PathChanged`].
//!
//! Each direct connection has a **watcher** task: it hands the datagrams it receives to
//! [`Session::recv`](super::Session::recv) (a bounded queue, drop-and-count when full), samples
//! the connection's RTT and received packets every [`SAMPLE_INTERVAL`] for the driver, and
//! reports the connection's end. The **accept loop** completes incoming direct handshakes (at
//! most [`MAX_HANDSHAKES`] at once; the verifier admits only certificates an offer named) and
//! hands each connection, named by its certificate ([`direct::peer_of`]), to the driver.
//!
//! Everything is bounded: the reader's signals (dropped when the driver is behind: the relay
//! rate-limits offers and the machines time out), one machine per member, at most
//! [`MAX_CONNS_PER_PEER`] connections per member on the host (a peer keeps one), handshakes,
//! and the received datagrams.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_protocol::path::{NatKind as WireNat, PathReason, MAX_PATH_CANDIDATES};
use baton_protocol::{ClientMessage, PeerId};
use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::{mpsc, Notify};
use tokio::task::{AbortHandle, JoinSet};

use super::shared::{lock, PendingGuard, Shared};
use crate::direct::{self, Admitted, Identity};
use crate::path::{
    DeclineReason, Input, NatKind, Output, Path, PathMachine, PathOutcome, PUNCH_TIMEOUT,
};
use crate::{DirectPolicy, Error, Event};

/// Signals the reader may queue for the driver before it drops them.
pub(crate) const SIGNAL_QUEUE: usize = 64;

/// Datagrams received on direct connections and not yet read by
/// [`Session::recv`](super::Session::recv); more are dropped and counted.
pub(crate) const DIRECT_RECV_QUEUE: usize = 1024;

/// How often the driver samples the relay's RTT and each watcher its connection's.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// Incoming direct handshakes in progress at once; more are refused.
pub(crate) const MAX_HANDSHAKES: usize = 8;

/// How long an incoming direct handshake may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Direct connections the host keeps per member: the member dials each of the host's
/// candidates and closes all but the first to complete, so for a moment several may be up.
pub(crate) const MAX_CONNS_PER_PEER: usize = 4;

/// How long the default route's local address is reused before it is looked up again (a
/// laptop that changes networks gets a new one).
const PRIMARY_REFRESH: Duration = Duration::from_secs(10);

/// Events the watchers and the accept loop may queue for the driver (they wait when full).
const CONN_EVENT_QUEUE: usize = 64;

/// The close code of a direct connection given up normally.
const DIRECT_CLOSE: VarInt = VarInt::from_u32(0);

/// What a session's direct paths did, from [`Session::path_stats`](super::Session::path_stats).
/// Counts since the session started; all zero with [`DirectPolicy::Never`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PathStats {
    /// Direct-path attempts started (offers sent).
    pub attempts: u64,
    /// Direct connections established (dialled or accepted, after the fingerprint check).
    pub direct_established: u64,
    /// Times datagrams to a member went back from a direct path to the relay.
    pub fallbacks: u64,
    /// Datagrams sent on direct connections.
    pub datagrams_sent_direct: u64,
    /// Datagrams received on direct connections.
    pub datagrams_received_direct: u64,
    /// Datagrams received on direct connections and dropped because
    /// [`Session::recv`](super::Session::recv) was not called often enough
    /// (1024 were waiting).
    pub datagrams_dropped_direct: u64,
    /// Punch packets sent (SPEC section 17.3).
    pub punch_packets_sent: u64,
}

/// The counters behind [`PathStats`].
#[derive(Debug, Default)]
struct Counters {
    attempts: AtomicU64,
    direct_established: AtomicU64,
    fallbacks: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    punches: AtomicU64,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the reader tells the driver.
#[derive(Debug)]
pub(crate) enum Signal {
    /// Another member's offer (`ServerMessage::PathOffer`).
    Offer {
        from: PeerId,
        nat: WireNat,
        fingerprint: [u8; 32],
        candidates: Vec<SocketAddr>,
    },
    /// The member left the allocation (`PeerLeft`): its pair goes, direct connection and all.
    Left(PeerId),
    /// `ServerMessage::Punch`, received at `at`.
    Punch {
        peer: PeerId,
        delay: Duration,
        at: Instant,
    },
}

/// The direct-path state the session shares with the driver.
pub(crate) struct DirectShared {
    /// Members whose datagrams go direct, and the connection they take.
    routes: Mutex<HashMap<PeerId, quinn::Connection>>,
    /// Whether `routes` has any entry: the send path skips the lock while it has none.
    any_route: AtomicBool,
    counters: Counters,
    /// Reader → driver.
    signals: mpsc::Sender<Signal>,
    /// The member set, the role or the observed address changed.
    changed: Notify,
    /// Datagrams the watchers received, for [`Session::recv`](super::Session::recv).
    pub(super) received: tokio::sync::Mutex<mpsc::Receiver<(PeerId, Bytes)>>,
}

/// The driver's ends of the channels [`DirectShared`] holds the others of.
pub(crate) struct DriverEnds {
    signals: mpsc::Receiver<Signal>,
    received: mpsc::Sender<(PeerId, Bytes)>,
    conn_tx: mpsc::Sender<ConnEvent>,
    conn_rx: mpsc::Receiver<ConnEvent>,
}

impl DriverEnds {
    /// The accept loop's way to the driver.
    pub(crate) fn accepted(&self) -> mpsc::Sender<ConnEvent> {
        self.conn_tx.clone()
    }
}

impl DirectShared {
    /// The shared state and the driver's ends of its channels.
    pub(crate) fn new() -> (Self, DriverEnds) {
        let (signal_tx, signal_rx) = mpsc::channel(SIGNAL_QUEUE);
        let (received_tx, received_rx) = mpsc::channel(DIRECT_RECV_QUEUE);
        let (conn_tx, conn_rx) = mpsc::channel(CONN_EVENT_QUEUE);
        (
            DirectShared {
                routes: Mutex::new(HashMap::new()),
                any_route: AtomicBool::new(false),
                counters: Counters::default(),
                signals: signal_tx,
                changed: Notify::new(),
                received: tokio::sync::Mutex::new(received_rx),
            },
            DriverEnds {
                signals: signal_rx,
                received: received_tx,
                conn_tx,
                conn_rx,
            },
        )
    }

    /// Whether datagrams to `peer` go direct.
    pub(crate) fn has_route(&self, peer: PeerId) -> bool {
        self.any_route.load(Ordering::Acquire) && lock(&self.routes).contains_key(&peer)
    }

    /// Whether any member's path is direct (no lock taken).
    pub(crate) fn any_route(&self) -> bool {
        self.any_route.load(Ordering::Acquire)
    }

    fn set_route(&self, peer: PeerId, conn: Option<quinn::Connection>) {
        let mut routes = lock(&self.routes);
        match conn {
            Some(conn) => routes.insert(peer, conn),
            None => routes.remove(&peer),
        };
        self.any_route.store(!routes.is_empty(), Ordering::Release);
    }

    /// Sends `payload` bare (SPEC section 17.3) to `peer` if its path is direct; whether it was
    /// queued there. Takes the route lock once and clones neither the route map nor the
    /// connection: the payload is shared, not copied, across the members of a broadcast.
    pub(crate) fn send_direct(&self, peer: PeerId, payload: &Bytes) -> bool {
        if !self.any_route.load(Ordering::Acquire) {
            return false;
        }
        let sent = match lock(&self.routes).get(&peer) {
            Some(conn) => conn.send_datagram(payload.clone()).is_ok(),
            None => return false,
        };
        if sent {
            inc(&self.counters.sent);
        }
        sent
    }

    /// Closes every direct connection datagrams take (the driver closes the rest).
    pub(crate) fn close_routes(&self) {
        let mut routes = lock(&self.routes);
        for conn in routes.values() {
            conn.close(DIRECT_CLOSE, b"");
        }
        routes.clear();
        self.any_route.store(false, Ordering::Release);
    }

    /// The counters, as [`PathStats`].
    pub(crate) fn stats(&self) -> PathStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PathStats {
            attempts: get(&c.attempts),
            direct_established: get(&c.direct_established),
            fallbacks: get(&c.fallbacks),
            datagrams_sent_direct: get(&c.sent),
            datagrams_received_direct: get(&c.received),
            datagrams_dropped_direct: get(&c.dropped),
            punch_packets_sent: get(&c.punches),
        }
    }
}

impl Shared {
    /// Passes a reader's signal to the driver (dropped if the driver is behind, or when the
    /// session does not try direct paths).
    pub(super) fn path_signal(&self, signal: Signal) {
        if let Some(direct) = &self.direct {
            if let Err(e) = direct.signals.try_send(signal) {
                tracing::debug!(error = %e, "direct-path signal dropped");
            }
        }
    }

    /// Answers `from`'s offer on a session whose policy is
    /// [`DirectPolicy::Never`](crate::DirectPolicy::Never): no offer back (so no address is
    /// revealed), and a `PathReport` with `policy_never` for the relay's metrics, one per offer
    /// (the relay rate-limits offers and reports). Nobody waits for its `Done`; a full writer
    /// queue drops it.
    pub(super) fn report_policy_never(&self, from: PeerId, requests: &mpsc::Sender<Bytes>) {
        let Ok(request_id) = self.next_request_id(&mut lock(&self.pending)) else {
            return;
        };
        let reason = PathReason::PolicyNever;
        let report = ClientMessage::PathReport {
            request_id,
            peer: from,
            outcome: reason.outcome(),
            reason,
        };
        tracing::debug!(peer = %from, "direct-path offer declined by policy");
        if requests.try_send(report.to_frame()).is_err() {
            tracing::debug!("writer queue full; policy_never report dropped");
        }
    }

    /// Tells the driver the member set, the role or the observed address changed.
    pub(super) fn paths_changed(&self) {
        if let Some(direct) = &self.direct {
            direct.changed.notify_one();
        }
    }
}

/// What the driver needs besides the shared state.
pub(crate) struct DriverIo {
    /// The session's socket: its quinn endpoint (dials) and punch handle.
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) punch: UdpSocket,
    pub(crate) identity: Arc<Identity>,
    pub(crate) admitted: Admitted,
    /// The writer's queue.
    pub(crate) requests: mpsc::Sender<Bytes>,
    /// The event queue.
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) ends: DriverEnds,
    pub(crate) request_timeout: Duration,
}

/// What the watchers and the accept loop tell the driver.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// An incoming direct connection from `peer` completed its handshake.
    Accepted(PeerId, quinn::Connection),
    /// A sample of the connection `id` to `peer`: its RTT, and whether packets arrived since
    /// the last sample.
    Sample {
        peer: PeerId,
        id: usize,
        rtt: Duration,
        heard: bool,
    },
    /// The connection `id` to `peer` closed.
    Closed { peer: PeerId, id: usize },
}

/// A request's reply, for the driver.
enum Reply {
    Offer(PeerId, Result<(), Error>),
    Report,
}

/// A dial that ended: to `peer`, for attempt `attempt`.
struct Dialled {
    peer: PeerId,
    attempt: u32,
    conn: Option<quinn::Connection>,
}

/// One remote member's machine and connections.
struct Pair {
    machine: PathMachine,
    /// Direct connections, the one in use last.
    conns: Vec<quinn::Connection>,
    /// The attempt the dials in flight belong to (0: none dialled yet).
    dialled: u32,
    dials: Vec<AbortHandle>,
}

impl Pair {
    fn new() -> Self {
        Pair {
            machine: PathMachine::new(DirectPolicy::Prefer),
            conns: Vec::new(),
            dialled: 0,
            dials: Vec::new(),
        }
    }

    fn current(&self) -> Option<&quinn::Connection> {
        self.conns.last()
    }

    /// Closes every connection and dial.
    fn close_all(&mut self) {
        for conn in self.conns.drain(..) {
            conn.close(DIRECT_CLOSE, b"");
        }
        for dial in self.dials.drain(..) {
            dial.abort();
        }
    }
}

/// Accepts incoming direct connections on `endpoint` until it closes, and hands those whose
/// certificate an admitted member presented to the driver.
pub(crate) async fn run_accept_loop(
    endpoint: quinn::Endpoint,
    admitted: Admitted,
    tx: mpsc::Sender<ConnEvent>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { return };
                tracing::debug!(remote = %incoming.remote_address(), "incoming direct handshake");
                if handshakes.len() >= MAX_HANDSHAKES {
                    incoming.refuse();
                    continue;
                }
                handshakes.spawn(async move {
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await.ok()?.ok()
                });
            }
            Some(done) = handshakes.join_next() => {
                let Ok(Some(conn)) = done else { continue };
                match direct::peer_of(&conn, &admitted) {
                    Some(peer) => {
                        tracing::debug!(%peer, remote = %conn.remote_address(), "direct connection accepted");
                        if tx.send(ConnEvent::Accepted(peer, conn)).await.is_err() {
                            return;
                        }
                    }
                    None => conn.close(DIRECT_CLOSE, b""),
                }
            }
        }
    }
}

/// Watches one direct connection: delivers its datagrams, samples it, reports its end.
async fn watch(
    peer: PeerId,
    conn: quinn::Connection,
    shared: Arc<Shared>,
    received: mpsc::Sender<(PeerId, Bytes)>,
    events: mpsc::Sender<ConnEvent>,
) {
    let id = conn.stable_id();
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rx = conn.stats().udp_rx.datagrams;
    loop {
        tokio::select! {
            read = conn.read_datagram() => match read {
                Ok(datagram) => {
                    if let Some(d) = &shared.direct {
                        match received.try_send((peer, datagram)) {
                            Ok(()) => inc(&d.counters.received),
                            Err(_) => inc(&d.counters.dropped),
                        }
                    }
                }
                Err(_) => break,
            },
            _ = tick.tick() => {
                let rx = conn.stats().udp_rx.datagrams;
                let heard = rx > last_rx;
                last_rx = rx;
                let sample = ConnEvent::Sample { peer, id, rtt: conn.rtt(), heard };
                if events.send(sample).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = events.send(ConnEvent::Closed { peer, id }).await;
}

/// The driver's state.
struct Driver {
    shared: Arc<Shared>,
    io: DriverIo,
    pairs: HashMap<PeerId, Pair>,
    /// Our candidates as last given to the machines.
    local: Vec<SocketAddr>,
    /// Our NAT kind as last given to the machines.
    nat: NatKind,
    /// The generation of the relay connection the machines signalled through.
    generation: u64,
    /// This machine's address on its default route, and when it was looked up.
    primary: Option<(Instant, Option<IpAddr>)>,
    watchers: JoinSet<()>,
    dials: JoinSet<Dialled>,
    replies: JoinSet<Reply>,
}

/// Runs the direct paths of a session until it ends; then closes them.
pub(crate) async fn run_driver(shared: Arc<Shared>, io: DriverIo) {
    if shared.direct.is_none() {
        return;
    }
    let mut driver = Driver {
        shared,
        io,
        pairs: HashMap::new(),
        local: Vec::new(),
        nat: NatKind::Unknown,
        generation: 0,
        primary: None,
        watchers: JoinSet::new(),
        dials: JoinSet::new(),
        replies: JoinSet::new(),
    };
    driver.run().await;
    driver.shut_down();
}

impl Driver {
    fn d(&self) -> &DirectShared {
        // `run_driver` checked it is there.
        match &self.shared.direct {
            Some(d) => d,
            None => unreachable!("the driver runs only with direct paths"),
        }
    }

    async fn run(&mut self) {
        let ended = self.shared.clone();
        let ended = ended.ended();
        tokio::pin!(ended);
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.reconcile(Instant::now()).await;
        loop {
            let deadline = self
                .pairs
                .values()
                .filter_map(|p| p.machine.poll_timeout())
                .min();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            let direct = self.shared.clone();
            let Some(d) = &direct.direct else { return };
            tokio::select! {
                () = &mut ended => return,
                () = d.changed.notified() => self.reconcile(Instant::now()).await,
                // Offers wait for the NAT kind: they go as soon as it is known.
                () = direct.nat.measured() => self.reconcile(Instant::now()).await,
                Some(signal) = self.io.ends.signals.recv() => self.signal(signal).await,
                Some(event) = self.io.ends.conn_rx.recv() => self.conn_event(event).await,
                Some(Ok(dialled)) = self.dials.join_next() => self.dialled(dialled).await,
                Some(Ok(reply)) = self.replies.join_next() => self.reply(reply).await,
                Some(_) = self.watchers.join_next() => {}
                _ = tick.tick() => {
                    self.relay_changed(Instant::now()).await;
                    self.reconcile(Instant::now()).await;
                    let rtt = self.shared.conn().rtt();
                    self.feed_all(Instant::now(), Input::RelayRtt { rtt }).await;
                }
                () = sleep => {
                    let now = Instant::now();
                    let due: Vec<PeerId> = self
                        .pairs
                        .iter()
                        .filter(|(_, p)| p.machine.poll_timeout().is_some_and(|t| t <= now))
                        .map(|(peer, _)| *peer)
                        .collect();
                    for peer in due {
                        if let Some(pair) = self.pairs.get_mut(&peer) {
                            pair.machine.handle_timeout(now);
                        }
                        self.drain(peer).await;
                    }
                }
            }
        }
    }

    /// Closes every direct connection: the session ended.
    fn shut_down(&mut self) {
        for pair in self.pairs.values_mut() {
            pair.close_all();
        }
        self.d().close_routes();
    }

    /// The members a direct path may lead to: every other member on the host, the host on a
    /// peer, nobody while the host is being replaced.
    fn wanted(&self) -> Vec<PeerId> {
        let local = self.shared.local_peer;
        match lock(&self.shared.role).host {
            None => Vec::new(),
            Some(host) if host == local => lock(&self.shared.members)
                .iter()
                .copied()
                .filter(|p| *p != local)
                .collect(),
            Some(host) => vec![host],
        }
    }

    /// Brings the machines in line with the member set and role, and our candidates.
    ///
    /// On the host, a pair whose direct connection is up stays while its member is missing
    /// from the member set: right after the host resumed through another relay, the members
    /// that have not rejoined there yet are missing for a moment, and their direct paths carry
    /// the game meanwhile. A member that left goes at once ([`Signal::Left`]); one that never
    /// comes back loses its direct connection, and then its pair.
    async fn reconcile(&mut self, now: Instant) {
        let wanted = self.wanted();
        let host = self.shared.is_host();
        let gone: Vec<PeerId> = self
            .pairs
            .iter()
            .filter(|(p, pair)| {
                let kept_while_up = host && !pair.conns.is_empty();
                !wanted.contains(p) && !kept_while_up
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in gone {
            self.remove(peer);
        }
        // While the NAT kind is being measured the offers wait (at most the probe's timeout,
        // `nat.rs`): no candidates until it is known, then all of them with it.
        let nat = self.shared.nat.for_offers(now);
        let local = match nat {
            Some(_) => self.candidates(),
            None => Vec::new(),
        };
        let nat = nat.map_or(self.nat, nat_kind);
        let changed = local != self.local || nat != self.nat;
        self.local = local;
        self.nat = nat;
        for peer in wanted {
            let new = !self.pairs.contains_key(&peer);
            if new {
                tracing::debug!(%peer, "direct path: new pair");
                let mut pair = Pair::new();
                let rtt = self.shared.conn().rtt();
                pair.machine.handle(now, Input::RelayRtt { rtt });
                self.pairs.insert(peer, pair);
            }
            if (new || changed) && !self.local.is_empty() {
                let addrs = self.local.clone();
                self.feed(
                    now,
                    peer,
                    Input::LocalCandidates {
                        addrs,
                        nat: self.nat,
                    },
                )
                .await;
            }
        }
    }

    /// After a resume or a move to another relay (a new connection generation), starts the
    /// pairs without a direct path over: the new relay has none of the old one's offers, and
    /// may allow what the old one refused. Direct paths that are up stay.
    async fn relay_changed(&mut self, now: Instant) {
        let generation = self.shared.link().generation;
        if generation == std::mem::replace(&mut self.generation, generation) {
            return;
        }
        let restart: Vec<PeerId> = self
            .pairs
            .iter()
            .filter(|(_, p)| p.conns.is_empty())
            .map(|(peer, _)| *peer)
            .collect();
        for peer in restart {
            tracing::debug!(%peer, generation, "new relay connection: direct path attempts start over");
            self.feed(now, peer, Input::Reset).await;
        }
    }

    /// Forgets `peer` (it left, or is no longer the host): its connections close.
    fn remove(&mut self, peer: PeerId) {
        let Some(mut pair) = self.pairs.remove(&peer) else {
            return;
        };
        tracing::debug!(%peer, "direct path: pair removed");
        pair.close_all();
        self.io.admitted.forget(peer);
        if self.d().has_route(peer) {
            self.d().set_route(peer, None);
            let rtt = self.shared.conn().rtt();
            self.shared.emit(
                &self.io.events,
                Event::PathChanged {
                    peer,
                    path: Path::Relayed,
                    rtt,
                },
            );
        }
    }

    /// Our candidates now: see [`candidates`].
    fn candidates(&mut self) -> Vec<SocketAddr> {
        let Ok(local) = self.io.endpoint.local_addr() else {
            return Vec::new();
        };
        let relay = self.shared.conn().remote_address();
        let observed = *lock(&self.shared.observed);
        let primary = if relay.ip().is_loopback() {
            None
        } else {
            let now = Instant::now();
            match self.primary {
                Some((at, ip)) if now.duration_since(at) < PRIMARY_REFRESH => ip,
                _ => {
                    let ip = primary_ip(relay.is_ipv4());
                    self.primary = Some((now, ip));
                    ip
                }
            }
        };
        candidates(observed, local.port(), relay, primary)
    }

    async fn signal(&mut self, signal: Signal) {
        let now = Instant::now();
        match signal {
            Signal::Offer {
                from,
                nat,
                fingerprint,
                candidates,
            } => {
                // The offer may come right after the membership change that makes the pair.
                self.reconcile(now).await;
                if !self.pairs.contains_key(&from) {
                    tracing::debug!(peer = %from, "ignoring an offer from a member with no pair");
                    return;
                }
                self.io.admitted.admit(fingerprint, from);
                self.feed(
                    now,
                    from,
                    Input::RemoteOffer {
                        candidates,
                        nat: nat_kind(nat),
                        fingerprint,
                    },
                )
                .await;
            }
            Signal::Left(peer) => self.remove(peer),
            Signal::Punch { peer, delay, at } => {
                self.feed(now, peer, Input::PunchAt { at: at + delay })
                    .await;
            }
        }
    }

    async fn conn_event(&mut self, event: ConnEvent) {
        let now = Instant::now();
        match event {
            ConnEvent::Accepted(peer, conn) => {
                let ok = self.shared.is_host() && self.pairs.contains_key(&peer);
                if !ok {
                    conn.close(DIRECT_CLOSE, b"");
                    return;
                }
                self.install(now, peer, conn).await;
            }
            ConnEvent::Sample {
                peer,
                id,
                rtt,
                heard,
            } => {
                let current = self
                    .pairs
                    .get(&peer)
                    .and_then(Pair::current)
                    .is_some_and(|c| c.stable_id() == id);
                if current {
                    self.feed(now, peer, Input::DirectRtt { rtt }).await;
                    if heard {
                        self.feed(now, peer, Input::DirectHeard).await;
                    }
                }
            }
            ConnEvent::Closed { peer, id } => {
                let Some(pair) = self.pairs.get_mut(&peer) else {
                    return;
                };
                let Some(i) = pair.conns.iter().position(|c| c.stable_id() == id) else {
                    return;
                };
                let was_current = i + 1 == pair.conns.len();
                pair.conns.remove(i);
                if !was_current {
                    return;
                }
                match pair.current().cloned() {
                    // Another connection to the same member is still up: it takes over.
                    Some(next) => {
                        let input = Input::DirectEstablished {
                            addr: next.remote_address(),
                            rtt: next.rtt(),
                        };
                        self.feed(now, peer, input).await;
                        self.update_route(peer);
                    }
                    None => {
                        tracing::debug!(%peer, "direct connection closed");
                        self.feed(now, peer, Input::DirectClosed).await;
                        self.update_route(peer);
                    }
                }
            }
        }
    }

    /// A dial ended: the first connection of the current attempt wins, any other is closed.
    async fn dialled(&mut self, dialled: Dialled) {
        let Some(conn) = dialled.conn else {
            // Every dial of the attempt failed (the host refused the handshake, e.g. before it
            // had taken in this member's offer, or a NAT dropped it): the next punch round of
            // the same attempt dials again, so one early refusal does not cost the attempt.
            if let Some(pair) = self.pairs.get_mut(&dialled.peer) {
                if pair.dialled == dialled.attempt
                    && pair.conns.is_empty()
                    && pair.dials.iter().all(AbortHandle::is_finished)
                {
                    pair.dialled = 0;
                }
            }
            return;
        };
        let wins = !self.shared.is_host()
            && self.pairs.get(&dialled.peer).is_some_and(|p| {
                p.conns.is_empty()
                    && p.dialled == dialled.attempt
                    && p.machine.attempts() == dialled.attempt
            });
        if !wins {
            conn.close(DIRECT_CLOSE, b"");
            return;
        }
        if let Some(pair) = self.pairs.get_mut(&dialled.peer) {
            // The other dials of this attempt are not needed any more.
            for dial in pair.dials.drain(..) {
                dial.abort();
            }
        }
        tracing::debug!(peer = %dialled.peer, remote = %conn.remote_address(), "direct connection dialled");
        self.install(Instant::now(), dialled.peer, conn).await;
    }

    /// Takes `conn`, an authenticated direct connection to `peer`, into use.
    async fn install(&mut self, now: Instant, peer: PeerId, conn: quinn::Connection) {
        let Some(pair) = self.pairs.get_mut(&peer) else {
            conn.close(DIRECT_CLOSE, b"");
            return;
        };
        if pair.conns.len() >= MAX_CONNS_PER_PEER {
            let oldest = pair.conns.remove(0);
            oldest.close(DIRECT_CLOSE, b"");
        }
        pair.conns.push(conn.clone());
        inc(&self.d().counters.direct_established);
        self.watchers.spawn(watch(
            peer,
            conn.clone(),
            self.shared.clone(),
            self.io.ends.received.clone(),
            self.io.ends.conn_tx.clone(),
        ));
        let input = Input::DirectEstablished {
            addr: conn.remote_address(),
            rtt: conn.rtt(),
        };
        self.feed(now, peer, input).await;
        self.update_route(peer);
    }

    async fn reply(&mut self, reply: Reply) {
        match reply {
            Reply::Offer(peer, Err(e)) => match decline_reason(&e) {
                Some(reason) => {
                    tracing::debug!(%peer, error = %e, "the relay refused our direct-path offer");
                    self.feed(Instant::now(), peer, Input::Declined { reason })
                        .await;
                }
                None => tracing::debug!(%peer, error = %e, "direct-path offer not answered"),
            },
            Reply::Offer(_, Ok(())) | Reply::Report => {}
        }
    }

    async fn feed_all(&mut self, now: Instant, input: Input) {
        let peers: Vec<PeerId> = self.pairs.keys().copied().collect();
        for peer in peers {
            self.feed(now, peer, input.clone()).await;
        }
    }

    /// Gives `input` to `peer`'s machine and carries out what it asks.
    async fn feed(&mut self, now: Instant, peer: PeerId, input: Input) {
        let Some(pair) = self.pairs.get_mut(&peer) else {
            return;
        };
        pair.machine.handle(now, input);
        self.drain(peer).await;
    }

    /// Carries out the outputs of `peer`'s machine.
    async fn drain(&mut self, peer: PeerId) {
        loop {
            let Some(pair) = self.pairs.get_mut(&peer) else {
                return;
            };
            let Some(output) = pair.machine.poll_output() else {
                return;
            };
            match output {
                Output::SendOffer { candidates, nat } => {
                    inc(&self.d().counters.attempts);
                    let fingerprint = self.io.identity.fingerprint();
                    let make = |request_id| ClientMessage::PathOffer {
                        request_id,
                        peer,
                        nat: wire_nat(nat),
                        fingerprint,
                        candidates,
                    };
                    self.request(make, move |r| Reply::Offer(peer, r)).await;
                }
                Output::Punch { targets } => self.punch(peer, targets),
                Output::Switch(path) => {
                    self.update_route(peer);
                    if path == Path::Relayed {
                        inc(&self.d().counters.fallbacks);
                    }
                    let rtt = self
                        .pairs
                        .get(&peer)
                        .and_then(|p| p.machine.rtt())
                        .unwrap_or_else(|| self.shared.conn().rtt());
                    let addr = self.pairs.get(&peer).and_then(|p| p.machine.direct_addr());
                    tracing::info!(%peer, %path, ?rtt, ?addr, "datagrams take a new path");
                    self.shared
                        .emit(&self.io.events, Event::PathChanged { peer, path, rtt });
                }
                Output::CloseDirect => {
                    pair.close_all();
                    self.update_route(peer);
                }
                Output::Outcome(outcome) => {
                    let reason = path_reason(outcome);
                    tracing::debug!(%peer, %reason, "direct-path outcome");
                    let make = |request_id| ClientMessage::PathReport {
                        request_id,
                        peer,
                        outcome: reason.outcome(),
                        reason,
                    };
                    self.request(make, |_| Reply::Report).await;
                }
            }
        }
    }

    /// Sends punch packets to `targets`; on a peer, dials the host there on the first punch
    /// of an attempt, assuming the relayed path's RTT until the handshake measures the direct
    /// one ([`direct::dial_initial_rtt`]).
    fn punch(&mut self, peer: PeerId, targets: Vec<SocketAddr>) {
        for target in &targets {
            match direct::send_punch(&self.io.punch, *target) {
                Ok(()) => inc(&self.d().counters.punches),
                Err(e) => tracing::debug!(%target, error = %e, "punch not sent"),
            }
        }
        tracing::debug!(%peer, ?targets, "punch sent");
        if self.shared.is_host() {
            return;
        }
        let Some(pair) = self.pairs.get_mut(&peer) else {
            return;
        };
        let attempt = pair.machine.attempts();
        let Some(expected) = pair.machine.remote_fingerprint() else {
            return;
        };
        if pair.dialled == attempt || !pair.conns.is_empty() {
            return;
        }
        pair.dialled = attempt;
        for dial in pair.dials.drain(..) {
            dial.abort();
        }
        // The host punches at this same instant: an Initial that reaches its NAT first is
        // dropped, and must go again within a few relayed round trips, not QUIC's default
        // second (see `dial_initial_rtt`).
        let initial_rtt = direct::dial_initial_rtt(pair.machine.relayed_rtt());
        for target in targets {
            let dialled = direct::dial(
                &self.io.endpoint,
                &self.io.identity,
                expected,
                target,
                initial_rtt,
            );
            match dialled {
                Ok(connecting) => {
                    tracing::debug!(%peer, %target, attempt, ?initial_rtt, "direct dial started");
                    let handle = self.dials.spawn(async move {
                        let started = Instant::now();
                        let conn = match tokio::time::timeout(PUNCH_TIMEOUT, connecting).await {
                            Ok(Ok(conn)) => {
                                let stats = conn.stats();
                                tracing::debug!(
                                    %peer,
                                    %target,
                                    took = ?started.elapsed(),
                                    rtt = ?conn.rtt(),
                                    datagrams_sent = stats.udp_tx.datagrams,
                                    lost_packets = stats.path.lost_packets,
                                    "direct dial completed"
                                );
                                Some(conn)
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%target, took = ?started.elapsed(), error = %e, "direct dial failed");
                                None
                            }
                            Err(_) => None,
                        };
                        Dialled {
                            peer,
                            attempt,
                            conn,
                        }
                    });
                    pair.dials.push(handle);
                }
                Err(e) => tracing::debug!(%target, error = %e, "cannot dial directly"),
            }
        }
    }

    /// Points `peer`'s route at its current connection while its path is direct.
    fn update_route(&self, peer: PeerId) {
        let conn = self
            .pairs
            .get(&peer)
            .filter(|p| p.machine.path() == Path::Direct)
            .and_then(Pair::current)
            .cloned();
        self.d().set_route(peer, conn);
    }

    /// Sends a request through the writer; its reply comes back to the driver as `reply`.
    async fn request(
        &mut self,
        make: impl FnOnce(u32) -> ClientMessage,
        reply: impl FnOnce(Result<(), Error>) -> Reply + Send + 'static,
    ) {
        let (id, rx) = match self.shared.register() {
            Ok(registered) => registered,
            Err(e) => {
                tracing::debug!(error = %e, "no direct-path request on an ended session");
                return;
            }
        };
        if let Err(e) = self.shared.send_request(&self.io.requests, make(id)).await {
            drop(PendingGuard {
                shared: &self.shared,
                id,
            });
            tracing::debug!(error = %e, "direct-path request not sent");
            return;
        }
        let shared = self.shared.clone();
        let timeout = self.io.request_timeout;
        self.replies.spawn(async move {
            let _pending = PendingGuard {
                shared: &shared,
                id,
            };
            let result = match shared.await_reply(rx, timeout).await {
                Ok(result) => result,
                Err(e) => Err(e),
            };
            reply(result)
        });
    }
}

/// Our direct-path candidates (SPEC section 17.5): the address the relay observes (the one
/// socket carries the relay connection and direct paths, so that is the NAT mapping punched)
/// and `primary`, this host's address on its default route, with the socket's `port`. With the
/// relay on loopback everything runs on this machine: the candidates are the loopback
/// addresses only. Otherwise loopback addresses are left out (another machine cannot reach
/// them). Only the relay's address family (the socket's), at most
/// [`MAX_PATH_CANDIDATES`], no duplicate, none invalid.
pub(crate) fn candidates(
    observed: Option<SocketAddr>,
    port: u16,
    relay: SocketAddr,
    primary: Option<IpAddr>,
) -> Vec<SocketAddr> {
    let loopback = relay.ip().is_loopback();
    let mut all: Vec<SocketAddr> = Vec::new();
    all.extend(observed);
    if loopback {
        let ip = if relay.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        };
        all.push(SocketAddr::new(ip, port));
    } else {
        all.extend(primary.map(|ip| SocketAddr::new(ip, port)));
    }
    let mut out = Vec::new();
    for addr in all {
        let keep = baton_protocol::path::is_valid_candidate(&addr)
            && addr.is_ipv4() == relay.is_ipv4()
            && addr.ip().is_loopback() == loopback
            && !out.contains(&addr);
        if keep && out.len() < MAX_PATH_CANDIDATES {
            out.push(addr);
        }
    }
    out
}

/// This host's address on its default route for the family (`ipv4` or not): the local
/// address the routing table picks for a connected UDP socket (no packet is sent; the
/// destination is a documentation address). The standard library lists no interfaces; the
/// default route's address is the one another machine on the LAN reaches, and the relay's
/// observation covers the NAT's public side.
fn primary_ip(ipv4: bool) -> Option<IpAddr> {
    let (bind, probe): (SocketAddr, SocketAddr) = if ipv4 {
        (
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::from(([192, 0, 2, 1], 9)),
        )
    } else {
        (
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9)),
        )
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(probe).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The machine's reading of a refused offer: `None` when the offer was not refused (no reply
/// in time, the session ended), which the machine's own timeout covers.
pub(crate) fn decline_reason(err: &Error) -> Option<DeclineReason> {
    match err {
        Error::DirectDisabled => Some(DeclineReason::Disabled),
        Error::RateLimited { retry_after } => Some(DeclineReason::RateLimited {
            retry_after: *retry_after,
        }),
        Error::Migrating { .. } => Some(DeclineReason::Migrating),
        Error::RequestTimedOut { .. } | Error::Disconnected(_) => None,
        _ => Some(DeclineReason::NotAllowed),
    }
}

/// The reason a `PathReport` carries for `outcome`.
pub(crate) fn path_reason(outcome: PathOutcome) -> PathReason {
    match outcome {
        PathOutcome::Direct => PathReason::Direct,
        PathOutcome::PunchTimedOut => PathReason::PunchTimedOut,
        PathOutcome::BothEndpointDependent => PathReason::BothEndpointDependent,
        PathOutcome::PolicyNever => PathReason::PolicyNever,
        PathOutcome::RelayDeclined => PathReason::RelayDeclined,
        PathOutcome::NoCandidates => PathReason::NoCandidates,
        PathOutcome::DirectLost => PathReason::DirectLost,
        PathOutcome::RelayFaster => PathReason::RelayFaster,
    }
}

fn wire_nat(nat: NatKind) -> WireNat {
    match nat {
        NatKind::Unknown => WireNat::Unknown,
        NatKind::EndpointIndependent => WireNat::EndpointIndependent,
        NatKind::EndpointDependent => WireNat::EndpointDependent,
    }
}

fn nat_kind(nat: WireNat) -> NatKind {
    match nat {
        WireNat::Unknown => NatKind::Unknown,
        WireNat::EndpointIndependent => NatKind::EndpointIndependent,
        WireNat::EndpointDependent => NatKind::EndpointDependent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn candidates_on_a_loopback_relay_are_loopback_only() {
        let relay = addr("127.0.0.1:7700");
        assert_eq!(
            candidates(Some(addr("127.0.0.1:5000")), 5000, relay, None),
            [addr("127.0.0.1:5000")]
        );
        // Not told yet: the loopback address with the socket's port.
        assert_eq!(
            candidates(None, 5000, relay, None),
            [addr("127.0.0.1:5000")]
        );
        // A LAN address is never offered for a loopback relay.
        assert_eq!(
            candidates(None, 5000, relay, Some("192.168.1.20".parse().unwrap())),
            [addr("127.0.0.1:5000")]
        );
        let relay6 = addr("[::1]:7700");
        assert_eq!(candidates(None, 5000, relay6, None), [addr("[::1]:5000")]);
    }

    #[test]
    fn candidates_on_a_remote_relay_are_observed_and_primary() {
        let relay = addr("203.0.113.7:7700");
        let lan = Some("192.168.1.20".parse().unwrap());
        assert_eq!(
            candidates(Some(addr("198.51.100.4:40000")), 5000, relay, lan),
            [addr("198.51.100.4:40000"), addr("192.168.1.20:5000")]
        );
        // No NAT: the observed address is the primary one; no duplicate.
        assert_eq!(
            candidates(Some(addr("192.168.1.20:5000")), 5000, relay, lan),
            [addr("192.168.1.20:5000")]
        );
        // Loopback, unspecified and the other family are left out.
        assert!(candidates(
            Some(addr("127.0.0.1:5000")),
            5000,
            relay,
            Some("0.0.0.0".parse().unwrap())
        )
        .is_empty());
        assert!(candidates(None, 5000, relay, Some("2001:db8::1".parse().unwrap())).is_empty());
        assert!(candidates(Some(addr("198.51.100.4:0")), 0, relay, lan).is_empty());
    }

    #[test]
    fn refusals_map_to_decline_reasons() {
        use crate::DisconnectReason;
        assert_eq!(
            decline_reason(&Error::DirectDisabled),
            Some(DeclineReason::Disabled)
        );
        let retry_after = Duration::from_millis(2500);
        assert_eq!(
            decline_reason(&Error::RateLimited { retry_after }),
            Some(DeclineReason::RateLimited { retry_after })
        );
        assert_eq!(
            decline_reason(&Error::Migrating { retry_after }),
            Some(DeclineReason::Migrating)
        );
        assert_eq!(
            decline_reason(&Error::UnknownPeer(PeerId(3))),
            Some(DeclineReason::NotAllowed)
        );
        assert_eq!(
            decline_reason(&Error::NotHost),
            Some(DeclineReason::NotAllowed)
        );
        // Not refused: the machine's own timeout covers it.
        assert_eq!(
            decline_reason(&Error::RequestTimedOut {
                timeout: Duration::from_secs(5)
            }),
            None
        );
        assert_eq!(
            decline_reason(&Error::Disconnected(DisconnectReason::ClosedLocally)),
            None
        );
        // The refusal the relay sends for each reason, decoded as the SDK does.
        use baton_protocol::ErrorCode;
        assert_eq!(
            decline_reason(&crate::error::refusal(ErrorCode::DirectDisabled, 0)),
            Some(DeclineReason::Disabled)
        );
        assert_eq!(
            decline_reason(&crate::error::refusal(ErrorCode::RateLimited, 2500)),
            Some(DeclineReason::RateLimited { retry_after })
        );
    }

    #[test]
    fn outcomes_map_to_report_reasons() {
        use baton_protocol::path::PathOutcome as Wire;
        let all = [
            (PathOutcome::Direct, PathReason::Direct),
            (PathOutcome::PunchTimedOut, PathReason::PunchTimedOut),
            (
                PathOutcome::BothEndpointDependent,
                PathReason::BothEndpointDependent,
            ),
            (PathOutcome::PolicyNever, PathReason::PolicyNever),
            (PathOutcome::RelayDeclined, PathReason::RelayDeclined),
            (PathOutcome::NoCandidates, PathReason::NoCandidates),
            (PathOutcome::DirectLost, PathReason::DirectLost),
            (PathOutcome::RelayFaster, PathReason::RelayFaster),
        ];
        for (outcome, reason) in all {
            assert_eq!(path_reason(outcome), reason);
            let wire = if outcome == PathOutcome::Direct {
                Wire::Direct
            } else {
                Wire::Relayed
            };
            assert_eq!(path_reason(outcome).outcome(), wire);
        }
        assert_eq!(all.len(), PathReason::ALL.len());
        for nat in WireNat::ALL {
            assert_eq!(wire_nat(nat_kind(*nat)), *nat);
        }
    }
}
