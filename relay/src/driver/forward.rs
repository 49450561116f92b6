//! The datagram hot path: [`forward_datagrams`] reads a connection's datagrams, [`forward`]
//! checks the sender's limits, looks up the sender's [`Route`](super::routing::Route) and
//! rewrites the header, and [`Delivery::send`] queues the datagram on each destination
//! connection, within the allocation's bandwidth cap, or holds it for a member on its way
//! ([`held`](super::held)). What cannot be sent is dropped, counted by reason and reported back
//! to the sender at most once a second ([`DropReport`]).
//!
//! Runs on the endpoint's data-plane lane thread, inside each connection's task; reads only the
//! routing tables and metrics, takes no relay-wide lock, and never touches the `ControlPlane`.
//! The sender's limits ([`ClientLimits`]) are the task's own; the allocation's cap is one atomic
//! its members share.

use std::time::Duration;

use baton_protocol::datagram::{self, Destination};
use baton_protocol::{CloseCode, DropReason, PeerId, ServerMessage};
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::bucket::{ClientLimits, Limit, SharedBucket};
use super::connection::ADDRESS_CHECK_INTERVAL;
use super::held::{Held, Hold, Outcome};
use super::{sleep_until_opt, ConnShared, Shared};

/// Drop reasons this relay reports.
const REASONS: usize = DropReason::ALL.len();

/// Drops a client caused, reported back to it at most once a second per reason.
#[derive(Default)]
struct DropReport {
    counts: [u32; REASONS],
    values: [u32; REASONS],
}

impl DropReport {
    fn add(&mut self, reason: DropReason, value: u32) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) {
            self.counts[i] = self.counts[i].saturating_add(1);
            self.values[i] = value;
        }
    }

    fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| *c == 0)
    }

    fn flush(&mut self, tx: &mpsc::Sender<ServerMessage>) {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            if self.counts[i] > 0 {
                // Best effort: a full control queue means the client is not listening anyway.
                let _ = tx.try_send(ServerMessage::DatagramsDropped {
                    reason: *reason,
                    count: self.counts[i],
                    value: self.values[i],
                });
                self.counts[i] = 0;
            }
        }
    }
}

