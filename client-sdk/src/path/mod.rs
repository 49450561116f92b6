//! The direct-path state machine: whether datagrams to one remote member go over a direct
//! QUIC connection (UDP hole punching) or through the relay, as a sans-IO state machine.
//!
//! One [`PathMachine`] serves one (local session, remote member) pair; only host <-> peer
//! pairs have one. It never reads a clock or touches a socket: the driver feeds it [`Input`]s
//! with the current time, calls [`PathMachine::handle_timeout`] when
//! [`PathMachine::poll_timeout`] says so, and drains [`PathMachine::poll_output`] after each
//! call, the same call order as `quinn_proto::Connection` and the relay's control plane.
//!
//! An *attempt* goes: offer our candidates through the relay (`SendOffer`), learn the remote's
//! (`RemoteOffer`), punch at the instant the relay names (`PunchAt`, then `Punch` outputs every
//! [`PUNCH_INTERVAL`]) until the direct QUIC connection is established (`DirectEstablished`)
//! or [`PUNCH_TIMEOUT`] passes. Each attempt reports one [`PathOutcome`] for metrics (and an
//! established direct path that dies later reports [`PathOutcome::DirectLost`]). A failed or
//! lost attempt is retried after a backoff ([`RETRY_FIRST`], then [`RETRY_BASE`] doubling up
//! to [`RETRY_MAX`]), at
//! most [`MAX_ATTEMPTS`] times until [`Input::Reset`]. Whoever offers first does not matter:
//! an offer from the remote starts (or joins) an attempt at once, backoff or not.
//!
//! Datagrams go direct only while the direct RTT is no worse than the relay's plus a slack
//! ([`rtt_slack`]); they go back to the relay when it is clearly worse (twice the slack:
//! hysteresis) or when nothing was heard on the direct path for [`silence`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[cfg(test)]
mod tests;

/// How long an attempt waits, after we offered, for the remote's offer and the relay's punch
/// time. The relay pairs offers sent within 10 s of each other and then names a punch instant
/// at most 1 s away; 12 s covers both with a margin for the control stream's round trips.
pub(crate) const SIGNAL_TIMEOUT: Duration = Duration::from_secs(12);

/// The latest punch instant accepted: a `PunchAt` further away is brought forward to this.
/// The relay never names one more than 1 s ahead.
pub(crate) const MAX_PUNCH_DELAY: Duration = Duration::from_secs(1);

/// Time between punches. Both NATs need an outgoing packet before the other side's gets
/// through; 150 ms repeats often enough to ride out a lost punch within a few round trips.
pub(crate) const PUNCH_INTERVAL: Duration = Duration::from_millis(150);

/// Punches per attempt (the first at the punch instant): 10 cover 1.35 s.
pub(crate) const MAX_PUNCHES: u32 = 10;

/// How long after the punch instant the direct connection may take to establish before the
/// attempt fails ([`PathOutcome::PunchTimedOut`]): the last punch plus a QUIC handshake over a
/// slow link.
pub(crate) const PUNCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The wait before the first retry after a failed attempt or a lost direct path: short, since
/// one failure is often a matter of timing (a punch that crossed the other side's handshake,
/// a NAT that rebound) and the next attempt succeeds.
pub(crate) const RETRY_FIRST: Duration = Duration::from_secs(2);

/// The wait before the second retry in a row; each further consecutive failure doubles it, up
/// to [`RETRY_MAX`].
pub(crate) const RETRY_BASE: Duration = Duration::from_secs(30);

/// The longest wait between attempts.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(5 * 60);

/// Attempts per remote until [`Input::Reset`]: with the backoff, 8 attempts span about 18
/// minutes of trying, after which the pair stays relayed.
pub(crate) const MAX_ATTEMPTS: u32 = 8;

/// Silence on an established direct path after which it is given up: the least of it (see
/// [`silence`]). The SDK pings the direct path well inside this, so silence means failure.
pub(crate) const DIRECT_SILENCE: Duration = Duration::from_secs(1);

/// The longest silence tolerated on an established direct path, whatever its RTT.
pub(crate) const DIRECT_SILENCE_MAX: Duration = Duration::from_secs(3);

