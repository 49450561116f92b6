//! An in-process network simulator: packet loss, delay and jitter on a session's UDP socket,
//! for testing a game under bad networks without a lossy network (like GameNetworkingSockets'
//! `FakePacketLoss`/`FakePacketLag` or Unity Transport's simulator pipeline).
//!
//! [`NetworkSimulator`] describes the conditions;
//! [`ClientConfig::network_simulator`](crate::ClientConfig::network_simulator) turns it on.
//! The session's socket is then wrapped (a quinn [`AsyncUdpSocket`] around the runtime's own):
//! every datagram sent is lost with the send direction's probability, or held and sent once
//! its delay (fixed delay plus a uniform jitter) has passed, by a background task; every
//! datagram received is likewise lost or held until due before QUIC sees it. Jitter can
//! reorder datagrams, as a real network does. Each direction holds at most
//! [`NetworkSimulator::queue_limit`] datagrams; more are dropped and counted
//! ([`LinkStats::overflowed`]). While simulating, the socket reports one datagram per send and
//! receive call (no GSO/GRO batches). Without a simulator the wrapper is not installed at all.
//!
//! It applies to everything the session's QUIC endpoint sends and receives: the relay
//! connection and the direct host–peer paths alike. The raw hole-punching packets are sent on
//! a duplicate handle of the socket and bypass it (punches are repeated anyway; the QUIC
//! handshakes and traffic that follow them are simulated).

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::Error;

/// Default of [`NetworkSimulator::queue_limit`]: datagrams held per direction.
pub const DEFAULT_QUEUE_LIMIT: usize = 1024;

/// Longest delay or jitter [`NetworkSimulator`] accepts (a typo guard: no real network holds a
/// datagram this long).
pub const MAX_SIMULATED_DELAY: Duration = Duration::from_secs(10);

/// Datagrams the receive side takes from the socket per poll before it hands back what is due.
const RECV_BATCH: usize = 64;

/// Attempts at sending one due datagram on a full socket buffer before it is dropped.
const SEND_ATTEMPTS: usize = 3;

/// The conditions of one direction of a simulated link.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkConditions {
    /// Probability in `0.0..=1.0` that a datagram is lost.
    pub loss: f64,
    /// Fixed delay added to every datagram that is not lost.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` for each datagram, on top of
    /// [`delay`](LinkConditions::delay) (so `delay` is the least a datagram is held). Datagrams
    /// sent less than `jitter` apart can be reordered.
    pub jitter: Duration,
}

impl LinkConditions {
    /// Conditions with loss probability `loss` (`0.0..=1.0`), fixed `delay` and uniform `jitter`.
    pub fn new(loss: f64, delay: Duration, jitter: Duration) -> Self {
        Self {
            loss,
            delay,
            jitter,
        }
    }

    /// Whether these conditions change nothing (no loss, no delay, no jitter).
    pub fn is_clear(&self) -> bool {
        self.loss == 0.0 && self.delay.is_zero() && self.jitter.is_zero()
    }

    fn validate(&self, direction: &str) -> Result<(), Error> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(Error::Config(format!(
                "network simulator: {direction} loss {} is not a probability in 0..=1",
                self.loss
            )));
        }
        if self.delay > MAX_SIMULATED_DELAY || self.jitter > MAX_SIMULATED_DELAY {
            return Err(Error::Config(format!(
                "network simulator: {direction} delay and jitter must be at most {MAX_SIMULATED_DELAY:?}"
            )));
        }
        Ok(())
    }
}

