//! The direct-path state machine driven with simulated time.

use super::*;
use Output::{CloseDirect, Outcome, Punch, SendOffer, Switch};

const MS: Duration = Duration::from_millis(1);
const FP: [u8; 32] = [7; 32];

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ours() -> Vec<SocketAddr> {
    vec![addr("198.51.100.7:61000"), addr("192.168.1.10:61000")]
}

fn theirs() -> Vec<SocketAddr> {
    vec![addr("203.0.113.9:40000")]
}

fn offer(candidates: Vec<SocketAddr>, nat: NatKind) -> Input {
    Input::RemoteOffer {
        candidates,
        nat,
        fingerprint: FP,
    }
}

fn local(nat: NatKind) -> Input {
    Input::LocalCandidates { addrs: ours(), nat }
}

fn sent_offer(nat: NatKind) -> Output {
    SendOffer {
        candidates: ours(),
        nat,
    }
}

fn punch() -> Output {
    Punch { targets: theirs() }
}

fn outcome(o: PathOutcome) -> Output {
    Outcome(o)
}

fn up(rtt: Duration) -> Input {
    Input::DirectEstablished {
        addr: theirs()[0],
        rtt,
    }
}

const EI: NatKind = NatKind::EndpointIndependent;
const ED: NatKind = NatKind::EndpointDependent;
const UNK: NatKind = NatKind::Unknown;

/// A machine and a simulated clock.
struct H {
    m: PathMachine,
    now: Instant,
}

impl H {
    fn new(policy: DirectPolicy) -> Self {
        H {
            m: PathMachine::new(policy),
            now: Instant::now(),
        }
    }

    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.m.poll_output()).collect()
    }

    fn input(&mut self, input: Input) -> Vec<Output> {
        self.m.handle(self.now, input);
        self.drain()
    }

    /// Runs the clock `by` forward, firing every deadline on the way at its instant; each
    /// output comes with the instant it was produced at.
    fn advance_timed(&mut self, by: Duration) -> Vec<(Instant, Output)> {
        let end = self.now + by;
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match self.m.poll_timeout() {
                Some(t) if t <= end => {
                    // No deadline is ever in the past: `now` only moves forward.
                    assert!(t >= self.now, "deadline {t:?} before now {:?}", self.now);
                    self.now = t;
                    self.m.handle_timeout(t);
                    out.extend(self.drain().into_iter().map(|o| (t, o)));
                }
                _ => break,
            }
        }
        self.now = end;
        out
    }

    fn advance(&mut self, by: Duration) -> Vec<Output> {
        self.advance_timed(by).into_iter().map(|(_, o)| o).collect()
    }

    /// An attempt through to an established direct path with `rtt`, relay RTT `relay`.
    fn establish(&mut self, rtt: Duration, relay: Duration) -> Vec<Output> {
        self.input(Input::RelayRtt { rtt: relay });
        assert_eq!(self.input(local(EI)), [sent_offer(EI)]);
        assert!(self.input(offer(theirs(), EI)).is_empty());
        assert_eq!(
            self.input(Input::PunchAt { at: self.now }),
            [punch()],
            "a punch instant already due punches at once"
        );
        self.input(up(rtt))
    }
}

#[test]
fn cone_to_cone_goes_direct() {
    let mut h = H::new(DirectPolicy::Prefer);
    assert_eq!(h.m.path(), Path::Relayed);
    h.input(Input::RelayRtt { rtt: 40 * MS });
    assert_eq!(h.input(local(EI)), [sent_offer(EI)]);
    assert!(h.input(offer(theirs(), EI)).is_empty());
    assert_eq!(h.m.remote_fingerprint(), Some(FP));
    assert!(h
        .input(Input::PunchAt {
            at: h.now + 100 * MS
        })
        .is_empty());
    assert_eq!(h.m.poll_timeout(), Some(h.now + 100 * MS));
    assert_eq!(h.advance(100 * MS), [punch()]);
    let out = h.input(up(20 * MS));
    assert_eq!(out, [Switch(Path::Direct), outcome(PathOutcome::Direct)]);
    assert_eq!(h.m.path(), Path::Direct);
    assert_eq!(h.m.rtt(), Some(20 * MS));
    assert_eq!(h.m.direct_addr(), Some(theirs()[0]));
    assert_eq!(h.m.attempts(), 1);
}