const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The data plane for one connection: runs until the connection ends.
pub(super) async fn forward_datagrams(me: &ConnShared, shared: &Shared) -> Option<CloseCode> {
    let mut report = DropReport::default();
    let mut limits = ClientLimits::new(shared.client_datagrams, shared.client_bytes);
    let mut report_at: Option<tokio::time::Instant> = None;
    let check_every = u64::try_from(ADDRESS_CHECK_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
    let mut check_address_at = 0;
    loop {
        let datagram = tokio::select! {
            biased;
            d = me.conn.read_datagram() => match d {
                Ok(d) => d,
                Err(_) => return None,
            },
            _ = sleep_until_opt(report_at) => {
                report.flush(&me.control_tx);
                report_at = None;
                continue;
            }
        };
        // One clock read per datagram, for the limits and the address check.
        let now = shared.clock.now();
        forward(
            me,
            shared,
            now,
            datagram,
            &mut limits,
            &mut |reason, value| {
                shared.metrics.dropped(reason).inc();
                report.add(reason, value);
            },
        );
        // A datagram from a new address (a NAT rebinding) is noticed within the interval.
        if now >= check_address_at {
            check_address_at = now.saturating_add(check_every);
            me.address.check(&me.conn, shared);
        }
        if report_at.is_none() && !report.is_empty() {
            report_at = Some(tokio::time::Instant::now() + DROP_REPORT_INTERVAL);
        }
        debug_assert!(report_at.is_some() || report.is_empty());
    }
}

/// Forwards one datagram within the sender's `limits`, calling `dropped` with the reason and
/// its detail value for each drop: once for a datagram that goes nowhere, once per unreachable
/// receiver of a broadcast.
fn forward(
    me: &ConnShared,
    shared: &Shared,
    now: u64,
    datagram: Bytes,
    limits: &mut ClientLimits,
    dropped: &mut impl FnMut(DropReason, u32),
) {
    if datagram::is_heartbeat(&datagram) {
        // A heartbeat only proves its sender alive (the host watch counts every datagram the
        // connection receives): nothing to forward, nothing to report.
        return;
    }
    let Ok((dest, payload)) = datagram::split(&datagram) else {
        return dropped(DropReason::Malformed, 0);
    };
    let payload_len = payload.len();
    if payload_len > shared.max_payload {
        return dropped(DropReason::TooLarge, shared.max_payload as u32);
    }
    let route = me.route.load();
    let Some(route) = route.as_ref() else {
        return dropped(DropReason::NotBound, 0);
    };
    if let Err((limit, value)) = limits.take(now, payload_len) {
        match limit {
            Limit::ClientDatagrams => shared.metrics.limited.client_datagrams.inc(),
            Limit::ClientBytes => shared.metrics.limited.client_bytes.inc(),
        };
        return dropped(DropReason::RateLimited, saturate(value));
    }
    let table = route.allocation.table.load();
    // Turn the destination header into a source header. quinn hands out datagrams that share
    // their packet's buffer, so this is usually one small copy.
    let mut buf = match datagram.try_into_mut() {
        Ok(buf) => buf,
        Err(shared_buf) => BytesMut::from(&shared_buf[..]),
    };
    datagram::write_header(&mut buf, route.me.0);
    let out = buf.freeze();
    let delivery = Delivery {
        shared,
        bandwidth: route.allocation.bandwidth.as_ref(),
        now,
        payload_len,
    };
    match Destination::from_u16(dest) {
        Destination::Peer(peer) if peer == route.me => {
            dropped(DropReason::UnknownPeer, u32::from(peer.0));
        }
        Destination::Peer(peer) => {
            // A member on its way is looked for only when no member has that id.
            let sent = match table.get(peer) {
                Some(target) => delivery.send(peer, target, out),
                None => match table.awaited(peer) {
                    Some(held) => delivery.hold(peer, held, out),
                    None => Err((DropReason::UnknownPeer, u32::from(peer.0))),
                },
            };
            if let Err((reason, value)) = sent {
                dropped(reason, value);
            }
        }
        Destination::Broadcast => {
            broadcast(
                table.members.iter().filter(|m| m.peer != route.me),
                |m| delivery.send(m.peer, &m.conn, out.clone()),
                dropped,
            );
            broadcast(
                table.awaited.iter(),
                |a| delivery.hold(a.peer, &a.held, out.clone()),
                dropped,
            );
        }
    }
}

/// Sends a datagram held for a member that has just arrived (see [`held`](super::held)); its
/// limits were applied when it was held. A full send buffer drops it, as `congested`.
pub(super) fn deliver_held(shared: &Shared, target: &quinn::Connection, datagram: Bytes) {
    let payload_len = datagram.len().saturating_sub(datagram::HEADER_LEN);
    if target.datagram_send_buffer_space() < datagram.len() {
        shared.metrics.dropped(DropReason::Congested).inc();
        return;
    }
    if target.send_datagram(datagram).is_ok() {
        shared.metrics.datagrams_forwarded.inc();
        shared.metrics.bytes_forwarded.inc_by(payload_len as u64);
    }
}

/// A limit's value as a drop report carries it.
fn saturate(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Sends to every receiver with `send_one`; each receiver it fails for is one drop.
fn broadcast<R>(
    receivers: impl IntoIterator<Item = R>,
    mut send_one: impl FnMut(R) -> Result<(), (DropReason, u32)>,
    dropped: &mut impl FnMut(DropReason, u32),
) {
    for receiver in receivers {
        if let Err((reason, value)) = send_one(receiver) {
            dropped(reason, value);
        }
    }
}

/// What every send of one datagram shares.
struct Delivery<'a> {
    shared: &'a Shared,
    /// The allocation's bandwidth cap, if it has one.
    bandwidth: Option<&'a SharedBucket>,
    now: u64,
    payload_len: usize,
}

impl Delivery<'_> {
    /// Sends one datagram to `target` (peer `peer`). On a drop, returns the reason and its
    /// value.
    fn send(
        &self,
        peer: PeerId,
        target: &quinn::Connection,
        datagram: Bytes,
    ) -> Result<(), (DropReason, u32)> {
        // Drop the newest rather than let quinn silently discard the oldest queued datagrams.
        if target.datagram_send_buffer_space() < datagram.len() {
            return Err((DropReason::Congested, u32::from(peer.0)));
        }
        self.take_bandwidth()?;
        self.transmit(peer, target, datagram)
    }

    /// Charges the datagram to the allocation's bandwidth cap, if it has one.
    fn take_bandwidth(&self) -> Result<(), (DropReason, u32)> {
        if let Some(cap) = self.bandwidth {
            if !cap.take(self.now, self.payload_len as u64) {
                self.shared.metrics.limited.allocation_bytes.inc();
                return Err((DropReason::RateLimited, saturate(cap.rate().per_second())));
            }
        }
        Ok(())
    }

    /// Holds one datagram for `peer`, a member on its way (see [`held`](super::held)), or
    /// sends it to `peer` if it has just arrived.
    fn hold(
        &self,
        peer: PeerId,
        held: &Held<quinn::Connection>,
        datagram: Bytes,
    ) -> Result<(), (DropReason, u32)> {
        self.take_bandwidth()?;
        let metrics = &self.shared.metrics.held;
        match held.hold(self.now, datagram, || Outcome::Evicted.count(metrics)) {
            Hold::Held => {
                Outcome::Held.count(metrics);
                Ok(())
            }
            Hold::Arrived(target, datagram) => {
                if target.datagram_send_buffer_space() < datagram.len() {
                    return Err((DropReason::Congested, u32::from(peer.0)));
                }
                self.transmit(peer, &target, datagram)
            }
            Hold::Dropped(outcome) => {
                outcome.count(metrics);
                Err((DropReason::UnknownPeer, u32::from(peer.0)))
            }
        }
    }

    /// Queues one datagram, within its limits, on `target`'s connection.
    fn transmit(
        &self,
        peer: PeerId,
        target: &quinn::Connection,
        datagram: Bytes,
    ) -> Result<(), (DropReason, u32)> {
        let shared = self.shared;
        match target.send_datagram(datagram) {
            Ok(()) => {
                shared.metrics.datagrams_forwarded.inc();
                shared
                    .metrics
                    .bytes_forwarded
                    .inc_by(self.payload_len as u64);
                Ok(())
            }
            // The receiver is leaving; its departure is reported through the control plane.
            Err(quinn::SendDatagramError::ConnectionLost(_)) => {
                Err((DropReason::UnknownPeer, u32::from(peer.0)))
            }
            // The receiver's transport takes less than Baton promises (a non-conforming
            // client): report the limit that applies to it.
            Err(_) => {
                let limit = target
                    .max_datagram_size()
                    .map_or(0, |max| max.saturating_sub(datagram::HEADER_LEN));
                Err((
                    DropReason::TooLarge,
                    u32::try_from(limit).unwrap_or(u32::MAX),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broadcast_counts_one_drop_per_unreachable_receiver() {
        let mut drops = Vec::new();
        broadcast(
            [1u16, 2, 3],
            |peer| match peer {
                2 => Ok(()),
                _ => Err((DropReason::Congested, u32::from(peer))),
            },
            &mut |reason, value| drops.push((reason, value)),
        );
        assert_eq!(
            drops,
            [(DropReason::Congested, 1), (DropReason::Congested, 3)]
        );
    }

    #[test]
    fn a_report_counts_every_drop_and_keeps_the_last_value() {
        let mut report = DropReport::default();
        report.add(DropReason::Congested, 1);
        report.add(DropReason::Congested, 3);
        let (tx, mut rx) = mpsc::channel(8);
        report.flush(&tx);
        assert!(report.is_empty());
        assert_eq!(
            rx.try_recv().ok(),
            Some(ServerMessage::DatagramsDropped {
                reason: DropReason::Congested,
                count: 2,
                value: 3,
            })
        );
    }
}