/// Simulated bad network conditions for a session's socket, for testing games: loss, delay and
/// jitter per direction (what the session sends, what it receives). See
/// [`ClientConfig::network_simulator`](crate::ClientConfig::network_simulator).
///
/// It also parses from text (for command lines and environment variables): comma-separated
/// `key=value` settings, `loss=5%` (or `loss=0.05`), `delay=50ms`, `jitter=10ms` for both
/// directions, `send-loss`, `send-delay`, `send-jitter`, `recv-loss`, `recv-delay`,
/// `recv-jitter` for one, `seed=42` and `queue=1024`. Durations take `us`, `ms` or `s`.
///
/// ```
/// use std::time::Duration;
/// use baton_client::{LinkConditions, NetworkSimulator};
///
/// let sim: NetworkSimulator = "loss=5%,delay=50ms,jitter=10ms,seed=7".parse().unwrap();
/// let same = NetworkSimulator::new()
///     .both(LinkConditions::new(0.05, Duration::from_millis(50), Duration::from_millis(10)))
///     .seed(7);
/// assert_eq!(sim.send_conditions(), same.send_conditions());
/// assert_eq!(sim.to_string(), "loss=5%,delay=50ms,jitter=10ms,seed=7");
/// ```
///
/// Clones share their [`stats`](NetworkSimulator::stats): a configuration's simulator counts
/// for every session made with it.
#[derive(Debug, Clone)]
pub struct NetworkSimulator {
    send: LinkConditions,
    receive: LinkConditions,
    seed: Option<u64>,
    queue_limit: usize,
    counters: Arc<Counters>,
}

impl Default for NetworkSimulator {
    fn default() -> Self {
        Self::new()
    }
}

impl NetworkSimulator {
    /// A simulator with clear conditions both ways (set them with the other methods), random
    /// decisions seeded from the operating system, and [`DEFAULT_QUEUE_LIMIT`].
    pub fn new() -> Self {
        Self {
            send: LinkConditions::default(),
            receive: LinkConditions::default(),
            seed: None,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            counters: Arc::default(),
        }
    }

    /// The same conditions for what the session sends and what it receives (a lossy,
    /// slow link both ways: each direction gets its own loss and delay, so a round trip is
    /// delayed twice).
    pub fn both(self, conditions: LinkConditions) -> Self {
        self.send(conditions).receive(conditions)
    }

    /// The conditions of what the session sends.
    pub fn send(mut self, conditions: LinkConditions) -> Self {
        self.send = conditions;
        self
    }

    /// The conditions of what the session receives.
    pub fn receive(mut self, conditions: LinkConditions) -> Self {
        self.receive = conditions;
        self
    }

    /// Seeds the random decisions (which datagram is lost, each one's jitter), for
    /// reproducible runs. Every session made with the configuration starts from the same
    /// seed. Default: a seed from the operating system per session.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Most datagrams held per direction (default [`DEFAULT_QUEUE_LIMIT`]); a datagram that
    /// finds the queue full is dropped and counted in [`LinkStats::overflowed`]. Must be
    /// non-zero.
    pub fn queue_limit(mut self, datagrams: usize) -> Self {
        self.queue_limit = datagrams;
        self
    }

    /// The conditions of what the session sends.
    pub fn send_conditions(&self) -> LinkConditions {
        self.send
    }

    /// The conditions of what the session receives.
    pub fn receive_conditions(&self) -> LinkConditions {
        self.receive
    }

    /// What the simulator did so far, over every session made with this simulator (or a clone).
    pub fn stats(&self) -> NetworkSimulatorStats {
        self.counters.snapshot()
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] for a loss outside `0..=1`, a delay or jitter over
    /// [`MAX_SIMULATED_DELAY`], or a zero queue limit.
    pub fn validate(&self) -> Result<(), Error> {
        self.send.validate("send")?;
        self.receive.validate("receive")?;
        if self.queue_limit == 0 {
            return Err(Error::Config(
                "network simulator: queue limit must be non-zero".into(),
            ));
        }
        Ok(())
    }
}

/// What a [`NetworkSimulator`] did, per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetworkSimulatorStats {
    /// What the sessions sent.
    pub sent: LinkStats,
    /// What the sessions received.
    pub received: LinkStats,
}