#[test]
fn a_remote_offer_is_answered_once_we_have_candidates_and_only_once() {
    let mut h = H::new(DirectPolicy::Prefer);
    // Nothing to answer with yet.
    assert!(h.input(offer(theirs(), UNK)).is_empty());
    assert_eq!(h.m.poll_timeout(), None);
    assert_eq!(h.input(local(UNK)), [sent_offer(UNK)]);
    // Further offers of the remote in the same attempt are not answered again.
    assert!(h.input(offer(theirs(), UNK)).is_empty());
    assert!(h.input(local(UNK)).is_empty());
    assert_eq!(h.input(Input::PunchAt { at: h.now }), [punch()]);
}

#[test]
fn policy_never_never_offers_nor_punches_and_reports_once() {
    let mut h = H::new(DirectPolicy::Never);
    assert_eq!(h.input(local(EI)), [outcome(PathOutcome::PolicyNever)]);
    assert!(h.input(offer(theirs(), UNK)).is_empty());
    assert!(h.input(Input::PunchAt { at: h.now }).is_empty());
    assert!(h.input(local(UNK)).is_empty());
    assert_eq!(h.m.poll_timeout(), None);
    assert!(h.advance(Duration::from_secs(3600)).is_empty());
    // A connection nobody asked for is closed.
    let stray = up(MS);
    assert_eq!(h.input(stray), [CloseDirect]);
    assert_eq!(h.m.path(), Path::Relayed);
    assert_eq!(h.m.attempts(), 0);
}

#[test]
fn policy_never_on_a_direct_path_falls_back_and_prefer_tries_again() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.establish(10 * MS, 40 * MS);
    assert_eq!(
        h.input(Input::Policy(DirectPolicy::Never)),
        [
            Switch(Path::Relayed),
            CloseDirect,
            outcome(PathOutcome::PolicyNever)
        ]
    );
    assert!(h.input(Input::Policy(DirectPolicy::Never)).is_empty());
    assert_eq!(
        h.input(Input::Policy(DirectPolicy::Prefer)),
        [sent_offer(EI)]
    );
}

#[test]
fn policy_never_mid_attempt_is_that_attempts_outcome() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.input(local(UNK));
    assert_eq!(
        h.input(Input::Policy(DirectPolicy::Never)),
        [outcome(PathOutcome::PolicyNever)]
    );
    assert_eq!(h.m.poll_timeout(), None);
}

#[test]
fn both_endpoint_dependent_skips_punching_until_a_nat_changes() {
    let mut h = H::new(DirectPolicy::Prefer);
    assert_eq!(h.input(local(ED)), [sent_offer(ED)]);
    assert_eq!(
        h.input(offer(theirs(), ED)),
        [outcome(PathOutcome::BothEndpointDependent)]
    );
    assert!(h.input(Input::PunchAt { at: h.now }).is_empty());
    assert_eq!(h.m.poll_timeout(), None);
    assert!(h.input(offer(theirs(), ED)).is_empty());
    // Our NAT changed (another network): a new attempt.
    assert_eq!(h.input(local(EI)), [sent_offer(EI)]);
    assert_eq!(h.m.attempts(), 2);
}

#[test]
fn a_remote_offer_skipped_as_hopeless_is_answered_so_it_skips_too() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.input(offer(theirs(), ED));
    assert_eq!(
        h.input(local(ED)),
        [sent_offer(ED), outcome(PathOutcome::BothEndpointDependent)]
    );
    // The remote's NAT changed: it offers again and we try.
    assert_eq!(h.input(offer(theirs(), EI)), [sent_offer(ED)]);
}

