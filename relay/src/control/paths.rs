//! Direct-path signalling (SPEC section 17): `PathOffer` forwarded between the host and
//! another member, `Punch` sent to both once each has offered to the other within the offer
//! window, and `PathReport` counted in the metrics (through [`Event::PathReported`]).
//!
//! The state is per allocation ([`Paths`]): the offers forwarded in the last
//! [`OFFER_WINDOW`], keyed by (sender, target), and the rate-limit buckets of offers (per pair)
//! and of reports (per member). Every key names members of the allocation, and offers only
//! host pairs, so the maps hold at most `2 × (members − 1)` offers and offer buckets and one
//! report bucket per member; a member's entries go when it leaves, all of them when the
//! allocation migrates or is relocated, and offers older than the window are dropped whenever
//! the allocation sees a new one. No timer is needed.
//!
//! Runs wherever the [`ControlPlane`] is called, with `now` passed in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_protocol::path::{NatKind, PathOutcome, PathReason, MAX_PUNCH_DELAY_MS, OFFER_WINDOW};
use baton_protocol::{AllocationId, ErrorCode, PeerId, ServerMessage};

use super::ratelimit::{Bucket, Limit};
use super::{millis_until, ConnId, ControlPlane, Event, Output};

/// Offers one member may send to one other member: a burst of 4, then one every 2.5 s (4 per
/// 10 s).
pub(super) const OFFER_LIMIT: Limit = Limit {
    burst: 4,
    refill: Duration::from_millis(2500),
};

/// Reports one member may send: a burst of 8, then one every 1.25 s (8 per 10 s).
pub(super) const REPORT_LIMIT: Limit = Limit {
    burst: 8,
    refill: Duration::from_millis(1250),
};

/// Added to the later member's half RTT when the relay picks the moment both punch.
pub(super) const PUNCH_MARGIN: Duration = Duration::from_millis(20);

/// One allocation's direct-path state. See the module docs for its bounds.
#[derive(Debug, Default)]
pub(super) struct Paths {
    /// When the relay forwarded an offer from the first member to the second, within the
    /// offer window.
    pub(super) pending: HashMap<(PeerId, PeerId), Instant>,
    /// Offers per (sender, target).
    pub(super) offer_buckets: HashMap<(PeerId, PeerId), Bucket>,
    /// Reports per member.
    pub(super) report_buckets: HashMap<PeerId, Bucket>,
}

impl Paths {
    /// Forgets everything about `peer`, which left.
    pub(super) fn forget(&mut self, peer: PeerId) {
        self.pending.retain(|(a, b), _| *a != peer && *b != peer);
        self.offer_buckets
            .retain(|(a, b), _| *a != peer && *b != peer);
        self.report_buckets.remove(&peer);
    }

    /// Forgets every pending offer and bucket: the allocation migrated or moved.
    pub(super) fn clear(&mut self) {
        *self = Paths::default();
    }

    /// Drops the offers forwarded more than the offer window before `now`.
    fn expire(&mut self, now: Instant) {
        self.pending
            .retain(|_, at| now.saturating_duration_since(*at) <= OFFER_WINDOW);
    }
}

/// An offer as the relay forwards it: NAT kind, fingerprint, candidates.
pub(super) struct Offer {
    pub(super) nat: NatKind,
    pub(super) fingerprint: [u8; 32],
    pub(super) candidates: Vec<SocketAddr>,
}

/// `delay_ms` for a member whose RTT is `rtt`, when the slower of the pair has `slowest`: both
/// start at `now + slowest / 2 + PUNCH_MARGIN`, which the member's `Punch` reaches after
/// `rtt / 2`.
pub(super) fn punch_delay(rtt: Duration, slowest: Duration) -> u16 {
    let start = slowest / 2 + PUNCH_MARGIN;
    let ms = start.saturating_sub(rtt / 2).as_millis();
    u16::try_from(ms)
        .unwrap_or(u16::MAX)
        .min(MAX_PUNCH_DELAY_MS)
}