/// The least RTT slack (see [`rtt_slack`]): RTT samples jitter by a few milliseconds on a LAN
/// or a busy machine (and the first samples of a new connection include its handshake's
/// processing), and a path that is only that much slower is not *clearly* slower (SPEC
/// section 17.3): with less, datagrams between two nearby players flap between the paths.
pub(crate) const RTT_SLACK_MIN: Duration = Duration::from_millis(10);

/// The margin the relay adds to a punch instant (SPEC section 17.2): a `Punch` delay longer than
/// this tells how much slower the remote's connection to the relay is than ours.
pub(crate) const PUNCH_MARGIN: Duration = Duration::from_millis(20);

/// Candidates kept per side (the protocol carries at most 8 per offer).
pub(crate) const MAX_CANDIDATES: usize = 8;

/// Which path datagrams to a remote member take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Path {
    /// A direct QUIC connection between the two members (through UDP hole punching).
    Direct,
    /// Through the relay: always available, crosses every NAT.
    Relayed,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Direct => "direct",
            Path::Relayed => "relayed",
        })
    }
}

/// Whether a session tries direct paths to the members it exchanges datagrams with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum DirectPolicy {
    /// Try a direct path and use it when it is no slower than the relay; the relay carries
    /// datagrams until then and whenever the direct path fails. The other member of each
    /// direct path learns this member's IP addresses.
    Prefer,
    /// Never try (the default): all datagrams go through the relay, and this member's
    /// addresses are never sent to other members.
    #[default]
    Never,
}

/// How a NAT maps our socket, as measured by comparing observed addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum NatKind {
    /// Not measured.
    #[default]
    Unknown,
    /// The same public address for every destination ("cone"): punchable.
    EndpointIndependent,
    /// A public address per destination ("symmetric"): punching works only if the other side
    /// is endpoint-independent.
    EndpointDependent,
}

/// Why the relay refused to pass our offer on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeclineReason {
    /// The relay does not allow direct paths: no attempt until [`Input::Reset`].
    Disabled,
    /// Too many offers: the attempt fails and the next waits at least `retry_after`.
    RateLimited {
        /// How long the relay asked us to wait.
        retry_after: Duration,
    },
    /// The allocation is migrating: no attempt until [`Input::Reset`] (the migration's end).
    Migrating,
    /// The remote is not a member we may offer to: no attempt until [`Input::Reset`].
    NotAllowed,
}

/// The result of an attempt, reported once per attempt for metrics (plus
/// [`PathOutcome::DirectLost`] when an established direct path dies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PathOutcome {
    /// The direct path is established and carries datagrams.
    Direct,
    /// No direct connection within [`PUNCH_TIMEOUT`] of the punch instant (or no punch
    /// instant from the relay within [`SIGNAL_TIMEOUT`]).
    PunchTimedOut,
    /// Both NATs are endpoint-dependent: punching is hopeless and was skipped.
    BothEndpointDependent,
    /// Our policy is [`DirectPolicy::Never`].
    PolicyNever,
    /// The relay refused our offer.
    RelayDeclined,
    /// Nothing to punch: the remote's offer had no usable candidate, or none came within
    /// [`SIGNAL_TIMEOUT`].
    NoCandidates,
    /// An established direct path went silent or closed.
    DirectLost,
    /// The direct path was established but is slower than the relay.
    RelayFaster,
}