#[test]
fn one_endpoint_dependent_side_still_punches() {
    for (us, them) in [(ED, EI), (EI, ED), (ED, UNK)] {
        let mut h = H::new(DirectPolicy::Prefer);
        assert_eq!(h.input(local(us)), [sent_offer(us)]);
        assert!(h.input(offer(theirs(), them)).is_empty());
        assert_eq!(h.input(Input::PunchAt { at: h.now }), [punch()]);
    }
}

#[test]
fn punches_are_spaced_bounded_and_time_out_into_a_backoff() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.input(local(UNK));
    h.input(offer(theirs(), UNK));
    let at = h.now + 200 * MS;
    h.input(Input::PunchAt { at });
    // Up to the timeout and a little after, before the retry.
    let out = h.advance_timed(200 * MS + PUNCH_TIMEOUT + RETRY_FIRST / 2);
    let punches: Vec<Instant> = out
        .iter()
        .filter(|(_, o)| *o == punch())
        .map(|(t, _)| *t)
        .collect();
    let expected: Vec<Instant> = (0..MAX_PUNCHES).map(|i| at + PUNCH_INTERVAL * i).collect();
    assert_eq!(punches, expected);
    let rest: Vec<_> = out[punches.len()..].to_vec();
    let timeout = at + PUNCH_TIMEOUT;
    assert_eq!(
        rest,
        [
            (timeout, CloseDirect),
            (timeout, outcome(PathOutcome::PunchTimedOut))
        ]
    );
    assert_eq!(h.m.poll_timeout(), Some(timeout + RETRY_FIRST));
    assert_eq!(h.m.path(), Path::Relayed);
}

#[test]
fn failed_attempts_back_off_doubling_capped_and_stop_after_max_attempts() {
    let mut h = H::new(DirectPolicy::Prefer);
    assert_eq!(h.input(local(UNK)), [sent_offer(UNK)]);
    let mut waits = Vec::new();
    for attempt in 1..=MAX_ATTEMPTS {
        assert_eq!(h.m.attempts(), attempt);
        // No remote offer: the attempt ends at its signalling deadline.
        assert_eq!(
            h.advance(SIGNAL_TIMEOUT),
            [outcome(PathOutcome::NoCandidates)]
        );
        let Some(next) = h.m.poll_timeout() else {
            break;
        };
        waits.push(next - h.now);
        assert_eq!(h.advance(next - h.now), [sent_offer(UNK)]);
    }
    let s = Duration::from_secs;
    assert_eq!(waits, [s(2), s(30), s(60), s(120), s(240), s(300), s(300)]);
    // Out of attempts: nothing more, whatever happens, until a reset.
    assert_eq!(h.m.poll_timeout(), None);
    assert!(h.input(offer(theirs(), UNK)).is_empty());
    assert!(h.advance(s(3600)).is_empty());
    assert_eq!(h.input(Input::Reset), [sent_offer(UNK)]);
}

#[test]
fn a_remote_offer_during_backoff_starts_the_next_attempt_at_once() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.input(local(UNK));
    h.advance(SIGNAL_TIMEOUT);
    assert!(h.m.poll_timeout().is_some());
    assert_eq!(h.input(offer(theirs(), UNK)), [sent_offer(UNK)]);
    assert_eq!(h.m.attempts(), 2);
}

#[test]
fn signalling_without_a_punch_instant_times_out() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.input(local(UNK));
    h.input(offer(theirs(), UNK));
    assert_eq!(
        h.advance(SIGNAL_TIMEOUT),
        [outcome(PathOutcome::PunchTimedOut)]
    );
}

#[test]
fn a_remote_offer_without_usable_candidates_fails_the_attempt() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.input(local(UNK));
    let junk = vec![
        addr("0.0.0.0:5000"),
        addr("203.0.113.9:0"),
        addr("224.0.0.1:9"),
    ];
    assert_eq!(
        h.input(offer(junk, UNK)),
        [outcome(PathOutcome::NoCandidates)]
    );
    assert_eq!(h.m.poll_timeout(), Some(h.now + RETRY_FIRST));
}