impl ControlPlane {
    /// `PathOffer` from `me` of allocation `id` to `peer`: checked (SPEC section 5.2), then
    /// forwarded, and `Punch` sent to both when `peer` offered to `me` within the window.
    pub(super) fn path_offer(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u32,
        (id, me): (AllocationId, PeerId),
        peer: PeerId,
        offer: Offer,
    ) {
        if !self.allow_direct {
            self.refuse(conn, request_id, ErrorCode::DirectDisabled, 0);
            return;
        }
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return;
        };
        let waiting = alloc.between_hosts_until();
        if let Some(deadline) = waiting {
            let ms = millis_until(now, deadline);
            self.refuse(conn, request_id, ErrorCode::Migrating, ms);
            return;
        }
        let target = match alloc.members.get(&peer) {
            Some(m) if peer != me => m.conn,
            _ => {
                self.refuse(conn, request_id, ErrorCode::UnknownPeer, u32::from(peer.0));
                return;
            }
        };
        let host = alloc.host_peer();
        if host != Some(me) && host != Some(peer) {
            self.refuse(conn, request_id, ErrorCode::NotHost, 0);
            return;
        }
        let bucket = alloc
            .paths
            .offer_buckets
            .entry((me, peer))
            .or_insert_with(|| Bucket::full(OFFER_LIMIT.burst, now));
        if let Err(ms) = OFFER_LIMIT.take(bucket, now) {
            self.refuse(conn, request_id, ErrorCode::RateLimited, ms);
            return;
        }
        alloc.paths.expire(now);
        // The other direction was forwarded within the window: a round is complete.
        let punch = alloc.paths.pending.remove(&(peer, me)).is_some();
        if !punch {
            alloc.paths.pending.insert((me, peer), now);
        }
        let rtt = |p: PeerId| {
            alloc
                .members
                .get(&p)
                .and_then(|m| m.rtt)
                .unwrap_or_default()
        };
        let (my_rtt, their_rtt) = (rtt(me), rtt(peer));
        self.send(conn, ServerMessage::Done { request_id });
        self.send(
            target,
            ServerMessage::PathOffer {
                from: me,
                nat: offer.nat,
                fingerprint: offer.fingerprint,
                candidates: offer.candidates,
            },
        );
        if punch {
            let slowest = my_rtt.max(their_rtt);
            self.send(
                conn,
                ServerMessage::Punch {
                    peer,
                    delay_ms: punch_delay(my_rtt, slowest),
                },
            );
            self.send(
                target,
                ServerMessage::Punch {
                    peer: me,
                    delay_ms: punch_delay(their_rtt, slowest),
                },
            );
        }
    }

    /// `PathReport` from `me` of allocation `id` about its path to `peer`: checked (SPEC
    /// section 5.2), then counted.
    pub(super) fn path_report(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u32,
        (id, me): (AllocationId, PeerId),
        peer: PeerId,
        (outcome, reason): (PathOutcome, PathReason),
    ) {
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return;
        };
        if peer == me || !alloc.members.contains_key(&peer) {
            self.refuse(conn, request_id, ErrorCode::UnknownPeer, u32::from(peer.0));
            return;
        }
        if reason.outcome() != outcome {
            self.refuse(conn, request_id, ErrorCode::InvalidRequest, 0);
            return;
        }
        let bucket = alloc
            .paths
            .report_buckets
            .entry(me)
            .or_insert_with(|| Bucket::full(REPORT_LIMIT.burst, now));
        if let Err(ms) = REPORT_LIMIT.take(bucket, now) {
            self.refuse(conn, request_id, ErrorCode::RateLimited, ms);
            return;
        }
        self.send(conn, ServerMessage::Done { request_id });
        self.outputs.push_back(Output::Event(Event::PathReported {
            allocation: id,
            peer: me,
            to: peer,
            reason,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_members_start_together() {
        let ms = Duration::from_millis;
        // 40 ms and 100 ms: the start is 50 + 20 = 70 ms away; the Punches arrive after 20
        // and 50 ms.
        assert_eq!(punch_delay(ms(40), ms(100)), 50);
        assert_eq!(punch_delay(ms(100), ms(100)), 20);
        // Unknown RTTs count as 0: both wait the margin.
        assert_eq!(punch_delay(ms(0), ms(0)), 20);
        // Clamped to 1000 ms.
        assert_eq!(punch_delay(ms(0), Duration::from_secs(10)), 1000);
    }
}