/// Something the driver tells the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// Our candidates changed (the address the relay observes, local interface addresses),
    /// with our NAT's kind. Unusable addresses are dropped, at most [`MAX_CANDIDATES`] kept.
    LocalCandidates {
        addrs: Vec<SocketAddr>,
        nat: NatKind,
    },
    /// The remote's offer, passed on by the relay: its candidates (filtered as ours), its NAT's
    /// kind and the SHA-256 fingerprint of the certificate its direct connection presents.
    RemoteOffer {
        candidates: Vec<SocketAddr>,
        nat: NatKind,
        fingerprint: [u8; 32],
    },
    /// The relay's punch instant, the same for both sides; one more than [`MAX_PUNCH_DELAY`]
    /// away is brought forward to that.
    PunchAt { at: Instant },
    /// The relay refused our offer.
    Declined { reason: DeclineReason },
    /// The authenticated direct QUIC connection to the remote at `addr` completed, with its
    /// first RTT sample.
    DirectEstablished { addr: SocketAddr, rtt: Duration },
    /// An RTT sample of the direct connection (expected smoothed, as quinn's `rtt()`).
    DirectRtt { rtt: Duration },
    /// An RTT sample of the relay connection (expected smoothed, as quinn's `rtt()`).
    RelayRtt { rtt: Duration },
    /// Something arrived on the direct connection (a datagram or an acknowledgement).
    DirectHeard,
    /// The direct connection closed.
    DirectClosed,
    /// Our policy changed (sessions fix their policy when they connect: only the unit tests
    /// change it).
    #[cfg(test)]
    Policy(DirectPolicy),
    /// The remote changed (a host migration): close any direct path and start over.
    Reset,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    /// Send our offer (never empty `candidates`) to the remote through the relay.
    SendOffer {
        candidates: Vec<SocketAddr>,
        nat: NatKind,
    },
    /// Punch now: send punch packets to the remote's candidates (never empty) from the relay
    /// connection's socket, and dial the remote there on the first punch of an attempt.
    Punch { targets: Vec<SocketAddr> },
    /// Datagrams to the remote take this path from now on (only on change).
    Switch(Path),
    /// Tear down the direct connection to the remote and any dial still in flight (the driver
    /// ignores it when there is none).
    CloseDirect,
    /// An attempt's result, for metrics.
    Outcome(PathOutcome),
}

/// Where the machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No attempt; one starts as soon as we have candidates (or the remote offers).
    Waiting,
    /// Our offer is out; waiting for the remote's and for the punch instant.
    Signalling {
        deadline: Instant,
        punch_at: Option<Instant>,
    },
    /// Punching; `next` is the next punch (meaningless once `sent` reaches [`MAX_PUNCHES`]).
    Punching {
        next: Instant,
        sent: u32,
        deadline: Instant,
    },
    /// The direct connection is up (datagrams take it or not, by RTT).
    Established {
        addr: SocketAddr,
        rtt: Duration,
        last_heard: Instant,
    },
    /// The last attempt failed; the next starts at `until` (or when the remote offers).
    Backoff { until: Instant },
    /// No attempt until what `Stop` says.
    Stopped(Stop),
}

/// Why no attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Until the policy is `Prefer` again.
    PolicyNever,
    /// Until either NAT kind changes.
    BothEndpointDependent,
    /// Until [`Input::Reset`].
    Declined,
    /// [`MAX_ATTEMPTS`] made; until [`Input::Reset`].
    Exhausted,
}

/// The remote's latest offer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Remote {
    candidates: Vec<SocketAddr>,
    nat: NatKind,
    fingerprint: [u8; 32],
}

/// The slack an RTT comparison allows the direct path: `max(RTT_SLACK_MIN, relay / 10)`.
/// Datagrams switch to the direct path when `direct <= relay + slack` and back to the relay
/// when `direct > relay + 2 * slack`; in between they stay where they are.
pub(crate) fn rtt_slack(relay: Duration) -> Duration {
    RTT_SLACK_MIN.max(relay / 10)
}

/// The silence after which an established direct path is given up: 3 direct RTTs, at least
/// [`DIRECT_SILENCE`] and at most [`DIRECT_SILENCE_MAX`].
pub(crate) fn silence(direct_rtt: Duration) -> Duration {
    direct_rtt
        .saturating_mul(3)
        .clamp(DIRECT_SILENCE, DIRECT_SILENCE_MAX)
}

/// Usable candidates: no unspecified or multicast address, no port 0, no duplicate, at most
/// [`MAX_CANDIDATES`].
fn usable(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(addrs.len().min(MAX_CANDIDATES));
    for a in addrs {
        let bad = a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast();
        if !bad && !out.contains(&a) && out.len() < MAX_CANDIDATES {
            out.push(a);
        }
    }
    out
}