/// Counts of one direction of a [`NetworkSimulator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Datagrams let through (after their delay).
    pub passed: u64,
    /// Datagrams dropped as simulated loss.
    pub lost: u64,
    /// Datagrams dropped because the direction's queue was full (or, sending, because the
    /// socket kept refusing them; receiving, because they did not fit QUIC's buffer).
    pub overflowed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent_passed: AtomicU64,
    sent_lost: AtomicU64,
    sent_overflowed: AtomicU64,
    received_passed: AtomicU64,
    received_lost: AtomicU64,
    received_overflowed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> NetworkSimulatorStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetworkSimulatorStats {
            sent: LinkStats {
                passed: get(&self.sent_passed),
                lost: get(&self.sent_lost),
                overflowed: get(&self.sent_overflowed),
            },
            received: LinkStats {
                passed: get(&self.received_passed),
                lost: get(&self.received_lost),
                overflowed: get(&self.received_overflowed),
            },
        }
    }

    fn count(&self, sending: bool, outcome: Offer) {
        let counter = match (sending, outcome) {
            (_, Offer::Held) => return,
            (true, Offer::Lost) => &self.sent_lost,
            (true, Offer::Overflowed) => &self.sent_overflowed,
            (false, Offer::Lost) => &self.received_lost,
            (false, Offer::Overflowed) => &self.received_overflowed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Display for NetworkSimulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut push = |prefix: &str, c: &LinkConditions| {
            // Rounded to a millionth of a percent: 0.07 * 100 is 7.000000000000001.
            let percent = (c.loss * 100.0 * 1e6).round() / 1e6;
            parts.push(format!("{prefix}loss={percent}%"));
            parts.push(format!("{prefix}delay={}", format_duration(c.delay)));
            parts.push(format!("{prefix}jitter={}", format_duration(c.jitter)));
        };
        if self.send == self.receive {
            push("", &self.send);
        } else {
            push("send-", &self.send);
            push("recv-", &self.receive);
        }
        if let Some(seed) = self.seed {
            parts.push(format!("seed={seed}"));
        }
        if self.queue_limit != DEFAULT_QUEUE_LIMIT {
            parts.push(format!("queue={}", self.queue_limit));
        }
        f.write_str(&parts.join(","))
    }
}

fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit): (&str, fn(u64) -> Duration) = if let Some(n) = text.strip_suffix("us") {
        (n, Duration::from_micros)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, Duration::from_millis)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, Duration::from_secs)
    } else if text == "0" {
        ("0", Duration::from_millis)
    } else {
        return None;
    };
    number.parse().ok().map(unit)
}

fn parse_loss(text: &str) -> Option<f64> {
    let loss = match text.strip_suffix('%') {
        Some(percent) => percent.parse::<f64>().ok()? / 100.0,
        None => text.parse().ok()?,
    };
    (0.0..=1.0).contains(&loss).then_some(loss)
}

impl FromStr for NetworkSimulator {
    type Err = Error;

    /// Parses the text form (see [`NetworkSimulator`]) and validates it.
    fn from_str(text: &str) -> Result<Self, Error> {
        let mut sim = NetworkSimulator::new();
        for setting in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || Error::Config(format!("network simulator: bad setting {setting:?}"));
            let (key, value) = setting.split_once('=').ok_or_else(bad)?;
            let (directions, field) = match key.trim() {
                "seed" => {
                    sim.seed = Some(value.trim().parse().map_err(|_| bad())?);
                    continue;
                }
                "queue" => {
                    sim.queue_limit = value.trim().parse().map_err(|_| bad())?;
                    continue;
                }
                k => match k.split_once('-') {
                    Some(("send", field)) => ((true, false), field),
                    Some(("recv", field)) => ((false, true), field),
                    _ => ((true, true), k),
                },
            };
            let value = value.trim();
            let apply = |c: &mut LinkConditions| -> Option<()> {
                match field {
                    "loss" => c.loss = parse_loss(value)?,
                    "delay" => c.delay = parse_duration(value)?,
                    "jitter" => c.jitter = parse_duration(value)?,
                    _ => return None,
                }
                Some(())
            };
            if directions.0 {
                apply(&mut sim.send).ok_or_else(bad)?;
            }
            if directions.1 {
                apply(&mut sim.receive).ok_or_else(bad)?;
            }
        }
        sim.validate()?;
        Ok(sim)
    }
}