#[test]
fn candidates_are_deduplicated_and_bounded() {
    let mut h = H::new(DirectPolicy::Prefer);
    let many: Vec<SocketAddr> = (1..=20)
        .flat_map(|p| [addr(&format!("10.0.0.1:{p}")); 2])
        .collect();
    let out = h.input(Input::LocalCandidates {
        addrs: many,
        nat: UNK,
    });
    let [SendOffer { candidates, .. }] = &out[..] else {
        panic!("{out:?}");
    };
    let expected: Vec<SocketAddr> = (1..=8).map(|p| addr(&format!("10.0.0.1:{p}"))).collect();
    assert_eq!(candidates, &expected);
    // No usable candidate: no offer.
    let mut h = H::new(DirectPolicy::Prefer);
    let none = Input::LocalCandidates {
        addrs: vec![addr("0.0.0.0:1")],
        nat: UNK,
    };
    assert!(h.input(none).is_empty());
}

#[test]
fn a_relay_that_declines_stops_attempts_until_reset() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.input(local(UNK));
    let declined = Input::Declined {
        reason: DeclineReason::Disabled,
    };
    assert_eq!(h.input(declined), [outcome(PathOutcome::RelayDeclined)]);
    assert_eq!(h.m.poll_timeout(), None);
    assert!(h.input(offer(theirs(), UNK)).is_empty());
    assert!(h.input(local(UNK)).is_empty());
    assert_eq!(h.input(Input::Reset), [sent_offer(UNK)]);
}

#[test]
fn a_rate_limited_offer_is_retried_after_the_relays_wait() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.input(local(UNK));
    let retry_after = Duration::from_secs(90);
    let declined = Input::Declined {
        reason: DeclineReason::RateLimited { retry_after },
    };
    assert_eq!(h.input(declined), [outcome(PathOutcome::RelayDeclined)]);
    assert_eq!(h.m.poll_timeout(), Some(h.now + retry_after));
    assert_eq!(h.advance(retry_after), [sent_offer(UNK)]);
}

#[test]
fn a_silent_direct_path_falls_back_within_direct_silence_then_retries() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.establish(10 * MS, 40 * MS);
    // Heard every 900 ms: alive.
    for _ in 0..5 {
        assert!(h.advance(900 * MS).is_empty());
        h.input(Input::DirectHeard);
    }
    let heard = h.now;
    // Past the silence, before the retry.
    let out = h.advance_timed(DIRECT_SILENCE + RETRY_FIRST / 2);
    assert_eq!(
        out,
        [
            (heard + DIRECT_SILENCE, Switch(Path::Relayed)),
            (heard + DIRECT_SILENCE, CloseDirect),
            (heard + DIRECT_SILENCE, outcome(PathOutcome::DirectLost)),
        ]
    );
    assert_eq!(h.m.path(), Path::Relayed);
    assert_eq!(h.m.rtt(), Some(40 * MS));
    // The first retry after a direct path worked comes soon.
    assert_eq!(
        h.m.poll_timeout(),
        Some(heard + DIRECT_SILENCE + RETRY_FIRST)
    );
    assert_eq!(h.advance(RETRY_FIRST), [sent_offer(EI)]);
}

#[test]
fn direct_silence_scales_with_the_direct_rtt_within_bounds() {
    assert_eq!(silence(10 * MS), DIRECT_SILENCE);
    assert_eq!(silence(500 * MS), 1500 * MS);
    assert_eq!(silence(Duration::from_secs(5)), DIRECT_SILENCE_MAX);
    let mut h = H::new(DirectPolicy::Prefer);
    h.establish(500 * MS, 600 * MS);
    assert_eq!(h.m.poll_timeout(), Some(h.now + 1500 * MS));
}

#[test]
fn a_closed_direct_connection_falls_back_without_closing_it_again() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.establish(10 * MS, 40 * MS);
    assert_eq!(
        h.input(Input::DirectClosed),
        [Switch(Path::Relayed), outcome(PathOutcome::DirectLost)]
    );
    assert!(h.input(Input::DirectClosed).is_empty());
    // A late connection of the ended attempt is closed, not used.
    let late = up(MS);
    assert_eq!(h.input(late), [CloseDirect]);
    assert_eq!(h.m.path(), Path::Relayed);
}