/// The direct-path state machine of one (local session, remote member) pair.
#[derive(Debug, Clone)]
pub(crate) struct PathMachine {
    policy: DirectPolicy,
    phase: Phase,
    /// Where datagrams go.
    path: Path,
    local: Vec<SocketAddr>,
    local_nat: NatKind,
    remote: Option<Remote>,
    relay_rtt: Option<Duration>,
    /// The remote's RTT to the relay, when the punch delay tells it (see
    /// [`PathMachine::relayed_rtt`]).
    remote_relay_rtt: Option<Duration>,
    /// Attempts started since creation or the last reset.
    attempts: u32,
    /// Consecutive failed attempts (the backoff's exponent); 0 once a direct path is up.
    failures: u32,
    /// The running attempt has not reported its outcome yet.
    outcome_pending: bool,
    /// [`PathOutcome::PolicyNever`] was reported since creation or the last reset.
    never_reported: bool,
    outputs: VecDeque<Output>,
}

impl PathMachine {
    /// A machine for a new pair; datagrams start relayed.
    pub(crate) fn new(policy: DirectPolicy) -> Self {
        PathMachine {
            policy,
            phase: Phase::Waiting,
            path: Path::Relayed,
            local: Vec::new(),
            local_nat: NatKind::Unknown,
            remote: None,
            relay_rtt: None,
            remote_relay_rtt: None,
            attempts: 0,
            failures: 0,
            outcome_pending: false,
            never_reported: false,
            outputs: VecDeque::new(),
        }
    }

    /// Where datagrams to the remote go now.
    pub(crate) fn path(&self) -> Path {
        self.path
    }

    /// The RTT of the current path, when known (for `Event::PathChanged`).
    pub(crate) fn rtt(&self) -> Option<Duration> {
        match (self.path, self.phase) {
            (Path::Direct, Phase::Established { rtt, .. }) => Some(rtt),
            _ => self.relayed_rtt(),
        }
    }

    /// The remote's address on the established direct connection.
    pub(crate) fn direct_addr(&self) -> Option<SocketAddr> {
        match self.phase {
            Phase::Established { addr, .. } => Some(addr),
            _ => None,
        }
    }

    /// The certificate fingerprint of the remote's latest offer: the one a direct connection
    /// must present.
    pub(crate) fn remote_fingerprint(&self) -> Option<[u8; 32]> {
        self.remote.as_ref().map(|r| r.fingerprint)
    }