/// What became of a datagram offered to a [`Link`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    /// Dropped as simulated loss.
    Lost,
    /// Dropped: the queue was full.
    Overflowed,
    /// Held until due.
    Held,
}

/// A datagram held until `due`; `seq` keeps equal due times in offer order.
struct Held<T> {
    due: Instant,
    seq: u64,
    packet: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl<T> Eq for Held<T> {}

impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Held<T> {
    /// Reversed, so the max-heap pops the earliest due first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// One direction's decisions and queue: the deterministic part of the simulator (the time is
/// given, the randomness seeded).
struct Link<T> {
    conditions: LinkConditions,
    rng: StdRng,
    queue: BinaryHeap<Held<T>>,
    limit: usize,
    seq: u64,
}

impl<T> Link<T> {
    fn new(conditions: LinkConditions, rng: StdRng, limit: usize) -> Self {
        Self {
            conditions,
            rng,
            queue: BinaryHeap::new(),
            limit,
            seq: 0,
        }
    }

    /// Decides the fate of `packet` offered at `now`: lost, or held until its delay passed.
    fn offer(&mut self, now: Instant, packet: T) -> Offer {
        let c = self.conditions;
        if c.loss > 0.0 && self.rng.gen::<f64>() < c.loss {
            return Offer::Lost;
        }
        let jitter = if c.jitter.is_zero() {
            Duration::ZERO
        } else {
            let nanos = u64::try_from(c.jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(self.rng.gen_range(0..=nanos))
        };
        if self.queue.len() >= self.limit {
            return Offer::Overflowed;
        }
        self.seq += 1;
        self.queue.push(Held {
            due: now + c.delay + jitter,
            seq: self.seq,
            packet,
        });
        Offer::Held
    }

    /// The earliest held datagram if it is due at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.queue.peek()?.due > now {
            return None;
        }
        self.queue.pop().map(|held| held.packet)
    }

    /// When the earliest held datagram is due.
    fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|held| held.due)
    }
}