#[test]
fn rtt_comparison_has_slack_and_hysteresis_and_switches_only_on_change() {
    // Relay 150 ms: slack 15 ms; direct when <= 165 ms, back to relayed when > 180 ms.
    assert_eq!(rtt_slack(150 * MS), 15 * MS);
    assert_eq!(rtt_slack(50 * MS), RTT_SLACK_MIN);
    let mut h = H::new(DirectPolicy::Prefer);
    let out = h.establish(164 * MS, 150 * MS);
    assert_eq!(out, [Switch(Path::Direct), outcome(PathOutcome::Direct)]);
    let mut rtt = |ms: u32| h.input(Input::DirectRtt { rtt: ms * MS });
    assert!(rtt(170).is_empty());
    assert!(rtt(180).is_empty());
    assert_eq!(rtt(181), [Switch(Path::Relayed)]);
    assert!(rtt(181).is_empty());
    assert!(rtt(170).is_empty(), "inside the band: stays relayed");
    assert_eq!(rtt(165), [Switch(Path::Direct)]);
    assert!(rtt(165).is_empty());
    // The relay's RTT moves too (130 ms: slack 13 ms, back to relayed above 156 ms).
    assert_eq!(
        h.input(Input::RelayRtt { rtt: 130 * MS }),
        [Switch(Path::Relayed)]
    );
    assert!(h.input(Input::RelayRtt { rtt: 130 * MS }).is_empty());
}

#[test]
fn a_direct_path_slower_than_the_relay_stays_a_candidate() {
    let mut h = H::new(DirectPolicy::Prefer);
    let out = h.establish(100 * MS, 40 * MS);
    assert_eq!(out, [outcome(PathOutcome::RelayFaster)]);
    assert_eq!(h.m.path(), Path::Relayed);
    assert_eq!(h.m.rtt(), Some(40 * MS));
    assert_eq!(
        h.input(Input::RelayRtt { rtt: 120 * MS }),
        [Switch(Path::Direct)]
    );
    assert_eq!(h.m.rtt(), Some(100 * MS));
}

#[test]
fn a_second_connection_of_the_same_attempt_reports_nothing_new() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.establish(10 * MS, 40 * MS);
    let again = up(12 * MS);
    assert!(h.input(again).is_empty());
    assert_eq!(h.m.rtt(), Some(12 * MS));
}

#[test]
fn reset_on_migration_closes_the_direct_path_and_starts_over() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.establish(10 * MS, 40 * MS);
    assert_eq!(
        h.input(Input::Reset),
        [Switch(Path::Relayed), CloseDirect, sent_offer(EI)]
    );
    assert_eq!(h.m.remote_fingerprint(), None);
    assert_eq!(h.m.attempts(), 1);
    // A reset while punching aborts the dial; an interrupted attempt reports nothing.
    h.input(offer(theirs(), UNK));
    h.input(Input::PunchAt { at: h.now });
    assert_eq!(h.input(Input::Reset), [CloseDirect, sent_offer(EI)]);
}

#[test]
fn a_remote_offer_on_a_direct_path_means_the_remote_gave_it_up() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.establish(10 * MS, 40 * MS);
    assert_eq!(
        h.input(offer(theirs(), EI)),
        [
            Switch(Path::Relayed),
            CloseDirect,
            outcome(PathOutcome::DirectLost),
            sent_offer(EI)
        ]
    );
    assert_eq!(h.input(Input::PunchAt { at: h.now }), [punch()]);
}

#[test]
fn a_far_punch_instant_is_brought_forward() {
    let mut h = H::new(DirectPolicy::Prefer);
    h.input(local(UNK));
    h.input(offer(theirs(), UNK));
    h.input(Input::PunchAt {
        at: h.now + Duration::from_secs(3600),
    });
    assert_eq!(h.m.poll_timeout(), Some(h.now + MAX_PUNCH_DELAY));
}