    /// Attempts started since creation or the last [`Input::Reset`].
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The next thing for the driver to do.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The instant [`PathMachine::handle_timeout`] must be called at (the earliest deadline).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Signalling { deadline, .. } => Some(deadline),
            Phase::Punching {
                next,
                sent,
                deadline,
            } if sent < MAX_PUNCHES => Some(next.min(deadline)),
            Phase::Punching { deadline, .. } => Some(deadline),
            Phase::Established {
                rtt, last_heard, ..
            } => Some(last_heard + silence(rtt)),
            Phase::Backoff { until } => Some(until),
            Phase::Waiting | Phase::Stopped(_) => None,
        }
    }

    /// Acts on the deadlines due at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Signalling { deadline, .. } if now >= deadline => {
                let outcome = if self.remote.is_some() {
                    PathOutcome::PunchTimedOut
                } else {
                    PathOutcome::NoCandidates
                };
                self.fail(now, outcome, None);
            }
            Phase::Punching { deadline, .. } if now >= deadline => {
                self.fail(now, PathOutcome::PunchTimedOut, None);
            }
            Phase::Punching {
                next,
                sent,
                deadline,
            } if sent < MAX_PUNCHES && now >= next => {
                self.punch();
                self.phase = Phase::Punching {
                    next: now + PUNCH_INTERVAL,
                    sent: sent + 1,
                    deadline,
                };
            }
            Phase::Established {
                rtt, last_heard, ..
            } if now >= last_heard + silence(rtt) => self.lose_direct(now, true),
            Phase::Backoff { until } if now >= until => {
                self.phase = Phase::Waiting;
                self.try_start(now);
            }
            _ => {}
        }
    }

    /// Acts on `input`, which happened at `now`.
    pub(crate) fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::LocalCandidates { addrs, nat } => self.local_candidates(now, addrs, nat),
            Input::RemoteOffer {
                candidates,
                nat,
                fingerprint,
            } => self.remote_offer(now, candidates, nat, fingerprint),
            Input::PunchAt { at } => {
                if let Phase::Signalling { deadline, .. } = self.phase {
                    let at = at.clamp(now, now + MAX_PUNCH_DELAY);
                    // The relay delays our punch by half of how much slower the remote's
                    // connection to it is than ours, plus the margin (SPEC section 17.2).
                    self.remote_relay_rtt = (at - now)
                        .checked_sub(PUNCH_MARGIN)
                        .filter(|extra| !extra.is_zero())
                        .map(|extra| self.relay_rtt.unwrap_or_default() + extra * 2);
                    tracing::debug!(
                        delay = ?(at - now),
                        relay_rtt = ?self.relay_rtt,
                        remote_relay_rtt = ?self.remote_relay_rtt,
                        "punch instant"
                    );
                    self.phase = Phase::Signalling {
                        deadline,
                        punch_at: Some(at),
                    };
                    self.check_signalling(now);
                }
            }
            Input::Declined { reason } => self.declined(now, reason),
            Input::DirectEstablished { addr, rtt } => self.established(now, addr, rtt),
            Input::DirectRtt { rtt: sample } => {
                if let Phase::Established { ref mut rtt, .. } = self.phase {
                    *rtt = sample;
                    self.choose_path();
                }
            }
            Input::RelayRtt { rtt } => {
                self.relay_rtt = Some(rtt);
                if matches!(self.phase, Phase::Established { .. }) {
                    self.choose_path();
                }
            }
            Input::DirectHeard => {
                if let Phase::Established {
                    ref mut last_heard, ..
                } = self.phase
                {
                    *last_heard = now;
                }
            }
            Input::DirectClosed => {
                // A dial that failed while punching changes nothing: punching goes on.
                if matches!(self.phase, Phase::Established { .. }) {
                    self.lose_direct(now, false);
                }
            }
            #[cfg(test)]
            Input::Policy(policy) => self.set_policy(now, policy),
            Input::Reset => self.reset(now),
        }
    }

    fn local_candidates(&mut self, now: Instant, addrs: Vec<SocketAddr>, nat: NatKind) {
        self.local = usable(addrs);
        self.local_nat = nat;
        match self.phase {
            Phase::Waiting => self.try_start(now),
            Phase::Stopped(Stop::BothEndpointDependent) if !self.both_endpoint_dependent() => {
                self.phase = Phase::Waiting;
                self.try_start(now);
            }
            // A running attempt goes on with the offer already sent; the next uses these.
            _ => {}
        }
    }

    fn remote_offer(
        &mut self,
        now: Instant,
        candidates: Vec<SocketAddr>,
        nat: NatKind,
        fingerprint: [u8; 32],
    ) {
        self.remote = Some(Remote {
            candidates: usable(candidates),
            nat,
            fingerprint,
        });
        match self.phase {
            Phase::Waiting | Phase::Backoff { .. } => {
                self.phase = Phase::Waiting;
                self.try_start(now);
            }
            Phase::Signalling { .. } => self.check_signalling(now),
            // The new candidates are punched from the next punch on.
            Phase::Punching { .. } => {}
            Phase::Established { .. } => {
                // The remote offers only when it has no direct path: it gave this one up.
                self.lose_direct(now, true);
                self.phase = Phase::Waiting;
                self.try_start(now);
            }
            Phase::Stopped(Stop::BothEndpointDependent) if !self.both_endpoint_dependent() => {
                self.phase = Phase::Waiting;
                self.try_start(now);
            }
            Phase::Stopped(_) => {}
        }
    }

    fn declined(&mut self, now: Instant, reason: DeclineReason) {
        // Only a running attempt has an offer out to be refused.
        if !matches!(
            self.phase,
            Phase::Signalling { .. } | Phase::Punching { .. }
        ) {
            return;
        }
        match reason {
            DeclineReason::RateLimited { retry_after } => {
                self.fail(now, PathOutcome::RelayDeclined, Some(retry_after));
            }
            DeclineReason::Disabled | DeclineReason::Migrating | DeclineReason::NotAllowed => {
                self.abandon(true);
                self.finish(PathOutcome::RelayDeclined);
                self.phase = Phase::Stopped(Stop::Declined);
            }
        }
    }

    fn established(&mut self, now: Instant, addr: SocketAddr, rtt: Duration) {
        match self.phase {
            Phase::Signalling { .. } | Phase::Punching { .. } => {
                self.phase = Phase::Established {
                    addr,
                    rtt,
                    last_heard: now,
                };
                self.failures = 0;
                self.choose_path();
                let outcome = match self.path {
                    Path::Direct => PathOutcome::Direct,
                    _ => PathOutcome::RelayFaster,
                };
                self.finish(outcome);
            }
            Phase::Established { .. } => {
                // A second connection of the same attempt (both sides dialled): the driver
                // keeps one; it is as good as the first.
                self.phase = Phase::Established {
                    addr,
                    rtt,
                    last_heard: now,
                };
                self.choose_path();
            }
            // No attempt wants it (a dial that completed after its attempt ended).
            _ => self.outputs.push_back(Output::CloseDirect),
        }
    }

    #[cfg(test)]
    fn set_policy(&mut self, now: Instant, policy: DirectPolicy) {
        self.policy = policy;
        match (policy, self.phase) {
            // Stopped anyway: it stays stopped for its own reason too.
            (DirectPolicy::Never, Phase::Stopped(_)) => self.report_never(),
            (DirectPolicy::Never, _) => {
                self.abandon(true);
                self.report_never();
                self.phase = Phase::Stopped(Stop::PolicyNever);
            }
            (_, Phase::Stopped(Stop::PolicyNever)) => {
                self.phase = Phase::Waiting;
                self.try_start(now);
            }
            _ => {}
        }
    }

    fn reset(&mut self, now: Instant) {
        // An interrupted attempt reports nothing: the pair it was for is gone.
        self.abandon(true);
        self.outcome_pending = false;
        self.remote = None;
        self.attempts = 0;
        self.failures = 0;
        self.never_reported = false;
        self.phase = Phase::Waiting;
        self.try_start(now);
    }

    /// Starts an attempt from `Waiting` if one may start: sends our offer, then acts on an
    /// offer the remote already made.
    fn try_start(&mut self, now: Instant) {
        debug_assert_eq!(self.phase, Phase::Waiting);
        if self.policy == DirectPolicy::Never {
            // Reported when an attempt would have started.
            if !self.local.is_empty() || self.remote.is_some() {
                self.report_never();
                self.phase = Phase::Stopped(Stop::PolicyNever);
            }
            return;
        }
        if self.local.is_empty() {
            return;
        }
        if self.attempts >= MAX_ATTEMPTS {
            self.phase = Phase::Stopped(Stop::Exhausted);
            return;
        }
        self.attempts += 1;
        self.outcome_pending = true;
        self.outputs.push_back(Output::SendOffer {
            candidates: self.local.clone(),
            nat: self.local_nat,
        });
        self.phase = Phase::Signalling {
            deadline: now + SIGNAL_TIMEOUT,
            punch_at: None,
        };
        self.check_signalling(now);
    }

    /// In `Signalling`: skips a hopeless attempt, or starts punching once both the remote's
    /// offer and the punch instant are known.
    fn check_signalling(&mut self, now: Instant) {
        let Phase::Signalling { punch_at, .. } = self.phase else {
            return;
        };
        let Some(remote) = &self.remote else {
            return;
        };
        if remote.candidates.is_empty() {
            self.fail(now, PathOutcome::NoCandidates, None);
        } else if self.both_endpoint_dependent() {
            self.finish(PathOutcome::BothEndpointDependent);
            self.phase = Phase::Stopped(Stop::BothEndpointDependent);
        } else if let Some(at) = punch_at {
            // The first punch goes out at `at` (now, if it is already due).
            self.phase = Phase::Punching {
                next: at,
                sent: 0,
                deadline: at + PUNCH_TIMEOUT,
            };
            self.handle_timeout(now);
        }
    }

    fn both_endpoint_dependent(&self) -> bool {
        self.local_nat == NatKind::EndpointDependent
            && self
                .remote
                .as_ref()
                .is_some_and(|r| r.nat == NatKind::EndpointDependent)
    }

    fn punch(&mut self) {
        if let Some(remote) = &self.remote {
            self.outputs.push_back(Output::Punch {
                targets: remote.candidates.clone(),
            });
        }
    }

    /// The RTT of the relayed path to the remote, as far as known: a datagram relayed to the
    /// remote crosses our connection to the relay *and* the remote's, so its RTT is the sum of
    /// both. Ours is measured; the remote's is known when it is the slower of the two (the
    /// relay delays our `Punch` by half the difference, SPEC section 17.2), else counted as 0
    /// (a lower bound: the relay looks at least as fast as it is). Compared with our RTT alone,
    /// a remote on a slow link (whose direct path is slow by the same link) would make the
    /// relay look faster than it is.
    pub(crate) fn relayed_rtt(&self) -> Option<Duration> {
        self.relay_rtt
            .map(|ours| ours + self.remote_relay_rtt.unwrap_or_default())
    }

    /// Switches datagrams to the path the RTTs favour, with hysteresis (see [`rtt_slack`]),
    /// comparing the direct RTT with the [relayed path's](PathMachine::relayed_rtt).
    fn choose_path(&mut self) {
        let Phase::Established { rtt: direct, .. } = self.phase else {
            return;
        };
        let direct_ok = match self.relayed_rtt() {
            None => true,
            Some(relay) => {
                let slack = rtt_slack(relay);
                match self.path {
                    Path::Direct => direct <= relay + slack * 2,
                    _ => direct <= relay + slack,
                }
            }
        };
        self.switch(if direct_ok {
            Path::Direct
        } else {
            Path::Relayed
        });
    }

    fn switch(&mut self, path: Path) {
        if self.path != path {
            self.path = path;
            self.outputs.push_back(Output::Switch(path));
        }
    }

    /// The running attempt's outcome, if it has not reported one.
    fn finish(&mut self, outcome: PathOutcome) {
        if std::mem::take(&mut self.outcome_pending) {
            self.outputs.push_back(Output::Outcome(outcome));
        }
    }

    fn report_never(&mut self) {
        if self.outcome_pending {
            self.finish(PathOutcome::PolicyNever);
            self.never_reported = true;
        } else if !std::mem::replace(&mut self.never_reported, true) {
            self.outputs
                .push_back(Output::Outcome(PathOutcome::PolicyNever));
        }
    }

    /// Leaves a punching or established phase: datagrams back to the relay, and the direct
    /// connection (or dial) torn down unless `close` is false (it closed by itself).
    fn abandon(&mut self, close: bool) {
        if matches!(
            self.phase,
            Phase::Punching { .. } | Phase::Established { .. }
        ) {
            self.switch(Path::Relayed);
            if close {
                self.outputs.push_back(Output::CloseDirect);
            }
        }
    }

    /// The running attempt failed with `outcome`: back off (at least `at_least`), or stop
    /// when no attempt is left.
    fn fail(&mut self, now: Instant, outcome: PathOutcome, at_least: Option<Duration>) {
        self.abandon(true);
        self.finish(outcome);
        self.back_off(now, at_least);
    }

    /// The established direct path died: back to the relay, retry after a backoff.
    fn lose_direct(&mut self, now: Instant, close: bool) {
        self.abandon(close);
        self.outputs
            .push_back(Output::Outcome(PathOutcome::DirectLost));
        self.back_off(now, None);
    }

    fn back_off(&mut self, now: Instant, at_least: Option<Duration>) {
        if self.attempts >= MAX_ATTEMPTS {
            self.phase = Phase::Stopped(Stop::Exhausted);
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let backoff = match self.failures {
            1 => RETRY_FIRST,
            n => RETRY_BASE.saturating_mul(1u32 << (n - 2).min(16)),
        };
        let wait = backoff.max(at_least.unwrap_or_default()).min(RETRY_MAX);
        self.phase = Phase::Backoff { until: now + wait };
    }
}