/// The random source of one direction: from the seed, or the operating system's.
fn rng_for(seed: Option<u64>, stream: u64) -> StdRng {
    match seed {
        Some(seed) => StdRng::seed_from_u64(seed.wrapping_add(stream)),
        None => StdRng::from_entropy(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A datagram to send.
struct Outgoing {
    destination: SocketAddr,
    ecn: Option<EcnCodepoint>,
    src_ip: Option<IpAddr>,
    contents: Vec<u8>,
}

/// A datagram received.
struct Incoming {
    addr: SocketAddr,
    ecn: Option<EcnCodepoint>,
    dst_ip: Option<IpAddr>,
    contents: Vec<u8>,
}

/// The send direction, shared with the task that sends due datagrams.
struct SendSide {
    link: Mutex<Link<Outgoing>>,
    /// Wakes the task: a datagram was queued, or the socket is gone.
    notify: Notify,
    closed: AtomicBool,
}

/// The receive direction.
struct RecvSide {
    link: Mutex<Link<Incoming>>,
    /// Wakes the receiving task when the earliest held datagram is due.
    timer: Mutex<Pin<Box<Sleep>>>,
}

/// A UDP socket with a [`NetworkSimulator`] between it and QUIC.
pub(crate) struct SimulatedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// `None` when the send direction is clear: sends go straight to the socket.
    send: Option<Arc<SendSide>>,
    /// `None` when the receive direction is clear.
    recv: Option<RecvSide>,
    counters: Arc<Counters>,
}

impl fmt::Debug for SimulatedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl SimulatedSocket {
    /// Wraps `inner` (the runtime's socket) in `sim`'s conditions; starts the sending task on
    /// the current tokio runtime.
    ///
    /// # Errors
    /// If there is no tokio runtime.
    pub(crate) fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        sim: &NetworkSimulator,
    ) -> io::Result<Arc<Self>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let send = (!sim.send.is_clear()).then(|| {
            Arc::new(SendSide {
                link: Mutex::new(Link::new(sim.send, rng_for(sim.seed, 0), sim.queue_limit)),
                notify: Notify::new(),
                closed: AtomicBool::new(false),
            })
        });
        let recv = (!sim.receive.is_clear()).then(|| {
            let _guard = runtime.enter();
            RecvSide {
                link: Mutex::new(Link::new(
                    sim.receive,
                    rng_for(sim.seed, 1),
                    sim.queue_limit,
                )),
                timer: Mutex::new(Box::pin(tokio::time::sleep(Duration::ZERO))),
            }
        });
        if let Some(side) = &send {
            runtime.spawn(run_sender(
                inner.clone(),
                side.clone(),
                sim.counters.clone(),
            ));
        }
        Ok(Arc::new(Self {
            inner,
            send,
            recv,
            counters: sim.counters.clone(),
        }))
    }

    /// Takes what the socket has into the receive queue (at most [`RECV_BATCH`] reads), then
    /// fills `bufs` with what is due.
    fn poll_recv_simulated(
        &self,
        side: &RecvSide,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut link = lock(&side.link);
        let mut drained = false;
        let mut error = None;
        for _ in 0..RECV_BATCH {
            match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => {
                    let now = Instant::now();
                    for (buf, m) in bufs.iter().zip(meta.iter()).take(n) {
                        let data = buf.get(..m.len).unwrap_or(buf);
                        let stride = if m.stride == 0 {
                            m.len.max(1)
                        } else {
                            m.stride
                        };
                        for datagram in data.chunks(stride) {
                            let outcome = link.offer(
                                now,
                                Incoming {
                                    addr: m.addr,
                                    ecn: m.ecn,
                                    dst_ip: m.dst_ip,
                                    contents: datagram.to_vec(),
                                },
                            );
                            self.counters.count(false, outcome);
                        }
                    }
                }
                Poll::Ready(Err(e)) => {
                    error = Some(e);
                    break;
                }
                Poll::Pending => {
                    drained = true;
                    break;
                }
            }
        }
        let now = Instant::now();
        let mut n = 0;
        let room = bufs.len().min(meta.len());
        while n < room {
            let Some(packet) = link.pop_due(now) else {
                break;
            };
            let Some(buf) = bufs.get_mut(n) else { break };
            let Some(target) = buf.get_mut(..packet.contents.len()) else {
                self.counters
                    .received_overflowed
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            target.copy_from_slice(&packet.contents);
            let m = RecvMeta {
                addr: packet.addr,
                len: packet.contents.len(),
                stride: packet.contents.len(),
                ecn: packet.ecn,
                dst_ip: packet.dst_ip,
            };
            if let Some(slot) = meta.get_mut(n) {
                *slot = m;
            }
            self.counters
                .received_passed
                .fetch_add(1, Ordering::Relaxed);
            n += 1;
        }
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        if let Some(e) = error {
            return Poll::Ready(Err(e));
        }
        if let Some(due) = link.next_due() {
            let mut timer = lock(&side.timer);
            timer.as_mut().reset(due);
            if timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        if !drained {
            // More may be waiting in the socket; come back for it.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl Drop for SimulatedSocket {
    fn drop(&mut self) {
        if let Some(side) = &self.send {
            side.closed.store(true, Ordering::Release);
            side.notify.notify_one();
        }
    }
}

impl AsyncUdpSocket for SimulatedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        // A simulated send never blocks (a full queue drops), so writability is the socket's.
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let Some(side) = &self.send else {
            return self.inner.try_send(transmit);
        };
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        let now = Instant::now();
        {
            let mut link = lock(&side.link);
            for datagram in transmit.contents.chunks(segment) {
                let outcome = link.offer(
                    now,
                    Outgoing {
                        destination: transmit.destination,
                        ecn: transmit.ecn,
                        src_ip: transmit.src_ip,
                        contents: datagram.to_vec(),
                    },
                );
                self.counters.count(true, outcome);
            }
        }
        side.notify.notify_one();
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        match &self.recv {
            Some(side) => self.poll_recv_simulated(side, cx, bufs, meta),
            None => self.inner.poll_recv(cx, bufs, meta),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Sends the send queue's datagrams when due, until the socket is dropped (each iteration
/// sends what is due, then sleeps until the next is due or one is queued).
async fn run_sender(inner: Arc<dyn AsyncUdpSocket>, side: Arc<SendSide>, counters: Arc<Counters>) {
    let mut poller = inner.clone().create_io_poller();
    loop {
        if side.closed.load(Ordering::Acquire) {
            return;
        }
        let (due, next) = {
            let mut link = lock(&side.link);
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(packet) = link.pop_due(now) {
                due.push(packet);
            }
            (due, link.next_due())
        };
        for packet in due {
            let counter = if send_one(inner.as_ref(), &mut poller, &packet).await {
                &counters.sent_passed
            } else {
                &counters.sent_overflowed
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = side.notify.notified() => {}
                }
            }
            None => side.notify.notified().await,
        }
    }
}

/// Sends one datagram, waiting (a bounded number of times) for a full socket buffer; whether
/// it went out.
async fn send_one(
    inner: &dyn AsyncUdpSocket,
    poller: &mut Pin<Box<dyn UdpPoller>>,
    packet: &Outgoing,
) -> bool {
    let transmit = Transmit {
        destination: packet.destination,
        ecn: packet.ecn,
        contents: &packet.contents,
        segment_size: None,
        src_ip: packet.src_ip,
    };
    for _ in 0..SEND_ATTEMPTS {
        match inner.try_send(&transmit) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, destination = %packet.destination, "simulated send failed");
                return false;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    /// Bound on every step of a socket test.
    const STEP: Duration = Duration::from_secs(5);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn link(conditions: LinkConditions, seed: u64, limit: usize) -> Link<u32> {
        Link::new(conditions, rng_for(Some(seed), 0), limit)
    }

    #[test]
    fn clear_link_passes_everything_at_once_in_order() {
        let mut l = link(LinkConditions::default(), 1, 16);
        let now = Instant::now();
        for i in 0..10 {
            assert_eq!(l.offer(now, i), Offer::Held);
        }
        let out: Vec<u32> = std::iter::from_fn(|| l.pop_due(now)).collect();
        assert_eq!(out, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn loss_is_near_its_probability_with_a_fixed_seed() {
        let mut l = link(LinkConditions::new(0.05, ms(0), ms(0)), 42, usize::MAX);
        let now = Instant::now();
        let n = 100_000;
        let lost = (0..n).filter(|&i| l.offer(now, i) == Offer::Lost).count();
        // 5 % of 100 000: 5 000, standard deviation about 69; 5 sigma either way.
        assert!((4_650..=5_350).contains(&lost), "lost {lost} of {n}");
        // The same seed decides the same.
        let mut again = link(LinkConditions::new(0.05, ms(0), ms(0)), 42, usize::MAX);
        let lost_again = (0..n)
            .filter(|&i| again.offer(now, i) == Offer::Lost)
            .count();
        assert_eq!(lost, lost_again);
    }

    #[test]
    fn delay_and_jitter_bound_the_due_time() {
        let (delay, jitter) = (ms(50), ms(10));
        let mut l = link(LinkConditions::new(0.0, delay, jitter), 7, usize::MAX);
        let start = Instant::now();
        for i in 0..1_000 {
            l.offer(start, i);
        }
        assert_eq!(l.pop_due(start + delay - ms(1)), None);
        let mut reordered = false;
        let mut last = 0;
        let mut count = 0;
        let mut at = start + delay;
        while at <= start + delay + jitter {
            while let Some(i) = l.pop_due(at) {
                reordered |= i < last;
                last = i;
                count += 1;
            }
            at += Duration::from_micros(100);
        }
        assert_eq!(count, 1_000, "all due within delay + jitter");
        assert!(reordered, "jitter reorders");
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut l = link(LinkConditions::new(0.0, ms(10), ms(0)), 1, 4);
        let now = Instant::now();
        let outcomes: Vec<Offer> = (0..6).map(|i| l.offer(now, i)).collect();
        assert_eq!(&outcomes[..4], &[Offer::Held; 4]);
        assert_eq!(&outcomes[4..], &[Offer::Overflowed; 2]);
        assert_eq!(l.next_due(), Some(now + ms(10)));
        assert_eq!(l.pop_due(now + ms(10)), Some(0));
        assert_eq!(l.offer(now, 9), Offer::Held);
    }

    #[test]
    fn text_form_parses_validates_and_round_trips() {
        let sim: NetworkSimulator = "loss=5%, delay=50ms,jitter=10ms".parse().unwrap();
        let c = LinkConditions::new(0.05, ms(50), ms(10));
        assert_eq!(sim.send_conditions(), c);
        assert_eq!(sim.receive_conditions(), c);
        assert_eq!(sim.to_string(), "loss=5%,delay=50ms,jitter=10ms");

        let sim: NetworkSimulator = "loss=0.07".parse().unwrap();
        assert_eq!(sim.to_string(), "loss=7%,delay=0ms,jitter=0ms");

        let sim: NetworkSimulator = "send-loss=0.5,recv-delay=1s,seed=3,queue=8"
            .parse()
            .unwrap();
        assert_eq!(
            sim.send_conditions(),
            LinkConditions::new(0.5, ms(0), ms(0))
        );
        assert_eq!(
            sim.receive_conditions(),
            LinkConditions::new(0.0, ms(1000), ms(0))
        );
        let again: NetworkSimulator = sim.to_string().parse().unwrap();
        assert_eq!(again.send_conditions(), sim.send_conditions());
        assert_eq!(again.receive_conditions(), sim.receive_conditions());
        assert_eq!((again.seed, again.queue_limit), (Some(3), 8));

        for bad in [
            "loss=150%",
            "loss=-1",
            "delay=5",
            "delay=20s",
            "lag=5ms",
            "queue=0",
            "seed=x",
            "loss",
            "up-loss=1%",
        ] {
            assert!(bad.parse::<NetworkSimulator>().is_err(), "{bad} accepted");
        }
    }

    /// A simulated socket on 127.0.0.1 and a plain one to talk with.
    fn pair(sim: &NetworkSimulator) -> (Arc<SimulatedSocket>, UdpSocket) {
        let runtime = quinn::default_runtime().unwrap();
        let sock = runtime
            .wrap_udp_socket(UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        other.set_read_timeout(Some(ms(100))).unwrap();
        (SimulatedSocket::new(sock, sim).unwrap(), other)
    }

    /// Sends one datagram, waiting for the socket to be writable as quinn does.
    async fn send(sock: &Arc<SimulatedSocket>, to: SocketAddr, payload: &[u8]) {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: payload,
            segment_size: None,
            src_ip: None,
        };
        let mut poller = sock.clone().create_io_poller();
        for _ in 0..100 {
            match sock.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::timeout(
                        STEP,
                        std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)),
                    )
                    .await
                    .unwrap()
                    .unwrap();
                }
                result => return result.unwrap(),
            }
        }
        panic!("the socket stayed unwritable");
    }

    /// Receives one datagram on the simulated socket.
    async fn recv(sock: &SimulatedSocket) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let mut meta = [RecvMeta::default()];
        let n = tokio::time::timeout(
            STEP,
            std::future::poll_fn(|cx| {
                let mut bufs = [IoSliceMut::new(&mut buf)];
                sock.poll_recv(cx, &mut bufs, &mut meta)
            }),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(n, 1);
        buf[..meta[0].len].to_vec()
    }

    /// Starts reading what `other` gets, until nothing came for its read timeout (blocking,
    /// off the runtime).
    fn drain(other: &UdpSocket) -> tokio::task::JoinHandle<Vec<Vec<u8>>> {
        let other = other.try_clone().unwrap();
        tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while let Ok(n) = other.recv(&mut buf) {
                got.push(buf[..n].to_vec());
                if got.len() > 10_000 {
                    break;
                }
            }
            got
        })
    }

    #[tokio::test]
    async fn clear_conditions_pass_straight_through() {
        let sim = NetworkSimulator::new();
        let (sock, other) = pair(&sim);
        assert!(sock.send.is_none() && sock.recv.is_none());
        let drained = drain(&other);
        send(&sock, other.local_addr().unwrap(), b"out").await;
        assert_eq!(drained.await.unwrap(), vec![b"out".to_vec()]);
        other.send_to(b"in", sock.local_addr().unwrap()).unwrap();
        assert_eq!(recv(&sock).await, b"in");
        assert_eq!(sim.stats(), NetworkSimulatorStats::default());
    }

    #[tokio::test]
    async fn sends_and_receives_are_delayed_at_least_the_delay() {
        let delay = ms(80);
        let sim = NetworkSimulator::new().both(LinkConditions::new(0.0, delay, ms(0)));
        let (sock, other) = pair(&sim);
        let to = other.local_addr().unwrap();
        let start = std::time::Instant::now();
        send(&sock, to, b"out").await;
        let waited = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 64];
            other.set_read_timeout(Some(STEP)).unwrap();
            let n = other.recv(&mut buf).unwrap();
            (buf[..n].to_vec(), start.elapsed(), other)
        });
        let (got, took, other) = waited.await.unwrap();
        assert_eq!(got, b"out");
        assert!(took >= delay, "sent after {took:?}");
        assert!(took < delay + ms(500), "sent after {took:?}");

        let start = std::time::Instant::now();
        other.send_to(b"in", sock.local_addr().unwrap()).unwrap();
        assert_eq!(recv(&sock).await, b"in");
        let took = start.elapsed();
        assert!(took >= delay, "received after {took:?}");
        assert!(took < delay + ms(500), "received after {took:?}");
        let stats = sim.stats();
        assert_eq!((stats.sent.passed, stats.received.passed), (1, 1));
    }

    #[tokio::test]
    async fn sends_are_lost_near_the_probability() {
        let sim = NetworkSimulator::new()
            .send(LinkConditions::new(0.2, ms(0), ms(0)))
            .seed(11);
        let (sock, other) = pair(&sim);
        let to = other.local_addr().unwrap();
        let n = 1_000u32;
        let drained = drain(&other);
        for i in 0..n {
            send(&sock, to, &i.to_be_bytes()).await;
            if i % 50 == 0 {
                // Let the sending task keep the socket buffers shallow.
                tokio::time::sleep(ms(1)).await;
            }
        }
        let got = drained.await.unwrap().len();
        let stats = sim.stats();
        assert_eq!(stats.sent.lost + stats.sent.passed, u64::from(n));
        assert_eq!(got as u64, stats.sent.passed);
        // 20 % of 1 000: 200, standard deviation about 13; 5 sigma either way.
        assert!(
            (135..=265).contains(&stats.sent.lost),
            "lost {}",
            stats.sent.lost
        );
    }

    #[tokio::test]
    async fn receives_beyond_the_queue_limit_are_dropped_and_counted() {
        let sim = NetworkSimulator::new()
            .receive(LinkConditions::new(0.0, ms(200), ms(0)))
            .queue_limit(4);
        let (sock, other) = pair(&sim);
        for i in 0..10u8 {
            other.send_to(&[i], sock.local_addr().unwrap()).unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..4 {
            got.extend(recv(&sock).await);
        }
        assert_eq!(got, vec![0, 1, 2, 3]);
        let stats = sim.stats().received;
        assert_eq!((stats.passed, stats.overflowed), (4, 6));
    }
}