#[test]
fn poll_timeout_is_always_the_earliest_deadline() {
    // Walk a whole life; at every step the deadline is the expected one, never in the past,
    // and firing just before it does nothing.
    let mut h = H::new(DirectPolicy::Prefer);
    let check = |h: &H, expected: Option<Instant>| {
        let t = h.m.poll_timeout();
        assert_eq!(t, expected);
        if let Some(t) = t {
            assert!(t >= h.now);
            let mut early = h.m.clone();
            early.handle_timeout(t - Duration::from_nanos(1));
            assert_eq!(early.poll_output(), None);
            assert_eq!(early.poll_timeout(), Some(t));
        }
    };
    check(&h, None);
    h.input(local(UNK));
    let start = h.now;
    check(&h, Some(start + SIGNAL_TIMEOUT));
    h.input(offer(theirs(), UNK));
    check(&h, Some(start + SIGNAL_TIMEOUT));
    h.input(Input::PunchAt {
        at: start + 50 * MS,
    });
    check(&h, Some(start + 50 * MS));
    h.advance(400 * MS); // punches at 50, 200 and 350 ms
    check(&h, Some(start + 500 * MS));
    h.input(up(400 * MS));
    check(&h, Some(h.now + 1200 * MS));
    h.advance(500 * MS);
    h.input(Input::DirectHeard);
    check(&h, Some(h.now + 1200 * MS));
    h.advance(Duration::from_secs(2)); // silent: lost, backoff
    let lost = start + 900 * MS + 1200 * MS;
    check(&h, Some(lost + RETRY_FIRST));
}

#[test]
fn a_remote_slower_to_the_relay_counts_in_the_relayed_rtt() {
    // Our RTT to the relay is 2 ms, the remote's 102 ms (a slow access link, which the direct
    // path crosses too): the relay delays our punch by (102 - 2) / 2 + 20 = 70 ms.
    let mut h = H::new(DirectPolicy::Prefer);
    h.input(Input::RelayRtt { rtt: 2 * MS });
    assert_eq!(h.input(local(EI)), [sent_offer(EI)]);
    assert!(h.input(offer(theirs(), EI)).is_empty());
    assert!(h
        .input(Input::PunchAt {
            at: h.now + 70 * MS
        })
        .is_empty());
    assert_eq!(h.m.relayed_rtt(), Some(104 * MS));
    assert_eq!(h.advance(70 * MS), [punch()]);
    // Direct 105 ms: within the slack of the 104 ms relayed path, not 50 times our 2 ms.
    let out = h.input(up(105 * MS));
    assert_eq!(out, [Switch(Path::Direct), outcome(PathOutcome::Direct)]);
    // RTT samples jittering by +-20 ms (a jittery link) do not flap it: leaving takes more
    // than 104 + 2 * 10.4 ms.
    let mut switches = 0;
    for i in 0..200u32 {
        h.now += 50 * MS;
        let direct = (95 + (i * 37) % 30) * MS;
        let relay = (1 + (i * 11) % 3) * MS;
        switches += h.input(Input::DirectRtt { rtt: direct }).len();
        switches += h.input(Input::RelayRtt { rtt: relay }).len();
        h.input(Input::DirectHeard);
    }
    assert_eq!(switches, 0, "the path flapped");
    assert_eq!(h.m.path(), Path::Direct);
}

#[test]
fn a_remote_faster_to_the_relay_leaves_the_relayed_rtt_ours() {
    // We are the slower one: the relay's delay is the bare margin, and the remote's RTT is
    // unknown (at most ours); the relayed path counts as ours alone.
    let mut h = H::new(DirectPolicy::Prefer);
    h.input(Input::RelayRtt { rtt: 102 * MS });
    h.input(local(EI));
    h.input(offer(theirs(), EI));
    h.input(Input::PunchAt {
        at: h.now + PUNCH_MARGIN,
    });
    assert_eq!(h.m.relayed_rtt(), Some(102 * MS));
    h.advance(PUNCH_MARGIN);
    let out = h.input(up(105 * MS));
    assert_eq!(out, [Switch(Path::Direct), outcome(PathOutcome::Direct)]);
}
